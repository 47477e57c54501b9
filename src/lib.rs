//! Continuous, incremental, hard-link based backup per KV store for an LSM
//! storage engine, as an actix actor-system component.
//!
//! A storage server starts the component inside its actix `System`, then
//! drives it with vBucket state messages (or explicit start and stop). For
//! each running KV store, every seqno-index file is hard-linked into the
//! store's backup dir at once and then, every interval, the files that are
//! new; a callback is told of each round's files and gets a
//! [`MetadataWriter`] that stores `metadata.<n>.dat` records durably. Nothing
//! in a backup dir is overwritten, and nothing is deleted unless a retention
//! ([`Config::retention`], `cbk prune`) lets go of restore points older than
//! its window, so the dir plus its metadata is a replayable history of the
//! store.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use continuous_backup::{callback, Config, ContinuousBackup, KvId, refengine::RefEngine};
//!
//! let tmp = tempfile::tempdir().unwrap();
//! let engine = RefEngine::open(tmp.path().join("data")).unwrap();
//! engine.put(KvId(3), b"key", b"value").unwrap();
//! engine.flush(KvId(3)).unwrap();
//!
//! let backup_dir = tmp.path().join("backup/3");
//! actix::System::new().block_on(async {
//!     let backup = ContinuousBackup::start(Arc::new(engine), Config::default(), None).unwrap();
//!     let (tx, rx) = std::sync::mpsc::channel();
//!     let cb = callback(move |kv, _snapshot, files, metadata| {
//!         let n = metadata.write(&format!("{} files", files.len()))?;
//!         tx.send((kv, files.to_vec(), n)).ok();
//!         Ok(())
//!     });
//!     backup.start_backup(KvId(3), &backup_dir, cb, Some(Duration::from_millis(50))).await.unwrap();
//!     let (kv, files, n) = actix_rt::task::spawn_blocking(move || rx.recv().unwrap()).await.unwrap();
//!     assert_eq!((kv, files.len(), n), (KvId(3), 1, 1));
//!     backup.stop_backup(KvId(3), false).await.unwrap();
//! });
//! assert!(backup_dir.join("metadata.1.dat").exists());
//! ```
//!
//! `ARCHITECTURE.md` in the repository maps the actors, one round step by
//! step, the file formats and the invariants.

#![warn(missing_docs)]

mod backoff;
mod backup;
mod backup_file;
mod callback;
mod callback_pool;
mod config;
mod dir_lock;
mod dir_sync;
mod engine;
mod error;
#[cfg(feature = "failpoints")]
pub mod faults;
#[cfg(not(feature = "failpoints"))]
mod faults;
mod fs;
mod handle;
mod kv_id;
mod linker;
#[cfg(feature = "lsm-tree")]
pub mod lsm;
pub mod manifest;
pub mod messages;
mod metadata;
#[cfg(feature = "prometheus")]
pub mod metrics;
mod pin;
mod pruner;
mod record;
pub mod refengine;
pub mod replication;
pub mod restore;
pub mod retention;
mod round_state;
mod status;
mod supervisor;

pub use callback::{callback, BackupCallback, BackupFile, CallbackFactory};
pub use config::Config;
pub use engine::{check_seqno, Engine, Holds, IndexFile, KvId, Snapshot, MAX_SEQNO};
pub use error::{CallbackError, Error, Result};
pub use handle::ContinuousBackup;
pub use messages::{GetStatus, SetVbucketState, Shutdown, StartBackup, StopBackup, VbucketState};
pub use metadata::{metadata_file_name, parse_metadata_file_name, MetadataWriter, MAX_METADATA_LEN};
pub use record::Record;
pub use replication::{RemoteUrl, ReplicationConfig, ReplicationStatus};
pub use status::{Status, StoreStatus};
pub use supervisor::Supervisor;
