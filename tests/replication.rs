//! Replication to object storage, against a real S3 server on loopback
//! (moto's server mode, installed by `.ci/install-moto` when missing), with
//! a TCP proxy in front of it for outages and error answers.
//!
//! `cargo test --test replication -- --nocapture` prints the catch-up times.
#![expect(clippy::print_stdout, reason = "the suite prints its catch-up times")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::s3::{files_under, s3_options, Moto, Proxy};
use common::*;
use continuous_backup::refengine::RefEngine;
use continuous_backup::restore::{mirror, restore, BackupRoot, Mirrored, RefFormat, RefTarget};
use continuous_backup::{
    callback, CallbackFactory, Config, ContinuousBackup, Error, KvId, RemoteUrl, ReplicationConfig,
    ReplicationStatus, VbucketState,
};
use futures::TryStreamExt;
use parking_lot::Mutex;

const BUCKET: &str = "backups";
const STORES: [KvId; 3] = [KvId(1), KvId(2), KvId(3)];

fn replication(endpoint: &str) -> ReplicationConfig {
    ReplicationConfig {
        url: Some(format!("s3://{BUCKET}/node1")),
        options: s3_options(endpoint),
        concurrency: 4,
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        retry_initial: ms(100),
        retry_max: ms(800),
        drain_timeout: Duration::from_secs(60),
        ..ReplicationConfig::default()
    }
}

/// What each round of each store reported, and the metadata `n` it wrote.
type RoundLog = Arc<Mutex<Vec<(KvId, Vec<String>, u64)>>>;

/// A callback factory whose callbacks write one metadata file per round
/// that reports files.
fn logging_factory(log: &RoundLog) -> CallbackFactory {
    let log = Arc::clone(log);
    Arc::new(move |_kv| {
        let log = Arc::clone(&log);
        callback(move |kv, _snapshot, files, metadata| {
            if files.is_empty() {
                return Ok(());
            }
            let n = metadata.write(&format!("{{\"files\":{}}}", files.len()))?;
            log.lock()
                .push((kv, files.iter().map(|f| f.name.clone()).collect(), n));
            Ok(())
        })
    })
}

/// Starts the component with vBucket-driven, replicated backups of
/// `STORES`.
async fn start(fx: &Fixture, replication: ReplicationConfig, log: &RoundLog) -> ContinuousBackup {
    let config = Config {
        backup_root: Some(fx.backup_root()),
        interval: ms(50),
        replication,
        ..Config::default()
    };
    let backup =
        ContinuousBackup::start(Arc::new(fx.engine.clone()), config, Some(logging_factory(log))).unwrap();
    for kv in STORES {
        fx.engine.create_store(kv).unwrap();
        backup.set_vbucket_state(kv, VbucketState::Active).await.unwrap();
    }
    backup
}

/// Puts and flushes a few keys into every store (one new file each).
fn write_round(fx: &Fixture, i: usize) {
    for kv in STORES {
        for k in 0..5 {
            let key = format!("key-{}", (i * 7 + k) % 40);
            fx.engine
                .put(kv, key.as_bytes(), format!("v{i}").as_bytes())
                .unwrap();
        }
        fx.engine.flush(kv).unwrap();
    }
}

async fn replication_status(backup: &ContinuousBackup) -> Vec<ReplicationStatus> {
    let status = backup.status().await.unwrap();
    STORES
        .iter()
        .map(|kv| {
            status
                .store(*kv)
                .unwrap()
                .replication
                .clone()
                .expect("replicated")
        })
        .collect()
}

fn drained(status: &[ReplicationStatus]) -> bool {
    status.iter().all(|r| r.pending_files == 0 && !r.rescan_pending)
}

/// Waits until no store has anything pending (a liveness bound of 60 s).
async fn until_drained(backup: &ContinuousBackup, what: &str) {
    eventually(Duration::from_secs(60), what, || {
        let backup = backup.clone();
        async move { drained(&replication_status(&backup).await).then_some(()) }
    })
    .await;
}

/// Stops every store with a final round, and shuts down (which waits for
/// the uploads).
async fn finish(backup: &ContinuousBackup) {
    for kv in STORES {
        backup.stop_backup(kv, true).await.unwrap();
    }
    backup.shutdown().await.unwrap();
    let status = replication_status(backup).await;
    assert!(drained(&status), "uploads left after shutdown: {status:?}");
}

/// Downloads the remote root, checking every object against its sidecar.
async fn download(endpoint: &str, into: &Path) -> Mirrored {
    let (endpoint, into) = (endpoint.to_string(), into.to_path_buf());
    blocking(move || mirror(&format!("s3://{BUCKET}/node1"), &s3_options(&endpoint), &into).unwrap()).await
}

/// The remote copy holds exactly the backup root's files, each with a
/// sidecar that matches, and no object was stored twice.
async fn assert_remote_equals_local(fx: &Fixture, moto: &Moto, endpoint: &str) -> PathBuf {
    let into = fx.tmp.path().join("mirror");
    let mirrored = download(endpoint, &into).await;
    assert!(mirrored.problems.is_empty(), "{:?}", mirrored.problems);
    assert!(mirrored.in_flight.is_empty(), "{:?}", mirrored.in_flight);
    let local = files_under(&fx.backup_root());
    let remote = files_under(&into);
    let mut missing: Vec<_> = local.keys().filter(|k| !remote.contains_key(*k)).collect();
    missing.sort();
    assert!(missing.is_empty(), "not replicated: {missing:?}");
    assert_eq!(
        remote.len(),
        local.len(),
        "the remote holds files the backup root does not"
    );
    for (name, bytes) in &local {
        assert!(remote[name] == *bytes, "{name} differs");
    }
    let metadata = local.keys().filter(|k| k.contains("/metadata.")).count();
    assert!(metadata >= STORES.len() * 3, "{metadata} metadata files");
    let stored = moto.stores_per_object();
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(
        stored.len(),
        2 * local.len(),
        "one object and one sidecar per file"
    );
    into
}

/// Checks, on one listing of the remote, that the copy is restorable: for
/// every metadata file there, every file reported by the rounds up to the
/// one that wrote it is there too. Returns how many metadata files it
/// checked.
async fn check_restorable_now(client: &dyn object_store::ObjectStore, log: &RoundLog) -> usize {
    let root = object_store::path::Path::from("node1");
    let listed: Vec<_> = client.list(Some(&root)).try_collect().await.unwrap();
    let rounds = log.lock().clone();
    let mut present: HashMap<KvId, Vec<String>> = HashMap::new();
    for meta in &listed {
        let parts: Vec<String> = meta.location.parts().map(|p| p.as_ref().to_string()).collect();
        if let [_, kv, name] = parts.as_slice() {
            present
                .entry(KvId(kv.parse().unwrap()))
                .or_default()
                .push(name.clone());
        }
    }
    let mut checked = 0;
    for (kv, names) in &present {
        for name in names {
            let Some(n) = continuous_backup::parse_metadata_file_name(name) else {
                continue;
            };
            for (_, files, _) in rounds.iter().filter(|(k, _, m)| k == kv && *m <= n) {
                for file in files {
                    assert!(
                        names.contains(file),
                        "kv {kv}: metadata.{n} is uploaded but {file} is not"
                    );
                }
            }
            checked += 1;
        }
    }
    checked
}

#[actix_rt::test]
async fn a_full_run_replicates_every_file_and_metadata_file_restorable_at_every_moment() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let fx = Fixture::new();
    let log = RoundLog::default();
    let backup = start(&fx, replication(&moto.endpoint()), &log).await;
    let client = RemoteUrl::parse(&format!("s3://{BUCKET}/node1"))
        .unwrap()
        .open(&s3_options(&moto.endpoint()))
        .unwrap();
    let mut checked = 0;
    for i in 0..12 {
        write_round(&fx, i);
        if i == 6 {
            // One file above the multipart threshold (5 MiB).
            let big: Vec<u8> = (0..6u32 << 20)
                .map(|b| (b.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            fx.engine.put(KvId(3), b"big", &big).unwrap();
            fx.engine.flush(KvId(3)).unwrap();
        }
        actix_rt::time::sleep(ms(60)).await;
        checked += check_restorable_now(&*client, &log).await;
    }
    finish(&backup).await;
    checked += check_restorable_now(&*client, &log).await;
    assert!(checked > 0, "no metadata file was seen on the remote");
    let status = replication_status(&backup).await;
    let uploaded: u64 = status.iter().map(|r| r.uploaded_files).sum();
    assert_eq!(uploaded as usize, files_under(&fx.backup_root()).len());
    assert!(status
        .iter()
        .all(|r| r.upload_errors == 0 && r.last_success.is_some()));
    assert_remote_equals_local(&fx, &moto, &moto.endpoint()).await;
    let multipart = moto
        .requests()
        .iter()
        .any(|(method, path, status)| method == "POST" && path.contains("?uploads") && *status == 200);
    assert!(multipart, "the 6 MiB file did not go up as a multipart upload");
}

/// Every key of every store, as a restored data dir gives it.
fn restored_state(data_dir: &Path) -> BTreeMap<(u16, String), Option<Vec<u8>>> {
    let engine = RefEngine::open(data_dir).unwrap();
    let mut out = BTreeMap::new();
    for kv in STORES {
        for k in 0..40 {
            let key = format!("key-{k}");
            out.insert((kv.0, key.clone()), engine.get(kv, key.as_bytes()).unwrap());
        }
    }
    out
}

#[actix_rt::test]
async fn a_restore_from_the_remote_alone_equals_one_from_the_local_dir() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let fx = Fixture::new();
    let log = RoundLog::default();
    let backup = start(&fx, replication(&moto.endpoint()), &log).await;
    for i in 0..8 {
        write_round(&fx, i);
        fx.engine.delete(KvId(2), format!("key-{i}").as_bytes()).unwrap();
        actix_rt::time::sleep(ms(60)).await;
    }
    finish(&backup).await;
    let mirrored = assert_remote_equals_local(&fx, &moto, &moto.endpoint()).await;
    let (local, remote) = (
        BackupRoot::open(&fx.backup_root()).unwrap(),
        BackupRoot::open(&mirrored).unwrap(),
    );
    let high = STORES
        .iter()
        .map(|kv| fx.engine.high_seqno(*kv).unwrap())
        .min()
        .unwrap();
    for seqno in [high / 3, high / 2, high] {
        let out_local = fx.tmp.path().join(format!("restored-local-{seqno}"));
        let out_remote = fx.tmp.path().join(format!("restored-remote-{seqno}"));
        restore(
            &local,
            &STORES,
            seqno,
            &out_local,
            &RefFormat,
            &RefTarget,
            &mut |_| {},
        )
        .unwrap();
        restore(
            &remote,
            &STORES,
            seqno,
            &out_remote,
            &RefFormat,
            &RefTarget,
            &mut |_| {},
        )
        .unwrap();
        let (a, b) = (restored_state(&out_local), restored_state(&out_remote));
        assert!(
            a.values().any(Option::is_some),
            "the restore at {seqno} holds nothing"
        );
        assert_eq!(a, b, "restores at seqno {seqno} differ");
    }
}

#[actix_rt::test]
async fn uploads_resume_after_the_server_was_stopped_and_restarted() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let mut proxy = Proxy::start(moto.port);
    let fx = Fixture::new();
    let log = RoundLog::default();
    let backup = start(&fx, replication(&proxy.endpoint()), &log).await;
    write_round(&fx, 0);
    eventually(Duration::from_secs(30), "first uploads", || {
        let backup = backup.clone();
        async move {
            (replication_status(&backup)
                .await
                .iter()
                .all(|r| r.uploaded_files > 0))
            .then_some(())
        }
    })
    .await;

    proxy.stop();
    let rounds_before: u64 = backup
        .status()
        .await
        .unwrap()
        .stores
        .iter()
        .map(|s| s.rounds)
        .sum();
    for i in 1..10 {
        write_round(&fx, i);
        actix_rt::time::sleep(ms(100)).await;
    }
    let status = backup.status().await.unwrap();
    let rounds_during: u64 = status.stores.iter().map(|s| s.rounds).sum::<u64>() - rounds_before;
    assert!(rounds_during > 0, "rounds stopped while the server was down");
    assert!(
        status.stores.iter().all(|s| s.failed_rounds == 0),
        "an upload failure failed a round"
    );
    let during = replication_status(&backup).await;
    assert!(during.iter().any(|r| r.upload_errors > 0), "{during:?}");
    assert!(
        during
            .iter()
            .any(|r| r.pending_files > 0 && r.oldest_pending_age.is_some()),
        "no backlog in status while the server was down: {during:?}"
    );

    proxy.restart();
    let back = Instant::now();
    until_drained(&backup, "catch-up after the outage").await;
    println!("catch-up after a 0.9 s outage: {:?}", back.elapsed());
    finish(&backup).await;
    assert_remote_equals_local(&fx, &moto, &proxy.endpoint()).await;
}

/// The most attempts a store can make in `window` when the waits between
/// them are at least `initial`, doubling up to `max`.
fn attempts_allowed(window: Duration, initial: Duration, max: Duration) -> u64 {
    let (mut at, mut wait, mut attempts) = (Duration::ZERO, initial, 1);
    while at + wait <= window {
        at += wait;
        wait = (wait * 2).min(max);
        attempts += 1;
    }
    attempts
}

#[actix_rt::test]
async fn a_server_answering_errors_gets_backoff_then_catch_up() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let proxy = Proxy::start(moto.port);
    let fx = Fixture::new();
    let log = RoundLog::default();
    let config = replication(&proxy.endpoint());
    let (initial, max) = (config.retry_initial, config.retry_max);
    let backup = start(&fx, config, &log).await;
    write_round(&fx, 0);
    actix_rt::time::sleep(ms(300)).await;

    proxy.answer_errors();
    let errors_from = Instant::now();
    for i in 1..12 {
        write_round(&fx, i);
        actix_rt::time::sleep(ms(200)).await;
    }
    let during = replication_status(&backup).await;
    proxy.pass();
    let window = errors_from.elapsed();
    let answered = *proxy.errors_answered.lock().unwrap();
    assert!(answered > 0, "no request reached the erroring server");
    assert!(during.iter().all(|r| r.last_error.is_some()), "{during:?}");
    // Each attempt is a batch (at most 64 files, a sidecar put each) or a
    // listing, and the client retries a 503 twice: without the backoff the
    // uploader would send thousands of requests in this window.
    let bound = STORES.len() as u64 * 3 * (64 + attempts_allowed(window, initial, max));
    assert!(
        answered <= bound,
        "{answered} error answers in {window:?}, more than backoff allows ({bound})"
    );

    let back = Instant::now();
    until_drained(&backup, "catch-up after the errors").await;
    println!(
        "catch-up after {window:?} of 503 answers ({answered} answered): {:?}",
        back.elapsed()
    );
    finish(&backup).await;
    assert_remote_equals_local(&fx, &moto, &proxy.endpoint()).await;
}

fn storage_server(dir: &Path, endpoint: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(example_binary());
    cmd.arg("--dir")
        .arg(dir)
        .args(["--stores", "4", "--interval-ms", "100"])
        .args(["--replicate", &format!("s3://{BUCKET}/node1")]);
    for (k, v) in s3_options(endpoint) {
        cmd.arg("--replicate-option").arg(format!("{k}={v}"));
    }
    cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

#[test]
fn a_restart_of_the_process_in_the_middle_of_uploads_resumes() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let tmp = tempfile::tempdir().unwrap();
    // Uploads at 200 kB/s fall behind the writer: SIGKILL with most pending.
    let mut child = storage_server(
        tmp.path(),
        &moto.endpoint(),
        &["--seconds", "30", "--upload-bytes-per-sec", "200000"],
    )
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto.stores_per_object().len() < 40 {
        assert!(Instant::now() < deadline, "no uploads within 60 s");
        std::thread::sleep(ms(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let root = tmp.path().join("backup");
    let stored_at_kill = moto.stores_per_object().len();
    let local_at_kill = files_under(&root).len();
    assert!(
        stored_at_kill / 2 < local_at_kill,
        "everything was uploaded before the kill; the test proves nothing"
    );

    let status = storage_server(tmp.path(), &moto.endpoint(), &["--seconds", "1"])
        .status()
        .unwrap();
    assert!(status.success(), "the restarted run did not finish its uploads");
    let into = tmp.path().join("mirror");
    let mirrored = mirror(
        &format!("s3://{BUCKET}/node1"),
        &s3_options(&moto.endpoint()),
        &into,
    )
    .unwrap();
    assert!(mirrored.problems.is_empty(), "{:?}", mirrored.problems);
    assert!(mirrored.in_flight.is_empty(), "{:?}", mirrored.in_flight);
    let (local, remote) = (files_under(&root), files_under(&into));
    let missing: Vec<&String> = local.keys().filter(|k| remote.get(*k) != local.get(*k)).collect();
    let absent: Vec<&&String> = missing.iter().filter(|k| !remote.contains_key(**k)).collect();
    assert!(
        missing.is_empty(),
        "not mirrored: {} absent of {}: {absent:?}",
        absent.len(),
        missing.len()
    );
    assert_eq!(local.len(), remote.len());
    let twice: Vec<_> = moto
        .stores_per_object()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "stored more than once across the restart: {twice:?}"
    );
    println!(
        "process restart: {stored_at_kill} objects stored before the kill, {} files at the end",
        local.len()
    );
}

#[actix_rt::test]
async fn a_bad_remote_url_is_refused_and_nothing_is_written() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let (cb, _rx) = recorder();
    for url in ["ftp://host/x", "s3://", "not a url"] {
        let e = backup
            .start_replicated_backup(KvId(1), fx.backup_dir(KvId(1)), url, Arc::clone(&cb), None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidRemote { .. }), "{url}: {e}");
        assert!(e.to_string().contains(url), "{e}");
    }
    assert!(!fx.backup_root().exists(), "a refused start wrote something");
    let bad_option = Config {
        replication: ReplicationConfig {
            url: Some("s3://bucket/x".into()),
            options: [("aws_no_such_key".to_string(), "1".to_string())].into(),
            ..ReplicationConfig::default()
        },
        ..Config::default()
    };
    let backup = fx.start(bad_option);
    let e = backup
        .start_replicated_backup(KvId(1), fx.backup_dir(KvId(1)), "s3://bucket/x/1", cb, None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidRemote { .. }), "{e}");
    assert!(!fx.backup_root().exists(), "a refused start wrote something");
}

fn cbk(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cbk"))
        .args(args)
        .output()
        .unwrap()
}

#[actix_rt::test]
async fn a_local_dir_url_replicates_too_and_cbk_verify_checks_every_object_against_its_sidecar() {
    let fx = Fixture::new();
    let far = fx.tmp.path().join("far");
    let url = format!("file://{}", far.display());
    let log = RoundLog::default();
    let config = ReplicationConfig {
        url: Some(url.clone()),
        ..ReplicationConfig::default()
    };
    let backup = start(&fx, config, &log).await;
    for i in 0..4 {
        write_round(&fx, i);
        actix_rt::time::sleep(ms(60)).await;
    }
    finish(&backup).await;

    let out = cbk(&["verify", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("clean: 3 stores"), "{stdout}");
    let out = cbk(&["inspect", &url, "--json"]);
    assert!(out.status.success());
    let high = STORES
        .iter()
        .map(|kv| fx.engine.high_seqno(*kv).unwrap())
        .min()
        .unwrap();
    let restored = fx.tmp.path().join("restored");
    let out = cbk(&[
        "restore",
        &url,
        "--all",
        "--to-seqno",
        &high.to_string(),
        "--out",
        restored.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        restored_state(&restored).get(&(1, "key-0".to_string())),
        Some(&fx.engine.get(KvId(1), b"key-0").unwrap())
    );

    // Flip one byte of one object, and remove another one's sidecar.
    let store = far.join("1");
    let mut objects: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    objects.sort();
    let mut bytes = std::fs::read(&objects[0]).unwrap();
    bytes[0] ^= 0x40;
    std::fs::write(&objects[0], bytes).unwrap();
    let second = objects[1].file_name().unwrap().to_str().unwrap().to_string();
    for sidecar in std::fs::read_dir(store.join(".cbk-sums")).unwrap() {
        let sidecar = sidecar.unwrap();
        if sidecar
            .file_name()
            .to_str()
            .unwrap()
            .starts_with(&format!("{second}."))
        {
            std::fs::remove_file(sidecar.path()).unwrap();
        }
    }
    let out = cbk(&["verify", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("but its sidecar says"), "{stdout}");
    assert!(stdout.contains(&format!("1/{second}: no sidecar")), "{stdout}");
}

#[actix_rt::test]
async fn names_that_need_encoding_round_trip_through_the_remote() {
    let fx = Fixture::new();
    let far = fx.tmp.path().join("far");
    let url = format!("file://{}/node1", far.display());
    // A file already in the backup dir under the name the store's first
    // flush gets: the component places the flush as `<name>~1`, which an
    // object key spells with `%7E`.
    let kv = KvId(1);
    fx.engine.create_store(kv).unwrap();
    let first = fx.flush_some(kv, 3);
    let taken = fx.backup_dir(kv).join(first.name());
    std::fs::create_dir_all(taken.parent().unwrap()).unwrap();
    std::fs::write(&taken, b"an older file under the same name").unwrap();
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_replicated_backup(kv, fx.backup_dir(kv), &format!("{url}/1"), cb, Some(ms(50)))
        .await
        .unwrap();
    let round = next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
    assert!(
        round.files.iter().any(|f| f.name.contains('~')),
        "{:?}",
        round.files
    );
    backup.stop_backup(kv, true).await.unwrap();
    backup.shutdown().await.unwrap();

    let into = fx.tmp.path().join("mirror");
    let (url2, into2) = (url.clone(), into.clone());
    let mirrored = blocking(move || mirror(&url2, &BTreeMap::new(), &into2).unwrap()).await;
    assert!(mirrored.problems.is_empty(), "{:?}", mirrored.problems);
    let (local, remote) = (files_under(&fx.backup_root()), files_under(&into));
    assert_eq!(local, remote);
}

#[actix_rt::test]
async fn a_store_replicated_again_after_a_start_without_replication_uploads_what_it_missed() {
    let fx = Fixture::new();
    let far = fx.tmp.path().join("far");
    let url = format!("file://{}/node1", far.display());
    let kv = KvId(1);
    fx.engine.create_store(kv).unwrap();
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder_with(|round| {
        round.writer.write("{}")?;
        Ok(())
    });
    let remote = format!("{url}/1");
    let status = || {
        let backup = backup.clone();
        async move { store_status(&backup, kv).await.replication.unwrap() }
    };
    let until_drained = || async {
        eventually(Duration::from_secs(30), "uploads drained", || async {
            let s = status().await;
            (s.pending_files == 0 && !s.rescan_pending).then_some(())
        })
        .await
    };

    fx.flush_some(kv, 3);
    backup
        .start_replicated_backup(kv, fx.backup_dir(kv), &remote, Arc::clone(&cb), Some(ms(50)))
        .await
        .unwrap();
    next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
    backup.stop_backup(kv, true).await.unwrap();
    until_drained().await;

    // A start without replication: its files and metadata are not queued.
    fx.flush_some(kv, 3);
    backup
        .start_backup(kv, fx.backup_dir(kv), Arc::clone(&cb), Some(ms(50)))
        .await
        .unwrap();
    next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
    backup.stop_backup(kv, true).await.unwrap();

    // Replicated again: the reused queue rescans and uploads them.
    backup
        .start_replicated_backup(kv, fx.backup_dir(kv), &remote, cb, Some(ms(50)))
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(10)).await;
    backup.stop_backup(kv, true).await.unwrap();
    until_drained().await;
    backup.shutdown().await.unwrap();

    let into = fx.tmp.path().join("mirror");
    let (url2, into2) = (url.clone(), into.clone());
    let mirrored = blocking(move || mirror(&url2, &BTreeMap::new(), &into2).unwrap()).await;
    assert!(mirrored.problems.is_empty(), "{:?}", mirrored.problems);
    assert_eq!(files_under(&fx.backup_root()), files_under(&into));
}
