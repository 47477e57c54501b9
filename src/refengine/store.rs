//! One KV store: its memtable, its live files, flush, compaction, recovery.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::Arc;

use parking_lot::Mutex;

use super::generations::Generations;
use crate::engine::{check_seqno, Holds, IndexFile, KvId};
use crate::error::{Error, Result};

use super::format::{self, sync_dir, RecordRef};
use super::live_file::{LiveFile, Slot};
use super::store_dir::{self, Listing, MarkerKind, StoreDir};

/// One mutation in a memtable.
#[derive(Clone, Debug)]
struct MemRecord {
    seqno: u64,
    key: Vec<u8>,
    /// `None` for a tombstone.
    value: Option<Vec<u8>>,
}

/// Every mutation since the last flush, each its own record, in seqno order:
/// the seqnos `low..=high` of [`range`](Self::range), every seqno handed out
/// since the last flush.
#[derive(Debug, Default)]
struct Memtable {
    /// The mutations, in (strictly increasing) seqno order.
    records: Vec<MemRecord>,
    /// Key -> index in `records` of its newest version.
    newest: HashMap<Vec<u8>, usize>,
}

impl Memtable {
    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The seqnos covered: the first and last record's.
    fn range(&self) -> (u64, u64) {
        match (self.records.first(), self.records.last()) {
            (Some(first), Some(last)) => (first.seqno, last.seqno),
            _ => (0, 0),
        }
    }

    /// Appends a mutation; `seqno` is above every seqno already in.
    fn insert(&mut self, seqno: u64, key: Vec<u8>, value: Option<Vec<u8>>) {
        debug_assert!(self.records.last().is_none_or(|r| r.seqno < seqno));
        self.newest.insert(key.clone(), self.records.len());
        self.records.push(MemRecord { seqno, key, value });
    }

    /// The newest version of `key`, if the memtable has one.
    fn get(&self, key: &[u8]) -> Option<&MemRecord> {
        self.newest.get(key).map(|&i| &self.records[i])
    }

    /// Puts back the records of `older`, a memtable taken out for a flush
    /// that failed: they precede (by seqno) every record written since.
    fn merge_older(&mut self, older: &Memtable) {
        if older.is_empty() {
            return;
        }
        let newer = std::mem::take(self);
        for r in older.records.iter().cloned().chain(newer.records) {
            self.insert(r.seqno, r.key, r.value);
        }
    }

    /// Every record in seqno order, to write.
    fn sorted_records(&self) -> Vec<RecordRef<'_>> {
        self.records
            .iter()
            .map(|r| RecordRef {
                seqno: r.seqno,
                key: &r.key,
                value: r.value.as_deref(),
            })
            .collect()
    }
}

/// Which stores' backups are active, shared by the engine and its stores: set
/// by [`Engine::files_backed_up`](crate::engine::Engine::files_backed_up),
/// cleared by `backup_stopped`. Kept per store id, so it outlives a store
/// dropped and created again while its backup runs. A leaf lock: nothing is
/// locked while it is held.
pub(super) type ActiveBackups = Arc<Mutex<HashSet<KvId>>>;

/// What the stores of one engine share: what they need to keep compaction
/// inputs for a backup, and the source of snapshot generations.
#[derive(Clone)]
pub(super) struct StoreShared {
    /// `RefOptions::retain_for_backup`.
    pub enabled: bool,
    /// The engine's set of stores whose backup is active.
    pub active: ActiveBackups,
    /// The engine's generations: handed out, and published per store.
    pub generations: Arc<Generations>,
}

impl StoreShared {
    /// A generation no listing of this engine had before.
    fn next_generation(&self) -> u64 {
        self.generations.next()
    }

    /// Whether compaction keeps the inputs the backup has not reported.
    fn retains(&self, kv: KvId) -> bool {
        self.enabled && self.active.lock().contains(&kv)
    }
}

/// What a snapshot of a store lists: its live and retained files, ordered by
/// low seqno (then high seqno; ranges may overlap), each held on disk while
/// this lives. Built again, with a new generation, whenever the store's
/// files change, and shared by every snapshot taken until then.
pub(super) struct Listed {
    /// Tells this listing apart from every other listing of the engine.
    pub generation: u64,
    /// The files, described.
    pub files: Vec<IndexFile>,
    /// The files, held.
    _held: Vec<Arc<LiveFile>>,
}

/// Files a store let go of, with the listing that held them, to be dropped
/// by the caller once it holds no lock: the last release of a retired file
/// deletes it.
#[derive(Default)]
#[must_use = "drop it with no lock held"]
pub(super) struct Released {
    /// The files let go of.
    pub files: Vec<Arc<LiveFile>>,
    /// The store's previous listing, if it was rebuilt.
    pub listing: Option<Arc<Listed>>,
}

/// Everything about a store that `put` and `snapshot` touch. Never held across
/// file IO.
struct State {
    memtable: Memtable,
    /// The memtable a flush is writing, still readable by `get`.
    flushing: Option<Arc<Memtable>>,
    /// Live files, ordered by seqno range (which is also file number order).
    files: Vec<Arc<LiveFile>>,
    /// Compaction inputs kept (already marked obsolete) because the backup
    /// had not reported them when they were retired: listed by snapshots,
    /// not read by `get`. In retirement order.
    retained: Vec<Arc<LiveFile>>,
    /// What a snapshot lists now; rebuilt by [`Store::relist`] after every
    /// change of `files` or `retained`.
    listed: Arc<Listed>,
    next_seqno: u64,
    next_file_number: u64,
    /// Set by `drop_store`; every later call fails with `UnknownKvStore`.
    dropped: bool,
}

/// One KV store.
pub(super) struct Store {
    kv: KvId,
    dir: Arc<StoreDir>,
    /// Serializes flush, compaction and retirement, so the file list only
    /// changes under it and file IO happens outside `state`.
    io: Mutex<()>,
    state: Mutex<State>,
    /// Publishes `state.listed.generation` in `shared.generations`, under
    /// the state lock whenever the listing changes (0 once dropped, and
    /// nothing after that: the id may be a new store's), so
    /// `Engine::generation` (the idle tick's one question) takes no lock and
    /// touches no store.
    shared: StoreShared,
}

impl Store {
    fn new(
        dir: Arc<StoreDir>,
        shared: StoreShared,
        files: Vec<Arc<LiveFile>>,
        next_seqno: u64,
        next_file_number: u64,
    ) -> Store {
        let listed = Arc::new(Listed {
            generation: shared.next_generation(),
            files: files.iter().map(|f| f.desc().clone()).collect(),
            _held: files.clone(),
        });
        shared.generations.publish(dir.kv(), listed.generation);
        Store {
            kv: dir.kv(),
            dir,
            io: Mutex::new(()),
            shared,
            state: Mutex::new(State {
                memtable: Memtable::default(),
                flushing: None,
                files,
                retained: Vec::new(),
                listed,
                next_seqno,
                next_file_number,
                dropped: false,
            }),
        }
    }

    /// Rebuilds what snapshots list after `files` or `retained` changed.
    /// Returns the old listing, to be let go of with no lock held (it may
    /// hold the last reference to a retired file, whose release deletes it).
    #[must_use = "the old listing must be dropped after the state lock"]
    fn relist(&self, st: &mut State) -> Arc<Listed> {
        let mut held: Vec<Arc<LiveFile>> = st.retained.iter().chain(&st.files).cloned().collect();
        held.sort_by_key(|f| (f.desc().low_seqno(), f.desc().high_seqno()));
        let listed = Arc::new(Listed {
            generation: self.shared.next_generation(),
            files: held.iter().map(|f| f.desc().clone()).collect(),
            _held: held,
        });
        if !st.dropped {
            self.shared.generations.publish(self.kv, listed.generation);
        }
        std::mem::replace(&mut st.listed, listed)
    }

    fn unknown(&self) -> Error {
        Error::UnknownKvStore { kv: self.kv }
    }

    /// Creates the store's dir, durably. Called with the engine's dirs lock
    /// held and the store absent from the engine.
    ///
    /// If the dir is still there because files of a dropped incarnation are
    /// held by snapshots, the new incarnation numbers its files above them.
    pub(super) fn create(dir: StoreDir, shared: StoreShared) -> Result<Store> {
        let path = dir.path().to_path_buf();
        let next_file_number = match Listing::read(&path)? {
            None => {
                fs::create_dir(&path).map_err(|e| Error::io("create dir", &path, e))?;
                if let Some(parent) = path.parent() {
                    sync_dir(parent)?;
                }
                1
            }
            Some(listing) => {
                let lingering = listing.max_number();
                if lingering == 0 {
                    store_dir::remove_markers(&path, &listing, true)?;
                } else {
                    store_dir::set_marker(&path, &listing, MarkerKind::Reused, lingering)?;
                    tracing::info!(
                        kv_store = %dir.kv(),
                        lingering,
                        "files of the dropped store are still held; the new store numbers its files above them"
                    );
                }
                lingering + 1
            }
        };
        Ok(Store::new(Arc::new(dir), shared, Vec::new(), 1, next_file_number))
    }

    /// Recovers the store in `dir` (which exists): removes temp files, files
    /// made obsolete by a drop (marker) or a compaction (range contained in a
    /// higher-numbered file's), and loads the rest. `None` if the store was
    /// dropped.
    ///
    /// Files retained for a backup are not recorded as such: they are
    /// compaction inputs, so the containment rule removes them too.
    pub(super) fn recover(dir: StoreDir, shared: StoreShared) -> Result<Option<Store>> {
        let kv = dir.kv();
        let path = dir.path().to_path_buf();
        let Some(listing) = Listing::read(&path)? else {
            return Ok(None);
        };
        listing.remove_temps()?;
        let mut changed = !listing.temps.is_empty();
        let mut obsolete_up_to = 0;
        match listing.marker() {
            Some((MarkerKind::Dropped, _)) => {
                fs::remove_dir_all(&path).map_err(|e| Error::io("remove dir", &path, e))?;
                if let Some(parent) = path.parent() {
                    sync_dir(parent)?;
                }
                tracing::info!(kv_store = %kv, dir = %path.display(), "removed the dir of a dropped store");
                return Ok(None);
            }
            Some((MarkerKind::Reused, n)) => {
                obsolete_up_to = n;
                for (_, p) in listing.sqi.iter().filter(|(m, _)| *m <= n) {
                    store_dir::remove_file_if_exists(p)?;
                }
                store_dir::remove_markers(&path, &listing, false)?;
                changed = true;
                tracing::info!(kv_store = %kv, up_to = n, "removed the files of the store's dropped incarnation");
            }
            None => {}
        }

        struct Found {
            number: u64,
            path: std::path::PathBuf,
            low: u64,
            high: u64,
        }
        let mut found = Vec::new();
        let mut decoded = HashMap::new();
        for (number, p) in listing.sqi.iter().filter(|(m, _)| *m > obsolete_up_to) {
            let (footer, records, offsets) = format::read_with_value_offsets(p)?;
            found.push(Found {
                number: *number,
                path: p.clone(),
                low: footer.low_seqno,
                high: footer.high_seqno,
            });
            decoded.insert(*number, (records, offsets));
        }
        // A compaction writes its output before deleting its inputs; a crash
        // in between, or while inputs were retained for a backup, leaves
        // inputs whose range the output's contains.
        let obsolete: Vec<u64> = found
            .iter()
            .filter(|f| {
                found
                    .iter()
                    .any(|g| g.number > f.number && g.low <= f.low && f.high <= g.high)
            })
            .map(|f| f.number)
            .collect();
        let mut live = Vec::new();
        for f in found {
            if obsolete.contains(&f.number) {
                store_dir::remove_file_if_exists(&f.path)?;
                changed = true;
                tracing::info!(kv_store = %kv, file = %f.path.display(), "removed an input of an interrupted compaction");
            } else {
                live.push(f);
            }
        }
        live.sort_by_key(|f| f.low);
        for w in live.windows(2) {
            if w[0].high >= w[1].low {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    reason: format!(
                        "files {} (seqnos {}..={}) and {} (seqnos {}..={}) overlap",
                        format::file_name(w[0].number),
                        w[0].low,
                        w[0].high,
                        format::file_name(w[1].number),
                        w[1].low,
                        w[1].high
                    ),
                });
            }
        }
        if changed {
            sync_dir(&path)?;
        }

        let dir = Arc::new(dir);
        let next_seqno = live.last().map_or(1, |f| f.high + 1);
        let next_file_number = live.iter().map(|f| f.number).max().unwrap_or(0) + 1;
        let mut files = Vec::with_capacity(live.len());
        for f in live {
            let (records, offsets) = decoded.remove(&f.number).unwrap_or_default();
            let meta = fs::metadata(&f.path).map_err(|e| Error::io("stat", &f.path, e))?;
            let (len, ino) = (meta.len(), std::os::unix::fs::MetadataExt::ino(&meta));
            let holds = declared_holds(records.len(), f.low, f.high);
            // Records are in seqno order, so a repeated key ends up at its
            // newest version's slot.
            let index = records
                .into_iter()
                .zip(offsets)
                .map(|(r, offset)| {
                    let slot = Slot::of(r.value.as_deref(), offset);
                    (r.key, slot)
                })
                .collect();
            let desc = IndexFile::new(f.path, len, f.low, f.high)?
                .with_file_id(ino)
                .with_holds(holds);
            files.push(Arc::new(LiveFile::new(desc, index, Arc::clone(&dir))));
        }
        tracing::debug!(
            kv_store = %kv,
            files = files.len(),
            next_seqno,
            next_file_number,
            "recovered store"
        );
        Ok(Some(Store::new(dir, shared, files, next_seqno, next_file_number)))
    }

    /// Applies a put (`Some(value)`) or a delete (`None`) and returns its
    /// seqno.
    pub(super) fn mutate(&self, key: &[u8], value: Option<&[u8]>) -> Result<u64> {
        for (what, len) in [("key", key.len()), ("value", value.map_or(0, <[u8]>::len))] {
            if u32::try_from(len).is_err() {
                return Err(Error::Engine {
                    kv: self.kv,
                    source: format!("a {len}-byte {what} is longer than the 2^32-1 bytes a record holds")
                        .into(),
                });
            }
        }
        let (key, value) = (key.to_vec(), value.map(<[u8]>::to_vec));
        let mut st = self.state.lock();
        if st.dropped {
            return Err(self.unknown());
        }
        let seqno = check_seqno(self.dir.path(), st.next_seqno)?;
        st.next_seqno = seqno + 1;
        st.memtable.insert(seqno, key, value);
        Ok(seqno)
    }

    /// The newest version of `key`: memtable, then the memtable being
    /// flushed, then live files newest first (never a retained file: the
    /// compaction output that retired it holds its newest versions).
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let files = {
            let st = self.state.lock();
            if st.dropped {
                return Err(self.unknown());
            }
            let in_memory = st
                .memtable
                .get(key)
                .or_else(|| st.flushing.as_ref().and_then(|m| m.get(key)));
            if let Some(e) = in_memory {
                return Ok(e.value.clone());
            }
            st.files.clone()
        };
        for f in files.iter().rev() {
            if let Some(found) = f.get(key)? {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// What a snapshot lists now (shared, not copied).
    pub(super) fn listed(&self) -> Result<Arc<Listed>> {
        let st = self.state.lock();
        if st.dropped {
            return Err(self.unknown());
        }
        Ok(Arc::clone(&st.listed))
    }

    /// How many compaction inputs are retained for the backup.
    pub(super) fn retained(&self) -> Result<usize> {
        let st = self.state.lock();
        if st.dropped {
            return Err(self.unknown());
        }
        Ok(st.retained.len())
    }

    /// Records that the backup has `files`: a retained one is released (and
    /// returned, for the caller to let go of with no lock held, which deletes
    /// it unless a snapshot holds it); a live one is released by the
    /// compaction that retires it. Files the store no longer has are ignored.
    pub(super) fn files_backed_up(&self, files: &[IndexFile]) -> Released {
        let mut released = Released::default();
        if files.is_empty() {
            return released;
        }
        // One pass over the store's files, whatever the number reported.
        let mut reported: HashSet<&IndexFile> = files.iter().collect();
        let mut st = self.state.lock();
        if st.dropped {
            return released;
        }
        let st = &mut *st;
        // Live files the backup reported are flagged (`LiveFile::is_backed_up`):
        // a compaction releases them at once. A report names a file by the
        // description a snapshot gave, whose file id (the inode) tells it
        // apart from an earlier file of the same name.
        for f in &st.files {
            if reported.remove(f.desc()) {
                f.set_backed_up(true);
            }
        }
        if !reported.is_empty() {
            let (gone, kept) = std::mem::take(&mut st.retained)
                .into_iter()
                .partition(|r| reported.contains(r.desc()));
            st.retained = kept;
            released.files = gone;
        }
        if !released.files.is_empty() {
            released.listing = Some(self.relist(st));
        }
        released
    }

    /// The backup stopped: forgets what it reported and returns every
    /// retained file, to be let go of with no lock held.
    pub(super) fn backup_stopped(&self) -> Released {
        let mut st = self.state.lock();
        for f in &st.files {
            f.set_backed_up(false);
        }
        let mut released = Released {
            files: std::mem::take(&mut st.retained),
            listing: None,
        };
        if !released.files.is_empty() && !st.dropped {
            released.listing = Some(self.relist(&mut st));
        }
        released
    }

    /// The live files, described.
    pub(super) fn files(&self) -> Result<Vec<IndexFile>> {
        let st = self.state.lock();
        if st.dropped {
            return Err(self.unknown());
        }
        Ok(st.files.iter().map(|f| f.desc().clone()).collect())
    }

    /// The last seqno handed out, 0 if none.
    pub(super) fn high_seqno(&self) -> Result<u64> {
        let st = self.state.lock();
        if st.dropped {
            return Err(self.unknown());
        }
        Ok(st.next_seqno - 1)
    }

    /// Writes the memtable as a new file.
    pub(super) fn flush(&self) -> Result<Option<IndexFile>> {
        let _io = self.io.lock();
        let (mem, number) = {
            let mut st = self.state.lock();
            if st.dropped {
                return Err(self.unknown());
            }
            if st.memtable.is_empty() {
                return Ok(None);
            }
            let mem = Arc::new(std::mem::take(&mut st.memtable));
            st.flushing = Some(Arc::clone(&mem));
            let number = st.next_file_number;
            st.next_file_number += 1;
            (mem, number)
        };
        let (low, high) = mem.range();
        let written = self.write_file(number, low, high, &mem.sorted_records(), Holds::EveryVersion);
        let mut st = self.state.lock();
        st.flushing = None;
        match written {
            Ok(file) => {
                let desc = file.desc().clone();
                st.files.push(Arc::new(file));
                let old_listing = self.relist(&mut st);
                drop(st);
                drop(old_listing);
                tracing::debug!(
                    kv_store = %self.kv,
                    file = desc.name(),
                    low = desc.low_seqno(),
                    high = desc.high_seqno(),
                    records = mem.records.len(),
                    "flushed"
                );
                Ok(Some(desc))
            }
            Err(e) => {
                st.memtable.merge_older(&mem);
                drop(st);
                tracing::warn!(kv_store = %self.kv, error = %e, "flush failed; the memtable is kept");
                Err(e)
            }
        }
    }

    /// Merges every live file into one and retires the inputs. An input is
    /// retained (kept listed in snapshots and on disk, no longer read) if
    /// retention is enabled, the store's backup is active and has not
    /// reported the input; the others are deleted once no snapshot holds
    /// them.
    pub(super) fn compact(&self) -> Result<Option<IndexFile>> {
        let _io = self.io.lock();
        let (inputs, number) = {
            let mut st = self.state.lock();
            if st.dropped {
                return Err(self.unknown());
            }
            if st.files.len() < 2 {
                return Ok(None);
            }
            let number = st.next_file_number;
            st.next_file_number += 1;
            (st.files.clone(), number)
        };
        let output = self.merge(&inputs, number)?;
        let desc = output.desc().clone();
        let (replaced, retained, old_listing) = {
            let mut st = self.state.lock();
            let retain = self.shared.retains(self.kv);
            // `io` is held, so the list is still exactly `inputs`.
            for f in &inputs {
                f.mark_obsolete();
            }
            let replaced = std::mem::replace(&mut st.files, vec![Arc::new(output)]);
            let mut retained = 0;
            for f in &replaced {
                let reported = f.is_backed_up();
                if retain && !reported {
                    st.retained.push(Arc::clone(f));
                    retained += 1;
                }
            }
            let old_listing = self.relist(&mut st);
            (replaced, retained, old_listing)
        };
        tracing::info!(
            kv_store = %self.kv,
            file = desc.name(),
            inputs = inputs.len(),
            retained_for_backup = retained,
            low = desc.low_seqno(),
            high = desc.high_seqno(),
            "compacted"
        );
        // Deletes every input neither a snapshot nor the retained list holds;
        // the others go when their last holder lets go.
        drop(replaced);
        drop(inputs);
        drop(old_listing);
        Ok(Some(desc))
    }

    fn merge(&self, inputs: &[Arc<LiveFile>], number: u64) -> Result<LiveFile> {
        let mut newest: HashMap<Vec<u8>, (u64, Option<Vec<u8>>)> = HashMap::new();
        let (mut low, mut high) = (u64::MAX, 0);
        for f in inputs {
            let (footer, records) = format::read_index_file(f.path())?;
            low = low.min(footer.low_seqno);
            high = high.max(footer.high_seqno);
            for r in records {
                match newest.get(&r.key) {
                    Some((seqno, _)) if *seqno > r.seqno => {}
                    _ => {
                        newest.insert(r.key, (r.seqno, r.value));
                    }
                }
            }
        }
        let mut records: Vec<RecordRef<'_>> = newest
            .iter()
            .map(|(k, (seqno, v))| RecordRef {
                seqno: *seqno,
                key: k,
                value: v.as_deref(),
            })
            .collect();
        records.sort_unstable_by_key(|r| r.seqno);
        self.write_file(number, low, high, &records, Holds::NewestPerKey)
    }

    /// Durably writes `records` as file `number` covering `low..=high`,
    /// declared as holding `holds` (a flush every version; a compaction
    /// output the newest per key, even where no key repeated, so that it
    /// never declares every version of seqnos its inputs declared too).
    fn write_file(
        &self,
        number: u64,
        low: u64,
        high: u64,
        records: &[RecordRef<'_>],
        holds: Holds,
    ) -> Result<LiveFile> {
        let dir = self.dir.path();
        let dest = dir.join(format::file_name(number));
        let tmp = dir.join(format::temp_file_name(number));
        let written = format::write_index_file(&tmp, &dest, low, high, records)?;
        // In seqno order: a repeated key ends up at its newest version's slot.
        let index = records
            .iter()
            .zip(written.value_offsets)
            .map(|(r, offset)| {
                let slot = Slot::of(r.value, offset);
                (r.key.to_vec(), slot)
            })
            .collect();
        // The inode tells this file apart from an earlier one of the same name
        // (a dropped store's), which a backup dir still links.
        let ino = fs::metadata(&dest).map_err(|e| Error::io("stat", &dest, e))?;
        let desc = IndexFile::new(dest, written.len, low, high)?
            .with_file_id(std::os::unix::fs::MetadataExt::ino(&ino))
            .with_holds(holds);
        Ok(LiveFile::new(desc, index, Arc::clone(&self.dir)))
    }

    /// The store part of `drop_store`: durably marks the dir dropped, then
    /// retires every file, retained ones included. Returns the files, to be
    /// released by the caller once it holds no lock (the last release may
    /// clean the dir up).
    pub(super) fn retire(&self) -> Result<Released> {
        let _io = self.io.lock();
        let used = {
            let st = self.state.lock();
            if st.dropped {
                return Err(self.unknown());
            }
            st.next_file_number - 1
        };
        let path = self.dir.path();
        let listing = Listing::read(path)?.unwrap_or_default();
        store_dir::set_marker(
            path,
            &listing,
            MarkerKind::Dropped,
            used.max(listing.max_number()),
        )?;
        self.dir.set_dropped();
        let mut st = self.state.lock();
        st.dropped = true;
        st.memtable = Memtable::default();
        let mut files = std::mem::take(&mut st.files);
        files.append(&mut st.retained);
        for f in &files {
            f.set_backed_up(false);
            f.mark_obsolete();
        }
        let old_listing = self.relist(&mut st);
        // Under the dirs lock, before the id can be a new store's.
        self.shared.generations.publish(self.kv, 0);
        Ok(Released {
            files,
            listing: Some(old_listing),
        })
    }

    /// Makes the next mutation take `seqno`, to test the 48-bit limit without
    /// 2^48 puts.
    #[cfg(test)]
    pub(super) fn set_next_seqno(&self, seqno: u64) {
        self.state.lock().next_seqno = seqno;
    }
}

/// What a file found on disk holds (a file this process writes is declared
/// by what wrote it). Its seqnos are dense (one per put or delete of the
/// store), so a file with one record per seqno of its range holds every
/// version (a flush output, or a compaction output where no key repeated:
/// then, if its inputs were backed up too, restore refuses the dir as
/// holding overlapping histories rather than guess); any other is a
/// compaction output (or a restored store's file), which keeps each key's newest
/// version, delete markers included, over every key of its range.
fn declared_holds(records: usize, low: u64, high: u64) -> Holds {
    if records as u64 == high - low + 1 {
        Holds::EveryVersion
    } else {
        Holds::NewestPerKey
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_flush_puts_the_memtable_back_under_newer_writes() {
        let mut older = Memtable::default();
        older.insert(1, b"a".to_vec(), Some(b"old".to_vec()));
        older.insert(2, b"b".to_vec(), None);
        let mut now = Memtable::default();
        now.insert(3, b"a".to_vec(), Some(b"new".to_vec()));
        now.merge_older(&older);
        assert_eq!(now.range(), (1, 3));
        assert_eq!(now.get(b"a").unwrap().value.as_deref(), Some(&b"new"[..]));
        assert_eq!(now.get(b"b").unwrap().seqno, 2);
        let seqnos: Vec<u64> = now.sorted_records().iter().map(|r| r.seqno).collect();
        assert_eq!(seqnos, vec![1, 2, 3], "every version kept, in seqno order");
        let mut empty = Memtable::default();
        empty.merge_older(&older);
        assert_eq!((empty.range(), empty.records.len()), ((1, 2), 2));
    }

    #[test]
    fn the_memtable_keeps_every_version_and_reads_the_newest() {
        let mut m = Memtable::default();
        assert!(m.is_empty());
        m.insert(4, b"k".to_vec(), Some(b"1".to_vec()));
        m.insert(5, b"k".to_vec(), None);
        m.insert(6, b"k".to_vec(), Some(b"3".to_vec()));
        assert_eq!(m.range(), (4, 6));
        assert_eq!(m.get(b"k").unwrap().seqno, 6);
        let records = m.sorted_records();
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.key == b"k"));
        assert_eq!(records[1].value, None);
    }
}
