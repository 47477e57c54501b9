//! What the component does with what an engine hands it: 48-bit seqnos,
//! reused file names, and engines that fail or panic.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::refengine::RefEngine;
use continuous_backup::{Config, ContinuousBackup, Engine, Error, IndexFile, KvId, Snapshot, MAX_SEQNO};

const KV: KvId = KvId(11);

/// What the faulty engine does to the reference engine's snapshot on call N.
type Fault = fn(call: usize, snapshot: Box<dyn Snapshot>) -> continuous_backup::Result<Box<dyn Snapshot>>;

/// An engine that hands out what the reference engine has, after a fault.
struct Faulty {
    inner: RefEngine,
    calls: AtomicUsize,
    fault: Fault,
}

impl Engine for Faulty {
    fn snapshot(&self, kv: KvId) -> continuous_backup::Result<Box<dyn Snapshot>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        (self.fault)(call, self.inner.snapshot(kv)?)
    }
    fn data_dir(&self) -> Option<&Path> {
        Engine::data_dir(&self.inner)
    }
}

fn faulty(fx: &Fixture, fault: Fault) -> Arc<Faulty> {
    Arc::new(Faulty {
        inner: fx.engine.clone(),
        calls: AtomicUsize::new(0),
        fault,
    })
}

#[actix_rt::test]
async fn seqno_above_48_bits_is_rejected_and_nothing_reported() {
    let fx = Fixture::new();
    let good = fx.flush_some(KV, 1);
    // The engine's listing holds a seqno one past the 48-bit limit.
    let engine = faulty(&fx, |_, snap| {
        let f = &snap.files()[0];
        IndexFile::new(f.path(), f.len(), f.low_seqno(), MAX_SEQNO + 1)?;
        Ok(snap)
    });
    let backup = ContinuousBackup::start(engine, Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(30)))
        .await
        .unwrap();
    assert!(
        no_round_within(&mut rx, ms(300)).await,
        "the callback heard of a round that failed"
    );
    let s = store_status(&backup, KV).await;
    assert!(s.failed_rounds >= 2, "each tick retries");
    let err = s.last_error.as_deref().unwrap();
    assert!(err.contains("281474976710656") && err.contains("48-bit"), "{err}");
    assert!(!fx.backup_dir(KV).join(good.name()).exists(), "nothing linked");
}

#[actix_rt::test]
async fn a_panicking_engine_fails_the_round_and_the_pool_keeps_its_thread() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let engine = faulty(&fx, |call, snap| {
        if call < 3 {
            panic!("engine bug on call {call}");
        }
        Ok(snap)
    });
    // One linker thread: if a panic killed it, no round could ever link again.
    let backup = ContinuousBackup::start(
        engine,
        Config {
            linker_threads: 1,
            ..Config::default()
        },
        None,
    )
    .unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(20)))
        .await
        .unwrap();
    let round = next_round(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(round.files.len(), 1);
    let s = store_status(&backup, KV).await;
    assert_eq!(s.failed_rounds, 3);
    assert!(s.running);
}

#[actix_rt::test]
async fn name_clash_under_a_recreated_store_keeps_both_files() {
    let fx = Fixture::new();
    let old = fx.flush_some(KV, 3);
    let old_bytes = std::fs::read(old.path()).unwrap();
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb.clone(), None)
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    backup.stop_backup(KV, false).await.unwrap();
    // The stop does not wait for the callback; its snapshot (which holds
    // the old file, and so its number) goes once the callback returned.
    eventually(
        Duration::from_secs(10),
        "the stopped start's callback returned",
        || {
            let backup = backup.clone();
            async move {
                let s = store_status(&backup, KV).await;
                s.callback_running_for.is_none().then_some(())
            }
        },
    )
    .await;

    // The vBucket is deleted and created again: file names start over.
    fx.engine.drop_store(KV).unwrap();
    fx.engine.put(KV, b"other", b"data of the new store").unwrap();
    let new = fx.engine.flush(KV).unwrap().unwrap();
    assert_eq!(new.name(), old.name(), "the engine reuses the name");
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, None)
        .await
        .unwrap();
    let round = next_round(&mut rx, Duration::from_secs(5)).await;
    let clash = format!("{}~1", old.name());
    // The new store's file under a new name; the old one may come again if
    // the stop abandoned its round before it was acknowledged.
    let reported: Vec<&str> = round.files.iter().map(|f| f.name.as_str()).collect();
    assert!(reported.contains(&clash.as_str()), "{reported:?}");
    assert!(
        reported.iter().all(|n| *n == clash || *n == old.name()),
        "{reported:?}"
    );
    assert_eq!(
        std::fs::read(fx.backup_dir(KV).join(old.name())).unwrap(),
        old_bytes,
        "the old file is untouched"
    );
    assert_eq!(inode(&fx.backup_dir(KV).join(&clash)), inode(new.path()));
}

#[actix_rt::test]
async fn an_unknown_store_fails_its_rounds_with_a_clear_error() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KvId(99), fx.backup_dir(KvId(99)), cb, Some(ms(30)))
        .await
        .unwrap();
    assert!(no_round_within(&mut rx, ms(200)).await);
    let status = backup.status().await.unwrap();
    let err = status.store(KvId(99)).unwrap().last_error.clone().unwrap();
    assert!(err.contains("no KV store 99"), "{err}");
}

#[actix_rt::test]
async fn bad_backup_dirs_are_refused_before_anything_is_written() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let (cb, _rx) = recorder();
    let file = fx.tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let inside_data = fx.engine.data_dir().join("backup");
    for dir in [
        Path::new("relative/dir").to_path_buf(),
        fx.tmp.path().join("x/../y"),
        file.clone(),
        file.join("below-a-file"),
        inside_data.clone(),
    ] {
        let err = backup.start_backup(KV, &dir, cb.clone(), None).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidBackupDir { .. }),
            "{}: {err}",
            dir.display()
        );
    }
    assert!(!inside_data.exists());
    assert!(!fx.tmp.path().join("y").exists());
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert!(backup.status().await.unwrap().running().is_empty());
}

#[actix_rt::test]
async fn the_snapshot_keeps_its_files_until_the_callback_returns() {
    let fx = Fixture::new();
    fx.flush_some(KV, 2);
    fx.flush_some(KV, 2);
    let engine = fx.engine.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = parking_lot::Mutex::new(tx);
    // The first callback compacts its store: the listed inputs must stay on
    // disk while the callback holds the snapshot.
    let (cb, mut rounds) = recorder_with(move |round| {
        if round.files.len() == 2 {
            engine.compact(round.kv)?;
            let alive = round.snapshot.iter().all(|f| f.path().exists());
            tx.lock().send((alive, round.snapshot.clone())).ok();
        }
        Ok(())
    });
    let backup = fx.start(Config::default());
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    next_round(&mut rounds, Duration::from_secs(5)).await;
    let (alive, listed) = blocking(move || rx.recv().unwrap()).await;
    assert!(alive, "compaction deleted a file the snapshot lists");
    // The snapshot drops just after the callback returns.
    eventually(
        Duration::from_secs(10),
        "inputs kept after the snapshot dropped",
        || {
            let gone = listed.iter().all(|f| !f.path().exists());
            async move { gone.then_some(()) }
        },
    )
    .await;
}

#[actix_rt::test]
async fn no_snapshot_is_taken_while_a_round_is_in_its_callback() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    struct Clocked {
        inner: RefEngine,
        taken: parking_lot::Mutex<Vec<std::time::Instant>>,
    }
    impl Engine for Clocked {
        fn snapshot(&self, kv: KvId) -> continuous_backup::Result<Box<dyn Snapshot>> {
            self.taken.lock().push(std::time::Instant::now());
            self.inner.snapshot(kv)
        }
    }
    let engine = Arc::new(Clocked {
        inner: fx.engine.clone(),
        taken: parking_lot::Mutex::new(Vec::new()),
    });
    // Callbacks take three intervals each.
    let (cb, mut rx) = recorder_with(|_| {
        std::thread::sleep(ms(60));
        Ok(())
    });
    let backup = ContinuousBackup::start(engine.clone(), Config::default(), None).unwrap();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(20)))
        .await
        .unwrap();
    let mut rounds = Vec::new();
    for _ in 0..5 {
        rounds.push(next_round(&mut rx, Duration::from_secs(5)).await);
    }
    backup.stop_backup(KV, false).await.unwrap();
    let taken = engine.taken.lock().clone();
    for (i, pair) in rounds.windows(2).enumerate() {
        let between = taken
            .iter()
            .filter(|t| **t > pair[0].started && **t < pair[0].ended)
            .count();
        assert_eq!(between, 0, "a snapshot was taken during callback {i}");
        assert!(pair[1].started > pair[0].ended);
    }
}

#[actix_rt::test]
async fn a_file_that_vanished_fails_the_round_and_the_rest_come_once_it_is_gone() {
    let fx = Fixture::new();
    let real = fx.flush_some(KV, 1);
    // For two calls the engine lists a file it already deleted.
    let engine = faulty(&fx, |call, snap| {
        if call >= 2 {
            return Ok(snap);
        }
        let mut files = snap.files().to_vec();
        let real = &files[0];
        let gone = real.path().with_file_name("000000000099.sqi");
        files.insert(0, IndexFile::new(gone, 10, 1, 1)?);
        Ok(Box::new(Listed(snap.kv_id(), files, snap)))
    });
    let backup = ContinuousBackup::start(engine, Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(20)))
        .await
        .unwrap();
    let round = next_round(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(
        round.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        vec![real.name()]
    );
    let s = store_status(&backup, KV).await;
    assert_eq!(s.failed_rounds, 2);
    assert!(names(&fx.backup_dir(KV)).iter().all(|n| n != "000000000099.sqi"));
}

/// A snapshot whose listing is replaced, holding the real one alive.
struct Listed(KvId, Vec<IndexFile>, #[allow(dead_code)] Box<dyn Snapshot>);

impl Snapshot for Listed {
    fn kv_id(&self) -> KvId {
        self.0
    }
    fn files(&self) -> &[IndexFile] {
        &self.1
    }
}

/// A snapshot that reports a fixed generation, whatever it lists.
struct FixedGeneration(Box<dyn Snapshot>, u64);

impl Snapshot for FixedGeneration {
    fn kv_id(&self) -> KvId {
        self.0.kv_id()
    }
    fn files(&self) -> &[IndexFile] {
        self.0.files()
    }
    fn generation(&self) -> Option<u64> {
        Some(self.1)
    }
}

/// An idle round costs O(1): when the snapshot's generation is the one the
/// last round linked, the list is not compared at all. Shown with an engine
/// that breaks the contract (a new file under an old generation): the file
/// is not seen until the generation changes.
#[actix_rt::test]
async fn a_round_whose_generation_was_linked_does_not_read_the_list() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let generation = Arc::new(std::sync::atomic::AtomicU64::new(7));
    struct Stale {
        inner: RefEngine,
        generation: Arc<std::sync::atomic::AtomicU64>,
    }
    impl Engine for Stale {
        fn snapshot(&self, kv: KvId) -> continuous_backup::Result<Box<dyn Snapshot>> {
            let g = self.generation.load(Ordering::SeqCst);
            Ok(Box::new(FixedGeneration(self.inner.snapshot(kv)?, g)))
        }
    }
    let engine = Arc::new(Stale {
        inner: fx.engine.clone(),
        generation: Arc::clone(&generation),
    });
    let backup = ContinuousBackup::start(engine, Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(10)))
        .await
        .unwrap();
    assert_eq!(next_round(&mut rx, Duration::from_secs(5)).await.files.len(), 1);
    let second = fx.flush_some(KV, 1);
    for _ in 0..3 {
        let round = next_round(&mut rx, Duration::from_secs(5)).await;
        assert!(round.files.is_empty(), "same generation: the list was not read");
    }
    assert!(!names(&fx.backup_dir(KV)).contains(&second.name().to_owned()));
    generation.store(8, Ordering::SeqCst);
    let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files[0].name, second.name());
    backup.stop_backup(KV, false).await.unwrap();
}

/// An engine whose `backup_stopped` takes a while.
/// A reference engine whose `backup_stopped` takes 200 ms; counts the
/// hooks that returned.
struct SlowStop(RefEngine, Arc<std::sync::atomic::AtomicUsize>);

impl Engine for SlowStop {
    fn snapshot(&self, kv: KvId) -> continuous_backup::Result<Box<dyn Snapshot>> {
        self.0.snapshot(kv)
    }
    fn data_dir(&self) -> Option<&Path> {
        Engine::data_dir(&self.0)
    }
    fn generation(&self, kv: KvId) -> Option<u64> {
        Engine::generation(&self.0, kv)
    }
    fn files_backed_up(&self, kv: KvId, files: &[IndexFile]) {
        self.0.files_backed_up(kv, files)
    }
    fn backup_stopped(&self, kv: KvId) {
        std::thread::sleep(ms(200));
        self.0.backup_stopped(kv);
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A store stopped and started again at once (a flapping vBucket): the
/// engine's `backup_stopped` of the first start must not land after the
/// second start's first round, or the engine would think no backup runs
/// and delete a compaction input the backup never linked. Shown with quiet
/// ticks, which never tell the engine again that the backup is active.
#[actix_rt::test]
async fn backup_stopped_never_overtakes_the_next_start() {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    let config = Config {
        report_empty_rounds: false,
        ..Config::default()
    };
    let hooks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let engine = SlowStop(fx.engine.clone(), Arc::clone(&hooks));
    let backup = ContinuousBackup::start(Arc::new(engine), config, None).unwrap();
    let dir = fx.backup_dir(KV);
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, &dir, cb.clone(), Some(ms(30)))
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    backup.stop_backup(KV, false).await.unwrap();
    backup.start_backup(KV, &dir, cb, Some(ms(30))).await.unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    // The first stop's hook has returned (a late one would land after the
    // second start's first round, and the check below would fail).
    eventually(Duration::from_secs(10), "the first stop's hook returned", || {
        let hooks = Arc::clone(&hooks);
        async move { (hooks.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(()) }
    })
    .await;
    // A flush compacted away before the next tick: retained for the backup.
    let second = fx.flush_some(KV, 3);
    fx.engine.compact(KV).unwrap();
    assert_eq!(fx.engine.retained(KV).unwrap(), 1, "the backup is known active");
    let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    assert!(
        round.files.iter().any(|f| f.name == second.name()),
        "{:?}",
        round.files
    );
    backup.stop_backup(KV, false).await.unwrap();
}
