//! The round contract: what start links and reports, what later rounds
//! report, and how rounds are scheduled.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::refengine::read_index_file;
use continuous_backup::{Config, ContinuousBackup, KvId};
use tokio::sync::mpsc::UnboundedReceiver;

const KV: KvId = KvId(1);

#[actix_rt::test]
async fn start_links_all_files_and_calls_back_once() {
    let fx = Fixture::new();
    let sources: Vec<_> = (0..3).map(|_| fx.flush_some(KV, 10)).collect();
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    // A long interval: only the first round may run.
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let round = next_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.kv, KV);
    assert_eq!(round.files.len(), 3);
    for (src, reported) in sources.iter().zip(&round.files) {
        assert_eq!(reported.name, src.name());
        assert_eq!(
            (reported.len, reported.low_seqno, reported.high_seqno),
            (src.len(), src.low_seqno(), src.high_seqno())
        );
        let linked = fx.backup_dir(KV).join(&reported.name);
        assert_eq!(inode(&linked), inode(src.path()), "a hard link, not a copy");
        assert_eq!(std::fs::metadata(&linked).unwrap().len(), reported.len);
    }
    assert!(no_round_within(&mut rx, ms(300)).await, "exactly one callback");
    // The worker counts the round after the callback returns: wait for it.
    let s = status_when(&backup, KV, "the first round counted", |s| {
        s.rounds >= 1 && s.callbacks >= 1
    })
    .await;
    assert!(s.running);
    assert_eq!(
        (s.rounds, s.failed_rounds, s.files_linked, s.callbacks),
        (1, 0, 3, 1)
    );
    assert_eq!(s.bytes_linked, sources.iter().map(|f| f.len()).sum::<u64>());
}

#[actix_rt::test]
async fn new_flushes_appear_in_the_next_round_only() {
    let fx = Fixture::new();
    fx.flush_some(KV, 5);
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(40)))
        .await
        .unwrap();
    assert_eq!(next_round(&mut rx, Duration::from_secs(5)).await.files.len(), 1);

    // Rounds go on with empty lists while nothing is new.
    assert!(next_round(&mut rx, Duration::from_secs(5)).await.files.is_empty());
    let new = fx.flush_some(KV, 5);
    let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files.len(), 1);
    assert_eq!(round.files[0].name, new.name());
    for _ in 0..3 {
        assert!(
            next_round(&mut rx, Duration::from_secs(5)).await.files.is_empty(),
            "reported once"
        );
    }
}

#[actix_rt::test]
async fn compaction_after_link_keeps_backup() {
    let fx = Fixture::new();
    let sources: Vec<_> = (0..3).map(|_| fx.flush_some(KV, 20)).collect();
    let before: Vec<Vec<u8>> = sources.iter().map(|f| std::fs::read(f.path()).unwrap()).collect();
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(40)))
        .await
        .unwrap();
    let first = next_round(&mut rx, Duration::from_secs(5)).await;
    drop(first); // releases nothing: the snapshot went with the callback

    let merged = fx.engine.compact(KV).unwrap().expect("compacted");
    for src in &sources {
        assert!(
            !src.path().exists(),
            "compaction deleted its input {}",
            src.path().display()
        );
    }
    for (src, bytes) in sources.iter().zip(&before) {
        let kept = fx.backup_dir(KV).join(src.name());
        assert_eq!(&std::fs::read(&kept).unwrap(), bytes, "same bytes");
        let (footer, records) = read_index_file(&kept).unwrap();
        assert_eq!(
            (footer.low_seqno, footer.high_seqno),
            (src.low_seqno(), src.high_seqno())
        );
        assert_eq!(records.len(), 20);
    }
    let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files.len(), 1, "the compaction output is new");
    assert_eq!(round.files[0].name, merged.name());
}

#[actix_rt::test]
async fn a_failed_callback_gets_its_files_again_next_round() {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    let (cb, mut rx) = recorder_by_call(|call| match call {
        0 => Err("downstream not ready".into()),
        1 => panic!("callback bug"),
        _ => Ok(()),
    });
    let backup = fx.start(Config::default());
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(30)))
        .await
        .unwrap();
    let r1 = next_round(&mut rx, Duration::from_secs(5)).await;
    let r2 = next_round(&mut rx, Duration::from_secs(5)).await;
    let r3 = next_round(&mut rx, Duration::from_secs(5)).await;
    let r4 = next_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(r1.files.len(), 1);
    assert_eq!(r2.files, r1.files, "after an error: reported again");
    assert_eq!(r3.files, r1.files, "after a panic: reported again");
    assert!(r4.files.is_empty(), "acknowledged by the successful round");
    let s = store_status(&backup, KV).await;
    assert_eq!(s.failed_rounds, 2);
    assert!(s.running, "a panicking callback does not stop the store");
    assert_eq!(s.files_linked, 1, "linked once, reported three times");
}

/// With empty rounds reported, an idle store's rounds run without its
/// actor (the quiet ticker calls back on the pool): they still count as
/// rounds, a call that fails there is the store's failed round (counted,
/// shown, and the next round links and reports again), and a flush after
/// them is reported by the next round.
#[actix_rt::test]
async fn an_idle_stores_empty_rounds_count_and_one_that_fails_is_the_stores_failed_round() {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    let (cb, mut rx) = recorder_by_call(|call| match call {
        3 => Err("downstream not ready".into()),
        _ => Ok(()),
    });
    let backup = fx.start(Config::default());
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(10)))
        .await
        .unwrap();
    let first = next_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(first.files.len(), 1);
    for _ in 0..5 {
        let idle = next_round(&mut rx, Duration::from_secs(5)).await;
        assert!(idle.files.is_empty(), "nothing new");
    }
    // The sixth call is counted once it returned, after it was recorded.
    let s = status_when(&backup, KV, "6 rounds and 6 callbacks counted", |s| {
        s.rounds >= 6 && s.callbacks >= 6
    })
    .await;
    assert_eq!(s.failed_rounds, 1, "the failed empty call is a failed round");
    assert_eq!(s.last_error, None, "a later round succeeded");
    let flushed = fx.flush_some(KV, 1);
    let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files.len(), 1);
    assert_eq!(round.files[0].name, flushed.name());
    backup.stop_backup(KV, false).await.unwrap();
}

#[actix_rt::test]
async fn rounds_never_overlap_and_missed_ticks_do_not_burst() {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    // The first callback takes ten intervals; later ones are instant.
    let (cb, mut rx) = recorder_with(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            std::thread::sleep(ms(500));
        }
        Ok(())
    });
    let backup = fx.start(Config::default());
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(50)))
        .await
        .unwrap();
    let mut rounds = Vec::new();
    for _ in 0..5 {
        rounds.push(next_round(&mut rx, Duration::from_secs(5)).await);
    }
    for pair in rounds.windows(2) {
        assert!(pair[1].started >= pair[0].ended, "rounds overlapped");
    }
    // After the slow round, at most one catch-up round, then the interval.
    let slow_end = rounds[0].ended;
    let quick = rounds[1..]
        .iter()
        .filter(|r| r.started.duration_since(slow_end) < ms(40))
        .count();
    assert!(quick <= 1, "{quick} rounds fired in a burst after the stall");
    assert!(
        rounds[4].started.duration_since(slow_end) >= ms(140),
        "later rounds keep the interval"
    );
}

#[actix_rt::test]
async fn restart_reports_every_file_again_without_relinking() {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    fx.flush_some(KV, 3);
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb.clone(), Some(ms(50)))
        .await
        .unwrap();
    let first = next_round(&mut rx, Duration::from_secs(5)).await;
    backup.stop_backup(KV, false).await.unwrap();

    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(50)))
        .await
        .unwrap();
    let again = loop {
        let r = next_round(&mut rx, Duration::from_secs(5)).await;
        if r.files.len() == 2 {
            break r;
        }
    };
    assert_eq!(
        again.files, first.files,
        "the same names: the same inodes count as linked"
    );
    assert_eq!(
        names_but_rounds(&fx.backup_dir(KV)).len(),
        2,
        "nothing linked twice"
    );
    assert_eq!(store_status(&backup, KV).await.files_linked, 2);
}

#[actix_rt::test]
async fn start_is_idempotent_and_dirs_are_not_shared() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    fx.flush_some(KvId(2), 1);
    let backup = fx.start(Config::default());
    let (cb, _rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb.clone(), None)
        .await
        .unwrap();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb.clone(), None)
        .await
        .unwrap();
    let err = backup
        .start_backup(KV, fx.backup_dir(KvId(9)), cb.clone(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, continuous_backup::Error::AlreadyRunning { .. }),
        "{err}"
    );
    let err = backup
        .start_backup(KvId(2), fx.backup_dir(KV), cb, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, continuous_backup::Error::BackupDirInUse { holder: KV, .. }),
        "{err}"
    );
    assert!(
        !fx.backup_dir(KvId(9)).exists(),
        "nothing written for a refused start"
    );
}

#[actix_rt::test]
async fn ticks_of_many_stores_are_spread_over_the_interval() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let interval = ms(600);
    let (cb, mut rx) = recorder();
    let t0 = std::time::Instant::now();
    for kv in 0..32 {
        fx.engine.create_store(KvId(kv)).unwrap();
        backup
            .start_backup(KvId(kv), fx.backup_dir(KvId(kv)), cb.clone(), Some(interval))
            .await
            .unwrap();
    }
    // Each store's second round.
    let mut seen = std::collections::HashMap::new();
    let mut second = Vec::new();
    while second.len() < 32 {
        let r = next_round(&mut rx, Duration::from_secs(5)).await;
        let count = seen.entry(r.kv).or_insert(0);
        *count += 1;
        if *count == 2 {
            second.push(r.started.duration_since(t0));
        }
    }
    second.sort();
    let spread = second[31] - second[0];
    assert!(
        spread >= interval / 2,
        "second rounds all within {spread:?} of each other"
    );
}

fn quiet() -> Config {
    Config {
        report_empty_rounds: false,
        ..Config::default()
    }
}

/// Starts `KV` at a 10 ms interval with empty rounds quiet and a callback
/// whose first call fails; returns its first two rounds (the call that
/// failed and the retry).
async fn start_quiet_failing_first_call(
    fx: &Fixture,
) -> (ContinuousBackup, UnboundedReceiver<Round>, Round, Round) {
    let (cb, mut rx) = recorder_by_call(|call| match call {
        0 => Err("downstream not ready".into()),
        _ => Ok(()),
    });
    let backup = fx.start(quiet());
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(10)))
        .await
        .unwrap();
    let first = next_round(&mut rx, Duration::from_secs(5)).await;
    let retried = next_round(&mut rx, Duration::from_secs(5)).await;
    (backup, rx, first, retried)
}

/// With `report_empty_rounds` off, a tick with nothing new calls no
/// callback (counted in `quiet_rounds`), new files still come on the next
/// tick, and a failed round's files are reported again though nothing is
/// new.
#[actix_rt::test]
async fn with_empty_rounds_unreported_only_new_files_or_retries_call_back() {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    let (backup, mut rx, first, retried) = start_quiet_failing_first_call(&fx).await;
    assert_eq!(first.files.len(), 1);
    assert_eq!(
        retried.files, first.files,
        "nothing new, but unacknowledged: called"
    );
    // Quiet ticks come only after the retried round was counted.
    let s = status_when(&backup, KV, "5 quiet ticks counted", |s| s.quiet_rounds >= 5).await;
    assert!(
        no_round_within(&mut rx, ms(150)).await,
        "idle ticks call no callback"
    );
    assert_eq!(s.rounds, 2);
    let flushed = fx.flush_some(KV, 1);
    let round = next_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files.len(), 1);
    assert_eq!(round.files[0].name, flushed.name());
    // A final round is asked for: it calls back even with nothing new.
    backup.stop_backup(KV, true).await.unwrap();
    let last = next_round(&mut rx, Duration::from_secs(5)).await;
    assert!(last.files.is_empty());
}

/// With `report_empty_rounds` off, a start of an empty store still calls
/// its callback (which hands it the metadata writer), and again after a
/// failed call, until one succeeded; then its empty rounds are quiet.
/// Regression: an empty store's first round reported nothing, so the
/// callback was never called (scale_bench --quiet-idle waited for it).
#[actix_rt::test]
async fn with_empty_rounds_unreported_an_empty_stores_start_still_calls_back() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    let (backup, mut rx, first, retried) = start_quiet_failing_first_call(&fx).await;
    assert!(first.files.is_empty() && retried.files.is_empty());
    assert!(
        no_round_within(&mut rx, ms(150)).await,
        "once a call succeeded, idle ticks call no callback"
    );
    backup.stop_backup(KV, false).await.unwrap();
}

/// Compaction changes the file list without anything to report in the
/// quiet mode's terms, yet the link set must learn the new file: the next
/// tick runs a round, links the compaction output and reports it.
#[actix_rt::test]
async fn with_empty_rounds_unreported_a_compaction_output_is_still_linked() {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    fx.flush_some(KV, 3);
    let backup = fx.start(quiet());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(10)))
        .await
        .unwrap();
    assert_eq!(next_round(&mut rx, Duration::from_secs(5)).await.files.len(), 2);
    let output = fx.engine.compact(KV).unwrap().unwrap();
    let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files[0].name, output.name());
    backup.stop_backup(KV, false).await.unwrap();
}

/// Quiet ticks keep the interval: after the first round's spread offset, a
/// store ticks once per interval, not at its offset again and again.
#[actix_rt::test]
async fn quiet_ticks_come_once_per_interval() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let backup = fx.start(quiet());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(20)))
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    let quiet_rounds = |s: continuous_backup::Status| s.store(KV).unwrap().quiet_rounds;
    let before = quiet_rounds(backup.status().await.unwrap());
    let window = std::time::Instant::now();
    actix_rt::time::sleep(ms(400)).await;
    let ticks = quiet_rounds(backup.status().await.unwrap()) - before;
    let most = window.elapsed().as_millis() as u64 / 20 + 2;
    assert!(ticks <= most, "{ticks} quiet ticks in 400 ms at a 20 ms interval");
    backup.stop_backup(KV, false).await.unwrap();
}

/// With `report_empty_rounds` off, an engine that gives no generations has
/// every tick look at its files on the linker pool, and still no empty
/// round calls back.
#[actix_rt::test]
async fn quiet_rounds_call_no_callback_on_an_engine_without_generations() {
    use continuous_backup::{Engine, IndexFile, Snapshot};
    struct Plain(Box<dyn Snapshot>);
    impl Snapshot for Plain {
        fn kv_id(&self) -> KvId {
            self.0.kv_id()
        }
        fn files(&self) -> &[IndexFile] {
            self.0.files()
        }
    }
    struct NoGenerations(continuous_backup::refengine::RefEngine);
    impl Engine for NoGenerations {
        fn snapshot(&self, kv: KvId) -> continuous_backup::Result<Box<dyn Snapshot>> {
            Ok(Box::new(Plain(self.0.snapshot(kv)?)))
        }
    }
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let engine = Arc::new(NoGenerations(fx.engine.clone()));
    let backup = continuous_backup::ContinuousBackup::start(engine, quiet(), None).unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(10)))
        .await
        .unwrap();
    assert_eq!(next_round(&mut rx, Duration::from_secs(5)).await.files.len(), 1);
    assert!(
        no_round_within(&mut rx, ms(200)).await,
        "an empty round called back"
    );
    assert!(store_status(&backup, KV).await.quiet_rounds >= 5);
    let flushed = fx.flush_some(KV, 1);
    let round = next_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files[0].name, flushed.name());
    backup.stop_backup(KV, false).await.unwrap();
}

/// A round that finds the engine's generation unchanged calls back without
/// the linker, on a snapshot the callback thread takes. That snapshot must
/// still be the linked one: a callback is never handed a snapshot listing a
/// file that no round reported (a server recording "backed up through the
/// snapshot's seqno" would claim a flush the backup dir lacks).
#[actix_rt::test]
async fn a_callbacks_snapshot_never_lists_a_file_not_reported_yet() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    // One callback thread, and another store whose callbacks take 2 ms: a
    // tick's job often waits behind one, while the writer flushes.
    let backup = fx.start(Config {
        callback_threads: 1,
        ..Config::default()
    });
    let slow = KvId(2);
    fx.flush_some(slow, 1);
    let (slow_cb, _slow_rounds) = recorder_with(|_| {
        std::thread::sleep(ms(2));
        Ok(())
    });
    backup
        .start_backup(slow, fx.backup_dir(slow), slow_cb, Some(ms(1)))
        .await
        .unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(ms(1)))
        .await
        .unwrap();
    let engine = fx.engine.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..200u32 {
            engine.put(KV, format!("k{i}").as_bytes(), b"v").unwrap();
            engine.flush(KV).unwrap();
            std::thread::sleep(ms(2));
        }
    });
    blocking(move || writer.join().unwrap()).await;
    // Once the writer is done, rounds find nothing new: wait for one.
    let mut rounds = Vec::new();
    loop {
        let round = next_round(&mut rx, Duration::from_secs(10)).await;
        let empty = round.files.is_empty();
        rounds.push(round);
        if empty {
            break;
        }
    }
    backup.stop_backup(KV, true).await.unwrap();
    rounds.extend(std::iter::from_fn(|| rx.try_recv().ok()));

    let mut reported = std::collections::HashSet::new();
    let (mut empty, mut with_files) = (0, 0);
    for round in rounds {
        if round.files.is_empty() {
            empty += 1;
        } else {
            with_files += 1;
        }
        reported.extend(round.files.iter().map(|f| f.name.clone()));
        for f in &round.snapshot {
            assert!(
                reported.contains(f.name()),
                "a callback's snapshot listed {}, which no round reported",
                f.name()
            );
        }
    }
    assert_eq!(reported.len(), 201, "every flush reported");
    assert!(
        empty > 0 && with_files > 1,
        "{empty} empty rounds, {with_files} with files"
    );
}
