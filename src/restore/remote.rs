//! Reading a backup root from object storage: every object of the remote
//! copy is downloaded into a local dir laid out as the component writes
//! backup roots (`<dir>/<kv_id>/<name>`), after checking it against its
//! sidecar, so that inspect, verify and restore run on it unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::Path as FsPath;
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};
use crate::replication::{RemoteUrl, Sums, SUMS_DIR};

/// What [`mirror`] found.
#[derive(Debug, Default)]
pub struct Mirrored {
    /// Files downloaded and matching their sidecar.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Objects that could not be trusted, one line each (not written):
    /// no sidecar, or length or checksum unlike the sidecar's.
    pub problems: Vec<String>,
    /// Sidecars whose object is not there: uploads under way or cut off
    /// (the object goes up after its sidecar). Not problems: the remote
    /// copy claims no such file yet.
    pub in_flight: Vec<String>,
}

/// Downloads the backup root at `url` into `into` (created, must be empty
/// or missing). The client's settings come from the environment (`AWS_*`,
/// `GOOGLE_*`, `AZURE_*`), overridden by `options`. Blocks; runs its own
/// small runtime, so call it outside an async context.
pub fn mirror(url: &str, options: &BTreeMap<String, String>, into: &FsPath) -> Result<Mirrored> {
    let remote = RemoteUrl::parse(url)?;
    let client = remote.open(options)?;
    std::fs::create_dir_all(into).map_err(|e| Error::io("create dir", into, e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start a runtime for", into, e))?;
    runtime.block_on(mirror_all(&*client, &remote, into))
}

/// One store's objects and sidecars, by encoded name.
#[derive(Default)]
struct Listed {
    objects: BTreeMap<String, u64>,
    sidecars: HashMap<String, Vec<Sums>>,
}

async fn mirror_all(client: &dyn ObjectStore, remote: &RemoteUrl, into: &FsPath) -> Result<Mirrored> {
    let base = remote.path();
    let fail = |op, location: &Path| {
        let location = format!("{}/{}", remote.store_key(), location);
        move |source| Error::Remote { op, location, source }
    };
    let metas: Vec<_> = client
        .list(Some(base))
        .try_collect()
        .await
        .map_err(fail("list", base))?;
    let mut stores: BTreeMap<String, Listed> = BTreeMap::new();
    for meta in metas {
        let Some(parts) = meta.location.prefix_match(base) else {
            continue;
        };
        let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
        match parts.as_slice() {
            [store, name] => {
                stores
                    .entry(store.clone())
                    .or_default()
                    .objects
                    .insert(name.clone(), meta.size);
            }
            [store, dir, sidecar] if dir == SUMS_DIR => {
                if let Some((name, sums)) = Sums::parse_sidecar_name(sidecar) {
                    let listed = stores.entry(store.clone()).or_default();
                    listed.sidecars.entry(name.to_string()).or_default().push(sums);
                }
            }
            _ => {}
        }
    }
    let mut out = Mirrored::default();
    let mut jobs = Vec::new();
    for (store, listed) in &stores {
        let dir = into.join(decode(store)?);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create dir", &dir, e))?;
        for name in listed.sidecars.keys() {
            if !listed.objects.contains_key(name) {
                out.in_flight.push(format!("{store}/{name}"));
            }
        }
        for name in listed.objects.keys() {
            let location = base.clone().join(store.as_str()).join(name.as_str());
            let sidecars = listed.sidecars.get(name).cloned().unwrap_or_default();
            let target = dir.join(decode(name)?);
            jobs.push((format!("{store}/{name}"), location, sidecars, target));
        }
    }
    let results: Vec<Result<Option<String>>> = futures::stream::iter(jobs)
        .map(|(label, location, sidecars, target)| async move {
            let bytes = client
                .get(&location)
                .await
                .map_err(fail("get", &location))?
                .bytes()
                .await
                .map_err(fail("get", &location))?;
            let sums = Sums::of(&bytes);
            if sidecars.is_empty() {
                return Ok(Some(format!("{label}: no sidecar with its length and checksum")));
            }
            if !sidecars.contains(&sums) {
                let claimed: Vec<String> = sidecars
                    .iter()
                    .map(|s| format!("{} bytes crc32c {:08x}", s.len, s.crc32c))
                    .collect();
                return Ok(Some(format!(
                    "{label}: {} bytes crc32c {:08x}, but its sidecar says {}",
                    sums.len,
                    sums.crc32c,
                    claimed.join(" or ")
                )));
            }
            let written = blocking_write(target, bytes.to_vec()).await;
            written.map(|()| None)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for result in results {
        match result? {
            None => out.files += 1,
            Some(problem) => out.problems.push(problem),
        }
    }
    out.bytes = count_bytes(into)?;
    out.problems.sort();
    out.in_flight.sort();
    Ok(out)
}

async fn blocking_write(target: PathBuf, bytes: Vec<u8>) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        std::fs::write(&target, bytes).map_err(|e| Error::io("write", &target, e))
    })
    .await
    .unwrap_or(Err(Error::ComponentStopped))
}

fn count_bytes(dir: &FsPath) -> Result<u64> {
    let mut total = 0;
    for store in std::fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))? {
        let store = store.map_err(|e| Error::io("read dir", dir, e))?;
        for file in std::fs::read_dir(store.path()).map_err(|e| Error::io("read dir", store.path(), e))? {
            let file = file.map_err(|e| Error::io("read dir", store.path(), e))?;
            total += file
                .metadata()
                .map_err(|e| Error::io("stat", file.path(), e))?
                .len();
        }
    }
    Ok(total)
}

/// A path segment as the file name it encodes; refuses one that is not a
/// plain name once decoded (a hostile `..%2F..` must not leave `into`).
fn decode(segment: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidRemote {
        url: segment.to_string(),
        reason: reason.into(),
    };
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| bad("an object name is not UTF-8 once decoded"))?;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(bad("an object name is not a plain file name once decoded"));
    }
    Ok(name.into_owned())
}
