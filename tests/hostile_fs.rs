//! Hostile file-system state: symlinks planted where the component creates
//! names never make it write outside the backup dir, and what it creates is
//! private unless configured otherwise.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use continuous_backup::{Config, Error, KvId};

const KV: KvId = KvId(2);

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[actix_rt::test]
async fn symlinks_planted_at_metadata_names_are_never_followed() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    let dir = fx.backup_dir(KV);
    backup.start_backup(KV, &dir, cb, None).await.unwrap();
    let writer = next_round(&mut rx, Duration::from_secs(5)).await.writer;
    let outside = fx.tmp.path().join("outside");
    std::fs::write(&outside, b"precious").unwrap();

    // The next metadata name is a symlink out of the dir.
    symlink(&outside, dir.join("metadata.1.dat")).unwrap();
    let w = writer.clone();
    let err = blocking(move || w.write("attack")).await.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // Its temp name too.
    symlink(&outside, dir.join(".cbk-tmp.metadata.2.dat")).unwrap();
    let w = writer.clone();
    assert_eq!(
        blocking(move || w.write("safe")).await.unwrap(),
        2,
        "n = 1 is taken, never reused"
    );
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        b"precious",
        "wrote through a symlink"
    );
    assert!(
        std::fs::symlink_metadata(dir.join("metadata.1.dat"))
            .unwrap()
            .is_symlink(),
        "replaced a file"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("metadata.2.dat")).unwrap(),
        "safe"
    );
}

#[actix_rt::test]
async fn a_backup_dir_swapped_for_a_symlink_after_start_is_not_followed() {
    let fx = Fixture::new();
    fx.flush_some(KV, 1);
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    let dir = fx.backup_dir(KV);
    backup.start_backup(KV, &dir, cb, Some(ms(30))).await.unwrap();
    let writer = next_round(&mut rx, Duration::from_secs(5)).await.writer;
    // Someone moves the dir away and puts a symlink to elsewhere in its place.
    let moved = fx.tmp.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    let elsewhere = fx.tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, &dir).unwrap();
    let file = fx.flush_some(KV, 1);
    let round = next_nonempty_round(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(round.files[0].name, file.name());
    assert_eq!(blocking(move || writer.write("after the swap")).await.unwrap(), 1);
    assert!(moved.join(file.name()).exists() && moved.join("metadata.1.dat").exists());
    assert!(
        names(&elsewhere).is_empty(),
        "wrote through the symlink: {:?}",
        names(&elsewhere)
    );
}

#[actix_rt::test]
async fn created_dirs_are_0700_and_files_0600_unless_configured() {
    let fx = Fixture::new();
    fx.engine.create_store(KV).unwrap();
    fx.engine.create_store(KvId(3)).unwrap();
    for (kv, config, dir_mode, file_mode) in [
        (KV, Config::default(), 0o700, 0o600),
        (
            KvId(3),
            Config {
                dir_mode: 0o750,
                file_mode: 0o640,
                ..Config::default()
            },
            0o750,
            0o640,
        ),
    ] {
        let backup = fx.start(config);
        let (cb, mut rx) = recorder();
        let dir = fx.tmp.path().join(format!("new-{kv}/backup"));
        backup.start_backup(kv, &dir, cb, None).await.unwrap();
        let w = next_round(&mut rx, Duration::from_secs(5)).await.writer;
        blocking(move || w.write("x")).await.unwrap();
        // The umask may clear group and other bits, never add them.
        assert_eq!(mode(&dir) & !dir_mode, 0);
        assert_eq!(mode(&dir) & 0o700, 0o700);
        assert_eq!(mode(dir.parent().unwrap()) & !dir_mode, 0, "missing parents too");
        assert_eq!(mode(&dir.join("metadata.1.dat")) & !file_mode, 0);
        backup.shutdown().await.unwrap();
    }
}
