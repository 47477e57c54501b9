//! Scale benchmark: N KV stores × F existing files (default 1024 × 100), every
//! figure measured beside its raw baseline in the same run, printed as one
//! table (or, with `--json`, one JSON object).
//!
//! `cargo run --release --example scale_bench -- [--stores 1024] [--files-per-store 100]
//! [--idle-seconds 3] [--latency-rounds 3] [--metadata-writes-per-store 2] [--dir DIR] [--json]`
//!
//! No figure is asserted (benchmarks are benchmarks). The exit code is
//! non-zero if a callback did not report, a file is not linked (every backup
//! dir entry is compared by inode with its source), a round failed, or a
//! metadata write failed or got a wrong `n`.
//!
//! # Set-up (not timed)
//!
//! The reference engine, in `DIR/data`, gets F files per store, each one
//! `put` + `flush` (real engine files, durable), written by a few threads.
//! Then one warm-up pass stats every file and lists every store dir, so every
//! timed pass below finds the same inodes and dentries in the page cache. A
//! `sync(2)` (not timed) precedes every timed pass, so no pass pays for the
//! dirty metadata of the one before. Outputs go to `DIR/run-<pid>/`.
//!
//! # How each figure is measured
//!
//! 1. **Initial link throughput.** Baselines first: (a) a single-threaded
//!    `std::fs::hard_link` loop over every engine file into a fresh tree, one
//!    `mkdir` per store (the plain loop); (b) the same loop plus the fsyncs a
//!    durable round needs (the parent after each `mkdir`, each store dir
//!    after its links); (b') that loop plus the round's manifest, the one
//!    more fsync the component's round makes: the same JSON record written
//!    to a temp file, fsynced and renamed into place before the dir fsync
//!    (the component's own durable round, on one thread); (c) `cp -al
//!    DIR/data <fresh dir>`, spawned and timed.
//!    Then the component, inside an actix `System`: a `StartBackup` for every
//!    store sent at once, from the first send until the last store's first
//!    callback reported its files (the callback records an `Instant`). The
//!    first round runs as soon as a store's dir is open (`first_delay` is
//!    zero for a fresh start); only the *second* round is spread over the
//!    interval (`first_offset`). So the component runs this phase with a
//!    long interval (`--link-interval-s`, default 3600 s): no idle round
//!    mixes into the link work. After it, the plain loop runs once more
//!    into another fresh tree; the ratio uses the faster of its two runs.
//! 2. **Idle round cost.** Process CPU time (`CLOCK_PROCESS_CPUTIME_ID`,
//!    every thread) over `--idle-seconds`, divided by the
//!    store-rounds handled meanwhile (`rounds + quiet_rounds` of `status()`:
//!    a tick that ends without a round counts too), with every store running
//!    at `--idle-interval-ms` and nothing new. The CPU rate of the process
//!    with no backup running (measured right after the component starts) is
//!    subtracted. Measured twice: on F-file stores (the figure) and on as
//!    many empty stores (the reference): their difference over F is the
//!    per-file cost of an idle round, zero if idle work is O(new files). The
//!    table says met when the F-file round costs at most 10 % + 1 µs more,
//!    not met above 50 % + 5 µs more, and `?` between (the run-to-run noise
//!    of thread wake-ups is that large on a small VM). Share of one core at
//!    a 1 s interval = µs per store-round × stores / 1 s (a percentage; in
//!    JSON too). Idle ticks go to the component's quiet ticker, which
//!    queues the empty calls of the stores due in a wake-up on the callback
//!    pool; `--quiet-idle` runs the component with
//!    `Config::report_empty_rounds` off (the ticker then only counts quiet
//!    rounds); `--tick-slot-ms` sets `Config::tick_slot`
//!    (0: every tick at its own due time).
//! 3. **Round latency.** For `--latency-rounds` rounds: every store gets one
//!    `put` + `flush` (a plain thread, one store after the other); the
//!    `Instant` the flush returned is compared with the `Instant` the
//!    store's callback was called with that file. **Excess = (report −
//!    flush) − interval**: a file flushed just after a tick waits one whole
//!    interval, so a positive excess is time the component added beyond
//!    that worst case; negative values are normal. Also shown: report −
//!    flush itself, and the processing time from the start of the round that
//!    linked the file (when the linker called `Engine::snapshot`, recorded by
//!    a thin engine wrapper) to the callback, split at the linker's
//!    `Engine::files_backed_up` call (after the dir fsync) into link + fsync
//!    and the hand-off to the callback thread.
//! 4. **Metadata write throughput.** Every store writes
//!    `--metadata-writes-per-store` records of `--metadata-bytes` through the
//!    `MetadataWriter` its callback was handed, all stores at once (one task
//!    per store, its writes in sequence): writes / time until the last
//!    returned. Baseline: one thread writing the same count of same-size
//!    files, one per store dir in turn: temp file, write, fsync, rename,
//!    dir fsync; run before and after the component, the faster counts.
//! 5. **Memory.** `VmRSS` of `/proc/self/status`: before any backup starts
//!    (engine loaded, component started), after every store's first round
//!    finished, and after as many empty stores ran their first round too.
//!    Per running store = RSS growth of the empty stores / their count; per
//!    tracked file = (growth of the F-file stores − stores × per store) /
//!    files. The process's own accounting: allocator slack and freed
//!    snapshot memory included. For scale, the RSS of as many parked std
//!    threads is measured last. Threads of the process with every store
//!    running and idle (6 s after the last first round, when idle callback
//!    workers have ended): `threads_idle`.
//!
//! The machine facts head the output, and each phase's line says how much
//! CPU other processes took meanwhile (`/proc/stat`), since someone else's
//! compile skews every figure.

#![expect(
    clippy::print_stdout,
    reason = "the benchmark prints its table or JSON object"
)]

use std::fs::{self, File};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use continuous_backup::manifest::{round_file_name, DeclaredFile, RoundRecord, MANIFEST_FORMAT};
use continuous_backup::refengine::RefEngine;
use continuous_backup::{
    callback, BackupCallback, Config, ContinuousBackup, Engine, IndexFile, KvId, MetadataWriter, Snapshot,
};
use parking_lot::Mutex;

mod restore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

#[derive(Parser, Debug)]
#[command(about = "Scale benchmark of continuous backup: every figure beside its raw baseline")]
struct Args {
    /// KV stores backed up at once.
    #[arg(long, default_value_t = 1024)]
    stores: u16,
    /// Engine files per store before the backups start.
    #[arg(long, default_value_t = 100)]
    files_per_store: u32,
    /// Work under DIR (created if missing, must be empty; must be on a disk
    /// file system, not tmpfs). Default: a temp dir under /tmp.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Length of each idle measurement window, in seconds.
    #[arg(long, default_value_t = 3.0)]
    idle_seconds: f64,
    /// Round interval of the idle and latency phases, in milliseconds.
    #[arg(long, default_value_t = 100)]
    idle_interval_ms: u64,
    /// Round interval during the initial link phase, in seconds (long, so
    /// that no second round mixes into the link work).
    #[arg(long, default_value_t = 3600)]
    link_interval_s: u64,
    /// Flushes per store in the latency phase (one per store per round).
    #[arg(long, default_value_t = 3)]
    latency_rounds: u32,
    /// Durable metadata writes per store in the metadata phase.
    #[arg(long, default_value_t = 2)]
    metadata_writes_per_store: u32,
    /// Size of each metadata record, in bytes.
    #[arg(long, default_value_t = 128)]
    metadata_bytes: usize,
    /// Empty stores started to measure the memory of a running store and
    /// the idle cost of an empty round. Default: as many as --stores.
    #[arg(long)]
    probe_stores: Option<u16>,
    /// Run the component with `report_empty_rounds` off: a tick that finds
    /// nothing new calls no callback (default: the component's default).
    #[arg(long)]
    quiet_idle: bool,
    /// Threads of the component's linker pool.
    #[arg(long, default_value_t = Config::default().linker_threads)]
    linker_threads: usize,
    /// The component's tick grid (`Config::tick_slot`), in ms; 0: every
    /// tick at its own due time.
    #[arg(long, default_value_t = Config::default().tick_slot.as_millis() as u64)]
    tick_slot_ms: u64,
    /// Threads that create the engine files during set-up.
    #[arg(long, default_value_t = 8)]
    setup_threads: usize,
    /// Value size of the one record in each engine file, in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Longest wait for any phase to complete, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Keep the data and the backup dirs (with --dir, or print the temp dir).
    #[arg(long)]
    keep: bool,
    /// Internal: the child of phase 6, restoring ROOT into OUT.
    #[arg(long, num_args = 2, value_names = ["ROOT", "OUT"], hide = true)]
    restore_child: Option<Vec<PathBuf>>,
}

// ---------------------------------------------------------------------------
// Process and machine accounting

/// `USER_HZ`: the unit of the CPU times in `/proc` (100 on every mainstream
/// Linux build).
const CLK_TCK: f64 = 100.0;

/// CPU times at one instant: this process's (all threads, dead ones too) and
/// the whole machine's busy time, in seconds.
#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    process: f64,
    machine_busy: f64,
}

fn cpu_now() -> Cpu {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The process's own CPU clock (nanoseconds, all threads, dead ones too);
    // `/proc/self/stat`'s 10 ms ticks only if it cannot be read.
    let clock = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let process = match clock.tv_sec as f64 + clock.tv_nsec as f64 * 1e-9 {
        t if t > 0.0 => t,
        _ => (field(14) + field(15)) / CLK_TCK,
    };
    let machine = fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = machine
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|s| s.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle, iowait.
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum();
    Cpu {
        at: Instant::now(),
        process,
        machine_busy: busy / CLK_TCK,
    }
}

/// What a phase cost: wall time, this process's CPU, and the share of the
/// machine other processes used meanwhile.
#[derive(Clone, Copy, Debug)]
struct CpuSpan {
    wall: f64,
    process: f64,
    others_share: f64,
}

fn cpu_span(a: Cpu, b: Cpu, cores: usize) -> CpuSpan {
    let wall = (b.at - a.at).as_secs_f64().max(1e-9);
    let process = b.process - a.process;
    let others = ((b.machine_busy - a.machine_busy) - process).max(0.0);
    CpuSpan {
        wall,
        process,
        others_share: others / (wall * cores as f64),
    }
}

fn rss_bytes() -> i64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The file system holding `path` (canonical): type and device.
fn mount_of(path: &Path) -> (String, String) {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let mut it = line.split_whitespace();
        let (Some(dev), Some(mnt), Some(fstype)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let mnt = mnt.replace("\\040", " ");
        // `>=`: a later mount on the same point hides the earlier one.
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|b| mnt.len() >= b.0) {
            best = Some((mnt.len(), fstype.to_owned(), dev.to_owned()));
        }
    }
    best.map_or_else(|| ("unknown".into(), "unknown".into()), |(_, t, d)| (t, d))
}

/// Raises the soft open-files limit to the hard one if it is below `need`
/// (each running store keeps its backup dir open). Says what it did.
fn raise_nofile(need: u64) -> String {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    match lim.current {
        Some(cur) if cur < need => {
            let new = Rlimit {
                current: lim.maximum.or(Some(need)),
                maximum: lim.maximum,
            };
            match setrlimit(Resource::Nofile, new) {
                Ok(()) => {
                    let raised = if new.current == Some(cur) {
                        format!("{cur} (the hard limit)")
                    } else {
                        format!("{} (raised from {cur})", show(new.current))
                    };
                    if new.current.is_some_and(|c| c < need) {
                        format!("{raised}, below the {need} needed: expect EMFILE")
                    } else {
                        raised
                    }
                }
                Err(e) => format!("{cur} (raising it failed: {e}; expect EMFILE above ~{cur} stores)"),
            }
        }
        cur => show(cur),
    }
}

// ---------------------------------------------------------------------------
// The engine as the component sees it, with probes on two calls

/// The reference engine, plus, per store while `recording` is set, the
/// `Instant` of every `snapshot` call (a round starts at the linker) and of
/// every `files_backed_up` call with files (the round's links are durable:
/// the linker calls it after the dir fsync). Every other call is passed on.
struct ProbeEngine {
    inner: RefEngine,
    recording: AtomicBool,
    snapshots: Vec<Mutex<Vec<Instant>>>,
    linked: Vec<Mutex<Vec<Instant>>>,
}

impl ProbeEngine {
    fn new(inner: RefEngine, stores: u16) -> Self {
        let per_store = || (0..stores).map(|_| Mutex::default()).collect();
        ProbeEngine {
            inner,
            recording: AtomicBool::new(false),
            snapshots: per_store(),
            linked: per_store(),
        }
    }

    fn clear(&self) {
        for s in self.snapshots.iter().chain(&self.linked) {
            s.lock().clear();
        }
    }

    /// The latest instant of store `kv` in `times` within `from..=to`.
    fn latest(times: &[Mutex<Vec<Instant>>], kv: u16, from: Instant, to: Instant) -> Option<Instant> {
        let times = times.get(usize::from(kv))?.lock();
        times.iter().filter(|t| (from..=to).contains(*t)).max().copied()
    }
}

impl Engine for ProbeEngine {
    fn snapshot(&self, kv: KvId) -> continuous_backup::Result<Box<dyn Snapshot>> {
        if self.recording.load(Ordering::Relaxed) {
            if let Some(times) = self.snapshots.get(usize::from(kv.0)) {
                times.lock().push(Instant::now());
            }
        }
        self.inner.snapshot(kv)
    }

    fn data_dir(&self) -> Option<&Path> {
        Engine::data_dir(&self.inner)
    }

    fn generation(&self, kv: KvId) -> Option<u64> {
        self.inner.generation(kv)
    }

    fn file_format(&self) -> &'static str {
        self.inner.file_format()
    }

    fn first_seqno(&self, kv: KvId) -> Option<u64> {
        self.inner.first_seqno(kv)
    }

    fn files_backed_up(&self, kv: KvId, files: &[IndexFile]) {
        if self.recording.load(Ordering::Relaxed) && !files.is_empty() {
            if let Some(times) = self.linked.get(usize::from(kv.0)) {
                times.lock().push(Instant::now());
            }
        }
        self.inner.files_backed_up(kv, files);
    }

    fn backup_stopped(&self, kv: KvId) {
        self.inner.backup_stopped(kv);
    }
}

// ---------------------------------------------------------------------------
// What one start of one store's backup reported

#[derive(Default)]
struct StartRecord {
    /// When the first callback was called, and how many files it reported.
    first: OnceLock<(Instant, usize)>,
    /// The metadata writer of this start (from its first callback).
    writer: OnceLock<MetadataWriter>,
    /// Later callbacks that reported files: when, and the names.
    reports: Mutex<Vec<(Instant, Vec<String>)>>,
    /// `reports.len()`, readable without the lock.
    report_count: AtomicUsize,
}

/// The callback of one start: records, and does nothing else (an idle round
/// costs the component's work only).
fn record_callback(rec: Arc<StartRecord>, first_reports: Arc<AtomicUsize>) -> Arc<dyn BackupCallback> {
    callback(move |_kv, _snapshot, files, writer| {
        let now = Instant::now();
        // Callbacks of one start run one after the other on its own thread.
        if rec.first.get().is_none() {
            let _ = rec.writer.set(writer);
            let _ = rec.first.set((now, files.len()));
            first_reports.fetch_add(1, Ordering::Release);
        } else if !files.is_empty() {
            let names = files.iter().map(|f| f.name.clone()).collect();
            rec.reports.lock().push((now, names));
            rec.report_count.fetch_add(1, Ordering::Release);
        }
        Ok(())
    })
}

/// The stores of one group, started together.
struct Group {
    range: Range<u16>,
    records: Vec<Arc<StartRecord>>,
    first_reports: Arc<AtomicUsize>,
    /// When the first `StartBackup` was sent, and when every one had replied
    /// (every dir open).
    sent: Instant,
    opened: Instant,
}

impl Group {
    fn len(&self) -> usize {
        self.range.len()
    }

    /// When the last store's first callback was called.
    fn last_first_report(&self) -> Option<Instant> {
        self.records
            .iter()
            .filter_map(|r| r.first.get().map(|f| f.0))
            .max()
    }
}

async fn start_group(
    backup: &ContinuousBackup,
    range: Range<u16>,
    root: &Path,
    interval: Duration,
) -> Res<Group> {
    let first_reports = Arc::new(AtomicUsize::new(0));
    let records: Vec<Arc<StartRecord>> = range.clone().map(|_| Arc::default()).collect();
    let sent = Instant::now();
    let starts: Vec<_> = range
        .clone()
        .zip(&records)
        .map(|(kv, rec)| {
            let backup = backup.clone();
            let cb = record_callback(Arc::clone(rec), Arc::clone(&first_reports));
            let dir = root.join(kv.to_string());
            actix_rt::spawn(async move { backup.start_backup(KvId(kv), dir, cb, Some(interval)).await })
        })
        .collect();
    for start in starts {
        start.await??;
    }
    Ok(Group {
        range,
        records,
        first_reports,
        sent,
        opened: Instant::now(),
    })
}

async fn stop_group(backup: &ContinuousBackup, range: Range<u16>) -> Res<()> {
    let stops: Vec<_> = range
        .map(|kv| {
            let backup = backup.clone();
            actix_rt::spawn(async move { backup.stop_backup(KvId(kv), false).await })
        })
        .collect();
    for stop in stops {
        stop.await??;
    }
    Ok(())
}

/// Polls `done` every 2 ms until it holds; an error after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Res<()> {
    let end = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= end {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Ticks handled (rounds finished plus ticks that found nothing new and
/// ended without a round) and rounds failed, summed over `range`.
async fn rounds_of(backup: &ContinuousBackup, range: &Range<u16>) -> Res<(u64, u64)> {
    let status = backup.status().await?;
    let mine = status.stores.iter().filter(|s| range.contains(&s.kv.0));
    Ok(mine.fold((0, 0), |(r, f), s| {
        (r + s.rounds + s.quiet_rounds, f + s.failed_rounds)
    }))
}

/// Waits until every store of `range` finished `n` rounds.
async fn wait_rounds(backup: &ContinuousBackup, range: &Range<u16>, n: u64, timeout: Duration) -> Res<()> {
    let end = Instant::now() + timeout;
    loop {
        let status = backup.status().await?;
        let behind = status
            .stores
            .iter()
            .filter(|s| range.contains(&s.kv.0) && s.rounds < n)
            .count();
        let seen = status.stores.iter().filter(|s| range.contains(&s.kv.0)).count();
        if behind == 0 && seen == range.len() {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(format!("timed out: {behind} stores have not finished round {n}").into());
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Res<T> {
    Ok(actix_rt::task::spawn_blocking(f).await?)
}

// ---------------------------------------------------------------------------
// Set-up and raw baselines (plain blocking code)

fn create_data(engine: &RefEngine, stores: u16, files: u32, value: &[u8], threads: usize) -> Res<()> {
    let total = usize::from(stores) * files as usize;
    let done = AtomicUsize::new(0);
    let threads = threads.clamp(1, usize::from(stores).max(1));
    std::thread::scope(|s| -> Res<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let done = &done;
                s.spawn(move || -> Res<()> {
                    for kv in (t..usize::from(stores)).step_by(threads) {
                        let kv = KvId(u16::try_from(kv)?);
                        for i in 0..files {
                            engine.put(kv, format!("key-{i}").as_bytes(), value)?;
                            engine.flush(kv)?;
                            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_multiple_of((total / 10).max(1)) {
                                eprintln!("  set-up: {n} of {total} files");
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a set-up thread panicked")??;
        }
        Ok(())
    })
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// How much of a durable round the plain link loop does besides its links.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoopDurability {
    /// No fsync (the plain loop).
    None,
    /// The fsyncs of the links: the parent after each new dir, the dir
    /// after its links.
    Links,
    /// Those, plus what the component's round adds before its dir fsync:
    /// the round's manifest (the same JSON record the component writes for
    /// a store's first round) as a temp file, written, fsynced and renamed
    /// into place. The same fsyncs as the component's round, one thread.
    Round,
}

/// Links every source file into `root/<kv>/` (created), one thread, with
/// the fsyncs (and manifest) `durable` says.
fn raw_link_loop(
    engine: &RefEngine,
    sources: &[Vec<IndexFile>],
    root: &Path,
    durable: LoopDurability,
) -> std::io::Result<Duration> {
    let t = Instant::now();
    for (kv, files) in sources.iter().enumerate() {
        let dir = root.join(kv.to_string());
        fs::create_dir(&dir)?;
        if durable != LoopDurability::None {
            sync_dir(root)?;
        }
        for f in files {
            fs::hard_link(f.path(), dir.join(f.name()))?;
        }
        if durable == LoopDurability::Round {
            let kv = KvId(kv as u16);
            let record = RoundRecord {
                format: MANIFEST_FORMAT,
                round: 1,
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                engine_format: engine.file_format().to_owned(),
                complete: true,
                first_seqno: engine.first_seqno(kv),
                full: true,
                added: files
                    .iter()
                    .map(|f| DeclaredFile {
                        name: f.name().to_owned(),
                        len: f.len(),
                        low_seqno: f.low_seqno(),
                        high_seqno: f.high_seqno(),
                        holds: f.holds(),
                    })
                    .collect(),
                removed: Vec::new(),
            };
            let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            write_renamed(&dir, &round_file_name(1), &bytes)?;
        }
        if durable != LoopDurability::None {
            sync_dir(&dir)?;
        }
    }
    Ok(t.elapsed())
}

fn cp_al(src: &Path, dst: &Path) -> Res<Duration> {
    let t = Instant::now();
    let status = Command::new("cp").arg("-al").arg(src).arg(dst).status()?;
    let took = t.elapsed();
    if !status.success() {
        return Err(format!("cp -al {} {} failed: {status}", src.display(), dst.display()).into());
    }
    Ok(took)
}

/// Writes `bytes` to a new temp file in `dir`, fsyncs it and renames it to
/// `name` (the dir's fsync is the caller's).
fn write_renamed(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(format!(".tmp.{name}"));
    let mut file = File::options().write(true).create_new(true).open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join(name))
}

/// [`raw_link_loop`] into the fresh dir `root` (created, then a `sync(2)`:
/// no pass pays for the dirty metadata of the one before), in seconds.
fn fresh_link_loop(
    engine: &RefEngine,
    sources: &[Vec<IndexFile>],
    root: &Path,
    durable: LoopDurability,
) -> std::io::Result<f64> {
    fs::create_dir(root)?;
    rustix::fs::sync();
    Ok(raw_link_loop(engine, sources, root, durable)?.as_secs_f64())
}

/// One durable write per store dir in turn, `per_store` times: temp file,
/// write, fsync, rename, dir fsync.
fn raw_metadata_loop(root: &Path, stores: usize, per_store: u32, data: &[u8]) -> std::io::Result<Duration> {
    let dirs: Vec<PathBuf> = (0..stores).map(|kv| root.join(kv.to_string())).collect();
    let t = Instant::now();
    for n in 1..=per_store {
        for dir in &dirs {
            write_renamed(dir, &format!("metadata.{n}.dat"), data)?;
            sync_dir(dir)?;
        }
    }
    Ok(t.elapsed())
}

/// Every source file must be in `root/<kv>/` as the same inode. Returns the
/// problems found (at most a few listed, then a count).
fn verify_links(sources: &[Vec<IndexFile>], root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bad = 0usize;
    for (kv, files) in sources.iter().enumerate() {
        let dir = root.join(kv.to_string());
        for f in files {
            let same = match (fs::metadata(f.path()), fs::metadata(dir.join(f.name()))) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                bad += 1;
                if problems.len() < 5 {
                    problems.push(format!("{} is not linked in {}", f.name(), dir.display()));
                }
            }
        }
    }
    if bad > problems.len() {
        problems.push(format!("… {bad} files not linked in all"));
    }
    problems
}

// ---------------------------------------------------------------------------
// Figures

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50, p99, max of `v` (sorted in place).
fn dist(v: &mut [f64]) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    [
        percentile(v, 0.50),
        percentile(v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
    ]
}

/// `1234567.8` → `1,234,568`.
fn grouped(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

struct Idle {
    store_rounds: u64,
    failed: u64,
    cpu: CpuSpan,
    /// µs of CPU per store-round, the idle process's rate subtracted.
    us_per_round: f64,
    rounds_per_store_per_s: f64,
}

async fn idle_window(backup: &ContinuousBackup, range: &Range<u16>, secs: f64, base_rate: f64) -> Res<Idle> {
    let cores = cores();
    let (r0, f0) = rounds_of(backup, range).await?;
    let c0 = cpu_now();
    actix_rt::time::sleep(Duration::from_secs_f64(secs)).await;
    let c1 = cpu_now();
    let (r1, f1) = rounds_of(backup, range).await?;
    let cpu = cpu_span(c0, c1, cores);
    let store_rounds = r1 - r0;
    let net = (cpu.process - base_rate * cpu.wall).max(0.0);
    Ok(Idle {
        store_rounds,
        failed: f1 - f0,
        cpu,
        us_per_round: net * 1e6 / store_rounds.max(1) as f64,
        rounds_per_store_per_s: store_rounds as f64 / cpu.wall / range.len().max(1) as f64,
    })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Everything measured inside the actix `System`.
struct Measured {
    link_secs: f64,
    link_opened_secs: f64,
    link_cpu: CpuSpan,
    loop_after_secs: f64,
    restart_secs: f64,
    base_rate: f64,
    idle_empty: Idle,
    idle_full: Idle,
    latency: [f64; 3],
    excess: [f64; 3],
    processing: [f64; 3],
    linking: [f64; 3],
    handoff: [f64; 3],
    latency_samples: usize,
    latency_cpu: CpuSpan,
    metadata_secs: f64,
    /// The raw metadata loop before and after the component.
    metadata_loop_secs: [f64; 2],
    metadata_writes: u64,
    metadata_cpu: CpuSpan,
    rss: [i64; 3],
    /// RSS of one parked std thread.
    rss_thread: f64,
    /// Threads of the process with every store running and idle.
    threads_idle: usize,
    /// Their names, with how many have each.
    thread_names: std::collections::BTreeMap<String, usize>,
    failures: Vec<String>,
}

struct Plan {
    args: Args,
    engine: RefEngine,
    probe: Arc<ProbeEngine>,
    sources: Arc<Vec<Vec<IndexFile>>>,
    run: PathBuf,
    probe_stores: u16,
}

async fn measure(plan: &Plan) -> Res<Measured> {
    let args = &plan.args;
    let (stores, cores) = (args.stores, cores());
    let files = usize::from(stores) * args.files_per_store as usize;
    let timeout = Duration::from_secs(args.timeout_s);
    let link_interval = Duration::from_secs(args.link_interval_s);
    let idle_interval = Duration::from_millis(args.idle_interval_ms);
    let main_range = 0..stores;
    let probe_range = stores..stores + plan.probe_stores;
    let mut failures = Vec::new();

    let config = Config {
        linker_threads: args.linker_threads,
        tick_slot: Duration::from_millis(args.tick_slot_ms),
        interval: link_interval,
        report_empty_rounds: Config::default().report_empty_rounds && !args.quiet_idle,
        ..Config::default()
    };
    let engine: Arc<dyn Engine> = plan.probe.clone();
    let backup = ContinuousBackup::start(engine, config, None)?;
    backup.status().await?;

    // The process with the component started and no backup running.
    let c0 = cpu_now();
    actix_rt::time::sleep(Duration::from_secs_f64(args.idle_seconds.clamp(0.2, 1.0))).await;
    let base = cpu_span(c0, cpu_now(), cores);
    let base_rate = base.process / base.wall;
    let rss0 = rss_bytes();

    // 1. Initial link: every store at once, until every first callback.
    eprintln!("phase: initial link of {files} files by the component");
    blocking(rustix::fs::sync).await?;
    let backup_root = plan.run.join("backup");
    let c0 = cpu_now();
    let main = start_group(&backup, main_range.clone(), &backup_root, link_interval).await?;
    wait_for("every store's first callback", timeout, || {
        main.first_reports.load(Ordering::Acquire) == main.len()
    })
    .await?;
    let link_cpu = cpu_span(c0, cpu_now(), cores);
    let link_end = main.last_first_report().ok_or("no store reported")?;
    let link_secs = (link_end - main.sent).as_secs_f64();
    let link_opened_secs = (main.opened - main.sent).as_secs_f64();
    for (kv, rec) in main_range.clone().zip(&main.records) {
        let reported = rec.first.get().map_or(0, |f| f.1);
        if reported != args.files_per_store as usize {
            failures.push(format!(
                "store {kv}: first round reported {reported} of {} files",
                args.files_per_store
            ));
        }
    }
    wait_rounds(&backup, &main_range, 1, timeout).await?;
    let rss1 = rss_bytes();
    let sources = Arc::clone(&plan.sources);
    let root = backup_root.clone();
    failures.extend(blocking(move || verify_links(&sources, &root)).await?);

    // The plain loop once more, after the component.
    eprintln!("phase: plain link loop after the component");
    let sources = Arc::clone(&plan.sources);
    let dst = plan.run.join("raw-loop-after");
    let ref_engine = plan.engine.clone();
    let loop_after_secs =
        blocking(move || fresh_link_loop(&ref_engine, &sources, &dst, LoopDurability::None)).await??;

    // 5 and 2 on empty stores: memory of a running store, cost of an empty round.
    eprintln!(
        "phase: {} empty stores (memory, empty idle rounds)",
        plan.probe_stores
    );
    let probe_root = plan.run.join("backup-empty");
    let probe = start_group(&backup, probe_range.clone(), &probe_root, idle_interval).await?;
    wait_for("every empty store's first callback", timeout, || {
        probe.first_reports.load(Ordering::Acquire) == probe.len()
    })
    .await?;
    wait_rounds(&backup, &probe_range, 1, timeout).await?;
    let rss2 = rss_bytes();
    // Idle: callback workers that had nothing to do for 5 s have ended.
    actix_rt::time::sleep(Duration::from_secs(6)).await;
    let thread_names = idle_thread_names();
    let threads_idle = thread_names.values().sum();
    // What a parked thread costs (the callbacks used to have one per store).
    // Measured last, since glibc caches freed thread stacks.
    let rss_thread = parked_thread_rss(usize::from(plan.probe_stores))?;
    actix_rt::time::sleep(idle_interval * 2).await;
    eprintln!("phase: idle window on empty stores (pid {})", std::process::id());
    let idle_empty = idle_window(&backup, &probe_range, args.idle_seconds, base_rate).await?;
    stop_group(&backup, probe_range.clone()).await?;

    // Restart the F-file stores at the idle interval; the first round finds
    // every file already there.
    eprintln!("phase: restart of {stores} stores at the idle interval");
    stop_group(&backup, main_range.clone()).await?;
    blocking(rustix::fs::sync).await?;
    let main = start_group(&backup, main_range.clone(), &backup_root, idle_interval).await?;
    wait_for("every restarted store's first callback", timeout, || {
        main.first_reports.load(Ordering::Acquire) == main.len()
    })
    .await?;
    let restart_secs = (main.last_first_report().ok_or("no store reported")? - main.sent).as_secs_f64();
    for (kv, rec) in main_range.clone().zip(&main.records) {
        let reported = rec.first.get().map_or(0, |f| f.1);
        if reported != args.files_per_store as usize {
            failures.push(format!("store {kv}: restart reported {reported} files"));
        }
    }
    actix_rt::time::sleep(idle_interval * 2).await;
    eprintln!(
        "phase: idle window on {stores} stores (pid {})",
        std::process::id()
    );
    let idle_full = idle_window(&backup, &main_range, args.idle_seconds, base_rate).await?;

    // 3. Latency: one flush per store per round.
    eprintln!(
        "phase: latency, {} rounds of {stores} flushes",
        args.latency_rounds
    );
    let (mut latency, mut processing, mut linking, mut handoff) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let c0 = cpu_now();
    for round in 0..args.latency_rounds {
        plan.probe.clear();
        let round_start = Instant::now();
        plan.probe.recording.store(true, Ordering::Relaxed);
        let engine = plan.engine.clone();
        let value = vec![b'l'; args.value_bytes];
        let flushed = blocking(move || -> Res<Vec<(Instant, String)>> {
            let mut flushed = Vec::new();
            for kv in 0..stores {
                engine.put(KvId(kv), format!("latency-{round}").as_bytes(), &value)?;
                let file = engine.flush(KvId(kv))?.ok_or("a flush wrote no file")?;
                flushed.push((Instant::now(), file.name().to_owned()));
            }
            Ok(flushed)
        })
        .await??;
        let want = round as usize + 1;
        wait_for("every store to report its flushed file", timeout, || {
            main.records
                .iter()
                .all(|r| r.report_count.load(Ordering::Acquire) >= want)
        })
        .await?;
        plan.probe.recording.store(false, Ordering::Relaxed);
        for ((kv, rec), (flushed_at, name)) in main_range.clone().zip(&main.records).zip(&flushed) {
            let reports = rec.reports.lock();
            let Some((at, _)) = reports.iter().find(|(_, names)| names.contains(name)) else {
                failures.push(format!("store {kv}: {name} was never reported"));
                continue;
            };
            latency.push(at.saturating_duration_since(*flushed_at).as_secs_f64() * 1e3);
            // The round that reported it: the last one started before.
            let since = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
            let probe = &plan.probe;
            if let Some(started) = ProbeEngine::latest(&probe.snapshots, kv, round_start, *at) {
                processing.push(since(started, *at));
                if let Some(linked) = ProbeEngine::latest(&probe.linked, kv, started, *at) {
                    linking.push(since(started, linked));
                    handoff.push(since(linked, *at));
                }
            }
        }
    }
    let latency_cpu = cpu_span(c0, cpu_now(), cores);
    let interval_ms = idle_interval.as_secs_f64() * 1e3;
    let mut excess: Vec<f64> = latency.iter().map(|l| l - interval_ms).collect();
    let latency_samples = latency.len();

    // 4. Metadata: the raw loop, then every store's writer at once.
    eprintln!("phase: metadata writes");
    let per_store = args.metadata_writes_per_store;
    let data = metadata_record(args.metadata_bytes);
    let raw_loop = |name: &str| {
        let raw_root = plan.run.join(name);
        let raw_data = data.clone();
        let n_stores = usize::from(stores);
        blocking(move || -> std::io::Result<f64> {
            fs::create_dir(&raw_root)?;
            for kv in 0..n_stores {
                fs::create_dir(raw_root.join(kv.to_string()))?;
            }
            rustix::fs::sync();
            Ok(raw_metadata_loop(&raw_root, n_stores, per_store, raw_data.as_bytes())?.as_secs_f64())
        })
    };
    let metadata_loop_before = raw_loop("raw-metadata-before").await??;
    blocking(rustix::fs::sync).await?;
    let c0 = cpu_now();
    let t = Instant::now();
    let writes: Vec<_> = main
        .records
        .iter()
        .map(|rec| {
            let writer = rec.writer.get().cloned();
            let data = data.clone();
            actix_rt::spawn(async move {
                let writer = writer.ok_or("no metadata writer")?;
                let mut ns = Vec::new();
                for _ in 0..per_store {
                    ns.push(writer.write_async(&data).await?);
                }
                Ok::<_, BoxError>(ns)
            })
        })
        .collect();
    let mut metadata_writes = 0u64;
    for (kv, w) in main_range.clone().zip(writes) {
        match w.await? {
            Ok(ns) => {
                metadata_writes += ns.len() as u64;
                let expected: Vec<u64> = (1..=u64::from(per_store)).collect();
                if ns != expected {
                    failures.push(format!("store {kv}: metadata writes got n = {ns:?}"));
                }
            }
            Err(e) => failures.push(format!("store {kv}: metadata write failed: {e}")),
        }
    }
    let metadata_secs = t.elapsed().as_secs_f64();
    let metadata_cpu = cpu_span(c0, cpu_now(), cores);
    let metadata_loop_after = raw_loop("raw-metadata-after").await??;

    let (_, failed) = rounds_of(&backup, &(0..u16::MAX)).await?;
    if failed > 0 {
        failures.push(format!("{failed} rounds failed (see the log)"));
    }
    backup.shutdown().await?;

    Ok(Measured {
        link_secs,
        link_opened_secs,
        link_cpu,
        loop_after_secs,
        restart_secs,
        base_rate,
        idle_empty,
        idle_full,
        latency: dist(&mut latency),
        excess: dist(&mut excess),
        processing: dist(&mut processing),
        linking: dist(&mut linking),
        handoff: dist(&mut handoff),
        latency_samples,
        latency_cpu,
        metadata_secs,
        metadata_loop_secs: [metadata_loop_before, metadata_loop_after],
        metadata_writes,
        metadata_cpu,
        rss: [rss0, rss1, rss2],
        rss_thread,
        threads_idle,
        thread_names,
        failures,
    })
}

/// This process's threads by name (`/proc/self/task/*/comm`).
fn idle_thread_names() -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::new();
    for task in fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let name = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *names.entry(name.trim().to_string()).or_insert(0) += 1;
    }
    names
}

/// RSS growth per thread of `n` std threads started and parked.
fn parked_thread_rss(n: usize) -> Res<f64> {
    let before = rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (stop, ready_tx) = (Arc::clone(&stop), ready_tx.clone());
            std::thread::spawn(move || {
                let _ = ready_tx.send(());
                while !stop.load(Ordering::Acquire) {
                    std::thread::park();
                }
            })
        })
        .collect();
    for _ in 0..n {
        ready.recv()?;
    }
    let grown = rss_bytes() - before;
    stop.store(true, Ordering::Release);
    for t in threads {
        t.thread().unpark();
        t.join().map_err(|_| "a parked thread panicked")?;
    }
    Ok(grown as f64 / n.max(1) as f64)
}

/// A metadata record of exactly `len` bytes (at least 2), JSON-looking.
fn metadata_record(len: usize) -> String {
    let head = r#"{"round":1,"files":100,"low_seqno":1,"high_seqno":100,"pad":""#;
    let mut s: String = head.chars().take(len.saturating_sub(2)).collect();
    while s.len() + 2 < len {
        s.push('x');
    }
    s.push_str("\"}");
    s
}

// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("scale_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res<bool> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some([root, out]) = args.restore_child.as_deref() {
        restore::child(root, out)?;
        return Ok(true);
    }
    if args.stores == 0 || args.files_per_store == 0 {
        return Err("--stores and --files-per-store must be at least 1".into());
    }
    let probe_stores = args
        .probe_stores
        .unwrap_or(args.stores)
        .clamp(1, u16::MAX - args.stores);
    let nofile = raise_nofile(u64::from(args.stores) + u64::from(probe_stores) + 512);
    if nofile.contains("EMFILE") {
        // Each running store keeps its backup dir open.
        eprintln!("warning: open-files limit {nofile}");
    }

    // The working dir: given (must be empty) or a temp dir under /tmp.
    let mut tmp = None;
    let root = match &args.dir {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            if fs::read_dir(dir)?.next().is_some() {
                return Err(format!("{} is not empty", dir.display()).into());
            }
            fs::canonicalize(dir)?
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("scale_bench.")
                .tempdir_in("/tmp")?;
            let path = fs::canonicalize(dir.path())?;
            tmp = Some(dir);
            path
        }
    };
    let (fs_type, device) = mount_of(&root);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    let cores = cores();
    if matches!(fs_type.as_str(), "tmpfs" | "ramfs") {
        eprintln!(
            "warning: {} is on {fs_type}, not a disk: give --dir on a disk",
            root.display()
        );
    }

    // Set-up, not timed.
    let (stores, per_store) = (args.stores, args.files_per_store);
    let files = usize::from(stores) * per_store as usize;
    eprintln!(
        "set-up: {files} files in {stores} stores under {}",
        root.display()
    );
    let engine = RefEngine::open(root.join("data"))?;
    let t = Instant::now();
    create_data(
        &engine,
        stores,
        per_store,
        &vec![b'v'; args.value_bytes],
        args.setup_threads,
    )?;
    for kv in stores..stores + probe_stores {
        engine.create_store(KvId(kv))?;
    }
    let setup_secs = t.elapsed().as_secs_f64();
    let sources: Vec<Vec<IndexFile>> = (0..stores)
        .map(|kv| engine.files(KvId(kv)))
        .collect::<continuous_backup::Result<_>>()?;
    if sources.iter().any(|s| s.len() != per_store as usize) {
        return Err("the engine does not hold the expected files".into());
    }
    let run_dir = root.join(format!("run-{}", std::process::id()));
    fs::create_dir(&run_dir)?;
    fs::create_dir(run_dir.join("backup"))?;
    fs::create_dir(run_dir.join("backup-empty"))?;

    // Warm-up: every inode and dentry the timed passes touch.
    let t = Instant::now();
    for kv_files in &sources {
        if let Some(parent) = kv_files.first().and_then(|f| f.path().parent()) {
            let _ = fs::read_dir(parent)?.count();
        }
        for f in kv_files {
            fs::metadata(f.path())?;
        }
    }
    let warmup_secs = t.elapsed().as_secs_f64();

    // 1. Baselines before the component.
    eprintln!("phase: raw baselines");
    let run_loop = |name: &str, durable| fresh_link_loop(&engine, &sources, &run_dir.join(name), durable);
    let loop_before = run_loop("raw-loop-before", LoopDurability::None)?;
    let loop_fsync = run_loop("raw-loop-fsync", LoopDurability::Links)?;
    let loop_round = run_loop("raw-loop-round", LoopDurability::Round)?;
    rustix::fs::sync();
    let cp_secs = cp_al(engine.data_dir(), &run_dir.join("cp-al"))?.as_secs_f64();
    rustix::fs::sync();

    let probe = Arc::new(ProbeEngine::new(engine.clone(), stores));
    let plan = Plan {
        args,
        engine,
        probe,
        sources: Arc::new(sources),
        run: run_dir.clone(),
        probe_stores,
    };
    let m = actix::System::new().block_on(measure(&plan))?;
    let args = &plan.args;
    eprintln!("phase: restore of every store, verify");
    let rs = restore::measure(&run_dir.join("backup"), &run_dir.join("restored"))?;

    // Figures.
    let link_rate = files as f64 / m.link_secs;
    let loop_secs = loop_before.min(m.loop_after_secs);
    let loop_rate = files as f64 / loop_secs;
    let cp_rate = files as f64 / cp_secs;
    let fsync_rate = files as f64 / loop_fsync;
    let round_rate = files as f64 / loop_round;
    let interval_ms = args.idle_interval_ms as f64;
    let idle_us = m.idle_full.us_per_round;
    let idle_empty_us = m.idle_empty.us_per_round;
    let per_file_ns = (idle_us - idle_empty_us) * 1e3 / f64::from(per_store);
    let share_1s = idle_us * f64::from(stores) / 1e6 * 100.0;
    let meta_rate = m.metadata_writes as f64 / m.metadata_secs;
    let meta_loop_rate = m.metadata_writes as f64 / m.metadata_loop_secs[0].min(m.metadata_loop_secs[1]);
    let [rss0, rss1, rss2] = m.rss;
    let per_store_rss = (rss2 - rss1) as f64 / f64::from(probe_stores);
    let per_file_rss = ((rss1 - rss0) as f64 - f64::from(stores) * per_store_rss) / files as f64;
    let mut failures = m.failures.clone();
    failures.extend(
        [("empty", &m.idle_empty), ("F-file", &m.idle_full)]
            .iter()
            .filter(|(_, i)| i.failed > 0)
            .map(|(what, i)| format!("{} rounds failed in the {what} idle window", i.failed)),
    );
    if rs.verify_problems > 0 {
        failures.push(format!(
            "verify found {} problems (see the log)",
            rs.verify_problems
        ));
    }
    if rs.stores != u64::from(stores) {
        failures.push(format!("restore restored {} of {stores} stores", rs.stores));
    }
    let mb = |bytes: u64, secs: f64| bytes as f64 / secs / 1e6;
    let read_mb = mb(rs.read_bytes, rs.read_secs);
    let restore_mb = mb(rs.restore_bytes, rs.restore_secs);
    let verify_mb = mb(rs.read_bytes, rs.verify_secs);
    let ok = failures.is_empty();

    if args.json {
        let mut json = serde_json::json!({
            "stores": stores,
            "files": files,
            "link_files_per_s": link_rate,
            "link_ratio_vs_loop": link_rate / loop_rate,
            "link_ratio_vs_cp": link_rate / cp_rate,
            "idle_us_per_store_round": idle_us,
            "idle_core_share_at_1s": share_1s,
            "latency_excess_ms_p50": m.excess[0],
            "latency_excess_ms_p99": m.excess[1],
            "latency_excess_ms_max": m.excess[2],
            "metadata_writes_per_s": meta_rate,
            "metadata_ratio_vs_loop": meta_rate / meta_loop_rate,
            "rss_bytes_per_store": per_store_rss,
            "rss_bytes_per_file": per_file_rss,
        });
        // Extras (a second object: one `json!` of them all is too deep for the macro).
        let extras = serde_json::json!({
            "idle_core_share_unit": "percent of one core",
            "link_loop_files_per_s": loop_rate,
            "link_loop_before_files_per_s": files as f64 / loop_before,
            "link_loop_after_files_per_s": files as f64 / m.loop_after_secs,
            "link_loop_fsync_files_per_s": fsync_rate,
            "link_cp_files_per_s": cp_rate,
            "link_ratio_vs_loop_fsync": link_rate / fsync_rate,
            "link_loop_round_files_per_s": round_rate,
            "link_ratio_vs_loop_round": link_rate / round_rate,
            "link_all_dirs_open_s": m.link_opened_secs,
            "restart_files_per_s": files as f64 / m.restart_secs,
            "idle_us_per_store_round_empty": idle_empty_us,
            "idle_ns_per_file_per_round": per_file_ns,
            "idle_rounds_per_store_per_s": m.idle_full.rounds_per_store_per_s,
            "idle_interval_ms": interval_ms,
            "report_empty_rounds": Config::default().report_empty_rounds && !args.quiet_idle,
            "tick_slot_ms": args.tick_slot_ms,
            "latency_ms_p50": m.latency[0],
            "latency_ms_p99": m.latency[1],
            "latency_ms_max": m.latency[2],
            "latency_processing_ms_p50": m.processing[0],
            "latency_processing_ms_p99": m.processing[1],
            "latency_processing_ms_max": m.processing[2],
            "latency_link_fsync_ms_p50": m.linking[0],
            "latency_link_fsync_ms_p99": m.linking[1],
            "latency_link_fsync_ms_max": m.linking[2],
            "latency_handoff_ms_p50": m.handoff[0],
            "latency_handoff_ms_p99": m.handoff[1],
            "latency_handoff_ms_max": m.handoff[2],
            "metadata_loop_writes_per_s": meta_loop_rate,
            "rss_bytes_per_parked_thread": m.rss_thread,
            "threads_idle": m.threads_idle,
            "threads_idle_by_name": m.thread_names,
            "metadata_loop_before_writes_per_s": m.metadata_writes as f64 / m.metadata_loop_secs[0],
            "metadata_loop_after_writes_per_s": m.metadata_writes as f64 / m.metadata_loop_secs[1],
            "cores": cores,
            "fs": fs_type,
            "kernel": kernel.trim(),
            "ok": ok,
            "failures": failures,
        });
        let restored = serde_json::json!({
            "restore_mb_per_s": restore_mb,
            "restore_ratio_vs_read": restore_mb / read_mb,
            "restore_rss_bytes": rs.restore_rss_bytes,
            "restore_files": rs.restore_files,
            "restore_bytes": rs.restore_bytes,
            "restore_secs": rs.restore_secs,
            "verify_mb_per_s": verify_mb,
            "verify_ratio_vs_read": verify_mb / read_mb,
            "verify_secs": rs.verify_secs,
            "read_mb_per_s": read_mb,
            "read_bytes": rs.read_bytes,
        });
        for more in [extras, restored] {
            if let (Some(json), serde_json::Value::Object(more)) = (json.as_object_mut(), more) {
                json.extend(more);
            }
        }
        println!("{json}");
    } else {
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "scale_bench: {stores} stores × {per_store} files = {} files; {} empty stores for reference",
            grouped(files as f64),
            probe_stores
        );
        println!(
            "machine: {cores} cores, kernel {}, {fs_type} ({device}) at {}, load average {} at start, open files {nofile}",
            kernel.trim(),
            root.display(),
            loadavg.join(" "),
        );
        println!(
            "component: {} linker threads; ticks on a {} ms grid; interval {} s while linking, {} ms idle \
             and latency; empty rounds {}; log level warn",
            args.linker_threads,
            args.tick_slot_ms,
            args.link_interval_s,
            args.idle_interval_ms,
            if Config::default().report_empty_rounds && !args.quiet_idle {
                "reported (callback called)"
            } else {
                "quiet (no callback)"
            },
        );
        println!(
            "set-up (not timed): {} files created in {setup_secs:.1} s; warm-up stat pass {:.3} s",
            grouped(files as f64),
            warmup_secs
        );
        println!();
        println!(
            "{:<40} {:>22} {:>36} {:>7} {:>14} {:>4}",
            "figure", "component", "baseline", "ratio", "goal", "met"
        );
        let row = |fig: &str, comp: String, base: String, ratio: String, goal: &str, met: &str| {
            println!("{fig:<40} {comp:>22} {base:>36} {ratio:>7} {goal:>14} {met:>4}");
        };
        let r = |x: f64| format!("{x:.2}×");
        row(
            "1 initial link, files/s",
            grouped(link_rate),
            format!("hard_link loop {}", grouped(loop_rate)),
            r(link_rate / loop_rate),
            "≥ 1.0×",
            yes(link_rate >= loop_rate),
        );
        row(
            "  vs cp -al",
            grouped(link_rate),
            format!("cp -al {}", grouped(cp_rate)),
            r(link_rate / cp_rate),
            "",
            "",
        );
        row(
            "  vs loop + the fsyncs of a round (a)",
            grouped(link_rate),
            format!("loop + fsyncs {}", grouped(fsync_rate)),
            r(link_rate / fsync_rate),
            "",
            "",
        );
        row(
            "  vs the loop of a whole round (a)",
            grouped(link_rate),
            format!("loop + round {}", grouped(round_rate)),
            r(link_rate / round_rate),
            "",
            "",
        );
        row(
            "2 idle round, CPU µs per store-round (b)",
            format!("{idle_us:.1}"),
            format!("empty stores {idle_empty_us:.1}"),
            r(idle_us / idle_empty_us),
            "O(new files)",
            // Under 0.2 s of CPU in a window, the comparison is noise.
            if m.idle_full.cpu.process < 0.2 || m.idle_empty.cpu.process < 0.2 {
                "?"
            } else if idle_us <= idle_empty_us * 1.1 + 1.0 {
                "yes"
            } else if idle_us > idle_empty_us * 1.5 + 5.0 {
                "no"
            } else {
                "?"
            },
        );
        row(
            "  share of one core at 1 s interval",
            format!("{share_1s:.2} %"),
            format!("idle process {:.3} %", m.base_rate * 100.0),
            String::new(),
            "< 0.5 %",
            yes(share_1s < 0.5),
        );
        row(
            "3 latency excess p50/p99/max, ms (c)",
            format!("{:.1} / {:.1} / {:.1}", m.excess[0], m.excess[1], m.excess[2]),
            format!("interval {interval_ms:.0} ms"),
            String::new(),
            "p99 < 5 ms",
            yes(m.excess[1] < 5.0),
        );
        row(
            "4 metadata, durable writes/s (d)",
            grouped(meta_rate),
            format!("write+fsync+rename+fsync {}", grouped(meta_loop_rate)),
            r(meta_rate / meta_loop_rate),
            "≥ 1.0×",
            yes(meta_rate >= meta_loop_rate),
        );
        row(
            "5 RSS bytes per running store (e)",
            grouped(per_store_rss),
            String::new(),
            String::new(),
            "",
            "",
        );
        row(
            "  RSS bytes per tracked file",
            grouped(per_file_rss),
            String::new(),
            String::new(),
            "",
            "",
        );
        row(
            "6 restore of every store, MB/s read (f)",
            format!("{restore_mb:.1}"),
            format!("cat {read_mb:.1}"),
            r(restore_mb / read_mb),
            "≥ 0.5×",
            yes(restore_mb >= 0.5 * read_mb),
        );
        row(
            "  verify, MB/s read",
            format!("{verify_mb:.1}"),
            format!("cat {read_mb:.1}"),
            r(verify_mb / read_mb),
            "≥ 0.5×",
            yes(verify_mb >= 0.5 * read_mb),
        );
        row(
            "  restore peak RSS, bytes",
            grouped(rs.restore_rss_bytes as f64),
            String::new(),
            String::new(),
            "",
            "",
        );
        println!();
        println!(
            "(a) loop runs: {} files/s before the component, {} after (the faster is the baseline); \
             all {stores} dirs open {:.3} s after the first start was sent, last first callback at {:.3} s; \
             a restart over the existing backup (every file already there) reports {} files/s; \
             the loop of a whole round is the loop with fsyncs plus the round's manifest \
             (temp file, write, fsync, rename) before each dir fsync",
            grouped(files as f64 / loop_before),
            grouped(files as f64 / m.loop_after_secs),
            m.link_opened_secs,
            m.link_secs,
            grouped(files as f64 / m.restart_secs),
        );
        println!(
            "(b) {} store-rounds in {:.2} s ({:.2} rounds per store per s of {:.0} nominal), \
             {:.0} % of one core at this interval; \
             {:.1} ns per tracked file per round ({} empty-store rounds at {:.1} µs); \
             the idle process's {:.3} % of a core is subtracted",
            grouped(m.idle_full.store_rounds as f64),
            m.idle_full.cpu.wall,
            m.idle_full.rounds_per_store_per_s,
            1000.0 / interval_ms,
            m.idle_full.cpu.process / m.idle_full.cpu.wall * 100.0,
            per_file_ns,
            grouped(m.idle_empty.store_rounds as f64),
            idle_empty_us,
            m.base_rate * 100.0,
        );
        println!(
            "(c) excess = (callback reporting the file − flush returned) − interval, over {} files; \
             p50/p99/max of: report − flush {:.1} / {:.1} / {:.1} ms; round start at the linker → \
             callback {:.2} / {:.2} / {:.2} ms, of which snapshot + link + dir fsync {:.2} / {:.2} / {:.2} \
             ms and hand-off to the callback {:.2} / {:.2} / {:.2} ms",
            m.latency_samples,
            m.latency[0],
            m.latency[1],
            m.latency[2],
            m.processing[0],
            m.processing[1],
            m.processing[2],
            m.linking[0],
            m.linking[1],
            m.linking[2],
            m.handoff[0],
            m.handoff[1],
            m.handoff[2],
        );
        println!(
            "(d) {} writes of {} bytes, {} per store, all stores at once; the baseline makes the same \
             writes on one thread, one store dir after the other: {} writes/s before the component, {} \
             after (the faster is the baseline)",
            grouped(m.metadata_writes as f64),
            args.metadata_bytes,
            args.metadata_writes_per_store,
            grouped(m.metadata_writes as f64 / m.metadata_loop_secs[0]),
            grouped(m.metadata_writes as f64 / m.metadata_loop_secs[1]),
        );
        println!(
            "(e) VmRSS {} MiB before any backup, {} MiB with {stores} stores running, {} MiB with {} empty \
             stores more; for scale, a parked std thread costs {} bytes; {} threads in the process with \
             every store idle",
            rss0 >> 20,
            rss1 >> 20,
            rss2 >> 20,
            probe_stores,
            grouped(m.rss_thread),
            m.threads_idle,
        );
        println!(
            "(f) {} stores, each at its newest exact restore point, into a fresh dir (durable), {} files \
             of {} bytes read in {:.2} s; verify of the root in {:.2} s; cat of the same {} bytes \
             (warm, as both) in {:.2} s; peak RSS is the restoring child's whole life",
            rs.stores,
            grouped(rs.restore_files as f64),
            grouped(rs.restore_bytes as f64),
            rs.restore_secs,
            rs.verify_secs,
            grouped(rs.read_bytes as f64),
            rs.read_secs,
        );
        println!(
            "other processes took, of the machine: {:.0} % during the link phase, {:.0} % / {:.0} % during \
             the idle windows (empty / F-file), {:.0} % during latency, {:.0} % during metadata",
            m.link_cpu.others_share * 100.0,
            m.idle_empty.cpu.others_share * 100.0,
            m.idle_full.cpu.others_share * 100.0,
            m.latency_cpu.others_share * 100.0,
            m.metadata_cpu.others_share * 100.0,
        );
        println!(
            "this process used {:.0} % of one core while linking ({:.2} s CPU in {:.2} s)",
            m.link_cpu.process / m.link_cpu.wall * 100.0,
            m.link_cpu.process,
            m.link_cpu.wall,
        );
        if ok {
            println!("check: every file linked (same inode), every callback reported, no round failed");
        }
    }
    for f in &failures {
        eprintln!("FAILED: {f}");
    }

    // Clean up what this run made (not timed).
    if args.keep {
        eprintln!("kept: {}", root.display());
        if let Some(tmp) = tmp {
            let _ = tmp.keep();
        }
    } else {
        eprintln!("cleaning up {}", root.display());
        let _ = fs::remove_dir_all(&run_dir);
        let _ = fs::remove_dir_all(root.join("data"));
    }
    Ok(ok)
}
