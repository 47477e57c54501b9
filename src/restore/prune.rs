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
use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::faults::FsyncSite;
use crate::fs::{BackupDir, Modes};
use crate::manifest::{prune_file_name, PruneRecord, PRUNE_FORMAT};
use crate::retention::Retention;

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
}

pub(super) fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// What to delete from `store`, and the window, or why nothing.
pub(super) struct Plan {
    pub window_round: u64,
    pub window_seqno: u64,
    pub delete: Vec<PathBuf>,
    pub kept: usize,
}

pub(super) fn plan(
    store: &StoreBackup,
    policy: &Retention,
    also_keep: &dyn Fn(&str) -> bool,
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
    let present = |n: &str| store.holds_file(n);
    let before = DeclaredCoverage::of_present(&rounds, &present);
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
        let mut footers = Vec::with_capacity(store.files.len());
        for path in &store.files {
            match super::RefFormat.footer_coverage(path) {
                Ok(Some(c)) => footers.push(c),
                _ => {
                    return Ok(Err(format!(
                        "{} has no readable footer; run verify",
                        path.display()
                    )))
                }
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
                    return Ok(Err(format!(
                        "seqno {s} of the window restores only by the reference engine's footer rule, \
                         which a pruned dir no longer uses: the dir is kept whole"
                    )));
                }
                s = before
                    .restorable
                    .iter()
                    .find(|&&(x, y)| x <= s && s <= y)
                    .map_or(b, |&(_, y)| y)
                    .saturating_add(1);
            }
        }
    }
    let mut keep: BTreeSet<String> = before.needed_from(window_seqno);
    keep.extend(before.latest_snapshot().iter().cloned());
    let delete: Vec<PathBuf> = store
        .files
        .iter()
        .filter(|p| {
            let name = name_of(p);
            before.declared(name).is_some() && !keep.contains(name) && !also_keep(name)
        })
        .cloned()
        .collect();
    let gone: BTreeSet<&str> = delete.iter().map(|p| name_of(p)).collect();
    let after = DeclaredCoverage::of_present(&rounds, &|n| present(n) && !gone.contains(n));
    // Every seqno of the window that restored still does (what restores
    // is exact, whatever files its plan reads: the rule is sound for any
    // set of files present).
    let clip = |ranges: &[(u64, u64)]| -> Vec<(u64, u64)> {
        ranges
            .iter()
            .filter(|(_, hi)| *hi >= window_seqno)
            .map(|&(lo, hi)| (lo.max(window_seqno), hi))
            .collect()
    };
    if clip(&before.restorable) != clip(&after.restorable) {
        return Ok(Err(format!(
            "deleting {} files would change which seqnos from {window_seqno} on restore; nothing \
             pruned (please report this)",
            delete.len()
        )));
    }
    Ok(Ok(Plan {
        window_round,
        window_seqno,
        kept: store.files.len() - delete.len(),
        delete,
    }))
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
/// and reported as skipped.
pub fn prune(root: &BackupRoot, policy: &Retention, dry_run: bool) -> Result<Vec<PruneReport>> {
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
        reports.push(prune_dir(&dir, listed.kv, policy, dry_run, &|_| false, &|| {
            false
        })?);
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

/// Prunes the backup dir of store `kv`, which the caller owns (`dir` holds
/// its lock), by `policy`. Keeps, beside what the rule keeps, every file
/// `also_keep` names (the component's files not yet reported or uploaded).
/// Passes over the store, reporting why, while a reader pins it. Between
/// unlinks, `cancelled` may end the prune early: what its record lists
/// and is still there goes with the next prune.
pub(crate) fn prune_dir(
    dir: &BackupDir,
    kv: KvId,
    policy: &Retention,
    dry_run: bool,
    also_keep: &dyn Fn(&str) -> bool,
    cancelled: &dyn Fn() -> bool,
) -> Result<PruneReport> {
    let path = dir.path();
    // Held from before the listing to the last unlink. A dry run writes
    // nothing (not even the pin file) and pins nothing.
    let pin = if dry_run { None } else { dir.pin_for_prune()? };
    let store = &StoreBackup::list(kv, path)?;
    let mut report = PruneReport {
        kv,
        window_round: None,
        window_seqno: None,
        deleted: Vec::new(),
        bytes_freed: 0,
        bytes_shared: 0,
        kept: store.files.len(),
        skipped: None,
    };
    if !dry_run && pin.is_none() {
        report.skipped = Some("a restore, verify or inspect is reading it: pruned next time".into());
        return Ok(report);
    }
    let plan = match plan(store, policy, also_keep)? {
        Ok(plan) => plan,
        Err(why) => {
            report.skipped = Some(why);
            return Ok(report);
        }
    };
    report.window_round = Some(plan.window_round);
    report.window_seqno = Some(plan.window_seqno);
    report.kept = plan.kept;
    // Per file: bytes freed (its last link) and bytes the engine shares.
    let mut sizes = Vec::with_capacity(plan.delete.len());
    for path in &plan.delete {
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
    if dry_run || plan.delete.is_empty() {
        return Ok(report);
    }
    let p = store.prunes.last().map_or(1, |(p, _)| p + 1);
    let record = PruneRecord {
        format: PRUNE_FORMAT,
        time_ms: crate::manifest::now_ms(),
        window_round: plan.window_round,
        window_seqno: plan.window_seqno,
        deleted: report.deleted.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| Error::Corrupt {
        path: path.join(prune_file_name(p)),
        reason: format!("cannot encode: {e}"),
    })?;
    // Temp, fsync, rename never over a file, dir fsync.
    dir.publish_new_file(&prune_file_name(p), &bytes, FsyncSite::PruneRecord)?;
    dir.sync(FsyncSite::Pruned)?;
    crate::faults::crash_point("prune.recorded");
    for (done, path) in plan.delete.iter().enumerate() {
        if cancelled() {
            report.skipped = Some(format!(
                "stopped after {done} of {} unlinks (the store stopped): the rest go with the next prune",
                plan.delete.len()
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
