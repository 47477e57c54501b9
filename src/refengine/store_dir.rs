//! A store's directory `<data_dir>/kv-<id>/`: listing it, and the markers that
//! make dropping a store crash-safe while snapshots still hold its files.
//!
//! `drop_store` cannot delete a file a snapshot holds, and must not let the
//! next incarnation of the store (which numbers its files from 1 again)
//! overwrite it or, after a crash, mistake it for one of its own. So before it
//! retires any file, `drop_store` durably writes a marker naming the highest
//! file number the store ever used:
//!
//! | marker | meaning | recovery on open |
//! |---|---|---|
//! | `dropped-<n>` | the store was dropped; files numbered `<= n` are obsolete | the whole dir is removed |
//! | `reused-<n>` | the store was dropped and created again while files `<= n` of the old one were still held; the new one numbers from `n + 1` | files `<= n` and the marker are removed |
//!
//! `<n>` is 12 zero-padded decimal digits. There is at most one marker. When
//! the last file of a dropped incarnation is deleted (the last snapshot holding
//! one drops), [`StoreDir`]'s drop removes the dir (`dropped-`) or the marker
//! (`reused-`). Creating a store whose dir still has a `dropped-` marker turns
//! it into `reused-<highest file still present>`, or removes it if no file is.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::engine::KvId;
use crate::error::{Error, Result};

use super::format::{self, sync_dir};

/// The kind of a marker file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MarkerKind {
    /// `dropped-<n>`: the store is gone.
    Dropped,
    /// `reused-<n>`: the store was created again above `n`.
    Reused,
}

impl MarkerKind {
    fn prefix(self) -> &'static str {
        match self {
            MarkerKind::Dropped => "dropped-",
            MarkerKind::Reused => "reused-",
        }
    }
}

fn marker_name(kind: MarkerKind, n: u64) -> String {
    format!("{}{n:012}", kind.prefix())
}

fn parse_marker(name: &str) -> Option<(MarkerKind, u64)> {
    [MarkerKind::Dropped, MarkerKind::Reused]
        .into_iter()
        .find_map(|kind| {
            let digits = name.strip_prefix(kind.prefix())?;
            if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((kind, digits.parse().ok()?))
        })
}

/// What a store dir holds.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Seqno-index files, sorted by number.
    pub sqi: Vec<(u64, PathBuf)>,
    /// Temp files (names starting with `.`).
    pub temps: Vec<PathBuf>,
    /// Marker files.
    pub markers: Vec<(MarkerKind, u64, PathBuf)>,
    /// Anything else, left alone.
    pub other: Vec<PathBuf>,
}

impl Listing {
    /// Lists `dir`; `None` if it does not exist.
    pub(super) fn read(dir: &Path) -> Result<Option<Listing>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read dir", dir, e)),
        };
        let mut listing = Listing::default();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read dir", dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                listing.other.push(path);
                continue;
            };
            if name.starts_with('.') {
                listing.temps.push(path);
            } else if let Some(n) = format::parse_file_name(name) {
                listing.sqi.push((n, path));
            } else if let Some((kind, n)) = parse_marker(name) {
                listing.markers.push((kind, n, path));
            } else {
                listing.other.push(path);
            }
        }
        listing.sqi.sort();
        Ok(Some(listing))
    }

    /// The marker in force: the highest `n`, `dropped-` winning a tie. (There
    /// is only ever one unless something outside the engine copied one in.)
    pub(super) fn marker(&self) -> Option<(MarkerKind, u64)> {
        self.markers
            .iter()
            .map(|&(kind, n, _)| (kind, n))
            .max_by_key(|&(kind, n)| (n, kind == MarkerKind::Dropped))
    }

    /// The highest seqno-index file number present, 0 if none.
    pub(super) fn max_number(&self) -> u64 {
        self.sqi.last().map_or(0, |(n, _)| *n)
    }

    /// Removes the temp files.
    pub(super) fn remove_temps(&self) -> Result<()> {
        for t in &self.temps {
            remove_file_if_exists(t)?;
        }
        Ok(())
    }
}

pub(super) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Makes `<kind>-<n>` the only marker in `dir`, durably: renames the existing
/// marker (atomic, so there is never a moment with no marker) or creates one,
/// then fsyncs `dir`. On failure, puts the previous marker back (best effort),
/// so a failed `drop_store` does not leave a live store marked dropped.
pub(super) fn set_marker(dir: &Path, listing: &Listing, kind: MarkerKind, n: u64) -> Result<()> {
    let target = dir.join(marker_name(kind, n));
    let previous = listing.markers.first().map(|(_, _, p)| p);
    let result = (|| {
        match previous {
            Some(first) if *first != target => {
                fs::rename(first, &target).map_err(|e| Error::io("rename", first, e))?
            }
            Some(_) => {}
            None => {
                File::create(&target).map_err(|e| Error::io("create", &target, e))?;
            }
        }
        for (_, _, other) in listing.markers.iter().skip(1) {
            if *other != target {
                remove_file_if_exists(other)?;
            }
        }
        sync_dir(dir)
    })();
    if result.is_err() {
        match previous {
            Some(first) if *first != target => {
                let _ = fs::rename(&target, first);
            }
            Some(_) => {}
            None => {
                let _ = fs::remove_file(&target);
            }
        }
    }
    result
}

/// Removes every marker in `dir`; `sync` fsyncs `dir` afterwards.
pub(super) fn remove_markers(dir: &Path, listing: &Listing, sync: bool) -> Result<()> {
    for (_, _, p) in &listing.markers {
        remove_file_if_exists(p)?;
    }
    if sync && !listing.markers.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// One incarnation of a store's directory, shared by the store and its live
/// files. Once the incarnation is dropped, the last of them to go cleans the
/// directory up (see the module doc).
pub(super) struct StoreDir {
    kv: KvId,
    path: PathBuf,
    data_dir: PathBuf,
    /// The engine-wide lock serializing creation, dropping and cleanup of
    /// store dirs. Never held while a `LiveFile` or `Store` is dropped.
    dirs_lock: Arc<Mutex<()>>,
    dropped: AtomicBool,
}

impl StoreDir {
    pub(super) fn new(kv: KvId, data_dir: &Path, dirs_lock: Arc<Mutex<()>>) -> Self {
        StoreDir {
            kv,
            path: data_dir.join(dir_name(kv)),
            data_dir: data_dir.to_path_buf(),
            dirs_lock,
            dropped: AtomicBool::new(false),
        }
    }

    pub(super) fn kv(&self) -> KvId {
        self.kv
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Records that this incarnation was dropped (its `dropped-` marker is
    /// durable), so the last holder cleans up.
    pub(super) fn set_dropped(&self) {
        self.dropped.store(true, Ordering::Release);
    }

    fn cleanup(&self) -> Result<()> {
        let Some(listing) = Listing::read(&self.path)? else {
            return Ok(());
        };
        match listing.marker() {
            Some((MarkerKind::Dropped, _)) if listing.sqi.is_empty() => {
                fs::remove_dir_all(&self.path).map_err(|e| Error::io("remove dir", &self.path, e))?;
                sync_dir(&self.data_dir)?;
                tracing::info!(kv_store = %self.kv, dir = %self.path.display(), "removed the dir of a dropped store");
            }
            Some((MarkerKind::Reused, n)) if listing.sqi.iter().all(|(m, _)| *m > n) => {
                // Not fsynced: if the marker comes back after a crash,
                // recovery deletes files <= n, and there are none.
                remove_markers(&self.path, &listing, false)?;
                tracing::debug!(kv_store = %self.kv, "the last file of the store's previous incarnation is gone");
            }
            _ => {}
        }
        Ok(())
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        if !self.dropped.load(Ordering::Acquire) {
            return;
        }
        let _dirs = self.dirs_lock.lock();
        if let Err(e) = self.cleanup() {
            tracing::warn!(kv_store = %self.kv, error = %e, "could not clean up the dir of a dropped store");
        }
    }
}

/// `kv-<id>`.
pub(super) fn dir_name(kv: KvId) -> String {
    format!("kv-{}", kv.0)
}

/// The store id of a dir named `kv-<id>` (canonical decimal, no leading zeros).
pub(super) fn parse_dir_name(name: &str) -> Option<KvId> {
    let digits = name.strip_prefix("kv-")?;
    let id: u16 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(KvId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(dir_name(KvId(7)), "kv-7");
        assert_eq!(parse_dir_name("kv-7"), Some(KvId(7)));
        for bad in ["kv-07", "kv-", "kv-65536", "kv-+7", "kv7"] {
            assert_eq!(parse_dir_name(bad), None, "{bad}");
        }
        assert_eq!(marker_name(MarkerKind::Dropped, 3), "dropped-000000000003");
        assert_eq!(
            parse_marker("reused-000000000012"),
            Some((MarkerKind::Reused, 12))
        );
        assert_eq!(parse_marker("reused-12"), None);
    }
}
