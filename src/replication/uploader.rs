//! The uploader: one task per replicated store, on an arbiter thread of its
//! own (started with the first replica), so that network work never runs on
//! the mailbox threads of the backup actors. Reading and checksumming local
//! files goes to tokio's blocking pool.
//!
//! Per store the task loops: take the next step from the store's
//! [`Replica`] queue (a rescan, a batch of files, or one metadata file as a
//! barrier), carry it out, and on failure count it, back off (doubling from
//! `retry_initial` to `retry_max`) and rescan before the next try. One
//! semaphore bounds the uploads in flight over every store; an optional
//! pacer bounds their bytes per second.
//!
//! Uploading one file: its length and CRC-32C are taken while reading it;
//! if the remote dir already holds an object of that name, length and
//! checksum, nothing is sent. Else the sidecar goes up first, then the
//! object, whole: one `put` below `multipart_threshold`, a multipart upload
//! above it (which the store makes visible only when complete, and which is
//! aborted on failure). Stale sidecars of the name are removed after.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::metadata::parse_metadata_file_name;
use crate::replication::queue::{Item, Kind, Next, Replica};
use crate::replication::{RemoteUrl, ReplicationConfig, Sums, SUMS_DIR};

/// Files handed to one batch at most.
const BATCH: usize = 64;

/// Starts and feeds the per-store upload tasks.
pub(crate) struct Uploader {
    shared: Arc<Shared>,
    arbiter: Option<actix_rt::Arbiter>,
}

struct Shared {
    config: ReplicationConfig,
    clients: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    permits: Semaphore,
    pacer: Option<Pacer>,
}

impl Uploader {
    pub fn new(config: ReplicationConfig) -> Uploader {
        let pacer = config.max_bytes_per_sec.map(Pacer::new);
        Uploader {
            shared: Arc::new(Shared {
                permits: Semaphore::new(config.concurrency),
                clients: Mutex::new(HashMap::new()),
                pacer,
                config,
            }),
            arbiter: None,
        }
    }

    /// The client of `remote`'s store, opened once (no network yet).
    pub fn client(&self, remote: &RemoteUrl) -> Result<Arc<dyn ObjectStore>> {
        self.shared.client(remote)
    }

    /// Starts the upload task of `replica`. It runs until the replica is
    /// retired.
    pub fn replicate(&mut self, replica: Arc<Replica>) -> Result<()> {
        let client = self.shared.client(&replica.remote)?;
        let shared = Arc::clone(&self.shared);
        let arbiter = self.arbiter.get_or_insert_with(actix_rt::Arbiter::new);
        let span = tracing::info_span!("replicate", kv_store = replica.kv.0, remote = %replica.remote);
        let task = Task {
            base: replica.remote.path().clone(),
            replica,
            shared,
            client,
            remote: HashMap::new(),
            sums: HashMap::new(),
            failures: 0,
        };
        if !arbiter.spawn(task.run().instrument(span)) {
            return Err(Error::ComponentStopped);
        }
        Ok(())
    }
}

impl Shared {
    fn client(&self, remote: &RemoteUrl) -> Result<Arc<dyn ObjectStore>> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(remote.store_key()) {
            return Ok(Arc::clone(client));
        }
        let client = remote.open(&self.config.options)?;
        clients.insert(remote.store_key().to_string(), Arc::clone(&client));
        Ok(client)
    }
}

/// Spaces sends so that they average at most `per_sec` bytes per second.
struct Pacer {
    per_sec: u64,
    next_free: Mutex<Instant>,
}

impl Pacer {
    fn new(per_sec: u64) -> Pacer {
        Pacer {
            per_sec,
            next_free: Mutex::new(Instant::now()),
        }
    }

    async fn take(&self, bytes: u64) {
        let wait = {
            let mut next_free = self.next_free.lock();
            let now = Instant::now();
            let start = (*next_free).max(now);
            *next_free = start + Duration::from_secs_f64(bytes as f64 / self.per_sec as f64);
            start - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What the remote dir holds under one name.
#[derive(Clone, Debug, Default)]
pub(crate) struct RemoteEntry {
    /// The object's length, if it is there.
    pub object: Option<u64>,
    /// The sums its sidecars give.
    pub sidecars: Vec<Sums>,
}

impl RemoteEntry {
    /// Whether the object is there whole with these sums.
    fn holds(&self, sums: Sums) -> bool {
        self.object == Some(sums.len) && self.sidecars.contains(&sums)
    }
}

/// Lists a store's remote dir: objects and sidecars, by encoded name.
pub(crate) async fn list_remote(
    client: &dyn ObjectStore,
    base: &Path,
) -> Result<BTreeMap<String, RemoteEntry>> {
    let mut entries: BTreeMap<String, RemoteEntry> = BTreeMap::new();
    let mut listing = client.list(Some(base));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| Error::Remote {
            op: "list",
            location: base.to_string(),
            source,
        })?;
        let Some(parts) = meta.location.prefix_match(base) else {
            continue;
        };
        let parts: Vec<PathPart<'_>> = parts.collect();
        match parts.as_slice() {
            [name] => entries.entry(name.as_ref().to_string()).or_default().object = Some(meta.size),
            [dir, sidecar] if dir.as_ref() == SUMS_DIR => {
                if let Some((name, sums)) = Sums::parse_sidecar_name(sidecar.as_ref()) {
                    entries.entry(name.to_string()).or_default().sidecars.push(sums);
                }
            }
            _ => {}
        }
    }
    Ok(entries)
}

/// The encoded form of a file name as one path segment.
pub(crate) fn segment(name: &str) -> String {
    PathPart::from(name).as_ref().to_string()
}

/// Lists a backup dir for upload: metadata files first (sorted by `n`),
/// then the other files, in a second listing. A file linked before a
/// metadata file was written exists for the whole second listing, so
/// whatever metadata the first listing saw, the files it follows are found.
fn list_local(dir: &FsPath) -> Result<(Vec<Item>, Vec<Item>)> {
    let read = |keep: &dyn Fn(&str) -> bool| -> Result<Vec<(String, u64)>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            // Not created yet: nothing to upload.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read dir", dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read dir", dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !keep(&name) {
                continue; // temp files of an interrupted write
            }
            let meta = entry.metadata().map_err(|e| Error::io("stat", entry.path(), e))?;
            if meta.is_file() {
                out.push((name, meta.len()));
            }
        }
        Ok(out)
    };
    let mut metadata = read(&|name| parse_metadata_file_name(name).is_some())?;
    metadata.sort_by_key(|(name, _)| parse_metadata_file_name(name));
    let files = read(&|name| parse_metadata_file_name(name).is_none())?;
    let items = |list: Vec<(String, u64)>, kind| {
        list.into_iter()
            .map(|(name, len)| Item::new(name, len, kind))
            .collect()
    };
    Ok((items(files, Kind::File), items(metadata, Kind::Metadata)))
}

/// What became of one queued file.
enum Outcome {
    Uploaded(Sums),
    AlreadyThere(Sums),
    /// Gone from the backup dir (removed by hand): nothing to upload.
    Vanished,
}

struct Task {
    replica: Arc<Replica>,
    shared: Arc<Shared>,
    client: Arc<dyn ObjectStore>,
    base: Path,
    /// What the remote dir holds, by encoded name: listed by each rescan,
    /// kept up to date by each upload.
    remote: HashMap<String, RemoteEntry>,
    /// Sums of local files already read (backup files never change).
    sums: HashMap<String, Sums>,
    failures: u32,
}

impl Task {
    async fn run(mut self) {
        loop {
            let failed = match self.replica.next(BATCH) {
                Next::Retired => break,
                Next::Idle => {
                    self.replica.wake.notified().await;
                    continue;
                }
                Next::Rescan => match self.rescan().await {
                    Ok(items) => {
                        self.replica.rescanned(items);
                        None
                    }
                    Err(e) => Some((e, 1)),
                },
                Next::Files(items) => self.upload_batch(&items).await,
                Next::Metadata(item) => self.upload_batch(std::slice::from_ref(&item)).await,
            };
            match failed {
                None => self.failures = 0,
                Some((e, attempts)) => {
                    self.failures += 1;
                    let wait = self.backoff();
                    tracing::warn!(error = %e, ?wait, "upload failed; retrying after a backoff and a rescan");
                    self.replica.failed(e.to_string(), attempts);
                    // Only a retirement ends the wait early, not a push.
                    let deadline = tokio::time::Instant::now() + wait;
                    loop {
                        let sleep = std::pin::pin!(tokio::time::sleep_until(deadline));
                        let woken = std::pin::pin!(self.replica.wake.notified());
                        match futures::future::select(sleep, woken).await {
                            futures::future::Either::Left(_) => break,
                            futures::future::Either::Right(_) if self.replica.is_retired() => break,
                            futures::future::Either::Right(_) => {}
                        }
                    }
                    // The next step is the rescan `failed` asked for (or
                    // the end, if the replica was retired meanwhile).
                }
            }
        }
        tracing::debug!("uploader of this store ended");
    }

    fn backoff(&self) -> Duration {
        let config = &self.shared.config;
        let doublings = self.failures.saturating_sub(1).min(30);
        config
            .retry_initial
            .saturating_mul(1 << doublings)
            .min(config.retry_max)
    }

    /// Lists the backup dir and the remote dir; returns what is to upload
    /// or to check, files before metadata.
    async fn rescan(&mut self) -> Result<Vec<Item>> {
        self.replica.rescans.fetch_add(1, Relaxed);
        let dir = self.replica.local.clone();
        let (files, metadata) = blocking(move || list_local(&dir)).await?;
        let remote = list_remote(&*self.client, &self.base).await?;
        self.remote = remote.into_iter().collect();
        let mut todo = Vec::new();
        let (mut there, mut to_check) = (0usize, 0usize);
        for item in files.into_iter().chain(metadata) {
            let known = self.sums.get(&item.name).copied();
            let entry = self.remote.get(&segment(&item.name));
            match (known, entry) {
                (Some(sums), Some(entry)) if entry.holds(sums) => there += 1,
                (_, Some(entry)) if entry.object == Some(item.len) => {
                    to_check += 1;
                    todo.push(item);
                }
                _ => todo.push(item),
            }
        }
        tracing::info!(
            to_upload = todo.len() - to_check,
            to_check,
            there,
            "rescanned the backup dir against the remote dir"
        );
        Ok(todo)
    }

    /// Uploads `items` concurrently; on failure returns the first error and
    /// the number of failed files (the others are recorded as done).
    async fn upload_batch(&mut self, items: &[Item]) -> Option<(Error, u64)> {
        let results = futures::future::join_all(items.iter().map(|item| self.upload(item))).await;
        let mut failed = None;
        let mut failures = 0;
        for (item, result) in items.iter().zip(results) {
            match result {
                Ok(outcome) => self.record(item, outcome),
                Err(e) => {
                    failures += 1;
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            None => {
                self.replica.done(items.len());
                None
            }
            Some(e) => Some((e, failures)),
        }
    }

    fn record(&mut self, item: &Item, outcome: Outcome) {
        let r = &self.replica;
        match outcome {
            Outcome::Uploaded(sums) => {
                r.uploaded_files.fetch_add(1, Relaxed);
                r.uploaded_bytes.fetch_add(sums.len, Relaxed);
                self.sums.insert(item.name.clone(), sums);
                let entry = self.remote.entry(segment(&item.name)).or_default();
                entry.object = Some(sums.len);
                entry.sidecars = vec![sums];
            }
            Outcome::AlreadyThere(sums) => {
                r.already_there.fetch_add(1, Relaxed);
                self.sums.insert(item.name.clone(), sums);
            }
            Outcome::Vanished => {
                r.upload_errors.fetch_add(1, Relaxed);
                tracing::warn!(file = %item.name, "queued file vanished from the backup dir; not uploaded");
            }
        }
    }

    fn remote_error(&self, op: &'static str, location: &Path, source: object_store::Error) -> Error {
        Error::Remote {
            op,
            location: format!("{}/{}", self.replica.remote.store_key(), location),
            source,
        }
    }

    async fn upload(&self, item: &Item) -> Result<Outcome> {
        let key = segment(&item.name);
        let entry = self.remote.get(&key).cloned().unwrap_or_default();
        let known = self.sums.get(&item.name).copied();
        if let Some(sums) = known.filter(|sums| entry.holds(*sums)) {
            // Read and uploaded by this process already (a store's first
            // round after a restart reports every file again).
            return Ok(Outcome::AlreadyThere(sums));
        }
        let _permit = self
            .shared
            .permits
            .acquire()
            .await
            .map_err(|_| Error::ComponentStopped)?;
        let path = self.replica.local.join(&item.name);
        let threshold = self.shared.config.multipart_threshold;
        let read = {
            let path = path.clone();
            blocking(move || read_local(&path, threshold, known)).await
        };
        let (sums, body) = match read {
            Ok(read) => read,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Outcome::Vanished)
            }
            Err(e) => return Err(e),
        };
        if entry.holds(sums) {
            return Ok(Outcome::AlreadyThere(sums));
        }
        let sums_dir = self.base.clone().join(SUMS_DIR);
        if !entry.sidecars.contains(&sums) {
            // The sidecar first: an object is never there without one.
            let sidecar = sums_dir.clone().join(sums.sidecar_name(&item.name));
            let text = format!("len {}\ncrc32c {:08x}\n", sums.len, sums.crc32c);
            self.client
                .put(&sidecar, PutPayload::from(text))
                .await
                .map_err(|e| self.remote_error("put", &sidecar, e))?;
        }
        let location = self.base.clone().join(item.name.as_str());
        match body {
            Some(bytes) => {
                self.pace(sums.len).await;
                self.client
                    .put(&location, PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.remote_error("put", &location, e))?;
            }
            None => self.put_multipart(&path, &location, sums).await?,
        }
        for stale in entry.sidecars.iter().filter(|s| **s != sums) {
            let sidecar = sums_dir.clone().join(stale.sidecar_name(&item.name));
            if let Err(e) = self.client.delete(&sidecar).await {
                tracing::warn!(error = %e, sidecar = %sidecar, "could not remove a stale sidecar");
            }
        }
        tracing::debug!(file = %item.name, len = sums.len, "uploaded");
        Ok(Outcome::Uploaded(sums))
    }

    async fn pace(&self, bytes: u64) {
        if let Some(pacer) = &self.shared.pacer {
            pacer.take(bytes).await;
        }
    }

    /// Uploads a large file in parts, checking that its bytes still give
    /// `sums`; the object becomes visible only on `complete`.
    async fn put_multipart(&self, path: &FsPath, location: &Path, sums: Sums) -> Result<()> {
        let mut upload = self
            .client
            .put_multipart(location)
            .await
            .map_err(|e| self.remote_error("start multipart upload", location, e))?;
        let part_size = self.shared.config.part_size;
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        let mut offset = 0;
        let sent: Result<()> = async {
            while offset < sums.len {
                let n = part_size.min(sums.len - offset);
                let path = path.to_path_buf();
                let part = blocking(move || read_at(&path, offset, n)).await?;
                digest.update(&part);
                self.pace(n).await;
                upload
                    .put_part(PutPayload::from(part))
                    .await
                    .map_err(|e| self.remote_error("put part", location, e))?;
                offset += n;
            }
            if digest.finalize() as u32 != sums.crc32c {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    reason: "its bytes changed between checksum and upload".into(),
                });
            }
            Ok(())
        }
        .await;
        match sent {
            Ok(()) => {
                upload
                    .complete()
                    .await
                    .map_err(|e| self.remote_error("complete multipart upload", location, e))?;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(error = %abort, "could not abort a multipart upload");
                }
                Err(e)
            }
        }
    }
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or(Err(Error::ComponentStopped))
}

/// Reads a local file's sums, and below `threshold` its bytes too (one
/// read for both). Above it, `known` sums are trusted (backup files never
/// change; the multipart upload checks them again).
fn read_local(path: &PathBuf, threshold: u64, known: Option<Sums>) -> Result<(Sums, Option<Bytes>)> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    if len < threshold {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        return Ok((Sums::of(&bytes), Some(Bytes::from(bytes))));
    }
    let sums = match known {
        Some(sums) if sums.len == len => sums,
        _ => Sums::of_file(path)?,
    };
    Ok((sums, None))
}

fn read_at(path: &FsPath, offset: u64, len: u64) -> Result<Bytes> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_spaces_sends_to_the_rate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let pacer = Pacer::new(1_000_000);
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..4 {
                pacer.take(50_000).await;
            }
        });
        // The first send goes at once, each later one 50 ms after the one
        // before: a lower bound, which a slow machine only exceeds.
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn local_listing_puts_metadata_after_files_in_number_order_and_skips_temps() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "metadata.10.dat",
            "b.sqi",
            "metadata.2.dat",
            ".cbk-tmp.x",
            "a~1.sqi",
        ] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let (files, metadata) = list_local(dir.path()).unwrap();
        let mut files: Vec<_> = files.into_iter().map(|i| i.name).collect();
        files.sort();
        assert_eq!(files, ["a~1.sqi", "b.sqi"]);
        let metadata: Vec<_> = metadata.into_iter().map(|i| (i.name, i.kind)).collect();
        assert_eq!(
            metadata,
            [
                ("metadata.2.dat".to_string(), Kind::Metadata),
                ("metadata.10.dat".to_string(), Kind::Metadata)
            ]
        );
        let (files, metadata) = list_local(&dir.path().join("missing")).unwrap();
        assert!(
            files.is_empty() && metadata.is_empty(),
            "a dir not created yet holds nothing"
        );
    }
}
