//! `inspect`: per store, what its backup dir holds.

use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use super::{BackupRoot, Coverage, FileCoverage, RecordReader, StoreBackup};
use crate::engine::Holds;
use crate::engine::KvId;
use crate::error::{Error, Result};

/// How long the last metadata record may be in a report before it is cut.
const SHORT: usize = 80;

/// The metadata files of a store's backup (the names the component writes;
/// others are counted apart, in `foreign`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetadataSummary {
    /// How many there are.
    pub count: usize,
    /// The smallest `n`.
    pub first_n: Option<u64>,
    /// The largest `n`.
    pub last_n: Option<u64>,
    /// The last record's content, cut to 80 characters.
    pub last: Option<String>,
    /// Files named `metadata.<digits>.dat` that the component never writes
    /// (`metadata.0.dat`, `metadata.07.dat`): not counted above; `verify`
    /// names each.
    pub foreign: usize,
}

/// What one store's backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoreReport {
    /// The store.
    pub kv: KvId,
    /// The file format its engine recorded in the round manifests (the
    /// reader's, for a dir written before manifests).
    pub format: String,
    /// Seqno-index files.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The lowest seqno covered.
    pub lowest_seqno: Option<u64>,
    /// The highest seqno covered.
    pub highest_seqno: Option<u64>,
    /// Inclusive seqno ranges between files that no file covers.
    pub gaps: Vec<(u64, u64)>,
    /// Inclusive seqno ranges a restore gives exactly (see
    /// [`Coverage`](super::Coverage)).
    pub restorable: Vec<(u64, u64)>,
    /// The times (milliseconds since the Unix epoch) of the oldest and the
    /// newest round whose state restores: `restore --at` takes a time
    /// between them (the state of the newest round at or before it).
    pub restorable_times: Option<(u64, u64)>,
    /// Files that do not hold (or declare) every version of their range
    /// (compaction outputs).
    pub lossy_files: usize,
    /// Its metadata files.
    pub metadata: MetadataSummary,
    /// Files that are hard links still shared with another dir (link count
    /// above 1: typically the live data dir).
    pub shared_with_live: usize,
    /// Bytes of files only the backup holds (link count 1: the live engine
    /// dropped them, or they are copies): what pruning them frees.
    pub own_bytes: u64,
    /// Bytes of files still shared with another dir (the live engine's):
    /// deleting them from the backup frees nothing while the engine keeps them.
    pub shared_bytes: u64,
    /// Temp files of an interrupted write.
    pub temp_files: usize,
}

fn shorten(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(SHORT) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

fn report(store: &StoreBackup, reader: &dyn RecordReader) -> Result<StoreReport> {
    let (rounds, _) = store.round_records()?;
    let declared = if rounds.is_empty() {
        None
    } else {
        Some(store.coverage(&rounds)?)
    };
    let mut files = Vec::new();
    let (mut bytes, mut shared, mut own_bytes) = (0, 0, 0);
    for path in &store.files {
        let md = std::fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
        bytes += md.len();
        shared += usize::from(md.nlink() > 1);
        if md.nlink() == 1 {
            own_bytes += md.len();
        }
        // What a file declares in a manifest first; else its own footer.
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let said = declared
            .as_ref()
            .and_then(|d| d.declared(name))
            .map(|f| FileCoverage {
                low_seqno: f.low_seqno,
                high_seqno: f.high_seqno,
                holds_every_version: f.holds == Some(Holds::EveryVersion),
            });
        match said {
            Some(c) => files.push(c),
            None => files.extend(reader.footer_coverage(path)?),
        }
    }
    let lossy_files = store.files.len() - files.iter().filter(|f| f.holds_every_version).count();
    let mut coverage = Coverage::new(files);
    let round_states: Vec<(u64, Option<u64>)> = match &declared {
        Some(d) => rounds
            .iter()
            .map(|r| (r.time_ms, d.round_high(r.round)))
            .collect(),
        None => Vec::new(),
    };
    if let Some(declared) = declared {
        // What the files declare decides, not what their records carry
        // (for the reference engine, its footer rule may add points).
        coverage.restorable = if super::pit::legacy_applies(store, &rounds) {
            super::coverage::union(
                declared
                    .restorable
                    .into_iter()
                    .chain(coverage.restorable.iter().copied()),
            )
        } else {
            declared.restorable
        };
    }
    // The rounds whose state restores: `restore --at` their times.
    let exact = |s: u64| coverage.restorable.iter().any(|&(a, b)| a <= s && s <= b);
    let restorable_times = round_states
        .iter()
        .filter(|(_, high)| high.is_some_and(exact))
        .map(|(t, _)| *t);
    let (first, last) = (restorable_times.clone().min(), restorable_times.max());
    let restorable_times = first.zip(last);
    let format = rounds
        .last()
        .map_or_else(|| reader.format().to_owned(), |r| r.engine_format.clone());
    let last = match store.metadata.last() {
        Some((_, path)) => Some(shorten(
            &std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?,
        )),
        None => None,
    };
    Ok(StoreReport {
        kv: store.kv,
        format,
        files: store.files.len(),
        bytes,
        lowest_seqno: coverage.lowest,
        highest_seqno: coverage.highest,
        gaps: coverage.gaps,
        restorable: coverage.restorable,
        restorable_times,
        lossy_files,
        metadata: MetadataSummary {
            count: store.metadata.len(),
            first_n: store.metadata.first().map(|m| m.0),
            last_n: store.metadata.last().map(|m| m.0),
            last,
            foreign: store.foreign_metadata.len(),
        },
        shared_with_live: shared,
        own_bytes,
        shared_bytes: bytes - own_bytes,
        temp_files: store.temp_files.len(),
    })
}

/// Reports on every store of the backup root, from its round manifests and
/// each undeclared file's footer (`verify` reads everything). A file whose
/// footer cannot be read fails the report (run `verify` to list every
/// problem).
pub fn inspect(root: &BackupRoot, reader: &dyn RecordReader) -> Result<Vec<StoreReport>> {
    root.stores()
        .iter()
        .map(|listed| {
            let (_pin, store) = listed.pinned()?;
            report(&store, reader)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::RefFormat;

    #[test]
    fn inspect_counts_only_metadata_names_the_component_writes() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("1");
        std::fs::create_dir(&dir).unwrap();
        for name in [
            "metadata.0.dat",
            "metadata.07.dat",
            "metadata.7.dat",
            "metadata.8.dat",
        ] {
            std::fs::write(dir.join(name), name).unwrap();
        }
        let reports = inspect(&BackupRoot::open(root.path()).unwrap(), &RefFormat).unwrap();
        assert_eq!(
            reports[0].metadata,
            MetadataSummary {
                count: 2,
                first_n: Some(7),
                last_n: Some(8),
                last: Some("metadata.8.dat".into()),
                foreign: 2,
            }
        );
        assert_eq!(reports[0].files, 0, "not read as seqno-index files either");
    }
}
