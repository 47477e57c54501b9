//! The callback pool: every store's callbacks on a few shared threads, one
//! callback of a store at a time, in the order they were handed in.
//!
//! - **Per-store order**: a store's calls queue behind each other; a store
//!   is handed to a worker only while none of its calls runs. Calls of a
//!   stopping start and of the next start of the store therefore never
//!   overlap.
//! - **Isolation**: a blocked callback holds one worker. A call that has
//!   waited `GROW_AFTER` (2 ms) with no worker free for it gets an idle
//!   worker woken by the monitor, or a new one started, up to
//!   `Config::callback_threads`, so blocked stores below the cap delay the
//!   others by at most about that.
//! - **Few threads, few wake-ups**: a call wakes an idle worker only when
//!   no worker will take it soon (none woken already, none running a call
//!   that started under `GROW_AFTER` ago), so a burst of due rounds is one
//!   wake-up, not one per store; the worker that
//!   idled last is woken, and a worker idle for `IDLE_EXIT` ends (one is
//!   kept): 1024 idle stores need a worker or two and the monitor.
//! - **Watchdog**: a call running past `Config::callback_watchdog` is logged
//!   once, naming the store, and shows in the store's status
//!   (`callback_running_for`).
//! - Workers are detached: shutdown and process exit never join a blocked
//!   callback.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::engine::KvId;

/// One call, with its outcome channel inside.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// How long an idle worker waits for work before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(5);

/// Workers kept however long they idle.
const MIN_WORKERS: usize = 1;

/// How long a call waits for a busy pool before another worker starts: a
/// burst of short calls is drained by the workers there are, a blocked
/// callback costs the calls behind it at most this.
const GROW_AFTER: Duration = Duration::from_millis(2);

/// The shared callback threads of one component. Dropping the last handle
/// ends the idle workers and the monitor (a running call finishes first).
pub(crate) struct CallbackPool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the monitor: a call waits for a worker.
    monitor: Condvar,
    max_workers: usize,
    watchdog: Duration,
}

/// A store's calls not started yet, oldest first. Almost always one, kept
/// without an allocation of its own.
struct Waiting {
    next: Job,
    later: VecDeque<Job>,
}

#[derive(Default)]
struct State {
    /// Whether the monitor thread runs (without it, calls grow the pool
    /// themselves).
    monitor_runs: bool,
    /// No growth before this (a thread could not be started).
    grow_not_before: Option<Instant>,
    /// `GROW_AFTER` (tests change it).
    grow_after: Duration,
    /// Calls not started yet, per store.
    queued: HashMap<KvId, Waiting>,
    /// Stores with a call running: since when, and whether it was reported.
    running: HashMap<KvId, (Instant, bool)>,
    /// Stores with queued calls and none running, each once, oldest first,
    /// with when they became ready.
    ready: VecDeque<(KvId, Instant)>,
    workers: usize,
    /// Workers waiting for work, each on its own condvar, the one that
    /// idled last on top: a call wakes the most recently busy worker, so
    /// the others stay idle long enough to end.
    idle: Vec<(u64, Arc<Condvar>)>,
    /// Idle workers a call has woken (taken off `idle`).
    claimed: HashSet<u64>,
    /// Workers started and not yet looking for work: each takes a ready
    /// call soon, so none is started beside it for the same call (a thread
    /// can take longer than `grow_after` to start on a loaded machine).
    starting: usize,
    /// Whether the monitor looks at the ready calls within `grow_after`
    /// (it was told, or polls): a call that wakes no worker tells it
    /// otherwise.
    monitor_told: bool,
    next_worker: u64,
    /// The last handle is gone: workers end.
    closed: bool,
}

impl CallbackPool {
    /// A pool of at most `max_workers` threads (at least 1) whose watchdog
    /// reports calls running longer than `watchdog`.
    pub fn new(max_workers: usize, watchdog: Duration) -> Arc<CallbackPool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                grow_after: GROW_AFTER,
                ..State::default()
            }),
            monitor: Condvar::new(),
            max_workers: max_workers.max(1),
            watchdog,
        });
        let monitor = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("cbk-callback-monitor".into())
            .spawn(move || monitor.watch());
        match started {
            Ok(_) => shared.state.lock().monitor_runs = true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the callback monitor; long callbacks are not reported")
            }
        }
        Arc::new(CallbackPool { shared })
    }

    /// Queues `job` as `kv`'s next call.
    pub fn submit(&self, kv: KvId, job: Job) {
        self.submit_all([(kv, job)]);
    }

    /// Queues each job as its store's next call, in order, under one lock
    /// and with at most one worker woken: a burst of due rounds (the quiet
    /// ticker's) costs one wake-up, not one per store.
    pub fn submit_all(&self, jobs: impl IntoIterator<Item = (KvId, Job)>) {
        let shared = &self.shared;
        let mut st = shared.state.lock();
        let now = Instant::now();
        let mut any_ready = false;
        for (kv, job) in jobs {
            match st.queued.entry(kv) {
                Entry::Occupied(mut waiting) => {
                    waiting.get_mut().later.push_back(job);
                    continue; // behind the store's earlier call
                }
                Entry::Vacant(none) => {
                    none.insert(Waiting {
                        next: job,
                        later: VecDeque::new(),
                    });
                }
            }
            if st.running.contains_key(&kv) {
                continue; // its running call re-queues it when done
            }
            st.ready.push_back((kv, now));
            any_ready = true;
        }
        if !any_ready {
            return;
        }
        // A worker takes the ready calls soon if one was woken already or
        // runs a call that started under `grow_after` ago (most calls are
        // that short): then a burst of calls wakes no other worker, and
        // the monitor wakes one for a call that waits `grow_after`.
        let soon = worker_on_its_way(&st)
            || st
                .running
                .values()
                .any(|(since, _)| now.saturating_duration_since(*since) < st.grow_after);
        let covered = st.monitor_runs && soon;
        if covered {
            if !st.monitor_told {
                st.monitor_told = true;
                shared.monitor.notify_one();
            }
        } else if let Some((id, wake)) = st.idle.pop() {
            st.claimed.insert(id); // that worker takes the next ready store
            wake.notify_one();
        } else if st.workers == 0 || (!st.monitor_runs && st.workers < shared.max_workers) {
            if !Shared::spawn_worker(shared, &mut st) && st.workers == 0 {
                // Nobody would ever run them (no call runs either): drop
                // every ready call (after the lock: their drop runs user
                // code), which fails their rounds.
                let ready: Vec<KvId> = st.ready.drain(..).map(|(kv, _)| kv).collect();
                let dropped: Vec<_> = ready.iter().filter_map(|kv| st.queued.remove(kv)).collect();
                drop(st);
                drop(dropped);
            }
        } else if !st.monitor_told {
            st.monitor_told = true;
            shared.monitor.notify_one(); // grows the pool if this waits
        }
    }

    /// How long `kv`'s current call has run, if one runs.
    pub fn running_for(&self, kv: KvId) -> Option<Duration> {
        self.shared
            .state
            .lock()
            .running
            .get(&kv)
            .map(|(since, _)| since.elapsed())
    }

    /// Worker threads now.
    #[cfg(test)]
    pub fn workers(&self) -> usize {
        self.shared.state.lock().workers
    }

    /// Idle worker threads now.
    #[cfg(test)]
    fn idle_workers(&self) -> usize {
        self.shared.state.lock().idle.len()
    }
}

impl Drop for CallbackPool {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.closed = true;
        for (_, wake) in st.idle.drain(..) {
            wake.notify_one();
        }
        self.shared.monitor.notify_one();
        // Calls that never ran free their snapshots now, after the lock.
        let abandoned = std::mem::take(&mut st.queued);
        st.ready.clear();
        drop(st);
        drop(abandoned);
    }
}

impl Shared {
    /// Starts a worker; false if the thread could not be made.
    fn spawn_worker(shared: &Arc<Shared>, st: &mut State) -> bool {
        let id = st.next_worker;
        st.next_worker += 1;
        let worker = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("cbk-callback".into())
            .spawn(move || worker.work(id));
        match spawned {
            Ok(_) => {
                st.workers += 1;
                st.starting += 1;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, workers = st.workers, "cannot start a callback thread; trying again in 1 s");
                st.grow_not_before = Some(Instant::now() + Duration::from_secs(1));
                false
            }
        }
    }

    fn work(self: Arc<Self>, id: u64) {
        let wake = Arc::new(Condvar::new());
        let mut st = self.state.lock();
        st.starting -= 1;
        loop {
            // The call done and the next one taken under one lock.
            let (kv, job) = loop {
                if st.closed {
                    st.workers -= 1;
                    return;
                }
                if let Some(next) = take_ready(&mut st) {
                    break next;
                }
                st.idle.push((id, Arc::clone(&wake)));
                let timed_out = wake.wait_for(&mut st, IDLE_EXIT).timed_out();
                if st.claimed.remove(&id) {
                    continue; // woken by a call (already off `idle`)
                }
                st.idle.retain(|(i, _)| *i != id);
                if timed_out && st.ready.is_empty() && st.workers > MIN_WORKERS {
                    st.workers -= 1;
                    return;
                }
            };
            drop(st);
            // The job catches its callback's panics; this keeps the worker
            // (and the store's queue) alive should anything else panic.
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                // Dropping a payload can panic again, outside any guard.
                std::mem::forget(payload);
            }
            st = self.state.lock();
            st.running.remove(&kv);
            if st.queued.contains_key(&kv) {
                st.ready.push_back((kv, Instant::now()));
            }
        }
    }

    /// The monitor: wakes an idle worker, or starts one (up to the cap),
    /// when a call has waited `grow_after` with no worker free for it, and
    /// logs each call that runs past the watchdog limit, once. Ends when
    /// the pool is dropped.
    fn watch(self: Arc<Self>) {
        let every = (self.watchdog / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut st = self.state.lock();
        let mut next_watch = Instant::now() + every;
        while !st.closed {
            let now = Instant::now();
            if now >= next_watch {
                next_watch = now + every;
                for (kv, (since, reported)) in st.running.iter_mut() {
                    let running = since.elapsed();
                    if !*reported && running >= self.watchdog {
                        *reported = true;
                        tracing::warn!(
                            kv_store = kv.0,
                            ?running,
                            "backup callback runs past the watchdog limit; its store's rounds wait for it"
                        );
                    }
                }
            }
            let mut wait = next_watch.saturating_duration_since(now);
            let may_grow = st.workers < self.max_workers && st.grow_not_before.is_none_or(|t| now >= t);
            if st.ready.front().is_some() && (!st.idle.is_empty() || may_grow) {
                // Polled every `grow_after` only while a call waits and a
                // worker could be woken or started for it; at the cap with
                // none idle, a freed worker takes it.
                if wants_worker(&st, now) {
                    if let Some((id, wake)) = st.idle.pop() {
                        st.claimed.insert(id);
                        wake.notify_one();
                    } else {
                        Shared::spawn_worker(&self, &mut st);
                    }
                }
                wait = wait.min(st.grow_after);
            } else if let (Some(_), Some(t)) = (st.ready.front(), st.grow_not_before) {
                wait = wait.min(t.saturating_duration_since(now));
            }
            // A call that skips waking a worker tells the monitor unless it
            // looks again within `grow_after` anyway.
            st.monitor_told = wait <= st.grow_after;
            self.monitor.wait_for(&mut st, wait);
        }
    }
}

/// Whether the oldest ready call has waited `grow_after` with no worker on
/// its way to it: none woken already and none just started (either takes
/// the oldest call first).
fn wants_worker(st: &State, now: Instant) -> bool {
    st.ready.front().is_some_and(|(_, since)| {
        now.saturating_duration_since(*since) >= st.grow_after && !worker_on_its_way(st)
    })
}

/// Whether a worker will take the oldest ready call without being woken or
/// started for it: one was woken already, or one was started and is not
/// yet looking for work.
fn worker_on_its_way(st: &State) -> bool {
    !st.claimed.is_empty() || st.starting > 0
}

/// The next ready store's next call, marked running.
fn take_ready(st: &mut State) -> Option<(KvId, Job)> {
    while let Some((kv, _)) = st.ready.pop_front() {
        let Entry::Occupied(mut waiting) = st.queued.entry(kv) else {
            debug_assert!(false, "a ready store without queued calls");
            continue;
        };
        let job = match waiting.get_mut().later.pop_front() {
            Some(after) => std::mem::replace(&mut waiting.get_mut().next, after),
            None => waiting.remove().next,
        };
        st.running.insert(kv, (Instant::now(), false));
        return Some((kv, job));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::mpsc;

    use super::*;

    /// A job that records its start and end under `log` and waits for a
    /// release when `gate` is given.
    fn job(log: &Arc<Mutex<Vec<String>>>, name: &str, gate: Option<mpsc::Receiver<()>>) -> Job {
        let (log, name) = (Arc::clone(log), name.to_string());
        Box::new(move || {
            log.lock().push(format!("{name} start"));
            if let Some(gate) = gate {
                gate.recv().ok();
            }
            log.lock().push(format!("{name} end"));
        })
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "waited 30 s for: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn one_stores_calls_run_one_at_a_time_in_order() {
        let pool = CallbackPool::new(8, Duration::from_secs(60));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = mpsc::channel();
        pool.submit(KvId(1), job(&log, "a", Some(gate)));
        pool.submit(KvId(1), job(&log, "b", None));
        pool.submit(KvId(1), job(&log, "c", None));
        wait_for("a starts", || log.lock().len() == 1);
        // Free workers exist (8), yet b waits for a.
        pool.submit(KvId(2), job(&log, "other", None));
        wait_for("the other store's call ends", || {
            log.lock().contains(&"other end".to_string())
        });
        assert!(!log.lock().contains(&"b start".to_string()), "b ran beside a");
        release.send(()).unwrap();
        wait_for("c ends", || log.lock().contains(&"c end".to_string()));
        let order: Vec<String> = log
            .lock()
            .iter()
            .filter(|l| !l.starts_with("other"))
            .cloned()
            .collect();
        assert_eq!(
            order,
            ["a start", "a end", "b start", "b end", "c start", "c end"]
        );
    }

    #[test]
    fn a_burst_runs_every_call_in_its_stores_order_and_behind_a_running_one() {
        let pool = CallbackPool::new(4, Duration::from_secs(60));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = mpsc::channel();
        pool.submit(KvId(0), job(&log, "0a", Some(gate)));
        wait_for("0a starts", || log.lock().len() == 1);
        pool.submit_all([
            (KvId(0), job(&log, "0b", None)),
            (KvId(1), job(&log, "1a", None)),
            (KvId(2), job(&log, "2a", None)),
            (KvId(1), job(&log, "1b", None)),
        ]);
        let ended = |name: &str| log.lock().contains(&format!("{name} end"));
        wait_for("the other stores' calls end", || ended("1b") && ended("2a"));
        assert!(!log.lock().contains(&"0b start".to_string()), "0b ran beside 0a");
        release.send(()).unwrap();
        wait_for("0b ends", || ended("0b"));
        let of = |store: char| -> Vec<String> {
            let log = log.lock();
            log.iter().filter(|l| l.starts_with(store)).cloned().collect()
        };
        assert_eq!(of('0'), ["0a start", "0a end", "0b start", "0b end"]);
        assert_eq!(of('1'), ["1a start", "1a end", "1b start", "1b end"]);
    }

    #[test]
    fn blocked_stores_hold_one_worker_each_up_to_the_cap() {
        let pool = CallbackPool::new(3, Duration::from_secs(60));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut releases = Vec::new();
        for kv in 0..3 {
            let (release, gate) = mpsc::channel();
            releases.push(release);
            pool.submit(KvId(kv), job(&log, &format!("blocked{kv}"), Some(gate)));
        }
        wait_for("three blocked calls run", || log.lock().len() == 3);
        assert_eq!(pool.workers(), 3);
        // At the cap: a fourth store waits for a free worker.
        pool.submit(KvId(9), job(&log, "late", None));
        std::thread::yield_now();
        assert!(!log.lock().contains(&"late start".to_string()));
        releases.remove(0).send(()).unwrap();
        wait_for("the late call runs once a worker is free", || {
            log.lock().contains(&"late end".to_string())
        });
        assert_eq!(pool.workers(), 3, "never above the cap");
        for r in releases {
            r.send(()).unwrap();
        }
    }

    #[test]
    fn a_watched_call_shows_how_long_it_runs() {
        let pool = CallbackPool::new(2, Duration::from_millis(20));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = mpsc::channel();
        pool.submit(KvId(4), job(&log, "slow", Some(gate)));
        wait_for("it runs", || pool.running_for(KvId(4)).is_some());
        wait_for("the watchdog reports it", || {
            pool.shared
                .state
                .lock()
                .running
                .get(&KvId(4))
                .is_some_and(|(_, reported)| *reported)
        });
        assert!(pool.running_for(KvId(4)).unwrap() >= Duration::from_millis(20));
        release.send(()).unwrap();
        wait_for("it ended", || pool.running_for(KvId(4)).is_none());
        assert_eq!(pool.running_for(KvId(5)), None);
    }

    #[test]
    fn many_short_calls_of_many_stores_all_run_on_few_workers() {
        let pool = CallbackPool::new(64, Duration::from_secs(60));
        let done = Arc::new(AtomicUsize::new(0));
        for kv in 0..1024u16 {
            let done = Arc::clone(&done);
            pool.submit(
                KvId(kv),
                Box::new(move || {
                    done.fetch_add(1, SeqCst);
                }),
            );
        }
        wait_for("1024 calls", || done.load(SeqCst) == 1024);
        assert!(pool.workers() <= 64);
    }

    #[test]
    fn a_panicking_job_leaves_the_worker_and_the_stores_next_call() {
        let pool = CallbackPool::new(1, Duration::from_secs(60));
        let log = Arc::new(Mutex::new(Vec::new()));
        pool.submit(KvId(1), Box::new(|| panic!("boom")));
        pool.submit(KvId(1), job(&log, "after", None));
        wait_for("the next call runs", || {
            log.lock().contains(&"after end".to_string())
        });
        assert_eq!(pool.workers(), 1);
    }

    /// Brings `pool` to `n` workers, all idle: `n` calls blocked at once
    /// (stores 0..n), then released.
    fn make_idle_workers(pool: &CallbackPool, n: u16) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut releases = Vec::new();
        for kv in 0..n {
            let (release, gate) = mpsc::channel();
            releases.push(release);
            pool.submit(KvId(kv), job(&log, &format!("warm{kv}"), Some(gate)));
        }
        wait_for("the blocked calls run", || log.lock().len() == usize::from(n));
        for r in releases {
            r.send(()).unwrap();
        }
        wait_for("every worker idle", || pool.idle_workers() == usize::from(n));
    }

    #[test]
    fn a_burst_of_short_calls_wakes_one_idle_worker() {
        let pool = CallbackPool::new(8, Duration::from_secs(60));
        make_idle_workers(&pool, 4);
        // The monitor never steps in: only the calls' own wake-ups count.
        pool.shared.state.lock().grow_after = Duration::from_secs(3600);
        let threads = Arc::new(Mutex::new(HashSet::new()));
        let done = Arc::new(AtomicUsize::new(0));
        // The first call holds until all are queued, so the burst stays one
        // burst however the test thread is scheduled (a worker that drained
        // the queue between two submits would be idle again, rightly woken).
        let (release, gate) = mpsc::channel::<()>();
        let mut gate = Some(gate);
        for kv in 10..30 {
            let (threads, done) = (Arc::clone(&threads), Arc::clone(&done));
            let gate = gate.take();
            pool.submit(
                KvId(kv),
                Box::new(move || {
                    if let Some(gate) = gate {
                        gate.recv().unwrap();
                    }
                    threads.lock().insert(std::thread::current().id());
                    done.fetch_add(1, SeqCst);
                }),
            );
        }
        release.send(()).unwrap();
        wait_for("20 calls", || done.load(SeqCst) == 20);
        assert_eq!(threads.lock().len(), 1, "one worker ran the burst");
    }

    #[test]
    fn a_call_behind_a_blocked_one_gets_an_idle_worker() {
        let pool = CallbackPool::new(8, Duration::from_secs(60));
        make_idle_workers(&pool, 2);
        let log = Arc::new(Mutex::new(Vec::new()));
        // A call that blocks, and behind it another store's call: it wakes
        // no worker itself (the first call started under `grow_after` ago
        // and is taken to end soon), so the monitor wakes the idle one
        // once it has waited that long.
        pool.shared.state.lock().grow_after = Duration::from_millis(300);
        let (release, gate) = mpsc::channel();
        pool.submit(KvId(5), job(&log, "blocked", Some(gate)));
        wait_for("the blocking call starts", || {
            log.lock().contains(&"blocked start".to_string())
        });
        pool.submit(KvId(6), job(&log, "behind", None));
        wait_for("the call behind the blocked one ends", || {
            log.lock().contains(&"behind end".to_string())
        });
        assert!(!log.lock().contains(&"blocked end".to_string()));
        assert_eq!(pool.workers(), 2, "an idle worker was woken, none started");
        release.send(()).unwrap();
    }

    #[test]
    fn a_worker_on_its_way_to_a_waiting_call_keeps_the_monitor_from_starting_another() {
        let now = Instant::now();
        let mut st = State {
            grow_after: GROW_AFTER,
            ..State::default()
        };
        st.queued.insert(
            KvId(1),
            Waiting {
                next: Box::new(|| {}),
                later: VecDeque::new(),
            },
        );
        st.ready.push_back((KvId(1), now));
        assert!(!wants_worker(&st, now), "the call has not waited yet");
        let waited = now + GROW_AFTER;
        assert!(wants_worker(&st, waited), "it waited with no worker on its way");
        st.starting = 1;
        assert!(!wants_worker(&st, waited), "a started worker takes it first");
        st.starting = 0;
        st.claimed.insert(7);
        assert!(!wants_worker(&st, waited), "a woken worker takes it first");
    }
}
