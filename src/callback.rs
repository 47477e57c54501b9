//! What the storage server hands in to be told of each round, and the
//! per-store thread that calls it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::{KvId, Snapshot};
use crate::error::{CallbackError, Error, Result};
use crate::metadata::MetadataWriter;

pub use crate::backup_file::BackupFile;

/// Called once per round of one store, on a thread of that store's own (never
/// an actor's mailbox thread), so it may block without delaying other stores.
///
/// `files` are the files placed in the backup dir that no successful round
/// has reported yet; the list is empty when nothing is new. The snapshot is
/// held until the call returns. Returning an error (or panicking) fails the
/// round: its files are reported again by the next one.
///
/// Any `Fn(KvId, &dyn Snapshot, &[BackupFile], MetadataWriter) -> Result<(),
/// CallbackError>` closure is a callback; [`callback`] helps the compiler
/// infer a closure's argument types.
pub trait BackupCallback: Send + Sync + 'static {
    /// Handles one round.
    fn on_round(
        &self,
        kv: KvId,
        snapshot: &dyn Snapshot,
        files: &[BackupFile],
        metadata: MetadataWriter,
    ) -> std::result::Result<(), CallbackError>;
}

impl<F> BackupCallback for F
where
    F: Fn(KvId, &dyn Snapshot, &[BackupFile], MetadataWriter) -> std::result::Result<(), CallbackError>
        + Send
        + Sync
        + 'static,
{
    fn on_round(
        &self,
        kv: KvId,
        snapshot: &dyn Snapshot,
        files: &[BackupFile],
        metadata: MetadataWriter,
    ) -> std::result::Result<(), CallbackError> {
        self(kv, snapshot, files, metadata)
    }
}

/// Wraps a closure as a shareable callback, inferring its argument types.
pub fn callback<F>(f: F) -> Arc<dyn BackupCallback>
where
    F: Fn(KvId, &dyn Snapshot, &[BackupFile], MetadataWriter) -> std::result::Result<(), CallbackError>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

/// Makes the callback of a vBucket-driven backup when its vBucket becomes
/// active.
pub type CallbackFactory = Arc<dyn Fn(KvId) -> Arc<dyn BackupCallback> + Send + Sync>;

/// What one callback call came to, and how long it took.
pub(crate) struct CallbackOutcome {
    pub result: Result<()>,
    pub took: Duration,
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread that runs one store's callbacks. Clones share the thread; it
/// ends when the last clone drops (after the call in progress, if any).
///
/// A thread per store, not a shared pool: a callback that blocks forever then
/// holds only its own store, and process exit does not wait for it (it is
/// not joined, unlike tokio's blocking pool at runtime shutdown). Every start
/// of a store uses the same thread, so callbacks of a stopping start and of
/// the next one run one after the other, never at once.
#[derive(Clone)]
pub(crate) struct CallbackRunner {
    kv: KvId,
    jobs: mpsc::Sender<Job>,
}

impl CallbackRunner {
    /// Starts the store's callback thread.
    pub fn start(kv: KvId) -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("cbk-callback-{kv}"))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| Error::io("start callback thread", format!("KV store {kv}"), e))?;
        Ok(CallbackRunner { kv, jobs })
    }

    /// Calls `cb` on the store's callback thread; the receiver gets the
    /// outcome (a panic becomes [`Error::Panicked`]). The snapshot is dropped
    /// only after the call returns.
    pub fn run(
        &self,
        cb: Arc<dyn BackupCallback>,
        snapshot: Box<dyn Snapshot>,
        files: Vec<BackupFile>,
        writer: MetadataWriter,
        span: tracing::Span,
    ) -> oneshot::Receiver<CallbackOutcome> {
        let (tx, rx) = oneshot::channel();
        let kv = self.kv;
        let job: Job = Box::new(move || {
            let _entered = span.enter();
            crate::faults::crash_point("round.before_callback");
            let start = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| cb.on_round(kv, &*snapshot, &files, writer)));
            let took = start.elapsed();
            drop(snapshot);
            let result = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(source)) => Err(Error::Callback { kv, source }),
                Err(panic) => {
                    let message = crate::error::panic_message(&*panic);
                    tracing::error!(kv_store = kv.0, %message, "backup callback panicked");
                    Err(Error::Panicked {
                        kv,
                        what: "callback",
                        message,
                    })
                }
            };
            let _ = tx.send(CallbackOutcome { result, took });
        });
        // The thread ends only when every sender is gone, so this cannot
        // fail; if it did, the dropped `tx` fails the round.
        let _ = self.jobs.send(job);
        rx
    }
}
