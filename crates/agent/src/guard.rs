//! The resource guard: samples the CPU and memory of the master and every plugin, and
//! trips (stops every plugin) when they cost the host too much, then comes back by
//! itself.
//!
//! ```text
//!   ok ──(consecutive samples over a limit)──> tripped ──(cooldown)──> probing
//!    ^                                            ^                       │
//!    └──────────(probe_secs without a trip)───────┼───────────────────────┤
//!                                                 └─(over again: cooldown doubled)
//! ```
//!
//! A trip while probing doubles the cooldown, up to `max_cooldown_secs`; `stable_secs`
//! without a trip brings it back to `cooldown_secs`. While tripped, the master stays up,
//! registered and controllable.

use std::time::{Duration, Instant};

use hids_types::guard::{GuardConfig, GuardState, GuardStatus};
use hids_types::Timestamp;

/// What a sample or a tick changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Tripped(String),
    Probing,
    Recovered,
}

pub struct Breaker {
    cfg: GuardConfig,
    state: GuardState,
    over: u32,
    trips: u64,
    cooldown: Duration,
    until: Option<Instant>,
    since: Option<Timestamp>,
    last_trip: Option<Instant>,
    reason: Option<String>,
}

impl Breaker {
    pub fn new(cfg: GuardConfig) -> Self {
        let cooldown = Duration::from_secs(cfg.cooldown_secs);
        Breaker {
            cfg,
            state: GuardState::Ok,
            over: 0,
            trips: 0,
            cooldown,
            until: None,
            since: None,
            last_trip: None,
            reason: None,
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// New settings (from the control plane) take effect from the next sample; the state
    /// is kept, the cooldown brought within the new bounds.
    pub fn set_config(&mut self, cfg: GuardConfig) {
        let base = Duration::from_secs(cfg.cooldown_secs);
        let max = Duration::from_secs(cfg.max_cooldown_secs.max(cfg.cooldown_secs));
        self.cooldown = self.cooldown.clamp(base, max);
        self.cfg = cfg;
    }

    /// Plugins must be held stopped.
    pub fn holding(&self) -> bool {
        self.state == GuardState::Tripped
    }

    /// One sample of the agent's total use: `cpu_percent` of one core, `rss_mb`.
    pub fn sample(&mut self, now: Instant, cpu_percent: f64, rss_mb: f64) -> Option<Transition> {
        if self.state == GuardState::Tripped {
            return None;
        }
        let limit = self.cfg.cpu_percent;
        let over = if cpu_percent > limit {
            Some(format!(
                "cpu {cpu_percent:.1}% of one core is over the {limit}% limit"
            ))
        } else if self.cfg.memory_mb > 0 && rss_mb > self.cfg.memory_mb as f64 {
            Some(format!(
                "memory {rss_mb:.1} MB is over the {} MB limit",
                self.cfg.memory_mb
            ))
        } else {
            None
        };
        let Some(why) = over else {
            self.over = 0;
            return None;
        };
        self.over += 1;
        if self.over < self.cfg.consecutive {
            return None;
        }
        if self.state == GuardState::Probing {
            let max = Duration::from_secs(self.cfg.max_cooldown_secs.max(self.cfg.cooldown_secs));
            self.cooldown = (self.cooldown * 2).min(max);
        }
        let reason = format!("{why} for {} samples in a row", self.over);
        self.state = GuardState::Tripped;
        self.trips += 1;
        self.over = 0;
        self.until = Some(now + self.cooldown);
        self.since = Some(Timestamp::now());
        self.last_trip = Some(now);
        self.reason = Some(reason.clone());
        Some(Transition::Tripped(reason))
    }

    /// Time-driven changes: cooldown over, probation over, long stable run.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            GuardState::Tripped if self.until.is_some_and(|u| now >= u) => {
                self.state = GuardState::Probing;
                self.until = Some(now + Duration::from_secs(self.cfg.probe_secs));
                self.since = Some(Timestamp::now());
                self.over = 0;
                Some(Transition::Probing)
            }
            GuardState::Probing if self.until.is_some_and(|u| now >= u) => {
                self.state = GuardState::Ok;
                self.until = None;
                self.since = Some(Timestamp::now());
                Some(Transition::Recovered)
            }
            GuardState::Ok => {
                let stable = Duration::from_secs(self.cfg.stable_secs);
                if self
                    .last_trip
                    .is_some_and(|t| now.duration_since(t) >= stable)
                {
                    self.cooldown = Duration::from_secs(self.cfg.cooldown_secs);
                    self.last_trip = None;
                }
                None
            }
            _ => None,
        }
    }

    pub fn status(&self, usage: &Usage) -> GuardStatus {
        let (cpu_percent, cpu_percent_host, rss_mb) = usage.figures();
        GuardStatus {
            state: self.state,
            trips: self.trips,
            cooldown_secs: self.cooldown.as_secs(),
            reason: self.reason.clone(),
            since: self.since,
            cpu_percent,
            cpu_percent_host,
            rss_mb,
            processes: usage.processes.clone(),
        }
    }
}

pub use hids_procfs::usage::{Sampler, Usage};

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GuardConfig {
        GuardConfig {
            cpu_percent: 5.0,
            memory_mb: 100,
            consecutive: 3,
            interval_secs: 1,
            cooldown_secs: 6,
            max_cooldown_secs: 20,
            probe_secs: 10,
            stable_secs: 60,
        }
    }

    #[test]
    fn trips_after_consecutive_samples_and_cools_down() {
        let mut b = Breaker::new(cfg());
        let t0 = Instant::now();
        assert_eq!(b.sample(t0, 50.0, 10.0), None);
        assert_eq!(
            b.sample(t0, 1.0, 10.0),
            None,
            "a quiet sample resets the count"
        );
        assert_eq!(b.sample(t0, 50.0, 10.0), None);
        assert_eq!(b.sample(t0, 50.0, 10.0), None);
        assert!(
            matches!(b.sample(t0, 50.0, 10.0), Some(Transition::Tripped(r)) if r.contains("cpu 50.0%"))
        );
        assert!(b.holding());
        assert_eq!(
            b.sample(t0, 50.0, 10.0),
            None,
            "no samples counted while tripped"
        );
        assert_eq!(b.tick(t0 + Duration::from_secs(5)), None);
        assert_eq!(
            b.tick(t0 + Duration::from_secs(6)),
            Some(Transition::Probing)
        );
        assert!(!b.holding());
    }

    #[test]
    fn a_trip_while_probing_doubles_the_cooldown_up_to_the_max() {
        let mut b = Breaker::new(cfg());
        let mut t = Instant::now();
        let trip = |b: &mut Breaker, t: Instant| {
            for _ in 0..3 {
                b.sample(t, 50.0, 1.0);
            }
        };
        trip(&mut b, t);
        assert_eq!(b.status(&Usage::default()).cooldown_secs, 6);
        t += Duration::from_secs(6);
        b.tick(t);
        trip(&mut b, t);
        assert_eq!(b.status(&Usage::default()).cooldown_secs, 12);
        assert_eq!(b.status(&Usage::default()).trips, 2);
        t += Duration::from_secs(12);
        assert_eq!(b.tick(t), Some(Transition::Probing));
        trip(&mut b, t);
        assert_eq!(
            b.status(&Usage::default()).cooldown_secs,
            20,
            "capped at the max"
        );
        // Probation passes quietly: back to ok; a long stable run resets the cooldown.
        t += Duration::from_secs(20);
        b.tick(t);
        t += Duration::from_secs(10);
        assert_eq!(b.tick(t), Some(Transition::Recovered));
        t += Duration::from_secs(61);
        b.tick(t);
        assert_eq!(b.status(&Usage::default()).cooldown_secs, 6);
    }

    #[test]
    fn memory_limit_trips_too() {
        let mut b = Breaker::new(cfg());
        let t = Instant::now();
        b.sample(t, 0.0, 150.0);
        b.sample(t, 0.0, 150.0);
        assert!(
            matches!(b.sample(t, 0.0, 150.0), Some(Transition::Tripped(r)) if r.contains("memory 150.0 MB"))
        );
    }
}
