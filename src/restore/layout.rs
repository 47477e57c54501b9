//! Where things are in a backup root.

use std::path::{Path, PathBuf};

use super::DeclaredCoverage;
use crate::engine::{KvId, METADATA_PREFIX, PRUNE_PREFIX, ROUND_PREFIX};
use crate::error::{Error, Result};
use crate::manifest::{parse_round_file_name, RoundRecord};
use crate::manifest::{ConsolidatedBase, PruneRecord};
use crate::metadata::{metadata_file_name, parse_metadata_file_name};
use crate::pin::ReadPin;

/// A backup root: one dir per KV store, named by its id.
#[derive(Clone, Debug)]
pub struct BackupRoot {
    path: PathBuf,
    stores: Vec<StoreBackup>,
}

/// What one store's backup dir holds, by name.
#[derive(Clone, Debug)]
pub struct StoreBackup {
    /// The store.
    pub kv: KvId,
    /// Its backup dir.
    pub dir: PathBuf,
    /// Seqno-index files (links or copies), sorted by name.
    pub files: Vec<PathBuf>,
    /// Metadata files as `(n, path)`, sorted by `n`: only names the
    /// component writes (`metadata.<n>.dat`, `n` decimal from 1 without
    /// leading zeros), so each `n` appears once.
    pub metadata: Vec<(u64, PathBuf)>,
    /// Files named `metadata.<digits>.dat` (or `round.*`) that the
    /// component never writes (`n` 0, leading zeros, or beyond 64 bits),
    /// sorted by name: neither metadata files, manifests nor seqno-index
    /// files.
    pub foreign_metadata: Vec<PathBuf>,
    /// Temp files of an interrupted write (removed when the backup starts again).
    pub temp_files: Vec<PathBuf>,
    /// Round manifests as `(r, path)`, sorted by `r` (none in a dir written
    /// before manifests existed).
    pub rounds: Vec<(u64, PathBuf)>,
    /// Prune records as `(p, path)`, sorted by `p`: the dir was pruned, so
    /// files older than its retention window are gone on purpose.
    pub prunes: Vec<(u64, PathBuf)>,
}

/// A file that does not read back as what its name says, and why.
pub type Unreadable = (PathBuf, String);

impl StoreBackup {
    /// The round manifests that read back, in round order, and the paths
    /// of those that do not, with why (a restore treats them as missing,
    /// which makes the snapshot unknown until the next full round).
    pub fn round_records(&self) -> Result<(Vec<RoundRecord>, Vec<Unreadable>)> {
        let (mut records, mut unreadable) = (Vec::new(), Vec::new());
        for (_, path) in &self.rounds {
            let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
            match serde_json::from_slice(&bytes) {
                Ok(record) => records.push(record),
                Err(e) => unreadable.push((path.clone(), format!("not a round manifest: {e}"))),
            }
        }
        Ok((records, unreadable))
    }

    /// The dir's prune records, in order, with their numbers.
    pub fn prune_records(&self) -> Result<Vec<(u64, PruneRecord)>> {
        let mut out = Vec::with_capacity(self.prunes.len());
        for (p, path) in &self.prunes {
            let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
            let record = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path: path.clone(),
                reason: format!("not a prune record: {e}"),
            })?;
            out.push((*p, record));
        }
        Ok(out)
    }

    /// The names of the files the dir's prune records say were deleted.
    pub fn pruned_names(&self) -> Result<std::collections::BTreeSet<String>> {
        Ok(self
            .prune_records()?
            .into_iter()
            .flat_map(|(_, r)| r.deleted)
            .collect())
    }

    /// What the dir's round manifests (`rounds`, as
    /// [`round_records`](Self::round_records) read them) and the bases its
    /// prunes consolidated declare, over the files the dir holds.
    pub fn coverage(&self, rounds: &[RoundRecord]) -> Result<DeclaredCoverage> {
        let bases: Vec<ConsolidatedBase> = self
            .prune_records()?
            .into_iter()
            .filter_map(|(_, r)| r.base)
            .collect();
        Ok(DeclaredCoverage::of_present_with(rounds, &bases, &|n| {
            self.holds_file(n)
        }))
    }

    /// The store listed again under a [`ReadPin`]: no prune deletes what the
    /// listing holds while the pin is alive (a prune under way is waited
    /// for). Taken by restore, verify and inspect before they read.
    pub fn pinned(&self) -> Result<(ReadPin, StoreBackup)> {
        let pin = ReadPin::take(&self.dir)?;
        Ok((pin, StoreBackup::list(self.kv, &self.dir)?))
    }

    /// Whether the dir holds the seqno-index file `name` (`files` is
    /// sorted by name: a binary search).
    pub fn holds_file(&self, name: &str) -> bool {
        self.files.binary_search(&self.dir.join(name)).is_ok()
    }
}

/// The store whose backup dir a backup root's entry `name` is: its id in
/// decimal, without leading zeros.
pub(crate) fn store_dir_id(name: &str) -> Option<KvId> {
    let id = name.parse::<u16>().ok()?;
    (id.to_string() == name).then_some(KvId(id))
}

/// What a name in a backup dir is to the metadata numbering.
enum MetadataName {
    /// `metadata.<n>.dat` as the component writes it.
    Canonical(u64),
    /// `metadata.<digits>.dat` that the component never writes.
    Foreign,
    /// Not shaped like a metadata file's name.
    Other,
}

fn metadata_name(name: &str) -> MetadataName {
    let shaped = name
        .strip_prefix(METADATA_PREFIX)
        .and_then(|rest| rest.strip_suffix(".dat"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    match parse_metadata_file_name(name) {
        Some(n) if n >= 1 && metadata_file_name(n) == name => MetadataName::Canonical(n),
        _ if shaped => MetadataName::Foreign,
        _ => MetadataName::Other,
    }
}

fn read_dir(path: &Path) -> Result<Vec<(String, PathBuf, std::fs::FileType)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io("read dir", path, e))? {
        let entry = entry.map_err(|e| Error::io("read dir", path, e))?;
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("stat", entry.path(), e))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path(), kind));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

impl StoreBackup {
    /// Lists store `kv`'s backup dir `dir`.
    pub fn list(kv: KvId, dir: &Path) -> Result<StoreBackup> {
        let mut store = StoreBackup {
            kv,
            dir: dir.to_path_buf(),
            files: Vec::new(),
            metadata: Vec::new(),
            foreign_metadata: Vec::new(),
            temp_files: Vec::new(),
            rounds: Vec::new(),
            prunes: Vec::new(),
        };
        for (name, path, kind) in read_dir(dir)? {
            if name == crate::pin::PIN_NAME || name == super::prune::SCRATCH_DIR {
                continue; // readers' pins; a consolidation's scratch dir
            }
            if name.starts_with('.') {
                store.temp_files.push(path);
                continue;
            }
            if name.starts_with(PRUNE_PREFIX) {
                if crate::manifest::parse_consolidated_file_name(&name).is_some() && kind.is_file() {
                    store.files.push(path);
                    continue;
                }
                match crate::manifest::parse_prune_file_name(&name) {
                    Some(p) => store.prunes.push((p, path)),
                    None => store.foreign_metadata.push(path),
                }
                continue;
            }
            if name.starts_with(ROUND_PREFIX) {
                match parse_round_file_name(&name) {
                    Some(r) => store.rounds.push((r, path)),
                    None => store.foreign_metadata.push(path),
                }
                continue;
            }
            match metadata_name(&name) {
                MetadataName::Canonical(n) => store.metadata.push((n, path)),
                MetadataName::Foreign => store.foreign_metadata.push(path),
                MetadataName::Other if kind.is_file() => store.files.push(path),
                MetadataName::Other => {}
            }
        }
        store.metadata.sort_by_key(|(n, _)| *n);
        store.rounds.sort_by_key(|(r, _)| *r);
        store.prunes.sort_by_key(|(p, _)| *p);
        Ok(store)
    }
}

impl BackupRoot {
    /// Lists the backup root at `path`: every subdir named by a 16-bit
    /// number is a store's backup dir.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            return Err(Error::InvalidBackupDir {
                path: path.to_path_buf(),
                reason: "it is not a directory",
            });
        }
        let mut stores = Vec::new();
        for (name, dir, kind) in read_dir(path)? {
            let Some(kv) = store_dir_id(&name).filter(|_| kind.is_dir()) else {
                continue;
            };
            stores.push(StoreBackup::list(kv, &dir)?);
        }
        stores.sort_by_key(|s| s.kv);
        Ok(BackupRoot {
            path: path.to_path_buf(),
            stores,
        })
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every store found, ordered by id.
    pub fn stores(&self) -> &[StoreBackup] {
        &self.stores
    }

    /// The backup of `kv`.
    pub fn store(&self, kv: KvId) -> Result<&StoreBackup> {
        self.stores.iter().find(|s| s.kv == kv).ok_or(Error::NotInBackup {
            kv,
            root: self.path.clone(),
        })
    }
}
