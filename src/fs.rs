//! The file-system work of a backup dir: open it once, then link, copy and
//! write durably relative to its handle.
//!
//! Everything here blocks; it runs on the linker pool and the metadata threads,
//! never on an actor's mailbox thread. Names the component creates are opened
//! relative to the backup dir's descriptor without following symlinks, and
//! nothing existing is ever replaced (`O_EXCL`, `RENAME_NOREPLACE`,
//! `linkat` failing with `EEXIST`).

use std::fs::{DirBuilder, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;

use crate::dir_lock::{self, DirId, DirLock};
pub(crate) use crate::dir_sync::sync_dir;
use crate::dir_sync::DirSyncGroup;
use crate::engine::IndexFile;
use crate::error::{Error, Result};
use crate::faults::power::{self, SyncTarget};
use crate::faults::{self, FsOp, FsyncSite};
use crate::pin::PrunePin;

/// Prefix of every temp file the component creates in a backup dir. A temp
/// name is `.cbk-tmp.<pid>.<k>.<name>`, unique to its writer (the process,
/// and a counter of the process); files with the prefix are incomplete
/// writes of an earlier run, removed when the dir's owner opens it.
pub(crate) const TEMP_PREFIX: &str = ".cbk-tmp.";

/// How many `name~k` alternatives are tried before a clash is an error.
const MAX_CLASH_TRIES: u32 = 10_000;

/// Permission bits of what the component creates in a backup dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Modes {
    /// Directories (the backup dir and missing parents).
    pub dir: u32,
    /// Files (metadata files and copies).
    pub file: u32,
}

impl Default for Modes {
    fn default() -> Self {
        Modes {
            dir: 0o700,
            file: 0o600,
        }
    }
}

/// An open backup dir, owned: its path (for messages) and a descriptor that
/// every operation is relative to, which holds the dir's lock (one owner at
/// a time, see `dir_lock`).
#[derive(Debug)]
pub(crate) struct BackupDir {
    path: PathBuf,
    lock: DirLock,
    modes: Modes,
    /// Set once a link failed with `EXDEV`: later files are copied without
    /// trying to link first.
    cross_device: AtomicBool,
    /// Set for good when an fsync of the dir failed: the kernel may have
    /// dropped the dirty entries, and a later fsync that succeeds proves
    /// nothing about them ("fsyncgate"). Every later operation fails until
    /// the dir is opened again.
    poisoned: AtomicBool,
    /// The fsync of the parent that makes this dir's own entry durable,
    /// shared with the other dirs opened under the same parent; `None`
    /// when it was done at open.
    entry: Option<EntrySync>,
}

/// A backup dir's entry in its parent, made durable by a grouped fsync
/// before anything in the dir is relied on.
#[derive(Debug)]
struct EntrySync {
    group: Arc<DirSyncGroup>,
    ticket: u64,
    done: AtomicBool,
}

/// Distinguishes the temp files of this process's writes.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temp name for `name` that belongs to this writer alone.
fn temp_name(name: &str) -> String {
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{}.{seq}.{name}", std::process::id())
}

/// A backup dir created and opened, not yet owned: [`lock`](Self::lock)
/// makes it a [`BackupDir`]. Its identity tells the caller whether it
/// already owns this dir under another spelling.
pub(crate) struct UnlockedDir {
    path: PathBuf,
    fd: OwnedFd,
    id: DirId,
    modes: Modes,
    entry: Option<EntrySync>,
}

impl UnlockedDir {
    /// The dir's (device, inode).
    pub fn id(&self) -> DirId {
        self.id
    }

    /// Takes the dir's lock: [`Error::DirLocked`] if another owner, in this
    /// process or another, holds it.
    pub fn lock(self) -> Result<BackupDir> {
        let lock = DirLock::acquire(self.fd, &self.path)?;
        Ok(BackupDir {
            path: self.path,
            lock,
            modes: self.modes,
            cross_device: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            entry: self.entry,
        })
    }
}

/// How a file got into the backup dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Its name in the backup dir.
    pub name: String,
    /// Whether it was copied (the backup dir is on another file system).
    pub copied: bool,
    /// Whether this call created it (false: it was already there, the same
    /// file, from an earlier run).
    pub created: bool,
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl BackupDir {
    /// [`open_with`](Self::open_with) the default modes (0700, 0600).
    #[cfg(test)]
    pub fn open(path: &Path) -> Result<BackupDir> {
        Self::open_with(path, Modes::default(), None)?.lock()
    }

    /// Creates `path` (and missing parents, mode `modes.dir`, each new entry
    /// made durable by an fsync of its parent) and opens it without following
    /// a symlink at its last component. Refused, before anything is created,
    /// if it is or would be inside the dir `outside_of` (the engine's data
    /// dir), however the path is spelled.
    pub fn open_with(path: &Path, modes: Modes, outside_of: Option<DirId>) -> Result<UnlockedDir> {
        Self::open_in(path, modes, None, outside_of)
    }

    /// [`open_with`](Self::open_with), except that the dir's own entry is
    /// made durable later, by an fsync of `parent` (the dir's parent) shared
    /// with every dir opened under it meanwhile: at the first
    /// [`sync`](Self::sync) or [`make_entry_durable`](Self::make_entry_durable),
    /// before anything in the dir is reported. Done at every open, new dir
    /// or not, so a dir whose creation an earlier failure left unsynced is
    /// covered too.
    pub fn open_grouped(
        path: &Path,
        modes: Modes,
        parent: Arc<DirSyncGroup>,
        outside_of: Option<DirId>,
    ) -> Result<UnlockedDir> {
        debug_assert_eq!(Some(parent.path()), path.parent());
        Self::open_in(path, modes, Some(parent), outside_of)
    }

    fn open_in(
        path: &Path,
        modes: Modes,
        parent: Option<Arc<DirSyncGroup>>,
        outside_of: Option<DirId>,
    ) -> Result<UnlockedDir> {
        if !path.is_absolute() {
            return Err(Error::InvalidBackupDir {
                path: path.to_path_buf(),
                reason: "the path is relative; give an absolute path",
            });
        }
        if let Some(data) = outside_of {
            // The deepest part of the path that exists, symlinks followed:
            // everything created goes below it.
            let existing = dir_lock::existing_ancestor(path);
            if let Ok(fd) = dir_lock::open_dir(&existing, true) {
                if dir_lock::inside(&fd, &existing, data)? {
                    return Err(Error::InvalidBackupDir {
                        path: path.to_path_buf(),
                        reason: "it lies inside the engine's data dir (through a symlink or not); put backups elsewhere",
                    });
                }
            }
        }
        create_dirs(path, modes.dir, parent.is_some())?;
        let entry = parent.map(|group| EntrySync {
            ticket: group.ticket(),
            group,
            done: AtomicBool::new(false),
        });
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => Error::InvalidBackupDir {
                path: path.to_path_buf(),
                reason: "it exists and is not a directory",
            },
            Errno::LOOP => Error::InvalidBackupDir {
                path: path.to_path_buf(),
                reason: "it is a symlink; give the real directory",
            },
            e => Error::io("open backup dir", path, errno_io(e)),
        })?;
        let id = DirId::of(&fd, path)?;
        Ok(UnlockedDir {
            path: path.to_path_buf(),
            fd,
            id,
            modes,
            entry,
        })
    }

    /// The dir's (device, inode).
    pub fn id(&self) -> DirId {
        self.lock.id()
    }

    fn fd(&self) -> &OwnedFd {
        self.lock.fd()
    }

    /// Makes the dir's own entry in its parent durable, if its open left
    /// that to a grouped fsync (a no-op after the first success). A failure
    /// poisons the dir.
    pub fn make_entry_durable(&self) -> Result<()> {
        self.check_usable()?;
        let Some(entry) = &self.entry else {
            return Ok(());
        };
        if entry.done.load(Ordering::Acquire) {
            return Ok(());
        }
        entry.group.sync(entry.ticket).inspect_err(|_| {
            self.poisoned.store(true, Ordering::Release);
        })?;
        entry.done.store(true, Ordering::Release);
        Ok(())
    }

    /// Fails if an earlier dir fsync failed: then the dir must be opened
    /// again ([`Error::BackupDirPoisoned`]).
    pub fn check_usable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::BackupDirPoisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The injected fault for `op`, as the errno a real call would give.
    fn injected(&self, op: FsOp) -> std::result::Result<(), Errno> {
        faults::check(&self.path, op).map_err(|e| Errno::from_raw_os_error(e.raw_os_error().unwrap_or(0)))
    }

    /// The dir's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn at(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether links into this dir fail with `EXDEV`.
    pub fn is_cross_device(&self) -> bool {
        self.cross_device.load(Ordering::Relaxed)
    }

    /// Makes every entry created in the dir so far durable (`site` says
    /// which step of the component needs it).
    pub fn sync(&self, site: FsyncSite) -> Result<()> {
        self.make_entry_durable()?;
        if faults::fsync_omitted(&self.path, site) {
            return Ok(());
        }
        let synced = self.injected(FsOp::SyncDir).and_then(|()| {
            let token = power::sync_begin(SyncTarget::Dir(&self.path));
            rustix::fs::fsync(self.fd()).map(|()| token.done())
        });
        synced.map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(dir = %self.path.display(), error = %e, "fsync of backup dir failed; the dir is unusable until reopened");
            Error::io("fsync dir", &self.path, errno_io(e))
        })
    }

    /// The names in the dir.
    pub fn names(&self) -> Result<Vec<String>> {
        let dir = rustix::fs::Dir::read_from(self.fd())
            .map_err(|e| Error::io("read dir", &self.path, errno_io(e)))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| Error::io("read dir", &self.path, errno_io(e)))?;
            if let Ok(name) = entry.file_name().to_str() {
                if name != "." && name != ".." {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    /// Removes the temp files an interrupted earlier run left behind, and
    /// returns how many there were.
    pub fn remove_stale_temps(&self) -> Result<usize> {
        let mut removed = 0;
        for name in self.names()? {
            if name.starts_with(TEMP_PREFIX) {
                self.remove_temp(&name)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.sync(FsyncSite::StaleTemps)?;
        }
        Ok(removed)
    }

    /// Pins the dir for a prune ([`PrunePin`]): `None` while a restore,
    /// verify or inspect reads it.
    pub fn pin_for_prune(&self) -> Result<Option<PrunePin>> {
        PrunePin::try_take(self.fd(), &self.path)
    }

    /// Removes the file `name`, which a prune found no kept restore point
    /// reads (gone already counts as done: a prune cut off before). Durable
    /// once the caller fsyncs the dir.
    pub fn remove_pruned(&self, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
            Ok(()) => {
                power::unlinked(&self.path, name);
                Ok(())
            }
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io("unlink", self.at(name), errno_io(e))),
        }
    }

    fn remove_temp(&self, name: &str) -> Result<()> {
        debug_assert!(name.starts_with(TEMP_PREFIX));
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
            Ok(()) => {
                power::unlinked(&self.path, name);
                Ok(())
            }
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io("remove temp file", self.at(name), errno_io(e))),
        }
    }

    /// Whether `name` exists in the dir (as anything, symlinks not followed).
    pub fn exists(&self, name: &str) -> Result<bool> {
        match rustix::fs::statat(self.fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io("stat", self.at(name), errno_io(e))),
        }
    }

    /// Creates `temp` (a [`temp_name`], this writer's own) exclusively.
    fn create_temp(&self, temp: &str) -> Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let mode = Mode::from_raw_mode(self.modes.file);
        let fd = self
            .injected(FsOp::CreateTemp)
            .and_then(|()| rustix::fs::openat(self.fd(), temp, flags, mode))
            .map_err(|e| Error::io("create temp file", self.at(temp), errno_io(e)))?;
        let file = File::from(fd);
        power::created(&self.path, temp, &file);
        Ok(file)
    }

    /// Renames `temp` to `name` unless `name` exists. Ok(false) when it does
    /// (the temp file is then removed).
    fn publish(&self, temp: &str, name: &str) -> Result<bool> {
        let renamed = self.injected(FsOp::Rename).and_then(|()| {
            rustix::fs::renameat_with(self.fd(), temp, self.fd(), name, RenameFlags::NOREPLACE)
        });
        match renamed {
            Ok(()) => {
                power::renamed(&self.path, temp, name);
                Ok(true)
            }
            Err(Errno::EXIST) => {
                self.remove_temp(temp)?;
                Ok(false)
            }
            Err(e) => {
                let _ = self.remove_temp(temp);
                Err(Error::io("rename into place", self.at(name), errno_io(e)))
            }
        }
    }

    /// Stores `bytes` as the new file `name`, durably: temp file, write,
    /// fsync, rename (never over an existing file), fsync of the dir. Only
    /// when this returns Ok is the file durable. A failed fsync is never
    /// retried: the temp file is dropped and the error returned.
    pub fn write_new_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.publish_new_file(name, bytes, FsyncSite::MetadataFile)?;
        faults::crash_point("metadata.renamed_before_dir_sync");
        self.sync(FsyncSite::MetadataRename)
    }

    /// [`write_new_file`](Self::write_new_file) without its last step: the
    /// file is durable, its name is visible but made durable only by the
    /// caller's next [`sync`](Self::sync) of the dir. `site` names the
    /// file's fsync.
    pub fn publish_new_file(&self, name: &str, bytes: &[u8], site: FsyncSite) -> Result<()> {
        self.make_entry_durable()?;
        let temp = temp_name(name);
        let mut file = self.create_temp(&temp)?;
        let written = self
            .write_synced(&mut file, &mut &bytes[..], site)
            .map(drop)
            .map_err(|(op, e)| Error::io(op, self.at(&temp), e));
        drop(file);
        if let Err(e) = written {
            let _ = self.remove_temp(&temp);
            return Err(e);
        }
        faults::crash_point("metadata.temp_synced");
        if !self.publish(&temp, name)? {
            return Err(Error::io(
                "rename into place",
                self.at(name),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the name is taken; nothing was overwritten",
                ),
            ));
        }
        Ok(())
    }

    /// The bytes of the small file `name` in the dir (at most 64 MiB; not
    /// followed if a symlink).
    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(self.fd(), name, flags, Mode::empty())
            .map_err(|e| Error::io("open", self.at(name), errno_io(e)))?;
        let mut bytes = Vec::new();
        File::from(fd)
            .take(64 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", self.at(name), e))?;
        Ok(bytes)
    }

    /// Writes everything `src` yields to a new temp file and fsyncs it;
    /// returns the byte count.
    fn write_synced(
        &self,
        file: &mut File,
        src: &mut dyn Read,
        site: FsyncSite,
    ) -> std::result::Result<u64, (&'static str, io::Error)> {
        let n = faults::check(&self.path, FsOp::Write)
            .and_then(|()| io::copy(src, file))
            .map_err(|e| ("write", e))?;
        power::written(&self.path, file, n);
        faults::crash_point("temp.written");
        if faults::fsync_omitted(&self.path, site) {
            return Ok(n);
        }
        faults::check(&self.path, FsOp::SyncFile)
            .and_then(|()| {
                let token = power::sync_begin(SyncTarget::File {
                    dir: &self.path,
                    file,
                });
                file.sync_all().map(|()| token.done())
            })
            .map_err(|e| ("fsync", e))?;
        Ok(n)
    }

    /// Places `src` in the dir under its own name, or under `name~k` for the
    /// smallest free `k` when that name is taken by a different file. A name
    /// already holding the same file (same inode, or for copies the same
    /// bytes) counts as done, so placing is idempotent across restarts.
    ///
    /// Links where it can; copies (temp, fsync, rename) when the dir is on
    /// another file system. The caller fsyncs the dir before reporting.
    #[cfg(test)]
    pub fn place(&self, src: &IndexFile) -> Result<Placed> {
        self.place_from(src, None)
    }

    /// [`place`](Self::place), the link made relative to `src_dir` (the
    /// source's dir, open) when `src` is directly in it: the kernel then
    /// looks up one name for the source, not its whole path (at 1024
    /// stores the path walk was the link phase's top kernel cost).
    pub fn place_from(&self, src: &IndexFile, src_dir: Option<&SourceDir>) -> Result<Placed> {
        self.check_usable()?;
        let relative = src_dir.and_then(|d| Some((d.fd.as_fd(), d.name_of(src.path())?)));
        let mut src_id = None;
        for k in 0..MAX_CLASH_TRIES {
            let name = if k == 0 {
                src.name().to_owned()
            } else {
                format!("{}~{k}", src.name())
            };
            if !self.is_cross_device() {
                let linked = self.injected(FsOp::Link).and_then(|()| match relative {
                    Some((dir, file)) => {
                        rustix::fs::linkat(dir, file, self.fd(), name.as_str(), AtFlags::empty())
                    }
                    None => rustix::fs::linkat(CWD, src.path(), self.fd(), name.as_str(), AtFlags::empty()),
                });
                match linked {
                    Ok(()) => {
                        power::linked(&self.path, self.fd().as_fd(), &name);
                        return Ok(Placed {
                            name,
                            copied: false,
                            created: true,
                        });
                    }
                    Err(Errno::EXIST) => {
                        let id = match src_id {
                            Some(id) => id,
                            None => *src_id.insert(file_id_of(src.path())?),
                        };
                        let existing = self.file_id(&name)?;
                        if existing == Some(id) {
                            return Ok(Placed {
                                name,
                                copied: false,
                                created: false,
                            });
                        }
                        // The kernel reports EEXIST before EXDEV: a name on
                        // another device than the source can only be a copy
                        // of an earlier run.
                        if existing.is_some_and(|(dev, _)| dev != id.0)
                            && self.holds_same_bytes(&name, src.path())?
                        {
                            self.cross_device.store(true, Ordering::Relaxed);
                            return Ok(Placed {
                                name,
                                copied: true,
                                created: false,
                            });
                        }
                        continue;
                    }
                    Err(Errno::XDEV) => self.cross_device.store(true, Ordering::Relaxed),
                    Err(e) => return Err(link_error(src.path(), &self.at(&name), e)),
                }
            }
            match self.copy_in(src, &name)? {
                CopyOutcome::Created => {
                    return Ok(Placed {
                        name,
                        copied: true,
                        created: true,
                    })
                }
                CopyOutcome::AlreadyThere => {
                    return Ok(Placed {
                        name,
                        copied: true,
                        created: false,
                    })
                }
                CopyOutcome::Taken => continue,
            }
        }
        Err(Error::NoFreeName {
            dir: self.path.clone(),
            name: src.name().to_owned(),
            tries: MAX_CLASH_TRIES,
        })
    }

    /// Puts the file at `src`, which the caller wrote and fsynced (a base a
    /// prune consolidated), into the dir as `name`, which must be free: a
    /// link, or a durable copy (temp, fsync, rename) when the dir is on
    /// another file system. The caller fsyncs the dir.
    pub fn adopt(&self, src: &Path, name: &str) -> Result<()> {
        self.check_usable()?;
        if !self.is_cross_device() {
            let linked = self
                .injected(FsOp::Link)
                .and_then(|()| rustix::fs::linkat(CWD, src, self.fd(), name, AtFlags::empty()));
            match linked {
                Ok(()) => {
                    power::linked(&self.path, self.fd().as_fd(), name);
                    return Ok(());
                }
                Err(Errno::XDEV) => self.cross_device.store(true, Ordering::Relaxed),
                Err(e) => return Err(link_error(src, &self.at(name), e)),
            }
        }
        let temp = temp_name(name);
        let mut out = self.create_temp(&temp)?;
        let copied = File::open(src)
            .map_err(|e| Error::io("open for copy", src, e))
            .and_then(|mut input| {
                self.write_synced(&mut out, &mut input, FsyncSite::CopyFile)
                    .map_err(|(op, e)| Error::io(op, self.at(&temp), e))
            });
        drop(out);
        if let Err(e) = copied {
            let _ = self.remove_temp(&temp);
            return Err(e);
        }
        if !self.publish(&temp, name)? {
            return Err(Error::io(
                "rename into place (the name is taken)",
                self.at(name),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        Ok(())
    }

    /// (device, inode) of `name` in the dir, None if it does not exist.
    fn file_id(&self, name: &str) -> Result<Option<(u64, u64)>> {
        match rustix::fs::statat(self.fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some((st.st_dev, st.st_ino))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("stat", self.at(name), errno_io(e))),
        }
    }

    fn copy_in(&self, src: &IndexFile, name: &str) -> Result<CopyOutcome> {
        if self.exists(name)? {
            return Ok(if self.holds_same_bytes(name, src.path())? {
                CopyOutcome::AlreadyThere
            } else {
                CopyOutcome::Taken
            });
        }
        let temp = temp_name(name);
        let mut out = self.create_temp(&temp)?;
        let copied = File::open(src.path())
            .map_err(|e| Error::io("open for copy", src.path(), e))
            .and_then(|mut input| {
                self.write_synced(&mut out, &mut input, FsyncSite::CopyFile)
                    .map_err(|(op, e)| Error::io(op, self.at(&temp), e))
            })
            .and_then(|n| {
                if n == src.len() {
                    Ok(())
                } else {
                    Err(Error::Corrupt {
                        path: src.path().to_path_buf(),
                        reason: format!("the engine listed {} bytes but {n} were read", src.len()),
                    })
                }
            });
        drop(out);
        if let Err(e) = copied {
            let _ = self.remove_temp(&temp);
            return Err(e);
        }
        Ok(if self.publish(&temp, name)? {
            CopyOutcome::Created
        } else {
            CopyOutcome::Taken
        })
    }

    /// Whether `name` in the dir is a regular file (not followed if a
    /// symlink) with the same bytes as the file at `src`.
    fn holds_same_bytes(&self, name: &str, src: &Path) -> Result<bool> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(self.fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            // A symlink (ELOOP) or anything else we cannot open is not our copy.
            Err(_) => return Ok(false),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", self.at(name), errno_io(e)))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Ok(false);
        }
        let ours = File::from(fd);
        let theirs = File::open(src).map_err(|e| Error::io("open", src, e))?;
        same_bytes(ours, theirs).map_err(|e| Error::io("compare", self.at(name), e))
    }
}

enum CopyOutcome {
    Created,
    AlreadyThere,
    Taken,
}

fn file_id_of(path: &Path) -> Result<(u64, u64)> {
    let st = rustix::fs::stat(path).map_err(|e| Error::io("stat", path, errno_io(e)))?;
    Ok((st.st_dev, st.st_ino))
}

fn link_error(src: &Path, dst: &Path, e: Errno) -> Error {
    match e {
        Errno::NOENT => Error::SourceVanished {
            path: src.to_path_buf(),
        },
        Errno::MLINK => Error::LinkLimit {
            path: src.to_path_buf(),
        },
        Errno::PERM | Errno::ACCESS => Error::io(
            "link (permission denied: check the backup dir's mode, and fs.protected_hardlinks when the data files belong to another user)",
            format!("{} -> {}", src.display(), dst.display()),
            errno_io(e),
        ),
        e => Error::io("link", format!("{} -> {}", src.display(), dst.display()), errno_io(e)),
    }
}

fn same_bytes(mut a: File, mut b: File) -> io::Result<bool> {
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = a.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Creates `path` and every missing parent with mode `mode`, fsyncing each
/// new entry's parent so the new dirs survive a crash.
/// Creates `path` and its missing parents, each made durable by an fsync of
/// its parent, except `path`'s own entry when `defer_last` (the caller
/// syncs its parent later).
fn create_dirs(path: &Path, mode: u32, defer_last: bool) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = path;
    loop {
        match std::fs::symlink_metadata(cur) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cur);
                match cur.parent() {
                    Some(p) => cur = p,
                    None => break,
                }
            }
            Err(e) if e.raw_os_error() == Some(libc_enotdir()) => {
                return Err(Error::InvalidBackupDir {
                    path: path.to_path_buf(),
                    reason: "a component of the path is a file, not a directory",
                })
            }
            Err(e) => return Err(Error::io("stat", cur, e)),
        }
    }
    for dir in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => power::mkdir(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.raw_os_error() == Some(libc_enotdir()) => {
                return Err(Error::InvalidBackupDir {
                    path: path.to_path_buf(),
                    reason: "a component of the path is a file, not a directory",
                })
            }
            Err(e) => return Err(Error::io("create backup dir", dir, e)),
        }
        if defer_last && dir == path {
            continue;
        }
        if let Some(parent) = dir.parent() {
            if let Err(e) = sync_dir(parent) {
                // Not known durable: removed, so that the next open creates
                // it again and fsyncs its parent, rather than trusting it;
                // but only under its lock, never from under another owner
                // that found it meanwhile (it is then left as it is).
                if let Ok(_held) = DirLock::acquire_path(dir) {
                    if std::fs::remove_dir(dir).is_ok() {
                        power::rmdir(dir);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

fn libc_enotdir() -> i32 {
    Errno::NOTDIR.raw_os_error()
}

/// The dir an engine's files are linked from, open for a round's links
/// (see [`BackupDir::place_from`]).
pub(crate) struct SourceDir {
    fd: OwnedFd,
    /// Its path, as the snapshot's files name it, with a trailing `/`.
    prefix: Vec<u8>,
}

impl SourceDir {
    /// Opens `dir` (`O_PATH`: nothing is read through it); `None` if it
    /// cannot be opened (the links then name whole paths).
    pub fn open(dir: &Path) -> Option<SourceDir> {
        let fd = rustix::fs::openat(
            CWD,
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut prefix = dir.as_os_str().as_bytes().to_vec();
        if prefix.last() != Some(&b'/') {
            prefix.push(b'/');
        }
        Some(SourceDir { fd, prefix })
    }

    /// The name of `path` in this dir, if it is directly in it.
    fn name_of<'p>(&self, path: &'p Path) -> Option<&'p std::ffi::OsStr> {
        let name = path.as_os_str().as_bytes().strip_prefix(self.prefix.as_slice())?;
        (!name.is_empty() && !name.contains(&b'/') && name != b"." && name != b"..")
            .then(|| std::ffi::OsStr::from_bytes(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_file(dir: &Path, name: &str, bytes: &[u8]) -> IndexFile {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        IndexFile::new(path, bytes.len() as u64, 1, 1).unwrap()
    }

    #[test]
    fn place_links_then_counts_the_same_inode_as_done() {
        let tmp = tempfile::tempdir().unwrap();
        let src = index_file(tmp.path(), "1.sqi", b"abc");
        let dir = BackupDir::open(&tmp.path().join("backup")).unwrap();
        let first = dir.place(&src).unwrap();
        assert_eq!(
            (first.name.as_str(), first.created, first.copied),
            ("1.sqi", true, false)
        );
        let again = dir.place(&src).unwrap();
        assert_eq!((again.name.as_str(), again.created), ("1.sqi", false));
    }

    #[test]
    fn place_from_the_source_dir_links_the_same_inode_and_names_only_its_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let src = index_file(tmp.path(), "1.sqi", b"abc");
        let src_dir = SourceDir::open(tmp.path()).unwrap();
        let dir = BackupDir::open(&tmp.path().join("backup")).unwrap();
        let placed = dir.place_from(&src, Some(&src_dir)).unwrap();
        assert!(placed.created);
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        assert_eq!(ino(&tmp.path().join("backup/1.sqi")), ino(src.path()));
        assert_eq!(src_dir.name_of(src.path()), Some(std::ffi::OsStr::new("1.sqi")));
        let below = tmp.path().join("sub/1.sqi");
        assert_eq!(src_dir.name_of(&below), None, "not directly in it");
        let beside = PathBuf::from(format!("{}x/1.sqi", tmp.path().display()));
        assert_eq!(src_dir.name_of(&beside), None, "a dir whose name starts the same");
        // A file elsewhere is linked by its whole path.
        let other = tempfile::tempdir().unwrap();
        let elsewhere = index_file(other.path(), "2.sqi", b"def");
        assert!(dir.place_from(&elsewhere, Some(&src_dir)).unwrap().created);
        assert_eq!(ino(&tmp.path().join("backup/2.sqi")), ino(elsewhere.path()));
    }

    #[test]
    fn place_never_overwrites_a_different_file_of_the_same_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = BackupDir::open(&tmp.path().join("backup")).unwrap();
        std::fs::write(tmp.path().join("backup/1.sqi"), b"old").unwrap();
        let src = index_file(tmp.path(), "1.sqi", b"new");
        let placed = dir.place(&src).unwrap();
        assert_eq!(placed.name, "1.sqi~1");
        assert_eq!(std::fs::read(tmp.path().join("backup/1.sqi")).unwrap(), b"old");
        assert_eq!(std::fs::read(tmp.path().join("backup/1.sqi~1")).unwrap(), b"new");
        assert_eq!(
            dir.place(&src).unwrap().name,
            "1.sqi~1",
            "idempotent under the new name"
        );
    }

    #[test]
    fn write_new_file_is_exclusive_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = BackupDir::open(tmp.path()).unwrap();
        dir.write_new_file("metadata.1.dat", b"one").unwrap();
        assert!(dir.write_new_file("metadata.1.dat", b"two").is_err());
        assert_eq!(std::fs::read(tmp.path().join("metadata.1.dat")).unwrap(), b"one");
        assert_eq!(dir.names().unwrap(), vec!["metadata.1.dat".to_owned()]);
    }

    #[test]
    fn stale_temps_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".cbk-tmp.metadata.3.dat"), b"torn").unwrap();
        std::fs::write(tmp.path().join("1.sqi"), b"data").unwrap();
        let dir = BackupDir::open(tmp.path()).unwrap();
        assert_eq!(dir.remove_stale_temps().unwrap(), 1);
        assert_eq!(dir.names().unwrap(), vec!["1.sqi".to_owned()]);
    }

    #[test]
    fn a_file_or_relative_path_is_not_a_backup_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            BackupDir::open(&file),
            Err(Error::InvalidBackupDir { .. })
        ));
        assert!(matches!(
            BackupDir::open(&file.join("sub")),
            Err(Error::InvalidBackupDir { .. })
        ));
        assert!(matches!(
            BackupDir::open(Path::new("rel/dir")),
            Err(Error::InvalidBackupDir { .. })
        ));
    }

    #[test]
    fn created_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b");
        BackupDir::open(&path).unwrap();
        for p in [tmp.path().join("a"), path] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
    }

    #[test]
    fn a_created_dir_whose_parent_fsync_fails_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("root");
        {
            let _eio = faults::inject(tmp.path(), FsOp::SyncDir, 5);
            assert!(BackupDir::open(&upper.join("kv")).is_err());
        }
        assert!(!upper.exists(), "a dir not known durable is not left behind");
        BackupDir::open(&upper.join("kv")).unwrap();
        assert!(upper.join("kv").is_dir());
    }
}
