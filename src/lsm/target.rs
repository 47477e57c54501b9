//! Restoring a store into a fresh lsm-tree tree.

use std::path::{Path, PathBuf};

use lsm_tree::{AbstractTree, Config, SequenceNumberCounter};

use super::facts::{Fact, Facts};
use super::store::TREE_DIR;
use crate::engine::{Holds, KvId};
use crate::error::{Error, Result};
use crate::record::Record;
use crate::restore::RestoreTarget;

/// Bytes inserted before the restore flushes a table, bounding the
/// memtable.
const FLUSH_BYTES: usize = 32 * 1024 * 1024;

/// Writes a restored store as `kv-<id>/` of an [`LsmEngine`](super::LsmEngine)
/// data dir: a fresh tree holding each key's newest value with its own
/// seqno (deleted keys are simply absent), which lsm-tree opens and the
/// engine continues at the restored seqno + 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct LsmTarget;

impl RestoreTarget for LsmTarget {
    fn format(&self) -> &'static str {
        super::FILE_FORMAT
    }

    fn write_store(
        &self,
        out: &Path,
        kv: KvId,
        lowest: u64,
        seqno: u64,
        records: &mut dyn Iterator<Item = Record>,
    ) -> Result<PathBuf> {
        let engine = |e: lsm_tree::Error| Error::Engine {
            kv,
            source: Box::new(e),
        };
        let dir = self.store_dir(out, kv);
        std::fs::create_dir(&dir).map_err(|e| Error::io("create store dir", &dir, e))?;
        // The tree's own version changes take seqnos above the restored ones.
        let counter = SequenceNumberCounter::new(seqno + 1);
        let tree = Config::new(dir.join(TREE_DIR), counter.clone(), counter)
            .open()
            .map_err(engine)?;
        let mut pending = 0;
        for record in records {
            let Some(value) = record.value else { continue };
            pending += record.key.len() + value.len();
            tree.insert(record.key, value, record.seqno);
            if pending >= FLUSH_BYTES {
                tree.flush_active_memtable(0).map_err(engine)?;
                // Old versions would keep every flushed memtable in memory.
                super::store::forget_old_versions(&tree, seqno + 1).map_err(engine)?;
                pending = 0;
            }
        }
        tree.flush_active_memtable(0).map_err(engine)?;
        let mut facts = Facts::unknown();
        facts.next_low = seqno + 1;
        for table in tree.current_version().iter_tables() {
            facts.tables.insert(
                table.id(),
                Fact {
                    low: lowest.min(seqno),
                    high: seqno,
                    holds: Holds::Partial,
                },
            );
        }
        drop(tree);
        facts.write(&dir)?;
        crate::fs::sync_dir(out)?;
        Ok(dir)
    }

    /// The tables in the tree's `tables` dir (lsm-tree 3.1's layout; a
    /// fresh tree written by `write_store` holds only its flushed tables).
    fn written_files(&self, out: &Path, kv: KvId) -> Result<Option<Vec<PathBuf>>> {
        let tables = out.join(format!("kv-{}", kv.0)).join(TREE_DIR).join("tables");
        let mut files = Vec::new();
        let entries = match std::fs::read_dir(&tables) {
            Ok(entries) => entries,
            // No table: the state was empty.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(files)),
            Err(e) => return Err(Error::io("read dir", &tables, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read dir", &tables, e))?;
            if entry
                .file_type()
                .map_err(|e| Error::io("stat", entry.path(), e))?
                .is_file()
            {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(Some(files))
    }
}
