//! The pure round logic of one store: what is linked, what is new, what the
//! next callback must be told. No actix, no clock, no file system.
//!
//! Two halves, so that each lives where it is used:
//! - [`LinkSet`] (which engine files are in the backup dir) travels with the
//!   round to the linker pool and back. A round that fails rolls its own
//!   additions back, so a failed round leaves it as it was.
//! - [`Unacked`] (linked files no successful round has reported) stays with
//!   the actor, and with the supervisor between two starts of the store, so
//!   delivery is at least once even across stop and start.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::backup_file::BackupFile;
use crate::dir_lock::DirId;
use crate::engine::{Holds, IndexFile};

/// One engine file known to be in the backup dir, in as few bytes as the
/// set needs (80, plus its name): the fields that tell it from another file
/// (those `IndexFile` compares), its dir as an index into the set's few
/// dirs, and its backup-dir name only where that is not its own.
#[derive(Debug)]
struct Linked {
    /// The file's name (its path's last component).
    name: Box<str>,
    /// Its name in the backup dir where that differs (`name~k`).
    renamed: Option<Box<str>>,
    len: u64,
    low_seqno: u64,
    high_seqno: u64,
    file_id: Option<u64>,
    /// Index of its dir in [`LinkSet::dirs`].
    dir: u32,
    holds: Option<Holds>,
}

impl Linked {
    fn backup_name(&self) -> &str {
        self.renamed.as_deref().unwrap_or(&self.name)
    }

    fn entry(&self) -> BackupFile {
        BackupFile {
            name: self.backup_name().to_owned(),
            len: self.len,
            low_seqno: self.low_seqno,
            high_seqno: self.high_seqno,
        }
    }
}

/// Whether `l` (with its set's `dirs`) is `file`, as `IndexFile`'s
/// equality has it.
fn is_file(l: &Linked, dirs: &[PathBuf], file: &IndexFile) -> bool {
    *l.name == *file.name()
        && l.len == file.len()
        && l.low_seqno == file.low_seqno()
        && l.high_seqno == file.high_seqno()
        && l.file_id == file.file_id()
        && l.holds == file.holds()
        && dirs[l.dir as usize] == dir_of(file)
}

fn dir_of(file: &IndexFile) -> &Path {
    file.path().parent().unwrap_or(Path::new(""))
}

/// Engine files known to be in the backup dir, so they are not linked again.
#[derive(Debug, Default)]
pub(crate) struct LinkSet {
    linked: HashTable<Linked>,
    /// The dirs of the files in `linked` (an engine keeps a store's files
    /// in one dir, or a few).
    dirs: Vec<PathBuf>,
    hasher: std::hash::RandomState,
    /// The snapshot generation whose every file is in `linked` (and nothing
    /// else is), if the engine gives generations.
    up_to_date: Option<u64>,
    /// Whether a round manifest of this start listed the whole snapshot:
    /// until then a round's manifest is `full`, afterwards a delta.
    manifested: bool,
}

impl LinkSet {
    /// The hash of what tells one engine file from another (not its dir:
    /// a store's files share one); `hash_linked`
    /// hashes the same fields of an entry.
    fn hash_of(&self, file: &IndexFile) -> u64 {
        let key = (
            file.name(),
            file.len(),
            file.low_seqno(),
            file.high_seqno(),
            file.file_id(),
        );
        self.hasher.hash_one(key)
    }

    fn hash_linked(hasher: &std::hash::RandomState, l: &Linked) -> u64 {
        hasher.hash_one((&*l.name, l.len, l.low_seqno, l.high_seqno, l.file_id))
    }

    fn find(&self, file: &IndexFile) -> Option<&Linked> {
        self.linked
            .find(self.hash_of(file), |l| is_file(l, &self.dirs, file))
    }

    /// Whether every file of a snapshot with `generation` is known linked,
    /// without looking at its list.
    pub fn is_up_to_date(&self, generation: Option<u64>) -> bool {
        generation.is_some() && generation == self.up_to_date
    }

    /// The generation every file of which is known linked, if any.
    pub fn generation(&self) -> Option<u64> {
        self.up_to_date
    }

    /// Records that every file of the snapshot with `generation` is linked
    /// and the set holds nothing else (after [`forget`](Self::forget)).
    pub fn mark_up_to_date(&mut self, generation: Option<u64>) {
        self.up_to_date = generation;
    }

    /// The files of a snapshot that are not linked yet, in snapshot order.
    pub fn to_link<'a>(&self, snapshot: &'a [IndexFile]) -> Vec<&'a IndexFile> {
        snapshot.iter().filter(|f| self.find(f).is_none()).collect()
    }

    /// The entry of `file`, if it is known linked.
    pub fn entry(&self, file: &IndexFile) -> Option<BackupFile> {
        self.find(file).map(Linked::entry)
    }

    /// Records that `file` is in the backup dir as `entry`.
    pub fn record(&mut self, file: &IndexFile, entry: BackupFile) {
        let hash = self.hash_of(file);
        let dir = dir_of(file);
        let dir = match self.dirs.iter().position(|d| d == dir) {
            Some(i) => i,
            None => {
                self.dirs.push(dir.to_path_buf());
                self.dirs.len() - 1
            }
        };
        let linked = Linked {
            name: file.name().into(),
            renamed: (entry.name != file.name()).then(|| entry.name.into_boxed_str()),
            len: file.len(),
            low_seqno: file.low_seqno(),
            high_seqno: file.high_seqno(),
            file_id: file.file_id(),
            dir: u32::try_from(dir).expect("fewer than 2^32 dirs"),
            holds: file.holds(),
        };
        let (linked_set, dirs, hasher) = (&mut self.linked, &self.dirs, &self.hasher);
        let is = |l: &Linked| is_file(l, dirs, file);
        match linked_set.entry(hash, is, |l| Self::hash_linked(hasher, l)) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = linked,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(linked);
            }
        }
    }

    /// Undoes [`record`](Self::record) for files of a round that failed:
    /// the next round places them again (idempotently) and reports them.
    pub fn roll_back<'a>(&mut self, files: impl IntoIterator<Item = &'a IndexFile>) {
        self.up_to_date = None;
        // A manifest of the failed round may be durable and list what is
        // rolled back here: the next round lists the whole snapshot again,
        // so no delta is ever taken against a set the manifests disagree on.
        self.manifested = false;
        for f in files {
            let hash = self.hash_of(f);
            let (linked, dirs) = (&mut self.linked, &self.dirs);
            if let Ok(e) = linked.find_entry(hash, |l| is_file(l, dirs, f)) {
                e.remove();
            }
        }
    }

    /// Whether this start's manifests have listed the whole snapshot yet.
    pub fn manifested(&self) -> bool {
        self.manifested
    }

    /// Records that a manifest listing the whole snapshot was written.
    pub fn mark_manifested(&mut self) {
        self.manifested = true;
    }

    /// The backup-dir names of linked files the snapshot no longer lists,
    /// in name order.
    pub fn absent_names(&self, snapshot: &[IndexFile]) -> Vec<String> {
        let live: HashSet<&str> = snapshot
            .iter()
            .filter_map(|f| self.find(f))
            .map(Linked::backup_name)
            .collect();
        let mut gone: Vec<String> = self
            .linked
            .iter()
            .map(Linked::backup_name)
            .filter(|name| !live.contains(name))
            .map(str::to_owned)
            .collect();
        gone.sort();
        gone
    }

    /// Forgets the files named `gone` (what [`absent_names`](Self::absent_names)
    /// gave: compacted away, they cannot come back), so the set stays as
    /// large as the store.
    pub fn forget(&mut self, gone: &[String]) {
        if gone.is_empty() {
            return;
        }
        let gone: HashSet<&str> = gone.iter().map(String::as_str).collect();
        self.linked.retain(|l| !gone.contains(l.backup_name()));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.linked.len()
    }
}

/// What a round reports: the unacknowledged files, the list itself shared
/// between the store and its callback (never copied per round).
pub(crate) type Report = Arc<Vec<BackupFile>>;

/// Linked files that no successful round has reported yet, in link order,
/// and the backup dir they are in.
#[derive(Debug, Default)]
pub(crate) struct Unacked {
    /// Shared with the round that reports them (the callback reads the
    /// same list): a round's report is never a copy.
    files: Report,
    /// The names in `files`, once files of more than one round are (empty
    /// while they are one round's).
    names: HashSet<String>,
    /// The dir the files are in (by identity, however it was spelled).
    dir: Option<DirId>,
}

/// Whether no two of `files` have one name.
fn distinct_names(files: &[BackupFile]) -> bool {
    let mut seen = HashSet::with_capacity(files.len());
    files.iter().all(|f| seen.insert(f.name.as_str()))
}

impl Unacked {
    /// A start of the store opened `dir`: files placed in another dir (an
    /// earlier start into another backup dir) are not in it, so they are
    /// not reported there. Returns how many were dropped.
    pub fn keep_only_in(&mut self, dir: DirId) -> usize {
        if self.dir.is_some_and(|d| d != dir) {
            let dropped = self.files.len();
            *self = Unacked::default();
            self.dir = Some(dir);
            return dropped;
        }
        self.dir = Some(dir);
        0
    }

    /// Adds the files a round linked (and made durable) into `dir`.
    pub fn add(&mut self, linked: Vec<BackupFile>, dir: DirId) {
        debug_assert!(
            self.dir.is_none_or(|d| d == dir),
            "keep_only_in runs when a dir opens"
        );
        self.keep_only_in(dir);
        if self.files.is_empty() && distinct_names(&linked) {
            // No set of names is kept until a second round's files join
            // these (after a failed round).
            self.files = Arc::new(linked);
            return;
        }
        if self.names.is_empty() {
            self.names = self.files.iter().map(|f| f.name.clone()).collect();
        }
        // Copies the list only if a report of it is still out (its round's
        // callback has not returned), which a round's order rules out.
        let files = Arc::make_mut(&mut self.files);
        for f in linked {
            if self.names.insert(f.name.clone()) {
                files.push(f);
            }
        }
    }

    /// What the round reports: every linked, unacknowledged file (the list
    /// itself, shared).
    pub fn report(&self) -> Report {
        Arc::clone(&self.files)
    }

    /// A round that reported `reported` succeeded.
    pub fn acknowledge(&mut self, reported: &Report) {
        if Arc::ptr_eq(reported, &self.files) {
            // Nothing was added since the report (rounds never overlap).
            *self = Unacked {
                dir: self.dir,
                ..Unacked::default()
            };
            return;
        }
        if reported.is_empty() {
            return;
        }
        let done: HashSet<&str> = reported.iter().map(|f| f.name.as_str()).collect();
        Arc::make_mut(&mut self.files).retain(|f| !done.contains(f.name.as_str()));
        self.names.retain(|n| !done.contains(n.as_str()));
        if self.files.is_empty() {
            // A first round's thousands of entries are not kept allocated.
            self.files = Arc::default();
            self.names = HashSet::new();
        }
    }

    /// How many files wait for a successful round.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether every linked file was reported by a successful round.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u64) -> IndexFile {
        IndexFile::new(format!("/data/kv-1/{n:012}.sqi"), 100 * n, n * 10, n * 10 + 9).unwrap()
    }

    fn entry(f: &IndexFile) -> BackupFile {
        BackupFile {
            name: f.name().to_owned(),
            len: f.len(),
            low_seqno: f.low_seqno(),
            high_seqno: f.high_seqno(),
        }
    }

    /// One round as the linker and the actor run it; `ok` is the callback's verdict.
    fn round(
        links: &mut LinkSet,
        unacked: &mut Unacked,
        snapshot: &[IndexFile],
        ok: bool,
    ) -> Vec<BackupFile> {
        let new: Vec<_> = links.to_link(snapshot).into_iter().cloned().collect();
        for f in &new {
            links.record(f, entry(f));
        }
        let gone = links.absent_names(snapshot);
        links.forget(&gone);
        unacked.add(new.iter().map(entry).collect(), DIR);
        let report = unacked.report();
        if ok {
            unacked.acknowledge(&report);
        }
        report.to_vec()
    }

    const DIR: DirId = DirId { dev: 1, ino: 1 };

    #[test]
    fn files_of_another_backup_dir_are_not_carried_into_this_one() {
        // Regression: a start into another dir reported the files an
        // earlier start left unacknowledged in its own dir, though they
        // were not in the new one.
        let (mut l, mut u) = Default::default();
        round(&mut l, &mut u, &[file(1)], false);
        assert_eq!(u.keep_only_in(DIR), 0, "the same dir keeps them");
        assert_eq!(u.len(), 1);
        assert_eq!(u.keep_only_in(DirId { dev: 1, ino: 2 }), 1);
        assert!(u.is_empty() && u.report().is_empty());
    }

    #[test]
    fn first_round_reports_every_file_in_the_snapshot() {
        let (mut l, mut u) = Default::default();
        let snap = [file(1), file(2), file(3)];
        assert_eq!(
            round(&mut l, &mut u, &snap, true),
            snap.iter().map(entry).collect::<Vec<_>>()
        );
    }

    #[test]
    fn later_rounds_report_only_new_files_and_empty_when_idle() {
        let (mut l, mut u) = Default::default();
        round(&mut l, &mut u, &[file(1)], true);
        assert_eq!(
            round(&mut l, &mut u, &[file(1), file(2)], true),
            vec![entry(&file(2))]
        );
        assert!(round(&mut l, &mut u, &[file(1), file(2)], true).is_empty());
    }

    #[test]
    fn a_failed_rounds_files_are_reported_again_but_not_relinked() {
        let (mut l, mut u) = Default::default();
        let r1 = round(&mut l, &mut u, &[file(1)], false);
        assert_eq!(
            l.to_link(&[file(1), file(2)]),
            vec![&file(2)],
            "file 1 is not linked twice"
        );
        let r2 = round(&mut l, &mut u, &[file(1), file(2)], true);
        assert_eq!(r2, vec![entry(&file(1)), entry(&file(2))]);
        assert_eq!(r1, vec![entry(&file(1))]);
        assert_eq!(u.len(), 0);
    }

    #[test]
    fn unacknowledged_files_survive_compaction_of_their_source() {
        let (mut l, mut u) = Default::default();
        round(&mut l, &mut u, &[file(1), file(2)], false);
        // Callback failed; then compaction replaced 1 and 2 by 3.
        let report = round(&mut l, &mut u, &[file(3)], true);
        assert_eq!(report, vec![entry(&file(1)), entry(&file(2)), entry(&file(3))]);
    }

    #[test]
    fn a_rolled_back_round_makes_the_next_manifest_full() {
        // Regression: a round that failed after its manifest was durable
        // (an engine hook panicked) left the next delta against a set the
        // manifests did not hold, so a compacted file stayed in every later
        // snapshot a restore rebuilt.
        let mut l = LinkSet::default();
        l.record(&file(1), entry(&file(1)));
        l.mark_manifested();
        l.roll_back([&file(1)]);
        assert!(!l.manifested());
    }

    #[test]
    fn a_rolled_back_round_links_its_files_again() {
        let mut l = LinkSet::default();
        l.record(&file(1), entry(&file(1)));
        l.record(&file(2), entry(&file(2)));
        l.roll_back([&file(2)]);
        assert_eq!(l.to_link(&[file(1), file(2)]), vec![&file(2)]);
    }

    #[test]
    fn a_reused_path_with_another_file_id_is_a_new_file() {
        let mut l = LinkSet::default();
        let old = file(1).with_file_id(100);
        l.record(&old, entry(&old));
        let new = file(1).with_file_id(200);
        assert_eq!(l.to_link(std::slice::from_ref(&new)), vec![&new]);
    }

    #[test]
    fn compacted_away_files_are_forgotten() {
        let (mut l, mut u) = Default::default();
        round(&mut l, &mut u, &[file(1), file(2)], true);
        round(&mut l, &mut u, &[file(3)], true);
        assert_eq!(l.len(), 1);
        assert!(l.to_link(&[file(3)]).is_empty());
    }

    #[test]
    fn a_generation_is_up_to_date_only_once_marked_and_until_a_roll_back() {
        let mut l = LinkSet::default();
        assert!(!l.is_up_to_date(Some(1)) && !l.is_up_to_date(None));
        l.record(&file(1), entry(&file(1)));
        l.mark_up_to_date(Some(1));
        assert!(l.is_up_to_date(Some(1)));
        assert!(!l.is_up_to_date(Some(2)), "another generation is compared");
        l.roll_back([&file(1)]);
        assert!(!l.is_up_to_date(Some(1)), "a failed round compares again");
        l.mark_up_to_date(None);
        assert!(!l.is_up_to_date(None), "no generation: always compared");
    }

    #[test]
    fn a_name_placed_twice_in_one_round_is_reported_once() {
        let mut u = Unacked::default();
        let e = entry(&file(1));
        u.add(vec![e.clone(), e.clone()], DIR);
        assert_eq!(*u.report(), vec![e]);
    }

    #[test]
    fn a_file_placed_under_another_name_keeps_that_name() {
        let mut l = LinkSet::default();
        let f = file(1);
        let placed = BackupFile {
            name: format!("{}~1", f.name()),
            ..entry(&f)
        };
        l.record(&f, placed.clone());
        assert_eq!(l.entry(&f), Some(placed.clone()));
        assert_eq!(l.absent_names(&[file(2)]), vec![placed.name.clone()]);
        l.forget(&[placed.name]);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn files_of_one_name_in_two_dirs_are_two_files() {
        let mut l = LinkSet::default();
        let a = IndexFile::new("/data/kv-1/tables/7", 10, 1, 5).unwrap();
        let b = IndexFile::new("/data/kv-1/blobs/7", 10, 1, 5).unwrap();
        l.record(&a, entry(&a));
        assert_eq!(l.to_link(&[a.clone(), b.clone()]), vec![&b]);
        let b_entry = BackupFile {
            name: "7~1".into(),
            ..entry(&b)
        };
        l.record(&b, b_entry.clone());
        assert_eq!(l.entry(&b), Some(b_entry));
        assert_eq!(l.entry(&a), Some(entry(&a)));
        assert!(l.absent_names(&[a, b]).is_empty());
    }
}
