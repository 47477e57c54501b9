//! Idle ticks without waking the store. A store whose last round
//! succeeded, with nothing unreported and its links at the engine's
//! generation `g`, has one thing to do at its next tick unless the engine
//! moved past `g`: with `Config::report_empty_rounds` off, nothing (a quiet
//! round); with it on, call back with nothing new. Its actor then hands the
//! tick to the arbiter's [`QuietTicker`] instead of arming a timer of its
//! own: one timer for every such store of the thread, and at each wake-up
//! one generation compared per due store. A store still at `g` gets its
//! round and its next tick one interval on, exactly as its
//! [`Lifecycle`](super::lifecycle) would have done:
//!
//! - **quiet**: the round is counted, on the arbiter thread;
//! - **calling back**: the call goes to the store's queue on the callback
//!   pool (every due store of a wake-up in one burst, under one lock and
//!   with one worker woken at most) and the worker counts
//!   the round when it succeeds; nothing comes back to the arbiter. A
//!   store has one such call out at a time (`handed_call_out`). The
//!   worker takes the snapshot and calls back only if it is still at `g`,
//!   as the store's own unchanged round does.
//!
//! The tick goes back to the actor (`QuietTickChanged`, with the tick's due
//! time) when it finds a change (or the engine panicked), when the store's
//! previous call is still running (the actor's round then queues behind it,
//! as a late round would), when a call found the snapshot changed or
//! failed (the actor then counts the failed round and backs off), and once
//! the handover's `until` has passed (a prune due). The actor runs the
//! round then as its own tick would have.
//!
//! The actor decides, the ticker only repeats the decision: the lifecycle
//! says when a tick may be handed over ([`HandOver`]), the actor adds its
//! own part (nothing unacknowledged, a linked generation), and a stop takes
//! the tick back synchronously (same thread), before anything else happens
//! to the store; a call already on the pool runs, in the store's order,
//! before any call of the stop's.
//!
//! [`QuietSchedule`] is the plain core (no clock, no actix); [`QuietTicker`]
//! runs it on the arbiter thread.
//!
//! [`HandOver`]: super::lifecycle::HandOver

use std::cell::{Cell, RefCell};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakRecipient;
use tokio::sync::Notify;

use super::schedule::{self, TickGrid};
use crate::callback::{self, BackupCallback};
use crate::callback_pool::{CallbackPool, Job};
use crate::engine::{Engine, KvId};
use crate::error::Error;
use crate::metadata::{MetadataAddr, MetadataWriter, SessionId};
use crate::status::StoreCounters;

/// Ticker (or a call it made) → backup actor, with `do_send`: the tick
/// handed over as `token`, due at `due`, comes back (see the module docs).
/// With `failed`, the call of that round failed after the given time: the
/// round is the store's, failed. The actor's schedule continues from `due`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct QuietTickChanged {
    pub token: u64,
    pub due: Instant,
    pub failed: Option<(Error, Duration)>,
}

/// One handed-over tick.
struct Held<S> {
    /// The linked generation: the store is quiet while the engine is at it.
    generation: u64,
    /// When the round is due (unrounded: the period stays the interval).
    due: Instant,
    interval: Duration,
    /// From then on the tick goes back at once.
    until: Option<Instant>,
    store: S,
}

/// The handed-over ticks of one thread, by when they fire. No clock: the
/// caller says what time it is and how to read a store's generation.
pub(crate) struct QuietSchedule<S> {
    grid: TickGrid,
    /// The tokens that fire at each time, in the order they were armed;
    /// tokens no longer held are skipped. Ticks fire on the grid's slots,
    /// so a wake-up takes one list of every store due then (a heap of
    /// ticks took one sift per store, 10 % of an idle round's samples).
    fires: BTreeMap<Instant, Vec<u64>>,
    /// Emptied lists, kept for the next times armed (at most
    /// `SPARE_LISTS`).
    spare: Vec<Vec<u64>>,
    /// The ticks a wake-up re-arms, armed after it (kept for reuse).
    rearmed: Vec<(Instant, u64)>,
    held: Slots<Held<S>>,
}

/// Emptied lists of tokens kept for reuse: about the slots one interval
/// spans, so a steady schedule allocates none.
const SPARE_LISTS: usize = 128;

/// The held ticks by token: a slab, not a hash map, as every idle store
/// has an entry (a map's table at 1024 entries has 2048 buckets). A token
/// is its slot in the low 32 bits and a sequence number above, so a token
/// taken back never finds the slot's next tick.
struct Slots<T> {
    slots: Vec<Option<(u64, T)>>,
    free: Vec<u32>,
    next_seq: u64,
}

impl<T> Slots<T> {
    fn insert(&mut self, value: T) -> u64 {
        self.next_seq += 1;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 held ticks")
        });
        let token = (self.next_seq << 32) | u64::from(slot);
        self.slots[slot as usize] = Some((token, value));
        token
    }

    fn slot(&mut self, token: u64) -> Option<&mut Option<(u64, T)>> {
        let slot = self.slots.get_mut((token & u64::from(u32::MAX)) as usize)?;
        slot.as_ref().is_some_and(|(t, _)| *t == token).then_some(slot)
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        self.slot(token)?.as_mut().map(|(_, value)| value)
    }

    fn contains(&mut self, token: u64) -> bool {
        self.slot(token).is_some()
    }

    fn remove(&mut self, token: u64) -> Option<T> {
        let (_, value) = self.slot(token)?.take()?;
        self.free.push((token & u64::from(u32::MAX)) as u32);
        Some(value)
    }
}

impl<S> QuietSchedule<S> {
    /// Empty; ticks fire on `grid`.
    pub fn new(grid: TickGrid) -> Self {
        QuietSchedule {
            grid,
            fires: BTreeMap::new(),
            spare: Vec::new(),
            rearmed: Vec::new(),
            held: Slots {
                slots: Vec::new(),
                free: Vec::new(),
                next_seq: 0,
            },
        }
    }

    /// Holds the tick of `store`, due at `due`, whose rounds are the
    /// ticker's while its engine is at `generation` and `until` has not
    /// passed; returns its token and when it fires.
    pub fn hold(
        &mut self,
        store: S,
        generation: u64,
        due: Instant,
        interval: Duration,
        until: Option<Instant>,
    ) -> (u64, Instant) {
        let at = self.grid.arm_at(due, interval);
        let token = self.held.insert(Held {
            generation,
            due,
            interval,
            until,
            store,
        });
        self.arm(at, token);
        (token, at)
    }

    /// Adds `token` to the ticks that fire at `at`; their list.
    fn arm(&mut self, at: Instant, token: u64) -> &mut Vec<u64> {
        let list = match self.fires.entry(at) {
            Entry::Occupied(list) => list.into_mut(),
            Entry::Vacant(none) => none.insert(self.spare.pop().unwrap_or_default()),
        };
        list.push(token);
        list
    }

    /// Keeps an emptied list for reuse.
    fn recycle(&mut self, mut list: Vec<u64>) {
        if self.spare.len() < SPARE_LISTS {
            list.clear();
            self.spare.push(list);
        }
    }

    /// Takes the tick `token` back (a stop); whether it was still held.
    pub fn take_back(&mut self, token: u64) -> bool {
        self.held.remove(token).is_some()
    }

    /// When the earliest held tick fires.
    pub fn next_fire(&mut self) -> Option<Instant> {
        while let Some(first) = self.fires.first_entry() {
            let at = *first.key();
            if first.get().iter().any(|&token| self.held.contains(token)) {
                return Some(at);
            }
            let list = first.remove(); // all taken back
            self.recycle(list);
        }
        None
    }

    /// Fires every tick due by `now`. A store whose round may run here
    /// (`until` not passed, and `at_generation` says it is still at its
    /// generation) has that round (`run(store, token, generation, due)`) and its next
    /// tick one interval on (no burst after a stall: now, if that has
    /// passed); the others leave the schedule and are returned with their
    /// token and the tick's due time.
    pub fn fire(
        &mut self,
        now: Instant,
        mut at_generation: impl FnMut(&S, u64) -> bool,
        mut run: impl FnMut(&S, u64, u64, Instant),
    ) -> Vec<(u64, Instant, S)> {
        let mut changed = Vec::new();
        // Re-armed after the loop: a tick re-armed at `now` (after a stall)
        // fires at the next wake-up, as the store's own timer would.
        let mut rearmed = std::mem::take(&mut self.rearmed);
        while let Some(first) = self.fires.first_entry() {
            if *first.key() > now {
                break;
            }
            let list = first.remove();
            for &token in &list {
                let Some(held) = self.held.get_mut(token) else {
                    continue; // taken back
                };
                let ours = held.until.is_none_or(|until| now < until);
                if ours && at_generation(&held.store, held.generation) {
                    run(&held.store, token, held.generation, held.due);
                    held.due = schedule::next_due(held.due, held.interval, now);
                    rearmed.push((self.grid.arm_at(held.due, held.interval), token));
                } else if let Some(held) = self.held.remove(token) {
                    changed.push((token, held.due, held.store));
                }
            }
            self.recycle(list);
        }
        // Ticks of one interval re-arm at one time, mostly in a row: one
        // lookup of the map per run of them.
        let mut next = rearmed.drain(..).peekable();
        while let Some((at, token)) = next.next() {
            let list = self.arm(at, token);
            while let Some((_, token)) = next.next_if(|(next_at, _)| *next_at == at) {
                list.push(token);
            }
        }
        drop(next);
        self.rearmed = rearmed;
        changed
    }

    /// How many ticks are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.slots.iter().flatten().count()
    }
}

/// What the ticker needs of a store (kept small: every idle store has one).
pub(crate) struct QuietStore {
    pub kv: KvId,
    pub counters: Arc<StoreCounters>,
    pub actor: Arc<WeakRecipient<QuietTickChanged>>,
    /// With empty rounds reported: how to call back.
    pub call_back: Option<HandedCall>,
}

/// How the ticker calls a store back with nothing new.
pub(crate) struct HandedCall {
    pub callback: Arc<dyn BackupCallback>,
    /// The store's current start, for its metadata writer.
    pub session: SessionId,
    /// Which of the component's metadata threads the store's dir writes on.
    pub metadata_shard: usize,
}

/// What every store of the ticker shares: the engine, the callback pool and
/// the metadata threads.
pub(crate) struct Common {
    pub engine: Arc<dyn Engine>,
    pub pool: Arc<CallbackPool>,
    pub metadata: Vec<MetadataAddr>,
}

impl QuietStore {
    /// Whether the store's next round may run here: no call the ticker
    /// queued for it is still out, and the engine is still at
    /// `generation`. An engine that panics says no (the actor's round then
    /// links, where the linker catches it).
    fn at_generation(&self, component: &Common, generation: u64) -> bool {
        if self.call_back.is_some() && self.counters.handed_call_out.load(Ordering::Acquire) {
            return false;
        }
        let (engine, kv) = (&component.engine, self.kv);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.generation(kv)))
            .is_ok_and(|now_at| now_at == Some(generation))
    }

    /// Runs the round of the tick `token` due at `due`: counts the quiet
    /// round, or adds the call with nothing new to `calls`, for the store's
    /// queue on the pool (its worker counts the round, or hands a failure
    /// back).
    fn run_round(
        &self,
        component: &Common,
        token: u64,
        generation: u64,
        due: Instant,
        calls: &mut Vec<(KvId, Job)>,
    ) {
        let Some(call) = &self.call_back else {
            return StoreCounters::add(&self.counters.quiet_rounds, 1);
        };
        let Some(metadata) = component.metadata.get(call.metadata_shard) else {
            // Not a metadata thread of this component (a bug): the actor
            // runs the round.
            if let Some(actor) = self.actor.upgrade() {
                actor.do_send(QuietTickChanged {
                    token,
                    due,
                    failed: None,
                });
            }
            return;
        };
        self.counters.handed_call_out.store(true, Ordering::Release);
        let counters = Arc::clone(&self.counters);
        let actor = Arc::clone(&self.actor);
        let kv = self.kv;
        let job = callback::unchanged_job(
            kv,
            Arc::clone(&call.callback),
            Arc::clone(&component.engine),
            generation,
            MetadataWriter::new(kv, call.session, metadata.clone()),
            tracing::info_span!("backup", kv_store = kv.0, handed_over = true),
            move |outcome| {
                let back = match outcome {
                    Some(outcome) => {
                        counters.count_callback(outcome.took);
                        match outcome.result {
                            Ok(()) => {
                                counters.count_round(&Ok(()), outcome.took);
                                None
                            }
                            Err(e) => Some(Some((e, outcome.took))),
                        }
                    }
                    // The snapshot moved (or failed): the actor's round links.
                    None => Some(None),
                };
                counters.handed_call_out.store(false, Ordering::Release);
                // Upgraded only to hand back (it boxes a sender).
                if let Some(failed) = back {
                    if let Some(actor) = actor.upgrade() {
                        tracing::debug!(kv_store = kv.0, "handed-over round goes back to the store");
                        actor.do_send(QuietTickChanged { token, due, failed });
                    }
                }
            },
        );
        calls.push((kv, job));
    }
}

struct Shared {
    schedule: RefCell<QuietSchedule<QuietStore>>,
    component: Common,
    /// Told when a tick is held that fires before the one slept for.
    rearm: Notify,
    /// What the task sleeps until (`None`: no tick held, or not started).
    sleeping_until: Cell<Option<Instant>>,
    started: Cell<bool>,
    /// A wake-up's calls for the pool (kept for reuse: about a hundred at
    /// 1024 stores, grown anew each wake-up otherwise).
    calls: Cell<Vec<(KvId, Job)>>,
}

/// The quiet ticks of the stores of one arbiter thread (the supervisor's,
/// where every backup actor runs). Cheap to clone; not `Send`: the actors
/// call it on their own thread, so a stop takes its tick back before the
/// ticker can fire it.
#[derive(Clone)]
pub(crate) struct QuietTicker {
    shared: Rc<Shared>,
}

impl QuietTicker {
    /// A ticker whose ticks fire on `grid`, for stores of `component`. Its
    /// task starts on the thread of the first tick held.
    pub fn new(grid: TickGrid, component: Common) -> Self {
        QuietTicker {
            shared: Rc::new(Shared {
                schedule: RefCell::new(QuietSchedule::new(grid)),
                component,
                rearm: Notify::new(),
                sleeping_until: Cell::new(None),
                started: Cell::new(false),
                calls: Cell::new(Vec::new()),
            }),
        }
    }

    /// Holds the tick of `store` (see [`QuietSchedule::hold`]); its token.
    /// Must be called on an arbiter thread (a backup actor's).
    pub fn hold(
        &self,
        store: QuietStore,
        generation: u64,
        due: Instant,
        interval: Duration,
        until: Option<Instant>,
    ) -> u64 {
        let (token, fires) = self
            .shared
            .schedule
            .borrow_mut()
            .hold(store, generation, due, interval, until);
        if !self.shared.started.replace(true) {
            actix_rt::spawn(run(Rc::clone(&self.shared)));
        } else if self.shared.sleeping_until.get().is_none_or(|until| fires < until) {
            self.shared.rearm.notify_one();
        }
        token
    }

    /// Takes the tick `token` back.
    pub fn take_back(&self, token: u64) {
        self.shared.schedule.borrow_mut().take_back(token);
    }
}

/// The ticker's task: sleeps until the earliest held tick (or a new earlier
/// one), fires what is due, hands the changed stores back to their actors.
async fn run(shared: Rc<Shared>) {
    loop {
        let next = shared.schedule.borrow_mut().next_fire();
        shared.sleeping_until.set(next);
        let rearmed = shared.rearm.notified();
        match next {
            None => rearmed.await,
            Some(at) => {
                let sleep = actix_rt::time::sleep_until(at.into());
                tokio::pin!(sleep, rearmed);
                std::future::poll_fn(|cx| {
                    if sleep.as_mut().poll(cx).is_ready() || rearmed.as_mut().poll(cx).is_ready() {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await;
            }
        }
        let component = &shared.component;
        let mut calls = shared.calls.take();
        let changed = shared.schedule.borrow_mut().fire(
            Instant::now(),
            |store, generation| store.at_generation(component, generation),
            |store, token, generation, due| store.run_round(component, token, generation, due, &mut calls),
        );
        // Every due store's call in one burst: one lock, one wake-up (none
        // for a wake-up of quiet rounds only).
        if !calls.is_empty() {
            component.pool.submit_all(calls.drain(..));
        }
        shared.calls.set(calls);
        for (token, due, store) in changed {
            if let Some(actor) = store.actor.upgrade() {
                actor.do_send(QuietTickChanged {
                    token,
                    due,
                    failed: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn schedule(t0: Instant) -> QuietSchedule<&'static str> {
        QuietSchedule::new(TickGrid::new(t0, Duration::ZERO))
    }

    #[test]
    fn a_store_at_its_generation_gets_quiet_rounds_one_interval_apart() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        let (_, fires) = s.hold("a", 7, t0 + SEC, SEC, None);
        assert_eq!(fires, t0 + SEC);
        let mut quiet = 0;
        for k in 1..=5u32 {
            assert_eq!(s.next_fire(), Some(t0 + k * SEC));
            let changed = s.fire(t0 + k * SEC, |_, g| g == 7, |_, _, _, _| quiet += 1);
            assert!(changed.is_empty());
        }
        assert_eq!(quiet, 5);
        assert_eq!(s.next_fire(), Some(t0 + 6 * SEC), "the period is kept");
    }

    #[test]
    fn nothing_fires_before_it_is_due() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.hold("a", 7, t0 + SEC, SEC, None);
        let changed = s.fire(
            t0 + SEC / 2,
            |_, _| panic!("not due"),
            |_, _, _, _| panic!("not due"),
        );
        assert!(changed.is_empty());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_first_tick_past_the_generation_goes_back_with_its_due_time() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        let (token, _) = s.hold("a", 7, t0 + SEC, SEC, None);
        s.hold("b", 3, t0 + SEC, SEC, None);
        let mut engine_at = |store: &&str, g: u64| if *store == "a" { g == 7 } else { false };
        let changed = s.fire(t0 + SEC, &mut engine_at, |_, _, _, _| {});
        assert_eq!(changed.len(), 1);
        assert_eq!((changed[0].1, changed[0].2), (t0 + SEC, "b"));
        assert_eq!(s.len(), 1, "b left the schedule");
        // a moves on at its second tick.
        let changed = s.fire(t0 + 2 * SEC, |_, _| false, |_, _, _, _| {});
        assert_eq!((changed[0].0, changed[0].1), (token, t0 + 2 * SEC));
        assert_eq!((s.len(), s.next_fire()), (0, None));
    }

    #[test]
    fn a_tick_taken_back_never_fires() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        let (token, _) = s.hold("a", 7, t0 + SEC, SEC, None);
        assert!(s.take_back(token));
        assert!(!s.take_back(token), "once");
        assert_eq!(s.next_fire(), None);
        let changed = s.fire(t0 + 10 * SEC, |_, _| false, |_, _, _, _| panic!("taken back"));
        assert!(changed.is_empty());
    }

    #[test]
    fn a_token_taken_back_never_reaches_the_tick_held_in_its_slot_next() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        let (a, _) = s.hold("a", 7, t0 + SEC, SEC, None);
        assert!(s.take_back(a));
        let (b, _) = s.hold("b", 7, t0 + SEC, SEC, None);
        assert_ne!(a, b);
        assert!(!s.take_back(a), "a's token is not b's");
        let mut ran = Vec::new();
        s.fire(t0 + SEC, |_, _| true, |store, _, _, _| ran.push(*store));
        assert_eq!(ran, ["b"], "fired once, as b");
    }

    #[test]
    fn after_a_stall_the_next_quiet_tick_is_now_not_a_burst() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.hold("a", 7, t0 + SEC, SEC, None);
        let mut quiet = 0;
        // The thread was busy for ten intervals.
        s.fire(t0 + 11 * SEC + SEC / 2, |_, _| true, |_, _, _, _| quiet += 1);
        assert_eq!(quiet, 1, "one quiet round, not ten");
        assert_eq!(s.next_fire(), Some(t0 + 11 * SEC + SEC / 2));
    }

    #[test]
    fn ticks_fire_on_the_grid() {
        let t0 = Instant::now();
        let slot = Duration::from_millis(10);
        let mut s: QuietSchedule<&str> = QuietSchedule::new(TickGrid::new(t0, slot));
        let (_, fires) = s.hold("a", 1, t0 + Duration::from_millis(1003), SEC, None);
        assert_eq!(fires, t0 + Duration::from_millis(1010));
        s.fire(fires, |_, _| true, |_, _, _, _| {});
        assert_eq!(s.next_fire(), Some(t0 + Duration::from_millis(2010)));
    }

    #[test]
    fn a_round_runs_with_its_token_generation_and_due_time() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        let (token, _) = s.hold("a", 7, t0 + SEC, SEC, None);
        let mut ran = Vec::new();
        s.fire(
            t0 + SEC,
            |_, _| true,
            |store, token, g, due| ran.push((*store, token, g, due)),
        );
        s.fire(
            t0 + 2 * SEC,
            |_, _| true,
            |store, token, g, due| ran.push((*store, token, g, due)),
        );
        assert_eq!(ran, [("a", token, 7, t0 + SEC), ("a", token, 7, t0 + 2 * SEC)]);
    }

    #[test]
    fn a_tick_goes_back_once_its_until_has_passed_without_asking_the_engine() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        let (token, _) = s.hold("a", 7, t0 + SEC, SEC, Some(t0 + 2 * SEC));
        let mut ran = 0;
        assert!(s.fire(t0 + SEC, |_, _| true, |_, _, _, _| ran += 1).is_empty());
        let changed = s.fire(t0 + 2 * SEC, |_, _| panic!("not asked"), |_, _, _, _| ran += 1);
        assert_eq!(ran, 1, "the round before the limit only");
        assert_eq!(
            (changed[0].0, changed[0].1),
            (token, t0 + 2 * SEC),
            "back with its due time"
        );
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn ticks_due_together_fire_in_one_wake_up_in_the_order_they_were_held() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        for store in ["c", "a", "b"] {
            s.hold(store, 1, t0 + SEC, SEC, None);
        }
        let mut ran = Vec::new();
        s.fire(t0 + SEC, |_, _| true, |store, _, _, _| ran.push(*store));
        s.fire(t0 + 2 * SEC, |_, _| true, |store, _, _, _| ran.push(*store));
        assert_eq!(ran, ["c", "a", "b", "c", "a", "b"]);
    }

    mod against_a_list_of_ticks {
        use std::collections::{BTreeMap, BTreeSet};

        use proptest::prelude::*;

        use super::super::*;
        use crate::backup::schedule::{self, TickGrid};

        #[derive(Debug, Clone)]
        enum Step {
            /// A store held with its first tick `due_ms` on, every
            /// `interval_ms`, for `until_ms` if given.
            Hold {
                due_ms: u64,
                interval_ms: u64,
                until_ms: Option<u64>,
            },
            /// The `n`th token handed out taken back (a stop).
            TakeBack(usize),
            /// Time moves on `ms`, then what is due fires; stores whose
            /// number is in `moved` have moved past their generation.
            Fire { ms: u64, moved: Vec<u8> },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (
                    0..300u64,
                    prop::sample::select(vec![20u64, 100, 250]),
                    prop::option::of(0..900u64)
                )
                    .prop_map(|(due_ms, interval_ms, until_ms)| Step::Hold {
                        due_ms,
                        interval_ms,
                        until_ms
                    }),
                (0..64usize).prop_map(Step::TakeBack),
                (0..400u64, prop::collection::vec(0..16u8, 0..3))
                    .prop_map(|(ms, moved)| Step::Fire { ms, moved }),
            ]
        }

        /// The plain model: every held tick with when it fires, looked at
        /// one by one.
        struct Tick {
            fires: Instant,
            due: Instant,
            interval: Duration,
            until: Option<Instant>,
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn the_schedule_fires_what_a_list_of_every_tick_would(steps in prop::collection::vec(step(), 1..60)) {
                let t0 = Instant::now();
                let ms = |n: u64| Duration::from_millis(n);
                let grid = TickGrid::new(t0, ms(10));
                let mut s: QuietSchedule<u8> = QuietSchedule::new(grid);
                let mut model: BTreeMap<u64, (u8, Tick)> = BTreeMap::new();
                let mut tokens = Vec::new();
                let mut now = t0;
                for step in steps {
                    match step {
                        Step::Hold { due_ms, interval_ms, until_ms } => {
                            let store = u8::try_from(tokens.len() % 16).unwrap();
                            let (due, interval) = (now + ms(due_ms), ms(interval_ms));
                            let until = until_ms.map(|u| now + ms(u));
                            let (token, fires) = s.hold(store, 7, due, interval, until);
                            prop_assert_eq!(fires, grid.arm_at(due, interval));
                            model.insert(token, (store, Tick { fires, due, interval, until }));
                            tokens.push(token);
                        }
                        Step::TakeBack(n) => {
                            let Some(&token) = tokens.get(n) else { continue };
                            prop_assert_eq!(s.take_back(token), model.remove(&token).is_some());
                        }
                        Step::Fire { ms: by, moved } => {
                            now += ms(by);
                            let at_generation = |store: &u8, _g: u64| !moved.contains(store);
                            let mut want_ran = BTreeSet::new();
                            let mut want_back = BTreeSet::new();
                            for (&token, (store, tick)) in model.iter_mut() {
                                if tick.fires > now {
                                    continue;
                                }
                                if tick.until.is_none_or(|u| now < u) && at_generation(store, 7) {
                                    want_ran.insert((token, tick.due));
                                    tick.due = schedule::next_due(tick.due, tick.interval, now);
                                    tick.fires = grid.arm_at(tick.due, tick.interval);
                                } else {
                                    want_back.insert((token, tick.due));
                                }
                            }
                            model.retain(|token, _| !want_back.iter().any(|(t, _)| t == token));
                            let mut ran = BTreeSet::new();
                            let back: BTreeSet<_> = s
                                .fire(now, at_generation, |_, token, _, due| {
                                    ran.insert((token, due));
                                })
                                .into_iter()
                                .map(|(token, due, _)| (token, due))
                                .collect();
                            prop_assert_eq!(ran, want_ran);
                            prop_assert_eq!(back, want_back);
                        }
                    }
                    prop_assert_eq!(s.next_fire(), model.values().map(|(_, t)| t.fires).min());
                    prop_assert_eq!(s.len(), model.len());
                }
            }
        }
    }
}
