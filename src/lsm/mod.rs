//! The lsm-tree adapter (feature `lsm-tree`): one [lsm-tree] tree per KV
//! store, backed up by the component, read back by [`LsmFormat`] and
//! restored into a fresh tree by [`LsmTarget`].
//!
//! lsm-tree is pinned to one exact version: the adapter uses items it
//! marks `#[doc(hidden)]` (`current_version`, `Version::iter_tables`,
//! `Table::path`, `Table::recover`, `Table::iter`).
//!
//! What the adapter declares (see [`Holds`](crate::Holds)):
//! - a flush that writes one table: every version of the seqnos since the
//!   previous such flush (the tree's counter also advances on flushes and
//!   compactions, so seqnos no write used are normal);
//! - a flush split into several tables, and every compaction output:
//!   partial (lsm-tree drops delete markers in the last level and keeps
//!   only the newest versions below the current seqno);
//! - a snapshot with no retained compaction input is complete.
//!
//! Retention: when a compaction replaces tables the running backup has not
//! linked yet, the adapter holds them open (lsm-tree deletes a table's file
//! when its last handle goes) and lists them in snapshots until
//! [`Engine::files_backed_up`] reports them, so no version is lost between
//! two rounds. Held tables are not kept across a restart of the process.
//!
//! On disk, store `kv` lives in `<data>/kv-<id>/`: lsm-tree's folder
//! `tree/` (the adapter never writes into it) and `declared.json`, the
//! facts each table declares (see `facts`).
//!
//! Writes, flushes and compactions are the caller's to drive, as lsm-tree
//! leaves them: [`LsmEngine::put`], [`flush`](LsmEngine::flush),
//! [`compact`](LsmEngine::compact), [`major_compact`](LsmEngine::major_compact).
//! lsm-tree has no write-ahead log: what was not flushed is gone after a
//! crash; [`LsmEngine::flush_all`] before the process ends.
//!
//! [lsm-tree]: https://docs.rs/lsm-tree/3.1.10

mod facts;
mod reader;
mod store;
mod target;

pub use lsm_tree;
pub use reader::LsmFormat;
pub use store::LsmSnapshot;
pub use target::LsmTarget;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::dir_lock::DirLock;
use crate::engine::{Engine, IndexFile, KvId, Snapshot};
use crate::error::{Error, Result};
use store::Store;

/// The file format the adapter records in round manifests.
pub const FILE_FORMAT: &str = "lsm-tree-3";

/// Block cache shared by the stores' trees.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How an [`LsmEngine`] runs.
#[derive(Clone, Copy, Debug)]
pub struct LsmOptions {
    /// Keep the compaction inputs a running backup has not linked yet
    /// (default `true`). Off, a table flushed and compacted away between
    /// two rounds is never backed up, and restore refuses the seqnos only
    /// it held.
    pub retain_for_backup: bool,
}

impl Default for LsmOptions {
    fn default() -> Self {
        LsmOptions {
            retain_for_backup: true,
        }
    }
}

/// An [`Engine`] over one lsm-tree tree per KV store, in one data dir.
pub struct LsmEngine {
    dir: PathBuf,
    options: LsmOptions,
    _lock: DirLock,
    cache: Arc<lsm_tree::Cache>,
    stores: RwLock<BTreeMap<KvId, Arc<Store>>>,
    opening: parking_lot::Mutex<()>,
    generations: AtomicU64,
}

fn store_dir_name(kv: KvId) -> String {
    format!("kv-{}", kv.0)
}

impl LsmEngine {
    /// Opens the data dir `dir` (created if missing), locked against a
    /// second owner, with every store in it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LsmEngine> {
        Self::open_with(dir, LsmOptions::default())
    }

    /// [`open`](Self::open) with `options`.
    pub fn open_with(dir: impl Into<PathBuf>, options: LsmOptions) -> Result<LsmEngine> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create dir", &dir, e))?;
        let dir = dir.canonicalize().map_err(|e| Error::io("resolve", &dir, e))?;
        let lock = DirLock::acquire_path(&dir)?;
        let engine = LsmEngine {
            options,
            _lock: lock,
            cache: Arc::new(lsm_tree::Cache::with_capacity_bytes(CACHE_BYTES)),
            stores: RwLock::new(BTreeMap::new()),
            opening: parking_lot::Mutex::new(()),
            generations: AtomicU64::new(1),
            dir,
        };
        for entry in std::fs::read_dir(&engine.dir).map_err(|e| Error::io("read dir", &engine.dir, e))? {
            let entry = entry.map_err(|e| Error::io("read dir", &engine.dir, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix("kv-")) else {
                continue;
            };
            if let Some(kv) = id.parse::<u16>().ok().filter(|k| k.to_string() == id) {
                engine.create_store(KvId(kv))?;
            }
        }
        Ok(engine)
    }

    /// Opens store `kv`, creating it (its history starting at seqno 0) if
    /// the data dir has none.
    pub fn create_store(&self, kv: KvId) -> Result<()> {
        // Opened outside the map's lock (`generation` reads the map on an
        // actor thread and must not wait for this IO), one at a time: a
        // tree is never opened twice.
        let _opening = self.opening.lock();
        if self.stores.read().contains_key(&kv) {
            return Ok(());
        }
        let dir = self.dir.join(store_dir_name(kv));
        let store = Store::open(
            kv,
            &dir,
            self.cache.clone(),
            &self.generations,
            self.options.retain_for_backup,
        )?;
        self.stores.write().entry(kv).or_insert_with(|| Arc::new(store));
        Ok(())
    }

    fn store(&self, kv: KvId) -> Result<Arc<Store>> {
        self.stores
            .read()
            .get(&kv)
            .cloned()
            .ok_or(Error::UnknownKvStore { kv })
    }

    /// The stores, by id.
    pub fn kv_ids(&self) -> Vec<KvId> {
        self.stores.read().keys().copied().collect()
    }

    /// Puts `key` = `value` in store `kv`; returns its seqno.
    pub fn put(&self, kv: KvId, key: &[u8], value: &[u8]) -> Result<u64> {
        self.store(kv)?.write(key, Some(value))
    }

    /// Deletes `key` from store `kv` (a delete marker); returns its seqno.
    pub fn delete(&self, kv: KvId, key: &[u8]) -> Result<u64> {
        self.store(kv)?.write(key, None)
    }

    /// The newest value of `key` in store `kv`.
    pub fn get(&self, kv: KvId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.store(kv)?.get(key)
    }

    /// The tree of store `kv`, for reads through lsm-tree's own API.
    pub fn tree(&self, kv: KvId) -> Result<lsm_tree::AnyTree> {
        Ok(self.store(kv)?.tree().clone())
    }

    /// Flushes store `kv`'s memtable to a table.
    pub fn flush(&self, kv: KvId) -> Result<()> {
        self.store(kv)?.flush(&self.generations)
    }

    /// Flushes every store.
    pub fn flush_all(&self) -> Result<()> {
        for kv in self.kv_ids() {
            self.flush(kv)?;
        }
        Ok(())
    }

    /// Runs one leveled compaction of store `kv`.
    pub fn compact(&self, kv: KvId) -> Result<()> {
        self.store(kv)?.compact(false, &self.generations)
    }

    /// Compacts all of store `kv` into the last level (delete markers and
    /// older versions are dropped).
    pub fn major_compact(&self, kv: KvId) -> Result<()> {
        self.store(kv)?.compact(true, &self.generations)
    }
}

impl Engine for LsmEngine {
    fn snapshot(&self, kv: KvId) -> Result<Box<dyn Snapshot>> {
        Ok(Box::new(self.store(kv)?.snapshot()?))
    }

    fn data_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn file_format(&self) -> &'static str {
        FILE_FORMAT
    }

    fn first_seqno(&self, kv: KvId) -> Option<u64> {
        self.store(kv).ok()?.first_seqno()
    }

    fn generation(&self, kv: KvId) -> Option<u64> {
        self.stores.read().get(&kv).map(|s| s.generation())
    }

    fn files_backed_up(&self, kv: KvId, files: &[IndexFile]) {
        if let Ok(store) = self.store(kv) {
            store.backed_up(files, &self.generations);
        }
    }

    fn backup_stopped(&self, kv: KvId) {
        if let Ok(store) = self.store(kv) {
            store.backup_stopped(&self.generations);
        }
    }
}
