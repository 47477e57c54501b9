//! Reading backups back: what a backup root holds ([`inspect`]), whether it
//! is intact ([`verify`]), and the store as it was at any covered seqno
//! ([`restore`]). The `cbk` command is a thin shell over these.
//!
//! A backup root holds one dir per KV store, named by its id (as
//! vBucket-driven backups lay them out: `<root>/<kv_id>/`). Records are read
//! through [`RecordReader`], so an engine with its own file format plugs in
//! its own reader; [`RefFormat`] reads the reference engine's.

mod inspect;
mod layout;
mod pit;
mod verify;
mod write;

pub use inspect::{inspect, MetadataSummary, StoreReport};
pub use layout::{BackupRoot, StoreBackup};
pub use pit::{restore, RestoreSummary};
pub use verify::{verify, Problem};

use std::path::Path;

use crate::error::Result;
use crate::refengine::{read_index_file, Record};

/// One backed-up seqno-index file, read and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackedUpFile {
    /// Lowest seqno the file covers.
    pub low_seqno: u64,
    /// Highest seqno the file covers.
    pub high_seqno: u64,
    /// Its records, in increasing seqno order, each inside the range.
    pub records: Vec<Record>,
}

/// Reads the records out of a backed-up file of some engine's format.
pub trait RecordReader: Send + Sync {
    /// Reads and verifies the file at `path` (checksums, footer, every
    /// record inside the covered range and in seqno order); an error names
    /// the path and what is wrong.
    fn read(&self, path: &Path) -> Result<BackedUpFile>;
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
            records,
        })
    }
}

/// The gaps in the seqno coverage of `ranges` between its lowest and highest
/// seqno, as inclusive ranges.
pub fn coverage_gaps(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut gaps = Vec::new();
    let mut covered_to: Option<u64> = None;
    for (low, high) in sorted {
        if let Some(to) = covered_to {
            if low > to.saturating_add(1) {
                gaps.push((to + 1, low - 1));
            }
        }
        covered_to = Some(covered_to.map_or(high, |to| to.max(high)));
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_lie_between_ranges_and_overlaps_close_them() {
        assert_eq!(coverage_gaps(&[(1, 10), (11, 20)]), vec![]);
        assert_eq!(coverage_gaps(&[(11, 20), (1, 5)]), vec![(6, 10)]);
        assert_eq!(coverage_gaps(&[(1, 30), (5, 10), (40, 50)]), vec![(31, 39)]);
        assert_eq!(coverage_gaps(&[]), vec![]);
    }
}
