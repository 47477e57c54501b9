//! Pins: what keeps a prune from deleting the files a restore, verify or
//! inspect is reading.
//!
//! A store's backup dir holds one empty file, [`PIN_NAME`], created by the
//! first reader or pruner that needs it and never removed. A reader holds
//! a shared `flock` on it from before it lists the dir until it has read
//! every file it planned ([`ReadPin`]); a prune holds it exclusively, not
//! waiting, from before it lists the dir until its last unlink
//! ([`PrunePin`]), and passes over a store a reader pins. A reader that
//! comes during a prune waits for it, then lists what the prune left. The
//! owner's lock (`dir_lock`) is a `flock` on the dir itself, so a reader
//! pins a dir the running component owns without conflicting with it.
//! `flock` locks belong to the open file description: a pin conflicts in
//! one process as across processes, and the kernel drops it with its
//! holder.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::dir_lock::open_dir;
use crate::error::{Error, Result};

/// The pin file's name in a store's backup dir. It starts with `.`, so the
/// engine's file names never clash with it, and uploads pass over it; the
/// component's temp-file cleanup removes only its own temp names.
pub(crate) const PIN_NAME: &str = ".cbk-pin";

fn open_pin(dir: impl AsFd, create: bool) -> std::result::Result<OwnedFd, Errno> {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if create {
        flags |= OFlags::CREATE;
    }
    // Readable by all (it is empty): whoever made it first, every reader
    // and pruner can open it to lock it.
    rustix::fs::openat(dir, PIN_NAME, flags, Mode::from_raw_mode(0o644))
}

/// A reader's shared pin on one store's backup dir, held until dropped.
#[derive(Debug)]
pub struct ReadPin {
    /// `None` where the dir is read-only to this reader and has no pin
    /// file: nobody who could prune it made one.
    _fd: Option<OwnedFd>,
}

impl ReadPin {
    /// Pins the backup dir at `dir`, waiting while a prune of it runs.
    pub fn take(dir: &Path) -> Result<ReadPin> {
        let dir_fd = open_dir(dir, true)?;
        let fd = match open_pin(&dir_fd, true) {
            Ok(fd) => fd,
            // A read-only dir (a mounted snapshot, another user's backup):
            // pin the file if someone who may prune made it.
            Err(Errno::ACCESS | Errno::ROFS | Errno::PERM) => match open_pin(&dir_fd, false) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(ReadPin { _fd: None }),
                Err(e) => return Err(Error::io("open pin file in", dir, e.into())),
            },
            Err(e) => return Err(Error::io("create pin file in", dir, e.into())),
        };
        rustix::fs::flock(&fd, FlockOperation::LockShared)
            .map_err(|e| Error::io("pin (flock shared)", dir.join(PIN_NAME), e.into()))?;
        Ok(ReadPin { _fd: Some(fd) })
    }
}

/// A prune's exclusive pin on one store's backup dir, held until dropped.
#[derive(Debug)]
pub(crate) struct PrunePin {
    _fd: OwnedFd,
}

impl PrunePin {
    /// Pins the open backup dir `dir` (named `path` in errors) for a prune,
    /// without waiting: `None` while a reader pins it.
    pub fn try_take(dir: impl AsFd, path: &Path) -> Result<Option<PrunePin>> {
        let fd = open_pin(dir, true).map_err(|e| Error::io("create pin file in", path, e.into()))?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(PrunePin { _fd: fd })),
            Err(Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::io("pin (flock exclusive)", path.join(PIN_NAME), e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_a_prune_out_and_a_prune_makes_a_reader_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path(), true).unwrap();
        let reader = ReadPin::take(tmp.path()).unwrap();
        let second_reader = ReadPin::take(tmp.path()).unwrap();
        assert!(
            PrunePin::try_take(&dir, tmp.path()).unwrap().is_none(),
            "readers share, a prune waits its turn"
        );
        drop((reader, second_reader));
        let prune = PrunePin::try_take(&dir, tmp.path())
            .unwrap()
            .expect("no reader left");
        assert!(
            PrunePin::try_take(&dir, tmp.path()).unwrap().is_none(),
            "one prune at a time"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let path = tmp.path().to_path_buf();
        let waiting = std::thread::spawn(move || {
            let pin = ReadPin::take(&path).unwrap();
            tx.send(()).unwrap();
            pin
        });
        // The reader blocks in flock until the prune's pin goes (an event,
        // not a sleep: it cannot have sent while the prune holds the pin).
        assert!(rx.try_recv().is_err());
        drop(prune);
        rx.recv().unwrap();
        drop(waiting.join().unwrap());
    }
}
