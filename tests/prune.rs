//! Retention against an oracle: random histories on the reference engine
//! and on lsm-tree, backed up every few ms, then pruned by random policies.
//! Every restore point of the window restores after the prune exactly as
//! the history says (as it did before); outside the window a restore is
//! refused or, where the kept files still prove it, exact; never wrong.
//! Space is really freed. Bad input deletes nothing.
#![expect(clippy::print_stdout, reason = "the suite prints its counts")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::restore::{
    inspect, prune, prune_with, restore, verify, BackupRoot, Consolidate, Format,
};
use continuous_backup::retention::Retention;
use continuous_backup::{Config, ContinuousBackup, Engine, Error, KvId};

/// The writes a workload makes, on either engine.
trait Store: Engine {
    fn put(&self, key: &[u8], value: &[u8]) -> u64;
    fn delete(&self, key: &[u8]) -> u64;
    fn flush(&self);
    fn compact(&self);
    /// Reads every key of the store restored into `out` at `seqno`.
    fn read_restored(&self, out: &Path, seqno: u64) -> BTreeMap<Vec<u8>, Vec<u8>>;
    fn format(&self) -> Format;
}

const KV: KvId = KvId(0);
const KEYS: u64 = 30;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:02}").into_bytes()
}

impl Store for continuous_backup::refengine::RefEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> u64 {
        continuous_backup::refengine::RefEngine::put(self, KV, key, value).unwrap()
    }
    fn delete(&self, key: &[u8]) -> u64 {
        continuous_backup::refengine::RefEngine::delete(self, KV, key).unwrap()
    }
    fn flush(&self) {
        continuous_backup::refengine::RefEngine::flush(self, KV).unwrap();
    }
    fn compact(&self) {
        continuous_backup::refengine::RefEngine::compact(self, KV).unwrap();
    }
    fn read_restored(&self, out: &Path, _seqno: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let engine = continuous_backup::refengine::RefEngine::open(out).unwrap();
        (0..KEYS)
            .filter_map(|i| engine.get(KV, &key(i)).unwrap().map(|v| (key(i), v)))
            .collect()
    }
    fn format(&self) -> Format {
        continuous_backup::restore::format_named("ref").unwrap()
    }
}

#[cfg(feature = "lsm-tree")]
impl Store for continuous_backup::lsm::LsmEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> u64 {
        continuous_backup::lsm::LsmEngine::put(self, KV, key, value).unwrap()
    }
    fn delete(&self, key: &[u8]) -> u64 {
        continuous_backup::lsm::LsmEngine::delete(self, KV, key).unwrap()
    }
    fn flush(&self) {
        continuous_backup::lsm::LsmEngine::flush(self, KV).unwrap();
    }
    fn compact(&self) {
        self.major_compact(KV).unwrap();
    }
    fn read_restored(&self, out: &Path, _seqno: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let engine = continuous_backup::lsm::LsmEngine::open(out).unwrap();
        (0..KEYS)
            .filter_map(|i| engine.get(KV, &key(i)).unwrap().map(|v| (key(i), v)))
            .collect()
    }
    fn format(&self) -> Format {
        continuous_backup::restore::format_named("lsm-tree").unwrap()
    }
}

/// Runs a workload with backups every 3 ms into `backup_root/0`; the
/// store's backup stops once in the middle (a vBucket gone replica), so
/// some history reaches the backup only as compaction outputs.
async fn drive(engine: Arc<dyn Store>, backup_root: &Path, ops: usize, seed: u64) -> History {
    let backup = ContinuousBackup::start(engine.clone() as Arc<dyn Engine>, Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    let dir = backup_root.join(KV.to_string());
    backup
        .start_backup(KV, dir.clone(), cb.clone(), Some(ms(3)))
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(10)).await;
    let mut history = History::new();
    let mut rng = Rng(seed);
    for op in 0..ops {
        if op == ops / 2 {
            backup.stop_backup(KV, true).await.unwrap();
        }
        if op == ops / 2 + ops / 10 {
            backup
                .start_backup(KV, dir.clone(), cb.clone(), Some(ms(3)))
                .await
                .unwrap();
        }
        let k = key(rng.below(KEYS));
        match rng.below(100) {
            0..=64 => {
                let v = format!("v{op}").into_bytes();
                let s = engine.put(&k, &v);
                history.push((s, k, Some(v)));
            }
            65..=79 => {
                let s = engine.delete(&k);
                history.push((s, k, None));
            }
            80..=94 => engine.flush(),
            _ => {
                engine.flush();
                engine.compact();
            }
        }
        if op % 25 == 0 {
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
    }
    engine.flush();
    backup.stop_backup(KV, true).await.unwrap();
    backup.shutdown().await.unwrap();
    history
}

/// The bytes of the seqno-index files in a backup root.
fn files_bytes(root: &Path, reader: &dyn continuous_backup::restore::RecordReader) -> u64 {
    inspect(&BackupRoot::open(root).unwrap(), reader).unwrap()[0].bytes
}

#[derive(Default)]
struct Tally {
    policies: u64,
    in_window: u64,
    outside_refused: u64,
    outside_exact: u64,
    wrong: Vec<String>,
    freed: u64,
    consolidated: u64,
}

/// Prunes copies of `root` by `policies` and checks every restore point
/// chosen against the history.
fn check_policies(
    engine: &dyn Store,
    root: &Path,
    work: &Path,
    history: &History,
    policies: &[Retention],
    seed: u64,
) -> Tally {
    let format = engine.format();
    let (reader, target) = (format.reader.as_ref(), format.target.as_ref());
    let high = history.last().unwrap().0;
    let before = inspect(&BackupRoot::open(root).unwrap(), reader)
        .unwrap()
        .remove(0);
    let exact_before = |s: u64| before.restorable.iter().any(|&(a, b)| a <= s && s <= b);
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for (i, policy) in policies.iter().enumerate() {
        let copy = work.join(format!("policy-{i}"));
        copy_tree(root, &copy);
        let bytes_before = files_bytes(&copy, reader);
        // Every other policy writes a consolidated base where it can.
        let consolidate = if i % 2 == 0 {
            Consolidate::Always
        } else {
            Consolidate::WhenItPays
        };
        let report = prune_with(&BackupRoot::open(&copy).unwrap(), policy, false, consolidate)
            .unwrap()
            .remove(0);
        tally.consolidated += u64::from(report.consolidated.is_some());
        assert_eq!(report.skipped, None, "{policy:?}");
        let window = report.window_seqno.unwrap();
        let written = report.consolidated.map_or(0, |c| c.bytes);
        let freed = bytes_before + written - files_bytes(&copy, reader);
        assert_eq!(freed, report.bytes_freed + report.bytes_shared, "{policy:?}");
        tally.freed += freed;
        tally.policies += 1;
        let pruned = BackupRoot::open(&copy).unwrap();
        assert!(
            verify(&pruned, reader).is_empty(),
            "{:?}",
            verify(&pruned, reader)
        );
        let mut points: Vec<u64> = (0..40).map(|_| rng.below(high + 1)).collect();
        points.extend((0..20).map(|_| window + rng.below(high.saturating_sub(window) + 1)));
        points.extend(before.restorable.iter().flat_map(|r| [r.0, r.1]));
        points.push(window);
        for (p, s) in points.into_iter().enumerate() {
            let out = work.join(format!("out-{i}-{p}"));
            let done = restore(&pruned, &[KV], s, &out, reader, target, &mut |_| {});
            let in_window = s >= window && exact_before(s);
            match done {
                Ok(_) => {
                    if engine.read_restored(&out, s) != state_at(history, s) {
                        tally
                            .wrong
                            .push(format!("{policy:?}: seqno {s} (window from {window})"));
                    }
                    if in_window {
                        tally.in_window += 1;
                    } else {
                        tally.outside_exact += 1;
                    }
                    std::fs::remove_dir_all(&out).unwrap();
                }
                Err(Error::NotRestorable { reason, .. }) => {
                    assert!(!out.exists());
                    if in_window {
                        tally
                            .wrong
                            .push(format!("{policy:?}: seqno {s} in the window refused: {reason}"));
                    } else {
                        tally.outside_refused += 1;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    tally
}

fn policies(rounds: u64, span_ms: u64, seed: u64) -> Vec<Retention> {
    let mut rng = Rng(seed);
    let mut out = vec![Retention {
        keep_for: None,
        keep_rounds: Some(3),
    }];
    for _ in 0..5 {
        out.push(Retention {
            keep_for: None,
            keep_rounds: Some(1 + rng.below(rounds.max(1))),
        });
        out.push(Retention {
            keep_for: Some(Duration::from_millis(1 + rng.below(span_ms.max(1)))),
            keep_rounds: None,
        });
    }
    out.push(Retention {
        keep_for: Some(Duration::from_millis(1 + rng.below(span_ms.max(1)))),
        keep_rounds: Some(1 + rng.below(rounds.max(1))),
    });
    out
}

async fn oracle(engine: Arc<dyn Store>, tmp: &Path, seed: u64) -> Tally {
    let root = tmp.join("backup");
    let history = drive(engine.clone(), &root, 1500, seed).await;
    let store = BackupRoot::open(&root).unwrap();
    let (rounds, _) = store.stores()[0].round_records().unwrap();
    let span = rounds.last().unwrap().time_ms - rounds[0].time_ms;
    let policies = policies(rounds.len() as u64, span, seed);
    check_policies(
        engine.as_ref(),
        &root,
        &tmp.join("work"),
        &history,
        &policies,
        seed,
    )
}

fn report(engine: &str, t: &Tally) {
    println!(
        "prune oracle ({engine}): {} policies ({} wrote a consolidated base); {} restore points in the \
         window identical after prune, {} outside refused, {} outside still exact; {} wrong; {} bytes freed",
        t.policies,
        t.consolidated,
        t.in_window,
        t.outside_refused,
        t.outside_exact,
        t.wrong.len(),
        t.freed
    );
}

#[actix_rt::test]
async fn prune_keeps_every_restore_point_of_the_window_on_the_reference_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = continuous_backup::refengine::RefEngine::open(tmp.path().join("data")).unwrap();
    engine.create_store(KV).unwrap();
    let tally = oracle(Arc::new(engine), tmp.path(), 0x0bad_cafe).await;
    report("reference engine", &tally);
    assert!(tally.wrong.is_empty(), "{:#?}", tally.wrong);
    assert!(tally.in_window >= 100, "{} points in windows", tally.in_window);
    assert!(tally.freed > 0, "nothing was freed");
    assert!(tally.consolidated > 0, "no policy wrote a consolidated base");
}

#[cfg(feature = "lsm-tree")]
#[actix_rt::test]
async fn prune_keeps_every_restore_point_of_the_window_on_lsm_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = continuous_backup::lsm::LsmEngine::open(tmp.path().join("data")).unwrap();
    engine.create_store(KV).unwrap();
    let tally = oracle(Arc::new(engine), tmp.path(), 0x15e7_0001).await;
    report("lsm-tree", &tally);
    assert!(tally.wrong.is_empty(), "{:#?}", tally.wrong);
    assert!(tally.in_window >= 100, "{} points in windows", tally.in_window);
    assert!(tally.freed > 0, "nothing was freed");
    assert!(tally.consolidated > 0, "no policy wrote a consolidated base");
}

fn cbk(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cbk"))
        .args(args)
        .output()
        .unwrap()
}

/// What `dir` holds, but the pin file readers and prunes lock (made once,
/// empty, never part of a backup).
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(".cbk-pin"))
        .collect();
    names.sort();
    names
}

#[actix_rt::test]
async fn bad_prune_input_gets_a_clear_error_and_deletes_nothing() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    for _ in 0..3 {
        fx.flush_some(KV, 3);
        fx.engine.compact(KV).unwrap();
        fx.back_up_once(&backup, KV).await;
    }
    let root = fx.backup_root();
    let dir = fx.backup_dir(KV);
    let before = listing(&dir);
    let root_arg = root.to_str().unwrap();
    for (args, says) in [
        (vec!["--keep", "0s"], "keep no restore point"),
        (vec!["--keep-rounds", "0"], "keep no restore point"),
        (vec!["--keep=-5m"], "is not a duration"),
        (vec!["--keep", "abc"], "is not a duration"),
        (vec!["--keep", "10"], "is not a duration"),
    ] {
        let mut all = vec!["prune", root_arg];
        all.extend(args.iter().copied());
        let o = cbk(&all);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: {text}");
        assert_eq!(listing(&dir), before, "{args:?} deleted something");
    }
    // A root a running component owns: its dirs are locked.
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, dir.clone(), cb, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    let before = listing(&dir);
    let o = cbk(&["prune", root_arg, "--keep-rounds", "1"]);
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("in use"), "{text}");
    assert_eq!(listing(&dir), before);
    // Not a backup root.
    let file = fx.tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = cbk(&["prune", file.to_str().unwrap(), "--keep-rounds", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a directory"));
    // Once the backup stopped, the same prune runs.
    backup.stop_backup(KV, false).await.unwrap();
    let o = cbk(&["prune", root_arg, "--keep-rounds", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(listing(&dir).len() < before.len(), "nothing pruned");
}

/// kill -9 at every step of a prune (after its record, after each of the
/// first unlinks), then the dir as the crash left it, and again after the
/// next prune finished the job: every restore point of the window restores
/// as the history says, and verify is clean.
#[actix_rt::test]
async fn a_prune_killed_at_any_step_leaves_every_restore_point_of_its_window() {
    use continuous_backup::faults::PRUNE_CRASH_POINTS;
    let tmp = tempfile::tempdir().unwrap();
    let consolidating = |root: &Path| {
        prune_with(
            &BackupRoot::open(root).unwrap(),
            &Retention {
                keep_for: None,
                keep_rounds: Some(3),
            },
            true,
            Consolidate::Always,
        )
        .unwrap()
        .remove(0)
    };
    // Whether a consolidated base frees a file beyond the plain prune
    // depends on where the window starts, which depends on how the rounds
    // fell: histories are driven until one needs a base (the crash points
    // of writing it are tried below), a few at most.
    let mut attempts = 0;
    let (engine, root, history, dry_consolidating) = loop {
        attempts += 1;
        let at = tmp.path().join(format!("history-{attempts}"));
        let engine = continuous_backup::refengine::RefEngine::open(at.join("data")).unwrap();
        engine.create_store(KV).unwrap();
        let root = at.join("backup");
        let history = drive(Arc::new(engine.clone()), &root, 800, 0x5eed_0099 + attempts).await;
        let dry_consolidating = consolidating(&root);
        if dry_consolidating.consolidated.is_some() {
            break (engine, root, history, dry_consolidating);
        }
        assert!(
            attempts < 8,
            "no history of {attempts} needed a consolidated base"
        );
    };
    let format = Store::format(&engine);
    let (reader, target) = (format.reader.as_ref(), format.target.as_ref());
    let policy = ["--keep-rounds", "3"];
    let dry = prune_with(
        &BackupRoot::open(&root).unwrap(),
        &Retention {
            keep_for: None,
            keep_rounds: Some(3),
        },
        true,
        Consolidate::Never,
    )
    .unwrap()
    .remove(0);
    let window = dry.window_seqno.unwrap();
    assert!(dry.deleted.len() > 5, "a prune with something to delete");
    let high = history.last().unwrap().0;
    let before = inspect(&BackupRoot::open(&root).unwrap(), reader)
        .unwrap()
        .remove(0);
    let points: Vec<u64> = (window..=high)
        .filter(|s| before.restorable.iter().any(|&(a, b)| a <= *s && *s <= b))
        .step_by(3)
        .collect();
    let check = |copy: &Path, when: &str| {
        let pruned = BackupRoot::open(copy).unwrap();
        let problems = verify(&pruned, reader);
        assert!(problems.is_empty(), "{when}: {problems:#?}");
        for &s in &points {
            let out = copy.with_extension(format!("out-{s}"));
            restore(&pruned, &[KV], s, &out, reader, target, &mut |_| {})
                .unwrap_or_else(|e| panic!("{when}: seqno {s}: {e}"));
            assert_eq!(
                engine.read_restored(&out, s),
                state_at(&history, s),
                "{when}: seqno {s}"
            );
            std::fs::remove_dir_all(&out).unwrap();
        }
    };
    let mut crashes = 0;
    let [consolidated, recorded, unlinked] = PRUNE_CRASH_POINTS else {
        panic!("the prune's crash points changed: {PRUNE_CRASH_POINTS:?}")
    };
    // Without a consolidated base: after the record, after unlinks; with
    // one: after it is written (before its record), after the record,
    // after the first unlink.
    let mut runs: Vec<(String, &str)> = vec![(recorded.to_string(), "never")];
    runs.extend([1, 2, 5].map(|k| (format!("{unlinked}:{k}"), "never")));
    runs.extend(
        [
            consolidated.to_string(),
            recorded.to_string(),
            format!("{unlinked}:1"),
        ]
        .map(|p| (p, "always")),
    );
    for (i, (point, consolidate)) in runs.iter().enumerate() {
        let copy = tmp.path().join(format!("crash-{i}"));
        copy_tree(&root, &copy);
        let mut args = vec!["prune", copy.to_str().unwrap(), "--consolidate", consolidate];
        args.extend(policy);
        let dry = if *consolidate == "always" {
            &dry_consolidating
        } else {
            &dry
        };
        let o = Command::new(env!("CARGO_BIN_EXE_cbk"))
            .args(&args)
            .env("CBK_CRASH_POINT", point)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), None, "{point}: the prune was killed");
        crashes += 1;
        check(&copy, &format!("after a kill at {point}"));
        let o = cbk(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        check(&copy, &format!("after the next prune, killed at {point} before"));
        let left: Vec<String> = listing(&copy.join(KV.to_string()))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for name in &dry.deleted {
            assert!(!left.contains(name), "{point}: {name} survived the second prune");
        }
        let bases = left.iter().filter(|n| n.contains(".base.")).count();
        assert_eq!(bases, usize::from(*consolidate == "always"), "{point}: {left:?}");
    }
    println!(
        "prune crash points: {crashes} kills ({} restore points checked after each kill and after recovery), all \
         restored exactly",
        points.len()
    );
}

/// Restore to a time: the state of the newest round at or before it,
/// exactly as the history had it at that round's seqno; a time before the
/// first round or after the newest is refused as not backed up yet, and one
/// whose round a prune removed, as pruned.
#[actix_rt::test]
async fn restore_at_a_time_gives_the_newest_round_at_or_before_it_and_refuses_outside() {
    use continuous_backup::restore::{restore_points, seqno_at};
    let tmp = tempfile::tempdir().unwrap();
    let engine = continuous_backup::refengine::RefEngine::open(tmp.path().join("data")).unwrap();
    engine.create_store(KV).unwrap();
    let root_dir = tmp.path().join("backup");
    let history = drive(Arc::new(engine.clone()), &root_dir, 800, 0x0071_3e00).await;
    let format = Store::format(&engine);
    let root = BackupRoot::open(&root_dir).unwrap();
    let (rounds, _) = root.stores()[0].round_records().unwrap();
    let (first, newest) = (rounds[0].time_ms, rounds.last().unwrap().time_ms);
    let report = inspect(&root, format.reader.as_ref()).unwrap().remove(0);
    let (from, to) = report.restorable_times.unwrap();
    assert!(
        first <= from && to == newest,
        "{from}..{to} within {first}..{newest}"
    );
    let mut rng = Rng(5);
    let (mut last, mut restored) = (0, 0);
    let mut times: Vec<u64> = (0..25).map(|_| from + rng.below(to - from + 1)).collect();
    times.sort_unstable();
    for (i, t) in times.into_iter().enumerate() {
        let s = match seqno_at(&root, KV, t) {
            Ok(s) => s,
            // Inside the time range, a round's state may be unprovable
            // (the store's backup stopped around it): refused, not guessed.
            Err(Error::NotRestorableAt { .. }) => continue,
            Err(e) => panic!("{e}"),
        };
        assert!(s >= last, "later times never restore older states");
        last = s;
        let out = tmp.path().join(format!("at-{i}"));
        restore_points(
            &root,
            &[(KV, s)],
            &out,
            format.reader.as_ref(),
            format.target.as_ref(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            engine.read_restored(&out, s),
            state_at(&history, s),
            "at {t} (seqno {s})"
        );
        restored += 1;
    }
    assert!(restored >= 15, "only {restored} of 25 times restored");
    for (t, says) in [(first - 1, "first round"), (newest + 1, "newest round")] {
        let err = seqno_at(&root, KV, t).unwrap_err();
        assert!(
            err.to_string().contains("not backed up yet") && err.to_string().contains(says),
            "{err}"
        );
    }
    // After keeping only the newest round, the first round's time is pruned.
    let o = cbk(&["prune", root_dir.to_str().unwrap(), "--keep-rounds", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = BackupRoot::open(&root_dir).unwrap();
    let err = seqno_at(&root, KV, from).unwrap_err();
    assert!(err.to_string().contains("pruned"), "{err}");
    let s = seqno_at(&root, KV, newest).unwrap();
    assert_eq!(
        s,
        history.last().unwrap().0,
        "the newest round holds the last flush"
    );
}

fn prune_rounds(root: &Path, k: u64) -> continuous_backup::restore::PruneReport {
    let policy = Retention {
        keep_for: None,
        keep_rounds: Some(k),
    };
    prune(&BackupRoot::open(root).unwrap(), &policy, false)
        .unwrap()
        .remove(0)
}

/// Puts `n` new keys (no key repeats: compaction outputs are dense) and
/// flushes them as one file.
fn put_new(fx: &Fixture, next: &mut u32, n: u32) {
    for _ in 0..n {
        fx.engine.put(KV, format!("k{next}").as_bytes(), b"v").unwrap();
        *next += 1;
    }
    fx.engine.flush(KV).unwrap();
}

// Regression (review): a dense compaction output restores every seqno of
// its range by the reference engine's footer rule, though it is declared
// newest-per-key; the first prune record turns that rule off, so a prune
// refused restores that had worked. Such a dir is kept whole.
#[actix_rt::test]
async fn a_window_seqno_only_the_footer_rule_proves_keeps_the_dir_whole() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let mut next = 0;
    put_new(&fx, &mut next, 10); // 1..=10
    fx.back_up_once(&backup, KV).await;
    put_new(&fx, &mut next, 10);
    fx.engine.compact(KV).unwrap(); // 1..=20, its input never linked
    fx.back_up_once(&backup, KV).await;
    put_new(&fx, &mut next, 10); // 21..=30
    fx.back_up_once(&backup, KV).await;
    for _ in 0..3 {
        put_new(&fx, &mut next, 10); // 31..=60, never linked
    }
    fx.engine.compact(KV).unwrap(); // 1..=60, dense
    fx.back_up_once(&backup, KV).await;
    put_new(&fx, &mut next, 10); // 61..=70
    fx.back_up_once(&backup, KV).await;
    let format = Store::format(&fx.engine);
    let root = fx.backup_root();
    let out = fx.tmp.path().join("before");
    let opened = BackupRoot::open(&root).unwrap();
    restore(
        &opened,
        &[KV],
        45,
        &out,
        format.reader.as_ref(),
        format.target.as_ref(),
        &mut |_| {},
    )
    .expect("45 restores by the footer rule");
    let report = prune_rounds(&root, 2);
    let why = report.skipped.expect("kept whole");
    assert!(why.contains("footer rule"), "{why}");
    assert!(report.deleted.is_empty());
    let out = fx.tmp.path().join("after");
    let opened = BackupRoot::open(&root).unwrap();
    restore(
        &opened,
        &[KV],
        45,
        &out,
        format.reader.as_ref(),
        format.target.as_ref(),
        &mut |_| {},
    )
    .expect("still restores");
}

// Regression (review): a dir holding two histories of its store (dropped
// and created again into it) was pruned down to the newer one, and a time
// in the newer history restored the older one's state.
#[actix_rt::test]
async fn a_dir_with_two_histories_is_never_pruned_nor_restored_by_time() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let mut next = 0;
    for _ in 0..3 {
        put_new(&fx, &mut next, 10);
        fx.back_up_once(&backup, KV).await;
    }
    fx.engine.drop_store(KV).unwrap();
    fx.engine.create_store(KV).unwrap();
    let mut again = 1000;
    put_new(&fx, &mut again, 5); // seqnos 1..=5 again
    fx.engine.compact(KV).unwrap();
    let round = fx.back_up_once(&backup, KV).await;
    assert!(!round.files.is_empty());
    let root = fx.backup_root();
    let before = listing(&fx.backup_dir(KV));
    let report = prune_rounds(&root, 1);
    let why = report.skipped.expect("kept whole");
    assert!(why.contains("two histories"), "{why}");
    assert_eq!(listing(&fx.backup_dir(KV)), before, "nothing deleted");
    let opened = BackupRoot::open(&root).unwrap();
    let (rounds, _) = opened.stores()[0].round_records().unwrap();
    let newest = rounds.last().unwrap().time_ms;
    let err = continuous_backup::restore::seqno_at(&opened, KV, newest).unwrap_err();
    assert!(matches!(err, Error::NotRestorableAt { .. }), "{err}");
}

// A restore pins what it reads: a prune that comes while a restore reads a
// store (here from the restore's own progress callback, between two of its
// files) passes over that store, and the restore reads every file it
// planned. Once the restore is done, the same prune deletes.
#[actix_rt::test]
async fn a_restore_in_flight_keeps_a_prune_off_the_files_it_reads() {
    let fx = Fixture::new();
    let backup = fx.start(Config::default());
    let mut next = 0;
    for round in 0..6 {
        put_new(&fx, &mut next, 10);
        if round == 3 {
            fx.engine.compact(KV).unwrap(); // a newer base: the first rounds' files can go
        }
        fx.back_up_once(&backup, KV).await;
    }
    backup.shutdown().await.unwrap();
    let format = Store::format(&fx.engine);
    let root = fx.backup_root();
    let opened = BackupRoot::open(&root).unwrap();
    let out = fx.tmp.path().join("restored");
    let mut during = None;
    let summary = restore(
        &opened,
        &[KV],
        60,
        &out,
        format.reader.as_ref(),
        format.target.as_ref(),
        &mut |_| {
            if during.is_none() {
                during = Some(prune_rounds(&root, 1));
            }
        },
    )
    .expect("the restore reads every file it planned");
    assert_eq!(summary[0].keys, 60);
    let during = during.unwrap();
    let why = during.skipped.expect("passed over while the restore reads");
    assert!(why.contains("restore, verify or inspect is reading"), "{why}");
    assert!(during.deleted.is_empty());
    // Once the restore is done. (A child another test forks holds a copy
    // of the pin's descriptor until it execs: a liveness bound on that.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let report = prune_rounds(&root, 1);
        match &report.skipped {
            Some(_) if std::time::Instant::now() < deadline => std::thread::yield_now(),
            _ => break report,
        }
    };
    assert_eq!(after.skipped, None);
    assert!(!after.deleted.is_empty(), "pruned once the restore is done");
}

/// Drives `engine` with the component's own retention on (`keep_rounds`,
/// a prune after every round): every flush is seen by a round before the
/// next compaction, so without pruning every seqno would restore. Then
/// every seqno from the final window's start restores as the history says,
/// every older one is refused or exact, and space was freed.
async fn component_retention(engine: Arc<dyn Store>, tmp: &Path, seed: u64) -> (u64, u64, u64) {
    let root = tmp.join("backup");
    let policy = Retention {
        keep_for: None,
        keep_rounds: Some(4),
    };
    let config = Config {
        retention: policy,
        prune_every: ms(1),
        ..Config::default()
    };
    let backup = ContinuousBackup::start(engine.clone() as Arc<dyn Engine>, config, None).unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, root.join(KV.to_string()), cb, Some(ms(4)))
        .await
        .unwrap();
    let mut history = History::new();
    let mut rng = Rng(seed);
    for step in 0..40 {
        for _ in 0..5 {
            let k = key(rng.below(KEYS));
            if rng.below(5) == 0 {
                history.push((engine.delete(&k), k, None));
            } else {
                let v = format!("v{step}-{}", rng.next()).into_bytes();
                history.push((engine.put(&k, &v), k, Some(v)));
            }
        }
        engine.flush();
        next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
        if step % 5 == 4 {
            engine.compact(); // a newer base: what is older can go
            next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
        }
    }
    // One more round, then its prune, before the status is read.
    next_round(&mut rx, Duration::from_secs(10)).await;
    backup.stop_backup(KV, true).await.unwrap();
    let status = store_status(&backup, KV).await;
    backup.shutdown().await.unwrap();
    assert!(status.prunes > 0 && status.files_pruned > 0, "{status:?}");
    assert_eq!(status.failed_prunes, 0, "{status:?}");
    let format = engine.format();
    let (reader, target) = (format.reader.as_ref(), format.target.as_ref());
    let opened = BackupRoot::open(&root).unwrap();
    assert!(
        verify(&opened, reader).is_empty(),
        "{:?}",
        verify(&opened, reader)
    );
    assert!(!opened.stores()[0].prunes.is_empty(), "prune records written");
    let (rounds, _) = opened.stores()[0].round_records().unwrap();
    let coverage = continuous_backup::restore::DeclaredCoverage::of_present(&rounds, &|n| {
        opened.stores()[0].holds_file(n)
    });
    let window = coverage
        .high_before_round(policy.window_start(&rounds).unwrap())
        .unwrap_or(0);
    let high = history.last().unwrap().0;
    let (mut in_window, mut outside_refused) = (0, 0);
    for s in 0..=high {
        let out = tmp.join(format!("out-{s}"));
        match restore(&opened, &[KV], s, &out, reader, target, &mut |_| {}) {
            Ok(_) => {
                assert_eq!(engine.read_restored(&out, s), state_at(&history, s), "seqno {s}");
                in_window += u64::from(s >= window);
                std::fs::remove_dir_all(&out).unwrap();
            }
            Err(Error::NotRestorable { reason, .. }) if s < window => {
                assert!(!out.exists(), "{reason}");
                outside_refused += 1;
            }
            Err(e) => panic!("seqno {s} (window from {window}): {e}"),
        }
    }
    (in_window, outside_refused, status.bytes_pruned)
}

#[actix_rt::test]
async fn the_component_prunes_by_its_retention_while_rounds_run_on_the_reference_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Arc::new(continuous_backup::refengine::RefEngine::open(tmp.path().join("data")).unwrap());
    engine.create_store(KV).unwrap();
    let (kept, refused, freed) = component_retention(engine, tmp.path(), 11).await;
    println!(
        "component retention (ref): {kept} window points exact, {refused} older refused, {freed} bytes freed"
    );
}

#[cfg(feature = "lsm-tree")]
#[actix_rt::test]
async fn the_component_prunes_by_its_retention_while_rounds_run_on_lsm_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Arc::new(continuous_backup::lsm::LsmEngine::open(tmp.path().join("data")).unwrap());
    engine.create_store(KV).unwrap();
    let (kept, refused, freed) = component_retention(engine, tmp.path(), 12).await;
    println!("component retention (lsm-tree): {kept} window points exact, {refused} older refused, {freed} bytes freed");
}

// The component's prune keeps what the remote copy still needs: while the
// remote cannot be written, no file leaves the backup dir (every upload is
// still to do); once the remote is back and the uploads catch up, the
// prune deletes what the policy lets go.
#[actix_rt::test]
async fn a_file_still_to_upload_is_never_pruned() {
    let fx = Fixture::new();
    let blocker = fx.tmp.path().join("blocker");
    std::fs::write(&blocker, "a file where the remote's parent dir should be").unwrap();
    let url = format!("file://{}/far", blocker.display());
    let config = Config {
        retention: Retention {
            keep_for: None,
            keep_rounds: Some(1),
        },
        prune_every: ms(1),
        replication: continuous_backup::ReplicationConfig {
            retry_initial: ms(10),
            retry_max: ms(40),
            ..Default::default()
        },
        ..Config::default()
    };
    let backup = fx.start(config);
    let (cb, mut rx) = recorder();
    backup
        .start_replicated_backup(KV, fx.backup_dir(KV), &url, cb, Some(ms(4)))
        .await
        .unwrap();
    let mut reported = Vec::new();
    for i in 0..6 {
        fx.flush_some(KV, 3);
        if i % 2 == 1 {
            fx.engine.compact(KV).unwrap();
        }
        let round = next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
        reported.extend(round.files.into_iter().map(|f| f.name));
    }
    for _ in 0..5 {
        next_round(&mut rx, Duration::from_secs(10)).await; // each followed by a prune's turn
    }
    let status = store_status(&backup, KV).await;
    assert_eq!(status.files_pruned, 0, "{status:?}");
    println!("while the remote is down: {:?}", status.last_prune);
    assert!(status.last_prune.is_some(), "{status:?}");
    let replication = status.replication.as_ref().unwrap();
    assert!(replication.upload_errors > 0, "{replication:?}");
    let held = names(&fx.backup_dir(KV));
    for name in &reported {
        assert!(held.contains(name), "{name} pruned before its upload");
    }
    // The remote comes back.
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    let pruned = eventually(
        Duration::from_secs(60),
        "a prune once the uploads caught up",
        || {
            let backup = backup.clone();
            async move {
                let s = store_status(&backup, KV).await;
                (s.files_pruned > 0).then_some(s)
            }
        },
    )
    .await;
    assert_eq!(pruned.failed_prunes, 0, "{pruned:?}");
    backup.stop_backup(KV, true).await.unwrap();
    backup.shutdown().await.unwrap();
}

// Regression (review): with every key deleted at the window's start,
// lsm-tree's restore target writes no table for that state; the prune
// recorded a base without files, which nothing counted, and still deleted
// the files the window's restore points read. An empty state is a base of
// no files, and the base as written is checked again before its record.
#[cfg(feature = "lsm-tree")]
#[actix_rt::test]
async fn a_consolidated_base_of_an_empty_state_keeps_every_restore_point_of_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Arc::new(continuous_backup::lsm::LsmEngine::open(tmp.path().join("data")).unwrap());
    engine.create_store(KV).unwrap();
    let root = tmp.path().join("backup");
    let backup = ContinuousBackup::start(engine.clone() as Arc<dyn Engine>, Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, root.join(KV.to_string()), cb, Some(ms(4)))
        .await
        .unwrap();
    let mut history = History::new();
    let step = |engine: &continuous_backup::lsm::LsmEngine, delete: bool, history: &mut History| {
        for i in 0..KEYS {
            let k = key(i);
            if delete {
                history.push((Store::delete(engine, &k), k, None));
            } else {
                let v = format!("v{}", history.len()).into_bytes();
                history.push((Store::put(engine, &k, &v), k, Some(v)));
            }
        }
        Store::flush(engine);
    };
    for delete in [false, false, true] {
        step(&engine, delete, &mut history);
        next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
    }
    let emptied = history.last().unwrap().0;
    // Every key gone: the inputs leave the live tree.
    Store::compact(engine.as_ref());
    for _ in 0..2 {
        step(&engine, false, &mut history);
        next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
    }
    backup.stop_backup(KV, true).await.unwrap();
    backup.shutdown().await.unwrap();
    // The window starts right after the round that saw every key deleted.
    let opened = BackupRoot::open(&root).unwrap();
    let store = &opened.stores()[0];
    let (rounds, _) = store.round_records().unwrap();
    let coverage =
        continuous_backup::restore::DeclaredCoverage::of_present(&rounds, &|n| store.holds_file(n));
    let at = rounds
        .iter()
        .position(|r| coverage.round_high(r.round) == Some(emptied))
        .expect("a round backed up the empty state");
    let policy = Retention {
        keep_for: None,
        keep_rounds: Some((rounds.len() - at - 1) as u64),
    };
    let report = prune_with(
        &BackupRoot::open(&root).unwrap(),
        &policy,
        false,
        Consolidate::Always,
    )
    .unwrap()
    .remove(0);
    assert_eq!(report.skipped, None, "{report:?}");
    let window = report.window_seqno.unwrap();
    assert_eq!(window, emptied);
    let base = report
        .consolidated
        .unwrap_or_else(|| panic!("no base of the empty state: {report:?} {rounds:#?}"));
    assert_eq!((base.seqno, base.bytes), (emptied, 0), "{report:?}");
    assert!(!report.deleted.is_empty(), "{report:?}");
    let format = Store::format(engine.as_ref());
    let opened = BackupRoot::open(&root).unwrap();
    assert!(verify(&opened, format.reader.as_ref()).is_empty());
    let high = history.last().unwrap().0;
    for s in window..=high {
        let out = tmp.path().join(format!("out-{s}"));
        restore(
            &opened,
            &[KV],
            s,
            &out,
            format.reader.as_ref(),
            format.target.as_ref(),
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("seqno {s} of the window (from {window}): {e} ({report:?})"));
        assert_eq!(engine.read_restored(&out, s), state_at(&history, s), "seqno {s}");
        std::fs::remove_dir_all(&out).unwrap();
    }
    println!("empty-state base: {report:?}");
}
