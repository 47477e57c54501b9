//! One store's upload queue: what is waiting to go to its remote dir, in
//! the order that keeps the remote copy restorable, and what the uploader
//! has done so far.
//!
//! The queue is fed from two threads: the store's `BackupActor` pushes a
//! round's files once their links are durable and before the round's
//! callback runs, and the metadata thread pushes `metadata.<n>.dat` once it
//! is durable. A metadata file written by a round's callback therefore
//! always queues behind that round's files. The uploader takes files in
//! batches, but a metadata item is a barrier: it is handed out only when
//! every item before it is uploaded (removed from the queue).
//!
//! The queue is bounded: a push that does not fit is dropped and the queue
//! marked overflowed; every later push is dropped too (a metadata item
//! must not overtake a dropped file), until the uploader rescans the backup
//! dir, which finds everything again, in order. A push never waits.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::backup_file::BackupFile;
use crate::engine::KvId;
use crate::manifest::metadata_file_name;
use crate::replication::RemoteUrl;

/// What an item is: a barrier or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A seqno-index file: uploaded in any order among its neighbours.
    File,
    /// A metadata file: uploaded after everything queued before it.
    Metadata,
}

/// A file waiting for upload.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub name: String,
    pub len: u64,
    pub kind: Kind,
    pub queued: Instant,
}

impl Item {
    pub fn new(name: String, len: u64, kind: Kind) -> Item {
        Item {
            name,
            len,
            kind,
            queued: Instant::now(),
        }
    }
}

/// What the uploader should do next for a store.
#[derive(Debug)]
pub(crate) enum Next {
    /// List the backup dir and the remote dir, and queue what is missing.
    Rescan,
    /// Upload these files (the front of the queue), then `done(len)`.
    Files(Vec<Item>),
    /// Upload these metadata files (the front of the queue, consecutive
    /// numbers with no file between them) in order, then `done(len)`.
    Metadata(Vec<Item>),
    /// Nothing to do: wait for a push.
    Idle,
    /// The replica was replaced or the component shut down: end.
    Retired,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Item>,
    pending_bytes: u64,
    /// A push was dropped: rescan before anything else.
    overflowed: bool,
    /// A rescan was asked for (at start, after failed uploads).
    rescan: bool,
    /// The uploader scans.
    scanning: bool,
    /// Items at the front that the rescan under way covers (they were in
    /// the backup dir when it started): replaced by what it finds.
    covered: usize,
    retired: bool,
    last_error: Option<String>,
    last_success: Option<SystemTime>,
}

impl Inner {
    /// Whether a rescan is due or under way (what is queued may then be
    /// less than what the backup dir holds).
    fn rescan_pending(&self) -> bool {
        self.rescan || self.overflowed || self.scanning
    }
}

/// The upload queue and counters of one store's remote copy.
pub(crate) struct Replica {
    pub kv: KvId,
    /// The store's backup dir.
    pub local: PathBuf,
    /// The store's remote dir.
    pub remote: RemoteUrl,
    capacity: usize,
    inner: Mutex<Inner>,
    /// Told on every push and when retired.
    pub wake: Notify,
    pub uploaded_files: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub already_there: AtomicU64,
    pub upload_errors: AtomicU64,
    pub dropped: AtomicU64,
    pub rescans: AtomicU64,
    /// Objects the last rescan found remotely and not in the backup dir.
    pub remote_only: AtomicU64,
}

impl Replica {
    /// A replica that starts with a rescan (resuming what an earlier run
    /// left).
    pub fn new(kv: KvId, local: PathBuf, remote: RemoteUrl, capacity: usize) -> Replica {
        Replica {
            kv,
            local,
            remote,
            capacity,
            inner: Mutex::new(Inner {
                rescan: true,
                ..Inner::default()
            }),
            wake: Notify::new(),
            uploaded_files: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
            already_there: AtomicU64::new(0),
            upload_errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rescans: AtomicU64::new(0),
            remote_only: AtomicU64::new(0),
        }
    }

    fn push(&self, items: impl ExactSizeIterator<Item = Item>) {
        let n = items.len();
        if n == 0 {
            return;
        }
        {
            let mut inner = self.inner.lock();
            if inner.retired {
                return;
            }
            if inner.overflowed || inner.items.len() + n > self.capacity {
                // Found again by the rescan the overflow asks for.
                inner.overflowed = true;
                self.dropped.fetch_add(n as u64, Relaxed);
            } else {
                for item in items {
                    inner.pending_bytes += item.len;
                    inner.items.push_back(item);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Queues a round's files (durable in the backup dir).
    pub fn push_files(&self, files: &[BackupFile]) {
        self.push(files.iter().map(|f| Item::new(f.name.clone(), f.len, Kind::File)));
    }

    /// Queues a round manifest (durable in the backup dir), after its
    /// round's files.
    pub fn push_manifest(&self, name: &str, len: u64) {
        self.push(std::iter::once(Item::new(name.to_owned(), len, Kind::File)));
    }

    /// Queues `metadata.<n>.dat` (durable in the backup dir).
    pub fn push_metadata(&self, n: u64, len: u64) {
        self.push(std::iter::once(Item::new(
            metadata_file_name(n),
            len,
            Kind::Metadata,
        )));
    }

    /// What the uploader does next; at most `max` files in a batch. A
    /// rescan handed out shows as pending until `rescanned` or `failed`;
    /// a batch stays queued (and counted) until `done`.
    pub fn next(&self, max: usize) -> Next {
        let mut inner = self.inner.lock();
        if inner.retired {
            return Next::Retired;
        }
        // After an overflow, what is queued (in order, before everything
        // dropped) goes first; one rescan then finds the rest.
        if inner.rescan || (inner.overflowed && inner.items.is_empty()) {
            // Everything queued is in the backup dir, and the rescan finds
            // it there again; pushes that come during the scan follow what
            // it finds. Until it succeeds the queue stays as it is, so
            // status keeps counting the backlog.
            inner.rescan = false;
            inner.overflowed = false;
            inner.covered = inner.items.len();
            inner.scanning = true;
            return Next::Rescan;
        }
        // A batch is a run of one kind from the front; it ends before a
        // name it holds already (never sent twice at once).
        let next = match inner.items.front().map(|i| i.kind) {
            None => Next::Idle,
            Some(kind) => {
                let mut names = std::collections::HashSet::new();
                let run: Vec<Item> = inner
                    .items
                    .iter()
                    .take(max.max(1))
                    .take_while(|i| i.kind == kind && names.insert(i.name.as_str()))
                    .cloned()
                    .collect();
                match kind {
                    Kind::File => Next::Files(run),
                    Kind::Metadata => Next::Metadata(run),
                }
            }
        };
        next
    }

    /// The first `n` items are uploaded (or were there already).
    pub fn done(&self, n: usize) {
        let mut inner = self.inner.lock();
        for _ in 0..n {
            if let Some(item) = inner.items.pop_front() {
                inner.pending_bytes -= item.len;
            }
        }
        inner.last_success = Some(SystemTime::now());
        inner.last_error = None;
    }

    /// A rescan found `items` missing remotely: they replace what was
    /// queued when it started (keeping how long each has waited), before
    /// what was pushed while it ran.
    pub fn rescanned(&self, items: Vec<Item>) {
        let mut inner = self.inner.lock();
        inner.scanning = false;
        let covered = std::mem::take(&mut inner.covered);
        let mut waited_since = std::collections::HashMap::new();
        for item in inner.items.drain(..covered).collect::<Vec<_>>() {
            inner.pending_bytes -= item.len;
            waited_since.insert(item.name, item.queued);
        }
        if inner.retired {
            return;
        }
        // Pushes that came during the scan for files it found: it has them
        // in order already.
        let found: std::collections::HashSet<&str> = items.iter().map(|i| i.name.as_str()).collect();
        let mut dropped_bytes = 0;
        inner.items.retain(|i| {
            let keep = !found.contains(i.name.as_str());
            if !keep {
                dropped_bytes += i.len;
            }
            keep
        });
        inner.pending_bytes -= dropped_bytes;
        for mut item in items.into_iter().rev() {
            if let Some(queued) = waited_since.get(&item.name) {
                item.queued = item.queued.min(*queued);
            }
            inner.pending_bytes += item.len;
            inner.items.push_front(item);
        }
    }

    /// An upload or a scan failed: count it, and rescan before the next
    /// try (the remote may have changed meanwhile, or come back empty).
    pub fn failed(&self, error: String, attempts: u64) {
        self.upload_errors.fetch_add(attempts, Relaxed);
        let mut inner = self.inner.lock();
        inner.scanning = false;
        inner.covered = 0;
        inner.rescan = true;
        inner.last_error = Some(error);
    }

    /// The names queued for upload (the batch under way among them), or
    /// `None` while a rescan is due or under way: what is still to upload
    /// is then not known. A prune keeps these.
    pub fn pending_names(&self) -> Option<std::collections::HashSet<String>> {
        let inner = self.inner.lock();
        if inner.rescan_pending() {
            return None;
        }
        Some(inner.items.iter().map(|i| i.name.clone()).collect())
    }

    /// A queued file was gone from the backup dir (removed by hand): it
    /// counts as an upload error, and is not retried.
    pub fn vanished(&self, name: &str) {
        self.upload_errors.fetch_add(1, Relaxed);
        self.inner.lock().last_error = Some(format!("{name} vanished from the backup dir before its upload"));
    }

    /// Whether nothing waits and nothing is under way.
    pub fn is_drained(&self) -> bool {
        let inner = self.inner.lock();
        inner.items.is_empty() && !inner.rescan_pending()
    }

    /// Asks for a rescan before the next upload: the backup dir may hold
    /// files that were never pushed (a start without replication, a
    /// metadata write that failed after its name became visible).
    pub fn ask_rescan(&self) {
        self.inner.lock().rescan = true;
        self.wake.notify_one();
    }

    /// Whether `retire` was called.
    pub fn is_retired(&self) -> bool {
        self.inner.lock().retired
    }

    /// Ends the uploader of this replica at its next step.
    pub fn retire(&self) {
        self.inner.lock().retired = true;
        self.wake.notify_one();
    }

    /// The status of this remote copy.
    pub fn status(&self) -> ReplicationStatus {
        let inner = self.inner.lock();
        ReplicationStatus {
            remote: self.remote.to_string(),
            pending_files: inner.items.len() as u64,
            pending_bytes: inner.pending_bytes,
            oldest_pending_age: inner.items.iter().map(|i| i.queued).min().map(|t| t.elapsed()),
            rescan_pending: inner.rescan_pending(),
            uploaded_files: self.uploaded_files.load(Relaxed),
            uploaded_bytes: self.uploaded_bytes.load(Relaxed),
            already_there: self.already_there.load(Relaxed),
            upload_errors: self.upload_errors.load(Relaxed),
            dropped_pushes: self.dropped.load(Relaxed),
            rescans: self.rescans.load(Relaxed),
            remote_only_files: self.remote_only.load(Relaxed),
            last_error: inner.last_error.clone(),
            last_success: inner.last_success,
        }
    }
}

/// Status of one store's remote copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// The store's remote dir.
    pub remote: String,
    /// Files waiting for upload (or for the check that they are there).
    pub pending_files: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// How long the oldest of them has waited.
    pub oldest_pending_age: Option<Duration>,
    /// Whether a rescan of the backup dir is due or under way (at start,
    /// after a failed upload, after the queue overflowed): pending counts
    /// are then partial.
    pub rescan_pending: bool,
    /// Files uploaded (sidecar and object).
    pub uploaded_files: u64,
    /// Their bytes.
    pub uploaded_bytes: u64,
    /// Files found already uploaded, with the same length and checksum.
    pub already_there: u64,
    /// Failed attempts (uploads and listings), each followed by a backoff.
    pub upload_errors: u64,
    /// Pushes dropped because the queue was full (each found again by a
    /// rescan).
    pub dropped_pushes: u64,
    /// Times the backup dir and the remote dir were listed and compared.
    pub rescans: u64,
    /// Objects the last rescan found in the remote dir but not in the
    /// backup dir: another history under the same prefix (a rebuilt backup
    /// dir, another node). Never deleted; a restore from the remote would
    /// mix them, so point each backup dir at its own prefix.
    pub remote_only_files: u64,
    /// The last failure; cleared by the next success.
    pub last_error: Option<String>,
    /// When an upload last succeeded (wall clock, for display only).
    pub last_success: Option<SystemTime>,
}

#[cfg(all(test, feature = "replication"))]
mod tests {
    use super::*;

    fn replica(capacity: usize) -> Replica {
        let remote = RemoteUrl::parse("memory:///r").unwrap();
        Replica::new(KvId(1), "/b".into(), remote, capacity)
    }

    fn file(name: &str) -> BackupFile {
        BackupFile {
            name: name.into(),
            len: 10,
            low_seqno: 1,
            high_seqno: 1,
        }
    }

    fn names(next: Next) -> Vec<String> {
        match next {
            Next::Files(items) => items.into_iter().map(|i| i.name).collect(),
            Next::Metadata(items) => items.into_iter().map(|i| i.name).collect(),
            other => panic!("expected items, got {other:?}"),
        }
    }

    #[test]
    fn a_new_replica_rescans_first() {
        let r = replica(10);
        r.push_files(&[file("a")]);
        assert!(matches!(r.next(8), Next::Rescan));
        assert!(!r.is_drained(), "busy while scanning");
        assert_eq!(r.status().pending_files, 1, "still counted while the scan runs");
        assert!(r.status().rescan_pending, "and the scan is shown");
        r.rescanned(vec![]);
        assert!(
            matches!(r.next(8), Next::Idle),
            "the push before the scan is the scan's to find"
        );
        assert!(r.is_drained());
    }

    #[test]
    fn metadata_waits_for_every_file_queued_before_it() {
        let r = replica(10);
        assert!(matches!(r.next(8), Next::Rescan));
        r.rescanned(vec![]);
        r.push_files(&[file("a"), file("b")]);
        r.push_metadata(1, 5);
        r.push_files(&[file("c")]);
        assert_eq!(names(r.next(8)), ["a", "b"], "files up to the barrier");
        // Not done yet: the same batch again (a retry), never the barrier.
        assert_eq!(names(r.next(8)), ["a", "b"]);
        r.done(1);
        assert_eq!(names(r.next(8)), ["b"]);
        r.done(1);
        assert_eq!(names(r.next(8)), ["metadata.1.dat"]);
        r.done(1);
        assert_eq!(names(r.next(8)), ["c"]);
        r.done(1);
        assert!(r.is_drained());
        assert_eq!(r.status().pending_bytes, 0);
    }

    #[test]
    fn a_full_queue_drops_every_later_push_until_the_rescan() {
        let r = replica(2);
        assert!(matches!(r.next(8), Next::Rescan));
        r.rescanned(vec![]);
        r.push_files(&[file("a"), file("b"), file("c")]);
        // Even a metadata item that would fit is dropped: it must not
        // overtake the files dropped before it.
        r.push_metadata(1, 5);
        let status = r.status();
        assert_eq!((status.pending_files, status.dropped_pushes), (0, 4));
        assert!(status.rescan_pending);
        assert!(matches!(r.next(8), Next::Rescan));
    }

    #[test]
    fn what_a_rescan_finds_goes_before_what_came_during_it() {
        let r = replica(10);
        assert!(matches!(r.next(8), Next::Rescan));
        r.push_metadata(2, 5);
        r.rescanned(vec![
            Item::new("a".into(), 10, Kind::File),
            Item::new("metadata.1.dat".into(), 5, Kind::Metadata),
        ]);
        assert_eq!(names(r.next(8)), ["a"]);
        r.done(1);
        // Consecutive metadata files make one run (put in number order).
        assert_eq!(names(r.next(8)), ["metadata.1.dat", "metadata.2.dat"]);
    }

    #[test]
    fn after_an_overflow_what_was_queued_goes_first_then_one_rescan() {
        let r = replica(2);
        assert!(matches!(r.next(8), Next::Rescan));
        r.rescanned(vec![]);
        r.push_files(&[file("a")]);
        r.push_files(&[file("b"), file("c")]);
        assert!(r.status().rescan_pending);
        assert_eq!(names(r.next(8)), ["a"], "queued before the overflow, in order");
        r.done(1);
        assert!(matches!(r.next(8), Next::Rescan), "then the rescan finds b and c");
    }

    #[test]
    fn a_name_is_never_twice_in_one_batch_nor_after_a_rescan_found_it() {
        let r = replica(10);
        assert!(matches!(r.next(8), Next::Rescan));
        // Pushed during the scan, which finds the same files.
        r.push_files(&[file("a"), file("b")]);
        r.rescanned(vec![Item::new("a".into(), 10, Kind::File)]);
        assert_eq!(names(r.next(8)), ["a", "b"], "the scan's a, then the push's b");
        r.done(2);
        r.push_files(&[file("c"), file("c"), file("d")]);
        assert_eq!(names(r.next(8)), ["c"], "the batch ends before the second c");
    }

    #[test]
    fn a_failure_is_counted_and_asks_for_a_rescan() {
        let r = replica(10);
        assert!(matches!(r.next(8), Next::Rescan));
        r.rescanned(vec![]);
        r.push_files(&[file("a")]);
        assert_eq!(names(r.next(8)), ["a"]);
        r.failed("put a: connection refused".into(), 1);
        let status = r.status();
        assert_eq!(status.upload_errors, 1);
        assert_eq!(status.last_error.as_deref(), Some("put a: connection refused"));
        assert!(matches!(r.next(8), Next::Rescan));
        let first_queued = r.status().oldest_pending_age.unwrap();
        // The rescan fails too (the server is still away): the backlog
        // stays counted, with its age.
        r.failed("list: connection refused".into(), 1);
        assert_eq!(r.status().pending_files, 1);
        assert!(matches!(r.next(8), Next::Rescan));
        r.rescanned(vec![Item::new("a".into(), 10, Kind::File)]);
        let status = r.status();
        assert_eq!(
            status.pending_files, 1,
            "the rescan's find replaces the queued item"
        );
        assert!(
            status.oldest_pending_age.unwrap() >= first_queued,
            "and keeps its age"
        );
        r.retire();
        assert!(matches!(r.next(8), Next::Retired));
    }
}
