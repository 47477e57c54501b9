//! The `cbk` command on a real backup: help, inspect, verify (clean, then a
//! flipped byte, a truncated file and a missing metadata number), restore.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use continuous_backup::refengine::RefEngine;
use continuous_backup::{Config, KvId};

fn cbk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cbk"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Two stores backed up with three flushes each and a metadata record per
/// round; returns the highest seqno of each.
async fn make_backup(fx: &Fixture) -> Vec<(KvId, u64)> {
    let backup = fx.start(Config::default());
    let mut out = Vec::new();
    for kv in [KvId(1), KvId(2)] {
        let (cb, mut rx) = recorder_with(|round| {
            round
                .writer
                .write(&format!("{{\"files\":{}}}", round.files.len()))?;
            Ok(())
        });
        for i in 0..3u8 {
            fx.engine.put(kv, b"k", &[i]).unwrap();
            fx.engine.put(kv, format!("only-{i}").as_bytes(), b"v").unwrap();
            fx.engine.flush(kv).unwrap();
        }
        fx.engine.delete(kv, b"only-0").unwrap();
        fx.engine.flush(kv).unwrap();
        backup
            .start_backup(kv, fx.backup_dir(kv), cb, Some(ms(20)))
            .await
            .unwrap();
        next_round(&mut rx, Duration::from_secs(5)).await;
        next_round(&mut rx, Duration::from_secs(5)).await;
        backup.stop_backup(kv, true).await.unwrap();
        out.push((kv, fx.engine.high_seqno(kv).unwrap()));
    }
    out
}

fn root(fx: &Fixture) -> String {
    fx.backup_root().display().to_string()
}

#[test]
fn help_reads_well() {
    let o = cbk(&["--help"]);
    assert!(o.status.success());
    let t = text(&o);
    for word in ["inspect", "verify", "restore"] {
        assert!(t.contains(word), "{t}");
    }
    let o = cbk(&["restore", "--help"]);
    assert!(
        text(&o).contains("--to-seqno <S>") && text(&o).contains("--out <DATA_DIR>"),
        "{}",
        text(&o)
    );
}

/// A store compacted before its backup started: the compaction output kept
/// only the newest versions, so only its high seqno and above restore
/// exactly, and inspect says so.
#[actix_rt::test]
async fn inspect_names_the_exact_restore_points_of_a_compacted_store() {
    let fx = Fixture::new();
    let kv = KvId(3);
    for i in 0..3u8 {
        fx.engine.put(kv, b"k", &[i]).unwrap(); // @1, @2, @3
        fx.engine.flush(kv).unwrap();
    }
    fx.engine.compact(kv).unwrap(); // 1..=3 holding k@3 only
    fx.engine.put(kv, b"k", b"x").unwrap(); // @4
    fx.engine.flush(kv).unwrap();
    let backup = fx.start(Config::default());
    fx.back_up_once(&backup, kv).await;
    let o = cbk(&["inspect", &root(&fx)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("exact restore points: 3..=4 (1 files do not hold every version"),
        "{}",
        text(&o)
    );
    let o = cbk(&[
        "restore",
        &root(&fx),
        "--kv",
        "3",
        "--to-seqno",
        "2",
        "--out",
        "/nonexistent/x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("exact restore points: 3..=4"), "{}", text(&o));
}

#[actix_rt::test]
async fn inspect_shows_every_store_as_a_table_and_as_json() {
    let fx = Fixture::new();
    let highs = make_backup(&fx).await;
    let o = cbk(&["inspect", &root(&fx)]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.lines().count() >= 3 && t.contains("files\":"), "{t}");
    let o = cbk(&["inspect", "--json", &root(&fx)]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stores = json.as_array().unwrap();
    assert_eq!(stores.len(), 2);
    for (store, (kv, high)) in stores.iter().zip(&highs) {
        assert_eq!(store["kv"], kv.0);
        assert_eq!(store["files"], 4);
        assert_eq!(store["highest_seqno"], *high);
        assert_eq!(store["gaps"].as_array().unwrap().len(), 0);
        assert_eq!(
            store["restorable"],
            serde_json::json!([[1, *high]]),
            "flushed files: exact everywhere"
        );
        assert_eq!(store["lossy_files"], 0);
        assert_eq!(
            store["shared_with_live"], 4,
            "still linked with the live data dir"
        );
        assert!(store["metadata"]["count"].as_u64().unwrap() >= 2);
        assert_eq!(store["own_bytes"], 0, "every file is still the live engine's");
        assert_eq!(store["shared_bytes"], store["bytes"]);
    }
    // Compaction drops the live links: the backup alone holds the inputs.
    let (kv, _) = highs[0];
    fx.engine.compact(kv).unwrap();
    let o = cbk(&["inspect", "--json", &root(&fx)]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let store = &json[0];
    assert_eq!(store["own_bytes"], store["bytes"], "{store}");
    assert_eq!(store["shared_bytes"], 0);
    assert!(text(&cbk(&["inspect", &root(&fx)])).contains("bytes only the backup holds"));
}

fn corrupt_one_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[3] ^= 0x40;
    // Replace, not write through: the file is a hard link to live data.
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[actix_rt::test]
async fn verify_is_clean_then_catches_a_flipped_byte_a_truncation_and_a_missing_number() {
    let fx = Fixture::new();
    make_backup(&fx).await;
    let o = cbk(&["verify", &root(&fx)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let dir = fx.backup_dir(KvId(1));
    let files: Vec<_> = names(&dir).into_iter().filter(|n| n.ends_with(".sqi")).collect();
    corrupt_one_byte(&dir.join(&files[0]));
    let truncated = dir.join(&files[1]);
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::remove_file(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    std::fs::remove_file(fx.backup_dir(KvId(2)).join("metadata.1.dat")).unwrap();

    let o = cbk(&["verify", &root(&fx)]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&files[0]) && t.contains(&files[1]), "{t}");
    assert!(t.contains("metadata.1.dat") && t.contains("hole"), "{t}");
    assert!(t.contains("3 problems"), "{t}");
}

#[actix_rt::test]
async fn restore_rebuilds_a_store_at_a_seqno_the_engine_opens() {
    let fx = Fixture::new();
    let highs = make_backup(&fx).await;
    let (kv, high) = highs[0];
    // Seqnos of KV 1: k=0 @1, only-0 @2, k=1 @3, only-1 @4, k=2 @5, only-2 @6, del only-0 @7.
    let out = fx.tmp.path().join("restored");
    for (s, k, only0) in [(3u64, Some(vec![1u8]), true), (high, Some(vec![2]), false)] {
        let out = out.join(s.to_string());
        let o = cbk(&[
            "restore",
            &root(&fx),
            "--kv",
            "1",
            "--to-seqno",
            &s.to_string(),
            "--out",
            &out.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(o.stderr.is_empty(), "no progress bar when piped: {}", text(&o));
        let engine = RefEngine::open(&out).unwrap();
        assert_eq!(engine.get(kv, b"k").unwrap(), k);
        assert_eq!(engine.get(kv, b"only-0").unwrap().is_some(), only0, "at {s}");
        assert_eq!(
            engine.high_seqno(kv).unwrap(),
            s,
            "continues after the restored seqno"
        );
    }
    // Refused: beyond the backup, and into a dir that holds something.
    let o = cbk(&[
        "restore",
        &root(&fx),
        "--kv",
        "1",
        "--to-seqno",
        &(high + 1).to_string(),
        "--out",
        "/tmp/cbk-never",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("covers seqnos"), "{}", text(&o));
    assert!(!Path::new("/tmp/cbk-never").exists());
    let o = cbk(&[
        "restore",
        &root(&fx),
        "--all",
        "--to-seqno",
        "3",
        "--out",
        &out.join("3").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not empty"), "{}", text(&o));
    let all = out.join("all");
    let o = cbk(&[
        "restore",
        &root(&fx),
        "--all",
        "--to-seqno",
        "5",
        "--out",
        &all.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let engine = RefEngine::open(&all).unwrap();
    assert_eq!(engine.stores(), vec![KvId(1), KvId(2)]);
}

/// cbk on an lsm-tree backup: the format is found from the manifests,
/// verify reads every table through lsm-tree's reader (and catches a
/// flipped byte), and a restore builds a tree the adapter opens.
#[cfg(feature = "lsm-tree")]
#[actix_rt::test]
async fn cbk_inspects_verifies_and_restores_an_lsm_tree_backup() {
    use continuous_backup::lsm::LsmEngine;
    use continuous_backup::{ContinuousBackup, Engine};
    use std::sync::Arc;

    let fx = Fixture::new();
    let kv = KvId(5);
    let engine = Arc::new(LsmEngine::open(fx.tmp.path().join("lsm-data")).unwrap());
    engine.create_store(kv).unwrap();
    let backup = ContinuousBackup::start(engine.clone() as Arc<dyn Engine>, Config::default(), None).unwrap();
    let (cb, mut rx) = recorder();
    backup
        .start_backup(kv, fx.backup_dir(kv), cb, Some(ms(5)))
        .await
        .unwrap();
    next_round(&mut rx, Duration::from_secs(10)).await;
    let mut last = 0;
    for i in 0..30u32 {
        last = engine
            .put(kv, format!("k{}", i % 7).as_bytes(), &i.to_le_bytes())
            .unwrap();
        if i % 5 == 4 {
            engine.delete(kv, b"k3").unwrap();
            engine.flush(kv).unwrap();
        }
    }
    engine.flush(kv).unwrap();
    engine.major_compact(kv).unwrap();
    backup.stop_backup(kv, true).await.unwrap();

    let o = cbk(&["inspect", &root(&fx)]);
    assert!(
        o.status.success() && text(&o).contains("lsm-tree-3"),
        "{}",
        text(&o)
    );
    let o = cbk(&["verify", &root(&fx)]);
    assert!(o.status.success() && text(&o).contains("clean"), "{}", text(&o));

    let out = fx.tmp.path().join("restored");
    let seqno = last.to_string();
    let o = cbk(&[
        "restore",
        &root(&fx),
        "--kv",
        "5",
        "--to-seqno",
        &seqno,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let restored = LsmEngine::open(&out).unwrap();
    for k in 0..7u32 {
        let key = format!("k{k}");
        assert_eq!(
            restored.get(kv, key.as_bytes()).unwrap(),
            engine.get(kv, key.as_bytes()).unwrap(),
            "{key}"
        );
    }

    // A flipped byte in a table is found by lsm-tree's block checksums.
    let store = continuous_backup::restore::BackupRoot::open(&fx.backup_root()).unwrap();
    let biggest = store.stores()[0]
        .files
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let copy = fx.tmp.path().join("copy");
    std::fs::create_dir_all(copy.join("5")).unwrap();
    for entry in std::fs::read_dir(fx.backup_dir(kv)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join("5").join(entry.file_name())).unwrap();
    }
    corrupt_one_byte(&copy.join("5").join(biggest.file_name().unwrap()));
    let o = cbk(&["verify", copy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(biggest.file_name().unwrap().to_str().unwrap()),
        "{}",
        text(&o)
    );
}
