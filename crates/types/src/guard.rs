//! Resource guard settings and status: the same types in the agent's configuration file
//! and in a desired state from the control plane.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// When the agent stops all its plugins to protect the host's business.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Trip when the agent and its plugins together use more than this share of one core.
    #[serde(default = "default_cpu_percent")]
    pub cpu_percent: f64,
    /// Or more than this much resident memory together (0: no memory limit).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Samples in a row over a limit before tripping.
    #[serde(default = "default_consecutive")]
    pub consecutive: u32,
    /// Time between samples.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    /// How long plugins stay stopped after a trip; doubled by each trip while probing.
    #[serde(default = "default_cooldown_secs")]
    pub cooldown_secs: u64,
    #[serde(default = "default_max_cooldown_secs")]
    pub max_cooldown_secs: u64,
    /// After a cooldown the plugins run again on probation this long; a trip meanwhile
    /// doubles the cooldown.
    #[serde(default = "default_probe_secs")]
    pub probe_secs: u64,
    /// A run this long without a trip brings the cooldown back to `cooldown_secs`.
    #[serde(default = "default_stable_secs")]
    pub stable_secs: u64,
}

fn default_cpu_percent() -> f64 {
    5.0
}
fn default_memory_mb() -> u64 {
    200
}
fn default_consecutive() -> u32 {
    5
}
fn default_interval_secs() -> u64 {
    5
}
fn default_cooldown_secs() -> u64 {
    60
}
fn default_max_cooldown_secs() -> u64 {
    3600
}
fn default_probe_secs() -> u64 {
    120
}
fn default_stable_secs() -> u64 {
    3600
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            cpu_percent: default_cpu_percent(),
            memory_mb: default_memory_mb(),
            consecutive: default_consecutive(),
            interval_secs: default_interval_secs(),
            cooldown_secs: default_cooldown_secs(),
            max_cooldown_secs: default_max_cooldown_secs(),
            probe_secs: default_probe_secs(),
            stable_secs: default_stable_secs(),
        }
    }
}

impl GuardConfig {
    /// Every problem, one per entry, with the key named.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.cpu_percent.is_nan() || self.cpu_percent <= 0.0 {
            p.push(format!("{section}.cpu_percent must be above 0"));
        }
        if self.consecutive == 0 {
            p.push(format!("{section}.consecutive must be at least 1"));
        }
        if self.interval_secs == 0 {
            p.push(format!("{section}.interval_secs must be at least 1"));
        }
        if self.cooldown_secs == 0 {
            p.push(format!("{section}.cooldown_secs must be at least 1"));
        }
        if self.max_cooldown_secs < self.cooldown_secs {
            p.push(format!(
                "{section}.max_cooldown_secs ({}) is below {section}.cooldown_secs ({})",
                self.max_cooldown_secs, self.cooldown_secs
            ));
        }
        p
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardState {
    Ok,
    /// Every plugin stopped until the cooldown ends.
    Tripped,
    /// Plugins running again after a cooldown, on probation.
    Probing,
}

/// Resource use of one process (the master or a plugin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    pub name: String,
    pub pid: u32,
    /// Share of one core over the last sample interval.
    pub cpu_percent: f64,
    pub rss_mb: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardStatus {
    pub state: GuardState,
    pub trips: u64,
    /// The cooldown a trip now would impose.
    pub cooldown_secs: u64,
    /// Why it last tripped: which limit, and the numbers.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// Agent and plugins together: share of one core, share of the whole host, RSS.
    pub cpu_percent: f64,
    pub cpu_percent_host: f64,
    pub rss_mb: f64,
    #[serde(default)]
    pub processes: Vec<ProcessUsage>,
}
