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

/// The grid every tick of the component is armed on: multiples of a slot
/// from one epoch (the component's start), shared by every store. Stores
/// due within one slot then fire together, in one wake-up of their arbiter
/// thread, and hand their callbacks to one callback worker woken once;
/// ticks armed at random instants would each wake both threads.
///
/// A tick lands at most one slot after its due time. The store's due times
/// themselves are kept unrounded, so the period stays the interval, and
/// with an interval that is a multiple of the slot every tick is late by
/// the same amount: a file still waits at most one interval for its round.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TickGrid {
    epoch: Instant,
    slot: Duration,
}

impl TickGrid {
    /// Ticks on multiples of `slot` after `epoch`; a zero slot arms each
    /// tick at its due time.
    pub fn new(epoch: Instant, slot: Duration) -> Self {
        TickGrid { epoch, slot }
    }

    /// The first grid point at or after `due`, for a store ticking every
    /// `interval`: the slot is capped at an eighth of the interval, so a
    /// short interval keeps its period.
    pub fn arm_at(&self, due: Instant, interval: Duration) -> Instant {
        let slot = self.slot.min(interval / 8).as_nanos();
        if slot == 0 || due <= self.epoch {
            return due;
        }
        let slots = (due - self.epoch).as_nanos().div_ceil(slot);
        match u64::try_from(slots * slot) {
            Ok(nanos) => self.epoch + Duration::from_nanos(nanos),
            Err(_) => due, // centuries away: not worth a grid
        }
    }
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
    fn ticks_land_on_the_grid_at_most_one_slot_late() {
        let epoch = Instant::now();
        let grid = TickGrid::new(epoch, Duration::from_millis(10));
        let interval = Duration::from_secs(1);
        let ms = |n: u64| Duration::from_millis(n);
        assert_eq!(grid.arm_at(epoch + ms(3), interval), epoch + ms(10));
        assert_eq!(
            grid.arm_at(epoch + ms(10), interval),
            epoch + ms(10),
            "on the grid already"
        );
        assert_eq!(
            grid.arm_at(epoch + ms(10) + Duration::from_nanos(1), interval),
            epoch + ms(20)
        );
        // Two stores due 4 ms apart within one slot fire together.
        assert_eq!(
            grid.arm_at(epoch + ms(1234), interval),
            grid.arm_at(epoch + ms(1238), interval)
        );
    }

    #[test]
    fn the_grid_keeps_the_period_of_every_tick() {
        let epoch = Instant::now();
        let grid = TickGrid::new(epoch, Duration::from_millis(10));
        let interval = Duration::from_secs(1);
        let due = epoch + Duration::from_millis(1234);
        let first = grid.arm_at(due, interval);
        let second = grid.arm_at(next_due(due, interval, first), interval);
        assert_eq!(second - first, interval);
    }

    #[test]
    fn a_short_interval_gets_a_finer_grid_and_a_zero_slot_none() {
        let epoch = Instant::now();
        let grid = TickGrid::new(epoch, Duration::from_millis(10));
        let due = epoch + Duration::from_millis(3);
        // 16 ms: slots of 2 ms, so the tick is at most 2 ms late.
        assert_eq!(
            grid.arm_at(due, Duration::from_millis(16)),
            epoch + Duration::from_millis(4)
        );
        let off = TickGrid::new(epoch, Duration::ZERO);
        assert_eq!(off.arm_at(due, Duration::from_secs(1)), due);
    }

    #[test]
    fn an_on_time_round_keeps_the_period() {
        let t0 = Instant::now();
        let step = Duration::from_millis(100);
        assert_eq!(next_due(t0, step, t0 + Duration::from_millis(30)), t0 + step);
    }
}
