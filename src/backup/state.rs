//! The pure round logic of one store: what is linked, what is new, what the
//! next callback must be told. No actix, no clock, no file system.

use std::collections::{HashMap, HashSet};

use crate::callback::BackupFile;
use crate::engine::IndexFile;

/// What one store's backup knows between rounds.
///
/// A file is *linked* once it is in the backup dir, and *acknowledged* once a
/// round that reported it succeeded (its callback returned Ok). Rounds report
/// every linked, unacknowledged file, so delivery is at least once.
#[derive(Debug, Default)]
pub(crate) struct BackupState {
    /// Engine file → its entry in the backup dir, for files in the latest
    /// snapshot that were linked (so they are not linked again).
    linked: HashMap<IndexFile, BackupFile>,
    /// Linked files no successful round has reported yet, in link order.
    unacked: Vec<BackupFile>,
    /// Whether links were made since the last fsync of the backup dir.
    unsynced: bool,
}

impl BackupState {
    /// The files of a snapshot that are not linked yet, in snapshot order.
    pub fn to_link<'a>(&self, snapshot: &'a [IndexFile]) -> Vec<&'a IndexFile> {
        snapshot
            .iter()
            .filter(|f| !self.linked.contains_key(*f))
            .collect()
    }

    /// Records that `file` is in the backup dir as `entry`.
    pub fn record_linked(&mut self, file: &IndexFile, entry: BackupFile) {
        self.linked.insert(file.clone(), entry.clone());
        self.unacked.push(entry);
        self.unsynced = true;
    }

    /// Whether the backup dir needs an fsync before the next report.
    pub fn needs_sync(&self) -> bool {
        self.unsynced
    }

    /// Records that the backup dir was fsynced.
    pub fn synced(&mut self) {
        self.unsynced = false;
    }

    /// Forgets linked files the engine no longer lists (compacted away: they
    /// cannot come back). Unacknowledged ones are still reported.
    pub fn forget_absent(&mut self, snapshot: &[IndexFile]) {
        if self.linked.len() <= snapshot.len() && snapshot.iter().all(|f| self.linked.contains_key(f)) {
            return;
        }
        let live: HashSet<&IndexFile> = snapshot.iter().collect();
        self.linked.retain(|f, _| live.contains(f));
    }

    /// What the round must report: every linked, unacknowledged file.
    pub fn report(&self) -> Vec<BackupFile> {
        if self.unsynced {
            return Vec::new();
        }
        self.unacked.clone()
    }

    /// A round that reported `reported` succeeded.
    pub fn acknowledge(&mut self, reported: &[BackupFile]) {
        let done: HashSet<&str> = reported.iter().map(|f| f.name.as_str()).collect();
        self.unacked.retain(|f| !done.contains(f.name.as_str()));
    }

    /// How many files are linked and not yet acknowledged.
    #[cfg(test)]
    pub fn unacknowledged(&self) -> usize {
        self.unacked.len()
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

    /// Runs the linker's half of a round as the real one does.
    fn link_round(state: &mut BackupState, snapshot: &[IndexFile]) -> Vec<BackupFile> {
        for f in state.to_link(snapshot) {
            state.record_linked(f, entry(f));
        }
        state.synced();
        state.forget_absent(snapshot);
        state.report()
    }

    #[test]
    fn first_round_reports_every_file_in_the_snapshot() {
        let mut s = BackupState::default();
        let snap = [file(1), file(2), file(3)];
        let report = link_round(&mut s, &snap);
        assert_eq!(report, snap.iter().map(entry).collect::<Vec<_>>());
    }

    #[test]
    fn later_rounds_report_only_new_files_and_empty_when_idle() {
        let mut s = BackupState::default();
        let r1 = link_round(&mut s, &[file(1)]);
        s.acknowledge(&r1);
        let r2 = link_round(&mut s, &[file(1), file(2)]);
        assert_eq!(r2, vec![entry(&file(2))]);
        s.acknowledge(&r2);
        assert!(link_round(&mut s, &[file(1), file(2)]).is_empty());
    }

    #[test]
    fn a_failed_rounds_files_are_reported_again_but_not_relinked() {
        let mut s = BackupState::default();
        let r1 = link_round(&mut s, &[file(1)]);
        // No acknowledge: the callback failed.
        assert!(
            s.to_link(&[file(1), file(2)]) == vec![&file(2)],
            "file 1 is not linked twice"
        );
        let r2 = link_round(&mut s, &[file(1), file(2)]);
        assert_eq!(r2, vec![entry(&file(1)), entry(&file(2))]);
        assert_eq!(r1, vec![entry(&file(1))]);
        s.acknowledge(&r2);
        assert_eq!(s.unacknowledged(), 0);
    }

    #[test]
    fn unacknowledged_files_survive_compaction_of_their_source() {
        let mut s = BackupState::default();
        link_round(&mut s, &[file(1), file(2)]);
        // Callback failed; then compaction replaced 1 and 2 by 3.
        let report = link_round(&mut s, &[file(3)]);
        assert_eq!(report, vec![entry(&file(1)), entry(&file(2)), entry(&file(3))]);
    }

    #[test]
    fn nothing_is_reported_before_the_dir_is_synced() {
        let mut s = BackupState::default();
        s.record_linked(&file(1), entry(&file(1)));
        assert!(s.needs_sync());
        assert!(s.report().is_empty());
        s.synced();
        assert_eq!(s.report().len(), 1);
    }

    #[test]
    fn compacted_away_files_are_forgotten() {
        let mut s = BackupState::default();
        let r = link_round(&mut s, &[file(1), file(2)]);
        s.acknowledge(&r);
        link_round(&mut s, &[file(3)]);
        assert_eq!(s.linked.len(), 1);
        assert!(s.to_link(&[file(3)]).is_empty());
    }
}
