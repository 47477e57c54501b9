//! [`ContinuousBackup`]: the typed handle over the supervisor's address.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, SyncArbiter};

use crate::callback::{BackupCallback, CallbackFactory};
use crate::callback_pool::CallbackPool;
use crate::config::Config;
use crate::engine::{Engine, KvId};
use crate::error::{Error, Result};
use crate::linker::LinkerActor;
use crate::messages::{GetStatus, SetVbucketState, Shutdown, StartBackup, StopBackup, VbucketState};
use crate::metadata::{MetadataActor, ParentSyncs};
use crate::pruner::PruneSchedule;
use crate::replication::Uploader;
use crate::status::{Board, Status};
use crate::supervisor::{Parts, Supervisor};

/// The running component. Cheap to clone; every method is a message to the
/// [`Supervisor`], so the plain actix messages of [`crate::messages`] sent to
/// [`addr`](Self::addr) do the same.
#[derive(Clone)]
pub struct ContinuousBackup {
    addr: Addr<Supervisor>,
    /// What the supervisor counts, read by metrics scrapes.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    board: Board,
}

impl ContinuousBackup {
    /// Starts the actors: the supervisor, the linker pool
    /// (`config.linker_threads` threads), the metadata threads
    /// (`config.metadata_threads`) and, with `config.retention` on, the
    /// pruner thread. Must be called from within a running
    /// actix `System`. `factory` makes the callback of vBucket-driven
    /// backups; without it, `Active` is refused.
    pub fn start(engine: Arc<dyn Engine>, config: Config, factory: Option<CallbackFactory>) -> Result<Self> {
        config.validate()?;
        let linker_engine = Arc::clone(&engine);
        let linker = SyncArbiter::start(config.linker_threads, move || {
            LinkerActor::new(Arc::clone(&linker_engine))
        });
        let modes = config.modes();
        let parents = ParentSyncs::default();
        let metadata = (0..config.metadata_threads)
            .map(|_| {
                let parents = parents.clone();
                Arc::new(SyncArbiter::start(1, move || {
                    MetadataActor::new(modes, parents.clone())
                }))
            })
            .collect();
        let uploader = Uploader::new(config.replication.clone());
        let prune = PruneSchedule::start(&config);
        let callbacks = CallbackPool::new(config.callback_threads, config.callback_watchdog);
        let board = Board::with_callbacks(&callbacks);
        let parts = Parts {
            linker,
            metadata,
            uploader,
            prune,
            board: board.clone(),
            callbacks,
        };
        let supervisor = Supervisor::new(engine, config, factory, parts);
        Ok(ContinuousBackup {
            addr: supervisor.start(),
            board,
        })
    }

    /// The supervisor's address, for sending the messages directly.
    pub fn addr(&self) -> &Addr<Supervisor> {
        &self.addr
    }

    /// Starts backing up `kv` into `dir` (see [`StartBackup`]).
    pub async fn start_backup(
        &self,
        kv: KvId,
        dir: impl Into<PathBuf>,
        callback: Arc<dyn BackupCallback>,
        interval: Option<Duration>,
    ) -> Result<()> {
        self.send_start(kv, dir.into(), None, callback, interval).await
    }

    /// Starts backing up `kv` into `dir`, and replicating `dir` to the
    /// object-store URL `remote` (see [`StartBackup::replicate_to`]).
    pub async fn start_replicated_backup(
        &self,
        kv: KvId,
        dir: impl Into<PathBuf>,
        remote: &str,
        callback: Arc<dyn BackupCallback>,
        interval: Option<Duration>,
    ) -> Result<()> {
        self.send_start(kv, dir.into(), Some(remote.to_string()), callback, interval)
            .await
    }

    async fn send_start(
        &self,
        kv: KvId,
        dir: PathBuf,
        replicate_to: Option<String>,
        callback: Arc<dyn BackupCallback>,
        interval: Option<Duration>,
    ) -> Result<()> {
        let msg = StartBackup {
            kv,
            dir,
            callback,
            interval,
            replicate_to,
        };
        self.addr.send(msg).await.map_err(|_| Error::ComponentStopped)?
    }

    /// Stops backing up `kv`, optionally after one final round (see
    /// [`StopBackup`]).
    pub async fn stop_backup(&self, kv: KvId, final_round: bool) -> Result<()> {
        let msg = StopBackup { kv, final_round };
        self.addr.send(msg).await.map_err(|_| Error::ComponentStopped)?
    }

    /// Tells the component a vBucket's new state (see [`SetVbucketState`]).
    pub async fn set_vbucket_state(&self, kv: KvId, state: VbucketState) -> Result<()> {
        let msg = SetVbucketState { kv, state };
        self.addr.send(msg).await.map_err(|_| Error::ComponentStopped)?
    }

    /// The status of every store seen so far.
    pub async fn status(&self) -> Result<Status> {
        self.addr
            .send(GetStatus)
            .await
            .map_err(|_| Error::ComponentStopped)
    }

    /// Registers the component's metrics into the host's `registry`
    /// (nothing global): a collector that reads the live counters at scrape
    /// time, totals over every store the component has seen. See
    /// [`crate::metrics`] for the names.
    #[cfg(feature = "prometheus")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        crate::metrics::register(self.board.clone(), crate::metrics::Labels::Totals, registry);
    }

    /// As [`register_metrics`](Self::register_metrics), with one series
    /// per store (label `kv_store`) instead of totals: 1024 stores make
    /// about 20,000 series, so only if the host wants them.
    #[cfg(feature = "prometheus")]
    pub fn register_metrics_per_store(&self, registry: &mut prometheus_client::registry::Registry) {
        crate::metrics::register(self.board.clone(), crate::metrics::Labels::PerStore, registry);
    }

    /// Stops every store; returns when their metadata writers are closed
    /// and pending uploads are done (or `replication.drain_timeout` passed).
    pub async fn shutdown(&self) -> Result<()> {
        self.addr
            .send(Shutdown)
            .await
            .map_err(|_| Error::ComponentStopped)
    }
}
