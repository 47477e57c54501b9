//! File-system faults during rounds and metadata writes: each ends in a
//! typed error or a documented recovery, and nothing is lost. Faults come
//! from the kernel where it can make them without root (a small tmpfs in a
//! user namespace for ENOSPC, ext4's link limit for EMLINK) and from the
//! `faults` seam for the rest (EROFS, EACCES, EIO on demand).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use continuous_backup::faults::{self, FsOp};
use continuous_backup::{Config, Error, KvId};

const ENOSPC: i32 = 28;
const EROFS: i32 = 30;
const EACCES: i32 = 13;

#[actix_rt::test]
async fn a_full_disk_fails_rounds_cleanly_backs_off_and_catches_up_while_others_run() {
    let fx = Fixture::new();
    let (sick, well) = (KvId(1), KvId(2));
    let early = fx.flush_some(sick, 3);
    fx.flush_some(well, 3);
    let backup = fx.start(Config {
        max_backoff: ms(200),
        ..Config::default()
    });
    let fault = faults::inject(fx.backup_dir(sick), FsOp::Link, ENOSPC);
    let (sick_cb, mut sick_rx) = recorder();
    let (well_cb, mut well_rx) = recorder();
    backup
        .start_backup(sick, fx.backup_dir(sick), sick_cb, Some(ms(20)))
        .await
        .unwrap();
    backup
        .start_backup(well, fx.backup_dir(well), well_cb, Some(ms(20)))
        .await
        .unwrap();
    let late = fx.flush_some(sick, 3); // flushed while the disk is full
    for _ in 0..5 {
        next_round(&mut well_rx, Duration::from_secs(10)).await; // the other store goes on
    }
    assert!(
        no_round_within(&mut sick_rx, ms(100)).await,
        "the callback heard of a failed round"
    );
    let s = store_status(&backup, sick).await;
    assert!(s.running && s.failed_rounds >= 2, "{s:?}");
    assert!(s.last_error.as_deref().unwrap().contains("os error 28"), "{s:?}");
    assert!(
        s.failed_rounds < 25,
        "{} failed rounds in well under a second: no backoff",
        s.failed_rounds
    );
    assert!(
        names(&fx.backup_dir(sick)).iter().all(|n| !n.starts_with('.')),
        "a temp file was left"
    );

    drop(fault); // space is back
    let round = next_nonempty_round(&mut sick_rx, Duration::from_secs(10)).await;
    let got: Vec<&str> = round.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        got,
        vec![early.name(), late.name()],
        "the round after the fault catches up"
    );
    // The round finishes (and clears the error) just after its callback returns.
    eventually(
        Duration::from_secs(10),
        "the error stayed after a good round",
        || {
            let backup = backup.clone();
            async move {
                store_status(&backup, sick)
                    .await
                    .last_error
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
}

#[actix_rt::test]
async fn read_only_and_permission_errors_are_typed_and_leave_nothing_half_written() {
    let fx = Fixture::new();
    let kv = KvId(3);
    fx.flush_some(kv, 1);
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    let dir = fx.backup_dir(kv);
    backup.start_backup(kv, &dir, cb, Some(ms(30))).await.unwrap();
    let writer = next_round(&mut rx, Duration::from_secs(5)).await.writer;

    // A metadata write on a read-only file system: typed, nothing left.
    for op in [FsOp::CreateTemp, FsOp::Write, FsOp::SyncFile, FsOp::Rename] {
        let _ro = faults::inject(&dir, op, EROFS);
        let w = writer.clone();
        let err = blocking(move || w.write("record")).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(EROFS)),
            "{op:?}: {err}"
        );
        assert!(
            names(&dir).iter().all(|n| !n.starts_with(".cbk-tmp")),
            "{op:?} left a temp file"
        );
    }
    let w = writer.clone();
    assert_eq!(
        blocking(move || w.write("record")).await.unwrap(),
        1,
        "no number was used up"
    );

    // A link refused for permissions: the error says what to check.
    let _acces = faults::inject(&dir, FsOp::Link, EACCES);
    let new = fx.flush_some(kv, 1);
    let err = eventually(Duration::from_secs(10), "no round failed", || {
        let backup = backup.clone();
        async move { store_status(&backup, kv).await.last_error.clone() }
    })
    .await;
    assert!(
        err.contains("permission denied") && err.contains(new.name()),
        "{err}"
    );
    assert!(!dir.join(new.name()).exists());
}

#[actix_rt::test]
async fn the_link_limit_is_a_clear_error_naming_the_file() {
    let fx = Fixture::new();
    let kv = KvId(4);
    let file = fx.flush_some(kv, 1);
    // Bring the file to ext4's limit of 65,000 links.
    let extra = fx.tmp.path().join("extra-links");
    std::fs::create_dir(&extra).unwrap();
    let mut made = 0;
    loop {
        match std::fs::hard_link(file.path(), extra.join(made.to_string())) {
            Ok(()) => made += 1,
            Err(e) if e.raw_os_error() == Some(31) => break, // EMLINK
            Err(e) => panic!("linking: {e}"),
        }
        if made > 200_000 {
            eprintln!("skipped: this file system has no link limit below 200,000");
            return;
        }
    }
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(kv, fx.backup_dir(kv), cb, Some(ms(30)))
        .await
        .unwrap();
    assert!(no_round_within(&mut rx, ms(200)).await);
    let err = store_status(&backup, kv).await.last_error.unwrap();
    assert!(
        err.contains("EMLINK") && err.contains(&file.path().display().to_string()),
        "{err}"
    );
    assert!(
        names(&fx.backup_dir(kv)).is_empty(),
        "something half-done was left: {:?}",
        names(&fx.backup_dir(kv))
    );
    std::fs::remove_dir_all(&extra).unwrap();
    let round = next_round(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(
        round.files[0].name,
        file.name(),
        "linked once links are free again"
    );
}

/// Runs in a child: `CBK_SMALL_TMPFS` is a 512 KiB tmpfs mounted for it in a
/// user and mount namespace; the data lives on the parent's file system, so
/// files are copied there, and the disk fills for real.
fn disk_full_in_small_tmpfs(mount: &std::path::Path) {
    let fx = Fixture::new();
    let kv = KvId(6);
    let files: Vec<_> = (0..4)
        .map(|i| {
            for k in 0..10 {
                fx.engine
                    .put(kv, format!("k{i}-{k}").as_bytes(), &[i as u8; 10_000])
                    .unwrap();
            }
            fx.engine.flush(kv).unwrap().unwrap()
        })
        .collect();
    let filler = mount.join("filler");
    std::fs::write(&filler, vec![0u8; 420 * 1024]).unwrap();
    let dir = mount.join("backup");
    actix::System::new().block_on(async {
        let backup = fx.start(Config {
            max_backoff: ms(100),
            ..Config::default()
        });
        let (cb, mut rx) = recorder();
        backup.start_backup(kv, &dir, cb, Some(ms(20))).await.unwrap();
        assert!(
            no_round_within(&mut rx, ms(300)).await,
            "a round reported files that did not fit"
        );
        let s = store_status(&backup, kv).await;
        assert!(s.cross_device || s.failed_rounds > 0, "{s:?}");
        assert!(
            s.last_error.as_deref().unwrap_or("").contains("os error 28"),
            "{s:?}"
        );
        assert!(
            names(&dir).iter().all(|n| !n.starts_with('.')),
            "temp files left: {:?}",
            names(&dir)
        );
        std::fs::remove_file(&filler).unwrap();
        let round = next_round(&mut rx, Duration::from_secs(10)).await;
        assert_eq!(round.files.len(), files.len(), "caught up once space was back");
        for f in &files {
            assert_eq!(
                std::fs::read(dir.join(f.name())).unwrap(),
                std::fs::read(f.path()).unwrap()
            );
        }
        assert_eq!(store_status(&backup, kv).await.files_copied, files.len() as u64);
    });
}

#[test]
fn a_disk_that_is_really_full_fails_rounds_until_space_returns() {
    if let Ok(mount) = std::env::var("CBK_SMALL_TMPFS") {
        return disk_full_in_small_tmpfs(std::path::Path::new(&mount));
    }
    let probe = Command::new("unshare").args(["-r", "-m", "true"]).output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!(
            "skipped: `unshare -r -m` is not available here, so no small tmpfs can be mounted without root"
        );
        return;
    }
    let mount = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args([
            "-r",
            "-m",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=512k tmpfs "$0" && exec "$@""#,
        ])
        .arg(mount.path())
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_disk_that_is_really_full_fails_rounds_until_space_returns",
            "--nocapture",
        ])
        .env("CBK_SMALL_TMPFS", mount.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");
    assert!(
        out.status.success(),
        "the child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
