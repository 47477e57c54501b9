//! Work on many stores at once: restore and verify read and write each
//! store on its own, so stores run on a few scoped threads, each holding
//! one store's work at a time.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use parking_lot::Mutex;

/// How a store's work spends its time, which sets how many run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Work {
    /// Reads cached files and checks them (verify): CPU, one per core.
    Reads,
    /// Reads, then writes and fsyncs (restore): two per core, so one
    /// store's work runs while another waits on the disk's flush.
    Writes,
}

/// Threads for `n` stores' `work`, never more than there are stores.
pub(super) fn threads_for(n: usize, work: Work) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let per_core = match work {
        Work::Reads => 1,
        Work::Writes => 2,
    };
    (cores * per_core).min(n).max(1)
}

/// What [`each_store`] ran: each item's result in item order (`None` for
/// an item not started), and the first panic of a job, if one panicked
/// (no item started after it).
pub(super) struct Ran<R> {
    pub results: Vec<Option<R>>,
    pub panic: Option<Box<dyn Any + Send>>,
}

impl<R> Ran<R> {
    /// The results, or the job's panic raised again here.
    pub fn or_resume_panic(self) -> Vec<Option<R>> {
        if let Some(panic) = self.panic {
            std::panic::resume_unwind(panic);
        }
        self.results
    }
}

/// Runs `job` on every item of `items` on [`threads_for`] threads for
/// `work`, each
/// thread taking the next item not yet taken. Once a result makes `stop`
/// true, or a job panics, no item is started any more. `job` reports
/// progress through the function it is handed; this thread passes it on to
/// `progress` as it comes (with one thread, one store or one core, `job`
/// runs on this thread and calls `progress` itself).
pub(super) fn each_store<T, R>(
    work: Work,
    items: &[T],
    progress: &mut dyn FnMut(u64),
    stop: impl Fn(&R) -> bool + Sync,
    job: impl Fn(&T, &mut dyn FnMut(u64)) -> R + Sync,
) -> Ran<R>
where
    T: Sync,
    R: Send,
{
    each_on(threads_for(items.len(), work), items, progress, stop, job)
}

fn each_on<T, R>(
    threads: usize,
    items: &[T],
    progress: &mut dyn FnMut(u64),
    stop: impl Fn(&R) -> bool + Sync,
    job: impl Fn(&T, &mut dyn FnMut(u64)) -> R + Sync,
) -> Ran<R>
where
    T: Sync,
    R: Send,
{
    let mut results: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    if threads <= 1 {
        for (item, slot) in items.iter().zip(results.iter_mut()) {
            match catch_unwind(AssertUnwindSafe(|| job(item, progress))) {
                Ok(result) => {
                    let stopping = stop(&result);
                    *slot = Some(result);
                    if stopping {
                        break;
                    }
                }
                Err(panic) => {
                    return Ran {
                        results,
                        panic: Some(panic),
                    }
                }
            }
        }
        return Ran { results, panic: None };
    }
    let next = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let first_panic: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    let (tx, rx) = mpsc::channel::<u64>();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let tx = tx.clone();
                let (next, stopped, job, stop, first_panic) = (&next, &stopped, &job, &stop, &first_panic);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    let mut report = |n: u64| {
                        // The receiver lives until every worker is joined.
                        let _ = tx.send(n);
                    };
                    while !stopped.load(Ordering::Acquire) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        match catch_unwind(AssertUnwindSafe(|| job(item, &mut report))) {
                            Ok(result) => {
                                if stop(&result) {
                                    stopped.store(true, Ordering::Release);
                                }
                                done.push((i, result));
                            }
                            Err(panic) => {
                                stopped.store(true, Ordering::Release);
                                first_panic.lock().get_or_insert(panic);
                                break;
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        drop(tx);
        for n in rx {
            progress(n);
        }
        for worker in workers {
            // A job's panic is caught in the worker; this one is its own.
            let done = worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (i, result) in done {
                results[i] = Some(result);
            }
        }
    });
    Ran {
        results,
        panic: first_panic.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_and_results_keep_item_order() {
        let items: Vec<u32> = (0..500).collect();
        let mut reported = 0;
        let results = each_store(
            Work::Writes,
            &items,
            &mut |n| reported += n,
            |_: &u32| false,
            |x, progress| {
                progress(1);
                x * 2
            },
        )
        .or_resume_panic();
        assert_eq!(reported, 500);
        let doubled: Vec<u32> = results.into_iter().map(|r| r.expect("every item ran")).collect();
        assert_eq!(doubled, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn writes_run_two_stores_per_core_reads_one_never_more_than_there_are_stores() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(threads_for(1000, Work::Reads), cores);
        assert_eq!(threads_for(1000, Work::Writes), 2 * cores);
        assert_eq!(threads_for(1, Work::Writes), 1);
        assert_eq!(threads_for(0, Work::Reads), 1);
    }

    #[test]
    fn no_item_starts_after_a_result_asks_to_stop() {
        // One thread, so "after" is the item order.
        let items: Vec<u32> = (0..100).collect();
        let started = AtomicUsize::new(0);
        let results = each_on(
            1,
            &items,
            &mut |_| {},
            |failed: &bool| *failed,
            |x, _| {
                started.fetch_add(1, Ordering::Relaxed);
                *x == 3
            },
        )
        .or_resume_panic();
        assert_eq!(started.load(Ordering::Relaxed), 4);
        assert_eq!(results[3], Some(true));
        assert!(results[4..].iter().all(Option::is_none));
    }

    #[test]
    fn many_threads_run_every_item_once() {
        let items: Vec<usize> = (0..2000).collect();
        let runs: Vec<AtomicUsize> = items.iter().map(|_| AtomicUsize::new(0)).collect();
        let results = each_on(
            8,
            &items,
            &mut |_| {},
            |_: &usize| false,
            |x, _| runs[*x].fetch_add(1, Ordering::Relaxed),
        )
        .or_resume_panic();
        assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
        assert!(results.iter().all(|r| *r == Some(0)));
    }

    #[test]
    fn a_panicking_job_stops_the_others_and_comes_back_with_the_results() {
        for threads in [1, 4] {
            let items: Vec<u32> = (0..10_000).collect();
            let ran = each_on(
                threads,
                &items,
                &mut |_| {},
                |_: &u32| false,
                |x, _| {
                    assert_ne!(*x, 5, "item 5 panics");
                    *x
                },
            );
            assert!(ran.panic.is_some(), "{threads} threads");
            assert!(ran.results[5].is_none());
            assert!(ran.results[..5].iter().all(Option::is_some) || threads > 1);
            if threads == 1 {
                assert!(ran.results[6..].iter().all(Option::is_none), "none after it");
            }
        }
    }
}
