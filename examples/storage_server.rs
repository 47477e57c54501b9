//! A small storage server with continuous backup, on the reference engine
//! or (`--engine lsm-tree`) on lsm-tree through the crate's adapter.
//!
//! vBuckets become active, a writer thread puts and deletes documents,
//! flushes and compacts; backups run every `--interval-ms`; the callback
//! writes one JSON metadata record per round; a few vBuckets go replica and
//! back. At the end every vBucket stops with a final round and a per-store
//! table is printed from what is on disk in the backup dirs. Exits non-zero
//! if any flushed seqno of the engine is missing from its backup.
//!
//! `cargo run --release --example storage_server -- [--dir DIR] [--seconds N] [--stores N] [--engine ref|lsm-tree]`
//!
//! With `--dir`, engine data is kept in `DIR/data` and backups in
//! `DIR/backup/<kv_id>/` (`DIR/lsm-data`, `DIR/lsm-backup` for lsm-tree); a
//! second run on the same DIR reopens both and carries on (metadata
//! numbering continues).

#![expect(clippy::print_stdout, reason = "the example prints its report")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use continuous_backup::lsm::LsmEngine;
use continuous_backup::refengine::RefEngine;
use continuous_backup::restore::{detect_format, format_named, inspect, BackupRoot};
use continuous_backup::{
    callback, BackupFile, CallbackFactory, Config, ContinuousBackup, Engine, KvId, ReplicationConfig,
    VbucketState,
};

#[derive(Parser, Debug)]
#[command(about = "Run a small storage server with continuous backup")]
struct Args {
    /// The storage engine: `ref` (the reference engine) or `lsm-tree`.
    #[arg(long, default_value = "ref", value_parser = ["ref", "lsm-tree"])]
    engine: String,
    /// Keep data and backups under DIR (reopened and continued if it holds a run).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How long the writer runs, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Number of vBuckets (KV stores).
    #[arg(long, default_value_t = 16)]
    stores: u16,
    /// Backup interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Append one JSON line per acknowledged metadata write (the record, its
    /// `n`, the files reported) to FILE, fsynced: the crash tests check the
    /// backup dirs against it after a kill -9.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Replicate each backup dir to object storage, store `kv` under
    /// `URL/<kv>` (e.g. `s3://bucket/node1`, `file:///mnt/far/node1`).
    /// Credentials and endpoint come from the environment (`AWS_*`, ...) or
    /// `--replicate-option`.
    #[arg(long, value_name = "URL")]
    replicate: Option<String>,
    /// An object-store client option, e.g. `aws_endpoint=http://127.0.0.1:9000`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_option)]
    replicate_option: Vec<(String, String)>,
    /// Upload rate limit, bytes per second.
    #[arg(long, value_name = "N")]
    upload_bytes_per_sec: Option<u64>,
    /// Turn on the component's own retention (`Config::retention`): keep
    /// every restore point of the newest K rounds of each store, pruning
    /// after each round (`prune_every` 1 s).
    #[arg(long, value_name = "K")]
    keep_rounds: Option<u64>,
    /// How long shutdown waits for pending uploads, in seconds.
    #[arg(long, default_value_t = 60)]
    drain_seconds: u64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` while the writer
    /// runs (e.g. `127.0.0.1:9091`; port 0 picks a free one). The bound
    /// address is printed first.
    #[cfg(feature = "prometheus")]
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// The metadata record the callback writes each round.
#[derive(serde::Serialize)]
struct RoundRecord {
    /// `<pid>-<call>`: tells apart records that are otherwise equal.
    writer: String,
    kv: u16,
    files: usize,
    bytes: u64,
    low_seqno: Option<u64>,
    high_seqno: Option<u64>,
}

fn round_record(kv: KvId, files: &[BackupFile]) -> RoundRecord {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    RoundRecord {
        writer: format!("{}-{}", std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed)),
        kv: kv.0,
        files: files.len(),
        bytes: files.iter().map(|f| f.len).sum(),
        low_seqno: files.iter().map(|f| f.low_seqno).min(),
        high_seqno: files.iter().map(|f| f.high_seqno).max(),
    }
}

/// The crash tests' record of what the component acknowledged.
struct Journal(parking_lot::Mutex<std::fs::File>);

impl Journal {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Journal(parking_lot::Mutex::new(file)))
    }

    /// One line per acknowledged write; `snapshot` is the snapshot's file
    /// count on the first round of a start.
    fn append(
        &self,
        kv: KvId,
        n: u64,
        record: &str,
        files: &[BackupFile],
        snapshot: Option<usize>,
    ) -> std::io::Result<()> {
        use std::io::Write;
        let line = serde_json::json!({
            "kv": kv.0, "n": n, "record": record, "files": files, "first_round_snapshot": snapshot,
        });
        let mut file = self.0.lock();
        writeln!(file, "{line}")?;
        file.sync_data()
    }
}

/// What the writer does to a store, on either engine.
trait Store: Engine {
    fn create(&self, kv: KvId) -> continuous_backup::Result<()>;
    fn put(&self, kv: KvId, key: &[u8], value: &[u8]) -> continuous_backup::Result<u64>;
    fn delete(&self, kv: KvId, key: &[u8]) -> continuous_backup::Result<u64>;
    fn flush(&self, kv: KvId) -> continuous_backup::Result<()>;
    /// A compaction; `major` compacts everything into the last level.
    fn compact(&self, kv: KvId, major: bool) -> continuous_backup::Result<()>;
    fn has_stores(&self) -> bool;
}

impl Store for RefEngine {
    fn create(&self, kv: KvId) -> continuous_backup::Result<()> {
        self.create_store(kv)
    }
    fn put(&self, kv: KvId, key: &[u8], value: &[u8]) -> continuous_backup::Result<u64> {
        RefEngine::put(self, kv, key, value)
    }
    fn delete(&self, kv: KvId, key: &[u8]) -> continuous_backup::Result<u64> {
        RefEngine::delete(self, kv, key)
    }
    fn flush(&self, kv: KvId) -> continuous_backup::Result<()> {
        RefEngine::flush(self, kv).map(drop)
    }
    fn compact(&self, kv: KvId, _major: bool) -> continuous_backup::Result<()> {
        RefEngine::compact(self, kv).map(drop)
    }
    fn has_stores(&self) -> bool {
        !self.stores().is_empty()
    }
}

impl Store for LsmEngine {
    fn create(&self, kv: KvId) -> continuous_backup::Result<()> {
        self.create_store(kv)
    }
    fn put(&self, kv: KvId, key: &[u8], value: &[u8]) -> continuous_backup::Result<u64> {
        LsmEngine::put(self, kv, key, value)
    }
    fn delete(&self, kv: KvId, key: &[u8]) -> continuous_backup::Result<u64> {
        LsmEngine::delete(self, kv, key)
    }
    fn flush(&self, kv: KvId) -> continuous_backup::Result<()> {
        LsmEngine::flush(self, kv)
    }
    fn compact(&self, kv: KvId, major: bool) -> continuous_backup::Result<()> {
        match major {
            true => self.major_compact(kv),
            false => LsmEngine::compact(self, kv),
        }
    }
    fn has_stores(&self) -> bool {
        !self.kv_ids().is_empty()
    }
}

/// Puts, deletes, flushes and compacts until `stop` is set.
fn write_load(engine: Arc<dyn Store>, stores: u16, stop: Arc<AtomicBool>) -> continuous_backup::Result<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut ops = 0u64;
    while !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let kv = KvId((x % u64::from(stores)) as u16);
        let key = format!("doc-{}", (x >> 16) % 500);
        if x.is_multiple_of(7) {
            engine.delete(kv, key.as_bytes())?;
        } else {
            engine.put(kv, key.as_bytes(), format!("value {ops}").as_bytes())?;
        }
        ops += 1;
        if ops.is_multiple_of(200) {
            engine.flush(kv)?;
        }
        if ops.is_multiple_of(3000) {
            engine.compact(kv, ops.is_multiple_of(12_000))?;
        }
    }
    for kv in 0..stores {
        engine.flush(KvId(kv))?;
    }
    Ok(ops)
}

/// Serves the component's metrics at `http://addr/metrics` (OpenMetrics
/// text) from one actix-web worker, in the running actix System; prints the
/// bound address.
#[cfg(feature = "prometheus")]
fn serve_metrics(
    backup: &ContinuousBackup,
    addr: std::net::SocketAddr,
) -> std::io::Result<actix_web::dev::ServerHandle> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    use prometheus_client::registry::Registry;

    async fn scrape(registry: web::Data<Registry>) -> HttpResponse {
        let mut body = String::new();
        match prometheus_client::encoding::text::encode(&mut body, &registry) {
            Ok(()) => HttpResponse::Ok()
                .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
                .body(body),
            Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
        }
    }

    let mut registry = Registry::default();
    backup.register_metrics(&mut registry);
    let registry = web::Data::new(registry);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(registry.clone())
            .route("/metrics", web::get().to(scrape))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?;
    println!("metrics on http://{}/metrics", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let tmp;
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let root = std::path::absolute(root)?;
    // The data dir's lock is the first thing taken: a second server on the
    // same --dir stops here, having touched nothing.
    let (data, backup_root) = match args.engine.as_str() {
        "lsm-tree" => (root.join("lsm-data"), root.join("lsm-backup")),
        _ => (root.join("data"), root.join("backup")),
    };
    let opened: continuous_backup::Result<Arc<dyn Store>> = match args.engine.as_str() {
        "lsm-tree" => LsmEngine::open(&data).map(|e| Arc::new(e) as Arc<dyn Store>),
        _ => RefEngine::open(&data).map(|e| Arc::new(e) as Arc<dyn Store>),
    };
    let engine = match opened {
        Ok(engine) => engine,
        Err(e @ continuous_backup::Error::DirLocked { .. }) => {
            eprintln!("storage_server: {e}");
            eprintln!(
                "storage_server: another storage server runs on --dir {}; not starting",
                root.display()
            );
            std::process::exit(2);
        }
        Err(e) => return Err(e.into()),
    };
    let resumed = engine.has_stores();
    let stores = args.stores;

    let journal = match &args.journal {
        Some(path) => Some(Arc::new(Journal::open(path)?)),
        None => None,
    };
    let factory: CallbackFactory = Arc::new(move |_kv| {
        let journal = journal.clone();
        let first = AtomicBool::new(true);
        callback(move |kv, snapshot, files, metadata| {
            let record = serde_json::to_string(&round_record(kv, files))?;
            let n = metadata.write(&record)?;
            if let Some(journal) = &journal {
                let first = first.swap(false, Ordering::Relaxed);
                journal.append(kv, n, &record, files, first.then(|| snapshot.files().len()))?;
            }
            Ok(())
        })
    });
    let config = Config {
        backup_root: Some(backup_root.clone()),
        interval: Duration::from_millis(args.interval_ms),
        replication: ReplicationConfig {
            url: args.replicate.clone(),
            options: args.replicate_option.iter().cloned().collect(),
            max_bytes_per_sec: args.upload_bytes_per_sec,
            drain_timeout: Duration::from_secs(args.drain_seconds),
            ..ReplicationConfig::default()
        },
        retention: continuous_backup::retention::Retention {
            keep_for: None,
            keep_rounds: args.keep_rounds,
        },
        prune_every: Duration::from_secs(1),
        ..Config::default()
    };

    let ops = actix::System::new().block_on(async {
        let backup = ContinuousBackup::start(engine.clone() as Arc<dyn Engine>, config, Some(factory))?;
        #[cfg(feature = "prometheus")]
        let metrics = args.metrics.map(|addr| serve_metrics(&backup, addr)).transpose()?;
        for kv in 0..stores {
            engine.create(KvId(kv))?;
            backup.set_vbucket_state(KvId(kv), VbucketState::Active).await?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (engine, stop) = (engine.clone(), Arc::clone(&stop));
            std::thread::spawn(move || write_load(engine, stores, stop))
        };

        // A few vBuckets go replica and come back while the writer runs.
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut flip = 0u16;
        while Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(700)).await;
            let kv = KvId(flip % stores);
            flip += 3;
            backup.set_vbucket_state(kv, VbucketState::Replica).await?;
            actix_rt::time::sleep(Duration::from_millis(300)).await;
            backup.set_vbucket_state(kv, VbucketState::Active).await?;
        }
        stop.store(true, Ordering::Relaxed);
        let ops = actix_rt::task::spawn_blocking(move || writer.join())
            .await?
            .map_err(|_| "the writer thread panicked")??;

        // Every vBucket stops with a final round, so the last flush is in.
        for kv in 0..stores {
            backup.stop_backup(KvId(kv), true).await?;
        }
        backup.shutdown().await?;
        #[cfg(feature = "prometheus")]
        if let Some(server) = metrics {
            server.stop(true).await;
        }
        // After the shutdown, which waited for pending uploads.
        let status = backup.status().await?;
        let failed: u64 = status.stores.iter().map(|s| s.failed_rounds).sum();
        let rounds: u64 = status.stores.iter().map(|s| s.rounds).sum();
        println!(
            "{} run: {ops} writes on {stores} vBuckets, {rounds} backup rounds ({failed} failed)",
            if resumed { "resumed" } else { "new" }
        );
        if args.keep_rounds.is_some() {
            let sum = |f: fn(&continuous_backup::StoreStatus) -> u64| status.stores.iter().map(f).sum::<u64>();
            println!(
                "retention: {} prunes deleted {} files, {} bytes freed ({} failed)",
                sum(|s| s.prunes),
                sum(|s| s.files_pruned),
                sum(|s| s.bytes_pruned),
                sum(|s| s.failed_prunes)
            );
        }
        if let Some(url) = &args.replicate {
            let remote: Vec<_> = status.stores.iter().filter_map(|s| s.replication.as_ref()).collect();
            let sum = |f: fn(&continuous_backup::ReplicationStatus) -> u64| remote.iter().map(|r| f(r)).sum::<u64>();
            let pending = sum(|r| r.pending_files) + remote.iter().filter(|r| r.rescan_pending).count() as u64;
            println!(
                "replicated to {url}: {} files ({} bytes) uploaded, {} already there, {} upload errors, {pending} pending",
                sum(|r| r.uploaded_files),
                sum(|r| r.uploaded_bytes),
                sum(|r| r.already_there),
                sum(|r| r.upload_errors),
            );
            if pending > 0 {
                return Err(format!("{pending} files (or rescans) still pending upload after the drain").into());
            }
        }
        Ok::<u64, Box<dyn std::error::Error>>(ops)
    })?;
    let _ = ops;

    // What is on disk, read back as `cbk inspect` reads it.
    let root_of_backups = BackupRoot::open(&backup_root)?;
    let format = format_named(&detect_format(&root_of_backups)?)?;
    let reports = inspect(&root_of_backups, format.reader.as_ref())?;
    println!(
        "{:>4} {:>6} {:>10} {:>9} {:>7} {:>7} {:>12} {:>12}",
        "kv", "files", "bytes", "metadata", "last n", "rounds", "backed-up hi", "engine hi"
    );
    let mut missing = Vec::new();
    for kv in 0..stores {
        let kv = KvId(kv);
        let report = reports
            .iter()
            .find(|r| r.kv == kv)
            .ok_or("a store has no backup dir")?;
        let rounds = root_of_backups.store(kv)?.rounds.len();
        let engine_high = engine
            .snapshot(kv)?
            .files()
            .iter()
            .map(|f| f.high_seqno())
            .max()
            .unwrap_or(0);
        let (m, high) = (&report.metadata, report.highest_seqno.unwrap_or(0));
        println!(
            "{:>4} {:>6} {:>10} {:>9} {:>7} {:>7} {:>12} {:>12}",
            kv.0,
            report.files,
            report.bytes,
            m.count,
            m.last_n.unwrap_or(0),
            rounds,
            high,
            engine_high
        );
        let exact_to_high = report.restorable.last().is_some_and(|r| r.1 >= engine_high);
        if high < engine_high
            || m.count as u64 != m.last_n.unwrap_or(0)
            || (engine_high > 0 && !exact_to_high)
        {
            missing.push(kv);
        }
    }
    println!(
        "{} data: {}  backups: {}",
        format.reader.format(),
        data.display(),
        backup_root.display()
    );
    if !missing.is_empty() {
        return Err(format!(
            "backups of {missing:?} are behind the engine, do not restore its latest state exactly, or \
             have holes in their metadata numbers"
        )
        .into());
    }
    Ok(())
}
