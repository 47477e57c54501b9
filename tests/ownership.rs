//! One owner per backup dir and per data dir, dirs known by what they are
//! (device, inode), not by how their path is spelled.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use continuous_backup::refengine::RefEngine;
use continuous_backup::{Config, ContinuousBackup, Error, KvId};

const KV: KvId = KvId(1);

/// Every path under `root` with its length, to prove nothing changed.
fn tree(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), if meta.is_dir() { 0 } else { meta.len() }));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// Starts a backup of `kv` into `dir` whose callback writes one metadata
/// record per round; returns the receiver of its rounds.
async fn start_writing(
    backup: &ContinuousBackup,
    kv: KvId,
    dir: &Path,
) -> tokio::sync::mpsc::UnboundedReceiver<Round> {
    let (cb, mut rx) = recorder_with(|round| {
        round
            .writer
            .write(&format!("owner one, {} files", round.files.len()))?;
        Ok(())
    });
    backup.start_backup(kv, dir, cb, Some(ms(20))).await.unwrap();
    next_round(&mut rx, Duration::from_secs(5)).await;
    rx
}

/// Checks every `metadata.<n>.dat` in `dir` holds owner one's bytes.
fn every_record_is_owner_ones(dir: &Path) -> usize {
    let mut count = 0;
    for name in names(dir) {
        if continuous_backup::parse_metadata_file_name(&name).is_some() {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            assert!(text.starts_with("owner one"), "{name} holds {text:?}");
            count += 1;
        }
    }
    count
}

/// Regression: two components on one engine, each started on the same
/// backup dir, both ran; their metadata writes raced on the same temp names
/// and `write` returned `n` while `metadata.<n>.dat` held the other's bytes.
async fn a_second_component_is_refused(alias: impl Fn(&Fixture, &Path) -> PathBuf) {
    let fx = Fixture::new();
    fx.flush_some(KV, 3);
    let dir = fx.backup_dir(KV);
    let first = fx.start(Config::default());
    let mut rx = start_writing(&first, KV, &dir).await;

    let second = fx.start(Config::default());
    let second_dir = alias(&fx, &dir);
    let before = every_record_is_owner_ones(&dir);
    let (cb, _rx2) = recorder_with(|round| {
        round.writer.write("owner two")?;
        Ok(())
    });
    let err = second
        .start_backup(KV, &second_dir, cb, Some(ms(20)))
        .await
        .expect_err("a second owner of one backup dir is refused");
    match &err {
        Error::DirLocked { path, holder_pid } => {
            assert_eq!(path, &second_dir);
            assert_eq!(*holder_pid, Some(std::process::id()), "the holder is named");
            assert!(err.to_string().contains("in use"), "{err}");
        }
        other => panic!("expected DirLocked, got {other}"),
    }
    // The first owner goes on, and every record is its own.
    fx.flush_some(KV, 2);
    next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    next_round(&mut rx, Duration::from_secs(5)).await;
    first.stop_backup(KV, true).await.unwrap();
    let after = every_record_is_owner_ones(&dir);
    assert!(
        after > before,
        "the first owner kept writing ({before} → {after})"
    );
    assert!(
        names(&dir).iter().all(|n| !n.starts_with('.')),
        "no temp file left: {:?}",
        names(&dir)
    );
    // Once the first owner stopped, the dir is free.
    let (cb, mut rx2) = recorder();
    second
        .start_backup(KV, &second_dir, cb, Some(ms(20)))
        .await
        .unwrap();
    next_round(&mut rx2, Duration::from_secs(5)).await;
    second.stop_backup(KV, false).await.unwrap();
}

#[actix_rt::test]
async fn a_second_component_on_one_backup_dir_is_refused_and_loses_nothing() {
    a_second_component_is_refused(|_, dir| dir.to_path_buf()).await;
}

#[actix_rt::test]
async fn a_second_component_through_a_symlinked_parent_is_refused() {
    a_second_component_is_refused(|fx, dir| {
        let alias = fx.tmp.path().join("alias");
        std::os::unix::fs::symlink(fx.backup_root(), &alias).unwrap();
        alias.join(dir.file_name().unwrap())
    })
    .await;
}

#[actix_rt::test]
async fn two_stores_on_two_spellings_of_one_dir_are_refused() {
    let fx = Fixture::new();
    fx.flush_some(KvId(1), 1);
    fx.flush_some(KvId(2), 1);
    let backup = fx.start(Config::default());
    let dir = fx.backup_dir(KvId(1));
    let _rx = start_writing(&backup, KvId(1), &dir).await;
    let alias = fx.tmp.path().join("alias");
    std::os::unix::fs::symlink(fx.backup_root(), &alias).unwrap();
    // Store 1 goes on writing metadata and manifests; store 2's files must
    // not appear.
    let store_2_files: Vec<String> = fx
        .engine
        .files(KvId(2))
        .unwrap()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    let (cb, _rx2) = recorder();
    let err = backup
        .start_backup(KvId(2), alias.join("1"), cb, Some(ms(20)))
        .await
        .expect_err("one dir, two stores");
    assert!(
        matches!(err, Error::BackupDirInUse { holder, .. } if holder == KvId(1)),
        "{err}"
    );
    backup.stop_backup(KvId(1), false).await.unwrap();
    let store_1_files: Vec<String> = fx
        .engine
        .files(KvId(1))
        .unwrap()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    let linked: Vec<String> = names(&dir)
        .into_iter()
        .filter(|n| !n.starts_with("metadata.") && !n.starts_with("round."))
        .collect();
    assert_eq!(
        linked, store_1_files,
        "only store 1's files: nothing of store 2 ({store_2_files:?})"
    );
}

/// Regression: a backup dir aliased into the data dir through a symlink was
/// accepted: it created `<data>/kv-9` with another store's files, and the
/// next open of the engine listed a phantom store 9.
#[actix_rt::test]
async fn a_backup_dir_inside_the_data_dir_through_a_symlink_is_refused() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let alias = fx.tmp.path().join("looks-elsewhere");
    std::os::unix::fs::symlink(fx.engine.data_dir(), &alias).unwrap();
    let backup = fx.start(Config::default());
    let before = tree(fx.engine.data_dir());
    let (cb, _rx) = recorder();
    let err = backup
        .start_backup(KV, alias.join("kv-9"), cb, Some(ms(20)))
        .await
        .expect_err("inside the data dir");
    assert!(
        matches!(&err, Error::InvalidBackupDir { reason, .. } if reason.contains("data dir")),
        "{err}"
    );
    assert_eq!(
        tree(fx.engine.data_dir()),
        before,
        "nothing written into the data dir"
    );
    backup.shutdown().await.unwrap();
}

#[test]
fn a_second_engine_on_one_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let first = RefEngine::open(tmp.path().join("data")).unwrap();
    first.put(KV, b"k", b"v").unwrap();
    first.flush(KV).unwrap();
    let before = tree(tmp.path());
    let alias = tmp.path().join("alias");
    std::os::unix::fs::symlink(tmp.path().join("data"), &alias).unwrap();
    for spelling in [tmp.path().join("data"), alias.clone()] {
        match RefEngine::open(&spelling) {
            Err(Error::DirLocked { holder_pid, .. }) => assert_eq!(holder_pid, Some(std::process::id())),
            other => panic!("expected DirLocked for {}, got {other:?}", spelling.display()),
        }
    }
    let mut after = tree(tmp.path());
    after.retain(|(p, _)| p != &alias);
    assert_eq!(after, before, "the refused open touched nothing");
    drop(first);
    // Free once the first engine is gone. A child another test of this
    // binary forks shares the lock's open file description until it execs
    // (O_CLOEXEC closes it only then), so the lock may outlive the drop by
    // that long: a liveness bound, not a timing assertion.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match RefEngine::open(tmp.path().join("data")) {
            Ok(_) => break,
            Err(Error::DirLocked { .. }) if std::time::Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("not free once the first engine is gone: {e}"),
        }
    }
}

#[test]
fn a_backup_root_with_dot_dot_is_refused_by_config_validation() {
    let config = Config {
        backup_root: Some("/srv/backups/../elsewhere".into()),
        ..Config::default()
    };
    assert!(matches!(
        config.validate(),
        Err(Error::Config {
            field: "backup_root",
            ..
        })
    ));
}

/// Regression: two runs of the storage server on one `--dir` both started;
/// the second removed the first's temp file, which then died with
/// `rename ... NotFound`.
#[test]
fn a_second_storage_server_on_one_dir_is_refused_and_the_first_completes() {
    let bin = example_binary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let first = Command::new(&bin)
        .args(["--seconds", "3", "--stores", "4", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (a liveness bound) until the first server backs up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("backup/0/metadata.1.dat").exists() {
        assert!(Instant::now() < deadline, "the first server never wrote metadata");
        std::thread::sleep(ms(20));
    }
    let second = Command::new(&bin)
        .args(["--seconds", "1", "--stores", "4", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(
        second.status.code(),
        Some(2),
        "refused with a non-zero exit: {said}"
    );
    assert!(
        said.contains("in use") && said.contains(&format!("process {}", first.id())),
        "names the dir in use and the holder: {said}"
    );
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "the first server completes, its backups whole: {}{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
}

/// Regression: files an earlier start left unacknowledged in its dir were
/// reported by the next start of the store into a *different* dir, though
/// they were not in it.
#[actix_rt::test]
async fn a_start_into_another_dir_reports_only_files_in_that_dir() {
    let fx = Fixture::new();
    fx.flush_some(KV, 2);
    let backup = ContinuousBackup::start(Arc::new(fx.engine.clone()), Config::default(), None).unwrap();
    let (failing, mut rx) = recorder_by_call(|_| Err("not now".into()));
    let dir_a = fx.tmp.path().join("backup-a");
    backup
        .start_backup(KV, &dir_a, failing, Some(ms(3_600_000)))
        .await
        .unwrap();
    let failed = next_round(&mut rx, Duration::from_secs(5)).await;
    assert!(!failed.files.is_empty());
    backup.stop_backup(KV, false).await.unwrap();
    // Compaction replaces what A holds, so B's snapshot has other files.
    fx.flush_some(KV, 2);
    fx.engine.compact(KV).unwrap();
    let dir_b = fx.tmp.path().join("backup-b");
    let (cb, mut rx) = recorder();
    backup
        .start_backup(KV, &dir_b, cb, Some(ms(3_600_000)))
        .await
        .unwrap();
    let round = next_round(&mut rx, Duration::from_secs(5)).await;
    assert!(!round.files.is_empty());
    for f in &round.files {
        let path = dir_b.join(&f.name);
        assert!(
            path.exists(),
            "{} reported but not in {}",
            f.name,
            dir_b.display()
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), f.len);
    }
    backup.stop_backup(KV, false).await.unwrap();
}
