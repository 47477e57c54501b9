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
mod parallel;
mod pit;
mod prune;
#[cfg(feature = "replication")]
mod remote;
#[cfg(feature = "replication")]
mod remote_prune;
mod verify;
mod write;

pub use crate::manifest::PruneRecord;
pub use crate::pin::ReadPin;
pub use coverage::{coverage_gaps, Coverage, FileCoverage, Unrestorable};
pub use declared::{DeclaredCoverage, NotProvable};
pub use inspect::{inspect, MetadataSummary, StoreReport};
pub use layout::{BackupRoot, StoreBackup};
pub use pit::{restore, restore_points, seqno_at, RestoreSummary};
pub use prune::{prune, prune_with, Consolidate, ConsolidatedReport, PruneReport};
pub(crate) use prune::{prune_dir, PruneDir};
#[cfg(feature = "replication")]
pub use remote::{mirror, Mirrored};
#[cfg(feature = "replication")]
pub use remote_prune::{prune_remote, RemotePruneReport};
pub use verify::{verify, Problem};

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::record::Record;
use crate::refengine::{read_footer, read_index_file};

pub use write::RefTarget;

/// A stream of records read from one backed-up file; an `Err` item (a
/// checksum or format problem, named with the path) ends it.
pub type Records<'a> = Box<dyn Iterator<Item = Result<Record>> + 'a>;

/// Reads the records out of backed-up files of one engine's format.
pub trait RecordReader: Send + Sync {
    /// The format's name, as its engine records it in round manifests
    /// ([`Engine::file_format`](crate::Engine::file_format)).
    fn format(&self) -> &'static str;

    /// Streams the records of the file at `path`, checked against the
    /// format's own checksums as they are read. Memory stays bounded by
    /// what the format needs to check one file, never by the history.
    fn records<'a>(&'a self, path: &Path) -> Result<Records<'a>>;

    /// What the file says of itself (a footer), for dirs written before
    /// round manifests existed: `None`, the default, for a format whose
    /// files declare nothing a restore could trust.
    fn footer_coverage(&self, path: &Path) -> Result<Option<FileCoverage>> {
        let _ = path;
        Ok(None)
    }
}

/// Where a restore writes a store: a fresh data dir of some engine.
pub trait RestoreTarget: Sync {
    /// The format the target writes, for messages.
    fn format(&self) -> &'static str;

    /// Refuses, before anything is written, a restore the target cannot
    /// represent (the reference format has no seqno 0). `lowest` is the
    /// lowest seqno the restore's files cover; `seqno` the one restored to.
    fn check(&self, lowest: u64, seqno: u64) -> std::result::Result<(), String> {
        let _ = (lowest, seqno);
        Ok(())
    }

    /// Writes store `kv` as of `seqno` into the empty data dir `out`,
    /// durably: `records` is the newest version at or below `seqno` of
    /// every key the restore read, deletes included, in seqno order; the
    /// restored store continues at `seqno + 1`. Returns the store's dir.
    fn write_store(
        &self,
        out: &Path,
        kv: KvId,
        lowest: u64,
        seqno: u64,
        records: &mut dyn Iterator<Item = Record>,
    ) -> Result<PathBuf>;

    /// The dir [`write_store`](Self::write_store) writes store `kv` into
    /// under `out` (and returns): removed again, with what is in it, when a
    /// restore of several stores fails. Default: `out/kv-<id>`, as both
    /// shipped targets lay stores out.
    fn store_dir(&self, out: &Path, kv: KvId) -> PathBuf {
        out.join(format!("kv-{}", kv.0))
    }

    /// The seqno-index files [`write_store`](Self::write_store) wrote for
    /// store `kv` into `out`: what a prune that consolidates a base puts
    /// into the backup dir (read back with this format's reader). `None`
    /// where the target cannot tell; then no base is consolidated.
    fn written_files(&self, out: &Path, kv: KvId) -> Result<Option<Vec<PathBuf>>> {
        let _ = (out, kv);
        Ok(None)
    }
}

/// The reference engine's format (see `refengine::format`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RefFormat;

impl RecordReader for RefFormat {
    fn format(&self) -> &'static str {
        crate::refengine::FILE_FORMAT
    }

    /// A file is checked whole (its CRC covers every byte) before its
    /// first record is handed out: one file's bytes in memory at a time.
    fn records<'a>(&'a self, path: &Path) -> Result<Records<'a>> {
        let (_, records) = read_index_file(path)?;
        Ok(Box::new(records.into_iter().map(Ok)))
    }

    /// Reads the footer only (its fields are checked, the checksum is not).
    fn footer_coverage(&self, path: &Path) -> Result<Option<FileCoverage>> {
        let footer = read_footer(path)?;
        Ok(Some(FileCoverage {
            low_seqno: footer.low_seqno,
            high_seqno: footer.high_seqno,
            holds_every_version: footer.holds_every_version(),
        }))
    }
}

/// The file formats this build reads and restores into.
pub fn formats() -> Vec<&'static str> {
    vec![
        crate::refengine::FILE_FORMAT,
        #[cfg(feature = "lsm-tree")]
        crate::lsm::FILE_FORMAT,
    ]
}

fn unknown(what: String) -> Error {
    Error::UnknownFormat {
        what,
        known: formats().join(", "),
    }
}

/// One engine's file format: how to read its files and restore into it.
pub struct Format {
    /// Reads its backed-up files.
    pub reader: Box<dyn RecordReader>,
    /// Writes a restored store as its data dir.
    pub target: Box<dyn RestoreTarget>,
}

/// The file format named `format` (as round manifests name it; `ref` and
/// `lsm-tree` are short for the two shipped), or a typed error naming the
/// formats this build supports.
pub fn format_named(format: &str) -> Result<Format> {
    match format {
        "ref" | crate::refengine::FILE_FORMAT => Ok(Format {
            reader: Box::new(RefFormat),
            target: Box::new(RefTarget),
        }),
        #[cfg(feature = "lsm-tree")]
        "lsm-tree" | crate::lsm::FILE_FORMAT => Ok(Format {
            reader: Box::new(crate::lsm::LsmFormat::default()),
            target: Box::new(crate::lsm::LsmTarget),
        }),
        other => Err(unknown(format!("no reader for the file format `{other}`"))),
    }
}

/// The file format of a backup root's files, from its round manifests (the
/// reference engine's for dirs written before them). Stores in different
/// formats are refused: give the format of the stores to read.
pub fn detect_format(root: &BackupRoot) -> Result<String> {
    let mut found: Option<String> = None;
    for store in root.stores() {
        let (rounds, _) = store.round_records()?;
        for format in rounds.iter().map(|r| &r.engine_format) {
            match &found {
                Some(f) if f != format => {
                    return Err(unknown(format!(
                        "the backup root {} holds files in the formats `{f}` and `{format}`",
                        root.path().display()
                    )))
                }
                Some(_) => {}
                None => found = Some(format.clone()),
            }
        }
    }
    Ok(found.unwrap_or_else(|| crate::refengine::FILE_FORMAT.to_owned()))
}

/// Two records of one store's backup that disagree on what seqno `seqno`
/// wrote: the backup dir holds more than one history of the store (it was
/// deleted and created again into the same dir, and seqnos started over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConflict {
    /// The seqno written twice.
    pub seqno: u64,
    /// A file holding one version.
    pub first: PathBuf,
    /// A file holding another.
    pub second: PathBuf,
}

fn fingerprint(record: &Record) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    record.key.hash(&mut h);
    record.value.hash(&mut h);
    h.finish()
}

/// The first seqno that two of `files` give different records for, if any,
/// streaming each file once. The same record in several files (a
/// compaction output and its input) is no conflict. For dirs without round
/// manifests (with them, declared ranges show a second history, see
/// [`DeclaredCoverage`]): it keeps 8 bytes of fingerprint per seqno.
pub fn history_conflict(reader: &dyn RecordReader, files: &[PathBuf]) -> Result<Option<HistoryConflict>> {
    let mut seen: HashMap<u64, (u64, usize)> = HashMap::new();
    for (i, path) in files.iter().enumerate() {
        for record in reader.records(path)? {
            let record = record?;
            let print = fingerprint(&record);
            match seen.entry(record.seqno) {
                Entry::Occupied(e) => {
                    let (other, first) = *e.get();
                    if other != print {
                        return Ok(Some(HistoryConflict {
                            seqno: record.seqno,
                            first: files[first].clone(),
                            second: path.clone(),
                        }));
                    }
                }
                Entry::Vacant(e) => {
                    e.insert((print, i));
                }
            }
        }
    }
    Ok(None)
}
