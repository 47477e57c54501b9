//! The reference engine: a small, durable seqno-index engine that implements
//! [`Engine`], used by the crate's examples, tests and benches.
//!
//! # Layout
//!
//! A data dir holds one directory per KV store, `<data_dir>/kv-<id>/` (`id` in
//! decimal, e.g. `kv-7`). A store's data is a set of immutable seqno-index
//! files named `<number>.sqi`, `number` being 12 zero-padded decimal digits
//! increasing per store from 1 (`000000000001.sqi`). Their byte format is in
//! [`format`](mod@format). Temp files start with `.` (`.tmp-000000000005.sqi`) and are
//! removed on open. A store dir may also hold one `dropped-<n>` or
//! `reused-<n>` marker (see below). No name the engine uses starts with
//! `metadata.` or contains `~`.
//!
//! # Writes, seqnos and durability
//!
//! Each [`put`](RefEngine::put) or [`delete`](RefEngine::delete) (a tombstone)
//! takes the store's next seqno, from 1, and goes to an in-memory memtable as
//! its own record: **every version of a key is kept until compaction**, so a
//! store can be rebuilt exactly as it was at any seqno its files cover.
//! Seqnos never exceed
//! [`MAX_SEQNO`](crate::engine::MAX_SEQNO) (2^48-1): the mutation that would
//! is refused with [`Error::SeqnoOutOfRange`].
//!
//! **The memtable is not logged: [`flush`](RefEngine::flush) is the
//! durability point.** It writes the memtable as one new file covering every
//! seqno handed out since the previous flush, one record per mutation in
//! seqno order (a key written twice appears twice), durably (temp file,
//! fsync, rename, fsync of the dir). Mutations not yet flushed are lost on a crash, and after
//! reopening, seqnos continue from the highest flushed one (so the lost ones
//! are handed out again).
//!
//! [`get`](RefEngine::get) returns the newest version: the memtable's, else
//! the newest file's holding the key (within a file, its highest-seqno
//! record).
//!
//! [`compact`](RefEngine::compact) merges all of a store's live files into one
//! new file covering the union of their ranges, keeping only the newest
//! version of each key (tombstones included), then retires the inputs.
//!
//! # Snapshots and retired files
//!
//! Every live file is an `Arc`-counted handle. A [`Snapshot`] clones the
//! handles of the store's files, so it is cheap and keeps each file on disk:
//! a file retired by compaction or [`drop_store`](RefEngine::drop_store) is
//! deleted by whoever lets go of it last — at once if no snapshot (and no
//! retention, below) holds it, else when the last holder lets go.
//!
//! # Retention for backup (exact point-in-time restore)
//!
//! Compaction drops the intermediate versions its inputs held. If a backup
//! has not linked an input yet, those versions would never reach it, and a
//! restore to a seqno inside that input's range could not be exact. So the
//! engine implements [`Engine::files_backed_up`] and
//! [`Engine::backup_stopped`]:
//!
//! - A store's backup is *active* from any `files_backed_up` call for it
//!   (even with an empty list) until `backup_stopped`. The flag is kept per
//!   store id, so it survives the store being dropped and created again.
//! - `files_backed_up` records which of the store's files the backup has
//!   (recognised by absolute path and file id).
//! - When compaction retires an input while the backup is active and has not
//!   reported that input, the input is **retained**: [`get`](RefEngine::get)
//!   no longer reads it (the output holds its newest versions), but
//!   snapshots still list it and it stays on disk, until `files_backed_up`
//!   reports it (it is then deleted as soon as no snapshot holds it),
//!   `backup_stopped` is called (every retained file of the store is
//!   released and the reported set forgotten), or the store is dropped.
//!   [`RefEngine::retained`] counts them.
//! - A snapshot lists the live files and the retained ones, ordered by low
//!   seqno; a retained file's range lies inside the range of the compaction
//!   output that retired it, so ranges may overlap.
//!
//! The cost: while a backup is active, an input stays on disk until the next
//! round of the backup has linked it — at most about one backup interval
//! longer than without retention. A store with no active backup, or an
//! engine opened with [`RefOptions::retain_for_backup`] `false`, deletes
//! inputs as soon as no snapshot holds them.
//!
//! **Limit: retention is not persisted.** Retained files are deleted when
//! the engine closes, and after a crash recovery removes them as inputs of a
//! finished compaction (below). So exactness for the versions of a
//! compaction that ran less than one backup round before a crash (or a
//! close) is lost: the backup gets the compaction output only.
//!
//! # Dropping and re-creating a store
//!
//! `drop_store` writes a `dropped-<n>` marker (`n` = the highest file number
//! the store used) durably before retiring its files; the dir goes when its
//! last file does. A store created again starts over from seqno 1 and file
//! number 1, so file names are reused — unless a snapshot still holds files of
//! the old store, in which case the new one numbers its files above the
//! highest held one (marker `reused-<n>`), so a held file is never replaced.
//! Details in `store_dir.rs`.
//!
//! # Recovery
//!
//! [`RefEngine::open`] recovers every `kv-<id>` dir: temp files are removed; a
//! `dropped-` marker removes the dir; a `reused-<n>` marker removes files
//! numbered `<= n`; a file whose seqno range lies within the range of a
//! higher-numbered file is the input of a compaction interrupted between
//! writing its output and deleting its inputs (or retained for a backup, see
//! above), and is removed (ranges of live files never overlap otherwise:
//! flushes produce adjacent ranges and compaction merges all live files). Every remaining file is fully verified. The
//! next file number is the highest remaining plus one; the next seqno is the
//! highest flushed seqno plus one. Only one engine may use a data dir at a
//! time.
//!
//! # Concurrency
//!
//! [`RefEngine`] is a cheap `Clone` handle, `Send + Sync`. Per store, a
//! `parking_lot` mutex guards the memtable, the file lists and the backup's
//! reported files (held briefly, never across IO: `put`, `snapshot` and the
//! backup hooks do not wait for a flush's or compaction's IO), and a second
//! mutex serializes flush, compaction and drop. The backup hooks delete the
//! files they release with no lock held.

pub mod format;
mod generations;
mod live_file;
mod store;
mod store_dir;
mod store_table;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::dir_lock::DirLock;
use crate::engine::{Engine, IndexFile, KvId, Snapshot};
use crate::error::{Error, Result};

pub use format::{read_footer, read_index_file, write_index_file_durably, Footer, Record};

use generations::Generations;
use store::{ActiveBackups, Listed, Store, StoreShared};
use store_dir::StoreDir;
use store_table::StoreTable;

/// The reference engine: a data dir of KV stores, each a memtable plus
/// immutable seqno-index files (see the [module docs](self)).
///
/// A cheaply cloneable handle (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct RefEngine {
    inner: Arc<Inner>,
}

/// Options of a [`RefEngine`], given to [`RefEngine::open_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefOptions {
    /// Whether compaction keeps, for a store whose backup is active, the
    /// inputs the backup has not reported by [`Engine::files_backed_up`]
    /// yet, so that the backup links every version and restores are exact
    /// at every seqno (see the [module docs](self#retention-for-backup-exact-point-in-time-restore)).
    ///
    /// Default: `true`. `false` deletes compaction inputs as soon as no
    /// snapshot holds them (the behaviour of an engine without the hook;
    /// tests use it to show what retention buys).
    pub retain_for_backup: bool,
}

impl Default for RefOptions {
    fn default() -> Self {
        RefOptions {
            retain_for_backup: true,
        }
    }
}

struct Inner {
    /// Held while the engine is open: one owner of the data dir at a time.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "held for its drop: the lock goes with the engine")
    )]
    lock: Mutex<Option<DirLock>>,
    data_dir: PathBuf,
    options: RefOptions,
    /// The stores whose backup is active (see `StoreShared::retains`).
    active_backups: ActiveBackups,
    /// The generations handed out, and each store's current one (see
    /// `StoreShared`).
    generations: Arc<Generations>,
    /// Serializes creating and dropping stores with the cleanup of dropped
    /// stores' dirs. Never held while a file handle or store is released.
    dirs_lock: Arc<Mutex<()>>,
    stores: RwLock<StoreTable<Arc<Store>>>,
}

impl fmt::Debug for RefEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefEngine")
            .field("data_dir", &self.inner.data_dir)
            .field("options", &self.inner.options)
            .field("stores", &self.stores())
            .finish()
    }
}

/// The name of this engine's file format in round manifests.
pub const FILE_FORMAT: &str = "ref-sqi-1";

impl RefEngine {
    /// Opens (creating if missing) a data dir holding any number of KV
    /// stores, recovering every store found in it (see the module docs),
    /// with the default [`RefOptions`] (retention for backup on).
    ///
    /// The path is made absolute (canonical), as snapshots list absolute
    /// paths. Fails if a remaining file is corrupt or files overlap.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<RefEngine> {
        Self::open_with(data_dir, RefOptions::default())
    }

    /// [`open`](Self::open) with `options`.
    pub fn open_with(data_dir: impl AsRef<Path>, options: RefOptions) -> Result<RefEngine> {
        let given = data_dir.as_ref();
        let existed = given.exists();
        fs::create_dir_all(given).map_err(|e| Error::io("create data dir", given, e))?;
        let data_dir = fs::canonicalize(given).map_err(|e| Error::io("canonicalize", given, e))?;
        // One owner at a time (RocksDB's LOCK): taken before recovery,
        // which removes what an interrupted flush left, could touch a dir
        // another engine is writing.
        let lock = DirLock::acquire_path(&data_dir)?;
        if !existed {
            if let Some(parent) = data_dir.parent() {
                format::sync_dir(parent)?;
            }
        }
        let dirs_lock = Arc::new(Mutex::new(()));
        let active_backups: ActiveBackups = Arc::new(Mutex::new(HashSet::new()));
        let generations = Arc::new(Generations::new());
        let shared = StoreShared {
            enabled: options.retain_for_backup,
            active: Arc::clone(&active_backups),
            generations: Arc::clone(&generations),
        };
        let mut stores = StoreTable::default();
        let entries = fs::read_dir(&data_dir).map_err(|e| Error::io("read dir", &data_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read dir", &data_dir, e))?;
            let Some(kv) = entry.file_name().to_str().and_then(store_dir::parse_dir_name) else {
                continue;
            };
            let is_dir = entry
                .file_type()
                .map_err(|e| Error::io("stat", entry.path(), e))?
                .is_dir();
            if !is_dir {
                continue;
            }
            let dir = StoreDir::new(kv, &data_dir, Arc::clone(&dirs_lock));
            if let Some(store) = Store::recover(dir, shared.clone())? {
                stores.insert(kv, Arc::new(store));
            }
        }
        tracing::info!(data_dir = %data_dir.display(), stores = stores.len(), "opened the reference engine");
        Ok(RefEngine {
            inner: Arc::new(Inner {
                lock: Mutex::new(Some(lock)),
                data_dir,
                options,
                active_backups,
                generations,
                dirs_lock,
                stores: RwLock::new(stores),
            }),
        })
    }

    /// Leaks the engine as a crash would leave it (nothing released, no
    /// file removed), except its data dir's lock, which the kernel drops
    /// with a dead process.
    #[cfg(test)]
    pub(crate) fn crash(self) {
        drop(self.inner.lock.lock().take());
        std::mem::forget(self);
    }

    /// The (absolute) data dir.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> RefOptions {
        self.inner.options
    }

    fn shared(&self) -> StoreShared {
        StoreShared {
            enabled: self.inner.options.retain_for_backup,
            active: Arc::clone(&self.inner.active_backups),
            generations: Arc::clone(&self.inner.generations),
        }
    }

    fn store(&self, kv: KvId) -> Result<Arc<Store>> {
        self.with_store(kv, |store| Ok(Arc::clone(store)))
    }

    /// Runs `f` on store `kv` under the table's read lock, with no count of
    /// the store taken (`f` must not call back into the table).
    fn with_store<R>(&self, kv: KvId, f: impl FnOnce(&Arc<Store>) -> Result<R>) -> Result<R> {
        let stores = self.inner.stores.read();
        f(stores.get(kv).ok_or(Error::UnknownKvStore { kv })?)
    }

    /// Creates an empty store, its dir made durable (no-op if it exists).
    /// [`put`](Self::put) and [`delete`](Self::delete) also create a store on
    /// demand.
    pub fn create_store(&self, kv: KvId) -> Result<()> {
        if self.inner.stores.read().contains(kv) {
            return Ok(());
        }
        let _dirs = self.inner.dirs_lock.lock();
        if self.inner.stores.read().contains(kv) {
            return Ok(());
        }
        let dir = StoreDir::new(kv, &self.inner.data_dir, Arc::clone(&self.inner.dirs_lock));
        let store = Store::create(dir, self.shared())?;
        self.inner.stores.write().insert(kv, Arc::new(store));
        tracing::info!(kv_store = %kv, "created store");
        Ok(())
    }

    /// Deletes a store and all its files (a vBucket deleted), files retained
    /// for its backup included. Files still held by a snapshot are deleted
    /// when the snapshot drops. Whether the store's backup is active is kept
    /// (see the module docs). A later
    /// [`create_store`](Self::create_store) or [`put`](Self::put) starts the
    /// store again from seqno 1 and file number 1, so file names are reused
    /// (numbering starts above any file a snapshot still holds).
    ///
    /// Waits for a running flush or compaction of the store. Unflushed
    /// mutations are discarded. Fails with [`Error::UnknownKvStore`] if there
    /// is no such store.
    pub fn drop_store(&self, kv: KvId) -> Result<()> {
        let (store, files) = {
            let _dirs = self.inner.dirs_lock.lock();
            let store = self.store(kv)?;
            let files = store.retire()?;
            self.inner.stores.write().remove(kv);
            (store, files)
        };
        tracing::info!(kv_store = %kv, files = files.files.len(), "dropped store");
        // Released with no lock held: the last release of a file deletes it,
        // and the last release of the store's dir removes the dir.
        drop(files);
        drop(store);
        Ok(())
    }

    /// The ids of all stores, sorted.
    pub fn stores(&self) -> Vec<KvId> {
        self.inner.stores.read().ids().collect()
    }

    fn mutate(&self, kv: KvId, key: &[u8], value: Option<&[u8]>) -> Result<u64> {
        loop {
            let store = match self.store(kv) {
                Ok(store) => store,
                Err(Error::UnknownKvStore { .. }) => {
                    self.create_store(kv)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match store.mutate(key, value) {
                // Dropped since we looked it up: create it again.
                Err(Error::UnknownKvStore { .. }) => continue,
                result => return result,
            }
        }
    }

    /// Sets `key` to `value` in store `kv` (created if missing) and returns
    /// the mutation's seqno. Durable only once flushed.
    pub fn put(&self, kv: KvId, key: &[u8], value: &[u8]) -> Result<u64> {
        self.mutate(kv, key, Some(value))
    }

    /// Deletes `key` from store `kv` (created if missing) by writing a
    /// tombstone, and returns its seqno. Durable only once flushed.
    pub fn delete(&self, kv: KvId, key: &[u8]) -> Result<u64> {
        self.mutate(kv, key, None)
    }

    /// The newest version of `key` in store `kv`: the memtable's, else the
    /// newest live file's holding the key (its highest-seqno record there).
    /// `None` if absent or deleted. Files retained for a backup are not read.
    pub fn get(&self, kv: KvId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.store(kv)?.get(key)
    }

    /// Writes the memtable of store `kv` as one new immutable seqno-index file,
    /// every mutation its own record in seqno order, durably (temp file,
    /// fsync, rename, fsync dir), and returns it. `Ok(None)` if the memtable
    /// is empty.
    pub fn flush(&self, kv: KvId) -> Result<Option<IndexFile>> {
        self.store(kv)?.flush()
    }

    /// Merges all live files of store `kv` into one new file, keeping for
    /// each key only its newest version (tombstones are kept), then retires the
    /// inputs: each is deleted as soon as no snapshot holds it (immediately if
    /// none does) — unless it is retained for the store's active backup,
    /// which has not reported it yet (see the module docs). `Ok(None)` if the
    /// store has fewer than 2 live files.
    pub fn compact(&self, kv: KvId) -> Result<Option<IndexFile>> {
        self.store(kv)?.compact()
    }

    /// The current live files of store `kv`, ordered by low seqno (not the
    /// files retained for a backup, which snapshots list too).
    pub fn files(&self, kv: KvId) -> Result<Vec<IndexFile>> {
        self.store(kv)?.files()
    }

    /// How many compaction inputs of store `kv` are retained for its backup
    /// (listed in snapshots and kept on disk until the backup reports them).
    pub fn retained(&self, kv: KvId) -> Result<usize> {
        self.store(kv)?.retained()
    }

    /// The last seqno handed out in store `kv` (0 if none).
    pub fn high_seqno(&self, kv: KvId) -> Result<u64> {
        self.store(kv)?.high_seqno()
    }

    #[cfg(test)]
    fn store_for_test(&self, kv: KvId) -> Arc<Store> {
        self.store(kv).expect("store exists")
    }
}

/// A snapshot of one store: its live and retained files, each held on disk
/// while the snapshot lives. Shares the store's current listing, so taking
/// one costs no copy of the file list.
struct RefSnapshot {
    kv: KvId,
    listed: Arc<Listed>,
}

impl Snapshot for RefSnapshot {
    fn kv_id(&self) -> KvId {
        self.kv
    }

    fn files(&self) -> &[IndexFile] {
        &self.listed.files
    }

    fn generation(&self) -> Option<u64> {
        Some(self.listed.generation)
    }

    /// The live files hold the store's whole flushed state (compaction
    /// keeps each key's newest version and its delete markers); retained
    /// compaction inputs only add older versions.
    fn is_complete(&self) -> bool {
        true
    }
}

impl Engine for RefEngine {
    fn snapshot(&self, kv: KvId) -> Result<Box<dyn Snapshot>> {
        // Under the table's read lock, not with a clone of the store's `Arc`:
        // at 1024 stores that count's cold cache line was 90 % of finding
        // the store (`perf annotate`), and a reported idle round asks this.
        let listed = self.with_store(kv, |store| store.listed())?;
        Ok(Box::new(RefSnapshot { kv, listed }))
    }

    fn data_dir(&self) -> Option<&Path> {
        Some(&self.inner.data_dir)
    }

    fn file_format(&self) -> &'static str {
        FILE_FORMAT
    }

    /// Every store's seqnos start at 1.
    fn first_seqno(&self, _kv: KvId) -> Option<u64> {
        Some(1)
    }

    /// One load from the engine's table of generations (each store
    /// publishes its listing's there under its state lock): no lock, no
    /// map, no store touched.
    fn generation(&self, kv: KvId) -> Option<u64> {
        self.inner.generations.of(kv)
    }

    /// Marks the store's backup active and records `files` as backed up:
    /// retained ones are released (deleted once no snapshot holds them),
    /// live ones will be when compaction retires them.
    fn files_backed_up(&self, kv: KvId, files: &[IndexFile]) {
        self.inner.active_backups.lock().insert(kv);
        let Ok(store) = self.store(kv) else {
            return;
        };
        let released = store.files_backed_up(files);
        if !released.files.is_empty() {
            tracing::debug!(kv_store = %kv, released = released.files.len(), "backup has retained files; released");
        }
        // Let go of with no lock held: the last release deletes a file.
        drop(released);
        drop(store);
    }

    /// Marks the store's backup inactive and releases every file retained
    /// for it.
    fn backup_stopped(&self, kv: KvId) {
        self.inner.active_backups.lock().remove(&kv);
        let Ok(store) = self.store(kv) else {
            return;
        };
        let released = store.backup_stopped();
        tracing::debug!(kv_store = %kv, released = released.files.len(), "backup stopped; retained files released");
        drop(released);
        drop(store);
    }
}
