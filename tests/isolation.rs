//! One store's trouble stays with that store.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::{Config, KvId};
use parking_lot::Mutex;

#[actix_rt::test]
async fn blocking_callback_does_not_delay_other_stores() {
    let fx = Fixture::new();
    let (slow, fast) = (KvId(1), KvId(2));
    fx.flush_some(slow, 1);
    fx.flush_some(fast, 1);
    let backup = fx.start(Config {
        linker_threads: 1,
        ..Config::default()
    });
    // The slow store's callback blocks until the test releases it.
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let (blocked_tx, blocked_rx) = mpsc::channel::<()>();
    let blocked_tx = Mutex::new(blocked_tx);
    let (slow_cb, _slow_rx) = recorder_with(move |_| {
        blocked_tx.lock().send(()).ok();
        gate.lock().recv().ok();
        Ok(())
    });
    backup
        .start_backup(slow, fx.backup_dir(slow), slow_cb, Some(ms(20)))
        .await
        .unwrap();
    blocking(move || blocked_rx.recv_timeout(Duration::from_secs(5)).unwrap()).await;

    let (fast_cb, mut fast_rx) = recorder();
    backup
        .start_backup(fast, fx.backup_dir(fast), fast_cb, Some(ms(50)))
        .await
        .unwrap();
    // Were the fast store held up by the blocked one, these would never come.
    for _ in 0..6 {
        next_round(&mut fast_rx, Duration::from_secs(10)).await;
    }

    // Stopping the blocked store returns, the callback still blocked.
    actix_rt::time::timeout(Duration::from_secs(10), backup.stop_backup(slow, false))
        .await
        .expect("stop waited for a blocked callback")
        .unwrap();
    let status = backup.status().await.unwrap();
    assert!(status.store(fast).unwrap().running);
    assert!(!status.store(slow).unwrap().running);
    release.send(()).unwrap();
}

#[actix_rt::test]
async fn a_callback_that_keeps_panicking_backs_off_and_other_stores_run() {
    let fx = Fixture::new();
    let (bad, good) = (KvId(3), KvId(4));
    fx.flush_some(bad, 1);
    fx.flush_some(good, 1);
    let backup = fx.start(Config {
        max_backoff: Duration::from_secs(60),
        ..Config::default()
    });
    let (bad_cb, _bad_rx) = recorder_with(|_| panic!("callback bug"));
    let (good_cb, mut good_rx) = recorder();
    backup
        .start_backup(bad, fx.backup_dir(bad), bad_cb, Some(ms(10)))
        .await
        .unwrap();
    backup
        .start_backup(good, fx.backup_dir(good), good_cb, Some(ms(10)))
        .await
        .unwrap();
    // A second of rounds for the good store: 10 ms apart.
    let t0 = std::time::Instant::now();
    let mut good_rounds = 0;
    while t0.elapsed() < Duration::from_secs(1) {
        next_round(&mut good_rx, Duration::from_secs(10)).await;
        good_rounds += 1;
    }
    assert!(store_status(&backup, bad).await.running);
    // Stopped, its counters hold still (a round in flight is abandoned).
    backup.stop_backup(bad, false).await.unwrap();
    let status = backup.status().await.unwrap();
    let b = status.store(bad).unwrap();
    // Without backoff the bad store would fail ~100 times in that second;
    // with doubling waits from 10 ms it fails about 7 times.
    assert!(
        b.failed_rounds >= 3 && b.failed_rounds <= 12,
        "{} failed rounds",
        b.failed_rounds
    );
    assert_eq!(b.failed_rounds, b.rounds, "every round of the bad store failed");
    assert!(b.last_error.as_deref().unwrap().contains("callback bug"));
    assert!(good_rounds > b.rounds as usize, "the good store kept its pace");
    assert_eq!(status.store(good).unwrap().failed_rounds, 0);
}
