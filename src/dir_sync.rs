//! Group commit of one directory's fsyncs: many backup dirs created in the
//! same parent (1024 vBuckets becoming active under one backup root) need
//! the parent fsynced after their `mkdir`, and one fsync that starts after
//! all of them covers them all.
//!
//! A caller takes a [`ticket`](DirSyncGroup::ticket) once its change to the
//! directory is done, and later [`sync`](DirSyncGroup::sync)s with it: that
//! returns once an fsync that *started after the ticket was taken* has
//! completed. If none is running, the caller runs it; if one is running, it
//! may have started before the change, so the caller waits for it and then
//! runs or joins the next one. Callers that arrive while an fsync runs share
//! the next one.
//!
//! A failed fsync fails every caller waiting for it and every later one: the
//! kernel may have dropped the dirty entries, and a later fsync that succeeds
//! proves nothing ("fsyncgate"). The owner replaces a failed group.
//!
//! Also the crate's two path-based durable steps, for dirs it does not hold
//! open (engine data dirs, restore targets): [`sync_dir`] and
//! [`write_file_durably`]. A backup dir's own writes go through its
//! descriptor instead (`fs::BackupDir`), with its poisoning.

use std::path::{Path, PathBuf};

use parking_lot::{Condvar, Mutex};

use std::io;
use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};
use crate::faults::power::{self, SyncTarget};
use crate::faults::{self, FsOp, FsyncSite};

#[derive(Debug, Default)]
struct State {
    /// Number of the last fsync started (1, 2, ...).
    started: u64,
    /// Number of the last fsync completed successfully.
    done: u64,
    /// Whether an fsync is running now.
    running: bool,
    /// Why an fsync failed, once one did.
    failed: Option<String>,
}

/// The fsyncs of one directory, grouped.
#[derive(Debug)]
pub(crate) struct DirSyncGroup {
    path: PathBuf,
    state: Mutex<State>,
    finished: Condvar,
}

impl DirSyncGroup {
    /// A group for the directory at `path`.
    pub fn new(path: &Path) -> Self {
        DirSyncGroup {
            path: path.to_path_buf(),
            state: Mutex::new(State::default()),
            finished: Condvar::new(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an fsync of this group failed (it then fails for good).
    pub fn failed(&self) -> bool {
        self.state.lock().failed.is_some()
    }

    /// Call once a change to the directory is done: the returned ticket is
    /// the number of the first fsync that is sure to include it.
    pub fn ticket(&self) -> u64 {
        self.state.lock().started + 1
    }

    /// Returns once an fsync numbered `ticket` or later has completed,
    /// running it on this thread if no other thread is.
    pub fn sync(&self, ticket: u64) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            if let Some(reason) = &st.failed {
                return Err(self.error(reason));
            }
            if st.done >= ticket {
                return Ok(());
            }
            if st.running {
                self.finished.wait(&mut st);
                continue;
            }
            st.running = true;
            st.started += 1;
            let number = st.started;
            drop(st);
            let synced = sync_dir(&self.path);
            st = self.state.lock();
            st.running = false;
            match synced {
                Ok(()) => st.done = number,
                Err(e) => {
                    tracing::error!(dir = %self.path.display(), error = %e, "fsync of the parent of backup dirs failed");
                    st.failed = Some(e.to_string());
                }
            }
            self.finished.notify_all();
        }
    }

    fn error(&self, reason: &str) -> Error {
        Error::io(
            "fsync parent dir",
            &self.path,
            std::io::Error::other(format!("an fsync of it failed: {reason}")),
        )
    }
}

/// fsyncs the directory at `path`, the parent of a directory the component
/// created.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    faults::check(path, FsOp::SyncDir).map_err(|e| Error::io("fsync dir", path, e))?;
    if faults::fsync_omitted(path, FsyncSite::NewDir) {
        return Ok(());
    }
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open dir", path, io::Error::from(e)))?;
    let token = power::sync_begin(SyncTarget::Dir(path));
    rustix::fs::fsync(fd.as_fd()).map_err(|e| Error::io("fsync dir", path, io::Error::from(e)))?;
    token.done();
    Ok(())
}

/// Whether [`write_file_durably`] may replace a file already at `dest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// No: a file there is an error (`AlreadyExists`), nothing is
    /// overwritten, and the temp file must not exist either.
    Refuse,
    /// Yes, atomically (a stale temp file of an earlier crash is reused).
    #[cfg_attr(
        not(feature = "lsm-tree"),
        allow(dead_code, reason = "the lsm-tree adapter's facts")
    )]
    Replace,
}

/// Writes the file `dest` durably: `tmp` (the writer's own name in the same
/// dir) is filled by `fill` through a 256 KiB buffer and fsynced, renamed to
/// `dest` (never over an existing file with [`Existing::Refuse`]), and the
/// dir is fsynced. Only when this returns Ok is the file durable; on any
/// failure `tmp` is removed and `dest` is as it was.
pub(crate) fn write_file_durably<T>(
    tmp: &Path,
    dest: &Path,
    existing: Existing,
    fill: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> io::Result<T>,
) -> Result<T> {
    let result = write_then_rename(tmp, dest, existing, fill);
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

fn write_then_rename<T>(
    tmp: &Path,
    dest: &Path,
    existing: Existing,
    fill: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> io::Result<T>,
) -> Result<T> {
    let file = match existing {
        Existing::Refuse => std::fs::File::create_new(tmp),
        Existing::Replace => std::fs::File::create(tmp),
    }
    .map_err(|e| Error::io("create", tmp, e))?;
    let mut w = io::BufWriter::with_capacity(256 * 1024, file);
    let out = fill(&mut w).map_err(|e| Error::io("write", tmp, e))?;
    let file = w
        .into_inner()
        .map_err(|e| Error::io("write", tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("fsync", tmp, e))?;
    drop(file);
    let flags = match existing {
        Existing::Refuse => rustix::fs::RenameFlags::NOREPLACE,
        Existing::Replace => rustix::fs::RenameFlags::empty(),
    };
    rustix::fs::renameat_with(rustix::fs::CWD, tmp, rustix::fs::CWD, dest, flags).map_err(|e| match e {
        rustix::io::Errno::EXIST => Error::io(
            "rename",
            dest,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the file already exists; nothing was overwritten",
            ),
        ),
        e => Error::io("rename", tmp, e.into()),
    })?;
    if let Some(dir) = dest.parent() {
        sync_dir(dir)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::faults::{self, FsOp};
    use std::io::Write;
    use std::sync::Arc;

    #[test]
    fn a_durable_write_never_overwrites_unless_asked_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let (temp, dest) = (tmp.path().join(".t"), tmp.path().join("f"));
        write_file_durably(&temp, &dest, Existing::Refuse, |w| w.write_all(b"one")).unwrap();
        let refused = write_file_durably(&temp, &dest, Existing::Refuse, |w| w.write_all(b"two"));
        assert!(
            matches!(refused, Err(Error::Io { ref source, .. }) if source.kind() == io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"one", "nothing overwritten");
        assert!(!temp.exists(), "the temp file is removed on failure");
        std::fs::write(&temp, b"stale").unwrap();
        write_file_durably(&temp, &dest, Existing::Replace, |w| w.write_all(b"three")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"three");
        assert!(!temp.exists());
        let failed = write_file_durably(&temp, &dest, Existing::Replace, |_| {
            Err::<(), _>(io::Error::other("full"))
        });
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            b"three",
            "a failed write leaves the old file"
        );
        assert!(!temp.exists());
    }

    #[test]
    fn a_ticket_is_served_by_an_fsync_started_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let g = DirSyncGroup::new(tmp.path());
        let t1 = g.ticket();
        assert_eq!(t1, 1);
        g.sync(t1).unwrap();
        g.sync(t1).unwrap();
        assert_eq!(g.state.lock().started, 1, "served already: no second fsync");
        let t2 = g.ticket();
        assert_eq!(t2, 2, "a change after fsync 1 needs fsync 2");
        g.sync(t2).unwrap();
        assert_eq!(g.state.lock().done, 2);
    }

    #[test]
    fn concurrent_callers_share_fsyncs() {
        let tmp = tempfile::tempdir().unwrap();
        let g = Arc::new(DirSyncGroup::new(tmp.path()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    let t = g.ticket();
                    g.sync(t).unwrap();
                    assert!(g.state.lock().done >= t);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = g.state.lock();
        assert!(st.started <= 16 && st.done == st.started && !st.running);
    }

    #[test]
    fn a_failed_fsync_fails_every_later_caller() {
        let tmp = tempfile::tempdir().unwrap();
        let g = DirSyncGroup::new(tmp.path());
        {
            let _eio = faults::inject(tmp.path(), FsOp::SyncDir, 5);
            let err = g.sync(g.ticket()).unwrap_err();
            assert!(err.to_string().contains("fsync"), "{err}");
        }
        assert!(g.failed());
        let err = g.sync(g.ticket()).unwrap_err();
        assert!(err.to_string().contains("an fsync of it failed"), "{err}");
    }
}
