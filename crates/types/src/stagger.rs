//! Staggering: anything a whole fleet does periodically (status refresh, stats flush,
//! scans, reconnects, lease keepalives) is shifted by a per-host offset, so a million
//! agents never act in the same second. One helper, used everywhere.

use std::time::Duration;

/// A stable hash of a host id, well spread over `u64` (FNV-1a, then the SplitMix64
/// finaliser: FNV alone clusters on ids that differ only in their last characters).
pub fn host_hash(host_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// This host's offset within `period`: `hash(host_id) mod period`, at millisecond
/// resolution.
pub fn offset(host_id: &str, period: Duration) -> Duration {
    let ms = period.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(host_hash(host_id) % ms)
}

/// This host's bucket out of `buckets` (for percentage rollouts): stable for a host, so
/// the same hosts are chosen every time and a larger percentage only adds hosts.
pub fn bucket(host_id: &str, buckets: u64) -> u64 {
    host_hash(host_id) % buckets.max(1)
}

/// The delay before retry number `attempt` (from 1): `first`, doubling each time, at
/// most `cap`. [`Backoff`] keeps the count and adds the host's offset.
pub fn backoff(attempt: u32, first: Duration, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    first.saturating_mul(1 << doublings).min(cap)
}

/// A retry schedule: the delay starts at `first` and doubles with each failure in a
/// row, up to `max`; [`Backoff::succeeded`] starts it again. With
/// [`Backoff::staggered`], each delay gets this host's offset within it (so up to
/// twice the base), and a fleet that failed at the same moment retries spread out
/// instead of in one wave. The one place every retry loop takes its delays from.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
    host: Option<u64>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            failures: 0,
            host: None,
        }
    }

    /// Adds `host_id`'s stable offset within each delay.
    pub fn staggered(mut self, host_id: &str) -> Self {
        self.host = Some(host_hash(host_id));
        self
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = backoff(self.failures, self.first, self.max);
        match self.host {
            Some(hash) => {
                let ms = base.as_millis() as u64;
                base + Duration::from_millis(if ms == 0 { 0 } else { hash % ms })
            }
            None => base,
        }
    }

    /// The attempt worked: the next failure waits `first` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let secs = |a| backoff(a, Duration::from_secs(1), Duration::from_secs(60)).as_secs();
        let delays: Vec<u64> = (1..=9).map(secs).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(secs(0), 1);
        assert_eq!(secs(u32::MAX), 60);
    }

    #[test]
    fn a_backoff_doubles_staggers_and_starts_again_after_a_success() {
        let mut plain = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6).map(|_| plain.failed().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(plain.failures(), 6);
        plain.succeeded();
        assert_eq!(plain.failed(), Duration::from_millis(100));

        let first = Duration::from_secs(2);
        let mut host = Backoff::new(first, Duration::from_secs(32)).staggered("host-a");
        let d = host.failed();
        assert_eq!(d, first + offset("host-a", first), "the host's own offset");
        assert!(d >= first && d < first * 2);
        let mut other = Backoff::new(first, Duration::from_secs(32)).staggered("host-b");
        assert_ne!(other.failed(), d, "two hosts retry at different moments");
    }

    #[test]
    fn offsets_spread_evenly_over_the_period() {
        // 100,000 hosts with sequential ids (the worst case for a weak hash) over a
        // 60 s period cut into 60 one-second slots: each slot within 10% of the mean.
        let period = Duration::from_secs(60);
        let mut slots = [0u32; 60];
        let n = 100_000;
        for i in 0..n {
            let off = offset(&format!("host-{i:06}"), period);
            assert!(off < period);
            slots[off.as_secs() as usize] += 1;
        }
        let mean = n as f64 / 60.0;
        for (s, &count) in slots.iter().enumerate() {
            let dev = (f64::from(count) - mean).abs() / mean;
            assert!(dev < 0.10, "slot {s}: {count} vs mean {mean:.0}");
        }
    }

    #[test]
    fn stable_and_bounded() {
        assert_eq!(host_hash("a"), host_hash("a"));
        assert_ne!(host_hash("a"), host_hash("b"));
        assert_eq!(offset("x", Duration::ZERO), Duration::ZERO);
        assert!(bucket("x", 100) < 100);
    }
}
