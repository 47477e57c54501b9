//! Writing a restored store as a fresh reference-engine store dir.

use std::path::{Path, PathBuf};

use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::refengine::format::{self, RecordRef};
use crate::refengine::Record;

/// Writes `records` (newest versions, in seqno order) as the only file of
/// store `kv` under the data dir `out`, covering `low..=high`, durably; the
/// reference engine opens it as the store and continues at `high + 1`.
/// Returns the store's dir.
pub(super) fn write_restored_store(
    out: &Path,
    kv: KvId,
    low: u64,
    high: u64,
    records: &[Record],
) -> Result<PathBuf> {
    let dir = out.join(format!("kv-{}", kv.0));
    std::fs::create_dir(&dir).map_err(|e| Error::io("create store dir", &dir, e))?;
    format::sync_dir(out)?;
    if records.is_empty() {
        return Ok(dir);
    }
    let refs: Vec<RecordRef<'_>> = records
        .iter()
        .map(|r| RecordRef {
            seqno: r.seqno,
            key: &r.key,
            value: r.value.as_deref(),
        })
        .collect();
    let name = format::file_name(1);
    format::write_index_file(
        &dir.join(format!(".restore-{name}")),
        &dir.join(&name),
        low,
        high,
        &refs,
    )?;
    Ok(dir)
}
