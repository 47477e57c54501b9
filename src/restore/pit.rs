//! `restore`: a KV store as it was at a seqno, from its backup alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::coverage::list;
use super::parallel::{each_store, Work};
use super::{history_conflict, BackupRoot, Coverage, RecordReader, RestoreTarget, StoreBackup, Unrestorable};
use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::pin::ReadPin;
use crate::record::Record;

/// What a restore wrote for one store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestoreSummary {
    /// The store.
    pub kv: KvId,
    /// The seqno it was restored to.
    pub to_seqno: u64,
    /// Backed-up files read.
    pub files_read: usize,
    /// Their bytes.
    pub bytes_read: u64,
    /// Keys with a value at that seqno.
    pub keys: usize,
    /// Keys whose newest version at that seqno is a delete.
    pub tombstones: usize,
    /// The store's dir in the new data dir.
    pub dir: PathBuf,
}

/// The files a restore of one store to a seqno reads (one proof's plan),
/// and the lowest seqno they cover.
struct Plan {
    paths: Vec<PathBuf>,
    lowest: u64,
}

/// Store `kv`'s plan for `seqno`, with the pin that keeps its files while
/// they are read: pinned from before the listing, so a prune waits, or has
/// ended and its deletions are in the listing. Reads the round manifests;
/// record files only for a dir without them (the footer rule).
fn plan(root: &BackupRoot, kv: KvId, seqno: u64, reader: &dyn RecordReader) -> Result<(ReadPin, Plan)> {
    let (pin, store) = root.store(kv)?.pinned()?;
    let store = &store;
    let not_restorable = |reason: String| Error::NotRestorable { kv, seqno, reason };
    let (rounds, _) = store.round_records()?;
    // With manifests, exactly the files of a proof from what they declare.
    // A dir of the reference engine (written before manifests, or with
    // history from before them) may also be read as it always was: its
    // footer rule is sound for that engine, which keeps delete markers.
    let declared_plan = if rounds.is_empty() {
        None
    } else {
        if let Some(format) = rounds
            .iter()
            .map(|r| &r.engine_format)
            .find(|f| *f != reader.format())
        {
            return Err(not_restorable(format!(
                "the backup's files are in the `{format}` format, not `{}`: restore with the reader \
                 of that format",
                reader.format()
            )));
        }
        let declared = store.coverage(&rounds)?;
        match declared.plan(seqno) {
            Ok(names) => {
                let lowest = names
                    .iter()
                    .filter_map(|n| declared.declared(n))
                    .map(|f| f.low_seqno)
                    .min()
                    .unwrap_or(seqno);
                Some((names, lowest))
            }
            Err(_) if legacy_applies(store, &rounds) => None,
            Err(e) => return Err(not_restorable(e.reason)),
        }
    };
    let (paths, lowest) = match declared_plan {
        Some((names, lowest)) => (
            names.iter().map(|n| store.dir.join(n)).collect::<Vec<_>>(),
            lowest,
        ),
        None => legacy_plan(store, seqno, reader).map_err(not_restorable)?,
    };
    Ok((pin, Plan { paths, lowest }))
}

/// Restores store `kv` to `seqno` into `out`: its plan, read under its
/// pin, checked by `target`, then written. Holds this one store's newest
/// versions (one per key) until they are written.
fn restore_store(
    root: &BackupRoot,
    (kv, seqno): (KvId, u64),
    out: &Path,
    reader: &dyn RecordReader,
    target: &dyn RestoreTarget,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreSummary> {
    let (pin, plan) = plan(root, kv, seqno, reader)?;
    let newest = newest_at(reader, &plan.paths, seqno, progress)?;
    drop(pin);
    if !newest.is_empty() {
        target
            .check(plan.lowest, seqno)
            .map_err(|reason| Error::NotRestorable { kv, seqno, reason })?;
    }
    let bytes_read = plan
        .paths
        .iter()
        .map(|p| std::fs::symlink_metadata(p).map_or(0, |m| m.len()))
        .sum();
    let tombstones = newest.iter().filter(|r| r.is_delete()).count();
    let keys = newest.len() - tombstones;
    let dir = target.write_store(out, kv, plan.lowest, seqno, &mut newest.into_iter())?;
    Ok(RestoreSummary {
        kv,
        to_seqno: seqno,
        files_read: plan.paths.len(),
        bytes_read,
        keys,
        tombstones,
        dir,
    })
}

/// The files of a dir restored by the footer rule (no usable manifest):
/// every file, if their footers prove `seqno` and no two disagree on a
/// seqno; with the lowest seqno they cover.
fn legacy_plan(
    store: &StoreBackup,
    seqno: u64,
    reader: &dyn RecordReader,
) -> std::result::Result<(Vec<PathBuf>, u64), String> {
    let mut covers = Vec::with_capacity(store.files.len());
    for path in &store.files {
        match reader.footer_coverage(path) {
            Ok(Some(c)) => covers.push(c),
            Ok(None) => {
                return Err(format!(
                    "the dir has no round manifest and {} declares nothing in the `{}` format, so \
                     no restore point is provable",
                    path.display(),
                    reader.format()
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let coverage = Coverage::new(covers);
    if let Err(why) = coverage.check(seqno) {
        return Err(explain(&why, &coverage, &store.files));
    }
    match history_conflict(reader, &store.files) {
        Err(e) => return Err(e.to_string()),
        Ok(Some(c)) => {
            return Err(format!(
                "seqno {} is written differently in {} and {}: the backup dir holds more than one \
                 history of the store (it was deleted and created again into the same dir); restore \
                 needs a backup dir with one",
                c.seqno,
                c.first.display(),
                c.second.display()
            ))
        }
        Ok(None) => {}
    }
    Ok((store.files.clone(), coverage.lowest.unwrap_or(seqno)))
}

/// Whether the footer rule of dirs without manifests may be used on
/// `store`, whose manifests are `rounds`: only for the reference engine's
/// files, never once the dir was pruned, and never while a file a manifest
/// declares is missing (the rule takes the state below the lowest seqno
/// present as empty, which removed files make untrue: a prune, or a copy
/// that lacks files).
pub(super) fn legacy_applies(store: &StoreBackup, rounds: &[crate::manifest::RoundRecord]) -> bool {
    store.prunes.is_empty()
        && rounds.iter().all(|r| {
            r.engine_format == crate::refengine::FILE_FORMAT
                && r.added.iter().all(|f| store.holds_file(&f.name))
        })
}

/// Why a restore is refused, in words, with the seqnos that would work.
fn explain(why: &Unrestorable, coverage: &Coverage, files: &[PathBuf]) -> String {
    let exact = format!("exact restore points: {}", list(&coverage.restorable));
    match why {
        Unrestorable::Empty => "the backup holds no seqno-index file".into(),
        Unrestorable::Outside { lowest, highest } => {
            format!("the backup covers seqnos {lowest}..={highest}; {exact}")
        }
        Unrestorable::Gap { from, to } => format!(
            "no backed-up file covers seqnos {from}..={to}, so versions written there are unknown; {exact}"
        ),
        Unrestorable::Lossy {
            file,
            low,
            high,
            missing_from,
        } => format!(
            "{} covers seqnos {low}..={high} but kept only the newest version of each key (a compaction \
             output), and no backed-up file holds every version from seqno {missing_from}; {exact}",
            files[*file].display()
        ),
    }
}

/// The newest version at or below `seqno` of every key in the files at
/// `paths` (a plan), deletes included, in seqno order. One pass over the
/// files, each streamed: memory holds one version per key, never the
/// history. `progress` is called with each file read.
pub(super) fn newest_at(
    reader: &dyn RecordReader,
    paths: &[PathBuf],
    seqno: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<Record>> {
    let mut newest: HashMap<Vec<u8>, Record> = HashMap::new();
    for path in paths {
        for record in reader.records(path)? {
            let record = record?;
            if record.seqno > seqno {
                continue;
            }
            match newest.get(&record.key) {
                Some(have) if have.seqno >= record.seqno => {}
                _ => {
                    newest.insert(record.key.clone(), record);
                }
            }
        }
        progress(1);
    }
    let mut newest: Vec<Record> = newest.into_values().collect();
    newest.sort_by_key(|r| r.seqno);
    Ok(newest)
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io("read dir", path, e)),
    }
}

/// Rebuilds each store of `kvs` as it was at `seqno` (for each key the
/// newest version with a seqno at most `seqno`, deletes honoured) from the
/// backup alone, reading its files with `reader`, and writes it through
/// `target` as a fresh data dir at `out`, which the engine opens normally
/// and continues at `seqno + 1`. Stores are restored in parallel (see
/// [`restore_points`]).
///
/// Refuses, writing nothing, when `out` is not empty, or when what any
/// store's files declare does not prove `seqno`. `progress` is called with
/// each file read.
pub fn restore(
    root: &BackupRoot,
    kvs: &[KvId],
    seqno: u64,
    out: &Path,
    reader: &dyn RecordReader,
    target: &dyn RestoreTarget,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<RestoreSummary>> {
    let points: Vec<(KvId, u64)> = kvs.iter().map(|kv| (*kv, seqno)).collect();
    restore_points(root, &points, out, reader, target, progress)
}

/// [`restore`] with a seqno of its own for each store (as [`seqno_at`]
/// gives them for a time).
///
/// Every store's plan is made first (from its round manifests), so a
/// store the backup cannot prove at its seqno is refused before anything
/// is written. Then stores are read and written in parallel, a few at a
/// time (two per core: each store's write ends in fsyncs, which another
/// store's reads overlap): memory holds the newest versions of those
/// stores only, never of every store. A store whose files fail to read back (a
/// checksum, a file a prune removed since) or to be written, or whose
/// reader or target panics, fails the restore: no store starts after it,
/// and every store dir written, whole or in part, is removed from `out`
/// again, so an error never leaves part of a restore behind (a panic is
/// raised again once they are gone).
pub fn restore_points(
    root: &BackupRoot,
    points: &[(KvId, u64)],
    out: &Path,
    reader: &dyn RecordReader,
    target: &dyn RestoreTarget,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<RestoreSummary>> {
    let out_existed = match std::fs::symlink_metadata(out) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("stat", out, e)),
    };
    if !is_empty_dir(out)? {
        return Err(Error::RestoreTargetNotEmpty {
            path: out.to_path_buf(),
        });
    }
    for (kv, seqno) in points {
        plan(root, *kv, *seqno, reader)?;
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io("create dir", out, e))?;
    let ran = each_store(
        Work::Writes,
        points,
        progress,
        Result::is_err,
        |point, progress| restore_store(root, *point, out, reader, target, progress),
    );
    let mut summaries = Vec::with_capacity(points.len());
    let mut failed = None;
    for result in ran.results.into_iter().flatten() {
        match result {
            Ok(summary) => summaries.push(summary),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if failed.is_none() && ran.panic.is_none() {
        return Ok(summaries);
    }
    // `out` was empty: every store dir in it is this restore's, written
    // whole or in part (a write that failed, a reader that panicked).
    for (kv, _) in points {
        let dir = target.store_dir(out, *kv);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a store a failed restore wrote")
            }
            _ => {}
        }
    }
    if !out_existed {
        // Only if nothing else is left in it.
        let _ = std::fs::remove_dir(out);
    }
    if let Some(panic) = ran.panic {
        std::panic::resume_unwind(panic);
    }
    Err(failed.expect("a failure or a panic"))
}

/// The seqno whose state store `kv` held at `time_ms` (milliseconds since
/// the Unix epoch) by its backup: the state of the newest round at or
/// before it. Refused, with the reason, when that time is before the first
/// round or after the newest (not backed up yet), or when that state is not
/// restorable (pruned, or never provable).
pub fn seqno_at(root: &BackupRoot, kv: KvId, time_ms: u64) -> Result<u64> {
    let store = root.store(kv)?;
    let at = crate::retention::format_time_ms(time_ms);
    let refused = |reason: String| Error::NotRestorableAt {
        kv,
        time: at.clone(),
        reason,
    };
    let (rounds, unreadable) = store.round_records()?;
    if let Some((path, _)) = unreadable.first() {
        // The round it held may be the one a time falls in.
        return Err(refused(format!(
            "{} does not read back (run verify): which round held the store at that time is unknown",
            path.display()
        )));
    }
    let (Some(first), Some(newest)) = (rounds.first(), rounds.last()) else {
        return Err(refused(
            "the dir has no round manifests (it was written before them); restore to a seqno".into(),
        ));
    };
    let when = crate::retention::format_time_ms;
    if time_ms < first.time_ms {
        return Err(refused(format!(
            "not backed up yet: the backup's first round is at {}",
            when(first.time_ms)
        )));
    }
    if time_ms > newest.time_ms {
        return Err(refused(format!(
            "not backed up yet: the newest round is at {}; what the store held after it is not in the backup",
            when(newest.time_ms)
        )));
    }
    let round = rounds
        .iter()
        .rev()
        .find(|r| r.time_ms <= time_ms)
        .unwrap_or(first);
    let declared = store.coverage(&rounds)?;
    // The round's own snapshot: in one history it never declares less than
    // an earlier round's; if it does, the store started over.
    let Some(seqno) = declared.round_high(round.round) else {
        return Err(refused(format!(
            "round {} (at {}) lists no file: nothing of the store was flushed by then",
            round.round,
            when(round.time_ms)
        )));
    };
    if declared
        .high_before_round(round.round)
        .is_some_and(|earlier| earlier > seqno)
    {
        return Err(refused(format!(
            "round {} (at {}) declares less than an earlier round: the store was created again into \
             the dir, and its two histories cannot be told apart by time",
            round.round,
            when(round.time_ms)
        )));
    }
    if let Err(e) = declared.plan(seqno) {
        let pruned = store.prunes.last().map(|(_, path)| path.clone());
        return Err(refused(match pruned {
            Some(path) => format!(
                "its state (seqno {seqno}, round {}) was pruned or is not provable (last prune: {}): {}",
                round.round,
                path.display(),
                e.reason
            ),
            None => format!(
                "its state (seqno {seqno}, round {}) is not provable: {}",
                round.round, e.reason
            ),
        }));
    }
    Ok(seqno)
}
