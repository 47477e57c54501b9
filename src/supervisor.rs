//! The supervisor: receives the control messages (start, stop, vBucket
//! state, status, shutdown), owns the per-store `BackupActor`s and routes to
//! them.
//!
//! Every control message is handled to completion of its synchronous part
//! before the next: the map of running stores changes at once, in arrival
//! order, so after any burst of vBucket state messages exactly the stores
//! whose last state was `Active` are running. A stopped store's actor drains
//! in the background; a new start of the same store may begin meanwhile (the
//! metadata actor keeps one numbering per dir, and placing files is
//! idempotent, so the two cannot clash).

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backup::{BackupActor, BackupSpec};
use crate::callback::{BackupCallback, CallbackFactory};
use crate::config::Config;
use crate::engine::{Engine, KvId};
use crate::error::{Error, Result};
use crate::linker::LinkerActor;
use crate::messages::{
    BackupEnded, GetStatus, SetVbucketState, Shutdown, StartBackup, StopBackup, StopStore, VbucketState,
};
use crate::metadata::MetadataActor;
use crate::status::{Status, StoreCounters};

struct Running {
    addr: Addr<BackupActor>,
    dir: PathBuf,
    generation: u64,
}

/// Routes control messages to one `BackupActor` per running KV store. Start
/// it through [`ContinuousBackup::start`](crate::ContinuousBackup::start).
pub struct Supervisor {
    engine: Arc<dyn Engine>,
    config: Config,
    factory: Option<CallbackFactory>,
    linker: Addr<LinkerActor>,
    metadata: Addr<MetadataActor>,
    running: HashMap<KvId, Running>,
    counters: BTreeMap<KvId, Arc<StoreCounters>>,
    next_generation: u64,
}

impl Supervisor {
    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        config: Config,
        factory: Option<CallbackFactory>,
        linker: Addr<LinkerActor>,
        metadata: Addr<MetadataActor>,
    ) -> Self {
        Supervisor {
            engine,
            config,
            factory,
            linker,
            metadata,
            running: HashMap::new(),
            counters: BTreeMap::new(),
            next_generation: 1,
        }
    }

    /// Checks a start's arguments without touching the file system.
    fn check_start(&self, kv: KvId, dir: &Path, interval: Duration) -> Result<()> {
        let invalid = |reason| {
            Err(Error::InvalidBackupDir {
                path: dir.to_path_buf(),
                reason,
            })
        };
        if !dir.is_absolute() {
            return invalid("the path is relative; give an absolute path");
        }
        if dir.components().any(|c| matches!(c, Component::ParentDir)) {
            return invalid("the path contains `..`; give it without");
        }
        if let Some(data) = self.engine.data_dir() {
            if dir.starts_with(data) {
                return invalid("it lies inside the engine's data dir; put backups elsewhere");
            }
        }
        if interval.is_zero() {
            return Err(Error::Config {
                field: "interval",
                reason: "must be above zero",
            });
        }
        if let Some((holder, _)) = self.running.iter().find(|(id, r)| **id != kv && r.dir == dir) {
            return Err(Error::BackupDirInUse {
                path: dir.to_path_buf(),
                holder: *holder,
            });
        }
        Ok(())
    }

    fn start_store(
        &mut self,
        kv: KvId,
        dir: PathBuf,
        callback: Arc<dyn BackupCallback>,
        interval: Option<Duration>,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<()>> {
        let interval = interval.unwrap_or(self.config.interval);
        if let Err(e) = self.check_start(kv, &dir, interval) {
            return Box::pin(fut::ready(Err(e)));
        }
        if let Some(r) = self.running.get(&kv) {
            let res = if r.dir == dir {
                Ok(())
            } else {
                Err(Error::AlreadyRunning {
                    kv,
                    dir: r.dir.clone(),
                })
            };
            return Box::pin(fut::ready(res));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let (on_started, started) = oneshot::channel();
        let spec = BackupSpec {
            kv,
            generation,
            dir: dir.clone(),
            interval,
            callback,
            linker: self.linker.clone(),
            metadata: self.metadata.clone(),
            supervisor: ctx.address().recipient(),
            counters: Arc::clone(self.counters.entry(kv).or_default()),
        };
        let addr = BackupActor::new(spec, on_started).start();
        self.running.insert(
            kv,
            Running {
                addr,
                dir,
                generation,
            },
        );
        Box::pin(
            async move { started.await.unwrap_or(Err(Error::ComponentStopped)) }
                .into_actor(self)
                .map(move |res, act, _| {
                    if res.is_err() {
                        act.forget(kv, generation);
                    }
                    res
                }),
        )
    }

    fn stop_store(&mut self, kv: KvId, final_round: bool) -> ResponseActFuture<Self, Result<()>> {
        let Some(running) = self.running.remove(&kv) else {
            return Box::pin(fut::ready(Err(Error::NotRunning { kv })));
        };
        let stopped = running.addr.send(StopStore { final_round });
        // A mailbox error means the actor is already gone: stopped either way.
        Box::pin(async move { stopped.await.map_or(Ok(()), Ok) }.into_actor(self))
    }

    fn forget(&mut self, kv: KvId, generation: u64) {
        if self.running.get(&kv).is_some_and(|r| r.generation == generation) {
            self.running.remove(&kv);
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        tracing::info!(
            linker_threads = self.config.linker_threads,
            "continuous backup started"
        );
    }
}

impl Handler<StartBackup> for Supervisor {
    type Result = ResponseActFuture<Self, Result<()>>;

    fn handle(&mut self, msg: StartBackup, ctx: &mut Context<Self>) -> Self::Result {
        self.start_store(msg.kv, msg.dir, msg.callback, msg.interval, ctx)
    }
}

impl Handler<StopBackup> for Supervisor {
    type Result = ResponseActFuture<Self, Result<()>>;

    fn handle(&mut self, msg: StopBackup, _: &mut Context<Self>) -> Self::Result {
        self.stop_store(msg.kv, msg.final_round)
    }
}

impl Handler<SetVbucketState> for Supervisor {
    type Result = ResponseActFuture<Self, Result<()>>;

    fn handle(&mut self, msg: SetVbucketState, ctx: &mut Context<Self>) -> Self::Result {
        let kv = msg.kv;
        let running = self.running.contains_key(&kv);
        match msg.state {
            VbucketState::Active if running => Box::pin(fut::ready(Ok(()))),
            VbucketState::Active => {
                let Some(root) = &self.config.backup_root else {
                    return Box::pin(fut::ready(Err(Error::Config {
                        field: "backup_root",
                        reason: "must be set for vBucket-driven backups",
                    })));
                };
                let Some(factory) = &self.factory else {
                    return Box::pin(fut::ready(Err(Error::Config {
                        field: "callback factory",
                        reason: "must be given to ContinuousBackup::start for vBucket-driven backups",
                    })));
                };
                let dir = root.join(kv.to_string());
                let callback = factory(kv);
                self.start_store(kv, dir, callback, None, ctx)
            }
            _ if running => self.stop_store(kv, false),
            _ => Box::pin(fut::ready(Ok(()))),
        }
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let stores = self
            .counters
            .iter()
            .map(|(kv, c)| c.snapshot(*kv, self.running.contains_key(kv)))
            .collect();
        MessageResult(Status { stores })
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let stops: Vec<_> = self
            .running
            .drain()
            .map(|(_, r)| r.addr.send(StopStore { final_round: false }))
            .collect();
        tracing::info!(stores = stops.len(), "shutting down");
        Box::pin(async move {
            // Every stop was queued above; they proceed in parallel.
            for stop in stops {
                let _ = stop.await;
            }
        })
    }
}

impl Handler<BackupEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: BackupEnded, _: &mut Context<Self>) {
        self.forget(msg.kv, msg.generation);
    }
}
