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
        check_table_of_contents(path)?;
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

/// The length of a table file's trailer (lsm-tree's `sfa` container): magic
/// `SFA!`, version 1, checksum type 0 (xxh3), the table of contents'
/// xxh3-128, its position and its length.
const TRAILER_LEN: u64 = 4 + 1 + 1 + 16 + 8 + 8;

/// Checks a table's trailer and the xxh3-128 of its table of contents
/// before lsm-tree reads them: lsm-tree sizes an allocation from the
/// contents' entry count before it checks their checksum, so a flipped bit
/// there aborted the process instead of failing the read.
fn check_table_of_contents(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let bad = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    if len < TRAILER_LEN {
        return Err(bad(format!(
            "{len} bytes is shorter than an lsm-tree table's trailer"
        )));
    }
    let mut t = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut t, len - TRAILER_LEN)
        .map_err(|e| Error::io("read", path, e))?;
    if &t[..4] != b"SFA!" || t[4] != 1 || t[5] != 0 {
        return Err(bad(
            "no lsm-tree table trailer (magic `SFA!`, version 1, xxh3) at its end".into(),
        ));
    }
    let sum = u128::from_le_bytes(t[6..22].try_into().expect("16 bytes"));
    let pos = u64::from_le_bytes(t[22..30].try_into().expect("8 bytes"));
    let toc_len = u64::from_le_bytes(t[30..38].try_into().expect("8 bytes"));
    if pos.checked_add(toc_len) != Some(len - TRAILER_LEN) {
        return Err(bad(format!(
            "the trailer puts the table of contents at {pos}..+{toc_len}, not just before itself"
        )));
    }
    let mut toc = vec![0u8; toc_len as usize];
    file.read_exact_at(&mut toc, pos)
        .map_err(|e| Error::io("read", path, e))?;
    if xxhash_rust::xxh3::xxh3_128(&toc) != sum {
        return Err(bad(
            "the table of contents does not match its xxh3-128 checksum".into()
        ));
    }
    Ok(())
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
