//! The crash suite: the storage-server example, run as a child process on
//! the same dirs again and again, is killed with SIGKILL at crash points
//! (during linking, between link and dir fsync, before the callback, inside a
//! metadata write, between rename and dir fsync), each time on a later pass.
//! After every run the backup dirs are checked against the journal of what
//! the component had acknowledged, and against what earlier runs left.
//!
//! `cargo test --test crash -- --nocapture` prints the counts.
#![expect(clippy::print_stdout, reason = "the suite prints its counts")]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::example_binary;
use continuous_backup::faults::CRASH_POINTS;
use continuous_backup::{metadata_file_name, parse_metadata_file_name, BackupFile};

const STORES: u16 = 4;
/// The pass of each crash point to die at.
const PASSES: &[u64] = &[1, 2, 3, 5, 8, 13, 21, 34, 55];

/// How a run of the child ends.
#[derive(Debug)]
enum Crash {
    /// SIGKILL by itself at a crash point (`name:pass`).
    At(String),
    /// SIGKILL from this process after a while.
    After(Duration),
    /// Not at all.
    Never,
}

#[derive(serde::Deserialize)]
struct Entry {
    kv: u16,
    n: u64,
    record: String,
    files: Vec<BackupFile>,
    first_round_snapshot: Option<usize>,
}

fn journal(path: &Path) -> Vec<Entry> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    // A line torn by the kill is not an acknowledgement of anything.
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// What a backup dir held: name → (inode, length).
type Manifest = BTreeMap<(u16, String), (u64, u64)>;

fn manifest(root: &Path) -> Manifest {
    let mut m = Manifest::new();
    for kv in 0..STORES {
        let Ok(entries) = std::fs::read_dir(root.join(kv.to_string())) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if !name.starts_with('.') {
                let md = e.metadata().unwrap();
                m.insert((kv, name), (md.ino(), md.len()));
            }
        }
    }
    m
}

fn temp_files(root: &Path) -> Vec<PathBuf> {
    (0..STORES)
        .filter_map(|kv| std::fs::read_dir(root.join(kv.to_string())).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".cbk-tmp."))
        .collect()
}

/// Every invariant of RELIABILITY.md that can be checked from outside;
/// returns the violations.
fn check(root: &Path, entries: &[Entry], before: &Manifest) -> Vec<String> {
    let mut bad = Vec::new();
    for e in entries {
        let dir = root.join(e.kv.to_string());
        match std::fs::read_to_string(dir.join(metadata_file_name(e.n))) {
            Ok(text) if text == e.record => {}
            Ok(_) => bad.push(format!(
                "kv {} metadata.{}.dat differs from what was written (torn or reused)",
                e.kv, e.n
            )),
            Err(err) => bad.push(format!(
                "kv {} metadata.{}.dat was acknowledged but is missing: {err}",
                e.kv, e.n
            )),
        }
        for f in &e.files {
            match std::fs::metadata(dir.join(&f.name)) {
                Ok(md) if md.len() == f.len => {}
                Ok(md) => bad.push(format!(
                    "kv {} {} reported {} bytes, has {}",
                    e.kv,
                    f.name,
                    f.len,
                    md.len()
                )),
                Err(err) => bad.push(format!(
                    "kv {} {} was reported but is missing: {err}",
                    e.kv, f.name
                )),
            }
        }
        if let Some(snapshot) = e.first_round_snapshot {
            if e.files.len() < snapshot {
                bad.push(format!(
                    "kv {}: first round after a start reported {} of {snapshot} files",
                    e.kv,
                    e.files.len()
                ));
            }
        }
    }
    let now = manifest(root);
    for (key, was) in before {
        match now.get(key) {
            Some(is) if is == was => {}
            Some(_) => bad.push(format!("kv {} {} was replaced", key.0, key.1)),
            None => bad.push(format!("kv {} {} was deleted", key.0, key.1)),
        }
    }
    let mut numbers: HashMap<u16, BTreeSet<u64>> = HashMap::new();
    for (kv, name) in now.keys() {
        if let Some(n) = parse_metadata_file_name(name) {
            numbers.entry(*kv).or_default().insert(n);
        }
    }
    for (kv, ns) in numbers {
        let max = *ns.iter().next_back().unwrap();
        if ns.len() as u64 != max {
            bad.push(format!(
                "kv {kv}: metadata numbers have holes: {} files up to {max}",
                ns.len()
            ));
        }
    }
    bad
}

#[test]
fn kill_9_at_every_crash_point_loses_nothing_acknowledged() {
    let bin = example_binary();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, journal_path) = (tmp.path().join("run"), tmp.path().join("journal.jsonl"));
    let backup_root = dir.join("backup");
    let mut schedule: Vec<Crash> = CRASH_POINTS
        .iter()
        .flat_map(|p| PASSES.iter().map(move |k| Crash::At(format!("{p}:{k}"))))
        .collect();
    // And kills from outside at moments nobody chose.
    schedule.extend((0..12).map(|i| Crash::After(Duration::from_millis(250 + 80 * i))));
    schedule.push(Crash::Never); // a last run without a crash
    let (mut injected, mut recovered, mut violations, mut not_reached) = (0, 0, Vec::new(), Vec::new());
    let mut before = Manifest::new();
    let mut crashed_last = false;
    for (run, crash) in schedule.iter().enumerate() {
        let mut cmd = Command::new(&bin);
        cmd.arg("--dir")
            .arg(&dir)
            .args([
                "--seconds",
                "1",
                "--stores",
                &STORES.to_string(),
                "--interval-ms",
                "30",
            ])
            .arg("--journal")
            .arg(&journal_path)
            .env("RUST_LOG", "error");
        if let Crash::At(point) = crash {
            cmd.env("CBK_CRASH_POINT", point);
        }
        let out = match crash {
            Crash::After(after) => {
                let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
                std::thread::sleep(*after);
                let _ = child.kill(); // SIGKILL
                child.wait_with_output().unwrap()
            }
            _ => cmd.output().unwrap(),
        };
        let killed = out.status.signal() == Some(9);
        assert!(
            killed || out.status.success(),
            "run {run} ({crash:?}) failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let bad = check(&backup_root, &journal(&journal_path), &before);
        if crashed_last && bad.is_empty() {
            recovered += 1;
        }
        for b in &bad {
            violations.push(format!("after run {run} ({crash:?}): {b}"));
        }
        injected += usize::from(killed);
        if !killed {
            not_reached.push(format!("{crash:?}"));
        }
        crashed_last = killed;
        before = manifest(&backup_root);
    }
    let leftovers = temp_files(&backup_root);
    println!(
        "crash suite: {} runs, {injected} crash points injected (SIGKILL), {recovered} recovered cleanly, \
         {} violations, {} temp files left after the last clean run",
        schedule.len(),
        violations.len(),
        leftovers.len()
    );
    println!("not reached (the run ended first): {not_reached:?}");
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        leftovers.is_empty(),
        "temp files survived a restart: {leftovers:?}"
    );
    assert!(injected >= 50, "only {injected} crash points were reached");
    assert_eq!(
        recovered, injected,
        "every crash was followed by a clean recovery"
    );
}
