//! The agent's status document: what `<state_dir>/status.json` holds and, with a control
//! plane, what the agent publishes under its presence key. One shape for both, so an
//! operator reads the same fields wherever they look.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub host_id: String,
    pub hostname: String,
    pub pid: u32,
    /// `standalone` without a control plane.
    pub mode: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The host's addresses (not loopback), for operators looking a host up.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Generation of the last desired state applied (0: none yet).
    #[serde(default)]
    pub applied_generation: u64,
    /// Why the last desired state received was refused, if it was; `None` once one is
    /// applied.
    #[serde(default)]
    pub desired_error: Option<String>,
    /// etcd revision of the last desired value processed (applied or refused), so a
    /// pusher can tell whether the agent has seen its write.
    #[serde(default)]
    pub desired_revision: i64,
    /// True while a `stop_all` command holds every plugin stopped.
    #[serde(default)]
    pub stopped_by_command: bool,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub plugins: Vec<PluginStatus>,
    pub pipeline: PipelineStatus,
    /// The resource guard; absent from agents that predate it.
    #[serde(default)]
    pub guard: Option<crate::guard::GuardStatus>,
}

/// Life cycle of one supervised plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Spawned, handshake not finished yet.
    Starting,
    Running,
    /// Exited unexpectedly; waiting out the restart delay.
    Backoff,
    /// Crashed too often in a row; not restarted until an operator asks.
    Quarantined,
    /// Stopped on purpose (shutdown, or the resource guard).
    Stopped,
    /// Declared but not enabled.
    Disabled,
}

impl PluginState {
    pub fn as_str(&self) -> &'static str {
        match self {
            PluginState::Starting => "starting",
            PluginState::Running => "running",
            PluginState::Backoff => "backoff",
            PluginState::Quarantined => "quarantined",
            PluginState::Stopped => "stopped",
            PluginState::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    pub name: String,
    pub path: String,
    pub state: PluginState,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Run id of the current (or last) start; events carry it as `hids.run_id`.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Starts after the first one.
    pub restarts: u64,
    /// Crashes since the last stable run; reaching the limit quarantines.
    pub consecutive_crashes: u32,
    /// `Some(false)` for a plugin that speaks no frames: supervised for liveness only.
    #[serde(default)]
    pub framed: Option<bool>,
    #[serde(default)]
    pub version: Option<String>,
    /// How the last run ended (`exit status 1`, `signal 9`), if it has.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Events received from this plugin (all runs).
    pub events: u64,
    /// Frames refused as malformed, plus bytes of unframed output discarded.
    pub frames_rejected: u64,
    pub bytes_discarded: u64,
    /// The plugin's own counters, from its last health frame.
    #[serde(default)]
    pub health: Option<serde_json::Value>,
    /// Times its cgroup's memory limit killed it.
    #[serde(default)]
    pub oom_kills: u64,
}

impl PluginStatus {
    /// A plugin that has not run yet: no pid, no counters.
    pub fn new(name: &str, path: &str, state: PluginState) -> Self {
        PluginStatus {
            name: name.to_owned(),
            path: path.to_owned(),
            state,
            pid: None,
            run_id: None,
            restarts: 0,
            consecutive_crashes: 0,
            framed: None,
            version: None,
            last_exit: None,
            events: 0,
            frames_rejected: 0,
            bytes_discarded: 0,
            health: None,
            oom_kills: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineStatus {
    /// Events written to the local sinks (stdout, files).
    pub events_out: u64,
    /// Events dropped in the master, by reason; each drop is also declared on the data
    /// path (a `dropped` event naming the exact sequence numbers).
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
    /// Events Kafka acknowledged.
    #[serde(default)]
    pub kafka_delivered: u64,
    /// Events written to the spool, and those of them delivered from it since.
    #[serde(default)]
    pub spooled: u64,
    #[serde(default)]
    pub replayed: u64,
    /// What waits in the spool now.
    #[serde(default)]
    pub spool_bytes: u64,
    #[serde(default)]
    pub spool_records: u64,
    /// True while Kafka is behind and events go to the spool.
    #[serde(default)]
    pub backlog: bool,
}
