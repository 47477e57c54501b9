//! Per-store counters and the status report built from them.
//!
//! Counters are atomics shared by the actors that move them (backup actor,
//! metadata actor) and read through the [`Board`], so a status query or a
//! metrics scrape needs no round trip through 1024 mailboxes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::callback_pool::CallbackPool;
use crate::engine::KvId;
use crate::replication::queue::Replica;
use crate::replication::ReplicationStatus;

/// Every store's counters and upload queue: the supervisor adds them, the
/// status and the metrics collector read them. Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub(crate) struct Board {
    stores: Arc<Mutex<BTreeMap<KvId, BoardEntry>>>,
    /// Where a store's running callback is seen (weak: a host's metrics
    /// registry holds a board, and must not keep the pool's threads alive).
    callbacks: Option<std::sync::Weak<CallbackPool>>,
}

#[derive(Clone, Default)]
struct BoardEntry {
    counters: Arc<StoreCounters>,
    /// Kept while its uploads drain, also after a stop.
    replica: Option<Arc<Replica>>,
}

/// One store as the board has it.
pub(crate) struct BoardRow {
    pub kv: KvId,
    pub counters: Arc<StoreCounters>,
    pub replica: Option<Arc<Replica>>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("stores", &self.stores.lock().len())
            .finish()
    }
}

impl Board {
    /// A board whose status shows the callbacks running on `callbacks`.
    pub fn with_callbacks(callbacks: &Arc<CallbackPool>) -> Board {
        Board {
            stores: Arc::default(),
            callbacks: Some(Arc::downgrade(callbacks)),
        }
    }

    /// The counters of `kv`, made on first use.
    pub fn counters(&self, kv: KvId) -> Arc<StoreCounters> {
        Arc::clone(&self.stores.lock().entry(kv).or_default().counters)
    }

    /// The upload queue of `kv`, if it was ever replicated.
    pub fn replica(&self, kv: KvId) -> Option<Arc<Replica>> {
        self.stores.lock().get(&kv).and_then(|e| e.replica.clone())
    }

    /// Records `kv`'s upload queue (replacing one it had).
    pub fn set_replica(&self, kv: KvId, replica: Arc<Replica>) {
        self.stores.lock().entry(kv).or_default().replica = Some(replica);
    }

    /// Every upload queue.
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.stores
            .lock()
            .values()
            .filter_map(|e| e.replica.clone())
            .collect()
    }

    /// Every store, by id; the lock is held only to clone the `Arc`s.
    pub fn rows(&self) -> Vec<BoardRow> {
        self.stores
            .lock()
            .iter()
            .map(|(kv, e)| BoardRow {
                kv: *kv,
                counters: Arc::clone(&e.counters),
                replica: e.replica.clone(),
            })
            .collect()
    }

    /// The status of every store; `running` says whose rounds run.
    pub fn status(&self, running: impl Fn(KvId) -> bool) -> Status {
        let stores = self
            .rows()
            .into_iter()
            .map(|row| {
                let mut status = row.counters.snapshot(row.kv, running(row.kv));
                status.replication = row.replica.map(|r| r.status());
                status.callback_running_for = self
                    .callbacks
                    .as_ref()
                    .and_then(std::sync::Weak::upgrade)
                    .and_then(|c| c.running_for(row.kv));
                status
            })
            .collect();
        Status { stores }
    }
}

/// Live counters of one KV store's backup, kept across stop and start.
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    pub rounds: AtomicU64,
    pub quiet_rounds: AtomicU64,
    pub failed_rounds: AtomicU64,
    pub files_linked: AtomicU64,
    pub bytes_linked: AtomicU64,
    pub files_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub metadata_writes: AtomicU64,
    pub metadata_bytes: AtomicU64,
    pub next_metadata_n: AtomicU64,
    pub callbacks: AtomicU64,
    pub callback_nanos: AtomicU64,
    pub restarts: AtomicU64,
    pub prunes: AtomicU64,
    pub failed_prunes: AtomicU64,
    pub files_pruned: AtomicU64,
    pub bytes_pruned: AtomicU64,
    /// Lifecycle events that could not come when they came (a bug).
    pub impossible_events: AtomicU64,
    pub cross_device: AtomicBool,
    /// Set while a call the quiet ticker queued for the store runs or
    /// waits on the pool (kept across starts, as that call is).
    pub handed_call_out: AtomicBool,
    pub last: Mutex<LastRound>,
}

/// What the last round left behind.
#[derive(Debug, Default, Clone)]
pub(crate) struct LastRound {
    pub finished: Option<SystemTime>,
    pub duration: Option<Duration>,
    pub error: Option<String>,
    pub dir: Option<PathBuf>,
    /// Why the last prune deleted nothing or failed, if it did.
    pub prune: Option<String>,
}

impl StoreCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// One callback call that ran for `took`.
    pub fn count_callback(&self, took: Duration) {
        Self::add(&self.callbacks, 1);
        Self::add(
            &self.callback_nanos,
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// One round that ended with `result` after `took`.
    pub fn count_round(&self, result: &crate::error::Result<()>, took: Duration) {
        Self::add(&self.rounds, 1);
        let mut last = self.last.lock();
        last.finished = Some(SystemTime::now());
        last.duration = Some(took);
        match result {
            Ok(()) => last.error = None,
            Err(e) => {
                Self::add(&self.failed_rounds, 1);
                last.error = Some(e.to_string());
            }
        }
    }

    pub fn snapshot(&self, kv: KvId, running: bool) -> StoreStatus {
        let last = self.last.lock().clone();
        StoreStatus {
            kv,
            running,
            backup_dir: last.dir,
            rounds: self.rounds.load(Relaxed),
            quiet_rounds: self.quiet_rounds.load(Relaxed),
            failed_rounds: self.failed_rounds.load(Relaxed),
            files_linked: self.files_linked.load(Relaxed),
            bytes_linked: self.bytes_linked.load(Relaxed),
            files_copied: self.files_copied.load(Relaxed),
            bytes_copied: self.bytes_copied.load(Relaxed),
            cross_device: self.cross_device.load(Relaxed),
            metadata_writes: self.metadata_writes.load(Relaxed),
            metadata_bytes: self.metadata_bytes.load(Relaxed),
            next_metadata_n: self.next_metadata_n.load(Relaxed),
            callbacks: self.callbacks.load(Relaxed),
            callback_time: Duration::from_nanos(self.callback_nanos.load(Relaxed)),
            restarts: self.restarts.load(Relaxed),
            prunes: self.prunes.load(Relaxed),
            failed_prunes: self.failed_prunes.load(Relaxed),
            files_pruned: self.files_pruned.load(Relaxed),
            bytes_pruned: self.bytes_pruned.load(Relaxed),
            last_prune: last.prune,
            impossible_events: self.impossible_events.load(Relaxed),
            last_round_finished: last.finished,
            last_round_duration: last.duration,
            last_error: last.error,
            replication: None,
            callback_running_for: None,
        }
    }
}

/// Status of one KV store's backup. Counters add up over every start of the
/// store since the component started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The store.
    pub kv: KvId,
    /// Whether rounds run now.
    pub running: bool,
    /// Its backup dir (the latest one it was started with).
    pub backup_dir: Option<PathBuf>,
    /// Rounds finished, successful or not.
    pub rounds: u64,
    /// Rounds that found nothing new and called no callback (only with
    /// [`Config::report_empty_rounds`](crate::Config::report_empty_rounds)
    /// off), whether the tick ended on the actor thread or after a look at
    /// the engine's files; not counted in `rounds`.
    pub quiet_rounds: u64,
    /// Rounds that failed (link error, callback error or panic).
    pub failed_rounds: u64,
    /// Hard links the component made.
    pub files_linked: u64,
    /// Bytes of the files it linked.
    pub bytes_linked: u64,
    /// Files copied because the backup dir is on another file system.
    pub files_copied: u64,
    /// Bytes of the files it copied.
    pub bytes_copied: u64,
    /// Whether the backup dir is on another file system (files are copied).
    pub cross_device: bool,
    /// Metadata files written.
    pub metadata_writes: u64,
    /// Bytes of metadata written.
    pub metadata_bytes: u64,
    /// The `n` the next metadata write gets (0 before the dir was opened).
    pub next_metadata_n: u64,
    /// Callback calls that returned (successfully or not).
    pub callbacks: u64,
    /// Time spent in the callback, in all.
    pub callback_time: Duration,
    /// Times the supervisor restarted the store's actor after it failed.
    pub restarts: u64,
    /// Prunes by [`Config::retention`](crate::Config::retention) that ran
    /// to the end (deleting something or not).
    pub prunes: u64,
    /// Prunes that failed (an I/O error; the next one retries).
    pub failed_prunes: u64,
    /// Files those prunes deleted from the backup dir.
    pub files_pruned: u64,
    /// Bytes whose last link those prunes removed (space freed).
    pub bytes_pruned: u64,
    /// Why the last prune deleted nothing (a reader pinned the dir, the
    /// dir is kept whole, an upload backlog unknown) or failed; `None`
    /// after one that deleted what the policy allows.
    pub last_prune: Option<String>,
    /// Lifecycle events that came when they could not (each is logged);
    /// anything but 0 is a bug to report.
    pub impossible_events: u64,
    /// When the last round finished (wall clock, for display only).
    pub last_round_finished: Option<SystemTime>,
    /// How long the last round took, from listing to callback return.
    pub last_round_duration: Option<Duration>,
    /// The last round's error; cleared by the next successful round.
    pub last_error: Option<String>,
    /// The remote copy's uploads, when the store is replicated.
    pub replication: Option<ReplicationStatus>,
    /// How long the store's callback has been running, if one runs now
    /// (past `Config::callback_watchdog` it is also logged).
    pub callback_running_for: Option<Duration>,
}

/// Status of every store the component has seen, ordered by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// One entry per store.
    pub stores: Vec<StoreStatus>,
}

impl Status {
    /// The entry of `kv`, if the component has seen it.
    pub fn store(&self, kv: KvId) -> Option<&StoreStatus> {
        self.stores.iter().find(|s| s.kv == kv)
    }

    /// The stores whose rounds run now.
    pub fn running(&self) -> Vec<KvId> {
        self.stores.iter().filter(|s| s.running).map(|s| s.kv).collect()
    }
}
