//! Per-host event counts over a window of event time, for frequency (event_count) rules.

use std::collections::HashMap;

/// Bounds of the frequency state of one [`crate::Detector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyLimits {
    /// Keys (rule, host, group-by values) held at once. When full, finished windows go
    /// first, then the least recently seen keys (counted as evicted).
    pub max_keys: usize,
}

impl Default for FrequencyLimits {
    fn default() -> Self {
        FrequencyLimits { max_keys: 100_000 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    last_seen: i64,
    count: u64,
    fired: bool,
}

#[derive(Debug)]
pub(crate) struct FrequencyState {
    windows: HashMap<Box<str>, Window>,
    limits: FrequencyLimits,
    pub(crate) evicted: u64,
    pub(crate) expired: u64,
}

impl FrequencyState {
    pub(crate) fn new(limits: FrequencyLimits) -> FrequencyState {
        FrequencyState {
            windows: HashMap::new(),
            limits,
            evicted: 0,
            expired: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.windows.len()
    }

    /// Counts one event at `now` (event time, µs); returns the count when it reaches
    /// `threshold` for the first time in this window.
    pub(crate) fn observe(
        &mut self,
        key: &str,
        now: i64,
        span: i64,
        threshold: u64,
    ) -> Option<u64> {
        if !self.windows.contains_key(key) {
            self.make_room(now, span);
            if self.windows.len() >= self.limits.max_keys {
                return None; // max_keys is 0: nothing can be held
            }
            self.windows.insert(
                key.into(),
                Window {
                    start: now,
                    last_seen: now,
                    count: 0,
                    fired: false,
                },
            );
        }
        let w = self.windows.get_mut(key)?;
        // Event time, not arrival: a redelivered stream counts the same. An event a
        // window past the start opens a new window; late ones count in the current one.
        if now >= w.start.saturating_add(span) {
            *w = Window {
                start: now,
                last_seen: now,
                count: 0,
                fired: false,
            };
        }
        w.count += 1;
        w.last_seen = w.last_seen.max(now);
        if !w.fired && w.count >= threshold {
            w.fired = true;
            return Some(w.count);
        }
        None
    }

    fn make_room(&mut self, now: i64, span: i64) {
        if self.windows.len() < self.limits.max_keys {
            return;
        }
        let before = self.windows.len();
        self.windows
            .retain(|_, w| now < w.start.saturating_add(span));
        self.expired += (before - self.windows.len()) as u64;
        if self.windows.len() < self.limits.max_keys * 7 / 8 || self.windows.is_empty() {
            return;
        }
        // Still full of live windows: drop the least recently seen eighth at once, so
        // the scan is paid once per many inserts.
        let mut seen: Vec<i64> = self.windows.values().map(|w| w.last_seen).collect();
        let nth = (seen.len() / 8).max(1) - 1;
        let (_, cutoff, _) = seen.select_nth_unstable(nth);
        let cutoff = *cutoff;
        let before = self.windows.len();
        self.windows.retain(|_, w| w.last_seen > cutoff);
        self.evicted += (before - self.windows.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn fires_once_per_window_then_again_after() {
        let mut f = FrequencyState::new(FrequencyLimits::default());
        let hits: Vec<_> = (0..15).map(|i| f.observe("k", i * S, 60 * S, 10)).collect();
        assert_eq!(hits.iter().flatten().collect::<Vec<_>>(), vec![&10]);
        assert_eq!(hits[9], Some(10));
        // A new window 60 s after the first event.
        let again: Vec<_> = (60..70)
            .map(|i| f.observe("k", i * S, 60 * S, 10))
            .collect();
        assert_eq!(again[9], Some(10));
    }

    #[test]
    fn spread_out_events_never_fire() {
        let mut f = FrequencyState::new(FrequencyLimits::default());
        assert!((0..100).all(|i| f.observe("k", i * 10 * S, 60 * S, 10).is_none()));
    }

    #[test]
    fn keys_are_bounded_and_evictions_counted() {
        let mut f = FrequencyState::new(FrequencyLimits { max_keys: 100 });
        for i in 0..1000 {
            f.observe(&format!("host{i}"), S, 60 * S, 10);
            assert!(f.len() <= 100);
        }
        assert!(f.evicted >= 900);
        let mut zero = FrequencyState::new(FrequencyLimits { max_keys: 0 });
        assert_eq!(zero.observe("k", 0, S, 1), None);
    }
}
