//! Round manifests: what each round's files declare, recorded in the backup
//! dir so a restore can check it offline, from the dir alone.
//!
//! A round that changes the store's file set (places a file, or sees one
//! leave the snapshot), and the first round of every start, writes
//! `round.<r>.json` before the round's directory fsync: temp file, write,
//! fsync, `RENAME_NOREPLACE`, and then the round's own dir fsync makes the
//! name durable with the round's links. So a round costs at most one fsync
//! more (the manifest file's), and a manifest is never visible without the
//! files it names: both become durable by the same dir fsync, before the
//! callback is told. `r` is 1, 2, 3... per dir, continuing after the largest
//! found when the dir is opened; the time is the wall clock in milliseconds,
//! never earlier than the previous round's (names never come from it).
//!
//! A dir written before manifests existed has none; restore then reads it
//! as it always did.
//!
//! Prune records (`prune.<p>.json`, [`PruneRecord`]) live beside them: what
//! a prune deleted from the dir, and for which retention window.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::{Holds, METADATA_PREFIX, PRUNE_PREFIX, ROUND_PREFIX};
use crate::error::{Error, Result};
use crate::faults::FsyncSite;
use crate::fs::BackupDir;

/// The manifest format this crate writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// The wall clock in milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The file name of round `r`'s manifest.
pub fn round_file_name(r: u64) -> String {
    format!("{ROUND_PREFIX}{r}.json")
}

/// The `r` of a round manifest name the component writes (decimal, from 1,
/// no leading zeros), if `name` is one.
pub fn parse_round_file_name(name: &str) -> Option<u64> {
    parse_numbered(name, ROUND_PREFIX, ".json")
}

/// The number of a name `<prefix><n><suffix>` the component writes
/// (decimal from 1, no leading zeros, below 2^64).
pub(crate) fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One round's record (`round.<r>.json`, one JSON object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The round's number in this dir.
    pub round: u64,
    /// Wall-clock time of the round, milliseconds since the Unix epoch;
    /// never earlier than the previous round's.
    pub time_ms: u64,
    /// The engine's [file format](crate::Engine::file_format).
    pub engine_format: String,
    /// Whether the round's snapshot was
    /// [complete](crate::Snapshot::is_complete): its files are then a base.
    pub complete: bool,
    /// The store's first seqno, if the engine
    /// [declared](crate::Engine::first_seqno) that nothing came before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seqno: Option<u64>,
    /// Whether `added` lists every file of the snapshot (the first round
    /// of a start); otherwise the snapshot is the previous round's, plus
    /// `added`, minus `removed`.
    pub full: bool,
    /// Files placed by this round (or, when `full`, all of the snapshot's).
    pub added: Vec<DeclaredFile>,
    /// Backup-dir names of files that left the snapshot since the previous
    /// round (they stay in the dir).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// One file as a round declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredFile {
    /// Its name in the backup dir.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// The lowest seqno it covers, as declared.
    pub low_seqno: u64,
    /// The highest seqno it covers, as declared.
    pub high_seqno: u64,
    /// What it holds; `None` when the engine declared nothing (then it
    /// counts as [`Holds::Partial`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<Holds>,
}

/// A round record before its number and time are given.
#[derive(Clone, Debug)]
pub(crate) struct RoundFacts {
    pub engine_format: &'static str,
    pub complete: bool,
    pub first_seqno: Option<u64>,
    pub full: bool,
    pub added: Vec<DeclaredFile>,
    pub removed: Vec<String>,
}

/// The round numbering and clock of one backup dir.
#[derive(Debug)]
pub(crate) struct RoundLog {
    next: u64,
    last_time_ms: u64,
}

impl RoundLog {
    /// The log of a dir holding `names` (read when its owner opened it):
    /// continues after the largest round found, and never goes back in
    /// time from its record.
    pub fn open(dir: &BackupDir, names: &[String]) -> Result<RoundLog> {
        let mut found: Vec<u64> = names.iter().filter_map(|n| parse_round_file_name(n)).collect();
        found.sort_unstable();
        let Some(&last) = found.last() else {
            return Ok(RoundLog {
                next: 1,
                last_time_ms: 0,
            });
        };
        // The time of the newest manifest that reads back (one that does
        // not is reported by verify, and restore treats it as missing).
        let mut last_time_ms = 0;
        for r in found.iter().rev() {
            let name = round_file_name(*r);
            match serde_json::from_slice::<RoundRecord>(&dir.read_small(&name)?) {
                Ok(record) => {
                    last_time_ms = record.time_ms;
                    break;
                }
                Err(e) => {
                    tracing::warn!(manifest = %dir.path().join(&name).display(), error = %e, "a round manifest does not read back")
                }
            }
        }
        Ok(RoundLog {
            next: last.checked_add(1).ok_or(Error::InvalidBackupDir {
                path: dir.path().to_path_buf(),
                reason: "it holds a round manifest numbered u64::MAX: no number is left",
            })?,
            last_time_ms,
        })
    }

    /// Writes the round's manifest into `dir` (durable once the round's dir
    /// fsync returns) and returns its name and length. A failure consumes
    /// the number only if the name may have become visible.
    pub fn write(&mut self, dir: &BackupDir, facts: RoundFacts) -> Result<(String, u64)> {
        let now = now_ms();
        let round = self.next;
        let record = RoundRecord {
            format: MANIFEST_FORMAT,
            round,
            time_ms: now.max(self.last_time_ms),
            engine_format: facts.engine_format.to_owned(),
            complete: facts.complete,
            first_seqno: facts.first_seqno,
            full: facts.full,
            added: facts.added,
            removed: facts.removed,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Corrupt {
            path: dir.path().join(round_file_name(round)),
            reason: format!("cannot encode the round manifest: {e}"),
        })?;
        let name = round_file_name(round);
        let written = dir.publish_new_file(&name, &bytes, FsyncSite::RoundManifest);
        if written.is_ok() || dir.exists(&name).unwrap_or(true) {
            // The name (and its time) may be on disk: neither goes back.
            self.next = round.saturating_add(1);
            self.last_time_ms = record.time_ms;
        }
        written?;
        Ok((name, bytes.len() as u64))
    }
}

/// The file name of metadata record `n`.
pub fn metadata_file_name(n: u64) -> String {
    format!("{METADATA_PREFIX}{n}.dat")
}

/// The `n` of a metadata file name, if it is one.
pub fn parse_metadata_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(METADATA_PREFIX)?.strip_suffix(".dat")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The prune record format this crate writes.
pub(crate) const PRUNE_FORMAT: u32 = 1;

/// What one prune deleted (`prune.<p>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRecord {
    /// The record format, 1.
    pub format: u32,
    /// Wall-clock time of the prune, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The first round of the retention window.
    pub window_round: u64,
    /// The oldest seqno the window keeps.
    pub window_seqno: u64,
    /// The backup-dir names it deletes.
    pub deleted: Vec<String>,
    /// The base it wrote before deleting, if it consolidated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<ConsolidatedBase>,
    /// Written by a prune of a remote copy (its marks); records without it
    /// that a remote holds (uploaded by older versions from a backup dir)
    /// are not the remote's and are passed over there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

/// A base a prune wrote: the store's whole state at `seqno` (the newest
/// version of each key at or below it), the state round `round` backed up,
/// in `files` (named [`consolidated_file_name`]), so that the older base
/// and the chain that led to it can go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsolidatedBase {
    /// The round whose state it holds.
    pub round: u64,
    /// That round's own time (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// The highest seqno of that state.
    pub seqno: u64,
    /// Its files, declared `Partial` (only ever read as a whole base).
    pub files: Vec<DeclaredFile>,
}

/// The name of file `k` of the base prune `p` consolidates.
pub fn consolidated_file_name(p: u64, k: u64) -> String {
    format!("{PRUNE_PREFIX}{p}.base.{k}")
}

/// The `(p, k)` of a consolidated base's file name.
pub fn parse_consolidated_file_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(PRUNE_PREFIX)?;
    let (p, k) = rest.split_once(".base.")?;
    let number = |d: &str| {
        (!d.is_empty() && (d == "0" || !d.starts_with('0')) && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.parse().ok())
            .flatten()
    };
    Some((number(p).filter(|p| *p > 0)?, number(k)?))
}

/// The file name of prune record `p`.
pub fn prune_file_name(p: u64) -> String {
    format!("{PRUNE_PREFIX}{p}.json")
}

/// The `p` of a prune record name (decimal from 1, no leading zeros).
pub fn parse_prune_file_name(name: &str) -> Option<u64> {
    parse_numbered(name, PRUNE_PREFIX, ".json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str) -> RoundFacts {
        RoundFacts {
            engine_format: "test",
            complete: true,
            first_seqno: Some(0),
            full: true,
            added: vec![DeclaredFile {
                name: name.to_owned(),
                len: 10,
                low_seqno: 0,
                high_seqno: 5,
                holds: Some(Holds::EveryVersion),
            }],
            removed: vec![],
        }
    }

    #[test]
    fn rounds_number_on_after_a_reopen_and_time_never_goes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = BackupDir::open(tmp.path()).unwrap();
        let mut log = RoundLog::open(&dir, &dir.names().unwrap()).unwrap();
        assert_eq!(log.write(&dir, facts("a")).unwrap().0, "round.1.json");
        dir.sync(FsyncSite::RoundLinks).unwrap();
        // A record from the future (a clock set back since) is not undercut.
        let future = RoundRecord {
            round: 2,
            time_ms: u64::MAX / 2,
            ..serde_json::from_slice(&std::fs::read(tmp.path().join("round.1.json")).unwrap()).unwrap()
        };
        std::fs::write(
            tmp.path().join("round.2.json"),
            serde_json::to_vec(&future).unwrap(),
        )
        .unwrap();
        drop(dir);
        let dir = BackupDir::open(tmp.path()).unwrap();
        let mut log = RoundLog::open(&dir, &dir.names().unwrap()).unwrap();
        assert_eq!(log.write(&dir, facts("b")).unwrap().0, "round.3.json");
        let third: RoundRecord =
            serde_json::from_slice(&std::fs::read(tmp.path().join("round.3.json")).unwrap()).unwrap();
        assert_eq!(third.time_ms, u64::MAX / 2);
        assert_eq!(third.added[0].name, "b");
        assert_eq!(third.added[0].holds, Some(Holds::EveryVersion));
    }

    #[test]
    fn round_names_parse_strictly() {
        assert_eq!(parse_round_file_name("round.12.json"), Some(12));
        for bad in [
            "round.0.json",
            "round.01.json",
            "round..json",
            "round.1.json.tmp",
            "round.x.json",
        ] {
            assert_eq!(parse_round_file_name(bad), None, "{bad}");
        }
    }
}
