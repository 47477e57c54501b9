//! Reading a backup root from object storage: every object of the remote
//! copy is downloaded into a local dir laid out as the component writes
//! backup roots (`<dir>/<kv_id>/<name>`), after checking it against its
//! sidecar, so that inspect, verify and restore run on it unchanged.
//!
//! The remote may be written to while it is read (a node still
//! replicating). A listing is not a snapshot, so the root is listed three
//! times, each listing starting after the one before ended: metadata files
//! are taken from the first only, the other objects from the second, and
//! sidecars from the third. Every file a metadata file follows was uploaded
//! before it, so it is in the second listing; every object's sidecar was
//! written before it, so it is in the third. The copy read is restorable
//! like the remote is, and no object is taken for one without a sidecar.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};

use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::layout::store_dir_id;
use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::manifest::parse_prune_file_name;
use crate::metadata::parse_metadata_file_name;
use crate::replication::prunes::{fetch_records, pruned_names};
use crate::replication::uploader::segment;
use crate::replication::{blocking, on_own_runtime, RemoteUrl, Sums, SUMS_DIR};

/// What [`Error::Panicked`] names when the mirror's blocking work panics.
const MIRROR: &str = "mirror";

/// What [`mirror`] found.
#[derive(Debug, Default)]
pub struct Mirrored {
    /// Files downloaded and matching their sidecar.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Objects that could not be trusted, one line each (not written): no
    /// sidecar, more than one, length or checksum unlike the sidecar's, a
    /// name that is not a plain file name, two names for one file.
    pub problems: Vec<String>,
    /// Sidecars whose object is not there: uploads under way or cut off
    /// (the object goes up after its sidecar). Not problems: the remote
    /// copy claims no such file yet.
    pub in_flight: Vec<String>,
}

/// Downloads the backup root at `url` into `into` (created; must be
/// missing or empty). The client's settings come from the environment
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`), overridden by `options`. Blocks until
/// done (on a thread and runtime of its own, so it may be called from any
/// context).
pub fn mirror(url: &str, options: &BTreeMap<String, String>, into: &FsPath) -> Result<Mirrored> {
    let remote = RemoteUrl::parse(url)?;
    let client = remote.open(options)?;
    if std::fs::read_dir(into).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Error::RestoreTargetNotEmpty {
            path: into.to_path_buf(),
        });
    }
    std::fs::create_dir_all(into).map_err(|e| Error::io("create dir", into, e))?;
    on_own_runtime(into, || mirror_all(&*client, &remote, into))
}

/// One object to download.
struct Job {
    /// The store whose dir it goes into.
    kv: KvId,
    label: String,
    meta: ObjectMeta,
    sidecars: Vec<Sums>,
    target: PathBuf,
}

/// The objects of one listing that are metadata files (or that are not),
/// by (store, name), still encoded.
async fn objects_below(
    client: &dyn ObjectStore,
    remote: &RemoteUrl,
    metadata: bool,
) -> Result<BTreeMap<(String, String), ObjectMeta>> {
    let mut out = BTreeMap::new();
    for (parts, meta) in remote.list_below(client).await? {
        if let [store, name] = parts.as_slice() {
            if parse_metadata_file_name(name).is_some() == metadata {
                out.insert((store.clone(), name.clone()), meta);
            }
        }
    }
    Ok(out)
}

async fn mirror_all(client: &dyn ObjectStore, remote: &RemoteUrl, into: &FsPath) -> Result<Mirrored> {
    // Pass 1: the metadata files, and only them; pass 2: every other object.
    let metadata = objects_below(client, remote, true).await?;
    let mut objects = objects_below(client, remote, false).await?;
    objects.extend(metadata);
    // What the remote's own prune records name is gone or going (after
    // their grace period): not read, as if deleted already. The records
    // themselves are read, so the copy says it was pruned.
    let mut records_by_store: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (store, name) in objects.keys() {
        if parse_prune_file_name(name).is_some() {
            records_by_store
                .entry(store.clone())
                .or_default()
                .push(name.clone());
        }
    }
    let mut pruned: HashSet<(String, String)> = HashSet::new();
    for (store, names) in records_by_store {
        let Ok(decoded) = decode(&store) else {
            continue;
        };
        let records = fetch_records(client, &remote.join(&decoded), names).await?;
        pruned.extend(
            pruned_names(&records)
                .into_iter()
                .map(|n| (store.clone(), segment(&n))),
        );
        // The records themselves are written as read (not through their
        // sidecars: a record whose write was cut off and redone has two),
        // so the copy always says it was pruned.
        let dir = into.join(&decoded);
        for (p, record) in &records {
            let name = crate::manifest::prune_file_name(*p);
            pruned.insert((store.clone(), name.clone()));
            let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Corrupt {
                path: dir.join(&name),
                reason: format!("cannot encode: {e}"),
            })?;
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create dir", &dir, e))?;
            std::fs::write(dir.join(&name), bytes).map_err(|e| Error::io("write", dir.join(&name), e))?;
        }
    }
    objects.retain(|key, _| !pruned.contains(key));
    // Pass 3: every sidecar.
    let mut sidecars: BTreeMap<(String, String), Vec<Sums>> = BTreeMap::new();
    for (parts, _) in remote.list_below(client).await? {
        if let [store, dir, sidecar] = parts.as_slice() {
            if let Some((name, sums)) = Sums::parse_sidecar_name(sidecar).filter(|_| dir == SUMS_DIR) {
                let key = (store.clone(), name.to_string());
                sidecars.entry(key).or_default().push(sums);
            }
        }
    }

    let mut out = Mirrored::default();
    for key @ (store, name) in sidecars.keys() {
        if !objects.contains_key(key) && !pruned.contains(key) {
            out.in_flight.push(format!("{store}/{name}"));
        }
    }
    let mut jobs = Vec::new();
    let mut targets = HashSet::new();
    for ((store, name), meta) in objects {
        let label = format!("{store}/{name}");
        let (kv, target) = match (decode(&store), decode(&name)) {
            (Ok(store), Ok(name)) => match store_dir_id(&store) {
                Some(kv) => (kv, into.join(&store).join(name)),
                None => {
                    // Not a store's dir: no part of a backup root (which
                    // `BackupRoot::open` would pass over too).
                    tracing::debug!(object = %label, "not in a store's dir; not downloaded");
                    continue;
                }
            },
            (Err(reason), _) | (_, Err(reason)) => {
                out.problems.push(format!("{label}: {reason}"));
                continue;
            }
        };
        if !targets.insert(target.clone()) {
            out.problems
                .push(format!("{label}: another object's name decodes to the same file"));
            continue;
        }
        let sidecars = sidecars.remove(&(store, name)).unwrap_or_default();
        jobs.push(Job {
            kv,
            label,
            meta,
            sidecars,
            target,
        });
    }
    let results: Vec<Result<Fetched>> = futures::stream::iter(jobs)
        .map(|job| download(client, remote, job))
        .buffer_unordered(8)
        .collect()
        .await;
    for result in results {
        match result? {
            Ok(bytes) => {
                out.files += 1;
                out.bytes += bytes;
            }
            Err(problem) => out.problems.push(problem),
        }
    }
    out.problems.sort();
    out.in_flight.sort();
    Ok(out)
}

/// What became of one object: kept (its bytes), or a problem (not written).
type Fetched = std::result::Result<u64, String>;

/// Downloads one object into a temp file in the root, checks it against
/// its sidecar, and renames it into place.
async fn download(client: &dyn ObjectStore, remote: &RemoteUrl, job: Job) -> Result<Fetched> {
    let Job {
        kv,
        label,
        meta,
        sidecars,
        target,
    } = job;
    let claimed = match sidecars.as_slice() {
        [] => return Ok(Err(format!("{label}: no sidecar with its length and checksum"))),
        [one] => *one,
        many => {
            let many: Vec<String> = many.iter().map(describe).collect();
            return Ok(Err(format!(
                "{label}: {} sidecars ({}), a replacement cut off: not trusted",
                many.len(),
                many.join(", ")
            )));
        }
    };
    let fail = |e| remote.error("get", &meta.location, e);
    // The temp file goes in the root: no store dir is made for an object
    // that is not kept.
    let root = target
        .parent()
        .and_then(FsPath::parent)
        .unwrap_or(FsPath::new("."))
        .to_path_buf();
    let temp = blocking(kv, MIRROR, move || {
        tempfile::Builder::new()
            .prefix(".cbk-download.")
            .tempfile_in(&root)
            .map_err(|e| Error::io("create temp file in", &root, e))
    })
    .await?;
    let mut stream = client.get(&meta.location).await.map_err(fail)?.into_stream();
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let mut len = 0u64;
    let mut buf = Vec::new();
    let mut file = temp;
    loop {
        let chunk = stream.next().await.transpose().map_err(fail)?;
        if let Some(chunk) = &chunk {
            digest.update(chunk);
            len += chunk.len() as u64;
            buf.extend_from_slice(chunk);
        }
        // Written in pieces of up to 4 MiB, on the blocking pool.
        if buf.len() >= 4 << 20 || (chunk.is_none() && !buf.is_empty()) {
            let piece = std::mem::take(&mut buf);
            file = blocking(kv, MIRROR, move || {
                file.write_all(&piece)
                    .map_err(|e| Error::io("write", file.path(), e))?;
                Ok(file)
            })
            .await?;
        }
        if chunk.is_none() {
            break;
        }
    }
    let got = Sums {
        len,
        crc32c: digest.finalize() as u32,
    };
    if got != claimed {
        return Ok(Err(format!(
            "{label}: {}, but its sidecar says {}",
            describe(&got),
            describe(&claimed)
        )));
    }
    blocking(kv, MIRROR, move || {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create dir", dir, e))?;
        }
        file.persist_noclobber(&target)
            .map_err(|e| Error::io("rename into place", &target, e.error))?;
        Ok(Ok(len))
    })
    .await
}

fn describe(sums: &Sums) -> String {
    format!("{} bytes crc32c {:08x}", sums.len, sums.crc32c)
}

/// A path segment as the file name it encodes, or why it is not a plain
/// file name once decoded (a hostile `..%2F..` must not leave the dir).
fn decode(segment: &str) -> std::result::Result<String, &'static str> {
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| "the name is not UTF-8 once decoded")?;
    if name.is_empty() || name == "." || name == ".." || name.starts_with('.') || name.contains(['/', '\0']) {
        return Err("the name is not a plain file name once decoded");
    }
    Ok(name.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused_and_encoded_ones_decoded() {
        assert_eq!(decode("000000000001.sqi%7E1").unwrap(), "000000000001.sqi~1");
        for bad in [
            "..",
            "%2E%2E",
            "a%2Fb",
            "..%2F..%2Fetc",
            "%00",
            ".cbk-tmp.x",
            "%FF",
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}
