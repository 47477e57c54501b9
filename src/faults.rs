//! Fault injection, for this crate's tests and for storage servers that want
//! to test their own handling of backup failures.
//!
//! - [`inject`] makes one kind of file-system operation on a backup dir fail
//!   with a chosen errno, as the kernel would (`ENOSPC`, `EIO`, `EROFS`, …),
//!   until the returned guard drops. Faults are keyed by the backup dir's
//!   path, so tests on separate temp dirs do not disturb each other.
//! - Crash points (`CBK_CRASH_POINT=<name>[:<k>]` in the environment) kill
//!   the process with `SIGKILL` the `k`th time (default 1st) execution passes
//!   the named point; the crash tests run a child process with it set.
//!
//! When nothing is armed, each check is one relaxed atomic load.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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

struct Fault {
    dir: PathBuf,
    op: FsOp,
    errno: i32,
    /// Calls to let through before failing.
    skip: AtomicU64,
    /// Failures left; `u64::MAX` for "until the guard drops".
    left: AtomicU64,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static FAULTS: Mutex<Vec<Arc<Fault>>> = Mutex::new(Vec::new());

/// Removes its fault when dropped.
#[must_use = "the fault is removed when the guard drops"]
pub struct FaultGuard(Arc<Fault>);

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let mut faults = FAULTS.lock();
        faults.retain(|f| !Arc::ptr_eq(f, &self.0));
        ARMED.store(!faults.is_empty(), Ordering::Release);
    }
}

/// Makes every `op` on the backup dir `dir` fail with `errno` until the guard
/// drops.
pub fn inject(dir: impl Into<PathBuf>, op: FsOp, errno: i32) -> FaultGuard {
    inject_nth(dir, op, errno, 0, u64::MAX)
}

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

struct CrashPlan {
    name: String,
    at: u64,
    hits: AtomicU64,
}

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

/// The crash points, in the order a round and a metadata write pass them.
pub const CRASH_POINTS: &[&str] = &[
    "round.linking",
    "round.linked_before_dir_sync",
    "round.before_callback",
    "temp.written",
    "metadata.temp_synced",
    "metadata.renamed_before_dir_sync",
];

#[cfg(test)]
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
