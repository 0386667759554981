//! The agent's configuration file (TOML). Every key is documented here; unknown keys are
//! an error that names them, and the whole file is validated before anything starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Plugins shipped with the agent, found next to its binary as `hids-plugin-<name>`.
pub const BUILTIN_PLUGINS: &[&str] = &["process", "network", "inventory"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This host's identity in the fleet. Default: the content of `/etc/machine-id`.
    #[serde(default)]
    pub host_id: Option<String>,
    /// Where the agent keeps its state (`status.json`, caches).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Free-form labels for targeting (`idc`, `env`, `group`, `product`, ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How often `<state_dir>/status.json` is rewritten.
    #[serde(default = "default_status_interval_secs")]
    pub status_interval_secs: u64,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Where events go; several at once. Default: stdout.
    #[serde(default)]
    pub sinks: Option<Vec<SinkConfig>>,
    /// The disk spool in front of a Kafka sink: events wait here while Kafka is away.
    #[serde(default)]
    pub spool: Option<SpoolConfig>,
    /// The resource guard (circuit breaker); a desired state may replace it.
    #[serde(default)]
    pub guard: hids_types::guard::GuardConfig,
    /// The plugins to run. When present, this list replaces the built-in set.
    #[serde(default)]
    pub plugins: Option<Vec<PluginConfig>>,
    /// The control plane. Without this section the agent runs standalone.
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// Self-update of plugins and of the agent (docs/updates.md).
    #[serde(default)]
    pub update: UpdateConfig,
}

/// How builds named by the desired state are fetched and judged (docs/updates.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Downloads are spread over this many seconds, each host at its `hash(host_id)`
    /// offset, unless the desired state's entry says `spread_secs`.
    #[serde(default = "default_update_spread_secs")]
    pub spread_secs: u64,
    /// Largest download accepted, unless the entry says `max_bytes`.
    #[serde(default = "default_update_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_update_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// A download that receives nothing for this long is abandoned (and resumed later).
    #[serde(default = "default_update_read_timeout_secs")]
    pub read_timeout_secs: u64,
    /// A new build is healthy once it has run this long without exiting.
    #[serde(default = "default_update_healthy_after_secs")]
    pub healthy_after_secs: u64,
    /// A new build not healthy within this is rolled back.
    #[serde(default = "default_update_grace_secs")]
    pub grace_secs: u64,
    /// This many exits in a row, none after a run of `supervisor.stable_after_secs`
    /// (a crash loop), roll a new build back.
    #[serde(default = "default_update_crash_exits")]
    pub crash_exits: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            spread_secs: default_update_spread_secs(),
            max_bytes: default_update_max_bytes(),
            connect_timeout_secs: default_update_connect_timeout_secs(),
            read_timeout_secs: default_update_read_timeout_secs(),
            healthy_after_secs: default_update_healthy_after_secs(),
            grace_secs: default_update_grace_secs(),
            crash_exits: default_update_crash_exits(),
        }
    }
}

fn default_update_spread_secs() -> u64 {
    10
}
/// 256 MiB: ten times our largest build; a 10 GB answer is refused.
fn default_update_max_bytes() -> u64 {
    256 << 20
}
fn default_update_connect_timeout_secs() -> u64 {
    10
}
fn default_update_read_timeout_secs() -> u64 {
    30
}
/// As long as the supervisor's `stable_after_secs`: a build that crashes every 15 s
/// must not pass before its exits are counted.
fn default_update_healthy_after_secs() -> u64 {
    60
}
fn default_update_grace_secs() -> u64 {
    300
}
fn default_update_crash_exits() -> u32 {
    3
}

/// One destination for events.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines on the agent's stdout.
    Stdout,
    /// JSON lines in a file, rotated by size.
    File {
        path: PathBuf,
        /// Rotate when the file would grow past this.
        #[serde(default = "default_file_max_bytes")]
        max_bytes: u64,
        /// Rotated files kept (`events.json.1` ... `.N`).
        #[serde(default = "default_file_keep")]
        keep: u32,
    },
    /// Kafka, keyed by host id so one host's events stay in order (keys: docs/pipeline.md).
    Kafka(hids_sink::kafka::KafkaConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Past this, the oldest segment is dropped (and declared).
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// How often spooled events are forced to disk (fsync). Until then they are in the
    /// kernel's page cache: safe from a crash or `kill -9` of the agent, not from a
    /// power cut, which can lose up to this much of the spool's newest events. A full
    /// segment is forced to disk when it is closed, whatever this says. 0: after every
    /// batch of events (costly on a busy host).
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
}

fn default_file_max_bytes() -> u64 {
    100 << 20
}
fn default_file_keep() -> u32 {
    5
}
fn default_spool_max_bytes() -> u64 {
    256 << 20
}
fn default_segment_bytes() -> u64 {
    4 << 20
}
fn default_fsync_interval_ms() -> u64 {
    1000
}

/// How the agent joins the control plane (etcd).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// etcd client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// Public keys (`signing.pub` from `hidsctl keygen`) whose signatures are accepted.
    pub trusted_keys: Vec<PathBuf>,
    /// Lease TTL: the agent leaves the fleet listing this long after it dies.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
    /// Prefix of every key.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Rewrite the status key this often even without a change (staggered per host).
    #[serde(default = "default_status_refresh_secs")]
    pub status_refresh_secs: u64,
    /// This host's etcd credentials: a file (mode 0600) with a `[control]` table holding
    /// `user` and `password`, as written by `hidsctl enroll`. The way to give an agent
    /// credentials: they are the host's own, and agent.toml can stay world-readable.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// etcd user (with `password`) written into this file: kept for compatibility, use
    /// `credentials_file` instead.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// CA certificate (PEM) to verify etcd's TLS certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's TLS client authentication.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_lease_ttl_secs() -> u64 {
    60
}
fn default_prefix() -> String {
    hids_control::keys::DEFAULT_PREFIX.to_owned()
}
fn default_status_refresh_secs() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name; events carry it as `hids.plugin`.
    pub name: String,
    /// The executable. Optional for built-in plugins, which are found next to the agent.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// CPU quota for this plugin (its cgroup), in percent of one core.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// Memory limit for this plugin (its cgroup); over it the kernel kills the plugin,
    /// and it is restarted with the crash backoff.
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// First restart delay after a plugin exits unexpectedly; doubles on each crash.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest restart delay.
    #[serde(default = "default_backoff_max_secs")]
    pub backoff_max_secs: u64,
    /// Crashes in a row (without a stable run in between) before a plugin is
    /// quarantined: no more restarts until an operator asks.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// A run this long counts as stable and resets the crash count.
    #[serde(default = "default_stable_after_secs")]
    pub stable_after_secs: u64,
    /// How long a plugin gets to stop after being asked (then SIGTERM, then SIGKILL).
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// Largest frame accepted from a plugin.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Events queued between the plugins and the sinks. When full, plugins are slowed
    /// (their own bounded queues then drop and count).
    #[serde(default = "default_queue_events")]
    pub queue_events: usize,
    /// Bytes of events the queue may hold, whatever their number (at least 64 KiB).
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: u32,
}

fn yes() -> bool {
    true
}
/// Where the packages keep the agent's state (docs/packages.md).
pub const STATE_DIR: &str = "/var/lib/hids/agent";
/// The default before the packages: a host installed by hand (or an agent build
/// updated from one, which must find the launcher's slot) keeps using it.
pub const OLD_STATE_DIR: &str = "/var/lib/hids-agent";

fn default_state_dir() -> PathBuf {
    default_state_dir_in(Path::new(STATE_DIR), Path::new(OLD_STATE_DIR))
}

/// `new`, unless `old` holds state and `new` holds none (the packaged unit creates `new`
/// empty at every start): moving a running agent's state, or a `state_dir` a kept
/// configuration names, would lose its status, spool and installed builds.
fn default_state_dir_in(new: &Path, old: &Path) -> PathBuf {
    let has_entries =
        |dir: &Path| std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if !has_entries(new) && has_entries(old) {
        old.to_path_buf()
    } else {
        new.to_path_buf()
    }
}
fn default_log_level() -> String {
    "info".into()
}
fn default_status_interval_secs() -> u64 {
    5
}
fn default_backoff_initial_ms() -> u64 {
    1000
}
fn default_backoff_max_secs() -> u64 {
    60
}
fn default_quarantine_after() -> u32 {
    5
}
fn default_stable_after_secs() -> u64 {
    60
}
fn default_stop_timeout_ms() -> u64 {
    3000
}
fn default_max_frame_bytes() -> u32 {
    hids_wire::DEFAULT_MAX_PAYLOAD
}
fn default_queue_events() -> usize {
    4096
}
/// 16 MiB: 4,096 events of 4 KiB, far above a typical 1 KiB exec event.
fn default_queue_bytes() -> u32 {
    16 << 20
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_secs: default_backoff_max_secs(),
            quarantine_after: default_quarantine_after(),
            stable_after_secs: default_stable_after_secs(),
            stop_timeout_ms: default_stop_timeout_ms(),
            max_frame_bytes: default_max_frame_bytes(),
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_events: default_queue_events(),
            queue_bytes: default_queue_bytes(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host_id: None,
            state_dir: default_state_dir(),
            log_level: default_log_level(),
            labels: BTreeMap::new(),
            status_interval_secs: default_status_interval_secs(),
            supervisor: SupervisorConfig::default(),
            pipeline: PipelineConfig::default(),
            guard: Default::default(),
            sinks: None,
            spool: None,
            plugins: None,
            control: None,
            update: UpdateConfig::default(),
        }
    }
}

/// A plugin ready to start: its path resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    pub name: String,
    pub path: PathBuf,
    pub args: Vec<String>,
    pub enabled: bool,
    pub limits: crate::cgroups::Limits,
    /// The version of a build installed by self-update (reported as the plugin's
    /// version); `None`: the configured build, which reports its own.
    pub version: Option<String>,
}

impl Config {
    /// Reads and parses a config file.
    ///
    /// # Errors
    /// When the file cannot be read, is not valid TOML, has unknown keys or wrong types.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// # Errors
    /// The parser's message, which names the offending key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Checks everything that can be checked before starting, and resolves plugin paths.
    /// `agent_dir` is where built-in plugins live (the agent binary's directory).
    ///
    /// # Errors
    /// Every problem found, one per line.
    pub fn validate(&self, agent_dir: &Path) -> Result<Vec<PluginSpec>, ConfigError> {
        let mut problems = self.settings_problems();
        problems.extend(self.sinks_problems());
        for (k, v) in &self.labels {
            if k.is_empty() || v.contains('\n') {
                problems.push(format!(
                    "labels.{k:?}: names must be non-empty and values one line"
                ));
            }
        }
        let specs = self.plugin_specs(agent_dir, &mut problems);
        if problems.is_empty() {
            Ok(specs)
        } else {
            Err(ConfigError::Invalid(problems.join("\n")))
        }
    }

    /// The agent's own settings: log level, identity, intervals, queue, control plane,
    /// guard.
    fn settings_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            problems.push(format!(
                "log_level = {:?}: use error, warn, info, debug or trace",
                self.log_level
            ));
        }
        if let Some(id) = &self.host_id {
            if let Err(e) = hids_control::keys::check_host_id(id) {
                problems.push(format!("host_id: {e}"));
            }
        }
        if self.status_interval_secs == 0 {
            problems.push("status_interval_secs must be at least 1".into());
        }
        let s = &self.supervisor;
        if s.quarantine_after == 0 {
            problems.push("supervisor.quarantine_after must be at least 1".into());
        }
        if s.backoff_initial_ms == 0 {
            problems.push("supervisor.backoff_initial_ms must be at least 1".into());
        }
        if self.pipeline.queue_events == 0 {
            problems.push("pipeline.queue_events must be at least 1".into());
        }
        if self.pipeline.queue_bytes < 64 << 10 {
            problems.push("pipeline.queue_bytes must be at least 65536 (64 KiB)".into());
        }
        if let Some(c) = &self.control {
            problems.extend(c.problems());
        }
        problems.extend(self.guard.problems("guard"));
        let u = &self.update;
        if u.crash_exits == 0 || u.healthy_after_secs == 0 || u.read_timeout_secs == 0 {
            problems.push(
                "update.crash_exits, update.healthy_after_secs and update.read_timeout_secs must be at least 1"
                    .into(),
            );
        }
        if u.grace_secs <= u.healthy_after_secs {
            problems.push(format!(
                "update.grace_secs ({}) must be longer than update.healthy_after_secs ({}): no new build could pass",
                u.grace_secs, u.healthy_after_secs
            ));
        }
        problems
    }

    /// The sinks and the spool in front of Kafka.
    fn sinks_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let kafkas = self
            .sinks
            .iter()
            .flatten()
            .filter(|s| matches!(s, SinkConfig::Kafka { .. }))
            .count();
        if kafkas > 1 {
            problems.push("sinks: at most one kafka sink (use topics for several topics)".into());
        }
        if self.spool.is_some() && kafkas == 0 {
            problems.push("spool is set but no sink is kind = \"kafka\": the spool only holds events for Kafka".into());
        }
        for sink in self.sinks.iter().flatten() {
            if let SinkConfig::Kafka(k) = sink {
                problems.extend(k.problems());
            }
        }
        problems
    }

    /// The plugins to run (the built-in set unless the file lists its own), each
    /// resolved; the problems of those that cannot be go to `problems`.
    fn plugin_specs(&self, agent_dir: &Path, problems: &mut Vec<String>) -> Vec<PluginSpec> {
        let declared: Vec<PluginConfig> = match &self.plugins {
            Some(list) => list.clone(),
            None => BUILTIN_PLUGINS
                .iter()
                .map(|name| PluginConfig {
                    name: (*name).to_owned(),
                    path: None,
                    args: Vec::new(),
                    enabled: true,
                    cpu_percent: None,
                    memory_mb: None,
                })
                .collect(),
        };
        let mut specs = Vec::new();
        for p in declared {
            if let Some(spec) = p.resolve(agent_dir, &specs, problems) {
                specs.push(spec);
            }
        }
        specs
    }
}

impl PluginConfig {
    /// This plugin ready to start, or `None` when its name is unusable (then nothing
    /// else about it is checked); every problem found goes to `problems`. `taken`: the
    /// plugins resolved before it.
    fn resolve(
        self,
        agent_dir: &Path,
        taken: &[PluginSpec],
        problems: &mut Vec<String>,
    ) -> Option<PluginSpec> {
        if let Some(problem) = hids_types::desired::plugin_name_problem(&self.name) {
            problems.push(problem);
            return None;
        }
        if taken.iter().any(|s| s.name == self.name) {
            problems.push(format!("plugin {:?} is declared twice", self.name));
            return None;
        }
        let path = match &self.path {
            Some(path) => path.clone(),
            None if BUILTIN_PLUGINS.contains(&self.name.as_str()) => {
                agent_dir.join(format!("hids-plugin-{}", self.name))
            }
            None => {
                problems.push(format!(
                    "plugin {:?} has no path and is not built in (built in: {})",
                    self.name,
                    BUILTIN_PLUGINS.join(", ")
                ));
                return None;
            }
        };
        if self.enabled && !is_executable(&path) {
            problems.push(format!(
                "plugin {:?}: {} is not an executable file",
                self.name,
                path.display()
            ));
        }
        if self.cpu_percent.is_some_and(|c| c.is_nan() || c <= 0.0) {
            problems.push(format!(
                "plugin {:?}: cpu_percent must be above 0",
                self.name
            ));
        }
        if self.memory_mb == Some(0) {
            problems.push(format!(
                "plugin {:?}: memory_mb must be at least 1",
                self.name
            ));
        }
        Some(PluginSpec {
            name: self.name,
            path,
            args: self.args,
            enabled: self.enabled,
            limits: crate::cgroups::Limits {
                cpu_percent: self.cpu_percent,
                memory_mb: self.memory_mb,
            },
            version: None,
        })
    }
}

impl ControlConfig {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.endpoints.is_empty() {
            p.push("control.endpoints is empty: give at least one etcd URL".into());
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                p.push(format!(
                    "control.endpoints: {e:?} must start with http:// or https://"
                ));
            }
        }
        if self.trusted_keys.is_empty() {
            p.push(
                "control.trusted_keys is empty: the agent could never accept a desired state \
                 (list the signing.pub files made by `hidsctl keygen`)"
                    .into(),
            );
        }
        if let Err(e) = hids_control::TrustedKeys::load(&self.trusted_keys) {
            p.push(format!("control.trusted_keys: {e}"));
        }
        if self.lease_ttl_secs < 5 {
            p.push("control.lease_ttl_secs must be at least 5".into());
        }
        if self.user.is_some() != self.password.is_some() {
            p.push("control.user and control.password go together".into());
        }
        if let Some(file) = &self.credentials_file {
            if self.user.is_some() || self.password.is_some() {
                p.push(
                    "control.credentials_file and control.user/control.password both give etcd \
                     credentials: keep control.credentials_file and remove the other two"
                        .into(),
                );
            } else if let Err(e) = hids_control::credentials::Credentials::load(file) {
                p.push(format!("control.credentials_file: {e}"));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            p.push("control.cert_file and control.key_file go together".into());
        }
        if self.cert_file.is_some() && self.ca_file.is_none() {
            p.push("control.cert_file needs control.ca_file (TLS)".into());
        }
        for f in [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
        {
            if !f.is_file() {
                p.push(format!("control: {} is not a readable file", f.display()));
            }
        }
        p
    }

    /// How to reach etcd, with the credentials from `credentials_file` when given: these
    /// keys are hidsctl's flags too, and hids-control converts both the same way.
    ///
    /// # Errors
    /// When the credentials file cannot be used (see [`ControlConfig::problems`]).
    pub fn etcd(
        &self,
    ) -> Result<hids_control::EtcdConfig, hids_control::credentials::CredentialsError> {
        hids_control::EtcdSettings {
            endpoints: self.endpoints.clone(),
            credentials_file: self.credentials_file.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
        .config()
    }
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../packaging/agent.toml");

    #[test]
    fn example_config_parses_and_validates() {
        let cfg = Config::parse(EXAMPLE).unwrap();
        assert_eq!(cfg.labels.get("env").map(String::as_str), Some("prod"));
        // The example runs /bin/sh plugins only when uncommented; the built-in set needs
        // the plugin binary, which the test build may not have placed yet.
        assert!(cfg.plugins.is_none());
        // The packages' layout (docs/packages.md): the example is /etc/hids/agent.toml.
        assert_eq!(cfg.state_dir, Path::new(STATE_DIR));
    }

    #[test]
    fn default_state_dir_stays_where_state_was_kept_before_the_packages() {
        let root = tempfile::tempdir().unwrap();
        let (new, old) = (
            root.path().join("hids/agent"),
            root.path().join("hids-agent"),
        );
        // A fresh host: the packages' place.
        assert_eq!(default_state_dir_in(&new, &old), new);
        // A host installed by hand: its state stays in use, also once the unit has
        // created the new directory (empty).
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("status.json"), "{}").unwrap();
        assert_eq!(default_state_dir_in(&new, &old), old);
        std::fs::create_dir_all(&new).unwrap();
        assert_eq!(default_state_dir_in(&new, &old), old);
        // Once the new place holds state, it wins.
        std::fs::write(new.join("status.json"), "{}").unwrap();
        assert_eq!(default_state_dir_in(&new, &old), new);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("state_dir = \"/tmp\"\nfrobnicate = 1\n").unwrap_err();
        assert!(err.contains("frobnicate"), "{err}");
        let err = Config::parse("[supervisor]\nbackof_initial_ms = 1\n").unwrap_err();
        assert!(err.contains("backof_initial_ms"), "{err}");
    }

    #[test]
    fn wrong_types_are_explained() {
        let err = Config::parse("status_interval_secs = \"five\"\n").unwrap_err();
        assert!(err.contains("status_interval_secs"), "{err}");
    }

    #[test]
    fn plugin_list_replaces_builtins_and_is_checked() {
        let cfg = Config::parse(
            "[[plugins]]\nname = \"burn\"\npath = \"/bin/sh\"\nargs = [\"-c\", \"true\"]\n\
             [[plugins]]\nname = \"ghost\"\n\
             [[plugins]]\nname = \"burn\"\npath = \"/bin/sh\"\n\
             [[plugins]]\nname = \"missing\"\npath = \"/nonexistent/x\"\n",
        )
        .unwrap();
        let err = cfg.validate(Path::new("/nowhere")).unwrap_err().to_string();
        assert!(err.contains("\"ghost\" has no path"), "{err}");
        assert!(err.contains("\"burn\" is declared twice"), "{err}");
        assert!(err.contains("/nonexistent/x is not an executable"), "{err}");
        let ok = Config::parse("[[plugins]]\nname = \"burn\"\npath = \"/bin/sh\"\n").unwrap();
        let specs = ok.validate(Path::new("/nowhere")).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].path, Path::new("/bin/sh"));
    }

    #[test]
    fn control_section_is_checked() {
        let cfg = Config::parse(
            "[control]\nendpoints = [\"127.0.0.1:2379\"]\ntrusted_keys = []\nlease_ttl_secs = 1\n",
        )
        .unwrap();
        let err = cfg.validate(Path::new("/nowhere")).unwrap_err().to_string();
        assert!(err.contains("must start with http://"), "{err}");
        assert!(err.contains("trusted_keys is empty"), "{err}");
        assert!(err.contains("lease_ttl_secs"), "{err}");
        let err = Config::parse("[control]\nendpoint = []\n").unwrap_err();
        assert!(err.contains("endpoint"), "{err}");
    }

    #[test]
    fn credentials_file_is_merged_checked_and_exclusive() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials.toml");
        let creds = hids_control::credentials::Credentials {
            user: "hids-host-a".into(),
            password: "pw".into(),
        };
        creds.write(&file, false).unwrap();
        let (_, key) = hids_control::SigningKey::generate()
            .unwrap()
            .save(dir.path())
            .unwrap();
        let section = format!(
            "[control]\nendpoints = [\"http://e:2379\"]\ntrusted_keys = [{key:?}]\n\
             credentials_file = {file:?}\n"
        );
        let cfg = Config::parse(&section).unwrap();
        let control = cfg.control.as_ref().unwrap();
        assert!(control.problems().is_empty(), "{:?}", control.problems());
        let etcd = control.etcd().unwrap();
        assert_eq!(etcd.user, Some(("hids-host-a".into(), "pw".into())));

        let both = Config::parse(&format!("{section}user = \"x\"\npassword = \"y\"\n")).unwrap();
        let p = both.control.unwrap().problems().join("\n");
        assert!(
            p.contains("control.credentials_file") && p.contains("control.user"),
            "{p}"
        );

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = control.problems().join("\n");
        assert!(p.contains(&format!("chmod 600 {}", file.display())), "{p}");
        assert!(control.etcd().is_err());
    }

    #[test]
    fn sinks_and_spool_parse_and_are_checked() {
        let cfg = Config::parse(
            "[[sinks]]\nkind = \"kafka\"\nbrokers = [\"a:1\", \"b:2\"]\ntopic = \"t\"\ncompression = \"zstd\"\n\
             [sinks.librdkafka]\n\"security.protocol\" = \"ssl\"\n\
             [[sinks]]\nkind = \"file\"\npath = \"/tmp/e.json\"\n[[sinks]]\nkind = \"stdout\"\n\
             [spool]\ndir = \"/tmp/s\"\nmax_bytes = 1000000\n",
        )
        .unwrap();
        let sinks = cfg.sinks.as_ref().unwrap();
        match &sinks[0] {
            SinkConfig::Kafka(k) => {
                assert_eq!(k.brokers.joined(), "a:1,b:2");
                assert_eq!(k.properties["security.protocol"], "ssl");
                assert!(!k.idempotence);
            }
            other => panic!("{other:?}"),
        }
        let bad = Config::parse("[[sinks]]\nkind = \"kafka\"\nbrokers = \"a:1\"\ntopic = \"t\"\nacks = \"most\"\n[spool]\ndir = \"/x\"\n").unwrap();
        let err = bad.validate(Path::new("/nowhere")).unwrap_err().to_string();
        assert!(err.contains("acks = \"most\""), "{err}");
        let partitioned = Config::parse("[[sinks]]\nkind = \"kafka\"\nbrokers = \"a:1\"\ntopic = \"t\"\n[sinks.librdkafka]\npartitioner = \"murmur2\"\n").unwrap();
        let err = partitioned
            .validate(Path::new("/nowhere"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("librdkafka.partitioner"), "{err}");
        let orphan = Config::parse("[spool]\ndir = \"/x\"\n").unwrap();
        let err = orphan
            .validate(Path::new("/nowhere"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no sink is kind = \"kafka\""), "{err}");
    }

    #[test]
    fn builtins_resolve_next_to_the_agent() {
        let cfg = Config::default();
        let err = cfg
            .validate(Path::new("/opt/hids/bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/opt/hids/bin/hids-plugin-process"), "{err}");
    }
}
