//! The supervisor: receives the control messages (start, stop, vBucket
//! state, status, shutdown), owns the per-store `BackupActor`s and routes to
//! them.
//!
//! What happens to each store is decided by its table ([`stores`], a sans-IO
//! state machine): every control message and every actor's end goes in, and
//! the supervisor carries out the orders that come out (spawn, stop, answer,
//! refuse, hook). The rules (arrival order holds, starts never overlap, a
//! failed store restarts after a backoff, an intended stop never restarts)
//! are stated and unit-tested there.

mod stores;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Component, Path};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backup::quiet_ticker::{Common, QuietTicker};
use crate::backup::schedule::TickGrid;
use crate::backup::{BackupActor, BackupEnded, BackupSpec, Shared, StopStore};
use crate::callback::{CallbackFactory, CallbackRunner};
use crate::callback_pool::CallbackPool;
use crate::config::{check_interval, Config};
use crate::engine::{Engine, KvId};
use crate::error::panic_message;
use crate::error::{Error, Result};
use crate::linker::{BackupStoppedHook, LinkerActor};
use crate::messages::{GetStatus, SetVbucketState, Shutdown, StartBackup, StopBackup, VbucketState};
use crate::metadata::MetadataAddr;
use crate::pruner::PruneSchedule;
use crate::replication::queue::Replica;
use crate::replication::RemoteUrl;
use crate::replication::Uploader;
use crate::round_state::Unacked;
use crate::status::{Board, StoreCounters};
use stores::{Order, Plan, Stores, VbucketMove};

/// Who waits for a start or a stop.
type Waiter = oneshot::Sender<Result<()>>;

/// Routes control messages to one `BackupActor` per running KV store. Start
/// it through [`ContinuousBackup::start`](crate::ContinuousBackup::start).
pub struct Supervisor {
    engine: Arc<dyn Engine>,
    config: Config,
    factory: Option<CallbackFactory>,
    linker: Addr<LinkerActor>,
    /// One thread each; a backup dir always goes to the same one.
    metadata: Vec<MetadataAddr>,
    /// Which stores run or drain, and what comes next for each.
    table: Stores<Waiter>,
    /// The actor of each store in the table.
    actors: HashMap<KvId, Addr<BackupActor>>,
    /// The callback pool: keeps each store's calls in order across its
    /// starts (a callback of the last start may still run when the next
    /// one starts).
    callbacks: Arc<CallbackPool>,
    /// Files of stores without an actor now that no round reported, for
    /// the next start.
    unacked: HashMap<KvId, Unacked>,
    /// Every store's counters and upload queue (kept while its uploads
    /// drain, also after a stop), shared with the status and metrics readers.
    board: Board,
    uploader: Uploader,
    /// The component's retention (`Config::retention`), if on.
    prune: Option<PruneSchedule>,
    /// The grid every store's ticks are armed on (`Config::tick_slot`).
    grid: TickGrid,
    /// The quiet ticks of every store (their actors run on this thread).
    ticker: QuietTicker,
    /// What the running stores' actors share; weak, so that it (and its
    /// address of this supervisor) lives only while a store does.
    shared: std::rc::Weak<Shared>,
}

/// The other actors and shared state a supervisor is started with.
pub(crate) struct Parts {
    pub linker: Addr<LinkerActor>,
    pub metadata: Vec<MetadataAddr>,
    pub uploader: Uploader,
    pub prune: Option<PruneSchedule>,
    pub board: Board,
    pub callbacks: Arc<CallbackPool>,
}

type Reply = ResponseActFuture<Supervisor, Result<()>>;

fn ready(res: Result<()>) -> Reply {
    Box::pin(fut::ready(res))
}

/// Waits for a start's or stop's outcome.
async fn outcome(rx: oneshot::Receiver<Result<()>>) -> Result<()> {
    rx.await.unwrap_or(Err(Error::ComponentStopped))
}

impl Supervisor {
    /// The metadata thread of a backup dir: always the same for one path, so
    /// one log numbers its files.
    fn metadata_shard(&self, dir: &std::path::Path) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        (h.finish() % self.metadata.len() as u64) as usize
    }

    /// What every store's actor shares: the running stores' one, or a new
    /// one when none runs.
    fn shared(&mut self, ctx: &mut Context<Self>) -> Rc<Shared> {
        if let Some(shared) = self.shared.upgrade() {
            return shared;
        }
        let shared = Rc::new(Shared {
            engine: Arc::clone(&self.engine),
            linker: self.linker.clone(),
            metadata: self.metadata.clone(),
            supervisor: ctx.address().recipient(),
            max_backoff: self.config.max_backoff,
            report_empty_rounds: self.config.report_empty_rounds,
            grid: self.grid,
            ticker: self.ticker.clone(),
            prune: self.prune.clone(),
        });
        self.shared = Rc::downgrade(&shared);
        shared
    }

    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        config: Config,
        factory: Option<CallbackFactory>,
        parts: Parts,
    ) -> Self {
        let Parts {
            linker,
            metadata,
            uploader,
            prune,
            board,
            callbacks,
        } = parts;
        Supervisor {
            grid: TickGrid::new(Instant::now(), config.tick_slot),
            ticker: QuietTicker::new(
                TickGrid::new(Instant::now(), config.tick_slot),
                Common {
                    engine: Arc::clone(&engine),
                    pool: Arc::clone(&callbacks),
                    metadata: metadata.clone(),
                },
            ),
            table: Stores::new(config.max_backoff),
            prune,
            engine,
            config,
            factory,
            linker,
            metadata,
            actors: HashMap::new(),
            callbacks,
            unacked: HashMap::new(),
            board,
            uploader,
            shared: std::rc::Weak::new(),
        }
    }

    /// Checks a start's arguments without touching the file system.
    fn check_start(&self, kv: KvId, plan: &Plan) -> Result<()> {
        let dir = &plan.dir;
        let invalid = |reason| {
            Err(Error::InvalidBackupDir {
                path: dir.to_path_buf(),
                reason,
            })
        };
        if self.table.is_shutting_down() {
            return Err(Error::ComponentStopped);
        }
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
        check_interval(plan.interval)?;
        if let Some(remote) = &plan.remote {
            // Opens the client (no network yet): bad options fail the start.
            self.uploader.client(remote)?;
        }
        if let Some(holder) = self.table.holder_of(dir, kv) {
            return Err(Error::BackupDirInUse {
                path: dir.to_path_buf(),
                holder,
            });
        }
        Ok(())
    }

    fn start_store(&mut self, kv: KvId, plan: Plan, ctx: &mut Context<Self>) -> Reply {
        if let Err(e) = self.check_start(kv, &plan) {
            return ready(Err(e));
        }
        let (tx, rx) = oneshot::channel();
        let orders = self.table.start(kv, plan, tx);
        self.carry_out(orders, ctx);
        Box::pin(outcome(rx).into_actor(self))
    }

    fn stop_store(&mut self, kv: KvId, final_round: bool, ctx: &mut Context<Self>) -> Reply {
        let (tx, rx) = oneshot::channel();
        let orders = self.table.stop(kv, final_round, tx);
        self.carry_out(orders, ctx);
        Box::pin(outcome(rx).into_actor(self))
    }

    /// Carries out what the table decided.
    fn carry_out(&mut self, orders: Vec<Order<Waiter>>, ctx: &mut Context<Self>) {
        for order in orders {
            match order {
                Order::Spawn {
                    kv,
                    generation,
                    plan,
                    first_delay,
                } => self.spawn(kv, generation, plan, first_delay, ctx),
                Order::Stop {
                    kv,
                    final_round,
                    waiter,
                    reply_final,
                } => {
                    let Some(addr) = self.actors.get(&kv) else {
                        // Its actor ended meanwhile: stopped.
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(Ok(()));
                        }
                        continue;
                    };
                    let stopped = addr.send(StopStore { final_round });
                    async move {
                        // A mailbox error means the actor is already gone: stopped.
                        let res = stopped.await.unwrap_or(Ok(()));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(if reply_final { res } else { Ok(()) });
                        }
                    }
                    .into_actor(self)
                    .spawn(ctx);
                }
                Order::Answer { kv, waiters, result } => answer(waiters, kv, result),
                Order::Refuse { waiters } => refuse(waiters),
                Order::Restarting { kv, wait } => {
                    tracing::error!(kv_store = kv.0, ?wait, "backup actor failed; restarting it");
                    StoreCounters::add(&self.board.counters(kv).restarts, 1);
                }
                Order::Hook { kv, generation } => {
                    // The store stays in the table (draining) until the hook
                    // returns: a start that comes meanwhile is queued behind
                    // it, so the hook never overtakes the next start's first
                    // round (it would mark the new backup inactive).
                    self.linker
                        .send(BackupStoppedHook { kv })
                        .into_actor(self)
                        .map(move |_, act, ctx| {
                            let orders = act.table.rested(kv, generation);
                            act.carry_out(orders, ctx);
                        })
                        .spawn(ctx);
                }
            }
        }
    }

    /// Starts the backup actor of `generation` of `kv`, with what the
    /// store's last start left unreported.
    fn spawn(
        &mut self,
        kv: KvId,
        generation: u64,
        plan: Plan,
        first_delay: Duration,
        ctx: &mut Context<Self>,
    ) {
        let (on_started, started) = oneshot::channel();
        let replica = plan
            .remote
            .as_ref()
            .and_then(|remote| self.replica(kv, &plan.dir, remote));
        let runner = CallbackRunner::new(kv, Arc::clone(&self.callbacks));
        let metadata_shard = self.metadata_shard(&plan.dir);
        let spec = BackupSpec {
            kv,
            generation,
            dir: plan.dir.clone(),
            interval: plan.interval,
            callback: Arc::clone(&plan.callback),
            metadata_shard,
            counters: self.board.counters(kv),
            runner,
            unacked: self.unacked.remove(&kv).unwrap_or_default(),
            first_delay,
            replica,
            shared: self.shared(ctx),
        };
        self.actors.insert(kv, BackupActor::new(spec, on_started).start());
        outcome(started)
            .into_actor(self)
            .map(move |res, act, ctx| {
                let orders = act.table.opened(kv, generation, res);
                act.carry_out(orders, ctx);
            })
            .spawn(ctx);
    }

    /// The upload queue of `kv` replicating `dir` to `remote`: the one
    /// already running (its uploads go on across stop and start), or a new
    /// one. Either rescans first: files placed while the store ran without
    /// replication were never queued. A replica of another dir or remote
    /// is retired (ends once its task takes its next step).
    fn replica(&mut self, kv: KvId, dir: &Path, remote: &RemoteUrl) -> Option<Arc<Replica>> {
        if let Some(replica) = self.board.replica(kv) {
            if replica.local == dir && replica.remote == *remote {
                replica.ask_rescan();
                return Some(replica);
            }
            replica.retire();
        }
        let capacity = self.config.replication.queue_capacity;
        let replica = Arc::new(Replica::new(kv, dir.to_path_buf(), remote.clone(), capacity));
        match self.uploader.replicate(Arc::clone(&replica)) {
            Ok(()) => {
                self.board.set_replica(kv, Arc::clone(&replica));
                Some(replica)
            }
            Err(e) => {
                // Checked at start (check_start), so only a stopping system.
                tracing::error!(kv_store = kv.0, error = %e, "cannot replicate");
                None
            }
        }
    }

    /// The callback of a vBucket-driven start, from the configured factory.
    fn vbucket_plan(&self, kv: KvId) -> Result<Plan> {
        let root = self.config.backup_root.as_ref().ok_or(Error::Config {
            field: "backup_root",
            reason: "must be set for vBucket-driven backups",
        })?;
        let factory = self.factory.as_ref().ok_or(Error::Config {
            field: "callback factory",
            reason: "must be given to ContinuousBackup::start for vBucket-driven backups",
        })?;
        let callback = catch_unwind(AssertUnwindSafe(|| factory(kv))).map_err(|panic| Error::Panicked {
            kv,
            what: "callback factory",
            message: panic_message(&*panic),
        })?;
        let remote = match &self.config.replication.url {
            Some(url) => Some(Arc::new(RemoteUrl::parse(url)?.join(&kv.to_string()))),
            None => None,
        };
        Ok(Plan {
            dir: root.join(kv.to_string()),
            callback,
            interval: self.config.interval,
            remote,
        })
    }
}

/// Tells each waiter of a queued start that it never runs.
fn refuse(waiters: Vec<Waiter>) {
    for waiter in waiters {
        let _ = waiter.send(Err(Error::ComponentStopped));
    }
}

/// Tells every waiter of a start its outcome (the first gets the error
/// itself, the others its text).
fn answer(waiters: Vec<Waiter>, kv: KvId, res: Result<()>) {
    let reason = res.as_ref().err().map(ToString::to_string);
    let mut res = Some(res);
    for waiter in waiters {
        let r = res.take().unwrap_or_else(|| match &reason {
            None => Ok(()),
            Some(reason) => Err(Error::StartFailed {
                kv,
                reason: reason.clone(),
            }),
        });
        let _ = waiter.send(r);
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
    type Result = Reply;

    fn handle(&mut self, msg: StartBackup, ctx: &mut Context<Self>) -> Reply {
        let remote = match msg.replicate_to.as_deref().map(RemoteUrl::parse).transpose() {
            Ok(remote) => remote.map(Arc::new),
            Err(e) => return ready(Err(e)),
        };
        let plan = Plan {
            dir: msg.dir,
            callback: msg.callback,
            interval: msg.interval.unwrap_or(self.config.interval),
            remote,
        };
        self.start_store(msg.kv, plan, ctx)
    }
}

impl Handler<StopBackup> for Supervisor {
    type Result = Reply;

    fn handle(&mut self, msg: StopBackup, ctx: &mut Context<Self>) -> Reply {
        self.stop_store(msg.kv, msg.final_round, ctx)
    }
}

impl Handler<SetVbucketState> for Supervisor {
    type Result = Reply;

    fn handle(&mut self, msg: SetVbucketState, ctx: &mut Context<Self>) -> Reply {
        let kv = msg.kv;
        match self.table.vbucket(kv, msg.state == VbucketState::Active) {
            VbucketMove::Nothing => ready(Ok(())),
            VbucketMove::Start => match self.vbucket_plan(kv) {
                Ok(plan) => self.start_store(kv, plan, ctx),
                Err(e) => ready(Err(e)),
            },
            VbucketMove::Stop => self.stop_store(kv, false, ctx),
        }
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.board.status(|kv| self.table.is_running(kv)))
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let mut stops = Vec::new();
        for order in self.table.shutdown() {
            match order {
                Order::Stop { kv, final_round, .. } => {
                    if let Some(addr) = self.actors.get(&kv) {
                        stops.push(addr.send(StopStore { final_round }));
                    }
                }
                Order::Refuse { waiters } => refuse(waiters),
                _ => {} // shutdown only stops and refuses
            }
        }
        tracing::info!(stores = stops.len(), "shutting down");
        let replicas = self.board.replicas();
        let drain = self.config.replication.drain_timeout;
        let uploader = self.uploader.arbiter();
        Box::pin(async move {
            // Every stop was queued above; they proceed in parallel.
            for stop in stops {
                let _ = stop.await;
            }
            // The last metadata writes are queued now: let the uploads
            // finish, for a while. What is left is found at the next start.
            let deadline = std::time::Instant::now() + drain;
            let drained = || replicas.iter().all(|r| r.is_drained());
            while !drained() && std::time::Instant::now() < deadline {
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
            if !drained() {
                let left: u64 = replicas.iter().map(|r| r.status().pending_files).sum();
                tracing::warn!(
                    files = left,
                    "shut down with uploads pending; the next start resumes them"
                );
            }
            for replica in &replicas {
                replica.retire();
            }
            // Uploads still under way are dropped with the uploader's
            // thread (an unfinished multipart upload never becomes visible).
            if let Some(uploader) = uploader {
                uploader.stop();
            }
        })
    }
}

impl Handler<BackupEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: BackupEnded, ctx: &mut Context<Self>) {
        if !self.table.is_current(msg.kv, msg.generation) {
            // Generations end once, and only the current one can: a bug.
            StoreCounters::add(&self.board.counters(msg.kv).impossible_events, 1);
            tracing::error!(
                kv_store = msg.kv.0,
                generation = msg.generation,
                "end of a store generation that is not current; ignored"
            );
            return;
        }
        // The actor is gone: what it left unreported waits for the next start.
        self.actors.remove(&msg.kv);
        self.unacked.insert(msg.kv, msg.unacked);
        let orders = self.table.ended(msg.kv, msg.generation, msg.opened);
        self.carry_out(orders, ctx);
    }
}
