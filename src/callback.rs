//! What the storage server hands in to be told of each round, and the
//! per-store handle that calls it on the callback pool.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::callback_pool::{CallbackPool, Job};
use crate::engine::{Engine, KvId, Snapshot};
use crate::error::{CallbackError, Error, Result};
use crate::metadata::MetadataWriter;
use crate::round_state::Report;

pub use crate::backup_file::BackupFile;

/// Called once per round of one store, on a thread of the callback pool
/// (never an actor's mailbox thread), one call of a store at a time; it may
/// block without delaying other stores (up to `Config::callback_threads`
/// blocked stores).
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

/// Runs one store's callbacks on the component's [`CallbackPool`]: one at a
/// time, in call order, whichever start of the store made them (calls of a
/// stopping start and of the next one never overlap). Cheap to clone.
#[derive(Clone)]
pub(crate) struct CallbackRunner {
    kv: KvId,
    pool: Arc<CallbackPool>,
}

impl CallbackRunner {
    /// The handle of `kv` on `pool`.
    pub fn new(kv: KvId, pool: Arc<CallbackPool>) -> Self {
        CallbackRunner { kv, pool }
    }

    /// Calls `cb` on the pool, after the store's earlier calls; the receiver gets the
    /// outcome (a panic becomes [`Error::Panicked`]). The snapshot is dropped
    /// only after the call returns.
    pub fn run(
        &self,
        cb: Arc<dyn BackupCallback>,
        snapshot: Box<dyn Snapshot>,
        files: Report,
        writer: MetadataWriter,
        span: tracing::Span,
    ) -> oneshot::Receiver<CallbackOutcome> {
        let (tx, rx) = oneshot::channel();
        let kv = self.kv;
        let job: Job = Box::new(move || {
            let _entered = span.enter();
            let outcome = call(kv, &*cb, snapshot, &files, writer);
            drop(files); // before the actor learns the outcome
            let _ = tx.send(outcome);
        });
        // A job the pool cannot run is dropped with `tx`: the round fails.
        self.pool.submit(kv, job);
        rx
    }

    /// Calls `cb` with nothing new, for a round that skipped the linker:
    /// on the pool (the snapshot may block), after the store's earlier
    /// calls, this takes the engine's snapshot and calls back only if it is
    /// of the store and at `generation`, the one the store linked last.
    /// `None` when it is not, or the engine failed (the round must link:
    /// the linker takes the snapshot again and reports what is wrong), else
    /// the callback's outcome.
    pub fn run_unchanged(
        &self,
        cb: Arc<dyn BackupCallback>,
        engine: Arc<dyn Engine>,
        generation: u64,
        writer: MetadataWriter,
        span: tracing::Span,
    ) -> oneshot::Receiver<Option<CallbackOutcome>> {
        let (tx, rx) = oneshot::channel();
        let job = unchanged_job(self.kv, cb, engine, generation, writer, span, move |outcome| {
            let _ = tx.send(outcome);
        });
        self.pool.submit(self.kv, job);
        rx
    }
}

/// The job of [`CallbackRunner::run_unchanged`], its outcome handed to
/// `then` on the pool's thread (not called if the pool drops the job), for
/// the caller to queue as `kv`'s next call (the quiet ticker: with
/// [`CallbackPool::submit_all`], in a burst).
pub(crate) fn unchanged_job(
    kv: KvId,
    cb: Arc<dyn BackupCallback>,
    engine: Arc<dyn Engine>,
    generation: u64,
    writer: MetadataWriter,
    span: tracing::Span,
    then: impl FnOnce(Option<CallbackOutcome>) + Send + 'static,
) -> Job {
    Box::new(move || {
        let _entered = span.enter();
        let outcome = match catch_unwind(AssertUnwindSafe(|| engine.snapshot(kv))) {
            Ok(Ok(snapshot)) if snapshot.kv_id() == kv && snapshot.generation() == Some(generation) => {
                Some(call(kv, &*cb, snapshot, &[], writer))
            }
            // Changed, an error or a panic: no callback ran (none is
            // counted); the linker's round retries it and says what is
            // wrong.
            _ => None,
        };
        then(outcome);
    })
}

/// One call of `cb` under `catch_unwind`, the snapshot dropped after it
/// returns.
fn call(
    kv: KvId,
    cb: &dyn BackupCallback,
    snapshot: Box<dyn Snapshot>,
    files: &[BackupFile],
    writer: MetadataWriter,
) -> CallbackOutcome {
    crate::faults::crash_point("round.before_callback");
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| cb.on_round(kv, &*snapshot, files, writer)));
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
    CallbackOutcome { result, took }
}
