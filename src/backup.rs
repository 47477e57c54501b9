//! `BackupActor`: one per running KV store. A thin shell that schedules the
//! store's rounds and moves its [`BackupState`] between the linker pool and
//! the store's callback thread; the round logic itself is in [`state`].
//!
//! A round: tick → `LinkRound` to the linker pool (snapshot, link, fsync dir)
//! → callback on the store's own thread (snapshot held until it returns) →
//! acknowledge on success → re-arm the tick with `run_later`. The state is
//! out at the linker while a round links, and `in_flight` stays set until the
//! callback returns, so rounds of one store never overlap; a tick cannot come
//! during a round because the next one is armed only when the round ends.

pub(crate) mod schedule;
pub(crate) mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::callback::{BackupCallback, BackupFile, CallbackOutcome, CallbackRunner};
use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::fs::BackupDir;
use crate::linker::LinkerActor;
use crate::messages::{BackupEnded, CloseSession, LinkRound, OpenDir, RoundLinked, SessionId, StopStore};
use crate::metadata::{MetadataActor, MetadataWriter};
use crate::status::StoreCounters;
use state::BackupState;

/// Everything a backup actor is started with.
pub(crate) struct BackupSpec {
    pub kv: KvId,
    pub generation: u64,
    pub dir: PathBuf,
    pub interval: Duration,
    pub callback: Arc<dyn BackupCallback>,
    pub linker: Addr<LinkerActor>,
    pub metadata: Addr<MetadataActor>,
    pub supervisor: Recipient<BackupEnded>,
    pub counters: Arc<StoreCounters>,
}

struct Stopping {
    final_round_pending: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

/// Runs the rounds of one KV store.
pub(crate) struct BackupActor {
    spec: BackupSpec,
    on_started: Option<oneshot::Sender<Result<()>>>,
    span: tracing::Span,
    opened: Option<(Arc<BackupDir>, SessionId)>,
    /// `None` while a round's links are at the linker pool.
    state: Option<Box<BackupState>>,
    in_flight: bool,
    rounds_started: u64,
    next_due: Instant,
    tick: Option<SpawnHandle>,
    stopping: Option<Stopping>,
    closed: bool,
    runner: CallbackRunner,
}

impl BackupActor {
    /// `on_started` is told once the backup dir is open (or could not be).
    pub fn new(spec: BackupSpec, on_started: oneshot::Sender<Result<()>>) -> Self {
        let kv = spec.kv;
        BackupActor {
            spec,
            on_started: Some(on_started),
            span: tracing::Span::none(),
            opened: None,
            state: Some(Box::default()),
            in_flight: false,
            rounds_started: 0,
            next_due: Instant::now(),
            tick: None,
            stopping: None,
            closed: false,
            runner: CallbackRunner::new(kv),
        }
    }

    fn start_round(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.closed {
            return; // coalesced: the running round picks up what is new
        }
        let Some((dir, _)) = &self.opened else {
            return;
        };
        let Some(state) = self.state.take() else {
            return;
        };
        self.in_flight = true;
        self.rounds_started += 1;
        let span = tracing::info_span!(parent: &self.span, "round", round = self.rounds_started);
        let started = Instant::now();
        let span_for_callback = span.clone();
        let msg = LinkRound {
            kv: self.spec.kv,
            dir: Arc::clone(dir),
            state,
            span: span.clone(),
        };
        self.spec
            .linker
            .send(msg)
            .instrument(span)
            .into_actor(self)
            .map(move |res, act, ctx| act.on_linked(res, started, span_for_callback, ctx))
            .spawn(ctx);
    }

    fn on_linked(
        &mut self,
        res: Result<RoundLinked, MailboxError>,
        started: Instant,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        let RoundLinked { state, outcome } = match res {
            Ok(linked) => linked,
            Err(_) => {
                // The pool is gone with the state: start over, as on start
                // (placing is idempotent, so nothing is linked twice).
                self.state = Some(Box::default());
                return self.finish_round(Err(Error::ComponentStopped), started, ctx);
            }
        };
        self.state = Some(state);
        let linked = match outcome {
            Ok(linked) => linked,
            Err(e) => return self.finish_round(Err(e), started, ctx),
        };
        let c = &self.spec.counters;
        StoreCounters::add(&c.files_linked, linked.files_linked);
        StoreCounters::add(&c.bytes_linked, linked.bytes_linked);
        StoreCounters::add(&c.files_copied, linked.files_copied);
        StoreCounters::add(&c.bytes_copied, linked.bytes_copied);
        if linked.files_copied > 0 {
            c.cross_device.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let Some((_, session)) = self.opened else {
            return;
        };
        let writer = MetadataWriter::new(self.spec.kv, session, self.spec.metadata.clone());
        let reported = linked.report.clone();
        let done = self.runner.run(
            Arc::clone(&self.spec.callback),
            linked.snapshot,
            linked.report,
            writer,
            span,
        );
        done.into_actor(self)
            .map(move |out, act, ctx| act.on_called(out, reported, started, ctx))
            .spawn(ctx);
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
            if let Some(state) = self.state.as_mut() {
                state.acknowledge(&reported);
            }
        }
        self.finish_round(result, started, ctx);
    }

    fn finish_round(&mut self, result: Result<()>, started: Instant, ctx: &mut Context<Self>) {
        self.in_flight = false;
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
                    let _entered = self.span.enter();
                    tracing::error!(error = %e, round = self.rounds_started, "backup round failed; the next round retries");
                    last.error = Some(e.to_string());
                }
            }
        }
        if self.stopping.is_some() {
            self.advance_stop(ctx);
        } else {
            self.schedule_next(ctx);
        }
    }

    fn schedule_next(&mut self, ctx: &mut Context<Self>) {
        let step = if self.rounds_started == 1 {
            schedule::first_offset(self.spec.kv, self.spec.interval)
        } else {
            self.spec.interval
        };
        let now = Instant::now();
        self.next_due = schedule::next_due(self.next_due, step, now);
        self.tick = Some(ctx.run_later(self.next_due - now, |act, ctx| {
            act.tick = None;
            act.start_round(ctx);
        }));
    }

    fn advance_stop(&mut self, ctx: &mut Context<Self>) {
        let Some(stopping) = self.stopping.as_mut() else {
            return;
        };
        if stopping.final_round_pending && self.opened.is_some() {
            stopping.final_round_pending = false;
            self.start_round(ctx);
        } else {
            self.close(ctx);
        }
    }

    /// Closes the metadata session (after every write queued before), then
    /// answers the stop and stops the actor.
    fn close(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let Some((_, session)) = self.opened else {
            return ctx.stop();
        };
        self.spec
            .metadata
            .send(CloseSession { session })
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop())
            .wait(ctx);
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.span = tracing::info_span!("backup", kv_store = self.spec.kv.0);
        let open = OpenDir {
            kv: self.spec.kv,
            path: self.spec.dir.clone(),
            counters: Arc::clone(&self.spec.counters),
        };
        let span = self.span.clone();
        // `wait`: no message (a stop, a status) is handled before the dir is open.
        self.spec
            .metadata
            .send(open)
            .instrument(span)
            .into_actor(self)
            .map(|res, act, ctx| {
                let res = res.unwrap_or(Err(Error::ComponentStopped));
                match res {
                    Ok(opened) => {
                        act.spec.counters.last.lock().dir = Some(act.spec.dir.clone());
                        act.opened = Some((opened.dir, opened.session));
                        if let Some(tx) = act.on_started.take() {
                            let _ = tx.send(Ok(()));
                        }
                        act.span.in_scope(|| {
                            tracing::info!(dir = %act.spec.dir.display(), interval = ?act.spec.interval, "backup started");
                        });
                        act.next_due = Instant::now();
                        act.start_round(ctx);
                    }
                    Err(e) => {
                        if let Some(tx) = act.on_started.take() {
                            let _ = tx.send(Err(e));
                        }
                        act.closed = true;
                        ctx.stop();
                    }
                }
            })
            .wait(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let _entered = self.span.enter();
        tracing::info!("backup stopped");
        if let Some(stopping) = self.stopping.take() {
            for waiter in stopping.waiters {
                let _ = waiter.send(());
            }
        }
        self.spec.supervisor.do_send(BackupEnded {
            kv: self.spec.kv,
            generation: self.spec.generation,
        });
    }
}

impl Handler<StopStore> for BackupActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: StopStore, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(tick) = self.tick.take() {
            ctx.cancel_future(tick);
        }
        let (tx, rx) = oneshot::channel();
        let stopping = self.stopping.get_or_insert(Stopping {
            final_round_pending: msg.final_round,
            waiters: Vec::new(),
        });
        stopping.waiters.push(tx);
        if !self.in_flight {
            self.advance_stop(ctx);
        } else if !msg.final_round {
            // Do not wait for a round that may sit in a blocked callback.
            self.close(ctx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
