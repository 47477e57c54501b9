//! Work on many stores at once: restore and verify read and write each
//! store on its own, so stores run on a few scoped threads, each holding
//! one store's work at a time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Threads for `n` stores' work: one per core (the work reads cached
/// files and checks them, which is CPU), never more than there are stores.
pub(super) fn threads_for(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.min(n).max(1)
}

/// Runs `job` on every item of `items` on [`threads_for`] threads, each
/// thread taking the next item not yet taken, and returns the results in
/// item order. Once a result makes `stop` true, no item is started any
/// more: those give `None`. `job` reports progress through the function it
/// is handed; this thread passes it on to `progress` as it comes (with one
/// thread, one store or one core, `job` runs on this thread and calls
/// `progress` itself).
pub(super) fn each_store<T, R>(
    items: &[T],
    progress: &mut dyn FnMut(u64),
    stop: impl Fn(&R) -> bool + Sync,
    job: impl Fn(&T, &mut dyn FnMut(u64)) -> R + Sync,
) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
{
    each_on(threads_for(items.len()), items, progress, stop, job)
}

fn each_on<T, R>(
    threads: usize,
    items: &[T],
    progress: &mut dyn FnMut(u64),
    stop: impl Fn(&R) -> bool + Sync,
    job: impl Fn(&T, &mut dyn FnMut(u64)) -> R + Sync,
) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
{
    if threads <= 1 {
        // On this thread: `progress` is called as `job` reports, between
        // the steps it reports.
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let result = job(item, progress);
            let stopping = stop(&result);
            results.push(Some(result));
            if stopping {
                break;
            }
        }
        results.resize_with(items.len(), || None);
        return results;
    }
    let next = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<u64>();
    let mut results: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let tx = tx.clone();
                let (next, stopped, job, stop) = (&next, &stopped, &job, &stop);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    let mut report = |n: u64| {
                        // The receiver lives until every worker is joined.
                        let _ = tx.send(n);
                    };
                    while !stopped.load(Ordering::Acquire) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        let result = job(item, &mut report);
                        if stop(&result) {
                            stopped.store(true, Ordering::Release);
                        }
                        done.push((i, result));
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
            let done = match worker.join() {
                Ok(done) => done,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            for (i, result) in done {
                results[i] = Some(result);
            }
        }
    });
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_and_results_keep_item_order() {
        let items: Vec<u32> = (0..500).collect();
        let mut reported = 0;
        let results = each_store(
            &items,
            &mut |n| reported += n,
            |_: &u32| false,
            |x, progress| {
                progress(1);
                x * 2
            },
        );
        assert_eq!(reported, 500);
        let doubled: Vec<u32> = results.into_iter().map(|r| r.expect("every item ran")).collect();
        assert_eq!(doubled, items.iter().map(|x| x * 2).collect::<Vec<_>>());
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
        );
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
        );
        assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
        assert!(results.iter().all(|r| *r == Some(0)));
    }
}
