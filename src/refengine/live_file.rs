//! A live seqno-index file, refcounted so that snapshots keep it on disk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::engine::IndexFile;
use crate::error::{Error, Result};

use super::store_dir::StoreDir;

/// Where a key's newest version (its highest-seqno record) in one file is.
#[derive(Clone, Copy, Debug)]
pub(super) enum Slot {
    /// A put whose value is `len` bytes at `offset`.
    Value { offset: u64, len: u32 },
    /// A tombstone.
    Tombstone,
}

impl Slot {
    /// The slot of a record whose value (`None`: a delete) is at `offset`.
    pub(super) fn of(value: Option<&[u8]>, offset: u64) -> Slot {
        match value {
            None => Slot::Tombstone,
            Some(v) => Slot::Value {
                offset,
                len: v.len() as u32,
            },
        }
    }
}

/// One seqno-index file of a store, shared by the store's file list, by
/// snapshots and by in-flight reads.
///
/// When compaction or `drop_store` retires the file it is marked obsolete; the
/// last holder to let go of it (a snapshot, the store's list of files
/// retained for a backup, an in-flight read) deletes it.
pub(super) struct LiveFile {
    desc: IndexFile,
    /// Key -> location of its newest record (a key may have several), so
    /// `get` reads one value, not the file.
    index: HashMap<Vec<u8>, Slot>,
    obsolete: AtomicBool,
    /// The backup reported it (changed under the store's state lock; a
    /// flag here instead of a set of descriptions in the store, which cost
    /// a path and a set entry per file).
    backed_up: AtomicBool,
    /// Keeps the store's directory (and the `dropped-` marker protecting this
    /// file) until the file is gone.
    dir: Arc<StoreDir>,
}

impl LiveFile {
    pub(super) fn new(desc: IndexFile, index: HashMap<Vec<u8>, Slot>, dir: Arc<StoreDir>) -> Self {
        LiveFile {
            desc,
            index,
            obsolete: AtomicBool::new(false),
            backed_up: AtomicBool::new(false),
            dir,
        }
    }

    /// The file as listed in snapshots.
    pub(super) fn desc(&self) -> &IndexFile {
        &self.desc
    }

    pub(super) fn path(&self) -> &Path {
        self.desc.path()
    }

    /// Whether the backup reported this file.
    pub(super) fn is_backed_up(&self) -> bool {
        self.backed_up.load(Ordering::Relaxed)
    }

    /// Records whether the backup has reported this file.
    pub(super) fn set_backed_up(&self, reported: bool) {
        self.backed_up.store(reported, Ordering::Relaxed);
    }

    /// Marks the file for deletion once nobody holds it.
    pub(super) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }

    /// The newest version of `key` in this file: `None` if the file has no
    /// record of it, `Some(None)` for a tombstone.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        match self.index.get(key) {
            None => Ok(None),
            Some(Slot::Tombstone) => Ok(Some(None)),
            Some(&Slot::Value { offset, len }) => {
                let path = self.path();
                let read = || -> io::Result<Vec<u8>> {
                    let mut f = File::open(path)?;
                    f.seek(SeekFrom::Start(offset))?;
                    let mut buf = vec![0; len as usize];
                    f.read_exact(&mut buf)?;
                    Ok(buf)
                };
                read()
                    .map(|v| Some(Some(v)))
                    .map_err(|e| Error::io("read", path, e))
            }
        }
    }
}

impl Drop for LiveFile {
    fn drop(&mut self) {
        if !self.obsolete.load(Ordering::Acquire) {
            return;
        }
        let path: PathBuf = self.desc.path().to_path_buf();
        // Not fsynced: after a crash, recovery deletes a retired file again
        // (compaction input: its range is inside the output's; dropped store:
        // the store dir's marker covers its number).
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(
                kv_store = %self.dir.kv(),
                file = %path.display(),
                "deleted retired seqno-index file"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                kv_store = %self.dir.kv(),
                file = %path.display(),
                error = %e,
                "could not delete retired seqno-index file"
            ),
        }
    }
}
