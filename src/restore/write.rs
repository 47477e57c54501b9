//! The reference engine as a restore target: a fresh store dir holding one
//! seqno-index file.

use std::path::{Path, PathBuf};

use super::RestoreTarget;
use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::record::Record;
use crate::refengine::format::{self, RecordRef};

/// Writes a restored store as the reference engine's `kv-<id>/` dir with
/// one file covering the restore's seqnos; the engine opens it normally.
#[derive(Clone, Copy, Debug, Default)]
pub struct RefTarget;

impl RestoreTarget for RefTarget {
    fn format(&self) -> &'static str {
        crate::refengine::FILE_FORMAT
    }

    fn check(&self, lowest: u64, _seqno: u64) -> std::result::Result<(), String> {
        if lowest == 0 {
            return Err(
                "the backup holds seqno 0, and the reference engine's format numbers \
                        seqnos from 1; restore it into its own engine's format"
                    .into(),
            );
        }
        Ok(())
    }

    /// The file is written whole (its footer's CRC covers every byte), so
    /// the records are held in memory once, as the caller's map held them.
    fn write_store(
        &self,
        out: &Path,
        kv: KvId,
        lowest: u64,
        seqno: u64,
        records: &mut dyn Iterator<Item = Record>,
    ) -> Result<PathBuf> {
        let records: Vec<Record> = records.collect();
        let dir = self.store_dir(out, kv);
        std::fs::create_dir(&dir).map_err(|e| Error::io("create store dir", &dir, e))?;
        format::sync_dir(out)?;
        if records.is_empty() {
            return Ok(dir);
        }
        let refs: Vec<RecordRef<'_>> = records.iter().map(RecordRef::from).collect();
        let name = format::file_name(1);
        format::write_index_file(
            &dir.join(format!(".restore-{name}")),
            &dir.join(&name),
            lowest,
            seqno,
            &refs,
        )?;
        Ok(dir)
    }

    fn written_files(&self, out: &Path, kv: KvId) -> Result<Option<Vec<PathBuf>>> {
        let file = out.join(format!("kv-{}", kv.0)).join(format::file_name(1));
        Ok(Some(if file.exists() { vec![file] } else { Vec::new() }))
    }
}
