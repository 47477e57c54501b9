//! Retention: which restore points a backup dir keeps when it is pruned.
//!
//! A policy keeps every restore point of the last `keep_for` (measured
//! from the newest round, not from now: a stopped store loses nothing) and
//! of the last `keep_rounds` rounds; with both, whatever either keeps.
//! Neither set is "off": nothing is pruned.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manifest::RoundRecord;

/// A retention policy. The default keeps everything (off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Keep every restore point of the last this long, counted back from
    /// the newest round's time.
    #[serde(default, with = "optional_duration")]
    pub keep_for: Option<Duration>,
    /// Keep every restore point of the newest this many rounds.
    #[serde(default)]
    pub keep_rounds: Option<u64>,
}

/// A policy or duration that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRetention(pub String);

impl std::fmt::Display for BadRetention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Retention {
    /// Whether the policy prunes anything at all.
    pub fn is_off(&self) -> bool {
        self.keep_for.is_none() && self.keep_rounds.is_none()
    }

    /// Checks a policy before it deletes anything: a zero window would keep
    /// no restore point (to keep everything, set neither).
    pub fn validate(&self) -> Result<(), BadRetention> {
        if self.keep_for == Some(Duration::ZERO) {
            return Err(BadRetention(
                "keep_for 0 would keep no restore point; to keep everything, set no retention".into(),
            ));
        }
        if self.keep_rounds == Some(0) {
            return Err(BadRetention(
                "keep_rounds 0 would keep no restore point; to keep everything, set no retention".into(),
            ));
        }
        Ok(())
    }

    /// The first round of the window among `rounds` (in round order):
    /// the oldest round a restore point must be kept from. `None` when the
    /// policy is off or there are no rounds.
    pub fn window_start(&self, rounds: &[RoundRecord]) -> Option<u64> {
        let newest = rounds.last()?;
        let mut start: Option<u64> = None;
        let mut widen = |r: u64| start = Some(start.map_or(r, |s| s.min(r)));
        if let Some(k) = self.keep_rounds.filter(|k| *k > 0) {
            let i = rounds.len().saturating_sub(k.min(rounds.len() as u64) as usize);
            widen(rounds[i].round);
        }
        if let Some(t) = self.keep_for {
            let from = newest
                .time_ms
                .saturating_sub(t.as_millis().min(u128::from(u64::MAX)) as u64);
            let first = rounds.iter().find(|r| r.time_ms >= from).unwrap_or(newest);
            widen(first.round);
        }
        start
    }
}

/// Parses a duration such as `24h`, `90m`, `7d` or `1h 30m` (humantime's
/// syntax: numbers with units; no sign).
pub fn parse_duration(text: &str) -> Result<Duration, BadRetention> {
    humantime::parse_duration(text).map_err(|e| {
        BadRetention(format!(
            "{text:?} is not a duration ({e}); write e.g. 24h, 90m, 7d"
        ))
    })
}

/// Parses an RFC 3339 time (`2026-12-01T22:35:00Z`, with or without
/// fractions, in UTC) into milliseconds since the Unix epoch.
pub fn parse_time_ms(text: &str) -> Result<u64, BadRetention> {
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        BadRetention(format!(
            "{text:?} is not an RFC 3339 time ({e}); write e.g. 2026-12-01T22:35:00Z"
        ))
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| BadRetention(format!("{text:?} is before 1970")))?
        .as_millis();
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Formats milliseconds since the Unix epoch as RFC 3339 (UTC, to the
/// millisecond).
pub fn format_time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MANIFEST_FORMAT;

    fn rounds(times: &[u64]) -> Vec<RoundRecord> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| RoundRecord {
                format: MANIFEST_FORMAT,
                round: i as u64 + 1,
                time_ms: *t,
                engine_format: "test".into(),
                complete: true,
                first_seqno: None,
                full: i == 0,
                added: Vec::new(),
                removed: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn durations_parse_with_a_unit_and_bad_ones_name_the_problem() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "-5m", "10", "10x", "99999999999999999999d"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.0.contains("is not a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn times_parse_as_rfc3339_and_round_trip() {
        let ms = parse_time_ms("2026-12-01T22:35:00Z").unwrap();
        assert_eq!(format_time_ms(ms), "2026-12-01T22:35:00.000Z");
        assert!(parse_time_ms("yesterday")
            .unwrap_err()
            .0
            .contains("not an RFC 3339 time"));
    }

    #[test]
    fn a_zero_window_is_refused_and_off_is_no_policy() {
        assert!(Retention::default().is_off());
        assert!(Retention::default().validate().is_ok());
        let zero = Retention {
            keep_for: Some(Duration::ZERO),
            keep_rounds: None,
        };
        assert!(zero.validate().unwrap_err().0.contains("keep no restore point"));
        let zero = Retention {
            keep_for: None,
            keep_rounds: Some(0),
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn the_window_counts_back_from_the_newest_round_not_from_now() {
        let r = rounds(&[1_000, 2_000, 3_000, 10_000]);
        let by_time = Retention {
            keep_for: Some(Duration::from_millis(8_000)),
            keep_rounds: None,
        };
        assert_eq!(by_time.window_start(&r), Some(2));
        let by_rounds = Retention {
            keep_for: None,
            keep_rounds: Some(3),
        };
        assert_eq!(by_rounds.window_start(&r), Some(2));
        let both = Retention {
            keep_for: Some(Duration::from_millis(100)),
            keep_rounds: Some(2),
        };
        assert_eq!(both.window_start(&r), Some(3), "whatever either keeps");
        let more_than_there = Retention {
            keep_for: None,
            keep_rounds: Some(99),
        };
        assert_eq!(more_than_there.window_start(&r), Some(1));
        assert_eq!(Retention::default().window_start(&r), None);
    }
}
