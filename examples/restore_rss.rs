//! Restore memory against backup size: writes a history of at least
//! `--mib` MiB into a store's backup (overwriting `--keys` keys of
//! `--value-bytes` again and again, flushing and compacting, backups
//! running), then restores its latest state in a child process and prints
//! the child's peak RSS beside the backup's bytes and the live state's.
//! Restore keeps one version per key, so its peak follows the live state,
//! not the history.
//!
//! `cargo run --release --example restore_rss -- [--engine ref|lsm-tree] [--mib 1024]`
#![expect(clippy::print_stdout, reason = "a measurement prints its table")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use continuous_backup::lsm::LsmEngine;
use continuous_backup::refengine::RefEngine;
use continuous_backup::restore::{format_named, inspect, restore, BackupRoot};
use continuous_backup::{callback, Config, ContinuousBackup, Engine, KvId};

#[derive(Parser, Debug)]
struct Args {
    /// `ref` or `lsm-tree`.
    #[arg(long, default_value = "ref", value_parser = ["ref", "lsm-tree"])]
    engine: String,
    /// Backup size to reach, in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Live keys.
    #[arg(long, default_value_t = 20_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    /// Compact after every N flushes (0: never, so the restore reads the
    /// whole history: a chain of every flush from the empty start).
    #[arg(long, default_value_t = 0)]
    compact_every: u64,
    /// Work under DIR (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Internal: restore `<root>` to `--seqno` into `<out>` and report.
    #[arg(long, num_args = 2, value_names = ["ROOT", "OUT"])]
    restore_only: Option<Vec<PathBuf>>,
    #[arg(long, default_value_t = 0)]
    seqno: u64,
}

const KV: KvId = KvId(0);

/// A put on the engine under test.
type PutFn = Box<dyn Fn(&[u8], &[u8]) -> continuous_backup::Result<u64> + Send>;
/// A flush or a compaction on it.
type StepFn = Box<dyn Fn() -> continuous_backup::Result<()> + Send>;

/// This process's peak resident set, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The child: one restore, then its peak RSS and time on one line.
fn restore_only(args: &Args, root: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let backups = BackupRoot::open(root)?;
    let format = format_named(if args.engine == "ref" { "ref" } else { "lsm-tree" })?;
    let started = Instant::now();
    let done = restore(
        &backups,
        &[KV],
        args.seqno,
        out,
        format.reader.as_ref(),
        format.target.as_ref(),
        &mut |_| {},
    )?;
    let read: u64 = std::fs::read_dir(root.join(KV.to_string()))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "restored {} keys from {} files (of a {} MiB backup dir) in {:.1} s; peak RSS {} KiB",
        done[0].keys,
        done[0].files_read,
        read >> 20,
        started.elapsed().as_secs_f64(),
        peak_rss_kib()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(paths) = &args.restore_only {
        return restore_only(&args, &paths[0], &paths[1]);
    }
    let tmp;
    let work = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let (root, data) = (work.join("backup"), work.join("data"));
    let backup_dir = root.join(KV.to_string());
    let target = args.mib * 1024 * 1024;

    let (engine, put, flush, compact): (Arc<dyn Engine>, PutFn, StepFn, StepFn) = if args.engine == "ref" {
        let e = RefEngine::open(&data)?;
        e.create_store(KV)?;
        let (a, b, c) = (e.clone(), e.clone(), e.clone());
        (
            Arc::new(e),
            Box::new(move |k, v| a.put(KV, k, v)),
            Box::new(move || b.flush(KV).map(drop)),
            Box::new(move || c.compact(KV).map(drop)),
        )
    } else {
        let e = Arc::new(LsmEngine::open(&data)?);
        e.create_store(KV)?;
        let (a, b, c) = (e.clone(), e.clone(), e.clone());
        (
            e,
            Box::new(move |k, v| a.put(KV, k, v)),
            Box::new(move || b.flush(KV)),
            Box::new(move || c.major_compact(KV)),
        )
    };

    let started = Instant::now();
    let versions = actix::System::new().block_on(async {
        let backup = ContinuousBackup::start(engine.clone(), Config::default(), None)?;
        let cb = callback(|_, _, _, _| Ok(()));
        backup
            .start_backup(KV, backup_dir.clone(), cb, Some(Duration::from_millis(50)))
            .await?;
        let (value_bytes, keys, dir) = (args.value_bytes, args.keys, backup_dir.clone());
        let compact_every = args.compact_every;
        let versions = actix_rt::task::spawn_blocking(move || -> continuous_backup::Result<u64> {
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            let mut value = vec![0u8; value_bytes];
            let mut n = 0u64;
            loop {
                for chunk in value.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
                }
                put(format!("key-{:08}", n % keys).as_bytes(), &value)?;
                n += 1;
                if n.is_multiple_of(2048) {
                    flush()?;
                    if compact_every > 0 && (n / 2048).is_multiple_of(compact_every) {
                        compact()?;
                    }
                    if dir_bytes(&dir) >= target {
                        flush()?;
                        return Ok(n);
                    }
                }
            }
        })
        .await??;
        backup.stop_backup(KV, true).await?;
        backup.shutdown().await?;
        Ok::<u64, Box<dyn std::error::Error>>(versions)
    })?;
    drop(engine);
    let write_time = started.elapsed();

    let backups = BackupRoot::open(&root)?;
    let format = format_named(if args.engine == "ref" { "ref" } else { "lsm-tree" })?;
    let report = inspect(&backups, format.reader.as_ref())?.remove(0);
    let seqno = report.restorable.last().ok_or("nothing restorable")?.1;
    let out = work.join("restored");
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--engine",
            &args.engine,
            "--seqno",
            &seqno.to_string(),
            "--restore-only",
        ])
        .arg(&root)
        .arg(&out)
        .output()?;
    if !child.status.success() {
        return Err(format!("the restore failed: {}", String::from_utf8_lossy(&child.stderr)).into());
    }
    let live = args.keys.min(versions) * args.value_bytes as u64;
    println!(
        "{}: {versions} versions of {} keys written in {:.0} s; backup {} files, {} MiB; live state {} MiB",
        format.reader.format(),
        args.keys,
        write_time.as_secs_f64(),
        report.files,
        report.bytes >> 20,
        live >> 20
    );
    print!("{}", String::from_utf8_lossy(&child.stdout));
    Ok(())
}
