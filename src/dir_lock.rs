//! Directories known by what they are, and owned by one holder at a time.
//!
//! - [`DirId`]: the (device, inode) of an opened directory. Two spellings of
//!   one dir (a symlinked parent, `a/../a`) have one `DirId`; the in-use
//!   checks and the metadata logs compare these, never path text.
//! - [`DirLock`]: an advisory `flock(LOCK_EX|LOCK_NB)` on the directory's own
//!   descriptor, held until dropped. `flock` locks belong to the open file
//!   description, so a second open of the dir conflicts whether it is in
//!   another process or in this one (unlike POSIX `fcntl` locks, which a
//!   process never conflicts with itself on). The kernel releases the lock
//!   when the holder dies, so a crash leaves nothing stale to clean, and no
//!   file is added to the dir. The holder's pid, which `flock` does not
//!   record, is looked up in `/proc/locks` for the error message.
//! - [`inside`]: whether an opened dir lies inside another, by walking its
//!   ancestors through `..` and comparing `DirId`s.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// The (device, inode) of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl DirId {
    /// The identity of the open directory `fd` (`path` names it in errors).
    pub fn of(fd: impl AsFd, path: &Path) -> Result<DirId> {
        let st = rustix::fs::fstat(fd).map_err(|e| Error::io("stat dir", path, e.into()))?;
        Ok(DirId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The identity of the directory at `path` (symlinks followed).
    pub fn of_path(path: &Path) -> Result<DirId> {
        DirId::of(open_dir(path, true)?, path)
    }
}

/// Opens the directory at `path`, following a symlink at its last component
/// only if `follow`.
pub(crate) fn open_dir(path: &Path, follow: bool) -> Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::openat(CWD, path, flags, Mode::empty()).map_err(|e| Error::io("open dir", path, e.into()))
}

/// An exclusive advisory lock on a directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    fd: OwnedFd,
    id: DirId,
}

impl DirLock {
    /// Locks the open directory `fd` (named `path` in errors) without
    /// waiting. Fails with [`Error::DirLocked`], naming the holder's pid
    /// where `/proc/locks` tells it, if another open of the dir holds it.
    pub fn acquire(fd: OwnedFd, path: &Path) -> Result<DirLock> {
        let id = DirId::of(&fd, path)?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { fd, id }),
            Err(Errno::WOULDBLOCK) => Err(Error::DirLocked {
                path: path.to_path_buf(),
                holder_pid: holder_pid(id),
            }),
            Err(e) => Err(Error::io("lock dir", path, e.into())),
        }
    }

    /// Opens and locks the directory at `path` (a symlink at its last
    /// component is followed).
    pub fn acquire_path(path: &Path) -> Result<DirLock> {
        DirLock::acquire(open_dir(path, true)?, path)
    }

    /// The locked directory's identity.
    pub fn id(&self) -> DirId {
        self.id
    }

    /// The locked directory's descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// The pid holding a `flock` on the directory `id`, from `/proc/locks`
/// (lines like `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF`, the
/// device as hex major:minor).
///
/// The kernel hands `/proc/locks` out a page at a time and resumes by
/// line number, so a lock that others take or drop between two pages
/// can shift a line past the reader: a miss is read again, a few times.
fn holder_pid(id: DirId) -> Option<u32> {
    const READS: usize = 4;
    let want = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(id.dev),
        rustix::fs::minor(id.dev),
        id.ino
    );
    (0..READS).find_map(|_| {
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        flock_holder(&locks, &want)
    })
}

/// The pid of the granted `flock` on `dev_ino` (`maj:min:ino`) in the text
/// of `/proc/locks`.
fn flock_holder(locks: &str, dev_ino: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Blocked waiters are listed as "-> FLOCK ..."; skip them.
        let at = fields.iter().position(|f| *f == "FLOCK")?;
        if fields.get(at.checked_sub(1)?) == Some(&"->") {
            return None;
        }
        (fields.get(at + 4) == Some(&dev_ino))
            .then(|| fields.get(at + 3)?.parse().ok())
            .flatten()
    })
}

/// Whether the open directory `dir` is `outer` or lies below it: walks
/// `dir`'s ancestors through `..` up to the root, comparing identities.
pub(crate) fn inside(dir: &OwnedFd, path: &Path, outer: DirId) -> Result<bool> {
    let mut cur = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open dir", path, e.into()))?;
    let mut id = DirId::of(&cur, path)?;
    // A path has at most PATH_MAX / 2 components.
    for _ in 0..2048 {
        if id == outer {
            return Ok(true);
        }
        let parent = rustix::fs::openat(
            &cur,
            "..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open parent dir", path, e.into()))?;
        let parent_id = DirId::of(&parent, path)?;
        if parent_id == id {
            return Ok(false); // the root is its own parent
        }
        (cur, id) = (parent, parent_id);
    }
    Ok(false)
}

/// The longest prefix of `path` that exists (the path itself if it does).
pub(crate) fn existing_ancestor(path: &Path) -> PathBuf {
    let mut cur = path;
    loop {
        if std::fs::symlink_metadata(cur).is_ok() {
            return cur.to_path_buf();
        }
        match cur.parent() {
            Some(p) => cur = p,
            None => return cur.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_dir_is_refused_even_in_this_process() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DirLock::acquire_path(tmp.path()).unwrap();
        match DirLock::acquire_path(tmp.path()) {
            Err(Error::DirLocked { path, holder_pid }) => {
                assert_eq!(path, tmp.path());
                assert_eq!(holder_pid, Some(std::process::id()), "the holder is named");
            }
            other => panic!("expected DirLocked, got {other:?}"),
        }
        drop(first);
        DirLock::acquire_path(tmp.path()).expect("free again once the holder drops");
    }

    #[test]
    fn the_holder_is_the_granted_flock_not_a_waiter() {
        let locks = "1: POSIX  ADVISORY  WRITE 10 08:01:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 08:01:77 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 5151 08:01:77 0 EOF\n";
        assert_eq!(flock_holder(locks, "08:01:77"), Some(4242));
        let waiter_only = "2: -> FLOCK  ADVISORY  WRITE 5151 08:01:77 0 EOF\n";
        assert_eq!(flock_holder(waiter_only, "08:01:77"), None);
        assert_eq!(flock_holder(locks, "08:01:78"), None);
    }

    #[test]
    fn two_spellings_of_one_dir_have_one_identity() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("real/dir")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("alias")).unwrap();
        assert_eq!(
            DirId::of_path(&tmp.path().join("real/dir")).unwrap(),
            DirId::of_path(&tmp.path().join("alias/dir")).unwrap()
        );
        let _held = DirLock::acquire_path(&tmp.path().join("real/dir")).unwrap();
        assert!(matches!(
            DirLock::acquire_path(&tmp.path().join("alias/dir")),
            Err(Error::DirLocked { .. })
        ));
    }

    #[test]
    fn inside_sees_through_a_symlinked_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("kv-1")).unwrap();
        std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(&data, tmp.path().join("alias")).unwrap();
        let data_id = DirId::of_path(&data).unwrap();
        let aliased = open_dir(&tmp.path().join("alias/kv-1"), true).unwrap();
        assert!(inside(&aliased, Path::new("alias/kv-1"), data_id).unwrap());
        let other = open_dir(&tmp.path().join("elsewhere"), true).unwrap();
        assert!(!inside(&other, Path::new("elsewhere"), data_id).unwrap());
    }
}
