//! The one backoff of the crate: failed rounds, restarts of failed stores
//! and failed uploads all wait by it.

use std::time::Duration;

/// The wait after `failures` failures in a row: `base`, doubled for each
/// further failure, at most `cap` (never below `base`). Something that keeps
/// failing retries ever more slowly instead of spinning; one success returns
/// it to `base`.
pub(crate) fn backoff(base: Duration, cap: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(cap.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_its_cap() {
        let (i, cap) = (Duration::from_secs(1), Duration::from_secs(10));
        let waits: Vec<u64> = (1..=6).map(|f| backoff(i, cap, f).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(i, Duration::ZERO, 3), i, "never below the base");
        assert_eq!(backoff(i, cap, u32::MAX), cap, "no overflow");
    }
}
