//! CPU and memory of a set of processes, each with its descendants, sampled from
//! `/proc/<pid>/stat`: what the agent's resource guard measures, and what the fleet
//! simulator reports for its virtual agents (one sampler for all of them).

use std::collections::HashMap;
use std::time::Instant;

use hids_types::guard::ProcessUsage;

/// The last sample: the sampled processes and their total.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Share of one core, all processes together, over the last interval.
    pub cpu_percent: f64,
    pub rss_mb: f64,
    /// Cores of the host.
    pub cpus: usize,
    pub processes: Vec<ProcessUsage>,
}

impl Usage {
    /// The totals as the status reports them, to one decimal: share of one core, share
    /// of the whole host, RSS in MB.
    pub fn figures(&self) -> (f64, f64, f64) {
        (
            round1(self.cpu_percent),
            round1(self.cpu_percent / self.cpus.max(1) as f64),
            round1(self.rss_mb),
        )
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Samples processes; CPU shares are over the time since the previous sample.
pub struct Sampler {
    prev: HashMap<u32, (u64, Instant)>,
    page_bytes: u64,
    cpus: usize,
}

/// Descendants followed per process, at most: a plugin that forks a thousand workers
/// is sampled by its first ones, not by a scan that itself costs the host.
const MAX_DESCENDANTS: usize = 64;

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        Sampler {
            prev: HashMap::new(),
            page_bytes: rustix::param::page_size() as u64,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// One sample of `procs` (name, pid). A process seen for the first time counts 0%
    /// CPU; it has no previous sample to compare with.
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
                    (ticks - before) as f64 / crate::TICKS_PER_SEC as f64 / secs * 100.0
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
            if let Ok(s) = crate::parse_stat(&b) {
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
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

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

    #[test]
    fn figures_are_rounded_and_shared_over_the_cores() {
        let u = Usage {
            cpu_percent: 50.04,
            rss_mb: 12.36,
            cpus: 2,
            processes: Vec::new(),
        };
        assert_eq!(u.figures(), (50.0, 25.0, 12.4));
    }
}
