//! Event volume against its own history: events and bytes per time bucket, each closed
//! bucket compared with the same bucket of the previous days (median and median
//! deviation), so a host's or a data centre's daily rhythm is its own baseline. A
//! sudden silence is judged like a flood.
//!
//! History is kept as one byte per figure and bucket on a log scale (about 9% steps):
//! a week of hourly buckets is 384 bytes per host, and judging a 4x change needs no
//! more precision.

/// Buckets are numbered from the Unix epoch: `unix_secs / bucket_secs`.
pub type Bucket = u64;

/// The judging settings (from `[fleet]`).
#[derive(Debug, Clone, Copy)]
pub struct VolumeRules {
    pub bucket_secs: u64,
    pub history_days: u32,
    pub min_history_days: u32,
    pub ratio: f64,
    pub min_events: u64,
    pub min_bytes: u64,
}

impl VolumeRules {
    pub fn buckets_per_day(&self) -> u64 {
        (86_400 / self.bucket_secs.max(1)).max(1)
    }

    /// Slots in a ring: the history days and the day in progress.
    fn slots(&self) -> usize {
        usize::try_from(self.buckets_per_day() * (u64::from(self.history_days) + 1))
            .unwrap_or(usize::MAX)
    }

    pub fn bucket_of(&self, unix_secs: i64) -> Bucket {
        u64::try_from(unix_secs).unwrap_or(0) / self.bucket_secs.max(1)
    }
}

/// What a closed bucket looked like against its history.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub flood: bool,
    pub bucket: Bucket,
    pub events: u64,
    pub bytes: u64,
    pub median_events: u64,
    pub median_bytes: u64,
    pub days: usize,
}

/// One key's counters (a host, or a label value).
#[derive(Debug, Clone)]
pub struct VolumeRing {
    bucket: Bucket,
    events: u64,
    bytes: u64,
    /// Per slot, two bytes: events and bytes, log-scaled; 0 is "not known".
    history: Box<[[u8; 2]]>,
}

/// Log scale: 0 unknown, 1 a true zero, then 8 steps per doubling.
fn encode(x: u64) -> u8 {
    let q = 1.0 + 8.0 * (x as f64 + 1.0).log2();
    q.round().min(255.0) as u8
}

fn decode(q: u8) -> Option<u64> {
    (q > 0).then(|| (2f64.powf(f64::from(q - 1) / 8.0) - 1.0).round() as u64)
}

impl VolumeRing {
    pub fn new(rules: &VolumeRules, now: Bucket) -> Self {
        VolumeRing {
            bucket: now,
            events: 0,
            bytes: 0,
            history: vec![[0u8; 2]; rules.slots()].into_boxed_slice(),
        }
    }

    /// Bytes this ring holds, for the memory figures.
    pub fn heap_bytes(&self) -> usize {
        self.history.len() * 2
    }

    fn slot(&self, bucket: Bucket) -> usize {
        let len = self.history.len().max(1) as u64;
        usize::try_from(bucket % len).unwrap_or(0)
    }

    /// Counts one event of `bytes` in bucket `now`, first closing the buckets before it
    /// (their verdicts go to `verdicts`).
    pub fn add(
        &mut self,
        rules: &VolumeRules,
        now: Bucket,
        bytes: u64,
        verdicts: &mut Vec<Verdict>,
    ) {
        self.advance(rules, now, verdicts);
        self.events = self.events.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Closes every bucket before `now`: the one in progress with its counts, those
    /// without a single event as true zeros (a silence). A bucket judged against its
    /// history may yield a verdict. `now` before the current bucket (the server's
    /// clock went back) changes nothing.
    pub fn advance(&mut self, rules: &VolumeRules, now: Bucket, verdicts: &mut Vec<Verdict>) {
        if now <= self.bucket {
            return;
        }
        let (events, bytes) = (self.events, self.bytes);
        self.close(rules, self.bucket, events, bytes, verdicts);
        // Buckets skipped entirely: zeros, at most one ring's worth.
        let skipped_from = (self.bucket + 1).max(now.saturating_sub(self.history.len() as u64));
        for b in skipped_from..now {
            self.close(rules, b, 0, 0, verdicts);
        }
        self.bucket = now;
        self.events = 0;
        self.bytes = 0;
    }

    /// Forgets the bucket in progress: it will be stored as unknown, not judged (its
    /// counts are incomplete, for example after partitions moved between instances).
    pub fn taint(&mut self) {
        let slot = self.slot(self.bucket);
        self.history[slot] = [0, 0];
        self.events = u64::MAX;
    }

    fn close(
        &mut self,
        rules: &VolumeRules,
        bucket: Bucket,
        events: u64,
        bytes: u64,
        verdicts: &mut Vec<Verdict>,
    ) {
        let slot = self.slot(bucket);
        if events == u64::MAX {
            self.history[slot] = [0, 0];
            return;
        }
        if let Some(v) = self.judge(rules, bucket, events, bytes) {
            verdicts.push(v);
        }
        self.history[slot] = [encode(events), encode(bytes)];
    }

    /// The bucket against the same bucket of the previous days.
    fn judge(
        &self,
        rules: &VolumeRules,
        bucket: Bucket,
        events: u64,
        bytes: u64,
    ) -> Option<Verdict> {
        let per_day = rules.buckets_per_day();
        let mut past_events = Vec::with_capacity(rules.history_days as usize);
        let mut past_bytes = Vec::with_capacity(rules.history_days as usize);
        for day in 1..=u64::from(rules.history_days) {
            let Some(b) = bucket.checked_sub(day * per_day) else {
                break;
            };
            let [e, by] = self.history[self.slot(b)];
            if let (Some(e), Some(by)) = (decode(e), decode(by)) {
                past_events.push(e);
                past_bytes.push(by);
            }
        }
        if past_events.len() < rules.min_history_days as usize {
            return None;
        }
        let (me, se) = median_and_deviation(&mut past_events);
        let (mb, sb) = median_and_deviation(&mut past_bytes);
        let judge = |x: u64, m: u64, s: u64, floor: u64| -> Option<bool> {
            let (xf, mf, sf) = (x as f64, m as f64, s as f64);
            if x.abs_diff(m) < floor {
                return None;
            }
            if xf > mf * rules.ratio && xf > mf + 4.0 * sf {
                Some(true)
            } else if xf * rules.ratio < mf && xf < mf - 4.0 * sf {
                Some(false)
            } else {
                None
            }
        };
        let flood = judge(events, me, se, rules.min_events)
            .or_else(|| judge(bytes, mb, sb, rules.min_bytes))?;
        Some(Verdict {
            flood,
            bucket,
            events,
            bytes,
            median_events: me,
            median_bytes: mb,
            days: past_events.len(),
        })
    }
}

/// Median and median absolute deviation (robust against the one odd day).
fn median_and_deviation(values: &mut [u64]) -> (u64, u64) {
    let median = median_of(values);
    let mut dev: Vec<u64> = values.iter().map(|v| v.abs_diff(median)).collect();
    (median, median_of(&mut dev))
}

fn median_of(values: &mut [u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        values[mid - 1] / 2 + values[mid] / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> VolumeRules {
        VolumeRules {
            bucket_secs: 3_600,
            history_days: 7,
            min_history_days: 3,
            ratio: 4.0,
            min_events: 100,
            min_bytes: 100_000,
        }
    }

    /// `days` days of `per_bucket` events of 200 bytes per hourly bucket.
    fn steady(
        ring: &mut VolumeRing,
        r: &VolumeRules,
        from: Bucket,
        days: u64,
        per_bucket: u64,
    ) -> Vec<Verdict> {
        let mut v = Vec::new();
        for b in from..from + days * 24 {
            for _ in 0..per_bucket {
                ring.add(r, b, 200, &mut v);
            }
        }
        v
    }

    #[test]
    fn the_scale_round_trips_within_ten_percent() {
        for x in [0u64, 1, 7, 100, 5_000, 1_000_000, 3_000_000_000] {
            let back = decode(encode(x)).unwrap();
            assert!(
                back.abs_diff(x) as f64 <= 0.1 * x as f64 + 1.0,
                "{x} -> {back}"
            );
        }
        assert_eq!(decode(0), None);
        assert_eq!(encode(u64::MAX), 255);
    }

    #[test]
    fn a_steady_host_raises_nothing_and_a_flood_or_a_silence_does() {
        let r = rules();
        let start = 20_000 * 24;
        let mut ring = VolumeRing::new(&r, start);
        assert!(steady(&mut ring, &r, start, 5, 500).is_empty());
        // Day 6, first hour: ten times the usual.
        let mut v = Vec::new();
        let b = start + 5 * 24;
        for _ in 0..5_000 {
            ring.add(&r, b, 200, &mut v);
        }
        ring.advance(&r, b + 1, &mut v);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].flood && v[0].events == 5_000 && v[0].median_events > 400);
        // Then nothing at all for an hour: a silence, judged like a flood.
        v.clear();
        ring.advance(&r, b + 2, &mut v);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(!v[0].flood && v[0].events == 0);
    }

    #[test]
    fn small_hosts_do_not_flap_and_new_ones_learn_first() {
        let r = rules();
        let start = 20_000 * 24;
        let mut ring = VolumeRing::new(&r, start);
        // 10 events an hour, then 50: five times more, but under min_events.
        assert!(steady(&mut ring, &r, start, 4, 10).is_empty());
        let mut v = Vec::new();
        for _ in 0..50 {
            ring.add(&r, start + 4 * 24, 200, &mut v);
        }
        ring.advance(&r, start + 4 * 24 + 1, &mut v);
        assert!(v.is_empty(), "{v:?}");
        // Two days of history only: no judgement yet, whatever happens.
        let mut young = VolumeRing::new(&r, start);
        steady(&mut young, &r, start, 2, 500);
        young.advance(&r, start + 2 * 24 + 1, &mut v);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn a_tainted_bucket_is_neither_judged_nor_history() {
        let r = rules();
        let start = 20_000 * 24;
        let mut ring = VolumeRing::new(&r, start);
        steady(&mut ring, &r, start, 4, 500);
        let mut v = Vec::new();
        // The last hour, tainted, then (say) a flood in it: not judged, not kept.
        ring.taint();
        for _ in 0..50_000 {
            ring.add(&r, start + 4 * 24 - 1, 200, &mut v);
        }
        ring.advance(&r, start + 4 * 24, &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(ring.history[ring.slot(start + 4 * 24 - 1)], [0, 0]);
        // A clock that went back changes nothing.
        ring.advance(&r, start, &mut v);
        assert!(v.is_empty());
    }
}
