//! `UnixTime`: whole seconds since the Unix epoch, serialized as RFC 3339 UTC.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Seconds since 1970-01-01T00:00:00Z. Signatures, keys and certificates all
/// work in whole seconds, so nothing finer is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(pub i64);

/// A timestamp string that is not RFC 3339, or is out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid RFC 3339 timestamp {input:?}: {reason}")]
pub struct TimeParseError {
    input: String,
    reason: String,
}

impl UnixTime {
    /// The wall clock, truncated to whole seconds.
    pub fn now() -> UnixTime {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => UnixTime(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            // A clock before 1970 is broken; negative seconds keep ordering sane.
            Err(e) => UnixTime(-i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX)),
        }
    }

    pub const fn from_secs(secs: i64) -> UnixTime {
        UnixTime(secs)
    }

    pub const fn as_secs(self) -> i64 {
        self.0
    }

    /// Adds a duration, saturating at the ends of the range.
    pub fn saturating_add(self, d: Duration) -> UnixTime {
        UnixTime(self.0.saturating_add(duration_secs(d)))
    }

    /// Subtracts a duration, saturating at the ends of the range.
    pub fn saturating_sub(self, d: Duration) -> UnixTime {
        UnixTime(self.0.saturating_sub(duration_secs(d)))
    }

    /// Parses an RFC 3339 timestamp (any offset; sub-seconds are dropped).
    pub fn parse_rfc3339(s: &str) -> Result<UnixTime, TimeParseError> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| UnixTime(t.unix_timestamp()))
            .map_err(|e| TimeParseError {
                input: s.chars().take(64).collect(),
                reason: e.to_string(),
            })
    }

    /// RFC 3339 in UTC, e.g. `2026-11-26T14:00:00Z`. Out-of-range values
    /// (beyond year 9999) fall back to plain seconds.
    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| self.0.to_string())
    }
}

fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Add<Duration> for UnixTime {
    type Output = UnixTime;
    fn add(self, d: Duration) -> UnixTime {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for UnixTime {
    type Output = UnixTime;
    fn sub(self, d: Duration) -> UnixTime {
        self.saturating_sub(d)
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl From<SystemTime> for UnixTime {
    fn from(t: SystemTime) -> UnixTime {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => UnixTime(duration_secs(d)),
            Err(e) => UnixTime(-duration_secs(e.duration())),
        }
    }
}

impl Serialize for UnixTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for UnixTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<UnixTime, D::Error> {
        let s = String::deserialize(d)?;
        UnixTime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = UnixTime::parse_rfc3339("2026-11-26T14:00:00Z").unwrap();
        assert_eq!(t.as_secs(), 1_795_701_600);
        assert_eq!(t.to_string(), "2026-11-26T14:00:00Z");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-26T14:00:00Z\"");
        let back: UnixTime = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let t = UnixTime::parse_rfc3339("2026-11-26T15:00:00+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-26T14:00:00Z");
    }

    #[test]
    fn garbage_is_an_error() {
        for s in ["", "yesterday", "2026-13-01T00:00:00Z", "1795701600"] {
            assert!(UnixTime::parse_rfc3339(s).is_err(), "{s}");
        }
    }

    #[test]
    fn arithmetic_saturates() {
        let t = UnixTime(i64::MAX - 1);
        assert_eq!(t + Duration::from_secs(10), UnixTime(i64::MAX));
        assert_eq!(UnixTime(10) - Duration::from_secs(3), UnixTime(7));
    }
}
