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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hids_types::guard::{GuardConfig, GuardState, GuardStatus, ProcessUsage};
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
        GuardStatus {
            state: self.state,
            trips: self.trips,
            cooldown_secs: self.cooldown.as_secs(),
            reason: self.reason.clone(),
            since: self.since,
            cpu_percent: round1(usage.cpu_percent),
            cpu_percent_host: round1(usage.cpu_percent / usage.cpus.max(1) as f64),
            rss_mb: round1(usage.rss_mb),
            processes: usage.processes.clone(),
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The last sample: the agent's processes and their total.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub cpu_percent: f64,
    pub rss_mb: f64,
    pub cpus: usize,
    pub processes: Vec<ProcessUsage>,
}

/// CPU and memory of a set of processes, each with its descendants, from `/proc`.
pub struct Sampler {
    prev: HashMap<u32, (u64, Instant)>,
    page_bytes: u64,
    cpus: usize,
}

/// Descendants followed per process, at most: a plugin that forks a thousand workers
/// is sampled by its first ones, not by a scan that itself costs the host.
const MAX_DESCENDANTS: usize = 64;

impl Sampler {
    pub fn new() -> Self {
        Sampler {
            prev: HashMap::new(),
            page_bytes: rustix::param::page_size() as u64,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub fn sample(&mut self, procs: &[(String, u32)]) -> Usage {
        let now = Instant::now();
        let mut usage = Usage {
            cpus: self.cpus,
            ..Usage::default()
        };
        let mut seen = HashMap::new();
        let sampled: Vec<u32> = procs.iter().map(|(_, p)| *p).collect();
        for (name, pid) in procs {
            let (ticks, rss_pages) = tree_usage(*pid, &sampled);
            let cpu = match self.prev.get(pid) {
                Some(&(before, at)) if ticks >= before => {
                    let secs = now.duration_since(at).as_secs_f64().max(0.001);
                    (ticks - before) as f64 / hids_procfs::TICKS_PER_SEC as f64 / secs * 100.0
                }
                _ => 0.0,
            };
            seen.insert(*pid, (ticks, now));
            let rss_mb = (rss_pages * self.page_bytes) as f64 / (1024.0 * 1024.0);
            usage.cpu_percent += cpu;
            usage.rss_mb += rss_mb;
            usage.processes.push(ProcessUsage {
                name: name.clone(),
                pid: *pid,
                cpu_percent: round1(cpu),
                rss_mb: round1(rss_mb),
            });
        }
        self.prev = seen;
        usage
    }
}

/// CPU ticks (including waited-for children) and resident pages of `pid` and its
/// descendants, leaving out the subtrees of `sampled` processes (the master's children
/// are the plugins, each counted on its own).
fn tree_usage(pid: u32, sampled: &[u32]) -> (u64, u64) {
    let mut ticks = 0;
    let mut pages = 0;
    let mut queue = vec![pid];
    let mut visited = 0;
    while let Some(p) = queue.pop() {
        visited += 1;
        if let Ok(b) = std::fs::read(format!("/proc/{p}/stat")) {
            if let Ok(s) = hids_procfs::parse_stat(&b) {
                ticks += s.utime_ticks + s.stime_ticks + s.cutime_ticks + s.cstime_ticks;
                pages += s.rss_pages;
            }
        }
        if visited > MAX_DESCENDANTS {
            continue;
        }
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            queue.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok())
                    .filter(|c| !sampled.contains(c)),
            );
        }
    }
    (ticks, pages)
}

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

    #[test]
    fn sampler_sees_a_busy_child() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let mut s = Sampler::new();
        let procs = vec![("burn".to_owned(), child.id())];
        s.sample(&procs);
        std::thread::sleep(Duration::from_millis(1000));
        let u = s.sample(&procs);
        child.kill().unwrap();
        child.wait().unwrap();
        // A busy loop alone takes a whole core; on a 2-core machine running the rest of
        // the suite beside it (load 10 seen) it still gets a fifth. Idle would be ~0.
        assert!(u.cpu_percent > 5.0, "{u:?}");
        assert!(u.rss_mb > 0.0);
    }
}
