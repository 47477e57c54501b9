//! `verify`: every problem of a backup root, one per line.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::{history_conflict, BackupRoot, RecordReader};
use crate::engine::KvId;
use crate::metadata::metadata_file_name;

/// One thing wrong in a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The store.
    pub kv: KvId,
    /// The file (or the dir, for a missing file).
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kv {}: {}: {}", self.kv, self.path.display(), self.what)
    }
}

/// Reads every backed-up file (checksum, footer, records inside the range),
/// checks that no two files of a store disagree on what a seqno wrote (one
/// history per dir), and that metadata files are numbered 1..=max without a
/// hole and are not empty. Returns every problem found; empty means clean.
pub fn verify(root: &BackupRoot, reader: &dyn RecordReader) -> Vec<Problem> {
    let mut problems = Vec::new();
    for store in root.stores() {
        let mut problem = |path: PathBuf, what: String| {
            problems.push(Problem {
                kv: store.kv,
                path,
                what,
            })
        };
        let mut read = Vec::new();
        let mut paths = Vec::new();
        for path in &store.files {
            match reader.read(path) {
                Ok(file) => {
                    read.push(file);
                    paths.push(path);
                }
                Err(e) => problem(path.clone(), e.to_string()),
            }
        }
        if let Some(c) = history_conflict(&read) {
            problem(
                paths[c.second].clone(),
                format!(
                    "seqno {} is written differently here and in {}: the dir holds more than one \
                     history of the store",
                    c.seqno,
                    paths[c.first].display()
                ),
            );
        }
        drop(read);
        let mut expected = 1;
        for (n, path) in &store.metadata {
            match n - expected {
                0 => {}
                1..=100 => {
                    for missing in expected..*n {
                        let path = store.dir.join(metadata_file_name(missing));
                        problem(path, "metadata file missing (a hole in the numbering)".into());
                    }
                }
                _ => problem(
                    store.dir.join(metadata_file_name(expected)),
                    format!(
                        "metadata files {expected}..{} missing (a hole in the numbering)",
                        n - 1
                    ),
                ),
            }
            expected = n + 1;
            match std::fs::read(path) {
                Ok(bytes) if bytes.is_empty() => problem(path.clone(), "metadata file is empty".into()),
                Ok(_) => {}
                Err(e) => problem(path.clone(), format!("cannot read: {e}")),
            }
        }
    }
    problems
}
