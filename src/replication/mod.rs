//! Off-node replication: each store's backup dir is copied to object
//! storage (S3 and S3-compatible servers, GCS, Azure, a local dir) through
//! the `object_store` crate, so a node can be rebuilt from the remote copy
//! alone.
//!
//! Layout of one store's remote dir `<url>` (for vBucket-driven backups
//! `<replication.url>/<kv_id>`, mirroring `<backup_root>/<kv_id>`):
//!
//! ```text
//! <url>/<name>                               every file of the backup dir, whole
//! <url>/.cbk-sums/<name>.<len>.<crc32c hex>  its sidecar: length and CRC-32C
//! <url>/prune.<p>.json                       the remote's own prune records (see `prunes`)
//! ```
//!
//! The sidecar is written before the object, so every object has one; its
//! name carries the sums so that one listing tells what the remote holds.
//! A `metadata.<n>.dat` is uploaded only after every file queued before it
//! (a barrier in the upload queue), which keeps the remote copy restorable at every moment.

#[cfg(feature = "replication")]
mod client;
#[cfg(not(feature = "replication"))]
mod off;
#[cfg(feature = "replication")]
pub(crate) mod prunes;
// Without replication its consumer, the uploader, is compiled out.
#[cfg_attr(not(feature = "replication"), allow(dead_code))]
pub(crate) mod queue;
#[cfg(feature = "replication")]
pub(crate) mod uploader;

#[cfg(feature = "replication")]
pub(crate) use client::{blocking, on_own_runtime};
#[cfg(feature = "replication")]
pub use client::{RemoteUrl, Sums};
#[cfg(not(feature = "replication"))]
pub use off::RemoteUrl;
#[cfg(not(feature = "replication"))]
pub(crate) use off::Uploader;
#[cfg(feature = "replication")]
pub(crate) use uploader::Uploader;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use queue::ReplicationStatus;

/// The sub-dir of a store's remote dir that holds the sidecars.
pub const SUMS_DIR: &str = ".cbk-sums";

/// Replication settings of the component. Off by default: nothing is
/// uploaded and no network is used until a URL is given, here (for
/// vBucket-driven backups) or in a [`StartBackup`](crate::StartBackup).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Root URL of the remote copies of vBucket-driven backups: store `kv`
    /// goes to `<url>/<kv>`. For example `s3://bucket/node1`,
    /// `gs://bucket/node1`, `az://container/node1`, `file:///mnt/far/node1`.
    /// Default: none (vBucket-driven backups are not replicated).
    pub url: Option<String>,
    /// Options of the object store client, added to what the environment
    /// gives (`AWS_*`, `GOOGLE_*`, `AZURE_*`): for example
    /// `aws_endpoint`, `aws_allow_http`, `aws_region`. Keys are
    /// `object_store`'s configuration keys.
    pub options: BTreeMap<String, String>,
    /// Uploads in flight at once, over every store. Default: 8.
    pub concurrency: usize,
    /// Files waiting per store before the queue is full. A full queue never
    /// blocks a round: what does not fit is found again by a rescan of the
    /// backup dir once the queue has drained. Default: 4096.
    pub queue_capacity: usize,
    /// Files at least this long go up as a multipart upload. Default: 16 MiB.
    pub multipart_threshold: u64,
    /// Size of one part of a multipart upload (at least 5 MiB, as S3
    /// requires). Default: 8 MiB.
    pub part_size: u64,
    /// Upload rate limit in bytes per second, over every store; none: no
    /// limit. Default: none.
    pub max_bytes_per_sec: Option<u64>,
    /// Bytes of file contents the uploads may hold in memory at once, over
    /// every store: a file below `multipart_threshold` is read whole, a
    /// larger one a part at a time, and each waits for its bytes of this
    /// before it reads them and gives them back once they are sent. The
    /// bound is exact when it is at least `multipart_threshold` (the
    /// default is); below that, a file longer than it takes the whole of it
    /// and is read alone. Between 1 byte and 4 GiB - 1. Default: 64 MiB
    /// (`concurrency` × `part_size` of the defaults).
    pub max_upload_memory: u64,
    /// First wait after a failed upload; it doubles with each failure in a
    /// row. Default: 500 ms.
    pub retry_initial: Duration,
    /// Longest wait between two attempts. Default: 60 s.
    pub retry_max: Duration,
    /// How long [`Shutdown`](crate::Shutdown) waits for pending uploads;
    /// what is left is found again at the next start. Default: 10 s.
    pub drain_timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            url: None,
            options: BTreeMap::new(),
            concurrency: 8,
            queue_capacity: 4096,
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            max_bytes_per_sec: None,
            max_upload_memory: 64 << 20,
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// S3's smallest part (all but the last).
const MIN_PART: u64 = 5 << 20;

impl ReplicationConfig {
    /// Checks every field against its range, and the URL's form.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::Config { field, reason });
        if !(1..=256).contains(&self.concurrency) {
            return bad("replication.concurrency", "must be between 1 and 256");
        }
        if !(1..=1 << 20).contains(&self.queue_capacity) {
            return bad("replication.queue_capacity", "must be between 1 and 2^20");
        }
        if !(MIN_PART..=5 << 30).contains(&self.part_size) {
            return bad("replication.part_size", "must be between 5 MiB and 5 GiB");
        }
        if self.multipart_threshold < self.part_size {
            return bad("replication.multipart_threshold", "must be at least part_size");
        }
        if !(1..=u64::from(u32::MAX)).contains(&self.max_upload_memory) {
            return bad(
                "replication.max_upload_memory",
                "must be between 1 byte and 4 GiB - 1 (64 MiB by default)",
            );
        }
        if self.max_bytes_per_sec == Some(0) {
            return bad("replication.max_bytes_per_sec", "must be above zero (or none)");
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return bad(
                "replication.retry_initial",
                "must be above zero and at most retry_max",
            );
        }
        if let Some(url) = &self.url {
            RemoteUrl::parse(url)?;
        }
        Ok(())
    }
}
