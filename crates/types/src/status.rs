//! The agent's status document: what `<state_dir>/status.json` holds and, with a control
//! plane, what the agent publishes under its presence key. One shape for both, so an
//! operator reads the same fields wherever they look.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

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
    /// What [`AgentStatus::fit`] left out to keep the document within its size limit;
    /// absent when nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<StatusCut>,
    /// The agent's own self-update, when the desired state names a build for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<crate::update::UpdateStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<crate::update::Rollback>,
}

/// Life cycle of one supervised plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Health frames over [`HEALTH_MAX_BYTES`], kept only as a marker (see [`cap_health`]).
    #[serde(default)]
    pub health_cut: u64,
    /// The self-update the desired state asks for, when it names a build (docs/updates.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<crate::update::UpdateStatus>,
    /// Why the build the desired state names is not running (bad entry, download or
    /// hash refused, expired entry, marked bad): the running version keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_error: Option<String>,
    /// The last automatic rollback of this plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<crate::update::Rollback>,
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
            health_cut: 0,
            update: None,
            update_error: None,
            rolled_back: None,
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
    /// The most the spool holds (0: no spool): with `spool_bytes`, how near it is to
    /// dropping.
    #[serde(default)]
    pub spool_max_bytes: u64,
    /// True while Kafka is behind and events go to the spool.
    #[serde(default)]
    pub backlog: bool,
}

/// A plugin's health, serialized, at most. A plugin may send health frames up to the
/// frame limit (1 MiB): copied whole into the status key, two of them pass etcd's
/// 1.5 MiB request limit, every status write is refused and the agent registers again
/// and again. What plugins send today is well under 1 KB.
pub const HEALTH_MAX_BYTES: usize = 4096;

/// A whole status document, serialized, at most. `hidsctl` reads `agents/` in pages of
/// 2,000 values under gRPC's 4 MiB message limit, so it counts on statuses of ~2 KB; one
/// of 16 KB among them costs nothing, a fleet of them would not fit.
pub const STATUS_MAX_BYTES: usize = 16 * 1024;

/// What [`AgentStatus::fit`] cut from a status document too large to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCut {
    /// Size of the document before anything was cut.
    pub original_bytes: u64,
    /// Plugins whose health was replaced by a marker.
    #[serde(default)]
    pub health: u64,
    /// Per-process guard figures left out.
    #[serde(default)]
    pub guard_processes: u64,
    /// Plugins left out of the list (the last ones).
    #[serde(default)]
    pub plugins: u64,
    /// Addresses and labels left out.
    #[serde(default)]
    pub ips: u64,
    #[serde(default)]
    pub labels: u64,
}

/// `health` as it may go into a status: unchanged when it serializes to at most
/// [`HEALTH_MAX_BYTES`], otherwise a small marker saying it was cut and how big it was
/// (`{"cut": true, "bytes": N, "limit_bytes": 4096}`). The second value says whether it
/// was cut.
pub fn cap_health(health: serde_json::Value) -> (serde_json::Value, bool) {
    let bytes = serde_json::to_vec(&health).map_or(usize::MAX, |v| v.len());
    if bytes <= HEALTH_MAX_BYTES {
        return (health, false);
    }
    (cut_marker(bytes), true)
}

fn cut_marker(bytes: usize) -> serde_json::Value {
    serde_json::json!({"cut": true, "bytes": bytes, "limit_bytes": HEALTH_MAX_BYTES})
}

fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// The fields of a status that the control plane must see at once when they change.
/// Everything else (times, counters, plugin health, the guard's CPU and memory figures)
/// changes by itself on almost every sample: it reaches etcd with the periodic refresh
/// and the data path with the stats events, never as a write of its own. With the
/// guard's figures in here an idle agent wrote its status key 10 times in 50 s, and 38
/// times with a 1 s guard interval (measured with the key's version).
#[derive(Hash)]
struct Significant<'a> {
    version: &'a str,
    host_id: &'a str,
    hostname: &'a str,
    pid: u32,
    mode: &'a str,
    labels: &'a BTreeMap<String, String>,
    ips: &'a [String],
    applied_generation: u64,
    desired_error: Option<&'a str>,
    /// A pusher waits for it: the agent has seen its write.
    desired_revision: i64,
    stopped_by_command: bool,
    started_at: crate::Timestamp,
    plugins: Vec<SignificantPlugin<'a>>,
    guard: Option<SignificantGuard<'a>>,
    update: Option<&'a crate::update::UpdateStatus>,
    update_error: Option<&'a str>,
    rolled_back: Option<&'a crate::update::Rollback>,
}

#[derive(Hash)]
struct SignificantPlugin<'a> {
    name: &'a str,
    path: &'a str,
    state: PluginState,
    pid: Option<u32>,
    run_id: Option<&'a str>,
    restarts: u64,
    consecutive_crashes: u32,
    framed: Option<bool>,
    version: Option<&'a str>,
    last_exit: Option<&'a str>,
    oom_kills: u64,
    update: Option<&'a crate::update::UpdateStatus>,
    update_error: Option<&'a str>,
    rolled_back: Option<&'a crate::update::Rollback>,
}

/// The guard's state machine, not its measurements.
#[derive(Hash)]
struct SignificantGuard<'a> {
    state: crate::guard::GuardState,
    trips: u64,
    cooldown_secs: u64,
    reason: Option<&'a str>,
    since: Option<crate::Timestamp>,
}

impl AgentStatus {
    fn significant(&self) -> Significant<'_> {
        Significant {
            version: &self.version,
            host_id: &self.host_id,
            hostname: &self.hostname,
            pid: self.pid,
            mode: &self.mode,
            labels: &self.labels,
            ips: &self.ips,
            applied_generation: self.applied_generation,
            desired_error: self.desired_error.as_deref(),
            desired_revision: self.desired_revision,
            stopped_by_command: self.stopped_by_command,
            started_at: self.started_at,
            plugins: self
                .plugins
                .iter()
                .map(|p| SignificantPlugin {
                    name: &p.name,
                    path: &p.path,
                    state: p.state,
                    pid: p.pid,
                    run_id: p.run_id.as_deref(),
                    restarts: p.restarts,
                    consecutive_crashes: p.consecutive_crashes,
                    framed: p.framed,
                    version: p.version.as_deref(),
                    last_exit: p.last_exit.as_deref(),
                    oom_kills: p.oom_kills,
                    update: p.update.as_ref(),
                    update_error: p.update_error.as_deref(),
                    rolled_back: p.rolled_back.as_ref(),
                })
                .collect(),
            guard: self.guard.as_ref().map(|g| SignificantGuard {
                state: g.state,
                trips: g.trips,
                cooldown_secs: g.cooldown_secs,
                reason: g.reason.as_deref(),
                since: g.since,
            }),
            update: self.update.as_ref(),
            update_error: self.update_error.as_deref(),
            rolled_back: self.rolled_back.as_ref(),
        }
    }

    /// A fingerprint of what must reach the control plane at once when it changes:
    /// two statuses with the same fingerprint differ only in counters, health and
    /// resource figures. A `u64` rather than a copy of the document, so a process
    /// speaking for 100,000 agents (the simulator) keeps 8 bytes per agent for it.
    pub fn change_fingerprint(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.significant().hash(&mut h);
        h.finish()
    }

    /// Cuts the document until it serializes to at most `max_bytes`, recording what was
    /// cut in `cut`: plugin health first, then the guard's per-process figures, then
    /// plugins from the end of the list, then addresses and labels. A document that fits
    /// is left as it is.
    pub fn fit(&mut self, max_bytes: usize) {
        let original = json_len(self);
        if original <= max_bytes {
            return;
        }
        let mut cut = StatusCut {
            original_bytes: original as u64,
            ..StatusCut::default()
        };
        for p in &mut self.plugins {
            if let Some(h) = p.health.take() {
                p.health = Some(cut_marker(json_len(&h)));
                cut.health += 1;
            }
        }
        if let Some(g) = &mut self.guard {
            cut.guard_processes = g.processes.len() as u64;
            g.processes.clear();
        }
        // Free-text fields a plugin or a refusal can make long.
        let clip = |s: &mut String| {
            if s.len() > 512 {
                let mut end = 512;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
        };
        for e in [&mut self.desired_error, &mut self.update_error]
            .into_iter()
            .flatten()
        {
            clip(e);
        }
        for p in &mut self.plugins {
            for e in [&mut p.last_exit, &mut p.update_error]
                .into_iter()
                .flatten()
            {
                clip(e);
            }
        }
        self.cut = Some(cut.clone());
        while json_len(self) > max_bytes && !self.plugins.is_empty() {
            self.plugins.pop();
            cut.plugins += 1;
            self.cut = Some(cut.clone());
        }
        if json_len(self) > max_bytes {
            cut.ips = self.ips.len() as u64;
            self.ips.clear();
            self.cut = Some(cut.clone());
        }
        if json_len(self) > max_bytes {
            cut.labels = self.labels.len() as u64;
            self.labels.clear();
            self.cut = Some(cut);
        }
    }
}

/// Whether `after` must reach the control plane at once: the one definition of a status
/// change, used by the agent and the fleet simulator alike.
pub fn changed(before: &AgentStatus, after: &AgentStatus) -> bool {
    before.change_fingerprint() != after.change_fingerprint()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{GuardState, GuardStatus, ProcessUsage};
    use crate::Timestamp;

    fn status() -> AgentStatus {
        let mut plugin = PluginStatus::new("process", "/p", PluginState::Running);
        plugin.pid = Some(42);
        AgentStatus {
            version: "1".into(),
            host_id: "h".into(),
            hostname: "h".into(),
            pid: 1,
            mode: "managed".into(),
            labels: BTreeMap::from([("env".into(), "prod".into())]),
            ips: vec!["10.0.0.1".into()],
            applied_generation: 3,
            desired_error: None,
            desired_revision: 7,
            stopped_by_command: false,
            started_at: Timestamp::now(),
            updated_at: Timestamp::now(),
            plugins: vec![plugin],
            pipeline: PipelineStatus::default(),
            guard: Some(GuardStatus {
                state: GuardState::Ok,
                trips: 0,
                cooldown_secs: 60,
                reason: None,
                since: None,
                cpu_percent: 0.3,
                cpu_percent_host: 0.2,
                rss_mb: 9.1,
                processes: vec![ProcessUsage {
                    name: "agent".into(),
                    pid: 1,
                    cpu_percent: 0.3,
                    rss_mb: 9.1,
                }],
            }),
            cut: None,
            update: None,
            update_error: None,
            rolled_back: None,
        }
    }

    #[test]
    fn counters_health_times_and_resource_figures_are_no_change() {
        let a = status();
        let mut b = a.clone();
        b.updated_at = Timestamp(a.updated_at.0 + std::time::Duration::from_secs(9));
        b.pipeline.events_out = 1000;
        b.pipeline.dropped.insert("queue_full".into(), 3);
        b.pipeline.backlog = true;
        b.plugins[0].events = 99;
        b.plugins[0].frames_rejected = 1;
        b.plugins[0].bytes_discarded = 10;
        b.plugins[0].health_cut = 2;
        b.plugins[0].health = Some(serde_json::json!({"execs_seen": 12}));
        let g = b.guard.as_mut().map(|g| {
            g.cpu_percent = 4.9;
            g.cpu_percent_host = 2.4;
            g.rss_mb = 11.0;
            g.processes[0].cpu_percent = 4.9;
        });
        assert!(g.is_some());
        assert!(!changed(&a, &b));
    }

    #[test]
    fn state_generation_errors_labels_and_guard_transitions_are_changes() {
        let a = status();
        type Edit = fn(&mut AgentStatus);
        let edits: Vec<(&str, Edit)> = vec![
            ("plugin state", |s| {
                s.plugins[0].state = PluginState::Backoff
            }),
            ("plugin pid", |s| s.plugins[0].pid = Some(43)),
            ("plugin version", |s| {
                s.plugins[0].version = Some("2".into())
            }),
            ("restarts", |s| s.plugins[0].restarts += 1),
            ("last exit", |s| {
                s.plugins[0].last_exit = Some("signal 9".into())
            }),
            ("plugin added", |s| {
                s.plugins
                    .push(PluginStatus::new("net", "/n", PluginState::Starting))
            }),
            ("applied generation", |s| s.applied_generation += 1),
            ("desired error", |s| {
                s.desired_error = Some("bad signature".into())
            }),
            ("desired revision", |s| s.desired_revision += 1),
            ("stopped", |s| s.stopped_by_command = true),
            ("labels", |s| {
                s.labels.insert("idc".into(), "bj1".into());
            }),
            ("guard state", |s| {
                if let Some(g) = &mut s.guard {
                    g.state = GuardState::Tripped;
                }
            }),
            ("guard trips", |s| {
                if let Some(g) = &mut s.guard {
                    g.trips += 1;
                }
            }),
            ("agent restarted", |s| s.pid = 2),
        ];
        for (what, edit) in edits {
            let mut b = a.clone();
            edit(&mut b);
            assert!(changed(&a, &b), "{what} is a change");
        }
    }

    #[test]
    fn oversized_health_becomes_a_marker() {
        let small = serde_json::json!({"execs_seen": 1});
        assert_eq!(cap_health(small.clone()), (small, false));
        let big = serde_json::json!({"blob": "x".repeat(1 << 20)});
        let (v, cut) = cap_health(big);
        assert!(cut);
        assert_eq!(v["cut"], true);
        assert!(v["bytes"].as_u64().is_some_and(|b| b > 1 << 20));
        assert!(json_len(&v) < 100);
    }

    #[test]
    fn a_status_too_large_is_cut_to_fit_and_says_what_was_cut() {
        let mut s = status();
        let fits = s.clone();
        s.fit(STATUS_MAX_BYTES);
        assert_eq!(s, fits, "a small document is left alone");
        for i in 0..200 {
            let mut p = PluginStatus::new(&format!("p{i}"), "/p", PluginState::Running);
            p.health = Some(serde_json::json!({"x": "y".repeat(3000)}));
            s.plugins.push(p);
        }
        s.desired_error = Some("e".repeat(100_000));
        s.fit(STATUS_MAX_BYTES);
        assert!(json_len(&s) <= STATUS_MAX_BYTES, "{}", json_len(&s));
        let cut = s.cut.clone().unwrap_or_default();
        assert!(cut.original_bytes > 600_000);
        assert_eq!(cut.health, 200);
        assert_eq!(cut.guard_processes, 1);
        assert!(cut.plugins > 0);
        assert_eq!(s.plugins[0].name, "process", "the first plugins are kept");
        assert_eq!(
            s.plugins[1].health.as_ref().map(|h| h["cut"].clone()),
            Some(true.into())
        );
    }
}
