//! `BackupActor`: one per running KV store. A thin shell: when to do what
//! is decided by the store's [`Lifecycle`] (a sans-IO state machine, in
//! [`lifecycle`]); the actor turns what happens into its events and carries
//! out its actions. What is linked and reported is in [`crate::round_state`], the timing
//! in [`schedule`].
//!
//! A round: tick → `LinkRound` to the linker pool (snapshot, link, fsync dir)
//! → callback on the callback pool, after the store's earlier calls
//! (snapshot held until it returns)
//! → acknowledge on success → with `Config::retention` on and a prune due,
//! `PruneStore` to the pruner thread → the next tick armed with `run_later`.

pub(crate) mod lifecycle;
pub(crate) mod quiet_ticker;
pub(crate) mod schedule;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakRecipient;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::callback::{BackupCallback, CallbackOutcome, CallbackRunner};
use crate::engine::{Engine, KvId, Snapshot};
use crate::error::{Error, Result};
use crate::fs::BackupDir;
use crate::linker::LinkerActor;
use crate::linker::{LinkRound, Linked, RoundLinked};
use crate::manifest::RoundLog;
use crate::metadata::{CloseSession, MetadataAddr, MetadataWriter, OpenDir, SessionId};
use crate::pruner::{PruneSchedule, PruneStore};
use crate::replication::queue::Replica;
use crate::restore::PruneReport;
use crate::round_state::{LinkSet, Report, Unacked};
use crate::status::StoreCounters;
use lifecycle::{Action, Event, HandOver, Lifecycle, LifecycleConfig, LinkOutcome, Phase};
use quiet_ticker::{HandedCall, QuietStore, QuietTickChanged, QuietTicker};
use schedule::TickGrid;

/// Supervisor → backup actor, with `send`. Replies when the actor has
/// stopped: the final round's error, if one was asked for and failed.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub(crate) struct StopStore {
    pub final_round: bool,
}

/// Backup actor → supervisor, with `do_send` from `stopped()`: the actor of
/// this generation is gone; its unacknowledged files go to the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct BackupEnded {
    pub kv: KvId,
    pub generation: u64,
    /// Whether its dir had opened (told here too: the end may be handled
    /// before the start's outcome).
    pub opened: bool,
    pub unacked: Unacked,
}

/// What every backup actor of a component shares: the other actors, the
/// engine and the component-wide settings, behind one `Rc` (every backup
/// actor runs on the supervisor's arbiter). A store's own clone of an
/// actor's address would cost two allocations: at 1024 stores, the clones
/// of three addresses were a twentieth of a store's memory.
pub(crate) struct Shared {
    pub engine: Arc<dyn Engine>,
    pub linker: Addr<LinkerActor>,
    /// One per metadata thread; a store uses `BackupSpec::metadata_shard`.
    pub metadata: Vec<MetadataAddr>,
    pub supervisor: Recipient<BackupEnded>,
    pub max_backoff: Duration,
    /// `Config::report_empty_rounds`.
    pub report_empty_rounds: bool,
    /// The component's tick grid.
    pub grid: TickGrid,
    /// The quiet ticks of the arbiter's stores (see [`quiet_ticker`]).
    pub ticker: QuietTicker,
    /// The component's retention, if on.
    pub prune: Option<PruneSchedule>,
}

/// Everything a backup actor is started with.
pub(crate) struct BackupSpec {
    pub kv: KvId,
    pub generation: u64,
    pub dir: PathBuf,
    pub interval: Duration,
    pub callback: Arc<dyn BackupCallback>,
    /// Which of the component's metadata threads the store's dir is on.
    pub metadata_shard: usize,
    pub counters: Arc<StoreCounters>,
    /// The store's queue on the callback pool, the same for every start of
    /// the store, so callbacks of a stopping start and the next one never
    /// overlap.
    pub runner: CallbackRunner,
    /// Files an earlier start of the store linked but never got reported.
    pub unacked: Unacked,
    /// Wait before the first round (a restart's backoff); zero: at once.
    pub first_delay: Duration,
    /// The store's upload queue, when its backup dir is replicated.
    pub replica: Option<Arc<Replica>>,
    pub shared: Rc<Shared>,
}

impl BackupSpec {
    /// The metadata thread of the store's dir.
    fn metadata(&self) -> &MetadataAddr {
        &self.shared.metadata[self.metadata_shard]
    }
}

/// Runs the rounds of one KV store: carries out what its [`Lifecycle`]
/// decides.
pub(crate) struct BackupActor {
    spec: BackupSpec,
    life: Lifecycle,
    on_started: Option<oneshot::Sender<Result<()>>>,
    span: tracing::Span,
    opened: Option<(Arc<BackupDir>, SessionId)>,
    /// The dir's round numbering, once it is open.
    rounds: Option<Arc<parking_lot::Mutex<RoundLog>>>,
    /// `None` while a round's links are at the linker pool.
    links: Option<Box<LinkSet>>,
    /// A linked round's snapshot and what it reports, between the linker's
    /// reply and the callback.
    to_call: Option<(Box<dyn Snapshot>, Report)>,
    /// The current round's span.
    round_span: tracing::Span,
    /// Set on a stop without final round: the linker job links nothing more.
    cancel: Arc<AtomicBool>,
    tick: Option<SpawnHandle>,
    /// The token of the tick handed to the quiet ticker, instead of `tick`.
    quiet_tick: Option<u64>,
    /// This actor, for the quiet ticker (set once started); shared with
    /// its calls, as a clone of the recipient itself allocates.
    self_addr: Option<Arc<WeakRecipient<QuietTickChanged>>>,
    /// Bumped by every `ArmTick` and `CancelTick`: a tick fires only if it
    /// is still the one armed last. actix applies `cancel_future` only at
    /// the context's next pending poll, so a tick cancelled while the
    /// context handles a message or a finished future can still fire in
    /// that same poll.
    tick_token: u64,
    /// The stops' repliers.
    waiters: Vec<oneshot::Sender<Result<()>>>,
    /// Events an action raised (a prune that could not be sent), fed next.
    follow_up: VecDeque<Event>,
}

impl BackupActor {
    /// `on_started` is told once the backup dir is open (or could not be).
    pub fn new(spec: BackupSpec, on_started: oneshot::Sender<Result<()>>) -> Self {
        let life = Lifecycle::new(LifecycleConfig {
            kv: spec.kv,
            interval: spec.interval,
            max_backoff: spec.shared.max_backoff,
            report_empty_rounds: spec.shared.report_empty_rounds,
            grid: spec.shared.grid,
            first_delay: spec.first_delay,
            prune_every: spec.shared.prune.as_ref().map(|p| p.every),
        });
        BackupActor {
            spec,
            life,
            on_started: Some(on_started),
            span: tracing::Span::none(),
            opened: None,
            rounds: None,
            links: Some(Box::default()),
            to_call: None,
            round_span: tracing::Span::none(),
            cancel: Arc::new(AtomicBool::new(false)),
            tick: None,
            quiet_tick: None,
            self_addr: None,
            tick_token: 0,
            waiters: Vec::new(),
            follow_up: VecDeque::new(),
        }
    }

    /// Hands `event` to the lifecycle and carries out its actions (and those
    /// of any event they raise). An impossible event is logged and counted.
    fn feed(&mut self, event: Event, ctx: &mut Context<Self>) {
        // The event itself is not queued: `follow_up` stays unallocated
        // unless an action raises one (rare), a few hundred bytes per store.
        let mut next = Some(event);
        while let Some(event) = next.take().or_else(|| self.follow_up.pop_front()) {
            match self.life.handle(event, Instant::now()) {
                Ok(actions) => {
                    for action in actions {
                        self.act(action, ctx);
                    }
                }
                Err(impossible) => {
                    StoreCounters::add(&self.spec.counters.impossible_events, 1);
                    self.span.in_scope(|| {
                        tracing::error!(error = %impossible, "impossible lifecycle event ignored");
                    });
                }
            }
        }
    }

    fn act(&mut self, action: Action, ctx: &mut Context<Self>) {
        match action {
            Action::Link { round } => self.send_links(round, ctx),
            Action::CallBack => self.call_back(ctx),
            Action::CallBackUnchanged => self.call_back_unchanged(ctx),
            Action::Prune => self.start_prune(ctx),
            Action::ArmTick { at, due, hand_over } => {
                if hand_over.is_some_and(|h| self.hand_over_tick(due, h)) {
                    return;
                }
                let wait = at.saturating_duration_since(Instant::now());
                self.tick_token += 1;
                let token = self.tick_token;
                self.tick = Some(ctx.run_later(wait, move |act, ctx| {
                    if act.tick_token != token {
                        return; // cancelled in the poll it fired in
                    }
                    act.tick = None;
                    let unchanged = act.unchanged();
                    act.feed(Event::Tick { unchanged }, ctx);
                }));
            }
            Action::CancelTick => {
                self.tick_token += 1;
                if let Some(tick) = self.tick.take() {
                    ctx.cancel_future(tick);
                }
                if let Some(token) = self.quiet_tick.take() {
                    self.spec.shared.ticker.take_back(token);
                }
            }
            Action::RoundEnded { result, took } => self.count_round(&result, took),
            Action::QuietRound => StoreCounters::add(&self.spec.counters.quiet_rounds, 1),
            Action::Close => self.close(ctx),
            Action::StopActor => ctx.stop(),
        }
    }

    fn send_links(&mut self, round: u64, ctx: &mut Context<Self>) {
        let span = tracing::info_span!(parent: &self.span, "round", round);
        self.round_span = span.clone();
        let (Some((dir, _)), Some(rounds)) = (&self.opened, &self.rounds) else {
            return self.shell_broken("a round started without an open dir");
        };
        let Some(links) = self.links.take() else {
            return self.shell_broken("a round started while its link set was away");
        };
        let msg = LinkRound {
            kv: self.spec.kv,
            dir: Arc::clone(dir),
            rounds: Arc::clone(rounds),
            links,
            cancel: Arc::clone(&self.cancel),
            span: span.clone(),
        };
        self.spec
            .shared
            .linker
            .send(msg)
            .instrument(span)
            .into_actor(self)
            .map(|res, act, ctx| act.on_linked(res, ctx))
            .spawn(ctx);
    }

    /// The shell itself broke a rule (a bug): logged and counted, and the
    /// round fails instead of stalling.
    fn shell_broken(&mut self, what: &'static str) {
        StoreCounters::add(&self.spec.counters.impossible_events, 1);
        self.span
            .in_scope(|| tracing::error!(what, "backup actor in an impossible state"));
        let failed = match self.life.phase() {
            Phase::Linking => Event::Linked(LinkOutcome::Failed(Error::ComponentStopped)),
            _ => Event::Called(Err(Error::ComponentStopped)),
        };
        self.follow_up.push_back(failed);
    }

    fn on_linked(&mut self, res: Result<RoundLinked, MailboxError>, ctx: &mut Context<Self>) {
        let outcome = match res {
            // The pool is gone with the link set: start over, as on start
            // (placing is idempotent, so nothing is linked twice).
            Err(_) => {
                self.links = Some(Box::default());
                LinkOutcome::Failed(Error::ComponentStopped)
            }
            Ok(RoundLinked { links, outcome }) => {
                self.links = Some(links);
                match outcome {
                    Ok(mut linked) => {
                        self.count_linked(&mut linked);
                        let reported = self.spec.unacked.report();
                        let to_report = !reported.is_empty();
                        self.to_call = Some((linked.snapshot, reported));
                        LinkOutcome::Linked { to_report }
                    }
                    Err(e) => LinkOutcome::Failed(e),
                }
            }
        };
        self.feed(Event::Linked(outcome), ctx);
        // Not called back (a quiet round, or stopped while linking): what was
        // placed stays unacknowledged for the next round or start.
        self.to_call = None;
    }

    fn call_back(&mut self, ctx: &mut Context<Self>) {
        let session = self.opened.as_ref().map(|(_, session)| *session);
        let (Some(session), Some((snapshot, reported))) = (session, self.to_call.take()) else {
            return self.shell_broken("a callback without a linked round");
        };
        let writer = MetadataWriter::new(self.spec.kv, session, self.spec.metadata().clone());
        let span = self.round_span.clone();
        let done = self.spec.runner.run(
            Arc::clone(&self.spec.callback),
            snapshot,
            Arc::clone(&reported),
            writer,
            span.clone(),
        );
        done.instrument(span)
            .into_actor(self)
            .map(move |out, act, ctx| act.on_called(out, reported, ctx))
            .spawn(ctx);
    }

    /// A round with nothing new, reported without the linker: the callback
    /// thread takes the snapshot and calls back if it is still at the
    /// linked generation, else the round links (`SnapshotChanged`).
    fn call_back_unchanged(&mut self, ctx: &mut Context<Self>) {
        let session = self.opened.as_ref().map(|(_, session)| *session);
        let generation = self.links.as_ref().and_then(|links| links.generation());
        let (Some(session), Some(generation)) = (session, generation) else {
            return self.shell_broken("an unchanged round without an open dir or a linked generation");
        };
        self.round_span = tracing::info_span!(parent: &self.span, "round", round = self.life.round());
        let writer = MetadataWriter::new(self.spec.kv, session, self.spec.metadata().clone());
        let span = self.round_span.clone();
        let done = self.spec.runner.run_unchanged(
            Arc::clone(&self.spec.callback),
            Arc::clone(&self.spec.shared.engine),
            generation,
            writer,
            span.clone(),
        );
        done.instrument(span)
            .into_actor(self)
            .map(|out, act, ctx| match out {
                Ok(None) => act.feed(Event::SnapshotChanged, ctx),
                Ok(Some(outcome)) => act.on_called(Ok(outcome), Arc::default(), ctx),
                Err(gone) => act.on_called(Err(gone), Arc::default(), ctx),
            })
            .spawn(ctx);
    }

    /// Counts a round's links and queues its files for reporting and, when
    /// replicated, for upload: they are durable now, and a metadata file
    /// written by this round's callback queues behind them.
    fn count_linked(&mut self, linked: &mut Linked) {
        let c = &self.spec.counters;
        StoreCounters::add(&c.files_linked, linked.files_linked);
        StoreCounters::add(&c.bytes_linked, linked.bytes_linked);
        StoreCounters::add(&c.files_copied, linked.files_copied);
        StoreCounters::add(&c.bytes_copied, linked.bytes_copied);
        if linked.files_copied > 0 {
            c.cross_device.store(true, Ordering::Relaxed);
        }
        if let Some(replica) = &self.spec.replica {
            replica.push_files(&linked.placed);
            // After the round's files: a remote manifest names only files
            // queued before it.
            if let Some((name, len)) = &linked.manifest {
                replica.push_manifest(name, *len);
            }
        }
        let dir = self.opened.as_ref().map(|(dir, _)| dir.id());
        if let Some(dir) = dir {
            self.spec.unacked.add(std::mem::take(&mut linked.placed), dir);
        }
    }

    fn on_called(
        &mut self,
        out: Result<CallbackOutcome, oneshot::error::RecvError>,
        reported: Report,
        ctx: &mut Context<Self>,
    ) {
        let result = match out {
            Ok(CallbackOutcome { result, took }) => {
                self.spec.counters.count_callback(took);
                result
            }
            Err(_) => Err(Error::ComponentStopped),
        };
        if result.is_ok() {
            self.spec.unacked.acknowledge(&reported);
        }
        self.feed(Event::Called(result), ctx);
    }

    /// Sends the store's dir to the pruner thread, keeping every file not
    /// yet reported or uploaded; raises `PruneNotStarted` if it cannot.
    fn start_prune(&mut self, ctx: &mut Context<Self>) {
        let (Some(schedule), Some((dir, _))) = (&self.spec.shared.prune, &self.opened) else {
            return self.follow_up.push_back(Event::PruneNotStarted);
        };
        let mut keep: std::collections::HashSet<String> = self
            .spec
            .unacked
            .report()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        if let Some(replica) = &self.spec.replica {
            match replica.pending_names() {
                Some(pending) => keep.extend(pending),
                None => {
                    self.spec.counters.last.lock().prune = Some(
                        "waiting for the remote copy's rescan: which files are still to upload is not known"
                            .into(),
                    );
                    return self.follow_up.push_back(Event::PruneNotStarted);
                }
            }
        }
        let Some(slot) = schedule.try_slot() else {
            // Another store's prune runs: after the next round.
            return self.follow_up.push_back(Event::PruneNotStarted);
        };
        let span = tracing::info_span!(parent: &self.span, "prune", round = self.life.round());
        let msg = PruneStore {
            kv: self.spec.kv,
            dir: Arc::clone(dir),
            policy: schedule.policy,
            consolidate: schedule.consolidate,
            keep,
            cancel: Arc::clone(&self.cancel),
            span: span.clone(),
            _slot: slot,
        };
        schedule
            .pruner
            .send(msg)
            .instrument(span)
            .into_actor(self)
            .map(|res, act, ctx| act.on_pruned(res, ctx))
            .spawn(ctx);
    }

    /// A prune came back: counted; a dir fsync of it that failed poisoned
    /// the dir, which fails the round (the store restarts, as after a
    /// link round's).
    fn on_pruned(&mut self, res: Result<Result<PruneReport>, MailboxError>, ctx: &mut Context<Self>) {
        let c = &self.spec.counters;
        match res.unwrap_or(Err(Error::ComponentStopped)) {
            Ok(report) => {
                StoreCounters::add(&c.prunes, 1);
                StoreCounters::add(&c.files_pruned, report.deleted.len() as u64);
                StoreCounters::add(&c.bytes_pruned, report.bytes_freed);
                c.last.lock().prune = report.skipped;
            }
            Err(e) => {
                StoreCounters::add(&c.failed_prunes, 1);
                c.last.lock().prune = Some(e.to_string());
            }
        }
        let usable = self.opened.as_ref().map_or(Ok(()), |(dir, _)| dir.check_usable());
        self.feed(Event::Pruned(usable), ctx);
    }

    fn count_round(&self, result: &Result<()>, took: Duration) {
        self.spec.counters.count_round(result, took);
        if let Err(e) = result {
            self.round_span.in_scope(|| {
                tracing::error!(error = %e, round = self.life.round(), "backup round failed; a later round retries");
            });
        }
    }

    /// Whether a tick may skip the linker, as far as this thread can tell:
    /// every linked file is reported and the engine's generation is the
    /// one the link set holds. One number compared on this thread; an
    /// engine that panics here gets a linked round instead, where the
    /// linker catches it. Asked only when the lifecycle would let the tick
    /// skip the linker.
    fn unchanged(&self) -> bool {
        if !self.life.may_skip_linker() || !self.spec.unacked.is_empty() {
            return false;
        }
        let Some(links) = &self.links else {
            return false;
        };
        let (engine, kv) = (&self.spec.shared.engine, self.spec.kv);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.generation(kv)))
            .is_ok_and(|generation| links.is_up_to_date(generation))
    }

    /// Hands the tick of the round due at `due` to the quiet ticker, if
    /// nothing is unacknowledged and the link set knows its generation:
    /// then each tick that finds the engine still there is a round the
    /// ticker runs (quiet, or calling back with nothing new), without this
    /// actor.
    fn hand_over_tick(&mut self, due: Instant, hand_over: HandOver) -> bool {
        if !self.spec.unacked.is_empty() {
            return false;
        }
        let Some(generation) = self.links.as_ref().and_then(|links| links.generation()) else {
            return false;
        };
        let (Some(actor), Some((_, session))) = (self.self_addr.clone(), self.opened.as_ref()) else {
            return false;
        };
        let call_back = hand_over.call_back.then(|| HandedCall {
            callback: Arc::clone(&self.spec.callback),
            session: *session,
            metadata_shard: self.spec.metadata_shard,
        });
        let store = QuietStore {
            kv: self.spec.kv,
            counters: Arc::clone(&self.spec.counters),
            actor,
            call_back,
        };
        let token = self
            .spec
            .shared
            .ticker
            .hold(store, generation, due, self.spec.interval, hand_over.until);
        self.quiet_tick = Some(token);
        true
    }

    /// Cancels the store's jobs and closes the metadata session (after every
    /// write queued before it); raises `SessionClosed` once it is closed.
    fn close(&mut self, ctx: &mut Context<Self>) {
        self.cancel.store(true, Ordering::Release);
        let Some((_, session)) = self.opened else {
            return self.follow_up.push_back(Event::SessionClosed);
        };
        let (done, closed) = oneshot::channel();
        self.spec.metadata().do_send(CloseSession {
            session,
            done: Some(done),
        });
        async move { closed.await.is_ok() }
            .into_actor(self)
            .map(|_, act, ctx| act.feed(Event::SessionClosed, ctx))
            .spawn(ctx);
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.self_addr = Some(Arc::new(ctx.address().downgrade().recipient()));
        self.span = tracing::info_span!(
            "backup",
            kv_store = self.spec.kv.0,
            generation = self.spec.generation
        );
        let open = OpenDir {
            kv: self.spec.kv,
            path: self.spec.dir.clone(),
            data_dir: self.spec.shared.engine.data_dir().map(Path::to_path_buf),
            counters: Arc::clone(&self.spec.counters),
            replica: self.spec.replica.clone(),
        };
        // `wait`: no message (a stop) is handled before the dir is open.
        self.spec
            .metadata()
            .send(open)
            .instrument(self.span.clone())
            .into_actor(self)
            .map(|res, act, ctx| match res.unwrap_or(Err(Error::ComponentStopped)) {
                Ok(opened) => {
                    let dropped = act.spec.unacked.keep_only_in(opened.dir.id());
                    if dropped > 0 {
                        act.span.in_scope(|| {
                            tracing::warn!(files = dropped, "files an earlier start placed in another backup dir are not reported in this one");
                        });
                    }
                    act.spec.counters.last.lock().dir = Some(act.spec.dir.clone());
                    act.opened = Some((opened.dir, opened.session));
                    act.rounds = Some(opened.rounds);
                    if let Some(tx) = act.on_started.take() {
                        let _ = tx.send(Ok(()));
                    }
                    act.span.in_scope(|| {
                        tracing::info!(dir = %act.spec.dir.display(), interval = ?act.spec.interval, "backup started");
                    });
                    act.feed(Event::Opened, ctx);
                }
                Err(e) => {
                    if let Some(tx) = act.on_started.take() {
                        let _ = tx.send(Err(e));
                    }
                    act.feed(Event::OpenFailed, ctx);
                }
            })
            .wait(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.cancel.store(true, Ordering::Release);
        if let Some(token) = self.quiet_tick.take() {
            self.spec.shared.ticker.take_back(token);
        }
        if !self.life.is_closed() {
            // Stopped without a close (the system is going down): later
            // writes of this start must still be refused.
            if let Some((_, session)) = self.opened {
                self.spec.metadata().do_send(CloseSession { session, done: None });
            }
        }
        self.span.in_scope(|| tracing::info!("backup stopped"));
        // The dir (and its lock, if this was its last holder) goes before
        // anyone is told the store stopped, so a new owner finds it free.
        drop(self.opened.take());
        let failed = self.life.final_failure().map(str::to_owned);
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(match &failed {
                None => Ok(()),
                Some(reason) => Err(Error::FinalRoundFailed {
                    kv: self.spec.kv,
                    reason: reason.clone(),
                }),
            });
        }
        self.spec.shared.supervisor.do_send(BackupEnded {
            kv: self.spec.kv,
            generation: self.spec.generation,
            opened: self.rounds.is_some(),
            unacked: std::mem::take(&mut self.spec.unacked),
        });
    }
}

impl Handler<QuietTickChanged> for BackupActor {
    type Result = ();

    fn handle(&mut self, msg: QuietTickChanged, ctx: &mut Context<Self>) {
        if self.quiet_tick != Some(msg.token) {
            // Taken back meanwhile (a stop, or the tick already came back):
            // a failed call is still a failed round of the store's.
            if let Some((error, took)) = msg.failed {
                self.count_round(&Err(error), took);
            }
            return;
        }
        self.quiet_tick = None;
        // A call's report comes while the ticker still holds the tick.
        self.spec.shared.ticker.take_back(msg.token);
        self.life.quiet_until(msg.due);
        match msg.failed {
            Some((error, took)) => self.feed(Event::HandedOverFailed { error, took }, ctx),
            None => {
                let unchanged = self.unchanged();
                self.feed(Event::Tick { unchanged }, ctx);
            }
        }
    }
}

impl Handler<StopStore> for BackupActor {
    type Result = ResponseFuture<Result<()>>;

    fn handle(&mut self, msg: StopStore, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        self.feed(
            Event::Stop {
                final_round: msg.final_round,
            },
            ctx,
        );
        Box::pin(async move { rx.await.unwrap_or(Ok(())) })
    }
}
