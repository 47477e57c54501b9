//! `BackupActor`: one per running KV store. A thin shell that schedules the
//! store's rounds and moves its [`LinkSet`] between itself and the linker
//! pool; the round logic is in [`state`], the timing in [`schedule`].
//!
//! A round: tick → `LinkRound` to the linker pool (snapshot, link, fsync dir)
//! → callback on the store's callback thread (snapshot held until it returns)
//! → acknowledge on success → with `Config::retention` on and a prune due,
//! `PruneStore` to the pruner thread → re-arm the tick with `run_later`. `phase` says
//! where a round is; a tick cannot come during a round because the next one
//! is armed only when the round ends, and explicit rounds (a final round)
//! wait for the one in flight.

pub(crate) mod schedule;
pub(crate) mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::callback::{BackupCallback, BackupFile, CallbackOutcome, CallbackRunner};
use crate::engine::{Engine, KvId};
use crate::error::{Error, Result};
use crate::fs::BackupDir;
use crate::linker::LinkerActor;
use crate::manifest::RoundLog;
use crate::messages::{BackupEnded, LinkRound, RoundLinked, StopStore};
use crate::metadata::{CloseSession, MetadataActor, MetadataWriter, OpenDir, SessionId};
use crate::pruner::{PruneSchedule, PruneStore};
use crate::replication::queue::Replica;
use crate::restore::PruneReport;
use crate::status::StoreCounters;
use state::{LinkSet, Unacked};

/// Everything a backup actor is started with.
pub(crate) struct BackupSpec {
    pub kv: KvId,
    pub generation: u64,
    pub dir: PathBuf,
    pub interval: Duration,
    pub max_backoff: Duration,
    pub callback: Arc<dyn BackupCallback>,
    pub linker: Addr<LinkerActor>,
    pub metadata: Addr<MetadataActor>,
    pub supervisor: Recipient<BackupEnded>,
    pub counters: Arc<StoreCounters>,
    /// The store's callback thread, shared by every start of the store so
    /// that callbacks of a stopping start and the next one never overlap.
    pub runner: CallbackRunner,
    /// Files an earlier start of the store linked but never got reported.
    pub unacked: Unacked,
    /// Wait before the first round (a restart's backoff); zero: at once.
    pub first_delay: Duration,
    /// The engine, asked for its generation on a tick when empty rounds are
    /// not reported.
    pub engine: Arc<dyn Engine>,
    /// `Config::report_empty_rounds`.
    pub report_empty_rounds: bool,
    /// The store's upload queue, when its backup dir is replicated.
    pub replica: Option<Arc<Replica>>,
    /// The component's retention, if on.
    pub prune: Option<PruneSchedule>,
}

/// Where the current round is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// At the linker pool (the link set is there too).
    Linking,
    /// In the callback.
    Calling,
    /// At the pruner thread, after a successful callback (`Config::retention`).
    Pruning,
}

struct Stopping {
    /// Whether any stop asked for a final round (its result is then replied).
    final_asked: bool,
    final_round_pending: bool,
    /// The final round's result, once it ran.
    final_result: Option<Result<()>>,
    waiters: Vec<oneshot::Sender<Result<()>>>,
}

/// Runs the rounds of one KV store.
pub(crate) struct BackupActor {
    spec: BackupSpec,
    on_started: Option<oneshot::Sender<Result<()>>>,
    span: tracing::Span,
    opened: Option<(Arc<BackupDir>, SessionId)>,
    /// The dir's round numbering, once it is open.
    rounds: Option<Arc<parking_lot::Mutex<RoundLog>>>,
    /// `None` while a round's links are at the linker pool.
    links: Option<Box<LinkSet>>,
    phase: Phase,
    /// Set on a stop without final round: the linker job links nothing more.
    cancel: Arc<AtomicBool>,
    rounds_started: u64,
    /// Whether the next tick is the one after the first successful round,
    /// placed at the store's offset to spread stores over the interval.
    spread_pending: bool,
    failures_in_a_row: u32,
    next_due: Instant,
    tick: Option<SpawnHandle>,
    stopping: Option<Stopping>,
    /// Set by `close`: no round starts any more.
    closed: bool,
    /// Set once the metadata thread has closed the session.
    session_closed: bool,
    /// When the store may be pruned again (with retention on).
    next_prune: Instant,
}

impl BackupActor {
    /// `on_started` is told once the backup dir is open (or could not be).
    pub fn new(spec: BackupSpec, on_started: oneshot::Sender<Result<()>>) -> Self {
        BackupActor {
            spec,
            on_started: Some(on_started),
            span: tracing::Span::none(),
            opened: None,
            rounds: None,
            links: Some(Box::default()),
            phase: Phase::Idle,
            cancel: Arc::new(AtomicBool::new(false)),
            rounds_started: 0,
            spread_pending: true,
            failures_in_a_row: 0,
            next_due: Instant::now(),
            tick: None,
            stopping: None,
            closed: false,
            session_closed: false,
            next_prune: Instant::now(),
        }
    }

    fn start_round(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Idle || self.closed {
            return; // coalesced: the running round picks up what is new
        }
        let (Some((dir, _)), Some(rounds)) = (&self.opened, &self.rounds) else {
            return;
        };
        let Some(links) = self.links.take() else {
            return;
        };
        self.phase = Phase::Linking;
        self.rounds_started += 1;
        let span = tracing::info_span!(parent: &self.span, "round", round = self.rounds_started);
        let started = Instant::now();
        let msg = LinkRound {
            kv: self.spec.kv,
            dir: Arc::clone(dir),
            rounds: Arc::clone(rounds),
            links,
            cancel: Arc::clone(&self.cancel),
            span: span.clone(),
        };
        self.spec
            .linker
            .send(msg)
            .instrument(span.clone())
            .into_actor(self)
            .map(move |res, act, ctx| act.on_linked(res, started, span, ctx))
            .spawn(ctx);
    }

    fn on_linked(
        &mut self,
        res: Result<RoundLinked, MailboxError>,
        started: Instant,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        let RoundLinked { links, outcome } = match res {
            Ok(linked) => linked,
            Err(_) => {
                // The pool is gone with the link set: start over, as on
                // start (placing is idempotent, so nothing is linked twice).
                self.links = Some(Box::default());
                if self.closed {
                    return self.linked_after_close(ctx);
                }
                return self.finish_round(Err(Error::ComponentStopped), started, ctx);
            }
        };
        self.links = Some(links);
        let linked = match outcome {
            Ok(mut linked) => {
                self.count_linked(&mut linked);
                linked
            }
            Err(_) if self.closed => return self.linked_after_close(ctx),
            Err(e) => return self.finish_round(Err(e), started, ctx),
        };
        if self.closed {
            // Stopped while linking: what was placed stays unacknowledged and
            // goes to the next start of the store.
            return self.linked_after_close(ctx);
        }
        let Some((_, session)) = self.opened else {
            return;
        };
        let reported = self.spec.unacked.report();
        if reported.is_empty() && !self.spec.report_empty_rounds && self.stopping.is_none() {
            // Nothing to report and empty rounds are not reported (a final
            // round always calls back): the round ends here.
            drop(linked);
            return self.quiet_round(ctx);
        }
        self.phase = Phase::Calling;
        let writer = MetadataWriter::new(self.spec.kv, session, self.spec.metadata.clone());
        let done = self.spec.runner.run(
            Arc::clone(&self.spec.callback),
            linked.snapshot,
            reported.clone(),
            writer,
            span.clone(),
        );
        done.instrument(span)
            .into_actor(self)
            .map(move |out, act, ctx| act.on_called(out, reported, started, ctx))
            .spawn(ctx);
    }

    /// Counts a round's links and queues its files for reporting and, when
    /// replicated, for upload: they are durable now, and a metadata file
    /// written by this round's callback queues behind them.
    fn count_linked(&mut self, linked: &mut crate::messages::Linked) {
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
        reported: Vec<BackupFile>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        let result = match out {
            Ok(CallbackOutcome { result, took }) => {
                let c = &self.spec.counters;
                StoreCounters::add(&c.callbacks, 1);
                StoreCounters::add(
                    &c.callback_nanos,
                    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                );
                result
            }
            Err(_) => Err(Error::ComponentStopped),
        };
        if result.is_ok() {
            self.spec.unacked.acknowledge(&reported);
            if self.start_prune(started, ctx) {
                return;
            }
        }
        self.finish_round(result, started, ctx);
    }

    /// Sends the store's dir to the pruner thread, if retention is on and
    /// a prune is due; the round then ends when it is done. Keeps every
    /// file not yet reported or uploaded. Returns whether it was sent.
    fn start_prune(&mut self, started: Instant, ctx: &mut Context<Self>) -> bool {
        let (Some(schedule), Some((dir, _))) = (&self.spec.prune, &self.opened) else {
            return false;
        };
        // A stopping store ends without one (its stop is not held up).
        if self.closed || self.stopping.is_some() || Instant::now() < self.next_prune {
            return false;
        }
        let mut keep: std::collections::HashSet<String> =
            self.spec.unacked.report().into_iter().map(|f| f.name).collect();
        if let Some(replica) = &self.spec.replica {
            match replica.pending_names() {
                Some(pending) => keep.extend(pending),
                None => {
                    // Tried again after the next round.
                    self.spec.counters.last.lock().prune = Some(
                        "waiting for the remote copy's rescan: which files are still to upload is not known"
                            .into(),
                    );
                    return false;
                }
            }
        }
        let Some(slot) = schedule.try_slot() else {
            return false; // another store's prune runs: after the next round
        };
        self.next_prune = Instant::now() + schedule.every;
        self.phase = Phase::Pruning;
        let span = tracing::info_span!(parent: &self.span, "prune", round = self.rounds_started);
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
            .map(move |res, act, ctx| act.on_pruned(res, started, ctx))
            .spawn(ctx);
        true
    }

    /// A prune came back: counted; the round ends (a dir whose fsync
    /// failed fails the round, which restarts the store as a link's would).
    fn on_pruned(
        &mut self,
        res: Result<Result<PruneReport>, MailboxError>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        let c = &self.spec.counters;
        let mut result = Ok(());
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
        // A dir fsync of the prune that failed poisoned the dir: it must be
        // opened again, as after a link round's.
        if let Some((dir, _)) = &self.opened {
            result = dir.check_usable();
        }
        if self.closed {
            return self.linked_after_close(ctx);
        }
        self.finish_round(result, started, ctx);
    }

    fn finish_round(&mut self, result: Result<()>, started: Instant, ctx: &mut Context<Self>) {
        self.phase = Phase::Idle;
        let c = &self.spec.counters;
        StoreCounters::add(&c.rounds, 1);
        {
            let mut last = c.last.lock();
            last.finished = Some(SystemTime::now());
            last.duration = Some(started.elapsed());
            match &result {
                Ok(()) => last.error = None,
                Err(e) => {
                    StoreCounters::add(&c.failed_rounds, 1);
                    self.span.in_scope(|| {
                        tracing::error!(error = %e, round = self.rounds_started, "backup round failed; a later round retries");
                    });
                    last.error = Some(e.to_string());
                }
            }
        }
        self.failures_in_a_row = if result.is_ok() {
            0
        } else {
            self.failures_in_a_row + 1
        };
        if matches!(result, Err(Error::BackupDirPoisoned { .. })) && self.stopping.is_none() {
            // The dir must be opened again: fail, and let the supervisor
            // restart this store.
            return self.close(ctx);
        }
        if let Some(stopping) = self.stopping.as_mut() {
            if !stopping.final_round_pending && stopping.final_result.is_none() {
                // This was the final round (or the round it waited for, when
                // no final round was asked: then the result is unused).
                stopping.final_result = Some(result);
            }
            return self.advance_stop(ctx);
        }
        self.schedule_next(ctx);
    }

    /// Whether a tick may end without a round: empty rounds are not
    /// reported, the last round succeeded, every linked file is reported,
    /// and the engine's generation is the one the link set holds. One
    /// number compared on this thread; an engine that panics here gets a
    /// full round instead, where the linker catches it.
    fn nothing_new(&self) -> bool {
        if self.spec.report_empty_rounds
            || self.phase != Phase::Idle
            || self.failures_in_a_row > 0
            || !self.spec.unacked.is_empty()
        {
            return false;
        }
        let Some(links) = &self.links else {
            return false;
        };
        let (engine, kv) = (&self.spec.engine, self.spec.kv);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.generation(kv)))
            .is_ok_and(|generation| links.is_up_to_date(generation))
    }

    /// Ends a round that found nothing to report, with empty rounds not
    /// reported: no callback, counted in `quiet_rounds`, next tick armed.
    fn quiet_round(&mut self, ctx: &mut Context<Self>) {
        StoreCounters::add(&self.spec.counters.quiet_rounds, 1);
        self.phase = Phase::Idle;
        self.failures_in_a_row = 0;
        self.schedule_next(ctx);
    }

    fn schedule_next(&mut self, ctx: &mut Context<Self>) {
        let step = if self.failures_in_a_row > 0 {
            schedule::backoff(self.spec.interval, self.spec.max_backoff, self.failures_in_a_row)
        } else if std::mem::take(&mut self.spread_pending) {
            schedule::first_offset(self.spec.kv, self.spec.interval)
        } else {
            self.spec.interval
        };
        let now = Instant::now();
        self.next_due = schedule::next_due(self.next_due, step, now);
        self.tick = Some(ctx.run_later(self.next_due - now, |act, ctx| {
            act.tick = None;
            if act.nothing_new() {
                act.quiet_round(ctx);
            } else {
                act.start_round(ctx);
            }
        }));
    }

    fn advance_stop(&mut self, ctx: &mut Context<Self>) {
        let Some(stopping) = self.stopping.as_mut() else {
            return;
        };
        if stopping.final_round_pending && self.opened.is_some() && !self.closed {
            stopping.final_round_pending = false;
            self.start_round(ctx);
        } else {
            if stopping.final_round_pending && self.closed {
                // Closing already (a poisoned dir): the final round asked
                // for cannot run, and the stop must say so.
                stopping.final_round_pending = false;
                stopping.final_result = Some(Err(Error::BackupStopped { kv: self.spec.kv }));
            }
            self.close(ctx);
        }
    }

    /// Closes the metadata session (after every write queued before it);
    /// the actor stops once no linker job of it is left.
    fn close(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.cancel.store(true, Ordering::Release);
        let Some((_, session)) = self.opened else {
            return ctx.stop();
        };
        let (done, closed) = oneshot::channel();
        self.spec.metadata.do_send(CloseSession {
            session,
            done: Some(done),
        });
        async move { closed.await.is_ok() }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.session_closed = true;
                // A job at the linker pool or the pruner finishes first (it
                // is cancelled, so it links or unlinks at most one more
                // file): on_linked or on_pruned stops then.
                if !matches!(act.phase, Phase::Linking | Phase::Pruning) {
                    ctx.stop();
                }
            })
            .spawn(ctx);
    }

    /// A round's linker or prune job came back after `close`: stop once the session
    /// is closed too (else the close's reply stops the actor).
    fn linked_after_close(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Idle;
        if self.session_closed {
            ctx.stop();
        }
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.span = tracing::info_span!(
            "backup",
            kv_store = self.spec.kv.0,
            generation = self.spec.generation
        );
        let open = OpenDir {
            kv: self.spec.kv,
            path: self.spec.dir.clone(),
            data_dir: self.spec.engine.data_dir().map(Path::to_path_buf),
            counters: Arc::clone(&self.spec.counters),
            replica: self.spec.replica.clone(),
        };
        // `wait`: no message (a stop) is handled before the dir is open.
        self.spec
            .metadata
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
                    act.next_due = Instant::now();
                    if act.spec.first_delay.is_zero() {
                        act.start_round(ctx);
                    } else {
                        act.next_due += act.spec.first_delay;
                        act.tick = Some(ctx.run_later(act.spec.first_delay, |act, ctx| {
                            act.tick = None;
                            act.start_round(ctx);
                        }));
                    }
                }
                Err(e) => {
                    if let Some(tx) = act.on_started.take() {
                        let _ = tx.send(Err(e));
                    }
                    act.closed = true;
                    ctx.stop();
                }
            })
            .wait(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.cancel.store(true, Ordering::Release);
        if !self.closed {
            // Stopped without a close (the system is going down): later
            // writes of this start must still be refused.
            if let Some((_, session)) = self.opened {
                self.spec.metadata.do_send(CloseSession { session, done: None });
            }
        }
        self.span.in_scope(|| tracing::info!("backup stopped"));
        // The dir (and its lock, if this was its last holder) goes before
        // anyone is told the store stopped, so a new owner finds it free.
        drop(self.opened.take());
        if let Some(stopping) = self.stopping.take() {
            let failed = match stopping.final_result {
                Some(Err(e)) if stopping.final_asked => Some(e.to_string()),
                _ => None,
            };
            for waiter in stopping.waiters {
                let _ = waiter.send(match &failed {
                    None => Ok(()),
                    Some(reason) => Err(Error::FinalRoundFailed {
                        kv: self.spec.kv,
                        reason: reason.clone(),
                    }),
                });
            }
        }
        self.spec.supervisor.do_send(BackupEnded {
            kv: self.spec.kv,
            generation: self.spec.generation,
            unacked: std::mem::take(&mut self.spec.unacked),
        });
    }
}

impl Handler<StopStore> for BackupActor {
    type Result = ResponseFuture<Result<()>>;

    fn handle(&mut self, msg: StopStore, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(tick) = self.tick.take() {
            ctx.cancel_future(tick);
        }
        let (tx, rx) = oneshot::channel();
        let stopping = self.stopping.get_or_insert(Stopping {
            final_asked: msg.final_round,
            final_round_pending: msg.final_round,
            final_result: None,
            waiters: Vec::new(),
        });
        // A later stop without a final round abandons one still to come.
        stopping.final_round_pending &= msg.final_round;
        stopping.final_asked &= msg.final_round;
        stopping.waiters.push(tx);
        match self.phase {
            Phase::Idle => self.advance_stop(ctx),
            // Do not wait for a round that may sit in a blocked callback.
            _ if !msg.final_round => self.close(ctx),
            _ => {} // the final round follows the one in flight
        }
        Box::pin(async move { rx.await.unwrap_or(Ok(())) })
    }
}
