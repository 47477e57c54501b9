//! One store's lifecycle as a plain state machine: events in, actions out.
//!
//! [`Lifecycle::handle`] takes what happened (the dir opened, a tick came,
//! the links are durable, the callback returned, a stop was asked, ...) with
//! the time it happened, and returns what to do next (link, call back,
//! prune, arm a tick at `t`, close the session, stop). It does no I/O and
//! reads no clock, so a unit test drives it with made-up instants; the
//! [`BackupActor`](super::BackupActor) only carries the actions out, as a
//! raft-rs application carries out a `RawNode`'s `Ready`.
//!
//! The rules it keeps:
//! - **Rounds never overlap**: a round starts only from `Idle`, a tick is
//!   armed only when a round ends, and a final round asked during a round
//!   runs after it.
//! - **No burst after a stall**: the next round is one step after the
//!   previous due time, or now if that has passed.
//! - **A failing store backs off** (doubling up to `max_backoff`), and
//!   one success returns it to the interval.
//! - **A stop without final round does not wait** for a round in flight;
//!   with one, it waits for the round in flight and then runs one more.
//! - **The actor stops only once the session is closed and no linker or
//!   pruner job of it is out** (a job out holds the dir).
//! - An event that cannot come in the current phase is an
//!   [`Impossible`] error: the state is left as it was, and the caller logs
//!   and counts it (never a silent stall).

use std::time::{Duration, Instant};

use crate::backoff::backoff;
use crate::backup::schedule::{self, TickGrid};
use crate::engine::KvId;
use crate::error::Error;

/// What a lifecycle is started with.
#[derive(Clone, Debug)]
pub(crate) struct LifecycleConfig {
    pub kv: KvId,
    pub interval: Duration,
    pub max_backoff: Duration,
    /// `Config::report_empty_rounds`.
    pub report_empty_rounds: bool,
    /// Wait before the first round (a restart's backoff); zero: at once.
    pub first_delay: Duration,
    /// How often the store is pruned, with retention on.
    pub prune_every: Option<Duration>,
    /// Where ticks are armed: the component's grid.
    pub grid: TickGrid,
}

/// Where the store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the backup dir to open.
    Opening,
    /// Between rounds.
    Idle,
    /// A round's links are at the linker pool.
    Linking,
    /// In the callback.
    Calling,
    /// At the pruner thread, after a successful callback.
    Pruning,
    /// The actor was told to stop: nothing more happens.
    Ended,
}

/// How a round's linking went.
#[derive(Debug)]
pub(crate) enum LinkOutcome {
    /// Durable; `to_report` says whether any linked file awaits a callback.
    Linked { to_report: bool },
    /// The round failed (or the pool is gone).
    Failed(Error),
}

/// What happened.
#[derive(Debug)]
pub(crate) enum Event {
    /// The backup dir is open.
    Opened,
    /// The backup dir could not be opened.
    OpenFailed,
    /// The armed tick fired. `unchanged`: every linked file is reported
    /// and the engine's generation is the one the link set holds.
    Tick { unchanged: bool },
    /// The snapshot a callback thread took for a round that skipped the
    /// linker ([`Action::CallBackUnchanged`]) was not at the linked
    /// generation: nothing was called; the round links after all.
    SnapshotChanged,
    /// The linker job came back.
    Linked(LinkOutcome),
    /// The callback returned (`Err` also when its thread is gone).
    Called(Result<(), Error>),
    /// The prune asked for could not be sent (another store's prune runs,
    /// or what is still to upload is not known): the round ends.
    PruneNotStarted,
    /// The prune came back; `Err` if it left the dir unusable.
    Pruned(Result<(), Error>),
    /// A round the quiet ticker ran for a handed-over tick (the callback
    /// with nothing new, see [`HandOver::call_back`]) failed in its callback
    /// after `took`. Comes instead of the tick; the shell told
    /// [`Lifecycle::quiet_until`] the round's due time first.
    HandedOverFailed { error: Error, took: Duration },
    /// A stop, with or without a final round.
    Stop { final_round: bool },
    /// The metadata session is closed.
    SessionClosed,
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Opened => "opened",
            Event::OpenFailed => "open failed",
            Event::Tick { .. } => "tick",
            Event::SnapshotChanged => "snapshot changed",
            Event::Linked(_) => "linked",
            Event::Called(_) => "called back",
            Event::PruneNotStarted => "prune not started",
            Event::Pruned(_) => "pruned",
            Event::HandedOverFailed { .. } => "handed-over round failed",
            Event::Stop { .. } => "stop",
            Event::SessionClosed => "session closed",
        }
    }
}

/// What to do, in order.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send the link set to the linker pool for round `round`.
    Link { round: u64 },
    /// Run the callback with what the round linked.
    CallBack,
    /// Run the callback of a round with nothing new, without the linker:
    /// the callback thread takes the snapshot, and calls back only if it is
    /// still at the linked generation (else answer `SnapshotChanged`).
    CallBackUnchanged,
    /// Send the dir to the pruner (answer with `Pruned` or `PruneNotStarted`).
    Prune,
    /// Arm the tick at `at` (no tick is armed now), for the round due at
    /// `due`. With `hand_over`, the shell may hand this tick and the ones
    /// after it to its quiet ticker (see [`HandOver`]) and tell
    /// [`Lifecycle::quiet_until`] when one comes back.
    ArmTick {
        at: Instant,
        due: Instant,
        hand_over: Option<HandOver>,
    },
    /// Cancel the armed tick.
    CancelTick,
    /// A round ended: count it (and log a failure). `took` from its start.
    RoundEnded {
        result: Result<(), Error>,
        took: Duration,
    },
    /// A tick found nothing new: counted as a quiet round, no callback.
    QuietRound,
    /// Cancel the store's jobs and close its metadata session (answer
    /// with `SessionClosed`).
    Close,
    /// Stop the actor.
    StopActor,
}

/// When a tick may be handed over: a tick that finds nothing new is then a
/// round followed by the tick one interval on, nothing else (the last round
/// succeeded, this start called back, no stop, no spread step pending), so
/// the quiet ticker can run it without the store's actor: a quiet round, or
/// with `call_back` the callback with nothing new. A handed-over tick comes
/// back to the store when it finds a change, when its callback failed
/// ([`Event::HandedOverFailed`]), or once `until` has passed (a prune is
/// due then, which only the store runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HandOver {
    /// Empty rounds are reported: each round calls back with nothing new.
    pub call_back: bool,
    /// The first time a tick must come back to the store.
    pub until: Option<Instant>,
}

/// An event that cannot come in the phase the store is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV store {kv}: event `{event}` cannot come while {phase:?}{}", if *closed { " (closed)" } else { "" })]
pub(crate) struct Impossible {
    pub kv: KvId,
    pub event: &'static str,
    pub phase: Phase,
    pub closed: bool,
}

#[derive(Debug)]
struct Stopping {
    /// Whether every stop asked for a final round (its result is replied).
    final_asked: bool,
    final_round_pending: bool,
    /// The final round's result, once it ran (an error's text).
    final_result: Option<Result<(), String>>,
}

/// One store's lifecycle. See the module docs.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    cfg: LifecycleConfig,
    phase: Phase,
    rounds_started: u64,
    round_started: Option<Instant>,
    /// Whether the next step is the one after the first successful round,
    /// placed at the store's offset to spread stores over the interval.
    spread_pending: bool,
    failures_in_a_row: u32,
    next_due: Option<Instant>,
    tick_armed: bool,
    stopping: Option<Stopping>,
    /// Set by `close`: no round starts any more.
    closed: bool,
    /// Whether the callback in flight is a [`Action::CallBackUnchanged`].
    unlinked_call: bool,
    /// Whether a round of this start called back successfully: until then
    /// every round calls back (the first call hands the start its
    /// metadata writer), empty rounds reported or not.
    called_back: bool,
    session_closed: bool,
    next_prune: Option<Instant>,
}

impl Lifecycle {
    /// A store whose dir is being opened.
    pub fn new(cfg: LifecycleConfig) -> Self {
        Lifecycle {
            cfg,
            phase: Phase::Opening,
            rounds_started: 0,
            round_started: None,
            spread_pending: true,
            failures_in_a_row: 0,
            next_due: None,
            tick_armed: false,
            stopping: None,
            closed: false,
            unlinked_call: false,
            called_back: false,
            session_closed: false,
            next_prune: None,
        }
    }

    /// Where the store is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The number of the round started last.
    pub fn round(&self) -> u64 {
        self.rounds_started
    }

    /// Failed rounds since the last success.
    #[cfg(test)]
    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row
    }

    /// Whether the next tick may skip the linker if nothing changed (be
    /// quiet, or with empty rounds reported call back at once): the last
    /// round succeeded, and this start's first round ran (it lists the
    /// whole snapshot, reports what an earlier start left unreported, and
    /// writes a full manifest).
    pub fn may_skip_linker(&self) -> bool {
        self.failures_in_a_row == 0 && self.rounds_started > 0
    }

    /// Whether the store is closing or closed: no round starts any more.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// What the stop's waiters are told: the final round's error, if a
    /// final round was asked by every stop and failed.
    pub fn final_failure(&self) -> Option<&str> {
        match &self.stopping {
            Some(Stopping {
                final_asked: true,
                final_result: Some(Err(reason)),
                ..
            }) => Some(reason),
            _ => None,
        }
    }

    /// Takes `event`, which happened at `now`; returns what to do, or
    /// [`Impossible`] (and changes nothing) if it cannot come now.
    pub fn handle(&mut self, event: Event, now: Instant) -> Result<Vec<Action>, Impossible> {
        let impossible = |this: &Self, event: &Event| Impossible {
            kv: this.cfg.kv,
            event: event.name(),
            phase: this.phase,
            closed: this.closed,
        };
        let mut out = Vec::new();
        match (self.phase, event) {
            (Phase::Ended, event) => return Err(impossible(self, &event)),
            (Phase::Opening, Event::Opened) => {
                self.phase = Phase::Idle;
                self.next_due = Some(now);
                if self.stopping.is_some() {
                    self.advance_stop(now, &mut out);
                } else if self.cfg.first_delay.is_zero() {
                    self.start_round(now, false, &mut out);
                } else {
                    let at = now + self.cfg.first_delay;
                    self.next_due = Some(at);
                    self.arm(at, &mut out);
                }
            }
            (Phase::Opening, Event::OpenFailed) => {
                self.closed = true;
                self.end(&mut out);
            }
            (Phase::Idle, Event::Tick { unchanged }) if self.tick_armed => {
                self.tick_armed = false;
                let skip_linker = unchanged && self.may_skip_linker();
                if skip_linker && !self.cfg.report_empty_rounds {
                    self.quiet_round(now, &mut out);
                } else {
                    self.start_round(now, skip_linker, &mut out);
                }
            }
            (Phase::Linking, Event::Linked(outcome)) => match outcome {
                _ if self.closed => self.job_back_after_close(&mut out),
                LinkOutcome::Failed(e) => self.finish_round(Err(e), now, &mut out),
                LinkOutcome::Linked { to_report } => {
                    if !to_report
                        && !self.cfg.report_empty_rounds
                        && self.stopping.is_none()
                        && self.called_back
                    {
                        // Nothing to report and empty rounds are not
                        // reported (a final round, and every round until
                        // one called back, always calls back).
                        self.quiet_round(now, &mut out);
                    } else {
                        self.phase = Phase::Calling;
                        out.push(Action::CallBack);
                    }
                }
            },
            (Phase::Calling, Event::SnapshotChanged) if self.unlinked_call => {
                self.unlinked_call = false;
                if self.closed {
                    self.job_back_after_close(&mut out);
                } else {
                    self.phase = Phase::Linking;
                    out.push(Action::Link {
                        round: self.rounds_started,
                    });
                }
            }
            (Phase::Calling, Event::Called(result)) => {
                self.unlinked_call = false;
                self.called_back |= result.is_ok();
                let prune_due = self.cfg.prune_every.is_some()
                    && !self.closed
                    && self.stopping.is_none()
                    && self.next_prune.is_none_or(|at| now >= at);
                if result.is_ok() && prune_due {
                    self.phase = Phase::Pruning;
                    self.next_prune = self.cfg.prune_every.map(|every| now + every);
                    out.push(Action::Prune);
                } else {
                    self.finish_round(result, now, &mut out);
                }
            }
            (Phase::Pruning, Event::PruneNotStarted) => {
                self.next_prune = None; // tried again after the next round
                if self.closed {
                    self.job_back_after_close(&mut out);
                } else {
                    self.finish_round(Ok(()), now, &mut out);
                }
            }
            (Phase::Pruning, Event::Pruned(result)) => {
                if self.closed {
                    self.job_back_after_close(&mut out);
                } else {
                    self.finish_round(result, now, &mut out);
                }
            }
            (Phase::Idle, Event::HandedOverFailed { error, took }) if self.tick_armed => {
                self.tick_armed = false;
                self.rounds_started += 1;
                self.round_started = now.checked_sub(took);
                self.finish_round(Err(error), now, &mut out);
            }
            (phase, Event::Stop { final_round }) => {
                if self.tick_armed {
                    self.tick_armed = false;
                    out.push(Action::CancelTick);
                }
                let stopping = self.stopping.get_or_insert(Stopping {
                    final_asked: final_round,
                    final_round_pending: final_round,
                    final_result: None,
                });
                // A later stop without a final round abandons one to come.
                stopping.final_round_pending &= final_round;
                stopping.final_asked &= final_round;
                match phase {
                    Phase::Opening => {} // once open
                    Phase::Idle => self.advance_stop(now, &mut out),
                    // Do not wait for a round that may sit in a blocked callback.
                    _ if !final_round => self.close(&mut out),
                    _ => {} // the final round follows the one in flight
                }
            }
            (phase, Event::SessionClosed) if self.closed && !self.session_closed => {
                self.session_closed = true;
                // A job at the linker pool or the pruner comes back first
                // (it is cancelled: it links or unlinks at most one more
                // file), and the actor stops then.
                if !matches!(phase, Phase::Linking | Phase::Pruning) {
                    self.end(&mut out);
                }
            }
            (_, event) => return Err(impossible(self, &event)),
        }
        Ok(out)
    }

    /// Arms the tick of a round due at `at`, on the grid (`next_due` keeps
    /// `at` itself, so the grid never changes the period).
    fn arm(&mut self, at: Instant, out: &mut Vec<Action>) {
        self.tick_armed = true;
        out.push(Action::ArmTick {
            at: self.cfg.grid.arm_at(at, self.cfg.interval),
            due: at,
            hand_over: self.hand_over(),
        });
    }

    /// Whether the tick armed now may be handed over (see [`HandOver`]).
    fn hand_over(&self) -> Option<HandOver> {
        let plain = self.may_skip_linker()
            && self.called_back
            && self.stopping.is_none()
            && !self.closed
            && !self.spread_pending;
        if !plain {
            return None;
        }
        let call_back = self.cfg.report_empty_rounds;
        // A round that calls back prunes after it when one is due (a quiet
        // round never does): such a tick comes back by the next prune, and
        // is not handed over if one is due at the next round.
        let until = match (call_back, self.cfg.prune_every) {
            (true, Some(_)) => Some(self.next_prune?),
            _ => None,
        };
        Some(HandOver { call_back, until })
    }

    /// The ticks of an `ArmTick` with `hand_over` were handed over, and each
    /// was a round the ticker ran up to the one due at `due`, which comes
    /// back (a change, a failed callback, a prune due): the schedule
    /// continues from `due` (the tick itself comes next, as `Tick` or
    /// `HandedOverFailed`). Ignored unless that tick is still armed.
    pub fn quiet_until(&mut self, due: Instant) {
        if self.phase == Phase::Idle && self.tick_armed {
            self.next_due = Some(due);
        }
    }

    fn end(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Ended;
        out.push(Action::StopActor);
    }

    /// Starts a round at the linker, or with `skip_linker` (nothing new
    /// since the linked generation) on the callback thread.
    fn start_round(&mut self, now: Instant, skip_linker: bool, out: &mut Vec<Action>) {
        if self.phase != Phase::Idle || self.closed {
            return; // coalesced: the running round picks up what is new
        }
        self.rounds_started += 1;
        self.round_started = Some(now);
        if skip_linker {
            self.phase = Phase::Calling;
            self.unlinked_call = true;
            out.push(Action::CallBackUnchanged);
        } else {
            self.phase = Phase::Linking;
            out.push(Action::Link {
                round: self.rounds_started,
            });
        }
    }

    /// A round that found nothing to report ends without a callback.
    fn quiet_round(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.phase = Phase::Idle;
        self.failures_in_a_row = 0;
        out.push(Action::QuietRound);
        self.schedule_next(now, out);
    }

    fn finish_round(&mut self, result: Result<(), Error>, now: Instant, out: &mut Vec<Action>) {
        self.phase = Phase::Idle;
        self.failures_in_a_row = if result.is_ok() {
            0
        } else {
            self.failures_in_a_row.saturating_add(1)
        };
        let poisoned = matches!(result, Err(Error::BackupDirPoisoned { .. }));
        let text = result.as_ref().map_err(ToString::to_string).copied();
        let took = self
            .round_started
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        out.push(Action::RoundEnded { result, took });
        if poisoned && self.stopping.is_none() {
            // The dir must be opened again: end, and let the supervisor
            // restart this store.
            return self.close(out);
        }
        if let Some(stopping) = self.stopping.as_mut() {
            if !stopping.final_round_pending && stopping.final_result.is_none() {
                // This was the final round (or the round it waited for, when
                // no final round was asked: then the result is unused).
                stopping.final_result = Some(text);
            }
            return self.advance_stop(now, out);
        }
        self.schedule_next(now, out);
    }

    fn schedule_next(&mut self, now: Instant, out: &mut Vec<Action>) {
        let step = if self.failures_in_a_row > 0 {
            backoff(self.cfg.interval, self.cfg.max_backoff, self.failures_in_a_row)
        } else if std::mem::take(&mut self.spread_pending) {
            schedule::first_offset(self.cfg.kv, self.cfg.interval)
        } else {
            self.cfg.interval
        };
        let due = schedule::next_due(self.next_due.unwrap_or(now), step, now);
        self.next_due = Some(due);
        self.arm(due, out);
    }

    fn advance_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        let kv = self.cfg.kv;
        let Some(stopping) = self.stopping.as_mut() else {
            return;
        };
        if stopping.final_round_pending && !self.closed {
            stopping.final_round_pending = false;
            self.start_round(now, false, out);
        } else {
            if stopping.final_round_pending {
                // Closing already (a poisoned dir): the final round asked
                // for cannot run, and the stop must say so.
                stopping.final_round_pending = false;
                stopping.final_result = Some(Err(Error::BackupStopped { kv }.to_string()));
            }
            self.close(out);
        }
    }

    /// Cancels the jobs and closes the session (after every metadata write
    /// queued before it); the actor stops once no job of it is out.
    fn close(&mut self, out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        self.closed = true;
        out.push(Action::Close);
    }

    /// A linker or prune job came back after `close`.
    fn job_back_after_close(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Idle;
        if self.session_closed {
            self.end(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn cfg() -> LifecycleConfig {
        LifecycleConfig {
            kv: KvId(3),
            interval: 10 * SEC,
            max_backoff: 60 * SEC,
            report_empty_rounds: true,
            first_delay: Duration::ZERO,
            prune_every: None,
            grid: TickGrid::new(Instant::now(), Duration::ZERO),
        }
    }

    /// A lifecycle and its fake clock.
    struct Run {
        lc: Lifecycle,
        t0: Instant,
        now: Instant,
    }

    impl Run {
        fn new(cfg: LifecycleConfig) -> Run {
            let t0 = Instant::now();
            Run {
                lc: Lifecycle::new(cfg),
                t0,
                now: t0,
            }
        }

        /// Moves the clock to `t0 + at`.
        fn at(&mut self, at: Duration) -> &mut Self {
            self.now = self.t0 + at;
            self
        }

        fn send(&mut self, event: Event) -> Vec<Action> {
            self.lc.handle(event, self.now).expect("a possible event")
        }

        /// Shorthand for the actions' kinds, ticks as seconds after t0.
        fn kinds(&mut self, event: Event) -> Vec<String> {
            let t0 = self.t0;
            self.send(event)
                .iter()
                .map(|a| match a {
                    Action::Link { round } => format!("link {round}"),
                    Action::CallBack => "call back".into(),
                    Action::CallBackUnchanged => "call back unchanged".into(),
                    Action::Prune => "prune".into(),
                    Action::ArmTick { at, .. } => format!("tick at {:.1}", (*at - t0).as_secs_f64()),
                    Action::CancelTick => "cancel tick".into(),
                    Action::RoundEnded { result: Ok(()), .. } => "round ok".into(),
                    Action::RoundEnded { result: Err(_), .. } => "round failed".into(),
                    Action::QuietRound => "quiet".into(),
                    Action::Close => "close".into(),
                    Action::StopActor => "stop actor".into(),
                })
                .collect()
        }

        /// Runs one whole round from a tick (or from open) to its end.
        fn round_ok(&mut self) -> Vec<String> {
            let mut seen = self.kinds(Event::Linked(LinkOutcome::Linked { to_report: true }));
            assert_eq!(seen, ["call back"]);
            seen = self.kinds(Event::Called(Ok(())));
            seen
        }
    }

    fn linked() -> Event {
        Event::Linked(LinkOutcome::Linked { to_report: true })
    }

    fn failed() -> Event {
        Event::Linked(LinkOutcome::Failed(Error::ComponentStopped))
    }

    fn poisoned() -> Error {
        Error::BackupDirPoisoned {
            path: PathBuf::from("/b/3"),
        }
    }

    #[test]
    fn the_first_round_runs_at_open_and_the_second_at_the_stores_offset() {
        let mut r = Run::new(cfg());
        assert_eq!(r.kinds(Event::Opened), ["link 1"]);
        let offset = schedule::first_offset(KvId(3), 10 * SEC).as_secs_f64();
        assert_eq!(r.round_ok(), ["round ok", &format!("tick at {offset:.1}")]);
    }

    #[test]
    fn ticks_are_armed_on_the_components_grid_and_keep_the_interval() {
        let epoch = Instant::now();
        let slot = Duration::from_millis(10);
        let mut r = Run::new(LifecycleConfig {
            interval: SEC,
            grid: TickGrid::new(epoch, slot),
            ..cfg()
        });
        let armed = |actions: Vec<Action>| match actions.last() {
            Some(Action::ArmTick { at, .. }) => *at,
            other => panic!("no tick armed: {other:?}"),
        };
        r.send(Event::Opened);
        r.send(linked());
        let ended = r.now;
        let first = armed(r.send(Event::Called(Ok(()))));
        let due = ended + schedule::first_offset(KvId(3), SEC);
        assert_eq!((first - epoch).as_nanos() % slot.as_nanos(), 0, "on the grid");
        assert!(first >= due && first - due < slot, "at most one slot late");
        r.now = first;
        r.send(Event::Tick { unchanged: false });
        r.send(linked());
        r.now = first + Duration::from_millis(7);
        let second = armed(r.send(Event::Called(Ok(()))));
        assert_eq!(second - first, SEC, "the period is the interval");
    }

    /// The last action's `ArmTick` fields: (fires at, due, hand_over).
    fn armed(actions: &[Action]) -> (Instant, Instant, Option<HandOver>) {
        match actions.last() {
            Some(Action::ArmTick { at, due, hand_over }) => (*at, *due, *hand_over),
            other => panic!("no tick armed: {other:?}"),
        }
    }

    #[test]
    fn a_tick_may_be_handed_over_only_where_a_plain_round_would_follow_it() {
        let quiet = LifecycleConfig {
            report_empty_rounds: false,
            ..cfg()
        };
        let mut r = Run::new(quiet.clone());
        r.send(Event::Opened);
        r.send(linked());
        assert_eq!(
            armed(&r.send(Event::Called(Ok(())))).2,
            Some(HandOver {
                call_back: false,
                until: None
            }),
            "quiet, succeeded, called back"
        );

        let mut reported = Run::new(cfg());
        reported.send(Event::Opened);
        reported.send(linked());
        assert_eq!(
            armed(&reported.send(Event::Called(Ok(())))).2,
            Some(HandOver {
                call_back: true,
                until: None
            }),
            "empty rounds reported: the ticker calls back"
        );

        let mut failing = Run::new(quiet.clone());
        failing.send(Event::Opened);
        failing.send(linked());
        let acts = failing.send(Event::Called(Err(Error::ComponentStopped)));
        assert_eq!(
            armed(&acts).2,
            None,
            "a failed round is retried by the store itself"
        );

        let mut delayed = Run::new(LifecycleConfig {
            first_delay: SEC,
            ..quiet
        });
        assert_eq!(armed(&delayed.send(Event::Opened)).2, None, "no round ran yet");
    }

    #[test]
    fn a_reported_tick_is_handed_over_only_up_to_the_next_prune() {
        let mut r = Run::new(LifecycleConfig {
            prune_every: Some(60 * SEC),
            ..cfg()
        });
        r.send(Event::Opened);
        r.send(linked());
        assert_eq!(r.kinds(Event::Called(Ok(()))), ["prune"]);
        let (_, _, hand_over) = armed(&r.send(Event::Pruned(Ok(()))));
        assert_eq!(
            hand_over,
            Some(HandOver {
                call_back: true,
                until: Some(r.t0 + 60 * SEC)
            }),
            "back to the store when the next prune is due"
        );

        // A prune that could not start is due at the next round: that round
        // is the store's own.
        let mut busy = Run::new(LifecycleConfig {
            prune_every: Some(60 * SEC),
            ..cfg()
        });
        busy.send(Event::Opened);
        busy.send(linked());
        busy.send(Event::Called(Ok(())));
        assert_eq!(armed(&busy.send(Event::PruneNotStarted)).2, None);

        // Quiet rounds never prune: no limit.
        let mut quiet = Run::new(LifecycleConfig {
            prune_every: Some(60 * SEC),
            report_empty_rounds: false,
            ..cfg()
        });
        quiet.send(Event::Opened);
        quiet.send(linked());
        quiet.send(Event::Called(Ok(())));
        let (_, _, hand_over) = armed(&quiet.send(Event::Pruned(Ok(()))));
        assert_eq!(hand_over.map(|h| h.until), Some(None));
    }

    #[test]
    fn a_handed_over_round_whose_callback_failed_backs_off_and_links_next() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.send(linked());
        let (_, first_due, _) = armed(&r.send(Event::Called(Ok(()))));
        // Two rounds passed at the ticker; the third's callback failed.
        let due = first_due + 2 * 10 * SEC;
        r.now = due + Duration::from_millis(40);
        r.lc.quiet_until(due);
        let acts = r.send(Event::HandedOverFailed {
            error: Error::ComponentStopped,
            took: Duration::from_millis(30),
        });
        match &acts[0] {
            Action::RoundEnded { result: Err(_), took } => {
                assert_eq!(*took, Duration::from_millis(30), "counted as the store's round")
            }
            other => panic!("not a failed round: {other:?}"),
        }
        let (_, next_due, hand_over) = armed(&acts);
        assert_eq!(
            next_due,
            due + backoff(10 * SEC, 60 * SEC, 1),
            "backs off from the round's due time"
        );
        assert_eq!(hand_over, None, "a failing store runs its own rounds");
        assert_eq!(r.lc.failures_in_a_row(), 1);
        assert!(!r.lc.may_skip_linker(), "its next round links and reports again");
        r.now = next_due;
        assert_eq!(r.kinds(Event::Tick { unchanged: true }), ["link 3"]);
    }

    #[test]
    fn a_handed_over_tick_that_comes_back_continues_the_schedule_from_its_due_time() {
        let mut r = Run::new(LifecycleConfig {
            report_empty_rounds: false,
            ..cfg()
        });
        r.send(Event::Opened);
        r.send(linked());
        let (_, first_due, _) = armed(&r.send(Event::Called(Ok(()))));
        // Five quiet ticks passed at the ticker; the sixth found a flush.
        let due = first_due + 5 * 10 * SEC;
        r.now = due + Duration::from_millis(3);
        r.lc.quiet_until(due);
        assert_eq!(r.kinds(Event::Tick { unchanged: false }), ["link 2"]);
        r.send(linked());
        r.now += SEC;
        let (_, next_due, _) = armed(&r.send(Event::Called(Ok(()))));
        assert_eq!(
            next_due,
            due + 10 * SEC,
            "one interval after the tick, not after the first due"
        );
    }

    #[test]
    fn a_tick_cannot_come_during_a_round_so_rounds_never_overlap() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        let err = r.lc.handle(Event::Tick { unchanged: false }, r.now).unwrap_err();
        assert_eq!((err.event, err.phase), ("tick", Phase::Linking));
        assert_eq!(
            r.lc.phase(),
            Phase::Linking,
            "an impossible event changes nothing"
        );
        r.send(linked());
        assert!(r.lc.handle(Event::Tick { unchanged: false }, r.now).is_err());
        r.send(Event::Called(Ok(())));
        assert_eq!(r.kinds(Event::Tick { unchanged: false }), ["link 2"]);
        assert!(
            r.lc.handle(Event::Tick { unchanged: false }, r.now).is_err(),
            "one tick per arm"
        );
    }

    #[test]
    fn a_late_round_is_followed_by_one_round_at_once_not_a_burst() {
        let mut r = Run::new(LifecycleConfig { kv: KvId(0), ..cfg() });
        r.send(Event::Opened);
        r.round_ok(); // second round at the offset
        let offset = schedule::first_offset(KvId(0), 10 * SEC);
        r.at(offset);
        r.send(Event::Tick { unchanged: false });
        // The callback blocked for 95 s: nine intervals were missed.
        r.at(offset + 95 * SEC);
        r.send(linked());
        let ended = r.kinds(Event::Called(Ok(())));
        let now = (offset + 95 * SEC).as_secs_f64();
        assert_eq!(
            ended,
            ["round ok", &format!("tick at {now:.1}")],
            "one round at once"
        );
        r.send(Event::Tick { unchanged: false });
        r.send(linked());
        let next = r.kinds(Event::Called(Ok(())));
        assert_eq!(
            next[1],
            format!("tick at {:.1}", now + 10.0),
            "then the interval again"
        );
    }

    #[test]
    fn failed_rounds_back_off_doubling_to_the_cap_and_a_success_resets() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        let mut waits = Vec::new();
        let mut t = Duration::ZERO;
        for _ in 0..5 {
            let acts = r.send(failed());
            let Some(Action::ArmTick { at, .. }) = acts.last() else {
                panic!("{acts:?}")
            };
            waits.push((*at - (r.t0 + t)).as_secs());
            t = *at - r.t0;
            r.at(t);
            r.send(Event::Tick { unchanged: true });
        }
        assert_eq!(waits, [10, 20, 40, 60, 60]);
        assert_eq!(r.lc.failures_in_a_row(), 5);
        let ended = r.round_ok();
        assert_eq!(r.lc.failures_in_a_row(), 0);
        // The success takes the store back to its own schedule: the offset
        // its second round would have had, then the interval.
        let offset = schedule::first_offset(KvId(3), 10 * SEC).as_secs_f64();
        let t = t.as_secs_f64();
        assert_eq!(ended, ["round ok", &format!("tick at {:.1}", t + offset)]);
    }

    #[test]
    fn a_failing_store_never_skips_the_linker_so_its_files_are_retried() {
        for report_empty_rounds in [false, true] {
            let mut r = Run::new(LifecycleConfig {
                report_empty_rounds,
                ..cfg()
            });
            r.send(Event::Opened);
            r.send(failed());
            assert_eq!(r.kinds(Event::Tick { unchanged: true }), ["link 2"]);
        }
    }

    #[test]
    fn an_unchanged_store_has_quiet_rounds_only_when_empty_rounds_are_not_reported() {
        let mut quiet = Run::new(LifecycleConfig {
            report_empty_rounds: false,
            ..cfg()
        });
        quiet.send(Event::Opened);
        quiet.round_ok();
        let acts = quiet.kinds(Event::Tick { unchanged: true });
        assert_eq!(acts[0], "quiet");
        assert!(acts[1].starts_with("tick at"));
        // A linked round with nothing to report ends without a callback too.
        quiet.send(Event::Tick { unchanged: false });
        assert_eq!(
            quiet.kinds(Event::Linked(LinkOutcome::Linked { to_report: false }))[0],
            "quiet"
        );

        let mut reported = Run::new(cfg());
        reported.send(Event::Opened);
        reported.round_ok();
        assert_eq!(
            reported.kinds(Event::Tick { unchanged: true }),
            ["call back unchanged"]
        );
    }

    #[test]
    fn with_empty_rounds_quiet_a_starts_rounds_call_back_until_one_succeeded() {
        // Regression: an empty store's first round had nothing to report
        // and called no callback, so with empty rounds quiet its start
        // never got its metadata writer (scale_bench --quiet-idle hung).
        let mut r = Run::new(LifecycleConfig {
            report_empty_rounds: false,
            ..cfg()
        });
        r.send(Event::Opened);
        let nothing = || Event::Linked(LinkOutcome::Linked { to_report: false });
        assert_eq!(r.kinds(nothing()), ["call back"], "the first round");
        assert_eq!(
            r.kinds(Event::Called(Err(Error::ComponentStopped)))[0],
            "round failed"
        );
        r.at(60 * SEC);
        r.send(Event::Tick { unchanged: true });
        assert_eq!(r.kinds(nothing()), ["call back"], "no call has succeeded yet");
        assert_eq!(r.kinds(Event::Called(Ok(())))[0], "round ok");
        r.at(120 * SEC);
        r.send(Event::Tick { unchanged: false });
        assert_eq!(r.kinds(nothing())[0], "quiet", "then empty rounds are quiet");
    }

    #[test]
    fn an_unchanged_round_reporting_empty_rounds_calls_back_without_the_linker() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.round_ok();
        assert_eq!(r.kinds(Event::Tick { unchanged: true }), ["call back unchanged"]);
        assert_eq!(r.lc.round(), 2, "it is a round of its own");
        let ended = r.kinds(Event::Called(Ok(())));
        assert_eq!(ended[0], "round ok");
        assert!(ended[1].starts_with("tick at"), "{ended:?}");
    }

    #[test]
    fn a_snapshot_that_changed_under_an_unchanged_round_links_that_round() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.round_ok();
        r.send(Event::Tick { unchanged: true });
        assert_eq!(r.kinds(Event::SnapshotChanged), ["link 2"]);
        assert_eq!(r.round_ok()[0], "round ok");
        assert_eq!(r.lc.round(), 2);
    }

    #[test]
    fn a_snapshot_change_can_only_answer_an_unchanged_round() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.send(linked());
        let err = r.lc.handle(Event::SnapshotChanged, r.now).unwrap_err();
        assert_eq!((err.event, err.phase), ("snapshot changed", Phase::Calling));
        r.send(Event::Called(Ok(())));
        r.send(Event::Tick { unchanged: true });
        r.send(Event::SnapshotChanged);
        r.send(linked());
        assert!(
            r.lc.handle(Event::SnapshotChanged, r.now).is_err(),
            "the round linked: its callback is a linked one"
        );
    }

    #[test]
    fn a_stop_without_final_round_does_not_wait_for_an_unchanged_round() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.round_ok();
        r.send(Event::Tick { unchanged: true });
        assert_eq!(r.kinds(Event::Stop { final_round: false }), ["close"]);
        assert!(r.kinds(Event::SnapshotChanged).is_empty(), "no link after close");
        assert_eq!(r.kinds(Event::SessionClosed), ["stop actor"]);
    }

    #[test]
    fn a_stop_with_final_round_that_comes_while_linking_runs_one_more_round_after_it() {
        // Empty rounds are not reported, yet the final round calls back.
        let mut r = Run::new(LifecycleConfig {
            report_empty_rounds: false,
            ..cfg()
        });
        r.send(Event::Opened);
        assert!(
            r.kinds(Event::Stop { final_round: true }).is_empty(),
            "waits for the round"
        );
        r.send(linked());
        assert_eq!(r.kinds(Event::Called(Ok(()))), ["round ok", "link 2"]);
        assert_eq!(
            r.kinds(Event::Linked(LinkOutcome::Linked { to_report: false })),
            ["call back"],
            "a final round always calls back, even with nothing to report"
        );
        assert_eq!(r.kinds(Event::Called(Ok(()))), ["round ok", "close"]);
        assert_eq!(r.kinds(Event::SessionClosed), ["stop actor"]);
        assert_eq!(r.lc.final_failure(), None);
        assert!(
            r.lc.handle(Event::Opened, r.now).is_err(),
            "nothing after the end"
        );
    }

    #[test]
    fn a_failed_final_round_is_what_the_stop_is_told() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.round_ok();
        assert_eq!(
            r.kinds(Event::Stop { final_round: true }),
            ["cancel tick", "link 2"]
        );
        r.send(linked());
        assert_eq!(r.kinds(Event::Called(Err(poisoned()))), ["round failed", "close"]);
        assert!(r.lc.final_failure().unwrap().contains("fsync fail"));
    }

    #[test]
    fn a_stop_without_final_round_does_not_wait_for_a_callback_in_flight() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.send(linked());
        assert_eq!(r.kinds(Event::Stop { final_round: false }), ["close"]);
        assert_eq!(r.kinds(Event::SessionClosed), ["stop actor"]);
    }

    #[test]
    fn the_actor_stops_only_after_its_linker_job_is_back() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened); // linking
        assert_eq!(r.kinds(Event::Stop { final_round: false }), ["close"]);
        assert!(r.kinds(Event::SessionClosed).is_empty(), "the job holds the dir");
        assert_eq!(r.kinds(linked()), ["stop actor"], "no callback after close");
    }

    #[test]
    fn a_later_stop_without_final_round_abandons_the_final_round() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.send(Event::Stop { final_round: true });
        assert_eq!(r.kinds(Event::Stop { final_round: false }), ["close"]);
        assert_eq!(
            r.kinds(linked()),
            Vec::<String>::new(),
            "no final round, no callback"
        );
        assert_eq!(r.kinds(Event::SessionClosed), ["stop actor"]);
    }

    #[test]
    fn a_failed_final_round_is_not_reported_to_a_stop_that_did_not_ask_for_it() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.round_ok();
        r.send(Event::Stop { final_round: true }); // the final round starts
        r.send(linked());
        // A second stop, without final round, comes while it calls back.
        assert!(r
            .kinds(Event::Stop { final_round: false })
            .contains(&"close".to_string()));
        r.send(Event::Called(Err(Error::ComponentStopped)));
        assert_eq!(r.lc.final_failure(), None, "not asked by every stop");
    }

    #[test]
    fn a_final_round_asked_while_calling_back_or_pruning_follows_the_round() {
        let mut r = Run::new(LifecycleConfig {
            prune_every: Some(SEC),
            ..cfg()
        });
        r.send(Event::Opened);
        r.send(linked());
        assert!(
            r.kinds(Event::Stop { final_round: true }).is_empty(),
            "during the callback"
        );
        assert_eq!(
            r.kinds(Event::Called(Ok(()))),
            ["round ok", "link 2"],
            "no prune while stopping"
        );

        let mut p = Run::new(LifecycleConfig {
            prune_every: Some(SEC),
            ..cfg()
        });
        p.send(Event::Opened);
        p.send(linked());
        assert_eq!(p.kinds(Event::Called(Ok(()))), ["prune"]);
        assert!(
            p.kinds(Event::Stop { final_round: true }).is_empty(),
            "during the prune"
        );
        assert_eq!(p.kinds(Event::Pruned(Ok(()))), ["round ok", "link 2"]);
    }

    #[test]
    fn a_stop_between_rounds_cancels_the_tick() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.round_ok();
        assert_eq!(
            r.kinds(Event::Stop { final_round: false }),
            ["cancel tick", "close"]
        );
        assert!(
            r.lc.handle(Event::Tick { unchanged: false }, r.now).is_err(),
            "the tick is gone"
        );
        assert_eq!(r.kinds(Event::SessionClosed), ["stop actor"]);
        assert!(r.lc.handle(Event::SessionClosed, r.now).is_err(), "closed once");
    }

    #[test]
    fn a_poisoned_dir_closes_the_store_for_a_restart_and_runs_no_more_rounds() {
        let mut r = Run::new(cfg());
        r.send(Event::Opened);
        r.send(linked());
        assert_eq!(r.kinds(Event::Called(Err(poisoned()))), ["round failed", "close"]);
        assert!(r.lc.is_closed());
        assert!(
            r.lc.handle(Event::Tick { unchanged: false }, r.now).is_err(),
            "no tick armed"
        );
        // A stop with final round then cannot run one, and says so.
        assert!(r.kinds(Event::Stop { final_round: true }).is_empty());
        assert!(r.lc.final_failure().unwrap().contains("was stopped"));
        assert_eq!(r.kinds(Event::SessionClosed), ["stop actor"]);
    }

    #[test]
    fn a_restart_waits_its_backoff_before_the_first_round() {
        let mut r = Run::new(LifecycleConfig {
            first_delay: 4 * SEC,
            ..cfg()
        });
        assert_eq!(r.kinds(Event::Opened), ["tick at 4.0"]);
        r.at(4 * SEC);
        assert_eq!(r.kinds(Event::Tick { unchanged: false }), ["link 1"]);

        // Even when nothing looks changed and empty rounds are not
        // reported, a start's first round runs (it lists the whole
        // snapshot and reports what the last start left unreported).
        let mut quiet = Run::new(LifecycleConfig {
            first_delay: 4 * SEC,
            report_empty_rounds: false,
            ..cfg()
        });
        quiet.send(Event::Opened);
        assert_eq!(quiet.kinds(Event::Tick { unchanged: true }), ["link 1"]);
    }

    #[test]
    fn a_stop_during_open_takes_effect_once_open() {
        let mut r = Run::new(cfg());
        assert!(r.kinds(Event::Stop { final_round: true }).is_empty());
        assert_eq!(r.kinds(Event::Opened), ["link 1"], "the final round");
        let mut f = Run::new(cfg());
        assert_eq!(f.kinds(Event::OpenFailed), ["stop actor"]);
    }

    #[test]
    fn a_prune_runs_after_a_successful_round_when_due_and_not_while_stopping() {
        let mut r = Run::new(LifecycleConfig {
            prune_every: Some(30 * SEC),
            ..cfg()
        });
        r.send(Event::Opened);
        r.send(linked());
        assert_eq!(r.kinds(Event::Called(Ok(()))), ["prune"]);
        assert_eq!(r.kinds(Event::Pruned(Ok(())))[0], "round ok");
        // Not due again before 30 s.
        r.at(10 * SEC);
        r.send(Event::Tick { unchanged: false });
        r.send(linked());
        assert_eq!(r.kinds(Event::Called(Ok(())))[0], "round ok");
        // A prune that could not be sent is tried after the next round.
        r.at(30 * SEC);
        r.send(Event::Tick { unchanged: false });
        r.send(linked());
        assert_eq!(r.kinds(Event::Called(Ok(()))), ["prune"]);
        assert_eq!(r.kinds(Event::PruneNotStarted)[0], "round ok");
        r.at(31 * SEC);
        r.send(Event::Tick { unchanged: false });
        r.send(linked());
        assert_eq!(r.kinds(Event::Called(Ok(()))), ["prune"]);
        r.send(Event::Pruned(Ok(())));
        // A stopping store ends without one.
        r.at(70 * SEC);
        r.send(Event::Tick { unchanged: false });
        r.send(Event::Stop { final_round: true });
        r.send(linked());
        assert_eq!(
            r.kinds(Event::Called(Ok(()))),
            ["round ok", "link 6"],
            "the final round, no prune"
        );
    }

    #[test]
    fn a_prune_whose_dir_fsync_failed_closes_the_store() {
        let mut r = Run::new(LifecycleConfig {
            prune_every: Some(SEC),
            ..cfg()
        });
        r.send(Event::Opened);
        r.send(linked());
        r.send(Event::Called(Ok(())));
        assert_eq!(r.kinds(Event::Pruned(Err(poisoned()))), ["round failed", "close"]);
    }

    #[test]
    fn a_stop_during_a_prune_waits_for_the_prune_to_come_back() {
        let mut r = Run::new(LifecycleConfig {
            prune_every: Some(SEC),
            ..cfg()
        });
        r.send(Event::Opened);
        r.send(linked());
        r.send(Event::Called(Ok(())));
        assert_eq!(r.kinds(Event::Stop { final_round: false }), ["close"]);
        assert!(r.kinds(Event::SessionClosed).is_empty());
        assert_eq!(r.kinds(Event::Pruned(Ok(()))), ["stop actor"]);
    }

    #[test]
    fn events_out_of_place_are_impossible_and_change_nothing() {
        let mut r = Run::new(cfg());
        for event in [
            linked(),
            Event::Called(Ok(())),
            Event::Pruned(Ok(())),
            Event::SessionClosed,
        ] {
            assert!(r.lc.handle(event, r.now).is_err());
        }
        assert_eq!(r.lc.phase(), Phase::Opening);
        r.send(Event::Opened);
        let err = r.lc.handle(Event::Opened, r.now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "KV store 3: event `opened` cannot come while Linking"
        );
    }
}
