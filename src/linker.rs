//! The `LinkerActor` pool: every blocking call of a round (the engine's
//! snapshot, link, copy, fsync) runs here, on `SyncArbiter` threads, never on
//! an actor's mailbox thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::{Actor, Handler, Message, MessageResult, SyncContext};

use crate::callback::BackupFile;
use crate::engine::{Engine, IndexFile, KvId, Snapshot};
use crate::error::panic_message;
use crate::error::{Error, Result};
use crate::faults;
use crate::fs::{BackupDir, SourceDir};
use crate::manifest::{DeclaredFile, RoundFacts, RoundLog};
use crate::round_state::LinkSet;

/// Backup actor → linker pool, with `send`: take a snapshot, link what is
/// new, fsync the dir. The link set travels with the job and comes back in
/// the reply, so two rounds of a store cannot overlap. `cancel` is set when
/// the store stops without a final round: the job then links nothing more.
#[derive(Message)]
#[rtype(result = "RoundLinked")]
pub(crate) struct LinkRound {
    pub kv: KvId,
    pub dir: Arc<BackupDir>,
    pub rounds: Arc<parking_lot::Mutex<RoundLog>>,
    pub links: Box<LinkSet>,
    pub cancel: Arc<AtomicBool>,
    pub span: tracing::Span,
}

/// The linker's reply: the link set back, and what the round linked.
pub(crate) struct RoundLinked {
    pub links: Box<LinkSet>,
    pub outcome: Result<Linked>,
}

/// A round's links, durable, ready to be reported.
pub(crate) struct Linked {
    pub snapshot: Box<dyn Snapshot>,
    /// Files placed by this round (newly or found already there).
    pub placed: Vec<BackupFile>,
    pub files_linked: u64,
    pub bytes_linked: u64,
    pub files_copied: u64,
    pub bytes_copied: u64,
    /// The round manifest written (name, length), if the round wrote one.
    pub manifest: Option<(String, u64)>,
}

impl Linked {
    /// A round that found nothing new.
    pub fn nothing_new(snapshot: Box<dyn Snapshot>) -> Linked {
        Linked {
            snapshot,
            placed: Vec::new(),
            files_linked: 0,
            bytes_linked: 0,
            files_copied: 0,
            bytes_copied: 0,
            manifest: None,
        }
    }
}

/// Supervisor → linker pool, with `do_send`, when a store stops for good
/// (not when it restarts): tells the engine (`Engine::backup_stopped`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct BackupStoppedHook {
    pub kv: KvId,
}

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

    fn handle(&mut self, mut msg: LinkRound, _: &mut SyncContext<Self>) -> Self::Result {
        let span = msg.span.clone();
        let _entered = span.enter();
        let mut links = std::mem::take(&mut msg.links);
        let mut recorded = Vec::new();
        // A panic must not kill this thread: a dead SyncArbiter thread
        // silently shrinks the pool.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            link_round(&*self.engine, &msg, &mut links, &mut recorded)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Panicked {
                kv: msg.kv,
                what: "linker",
                message: panic_message(&*panic),
            })
        });
        if outcome.is_err() {
            // A failed round leaves the link set as it was: its files are
            // placed again (idempotently) and reported by the next round.
            links.roll_back(&recorded);
        }
        MessageResult(RoundLinked { links, outcome })
    }
}

impl Handler<BackupStoppedHook> for LinkerActor {
    type Result = ();

    fn handle(&mut self, msg: BackupStoppedHook, _: &mut SyncContext<Self>) {
        let engine = &*self.engine;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| engine.backup_stopped(msg.kv))) {
            tracing::error!(kv_store = msg.kv.0, message = %panic_message(&*panic), "engine panicked in backup_stopped");
        }
    }
}

fn check_cancel(kv: KvId, cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Acquire) {
        return Err(Error::BackupStopped { kv });
    }
    Ok(())
}

/// From how many files to link a round opens their dir, to link each by
/// its name there: the open and close cost about what walking the whole
/// path of a file or two does.
const LINK_FROM_DIR_AT: usize = 4;

/// The linker's half of a round: snapshot, link what is new, fsync the dir.
/// `recorded` collects the files added to `links`, for a roll-back.
fn link_round(
    engine: &dyn Engine,
    msg: &LinkRound,
    links: &mut LinkSet,
    recorded: &mut Vec<IndexFile>,
) -> Result<Linked> {
    let (kv, dir) = (msg.kv, &*msg.dir);
    check_cancel(kv, &msg.cancel)?;
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
    // The dir's own entry must be durable before anything in it is
    // reported, even when nothing is placed.
    dir.make_entry_durable()?;
    let generation = snapshot.generation();
    if links.is_up_to_date(generation) {
        // Nothing new since the last round: O(1), whatever the store holds.
        engine.files_backed_up(kv, &[]);
        return Ok(Linked::nothing_new(snapshot));
    }
    let (mut files_linked, mut bytes_linked, mut files_copied, mut bytes_copied) = (0, 0, 0, 0);
    let mut placed_files = Vec::new();
    let mut declared = Vec::new();
    let was_cross_device = dir.is_cross_device();
    let to_link = links.to_link(snapshot.files());
    // Many files (a first round): linked relative to their dir, opened once.
    let src_dir = match to_link.first().and_then(|f| f.path().parent()) {
        Some(parent) if to_link.len() >= LINK_FROM_DIR_AT => SourceDir::open(parent),
        _ => None,
    };
    for file in to_link {
        check_cancel(kv, &msg.cancel)?;
        let placed = dir.place_from(file, src_dir.as_ref())?;
        faults::crash_point("round.linking");
        if placed.created && placed.copied {
            files_copied += 1;
            bytes_copied += file.len();
        } else if placed.created {
            files_linked += 1;
            bytes_linked += file.len();
        }
        let entry = BackupFile {
            name: placed.name,
            len: file.len(),
            low_seqno: file.low_seqno(),
            high_seqno: file.high_seqno(),
        };
        declared.push(declared_file(&entry, file));
        links.record(file, entry.clone());
        recorded.push(file.clone());
        placed_files.push(entry);
    }
    if !was_cross_device && dir.is_cross_device() {
        tracing::warn!(
            dir = %dir.path().display(),
            "backup dir is on another file system than the data: files are copied, not linked"
        );
    }
    let removed = links.absent_names(snapshot.files());
    let mut manifest = None;
    let full = !links.manifested();
    if full || !placed_files.is_empty() || !removed.is_empty() {
        // What the files declare goes into the dir with them, made durable
        // by the same dir fsync (one more fsync: the manifest file's).
        let facts = RoundFacts {
            engine_format: engine.file_format(),
            complete: snapshot.is_complete(),
            first_seqno: engine.first_seqno(kv),
            full,
            // A full manifest lists the whole snapshot, files placed by an
            // earlier round of this start included (after a roll-back).
            added: if full {
                let all = snapshot.files().iter();
                all.filter_map(|f| links.entry(f).map(|e| declared_file(&e, f)))
                    .collect()
            } else {
                declared
            },
            removed: removed.clone(),
        };
        manifest = Some(msg.rounds.lock().write(dir, facts)?);
        faults::crash_point("round.linked_before_dir_sync");
        // Reported only once their entries are durable.
        dir.sync(crate::faults::FsyncSite::RoundLinks)?;
        links.mark_manifested();
    }
    links.forget(&removed);
    links.mark_up_to_date(generation);
    engine.files_backed_up(kv, recorded);
    tracing::debug!(
        linked = files_linked,
        copied = files_copied,
        placed = placed_files.len(),
        "round linked"
    );
    Ok(Linked {
        snapshot,
        placed: placed_files,
        files_linked,
        bytes_linked,
        files_copied,
        bytes_copied,
        manifest,
    })
}

/// What a placed file declares, for its round's manifest.
fn declared_file(entry: &BackupFile, file: &IndexFile) -> DeclaredFile {
    DeclaredFile {
        name: entry.name.clone(),
        len: entry.len,
        low_seqno: entry.low_seqno,
        high_seqno: entry.high_seqno,
        holds: file.holds(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::BackupDir;
    use crate::manifest::{RoundLog, RoundRecord};
    use crate::refengine::RefEngine;

    /// Regression: after a round failed once its manifest was durable (an
    /// engine hook panicked), the next manifest said `full` but listed only
    /// the files placed again, so a restore rebuilt a snapshot without the
    /// others.
    #[test]
    fn a_full_manifest_after_a_roll_back_lists_the_whole_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = RefEngine::open(tmp.path().join("data")).unwrap();
        let kv = KvId(1);
        for (k, v) in [(b"a", b"1"), (b"b", b"2")] {
            engine.put(kv, k, v).unwrap();
            engine.flush(kv).unwrap();
        }
        let dir = Arc::new(BackupDir::open(&tmp.path().join("backup")).unwrap());
        let log = RoundLog::open(&dir, &dir.names().unwrap()).unwrap();
        let msg = LinkRound {
            kv,
            dir: Arc::clone(&dir),
            rounds: Arc::new(parking_lot::Mutex::new(log)),
            links: Box::default(),
            cancel: Arc::new(AtomicBool::new(false)),
            span: tracing::Span::none(),
        };
        let (mut links, mut recorded) = (LinkSet::default(), Vec::new());
        link_round(&engine, &msg, &mut links, &mut recorded).unwrap();
        links.roll_back(&recorded[1..]);
        link_round(&engine, &msg, &mut links, &mut Vec::new()).unwrap();
        let bytes = std::fs::read(tmp.path().join("backup/round.2.json")).unwrap();
        let second: RoundRecord = serde_json::from_slice(&bytes).unwrap();
        assert!(second.full);
        assert_eq!(second.added.len(), 2, "{second:?}");
    }
}
