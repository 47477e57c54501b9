//! Reading backups back: what a backup root holds ([`inspect`]), whether it
//! is intact ([`verify`]), and the store as it was at any covered seqno
//! ([`restore`]). The `cbk` command is a thin shell over these.
//!
//! A backup root holds one dir per KV store, named by its id (as
//! vBucket-driven backups lay them out: `<root>/<kv_id>/`). Records are read
//! through [`RecordReader`], so an engine with its own file format plugs in
//! its own reader; [`RefFormat`] reads the reference engine's.

mod coverage;
mod declared;
mod inspect;
mod layout;
mod pit;
mod remote;
mod verify;
mod write;

pub use coverage::{coverage_gaps, Coverage, FileCoverage, Unrestorable};
pub use declared::{DeclaredCoverage, NotProvable};
pub use inspect::{inspect, MetadataSummary, StoreReport};
pub use layout::{BackupRoot, StoreBackup};
pub use pit::{restore, RestoreSummary};
pub use remote::{mirror, Mirrored};
pub use verify::{verify, Problem};

use std::path::Path;

use crate::error::Result;
use crate::refengine::{read_footer, read_index_file, Record};

/// One backed-up seqno-index file, read and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackedUpFile {
    /// Lowest seqno the file covers.
    pub low_seqno: u64,
    /// Highest seqno the file covers.
    pub high_seqno: u64,
    /// Whether it holds every version written in its range (see
    /// [`FileCoverage::holds_every_version`]).
    pub holds_every_version: bool,
    /// Its records, in increasing seqno order, each inside the range.
    pub records: Vec<Record>,
}

impl BackedUpFile {
    /// What the file covers.
    pub fn coverage(&self) -> FileCoverage {
        FileCoverage {
            low_seqno: self.low_seqno,
            high_seqno: self.high_seqno,
            holds_every_version: self.holds_every_version,
        }
    }
}

/// Reads the records out of a backed-up file of some engine's format.
pub trait RecordReader: Send + Sync {
    /// Reads and verifies the file at `path` (checksums, footer, every
    /// record inside the covered range and in seqno order); an error names
    /// the path and what is wrong.
    fn read(&self, path: &Path) -> Result<BackedUpFile>;

    /// What the file at `path` covers, for reports: the default reads the
    /// whole file; a format with a footer reads only that.
    fn coverage(&self, path: &Path) -> Result<FileCoverage> {
        self.read(path).map(|f| f.coverage())
    }
}

/// The reference engine's format (see `refengine::format`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RefFormat;

impl RecordReader for RefFormat {
    fn read(&self, path: &Path) -> Result<BackedUpFile> {
        let (footer, records) = read_index_file(path)?;
        Ok(BackedUpFile {
            low_seqno: footer.low_seqno,
            high_seqno: footer.high_seqno,
            holds_every_version: footer.holds_every_version(),
            records,
        })
    }

    /// Reads the footer only (its fields are checked, the checksum is not).
    fn coverage(&self, path: &Path) -> Result<FileCoverage> {
        let footer = read_footer(path)?;
        Ok(FileCoverage {
            low_seqno: footer.low_seqno,
            high_seqno: footer.high_seqno,
            holds_every_version: footer.holds_every_version(),
        })
    }
}

/// Two records of one store's backup that disagree on what seqno `seqno`
/// wrote: the backup dir holds more than one history of the store (it was
/// deleted and created again into the same dir, and seqnos started over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConflict {
    /// The seqno written twice.
    pub seqno: u64,
    /// Index of a file holding one version, in the list given.
    pub first: usize,
    /// Index of a file holding another.
    pub second: usize,
}

/// The first seqno that two of `files` give different records for, if any.
/// The same record in several files (a compaction output and its input) is
/// no conflict.
pub fn history_conflict(files: &[BackedUpFile]) -> Option<HistoryConflict> {
    let mut seen: std::collections::HashMap<u64, (usize, &Record)> = std::collections::HashMap::new();
    for (i, file) in files.iter().enumerate() {
        for record in &file.records {
            match seen.entry(record.seqno) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    let (first, other) = *e.get();
                    if other != record {
                        return Some(HistoryConflict {
                            seqno: record.seqno,
                            first,
                            second: i,
                        });
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((i, record));
                }
            }
        }
    }
    None
}
