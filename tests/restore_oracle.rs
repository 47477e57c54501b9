//! Point-in-time restore against an oracle: random puts, deletes, flushes
//! and compactions on several stores while backups run; then for many
//! seqnos S, the store restored from the backup alone equals the recorded
//! history at S, key by key.
#![expect(clippy::print_stdout, reason = "the suite prints its counts")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::refengine::{RefEngine, RefOptions};
use continuous_backup::restore::{
    inspect, restore, restore_points, BackupRoot, RecordReader, RefFormat, RefTarget,
};
use continuous_backup::{Config, ContinuousBackup, Error, KvId};

/// Every mutation of one store, in seqno order: (seqno, key, value or delete).
type History = Vec<(u64, Vec<u8>, Option<Vec<u8>>)>;

/// The oracle: each key's newest version at `seqno`.
fn state_at(history: &History, seqno: u64) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let mut state = BTreeMap::new();
    for (s, key, value) in history.iter().take_while(|(s, ..)| *s <= seqno) {
        debug_assert!(*s <= seqno);
        state.insert(key.clone(), value.clone());
    }
    state
}

const KEYS: u64 = 40;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:02}").into_bytes()
}

/// Drives the workload on `engine` with backups running into `fx`'s backup
/// root; returns each store's history.
async fn drive(fx: &Fixture, engine: RefEngine, stores: u16, ops: usize, seed: u64) -> Vec<History> {
    let backup = ContinuousBackup::start(Arc::new(engine.clone()), Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    for kv in 0..stores {
        engine.create_store(KvId(kv)).unwrap();
        backup
            .start_backup(KvId(kv), fx.backup_dir(KvId(kv)), cb.clone(), Some(ms(15)))
            .await
            .unwrap();
    }
    // The guarantee holds from a store's first round on.
    let mut first = std::collections::BTreeSet::new();
    while first.len() < stores as usize {
        first.insert(next_round(&mut rx, Duration::from_secs(10)).await.kv);
    }
    let histories = blocking(move || {
        let mut rng = Rng(seed);
        let mut histories = vec![History::new(); stores as usize];
        for op in 0..ops {
            let kv = KvId(rng.below(u64::from(stores)) as u16);
            let k = key(rng.below(KEYS));
            let h = &mut histories[kv.0 as usize];
            match rng.below(100) {
                0..=64 => {
                    let v = format!("v{op}").into_bytes();
                    let s = engine.put(kv, &k, &v).unwrap();
                    h.push((s, k, Some(v)));
                }
                65..=79 => {
                    let s = engine.delete(kv, &k).unwrap();
                    h.push((s, k, None));
                }
                80..=92 => {
                    engine.flush(kv).unwrap();
                }
                _ => {
                    // Flush and compact at once: the flushed file is merged
                    // away before a backup round can link it.
                    engine.flush(kv).unwrap();
                    engine.compact(kv).unwrap();
                }
            }
            if op % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for kv in 0..stores {
            engine.flush(KvId(kv)).unwrap();
        }
        histories
    })
    .await;
    for kv in 0..stores {
        backup.stop_backup(KvId(kv), true).await.unwrap();
    }
    histories
}

/// Each store at the newest seqno of its history (exact with retention).
fn newest_points(histories: &[History]) -> Vec<(KvId, u64)> {
    histories
        .iter()
        .enumerate()
        .map(|(kv, h)| (KvId(kv as u16), h.last().unwrap().0))
        .collect()
}

/// What [`check`] found.
struct Checked {
    /// Restore points restored and compared with the oracle.
    compared: u64,
    /// Restore points refused as not exact.
    refused: u64,
    /// Restore points whose restore differs from the oracle.
    wrong: Vec<String>,
}

/// Restores every store at `points` seqnos spread over its history and
/// compares with the oracle. A refusal fails unless `may_refuse`.
fn check(fx: &Fixture, histories: &[History], points: u64, seed: u64, may_refuse: bool) -> Checked {
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let reports = inspect(&root, &RefFormat).unwrap();
    let mut rng = Rng(seed);
    let mut found = Checked {
        compared: 0,
        refused: 0,
        wrong: Vec::new(),
    };
    for (kv, history) in histories.iter().enumerate() {
        let kv = KvId(kv as u16);
        let high = history.last().map_or(0, |m| m.0);
        // Random points, and with `may_refuse` also the ends of every range
        // `inspect` lists as exact.
        let mut seqnos: Vec<u64> = (0..points).map(|_| 1 + rng.below(high)).collect();
        if may_refuse {
            let report = reports.iter().find(|r| r.kv == kv).unwrap();
            seqnos.extend(report.restorable.iter().flat_map(|r| [r.0, r.1]));
        }
        for (p, s) in seqnos.into_iter().enumerate() {
            let out = fx.tmp.path().join(format!("restored/{kv}-{p}-{s}"));
            match restore(&root, &[kv], s, &out, &RefFormat, &RefTarget, &mut |_| {}) {
                Err(Error::NotRestorable { .. }) if may_refuse => {
                    assert!(!out.exists(), "a refused restore writes nothing");
                    found.refused += 1;
                    continue;
                }
                done => done.unwrap(),
            };
            let engine = RefEngine::open(&out).unwrap();
            let expected = state_at(history, s);
            for i in 0..KEYS {
                let want = expected.get(&key(i)).cloned().flatten();
                if engine.get(kv, &key(i)).unwrap() != want {
                    found.wrong.push(format!("kv {kv} at seqno {s}: key-{i:02}"));
                }
            }
            found.compared += 1;
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    found
}

#[actix_rt::test]
async fn restore_at_any_seqno_equals_the_history() {
    let fx = Fixture::new();
    let histories = drive(&fx, fx.engine.clone(), 3, 3000, 0x00c0_ffee).await;
    let found = check(&fx, &histories, 70, 7, false);
    println!(
        "restore oracle: {} restore points over 3 stores, {} mismatches",
        found.compared,
        found.wrong.len()
    );
    assert!(found.compared >= 200);
    assert!(found.wrong.is_empty(), "{:#?}", found.wrong);
}

/// With retention off, compactions merge away files no round linked, so
/// the backups hold lossy compaction outputs over holes: every restore point
/// restore accepts must still equal the history, and the others are refused.
#[actix_rt::test]
async fn without_retention_every_accepted_restore_point_equals_the_history() {
    let fx = Fixture::new();
    let engine = RefEngine::open_with(
        fx.tmp.path().join("data-no-retention"),
        RefOptions {
            retain_for_backup: false,
        },
    )
    .unwrap();
    let histories = drive(&fx, engine, 3, 3000, 0x0bad_cafe).await;
    let found = check(&fx, &histories, 70, 11, true);
    println!(
        "restore oracle without retention: {} restore points compared, {} refused, {} mismatches",
        found.compared,
        found.refused,
        found.wrong.len()
    );
    assert!(found.wrong.is_empty(), "{:#?}", found.wrong);
    assert!(found.refused > 0, "without retention some points cannot be exact");
    assert!(
        found.compared > 0,
        "compaction outputs are still exact at their high seqnos"
    );
}

/// A guard on the guarantee: with compaction inputs deleted at once, a
/// version that lived only in a file compacted before a round linked it is
/// in no backed-up file, and restore refuses the seqnos inside that
/// compaction output's range instead of answering wrong; with retention the
/// input is linked and the restore is exact.
#[actix_rt::test]
async fn without_retention_for_backup_a_restore_inside_a_compacted_file_is_refused() {
    let kv = KvId(0);
    for retain in [true, false] {
        let fx = Fixture::new();
        let engine = RefEngine::open_with(
            fx.tmp.path().join("data-opts"),
            RefOptions {
                retain_for_backup: retain,
            },
        )
        .unwrap();
        let backup = ContinuousBackup::start(Arc::new(engine.clone()), Config::default(), None).unwrap();
        engine.put(kv, b"k", b"a").unwrap(); // @1
        engine.flush(kv).unwrap();
        let (cb, mut rx) = recorder();
        backup
            .start_backup(kv, fx.backup_dir(kv), cb, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        next_round(&mut rx, Duration::from_secs(5)).await; // links file 1
        engine.put(kv, b"k", b"b").unwrap(); // @2
        engine.put(kv, b"k", b"c").unwrap(); // @3
        engine.flush(kv).unwrap(); // file 2 covers 2..=3
        engine.compact(kv).unwrap(); // file 3 covers 1..=3, keeps only k@3
        backup.stop_backup(kv, true).await.unwrap(); // the final round
        let root = BackupRoot::open(&fx.backup_root()).unwrap();
        let files = &root.store(kv).unwrap().files;
        let holds_b = files
            .iter()
            .any(|f| RefFormat.records(f).unwrap().any(|r| r.unwrap().seqno == 2));
        let out = fx.tmp.path().join("at-2");
        let restored = restore(&root, &[kv], 2, &out, &RefFormat, &RefTarget, &mut |_| {});
        if retain {
            assert!(holds_b, "the retained input was linked");
            restored.unwrap();
            let got = RefEngine::open(&out).unwrap().get(kv, b"k").unwrap();
            assert_eq!(got.as_deref(), Some(&b"b"[..]), "exact with retention");
        } else {
            assert!(!holds_b, "k@2 is in no backed-up file: the hole retention closes");
            let err = restored.unwrap_err();
            assert!(
                matches!(&err, Error::NotRestorable { seqno: 2, reason, .. }
                    if reason.contains("compaction output") && reason.contains("exact restore points: 1..=1, 3..=3")),
                "{err}"
            );
            assert!(!out.exists(), "nothing written");
            // Seqno 3, the compaction output's high seqno, is exact.
            restore(&root, &[kv], 3, &out, &RefFormat, &RefTarget, &mut |_| {}).unwrap();
            let got = RefEngine::open(&out).unwrap().get(kv, b"k").unwrap();
            assert_eq!(got.as_deref(), Some(&b"c"[..]));
        }
    }
}

/// A store deleted and created again into the same backup dir starts its
/// seqnos over, so the dir holds two histories: restore refuses rather than
/// mix them, and verify names the conflict.
#[actix_rt::test]
async fn a_backup_dir_holding_two_histories_of_a_store_is_refused() {
    let kv = KvId(4);
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let run = |writes: &'static [(&'static str, &'static str)]| {
        let (fx, backup) = (&fx, &backup);
        async move {
            for (k, v) in writes {
                fx.engine.put(kv, k.as_bytes(), v.as_bytes()).unwrap();
            }
            fx.engine.flush(kv).unwrap();
            fx.back_up_once(backup, kv).await;
        }
    };
    run(&[("deleted-key", "old"), ("shared", "old")]).await; // @1, @2
    fx.engine.drop_store(kv).unwrap();
    run(&[("shared", "new1"), ("shared", "new2")]).await; // @1, @2 again
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let out = fx.tmp.path().join("restored");
    let err = restore(&root, &[kv], 2, &out, &RefFormat, &RefTarget, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::NotRestorable { reason, .. } if reason.contains("more than one history")),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
    let problems = continuous_backup::restore::verify(&root, &RefFormat);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].what.contains("more than one history"), "{problems:?}");
}

/// Stores are restored in parallel: restoring every store at once, each
/// to a seqno of its own, gives each store its own history at that seqno.
#[actix_rt::test]
async fn restoring_every_store_at_once_gives_each_its_own_history() {
    let fx = Fixture::new();
    let stores = 8;
    let histories = drive(&fx, fx.engine.clone(), stores, 4000, 0x5eed_0008).await;
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let points = newest_points(&histories);
    let out = fx.tmp.path().join("restored-all");
    let mut files_seen = 0;
    let summaries = restore_points(&root, &points, &out, &RefFormat, &RefTarget, &mut |n| {
        files_seen += n
    })
    .unwrap();
    assert_eq!(summaries.len(), usize::from(stores));
    let files_read: usize = summaries.iter().map(|s| s.files_read).sum();
    assert_eq!(files_seen as usize, files_read, "progress counts every file read");
    let engine = RefEngine::open(&out).unwrap();
    for ((kv, seqno), summary) in points.iter().zip(&summaries) {
        assert_eq!(
            (summary.kv, summary.to_seqno),
            (*kv, *seqno),
            "summaries keep the order asked"
        );
        let expected = state_at(&histories[kv.0 as usize], *seqno);
        for i in 0..KEYS {
            let want = expected.get(&key(i)).cloned().flatten();
            assert_eq!(
                engine.get(*kv, &key(i)).unwrap(),
                want,
                "kv {kv} at {seqno}: key-{i:02}"
            );
        }
    }
}

/// A restore of many stores that fails on one store's files after others
/// were written (a checksum that does not match) removes what it wrote:
/// an error never leaves part of a restore behind to be taken for one.
#[actix_rt::test]
async fn a_restore_failing_on_one_store_leaves_nothing_behind() {
    let fx = Fixture::new();
    let stores = 6;
    let histories = drive(&fx, fx.engine.clone(), stores, 1500, 0x00fa_11ed).await;
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    // The last store's files are damaged after their manifests were
    // written: the plan (from manifests) passes, the read fails.
    let bad = KvId(stores - 1);
    for path in &root.store(bad).unwrap().files {
        let mut bytes = std::fs::read(path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    }
    let points = newest_points(&histories);
    let out = fx.tmp.path().join("restored-all");
    let err = restore_points(&root, &points, &out, &RefFormat, &RefTarget, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        !out.exists(),
        "the stores written before the failure are gone with it"
    );
    // Into a dir that existed (empty), the dir stays, empty.
    std::fs::create_dir(&out).unwrap();
    restore_points(&root, &points, &out, &RefFormat, &RefTarget, &mut |_| {}).unwrap_err();
    assert_eq!(names(&out), Vec::<String>::new());
}

/// A target that writes like the reference engine's, except for one store,
/// whose write stops halfway: an error (a full disk, say) or a panic.
struct HalfWritten {
    kv: KvId,
    panics: bool,
}

impl continuous_backup::restore::RestoreTarget for HalfWritten {
    fn format(&self) -> &'static str {
        RefTarget.format()
    }

    fn write_store(
        &self,
        out: &std::path::Path,
        kv: KvId,
        lowest: u64,
        seqno: u64,
        records: &mut dyn Iterator<Item = continuous_backup::Record>,
    ) -> continuous_backup::Result<std::path::PathBuf> {
        if kv != self.kv {
            return RefTarget.write_store(out, kv, lowest, seqno, records);
        }
        let dir = self.store_dir(out, kv);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("partial"), b"half").unwrap();
        if self.panics {
            panic!("the target of kv {kv} panics halfway");
        }
        Err(Error::io(
            "write",
            dir.join("partial"),
            std::io::Error::from_raw_os_error(28), // ENOSPC
        ))
    }
}

/// A store whose write fails halfway, or whose target panics, takes the
/// restore down with it and leaves nothing in `out`: not the stores
/// written before it, not its own half-written dir.
#[actix_rt::test]
async fn a_restore_whose_write_fails_halfway_leaves_nothing_behind() {
    let fx = Fixture::new();
    let stores = 5;
    let histories = drive(&fx, fx.engine.clone(), stores, 1000, 0x0000_d15c).await;
    let root = BackupRoot::open(&fx.backup_root()).unwrap();
    let points = newest_points(&histories);
    for panics in [false, true] {
        let out = fx.tmp.path().join(format!("restored-{panics}"));
        let target = HalfWritten {
            kv: KvId(stores - 1),
            panics,
        };
        let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            restore_points(&root, &points, &out, &RefFormat, &target, &mut |_| {})
        }));
        match restored {
            Ok(result) => {
                assert!(!panics);
                assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
            }
            Err(_) => assert!(panics, "the target's panic comes back"),
        }
        assert!(
            !out.exists(),
            "panics: {panics}: {:?}",
            out.exists().then(|| names(&out))
        );
    }
}
