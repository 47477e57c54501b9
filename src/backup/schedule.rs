//! When a store's rounds run: pure functions of the store id, the interval
//! and the monotonic clock.

use std::time::{Duration, Instant};

use crate::engine::KvId;

/// How long after its first round a store's second round runs: a fraction of
/// the interval that depends on the store id (the golden-ratio sequence), so
/// stores started together spread their rounds over the whole interval
/// instead of ticking at once. Always in `(0, interval)`.
pub(crate) fn first_offset(kv: KvId, interval: Duration) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    let phase = ((f64::from(kv.0) + 1.0) * GOLDEN).fract();
    interval.mul_f64(phase)
}

/// The next round's due time: one step after the previous due time, or now
/// if that has passed. Missed ticks are skipped, never fired in a burst.
pub(crate) fn next_due(prev_due: Instant, step: Duration, now: Instant) -> Instant {
    // Config caps steps far below Instant's range; saturate all the same.
    let due = prev_due.checked_add(step).unwrap_or(now + MAX_STEP);
    due.max(now)
}

/// The longest step the schedule takes (intervals and backoffs are capped
/// to it by `Config::validate`).
pub(crate) const MAX_STEP: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_spread_1024_stores_over_the_interval() {
        let interval = Duration::from_secs(120);
        let mut buckets = [0u32; 16];
        for kv in 0..1024u16 {
            let off = first_offset(KvId(kv), interval);
            assert!(off > Duration::ZERO && off < interval, "kv {kv}: {off:?}");
            buckets[(off.as_secs_f64() / interval.as_secs_f64() * 16.0) as usize] += 1;
        }
        // 64 per bucket when even; the golden-ratio sequence stays close.
        for (i, n) in buckets.iter().enumerate() {
            assert!((56..=72).contains(n), "bucket {i} has {n} stores: {buckets:?}");
        }
    }

    #[test]
    fn a_late_round_is_rescheduled_once_not_in_a_burst() {
        let t0 = Instant::now();
        let step = Duration::from_millis(100);
        // The round ended 1 s after it was due: ten ticks were missed.
        let now = t0 + Duration::from_secs(1);
        let due = next_due(t0, step, now);
        assert_eq!(due, now, "one round at once");
        assert_eq!(next_due(due, step, now), now + step, "then back to the interval");
    }

    #[test]
    fn an_on_time_round_keeps_the_period() {
        let t0 = Instant::now();
        let step = Duration::from_millis(100);
        assert_eq!(next_due(t0, step, t0 + Duration::from_millis(30)), t0 + step);
    }
}
