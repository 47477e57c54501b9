//! Metrics for a Prometheus scrape (feature `prometheus`).
//!
//! [`ContinuousBackup::register_metrics`](crate::ContinuousBackup::register_metrics)
//! registers one collector into the host's own `prometheus_client`
//! registry. Nothing is global and nothing is counted twice: at each scrape
//! the collector reads the same atomics the status reads. Totals over every
//! store by default; with `register_metrics_per_store`, one series per store
//! (label `kv_store`).
//!
//! The names follow what operators of continuous backup graph: kv_engine's
//! `ep_continuous_backup_callback_count` and `_time`, and Magma's contbk
//! counters (backups, failed backups, hard links, bytes). In the text format
//! a counter's sample carries the OpenMetrics `_total` suffix (and a unit's
//! suffix), e.g. `ep_continuous_backup_callback_count_total` and
//! `ep_continuous_backup_callback_time_seconds_total`.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `ep_continuous_backup_callback_count` | counter | callbacks that returned |
//! | `ep_continuous_backup_callback_time_seconds` | counter | time in callbacks |
//! | `ep_continuous_backup_backups` | counter | rounds that ended (quiet rounds apart) |
//! | `ep_continuous_backup_failed_backups` | counter | rounds that failed |
//! | `ep_continuous_backup_quiet_rounds` | counter | ticks that found nothing new |
//! | `ep_continuous_backup_hard_links` | counter | files linked into backup dirs |
//! | `ep_continuous_backup_linked_bytes` | counter | their bytes |
//! | `ep_continuous_backup_copies` | counter | files copied (a backup dir on another file system) |
//! | `ep_continuous_backup_copied_bytes` | counter | their bytes |
//! | `ep_continuous_backup_metadata_writes` | counter | metadata records made durable |
//! | `ep_continuous_backup_metadata_bytes` | counter | their bytes |
//! | `ep_continuous_backup_restarts` | counter | actors restarted after a failure |
//! | `ep_continuous_backup_prunes`, `_failed_prunes` | counter | the component's own prunes |
//! | `ep_continuous_backup_pruned_files`, `_pruned_bytes` | counter | what they deleted |
//! | `ep_continuous_backup_impossible_events` | counter | lifecycle events that could not come (a bug) |
//! | `ep_continuous_backup_replication_uploaded_files`, `_uploaded_bytes`, `_upload_errors` | counter | uploads to the remote copy |
//! | `ep_continuous_backup_replication_pending_files`, `_pending_bytes` | gauge | queued for upload |
//! | `ep_continuous_backup_replication_oldest_pending_age_seconds` | gauge | the oldest queued file's wait (the maximum, in totals) |
//! | `ep_continuous_backup_stores` | gauge | stores the component has seen (totals only) |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::replication::ReplicationStatus;
use crate::status::{Board, StoreCounters};

/// How the series are labelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Labels {
    /// One series per metric: the sum over stores.
    Totals,
    /// One series per store, label `kv_store`.
    PerStore,
}

/// Registers the collector over `board` into `registry`.
pub(crate) fn register(board: Board, labels: Labels, registry: &mut Registry) {
    registry.register_collector(Box::new(BackupCollector { board, labels }));
}

/// A store counter: its name (without prefix), help, and where it is read.
struct StoreCounter {
    name: &'static str,
    help: &'static str,
    read: fn(&StoreCounters) -> &AtomicU64,
}

const PREFIX: &str = "ep_continuous_backup_";

const STORE_COUNTERS: &[StoreCounter] = &[
    StoreCounter {
        name: "callback_count",
        help: "Backup callbacks that returned",
        read: |c| &c.callbacks,
    },
    StoreCounter {
        name: "backups",
        help: "Backup rounds that ended, failed or not (quiet rounds apart)",
        read: |c| &c.rounds,
    },
    StoreCounter {
        name: "failed_backups",
        help: "Backup rounds that failed",
        read: |c| &c.failed_rounds,
    },
    StoreCounter {
        name: "quiet_rounds",
        help: "Ticks that found nothing new and called no callback",
        read: |c| &c.quiet_rounds,
    },
    StoreCounter {
        name: "hard_links",
        help: "Seqno-index files hard-linked into backup dirs",
        read: |c| &c.files_linked,
    },
    StoreCounter {
        name: "linked_bytes",
        help: "Bytes of the files hard-linked",
        read: |c| &c.bytes_linked,
    },
    StoreCounter {
        name: "copies",
        help: "Files copied because the backup dir is on another file system",
        read: |c| &c.files_copied,
    },
    StoreCounter {
        name: "copied_bytes",
        help: "Bytes of the files copied",
        read: |c| &c.bytes_copied,
    },
    StoreCounter {
        name: "metadata_writes",
        help: "Metadata records made durable",
        read: |c| &c.metadata_writes,
    },
    StoreCounter {
        name: "metadata_bytes",
        help: "Bytes of the metadata records",
        read: |c| &c.metadata_bytes,
    },
    StoreCounter {
        name: "restarts",
        help: "Backup actors restarted after they failed",
        read: |c| &c.restarts,
    },
    StoreCounter {
        name: "prunes",
        help: "Prunes by the configured retention that ran to the end",
        read: |c| &c.prunes,
    },
    StoreCounter {
        name: "failed_prunes",
        help: "Prunes by the configured retention that failed",
        read: |c| &c.failed_prunes,
    },
    StoreCounter {
        name: "pruned_files",
        help: "Files the prunes deleted",
        read: |c| &c.files_pruned,
    },
    StoreCounter {
        name: "pruned_bytes",
        help: "Bytes whose last link the prunes removed",
        read: |c| &c.bytes_pruned,
    },
    StoreCounter {
        name: "impossible_events",
        help: "Lifecycle events that came when they could not (each is logged; a bug)",
        read: |c| &c.impossible_events,
    },
];

/// A replication metric: name, help, type, and its value in a store's status.
struct ReplicaMetric {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    read: fn(&ReplicationStatus) -> u64,
}

const REPLICA_METRICS: &[ReplicaMetric] = &[
    ReplicaMetric {
        name: "replication_uploaded_files",
        help: "Files uploaded to the remote copy",
        kind: MetricType::Counter,
        read: |r| r.uploaded_files,
    },
    ReplicaMetric {
        name: "replication_uploaded_bytes",
        help: "Bytes uploaded to the remote copy",
        kind: MetricType::Counter,
        read: |r| r.uploaded_bytes,
    },
    ReplicaMetric {
        name: "replication_upload_errors",
        help: "Failed uploads and listings, each followed by a backoff",
        kind: MetricType::Counter,
        read: |r| r.upload_errors,
    },
    ReplicaMetric {
        name: "replication_pending_files",
        help: "Files queued for upload",
        kind: MetricType::Gauge,
        read: |r| r.pending_files,
    },
    ReplicaMetric {
        name: "replication_pending_bytes",
        help: "Bytes queued for upload",
        kind: MetricType::Gauge,
        read: |r| r.pending_bytes,
    },
];

const OLDEST_PENDING: &str = "replication_oldest_pending_age_seconds";

/// Reads the board at each scrape.
#[derive(Debug)]
struct BackupCollector {
    board: Board,
    labels: Labels,
}

impl Collector for BackupCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.board.rows();
        let per_store = self.labels == Labels::PerStore;
        // One read of every store's counters for each metric: (kv, value).
        let series = |read: &dyn Fn(&StoreCounters) -> u64| -> Vec<(u16, u64)> {
            rows.iter().map(|r| (r.kv.0, read(&r.counters))).collect()
        };
        for m in STORE_COUNTERS {
            let name = format!("{PREFIX}{}", m.name);
            let values = series(&|c| (m.read)(c).load(Relaxed));
            emit(
                &mut encoder,
                &name,
                m.help,
                None,
                MetricType::Counter,
                per_store,
                &values,
            )?;
        }
        let seconds = Unit::Seconds;
        let nanos = series(&|c| c.callback_nanos.load(Relaxed));
        let secs: Vec<(u16, f64)> = nanos.iter().map(|(kv, n)| (*kv, *n as f64 / 1e9)).collect();
        emit(
            &mut encoder,
            &format!("{PREFIX}callback_time"),
            "Time spent in backup callbacks",
            Some(&seconds),
            MetricType::Counter,
            per_store,
            &secs,
        )?;

        let replicas: Vec<(u16, ReplicationStatus)> = rows
            .iter()
            .filter_map(|r| Some((r.kv.0, r.replica.as_ref()?.status())))
            .collect();
        for m in REPLICA_METRICS {
            let values: Vec<(u16, u64)> = replicas.iter().map(|(kv, s)| (*kv, (m.read)(s))).collect();
            emit(
                &mut encoder,
                &format!("{PREFIX}{}", m.name),
                m.help,
                None,
                m.kind,
                per_store,
                &values,
            )?;
        }
        let ages: Vec<(u16, f64)> = replicas
            .iter()
            .map(|(kv, s)| (*kv, s.oldest_pending_age.map_or(0.0, |a| a.as_secs_f64())))
            .collect();
        let name = format!("{PREFIX}{OLDEST_PENDING}");
        let help = "How long the oldest file queued for upload has waited (0: none)";
        if per_store {
            emit(&mut encoder, &name, help, None, MetricType::Gauge, true, &ages)?;
        } else {
            let oldest = ages.iter().map(|(_, a)| *a).fold(0.0, f64::max);
            let metric = encoder.encode_descriptor(&name, help, None, MetricType::Gauge)?;
            ConstGauge::new(oldest).encode(metric)?;
            let stores = format!("{PREFIX}stores");
            let metric = encoder.encode_descriptor(
                &stores,
                "KV stores the component has seen",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(rows.len() as i64).encode(metric)?;
        }
        Ok(())
    }
}

/// A value a series can hold, summed for totals.
trait Sample: Copy + std::fmt::Debug {
    /// The sum of `values` (0 for none; an f64 sum of nothing is -0.0).
    fn total(values: impl Iterator<Item = Self>) -> Self;

    fn encode_as(
        self,
        kind: MetricType,
        encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result;
}

impl Sample for u64 {
    fn total(values: impl Iterator<Item = Self>) -> Self {
        values.fold(0, u64::saturating_add)
    }

    fn encode_as(
        self,
        kind: MetricType,
        encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        match kind {
            MetricType::Counter => ConstCounter::new(self).encode(encoder),
            _ => ConstGauge::new(i64::try_from(self).unwrap_or(i64::MAX)).encode(encoder),
        }
    }
}

impl Sample for f64 {
    fn total(values: impl Iterator<Item = Self>) -> Self {
        values.fold(0.0, |a, b| a + b)
    }

    fn encode_as(
        self,
        kind: MetricType,
        encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        match kind {
            MetricType::Counter => ConstCounter::new(self).encode(encoder),
            _ => ConstGauge::new(self).encode(encoder),
        }
    }
}

/// One metric: a descriptor, then the total or one sample per store.
fn emit<V: Sample>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    per_store: bool,
    values: &[(u16, V)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, kind)?;
    if per_store {
        for (kv, value) in values {
            let labels = [("kv_store", *kv)];
            value.encode_as(kind, family.encode_family(&labels)?)?;
        }
        Ok(())
    } else {
        V::total(values.iter().map(|(_, v)| *v)).encode_as(kind, family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::KvId;

    fn scrape(board: &Board, labels: Labels) -> String {
        let mut registry = Registry::default();
        register(board.clone(), labels, &mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn totals_add_up_every_store_and_are_read_at_scrape_time() {
        let board = Board::default();
        StoreCounters::add(&board.counters(KvId(1)).callbacks, 3);
        StoreCounters::add(&board.counters(KvId(2)).callbacks, 4);
        StoreCounters::add(&board.counters(KvId(2)).callback_nanos, 1_500_000_000);
        let text = scrape(&board, Labels::Totals);
        assert_eq!(
            sample(&text, "ep_continuous_backup_callback_count_total"),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, "ep_continuous_backup_callback_time_seconds_total"),
            Some(1.5)
        );
        assert_eq!(sample(&text, "ep_continuous_backup_stores"), Some(2.0));
        assert!(!text.contains("kv_store="), "no per-store series unless asked");
        assert_eq!(
            sample(&text, "ep_continuous_backup_replication_uploaded_files_total"),
            Some(0.0)
        );
        assert!(!text.contains("-0"), "no negative zero: {text}");
        StoreCounters::add(&board.counters(KvId(1)).callbacks, 1);
        let later = scrape(&board, Labels::Totals);
        assert_eq!(
            sample(&later, "ep_continuous_backup_callback_count_total"),
            Some(8.0)
        );
    }

    #[test]
    fn per_store_series_carry_the_store_id() {
        let board = Board::default();
        StoreCounters::add(&board.counters(KvId(12)).files_linked, 5);
        StoreCounters::add(&board.counters(KvId(3)).files_linked, 2);
        let text = scrape(&board, Labels::PerStore);
        assert_eq!(
            sample(&text, "ep_continuous_backup_hard_links_total{kv_store=\"12\"}"),
            Some(5.0)
        );
        assert_eq!(
            sample(&text, "ep_continuous_backup_hard_links_total{kv_store=\"3\"}"),
            Some(2.0)
        );
    }
}
