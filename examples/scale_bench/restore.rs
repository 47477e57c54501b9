//! Phase 6 of the scale benchmark: `restore` of every store at once and
//! `verify` of the backup root, beside a plain sequential read of the same
//! files (`cat` to `/dev/null`) in the same run.
//!
//! The backup's seqno-index files are read once by `cat` (not timed), so
//! every pass after finds them in the page cache: the warm cache is the
//! same for all three. Then `cat` again (timed), then a child process of
//! this binary restores every store at its newest exact restore point into
//! a fresh dir (timed: the library's `restore_points`, durable writes
//! included) and reports its peak RSS (`VmHWM`, the child's whole life up
//! to the end of the restore), then verifies the root (timed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use continuous_backup::restore::{inspect, restore_points, verify, BackupRoot, RefFormat, RefTarget};
use continuous_backup::KvId;

use super::Res;

/// Paths per `cat` command line: far below `ARG_MAX`.
const CAT_BATCH: usize = 2000;

/// What phase 6 measured.
pub struct Restored {
    /// Bytes of the seqno-index files `cat` read.
    pub read_bytes: u64,
    /// Seconds `cat` took (warm).
    pub read_secs: f64,
    /// Bytes the restore read (the files of each store's plan).
    pub restore_bytes: u64,
    /// Files it read.
    pub restore_files: u64,
    /// Seconds the restore took, writes and fsyncs included.
    pub restore_secs: f64,
    /// Peak RSS of the restoring process.
    pub restore_rss_bytes: u64,
    /// Stores restored.
    pub stores: u64,
    /// Seconds verify took over the root.
    pub verify_secs: f64,
    /// Problems verify found (0 expected).
    pub verify_problems: u64,
}

/// `cat` of `paths` to `/dev/null`, one command after another.
fn cat(paths: &[PathBuf]) -> Res<f64> {
    let t = Instant::now();
    for batch in paths.chunks(CAT_BATCH) {
        let status = Command::new("cat").args(batch).stdout(Stdio::null()).status()?;
        if !status.success() {
            return Err(format!("cat failed: {status}").into());
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Runs phase 6 on the backup root `root`, restoring into `out`.
pub fn measure(root: &Path, out: &Path) -> Res<Restored> {
    let backup = BackupRoot::open(root)?;
    let paths: Vec<PathBuf> = backup.stores().iter().flat_map(|s| s.files.clone()).collect();
    let mut read_bytes = 0;
    for p in &paths {
        read_bytes += std::fs::metadata(p)?.len();
    }
    cat(&paths)?;
    let read_secs = cat(&paths)?;
    rustix::fs::sync();
    let child = Command::new(std::env::current_exe()?)
        .arg("--restore-child")
        .arg(root)
        .arg(out)
        .stderr(Stdio::inherit())
        .output()?;
    if !child.status.success() {
        return Err(format!("the restore child failed: {}", child.status).into());
    }
    let report: serde_json::Value = serde_json::from_slice(&child.stdout)?;
    let field = |k: &str| -> Res<f64> {
        report[k]
            .as_f64()
            .ok_or_else(|| format!("the restore child's report lacks {k}").into())
    };
    Ok(Restored {
        read_bytes,
        read_secs,
        restore_bytes: field("bytes")? as u64,
        restore_files: field("files")? as u64,
        restore_secs: field("restore_secs")?,
        restore_rss_bytes: field("rss_hwm")? as u64,
        stores: field("stores")? as u64,
        verify_secs: field("verify_secs")?,
        verify_problems: field("problems")? as u64,
    })
}

/// `VmHWM` of `/proc/self/status`: this process's peak RSS so far.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The child: restores every store of `root` at its newest exact restore
/// point into `out`, then verifies `root`; prints one JSON object.
pub fn child(root: &Path, out: &Path) -> Res<()> {
    let backup = BackupRoot::open(root)?;
    // Not timed: which seqno each store restores to.
    let points: Vec<(KvId, u64)> = inspect(&backup, &RefFormat)?
        .iter()
        .filter_map(|r| r.restorable.last().map(|range| (r.kv, range.1)))
        .collect();
    if points.len() != backup.stores().len() {
        return Err("a store of the backup has no exact restore point".into());
    }
    let t = Instant::now();
    let summaries = restore_points(&backup, &points, out, &RefFormat, &RefTarget, &mut |_| {})?;
    let restore_secs = t.elapsed().as_secs_f64();
    let rss_hwm = peak_rss();
    let t = Instant::now();
    let problems = verify(&backup, &RefFormat);
    let verify_secs = t.elapsed().as_secs_f64();
    for p in &problems {
        eprintln!("verify: {p}");
    }
    let report = serde_json::json!({
        "stores": summaries.len(),
        "files": summaries.iter().map(|s| s.files_read).sum::<usize>(),
        "bytes": summaries.iter().map(|s| s.bytes_read).sum::<u64>(),
        "restore_secs": restore_secs,
        "rss_hwm": rss_hwm,
        "verify_secs": verify_secs,
        "problems": problems.len(),
    });
    println!("{report}");
    Ok(())
}
