//! Shared helpers of the integration tests: a reference engine in a temp
//! dir, and a callback that records every round.
#![allow(dead_code)] // each test binary uses its own subset

pub mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use continuous_backup::refengine::RefEngine;
use continuous_backup::{
    callback, BackupCallback, BackupFile, Config, ContinuousBackup, IndexFile, KvId, MetadataWriter, Snapshot,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Every mutation of one store, in seqno order: (seqno, key, value or
/// delete), as a test's writer recorded it.
pub type History = Vec<(u64, Vec<u8>, Option<Vec<u8>>)>;

/// The oracle: the store's keys and values at `seqno` (deleted keys absent).
pub fn state_at(history: &History, seqno: u64) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let mut state = std::collections::BTreeMap::new();
    for (_, key, value) in history.iter().take_while(|(s, ..)| *s <= seqno) {
        match value {
            Some(v) => state.insert(key.clone(), v.clone()),
            None => state.remove(key),
        };
    }
    state
}

/// One callback call, as the recorder saw it.
#[derive(Clone, Debug)]
pub struct Round {
    pub kv: KvId,
    pub files: Vec<BackupFile>,
    pub snapshot: Vec<IndexFile>,
    pub started: Instant,
    pub ended: Instant,
    pub writer: MetadataWriter,
}

/// A temp dir with engine data under `data/` and backups under `backup/`.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub engine: RefEngine,
}

impl Fixture {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let engine = RefEngine::open(tmp.path().join("data")).unwrap();
        Fixture { tmp, engine }
    }

    pub fn backup_dir(&self, kv: KvId) -> PathBuf {
        self.tmp.path().join("backup").join(kv.to_string())
    }

    pub fn backup_root(&self) -> PathBuf {
        self.tmp.path().join("backup")
    }

    /// Puts `n` keys into `kv` and flushes them as one file.
    pub fn flush_some(&self, kv: KvId, n: usize) -> IndexFile {
        let base = self.engine.high_seqno(kv).unwrap_or(0);
        for i in 0..n {
            let key = format!("key-{}", base as usize + i);
            self.engine.put(kv, key.as_bytes(), b"value").unwrap();
        }
        self.engine.flush(kv).unwrap().expect("something to flush")
    }

    pub fn start(&self, config: Config) -> ContinuousBackup {
        ContinuousBackup::start(Arc::new(self.engine.clone()), config, None).unwrap()
    }

    /// Backs up `kv` for one round (what it has now) and stops.
    pub async fn back_up_once(&self, backup: &ContinuousBackup, kv: KvId) -> Round {
        let (cb, mut rx) = recorder();
        backup
            .start_backup(kv, self.backup_dir(kv), cb, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        let round = next_round(&mut rx, Duration::from_secs(5)).await;
        backup.stop_backup(kv, false).await.unwrap();
        round
    }
}

/// A callback that records every round on a channel, after running `inner`
/// (which may block, fail or panic).
pub fn recorder_with<F>(inner: F) -> (Arc<dyn BackupCallback>, UnboundedReceiver<Round>)
where
    F: Fn(&Round) -> Result<(), continuous_backup::CallbackError> + Send + Sync + 'static,
{
    let (tx, rx) = unbounded_channel();
    let cb = callback(move |kv, snapshot: &dyn Snapshot, files, writer| {
        let started = Instant::now();
        let mut round = Round {
            kv,
            files: files.to_vec(),
            snapshot: snapshot.files().to_vec(),
            started,
            ended: started,
            writer,
        };
        // Record the round even when `inner` panics, then let the panic go on.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner(&round)));
        round.ended = Instant::now();
        let _ = tx.send(round);
        res.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    (cb, rx)
}

pub fn recorder() -> (Arc<dyn BackupCallback>, UnboundedReceiver<Round>) {
    recorder_with(|_| Ok(()))
}

/// A recorder whose `n`th call (from 0) returns `outcome(n)`, which may
/// also panic.
pub fn recorder_by_call<F>(outcome: F) -> (Arc<dyn BackupCallback>, UnboundedReceiver<Round>)
where
    F: Fn(usize) -> Result<(), continuous_backup::CallbackError> + Send + Sync + 'static,
{
    let calls = std::sync::atomic::AtomicUsize::new(0);
    recorder_with(move |_| outcome(calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst)))
}

/// xorshift64*: a small seeded generator, so a test drives the same history
/// on every run without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The status of store `kv`, which the component must know.
pub async fn store_status(backup: &ContinuousBackup, kv: KvId) -> continuous_backup::StoreStatus {
    let status = backup.status().await.unwrap();
    status.store(kv).unwrap().clone()
}

/// The next recorded round, or a panic after `within`.
pub async fn next_round(rx: &mut UnboundedReceiver<Round>, within: Duration) -> Round {
    actix_rt::time::timeout(within, rx.recv())
        .await
        .expect("no round within the time limit")
        .expect("callback channel closed")
}

/// Waits for the first round that reports something.
pub async fn next_nonempty_round(rx: &mut UnboundedReceiver<Round>, within: Duration) -> Round {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let round = next_round(rx, left).await;
        if !round.files.is_empty() {
            return round;
        }
    }
}

/// Whether another round arrives within `within`.
pub async fn no_round_within(rx: &mut UnboundedReceiver<Round>, within: Duration) -> bool {
    actix_rt::time::timeout(within, rx.recv()).await.is_err()
}

/// Polls `probe` every 10 ms until it yields a value; panics with `what`
/// after `within` (a liveness bound, not a timing assertion).
pub async fn eventually<T, Fut>(within: Duration, what: &str, mut probe: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        actix_rt::time::sleep(ms(10)).await;
    }
}

/// The status of store `kv` once `counted` holds for it (polled, see
/// [`eventually`], for at most 5 s): counters a worker updates after the
/// callback returns are read after that event, not after a guessed wait.
pub async fn status_when(
    backup: &ContinuousBackup,
    kv: KvId,
    what: &str,
    counted: impl Fn(&continuous_backup::StoreStatus) -> bool,
) -> continuous_backup::StoreStatus {
    let counted = &counted;
    eventually(Duration::from_secs(5), what, || async move {
        let s = store_status(backup, kv).await;
        counted(&s).then_some(s)
    })
    .await
}

/// Runs a blocking closure off the actor threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    actix_rt::task::spawn_blocking(f).await.unwrap()
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The names in `dir` without its round manifests (`round.<r>.json`).
pub fn names_but_rounds(dir: &Path) -> Vec<String> {
    let mut v = names(dir);
    v.retain(|n| continuous_backup::manifest::parse_round_file_name(n).is_none());
    v
}

pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The storage_server example's binary, built by `cargo test` beside the
/// test binaries (built here if missing).
pub fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>
    let bin = dir.join("examples/storage_server");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = std::process::Command::new(cargo)
            .args(["build", "--example", "storage_server"])
            .status()
            .unwrap();
        assert!(built.success(), "cannot build the storage_server example");
    }
    bin
}

/// Copies the tree at `from` into `to` (created), files and dirs.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}
