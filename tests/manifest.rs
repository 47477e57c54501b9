//! Round manifests: what each round's files declare is in the backup dir,
//! durable before the callback is told, at one fsync more per round.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use continuous_backup::faults::power::Recording;
use continuous_backup::manifest::{parse_round_file_name, RoundRecord};
use continuous_backup::refengine::RefEngine;
use continuous_backup::restore::{restore, BackupRoot, RefFormat, RefTarget};
use continuous_backup::{Config, Holds, KvId};

const KV: KvId = KvId(2);

fn rounds(dir: &Path) -> Vec<RoundRecord> {
    let mut found: Vec<(u64, RoundRecord)> = names(dir)
        .iter()
        .filter_map(|n| {
            let r = parse_round_file_name(n)?;
            let bytes = std::fs::read(dir.join(n)).unwrap();
            Some((r, serde_json::from_slice(&bytes).unwrap()))
        })
        .collect();
    found.sort_by_key(|(r, _)| *r);
    found.into_iter().map(|(_, rec)| rec).collect()
}

#[actix_rt::test]
async fn every_reported_file_is_declared_in_a_manifest_before_the_callback_runs() {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    let dir = fx.backup_dir(KV);
    let seen_dir = dir.clone();
    let (cb, mut rx) = recorder_with(move |round| {
        // Inside the callback: the manifest is already there.
        let declared: Vec<_> = rounds(&seen_dir).into_iter().flat_map(|r| r.added).collect();
        for f in &round.files {
            let d = declared
                .iter()
                .find(|d| d.name == f.name)
                .ok_or_else(|| format!("{} reported but not declared", f.name))?;
            assert_eq!(
                (d.len, d.low_seqno, d.high_seqno),
                (f.len, f.low_seqno, f.high_seqno)
            );
        }
        Ok(())
    });
    let backup = fx.start(Config::default());
    backup.start_backup(KV, &dir, cb, Some(ms(20))).await.unwrap();
    let first = next_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(first.files.len(), 1);
    fx.flush_some(KV, 2);
    next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    // An overwrite, so the compaction keeps fewer versions than its range.
    fx.engine.put(KV, b"key-0", b"again").unwrap();
    fx.engine.flush(KV).unwrap();
    fx.engine.compact(KV).unwrap();
    // Until a round has linked the compaction output (a liveness bound).
    let files = fx.engine.files(KV).unwrap();
    let widest = files
        .iter()
        .max_by_key(|f| f.high_seqno() - f.low_seqno())
        .unwrap();
    let compacted = widest.name().to_owned();
    loop {
        let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
        if round.files.iter().any(|f| f.name == compacted) {
            break;
        }
    }
    backup.stop_backup(KV, false).await.unwrap();

    let recs = rounds(&dir);
    assert!(recs.len() >= 3, "{recs:?}");
    assert!(
        recs[0].full && recs.iter().skip(1).all(|r| !r.full),
        "the first round of a start lists all"
    );
    assert!(recs.iter().all(|r| r.complete && r.engine_format == "ref-sqi-1"));
    assert_eq!(recs[0].first_seqno, Some(1));
    let holds: Vec<Option<Holds>> = recs
        .iter()
        .flat_map(|r| r.added.iter().map(|f| f.holds))
        .collect();
    assert!(holds.contains(&Some(Holds::EveryVersion)), "flushes: {holds:?}");
    assert!(
        holds.contains(&Some(Holds::NewestPerKey)),
        "the compaction: {holds:?}"
    );
    for pair in recs.windows(2) {
        assert_eq!(pair[1].round, pair[0].round + 1);
        assert!(pair[1].time_ms >= pair[0].time_ms, "time never goes back");
    }
}

#[actix_rt::test]
async fn round_numbers_continue_across_restarts_of_the_component() {
    let fx = Fixture::new();
    let dir = fx.backup_dir(KV);
    for i in 0..3 {
        fx.flush_some(KV, 1);
        let backup = fx.start(Config::default());
        fx.back_up_once(&backup, KV).await;
        backup.shutdown().await.unwrap();
        let recs = rounds(&dir);
        assert_eq!(
            recs.iter().map(|r| r.round).collect::<Vec<_>>(),
            (1..=i as u64 + 1).collect::<Vec<_>>()
        );
        assert!(recs.last().unwrap().full, "a new start lists its whole snapshot");
    }
}

#[actix_rt::test]
async fn a_round_with_new_files_costs_one_fsync_more_than_its_links() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let backup_root = tempfile::tempdir().unwrap();
    let recording = Recording::start(backup_root.path());
    let dir = backup_root.path().join("2");
    let (cb, mut rx) = recorder();
    let backup = fx.start(Config::default());
    backup.start_backup(KV, &dir, cb, Some(ms(20))).await.unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    let before = recording.fsyncs();
    fx.flush_some(KV, 1);
    next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    let after = recording.fsyncs();
    backup.stop_backup(KV, false).await.unwrap();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "the manifest's file fsync and the round's dir fsync"
    );
}

#[actix_rt::test]
async fn a_dir_without_manifests_restores_as_before() {
    let fx = Fixture::new();
    fx.flush_some(KV, 4);
    let backup = fx.start(Config::default());
    fx.back_up_once(&backup, KV).await;
    let dir = fx.backup_dir(KV);
    for n in names(&dir) {
        if parse_round_file_name(&n).is_some() {
            std::fs::remove_file(dir.join(n)).unwrap();
        }
    }
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let out = fx.tmp.path().join("restored");
    restore(&root, &[KV], 4, &out, &RefFormat, &RefTarget, &mut |_| {}).unwrap();
    let engine = RefEngine::open(&out).unwrap();
    assert_eq!(engine.high_seqno(KV).unwrap(), 4);
}

/// Regression: the first start of a version that writes manifests, on a dir
/// written before, lists only the live files; the history linked before
/// (compacted away since) must stay restorable.
#[actix_rt::test]
async fn history_from_before_manifests_stays_restorable_after_an_upgrade() {
    let fx = Fixture::new();
    fx.engine.put(KV, b"k", b"old").unwrap(); // @1
    fx.engine.flush(KV).unwrap();
    fx.engine.put(KV, b"k", b"new").unwrap(); // @2
    fx.engine.flush(KV).unwrap();
    let backup = fx.start(Config::default());
    fx.back_up_once(&backup, KV).await;
    let dir = fx.backup_dir(KV);
    for n in names(&dir) {
        if parse_round_file_name(&n).is_some() {
            std::fs::remove_file(dir.join(n)).unwrap(); // as an old version wrote it
        }
    }
    fx.engine.compact(KV).unwrap(); // 1..=2 holding k@2 only
    fx.flush_some(KV, 1); // @3
    fx.back_up_once(&backup, KV).await; // the upgraded start: manifest of the live files
    assert_eq!(rounds(&dir).len(), 1);
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let out = fx.tmp.path().join("at-1");
    restore(&root, &[KV], 1, &out, &RefFormat, &RefTarget, &mut |_| {}).unwrap();
    let got = RefEngine::open(&out).unwrap().get(KV, b"k").unwrap();
    assert_eq!(got.as_deref(), Some(&b"old"[..]));
}
