//! The uploader: one task per replicated store, on an arbiter thread of its
//! own (started with the first replica), so that network work never runs on
//! the mailbox threads of the backup actors. Reading and checksumming local
//! files goes to tokio's blocking pool.
//!
//! Per store the task loops: take the next step from the store's
//! [`Replica`] queue (a rescan, a batch of files, or a run of metadata
//! files, which is a barrier), carry it out, and on failure count it, back off (doubling from
//! `retry_initial` to `retry_max`) and rescan before the next try. One
//! semaphore bounds the uploads in flight over every store (an upload holds
//! its permit from its read to its put); another, of
//! `max_upload_memory` permits, bounds the file bytes they hold in memory:
//! each body or part waits for its bytes before it is read and gives them
//! back once it is sent. An optional pacer bounds their bytes per second.
//!
//! Uploading one file: its length and CRC-32C are taken while reading it;
//! if the remote dir already holds an object of that name, length and
//! checksum, nothing is sent. Else the sidecar goes up first, then the
//! object, whole: one `put` below `multipart_threshold`, a multipart upload
//! above it (which the store makes visible only when complete, and which is
//! aborted on failure). Stale sidecars of the name are removed after.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::manifest::parse_prune_file_name;
use crate::metadata::parse_metadata_file_name;
use crate::replication::prunes::{fetch_records, pruned_names};
use crate::replication::queue::{Item, Kind, Next, Replica};
use crate::replication::{blocking, RemoteUrl, ReplicationConfig, Sums, SUMS_DIR};

/// Files handed to one batch at most.
const BATCH: usize = 64;

/// What [`Error::Panicked`] names when the uploader's blocking work panics.
const UPLOADER: &str = "uploader";

/// Starts and feeds the per-store upload tasks.
pub(crate) struct Uploader {
    shared: Arc<Shared>,
    arbiter: Option<actix_rt::Arbiter>,
}

struct Shared {
    config: ReplicationConfig,
    clients: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    /// Uploads in flight, over every store (`concurrency`).
    permits: Semaphore,
    /// Bytes of file contents in memory, over every store
    /// (`max_upload_memory`).
    memory: Semaphore,
    /// What those bytes are now, and their peak.
    in_memory: Gauge,
    pacer: Option<Pacer>,
}

impl Uploader {
    pub fn new(config: ReplicationConfig) -> Uploader {
        let pacer = config.max_bytes_per_sec.map(Pacer::new);
        Uploader {
            shared: Arc::new(Shared {
                permits: Semaphore::new(config.concurrency),
                memory: Semaphore::new(config.max_upload_memory.min(u64::from(u32::MAX)) as usize),
                in_memory: Gauge::default(),
                clients: Mutex::new(HashMap::new()),
                pacer,
                config,
            }),
            arbiter: None,
        }
    }

    /// The uploader's arbiter, once started.
    pub fn arbiter(&self) -> Option<actix_rt::ArbiterHandle> {
        self.arbiter.as_ref().map(actix_rt::Arbiter::handle)
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
            vanished: Vec::new(),
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

/// Bytes of files read into memory for upload and not yet sent, and the
/// most there have been at once.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    fn add(&self, bytes: u64) {
        let now = self.now.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(now, Relaxed);
    }

    fn sub(&self, bytes: u64) {
        self.now.fetch_sub(bytes, Relaxed);
    }

    #[cfg(test)]
    fn peak(&self) -> u64 {
        self.peak.load(Relaxed)
    }
}

/// File bytes in memory for an upload (a whole file or one part): counted
/// in the gauge, and holding their share of `max_upload_memory`, until
/// dropped once they are sent.
struct Body<'a> {
    bytes: Bytes,
    gauge: &'a Gauge,
    _memory: SemaphorePermit<'a>,
}

impl<'a> Body<'a> {
    fn new(bytes: Bytes, gauge: &'a Gauge, memory: SemaphorePermit<'a>) -> Body<'a> {
        gauge.add(bytes.len() as u64);
        Body {
            bytes,
            gauge,
            _memory: memory,
        }
    }

    fn payload(&self) -> PutPayload {
        PutPayload::from(self.bytes.clone())
    }
}

impl Drop for Body<'_> {
    fn drop(&mut self) {
        // Before the permit goes back (fields drop after this).
        self.gauge.sub(self.bytes.len() as u64);
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
    /// Whether the object is there whole with these sums: its length, and
    /// one sidecar, with them. Two sidecars mean a replacement was cut off
    /// (the new sidecar went up, maybe not the object): not trusted.
    fn holds(&self, sums: Sums) -> bool {
        self.object == Some(sums.len) && self.sidecars == [sums]
    }
}

/// Lists a store's remote dir: objects and sidecars, by encoded name.
pub(crate) async fn list_remote(
    client: &dyn ObjectStore,
    remote: &RemoteUrl,
) -> Result<HashMap<String, RemoteEntry>> {
    let mut entries: HashMap<String, RemoteEntry> = HashMap::new();
    for (parts, meta) in remote.list_below(client).await? {
        match parts.as_slice() {
            [name] => entries.entry(name.clone()).or_default().object = Some(meta.size),
            [dir, sidecar] if dir == SUMS_DIR => {
                if let Some((name, sums)) = Sums::parse_sidecar_name(sidecar) {
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
            if name.starts_with("prune.") {
                // The dir's own prune records and the bases they declare:
                // the remote keeps its own retention.
                continue;
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

/// A file read, its sidecar up, its object still to put.
struct Ready<'a> {
    name: String,
    path: PathBuf,
    sums: Sums,
    /// The bytes, below the multipart threshold.
    body: Option<Body<'a>>,
    /// Sidecars of the name with other sums, removed once the object is up.
    stale: Vec<Sums>,
    /// The upload's permit (of `concurrency`), held from the read to the
    /// put.
    _slot: SemaphorePermit<'a>,
}

enum Prepared<'a> {
    Done(Outcome),
    Ready(Ready<'a>),
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
    /// Files of the step under way found gone from the backup dir.
    vanished: Vec<String>,
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
                        // A listing that works says little: the backoff
                        // resets on an upload that works (or nothing to do).
                        if items.is_empty() {
                            self.failures = 0;
                        }
                        self.replica.rescanned(items);
                        None
                    }
                    Err(e) => Some((e, 1)),
                },
                Next::Files(items) => self.upload_batch(&items).await,
                Next::Metadata(items) => self.upload_in_order(&items).await,
            };
            match failed {
                None => {}
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
        crate::backoff::backoff(config.retry_initial, config.retry_max, self.failures)
    }

    /// Lists the backup dir and the remote dir; returns what is to upload
    /// or to check, files before metadata.
    async fn rescan(&mut self) -> Result<Vec<Item>> {
        self.replica.rescans.fetch_add(1, Relaxed);
        let dir = self.replica.local.clone();
        let (files, metadata) = blocking(self.replica.kv, UPLOADER, move || list_local(&dir)).await?;
        self.remote = list_remote(&*self.client, &self.replica.remote).await?;
        // What a prune of the remote deleted, or deletes after its grace
        // period, is never uploaded again.
        let objects: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, entry)| entry.object.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        let records = fetch_records(&*self.client, &self.replica.remote, objects).await?;
        let pruned = pruned_names(&records);
        let (files, metadata): (Vec<Item>, Vec<Item>) = (
            files.into_iter().filter(|i| !pruned.contains(&i.name)).collect(),
            metadata
                .into_iter()
                .filter(|i| !pruned.contains(&i.name))
                .collect(),
        );
        let local: std::collections::HashSet<String> =
            files.iter().chain(&metadata).map(|i| segment(&i.name)).collect();
        let pruned: std::collections::HashSet<String> = pruned.iter().map(|n| segment(n)).collect();
        let remote_only = self
            .remote
            .iter()
            .filter(|(name, entry)| {
                entry.object.is_some()
                    && !local.contains(*name)
                    && !pruned.contains(*name)
                    && parse_prune_file_name(name).is_none()
            })
            .count();
        self.replica.remote_only.store(remote_only as u64, Relaxed);
        if remote_only > 0 {
            // Another history under the same prefix (a rebuilt backup dir,
            // another node): never deleted, but a restore would mix them.
            tracing::warn!(
                remote_only,
                "the remote dir holds objects the backup dir does not"
            );
        }
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
        self.settle(items.len(), failed.map(|e| (e, failures)))
    }

    /// Ends an upload step: if none failed, removes its items and resets
    /// the backoff; reports files that vanished (after `done`, which clears
    /// the last error).
    fn settle(&mut self, items: usize, failed: Option<(Error, u64)>) -> Option<(Error, u64)> {
        if failed.is_none() {
            self.replica.done(items);
            self.failures = 0;
        }
        for name in std::mem::take(&mut self.vanished) {
            self.replica.vanished(&name);
        }
        failed
    }

    /// Uploads a run of metadata files one after the other in number
    /// order, so the remote never shows a later number without an earlier
    /// one (and no file read waits in memory for the put of another).
    /// Stops at the first failure (nothing after it goes up).
    async fn upload_in_order(&mut self, items: &[Item]) -> Option<(Error, u64)> {
        let mut outcomes = Vec::new();
        let mut failed = None;
        for item in items {
            match self.upload(item).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let succeeded = outcomes.len();
        for (item, outcome) in items.iter().zip(outcomes) {
            self.record(item, outcome);
        }
        let failed = failed.map(|e| (e, (items.len() - succeeded) as u64));
        self.settle(items.len(), failed)
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
                tracing::warn!(file = %item.name, "queued file vanished from the backup dir; not uploaded");
                self.vanished.push(item.name.clone());
            }
        }
    }

    async fn upload(&self, item: &Item) -> Result<Outcome> {
        match self.prepare(item).await? {
            Prepared::Done(outcome) => Ok(outcome),
            Prepared::Ready(ready) => self.finish(ready).await,
        }
    }

    /// Reads a file (its sums, and its bytes below the multipart
    /// threshold, once their share of the memory bound is free), and puts
    /// its sidecar unless the remote has the object already: after this
    /// only the object is left to put.
    async fn prepare(&self, item: &Item) -> Result<Prepared<'_>> {
        let key = segment(&item.name);
        let entry = self.remote.get(&key).cloned().unwrap_or_default();
        let known = self.sums.get(&item.name).copied();
        if let Some(sums) = known.filter(|sums| entry.holds(*sums)) {
            // Read and uploaded by this process already (a store's first
            // round after a restart reports every file again).
            return Ok(Prepared::Done(Outcome::AlreadyThere(sums)));
        }
        let slot = self.permit().await?;
        let path = self.replica.local.join(&item.name);
        let (sums, body) = match self.read(&path, known).await {
            Ok(read) => read,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Prepared::Done(Outcome::Vanished))
            }
            Err(e) => return Err(e),
        };
        if entry.holds(sums) {
            return Ok(Prepared::Done(Outcome::AlreadyThere(sums)));
        }
        if !entry.sidecars.contains(&sums) {
            // The sidecar first: an object is never there without one.
            let sidecar = self.sidecar(&item.name, sums);
            let text = format!("len {}\ncrc32c {:08x}\n", sums.len, sums.crc32c);
            self.client
                .put(&sidecar, PutPayload::from(text))
                .await
                .map_err(|e| self.replica.remote.error("put", &sidecar, e))?;
        }
        let stale = entry.sidecars.into_iter().filter(|s| *s != sums).collect();
        Ok(Prepared::Ready(Ready {
            name: item.name.clone(),
            path,
            sums,
            body,
            stale,
            _slot: slot,
        }))
    }

    /// Reads a local file's sums, and below the multipart threshold its
    /// bytes too (one read for both), after waiting for their share of the
    /// memory bound. Above it, `known` sums are trusted (backup files never
    /// change; the multipart upload checks them again).
    async fn read(&self, path: &FsPath, known: Option<Sums>) -> Result<(Sums, Option<Body<'_>>)> {
        let kv = self.replica.kv;
        let (file, len) = {
            let path = path.to_path_buf();
            blocking(kv, UPLOADER, move || open_local(&path)).await?
        };
        if len < self.shared.config.multipart_threshold {
            let memory = self.reserve(len).await?;
            let path = path.to_path_buf();
            let bytes = blocking(kv, UPLOADER, move || read_body(file, len, &path)).await?;
            let sums = Sums::of(&bytes);
            return Ok((sums, Some(Body::new(bytes, &self.shared.in_memory, memory))));
        }
        drop(file);
        let sums = match known {
            Some(sums) if sums.len == len => sums,
            _ => {
                let path = path.to_path_buf();
                blocking(kv, UPLOADER, move || Sums::of_file(&path)).await?
            }
        };
        Ok((sums, None))
    }

    /// Puts a prepared file's object (whole), then removes its stale
    /// sidecars.
    async fn finish(&self, ready: Ready<'_>) -> Result<Outcome> {
        let Ready {
            name,
            path,
            sums,
            body,
            stale,
            _slot,
        } = ready;
        let location = self.base.clone().join(name.as_str());
        match body {
            Some(body) => {
                self.pace(sums.len).await;
                self.client
                    .put(&location, body.payload())
                    .await
                    .map_err(|e| self.replica.remote.error("put", &location, e))?;
                drop(body);
            }
            None => self.put_multipart(&path, &location, sums).await?,
        }
        for old in stale {
            // Left in place, it would make the object untrusted: fail, so
            // that the retry's rescan sees both sidecars and repairs it.
            let sidecar = self.sidecar(&name, old);
            self.client
                .delete(&sidecar)
                .await
                .map_err(|e| self.replica.remote.error("delete stale sidecar", &sidecar, e))?;
        }
        tracing::debug!(file = %name, len = sums.len, "uploaded");
        Ok(Outcome::Uploaded(sums))
    }

    fn sidecar(&self, name: &str, sums: Sums) -> Path {
        self.base.clone().join(SUMS_DIR).join(sums.sidecar_name(name))
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.shared
            .permits
            .acquire()
            .await
            .map_err(|_| Error::ComponentStopped)
    }

    /// Waits for `bytes` of the memory bound (all of it, for more than
    /// the bound holds: the file is then read alone).
    async fn reserve(&self, bytes: u64) -> Result<SemaphorePermit<'_>> {
        let cap = self.shared.config.max_upload_memory.min(u64::from(u32::MAX));
        self.shared
            .memory
            .acquire_many(bytes.min(cap) as u32)
            .await
            .map_err(|_| Error::ComponentStopped)
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
            .map_err(|e| self.replica.remote.error("start multipart upload", location, e))?;
        let part_size = self.shared.config.part_size;
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        let mut offset = 0;
        let sent: Result<()> = async {
            while offset < sums.len {
                let n = part_size.min(sums.len - offset);
                let memory = self.reserve(n).await?;
                let path = path.to_path_buf();
                let part = blocking(self.replica.kv, UPLOADER, move || read_at(&path, offset, n)).await?;
                let part = Body::new(part, &self.shared.in_memory, memory);
                digest.update(&part.bytes);
                self.pace(n).await;
                upload
                    .put_part(part.payload())
                    .await
                    .map_err(|e| self.replica.remote.error("put part", location, e))?;
                drop(part);
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
                upload.complete().await.map_err(|e| {
                    self.replica
                        .remote
                        .error("complete multipart upload", location, e)
                })?;
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

/// Opens a local file for upload and takes its length.
fn open_local(path: &FsPath) -> Result<(std::fs::File, u64)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    Ok((file, len))
}

/// Reads at most `len` bytes of `file` (the memory reserved for it).
fn read_body(file: std::fs::File, len: u64, path: &FsPath) -> Result<Bytes> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Bytes::from(bytes))
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
    use crate::callback::BackupFile;
    use crate::engine::KvId;
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions,
        PutOptions, PutResult,
    };
    use std::sync::atomic::AtomicBool;

    /// An in-memory store that records every put (attempted and done) and
    /// can delay or hold back the puts of data files or refuse every put.
    #[derive(Debug, Default)]
    struct Recording {
        inner: InMemory,
        attempts: Mutex<Vec<String>>,
        done: Mutex<Vec<String>>,
        delay_data_files: Option<Duration>,
        gate: Gate,
        refuse_puts: AtomicBool,
    }

    /// Whether the gate opens, given how many puts have arrived.
    type Opens = Box<dyn Fn(usize) -> bool + Send + Sync>;

    /// Holds back the puts of data files until `opens` says so, given how
    /// many have arrived; open for good from then on (and from the start
    /// without `opens`).
    #[derive(Default)]
    struct Gate {
        opens: Mutex<Option<Opens>>,
        arrived: std::sync::atomic::AtomicUsize,
        open: AtomicBool,
        notify: tokio::sync::Notify,
    }

    impl std::fmt::Debug for Gate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Gate")
        }
    }

    impl Gate {
        async fn pass(&self) {
            let arrived = self.arrived.fetch_add(1, Relaxed) + 1;
            if self.opens.lock().as_ref().is_none_or(|opens| opens(arrived)) {
                self.open.store(true, Relaxed);
                self.notify.notify_waiters();
            }
            loop {
                let notified = std::pin::pin!(self.notify.notified());
                let mut notified = notified;
                notified.as_mut().enable();
                if self.open.load(Relaxed) {
                    return;
                }
                notified.await;
            }
        }
    }

    impl std::fmt::Display for Recording {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Recording")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Recording {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            let name = location.to_string();
            self.attempts.lock().push(name.clone());
            if self.refuse_puts.load(Relaxed) {
                return Err(object_store::Error::Generic {
                    store: "Recording",
                    source: "puts refused by the test".into(),
                });
            }
            let data_file = !name.contains("metadata.") && !name.contains(SUMS_DIR);
            if let Some(delay) = self.delay_data_files.filter(|_| data_file) {
                tokio::time::sleep(delay).await;
            }
            if data_file {
                self.gate.pass().await;
            }
            let put = self.inner.put_opts(location, payload, opts).await;
            self.done.lock().push(name);
            put
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// A replica of a temp backup dir holding `names`, uploading to
    /// `store` with `config`, its task started (call inside a System).
    /// Waits until `done` holds, looking every 5 ms; panics naming `what`
    /// after 60 s (an upload that never comes fails, not hangs).
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "waited 60 s for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn replicate(
        store: &Arc<Recording>,
        config: ReplicationConfig,
        names: &[&str],
    ) -> (Arc<Replica>, tempfile::TempDir, Uploader) {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            std::fs::write(dir.path().join(name), name.as_bytes()).unwrap();
        }
        let remote = RemoteUrl::parse("memory:///r/1").unwrap();
        let mut uploader = Uploader::new(config);
        let client: Arc<dyn ObjectStore> = Arc::clone(store) as _;
        uploader
            .shared
            .clients
            .lock()
            .insert(remote.store_key().to_string(), client);
        let replica = Arc::new(Replica::new(KvId(1), dir.path().to_path_buf(), remote, 100));
        uploader.replicate(Arc::clone(&replica)).unwrap();
        (replica, dir, uploader)
    }

    fn files(names: &[&str]) -> Vec<BackupFile> {
        names
            .iter()
            .map(|name| BackupFile {
                name: name.to_string(),
                len: name.len() as u64,
                low_seqno: 1,
                high_seqno: 1,
            })
            .collect()
    }

    #[test]
    fn a_metadata_file_goes_up_after_every_file_queued_before_it_even_when_they_are_slow() {
        let store = Arc::new(Recording {
            delay_data_files: Some(Duration::from_millis(40)),
            ..Recording::default()
        });
        let names = [
            "a.sqi",
            "b.sqi",
            "c.sqi",
            "metadata.1.dat",
            "d.sqi",
            "metadata.2.dat",
            "metadata.3.dat",
            "metadata.4.dat",
        ];
        actix_rt::System::new().block_on(async {
            let (replica, _dir, _uploader) = replicate(&store, ReplicationConfig::default(), &[]);
            // Let the first rescan (of an empty dir) pass, then write and
            // push as rounds and a callback do.
            wait_until("the first rescan is done", || !replica.status().rescan_pending).await;
            for name in names {
                std::fs::write(replica.local.join(name), name.as_bytes()).unwrap();
            }
            replica.push_files(&files(&["a.sqi", "b.sqi", "c.sqi"]));
            replica.push_metadata(1, 14);
            replica.push_files(&files(&["d.sqi"]));
            replica.push_metadata(2, 14);
            replica.push_metadata(3, 14);
            replica.push_metadata(4, 14);
            wait_until("the queue is drained", || replica.is_drained()).await;
        });
        let done: Vec<String> = store
            .done
            .lock()
            .iter()
            .filter(|p| !p.contains(SUMS_DIR))
            .cloned()
            .collect();
        let at = |name: &str| done.iter().position(|p| p.ends_with(name)).expect(name);
        for file in ["a.sqi", "b.sqi", "c.sqi"] {
            assert!(at(file) < at("metadata.1.dat"), "{done:?}");
        }
        assert!(at("d.sqi") < at("metadata.2.dat"), "{done:?}");
        // A run of metadata files goes up in number order: no holes.
        assert!(at("metadata.2.dat") < at("metadata.3.dat") && at("metadata.3.dat") < at("metadata.4.dat"));
        // Every object's sidecar went up before it.
        let all = store.done.lock().clone();
        for name in names {
            let sidecar = all
                .iter()
                .position(|p| p.contains(SUMS_DIR) && p.contains(name))
                .unwrap();
            assert!(
                sidecar < all.iter().position(|p| p.ends_with(name)).unwrap(),
                "{all:?}"
            );
        }
    }

    // Regression: a batch read every file body before any was sent, with
    // no permit held between the read and the put, so 64 files of up to
    // 16 MiB each per store could sit in memory at once.
    #[test]
    fn file_bytes_held_for_upload_never_exceed_max_upload_memory() {
        const MIB: u64 = 1 << 20;
        const BODY: u64 = MIB / 2;
        // 16 uploads in flight could hold 8 MiB of 512 KiB files: the
        // memory bound, not the concurrency, keeps them to 5 MiB.
        let config = ReplicationConfig {
            concurrency: 16,
            part_size: 5 * MIB,
            multipart_threshold: 5 * MIB,
            max_upload_memory: 5 * MIB,
            ..ReplicationConfig::default()
        };
        config.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |i: usize, name: &str, len: u64| {
            std::fs::write(dir.path().join(name), vec![i as u8; len as usize]).unwrap();
            Item::new(name.to_string(), len, Kind::File)
        };
        // More files than a batch has uploads in flight, then one of
        // 6 MiB (two parts, one at a time).
        let small: Vec<Item> = (0..48).map(|i| write(i, &format!("{i:02}.sqi"), BODY)).collect();
        let big = [write(48, "big.sqi", 6 * MIB)];
        let store = Arc::new(Recording::default());
        let remote = RemoteUrl::parse("memory:///r/1").unwrap();
        let uploader = Uploader::new(config);
        // The data puts wait until the bound is used up (no further file
        // can be read) or until more bodies are read than it holds (as
        // they would be without it): the peak is then what the bound
        // allows, with every put held back.
        let shared = Arc::clone(&uploader.shared);
        *store.gate.opens.lock() = Some(Box::new(move |arrived| {
            arrived as u64 > 5 * MIB / BODY || (shared.memory.available_permits() as u64) < BODY
        }));
        let mut task = Task {
            base: remote.path().clone(),
            replica: Arc::new(Replica::new(KvId(1), dir.path().to_path_buf(), remote, 100)),
            shared: Arc::clone(&uploader.shared),
            client: Arc::clone(&store) as Arc<dyn ObjectStore>,
            remote: HashMap::new(),
            sums: HashMap::new(),
            failures: 0,
            vanished: Vec::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for batch in [&small[..], &big[..]] {
            let failed = runtime.block_on(task.upload_batch(batch));
            assert!(failed.is_none(), "{failed:?}");
        }
        assert_eq!(
            uploader.shared.in_memory.peak(),
            5 * MIB,
            "file bytes in memory at once: the bound, reached and never exceeded"
        );
        runtime.block_on(async {
            for (i, item) in small.iter().chain(&big).enumerate() {
                let object = store
                    .inner
                    .get(&Path::from(format!("r/1/{}", item.name)))
                    .await
                    .unwrap();
                let bytes = object.bytes().await.unwrap();
                assert!(
                    bytes.len() as u64 == item.len && bytes.iter().all(|b| *b == i as u8),
                    "{}",
                    item.name
                );
            }
        });
    }

    #[test]
    fn puts_that_keep_failing_back_off_even_when_listing_works() {
        let store = Arc::new(Recording::default());
        store.refuse_puts.store(true, Relaxed);
        let config = ReplicationConfig {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            ..ReplicationConfig::default()
        };
        let window = Duration::from_millis(1500);
        let status = actix_rt::System::new().block_on(async {
            let (replica, _dir, _uploader) = replicate(&store, config, &["a.sqi"]);
            tokio::time::sleep(window).await;
            replica.status()
        });
        // Waits of 100, 200, 400, 800 ms allow at most 4 attempts in 1.5 s
        // (one sidecar put each); a backoff reset by each successful
        // listing would make about 15.
        let attempts = store.attempts.lock().len();
        assert!(
            (1..=4).contains(&attempts),
            "{attempts} put attempts in {window:?}"
        );
        assert!(
            status.upload_errors >= 1 && status.last_error.is_some(),
            "{status:?}"
        );
        assert!(status.pending_files == 1 || status.rescan_pending, "{status:?}");
    }

    #[test]
    fn a_queued_file_gone_from_the_backup_dir_shows_as_an_error_and_is_not_retried() {
        let store = Arc::new(Recording::default());
        let status = actix_rt::System::new().block_on(async {
            let (replica, _dir, _uploader) = replicate(&store, ReplicationConfig::default(), &[]);
            // After the first rescan (a push before it is the scan's to
            // find, and it would not).
            wait_until("the first rescan is done", || !replica.status().rescan_pending).await;
            replica.push_files(&files(&["removed-by-hand.sqi"]));
            wait_until("the queue is drained", || replica.is_drained()).await;
            replica.status()
        });
        assert_eq!((status.upload_errors, status.pending_files), (1, 0), "{status:?}");
        assert!(status.last_error.unwrap().contains("removed-by-hand.sqi"));
        assert!(store.attempts.lock().is_empty());
    }

    #[test]
    fn an_object_with_two_sidecars_is_not_trusted() {
        let old = Sums { len: 4, crc32c: 1 };
        let new = Sums { len: 4, crc32c: 2 };
        let replaced_cut_off = RemoteEntry {
            object: Some(4),
            sidecars: vec![old, new],
        };
        assert!(!replaced_cut_off.holds(new) && !replaced_cut_off.holds(old));
        let whole = RemoteEntry {
            object: Some(4),
            sidecars: vec![new],
        };
        assert!(whole.holds(new) && !whole.holds(old));
        let sidecar_only = RemoteEntry {
            object: None,
            sidecars: vec![new],
        };
        assert!(!sidecar_only.holds(new));
    }

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
