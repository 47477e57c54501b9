//! What the adapter declares about each table of one store, kept durably
//! beside its tree (`<store>/declared.json`): lsm-tree's own files say
//! nothing about what a table holds, and a restart must not forget it.
//!
//! Format (JSON, replaced atomically: temp file, fsync, rename, dir fsync):
//! `{"format": 1, "first_seqno": 0 | null, "next_low": N,
//!   "tables": {"<id>": {"low": L, "high": H, "holds": "every_version" | "partial"}}}`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dir_sync::{write_file_durably, Existing};
use crate::engine::Holds;
use crate::error::{Error, Result};

/// The facts file's name in a store's dir.
pub(super) const FACTS_FILE: &str = "declared.json";
const FACTS_FORMAT: u32 = 1;

/// What one table declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Fact {
    pub low: u64,
    pub high: u64,
    pub holds: Holds,
}

/// One store's facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Facts {
    format: u32,
    /// The first seqno of the store's history, when this adapter created
    /// its tree (nothing was written before it).
    pub first_seqno: Option<u64>,
    /// The low seqno the next flush declares: one above the last flush
    /// that wrote a table (or above every table's seqnos after a restart).
    pub next_low: u64,
    /// By table id.
    pub tables: BTreeMap<u64, Fact>,
}

impl Facts {
    /// The facts of a tree this adapter creates: its history starts at 0.
    pub fn fresh() -> Facts {
        Facts {
            format: FACTS_FORMAT,
            first_seqno: Some(0),
            next_low: 0,
            tables: BTreeMap::new(),
        }
    }

    /// The facts of a tree found without any: nothing is declared.
    pub fn unknown() -> Facts {
        Facts {
            first_seqno: None,
            ..Facts::fresh()
        }
    }

    /// Reads `dir`'s facts; `None` if it has none.
    pub fn read(dir: &Path) -> Result<Option<Facts>> {
        let path = dir.join(FACTS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let facts: Facts = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: format!("not the adapter's facts file: {e}"),
        })?;
        if facts.format != FACTS_FORMAT {
            return Err(Error::Corrupt {
                path,
                reason: format!(
                    "facts format {} is not supported (only {FACTS_FORMAT})",
                    facts.format
                ),
            });
        }
        Ok(Some(facts))
    }

    /// Replaces `dir`'s facts durably.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path: PathBuf = dir.join(FACTS_FILE);
        let tmp = dir.join(format!(".{FACTS_FILE}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        write_file_durably(&tmp, &path, Existing::Replace, |w| w.write_all(&bytes))
    }
}
