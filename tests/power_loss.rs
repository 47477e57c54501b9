//! Durability under simulated power loss.
//!
//! A real run of the component (vBucket-driven stores on the reference
//! engine: dirs created, files linked, or copied after `EXDEV`, metadata
//! written) is journaled by `faults::power::Recording`. For each point `k`
//! of the journal, the state a power loss right after operation `k` leaves
//! is computed (everything unsynced dropped, and random parts of it kept as
//! the ordering allows), written to a fresh dir, and the component is
//! started on it again (reopen, resume: one round and one metadata write
//! per store). Then:
//! - every metadata write that returned `n` before `k` is there, whole;
//! - the resumed write gets a number above every returned one, and the
//!   numbers are `1..=max` without holes (no `n` reused);
//! - every file reported to a callback before `k` is there, whole;
//! - no temp file survives the reopen, and none is reported as data.
//!
//! `cargo test --test power_loss -- --nocapture` prints the states tried
//! and the violations; `CBK_POWER_LOSS_FULL=1` sweeps every boundary of
//! every run with more random losses each (`.ci/run` does).
//! The `omitted_*` tests run with one fsync left out and must find
//! violations: the harness is trusted because it catches them.
#![expect(clippy::print_stdout, reason = "the suite prints its counts")]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use continuous_backup::faults::power::{Image, ImageNode, Loss, Recording};
use continuous_backup::faults::{omit_fsync, FsyncSite};
use continuous_backup::manifest::{parse_round_file_name, RoundRecord};
use continuous_backup::refengine::RefEngine;
use continuous_backup::{
    callback, parse_metadata_file_name, BackupFile, CallbackFactory, Config, ContinuousBackup, KvId,
    VbucketState,
};
use parking_lot::Mutex;

/// What the storage server saw, each at its journal position.
#[derive(Clone, Debug)]
enum Seen {
    /// A callback was told of these files.
    Reported { kv: KvId, files: Vec<BackupFile> },
    /// `MetadataWriter::write` returned `n` for `data`.
    Acked { kv: KvId, n: u64, data: String },
}

/// One journaled run.
struct Run {
    name: String,
    recording: Arc<Recording>,
    seen: Vec<(usize, Seen)>,
    /// The dir the journal's root is (backups under `backup/`).
    root: tempfile::TempDir,
    engine: RefEngine,
    _data: tempfile::TempDir,
    stores: u16,
}

#[derive(Clone, Copy)]
struct Workload {
    stores: u16,
    /// Backups on tmpfs (`/dev/shm`), data on `/tmp`: links fail with
    /// `EXDEV` and files are copied.
    cross_device: bool,
    rounds: usize,
}

fn tempdir_for(cross_device: bool) -> Option<tempfile::TempDir> {
    if cross_device {
        tempfile::tempdir_in("/dev/shm").ok()
    } else {
        Some(tempfile::tempdir().unwrap())
    }
}

/// Runs `w` with the journal on, and `omit` (if any) left out.
fn journaled_run(name: &str, w: Workload, omit: Option<FsyncSite>) -> Option<Run> {
    let data = tempfile::tempdir().unwrap();
    let Some(root) = tempdir_for(w.cross_device) else {
        println!("{name}: skipped, /dev/shm is not available for a cross-device run");
        return None;
    };
    let engine = RefEngine::open(data.path().join("data")).unwrap();
    let recording = Arc::new(Recording::start(root.path()));
    let _omitted = omit.map(|site| omit_fsync(root.path(), site));
    let seen = Arc::new(Mutex::new(Vec::new()));

    let factory: CallbackFactory = {
        let (recording, seen) = (Arc::clone(&recording), Arc::clone(&seen));
        Arc::new(move |_kv| {
            let (recording, seen) = (Arc::clone(&recording), Arc::clone(&seen));
            let round = std::sync::atomic::AtomicU64::new(0);
            callback(move |kv, _snapshot, files, metadata| {
                let at = recording.position();
                seen.lock().push((
                    at,
                    Seen::Reported {
                        kv,
                        files: files.to_vec(),
                    },
                ));
                let i = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let data = format!("kv {kv} round {i}: {} files", files.len());
                let n = metadata.write(&data)?;
                let at = recording.position();
                seen.lock().push((at, Seen::Acked { kv, n, data }));
                Ok(())
            })
        })
    };
    let config = Config {
        backup_root: Some(root.path().join("backup")),
        interval: ms(15),
        report_empty_rounds: false,
        metadata_threads: 2,
        ..Config::default()
    };
    let kvs: Vec<KvId> = (0..w.stores).map(KvId).collect();
    let put = |kv: KvId, round: usize| {
        for i in 0..3 {
            engine
                .put(kv, format!("k{round}-{i}").as_bytes(), b"value")
                .unwrap();
        }
        engine.flush(kv).unwrap();
    };
    for &kv in &kvs {
        put(kv, 0);
    }
    actix::System::new().block_on(async {
        let backup = ContinuousBackup::start(Arc::new(engine.clone()), config, Some(factory)).unwrap();
        for &kv in &kvs {
            backup.set_vbucket_state(kv, VbucketState::Active).await.unwrap();
        }
        let acked = |kv: KvId| {
            seen.lock()
                .iter()
                .filter(|(_, s)| matches!(s, Seen::Acked { kv: k, .. } if *k == kv))
                .count()
        };
        for round in 1..=w.rounds {
            // Each store's previous round is acknowledged; then new files.
            for &kv in &kvs {
                eventually(Duration::from_secs(20), "a round was acknowledged", || {
                    let done = acked(kv) >= round;
                    async move { done.then_some(()) }
                })
                .await;
            }
            for &kv in &kvs {
                put(kv, round);
            }
        }
        for &kv in &kvs {
            backup.stop_backup(kv, true).await.unwrap();
        }
        backup.shutdown().await.unwrap();
    });
    let seen = seen.lock().clone();
    Some(Run {
        name: name.to_owned(),
        recording,
        seen,
        root,
        engine,
        _data: data,
        stores: w.stores,
    })
}

/// A rule a crash state broke.
#[derive(Debug)]
struct Violation {
    at: usize,
    rule: &'static str,
    detail: String,
}

/// What the checks of one sweep found.
#[derive(Default)]
struct Sweep {
    states: usize,
    violations: Vec<Violation>,
}

impl Sweep {
    fn rules(&self) -> HashSet<&'static str> {
        self.violations.iter().map(|v| v.rule).collect()
    }
}

const ACKED_LOST: &str = "a metadata write that returned n is missing or not whole";
const REPORTED_LOST: &str = "a file reported to a callback is missing or not whole";
const N_REUSED: &str = "the resumed write reused a number or left a hole";
const TEMP_LEFT: &str = "a temp file survived the reopen or was reported as data";
const UNDECLARED: &str = "a reported file is declared by no whole round manifest";

/// The names the whole round manifests of a store dir declare.
fn declared_names(store_dir: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir(store_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if parse_round_file_name(&name).is_none() {
            continue;
        }
        if let Ok(record) =
            serde_json::from_slice::<RoundRecord>(&std::fs::read(entry.path()).unwrap_or_default())
        {
            out.extend(record.added.into_iter().map(|f| f.name));
        }
    }
    out
}

fn metadata_numbers(dir: &Path) -> Vec<u64> {
    let mut ns: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| parse_metadata_file_name(e.ok()?.file_name().to_str()?))
                .collect()
        })
        .unwrap_or_default();
    ns.sort_unstable();
    ns
}

/// The checks on the image itself, before anything reopens it.
fn check_image(run: &Run, at: usize, image: &Image, dir: &Path, out: &mut Vec<Violation>) {
    let mut v = |rule, detail: String| out.push(Violation { at, rule, detail });
    for (_, seen) in run.seen.iter().filter(|(pos, _)| *pos <= at) {
        match seen {
            Seen::Acked { kv, n, data } => {
                let rel = PathBuf::from("backup")
                    .join(kv.to_string())
                    .join(format!("metadata.{n}.dat"));
                let got = std::fs::read(dir.join(&rel)).ok();
                if got.as_deref() != Some(data.as_bytes()) {
                    v(
                        ACKED_LOST,
                        format!(
                            "{} holds {:?}",
                            rel.display(),
                            got.as_deref().map(String::from_utf8_lossy)
                        ),
                    );
                }
            }
            Seen::Reported { kv, files } => {
                let declared = declared_names(&dir.join("backup").join(kv.to_string()));
                for f in files {
                    if !declared.contains(&f.name) {
                        v(UNDECLARED, format!("store {kv}: {}", f.name));
                    }
                    let rel = PathBuf::from("backup").join(kv.to_string()).join(&f.name);
                    let whole = match image.nodes.get(&rel) {
                        Some(ImageNode::Linked { .. }) => true,
                        Some(ImageNode::File { len, .. }) => {
                            // A copy: its bytes are the original's.
                            *len == f.len
                                && std::fs::read(dir.join(&rel)).ok()
                                    == std::fs::read(run.root.path().join(&rel)).ok()
                        }
                        _ => false,
                    };
                    let len = std::fs::metadata(dir.join(&rel)).map(|m| m.len()).ok();
                    if !whole || len != Some(f.len) {
                        v(
                            REPORTED_LOST,
                            format!("{} (reported {} bytes, found {len:?})", rel.display(), f.len),
                        );
                    }
                }
            }
        }
    }
}

/// Reopens every store of the image with the component and checks what the
/// resumed rounds and writes do.
async fn check_recovery(
    run: &Run,
    backup: &ContinuousBackup,
    at: usize,
    dir: &Path,
    out: &mut Vec<Violation>,
) {
    let mut max_acked: BTreeMap<KvId, u64> = BTreeMap::new();
    for (_, seen) in run.seen.iter().filter(|(pos, _)| *pos <= at) {
        if let Seen::Acked { kv, n, .. } = seen {
            let m = max_acked.entry(*kv).or_default();
            *m = (*m).max(*n);
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut started = Vec::new();
    for kv in (0..run.stores).map(KvId) {
        let store_dir = dir.join("backup").join(kv.to_string());
        if !store_dir.exists() {
            continue;
        }
        let tx = tx.clone();
        let cb = callback(move |kv, _snapshot, files, metadata| {
            let n = metadata.write("resumed")?;
            let _ = tx.send((kv, n, files.to_vec()));
            Ok(())
        });
        backup
            .start_backup(kv, &store_dir, cb, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        started.push((kv, store_dir));
    }
    let mut resumed = BTreeMap::new();
    for _ in 0..started.len() {
        let (kv, n, files) = actix_rt::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a resumed store's first round within 20 s")
            .unwrap();
        resumed.insert(kv, (n, files));
    }
    for (kv, store_dir) in started {
        backup.stop_backup(kv, false).await.unwrap();
        let mut v = |rule, detail: String| out.push(Violation { at, rule, detail });
        let (n, files) = &resumed[&kv];
        let ns = metadata_numbers(&store_dir);
        let acked = max_acked.get(&kv).copied().unwrap_or(0);
        if *n <= acked || ns != (1..=ns.len() as u64).collect::<Vec<_>>() || ns.last() != Some(n) {
            v(
                N_REUSED,
                format!("store {kv}: resumed n {n}, last acked {acked}, numbers {ns:?}"),
            );
        }
        let names = names(&store_dir);
        if names.iter().any(|name| name.starts_with('.'))
            || files
                .iter()
                .any(|f| f.name.starts_with('.') || parse_metadata_file_name(&f.name).is_some())
        {
            v(TEMP_LEFT, format!("store {kv}: {names:?}"));
        }
    }
}

/// The crash points of `run` to try: every boundary (or every `step`th),
/// each with everything unsynced lost and with `random` random losses.
fn sweep(run: &Run, step: usize, random: u64, recover: bool) -> Sweep {
    let end = run.recording.position();
    let scratch_parent = run.root.path().parent().unwrap().to_path_buf();
    let mut result = Sweep::default();
    let mut tried = HashSet::new();
    actix::System::new().block_on(async {
        let backup = ContinuousBackup::start(Arc::new(run.engine.clone()), Config::default(), None).unwrap();
        for at in (0..=end).step_by(step.max(1)).chain([end]) {
            for loss in
                std::iter::once(Loss::All).chain((0..random).map(|s| Loss::Random(s * 7919 + at as u64)))
            {
                let image = run.recording.image_at(at, loss);
                // Distinct: another image, or the same one with more seen.
                let seen = run.seen.iter().filter(|(pos, _)| *pos <= at).count();
                if !tried.insert((image.signature(), seen)) {
                    continue;
                }
                result.states += 1;
                let scratch = tempfile::tempdir_in(&scratch_parent).unwrap();
                image.materialize(scratch.path()).unwrap();
                check_image(run, at, &image, scratch.path(), &mut result.violations);
                if recover {
                    check_recovery(run, &backup, at, scratch.path(), &mut result.violations).await;
                }
            }
        }
        backup.shutdown().await.unwrap();
    });
    println!(
        "{}: {} operations journaled, {} distinct crash states tried, {} violations",
        run.name,
        end,
        result.states,
        result.violations.len()
    );
    for v in result.violations.iter().take(5) {
        println!(
            "  at {} ({}): {}: {}",
            v.at,
            run.recording.describe(v.at.saturating_sub(1)),
            v.rule,
            v.detail
        );
    }
    result
}

fn full() -> bool {
    std::env::var_os("CBK_POWER_LOSS_FULL").is_some()
}

#[test]
fn every_crash_state_keeps_what_was_acknowledged() {
    let runs = [
        (
            "1 store, links",
            Workload {
                stores: 1,
                cross_device: false,
                rounds: 3,
            },
        ),
        (
            "4 stores, links",
            Workload {
                stores: 4,
                cross_device: false,
                rounds: 3,
            },
        ),
        (
            "2 stores, copies after EXDEV",
            Workload {
                stores: 2,
                cross_device: true,
                rounds: 2,
            },
        ),
        (
            "16 stores, links",
            Workload {
                stores: 16,
                cross_device: false,
                rounds: 2,
            },
        ),
    ];
    let (mut states, mut violations) = (0, 0);
    for (name, w) in runs {
        let Some(run) = journaled_run(name, w, None) else {
            continue;
        };
        // Every boundary, each with everything unsynced lost and with
        // random losses (more of them in the full sweep).
        let random = if full() { 6 } else { 1 };
        let s = sweep(&run, 1, random, true);
        states += s.states;
        violations += s.violations.len();
    }
    println!("power loss: {states} distinct crash states tried, {violations} violations");
    assert_eq!(violations, 0, "see the violations printed above");
    let least = if full() { 2000 } else { 800 };
    assert!(states >= least, "the sweep tried only {states} states");
}

/// Runs a small workload with `site`'s fsync left out and returns what the
/// image checks find (no reopen: the image alone shows the loss; the
/// reopen's own check is shown to catch one below).
fn with_omitted(site: FsyncSite, cross_device: bool) -> Option<Sweep> {
    let w = Workload {
        stores: 2,
        cross_device,
        rounds: 2,
    };
    let run = journaled_run(&format!("{site:?} left out"), w, Some(site))?;
    Some(sweep(&run, 1, 0, false))
}

#[test]
fn omitted_round_dir_fsync_is_caught() {
    let s = with_omitted(FsyncSite::RoundLinks, false).unwrap();
    assert!(s.rules().contains(REPORTED_LOST), "{:?}", s.rules());
}

#[test]
fn omitted_metadata_file_fsync_is_caught() {
    let s = with_omitted(FsyncSite::MetadataFile, false).unwrap();
    assert!(s.rules().contains(ACKED_LOST), "{:?}", s.rules());
}

#[test]
fn omitted_metadata_dir_fsync_is_caught() {
    let s = with_omitted(FsyncSite::MetadataRename, false).unwrap();
    assert!(s.rules().contains(ACKED_LOST), "{:?}", s.rules());
}

#[test]
fn omitted_metadata_dir_fsync_makes_the_resumed_write_reuse_a_number() {
    // The same loss seen from the reopen: the lost name is handed out again.
    let w = Workload {
        stores: 1,
        cross_device: false,
        rounds: 2,
    };
    let run = journaled_run(
        "MetadataRename left out, reopened",
        w,
        Some(FsyncSite::MetadataRename),
    )
    .unwrap();
    let s = sweep(&run, 1, 0, true);
    assert!(s.rules().contains(N_REUSED), "{:?}", s.rules());
}

#[test]
fn omitted_new_dir_parent_fsync_is_caught() {
    let s = with_omitted(FsyncSite::NewDir, false).unwrap();
    assert!(s.rules().contains(REPORTED_LOST), "{:?}", s.rules());
}

#[test]
fn omitted_copy_fsync_is_caught() {
    let Some(s) = with_omitted(FsyncSite::CopyFile, true) else {
        return;
    };
    assert!(s.rules().contains(REPORTED_LOST), "{:?}", s.rules());
}

#[test]
fn omitted_round_manifest_fsync_is_caught() {
    let s = with_omitted(FsyncSite::RoundManifest, false).unwrap();
    assert!(s.rules().contains(UNDECLARED), "{:?}", s.rules());
}
