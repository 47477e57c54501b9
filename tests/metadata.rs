//! The metadata writer: `metadata.<n>.dat`, numbered in call order, durable,
//! never reused, continuing across restarts.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::{metadata_file_name, Config, ContinuousBackup, Error, KvId, MetadataWriter};

const KV: KvId = KvId(7);

/// Starts a backup of KV in a fresh component and returns the writer its
/// first round got.
async fn writer_of(fx: &Fixture) -> (ContinuousBackup, MetadataWriter) {
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let round = next_round(&mut rx, Duration::from_secs(5)).await;
    (backup, round.writer)
}

fn read_n(dir: &Path, n: u64) -> String {
    std::fs::read_to_string(dir.join(metadata_file_name(n))).unwrap()
}

#[actix_rt::test]
async fn metadata_n_is_1_2_3_in_call_order() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    let (backup, writer) = writer_of(&fx).await;
    let ns = blocking(move || {
        (0..5)
            .map(|i| writer.write(&format!("record {i}")).unwrap())
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(ns, vec![1, 2, 3, 4, 5]);
    for (i, n) in ns.iter().enumerate() {
        assert_eq!(read_n(&fx.backup_dir(KV), *n), format!("record {i}"));
    }
    let s = store_status(&backup, KV).await;
    assert_eq!((s.metadata_writes, s.next_metadata_n), (5, 6));
}

#[actix_rt::test]
async fn metadata_from_many_threads_is_complete_and_never_reuses_n() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    let (_backup, writer) = writer_of(&fx).await;
    let written = blocking(move || {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    let mut last = 0;
                    for i in 0..25 {
                        let text = format!("thread {t} record {i} {}", "x".repeat(i * 100));
                        let n = w.write(&text).unwrap();
                        assert!(n > last, "one thread's writes land in its call order");
                        last = n;
                        mine.push((n, text));
                    }
                    mine
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await;
    let ns: BTreeSet<u64> = written.iter().map(|(n, _)| *n).collect();
    assert_eq!(ns, (1..=100).collect(), "1..=100, no hole, no reuse");
    for (n, text) in &written {
        assert_eq!(&read_n(&fx.backup_dir(KV), *n), text, "metadata.{n}.dat is whole");
    }
    let leftovers: Vec<_> = names(&fx.backup_dir(KV))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn metadata_numbers_survive_restart() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    // Two separate actix systems on the same dirs: a restart of the component.
    for (run, expected) in [(1, vec![1, 2, 3]), (2, vec![4, 5, 6])] {
        let got = actix::System::new().block_on(async {
            let (backup, writer) = writer_of(&fx).await;
            let ns = blocking(move || {
                (0..3)
                    .map(|i| writer.write(&format!("run {run} #{i}")).unwrap())
                    .collect::<Vec<_>>()
            })
            .await;
            backup.shutdown().await.unwrap();
            ns
        });
        assert_eq!(got, expected, "run {run}");
    }
    assert_eq!(read_n(&fx.backup_dir(KV), 1), "run 1 #0");
    assert_eq!(read_n(&fx.backup_dir(KV), 6), "run 2 #2");
}

#[actix_rt::test]
async fn blocking_write_in_async_code_is_refused_and_write_async_works() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    let (_backup, writer) = writer_of(&fx).await;
    assert!(matches!(writer.write("x"), Err(Error::BlockingInAsyncContext)));
    assert_eq!(writer.write_async("from async").await.unwrap(), 1);
    assert!(matches!(
        writer.write_async("").await,
        Err(Error::MetadataEmpty { .. })
    ));
    assert_eq!(names_but_rounds(&fx.backup_dir(KV)), vec![metadata_file_name(1)]);
}

#[actix_rt::test]
async fn a_stopped_backup_refuses_writes_and_a_restart_continues_numbering() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    let (backup, writer) = writer_of(&fx).await;
    let w = writer.clone();
    assert_eq!(blocking(move || w.write("before stop")).await.unwrap(), 1);
    backup.stop_backup(KV, false).await.unwrap();
    let w = writer.clone();
    let err = blocking(move || w.write("after stop")).await.unwrap_err();
    assert!(matches!(err, Error::BackupStopped { kv: KV }), "{err}");

    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, fx.backup_dir(KV), cb, None)
        .await
        .unwrap();
    let new_writer = next_round(&mut rx, Duration::from_secs(5)).await.writer;
    assert_eq!(
        blocking(move || new_writer.write("after restart")).await.unwrap(),
        2
    );
    assert!(matches!(
        writer.write_async("old writer").await,
        Err(Error::BackupStopped { .. })
    ));
    let _keep = Arc::new(backup);
}
