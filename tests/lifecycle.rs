//! Stop and start of one store in quick succession, final rounds, and the
//! supervisor's restart of a failed store.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
use continuous_backup::faults::{self, FsOp};
use continuous_backup::{CallbackFactory, Config, ContinuousBackup, Error, KvId, VbucketState};
use parking_lot::Mutex;

const KV: KvId = KvId(5);

#[actix_rt::test]
async fn a_failed_final_round_fails_the_stop() {
    let fx = Fixture::new();
    fx.flush_some(KV, 2);
    let (cb, mut rx) = recorder_by_call(|call| match call {
        0 => Ok(()),
        _ => Err("downstream down".into()),
    });
    let backup = fx.start(Config::default());
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    fx.flush_some(KV, 2);
    let err = backup.stop_backup(KV, true).await.unwrap_err();
    assert!(
        matches!(&err, Error::FinalRoundFailed { kv: KV, reason } if reason.contains("downstream down")),
        "{err}"
    );
    assert!(!store_status(&backup, KV).await.running);
}

#[actix_rt::test]
async fn callbacks_of_a_stopped_start_and_the_next_never_overlap() {
    let fx = Fixture::new();
    fx.flush_some(KV, 2);
    let backup = fx.start(Config::default());
    let (active, max_active, calls) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let (a, m, n) = (active.clone(), max_active.clone(), calls.clone());
    // The first callback blocks until released; the others return at once.
    let (cb, mut rx) = recorder_with(move |_| {
        m.fetch_max(a.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            gate.lock().recv().ok();
        }
        a.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    });
    backup
        .start_backup(KV, fx.backup_dir(KV), cb.clone(), Some(ms(30)))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the first callback runs", || {
        let calls = Arc::clone(&calls);
        async move { (calls.load(Ordering::SeqCst) > 0).then_some(()) }
    })
    .await;
    backup.stop_backup(KV, false).await.unwrap();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(30)))
        .await
        .unwrap();
    // The new start's first callback waits for the blocked one.
    assert!(
        no_round_within(&mut rx, ms(300)).await,
        "a callback ran beside the blocked one"
    );
    release.send(()).unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await; // the blocked one
    let next = next_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(
        next.files.len(),
        1,
        "the new start reports what the abandoned round did not"
    );
    assert_eq!(max_active.load(Ordering::SeqCst), 1);
}

#[actix_rt::test]
async fn files_of_a_failed_round_are_reported_after_stop_start_and_compaction() {
    let fx = Fixture::new();
    let a = fx.flush_some(KV, 2);
    let b = fx.flush_some(KV, 2);
    let (cb, mut rx) = recorder_by_call(|call| match call {
        0 => Err("not ready".into()),
        _ => Ok(()),
    });
    let backup = fx.start(Config::default());
    backup
        .start_backup(KV, fx.backup_dir(KV), cb.clone(), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(next_round(&mut rx, Duration::from_secs(5)).await.files.len(), 2);
    backup.stop_backup(KV, false).await.unwrap();
    let merged = fx.engine.compact(KV).unwrap().unwrap();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let round = next_round(&mut rx, Duration::from_secs(5)).await;
    let mut names: Vec<_> = round.files.iter().map(|f| f.name.clone()).collect();
    names.sort();
    let mut want = vec![a.name().to_owned(), b.name().to_owned(), merged.name().to_owned()];
    want.sort();
    assert_eq!(names, want);
}

#[actix_rt::test]
async fn a_reused_file_name_of_a_recreated_store_is_linked_while_running() {
    let fx = Fixture::new();
    fx.engine.put(KV, b"a", b"x").unwrap();
    let old = fx.engine.flush(KV).unwrap().unwrap();
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(30)))
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    // Dropped and created again between two rounds: same name, length and
    // seqno range, other bytes.
    fx.engine.drop_store(KV).unwrap();
    fx.engine.put(KV, b"a", b"y").unwrap();
    let new = fx.engine.flush(KV).unwrap().unwrap();
    assert_eq!(
        (new.name(), new.len(), new.high_seqno()),
        (old.name(), old.len(), old.high_seqno())
    );
    let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files[0].name, format!("{}~1", old.name()));
    assert_eq!(
        inode(&fx.backup_dir(KV).join(&round.files[0].name)),
        inode(new.path())
    );
}

#[actix_rt::test]
async fn an_interval_too_long_to_schedule_is_refused() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let (cb, _rx) = recorder();
    let err = backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(Duration::MAX))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                field: "interval",
                ..
            }
        ),
        "{err}"
    );
    assert!(!fx.backup_dir(KV).exists());
}

#[actix_rt::test]
async fn a_panicking_callback_factory_refuses_the_start_and_the_supervisor_lives() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    let factory: CallbackFactory = Arc::new(|kv| {
        if kv == KV {
            panic!("factory bug");
        }
        recorder().0
    });
    let config = Config {
        backup_root: Some(fx.backup_root()),
        ..Config::default()
    };
    let backup = ContinuousBackup::start(Arc::new(fx.engine.clone()), config, Some(factory)).unwrap();
    let err = backup
        .set_vbucket_state(KV, VbucketState::Active)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Panicked {
                what: "callback factory",
                ..
            }
        ),
        "{err}"
    );
    fx.engine.create_store(KvId(6)).unwrap();
    backup
        .set_vbucket_state(KvId(6), VbucketState::Active)
        .await
        .unwrap();
    assert_eq!(backup.status().await.unwrap().running(), vec![KvId(6)]);
}

#[actix_rt::test]
async fn a_repeated_active_state_is_a_no_op() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let (cb, rx) = recorder();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let factory: CallbackFactory = Arc::new(move |_| cb.clone());
    let config = Config {
        backup_root: Some(fx.backup_root()),
        interval: Duration::from_secs(60),
        ..Config::default()
    };
    let backup = ContinuousBackup::start(Arc::new(fx.engine.clone()), config, Some(factory)).unwrap();
    let mut rx = rx.lock().take().unwrap();
    backup.set_vbucket_state(KV, VbucketState::Active).await.unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    for _ in 0..10 {
        backup.set_vbucket_state(KV, VbucketState::Active).await.unwrap();
    }
    assert!(
        no_round_within(&mut rx, ms(300)).await,
        "a repeat restarted the store"
    );
    let s = backup.status().await.unwrap();
    assert_eq!(
        (s.store(KV).unwrap().rounds, s.store(KV).unwrap().restarts),
        (1, 0)
    );
}

/// Starts a backup of KV while every fsync of `failing` fails with EIO:
/// nothing may be reported, the store restarts, and once the fault is gone
/// it catches up with the file it could not report.
async fn nothing_is_reported_until_an_fsync_of(failing: std::path::PathBuf, fx: &Fixture) {
    let file = fx.flush_some(KV, 3);
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    let fault = faults::inject(&failing, FsOp::SyncDir, 5 /* EIO */);
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(30)))
        .await
        .unwrap();
    assert!(
        no_round_within(&mut rx, ms(400)).await,
        "files were reported while {} could not be fsynced",
        failing.display()
    );
    let s = store_status(&backup, KV).await;
    assert!(s.failed_rounds >= 1 && s.restarts >= 1, "{s:?}");
    assert!(s.last_error.as_deref().unwrap_or("").contains("fsync"), "{s:?}");
    drop(fault);
    let round = next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(round.files[0].name, file.name(), "caught up after the restart");
    assert!(store_status(&backup, KV).await.running);
}

/// The round's dir fsync fails (the dir's own entry is synced through its
/// parent, so every SyncDir of the dir itself is a round's).
#[actix_rt::test]
async fn nothing_is_reported_when_the_dir_fsync_fails_and_the_store_recovers_by_restart() {
    let fx = Fixture::new();
    nothing_is_reported_until_an_fsync_of(fx.backup_dir(KV), &fx).await;
}

/// A backup dir's own entry is made durable by an fsync of its parent
/// (shared by the dirs opened under it) before anything in it is reported.
#[actix_rt::test]
async fn nothing_is_reported_before_the_backup_dirs_entry_in_its_parent_is_durable() {
    let fx = Fixture::new();
    nothing_is_reported_until_an_fsync_of(fx.backup_root(), &fx).await;
}

#[actix_rt::test]
async fn shutdown_is_bounded_completes_queued_writes_and_leaves_no_temp_files() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let (blocked_cb, _brx) = recorder_with(move |_| {
        gate.lock().recv().ok();
        Ok(())
    });
    fx.flush_some(KvId(0), 1);
    backup
        .start_backup(KvId(0), fx.backup_dir(KvId(0)), blocked_cb, Some(ms(20)))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for kv in 1..6 {
        let kv = KvId(kv);
        fx.flush_some(kv, 1);
        let (cb, mut rx) = recorder();
        backup
            .start_backup(kv, fx.backup_dir(kv), cb, Some(ms(20)))
            .await
            .unwrap();
        writers.push((kv, next_round(&mut rx, Duration::from_secs(5)).await.writer));
    }
    // Writers keep writing while the component shuts down.
    let threads: Vec<_> = writers
        .into_iter()
        .map(|(kv, w)| {
            std::thread::spawn(move || {
                let mut results = Vec::new();
                for i in 0..100_000 {
                    let r = w.write(&format!("{kv}-{i}"));
                    let failed = r.is_err();
                    results.push((i, r));
                    if failed {
                        break;
                    }
                }
                (kv, results)
            })
        })
        .collect();
    actix_rt::time::sleep(ms(100)).await;
    actix_rt::time::timeout(Duration::from_secs(10), backup.shutdown())
        .await
        .expect("shutdown waited for a blocked callback")
        .unwrap();
    // Every writer must be refused soon after shutdown (each would write
    // 100,000 records, about 100 s, if its session were left open).
    let joined = blocking(move || threads.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>());
    let results = actix_rt::time::timeout(Duration::from_secs(20), joined)
        .await
        .expect("a metadata writer kept working after shutdown");
    for (kv, results) in results {
        let dir = fx.backup_dir(kv);
        for (i, r) in results {
            match r {
                Ok(n) => assert_eq!(
                    std::fs::read_to_string(dir.join(continuous_backup::metadata_file_name(n))).unwrap(),
                    format!("{kv}-{i}")
                ),
                Err(Error::BackupStopped { .. }) => {}
                Err(e) => panic!("kv {kv}: write {i} failed: {e}"),
            }
        }
        assert!(
            names(&dir).iter().all(|n| !n.starts_with('.')),
            "temp files left in {}",
            dir.display()
        );
    }
    assert!(backup.status().await.unwrap().running().is_empty());
    let (cb, _rx) = recorder();
    let err = backup
        .start_backup(KvId(9), fx.backup_dir(KvId(9)), cb, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ComponentStopped), "{err}");
    release.send(()).unwrap();
}
