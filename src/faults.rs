//! Fault injection, for this crate's tests and for storage servers that want
//! to test their own handling of backup failures. Only with the `failpoints`
//! cargo feature: without it every hook below is an empty inline function,
//! and nothing of this module is public.
//!
//! - [`inject`] makes one kind of file-system operation on a backup dir fail
//!   with a chosen errno, as the kernel would (`ENOSPC`, `EIO`, `EROFS`, …),
//!   until the returned guard drops. Faults are keyed by the backup dir's
//!   path, so tests on separate temp dirs do not disturb each other.
//! - Crash points (`CBK_CRASH_POINT=<name>[:<k>]` in the environment) kill
//!   the process with `SIGKILL` the `k`th time (default 1st) execution passes
//!   the named point; the crash tests run a child process with it set.
//!
//! - [`power`]: the power-loss model. Its recorder journals every
//!   durable file-system operation the component makes under a root, and
//!   computes from the journal what a machine losing power at any point
//!   would have kept; [`omit_fsync`] removes one kind of fsync, to show
//!   that the model catches it.
//!
//! When nothing is armed, each check is one relaxed atomic load.

#[cfg(feature = "failpoints")]
pub mod power;
#[cfg(not(feature = "failpoints"))]
pub(crate) mod power;

use std::io;
use std::path::Path;
#[cfg(feature = "failpoints")]
use std::path::PathBuf;
#[cfg(feature = "failpoints")]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(feature = "failpoints")]
use std::sync::{Arc, OnceLock};

#[cfg(feature = "failpoints")]
use parking_lot::Mutex;

/// A file-system operation of a backup dir that a fault can hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsOp {
    /// `linkat` of a seqno-index file into the dir.
    Link,
    /// Creating a temp file (metadata or copy).
    CreateTemp,
    /// Writing a temp file's bytes.
    Write,
    /// fsync of a temp file.
    SyncFile,
    /// Renaming a temp file into place.
    Rename,
    /// fsync of the backup dir.
    SyncDir,
}

#[cfg(feature = "failpoints")]
struct Fault {
    dir: PathBuf,
    op: FsOp,
    errno: i32,
    /// Calls to let through before failing.
    skip: AtomicU64,
    /// Failures left; `u64::MAX` for "until the guard drops".
    left: AtomicU64,
}

#[cfg(feature = "failpoints")]
static ARMED: AtomicBool = AtomicBool::new(false);
#[cfg(feature = "failpoints")]
static FAULTS: Mutex<Vec<Arc<Fault>>> = Mutex::new(Vec::new());

#[cfg(feature = "failpoints")]
/// Removes its fault when dropped.
#[must_use = "the fault is removed when the guard drops"]
pub struct FaultGuard(Arc<Fault>);

#[cfg(feature = "failpoints")]
impl Drop for FaultGuard {
    fn drop(&mut self) {
        let mut faults = FAULTS.lock();
        faults.retain(|f| !Arc::ptr_eq(f, &self.0));
        ARMED.store(!faults.is_empty(), Ordering::Release);
    }
}

#[cfg(feature = "failpoints")]
/// Makes every `op` on the backup dir `dir` fail with `errno` until the guard
/// drops.
pub fn inject(dir: impl Into<PathBuf>, op: FsOp, errno: i32) -> FaultGuard {
    inject_nth(dir, op, errno, 0, u64::MAX)
}

#[cfg(feature = "failpoints")]
/// Lets `skip` calls of `op` on `dir` through, then fails the next `times`.
pub fn inject_nth(dir: impl Into<PathBuf>, op: FsOp, errno: i32, skip: u64, times: u64) -> FaultGuard {
    let fault = Arc::new(Fault {
        dir: dir.into(),
        op,
        errno,
        skip: AtomicU64::new(skip),
        left: AtomicU64::new(times),
    });
    let mut faults = FAULTS.lock();
    faults.push(Arc::clone(&fault));
    ARMED.store(true, Ordering::Release);
    FaultGuard(fault)
}

#[cfg(feature = "failpoints")]
/// The injected error for `op` on `dir`, if a fault says so.
pub(crate) fn check(dir: &Path, op: FsOp) -> io::Result<()> {
    if !ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    for f in FAULTS.lock().iter() {
        if f.op != op || f.dir != dir {
            continue;
        }
        let skipped = f
            .skip
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| s.checked_sub(1))
            .is_ok();
        if skipped {
            continue;
        }
        let hit = f
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| match l {
                0 => None,
                u64::MAX => Some(u64::MAX),
                l => Some(l - 1),
            })
            .is_ok();
        if hit {
            return Err(io::Error::from_raw_os_error(f.errno));
        }
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
struct CrashPlan {
    name: String,
    at: u64,
    hits: AtomicU64,
}

#[cfg(feature = "failpoints")]
fn crash_plan() -> Option<&'static CrashPlan> {
    static PLAN: OnceLock<Option<CrashPlan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec = std::env::var("CBK_CRASH_POINT").ok()?;
        let (name, at) = match spec.split_once(':') {
            Some((name, k)) => (name.to_owned(), k.parse().ok()?),
            None => (spec, 1),
        };
        Some(CrashPlan {
            name,
            at,
            hits: AtomicU64::new(0),
        })
    })
    .as_ref()
}

#[cfg(feature = "failpoints")]
/// Kills the process with `SIGKILL` here if `CBK_CRASH_POINT` names this
/// point and this is its `k`th pass.
pub(crate) fn crash_point(name: &str) {
    let Some(plan) = crash_plan() else {
        return;
    };
    if plan.name == name && plan.hits.fetch_add(1, Ordering::AcqRel) + 1 == plan.at {
        tracing::warn!(point = name, "crash point reached: SIGKILL");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

#[cfg(feature = "failpoints")]
/// The crash points, in the order a round and a metadata write pass them.
pub const CRASH_POINTS: &[&str] = &[
    "round.linking",
    "round.linked_before_dir_sync",
    "round.before_callback",
    "temp.written",
    "metadata.temp_synced",
    "metadata.renamed_before_dir_sync",
];

#[cfg(feature = "failpoints")]
/// The crash points of a prune, in order.
pub const PRUNE_CRASH_POINTS: &[&str] = &["prune.consolidated", "prune.recorded", "prune.unlinked_one"];

/// Without `failpoints`: nothing is ever injected.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn check(_dir: &Path, _op: FsOp) -> io::Result<()> {
    Ok(())
}

/// Without `failpoints`: there are no crash points.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn crash_point(_name: &str) {}

/// An fsync the component makes, by what it makes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsyncSite {
    /// The backup dir after a round's links, before the round reports.
    RoundLinks,
    /// A metadata file's temp file, before its rename.
    MetadataFile,
    /// The backup dir after a metadata file's rename, before `n` returns.
    MetadataRename,
    /// A copy's temp file (cross-device), before its rename.
    CopyFile,
    /// A round manifest's temp file, before its rename (the round's dir
    /// fsync then makes the name durable).
    RoundManifest,
    /// The parent of a directory the component created (a backup dir, or
    /// a missing parent of one), before anything in it is reported.
    NewDir,
    /// The backup dir after stale temp files were removed.
    StaleTemps,
    /// A prune record's temp file, before its rename.
    PruneRecord,
    /// The backup dir after a prune's record was renamed into place, and
    /// again after its unlinks.
    Pruned,
}

/// Whether the fsync at `site` of `path` is to be left out (a test build
/// showing that the power-loss model catches a missing fsync).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn fsync_omitted(_path: &Path, _site: FsyncSite) -> bool {
    false
}

/// Whether the fsync at `site` of `path` is to be left out: see
/// [`omit_fsync`].
#[cfg(feature = "failpoints")]
pub(crate) fn fsync_omitted(path: &Path, site: FsyncSite) -> bool {
    if !OMITTED_ARMED.load(Ordering::Relaxed) {
        return false;
    }
    OMITTED
        .lock()
        .iter()
        .any(|(root, s)| *s == site && path.starts_with(root))
}

#[cfg(feature = "failpoints")]
static OMITTED_ARMED: AtomicBool = AtomicBool::new(false);
#[cfg(feature = "failpoints")]
static OMITTED: Mutex<Vec<(PathBuf, FsyncSite)>> = Mutex::new(Vec::new());

/// Puts an omitted fsync back when dropped.
#[cfg(feature = "failpoints")]
#[must_use = "the fsync is made again when the guard drops"]
pub struct OmitGuard(PathBuf, FsyncSite);

#[cfg(feature = "failpoints")]
impl Drop for OmitGuard {
    fn drop(&mut self) {
        let mut omitted = OMITTED.lock();
        if let Some(at) = omitted.iter().position(|(r, s)| *r == self.0 && *s == self.1) {
            omitted.remove(at);
        }
        OMITTED_ARMED.store(!omitted.is_empty(), Ordering::Release);
    }
}

/// Leaves out every fsync at `site` of a path under `root` (the call
/// returns success without syncing, and the power-loss recorder does not
/// see it) until the guard drops. The power-loss tests use it to prove
/// that their checks catch a missing fsync.
#[cfg(feature = "failpoints")]
pub fn omit_fsync(root: impl Into<PathBuf>, site: FsyncSite) -> OmitGuard {
    let root = root.into();
    let mut omitted = OMITTED.lock();
    omitted.push((root.clone(), site));
    OMITTED_ARMED.store(true, Ordering::Release);
    OmitGuard(root, site)
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn a_fault_hits_its_dir_and_op_only_and_ends_with_its_guard() {
        let dir = Path::new("/faults-test/a");
        let guard = inject_nth(dir, FsOp::SyncDir, 5, 1, 2);
        assert!(check(dir, FsOp::SyncDir).is_ok(), "skipped");
        assert_eq!(check(dir, FsOp::SyncDir).unwrap_err().raw_os_error(), Some(5));
        assert!(check(Path::new("/faults-test/b"), FsOp::SyncDir).is_ok());
        assert!(check(dir, FsOp::Link).is_ok());
        assert!(check(dir, FsOp::SyncDir).is_err());
        assert!(check(dir, FsOp::SyncDir).is_ok(), "two failures only");
        drop(guard);
        let _forever = inject(dir, FsOp::Link, 28);
        for _ in 0..3 {
            assert!(check(dir, FsOp::Link).is_err());
        }
    }
}
