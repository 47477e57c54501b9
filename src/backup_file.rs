//! [`BackupFile`], one file of a round's report: a leaf the round state,
//! the callback and the upload queue all use.

use serde::{Deserialize, Serialize};

/// One file in a backup dir, as a round reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackupFile {
    /// Its name in the backup dir: the engine's file name, or `name~k` when
    /// that name was already taken there by a different file.
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// Lowest seqno it covers.
    pub low_seqno: u64,
    /// Highest seqno it covers.
    pub high_seqno: u64,
}
