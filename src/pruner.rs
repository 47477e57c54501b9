//! `PrunerActor`: the component's own retention (`Config::retention`), on a
//! thread of its own (a one-thread `SyncArbiter`), never on a mailbox
//! thread nor on the linker pool, so a long prune delays no store's links.
//!
//! A store's `BackupActor` asks for a prune after a successful round, at
//! most once every `Config::prune_every` and only while no other store's
//! prune is under way (one slot: a round never waits behind a queue of
//! prunes), and its next round waits for the answer (a prune and a round
//! of one store never overlap). The prune runs
//! over the store's own [`BackupDir`] (the component owns its lock), by the
//! rule `cbk prune` uses (`restore::prune`), and keeps beside it every file
//! the store has not yet reported to its callback or uploaded to its
//! remote copy. A stop without final round cancels it between two unlinks.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::engine::KvId;
use crate::error::{panic_message, Error, Result};
use crate::fs::BackupDir;
use crate::restore::{prune_dir, Consolidate, PruneDir, PruneReport};
use crate::retention::Retention;

/// The component's retention, as each store's actor gets it.
#[derive(Clone)]
pub(crate) struct PruneSchedule {
    pub pruner: Addr<PrunerActor>,
    /// Prunes sent and not yet done: at most one, so a store's round never
    /// waits behind other stores' prunes (a store that finds the pruner
    /// busy tries again after its next round).
    in_flight: Arc<AtomicUsize>,
    pub policy: Retention,
    /// `Config::prune_every`.
    pub every: std::time::Duration,
    /// `Config::consolidate`.
    pub consolidate: Consolidate,
}

impl PruneSchedule {
    /// The pruner thread, if `config` turns retention on.
    pub fn start(config: &crate::config::Config) -> Option<PruneSchedule> {
        (!config.retention.is_off()).then(|| PruneSchedule {
            pruner: SyncArbiter::start(1, || PrunerActor),
            in_flight: Arc::default(),
            policy: config.retention,
            every: config.prune_every,
            consolidate: config.consolidate,
        })
    }
}

impl PruneSchedule {
    /// The pruner's one slot, if it is free.
    pub fn try_slot(&self) -> Option<PruneSlot> {
        match self.in_flight.fetch_add(1, Ordering::AcqRel) {
            0 => Some(PruneSlot(Arc::clone(&self.in_flight))),
            _ => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }
}

/// The pruner's slot, held by a [`PruneStore`] until it is handled (or
/// dropped undelivered).
pub(crate) struct PruneSlot(Arc<AtomicUsize>);

impl Drop for PruneSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Prune one store's backup dir. Sent by its `BackupActor` with `send`
/// (the round waits for the reply).
pub(crate) struct PruneStore {
    pub kv: KvId,
    pub dir: Arc<BackupDir>,
    pub policy: Retention,
    pub consolidate: Consolidate,
    /// Files to keep whatever the rule says: not yet reported or uploaded.
    pub keep: HashSet<String>,
    /// Set on a stop without final round.
    pub cancel: Arc<AtomicBool>,
    pub span: tracing::Span,
    /// Freed when the message is dropped, handled or not.
    pub _slot: PruneSlot,
}

impl Message for PruneStore {
    type Result = Result<PruneReport>;
}

/// Runs prunes, one at a time, on its own thread.
pub(crate) struct PrunerActor;

impl Actor for PrunerActor {
    type Context = SyncContext<Self>;
}

impl Handler<PruneStore> for PrunerActor {
    type Result = Result<PruneReport>;

    fn handle(&mut self, msg: PruneStore, _: &mut SyncContext<Self>) -> Self::Result {
        let _entered = msg.span.enter();
        let cancelled = || msg.cancel.load(Ordering::Acquire);
        let keep = |name: &str| msg.keep.contains(name);
        let how = PruneDir {
            policy: &msg.policy,
            dry_run: false,
            consolidate: msg.consolidate,
            also_keep: &keep,
            cancelled: &cancelled,
        };
        let run = || prune_dir(&msg.dir, msg.kv, &how);
        let report = catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
            Err(Error::Panicked {
                kv: msg.kv,
                what: "prune",
                message: panic_message(&*panic),
            })
        });
        match &report {
            Ok(r) if r.skipped.is_some() => {
                tracing::info!(reason = r.skipped.as_deref(), "prune passed over the store")
            }
            Ok(r) => tracing::info!(
                files = r.deleted.len(),
                bytes_freed = r.bytes_freed,
                window_round = r.window_round,
                "pruned"
            ),
            Err(e) => tracing::warn!(error = %e, "prune failed; the next one retries"),
        }
        report
    }
}
