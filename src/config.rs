//! Configuration of the component, validated once at start.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backup::schedule::MAX_STEP;
use crate::error::{Error, Result};
use crate::fs::Modes;
use crate::replication::ReplicationConfig;
use crate::restore::Consolidate;
use crate::retention::Retention;

/// How the component runs. Every field has a default (see [`Config::default`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root of the backup dirs of vBucket-driven backups: a vBucket that
    /// becomes active backs up into `<backup_root>/<kv_id>`. Default: none,
    /// and then an `Active` vBucket state is refused with [`Error::Config`].
    pub backup_root: Option<PathBuf>,
    /// Time between two rounds of one store, when start names none.
    /// Default: 120 s, as production engines use.
    pub interval: Duration,
    /// Longest wait between retries of a store whose rounds keep failing:
    /// the wait doubles from `interval` with each failure in a row, up to
    /// this (never below `interval`). Default: 10 min.
    pub max_backoff: Duration,
    /// Threads of the `LinkerActor` pool that do every link and fsync of a
    /// round. Their work waits on the disk's flushes more than on a core,
    /// so more threads than cores overlap those flushes. Default: 4 (at
    /// 1024 stores on 2 cores: about 1.25x the initial link rate of 2
    /// threads, and a lower p99 latency excess in most runs, for about 150
    /// bytes more RSS per idle store; see BENCHMARKS.md).
    pub linker_threads: usize,
    /// Threads that write metadata files. Each backup dir always goes to the
    /// same one, which keeps its writes in call order and its numbering
    /// without reuse; dirs on different threads fsync in parallel, which a
    /// journaling file system commits together. Default: 4.
    pub metadata_threads: usize,
    /// Most threads that run callbacks. Calls of one store run one at a
    /// time, on whichever thread is free; a blocked callback holds one
    /// thread, and up to this many stores may block before the others
    /// wait. Threads are started when needed and end after 5 s idle (one
    /// is kept). Default: 64.
    pub callback_threads: usize,
    /// A callback running longer than this is logged (once per call) and
    /// shows in its store's status as `callback_running_for`. Default: 60 s.
    pub callback_watchdog: Duration,
    /// Permission bits of the backup dirs (and missing parents) the
    /// component creates; must include `0o700`. Default: `0o700`.
    pub dir_mode: u32,
    /// Permission bits of the files it creates (metadata files, copies);
    /// must include `0o600`. Default: `0o600`.
    pub file_mode: u32,
    /// Whether the callback is called on a round that found nothing new
    /// (with an empty list), as a heartbeat. Default: true. With false, a
    /// round with nothing new and nothing unacknowledged calls no callback,
    /// and when the engine gives [`Engine::generation`](crate::Engine::generation)
    /// it costs no thread hop at all: one timer of the component for every
    /// such store compares one number per due store, without waking the
    /// store's actor, and moves its tick one interval on. Explicit rounds (a final round) always call
    /// the callback, and so does every round of a start until one call
    /// succeeded (the first hands the start its metadata writer).
    pub report_empty_rounds: bool,
    /// Replication of backup dirs to object storage. Off by default (no
    /// URL): the component then uses no network.
    pub replication: ReplicationConfig,
    /// Retention applied by the component to the backup dirs of the stores
    /// it runs: every restore point of the last `keep_for` and/or the last
    /// `keep_rounds` rounds is kept, the rest deleted (the rule of
    /// `cbk prune`). Default: off (neither set): nothing is ever deleted.
    /// A zero is refused (it would keep no restore point).
    pub retention: Retention,
    /// Least time between two prunes of one store, when `retention` is on:
    /// a store is pruned after a successful round once this much passed
    /// since its last prune (and after its first round). Default: 10 min.
    pub prune_every: Duration,
    /// Whether the component's prunes write consolidated bases (see
    /// [`Consolidate`]). Writing one reads the store's whole state at the
    /// window's start into memory on the pruner thread (as a restore
    /// does), so it is opt-in. Default: `Never`.
    pub consolidate: Consolidate,
    /// The grid the stores' ticks are armed on: each tick lands on the
    /// next multiple of this from the component's start (at most an eighth
    /// of the store's interval), so the stores due within one slot are
    /// handled in one wake-up of the component's threads instead of one
    /// each. A tick is at most one slot late; the period stays the
    /// interval. Zero: each tick at its own due time. Default: 10 ms; at
    /// most 1 s.
    pub tick_slot: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backup_root: None,
            interval: Duration::from_secs(120),
            max_backoff: Duration::from_secs(600),
            linker_threads: 4,
            metadata_threads: 4,
            callback_threads: 64,
            callback_watchdog: Duration::from_secs(60),
            dir_mode: 0o700,
            file_mode: 0o600,
            report_empty_rounds: true,
            replication: ReplicationConfig::default(),
            retention: Retention::default(),
            prune_every: Duration::from_secs(600),
            consolidate: Consolidate::Never,
            tick_slot: Duration::from_millis(10),
        }
    }
}

impl Config {
    /// Checks every field against its range.
    pub fn validate(&self) -> Result<()> {
        check_interval(self.interval)?;
        if self.max_backoff > MAX_STEP {
            return Err(Error::Config {
                field: "max_backoff",
                reason: "must be at most 7 days",
            });
        }
        if !(1..=256).contains(&self.linker_threads) {
            return Err(Error::Config {
                field: "linker_threads",
                reason: "must be between 1 and 256",
            });
        }
        if !(1..=64).contains(&self.metadata_threads) {
            return Err(Error::Config {
                field: "metadata_threads",
                reason: "must be between 1 and 64",
            });
        }
        if !(1..=4096).contains(&self.callback_threads) {
            return Err(Error::Config {
                field: "callback_threads",
                reason: "must be between 1 and 4096",
            });
        }
        if self.tick_slot > Duration::from_secs(1) {
            return Err(Error::Config {
                field: "tick_slot",
                reason: "must be at most 1 s",
            });
        }
        if self.callback_watchdog.is_zero() {
            return Err(Error::Config {
                field: "callback_watchdog",
                reason: "must be above zero",
            });
        }
        if self.dir_mode > 0o777 || self.dir_mode & 0o700 != 0o700 {
            return Err(Error::Config {
                field: "dir_mode",
                reason: "must be permission bits (at most 0o777) that include 0o700",
            });
        }
        if self.file_mode > 0o777 || self.file_mode & 0o600 != 0o600 {
            return Err(Error::Config {
                field: "file_mode",
                reason: "must be permission bits (at most 0o777) that include 0o600",
            });
        }
        self.replication.validate()?;
        if let Err(e) = self.retention.validate() {
            return Err(Error::InvalidRetention { reason: e.0 });
        }
        if self.prune_every.is_zero() || self.prune_every > MAX_STEP {
            return Err(Error::Config {
                field: "prune_every",
                reason: "must be above zero and at most 7 days",
            });
        }
        if let Some(root) = &self.backup_root {
            if !root.is_absolute() {
                return Err(Error::Config {
                    field: "backup_root",
                    reason: "must be an absolute path",
                });
            }
            if root
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(Error::Config {
                    field: "backup_root",
                    reason: "must not contain `..` (give the path without it)",
                });
            }
        }
        Ok(())
    }
}

impl Config {
    pub(crate) fn modes(&self) -> Modes {
        Modes {
            dir: self.dir_mode,
            file: self.file_mode,
        }
    }
}

/// Checks a round interval: above zero, at most 7 days.
pub(crate) fn check_interval(interval: Duration) -> Result<()> {
    if interval.is_zero() || interval > MAX_STEP {
        return Err(Error::Config {
            field: "interval",
            reason: "must be above zero and at most 7 days",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.interval, Duration::from_secs(120));
        assert_eq!(c.linker_threads, 4);
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        let zero = Config {
            interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(Error::Config {
                field: "interval",
                ..
            })
        ));
        let no_threads = Config {
            linker_threads: 0,
            ..Config::default()
        };
        assert!(no_threads.validate().is_err());
        let relative = Config {
            backup_root: Some("backups".into()),
            ..Config::default()
        };
        assert!(relative.validate().is_err());
        for (dir_mode, file_mode) in [(0o500, 0o600), (0o700, 0o400), (0o1777, 0o600)] {
            let c = Config {
                dir_mode,
                file_mode,
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{dir_mode:o} {file_mode:o}");
        }
    }
}
