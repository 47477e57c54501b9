//! A backup dir on another file system than the data (`EXDEV`): files are
//! copied durably instead of linked, counted, and warned about once per
//! store.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::{Config, KvId};
use parking_lot::Mutex;

/// Log lines, captured from every thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_rt::test]
async fn a_backup_dir_on_another_file_system_gets_durable_copies_counted_and_warned_once() {
    let fx = Fixture::new();
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipped: /dev/shm is not writable here");
        return;
    };
    if std::fs::metadata(shm.path()).unwrap().dev() == std::fs::metadata(fx.tmp.path()).unwrap().dev() {
        eprintln!("skipped: /dev/shm and the temp dir are on one file system here");
        return;
    }
    let logs = Captured::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    )
    .unwrap();

    let kv = KvId(8);
    let sources: Vec<_> = (0..5).map(|_| fx.flush_some(kv, 20)).collect();
    let dir = shm.path().join("backup/8");
    let backup = fx.start(Config::default());
    let (cb, mut rx) = recorder();
    backup
        .start_backup(kv, &dir, cb.clone(), Some(ms(30)))
        .await
        .unwrap();
    let round = next_round(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(round.files.len(), 5);
    for src in &sources {
        let copy = dir.join(src.name());
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(src.path()).unwrap());
        assert_ne!(inode(&copy), inode(src.path()));
        assert_eq!(
            std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let later = fx.flush_some(kv, 20);
    let round = next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(round.files[0].name, later.name());
    let s = store_status(&backup, kv).await;
    assert!(s.cross_device);
    assert_eq!((s.files_copied, s.files_linked), (6, 0));
    assert_eq!(
        s.bytes_copied,
        sources.iter().chain([&later]).map(|f| f.len()).sum::<u64>()
    );

    // A restart finds its copies and copies nothing again.
    backup.stop_backup(kv, false).await.unwrap();
    backup.start_backup(kv, &dir, cb, Some(ms(30))).await.unwrap();
    let again = next_nonempty_round(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(again.files.len(), 6);
    assert!(
        again.files.iter().all(|f| !f.name.contains('~')),
        "copied again under a new name"
    );
    assert_eq!(store_status(&backup, kv).await.files_copied, 6);
    assert!(names(&dir).iter().all(|n| !n.starts_with('.')), "temp files left");

    let text = String::from_utf8(logs.0.lock().clone()).unwrap();
    let warnings = text.matches("another file system").count();
    assert_eq!(
        warnings, 2,
        "one warning per start of the store, not per file:\n{text}"
    );
}
