//! The engine-facing API: what a storage engine implements so its KV stores can
//! be backed up.
//!
//! An engine keeps, per KV store, a *seqno index*: immutable files, each
//! covering a range of 48-bit sequence numbers. The component only needs one
//! thing from it: a [`Snapshot`] of one store, which lists those files and
//! keeps every listed file on disk while it is alive.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest sequence number an engine may hand out: seqnos are 48-bit.
pub const MAX_SEQNO: u64 = (1 << 48) - 1;

/// Prefix of the names the component gives its own files in a backup dir
/// (`metadata.<n>.dat`). Seqno-index files may not use it.
pub(crate) const METADATA_PREFIX: &str = "metadata.";

/// Prefix of the round manifests in a backup dir (`round.<r>.json`).
/// Seqno-index files may not use it.
pub(crate) const ROUND_PREFIX: &str = "round.";

/// Prefix of the prune records in a backup dir (`prune.<p>.json`).
/// Seqno-index files may not use it.
pub(crate) const PRUNE_PREFIX: &str = "prune.";

/// What a seqno-index file declares it holds, as facts a restore checks
/// offline (they are recorded in the backup dir's round manifests). The
/// range is the file's [`low_seqno`](IndexFile::low_seqno)`..=`
/// [`high_seqno`](IndexFile::high_seqno), as the engine declares it: it may
/// be wider than the seqnos the file's records carry (sparse seqnos are
/// normal), and 0 is a valid seqno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Holds {
    /// Every version of every key written to the store with a seqno in the
    /// range (a flush output): a seqno of the range the file lacks was not
    /// written to this store.
    EveryVersion,
    /// For every key written to the store with a seqno in the range, its
    /// newest version at or below the high seqno, delete markers included (a
    /// compaction of every file of the range, over the whole key space: the
    /// reference engine's).
    NewestPerKey,
    /// Some versions of some keys of the range (a compaction output over
    /// part of the key space, or one that dropped delete markers). A restore
    /// uses it only as part of a complete snapshot
    /// ([`Snapshot::is_complete`]).
    Partial,
}

pub use crate::kv_id::KvId;

/// Checks that `seqno` fits in 48 bits; `path` names the file it came from.
pub fn check_seqno(path: &Path, seqno: u64) -> Result<u64> {
    if seqno > MAX_SEQNO {
        return Err(Error::SeqnoOutOfRange {
            path: path.to_path_buf(),
            seqno,
        });
    }
    Ok(seqno)
}

/// One seqno-index file of a KV store, as an engine lists it in a snapshot.
///
/// Built only through [`IndexFile::new`], which rejects what the component
/// could not back up faithfully: a relative path, a file name that is not a
/// plain UTF-8 name (or collides with the component's own `metadata.` and
/// dot-file names), a seqno above [`MAX_SEQNO`], or `low > high`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    path: PathBuf,
    len: u64,
    low_seqno: u64,
    high_seqno: u64,
    file_id: Option<u64>,
    holds: Option<Holds>,
}

/// Hashes the file name rather than the whole path: equal files have equal
/// names, and hashing a path goes component by component, which made it
/// the largest user-space cost of linking a file.
impl std::hash::Hash for IndexFile {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.path.file_name().hash(state);
        self.len.hash(state);
        self.low_seqno.hash(state);
        self.high_seqno.hash(state);
        self.file_id.hash(state);
    }
}

impl IndexFile {
    /// Describes the file at absolute `path`, `len` bytes long, holding the
    /// seqnos `low_seqno..=high_seqno`.
    pub fn new(path: impl Into<PathBuf>, len: u64, low_seqno: u64, high_seqno: u64) -> Result<Self> {
        let path = path.into();
        if !path.is_absolute() {
            return Err(Error::InvalidIndexFile {
                path,
                reason: "the path is relative; engines must list absolute paths",
            });
        }
        check_file_name(&path)?;
        check_seqno(&path, low_seqno)?;
        check_seqno(&path, high_seqno)?;
        if low_seqno > high_seqno {
            return Err(Error::SeqnoRangeInverted {
                path,
                low: low_seqno,
                high: high_seqno,
            });
        }
        Ok(IndexFile {
            path,
            len,
            low_seqno,
            high_seqno,
            file_id: None,
            holds: None,
        })
    }

    /// Declares what the file holds (see [`Holds`]). A file without a
    /// declaration counts as [`Holds::Partial`] for restore.
    pub fn with_holds(mut self, holds: Holds) -> Self {
        self.holds = Some(holds);
        self
    }

    /// What the file declares it holds, if it does.
    pub fn holds(&self) -> Option<Holds> {
        self.holds
    }

    /// Adds an id that tells this file apart from any other file the engine
    /// ever lists under the same path (an inode number, a creation counter).
    ///
    /// Backups recognise a file they already linked by its path, length,
    /// seqno range and this id. An engine that may reuse a path for different
    /// bytes while a backup of the store runs (a store dropped and created
    /// again between two rounds) must set it, or the new file could be taken
    /// for the old one and never linked.
    pub fn with_file_id(mut self, id: u64) -> Self {
        self.file_id = Some(id);
        self
    }

    /// The id set by [`with_file_id`](Self::with_file_id).
    pub fn file_id(&self) -> Option<u64> {
        self.file_id
    }

    /// Absolute path of the file in the engine's data dir.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's name (its last path component), which is the name it gets
    /// in the backup dir unless that name is taken by another file.
    pub fn name(&self) -> &str {
        // Checked to be present and UTF-8 by `new`.
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lowest seqno the file covers.
    pub fn low_seqno(&self) -> u64 {
        self.low_seqno
    }

    /// Highest seqno the file covers.
    pub fn high_seqno(&self) -> u64 {
        self.high_seqno
    }
}

fn check_file_name(path: &Path) -> Result<()> {
    let invalid = |reason| Error::InvalidIndexFile {
        path: path.to_path_buf(),
        reason,
    };
    // `Path::file_name` is None for paths ending in `..`.
    let name = path
        .file_name()
        .ok_or_else(|| invalid("the path has no file name (it ends in `..` or `/`)"))?;
    let name = name
        .to_str()
        .ok_or_else(|| invalid("the file name is not UTF-8"))?;
    if name.starts_with('.') {
        return Err(invalid(
            "the file name starts with `.`, which the component reserves for its temp files",
        ));
    }
    if name.starts_with(METADATA_PREFIX) {
        return Err(invalid(
            "the file name starts with `metadata.`, which the component reserves for metadata files",
        ));
    }
    if name.starts_with(ROUND_PREFIX) {
        return Err(invalid(
            "the file name starts with `round.`, which the component reserves for round manifests",
        ));
    }
    if name.starts_with(PRUNE_PREFIX) {
        return Err(invalid(
            "the file name starts with `prune.`, which the component reserves for prune records",
        ));
    }
    if name.contains('~') {
        return Err(invalid(
            "the file name contains `~`, which the component uses for renamed duplicates",
        ));
    }
    Ok(())
}

/// A consistent view of one KV store that keeps every listed file on disk
/// while it is alive.
///
/// The component holds a snapshot from the moment it lists the files until the
/// round's callback returns, so compaction cannot delete a file between listing
/// and linking.
pub trait Snapshot: Send + Sync {
    /// The KV store this is a snapshot of.
    fn kv_id(&self) -> KvId;

    /// Every seqno-index file of the store at the time of the snapshot.
    fn files(&self) -> &[IndexFile];

    /// A number that tells this snapshot's file list apart: two snapshots of
    /// one engine with the same generation list the same files, so a round
    /// that finds the generation it already linked skips comparing the
    /// list (an idle round then costs the same at 10 files or 10,000).
    /// `None`, the default, when the engine keeps no such number: every
    /// round compares the whole list. A generation must change whenever the
    /// list does, and must not repeat for another list of the same store,
    /// even after the store is dropped and created again.
    fn generation(&self) -> Option<u64> {
        None
    }

    /// Whether the listed files together hold the store's whole flushed
    /// state at the highest seqno they cover: for every key, its newest
    /// version at or below it (a deleted key may be absent, or present as
    /// a delete marker), and no version a compaction or a drop has
    /// superseded without a marker. A restore then takes a complete
    /// snapshot's files as a base. `false`, the default, claims nothing.
    fn is_complete(&self) -> bool {
        false
    }
}

/// What a storage engine implements so its KV stores can be backed up.
///
/// Called from the component's linker threads (and [`snapshot`](Engine::snapshot)
/// also from its callback threads), never from an actor's mailbox thread,
/// except [`generation`](Engine::generation); so an implementation may block
/// briefly (take a lock, read a manifest).
pub trait Engine: Send + Sync + 'static {
    /// Takes a snapshot of the KV store `kv`. Fails with
    /// [`Error::UnknownKvStore`] when the engine has no such store.
    fn snapshot(&self, kv: KvId) -> Result<Box<dyn Snapshot>>;

    /// The engine's data dir, if it has one; a backup dir may not lie inside it.
    fn data_dir(&self) -> Option<&Path> {
        None
    }

    /// A short name of the engine's file format (`ref-sqi-1` for the
    /// reference engine), recorded in the backup dir's round manifests so a
    /// restore knows how to read the files. `unknown`, the default.
    fn file_format(&self) -> &'static str {
        "unknown"
    }

    /// The first seqno of store `kv`'s history, if the engine knows that
    /// nothing was written to it before: a restore may then start from an
    /// empty store just below it. `None`, the default, claims nothing.
    fn first_seqno(&self, kv: KvId) -> Option<u64> {
        let _ = kv;
        None
    }

    /// The [generation](Snapshot::generation) a snapshot of `kv` taken now
    /// would have, if the engine can tell at once. Unlike the other methods
    /// this is called on the store's actor thread, before a tick's round, so
    /// it must not block: no IO, no lock held across IO. With
    /// [`Config::report_empty_rounds`](crate::Config::report_empty_rounds)
    /// off, a tick whose generation was linked already ends there; with it
    /// on, the round skips the linker: a callback thread takes the snapshot
    /// and, if its generation is still that one, calls back with no files.
    /// `None`, the default: every tick runs a round on the linker pool.
    fn generation(&self, kv: KvId) -> Option<u64> {
        let _ = kv;
        None
    }

    /// Tells the engine that `files` of store `kv` are now durably in its
    /// backup dir. Called after every successful link phase of a round (with
    /// an empty list when nothing was new), on a linker thread; a round that
    /// skipped the linker (see [`generation`](Engine::generation)) does not
    /// call it.
    ///
    /// An engine that wants exact point-in-time restores keeps a compaction
    /// input listed in its snapshots (and on disk) until it was reported
    /// here, for stores whose backup runs: otherwise the versions that
    /// compaction dropped are gone before the backup saw them. The default
    /// does nothing.
    fn files_backed_up(&self, kv: KvId, files: &[IndexFile]) {
        let _ = (kv, files);
    }

    /// Tells the engine that the backup of store `kv` stopped: files it
    /// kept for the backup may go. Called on a linker thread. The default
    /// does nothing.
    fn backup_stopped(&self, kv: KvId) {
        let _ = kv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqno_above_48_bits_is_rejected_not_truncated() {
        let err = IndexFile::new("/d/1.sqi", 10, 1, MAX_SEQNO + 1).unwrap_err();
        assert!(
            matches!(err, Error::SeqnoOutOfRange { seqno, .. } if seqno == MAX_SEQNO + 1),
            "{err}"
        );
        let ok = IndexFile::new("/d/1.sqi", 10, MAX_SEQNO, MAX_SEQNO).unwrap();
        assert_eq!(ok.high_seqno(), MAX_SEQNO);
    }

    #[test]
    fn inverted_range_is_rejected() {
        let err = IndexFile::new("/d/1.sqi", 10, 5, 4).unwrap_err();
        assert!(matches!(err, Error::SeqnoRangeInverted { low: 5, high: 4, .. }));
    }

    #[test]
    fn names_the_component_reserves_are_rejected() {
        for bad in [
            "rel/1.sqi",
            "/d/..",
            "/d/.hidden",
            "/d/metadata.1.dat",
            "/d/round.1.json",
            "/d/prune.1.json",
            "/d/a~1",
        ] {
            assert!(
                matches!(IndexFile::new(bad, 1, 1, 1), Err(Error::InvalidIndexFile { .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn name_is_the_last_component() {
        let f = IndexFile::new("/data/kv-3/000007.sqi", 4096, 10, 20).unwrap();
        assert_eq!(f.name(), "000007.sqi");
        assert_eq!((f.len(), f.low_seqno(), f.high_seqno()), (4096, 10, 20));
    }
}
