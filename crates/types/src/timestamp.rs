use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A wall-clock instant that serializes as RFC 3339 UTC with microseconds
/// (`2026-11-26T10:01:13.123456Z`), the form ECS uses for `@timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }

    /// From nanoseconds since the Unix epoch.
    pub fn from_unix_nanos(nanos: u64) -> Self {
        Timestamp(UNIX_EPOCH + Duration::from_nanos(nanos))
    }

    pub fn unix_nanos(&self) -> u64 {
        self.0
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Whole seconds since the Unix epoch (0 before it).
    pub fn unix_secs(&self) -> i64 {
        i64::try_from(self.unix_nanos() / 1_000_000_000).unwrap_or(i64::MAX)
    }

    /// The UTC day, `YYYY-MM-DD`.
    pub fn utc_day(&self) -> String {
        let mut text = humantime::format_rfc3339_seconds(self.0).to_string();
        text.truncate(10);
        text
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_microseconds() {
        let ts = Timestamp::from_unix_nanos(1_764_151_273_123_456_000);
        let json = serde_json::to_string(&ts).unwrap();
        assert_eq!(json, "\"2025-11-26T10:01:13.123456Z\"");
        let back: Timestamp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ts);
    }
}
