//! The supervisor: receives the control messages (start, stop, vBucket
//! state, status, shutdown), owns the per-store `BackupActor`s and routes to
//! them.
//!
//! Per store it keeps one [`Store`] while the store runs or drains. Every
//! control message changes it at once, in arrival order, so after any burst
//! of vBucket state messages exactly the stores whose last state was
//! `Active` are running. A store's starts never overlap: a start that comes
//! while the previous one drains waits for it to end (and a stop that comes
//! meanwhile cancels the waiting start). A running store whose actor ends on
//! its own is restarted, after a backoff, and the restart is counted.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backup::schedule;
use crate::backup::state::Unacked;
use crate::backup::{BackupActor, BackupSpec};
use crate::callback::{BackupCallback, CallbackFactory, CallbackRunner};
use crate::config::{check_interval, Config};
use crate::engine::{Engine, KvId};
use crate::error::panic_message;
use crate::error::{Error, Result};
use crate::linker::LinkerActor;
use crate::messages::{
    BackupEnded, BackupStoppedHook, GetStatus, SetVbucketState, Shutdown, StartBackup, StopBackup, StopStore,
    VbucketState,
};
use crate::metadata::MetadataActor;
use crate::pruner::PruneSchedule;
use crate::replication::queue::Replica;
use crate::replication::RemoteUrl;
use crate::replication::Uploader;
use crate::status::{Status, StoreCounters};

/// What a start asks for.
#[derive(Clone)]
struct Plan {
    dir: PathBuf,
    callback: Arc<dyn BackupCallback>,
    interval: Duration,
    /// Where the backup dir is replicated to, if anywhere.
    remote: Option<Arc<RemoteUrl>>,
}

/// A start waiting for the previous start of its store to end.
struct Queued {
    plan: Plan,
    waiters: Vec<oneshot::Sender<Result<()>>>,
}

enum Phase {
    /// Rounds run. `opened` once the dir is open (before that, an end is a
    /// failed start, not a failure to restart from).
    Running { opened: bool },
    /// Stopping; `next` starts when the actor has ended.
    Draining { next: Option<Queued> },
}

/// What a new start of a store takes over from the previous one.
struct Carry {
    runner: CallbackRunner,
    unacked: Unacked,
    restarts_in_a_row: u32,
    /// Wait before the first round (a restart's backoff).
    first_delay: Duration,
}

impl Carry {
    fn fresh(runner: CallbackRunner, unacked: Unacked) -> Self {
        Carry {
            runner,
            unacked,
            restarts_in_a_row: 0,
            first_delay: Duration::ZERO,
        }
    }
}

/// One store that runs or drains.
struct Store {
    generation: u64,
    addr: Addr<BackupActor>,
    plan: Plan,
    phase: Phase,
    runner: CallbackRunner,
    /// Restarts after failures in a row, for the restart backoff.
    restarts_in_a_row: u32,
}

/// Routes control messages to one `BackupActor` per running KV store. Start
/// it through [`ContinuousBackup::start`](crate::ContinuousBackup::start).
pub struct Supervisor {
    engine: Arc<dyn Engine>,
    config: Config,
    factory: Option<CallbackFactory>,
    linker: Addr<LinkerActor>,
    /// One thread each; a backup dir always goes to the same one.
    metadata: Vec<Addr<MetadataActor>>,
    stores: HashMap<KvId, Store>,
    /// Stores not running now: their callback thread (a callback of the
    /// last start may still run on it) and their unreported files, for the
    /// next start.
    resting: HashMap<KvId, (CallbackRunner, Unacked)>,
    counters: BTreeMap<KvId, Arc<StoreCounters>>,
    next_generation: u64,
    shutting_down: bool,
    uploader: Uploader,
    /// The component's retention (`Config::retention`), if on.
    prune: Option<PruneSchedule>,
    /// Upload queues of replicated stores, kept while their uploads drain
    /// (also after a stop).
    replicas: HashMap<KvId, Arc<Replica>>,
}

type Reply = ResponseActFuture<Supervisor, Result<()>>;

fn ready(res: Result<()>) -> Reply {
    Box::pin(fut::ready(res))
}

/// Waits for a start's outcome.
async fn outcome(rx: oneshot::Receiver<Result<()>>) -> Result<()> {
    rx.await.unwrap_or(Err(Error::ComponentStopped))
}

impl Supervisor {
    /// The metadata thread of a backup dir: always the same for one path, so
    /// one log numbers its files.
    fn metadata_for(&self, dir: &std::path::Path) -> Addr<MetadataActor> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        self.metadata[(h.finish() % self.metadata.len() as u64) as usize].clone()
    }

    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        config: Config,
        factory: Option<CallbackFactory>,
        linker: Addr<LinkerActor>,
        metadata: Vec<Addr<MetadataActor>>,
        uploader: Uploader,
        prune: Option<PruneSchedule>,
    ) -> Self {
        Supervisor {
            prune,
            engine,
            config,
            factory,
            linker,
            metadata,
            stores: HashMap::new(),
            resting: HashMap::new(),
            counters: BTreeMap::new(),
            next_generation: 1,
            shutting_down: false,
            uploader,
            replicas: HashMap::new(),
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
        if self.shutting_down {
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
        let holder = self
            .stores
            .iter()
            .find(|(id, s)| **id != kv && Self::dirs_of(s).any(|d| d == dir));
        if let Some((holder, _)) = holder {
            return Err(Error::BackupDirInUse {
                path: dir.to_path_buf(),
                holder: *holder,
            });
        }
        Ok(())
    }

    /// The dirs a store uses or is about to use.
    fn dirs_of(store: &Store) -> impl Iterator<Item = &Path> {
        let next = match &store.phase {
            Phase::Draining { next: Some(q) } => Some(q.plan.dir.as_path()),
            _ => None,
        };
        std::iter::once(store.plan.dir.as_path()).chain(next)
    }

    fn start_store(&mut self, kv: KvId, plan: Plan, ctx: &mut Context<Self>) -> Reply {
        if let Err(e) = self.check_start(kv, &plan) {
            return ready(Err(e));
        }
        let Some(store) = self.stores.get_mut(&kv) else {
            let (runner, unacked) = match self.resting.remove(&kv) {
                Some(rest) => rest,
                None => match CallbackRunner::start(kv) {
                    Ok(runner) => (runner, Unacked::default()),
                    Err(e) => return ready(Err(e)),
                },
            };
            let started = self.spawn(kv, plan, Carry::fresh(runner, unacked), ctx);
            return self.await_start(kv, started);
        };
        match &mut store.phase {
            Phase::Running { .. } if store.plan.dir == plan.dir => ready(Ok(())),
            Phase::Running { .. } => ready(Err(Error::AlreadyRunning {
                kv,
                dir: store.plan.dir.clone(),
            })),
            Phase::Draining { next: Some(q) } if q.plan.dir != plan.dir => {
                ready(Err(Error::AlreadyRunning {
                    kv,
                    dir: q.plan.dir.clone(),
                }))
            }
            Phase::Draining { next } => {
                let (tx, rx) = oneshot::channel();
                next.get_or_insert_with(|| Queued {
                    plan,
                    waiters: Vec::new(),
                })
                .waiters
                .push(tx);
                Box::pin(outcome(rx).into_actor(self))
            }
        }
    }

    /// Starts a new generation of `kv` as a running store; returns the
    /// generation and a receiver told whether its dir opened.
    fn spawn(
        &mut self,
        kv: KvId,
        plan: Plan,
        carry: Carry,
        ctx: &mut Context<Self>,
    ) -> (u64, oneshot::Receiver<Result<()>>) {
        let Carry {
            runner,
            unacked,
            restarts_in_a_row,
            first_delay,
        } = carry;
        let generation = self.next_generation;
        self.next_generation += 1;
        let (on_started, started) = oneshot::channel();
        let replica = plan
            .remote
            .as_ref()
            .and_then(|remote| self.replica(kv, &plan.dir, remote));
        let spec = BackupSpec {
            kv,
            generation,
            dir: plan.dir.clone(),
            interval: plan.interval,
            max_backoff: self.config.max_backoff,
            callback: Arc::clone(&plan.callback),
            linker: self.linker.clone(),
            metadata: self.metadata_for(&plan.dir),
            supervisor: ctx.address().recipient(),
            counters: Arc::clone(self.counters.entry(kv).or_default()),
            runner: runner.clone(),
            unacked,
            first_delay,
            engine: Arc::clone(&self.engine),
            report_empty_rounds: self.config.report_empty_rounds,
            replica,
            prune: self.prune.clone(),
        };
        let addr = BackupActor::new(spec, on_started).start();
        self.stores.insert(
            kv,
            Store {
                generation,
                addr,
                plan,
                phase: Phase::Running { opened: false },
                runner,
                restarts_in_a_row,
            },
        );
        (generation, started)
    }

    /// The upload queue of `kv` replicating `dir` to `remote`: the one
    /// already running (its uploads go on across stop and start), or a new
    /// one. Either rescans first: files placed while the store ran without
    /// replication were never queued. A replica of another dir or remote
    /// is retired (ends once its task takes its next step).
    fn replica(&mut self, kv: KvId, dir: &Path, remote: &RemoteUrl) -> Option<Arc<Replica>> {
        if let Some(replica) = self.replicas.get(&kv) {
            if replica.local == dir && replica.remote == *remote {
                replica.ask_rescan();
                return Some(Arc::clone(replica));
            }
            replica.retire();
        }
        let capacity = self.config.replication.queue_capacity;
        let replica = Arc::new(Replica::new(kv, dir.to_path_buf(), remote.clone(), capacity));
        match self.uploader.replicate(Arc::clone(&replica)) {
            Ok(()) => {
                self.replicas.insert(kv, Arc::clone(&replica));
                Some(replica)
            }
            Err(e) => {
                // Checked at start (check_start), so only a stopping system.
                tracing::error!(kv_store = kv.0, error = %e, "cannot replicate");
                None
            }
        }
    }

    /// Replies with the start's outcome; marks the store opened, or forgets
    /// it if its dir could not be opened.
    fn await_start(
        &mut self,
        kv: KvId,
        (generation, started): (u64, oneshot::Receiver<Result<()>>),
    ) -> Reply {
        Box::pin(outcome(started).into_actor(self).map(move |res, act, _| {
            if let Some(store) = act.stores.get_mut(&kv).filter(|s| s.generation == generation) {
                if let Phase::Running { opened } = &mut store.phase {
                    *opened = res.is_ok();
                }
            }
            res
        }))
    }

    fn stop_store(&mut self, kv: KvId, final_round: bool) -> Reply {
        let Some(store) = self.stores.get_mut(&kv) else {
            return ready(Err(Error::NotRunning { kv }));
        };
        match &mut store.phase {
            Phase::Running { .. } => {
                store.phase = Phase::Draining { next: None };
                let stopped = store.addr.send(StopStore { final_round });
                // A mailbox error means the actor is already gone: stopped.
                Box::pin(async move { stopped.await.unwrap_or(Ok(())) }.into_actor(self))
            }
            Phase::Draining { next } => {
                if let Some(queued) = next.take() {
                    // The later stop wins over a start that never ran.
                    for waiter in queued.waiters {
                        let _ = waiter.send(Ok(()));
                    }
                    return ready(Ok(()));
                }
                // Stopping already: abandon its final round, wait for the end.
                let stopped = store.addr.send(StopStore { final_round: false });
                Box::pin(async move { stopped.await.map(drop).or(Ok(())) }.into_actor(self))
            }
        }
    }

    /// A store's actor ended: start what waits, restart what failed, or
    /// forget the store.
    fn ended(&mut self, msg: BackupEnded, ctx: &mut Context<Self>) {
        let kv = msg.kv;
        let Some(store) = self
            .stores
            .get_mut(&kv)
            .filter(|s| s.generation == msg.generation)
        else {
            return;
        };
        let runner = store.runner.clone();
        match &mut store.phase {
            Phase::Draining { next } => match next.take() {
                Some(queued) if !self.shutting_down => {
                    self.start_queued(kv, queued, Carry::fresh(runner, msg.unacked), ctx)
                }
                _ => self.rest(kv, msg.unacked, ctx),
            },
            Phase::Running { opened: true } if !self.shutting_down => {
                // Failed on its own: restart it from what is in the backup
                // dir (and what it had not reported), its first round after
                // a backoff that grows while restarts keep coming.
                let restarts = store.restarts_in_a_row + 1;
                let wait = schedule::backoff(
                    store.plan.interval.min(Duration::from_secs(1)),
                    self.config.max_backoff,
                    restarts,
                );
                let plan = store.plan.clone();
                tracing::error!(kv_store = kv.0, ?wait, "backup actor failed; restarting it");
                if let Some(c) = self.counters.get(&kv) {
                    StoreCounters::add(&c.restarts, 1);
                }
                let carry = Carry {
                    runner,
                    unacked: msg.unacked,
                    restarts_in_a_row: restarts,
                    first_delay: wait,
                };
                let started = self.spawn(kv, plan, carry, ctx);
                self.await_start(kv, started).map(|_, _, _| ()).spawn(ctx);
            }
            // A start whose dir did not open, or the end of a shutdown.
            Phase::Running { .. } => self.rest(kv, msg.unacked, ctx),
        }
    }

    /// Moves an ended store to `resting`, and tells the engine.
    ///
    /// The store stays draining until the engine's `backup_stopped` has
    /// returned: a start that comes meanwhile is queued behind it, so the
    /// hook can never overtake the next start's first round (it would mark
    /// the new backup inactive).
    fn rest(&mut self, kv: KvId, unacked: Unacked, ctx: &mut Context<Self>) {
        let Some(store) = self.stores.get_mut(&kv) else {
            return;
        };
        store.phase = Phase::Draining { next: None };
        let generation = store.generation;
        self.linker
            .send(BackupStoppedHook { kv })
            .into_actor(self)
            .map(move |_, act, ctx| act.rested(kv, generation, unacked, ctx))
            .spawn(ctx);
    }

    /// Starts the start that waited for the store's previous one to end, and
    /// tells its waiters how it went.
    fn start_queued(&mut self, kv: KvId, queued: Queued, carry: Carry, ctx: &mut Context<Self>) {
        let started = self.spawn(kv, queued.plan, carry, ctx);
        self.await_start(kv, started)
            .map(move |res, _, _| answer(queued.waiters, kv, res))
            .spawn(ctx);
    }

    /// The engine was told the store's backup stopped: start what was
    /// queued meanwhile, or forget the store.
    fn rested(&mut self, kv: KvId, generation: u64, unacked: Unacked, ctx: &mut Context<Self>) {
        let Some(store) = self.stores.get_mut(&kv).filter(|s| s.generation == generation) else {
            return;
        };
        let runner = store.runner.clone();
        let queued = match &mut store.phase {
            Phase::Draining { next } => next.take(),
            Phase::Running { .. } => None,
        };
        match queued {
            Some(queued) if !self.shutting_down => {
                self.start_queued(kv, queued, Carry::fresh(runner, unacked), ctx)
            }
            queued => {
                for waiter in queued.into_iter().flat_map(|q| q.waiters) {
                    let _ = waiter.send(Err(Error::ComponentStopped));
                }
                self.stores.remove(&kv);
                self.resting.insert(kv, (runner, unacked));
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

/// Tells every waiter of a queued start its outcome (the first gets the
/// error itself, the others its text).
fn answer(waiters: Vec<oneshot::Sender<Result<()>>>, kv: KvId, res: Result<()>) {
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

    fn handle(&mut self, msg: StopBackup, _: &mut Context<Self>) -> Reply {
        self.stop_store(msg.kv, msg.final_round)
    }
}

impl Handler<SetVbucketState> for Supervisor {
    type Result = Reply;

    fn handle(&mut self, msg: SetVbucketState, ctx: &mut Context<Self>) -> Reply {
        let kv = msg.kv;
        let phase = self.stores.get(&kv).map(|s| &s.phase);
        let active = msg.state == VbucketState::Active;
        match phase {
            // Already running, or about to: a repeat.
            Some(Phase::Running { .. }) | Some(Phase::Draining { next: Some(_) }) if active => ready(Ok(())),
            _ if active => match self.vbucket_plan(kv) {
                Ok(plan) => self.start_store(kv, plan, ctx),
                Err(e) => ready(Err(e)),
            },
            Some(Phase::Running { .. }) | Some(Phase::Draining { next: Some(_) }) => {
                self.stop_store(kv, false)
            }
            _ => ready(Ok(())),
        }
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let stores = self
            .counters
            .iter()
            .map(|(kv, c)| {
                let running = matches!(self.stores.get(kv).map(|s| &s.phase), Some(Phase::Running { .. }));
                let mut status = c.snapshot(*kv, running);
                status.replication = self.replicas.get(kv).map(|r| r.status());
                status
            })
            .collect();
        MessageResult(Status { stores })
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let mut stops = Vec::new();
        for store in self.stores.values_mut() {
            if let Phase::Draining { next } = &mut store.phase {
                for waiter in next.take().into_iter().flat_map(|q| q.waiters) {
                    let _ = waiter.send(Err(Error::ComponentStopped));
                }
            }
            store.phase = Phase::Draining { next: None };
            // Also to stores already stopping: abandon their final rounds.
            stops.push(store.addr.send(StopStore { final_round: false }));
        }
        tracing::info!(stores = stops.len(), "shutting down");
        let replicas: Vec<Arc<Replica>> = self.replicas.values().cloned().collect();
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
        self.ended(msg, ctx);
    }
}
