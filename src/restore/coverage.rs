//! Which seqnos a backup can restore exactly.
//!
//! A restore to S needs every version of every key written at or below S
//! that is still the newest at S. Three things can keep a backup from
//! having it:
//!
//! - S lies outside the seqnos its files cover;
//! - S lies at or past a *gap*, seqnos no file covers, whose versions are
//!   unknown;
//! - S lies inside the range of a *lossy* file (one that does not hold every
//!   version of its range, such as a compaction output) and the versions it
//!   dropped between its low seqno and S are in no file that holds every
//!   version. A compaction output keeps the newest version of each key over
//!   its whole range, so it answers exactly at its high seqno and above, not
//!   in between.
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
    /// The file covering `low..=high` (index `file` in the input) dropped
    /// versions, and no file holding every version covers `missing_from`.
    Lossy {
        /// Index of the lossy file in the list given to [`Coverage::new`].
        file: usize,
        /// Its low seqno.
        low: u64,
        /// Its high seqno.
        high: u64,
        /// The first seqno of its range whose versions no complete file holds.
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

/// `ranges` merged into sorted, disjoint, non-adjacent inclusive ranges.
fn union(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
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

/// `from` minus every range of `cut`, both sorted and disjoint.
fn subtract(from: &[(u64, u64)], cut: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut low, high) in from {
        for &(c_low, c_high) in cut {
            if c_high < low || c_low > high {
                continue;
            }
            if c_low > low {
                out.push((low, c_low - 1));
            }
            if c_high >= high {
                low = u64::MAX;
                break;
            }
            low = c_high + 1;
        }
        if low <= high {
            out.push((low, high));
        }
    }
    out
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
        let gaps = coverage_gaps(&ranges);
        // A restore must start from the lowest seqno, so nothing past the
        // first gap is exact.
        let mut restorable = match (lowest, gaps.first()) {
            (Some(lowest), Some(gap)) => vec![(lowest, gap.0 - 1)],
            (Some(lowest), None) => vec![(lowest, highest.unwrap_or(lowest))],
            (None, _) => Vec::new(),
        };
        let lossy: Vec<(u64, u64)> = union(files.iter().filter(|f| !f.holds_every_version).filter_map(|f| {
            let missing_from = first_uncovered(&complete, f.low_seqno);
            (missing_from < f.high_seqno).then(|| (missing_from, f.high_seqno - 1))
        }));
        restorable = subtract(&restorable, &lossy);
        Coverage {
            lowest,
            highest,
            gaps,
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
        for (i, f) in self.files.iter().enumerate() {
            if f.holds_every_version || seqno < f.low_seqno || seqno >= f.high_seqno {
                continue;
            }
            let missing_from = first_uncovered(&self.complete, f.low_seqno);
            if missing_from <= seqno {
                return Err(Unrestorable::Lossy {
                    file: i,
                    low: f.low_seqno,
                    high: f.high_seqno,
                    missing_from,
                });
            }
        }
        Ok(())
    }
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
    fn an_empty_backup_restores_nothing() {
        let c = Coverage::new(Vec::new());
        assert_eq!(c.restorable, vec![]);
        assert_eq!(c.check(1), Err(Unrestorable::Empty));
    }
}
