//! Point-in-time restore on a real engine, lsm-tree, against an oracle:
//! a writer puts and deletes keys, flushes, compacts and compacts
//! everything into the last level (delete markers evicted) while backups
//! run every few ms; the tree's own counter hands out seqnos (from 0, and
//! sparse: flushes and compactions take some too). Then, for random seqnos
//! plus every end of a range `inspect` calls exact and the latest, the
//! store restored from the backup alone into a fresh tree, read back with
//! lsm-tree's own API, equals the recorded history key by key.
#![cfg(feature = "lsm-tree")]
#![expect(clippy::print_stdout, reason = "the suite prints its counts")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use continuous_backup::lsm::lsm_tree::{AbstractTree, Config as TreeConfig, Guard, SequenceNumberCounter};
use continuous_backup::lsm::{LsmEngine, LsmFormat, LsmOptions, LsmTarget};
use continuous_backup::restore::{inspect, restore, verify, BackupRoot, RefTarget};
use continuous_backup::{Config, ContinuousBackup, Engine, Error, KvId};

const KEYS: u64 = 60;
const STORES: u16 = 2;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:02}").into_bytes()
}

/// Drives the workload for `run` on `engine`, backups running every 4 ms
/// into `fx`'s backup root; returns each store's history.
async fn drive(fx: &Fixture, engine: Arc<LsmEngine>, run: Duration, seed: u64) -> Vec<History> {
    let backup = ContinuousBackup::start(engine.clone() as Arc<dyn Engine>, Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    for kv in 0..STORES {
        engine.create_store(KvId(kv)).unwrap();
        backup
            .start_backup(KvId(kv), fx.backup_dir(KvId(kv)), cb.clone(), Some(ms(4)))
            .await
            .unwrap();
    }
    let mut first = std::collections::BTreeSet::new();
    while first.len() < STORES as usize {
        first.insert(next_round(&mut rx, Duration::from_secs(10)).await.kv);
    }
    let writer = engine.clone();
    let histories = blocking(move || {
        let engine = writer;
        let mut rng = Rng(seed);
        let mut histories = vec![History::new(); STORES as usize];
        let start = Instant::now();
        let mut op = 0u64;
        while start.elapsed() < run {
            op += 1;
            let kv = KvId(rng.below(u64::from(STORES)) as u16);
            let k = key(rng.below(KEYS));
            let h = &mut histories[kv.0 as usize];
            match rng.below(1000) {
                0..=629 => {
                    let v = format!("v{op}").into_bytes();
                    let s = engine.put(kv, &k, &v).unwrap();
                    h.push((s, k, Some(v)));
                }
                630..=899 => {
                    let s = engine.delete(kv, &k).unwrap();
                    h.push((s, k, None));
                }
                900..=969 => engine.flush(kv).unwrap(),
                970..=989 => {
                    engine.flush(kv).unwrap();
                    engine.compact(kv).unwrap();
                }
                _ => {
                    // Everything into the last level: delete markers go.
                    engine.flush(kv).unwrap();
                    engine.major_compact(kv).unwrap();
                }
            }
            if op.is_multiple_of(40) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for kv in 0..STORES {
            engine.flush(KvId(kv)).unwrap();
        }
        histories
    })
    .await;
    for kv in 0..STORES {
        backup.stop_backup(KvId(kv), true).await.unwrap();
    }
    histories
}

/// Reads store `kv` restored into the data dir `out` with lsm-tree's own
/// API: every key and its value.
fn read_restored(out: &Path, kv: KvId, seqno: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let dir = out.join(format!("kv-{}", kv.0)).join("tree");
    let counter = SequenceNumberCounter::new(seqno + 1);
    let tree = TreeConfig::new(&dir, counter.clone(), counter).open().unwrap();
    let mut state = BTreeMap::new();
    for item in tree.iter(seqno + 1, None) {
        let (k, v) = item.into_inner().unwrap();
        state.insert(k.to_vec(), v.to_vec());
    }
    state
}

struct Checked {
    compared: u64,
    refused: u64,
    wrong: Vec<String>,
    /// Seqnos of the history's span `0..=last` that inspect calls exact.
    exact: u64,
    span: u64,
}

fn check(fx: &Fixture, histories: &[History], points: u64, seed: u64) -> Checked {
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let reports = inspect(&root, &LsmFormat::default()).unwrap();
    let problems = verify(&root, &LsmFormat::default());
    assert!(problems.is_empty(), "{problems:#?}");
    let mut rng = Rng(seed);
    let mut found = Checked {
        compared: 0,
        refused: 0,
        wrong: Vec::new(),
        exact: 0,
        span: 0,
    };
    for (kv, history) in histories.iter().enumerate() {
        let kv = KvId(kv as u16);
        let high = history.last().map_or(0, |m| m.0);
        let report = reports.iter().find(|r| r.kv == kv).unwrap();
        assert_eq!(report.format, "lsm-tree-3");
        found.span += high + 1;
        found.exact += report
            .restorable
            .iter()
            .map(|&(a, b)| b.min(high).saturating_sub(a) + u64::from(a <= high.min(b)))
            .sum::<u64>();
        let mut seqnos: Vec<u64> = (0..points).map(|_| rng.below(high + 1)).collect();
        seqnos.extend(report.restorable.iter().flat_map(|r| [r.0, r.1]));
        seqnos.push(high);
        for (p, s) in seqnos.into_iter().enumerate() {
            let out = fx.tmp.path().join(format!("restored/{kv}-{p}-{s}"));
            let reader = LsmFormat::default();
            match restore(&root, &[kv], s, &out, &reader, &LsmTarget, &mut |_| {}) {
                Err(Error::NotRestorable { .. }) => {
                    assert!(!out.exists(), "a refused restore writes nothing");
                    found.refused += 1;
                    continue;
                }
                done => done.unwrap(),
            };
            let got = read_restored(&out, kv, s);
            let want = state_at(history, s);
            if got != want {
                let differ = want
                    .keys()
                    .chain(got.keys())
                    .filter(|k| got.get(*k) != want.get(*k))
                    .count();
                found
                    .wrong
                    .push(format!("kv {kv} at seqno {s}: {differ} keys differ"));
            }
            found.compared += 1;
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    found
}

#[actix_rt::test]
async fn lsm_tree_restore_at_any_accepted_seqno_equals_the_history() {
    let fx = Fixture::new();
    let engine = Arc::new(LsmEngine::open(fx.tmp.path().join("lsm-data")).unwrap());
    let histories = drive(&fx, engine.clone(), Duration::from_secs(3), 0x015e_77ee).await;
    let found = check(&fx, &histories, 110, 11);
    let mutations: usize = histories.iter().map(Vec::len).sum();
    println!(
        "lsm-tree oracle (retention on): {mutations} mutations over {STORES} stores; {} restore points \
         compared, {} refused, {} wrong; exact share {}/{} seqnos = {:.3}%",
        found.compared,
        found.refused,
        found.wrong.len(),
        found.exact,
        found.span,
        100.0 * found.exact as f64 / found.span as f64
    );
    assert!(found.compared >= 200, "{} points", found.compared);
    assert!(found.wrong.is_empty(), "{:#?}", found.wrong);
    assert_eq!(found.exact, found.span, "with retention every seqno is exact");
    assert_eq!(found.refused, 0);
}

/// The failure: without retention, tables flushed and compacted
/// away between two rounds are never linked, and major compactions drop
/// delete markers. Restore may refuse, but every point it accepts equals
/// the history.
#[actix_rt::test]
async fn without_retention_lsm_tree_restore_refuses_rather_than_answers_wrong() {
    let fx = Fixture::new();
    let options = LsmOptions {
        retain_for_backup: false,
    };
    let engine = Arc::new(LsmEngine::open_with(fx.tmp.path().join("lsm-data"), options).unwrap());
    let histories = drive(&fx, engine.clone(), Duration::from_secs(3), 0xdead_5eed).await;
    let found = check(&fx, &histories, 110, 13);
    println!(
        "lsm-tree oracle (retention off): {} restore points compared, {} refused, {} wrong; exact share \
         {:.3}%",
        found.compared,
        found.refused,
        found.wrong.len(),
        100.0 * found.exact as f64 / found.span as f64
    );
    assert!(found.compared + found.refused >= 200);
    assert!(found.wrong.is_empty(), "{:#?}", found.wrong);
}

/// A fresh lsm-tree store `kv` in `fx` that wrote `a` = `1` (seqno 0, the
/// tree's first), flushed, and was backed up for one round.
async fn a_written_and_backed_up_once(fx: &Fixture, kv: KvId) -> Arc<LsmEngine> {
    let engine = Arc::new(LsmEngine::open(fx.tmp.path().join("lsm-data")).unwrap());
    engine.create_store(kv).unwrap();
    assert_eq!(engine.put(kv, b"a", b"1").unwrap(), 0);
    engine.flush(kv).unwrap();
    let backup = ContinuousBackup::start(engine.clone() as Arc<dyn Engine>, Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(kv, fx.backup_dir(kv), cb, None)
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(10)).await;
    backup.stop_backup(kv, false).await.unwrap();
    engine
}

// Regression: lsm-tree's first seqno is 0. The reference format cannot
// hold it, and a restore into it left a half-written `kv-0/` behind.
#[actix_rt::test]
async fn seqno_zero_restores_into_lsm_tree_and_is_refused_by_the_reference_format_writing_nothing() {
    let fx = Fixture::new();
    let kv = KvId(0);
    let _engine = a_written_and_backed_up_once(&fx, kv).await;

    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let out = fx.tmp.path().join("as-ref");
    let err = restore(
        &root,
        &[kv],
        0,
        &out,
        &LsmFormat::default(),
        &RefTarget,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("seqno 0"), "{err}");
    assert!(!out.exists(), "nothing written");

    let out = fx.tmp.path().join("as-lsm");
    restore(
        &root,
        &[kv],
        0,
        &out,
        &LsmFormat::default(),
        &LsmTarget,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        read_restored(&out, kv, 0),
        BTreeMap::from([(b"a".to_vec(), b"1".to_vec())])
    );
    // The restored data dir opens as the adapter's and goes on above 0.
    let reopened = LsmEngine::open(&out).unwrap();
    assert_eq!(reopened.get(kv, b"a").unwrap(), Some(b"1".to_vec()));
    assert!(reopened.put(kv, b"b", b"2").unwrap() > 0);
}

#[actix_rt::test]
async fn the_reference_reader_refuses_lsm_tree_files_by_their_recorded_format() {
    let fx = Fixture::new();
    let kv = KvId(3);
    let _engine = a_written_and_backed_up_once(&fx, kv).await;
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let ref_format = continuous_backup::restore::RefFormat;
    let out = fx.tmp.path().join("out");
    let err = restore(&root, &[kv], 0, &out, &ref_format, &RefTarget, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("`lsm-tree-3` format"), "{err}");
    let problems = verify(&root, &ref_format);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].what.contains("`lsm-tree-3` format"), "{problems:?}");
    assert_eq!(
        continuous_backup::restore::detect_format(&root).unwrap(),
        "lsm-tree-3"
    );
}
