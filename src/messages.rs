//! The component's public control messages, all handled by the
//! [`Supervisor`](crate::Supervisor): who sends them, how, and in what order
//! they are handled. The internal messages live beside the actor that
//! handles them (`linker.rs`, `backup.rs`, `metadata.rs`, `pruner.rs`).
//!
//! Public messages go to the [`Supervisor`](crate::Supervisor); the storage
//! server sends them with `send().await` (or through
//! [`ContinuousBackup`](crate::ContinuousBackup)). The supervisor handles them
//! one at a time in arrival order, so the last vBucket state sent for a store
//! is the one that holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use serde::{Deserialize, Serialize};

use crate::callback::BackupCallback;
use crate::engine::KvId;
use crate::error::Result;
use crate::status::Status;

/// Start backing up one KV store into `dir`: link every seqno-index file now,
/// call `callback`, and repeat every `interval` with what is new.
///
/// Replies once the backup dir is open and the first round is under way
/// (not finished). Starting a store that already backs up into the same dir
/// is a no-op; into another dir, [`Error::AlreadyRunning`](crate::Error).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct StartBackup {
    /// The store.
    pub kv: KvId,
    /// Its backup dir: absolute, used by no other store, outside the
    /// engine's data dir. Created (mode 0700) if missing.
    pub dir: PathBuf,
    /// Called every round.
    pub callback: Arc<dyn BackupCallback>,
    /// Time between rounds; `None` takes the configured default.
    pub interval: Option<Duration>,
    /// An object-store URL (`s3://bucket/node1/17`, `file:///mnt/far/17`)
    /// to replicate the backup dir to, with the uploader settings of
    /// [`Config::replication`](crate::Config); `None`: not replicated.
    pub replicate_to: Option<String>,
}

/// Stop backing up one KV store. With `final_round`, one more full round runs
/// first (waiting for one in flight), as a storage server does before it
/// deletes a vBucket. Without it, a round in flight is abandoned (its files
/// stay in the backup dir; a running callback finishes on its pool thread).
/// Replies when the store's metadata writer is closed: writes after that
/// fail with [`Error::BackupStopped`](crate::Error).
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct StopBackup {
    /// The store.
    pub kv: KvId,
    /// Whether to run one last round before stopping.
    pub final_round: bool,
}

/// The state of a vBucket, as the storage server's state machine has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VbucketState {
    /// Takes writes: backed up.
    Active,
    /// Follows an active copy elsewhere: not backed up here.
    Replica,
    /// Being moved: not backed up.
    Pending,
    /// Going away: not backed up.
    Dead,
}

/// A vBucket changed state. `Active` starts its backup into
/// `<backup_root>/<kv_id>` with the configured callback factory and interval;
/// any other state stops it (no final round). Repeats are no-ops.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<()>")]
pub struct SetVbucketState {
    /// The vBucket's KV store.
    pub kv: KvId,
    /// Its new state.
    pub state: VbucketState,
}

/// Asks for the status of every store seen so far.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Status")]
pub struct GetStatus;

/// Stops every store (no final round) and replies when all metadata writers
/// are closed. Stop the actix `System` after it.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;
