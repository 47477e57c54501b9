//! The supervisor's per-store transitions as a plain state machine: every
//! control message and every store's end goes in, what to do comes out as
//! [`Order`]s (spawn a backup actor, send it a stop, answer or refuse
//! waiters, run the engine's hook). No actix, no clock, no file system: the
//! [`Supervisor`](super::Supervisor) carries the orders out, and a unit test
//! drives this with plain values as waiters.
//!
//! The rules it keeps:
//! - **Each control message changes the table at once, in arrival order**:
//!   after any burst of vBucket states, exactly the stores whose last state
//!   was `Active` are running or about to run.
//! - **A store's starts never overlap**: a start that comes while the
//!   previous one drains (or while the engine's `backup_stopped` hook runs)
//!   is queued and spawned when it has ended; a stop meanwhile cancels it.
//! - **A stop of a store whose actor has ended is refused as not running**,
//!   also while its hook runs (an earlier stop has returned by then).
//! - **A store that ends on its own after its dir opened is restarted**,
//!   after a backoff that doubles with each restart in a row; **never after
//!   an intended stop, a shutdown, or a start whose dir did not open**.
//! - An end or a start outcome of an older generation changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::backoff;
use crate::callback::BackupCallback;
use crate::engine::KvId;
use crate::error::{Error, Result};
use crate::replication::RemoteUrl;

/// What a start asks for.
#[derive(Clone)]
pub(crate) struct Plan {
    pub dir: PathBuf,
    pub callback: Arc<dyn BackupCallback>,
    pub interval: Duration,
    /// Where the backup dir is replicated to, if anywhere.
    pub remote: Option<Arc<RemoteUrl>>,
}

/// What the supervisor does for the table.
pub(crate) enum Order<W> {
    /// Start a backup actor of `generation` with `plan`, its first round
    /// after `first_delay`; report its start with [`Stores::opened`].
    Spawn {
        kv: KvId,
        generation: u64,
        plan: Plan,
        first_delay: Duration,
    },
    /// Send the store's actor a stop. With `waiter`, answer it when the
    /// actor has stopped: with the final round's result if `reply_final`,
    /// else `Ok`.
    Stop {
        kv: KvId,
        final_round: bool,
        waiter: Option<W>,
        reply_final: bool,
    },
    /// Answer `waiters` (the first gets `result` itself, the others its
    /// text as [`Error::StartFailed`]).
    Answer {
        kv: KvId,
        waiters: Vec<W>,
        result: Result<()>,
    },
    /// Refuse each of `waiters` with [`Error::ComponentStopped`]: queued
    /// starts the component will never run.
    Refuse { waiters: Vec<W> },
    /// The store's actor failed and is started again after `wait`: log it
    /// and count the restart.
    Restarting { kv: KvId, wait: Duration },
    /// Tell the engine the store's backup stopped for good
    /// (`Engine::backup_stopped`), then report [`Stores::rested`].
    Hook { kv: KvId, generation: u64 },
}

/// What a vBucket state asks of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VbucketMove {
    /// A repeat: nothing changes.
    Nothing,
    /// Start it (with the vBucket plan).
    Start,
    /// Stop it, no final round.
    Stop,
}

/// A start waiting for the previous start of its store to end.
struct Queued<W> {
    plan: Plan,
    waiters: Vec<W>,
}

enum Phase<W> {
    /// Rounds run. `opened` once the dir is open (before that, an end is a
    /// failed start, not a failure to restart from).
    Running { opened: bool },
    /// Stopping: its actor still runs; `next` starts when it has ended.
    Draining { next: Option<Queued<W>> },
    /// Its actor has ended and the engine's hook runs; `next` starts when
    /// the hook has returned. Stopped, as far as a stop can tell.
    Resting { next: Option<Queued<W>> },
}

struct Store<W> {
    generation: u64,
    plan: Plan,
    phase: Phase<W>,
    /// Restarts after failures in a row, for the restart backoff.
    restarts_in_a_row: u32,
}

/// Every store that runs or drains. See the module docs.
pub(crate) struct Stores<W> {
    /// Boxed: a store's entry is near 180 bytes, and a table sized to twice
    /// its stores would hold as many empty ones.
    stores: HashMap<KvId, Box<Store<W>>>,
    /// Waiters of spawned starts, by generation, until their dir opens.
    starting: HashMap<u64, (KvId, Vec<W>)>,
    next_generation: u64,
    shutting_down: bool,
    max_backoff: Duration,
}

impl<W> Stores<W> {
    /// An empty table; restarts back off up to `max_backoff`.
    pub fn new(max_backoff: Duration) -> Self {
        Stores {
            stores: HashMap::new(),
            starting: HashMap::new(),
            next_generation: 1,
            shutting_down: false,
            max_backoff,
        }
    }

    /// Whether [`shutdown`](Self::shutdown) came.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether `kv`'s rounds run (not stopping, not resting).
    pub fn is_running(&self, kv: KvId) -> bool {
        matches!(
            self.stores.get(&kv).map(|s| &s.phase),
            Some(Phase::Running { .. })
        )
    }

    /// Whether `generation` is the store's current one.
    pub fn is_current(&self, kv: KvId, generation: u64) -> bool {
        self.stores.get(&kv).is_some_and(|s| s.generation == generation)
    }

    /// Another store that uses `dir` or is about to.
    pub fn holder_of(&self, dir: &Path, except: KvId) -> Option<KvId> {
        self.stores.iter().find_map(|(kv, s)| {
            let next = match &s.phase {
                Phase::Draining { next: Some(q) } | Phase::Resting { next: Some(q) } => {
                    Some(q.plan.dir.as_path())
                }
                _ => None,
            };
            let uses = s.plan.dir == dir || next == Some(dir);
            (*kv != except && uses).then_some(*kv)
        })
    }

    /// What a vBucket state (`active` or not) asks of `kv`.
    pub fn vbucket(&self, kv: KvId, active: bool) -> VbucketMove {
        let on = matches!(
            self.stores.get(&kv).map(|s| &s.phase),
            Some(
                Phase::Running { .. } | Phase::Draining { next: Some(_) } | Phase::Resting { next: Some(_) }
            )
        );
        match (active, on) {
            (true, false) => VbucketMove::Start,
            (false, true) => VbucketMove::Stop,
            _ => VbucketMove::Nothing,
        }
    }

    /// A start of `kv` with `plan`; `waiter` is answered once its dir is
    /// open (or at once: a repeat, a conflict).
    pub fn start(&mut self, kv: KvId, plan: Plan, waiter: W) -> Vec<Order<W>> {
        let result = if self.shutting_down {
            Err(Error::ComponentStopped)
        } else {
            let Some(store) = self.stores.get_mut(&kv) else {
                return self.spawn(kv, plan, 0, Duration::ZERO, vec![waiter]);
            };
            match &mut store.phase {
                Phase::Running { .. } if store.plan.dir == plan.dir => Ok(()),
                Phase::Running { .. } => Err(Error::AlreadyRunning {
                    kv,
                    dir: store.plan.dir.clone(),
                }),
                Phase::Draining { next: Some(q) } | Phase::Resting { next: Some(q) }
                    if q.plan.dir != plan.dir =>
                {
                    Err(Error::AlreadyRunning {
                        kv,
                        dir: q.plan.dir.clone(),
                    })
                }
                Phase::Draining { next } | Phase::Resting { next } => {
                    next.get_or_insert_with(|| Queued {
                        plan,
                        waiters: Vec::new(),
                    })
                    .waiters
                    .push(waiter);
                    return Vec::new();
                }
            }
        };
        vec![Order::Answer {
            kv,
            waiters: vec![waiter],
            result,
        }]
    }

    /// The start of `generation` opened its dir, or could not.
    pub fn opened(&mut self, kv: KvId, generation: u64, result: Result<()>) -> Vec<Order<W>> {
        if let Some(store) = self.stores.get_mut(&kv).filter(|s| s.generation == generation) {
            if let Phase::Running { opened } = &mut store.phase {
                *opened = result.is_ok();
            }
        }
        match self.starting.remove(&generation) {
            Some((kv, waiters)) if !waiters.is_empty() => vec![Order::Answer { kv, waiters, result }],
            _ => Vec::new(),
        }
    }

    /// A stop of `kv`, with or without a final round; `waiter` is answered
    /// when it has stopped.
    pub fn stop(&mut self, kv: KvId, final_round: bool, waiter: W) -> Vec<Order<W>> {
        let Some(store) = self.stores.get_mut(&kv) else {
            return vec![Order::Answer {
                kv,
                waiters: vec![waiter],
                result: Err(Error::NotRunning { kv }),
            }];
        };
        let actor_runs = !matches!(store.phase, Phase::Resting { .. });
        match &mut store.phase {
            Phase::Running { .. } => {
                store.phase = Phase::Draining { next: None };
                vec![Order::Stop {
                    kv,
                    final_round,
                    waiter: Some(waiter),
                    reply_final: true,
                }]
            }
            Phase::Draining { next } | Phase::Resting { next } => match next.take() {
                // The later stop wins over a start that never ran.
                Some(queued) => vec![
                    Order::Answer {
                        kv,
                        waiters: queued.waiters,
                        result: Ok(()),
                    },
                    Order::Answer {
                        kv,
                        waiters: vec![waiter],
                        result: Ok(()),
                    },
                ],
                // Stopping already: abandon its final round, wait for the end.
                None if actor_runs => vec![Order::Stop {
                    kv,
                    final_round: false,
                    waiter: Some(waiter),
                    reply_final: false,
                }],
                // Its actor has ended (an earlier stop has returned, or its
                // dir did not open): only the hook runs.
                None => vec![Order::Answer {
                    kv,
                    waiters: vec![waiter],
                    result: Err(Error::NotRunning { kv }),
                }],
            },
        }
    }

    /// The actor of `generation` ended (`opened`: its dir had opened, which
    /// this may learn before [`opened`](Self::opened)): start what waits,
    /// restart what failed, or run the hook before the store rests.
    pub fn ended(&mut self, kv: KvId, generation: u64, opened: bool) -> Vec<Order<W>> {
        let shutting_down = self.shutting_down;
        let max_backoff = self.max_backoff;
        let Some(store) = self.stores.get_mut(&kv).filter(|s| s.generation == generation) else {
            return Vec::new();
        };
        if let Phase::Running { opened: known } = &mut store.phase {
            *known |= opened;
        }
        match &mut store.phase {
            Phase::Draining { next } => match next.take() {
                Some(queued) if !shutting_down => {
                    self.spawn(kv, queued.plan, 0, Duration::ZERO, queued.waiters)
                }
                queued => {
                    let mut orders = Self::refuse(queued);
                    orders.extend(self.rest(kv));
                    orders
                }
            },
            Phase::Running { opened: true } if !shutting_down => {
                // Failed on its own: restart it from what is in the backup
                // dir, its first round after a backoff that grows while
                // restarts keep coming.
                let restarts = store.restarts_in_a_row.saturating_add(1);
                let wait = backoff(
                    store.plan.interval.min(Duration::from_secs(1)),
                    max_backoff,
                    restarts,
                );
                let plan = store.plan.clone();
                let mut orders = vec![Order::Restarting { kv, wait }];
                orders.extend(self.spawn(kv, plan, restarts, wait, Vec::new()));
                orders
            }
            // A start whose dir did not open, or the end of a shutdown.
            Phase::Running { .. } => self.rest(kv),
            // Its actor ended already.
            Phase::Resting { .. } => Vec::new(),
        }
    }

    /// The engine's hook for `generation` returned: start what was queued
    /// meanwhile, or forget the store.
    pub fn rested(&mut self, kv: KvId, generation: u64) -> Vec<Order<W>> {
        let shutting_down = self.shutting_down;
        let Some(store) = self.stores.get_mut(&kv).filter(|s| s.generation == generation) else {
            return Vec::new();
        };
        let queued = match &mut store.phase {
            Phase::Draining { next } | Phase::Resting { next } => next.take(),
            Phase::Running { .. } => None,
        };
        match queued {
            Some(queued) if !shutting_down => self.spawn(kv, queued.plan, 0, Duration::ZERO, queued.waiters),
            // The store rests (its actor went at its end).
            queued => {
                self.stores.remove(&kv);
                Self::refuse(queued)
            }
        }
    }

    /// Stops every store (no final round, also those stopping already) and
    /// refuses every queued start; nothing is started or restarted after.
    pub fn shutdown(&mut self) -> Vec<Order<W>> {
        self.shutting_down = true;
        let mut orders = Vec::new();
        let mut kvs: Vec<KvId> = self.stores.keys().copied().collect();
        kvs.sort();
        for kv in kvs {
            let store = self.stores.get_mut(&kv).expect("listed above");
            match &mut store.phase {
                // No actor to stop: the hook's return removes it.
                Phase::Resting { next } => {
                    orders.extend(Self::refuse(next.take()));
                    continue;
                }
                Phase::Draining { next } => orders.extend(Self::refuse(next.take())),
                Phase::Running { .. } => {}
            }
            store.phase = Phase::Draining { next: None };
            orders.push(Order::Stop {
                kv,
                final_round: false,
                waiter: None,
                reply_final: false,
            });
        }
        orders
    }

    fn spawn(
        &mut self,
        kv: KvId,
        plan: Plan,
        restarts: u32,
        first_delay: Duration,
        waiters: Vec<W>,
    ) -> Vec<Order<W>> {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.stores.insert(
            kv,
            Box::new(Store {
                generation,
                plan: plan.clone(),
                phase: Phase::Running { opened: false },
                restarts_in_a_row: restarts,
            }),
        );
        self.starting.insert(generation, (kv, waiters));
        vec![Order::Spawn {
            kv,
            generation,
            plan,
            first_delay,
        }]
    }

    fn rest(&mut self, kv: KvId) -> Vec<Order<W>> {
        let Some(store) = self.stores.get_mut(&kv) else {
            return Vec::new();
        };
        store.phase = Phase::Resting { next: None };
        vec![Order::Hook {
            kv,
            generation: store.generation,
        }]
    }

    /// Refuses a queued start (the component stops).
    fn refuse(queued: Option<Queued<W>>) -> Vec<Order<W>> {
        queued
            .map(|q| Order::Refuse { waiters: q.waiters })
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KV: KvId = KvId(7);

    fn plan(dir: &str) -> Plan {
        let callback = |_: KvId,
                        _: &dyn crate::engine::Snapshot,
                        _: &[crate::backup_file::BackupFile],
                        _: crate::metadata::MetadataWriter| Ok(());
        Plan {
            dir: PathBuf::from(dir),
            callback: Arc::new(callback),
            interval: Duration::from_secs(10),
            remote: None,
        }
    }

    /// The orders as short strings; waiters are `&str` labels.
    fn show(orders: Vec<Order<&'static str>>) -> Vec<String> {
        orders
            .into_iter()
            .map(|o| match o {
                Order::Spawn {
                    generation,
                    plan,
                    first_delay,
                    ..
                } => format!(
                    "spawn g{generation} {} after {}s",
                    plan.dir.display(),
                    first_delay.as_secs()
                ),
                Order::Stop {
                    final_round,
                    waiter,
                    reply_final,
                    ..
                } => format!(
                    "stop final={final_round} for {} reply_final={reply_final}",
                    waiter.unwrap_or("-")
                ),
                Order::Answer { waiters, result, .. } => match result {
                    Ok(()) => format!("ok to {}", waiters.join(",")),
                    Err(e) => format!("err to {}: {e}", waiters.join(",")),
                },
                Order::Refuse { waiters } => format!("refuse {}", waiters.join(",")),
                Order::Restarting { wait, .. } => format!("restarting after {}s", wait.as_secs()),
                Order::Hook { generation, .. } => format!("hook g{generation}"),
            })
            .collect()
    }

    fn table() -> Stores<&'static str> {
        Stores::new(Duration::from_secs(8))
    }

    #[test]
    fn a_start_spawns_and_is_answered_once_the_dir_is_open() {
        let mut t = table();
        assert_eq!(show(t.start(KV, plan("/b/7"), "a")), ["spawn g1 /b/7 after 0s"]);
        assert_eq!(t.holder_of(Path::new("/b/7"), KvId(8)), Some(KV));
        assert_eq!(
            t.holder_of(Path::new("/b/7"), KV),
            None,
            "not in use by another store"
        );
        assert_eq!(show(t.start(KV, plan("/b/7"), "b")), ["ok to b"], "a repeat");
        assert_eq!(
            show(t.start(KV, plan("/c/7"), "c")),
            ["err to c: KV store 7 is already backing up into /b/7; stop it first"]
        );
        assert_eq!(show(t.opened(KV, 1, Ok(()))), ["ok to a"]);
        assert!(t.is_running(KV));
    }

    #[test]
    fn a_store_that_fails_on_its_own_restarts_with_a_doubling_backoff() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        let mut waits = Vec::new();
        for g in 1..=5 {
            let orders = show(t.ended(KV, g, true));
            assert!(
                orders[1].starts_with(&format!("spawn g{} /b/7 after", g + 1)),
                "{orders:?}"
            );
            waits.push(orders[0].clone());
            assert!(t.opened(KV, g + 1, Ok(())).is_empty(), "a restart has no waiter");
        }
        assert_eq!(
            waits,
            [
                "restarting after 1s",
                "restarting after 2s",
                "restarting after 4s",
                "restarting after 8s",
                "restarting after 8s"
            ]
        );
    }

    #[test]
    fn an_end_handled_before_the_start_outcome_still_restarts_an_opened_store() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        // The actor opened and failed at once; its end comes first.
        let orders = show(t.ended(KV, 1, true));
        assert_eq!(orders, ["restarting after 1s", "spawn g2 /b/7 after 1s"]);
        assert_eq!(
            show(t.opened(KV, 1, Ok(()))),
            ["ok to a"],
            "the start is still answered"
        );
    }

    #[test]
    fn a_stop_during_a_restarts_backoff_is_never_followed_by_another_restart() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        t.ended(KV, 1, true); // restarting as g2, still opening
        assert_eq!(
            show(t.stop(KV, false, "s")),
            ["stop final=false for s reply_final=true"]
        );
        assert_eq!(show(t.ended(KV, 2, true)), ["hook g2"]);
        assert!(show(t.rested(KV, 2)).is_empty(), "no restart after the hook");
        assert!(!t.is_current(KV, 2), "the store left the table");
    }

    #[test]
    fn a_store_is_never_restarted_after_an_intended_stop() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        assert_eq!(
            show(t.stop(KV, true, "s")),
            ["stop final=true for s reply_final=true"]
        );
        assert!(!t.is_running(KV));
        assert_eq!(show(t.ended(KV, 1, true)), ["hook g1"], "no restart");
        assert!(show(t.rested(KV, 1)).is_empty(), "no restart after the hook");
        assert!(!t.is_current(KV, 1), "the store left the table");
        assert_eq!(
            show(t.stop(KV, false, "t")),
            ["err to t: KV store 7 is not backing up"]
        );
    }

    #[test]
    fn a_start_whose_dir_did_not_open_is_not_restarted() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        assert_eq!(
            show(t.opened(KV, 1, Err(Error::ComponentStopped))),
            ["err to a: the backup component has shut down"]
        );
        assert_eq!(show(t.ended(KV, 1, false)), ["hook g1"]);
    }

    #[test]
    fn a_start_that_comes_while_draining_is_queued_and_spawned_when_the_store_ended() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        t.stop(KV, true, "s");
        assert!(t.start(KV, plan("/b/7"), "q1").is_empty(), "queued, not spawned");
        assert!(t.start(KV, plan("/b/7"), "q2").is_empty());
        assert_eq!(
            show(t.start(KV, plan("/c/7"), "x")),
            ["err to x: KV store 7 is already backing up into /b/7; stop it first"]
        );
        assert_eq!(
            t.vbucket(KV, true),
            VbucketMove::Nothing,
            "about to run: a repeat"
        );
        assert_eq!(
            show(t.ended(KV, 1, true)),
            ["spawn g2 /b/7 after 0s"],
            "no hook: not stopped for good"
        );
        assert_eq!(
            show(t.opened(KV, 2, Err(Error::ComponentStopped))),
            ["err to q1,q2: the backup component has shut down"]
        );
    }

    #[test]
    fn a_start_during_the_hook_waits_for_it() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        t.stop(KV, false, "s");
        assert_eq!(show(t.ended(KV, 1, true)), ["hook g1"]);
        assert!(t.start(KV, plan("/b/7"), "q").is_empty(), "behind the hook");
        assert_eq!(show(t.rested(KV, 1)), ["spawn g2 /b/7 after 0s"]);
    }

    #[test]
    fn a_stop_after_the_store_ended_says_not_running_also_while_its_hook_runs() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        t.stop(KV, false, "s");
        assert_eq!(show(t.ended(KV, 1, true)), ["hook g1"]);
        assert!(!t.is_running(KV));
        assert_eq!(
            show(t.stop(KV, false, "late")),
            ["err to late: KV store 7 is not backing up"]
        );
        t.start(KV, plan("/b/7"), "q");
        assert_eq!(
            show(t.stop(KV, false, "s2")),
            ["ok to q", "ok to s2"],
            "a start queued behind the hook is still cancelled"
        );
        assert!(show(t.rested(KV, 1)).is_empty(), "nothing starts");
        assert_eq!(show(t.shutdown()), Vec::<String>::new(), "a rested store is gone");
    }

    #[test]
    fn shutdown_leaves_a_store_whose_hook_runs_to_its_hook() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        t.stop(KV, false, "s");
        t.ended(KV, 1, true);
        t.start(KV, plan("/b/7"), "q");
        assert_eq!(show(t.shutdown()), ["refuse q"], "no actor to stop");
        assert!(show(t.rested(KV, 1)).is_empty());
    }

    #[test]
    fn a_stop_cancels_a_queued_start_and_then_abandons_the_final_round() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.stop(KV, true, "s1");
        t.start(KV, plan("/b/7"), "q");
        assert_eq!(show(t.stop(KV, true, "s2")), ["ok to q", "ok to s2"]);
        assert_eq!(
            show(t.stop(KV, true, "s3")),
            ["stop final=false for s3 reply_final=false"]
        );
        assert_eq!(show(t.ended(KV, 1, true)), ["hook g1"]);
    }

    #[test]
    fn after_a_burst_of_vbucket_states_the_last_one_holds() {
        let mut t = table();
        let mut spawned = 0;
        let mut gen = 0;
        let mut stops = 0;
        // active, replica, active, dead, active: each acted on at once.
        for active in [true, false, true, false, true] {
            let orders = match t.vbucket(KV, active) {
                VbucketMove::Start => t.start(KV, plan("/b/7"), "v"),
                VbucketMove::Stop => t.stop(KV, false, "v"),
                VbucketMove::Nothing => Vec::new(),
            };
            for o in orders {
                if let Order::Spawn { generation, .. } = o {
                    spawned += 1;
                    gen = generation;
                }
                if let Order::Stop { .. } = o {
                    stops += 1;
                }
            }
        }
        assert_eq!(
            (spawned, stops),
            (1, 1),
            "one actor, stopped once, the rest queued"
        );
        assert_eq!(
            t.vbucket(KV, true),
            VbucketMove::Nothing,
            "the last state was active"
        );
        assert_eq!(t.vbucket(KV, false), VbucketMove::Stop);
        let orders = show(t.ended(KV, gen, true));
        assert_eq!(
            orders,
            ["spawn g2 /b/7 after 0s"],
            "the queued start runs once the first ended"
        );
    }

    #[test]
    fn shutdown_stops_everything_refuses_queued_starts_and_restarts_nothing() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        t.start(KvId(8), plan("/b/8"), "b");
        t.opened(KvId(8), 2, Ok(()));
        t.stop(KvId(8), false, "s");
        t.start(KvId(8), plan("/b/8"), "q1");
        t.start(KvId(8), plan("/b/8"), "q2");
        assert_eq!(
            show(t.shutdown()),
            [
                "stop final=false for - reply_final=false",
                "refuse q1,q2",
                "stop final=false for - reply_final=false"
            ]
        );
        assert_eq!(
            show(t.ended(KV, 1, true)),
            ["hook g1"],
            "no restart in a shutdown"
        );
        assert_eq!(
            show(t.start(KV, plan("/b/7"), "late")),
            ["err to late: the backup component has shut down"]
        );
    }

    #[test]
    fn an_end_of_an_older_generation_changes_nothing() {
        let mut t = table();
        t.start(KV, plan("/b/7"), "a");
        t.opened(KV, 1, Ok(()));
        t.ended(KV, 1, true); // restarted as g2
        assert!(t.ended(KV, 1, true).is_empty());
        assert!(t.rested(KV, 1).is_empty());
        assert!(t.is_current(KV, 2) && t.is_running(KV));
    }
}
