//! Pruning the object-store copy (a `file://` remote the component
//! replicates to), from the remote's own listing: what goes is marked
//! first, readers that come after the mark never read it, readers that
//! came before keep it for the grace period, every restore point of the
//! window restores from the pruned remote as the history says, and the
//! uploader never uploads a pruned object again.
#![expect(clippy::print_stdout, reason = "the suite prints its counts")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use continuous_backup::refengine::RefEngine;
use continuous_backup::restore::{
    mirror, prune_remote, restore, verify, BackupRoot, DeclaredCoverage, RefFormat, RefTarget,
};
use continuous_backup::retention::Retention;
use continuous_backup::{Config, ContinuousBackup, Error, KvId};

const KV: KvId = KvId(3);
const KEYS: u64 = 25;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:02}").into_bytes()
}

/// The objects of the store's remote dir (sidecars apart).
fn objects(far: &Path) -> BTreeSet<String> {
    std::fs::read_dir(far.join(KV.to_string()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn sidecars(far: &Path) -> Vec<String> {
    std::fs::read_dir(far.join(KV.to_string()).join(".cbk-sums"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn read_restored(out: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let engine = RefEngine::open(out).unwrap();
    (0..KEYS)
        .filter_map(|i| engine.get(KV, &key(i)).unwrap().map(|v| (key(i), v)))
        .collect()
}

/// Restores every seqno of `1..=high` (the reference format has no seqno
/// 0) from a mirror at `root`: those from
/// `window` on must restore as the history says; older ones are refused
/// or exact. Returns how many of the window restored.
fn check_mirror(root: &Path, work: &Path, history: &History, window: u64) -> u64 {
    let opened = BackupRoot::open(root).unwrap();
    assert!(
        verify(&opened, &RefFormat).is_empty(),
        "{:?}",
        verify(&opened, &RefFormat)
    );
    let high = history.last().unwrap().0;
    let mut in_window = 0;
    for s in 1..=high {
        let out = work.join(format!("out-{s}"));
        match restore(&opened, &[KV], s, &out, &RefFormat, &RefTarget, &mut |_| {}) {
            Ok(_) => {
                assert_eq!(read_restored(&out), state_at(history, s), "seqno {s}");
                in_window += u64::from(s >= window);
                std::fs::remove_dir_all(&out).unwrap();
            }
            Err(Error::NotRestorable { .. }) if s < window => {}
            Err(e) => panic!("seqno {s} (window from {window}): {e}"),
        }
    }
    in_window
}

async fn until_uploaded(backup: &ContinuousBackup) {
    eventually(Duration::from_secs(60), "uploads drained", || {
        let backup = backup.clone();
        async move {
            let s = store_status(&backup, KV).await;
            let r = s.replication?;
            (r.pending_files == 0 && !r.rescan_pending).then_some(())
        }
    })
    .await;
}

#[actix_rt::test]
async fn the_remote_copy_is_pruned_from_its_own_listing_with_a_grace_period_for_readers() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    let far = fx.tmp.path().join("far");
    let url = format!("file://{}", far.display());
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    let store_url = format!("{url}/{}", KV.0);
    backup
        .start_replicated_backup(KV, fx.backup_dir(KV), &store_url, cb.clone(), Some(ms(4)))
        .await
        .unwrap();
    let mut history = History::new();
    let mut rng = Rng(7);
    for step in 0..30 {
        for _ in 0..4 {
            let k = key(rng.below(KEYS));
            if rng.below(5) == 0 {
                history.push((fx.engine.delete(KV, &k).unwrap(), k, None));
            } else {
                let v = format!("v{step}-{}", rng.next()).into_bytes();
                history.push((fx.engine.put(KV, &k, &v).unwrap(), k, Some(v)));
            }
        }
        fx.engine.flush(KV).unwrap();
        next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
        if step % 6 == 5 {
            fx.engine.compact(KV).unwrap();
            next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
        }
    }
    backup.stop_backup(KV, true).await.unwrap();
    backup.shutdown().await.unwrap();
    let all = objects(&far);

    // A reader that lists the remote before the mark.
    let before = fx.tmp.path().join("before");
    mirror(&url, &BTreeMap::new(), &before).unwrap();

    let policy = Retention {
        keep_for: None,
        keep_rounds: Some(4),
    };
    // A copy that is still being uploaded (a declared file, or a file's
    // object after its sidecar, not there yet) is not pruned: what lands
    // later may need what a plan on it would mark.
    for cut in ["object", "manifest"] {
        let partial = fx.tmp.path().join(format!("partial-{cut}"));
        copy_tree(&far, &partial);
        let dir = partial.join(KV.to_string());
        let victim = names(&dir)
            .into_iter()
            .filter(|n| {
                if cut == "manifest" {
                    n == "round.3.json"
                } else {
                    n.ends_with(".sqi")
                }
            })
            .nth(usize::from(cut == "object"))
            .unwrap();
        std::fs::remove_file(dir.join(&victim)).unwrap();
        let url = format!("file://{}", partial.display());
        let report = prune_remote(&url, &BTreeMap::new(), &policy, Duration::ZERO, false)
            .unwrap()
            .remove(0);
        let why = report.skipped.unwrap_or_default();
        assert!(why.contains("not settled"), "{cut}: {why}");
        assert!(report.marked.is_empty() && report.deleted.is_empty(), "{cut}");
    }
    let dry = prune_remote(&url, &BTreeMap::new(), &policy, Duration::from_secs(3600), true).unwrap();
    assert_eq!(objects(&far), all, "a dry run changes nothing");
    let marked = prune_remote(&url, &BTreeMap::new(), &policy, Duration::from_secs(3600), false)
        .unwrap()
        .remove(0);
    assert_eq!(marked.skipped, None, "{marked:?}");
    assert_eq!(
        marked.marked, dry[0].marked,
        "the dry run said what the prune marks"
    );
    assert!(!marked.marked.is_empty(), "{marked:?}");
    assert!(
        marked.deleted.is_empty(),
        "nothing deleted within the grace period"
    );
    let mut with_record = all.clone();
    with_record.insert("prune.1.json".into());
    assert_eq!(
        objects(&far),
        with_record,
        "marked objects stay for the grace period"
    );

    // The window, as the remote's manifests say it.
    let opened = BackupRoot::open(&before).unwrap();
    let store = &opened.stores()[0];
    let (rounds, _) = store.round_records().unwrap();
    let coverage = DeclaredCoverage::of_present(&rounds, &|n| store.holds_file(n));
    let window = coverage
        .high_before_round(policy.window_start(&rounds).unwrap())
        .unwrap();
    assert_eq!(marked.window_seqno, Some(window));

    // The reader from before the mark still restores everything it could.
    let work = fx.tmp.path().join("work");
    check_mirror(&before, &work, &history, 0);
    // A reader after the mark does not read what is marked, and restores
    // every point of the window.
    let after = fx.tmp.path().join("after");
    mirror(&url, &BTreeMap::new(), &after).unwrap();
    let held: BTreeSet<String> = names(&after.join(KV.to_string())).into_iter().collect();
    for name in &marked.marked {
        assert!(!held.contains(name), "{name} was mirrored though marked");
    }
    let in_window = check_mirror(&after, &work, &history, window);

    // Past the grace period (here: none), the marked objects go, sidecars
    // with them.
    let expired = prune_remote(&url, &BTreeMap::new(), &policy, Duration::ZERO, false)
        .unwrap()
        .remove(0);
    assert_eq!(expired.deleted, marked.marked);
    assert_eq!(expired.deleted_bytes, marked.marked_bytes);
    let left = objects(&far);
    for name in &marked.marked {
        assert!(!left.contains(name), "{name}");
        assert!(
            !sidecars(&far).iter().any(|s| s.starts_with(&format!("{name}."))),
            "{name}'s sidecar left"
        );
    }
    let pruned = fx.tmp.path().join("pruned");
    mirror(&url, &BTreeMap::new(), &pruned).unwrap();
    assert_eq!(check_mirror(&pruned, &work, &history, window), in_window);

    // The backup dir still holds every file (its own retention is off):
    // a new start rescans the remote and uploads none of the pruned again.
    let backup = fx.start(Config::default());
    backup
        .start_replicated_backup(KV, fx.backup_dir(KV), &store_url, cb, Some(ms(4)))
        .await
        .unwrap();
    until_uploaded(&backup).await;
    backup.stop_backup(KV, true).await.unwrap();
    backup.shutdown().await.unwrap();
    let now = objects(&far);
    for name in &marked.marked {
        assert!(
            !now.contains(name),
            "{name} uploaded again after the remote was pruned"
        );
    }
    // The same from the command line: nothing left to mark, and a bad
    // grace is refused before anything is touched.
    let cbk = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cbk"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = cbk(&["prune", &url, "--keep-rounds", "4", "--grace", "0s"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("marked 0 objects"), "{text}");
    let o = cbk(&["prune", &url, "--keep-rounds", "4", "--grace", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a duration"));
    assert_eq!(objects(&far), now);
    println!(
        "remote prune: {} objects of {} marked ({} bytes), deleted after the grace period; {in_window} \
         window points exact from the pruned remote",
        marked.marked.len(),
        all.len(),
        marked.marked_bytes
    );
}
