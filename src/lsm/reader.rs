//! Reading backed-up lsm-tree tables.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lsm_tree::{Cache, Checksum, Table, ValueType};

use crate::error::{Error, Result};
use crate::record::Record;
use crate::restore::{RecordReader, Records};

/// Reads lsm-tree tables (format [`FILE_FORMAT`](super::FILE_FORMAT)) with
/// lsm-tree's own reader, which checks each block's checksum as it reads
/// it. Records come in key order, each key's versions newest first.
pub struct LsmFormat {
    cache: Arc<Cache>,
    /// Each table opened gets an id of its own: the block cache is keyed by
    /// (tree id, table id), and two backed-up tables may share a table id.
    opened: AtomicU64,
}

impl Default for LsmFormat {
    fn default() -> Self {
        LsmFormat {
            cache: Arc::new(Cache::with_capacity_bytes(8 * 1024 * 1024)),
            opened: AtomicU64::new(0),
        }
    }
}

fn corrupt(path: &Path, e: lsm_tree::Error) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not a readable lsm-tree table: {e:?}"),
    }
}

impl RecordReader for LsmFormat {
    fn format(&self) -> &'static str {
        super::FILE_FORMAT
    }

    fn records<'a>(&'a self, path: &Path) -> Result<Records<'a>> {
        let tree_id = self.opened.fetch_add(1, Ordering::Relaxed);
        let table = Table::recover(
            path.to_path_buf(),
            Checksum::from_raw(0),
            0,
            tree_id,
            self.cache.clone(),
            None,
            false,
            false,
        )
        .map_err(|e| corrupt(path, e))?;
        let path = path.to_path_buf();
        let iter = table.iter().map(move |item| {
            let item = item.map_err(|e| corrupt(&path, e))?;
            let value = match item.key.value_type {
                ValueType::Value => Some(item.value.to_vec()),
                ValueType::Tombstone => None,
                other => {
                    return Err(Error::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "holds a {other:?} entry, which the adapter never writes (single deletes \
                             and key-value separation are not supported)"
                        ),
                    })
                }
            };
            Ok(Record {
                seqno: item.key.seqno,
                key: item.key.user_key.to_vec(),
                value,
            })
        });
        // The table's handle goes with the iterator.
        Ok(Box::new(KeepAlive { _table: table, iter }))
    }
}

/// An iterator that keeps the table it reads open.
struct KeepAlive<I> {
    _table: Table,
    iter: I,
}

impl<I: Iterator> Iterator for KeepAlive<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.iter.next()
    }
}
