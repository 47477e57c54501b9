//! Replication figures against a real S3 server on loopback (moto, started
//! here; `.ci/install-moto` installs it when missing):
//!
//! 1. upload throughput: the component replicating existing backup dirs
//!    (rescan, checksums, a sidecar and the object per file) against a plain
//!    `object_store` put loop of the same files, one at a time and with the
//!    component's concurrency, in the same run;
//! 2. catch-up after an outage: the server's port is closed for a while
//!    (through a loopback proxy, so moto keeps what it stored) while the
//!    stores keep flushing and backing up; then the time from its return
//!    until nothing is pending.
//!
//! `cargo run --release --example replication_bench -- --help`
#![expect(clippy::print_stdout, reason = "a benchmark prints its table")]

#[path = "../tests/common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use continuous_backup::refengine::RefEngine;
use continuous_backup::{
    callback, Config, ContinuousBackup, KvId, RemoteUrl, ReplicationConfig, ReplicationStatus, Status,
};
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};

#[derive(Parser, Debug)]
struct Args {
    /// KV stores.
    #[arg(long, default_value_t = 16)]
    stores: u16,
    /// Files (flushes) per store.
    #[arg(long, default_value_t = 40)]
    files_per_store: usize,
    /// Keys per flush.
    #[arg(long, default_value_t = 64)]
    keys_per_file: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Uploads in flight (the component's `replication.concurrency`, and
    /// the concurrent put loop's).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long the server is away in the outage measurement, in seconds.
    #[arg(long, default_value_t = 3.0)]
    outage_seconds: f64,
}

const BUCKET: &str = "bench";

fn flush_files(engine: &RefEngine, kv: KvId, files: usize, keys: usize, value_bytes: usize, salt: usize) {
    let value: Vec<u8> = (0..value_bytes).map(|i| (i * 31 + salt) as u8).collect();
    for f in 0..files {
        for k in 0..keys {
            let key = format!("key-{salt}-{f}-{k}");
            engine.put(kv, key.as_bytes(), &value).unwrap();
        }
        engine.flush(kv).unwrap();
    }
}

/// Every file under a backup root, as (remote key suffix, path).
fn backup_files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for store in std::fs::read_dir(root).unwrap() {
        let store = store.unwrap();
        for file in std::fs::read_dir(store.path()).unwrap() {
            let file = file.unwrap();
            let name = file.file_name().into_string().unwrap();
            if !name.starts_with('.') {
                out.push((
                    format!("{}/{name}", store.file_name().to_str().unwrap()),
                    file.path(),
                ));
            }
        }
    }
    out
}

/// A replication counter summed over every store.
fn total(status: &Status, counter: fn(&ReplicationStatus) -> u64) -> u64 {
    status
        .stores
        .iter()
        .filter_map(|s| s.replication.as_ref())
        .map(counter)
        .sum()
}

fn drained(status: &Status) -> bool {
    status
        .stores
        .iter()
        .filter_map(|s| s.replication.as_ref())
        .all(|r| r.pending_files == 0 && !r.rescan_pending)
}

async fn wait_drained(backup: &ContinuousBackup) -> Status {
    loop {
        let status = backup.status().await.unwrap();
        if drained(&status) {
            return status;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

fn rate(files: usize, bytes: u64, requests: usize, took: Duration) -> String {
    let s = took.as_secs_f64();
    format!(
        "{:>6.0} files/s {:>7.2} MB/s {:>6.0} requests/s ({files} files, {:.1} MB, {requests} requests, {:.2} s)",
        files as f64 / s,
        bytes as f64 / s / 1e6,
        requests as f64 / s,
        bytes as f64 / 1e6,
        s
    )
}

async fn run(args: Args) {
    let moto = s3::Moto::start();
    moto.create_bucket(BUCKET);
    let mut proxy = s3::Proxy::start(moto.port);
    let options = s3::s3_options(&proxy.endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("backup");
    let engine = RefEngine::open(tmp.path().join("data")).unwrap();
    let stores: Vec<KvId> = (0..args.stores).map(KvId).collect();
    for kv in &stores {
        engine.create_store(*kv).unwrap();
        flush_files(
            &engine,
            *kv,
            args.files_per_store,
            args.keys_per_file,
            args.value_bytes,
            0,
        );
    }

    // The backup dirs, linked by the component without replication.
    let backup = ContinuousBackup::start(Arc::new(engine.clone()), Config::default(), None).unwrap();
    let cb = callback(|_, _, _, metadata| {
        metadata.write("{\"round\":1}")?;
        Ok(())
    });
    for kv in &stores {
        let dir = root.join(kv.to_string());
        backup
            .start_backup(*kv, &dir, Arc::clone(&cb), Some(Duration::from_secs(3600)))
            .await
            .unwrap();
    }
    for kv in &stores {
        backup.stop_backup(*kv, true).await.unwrap();
    }
    backup.shutdown().await.unwrap();
    let files = backup_files(&root);
    let bytes: u64 = files
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();

    // Plain put loops of the same files: read each, put it.
    let client = RemoteUrl::parse(&format!("s3://{BUCKET}/raw"))
        .unwrap()
        .open(&options)
        .unwrap();
    let put = |prefix: &'static str| {
        let client = Arc::clone(&client);
        move |(key, path): (String, PathBuf)| {
            let client = Arc::clone(&client);
            async move {
                let data = actix_rt::task::spawn_blocking(move || std::fs::read(path).unwrap())
                    .await
                    .unwrap();
                let location = object_store::path::Path::from(format!("{prefix}/{key}"));
                client.put(&location, PutPayload::from(data)).await.unwrap();
            }
        }
    };
    // Requests the server answered, from its log.
    let requests = || moto.requests().len();
    let (r0, started) = (requests(), Instant::now());
    for file in files.clone() {
        put("raw1")(file).await;
    }
    let (raw_serial, r1) = (started.elapsed(), requests());
    let started = Instant::now();
    futures::stream::iter(files.clone())
        .map(put("rawn"))
        .buffer_unordered(args.concurrency)
        .collect::<Vec<()>>()
        .await;
    let (raw_concurrent, r2) = (started.elapsed(), requests());

    // The component: replicate the existing dirs (its rescan finds them).
    let config = Config {
        replication: ReplicationConfig {
            options: options.clone(),
            concurrency: args.concurrency,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            ..ReplicationConfig::default()
        },
        interval: Duration::from_millis(200),
        ..Config::default()
    };
    let backup = ContinuousBackup::start(Arc::new(engine.clone()), config, None).unwrap();
    // No metadata: the component uploads exactly the files the loops did.
    let cb = callback(|_, _, _, _| Ok(()));
    let started = Instant::now();
    for kv in &stores {
        let url = format!("s3://{BUCKET}/node/{kv}");
        let dir = root.join(kv.to_string());
        backup
            .start_replicated_backup(*kv, &dir, &url, Arc::clone(&cb), None)
            .await
            .unwrap();
    }
    let status = wait_drained(&backup).await;
    let component = started.elapsed();
    let r3 = requests();
    let uploaded: u64 = total(&status, |r| r.uploaded_files);
    assert_eq!(
        uploaded as usize,
        files.len(),
        "the component uploaded another set of files"
    );

    println!(
        "upload of {} stores' backup dirs to moto on loopback ({} in flight):",
        args.stores, args.concurrency
    );
    println!(
        "  object_store put loop, 1 at a time : {}",
        rate(files.len(), bytes, r1 - r0, raw_serial)
    );
    println!(
        "  object_store put loop, {} in flight : {}",
        args.concurrency,
        rate(files.len(), bytes, r2 - r1, raw_concurrent)
    );
    println!(
        "  component (sums, sidecar + object) : {}",
        rate(files.len(), bytes, r3 - r2, component)
    );
    println!(
        "  component / loop: {:.2}x the 1-at-a-time loop, {:.2}x the {}-in-flight loop",
        raw_serial.as_secs_f64() / component.as_secs_f64(),
        raw_concurrent.as_secs_f64() / component.as_secs_f64(),
        args.concurrency
    );

    // Outage: the port closes; stores keep flushing; then it is back.
    proxy.stop();
    let outage = Duration::from_secs_f64(args.outage_seconds);
    let away = Instant::now();
    let mut salt = 1;
    while away.elapsed() < outage {
        for kv in &stores {
            flush_files(&engine, *kv, 1, args.keys_per_file, args.value_bytes, salt);
        }
        salt += 1;
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last flushes reach a round before the server comes back.
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    let before = backup.status().await.unwrap();
    let pending: u64 = total(&before, |r| r.pending_files);
    let errors: u64 = total(&before, |r| r.upload_errors);
    let failed_rounds: u64 = before.stores.iter().map(|s| s.failed_rounds).sum();
    let away_for = away.elapsed();
    proxy.restart();
    let back = Instant::now();
    let after = wait_drained(&backup).await;
    let catch_up = back.elapsed();
    let caught_up: u64 = total(&after, |r| r.uploaded_files) - uploaded;
    println!(
        "outage of {away_for:.1?}: {pending} files pending (or more, found by rescans), {errors} failed attempts, {failed_rounds} failed rounds"
    );
    println!("  catch-up after the server came back: {catch_up:.2?} ({caught_up} files uploaded)");
    backup.shutdown().await.unwrap();
}

fn main() {
    let args = Args::parse();
    actix::System::new().block_on(run(args));
}
