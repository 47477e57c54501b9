//! The power-loss model: what a machine that loses power keeps.
//!
//! Killing the process keeps the page cache, so it cannot show a missing
//! fsync. This module can. The component's file-system calls (in `fs.rs`)
//! report each durable-relevant operation here, after the kernel did it:
//! directory entries made (`mkdir`, create, `link`, `rename`), removed
//! (`unlink`, `rmdir`), bytes written, and fsyncs (a begin before the call
//! and an end after it succeeded). A [`Recording`] under a root keeps them
//! in one journal, in the order they happened (the same approach as ALICE's
//! trace-based crash-state exploration: run for real, then compute crash
//! states from the trace).
//!
//! [`Recording::image_at`] computes the state a power loss after the first
//! `k` operations leaves, under this model:
//! - a file's bytes are durable up to its length when an fsync of it began
//!   and then completed; unsynced bytes may be lost (a torn write keeps a
//!   prefix);
//! - a directory's entry operations are durable up to the last one done
//!   before an fsync of that directory began and then completed; later ones
//!   may be lost, but only as a suffix (a journaling file system commits a
//!   directory's operations in order), independently per directory;
//! - a file hard-linked from outside the root (an engine's file) is durable
//!   as it is (the engine made it so before listing it): only its new entry
//!   in the backup dir needs the backup dir's fsync.
//!
//! [`Loss::All`] drops everything unsynced; [`Loss::Random`] keeps a random
//! part of it, as the ordering rules above allow. The operations are
//! recorded after they completed and an fsync's begin before it started,
//! so concurrency can only make the model lose more, never keep something
//! the disk would not.
//!
//! The hooks are empty functions without the `failpoints` feature.

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::Path;

#[cfg(feature = "failpoints")]
pub use model::{Image, ImageNode, Loss, Recording};

/// What an fsync makes durable.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    not(feature = "failpoints"),
    expect(
        dead_code,
        reason = "read by the power-loss recorder, which needs `failpoints`"
    )
)]
pub(crate) enum SyncTarget<'a> {
    /// A directory's entries.
    Dir(&'a Path),
    /// A file's bytes (the file lives in the directory `dir`).
    File { dir: &'a Path, file: &'a File },
}

/// An fsync in progress, as the model saw it begin.
#[must_use = "call done() once the fsync succeeded"]
pub(crate) struct SyncToken(#[cfg(feature = "failpoints")] Option<(std::sync::Arc<model::Recorder>, u64)>);

impl SyncToken {
    /// The fsync succeeded.
    #[inline]
    pub fn done(self) {
        #[cfg(feature = "failpoints")]
        if let Some((recorder, token)) = self.0 {
            recorder.push(model::Entry::SyncEnd { token });
        }
    }
}

/// An fsync of `target` begins.
#[inline]
pub(crate) fn sync_begin(target: SyncTarget<'_>) -> SyncToken {
    #[cfg(feature = "failpoints")]
    return SyncToken(model::sync_begin(target));
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = target;
        SyncToken()
    }
}

/// The directory `path` was created.
#[inline]
pub(crate) fn mkdir(path: &Path) {
    #[cfg(feature = "failpoints")]
    model::record(path, || model::Entry::Mkdir {
        path: path.to_path_buf(),
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = path;
}

/// The (empty) directory `path` was removed.
#[inline]
pub(crate) fn rmdir(path: &Path) {
    #[cfg(feature = "failpoints")]
    model::record(path, || model::Entry::Rmdir {
        path: path.to_path_buf(),
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = path;
}

/// `name` was created in `dir` as the new, empty file `file`.
#[inline]
pub(crate) fn created(dir: &Path, name: &str, file: &File) {
    #[cfg(feature = "failpoints")]
    model::created(dir, name, file);
    #[cfg(not(feature = "failpoints"))]
    let _ = (dir, name, file);
}

/// `file` (in `dir`) now holds `len` bytes written from its start.
#[inline]
pub(crate) fn written(dir: &Path, file: &File, len: u64) {
    #[cfg(feature = "failpoints")]
    model::written(dir, file, len);
    #[cfg(not(feature = "failpoints"))]
    let _ = (dir, file, len);
}

/// `name` was hard-linked into `dir` (open as `dir_fd`) from a file outside.
#[inline]
pub(crate) fn linked(dir: &Path, dir_fd: BorrowedFd<'_>, name: &str) {
    #[cfg(feature = "failpoints")]
    model::linked(dir, dir_fd, name);
    #[cfg(not(feature = "failpoints"))]
    let _ = (dir, dir_fd, name);
}

/// `from` was renamed to `to` within `dir`.
#[inline]
pub(crate) fn renamed(dir: &Path, from: &str, to: &str) {
    #[cfg(feature = "failpoints")]
    model::record(dir, || model::Entry::Rename {
        dir: dir.to_path_buf(),
        from: from.to_owned(),
        to: to.to_owned(),
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = (dir, from, to);
}

/// `name` was removed from `dir`.
#[inline]
pub(crate) fn unlinked(dir: &Path, name: &str) {
    #[cfg(feature = "failpoints")]
    model::record(dir, || model::Entry::Unlink {
        dir: dir.to_path_buf(),
        name: name.to_owned(),
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = (dir, name);
}

#[cfg(feature = "failpoints")]
mod model {
    use std::collections::{BTreeMap, HashMap};
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use parking_lot::Mutex;
    use rustix::fs::{AtFlags, Mode, OFlags, CWD};

    use super::SyncTarget;

    /// One journaled operation. Files are known by the recorder's own
    /// number for their inode.
    #[derive(Clone, Debug)]
    pub(super) enum Entry {
        Mkdir { path: PathBuf },
        Rmdir { path: PathBuf },
        Create { dir: PathBuf, name: String, file: usize },
        Write { file: usize, len: u64 },
        Link { dir: PathBuf, name: String, file: usize },
        Rename { dir: PathBuf, from: String, to: String },
        Unlink { dir: PathBuf, name: String },
        SyncDirBegin { token: u64, dir: PathBuf },
        SyncFileBegin { token: u64, file: usize },
        SyncEnd { token: u64 },
    }

    /// A file the journal knows: a descriptor to read its bytes back, and
    /// whether it came in by a link (its bytes are durable as they are).
    struct Known {
        handle: Arc<File>,
        linked: bool,
    }

    pub(crate) struct Recorder {
        root: PathBuf,
        journal: Mutex<Journal>,
        tokens: AtomicU64,
    }

    #[derive(Default)]
    struct Journal {
        entries: Vec<Entry>,
        files: Vec<Known>,
        by_inode: HashMap<(u64, u64), usize>,
    }

    static ARMED: AtomicBool = AtomicBool::new(false);
    static RECORDERS: Mutex<Vec<Arc<Recorder>>> = Mutex::new(Vec::new());

    fn recorder_for(path: &Path) -> Option<Arc<Recorder>> {
        if !ARMED.load(Ordering::Relaxed) {
            return None;
        }
        RECORDERS
            .lock()
            .iter()
            .find(|r| path.starts_with(&r.root))
            .cloned()
    }

    impl Recorder {
        pub(super) fn push(&self, entry: Entry) {
            self.journal.lock().entries.push(entry);
        }

        /// The journal's number for the inode of `file`, adding it if new.
        fn file_number(journal: &mut Journal, file: &File, linked: bool) -> io::Result<usize> {
            let st = rustix::fs::fstat(file)?;
            let key = (st.st_dev, st.st_ino);
            if let Some(&n) = journal.by_inode.get(&key) {
                return Ok(n);
            }
            let n = journal.files.len();
            // A new open of the inode (a temp file is open write-only),
            // to read its bytes back.
            let handle = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
            journal.files.push(Known {
                handle: Arc::new(handle),
                linked,
            });
            journal.by_inode.insert(key, n);
            Ok(n)
        }
    }

    pub(super) fn record(path: &Path, entry: impl FnOnce() -> Entry) {
        if let Some(recorder) = recorder_for(path) {
            recorder.push(entry());
        }
    }

    pub(super) fn created(dir: &Path, name: &str, file: &File) {
        let Some(recorder) = recorder_for(dir) else { return };
        let mut journal = recorder.journal.lock();
        let file = Recorder::file_number(&mut journal, file, false).expect("power-loss recorder: fstat");
        journal.entries.push(Entry::Create {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            file,
        });
    }

    pub(super) fn written(dir: &Path, file: &File, len: u64) {
        let Some(recorder) = recorder_for(dir) else { return };
        let mut journal = recorder.journal.lock();
        let file = Recorder::file_number(&mut journal, file, false).expect("power-loss recorder: fstat");
        journal.entries.push(Entry::Write { file, len });
    }

    pub(super) fn linked(dir: &Path, dir_fd: BorrowedFd<'_>, name: &str) {
        let Some(recorder) = recorder_for(dir) else { return };
        let fd = rustix::fs::openat(
            dir_fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("power-loss recorder: open a linked file");
        let file = File::from(fd);
        let mut journal = recorder.journal.lock();
        let file = Recorder::file_number(&mut journal, &file, true).expect("power-loss recorder: fstat");
        journal.entries.push(Entry::Link {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            file,
        });
    }

    pub(super) fn sync_begin(target: SyncTarget<'_>) -> Option<(Arc<Recorder>, u64)> {
        let dir = match target {
            SyncTarget::Dir(dir) | SyncTarget::File { dir, .. } => dir,
        };
        let recorder = recorder_for(dir)?;
        let token = recorder.tokens.fetch_add(1, Ordering::Relaxed);
        let mut journal = recorder.journal.lock();
        let entry = match target {
            SyncTarget::Dir(dir) => Entry::SyncDirBegin {
                token,
                dir: dir.to_path_buf(),
            },
            SyncTarget::File { file, .. } => Entry::SyncFileBegin {
                token,
                file: Recorder::file_number(&mut journal, file, false).expect("power-loss recorder: fstat"),
            },
        };
        journal.entries.push(entry);
        drop(journal);
        Some((recorder, token))
    }

    /// Journals every durable-relevant operation the component makes under
    /// a root, until dropped. Recordings of disjoint roots run side by side.
    pub struct Recording {
        recorder: Arc<Recorder>,
    }

    impl Recording {
        /// Starts journaling what happens under `root` (an existing dir,
        /// taken as durable as it is; give its path as the component will
        /// spell it).
        pub fn start(root: impl Into<PathBuf>) -> Recording {
            let recorder = Arc::new(Recorder {
                root: root.into(),
                journal: Mutex::new(Journal::default()),
                tokens: AtomicU64::new(0),
            });
            let mut recorders = RECORDERS.lock();
            recorders.push(Arc::clone(&recorder));
            ARMED.store(true, Ordering::Release);
            Recording { recorder }
        }

        /// How many operations were journaled so far: a crash "at `k`" is
        /// a power loss after the first `k`. Something observed after this
        /// call (a callback told of files, a metadata write returned)
        /// happened after those `k`.
        pub fn position(&self) -> usize {
            self.recorder.journal.lock().entries.len()
        }

        /// How many fsyncs of files and of directories began so far.
        pub fn fsyncs(&self) -> (usize, usize) {
            let journal = self.recorder.journal.lock();
            let files = journal
                .entries
                .iter()
                .filter(|e| matches!(e, Entry::SyncFileBegin { .. }))
                .count();
            let dirs = journal
                .entries
                .iter()
                .filter(|e| matches!(e, Entry::SyncDirBegin { .. }))
                .count();
            (files, dirs)
        }

        /// The root.
        pub fn root(&self) -> &Path {
            &self.recorder.root
        }

        /// A short text of the operation at `k`, for messages.
        pub fn describe(&self, k: usize) -> String {
            match self.recorder.journal.lock().entries.get(k) {
                Some(e) => format!("{e:?}"),
                None => "the end".to_owned(),
            }
        }

        /// The state under the root after a power loss right after the
        /// first `at` operations, with `loss` deciding what unsynced state
        /// survives.
        pub fn image_at(&self, at: usize, loss: Loss) -> Image {
            let journal = self.recorder.journal.lock();
            let mut replay = Replay::default();
            for entry in &journal.entries[..at.min(journal.entries.len())] {
                replay.apply(entry);
            }
            let mut pick = Picker::new(loss);
            let mut image = Image::default();
            replay.build(
                &self.recorder.root,
                PathBuf::new(),
                &journal.files,
                &mut pick,
                &mut image,
                0,
            );
            image
        }
    }

    impl Drop for Recording {
        fn drop(&mut self) {
            let mut recorders = RECORDERS.lock();
            recorders.retain(|r| !Arc::ptr_eq(r, &self.recorder));
            ARMED.store(!recorders.is_empty(), Ordering::Release);
        }
    }

    /// What unsynced state a power loss keeps.
    #[derive(Clone, Copy, Debug)]
    pub enum Loss {
        /// Nothing unsynced survives.
        All,
        /// Each directory keeps a random prefix of its unsynced entry
        /// operations and each file a random prefix of its unsynced bytes,
        /// drawn from this seed.
        Random(u64),
    }

    struct Picker {
        state: Option<u64>,
    }

    impl Picker {
        fn new(loss: Loss) -> Self {
            Picker {
                state: match loss {
                    Loss::All => None,
                    Loss::Random(seed) => Some(seed | 1),
                },
            }
        }

        /// A number in `lo..=hi`: `lo` when everything unsynced is lost.
        fn pick(&mut self, lo: u64, hi: u64) -> u64 {
            let Some(x) = self.state.as_mut() else { return lo };
            if hi <= lo {
                return lo;
            }
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            lo + *x % (hi - lo + 1)
        }
    }

    #[derive(Clone, Debug)]
    enum Node {
        Dir(PathBuf),
        File(usize),
    }

    #[derive(Clone, Debug)]
    enum DirOp {
        Add(String, Node),
        Remove(String),
        Rename(String, String),
    }

    #[derive(Default)]
    struct DirLog {
        ops: Vec<DirOp>,
        durable: usize,
    }

    #[derive(Default)]
    struct FileLog {
        len: u64,
        durable: u64,
    }

    enum Snap {
        Dir(PathBuf, usize),
        File(usize, u64),
    }

    #[derive(Default)]
    struct Replay {
        dirs: HashMap<PathBuf, DirLog>,
        files: HashMap<usize, FileLog>,
        syncs: HashMap<u64, Snap>,
    }

    impl Replay {
        fn op(&mut self, dir: &Path, op: DirOp) {
            self.dirs.entry(dir.to_path_buf()).or_default().ops.push(op);
        }

        fn apply(&mut self, entry: &Entry) {
            match entry {
                Entry::Mkdir { path } => {
                    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
                        let name = name.to_string_lossy().into_owned();
                        self.op(parent, DirOp::Add(name, Node::Dir(path.clone())));
                    }
                    self.dirs.insert(path.clone(), DirLog::default());
                }
                Entry::Rmdir { path } => {
                    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
                        self.op(parent, DirOp::Remove(name.to_string_lossy().into_owned()));
                    }
                }
                Entry::Create { dir, name, file } => {
                    self.op(dir, DirOp::Add(name.clone(), Node::File(*file)));
                    self.files.insert(*file, FileLog::default());
                }
                Entry::Write { file, len } => self.files.entry(*file).or_default().len = *len,
                Entry::Link { dir, name, file } => self.op(dir, DirOp::Add(name.clone(), Node::File(*file))),
                Entry::Rename { dir, from, to } => self.op(dir, DirOp::Rename(from.clone(), to.clone())),
                Entry::Unlink { dir, name } => self.op(dir, DirOp::Remove(name.clone())),
                Entry::SyncDirBegin { token, dir } => {
                    let done = self.dirs.get(dir).map_or(0, |d| d.ops.len());
                    self.syncs.insert(*token, Snap::Dir(dir.clone(), done));
                }
                Entry::SyncFileBegin { token, file } => {
                    let len = self.files.get(file).map_or(0, |f| f.len);
                    self.syncs.insert(*token, Snap::File(*file, len));
                }
                Entry::SyncEnd { token } => match self.syncs.remove(token) {
                    Some(Snap::Dir(dir, done)) => {
                        let d = self.dirs.entry(dir).or_default();
                        d.durable = d.durable.max(done);
                    }
                    Some(Snap::File(file, len)) => {
                        let f = self.files.entry(file).or_default();
                        f.durable = f.durable.max(len);
                    }
                    None => {}
                },
            }
        }

        /// Adds what survives of `dir` (at `rel` below the root) to `image`.
        fn build(
            &self,
            dir: &Path,
            rel: PathBuf,
            files: &[Known],
            pick: &mut Picker,
            image: &mut Image,
            depth: usize,
        ) {
            let Some(log) = self.dirs.get(dir) else { return };
            if depth > 64 {
                return;
            }
            let kept = pick.pick(log.durable as u64, log.ops.len() as u64) as usize;
            let mut entries: BTreeMap<String, Node> = BTreeMap::new();
            for op in &log.ops[..kept] {
                match op {
                    DirOp::Add(name, node) => {
                        entries.insert(name.clone(), node.clone());
                    }
                    DirOp::Remove(name) => {
                        entries.remove(name);
                    }
                    DirOp::Rename(from, to) => {
                        if let Some(node) = entries.remove(from) {
                            entries.insert(to.clone(), node);
                        }
                    }
                }
            }
            for (name, node) in entries {
                let rel = rel.join(&name);
                match node {
                    Node::Dir(path) => {
                        image.nodes.insert(rel.clone(), ImageNode::Dir);
                        self.build(&path, rel, files, pick, image, depth + 1);
                    }
                    Node::File(n) => {
                        let known = &files[n];
                        let node = if known.linked {
                            ImageNode::Linked {
                                file: n,
                                handle: Arc::clone(&known.handle),
                            }
                        } else {
                            let log = self.files.get(&n);
                            let (durable, len) = log.map_or((0, 0), |f| (f.durable, f.len));
                            ImageNode::File {
                                file: n,
                                handle: Arc::clone(&known.handle),
                                len: pick.pick(durable.min(len), len),
                            }
                        };
                        image.nodes.insert(rel, node);
                    }
                }
            }
        }
    }

    /// What a power loss left under the root: paths relative to it.
    #[derive(Default, Debug)]
    pub struct Image {
        /// Every surviving entry.
        pub nodes: BTreeMap<PathBuf, ImageNode>,
    }

    /// One surviving entry.
    #[derive(Clone, Debug)]
    pub enum ImageNode {
        /// A directory.
        Dir,
        /// A file the component wrote, with the bytes that survived (a
        /// prefix of what was written).
        File {
            /// The journal's number of the file.
            file: usize,
            /// Reads its bytes back.
            handle: Arc<File>,
            /// How many of them survived.
            len: u64,
        },
        /// A file linked in from outside the root, whole.
        Linked {
            /// The journal's number of the file.
            file: usize,
            /// The linked file.
            handle: Arc<File>,
        },
    }

    impl Image {
        /// A key that two images have in common exactly when they hold
        /// the same entries with the same contents.
        pub fn signature(&self) -> Vec<(PathBuf, usize, u64)> {
            self.nodes
                .iter()
                .map(|(path, node)| match node {
                    ImageNode::Dir => (path.clone(), usize::MAX, 0),
                    ImageNode::File { file, len, .. } => (path.clone(), *file, *len),
                    ImageNode::Linked { file, .. } => (path.clone(), *file, u64::MAX),
                })
                .collect()
        }

        /// Writes the image below `into` (an empty dir): dirs made, files
        /// written with their surviving bytes, linked files linked again
        /// (so they keep their inode, as after a real power loss).
        pub fn materialize(&self, into: &Path) -> io::Result<()> {
            for (rel, node) in &self.nodes {
                let path = into.join(rel);
                match node {
                    ImageNode::Dir => std::fs::create_dir(&path)?,
                    ImageNode::File { handle, len, .. } => {
                        let mut bytes = vec![0u8; *len as usize];
                        handle.read_exact_at(&mut bytes, 0)?;
                        std::fs::write(&path, bytes)?;
                    }
                    ImageNode::Linked { handle, .. } => {
                        let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
                        rustix::fs::linkat(CWD, proc_path.as_str(), CWD, &path, AtFlags::SYMLINK_FOLLOW)?;
                    }
                }
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Journals a create, write, fsync, rename and dir fsync by hand, the
        /// way the metadata write does, and checks the model at each step.
        #[test]
        fn a_rename_survives_only_after_the_dir_fsync() {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().to_path_buf();
            let rec = Recording::start(&root);
            let file = File::create(root.join("t")).unwrap();
            std::fs::write(root.join("t"), b"hello").unwrap();
            super::super::created(&root, "t", &file);
            super::super::written(&root, &file, 5);
            let synced_at = rec.position();
            super::super::sync_begin(SyncTarget::File {
                dir: &root,
                file: &file,
            })
            .done();
            super::super::renamed(&root, "t", "final");
            let renamed_at = rec.position();
            super::super::sync_begin(SyncTarget::Dir(&root)).done();
            let end = rec.position();

            let names = |k: usize, loss: Loss| -> Vec<(String, Option<u64>)> {
                rec.image_at(k, loss)
                    .nodes
                    .iter()
                    .map(|(p, n)| {
                        let len = match n {
                            ImageNode::File { len, .. } => Some(*len),
                            _ => None,
                        };
                        (p.display().to_string(), len)
                    })
                    .collect()
            };
            assert!(
                names(end - 1, Loss::All).is_empty(),
                "nothing durable before the dir fsync ends"
            );
            assert_eq!(names(end, Loss::All), vec![("final".to_owned(), Some(5))]);
            // Before the file fsync, a surviving entry may have lost its bytes.
            let early: Vec<_> = (0..64).map(|s| names(synced_at, Loss::Random(s))).collect();
            assert!(early.iter().any(|n| n == &vec![("t".to_owned(), Some(0))]));
            assert!(early.iter().all(|n| n.len() <= 1));
            // After the rename but before the dir fsync: either name, never both.
            let mid: Vec<_> = (0..64).map(|s| names(renamed_at, Loss::Random(s))).collect();
            assert!(mid.iter().any(|n| n == &vec![("final".to_owned(), Some(5))]));
            assert!(mid.iter().any(|n| n == &vec![("t".to_owned(), Some(5))]));
            assert!(mid.iter().any(|n| n.is_empty()));
        }
    }
}
