//! Quiet ticks without waking the store: with `Config::report_empty_rounds`
//! off, a store whose last round succeeded and whose links are at the
//! engine's generation `g` has nothing to do at its next tick unless the
//! engine moved past `g`. Its actor then hands the tick to the arbiter's
//! [`QuietTicker`] instead of arming a timer of its own: one timer for every
//! such store of the thread, and at each wake-up one generation compared per
//! due store. A store still at `g` gets its quiet round counted and its next
//! tick one interval on, exactly as its [`Lifecycle`](super::lifecycle) would
//! have done; the first tick that finds a change goes back to the actor
//! (`QuietTickChanged`, with the tick's due time), which runs the round as
//! its own tick would have.
//!
//! The actor decides, the ticker only repeats the decision: the lifecycle
//! says when a tick may be handed over ([`Action::ArmTick`]'s `quiet_ok`:
//! empty rounds quiet, the last round succeeded, this start called back,
//! no stop, the first spread step taken), the actor adds its own part
//! (nothing unacknowledged, a linked generation), and a stop takes the tick
//! back synchronously (same thread), before anything else happens to the
//! store.
//!
//! [`QuietSchedule`] is the plain core (no clock, no actix); [`QuietTicker`]
//! runs it on the arbiter thread.
//!
//! [`Action::ArmTick`]: super::lifecycle::Action::ArmTick

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakRecipient;
use tokio::sync::Notify;

use super::schedule::{self, TickGrid};
use crate::engine::{Engine, KvId};
use crate::status::StoreCounters;

/// Ticker → backup actor, with `do_send`: the tick handed over as `token`,
/// due at `due`, found the engine past the linked generation (or could not
/// tell: the engine panicked). The actor's schedule continues from `due`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct QuietTickChanged {
    pub token: u64,
    pub due: Instant,
}

/// One handed-over tick.
struct Held<S> {
    /// The linked generation: the store is quiet while the engine is at it.
    generation: u64,
    /// When the round is due (unrounded: the period stays the interval).
    due: Instant,
    interval: Duration,
    store: S,
}

/// The handed-over ticks of one thread, by when they fire. No clock: the
/// caller says what time it is and how to read a store's generation.
pub(crate) struct QuietSchedule<S> {
    grid: TickGrid,
    /// (fires at, token); tokens no longer in `held` are skipped.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    held: HashMap<u64, Held<S>>,
    next_token: u64,
}

impl<S> QuietSchedule<S> {
    /// Empty; ticks fire on `grid`.
    pub fn new(grid: TickGrid) -> Self {
        QuietSchedule {
            grid,
            heap: BinaryHeap::new(),
            held: HashMap::new(),
            next_token: 1,
        }
    }

    /// Holds the tick of `store`, due at `due` and quiet while its engine is
    /// at `generation`; returns its token and when it fires.
    pub fn hold(&mut self, store: S, generation: u64, due: Instant, interval: Duration) -> (u64, Instant) {
        let token = self.next_token;
        self.next_token += 1;
        let at = self.grid.arm_at(due, interval);
        self.heap.push(Reverse((at, token)));
        self.held.insert(
            token,
            Held {
                generation,
                due,
                interval,
                store,
            },
        );
        (token, at)
    }

    /// Takes the tick `token` back (a stop); whether it was still held.
    pub fn take_back(&mut self, token: u64) -> bool {
        self.held.remove(&token).is_some()
    }

    /// When the earliest held tick fires.
    pub fn next_fire(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, token))) = self.heap.peek().copied() {
            if self.held.contains_key(&token) {
                return Some(at);
            }
            self.heap.pop(); // taken back
        }
        None
    }

    /// Fires every tick due by `now`. A store still at its generation
    /// (`at_generation`) has a quiet round (`on_quiet`) and its next tick
    /// one interval on (no burst after a stall: now, if that has passed);
    /// the others leave the schedule and are returned with their token and
    /// the tick's due time.
    pub fn fire(
        &mut self,
        now: Instant,
        mut at_generation: impl FnMut(&S, u64) -> bool,
        mut on_quiet: impl FnMut(&S),
    ) -> Vec<(u64, Instant, S)> {
        let mut changed = Vec::new();
        // Re-armed after the loop: a tick re-armed at `now` (after a stall)
        // fires at the next wake-up, as the store's own timer would.
        let mut rearmed = Vec::new();
        while let Some(Reverse((at, token))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(held) = self.held.get_mut(&token) else {
                continue; // taken back
            };
            if at_generation(&held.store, held.generation) {
                on_quiet(&held.store);
                held.due = schedule::next_due(held.due, held.interval, now);
                rearmed.push(Reverse((self.grid.arm_at(held.due, held.interval), token)));
            } else if let Some(held) = self.held.remove(&token) {
                changed.push((token, held.due, held.store));
            }
        }
        self.heap.extend(rearmed);
        changed
    }

    /// How many ticks are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }
}

/// What the ticker needs of a store.
pub(crate) struct QuietStore {
    pub kv: KvId,
    pub engine: Arc<dyn Engine>,
    pub counters: Arc<StoreCounters>,
    pub actor: WeakRecipient<QuietTickChanged>,
}

struct Shared {
    schedule: RefCell<QuietSchedule<QuietStore>>,
    /// Told when a tick is held that fires before the one slept for.
    rearm: Notify,
    /// What the task sleeps until (`None`: no tick held, or not started).
    sleeping_until: Cell<Option<Instant>>,
    started: Cell<bool>,
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
    /// A ticker whose ticks fire on `grid`. Its task starts on the thread
    /// of the first tick held.
    pub fn new(grid: TickGrid) -> Self {
        QuietTicker {
            shared: Rc::new(Shared {
                schedule: RefCell::new(QuietSchedule::new(grid)),
                rearm: Notify::new(),
                sleeping_until: Cell::new(None),
                started: Cell::new(false),
            }),
        }
    }

    /// Holds the tick of `store` (see [`QuietSchedule::hold`]); its token.
    /// Must be called on an arbiter thread (a backup actor's).
    pub fn hold(&self, store: QuietStore, generation: u64, due: Instant, interval: Duration) -> u64 {
        let (token, fires) = self
            .shared
            .schedule
            .borrow_mut()
            .hold(store, generation, due, interval);
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
        let changed = shared.schedule.borrow_mut().fire(
            Instant::now(),
            |store, generation| {
                let (engine, kv) = (&store.engine, store.kv);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.generation(kv)))
                    .is_ok_and(|now_at| now_at == Some(generation))
            },
            |store| StoreCounters::add(&store.counters.quiet_rounds, 1),
        );
        for (token, due, store) in changed {
            if let Some(actor) = store.actor.upgrade() {
                actor.do_send(QuietTickChanged { token, due });
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
        let (_, fires) = s.hold("a", 7, t0 + SEC, SEC);
        assert_eq!(fires, t0 + SEC);
        let mut quiet = 0;
        for k in 1..=5u32 {
            assert_eq!(s.next_fire(), Some(t0 + k * SEC));
            let changed = s.fire(t0 + k * SEC, |_, g| g == 7, |_| quiet += 1);
            assert!(changed.is_empty());
        }
        assert_eq!(quiet, 5);
        assert_eq!(s.next_fire(), Some(t0 + 6 * SEC), "the period is kept");
    }

    #[test]
    fn nothing_fires_before_it_is_due() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.hold("a", 7, t0 + SEC, SEC);
        let changed = s.fire(t0 + SEC / 2, |_, _| panic!("not due"), |_| panic!("not due"));
        assert!(changed.is_empty());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_first_tick_past_the_generation_goes_back_with_its_due_time() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        let (token, _) = s.hold("a", 7, t0 + SEC, SEC);
        s.hold("b", 3, t0 + SEC, SEC);
        let mut engine_at = |store: &&str, g: u64| if *store == "a" { g == 7 } else { false };
        let changed = s.fire(t0 + SEC, &mut engine_at, |_| {});
        assert_eq!(changed.len(), 1);
        assert_eq!((changed[0].1, changed[0].2), (t0 + SEC, "b"));
        assert_eq!(s.len(), 1, "b left the schedule");
        // a moves on at its second tick.
        let changed = s.fire(t0 + 2 * SEC, |_, _| false, |_| {});
        assert_eq!((changed[0].0, changed[0].1), (token, t0 + 2 * SEC));
        assert_eq!((s.len(), s.next_fire()), (0, None));
    }

    #[test]
    fn a_tick_taken_back_never_fires() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        let (token, _) = s.hold("a", 7, t0 + SEC, SEC);
        assert!(s.take_back(token));
        assert!(!s.take_back(token), "once");
        assert_eq!(s.next_fire(), None);
        let changed = s.fire(t0 + 10 * SEC, |_, _| false, |_| panic!("taken back"));
        assert!(changed.is_empty());
    }

    #[test]
    fn after_a_stall_the_next_quiet_tick_is_now_not_a_burst() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        s.hold("a", 7, t0 + SEC, SEC);
        let mut quiet = 0;
        // The thread was busy for ten intervals.
        s.fire(t0 + 11 * SEC + SEC / 2, |_, _| true, |_| quiet += 1);
        assert_eq!(quiet, 1, "one quiet round, not ten");
        assert_eq!(s.next_fire(), Some(t0 + 11 * SEC + SEC / 2));
    }

    #[test]
    fn ticks_fire_on_the_grid() {
        let t0 = Instant::now();
        let slot = Duration::from_millis(10);
        let mut s: QuietSchedule<&str> = QuietSchedule::new(TickGrid::new(t0, slot));
        let (_, fires) = s.hold("a", 1, t0 + Duration::from_millis(1003), SEC);
        assert_eq!(fires, t0 + Duration::from_millis(1010));
        s.fire(fires, |_, _| true, |_| {});
        assert_eq!(s.next_fire(), Some(t0 + Duration::from_millis(2010)));
    }
}
