//! The object-store side of replication: [`RemoteUrl`] (a parsed URL and
//! its client), [`Sums`] (a file's length and CRC-32C, and the sidecar
//! name that carries them), and the blocking-work helper of the uploader
//! and the mirror. Feature `replication`.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme};

use crate::engine::KvId;
use crate::error::panic_message;
use crate::error::{Error, Result};

/// Runs blocking file work of the uploader or the mirror on tokio's
/// blocking pool. A panic in `work` comes back as [`Error::Panicked`]
/// naming `kv` (the store whose files it worked on) and `what`; only a
/// cancelled task (its runtime shutting down) is [`Error::ComponentStopped`].
pub(crate) async fn blocking<T: Send + 'static>(
    kv: KvId,
    what: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let message = panic_message(&*e.into_panic());
            tracing::error!(kv_store = kv.0, what, %message, "blocking file work panicked");
            Err(Error::Panicked { kv, what, message })
        }
        Err(_) => Err(Error::ComponentStopped),
    }
}

/// Runs the future `make` makes on a thread and current-thread runtime of
/// its own, blocking until it is done, so a caller in any context (an
/// actor's, a runtime's, none) may call it. `label` names it in errors. A
/// panic there is the caller's, as if it had run on the caller's thread.
pub(crate) fn on_own_runtime<T, F>(label: &FsPath, make: impl FnOnce() -> F + Send) -> Result<T>
where
    T: Send,
    F: std::future::Future<Output = Result<T>>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("start a runtime for", label, e))?;
                runtime.block_on(make())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// URL schemes whose authority names the bucket or container.
const SCHEMES: &[&str] = &[
    "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "file", "memory",
];

/// A parsed object-store URL: which store, and the path in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    url: url::Url,
    /// `scheme://authority` of the store: one client each.
    store_key: String,
    path: Path,
}

impl RemoteUrl {
    /// Parses `text`; refuses what `object_store` cannot open.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidRemote {
            url: text.to_string(),
            reason,
        };
        let url = url::Url::parse(text).map_err(|e| invalid(e.to_string()))?;
        if !SCHEMES.contains(&url.scheme()) {
            // `object_store` also takes https URLs of each cloud, but takes
            // the bucket out of their path; one form per store keeps the
            // path and the client's bucket apart.
            return Err(invalid(format!(
                "the scheme is not one of {}; for S3-compatible servers use s3://bucket/path and the endpoint option",
                SCHEMES.join(", ")
            )));
        }
        let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(
            scheme,
            ObjectStoreScheme::Local
                | ObjectStoreScheme::Memory
                | ObjectStoreScheme::AmazonS3
                | ObjectStoreScheme::GoogleCloudStorage
                | ObjectStoreScheme::MicrosoftAzure
        ) {
            return Err(invalid(
                "the scheme is not one of s3, gs, az, file, memory".into(),
            ));
        }
        let missing = match scheme {
            ObjectStoreScheme::AmazonS3 if !cfg!(feature = "s3") => Some("s3"),
            ObjectStoreScheme::GoogleCloudStorage if !cfg!(feature = "gcs") => Some("gcs"),
            ObjectStoreScheme::MicrosoftAzure if !cfg!(feature = "azure") => Some("azure"),
            _ => None,
        };
        if let Some(feature) = missing {
            return Err(invalid(format!(
                "this build has no client for it: build continuous-backup with the `{feature}` feature"
            )));
        }
        let store_key = format!("{}://{}", url.scheme(), url.authority());
        Ok(RemoteUrl { url, store_key, path })
    }

    /// Whether `text` looks like a URL rather than a local path.
    pub fn is_url(text: &str) -> bool {
        text.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
        })
    }

    /// The URL of the sub-dir `name` (a store's remote dir under a root).
    pub fn join(&self, name: &str) -> RemoteUrl {
        let mut url = self.url.clone();
        let path = self.path.clone().join(name);
        url.set_path(&format!("/{}", path.as_ref()));
        RemoteUrl {
            url,
            store_key: self.store_key.clone(),
            path,
        }
    }

    /// The path inside the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `scheme://authority`, naming the store.
    pub fn store_key(&self) -> &str {
        &self.store_key
    }

    /// An object-store call's failure at `location` in this URL's store.
    pub(crate) fn error(&self, op: &'static str, location: &Path, source: object_store::Error) -> Error {
        Error::Remote {
            op,
            location: format!("{}/{}", self.store_key, location),
            source,
        }
    }

    /// The whole object `name` in this URL's dir (a manifest, a record:
    /// small objects).
    pub(crate) async fn get_whole(&self, client: &dyn ObjectStore, name: &str) -> Result<bytes::Bytes> {
        let location = self.path().clone().join(name);
        let fail = |e| self.error("get", &location, e);
        client
            .get(&location)
            .await
            .map_err(fail)?
            .bytes()
            .await
            .map_err(fail)
    }

    /// Every object below this URL (one listing): its path segments below
    /// the URL's path, still encoded, with its metadata.
    pub(crate) async fn list_below(
        &self,
        client: &dyn ObjectStore,
    ) -> Result<Vec<(Vec<String>, ObjectMeta)>> {
        let metas: Vec<ObjectMeta> = client
            .list(Some(&self.path))
            .try_collect()
            .await
            .map_err(|e| self.error("list", &self.path, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|meta| {
                let parts = meta.location.prefix_match(&self.path)?;
                let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
                Some((parts, meta))
            })
            .collect())
    }

    /// Opens a client for this URL's store. Credentials and settings come
    /// from the environment, overridden by `options`. The client's own
    /// retries are kept short: the uploader retries with its own backoff,
    /// which status and logs can see.
    pub fn open(&self, options: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
        let fail = |e: &dyn std::fmt::Display| Error::InvalidRemote {
            url: self.url.to_string(),
            reason: e.to_string(),
        };
        // Client options are the clouds' (file:// and memory:// take none).
        #[cfg(not(any(feature = "s3", feature = "gcs", feature = "azure")))]
        let _ = options;
        #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..object_store::RetryConfig::default()
        };
        let (scheme, _) = ObjectStoreScheme::parse(&self.url).map_err(|e| fail(&e))?;
        let url = self.url.as_str();
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
            ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
            #[cfg(feature = "s3")]
            ObjectStoreScheme::AmazonS3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.to_ascii_lowercase().parse().map_err(|e| fail(&e))?, v);
                }
                Arc::new(b.with_retry(retry).build().map_err(|e| fail(&e))?)
            }
            #[cfg(feature = "gcs")]
            ObjectStoreScheme::GoogleCloudStorage => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.to_ascii_lowercase().parse().map_err(|e| fail(&e))?, v);
                }
                Arc::new(b.with_retry(retry).build().map_err(|e| fail(&e))?)
            }
            #[cfg(feature = "azure")]
            ObjectStoreScheme::MicrosoftAzure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.to_ascii_lowercase().parse().map_err(|e| fail(&e))?, v);
                }
                Arc::new(b.with_retry(retry).build().map_err(|e| fail(&e))?)
            }
            _ => {
                return Err(Error::InvalidRemote {
                    url: url.to_string(),
                    reason: "the scheme is not one of s3, gs, az, file, memory".into(),
                })
            }
        };
        Ok(store)
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// Length and CRC-32C (Castagnoli) of a file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sums {
    /// Length in bytes.
    pub len: u64,
    /// CRC-32C of every byte.
    pub crc32c: u32,
}

impl Sums {
    /// The sidecar's name for file `name`: `<name>.<len>.<crc32c as 8 hex digits>`.
    pub fn sidecar_name(&self, name: &str) -> String {
        format!("{name}.{}.{:08x}", self.len, self.crc32c)
    }

    /// Splits a sidecar name into the file's name and its sums.
    pub fn parse_sidecar_name(sidecar: &str) -> Option<(&str, Sums)> {
        let (rest, crc) = sidecar.rsplit_once('.')?;
        let (name, len) = rest.rsplit_once('.')?;
        if crc.len() != 8 || name.is_empty() {
            return None;
        }
        let crc32c = u32::from_str_radix(crc, 16).ok()?;
        let len = len.parse().ok().filter(|_| !len.starts_with('+'))?;
        Some((name, Sums { len, crc32c }))
    }

    /// The sums of `bytes`.
    pub fn of(bytes: &[u8]) -> Sums {
        Sums {
            len: bytes.len() as u64,
            crc32c: crc_fast::crc32_iscsi(bytes),
        }
    }

    /// Reads `path` whole and returns its sums (blocking: call it off the
    /// actor threads).
    pub fn of_file(path: &FsPath) -> Result<Sums> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Sums {
            len,
            crc32c: digest.finalize() as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::ReplicationConfig;

    #[test]
    fn sidecar_names_round_trip_names_with_dots() {
        let sums = Sums::of(b"123456789");
        assert_eq!(sums.crc32c, 0xe306_9283, "the CRC-32C check value");
        let name = sums.sidecar_name("0000000007.idx");
        assert_eq!(name, "0000000007.idx.9.e3069283");
        assert_eq!(Sums::parse_sidecar_name(&name), Some(("0000000007.idx", sums)));
        for bad in [
            "x.9",
            "x.9.e306928",
            "x.+9.e3069283",
            ".9.e3069283",
            "x.9.g3069283",
        ] {
            assert_eq!(Sums::parse_sidecar_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls_join_into_store_dirs() {
        let root = RemoteUrl::parse("s3://bucket/node1").unwrap();
        let store = root.join("17");
        assert_eq!(store.to_string(), "s3://bucket/node1/17");
        assert_eq!(store.path().as_ref(), "node1/17");
        assert_eq!(store.store_key(), "s3://bucket");
        assert!(RemoteUrl::is_url("file:///tmp/x"));
        assert!(!RemoteUrl::is_url("/tmp/x"));
        for bad in [
            "ftp://host/x",
            "https://s3.eu-west-1.amazonaws.com/bucket/node1",
            "http://127.0.0.1:9000/b",
        ] {
            assert!(
                matches!(RemoteUrl::parse(bad), Err(Error::InvalidRemote { .. })),
                "{bad}"
            );
        }
    }

    // Regression: a panic in the uploader's or the mirror's blocking work
    // came back as `ComponentStopped`, hiding the panic and its message.
    #[test]
    fn a_panic_in_blocking_work_is_a_panicked_error_with_its_message() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = runtime
            .block_on(blocking(KvId(7), "uploader", || -> Result<()> {
                panic!("disk on fire")
            }))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Panicked { kv: KvId(7), what: "uploader", message } if message == "disk on fire"
            ),
            "{err:?}"
        );
        let fine = runtime.block_on(blocking(KvId(7), "uploader", || Ok(3)));
        assert_eq!(fine.unwrap(), 3);
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        ReplicationConfig::default().validate().unwrap();
        let small_parts = ReplicationConfig {
            part_size: 1 << 20,
            ..ReplicationConfig::default()
        };
        assert!(matches!(
            small_parts.validate(),
            Err(Error::Config {
                field: "replication.part_size",
                ..
            })
        ));
        let no_uploads = ReplicationConfig {
            concurrency: 0,
            ..ReplicationConfig::default()
        };
        assert!(no_uploads.validate().is_err());
        for max_upload_memory in [0, 1 << 32] {
            let unbounded = ReplicationConfig {
                max_upload_memory,
                ..ReplicationConfig::default()
            };
            assert!(matches!(
                unbounded.validate(),
                Err(Error::Config {
                    field: "replication.max_upload_memory",
                    ..
                })
            ));
        }
        let bad_url = ReplicationConfig {
            url: Some("not a url".into()),
            ..ReplicationConfig::default()
        };
        assert!(matches!(bad_url.validate(), Err(Error::InvalidRemote { .. })));
    }
}
