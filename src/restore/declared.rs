//! Which seqnos a backup restores exactly, from what its files *declare*
//! (the round manifests), not from the seqnos their records happen to carry.
//!
//! A restore to S is allowed only where the declared facts prove the answer:
//!
//! - **Bases.** The files of a [complete](crate::Snapshot::is_complete)
//!   round's snapshot hold the store's whole state at `x`, the highest
//!   seqno they cover. A store whose engine declared its first seqno `f`
//!   (nothing written before) has the empty state at `f - 1` (the state
//!   before seqno 0 when `f` is 0).
//! - **Chains.** From a known state at `x`, files that hold every version
//!   ([`Holds::EveryVersion`]) whose declared ranges cover `x + 1..=y`
//!   without a break take it to every seqno up to `y`: every write in there
//!   is in them, and a declared seqno they lack was not written. Sparse
//!   seqnos are therefore normal, not gaps.
//! - **Compactions over the whole key space** ([`Holds::NewestPerKey`],
//!   delete markers kept) covering `lo..=hi` take a known state at any
//!   `x'` with `lo - 1 <= x' <= hi` to `hi`.
//!
//! [`Holds::Partial`] files (and undeclared ones) never extend anything:
//! they are used only as members of a complete snapshot. The restore of S
//! reads exactly the files of one such proof (its *plan*) and keeps each
//! key's newest version at or below S. Reading more than the plan could be
//! wrong: a base whose engine dropped a delete marker represents the
//! deleted key by its absence, and an older file would bring it back.
//!
//! Proof sketch: a base's files hold, for every key, its newest version at
//! or below `x` (absent keys are deleted or never written). A chain file's
//! range `lo..=hi` with `lo <= x + 1` holds every write in `lo..=hi`, so for
//! S in the chain, each key's newest write at or below S is either in the
//! chain (written after `x`, or at `lo..=x` where the chain holds it with
//! every version: no older base version can hide it) or, if the key was not
//! written in `x + 1..=S`, it is the base's. A whole-key-space compaction
//! holds the newest version of every key written in its range, so it
//! overrides a known state at `x'` for exactly those keys.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::coverage::{list, union};
use crate::engine::Holds;
use crate::manifest::{ConsolidatedBase, DeclaredFile, RoundRecord};

/// A seqno position: `-1` is "before seqno 0".
type Pos = i64;

/// A known state: at `at`, read from `files` (backup-dir names), known
/// from round `round` on.
#[derive(Clone, Debug)]
struct Base {
    at: Pos,
    round: u64,
    files: BTreeSet<String>,
    /// A prune consolidated it: preferred at its seqno (so the files it
    /// stands for can go).
    consolidated: bool,
}

/// A file that holds every version, and the last round whose snapshot
/// listed it. A chain from a base known at round r only takes files
/// listed at r or later: a file that extends a state at `x` was flushed
/// after `x`, so no snapshot before the base's lists it, and a file of an
/// earlier history of the store (deleted and created again into the same
/// dir) is not mistaken for one.
type Every<'a> = (&'a DeclaredFile, u64);

/// The exact restore points of one store's backup, from its manifests.
#[derive(Clone, Debug, Serialize)]
pub struct DeclaredCoverage {
    /// Inclusive seqno ranges a restore gives exactly.
    pub restorable: Vec<(u64, u64)>,
    /// The highest seqno any declared file covers.
    pub highest: Option<u64>,
    /// The lowest seqno any declared file covers.
    pub lowest: Option<u64>,
    /// Every file the manifests declare, by name (the first declaration).
    #[serde(skip)]
    files: BTreeMap<String, DeclaredFile>,
    #[serde(skip)]
    bases: Vec<(Base, Pos)>,
    #[serde(skip)]
    last_seen: BTreeMap<String, u64>,
    /// Per round: its number and the highest seqno its snapshot's files
    /// declare (the newest state backed up by then).
    #[serde(skip)]
    round_highs: Vec<(u64, Option<u64>)>,
    /// The newest round's snapshot, by name.
    #[serde(skip)]
    latest: BTreeSet<String>,
    /// Two files that both declare every version of some seqno: the dir
    /// holds more than one history of the store, and nothing is provable.
    #[serde(skip)]
    conflict: Option<(String, String)>,
}

/// Why a seqno cannot be restored from the declared facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotProvable {
    /// What is missing, in words.
    pub reason: String,
}

impl DeclaredCoverage {
    /// Works out the exact restore points from `rounds` (in round order),
    /// over every file they declare.
    pub fn new(rounds: &[RoundRecord]) -> DeclaredCoverage {
        Self::of_present(rounds, &|_| true)
    }

    /// [`new`](Self::new), counting only the declared files for which
    /// `present` says yes (the files a dir, or a copy of it still being
    /// uploaded, really holds): a snapshot with a missing file is no base,
    /// and a missing file breaks a chain.
    pub fn of_present(rounds: &[RoundRecord], present: &dyn Fn(&str) -> bool) -> DeclaredCoverage {
        Self::of_present_with(rounds, &[], present)
    }

    /// [`of_present`](Self::of_present), with the bases prunes consolidated
    /// (each a known state at its seqno from its round on, read from its
    /// files alone, and preferred there).
    pub fn of_present_with(
        rounds: &[RoundRecord],
        consolidated: &[ConsolidatedBase],
        present: &dyn Fn(&str) -> bool,
    ) -> DeclaredCoverage {
        let mut files: BTreeMap<String, DeclaredFile> = BTreeMap::new();
        let mut last_seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut round_highs = Vec::with_capacity(rounds.len());
        let mut first_seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut bases: Vec<Base> = Vec::new();
        let mut snapshot: BTreeSet<String> = BTreeSet::new();
        // The snapshot is known only from a full round on, through rounds
        // that follow each other without a missing number (a copy that
        // lacks a manifest, a remote still uploading).
        let mut known = false;
        let mut previous: Option<u64> = None;
        for round in rounds {
            let follows = previous.is_some_and(|p| round.round == p + 1);
            previous = Some(round.round);
            if round.full {
                snapshot.clear();
                known = true;
            } else if !follows {
                known = false;
            }
            for f in &round.added {
                files.entry(f.name.clone()).or_insert_with(|| f.clone());
                first_seen.entry(f.name.clone()).or_insert(round.round);
                snapshot.insert(f.name.clone());
            }
            for name in &round.removed {
                snapshot.remove(name);
            }
            for name in &snapshot {
                last_seen.insert(name.clone(), round.round);
            }
            let high = snapshot
                .iter()
                .filter_map(|n| files.get(n))
                .map(|f| f.high_seqno)
                .max();
            round_highs.push((round.round, high));
            if let Some(first) = round.first_seqno {
                bases.push(Base {
                    at: first as Pos - 1,
                    round: round.round,
                    files: BTreeSet::new(),
                    consolidated: false,
                });
            }
            for c in consolidated.iter().filter(|c| c.round == round.round) {
                for f in &c.files {
                    files.entry(f.name.clone()).or_insert_with(|| f.clone());
                    first_seen.entry(f.name.clone()).or_insert(round.round);
                }
                // No files: the state was empty (every key deleted).
                if c.files.iter().all(|f| present(&f.name)) {
                    bases.push(Base {
                        at: c.seqno as Pos,
                        round: round.round,
                        files: c.files.iter().map(|f| f.name.clone()).collect(),
                        consolidated: true,
                    });
                }
            }
            if round.complete && known && snapshot.iter().all(|n| present(n)) {
                let at = snapshot
                    .iter()
                    .filter_map(|n| files.get(n))
                    .map(|f| f.high_seqno)
                    .max();
                if let Some(at) = at {
                    bases.push(Base {
                        at: at as Pos,
                        round: round.round,
                        files: snapshot.clone(),
                        consolidated: false,
                    });
                }
            }
        }
        files.retain(|name, _| present(name));
        let every = every_version(&files, &last_seen);
        let conflict = overlapping(&every).or_else(|| restarted(&files, &every, &first_seen));
        if conflict.is_some() {
            bases.clear();
        }
        let newest: Vec<(&DeclaredFile, u64)> = files
            .values()
            .filter(|f| f.holds == Some(Holds::NewestPerKey))
            .map(|f| (f, last_seen.get(&f.name).copied().unwrap_or(0)))
            .collect();
        // Close over compactions: each may turn a known point into a base.
        // Every base a round gives is kept (one per seqno and file set: a
        // plan prefers the one with fewer files); of the bases compactions
        // derive, one per seqno (more would multiply with rounds: a restore
        // of a long history slowed tenfold). Of equal ones the earliest
        // known is kept (its chain may take the most files): popped first.
        let mut reached: Vec<(Base, Pos)> = Vec::new();
        let mut seen_roots: std::collections::HashSet<(Pos, BTreeSet<String>)> = Default::default();
        let mut seen_derived: std::collections::HashSet<Pos> = Default::default();
        let mut pending: Vec<(Base, bool)> = bases.into_iter().map(|b| (b, false)).collect();
        pending.sort_by_key(|(b, _)| std::cmp::Reverse(b.round));
        while let Some((base, derived)) = pending.pop() {
            let new = match derived {
                false => seen_roots.insert((base.at, base.files.clone())),
                true => seen_derived.insert(base.at),
            };
            if !new {
                continue;
            }
            let (end, _) = chain(&every, &base, Pos::MAX);
            for (c, seen) in &newest {
                let (lo, hi) = (c.low_seqno as Pos, c.high_seqno as Pos);
                let from = base.at.max(lo - 1);
                // A compaction that extends a state known at round r was
                // written after it, so a round at or after r lists it.
                if from <= end.min(hi) && hi > base.at && *seen >= base.round {
                    let (_, via) = chain(&every, &base, from);
                    let mut files: BTreeSet<String> = base.files.clone();
                    files.extend(via.into_iter().map(|f| f.name.clone()));
                    files.insert(c.name.clone());
                    let next = Base {
                        at: hi,
                        round: base.round,
                        files,
                        consolidated: false,
                    };
                    pending.push((next, true));
                }
            }
            reached.push((base, end));
        }
        let restorable = union(reached.iter().filter_map(|(b, end)| {
            let from = first_point(b);
            (*end >= from).then_some((from as u64, *end as u64))
        }));
        DeclaredCoverage {
            restorable,
            highest: files.values().map(|f| f.high_seqno).max(),
            lowest: files.values().map(|f| f.low_seqno).min(),
            files,
            bases: reached,
            last_seen,
            round_highs,
            latest: snapshot,
            conflict,
        }
    }

    /// The highest seqno declared by the snapshot of the round before
    /// round `r`: the newest state a restore point of a window starting at
    /// `r` may have to reproduce. `None` when no earlier round declares one.
    pub fn high_before_round(&self, r: u64) -> Option<u64> {
        self.round_highs
            .iter()
            .take_while(|(round, _)| *round < r)
            .filter_map(|(_, high)| *high)
            .max()
    }

    /// The highest seqno round `r`'s own snapshot declares, if it lists a
    /// file with a declaration.
    pub fn round_high(&self, r: u64) -> Option<u64> {
        self.round_highs
            .iter()
            .find(|(round, _)| *round == r)
            .and_then(|(_, h)| *h)
    }

    /// The newest round's snapshot: the files the live engine still lists.
    pub fn latest_snapshot(&self) -> &BTreeSet<String> {
        &self.latest
    }

    /// Every file a restore to any seqno at or above `from` reads: for each
    /// base that is the best (the newest, as [`plan`](Self::plan) picks)
    /// for some such seqno, its files and the chain that carries it to its
    /// end. Deleting every other file leaves each such seqno the same best
    /// base and chain, so the same plan.
    pub fn needed_from(&self, from: u64) -> BTreeSet<String> {
        let from = from as Pos;
        let every = every_version(&self.files, &self.last_seen);
        let mut reaching: Vec<&(Base, Pos)> = self
            .bases
            .iter()
            .filter(|(b, end)| *end >= from && *end >= first_point(b))
            .collect();
        reaching.sort_by_key(|(b, _)| std::cmp::Reverse(preference(b)));
        // The seqnos newer bases already win, as sorted disjoint ranges.
        let mut won: Vec<(Pos, Pos)> = Vec::new();
        let mut needed = BTreeSet::new();
        for (base, end) in reaching {
            let (lo, hi) = (first_point(base).max(from), *end);
            if !covers(&won, lo, hi) {
                needed.extend(base.files.iter().cloned());
                let (_, via) = chain(&every, base, *end);
                needed.extend(via.into_iter().map(|f| f.name.clone()));
            }
            won.push((first_point(base), *end));
            won.sort_unstable();
        }
        needed
    }

    /// The backup-dir names of the files a restore to `seqno` reads (the
    /// plan of one proof), or why no proof exists.
    pub fn plan(&self, seqno: u64) -> Result<Vec<String>, NotProvable> {
        let s = seqno as Pos;
        let every = every_version(&self.files, &self.last_seen);
        // The base nearest below S reads the fewest files.
        let best = self
            .bases
            .iter()
            .filter(|(b, end)| first_point(b) <= s && s <= *end)
            .max_by_key(|(b, _)| preference(b));
        let Some((base, _)) = best else {
            return Err(NotProvable {
                reason: self.why_not(seqno),
            });
        };
        let (_, via) = chain(&every, base, s);
        let mut names = base.files.clone();
        names.extend(via.into_iter().map(|f| f.name.clone()));
        Ok(names.into_iter().collect())
    }

    /// Two files that both declare every version of some seqno (the dir
    /// holds more than one history of the store), if any: then no seqno is
    /// provable.
    pub fn conflict(&self) -> Option<(&str, &str)> {
        self.conflict.as_ref().map(|(a, b)| (a.as_str(), b.as_str()))
    }

    /// What a file of the manifests declares, by its backup-dir name.
    pub fn declared(&self, name: &str) -> Option<&DeclaredFile> {
        self.files.get(name)
    }

    fn why_not(&self, seqno: u64) -> String {
        if let Some((a, b)) = &self.conflict {
            return format!(
                "{a} and {b} both declare every version of some seqnos: the backup dir holds more \
                 than one history of the store (it was deleted and created again into the same \
                 dir); restore needs a backup dir with one"
            );
        }
        let exact = list(&self.restorable);
        let below: Vec<&(Base, Pos)> = self.bases.iter().filter(|(b, _)| b.at <= seqno as Pos).collect();
        let what = match below.iter().map(|(_, end)| *end).max() {
            _ if self.lowest.is_none() => "the backup declares no file".to_owned(),
            _ if self.highest.is_some_and(|h| seqno > h) || self.lowest.is_some_and(|l| seqno < l) => {
                format!(
                    "the backup covers seqnos {}..={}",
                    self.lowest.unwrap_or(0),
                    self.highest.unwrap_or(0)
                )
            }
            None => format!(
                "no complete snapshot or known start of the store's history at or below seqno {seqno}"
            ),
            Some(end) => format!(
                "the files that hold every version stop at seqno {end}: no backed-up file declares every \
                 version of seqno {} (its versions are only in a compaction output, which kept the \
                 newest of each key, or were never flushed)",
                end + 1
            ),
        };
        format!("{what}; exact restore points: {exact}")
    }
}

/// Which of the bases covering a seqno its plan reads: the newest (the
/// fewest files to read), then the one with fewer files, then the one
/// known earliest.
/// The file set breaks the last ties, so `plan` and `needed_from` agree.
fn preference(
    b: &Base,
) -> (
    Pos,
    bool,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<u64>,
    &BTreeSet<String>,
) {
    (
        b.at,
        b.consolidated,
        std::cmp::Reverse(b.files.len()),
        std::cmp::Reverse(b.round),
        &b.files,
    )
}

/// Whether the ranges `won` (sorted by start) cover all of `lo..=hi`.
fn covers(won: &[(Pos, Pos)], lo: Pos, hi: Pos) -> bool {
    let mut next = lo;
    for &(a, b) in won {
        if a > next {
            break;
        }
        if b >= next {
            next = b + 1;
        }
        if next > hi {
            return true;
        }
    }
    next > hi
}

/// The first seqno a base restores: its own, except the empty start of a
/// history (no files, not consolidated), whose first point is the store's
/// first seqno. (A consolidated base without files is the empty state at
/// its seqno, every key deleted: that seqno restores.)
fn first_point(base: &Base) -> Pos {
    if base.files.is_empty() && !base.consolidated {
        base.at + 1
    } else {
        base.at
    }
}

/// The files that declare every version, with the last round that listed
/// each.
fn every_version<'a>(
    files: &'a BTreeMap<String, DeclaredFile>,
    last_seen: &BTreeMap<String, u64>,
) -> Vec<Every<'a>> {
    files
        .values()
        .filter(|f| f.holds == Some(Holds::EveryVersion))
        .map(|f| (f, last_seen.get(&f.name).copied().unwrap_or(0)))
        .collect()
}

/// Two files that both declare every version of a seqno, if any: in one
/// history each seqno is written once, so flush outputs never overlap.
fn overlapping(every: &[Every<'_>]) -> Option<(String, String)> {
    let mut by_low: Vec<&DeclaredFile> = every.iter().map(|(f, _)| *f).collect();
    by_low.sort_by_key(|f| (f.low_seqno, f.high_seqno));
    let mut reach: Option<&DeclaredFile> = None;
    for f in by_low {
        if let Some(r) = reach {
            if f.low_seqno <= r.high_seqno {
                return Some((r.name.clone(), f.name.clone()));
            }
        }
        if reach.is_none_or(|r| f.high_seqno > r.high_seqno) {
            reach = Some(f);
        }
    }
    None
}

/// A file that declares every version of a seqno at or below the highest
/// seqno of a file listed in an earlier round, with that file, if any. In
/// one history a file holds only what was flushed before the round that
/// first lists it, and a flush after that round starts above all of it;
/// such a file is of a later history of the store (deleted and created
/// again into the dir, seqnos started over).
fn restarted(
    files: &BTreeMap<String, DeclaredFile>,
    every: &[Every<'_>],
    first_seen: &BTreeMap<String, u64>,
) -> Option<(String, String)> {
    // Per round of first listing, the highest seqno of the files listed
    // by then, and one such file.
    let mut listed: Vec<(u64, u64, &str)> = files
        .values()
        .filter_map(|f| {
            first_seen
                .get(&f.name)
                .map(|r| (*r, f.high_seqno, f.name.as_str()))
        })
        .collect();
    listed.sort_unstable();
    let mut highest: Vec<(u64, u64, &str)> = Vec::with_capacity(listed.len());
    for (round, high, name) in listed {
        match highest.last() {
            Some(&(_, top, top_name)) if top >= high => highest.push((round, top, top_name)),
            _ => highest.push((round, high, name)),
        }
    }
    for (f, _) in every {
        let Some(&first) = first_seen.get(&f.name) else {
            continue;
        };
        let i = highest.partition_point(|(round, ..)| *round < first);
        if let Some(&(_, high, name)) = i.checked_sub(1).map(|i| &highest[i]) {
            if f.low_seqno <= high {
                return Some((name.to_owned(), f.name.clone()));
            }
        }
    }
    None
}

/// The longest run of every-version files covering `base.at + 1..` without
/// a break, up to `limit`, among those listed at or after the base's round:
/// its end, and its files (each needed to get there).
fn chain<'a>(every: &[Every<'a>], base: &Base, limit: Pos) -> (Pos, Vec<&'a DeclaredFile>) {
    let mut end = base.at;
    let mut used = Vec::new();
    while end < limit {
        let next = every
            .iter()
            .filter(|(_, seen)| *seen >= base.round)
            .map(|(f, _)| *f)
            .filter(|f| f.low_seqno as Pos <= end + 1 && f.high_seqno as Pos > end)
            .max_by_key(|f| f.high_seqno);
        match next {
            Some(f) => {
                used.push(f);
                end = f.high_seqno as Pos;
            }
            None => break,
        }
    }
    (end, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MANIFEST_FORMAT;

    fn file(name: &str, low: u64, high: u64, holds: Holds) -> DeclaredFile {
        DeclaredFile {
            name: name.to_owned(),
            len: 1,
            low_seqno: low,
            high_seqno: high,
            holds: Some(holds),
        }
    }

    fn round(
        full: bool,
        complete: bool,
        first: Option<u64>,
        added: Vec<DeclaredFile>,
        removed: &[&str],
    ) -> RoundRecord {
        RoundRecord {
            format: MANIFEST_FORMAT,
            round: 0,
            time_ms: 0,
            engine_format: "test".into(),
            complete,
            first_seqno: first,
            full,
            added,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Numbers rounds 1, 2, 3… as a backup dir holds them.
    fn numbered(mut rounds: Vec<RoundRecord>) -> Vec<RoundRecord> {
        for (i, r) in rounds.iter_mut().enumerate() {
            r.round = i as u64 + 1;
        }
        rounds
    }

    #[test]
    fn a_missing_manifest_makes_the_snapshot_unknown_until_a_full_round() {
        // A copy of the dir without round 2: its removal of "a" is unknown,
        // so round 3's snapshot cannot be trusted as a base.
        let mut rounds = numbered(vec![
            round(true, true, None, vec![file("a", 0, 10, Holds::Partial)], &[]),
            round(false, true, None, vec![file("b", 0, 20, Holds::Partial)], &["a"]),
            round(false, true, None, vec![file("c", 21, 30, Holds::Partial)], &[]),
            round(
                true,
                true,
                None,
                vec![
                    file("b", 0, 20, Holds::Partial),
                    file("c", 21, 30, Holds::Partial),
                ],
                &[],
            ),
        ]);
        assert_eq!(
            DeclaredCoverage::new(&rounds).restorable,
            vec![(10, 10), (20, 20), (30, 30)]
        );
        rounds.remove(1);
        let c = DeclaredCoverage::new(&rounds);
        assert_eq!(
            c.restorable,
            vec![(10, 10), (30, 30)],
            "only the full rounds' bases"
        );
        assert_eq!(c.plan(30).unwrap(), vec!["b", "c"]);
    }

    #[test]
    fn a_declared_file_missing_from_the_dir_proves_nothing() {
        // A remote still uploading, or a link lost: the newest base and the
        // chain through the missing file are out; an older proof remains.
        let rounds = numbered(vec![
            round(
                true,
                true,
                Some(0),
                vec![file("a", 0, 10, Holds::EveryVersion)],
                &[],
            ),
            round(
                false,
                true,
                None,
                vec![file("b", 11, 20, Holds::EveryVersion)],
                &[],
            ),
            round(
                false,
                true,
                None,
                vec![file("c", 21, 30, Holds::EveryVersion)],
                &[],
            ),
        ]);
        let c = DeclaredCoverage::of_present(&rounds, &|n| n != "b");
        assert_eq!(c.restorable, vec![(0, 10)]);
        assert_eq!(c.plan(5).unwrap(), vec!["a"]);
        assert!(c.plan(25).is_err());
    }

    #[test]
    fn sparse_flushes_from_seqno_zero_chain_without_gaps() {
        // lsm-tree's counter skips seqnos; flushes declare their ranges.
        let c = DeclaredCoverage::new(&numbered(vec![round(
            true,
            false,
            Some(0),
            vec![
                file("1", 0, 9, Holds::EveryVersion),
                file("2", 10, 30, Holds::EveryVersion),
            ],
            &[],
        )]));
        assert_eq!(c.restorable, vec![(0, 30)]);
        assert_eq!(c.plan(0).unwrap(), vec!["1"]);
        assert_eq!(c.plan(17).unwrap(), vec!["1", "2"]);
        assert!(c.plan(31).is_err());
    }

    #[test]
    fn a_partial_compaction_output_is_used_only_inside_a_complete_snapshot() {
        // Regression: a compaction into the last level dropped delete
        // markers, and restore took its range as exact: deleted keys came
        // back. Here its inputs were never backed up.
        let rounds = numbered(vec![
            round(true, true, None, vec![file("c", 0, 50, Holds::Partial)], &[]),
            round(
                false,
                true,
                None,
                vec![file("f", 51, 60, Holds::EveryVersion)],
                &[],
            ),
        ]);
        let c = DeclaredCoverage::new(&rounds);
        assert_eq!(
            c.restorable,
            vec![(50, 60)],
            "only from the snapshot's high seqno on"
        );
        assert!(c.plan(49).is_err());
        assert_eq!(c.plan(55).unwrap(), vec!["c", "f"]);
        let why = c.plan(10).unwrap_err().reason;
        assert!(why.contains("exact restore points: 50..=60"), "{why}");
    }

    #[test]
    fn an_incomplete_snapshot_proves_nothing_by_itself() {
        let c = DeclaredCoverage::new(&numbered(vec![round(
            true,
            false,
            None,
            vec![file("c", 0, 50, Holds::Partial)],
            &[],
        )]));
        assert!(c.restorable.is_empty());
    }

    #[test]
    fn a_whole_key_space_compaction_carries_a_known_state_to_its_high_seqno() {
        // The reference engine without retention: flushes 1..=10, 11..=20
        // compacted into 1..=20 before the second was linked; then 21..=30.
        let rounds = numbered(vec![
            round(
                true,
                false,
                Some(1),
                vec![file("a", 1, 10, Holds::EveryVersion)],
                &[],
            ),
            round(
                false,
                false,
                None,
                vec![file("c", 1, 20, Holds::NewestPerKey)],
                &["a"],
            ),
            round(
                false,
                false,
                None,
                vec![file("d", 21, 30, Holds::EveryVersion)],
                &[],
            ),
        ]);
        let c = DeclaredCoverage::new(&rounds);
        assert_eq!(c.restorable, vec![(1, 10), (20, 30)]);
        assert!(
            c.plan(15).is_err(),
            "inside the compaction: its versions are gone"
        );
        assert_eq!(c.plan(25).unwrap(), vec!["c", "d"]);
    }

    #[test]
    fn a_removed_file_leaves_the_snapshot_but_not_the_chain() {
        let rounds = numbered(vec![
            round(true, true, None, vec![file("a", 5, 10, Holds::EveryVersion)], &[]),
            round(
                false,
                true,
                None,
                vec![file("b", 11, 20, Holds::EveryVersion)],
                &[],
            ),
            round(
                false,
                true,
                None,
                vec![file("c", 5, 20, Holds::Partial)],
                &["a", "b"],
            ),
        ]);
        let c = DeclaredCoverage::new(&rounds);
        // Bases at 10 ({a}), 20 ({a, b}) and 20 ({c}); from 10, b chains.
        assert_eq!(c.restorable, vec![(10, 20)]);
        assert_eq!(c.plan(15).unwrap(), vec!["a", "b"]);
        assert!(c.plan(20).is_ok());
    }

    // Regression: a store deleted and created again into the same dir
    // starts its seqnos over; its flushes must not chain with the old
    // history's into an answer that mixes the two.
    #[test]
    fn two_files_declaring_every_version_of_one_seqno_prove_nothing() {
        let rounds = numbered(vec![
            round(
                true,
                true,
                Some(1),
                vec![file("a", 1, 10, Holds::EveryVersion)],
                &[],
            ),
            round(
                false,
                true,
                None,
                vec![file("b", 11, 20, Holds::EveryVersion)],
                &["a"],
            ),
            // The second history.
            round(
                true,
                true,
                Some(1),
                vec![file("a~1", 1, 5, Holds::EveryVersion)],
                &["b"],
            ),
        ]);
        let c = DeclaredCoverage::new(&rounds);
        assert!(c.restorable.is_empty(), "{:?}", c.restorable);
        assert_eq!(c.conflict(), Some(("a~1", "a")));
        let why = c.plan(3).unwrap_err().reason;
        assert!(why.contains("more than one history"), "{why}");
    }

    // Regression (review): a second history's flush, listed after a
    // compaction of the first (complete or not), chained onto the first's
    // state: restore to 120 mixed the two.
    #[test]
    fn a_flush_from_below_what_an_earlier_round_listed_is_a_second_history() {
        for complete in [true, false] {
            let rounds = numbered(vec![
                round(
                    true,
                    complete,
                    Some(1),
                    vec![file("c", 1, 100, Holds::NewestPerKey)],
                    &[],
                ),
                round(
                    true,
                    complete,
                    Some(1),
                    vec![file("n", 1, 150, Holds::EveryVersion)],
                    &["c"],
                ),
            ]);
            let c = DeclaredCoverage::new(&rounds);
            assert_eq!(c.conflict(), Some(("c", "n")), "complete: {complete}");
            assert!(c.restorable.is_empty());
            assert!(c.plan(120).unwrap_err().reason.contains("more than one history"));
        }
    }

    #[test]
    fn flushes_after_a_compaction_start_above_it_and_are_no_conflict() {
        let rounds = numbered(vec![
            round(
                true,
                true,
                Some(1),
                vec![file("a", 1, 10, Holds::EveryVersion)],
                &[],
            ),
            round(
                false,
                true,
                None,
                vec![file("c", 1, 10, Holds::NewestPerKey)],
                &["a"],
            ),
            round(
                false,
                true,
                None,
                vec![file("b", 11, 20, Holds::EveryVersion)],
                &[],
            ),
        ]);
        let c = DeclaredCoverage::new(&rounds);
        assert_eq!(c.conflict(), None);
        assert_eq!(c.restorable, vec![(1, 20)]);
    }

    #[test]
    fn a_chain_from_a_base_takes_no_file_only_rounds_before_it_listed() {
        // "old" (every version of 6..=9) was listed only before the base
        // of round 3 was known: it is of an earlier history, not the base's.
        let rounds = numbered(vec![
            round(
                true,
                false,
                None,
                vec![file("old", 6, 9, Holds::EveryVersion)],
                &[],
            ),
            round(false, false, None, vec![], &["old"]),
            round(true, true, None, vec![file("base", 0, 5, Holds::Partial)], &[]),
        ]);
        let c = DeclaredCoverage::new(&rounds);
        assert_eq!(c.restorable, vec![(5, 5)]);
        assert!(c.plan(7).is_err());
    }

    /// The coverage rule against an oracle: a simulated engine writes keys
    /// with sparse seqnos from 0, flushes (every version), compacts every
    /// live file (delete markers kept over the whole key space, or dropped
    /// and split by key: partial outputs), and a backup takes rounds at
    /// random moments (complete snapshots or not), so files compacted
    /// between two rounds are never linked. For every seqno the declared
    /// facts accept, the plan's files give exactly the history's state.
    mod property {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        /// One record: (key, seqno, value; None = delete).
        type Rec = (u8, u64, Option<u32>);

        #[derive(Clone, Debug)]
        enum Step {
            Write { key: u8, delete: bool, skip: u64 },
            Flush,
            Compact { drop_deletes: bool },
            Round { complete: bool },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                6 => (0u8..6, prop::bool::weighted(0.3), 0u64..3)
                    .prop_map(|(key, delete, skip)| Step::Write { key, delete, skip }),
                2 => Just(Step::Flush),
                1 => any::<bool>().prop_map(|drop_deletes| Step::Compact { drop_deletes }),
                2 => any::<bool>().prop_map(|complete| Step::Round { complete }),
            ]
        }

        fn newest(records: &[Rec], at: u64) -> BTreeMap<u8, Option<u32>> {
            let mut state: BTreeMap<u8, (u64, Option<u32>)> = BTreeMap::new();
            for &(k, s, v) in records {
                if s <= at && state.get(&k).is_none_or(|(have, _)| *have < s) {
                    state.insert(k, (s, v));
                }
            }
            state
                .into_iter()
                .filter_map(|(k, (_, v))| v.map(|v| (k, Some(v))))
                .collect()
        }

        struct Sim {
            history: Vec<Rec>,
            memtable: Vec<Rec>,
            next_seqno: u64,
            flushed_to: i64,
            live: Vec<(DeclaredFile, Vec<Rec>)>,
            contents: BTreeMap<String, Vec<Rec>>,
            linked: BTreeSet<String>,
            rounds: Vec<RoundRecord>,
            files_made: usize,
        }

        impl Sim {
            /// The simulation after `steps`.
            fn after(steps: &[Step]) -> Sim {
                let mut sim = Sim {
                    history: vec![],
                    memtable: vec![],
                    next_seqno: 0,
                    flushed_to: -1,
                    live: vec![],
                    contents: BTreeMap::new(),
                    linked: BTreeSet::new(),
                    rounds: vec![],
                    files_made: 0,
                };
                for s in steps {
                    sim.run(s);
                }
                sim
            }

            fn file(&mut self, low: u64, high: u64, holds: Holds, records: Vec<Rec>) {
                self.files_made += 1;
                let name = format!("f{}", self.files_made);
                let f = DeclaredFile {
                    name: name.clone(),
                    len: records.len() as u64,
                    low_seqno: low,
                    high_seqno: high,
                    holds: Some(holds),
                };
                self.contents.insert(name, records.clone());
                self.live.push((f, records));
            }

            fn run(&mut self, step: &Step) {
                match *step {
                    Step::Write { key, delete, skip } => {
                        let seqno = self.next_seqno + skip;
                        self.next_seqno = seqno + 1;
                        let value = (!delete).then_some(seqno as u32);
                        self.history.push((key, seqno, value));
                        self.memtable.push((key, seqno, value));
                    }
                    Step::Flush if !self.memtable.is_empty() => {
                        let records = std::mem::take(&mut self.memtable);
                        let high = records.last().unwrap().1;
                        let low = (self.flushed_to + 1) as u64;
                        self.flushed_to = high as i64;
                        self.file(low, high, Holds::EveryVersion, records);
                    }
                    Step::Flush => {}
                    Step::Compact { drop_deletes } if self.live.len() >= 2 => {
                        let inputs = std::mem::take(&mut self.live);
                        // An output keeps every marker only if its inputs did.
                        let markers_kept = inputs.iter().all(|(f, _)| f.holds != Some(Holds::Partial));
                        let low = inputs.iter().map(|(f, _)| f.low_seqno).min().unwrap();
                        let high = inputs.iter().map(|(f, _)| f.high_seqno).max().unwrap();
                        let all: Vec<Rec> = inputs.into_iter().flat_map(|(_, r)| r).collect();
                        let mut newest: BTreeMap<u8, Rec> = BTreeMap::new();
                        for r in all {
                            if newest.get(&r.0).is_none_or(|have| have.1 < r.1) {
                                newest.insert(r.0, r);
                            }
                        }
                        if drop_deletes || !markers_kept {
                            // The last level: markers go, the key space is split.
                            let kept: Vec<Rec> = newest.into_values().filter(|r| r.2.is_some()).collect();
                            let (a, b): (Vec<Rec>, Vec<Rec>) = kept.into_iter().partition(|r| r.0 < 3);
                            self.file(low, high, Holds::Partial, a);
                            self.file(low, high, Holds::Partial, b);
                        } else {
                            self.file(low, high, Holds::NewestPerKey, newest.into_values().collect());
                        }
                    }
                    Step::Compact { .. } => {}
                    Step::Round { complete } => {
                        let names: BTreeSet<String> = self.live.iter().map(|(f, _)| f.name.clone()).collect();
                        let full = self.rounds.is_empty();
                        let previous: BTreeSet<String> = self.linked_snapshot();
                        let added: Vec<DeclaredFile> = self
                            .live
                            .iter()
                            .filter(|(f, _)| full || !previous.contains(&f.name))
                            .map(|(f, _)| f.clone())
                            .collect();
                        let removed: Vec<String> = previous.difference(&names).cloned().collect();
                        self.linked.extend(added.iter().map(|f| f.name.clone()));
                        self.rounds.push(RoundRecord {
                            format: MANIFEST_FORMAT,
                            round: self.rounds.len() as u64 + 1,
                            time_ms: 0,
                            engine_format: "sim".into(),
                            complete,
                            first_seqno: Some(0),
                            full,
                            added,
                            removed,
                        });
                    }
                }
            }

            /// The snapshot the last round recorded.
            fn linked_snapshot(&self) -> BTreeSet<String> {
                let mut set = BTreeSet::new();
                for r in &self.rounds {
                    if r.full {
                        set.clear();
                    }
                    set.extend(r.added.iter().map(|f| f.name.clone()));
                    for n in &r.removed {
                        set.remove(n);
                    }
                }
                set
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn restore_says_yes_only_where_the_declared_facts_give_the_history(
                steps in prop::collection::vec(step(), 1..80)
            ) {
                let sim = Sim::after(&steps);
                let coverage = DeclaredCoverage::new(&sim.rounds);
                let top = sim.history.last().map_or(0, |r| r.1) + 2;
                for at in 0..=top {
                    let Ok(plan) = coverage.plan(at) else { continue };
                    let mut records = Vec::new();
                    for name in &plan {
                        prop_assert!(sim.linked.contains(name), "the plan reads only linked files");
                        records.extend(sim.contents[name].iter().copied());
                    }
                    prop_assert_eq!(newest(&records, at), newest(&sim.history, at), "at seqno {}", at);
                }
            }

            /// The prune rule: keeping `needed_from(from)` and the newest
            /// snapshot leaves every seqno at or above `from` restorable
            /// as before, and what is restorable after stays exact.
            #[test]
            fn keeping_what_needed_from_names_leaves_every_plan_above_it_the_same(
                steps in prop::collection::vec(step(), 1..80),
                cut in 0u64..100,
            ) {
                let sim = Sim::after(&steps);
                let before = DeclaredCoverage::new(&sim.rounds);
                let top = sim.history.last().map_or(0, |r| r.1) + 2;
                let from = cut * top / 100;
                let mut keep = before.needed_from(from);
                keep.extend(before.latest_snapshot().iter().cloned());
                let after = DeclaredCoverage::of_present(&sim.rounds, &|n| keep.contains(n));
                for at in from..=top {
                    let plan = after.plan(at);
                    prop_assert_eq!(before.plan(at).is_ok(), plan.is_ok(), "at seqno {} (from {})", at, from);
                    if let Ok(plan) = plan {
                        let records: Vec<Rec> = plan.iter().flat_map(|n| sim.contents[n].iter().copied()).collect();
                        prop_assert_eq!(newest(&records, at), newest(&sim.history, at), "at seqno {}", at);
                    }
                }
            }
        }
    }
}
