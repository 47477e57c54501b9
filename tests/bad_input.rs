//! Bad input at the API: each gets a typed error naming the problem, and
//! nothing is written. `cargo test --test bad_input -- --nocapture` prints
//! how many were tried.
#![expect(clippy::print_stdout, reason = "the suite prints its count")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::{Config, ContinuousBackup, Error, IndexFile, KvId, MAX_METADATA_LEN, MAX_SEQNO};

const KV: KvId = KvId(3);

/// Every file and dir under `root`, to prove nothing was written.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        out.push(p.clone());
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[actix_rt::test]
async fn bad_input_gets_a_typed_error_and_writes_nothing() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    let root = fx.tmp.path();
    let a_file = root.join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let symlinked = root.join("symlinked");
    std::os::unix::fs::symlink(root.join("elsewhere"), &symlinked).unwrap();
    std::fs::create_dir(root.join("elsewhere")).unwrap();
    let mut tried = 0;

    // Backup dirs.
    let dirs: Vec<(PathBuf, &str)> = vec![
        (PathBuf::from("relative/dir"), "relative"),
        (root.join("x/../y"), "`..`"),
        (a_file.clone(), "not a directory"),
        (a_file.join("below"), "a file"),
        (
            fx.engine.data_dir().join("kv-backup"),
            "inside the engine's data dir",
        ),
        (symlinked.clone(), "symlink"),
    ];
    let before = tree(root);
    for (dir, says) in &dirs {
        let err = backup.start_backup(KV, dir, cb.clone(), None).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidBackupDir { .. }),
            "{}: {err}",
            dir.display()
        );
        assert!(
            err.to_string().contains(says),
            "{}: `{err}` does not say {says}",
            dir.display()
        );
        tried += 1;
    }
    for interval in [Duration::ZERO, Duration::MAX] {
        let err = backup
            .start_backup(KV, fx.backup_dir(KV), cb.clone(), Some(interval))
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
        tried += 1;
    }
    assert_eq!(tree(root), before, "a refused start wrote something");
    assert!(backup.status().await.unwrap().running().is_empty());

    // Two stores, one dir.
    backup
        .start_backup(KV, fx.backup_dir(KV), cb.clone(), None)
        .await
        .unwrap();
    let first = next_round(&mut rx, Duration::from_secs(5)).await.writer;
    let before = tree(root);
    let err = backup
        .start_backup(KvId(4), fx.backup_dir(KV), cb.clone(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BackupDirInUse { holder: KV, .. }), "{err}");
    tried += 1;
    assert_eq!(tree(root), before);

    // Metadata: empty and over the limit.
    let huge = "m".repeat(MAX_METADATA_LEN + 1);
    for data in [String::new(), huge] {
        let w = first.clone();
        let err = blocking(move || w.write(&data)).await.unwrap_err();
        assert!(
            matches!(err, Error::MetadataEmpty { .. } | Error::MetadataTooLarge { .. }),
            "{err}"
        );
        tried += 1;
    }
    assert_eq!(tree(root), before, "a refused metadata write wrote something");

    // What an engine may list.
    let bad_files: Vec<(&str, u64, u64, &str)> = vec![
        ("/d/1.sqi", 1, MAX_SEQNO + 1, "48-bit"),
        ("/d/1.sqi", MAX_SEQNO + 1, MAX_SEQNO + 1, "48-bit"),
        ("/d/1.sqi", 9, 3, "low is above high"),
        ("relative/1.sqi", 1, 1, "relative"),
        ("/d/..", 1, 1, "no file name"),
        ("/d/.hidden", 1, 1, "starts with `.`"),
        ("/d/metadata.7.dat", 1, 1, "metadata."),
        ("/d/a~1", 1, 1, "`~`"),
    ];
    for (path, low, high, says) in &bad_files {
        let err = IndexFile::new(*path, 10, *low, *high).unwrap_err();
        assert!(
            err.to_string().contains(says),
            "{path}: `{err}` does not say {says}"
        );
        tried += 1;
    }

    // Configuration.
    for config in [
        Config {
            linker_threads: 0,
            ..Config::default()
        },
        Config {
            metadata_threads: 0,
            ..Config::default()
        },
        Config {
            metadata_threads: 65,
            ..Config::default()
        },
        Config {
            callback_threads: 0,
            ..Config::default()
        },
        Config {
            callback_watchdog: Duration::ZERO,
            ..Config::default()
        },
        Config {
            tick_slot: Duration::from_millis(1001),
            ..Config::default()
        },
        Config {
            backup_root: Some("rel".into()),
            ..Config::default()
        },
        Config {
            backup_root: Some("/srv/../backups".into()),
            ..Config::default()
        },
        Config {
            dir_mode: 0o500,
            ..Config::default()
        },
        Config {
            file_mode: 0o7777,
            ..Config::default()
        },
    ] {
        let err = ContinuousBackup::start(Arc::new(fx.engine.clone()), config, None)
            .err()
            .unwrap();
        assert!(matches!(err, Error::Config { .. }), "{err}");
        tried += 1;
    }
    println!("bad inputs tried: {tried}, each refused with a typed error, nothing written");
}
