//! The `LinkerActor` pool: every blocking call of a round (the engine's
//! snapshot, link, copy, fsync) runs here, on `SyncArbiter` threads, never on
//! an actor's mailbox thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::{Actor, Handler, MessageResult, SyncContext};

use crate::backup::state::BackupState;
use crate::callback::{panic_message, BackupFile};
use crate::engine::{Engine, KvId};
use crate::error::{Error, Result};
use crate::fs::BackupDir;
use crate::messages::{LinkRound, Linked, RoundLinked};

/// One thread of the linker pool.
pub(crate) struct LinkerActor {
    engine: Arc<dyn Engine>,
}

impl LinkerActor {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        LinkerActor { engine }
    }
}

impl Actor for LinkerActor {
    type Context = SyncContext<Self>;
}

impl Handler<LinkRound> for LinkerActor {
    type Result = MessageResult<LinkRound>;

    fn handle(&mut self, msg: LinkRound, _: &mut SyncContext<Self>) -> Self::Result {
        let _entered = msg.span.enter();
        let mut state = msg.state;
        // A panic must not kill this thread: a dead SyncArbiter thread
        // silently shrinks the pool. The state stays consistent (it records
        // only links that were made).
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            link_round(&*self.engine, msg.kv, &msg.dir, &mut state)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Panicked {
                kv: msg.kv,
                what: "linker",
                message: panic_message(&*panic),
            })
        });
        MessageResult(RoundLinked { state, outcome })
    }
}

/// The linker's half of a round: snapshot, link what is new, fsync the dir,
/// and list what the callback must be told.
fn link_round(engine: &dyn Engine, kv: KvId, dir: &BackupDir, state: &mut BackupState) -> Result<Linked> {
    let snapshot = engine.snapshot(kv)?;
    if snapshot.kv_id() != kv {
        return Err(Error::Engine {
            kv,
            source: format!(
                "asked for a snapshot of KV store {kv}, got one of {}",
                snapshot.kv_id()
            )
            .into(),
        });
    }
    let (mut files_linked, mut bytes_linked, mut files_copied, mut bytes_copied) = (0, 0, 0, 0);
    let was_cross_device = dir.is_cross_device();
    for file in state.to_link(snapshot.files()) {
        let placed = dir.place(file)?;
        if placed.created {
            if placed.copied {
                files_copied += 1;
                bytes_copied += file.len();
            } else {
                files_linked += 1;
                bytes_linked += file.len();
            }
        }
        let entry = BackupFile {
            name: placed.name,
            len: file.len(),
            low_seqno: file.low_seqno(),
            high_seqno: file.high_seqno(),
        };
        state.record_linked(file, entry);
    }
    if !was_cross_device && dir.is_cross_device() {
        tracing::warn!(
            dir = %dir.path().display(),
            "backup dir is on another file system than the data: files are copied, not linked"
        );
    }
    if state.needs_sync() {
        dir.sync()?;
        state.synced();
    }
    state.forget_absent(snapshot.files());
    let report = state.report();
    tracing::debug!(
        linked = files_linked,
        copied = files_copied,
        reported = report.len(),
        "round linked"
    );
    Ok(Linked {
        snapshot,
        report,
        files_linked,
        bytes_linked,
        files_copied,
        bytes_copied,
    })
}
