//! Metadata files: `metadata.<n>.dat`, numbered 1, 2, 3… per backup dir, in
//! the order the writes were made, never reused, continuing across restarts.
//!
//! [`MetadataLog`] owns the numbering and the durable write of one dir and is
//! plain Rust; each `MetadataActor` (one thread of its own; there are
//! `Config::metadata_threads` of them, and a dir always goes to the same one)
//! holds the logs of its open dirs and applies writes in mailbox order;
//! [`MetadataWriter`] is the handle callbacks get.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::{Actor, Addr, Handler, Message, MessageResult, SyncContext};
use tokio::sync::oneshot;

use crate::dir_lock::DirId;
use crate::dir_sync::DirSyncGroup;
use crate::engine::KvId;
use crate::error::panic_message;
use crate::error::{Error, Result};
use crate::fs::{BackupDir, Modes};
use crate::manifest::RoundLog;
use crate::replication::queue::Replica;
use crate::status::StoreCounters;

/// The largest metadata record a write accepts, in bytes (1 MiB).
pub const MAX_METADATA_LEN: usize = 1 << 20;

pub use crate::manifest::{metadata_file_name, parse_metadata_file_name};

// ---- the messages it handles ----

/// Identifies one start of one store at the metadata actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionId(pub u64);

/// Backup actor → metadata actor, with `send`, from `started()`: open (create)
/// the dir, remove stale temps, find the largest metadata `n`.
#[derive(Message)]
#[rtype(result = "Result<OpenedDir>")]
pub(crate) struct OpenDir {
    pub kv: KvId,
    pub path: PathBuf,
    /// The engine's data dir: the backup dir may not lie inside it.
    pub data_dir: Option<PathBuf>,
    pub counters: Arc<StoreCounters>,
    /// The store's upload queue, told of every metadata file written.
    pub replica: Option<Arc<Replica>>,
}

pub(crate) struct OpenedDir {
    pub dir: Arc<BackupDir>,
    pub session: SessionId,
    /// The dir's round numbering, shared by every session of the dir.
    pub rounds: Arc<parking_lot::Mutex<RoundLog>>,
}

/// MetadataWriter → metadata actor, with `do_send` from any thread; the reply
/// comes on `reply`. Writes are applied in the order they reach the mailbox.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WriteMetadata {
    pub kv: KvId,
    pub session: SessionId,
    pub data: String,
    pub reply: oneshot::Sender<Result<u64>>,
}

/// Backup actor → metadata actor, with `do_send`, when stopping: later
/// writes of the session are refused. Handled after every write queued
/// before it; `done` is told then. Never sent with `send`: actix skips a
/// message whose requester has gone (an actor that stopped meanwhile), and
/// a skipped close would leave the session's writer working after the stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CloseSession {
    pub session: SessionId,
    pub done: Option<oneshot::Sender<()>>,
}

/// What the metadata threads share: the grouped fsyncs of the parents of
/// backup dirs (the dirs of many stores under one backup root share the
/// fsyncs that make their entries durable), and the backup dirs this
/// component owns, by identity.
///
/// The `creating` lock serializes the creation of missing dirs and the
/// taking of ownership across the metadata threads: a thread that finds a
/// parent dir existing must know it durable, so another thread's `mkdir`
/// and the fsync that follows it happen under it (and a dir whose fsync
/// failed is removed before it is let go); and two spellings of one dir,
/// opened on two threads at once, are recognised as one.
#[derive(Clone, Default)]
pub(crate) struct ParentSyncs {
    groups: Arc<parking_lot::Mutex<HashMap<PathBuf, Arc<DirSyncGroup>>>>,
    creating: Arc<parking_lot::Mutex<()>>,
    owned: Arc<parking_lot::Mutex<HashMap<DirId, Owned>>>,
}

/// A backup dir this component owns (holds the lock of), with its one log.
struct Owned {
    kv: KvId,
    log: Arc<parking_lot::Mutex<MetadataLog>>,
    rounds: Arc<parking_lot::Mutex<RoundLog>>,
    sessions: usize,
}

/// What the sessions of one owned dir share.
type Shared = (
    Arc<parking_lot::Mutex<MetadataLog>>,
    Arc<parking_lot::Mutex<RoundLog>>,
);

impl ParentSyncs {
    /// The log of the dir `id` if this component owns it already (an
    /// earlier start of the same store still stopping, under this spelling
    /// or another: one log keeps the numbering unique), with one more
    /// session; an error if another store owns it; `None` if nobody here
    /// does.
    fn share(&self, id: DirId, kv: KvId, path: &Path) -> Result<Option<Shared>> {
        match self.owned.lock().get_mut(&id) {
            Some(o) if o.kv != kv => Err(Error::BackupDirInUse {
                path: path.to_path_buf(),
                holder: o.kv,
            }),
            Some(o) => {
                o.sessions += 1;
                Ok(Some((Arc::clone(&o.log), Arc::clone(&o.rounds))))
            }
            None => Ok(None),
        }
    }

    /// The group of `parent`; a new one if its last fsync failed.
    fn group(&self, parent: &Path) -> Arc<DirSyncGroup> {
        let mut groups = self.groups.lock();
        let group = groups
            .entry(parent.to_path_buf())
            .or_insert_with(|| Arc::new(DirSyncGroup::new(parent)));
        if group.failed() {
            *group = Arc::new(DirSyncGroup::new(parent));
        }
        Arc::clone(group)
    }
}

/// The numbering and durable writes of one backup dir's metadata files.
pub(crate) struct MetadataLog {
    dir: Arc<BackupDir>,
    next_n: u64,
    /// Set when a failed write left it unknown whether its name became
    /// visible: guessing could reuse `n` or leave a hole, so the log refuses
    /// writes until the dir is opened again.
    failed: bool,
}

impl MetadataLog {
    /// Opens the log of `dir` (whose lock is held), which holds `names`
    /// (stale temps removed): continues after the largest `n` found (1 for
    /// an empty dir).
    pub fn open(dir: Arc<BackupDir>, names: &[String]) -> Result<Self> {
        let max = names
            .iter()
            .filter_map(|n| parse_metadata_file_name(n))
            .max()
            .unwrap_or(0);
        let next_n = max.checked_add(1).ok_or(Error::InvalidBackupDir {
            path: dir.path().to_path_buf(),
            reason: "it holds a metadata file numbered u64::MAX: no number is left",
        })?;
        Ok(MetadataLog {
            dir,
            next_n,
            failed: false,
        })
    }

    /// The `n` the next write gets.
    pub fn next_n(&self) -> u64 {
        self.next_n
    }

    /// Stores `data` as `metadata.<n>.dat` durably and returns `n`. A failed
    /// write keeps `n` for the next one only if no file of that name became
    /// visible, so numbers are never reused and have no holes.
    pub fn write(&mut self, kv: KvId, data: &str) -> Result<u64> {
        if data.is_empty() {
            return Err(Error::MetadataEmpty { kv });
        }
        if data.len() > MAX_METADATA_LEN {
            return Err(Error::MetadataTooLarge {
                kv,
                len: data.len(),
                max: MAX_METADATA_LEN,
            });
        }
        if self.failed {
            return Err(Error::BackupDirPoisoned {
                path: self.dir.path().to_path_buf(),
            });
        }
        let n = self.next_n;
        let name = metadata_file_name(n);
        let written = self.dir.write_new_file(&name, data.as_bytes());
        let visible = match &written {
            Ok(()) => true,
            Err(_) => match self.dir.exists(&name) {
                Ok(visible) => visible,
                Err(_) => {
                    self.failed = true;
                    false
                }
            },
        };
        if visible {
            // Never reused, even when the write failed after the rename.
            self.next_n = n.saturating_add(1);
        }
        written.map(|()| n)
    }
}

struct Session {
    id: DirId,
    log: Arc<parking_lot::Mutex<MetadataLog>>,
    counters: Arc<StoreCounters>,
    replica: Option<Arc<Replica>>,
}

/// A metadata thread's address, shared: a writer's copy (one per round) is
/// a count, where a clone of the address itself allocates twice.
pub(crate) type MetadataAddr = Arc<Addr<MetadataActor>>;

/// Serialises the metadata writes of its sessions on one thread (a
/// `SyncArbiter` of size 1), in mailbox order. A dir's log is shared by
/// every session of the dir (under a mutex), whichever thread it is on.
pub(crate) struct MetadataActor {
    modes: Modes,
    parents: ParentSyncs,
    sessions: HashMap<SessionId, Session>,
    next_session: u64,
}

impl MetadataActor {
    pub fn new(modes: Modes, parents: ParentSyncs) -> Self {
        MetadataActor {
            modes,
            parents,
            sessions: HashMap::new(),
            next_session: 1,
        }
    }
}

impl Actor for MetadataActor {
    type Context = SyncContext<Self>;
}

/// Runs a handler body so that a panic becomes an error instead of killing
/// a metadata thread.
fn guarded<T>(kv: KvId, body: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        tracing::error!(kv_store = kv.0, "metadata thread caught a panic");
        Err(Error::Panicked {
            kv,
            what: "metadata writer",
            message: panic_message(&*panic),
        })
    })
}

impl Handler<OpenDir> for MetadataActor {
    type Result = Result<OpenedDir>;

    fn handle(&mut self, msg: OpenDir, _: &mut SyncContext<Self>) -> Self::Result {
        let kv = msg.kv;
        guarded(kv, || self.open(msg))
    }
}

impl MetadataActor {
    fn open(&mut self, msg: OpenDir) -> Result<OpenedDir> {
        let _span = tracing::info_span!("open_backup_dir", kv_store = msg.kv.0).entered();
        let data_dir = match &msg.data_dir {
            Some(data) => Some(DirId::of_path(data)?),
            None => None,
        };
        let creating = self.parents.creating.lock();
        let unlocked = match msg.path.parent() {
            Some(parent) => {
                let group = self.parents.group(parent);
                BackupDir::open_grouped(&msg.path, self.modes, group, data_dir)?
            }
            None => BackupDir::open_with(&msg.path, self.modes, data_dir)?,
        };
        drop(creating);
        let id = unlocked.id();
        let (log, rounds) = match self.parents.share(id, msg.kv, &msg.path)? {
            Some(shared) => shared,
            None => match unlocked.lock() {
                // A dir is scanned (stale temps removed, numbers read)
                // only by its lock holder, and outside the shared locks.
                Ok(dir) => {
                    let dir = Arc::new(dir);
                    let removed = dir.remove_stale_temps()?;
                    if removed > 0 {
                        tracing::info!(dir = %dir.path().display(), removed, "removed temp files of an interrupted run");
                    }
                    let names = dir.names()?;
                    let rounds = Arc::new(parking_lot::Mutex::new(RoundLog::open(&dir, &names)?));
                    let log = Arc::new(parking_lot::Mutex::new(MetadataLog::open(dir, &names)?));
                    self.parents.owned.lock().insert(
                        id,
                        Owned {
                            kv: msg.kv,
                            log: Arc::clone(&log),
                            rounds: Arc::clone(&rounds),
                            sessions: 1,
                        },
                    );
                    (log, rounds)
                }
                // Another open of this component may have taken it meanwhile.
                Err(e @ Error::DirLocked { .. }) => self.parents.share(id, msg.kv, &msg.path)?.ok_or(e)?,
                Err(e) => return Err(e),
            },
        };
        let (dir, next_n) = {
            let log = log.lock();
            (Arc::clone(&log.dir), log.next_n())
        };
        msg.counters.next_metadata_n.store(next_n, Relaxed);
        let session = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            session,
            Session {
                id,
                log,
                counters: msg.counters,
                replica: msg.replica,
            },
        );
        Ok(OpenedDir { dir, session, rounds })
    }
}

impl Handler<WriteMetadata> for MetadataActor {
    type Result = ();

    fn handle(&mut self, msg: WriteMetadata, _: &mut SyncContext<Self>) {
        let (kv, reply) = (msg.kv, msg.reply);
        let (session, data) = (msg.session, msg.data);
        let result = guarded(kv, || self.write(kv, session, &data));
        let _ = reply.send(result);
    }
}

impl MetadataActor {
    fn write(&mut self, kv: KvId, session: SessionId, data: &str) -> Result<u64> {
        let Some(session) = self.sessions.get(&session) else {
            return Err(Error::BackupStopped { kv });
        };
        let _span = tracing::debug_span!("metadata_write", kv_store = kv.0).entered();
        let mut log = session.log.lock();
        let written = log.write(kv, data);
        let c = &session.counters;
        c.next_metadata_n.store(log.next_n(), Relaxed);
        drop(log);
        match &written {
            Ok(n) => {
                StoreCounters::add(&c.metadata_writes, 1);
                StoreCounters::add(&c.metadata_bytes, data.len() as u64);
                if let Some(replica) = &session.replica {
                    replica.push_metadata(*n, data.len() as u64);
                }
                tracing::debug!(n, bytes = data.len(), "metadata written");
            }
            Err(e) => {
                tracing::warn!(error = %e, "metadata write failed");
                if let (Some(replica), Error::Io { .. }) = (&session.replica, e) {
                    // Its name may have become visible (and is then never
                    // reused): a rescan finds it. (Refusals write nothing.)
                    replica.ask_rescan();
                }
            }
        }
        written
    }
}

impl Handler<CloseSession> for MetadataActor {
    type Result = MessageResult<CloseSession>;

    fn handle(&mut self, msg: CloseSession, _: &mut SyncContext<Self>) -> Self::Result {
        if let Some(session) = self.sessions.remove(&msg.session) {
            let mut owned = self.parents.owned.lock();
            if let Some(o) = owned.get_mut(&session.id) {
                o.sessions -= 1;
                if o.sessions == 0 {
                    // The dir's lock goes with the last holder of the dir
                    // (a linker job of the ended start may still have it).
                    owned.remove(&session.id);
                }
            }
        }
        if let Some(done) = msg.done {
            let _ = done.send(());
        }
        MessageResult(())
    }
}

/// Writes metadata records into one store's backup dir. Cheap to clone,
/// `Send`, usable from the callback or later from any thread.
///
/// Each write lands as a new file `metadata.<n>.dat`; `n` is returned only
/// once the file is durable. Writes are applied in the order they are made.
/// After the store's backup is stopped, writes fail with
/// [`Error::BackupStopped`].
#[derive(Clone)]
pub struct MetadataWriter {
    kv: KvId,
    session: SessionId,
    addr: MetadataAddr,
}

impl std::fmt::Debug for MetadataWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataWriter")
            .field("kv", &self.kv)
            .finish_non_exhaustive()
    }
}

impl MetadataWriter {
    pub(crate) fn new(kv: KvId, session: SessionId, addr: MetadataAddr) -> Self {
        MetadataWriter { kv, session, addr }
    }

    /// The store this writer writes for.
    pub fn kv_id(&self) -> KvId {
        self.kv
    }

    fn submit(&self, data: &str) -> oneshot::Receiver<Result<u64>> {
        let (reply, rx) = oneshot::channel();
        self.addr.do_send(WriteMetadata {
            kv: self.kv,
            session: self.session,
            data: data.to_owned(),
            reply,
        });
        rx
    }

    /// Stores `data` durably as the next `metadata.<n>.dat` and returns `n`.
    /// Blocks until the file and its directory entry are on disk. Call it from
    /// a plain thread (the callback's is one, and so is `spawn_blocking`'s);
    /// on an actix arbiter thread it returns
    /// [`Error::BlockingInAsyncContext`]: use [`write_async`](Self::write_async)
    /// there. Within a non-actix async runtime, tokio panics on the blocking
    /// wait, as it does for any blocking receive there.
    pub fn write(&self, data: &str) -> Result<u64> {
        // On an actix arbiter thread, blocking could stall the very arbiter
        // that forwards the write to the metadata thread.
        if actix_rt::Arbiter::try_current().is_some() {
            return Err(Error::BlockingInAsyncContext);
        }
        self.submit(data)
            .blocking_recv()
            .map_err(|_| Error::ComponentStopped)?
    }

    /// [`write`](Self::write) for async code.
    pub async fn write_async(&self, data: &str) -> Result<u64> {
        self.submit(data).await.map_err(|_| Error::ComponentStopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_in(path: &std::path::Path) -> MetadataLog {
        let dir = Arc::new(BackupDir::open(path).unwrap());
        dir.remove_stale_temps().unwrap();
        let names = dir.names().unwrap();
        MetadataLog::open(dir, &names).unwrap()
    }

    #[test]
    fn numbers_start_at_one_and_follow_call_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log_in(tmp.path());
        for (i, text) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(log.write(KvId(1), text).unwrap(), i as u64 + 1);
        }
        for (i, text) in ["a", "b", "c"].iter().enumerate() {
            let got = std::fs::read_to_string(tmp.path().join(metadata_file_name(i as u64 + 1))).unwrap();
            assert_eq!(&got, text);
        }
    }

    #[test]
    fn numbering_continues_after_the_largest_n_found() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("metadata.7.dat"), "x").unwrap();
        std::fs::write(tmp.path().join("metadata.junk.dat"), "x").unwrap();
        let mut log = log_in(tmp.path());
        assert_eq!(log.write(KvId(1), "next").unwrap(), 8);
    }

    #[test]
    fn empty_and_oversized_records_are_refused_and_consume_no_number() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log_in(tmp.path());
        assert!(matches!(log.write(KvId(2), ""), Err(Error::MetadataEmpty { .. })));
        let huge = "x".repeat(MAX_METADATA_LEN + 1);
        assert!(matches!(
            log.write(KvId(2), &huge),
            Err(Error::MetadataTooLarge { len, .. }) if len == MAX_METADATA_LEN + 1
        ));
        assert_eq!(log.write(KvId(2), "ok").unwrap(), 1);
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "nothing else was written"
        );
    }

    #[test]
    fn a_taken_name_is_never_overwritten_and_its_number_not_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log_in(tmp.path());
        // Someone else creates the next name behind the log's back.
        std::fs::write(tmp.path().join("metadata.1.dat"), "theirs").unwrap();
        assert!(log.write(KvId(3), "mine").is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("metadata.1.dat")).unwrap(),
            "theirs"
        );
        assert_eq!(log.write(KvId(3), "mine").unwrap(), 2);
    }

    #[test]
    fn metadata_names_parse_strictly() {
        assert_eq!(parse_metadata_file_name("metadata.12.dat"), Some(12));
        for bad in [
            "metadata..dat",
            "metadata.1a.dat",
            "metadata.1.dat.tmp",
            "x.1.dat",
            "metadata.-1.dat",
        ] {
            assert_eq!(parse_metadata_file_name(bad), None, "{bad}");
        }
    }
}
