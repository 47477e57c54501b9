//! `verify`: every problem of a backup root, one per line.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::parallel::{each_store, Work};
use super::{history_conflict, BackupRoot, DeclaredCoverage, RecordReader, StoreBackup};
use crate::engine::KvId;
use crate::metadata::metadata_file_name;

/// Why a file named `metadata.<digits>.dat` that is not canonical is a problem.
const FOREIGN_METADATA: &str = "not a name the component writes: numbers are decimal from 1 without \
                                leading zeros (and below 2^64)";

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

/// Reads every backed-up file through `reader` (the format's own
/// checksums, every record inside the range its manifest declares), checks
/// that one dir holds one history of its store (from the declared ranges;
/// for a dir without manifests, that no two files disagree on what a seqno
/// wrote), that each manifest reads back and each file it declares is
/// there with its length, and that metadata files are numbered 1..=max
/// without a hole and are not empty. A file named like a metadata file that
/// the component never writes (`metadata.0.dat`, `metadata.07.dat`) is one
/// problem of its own and has no part in the numbering. Returns every
/// problem found; empty means clean.
pub fn verify(root: &BackupRoot, reader: &dyn RecordReader) -> Vec<Problem> {
    // Stores are checked in parallel, one per core; problems keep the
    // stores' order.
    each_store(
        Work::Reads,
        root.stores(),
        &mut |_| {},
        |_| false,
        |listed, _| verify_store(listed, reader),
    )
    .or_resume_panic()
    .into_iter()
    .flatten()
    .flatten()
    .collect()
}

/// [`verify`] of one store's backup dir.
fn verify_store(listed: &StoreBackup, reader: &dyn RecordReader) -> Vec<Problem> {
    let mut problems = Vec::new();
    // Pinned while its files are read: a prune cannot delete one
    // between the listing and its read (that would be a false alarm).
    let (_pin, store) = match listed.pinned() {
        Ok(pinned) => pinned,
        Err(e) => {
            problems.push(Problem {
                kv: listed.kv,
                path: listed.dir.clone(),
                what: e.to_string(),
            });
            return problems;
        }
    };
    let store = &store;
    let mut problem = |path: PathBuf, what: String| {
        problems.push(Problem {
            kv: store.kv,
            path,
            what,
        })
    };
    let (records, unreadable) = match store.round_records() {
        Ok(read) => read,
        Err(e) => {
            problem(store.dir.clone(), e.to_string());
            (Vec::new(), Vec::new())
        }
    };
    for (path, why) in unreadable {
        problem(path, why);
    }
    if let Some(format) = records
        .iter()
        .map(|r| &r.engine_format)
        .find(|f| *f != reader.format())
    {
        problem(
            store.dir.clone(),
            format!(
                "its files are in the `{format}` format, not `{}`: verify with the reader of that format",
                reader.format()
            ),
        );
        return problems;
    }
    let bases: Vec<crate::manifest::ConsolidatedBase> = match store.prune_records() {
        Ok(prunes) => prunes.into_iter().filter_map(|(_, r)| r.base).collect(),
        Err(e) => {
            problem(store.dir.clone(), e.to_string());
            Vec::new()
        }
    };
    let declared = DeclaredCoverage::of_present_with(&records, &bases, &|_| true);
    let mut failed = std::collections::HashSet::new();
    for path in &store.files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let range = declared.declared(name).map(|f| (f.low_seqno, f.high_seqno));
        if let Err(what) = check_file(reader, path, range) {
            problem(path.clone(), what);
            failed.insert(path.clone());
        }
    }
    if records.is_empty() {
        let intact: Vec<PathBuf> = store
            .files
            .iter()
            .filter(|p| !failed.contains(*p))
            .cloned()
            .collect();
        match history_conflict(reader, &intact) {
            Ok(Some(c)) => problem(
                c.second,
                format!(
                    "seqno {} is written differently here and in {}: the dir holds more than one \
                     history of the store",
                    c.seqno,
                    c.first.display()
                ),
            ),
            Ok(None) => {}
            Err(e) => problem(store.dir.clone(), e.to_string()),
        }
    } else if let Some((a, b)) = declared.conflict() {
        problem(
            store.dir.join(b),
            format!(
                "declares every version of seqnos {a} declares too: the dir holds more than one \
                 history of the store"
            ),
        );
    }
    // Each file a manifest declares is in the dir with its length,
    // unless a prune record says it was deleted on purpose.
    let pruned = match store.pruned_names() {
        Ok(names) => names,
        Err(e) => {
            problem(store.dir.clone(), e.to_string());
            Default::default()
        }
    };
    let mut checked = std::collections::HashSet::new();
    for f in records.iter().flat_map(|r| &r.added) {
        let path = store.dir.join(&f.name);
        // A file reported unreadable above is one problem, not two.
        if !checked.insert(f.name.clone()) || failed.contains(&path) {
            continue;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.len() == f.len => {}
            Ok(md) => problem(
                path,
                format!(
                    "a round manifest declares {} bytes, the file has {}",
                    f.len,
                    md.len()
                ),
            ),
            Err(_) if pruned.contains(&f.name) => {}
            Err(_) => problem(path, "declared by a round manifest but not in the dir".into()),
        }
    }
    for path in &store.foreign_metadata {
        problem(path.clone(), FOREIGN_METADATA.into());
    }
    // Canonical numbers only: each appears once, in increasing order,
    // from 1; one problem per gap.
    let mut expected: u64 = 1;
    for (n, path) in &store.metadata {
        if *n > expected {
            let what = if *n - expected == 1 {
                "metadata file missing (a hole in the numbering)".to_owned()
            } else {
                format!(
                    "metadata files {expected} to {} missing (a hole in the numbering)",
                    n - 1
                )
            };
            problem(store.dir.join(metadata_file_name(expected)), what);
        }
        expected = n.saturating_add(1);
        match std::fs::read(path) {
            Ok(bytes) if bytes.is_empty() => problem(path.clone(), "metadata file is empty".into()),
            Ok(_) => {}
            Err(e) => problem(path.clone(), format!("cannot read: {e}")),
        }
    }
    problems
}

/// Streams one file through `reader`; with a declared `range`, every
/// record must lie inside it.
fn check_file(
    reader: &dyn RecordReader,
    path: &std::path::Path,
    range: Option<(u64, u64)>,
) -> Result<(), String> {
    let records = reader.records(path).map_err(|e| e.to_string())?;
    for record in records {
        let record = record.map_err(|e| e.to_string())?;
        if let Some((low, high)) = range {
            if record.seqno < low || record.seqno > high {
                return Err(format!(
                    "holds seqno {} outside the range {low}..={high} its round manifest declares",
                    record.seqno
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::RefFormat;

    /// The problems of a backup root holding one store (KV 1) whose dir
    /// holds a non-empty file of each name.
    fn problems_of(names: &[&str]) -> Vec<Problem> {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("1");
        std::fs::create_dir(&dir).unwrap();
        for name in names {
            std::fs::write(dir.join(name), "{}").unwrap();
        }
        verify(&BackupRoot::open(root.path()).unwrap(), &RefFormat)
    }

    fn file_name(p: &Problem) -> String {
        p.path.file_name().unwrap().to_string_lossy().into_owned()
    }

    // Regression: `metadata.0.dat` made the hole check subtract below zero
    // and print "metadata files 1..18446744073709551615 missing".
    #[test]
    fn metadata_numbered_zero_is_one_problem_and_no_hole() {
        let problems = problems_of(&["metadata.0.dat", "metadata.1.dat", "metadata.2.dat"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(file_name(&problems[0]), "metadata.0.dat");
        assert!(
            problems[0].what.contains("not a name the component writes"),
            "{problems:?}"
        );
        assert!(!problems[0].to_string().contains("18446744073709551615"));
    }

    // Regression: `metadata.07.dat` beside `metadata.7.dat` parsed as the
    // same number twice and printed "8..6 missing".
    #[test]
    fn a_metadata_number_with_leading_zeros_is_one_problem_and_no_reversed_range() {
        let canonical: Vec<String> = (1..=7).map(metadata_file_name).collect();
        let mut names: Vec<&str> = canonical.iter().map(String::as_str).collect();
        names.push("metadata.07.dat");
        let problems = problems_of(&names);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(file_name(&problems[0]), "metadata.07.dat");
        assert!(
            problems[0].what.contains("decimal from 1 without leading zeros"),
            "{problems:?}"
        );
        assert!(!problems[0].what.contains("8..6"));
    }

    #[test]
    fn a_hole_in_the_metadata_numbering_is_one_problem_per_gap() {
        let problems = problems_of(&["metadata.1.dat", "metadata.2.dat", "metadata.4.dat"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(file_name(&problems[0]), "metadata.3.dat");
        assert!(problems[0].what.contains("hole"), "{problems:?}");

        let problems = problems_of(&["metadata.1.dat", "metadata.5.dat", "metadata.7.dat"]);
        let what: Vec<(String, &str)> = problems.iter().map(|p| (file_name(p), p.what.as_str())).collect();
        assert_eq!(
            what,
            [
                (
                    "metadata.2.dat".to_owned(),
                    "metadata files 2 to 4 missing (a hole in the numbering)"
                ),
                (
                    "metadata.6.dat".to_owned(),
                    "metadata file missing (a hole in the numbering)"
                ),
            ]
        );
    }
}
