//! Which seqnos a backup can restore exactly.
//!
//! A restore to S needs every version of every key written at or below S
//! that is still the newest at S. Three things can keep a backup from
//! having it:
//!
//! - S lies outside the seqnos its files cover;
//! - S lies at or past a *gap*, seqnos no file covers, whose versions are
//!   unknown;
//! - the versions written between the lowest seqno and S are held only by
//!   *lossy* files (ones that do not hold every version of their range, such
//!   as compaction outputs), which dropped some of them.
//!
//! The exact points are worked out as a closure. The state before the lowest
//! seqno is known (empty). From a seqno x whose state is known, the files
//! that hold every version take it to any y their ranges cover without a
//! break from x + 1; and a lossy file covering `low..=high` with
//! `low - 1 <= x <= high` takes it to `high` (it holds the newest version of
//! every key written in its range). By induction, for every key the newest
//! version at or below such a point is in some file, so reading every file
//! and keeping each key's newest version at or below S is exact, and only
//! there. A compaction output alone is therefore exact at its high seqno,
//! not inside its range, unless its inputs' versions were backed up too.
//!
//! [`Coverage`] works this out from each file's range and whether it holds
//! every version, which a [`RecordReader`](super::RecordReader) gives from
//! the footer alone.

use serde::Serialize;

/// What a backed-up file covers, as far as restore is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileCoverage {
    /// Lowest seqno the file covers.
    pub low_seqno: u64,
    /// Highest seqno the file covers.
    pub high_seqno: u64,
    /// Whether it holds every version written in its range (false for a
    /// compaction output that dropped older versions).
    pub holds_every_version: bool,
}

/// Why a seqno cannot be restored exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unrestorable {
    /// The backup holds no file.
    Empty,
    /// The seqno is outside `lowest..=highest`.
    Outside {
        /// The lowest seqno covered.
        lowest: u64,
        /// The highest seqno covered.
        highest: u64,
    },
    /// No file covers `from..=to`, at or below the seqno.
    Gap {
        /// First seqno of the gap.
        from: u64,
        /// Last seqno of the gap.
        to: u64,
    },
    /// The versions from `missing_from` up to the seqno are held only by
    /// lossy files, such as file `file` (covering `low..=high`), which kept
    /// only the newest version of each key.
    Lossy {
        /// Index of that lossy file in the list given to [`Coverage::new`].
        file: usize,
        /// Its low seqno.
        low: u64,
        /// Its high seqno.
        high: u64,
        /// The first seqno whose versions no file holding every version has.
        missing_from: u64,
    },
}

/// The exact restore points of one store's backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// The lowest seqno covered, if any file exists.
    pub lowest: Option<u64>,
    /// The highest seqno covered, if any file exists.
    pub highest: Option<u64>,
    /// Inclusive seqno ranges between files that no file covers.
    pub gaps: Vec<(u64, u64)>,
    /// Inclusive seqno ranges a restore gives exactly, in increasing order.
    pub restorable: Vec<(u64, u64)>,
    #[serde(skip)]
    files: Vec<FileCoverage>,
    #[serde(skip)]
    complete: Vec<(u64, u64)>,
}

/// `ranges` as `a..=b, c..=d`, or `none`.
pub(super) fn list(ranges: &[(u64, u64)]) -> String {
    if ranges.is_empty() {
        return "none".into();
    }
    let shown: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}..={b}")).collect();
    shown.join(", ")
}

/// `ranges` merged into sorted, disjoint, non-adjacent inclusive ranges.
pub(super) fn union(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = ranges.into_iter().collect();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (low, high) in sorted {
        match out.last_mut() {
            Some(last) if low <= last.1.saturating_add(1) => last.1 = last.1.max(high),
            _ => out.push((low, high)),
        }
    }
    out
}

/// The first seqno at or above `from` that `covered` (as [`union`] gives it)
/// does not contain.
fn first_uncovered(covered: &[(u64, u64)], from: u64) -> u64 {
    covered
        .iter()
        .find(|(low, high)| *low <= from && from <= *high)
        .map_or(from, |(_, high)| high.saturating_add(1))
}

/// The gaps in the seqno coverage of `ranges` between its lowest and highest
/// seqno, as inclusive ranges.
pub fn coverage_gaps(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    union(ranges.iter().copied())
        .windows(2)
        .map(|w| (w[0].1 + 1, w[1].0 - 1))
        .collect()
}

impl Coverage {
    /// The coverage of a store whose backup holds `files`.
    pub fn new(files: Vec<FileCoverage>) -> Coverage {
        let ranges: Vec<(u64, u64)> = files.iter().map(|f| (f.low_seqno, f.high_seqno)).collect();
        let complete = union(
            files
                .iter()
                .filter(|f| f.holds_every_version)
                .map(|f| (f.low_seqno, f.high_seqno)),
        );
        let lowest = ranges.iter().map(|r| r.0).min();
        let highest = ranges.iter().map(|r| r.1).max();
        let restorable = match (lowest, highest) {
            (Some(lowest), Some(highest)) => {
                // Worked out on seqnos shifted up by one, so that the state
                // before a lowest seqno of 0 has a number too.
                let shift = |(low, high): (u64, u64)| (low + 1, high + 1);
                let shifted: Vec<FileCoverage> = files
                    .iter()
                    .map(|f| FileCoverage {
                        low_seqno: f.low_seqno + 1,
                        high_seqno: f.high_seqno + 1,
                        ..*f
                    })
                    .collect();
                let complete_shifted: Vec<(u64, u64)> = complete.iter().copied().map(shift).collect();
                let known = known_states(&shifted, &complete_shifted, lowest);
                intersect(&known, shift((lowest, highest)))
                    .into_iter()
                    .map(|(low, high)| (low - 1, high - 1))
                    .collect()
            }
            _ => Vec::new(),
        };
        Coverage {
            lowest,
            highest,
            gaps: coverage_gaps(&ranges),
            restorable,
            files,
            complete,
        }
    }

    /// Whether a restore to `seqno` is exact, and if not, why.
    pub fn check(&self, seqno: u64) -> Result<(), Unrestorable> {
        let (Some(lowest), Some(highest)) = (self.lowest, self.highest) else {
            return Err(Unrestorable::Empty);
        };
        if seqno < lowest || seqno > highest {
            return Err(Unrestorable::Outside { lowest, highest });
        }
        if let Some(&(from, to)) = self.gaps.iter().find(|g| g.0 <= seqno) {
            return Err(Unrestorable::Gap { from, to });
        }
        if self.restorable.iter().any(|r| r.0 <= seqno && seqno <= r.1) {
            return Ok(());
        }
        // The last known state below `seqno` cannot be carried past
        // `missing_from`: no complete file covers it, and each lossy file
        // that does ends above `seqno` (or the state would be known there).
        // Name the one that ends first: the state is known at its end.
        let missing_from = self
            .restorable
            .iter()
            .filter(|r| r.0 < seqno)
            .map(|r| r.1 + 1)
            .max()
            .unwrap_or(lowest);
        let (file, f) = self
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.holds_every_version && f.low_seqno <= missing_from && seqno < f.high_seqno)
            .min_by_key(|(_, f)| f.high_seqno)
            .expect("a seqno covered without a gap and not known lies in a lossy file");
        Err(Unrestorable::Lossy {
            file,
            low: f.low_seqno,
            high: f.high_seqno,
            missing_from,
        })
    }
}

/// The seqnos whose state is known, from `start` (the state before the
/// lowest seqno): the closure described in the module docs. Lossy files are
/// taken in order of their high seqno, which is enough: a file's step adds
/// only points at or above its high seqno, so it cannot enable a file with a
/// lower one.
fn known_states(files: &[FileCoverage], complete: &[(u64, u64)], start: u64) -> Vec<(u64, u64)> {
    // From a known x, the complete files carry the state to the end of the
    // unbroken run that holds x + 1.
    let carry = |x: u64| {
        (
            x,
            first_uncovered(complete, x.saturating_add(1))
                .saturating_sub(1)
                .max(x),
        )
    };
    let mut known = vec![carry(start)];
    let mut lossy: Vec<&FileCoverage> = files.iter().filter(|f| !f.holds_every_version).collect();
    lossy.sort_by_key(|f| f.high_seqno);
    for f in lossy {
        let from = f.low_seqno.saturating_sub(1);
        if known.iter().any(|k| k.0 <= f.high_seqno && from <= k.1) {
            known.push(carry(f.high_seqno));
            known = union(known);
        }
    }
    known
}

/// The parts of sorted, disjoint `ranges` inside `bounds`.
fn intersect(ranges: &[(u64, u64)], bounds: (u64, u64)) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .filter_map(|&(low, high)| {
            let (low, high) = (low.max(bounds.0), high.min(bounds.1));
            (low <= high).then_some((low, high))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(low: u64, high: u64, holds_every_version: bool) -> FileCoverage {
        FileCoverage {
            low_seqno: low,
            high_seqno: high,
            holds_every_version,
        }
    }

    /// Every seqno `check` accepts is in `restorable`, and the other way round.
    fn agrees(c: &Coverage) {
        let (Some(lowest), Some(highest)) = (c.lowest, c.highest) else {
            return;
        };
        for s in lowest.saturating_sub(2)..=highest + 2 {
            let listed = c.restorable.iter().any(|r| r.0 <= s && s <= r.1);
            assert_eq!(c.check(s).is_ok(), listed, "seqno {s} in {c:?}");
        }
    }

    #[test]
    fn gaps_lie_between_ranges_and_overlaps_close_them() {
        assert_eq!(coverage_gaps(&[(1, 10), (11, 20)]), vec![]);
        assert_eq!(coverage_gaps(&[(11, 20), (1, 5)]), vec![(6, 10)]);
        assert_eq!(coverage_gaps(&[(1, 30), (5, 10), (40, 50)]), vec![(31, 39)]);
        assert_eq!(coverage_gaps(&[]), vec![]);
    }

    #[test]
    fn flushed_files_without_gaps_restore_everywhere() {
        let c = Coverage::new(vec![file(1, 10, true), file(11, 20, true)]);
        assert_eq!(c.restorable, vec![(1, 20)]);
        assert_eq!(
            c.check(21),
            Err(Unrestorable::Outside {
                lowest: 1,
                highest: 20
            })
        );
        agrees(&c);
    }

    #[test]
    fn nothing_at_or_past_a_gap_is_exact() {
        let c = Coverage::new(vec![file(1, 10, true), file(15, 20, true)]);
        assert_eq!(c.restorable, vec![(1, 10)]);
        assert_eq!(c.check(17), Err(Unrestorable::Gap { from: 11, to: 14 }));
        agrees(&c);
    }

    #[test]
    fn a_compaction_output_alone_is_exact_only_at_and_above_its_high_seqno() {
        let c = Coverage::new(vec![file(1, 30, false), file(31, 40, true)]);
        assert_eq!(c.restorable, vec![(30, 40)]);
        assert_eq!(
            c.check(12),
            Err(Unrestorable::Lossy {
                file: 0,
                low: 1,
                high: 30,
                missing_from: 1
            })
        );
        agrees(&c);
    }

    #[test]
    fn a_compaction_output_whose_inputs_were_backed_up_is_exact_everywhere() {
        let c = Coverage::new(vec![file(1, 10, true), file(11, 30, true), file(1, 30, false)]);
        assert_eq!(c.restorable, vec![(1, 30)]);
        agrees(&c);
    }

    #[test]
    fn a_compaction_output_with_one_input_missing_is_exact_up_to_the_missing_input() {
        // Inputs 1..=10 and 21..=30 were backed up, 11..=20 was not.
        let c = Coverage::new(vec![file(1, 10, true), file(21, 30, true), file(1, 30, false)]);
        assert_eq!(c.restorable, vec![(1, 10), (30, 30)]);
        assert_eq!(
            c.check(25),
            Err(Unrestorable::Lossy {
                file: 2,
                low: 1,
                high: 30,
                missing_from: 11
            })
        );
        agrees(&c);
    }

    #[test]
    fn a_later_compaction_over_a_hole_does_not_hide_the_exact_points_after_it() {
        // Backed up 1..=19, then not (20..=40 compacted away unseen), then
        // compaction output 1..=50, then flushes 41..=60, then compaction
        // output 1..=60. State is known at 50 (the first output) and from
        // there on through the flushes.
        let c = Coverage::new(vec![
            file(1, 19, true),
            file(1, 50, false),
            file(41, 60, true),
            file(1, 60, false),
        ]);
        assert_eq!(c.restorable, vec![(1, 19), (50, 60)]);
        assert_eq!(
            c.check(30),
            Err(Unrestorable::Lossy {
                file: 1,
                low: 1,
                high: 50,
                missing_from: 20
            })
        );
        agrees(&c);
    }

    #[test]
    fn a_chain_of_compaction_outputs_is_exact_at_each_high_seqno() {
        // Outputs of partial compactions: 1..=10, then 11..=20, nothing
        // complete at all.
        let c = Coverage::new(vec![file(1, 10, false), file(11, 20, false), file(15, 30, false)]);
        assert_eq!(c.restorable, vec![(10, 10), (20, 20), (30, 30)]);
        agrees(&c);
    }

    #[test]
    fn a_lowest_seqno_of_zero_is_known_only_where_every_version_is() {
        // Seqno 0 is in the lossy file only: a key written at 0 and again
        // at 7 lost its version 0.
        let c = Coverage::new(vec![file(0, 7, false), file(1, 7, true)]);
        assert_eq!(c.restorable, vec![(7, 7)]);
        let c = Coverage::new(vec![file(0, 7, true)]);
        assert_eq!(c.restorable, vec![(0, 7)]);
        agrees(&c);
    }

    #[test]
    fn an_empty_backup_restores_nothing() {
        let c = Coverage::new(Vec::new());
        assert_eq!(c.restorable, vec![]);
        assert_eq!(c.check(1), Err(Unrestorable::Empty));
    }
}
