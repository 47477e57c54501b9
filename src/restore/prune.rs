//! `prune`: deleting what no kept restore point needs.
//!
//! The rule (proof in ARCHITECTURE.md, "Retention"): the window starts at
//! the policy's first round `r_w`, and its oldest restore point is `S_w`,
//! the newest state backed up before it (the highest seqno the snapshot of
//! round `r_w - 1` declares). A restore to S reads the plan of the best
//! base at or below S and the chain from it. Prune keeps every base whose
//! restore points reach `S_w`, with its chain (`DeclaredCoverage::needed_from`),
//! the newest round's snapshot, every undeclared file and every manifest
//! and metadata file; it deletes the other declared files. Before deleting,
//! it recomputes which seqnos from `S_w` on restore without them and
//! refuses, deleting nothing, unless they are the same.
//!
//! On disk, in order: the store's dir is locked (a running component or
//! another prune holds it: refused); the prune record `prune.<p>.json`
//! (what goes, and why) is written durably (temp, fsync,
//! `RENAME_NOREPLACE`, dir fsync); the files are unlinked; the dir is
//! fsynced. A crash anywhere leaves the needed files untouched: the ones
//! listed and still there are deleted by the next prune.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{BackupRoot, DeclaredCoverage, RecordReader, StoreBackup};
use crate::engine::Holds;
use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::faults::FsyncSite;
use crate::fs::{BackupDir, Modes};
use crate::manifest::{
    consolidated_file_name, parse_consolidated_file_name, prune_file_name, ConsolidatedBase, DeclaredFile,
    PruneRecord, RoundRecord, PRUNE_FORMAT,
};
use crate::retention::Retention;

/// The scratch data dir a consolidation writes its base into, inside the
/// store's backup dir.
pub(crate) const SCRATCH_DIR: &str = ".cbk-consolidate";

/// What a prune did (or, dry, would do) to one store's backup dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// The store.
    pub kv: KvId,
    /// The first round of the window (`None`: nothing to prune, e.g. a dir
    /// without round manifests, which is never pruned).
    pub window_round: Option<u64>,
    /// The oldest seqno kept restorable.
    pub window_seqno: Option<u64>,
    /// Files deleted (or to delete).
    pub deleted: Vec<String>,
    /// Bytes whose last link went (the backup's own copies).
    pub bytes_freed: u64,
    /// Bytes of deleted links the live engine still shares (not freed).
    pub bytes_shared: u64,
    /// Files kept.
    pub kept: usize,
    /// Why nothing was pruned, if so.
    pub skipped: Option<String>,
    /// The base the prune wrote (or, dry, would write) first, if any.
    pub consolidated: Option<ConsolidatedReport>,
}

/// A base a prune consolidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConsolidatedReport {
    /// The round whose state it holds.
    pub round: u64,
    /// That state's seqno.
    pub seqno: u64,
    /// Its bytes (0 in a dry run: not written).
    pub bytes: u64,
}

pub(super) fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// What to delete from `store`, and the window, or why nothing.
pub(super) struct Plan {
    pub window_round: u64,
    pub window_seqno: u64,
    pub delete: Vec<PathBuf>,
    /// The base to write first, when `delete` counts on it.
    pub consolidate: Option<Consolidation>,
    /// What goes without that base (the fallback if writing it fails).
    pub delete_plain: Vec<PathBuf>,
    /// What the plan was made from, for the check of the base as written:
    /// the round manifests, the bases earlier prunes consolidated, and what
    /// restores now.
    pub rounds: Vec<RoundRecord>,
    pub bases: Vec<ConsolidatedBase>,
    pub before: DeclaredCoverage,
}

/// A base a prune writes before deleting: the state at `base.seqno`, read
/// from the files of its plan.
pub(super) struct Consolidation {
    /// As the record declares it (its files are filled in once written).
    pub base: ConsolidatedBase,
    /// The lowest seqno its plan's files cover.
    pub lowest: u64,
    /// The files a restore to `base.seqno` reads now.
    pub read: Vec<PathBuf>,
    /// The prune number it is written under.
    pub p: u64,
    /// The engine format of its round (the format it is written in).
    pub format: String,
}

/// When a prune writes a consolidated base (the state at the window's
/// first restore point, in one file or a few) so that the base it had and
/// the chain that led to it can go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consolidate {
    /// When the files it lets go hold more than twice the bytes of the
    /// live engine's files (a proxy for the state's size), backup-only
    /// bytes counted.
    #[default]
    WhenItPays,
    /// Whenever it lets any file go.
    Always,
    /// Never.
    Never,
}

pub(super) fn plan(
    store: &StoreBackup,
    policy: &Retention,
    also_keep: &dyn Fn(&str) -> bool,
    consolidate: Consolidate,
) -> Result<std::result::Result<Plan, String>> {
    let (rounds, unreadable) = store.round_records()?;
    if let Some((path, _)) = unreadable.first() {
        return Ok(Err(format!(
            "{} does not read back; run verify (nothing is pruned while a manifest is unreadable)",
            path.display()
        )));
    }
    let Some(window_round) = policy.window_start(&rounds) else {
        return Ok(Err(
            "no round manifests: a dir written before them is never pruned".into(),
        ));
    };
    let bases: Vec<ConsolidatedBase> = store
        .prune_records()?
        .into_iter()
        .filter_map(|(_, r)| r.base)
        .collect();
    let present = |n: &str| store.holds_file(n);
    let before = DeclaredCoverage::of_present_with(&rounds, &bases, &present);
    if let Some((a, b)) = before.conflict() {
        return Ok(Err(format!(
            "{a} and {b} are of two histories of the store (it was created again into the dir): \
             the dir is kept whole; verify names the problem"
        )));
    }
    let window_seqno = before.high_before_round(window_round).unwrap_or(0);
    // A pruned dir no longer uses the footer rule (reference engine): where
    // it proves a seqno of the window that the declarations do not (history
    // from before manifests, a dense compaction output), the dir is kept
    // whole.
    if super::pit::legacy_applies(store, &rounds) {
        if let Err(why) = footer_rule_check(store, &before, window_seqno) {
            return Ok(Err(why));
        }
    }
    let deletable = |keep: &BTreeSet<String>| -> Vec<PathBuf> {
        store
            .files
            .iter()
            .filter(|p| {
                let name = name_of(p);
                before.declared(name).is_some() && !keep.contains(name) && !also_keep(name)
            })
            .cloned()
            .collect()
    };
    let mut keep: BTreeSet<String> = before.needed_from(window_seqno);
    keep.extend(before.latest_snapshot().iter().cloned());
    let mut delete = deletable(&keep);
    let delete_plain = delete.clone();
    let mut with = bases.clone();
    // A base consolidated at the window's start already is not written again.
    let have_one = bases
        .iter()
        .any(|b| b.seqno == window_seqno && b.files.iter().all(|f| present(&f.name)));
    let mut consolidation = match have_one {
        true => None,
        false => consolidation(store, &rounds, &before, window_round, window_seqno, consolidate),
    };
    if let Some(c) = &consolidation {
        // What the rule keeps with the new base declared.
        let name = c.base.files[0].name.clone();
        let mut candidate = bases.clone();
        candidate.push(c.base.clone());
        let cov = DeclaredCoverage::of_present_with(&rounds, &candidate, &|n| n == name || present(n));
        let mut keep_c = cov.needed_from(window_seqno);
        keep_c.extend(cov.latest_snapshot().iter().cloned());
        let delete_c = deletable(&keep_c);
        let freed: Vec<&PathBuf> = delete_c.iter().filter(|p| !delete.contains(p)).collect();
        let own = |paths: &mut dyn Iterator<Item = &PathBuf>| -> u64 {
            paths
                .filter_map(|p| std::fs::symlink_metadata(p).ok())
                .filter(|m| m.nlink() == 1)
                .map(|m| m.len())
                .sum()
        };
        let live: u64 = before
            .latest_snapshot()
            .iter()
            .filter_map(|n| std::fs::symlink_metadata(store.dir.join(n)).ok())
            .map(|m| m.len())
            .sum();
        let pays = match consolidate {
            Consolidate::Never => false,
            Consolidate::Always => !freed.is_empty(),
            Consolidate::WhenItPays => freed.len() >= 2 && own(&mut freed.iter().copied()) > 2 * live,
        };
        if pays {
            delete = delete_c;
            with = candidate;
        } else {
            consolidation = None;
        }
    }
    let added: Vec<&DeclaredFile> = consolidation.iter().flat_map(|c| c.base.files.iter()).collect();
    if !window_unchanged(store, &rounds, &before, &with, &added, &delete, window_seqno) {
        return Ok(Err(format!(
            "deleting {} files would change which seqnos from {window_seqno} on restore; nothing \
             pruned (please report this)",
            delete.len()
        )));
    }
    Ok(Ok(Plan {
        window_round,
        window_seqno,
        delete,
        consolidate: consolidation,
        delete_plain,
        rounds,
        bases,
        before,
    }))
}

/// Whether every seqno from `window_seqno` on that restores now (`before`)
/// still restores with the files of `delete` gone and the bases `with`
/// declared (`added`: files of a new base, present). What restores is
/// exact whatever files its plan reads (the rule is sound for any set of
/// files present), so the same seqnos restoring means the same answers.
fn window_unchanged(
    store: &StoreBackup,
    rounds: &[RoundRecord],
    before: &DeclaredCoverage,
    with: &[ConsolidatedBase],
    added: &[&DeclaredFile],
    delete: &[PathBuf],
    window_seqno: u64,
) -> bool {
    let gone: BTreeSet<&str> = delete.iter().map(|p| name_of(p)).collect();
    let new_base: BTreeSet<&str> = added.iter().map(|f| f.name.as_str()).collect();
    let after = DeclaredCoverage::of_present_with(rounds, with, &|n| {
        new_base.contains(n) || (store.holds_file(n) && !gone.contains(n))
    });
    let clip = |ranges: &[(u64, u64)]| -> Vec<(u64, u64)> {
        ranges
            .iter()
            .filter(|(_, hi)| *hi >= window_seqno)
            .map(|&(lo, hi)| (lo.max(window_seqno), hi))
            .collect()
    };
    clip(&before.restorable) == clip(&after.restorable)
}

/// The base a prune could write at the window's first restore point: the
/// state of the round before the window, where that state restores now and
/// its format has a target that says what it wrote.
fn consolidation(
    store: &StoreBackup,
    rounds: &[RoundRecord],
    before: &DeclaredCoverage,
    window_round: u64,
    window_seqno: u64,
    consolidate: Consolidate,
) -> Option<Consolidation> {
    if consolidate == Consolidate::Never {
        return None;
    }
    let round = rounds
        .iter()
        .rev()
        .find(|r| r.round < window_round && before.round_high(r.round) == Some(window_seqno))?;
    // Only a format this build names has a target to write it with.
    super::format_named(&round.engine_format).ok()?;
    let read = before.plan(window_seqno).ok()?;
    let lowest = read
        .iter()
        .filter_map(|n| before.declared(n))
        .map(|f| f.low_seqno)
        .min()?;
    let p = store.prunes.last().map_or(1, |(p, _)| p + 1);
    Some(Consolidation {
        base: ConsolidatedBase {
            round: round.round,
            time_ms: round.time_ms,
            seqno: window_seqno,
            files: vec![DeclaredFile {
                name: consolidated_file_name(p, 0),
                len: 0,
                low_seqno: lowest,
                high_seqno: window_seqno,
                holds: Some(Holds::Partial),
            }],
        },
        lowest,
        read: read.iter().map(|n| store.dir.join(n)).collect(),
        p,
        format: round.engine_format.clone(),
    })
}

/// Fails, saying why, where the reference engine's footer rule proves a
/// seqno of the window from `window_seqno` on that the declarations do not.
fn footer_rule_check(
    store: &StoreBackup,
    before: &DeclaredCoverage,
    window_seqno: u64,
) -> std::result::Result<(), String> {
    let mut footers = Vec::with_capacity(store.files.len());
    for path in &store.files {
        match super::RefFormat.footer_coverage(path) {
            Ok(Some(c)) => footers.push(c),
            _ => return Err(format!("{} has no readable footer; run verify", path.display())),
        }
    }
    let by_footer = super::Coverage::new(footers).restorable;
    let declared = |s: u64| before.restorable.iter().any(|&(a, b)| a <= s && s <= b);
    for &(a, b) in &by_footer {
        let a = a.max(window_seqno);
        if a > b {
            continue;
        }
        // Ranges are few; walk the footer range through the declared ones.
        let mut s = a;
        while s <= b {
            if !declared(s) {
                return Err(format!(
                    "seqno {s} of the window restores only by the reference engine's footer rule, \
                     which a pruned dir no longer uses: the dir is kept whole"
                ));
            }
            s = before
                .restorable
                .iter()
                .find(|&&(x, y)| x <= s && s <= y)
                .map_or(b, |&(_, y)| y)
                .saturating_add(1);
        }
    }
    Ok(())
}

/// Opens and locks store `dir` as its owner would: [`Error::DirLocked`]
/// while a running component (or another prune) holds it.
fn lock(dir: &Path) -> Result<BackupDir> {
    BackupDir::open_with(dir, Modes::default(), None)?.lock()
}

/// Prunes every store of `root` by `policy`: deletes the declared files no
/// restore point of the window needs (see the module docs), or with
/// `dry_run` only reports them. Each store's dir is locked first: a dir a
/// running component owns is refused with [`Error::DirLocked`], and nothing
/// of any store is deleted. A store whose restore points the deletion would
/// change, or that a restore, verify or inspect is reading, is left whole
/// and reported as skipped. Consolidates a base when it pays
/// ([`Consolidate::WhenItPays`]; [`prune_with`] chooses).
pub fn prune(root: &BackupRoot, policy: &Retention, dry_run: bool) -> Result<Vec<PruneReport>> {
    prune_with(root, policy, dry_run, Consolidate::WhenItPays)
}

/// [`prune`], saying when to consolidate a base.
pub fn prune_with(
    root: &BackupRoot,
    policy: &Retention,
    dry_run: bool,
    consolidate: Consolidate,
) -> Result<Vec<PruneReport>> {
    check_policy(policy)?;
    // Every dir probed first: one a running component owns refuses the
    // whole prune before anything is deleted. Then one dir at a time
    // (one descriptor at a time, for roots of 1024 stores): locked, listed
    // again under the lock, pruned, unlocked.
    for store in root.stores() {
        drop(lock(&store.dir)?);
    }
    let mut reports = Vec::new();
    for listed in root.stores() {
        let dir = lock(&listed.dir)?;
        let options = PruneDir {
            policy,
            dry_run,
            consolidate,
            also_keep: &|_| false,
            cancelled: &|| false,
        };
        reports.push(prune_dir(&dir, listed.kv, &options)?);
    }
    Ok(reports)
}

/// Refuses a policy that is invalid or off.
pub(crate) fn check_policy(policy: &Retention) -> Result<()> {
    policy
        .validate()
        .map_err(|e| Error::InvalidRetention { reason: e.0 })?;
    if policy.is_off() {
        return Err(Error::InvalidRetention {
            reason: "no retention given: say how much to keep (a duration or a number of rounds)".into(),
        });
    }
    Ok(())
}

/// How [`prune_dir`] prunes.
pub(crate) struct PruneDir<'a> {
    pub policy: &'a Retention,
    pub dry_run: bool,
    pub consolidate: Consolidate,
    /// Files to keep whatever the rule says (the component's files not
    /// yet reported or uploaded).
    pub also_keep: &'a dyn Fn(&str) -> bool,
    /// Checked between unlinks: may end the prune early; what its record
    /// lists and is still there goes with the next prune.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// Prunes the backup dir of store `kv`, which the caller owns (`dir` holds
/// its lock), as `how` says. Passes over the store, reporting why, while a
/// reader pins it.
pub(crate) fn prune_dir(dir: &BackupDir, kv: KvId, how: &PruneDir<'_>) -> Result<PruneReport> {
    let PruneDir {
        policy,
        dry_run,
        consolidate,
        also_keep,
        cancelled,
    } = *how;
    let path = dir.path();
    // Held from before the listing to the last unlink. A dry run writes
    // nothing (not even the pin file) and pins nothing.
    let pin = if dry_run { None } else { dir.pin_for_prune()? };
    let mut store = StoreBackup::list(kv, path)?;
    let mut report = PruneReport {
        kv,
        window_round: None,
        window_seqno: None,
        deleted: Vec::new(),
        bytes_freed: 0,
        bytes_shared: 0,
        kept: store.files.len(),
        skipped: None,
        consolidated: None,
    };
    if cancelled() {
        report.skipped = Some("the store stopped before its prune ran".into());
        return Ok(report);
    }
    if !dry_run && pin.is_none() {
        report.skipped = Some("a restore, verify or inspect is reading it: pruned next time".into());
        return Ok(report);
    }
    if !dry_run && remove_orphan_bases(dir, &store)? {
        store = StoreBackup::list(kv, path)?;
    }
    let store = &store;
    let plan = match plan(store, policy, also_keep, consolidate)? {
        Ok(plan) => plan,
        Err(why) => {
            report.skipped = Some(why);
            return Ok(report);
        }
    };
    report.window_round = Some(plan.window_round);
    report.window_seqno = Some(plan.window_seqno);
    let p = store.prunes.last().map_or(1, |(p, _)| p + 1);
    // The new base first, durably, before the record that declares it and
    // counts on it: a crash before the record leaves files no record names
    // (removed by the next prune), never a record without its base. The
    // base as written is checked again; if it cannot be written, or does
    // not prove the window, the prune goes on without it.
    let (delete, base) = match &plan.consolidate {
        Some(c) if dry_run => {
            report.consolidated = Some(ConsolidatedReport {
                round: c.base.round,
                seqno: c.base.seqno,
                bytes: 0,
            });
            (plan.delete, None)
        }
        Some(c) if !cancelled() => match write_checked_base(dir, store, c, &plan) {
            Ok(base) => {
                report.consolidated = Some(ConsolidatedReport {
                    round: base.round,
                    seqno: base.seqno,
                    bytes: base.files.iter().map(|f| f.len).sum(),
                });
                (plan.delete, Some(base))
            }
            Err(e) => {
                tracing::warn!(kv_store = kv.0, error = %e, "no consolidated base; pruning without one");
                (plan.delete_plain, None)
            }
        },
        _ => (plan.delete_plain, None),
    };
    report.kept = store.files.len() - delete.len();
    // Per file: bytes freed (its last link) and bytes the engine shares.
    let mut sizes = Vec::with_capacity(delete.len());
    for path in &delete {
        let md = std::fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
        let size = match md.nlink() {
            1 => (md.len(), 0),
            _ => (0, md.len()),
        };
        report.bytes_freed += size.0;
        report.bytes_shared += size.1;
        sizes.push(size);
        report.deleted.push(name_of(path).to_owned());
    }
    if dry_run || delete.is_empty() {
        return Ok(report);
    }
    let record = PruneRecord {
        format: PRUNE_FORMAT,
        time_ms: crate::manifest::now_ms(),
        window_round: plan.window_round,
        window_seqno: plan.window_seqno,
        deleted: report.deleted.clone(),
        base,
        remote: false,
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| Error::Corrupt {
        path: path.join(prune_file_name(p)),
        reason: format!("cannot encode: {e}"),
    })?;
    // Temp, fsync, rename never over a file, dir fsync.
    dir.publish_new_file(&prune_file_name(p), &bytes, FsyncSite::PruneRecord)?;
    dir.sync(FsyncSite::Pruned)?;
    crate::faults::crash_point("prune.recorded");
    for (done, path) in delete.iter().enumerate() {
        if cancelled() {
            report.skipped = Some(format!(
                "stopped after {done} of {} unlinks (the store stopped): the rest go with the next prune",
                delete.len()
            ));
            report.deleted.truncate(done);
            report.bytes_freed = sizes[..done].iter().map(|s| s.0).sum();
            report.bytes_shared = sizes[..done].iter().map(|s| s.1).sum();
            break;
        }
        dir.remove_pruned(name_of(path))?;
        crate::faults::crash_point("prune.unlinked_one");
    }
    dir.sync(FsyncSite::Pruned)?;
    Ok(report)
}

/// Removes the files of a base whose prune was cut off before its record
/// (named for a prune number no record has): nothing declares them.
/// Returns whether it removed any.
fn remove_orphan_bases(dir: &BackupDir, store: &StoreBackup) -> Result<bool> {
    let next = store.prunes.last().map_or(1, |(p, _)| p + 1);
    let mut removed = false;
    for path in &store.files {
        if parse_consolidated_file_name(name_of(path)).is_some_and(|(p, _)| p >= next) {
            dir.remove_pruned(name_of(path))?;
            removed = true;
        }
    }
    if removed {
        dir.sync(FsyncSite::Pruned)?;
    }
    // A consolidation's scratch dir, left by a crash.
    let scratch = dir.path().join(SCRATCH_DIR);
    match std::fs::remove_dir_all(&scratch) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", &scratch, e)),
    }
    Ok(removed)
}

/// [`write_base`], then the window check again with the base as written
/// (its real files: none where the state is empty); on failure its files
/// are removed again.
fn write_checked_base(
    dir: &BackupDir,
    store: &StoreBackup,
    c: &Consolidation,
    plan: &Plan,
) -> Result<ConsolidatedBase> {
    let base = write_base(dir, store.kv, c)?;
    let mut bases = plan.bases.clone();
    bases.push(base.clone());
    let added: Vec<&DeclaredFile> = base.files.iter().collect();
    let proves = window_unchanged(
        store,
        &plan.rounds,
        &plan.before,
        &bases,
        &added,
        &plan.delete,
        plan.window_seqno,
    );
    if proves {
        return Ok(base);
    }
    for f in &base.files {
        dir.remove_pruned(&f.name)?;
    }
    dir.sync(FsyncSite::Pruned)?;
    Err(Error::Corrupt {
        path: dir.path().to_path_buf(),
        reason: format!(
            "the base written for seqno {} does not prove the window's restore points",
            base.seqno
        ),
    })
}

/// Writes the consolidated base `c` into the store's dir: the state at
/// its seqno, read from its plan's files, written by the format's restore
/// target into a scratch data dir inside the backup dir (durably), then
/// linked (or copied, durably) into the backup dir under its names, and
/// the dir fsynced. Returns the base as its record declares it.
fn write_base(dir: &BackupDir, kv: KvId, c: &Consolidation) -> Result<ConsolidatedBase> {
    let format = super::format_named(&c.format)?;
    // Inside the store's own dir (its owner's alone; a link away from
    // where the files go); the layout and uploads pass over it. One a
    // crash left was removed with the orphans at the prune's start.
    let scratch = dir.path().join(SCRATCH_DIR);
    std::fs::create_dir(&scratch).map_err(|e| Error::io("create dir", &scratch, e))?;
    let written = (|| {
        let records = super::pit::newest_at(format.reader.as_ref(), &c.read, c.base.seqno, &mut |_| {})?;
        format
            .target
            .write_store(&scratch, kv, c.lowest, c.base.seqno, &mut records.into_iter())?;
        let files = format
            .target
            .written_files(&scratch, kv)?
            .ok_or_else(|| Error::Corrupt {
                path: scratch.clone(),
                reason: "the restore target cannot say which files it wrote".into(),
            })?;
        let mut declared = Vec::with_capacity(files.len());
        for (k, file) in files.iter().enumerate() {
            let name = consolidated_file_name(c.p, k as u64);
            let len = std::fs::metadata(file)
                .map_err(|e| Error::io("stat", file, e))?
                .len();
            dir.adopt(file, &name)?;
            declared.push(DeclaredFile {
                name,
                len,
                low_seqno: c.lowest,
                high_seqno: c.base.seqno,
                holds: Some(Holds::Partial),
            });
        }
        dir.sync(FsyncSite::Pruned)?;
        Ok(declared)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let files = written?;
    crate::faults::crash_point("prune.consolidated");
    Ok(ConsolidatedBase {
        files,
        ..c.base.clone()
    })
}
