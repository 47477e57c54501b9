//! Link throughput and metadata writes, each beside its raw baseline in the
//! same run.
//!
//! - `first_round/*`: back up a store of `FILES` seqno-index files into a
//!   fresh dir. `raw_link_loop` is `mkdir` + `std::fs::hard_link` per file;
//!   `raw_link_loop_fsync` adds the one dir fsync a durable round needs;
//!   `component` is start → first callback → stop through the actors.
//! - `idle_round/*`: a round of a running store of `FILES` files with
//!   nothing new, in CPU time of the whole process (every thread: actor,
//!   linker, callback) per round. `raw_readdir` is what a poller that lists
//!   the store's dir pays per round; `raw_stat` is one `statx` of the dir,
//!   the least any change check costs; `component` runs rounds every 1 ms
//!   with an empty callback; `component_quiet` the same with
//!   `report_empty_rounds` off (no callback when nothing is new).
//! - `metadata_write/*`: one durable record. `raw` is temp file, write,
//!   fsync, rename, dir fsync; `component` is `MetadataWriter::write`.
//!
//! `cargo bench --bench link_throughput`

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use continuous_backup::refengine::RefEngine;
use continuous_backup::{callback, Config, ContinuousBackup, IndexFile, KvId, MetadataWriter};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput};

const FILES: usize = 200;
const KV: KvId = KvId(1);

/// The component on an actix `System` of its own thread, as a storage server
/// runs it; the bench thread reaches it through the arbiter's handle.
struct Component {
    arbiter: actix_rt::ArbiterHandle,
    backup: ContinuousBackup,
}

impl Component {
    fn start(engine: RefEngine) -> Self {
        Self::start_with(engine, Config::default())
    }

    fn start_with(engine: RefEngine, config: Config) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let sys = actix::System::new();
            sys.block_on(async {
                let backup = ContinuousBackup::start(Arc::new(engine), config, None).unwrap();
                tx.send((actix::System::current().arbiter().clone(), backup))
                    .unwrap();
            });
            sys.run().unwrap();
        });
        let (arbiter, backup) = rx.recv().unwrap();
        Component { arbiter, backup }
    }

    /// Runs `f(backup)` on the system's thread and waits for its result.
    fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(ContinuousBackup) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let fut = f(self.backup.clone());
        assert!(self.arbiter.spawn(async move {
            tx.send(fut.await).ok();
        }));
        rx.recv().unwrap()
    }
}

/// Starts a backup of KV into `dir` and returns the first round's file count
/// and metadata writer.
async fn first_round_of(backup: ContinuousBackup, dir: PathBuf) -> (usize, MetadataWriter) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = parking_lot::Mutex::new(Some(tx));
    let cb = callback(move |_, _, files, w| {
        if let Some(tx) = tx.lock().take() {
            tx.send((files.len(), w)).ok();
        }
        Ok(())
    });
    backup
        .start_backup(KV, dir, cb, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    rx.await.unwrap()
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

struct Setup {
    tmp: tempfile::TempDir,
    engine: RefEngine,
    files: Vec<IndexFile>,
    next: AtomicU64,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let engine = RefEngine::open(tmp.path().join("data")).unwrap();
        let files = (0..FILES)
            .map(|i| {
                engine.put(KV, format!("k{i}").as_bytes(), &[7u8; 512]).unwrap();
                engine.flush(KV).unwrap().unwrap()
            })
            .collect();
        Setup {
            tmp,
            engine,
            files,
            next: AtomicU64::new(0),
        }
    }

    fn fresh_dir(&self) -> PathBuf {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.tmp.path().join(format!("backup-{i}"))
    }
}

fn first_round(c: &mut Criterion) {
    let setup = Setup::new();
    let component = Component::start(setup.engine.clone());
    let mut g = c.benchmark_group("first_round");
    g.throughput(Throughput::Elements(FILES as u64));
    g.sample_size(20);
    g.bench_function("raw_link_loop", |b| {
        b.iter_batched(
            || setup.fresh_dir(),
            |dir| {
                std::fs::create_dir(&dir).unwrap();
                for f in &setup.files {
                    std::fs::hard_link(f.path(), dir.join(f.name())).unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("raw_link_loop_fsync", |b| {
        b.iter_batched(
            || setup.fresh_dir(),
            |dir| {
                std::fs::create_dir(&dir).unwrap();
                sync_dir(dir.parent().unwrap());
                for f in &setup.files {
                    std::fs::hard_link(f.path(), dir.join(f.name())).unwrap();
                }
                sync_dir(&dir);
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("component", |b| {
        b.iter_batched(
            || setup.fresh_dir(),
            |dir| {
                let n = component.run(move |backup| async move {
                    let (n, _) = first_round_of(backup.clone(), dir).await;
                    backup.stop_backup(KV, false).await.unwrap();
                    n
                });
                assert_eq!(n, FILES);
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// CPU time this process has used, all threads.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Rounds of KV so far, quiet ones included, from the status counters.
fn rounds_of(component: &Component) -> u64 {
    component.run(|backup| async move {
        let status = backup.status().await.unwrap();
        let s = status.store(KV).unwrap();
        s.rounds + s.quiet_rounds
    })
}

/// Measures the CPU time of the whole process per round of a store that
/// runs rounds every millisecond with nothing new, under `config`.
fn bench_idle_component(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, setup: &Setup, config: Config) {
    let component = Component::start_with(setup.engine.clone(), config);
    let dir = setup.fresh_dir();
    component.run(move |backup| async move {
        let cb = callback(move |_, _, files, _| {
            assert!(files.len() == FILES || files.is_empty());
            Ok(())
        });
        backup
            .start_backup(KV, dir, cb, Some(Duration::from_millis(1)))
            .await
            .unwrap();
    });
    while rounds_of(&component) < 3 {
        std::thread::sleep(Duration::from_millis(5));
    }
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            // Rounds come every millisecond whatever the bench does; this
            // thread sleeps while about `iters` of them pass, then scales
            // the process's CPU time to `iters` rounds.
            let (rounds, cpu) = (rounds_of(&component), process_cpu());
            std::thread::sleep(Duration::from_millis(iters.max(20)));
            let (cpu, rounds) = (process_cpu() - cpu, rounds_of(&component) - rounds);
            cpu.mul_f64(iters as f64 / rounds.max(1) as f64)
        })
    });
    component.run(|backup| async move { backup.stop_backup(KV, false).await.unwrap() });
}

fn idle_round(c: &mut Criterion) {
    let setup = Setup::new();
    let store_dir = setup.files[0].path().parent().unwrap().to_path_buf();
    let mut g = c.benchmark_group("idle_round");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_readdir", |b| {
        b.iter(|| std::fs::read_dir(&store_dir).unwrap().count())
    });
    g.bench_function("raw_stat", |b| b.iter(|| std::fs::metadata(&store_dir).unwrap()));
    bench_idle_component(&mut g, "component", &setup, Config::default());
    let quiet = Config {
        report_empty_rounds: false,
        ..Config::default()
    };
    bench_idle_component(&mut g, "component_quiet", &setup, quiet);
    g.finish();
}

fn raw_durable_write(dir: &Path, n: u64, data: &[u8]) {
    let tmp = dir.join(format!(".tmp.{n}"));
    let mut f = File::create(&tmp).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, dir.join(format!("raw.{n}.dat"))).unwrap();
    sync_dir(dir);
}

fn metadata_write(c: &mut Criterion) {
    let setup = Setup::new();
    let component = Component::start(setup.engine.clone());
    let dir = setup.fresh_dir();
    let (_, writer) = component.run(move |backup| first_round_of(backup, dir));
    // Writes go from this plain thread to the metadata thread.
    let raw_dir = setup.fresh_dir();
    std::fs::create_dir(&raw_dir).unwrap();
    let record = br#"{"round":1,"files":3,"low_seqno":1,"high_seqno":300}"#;
    let mut g = c.benchmark_group("metadata_write");
    g.throughput(Throughput::Elements(1));
    let mut n = 0;
    g.bench_function("raw", |b| {
        b.iter(|| {
            n += 1;
            raw_durable_write(&raw_dir, n, record)
        })
    });
    let text = std::str::from_utf8(record).unwrap();
    g.bench_function("component", |b| b.iter(|| writer.write(text).unwrap()));
    g.finish();
}

criterion_group!(benches, first_round, idle_round, metadata_write);
criterion_main!(benches);
