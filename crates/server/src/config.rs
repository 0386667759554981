//! `hids-server`'s configuration file (TOML). Every key is documented here; unknown keys
//! are an error that names them, and the whole file is validated before anything opens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
pub struct ServerConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    pub kafka: KafkaConfig,
    pub store: StoreSection,
    /// Without this section the built-in rule pack is loaded.
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Where new alerts are POSTed as JSON (an IM, SMS or paging gateway).
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// The control plane, for presence (which agents are registered) and their labels
    /// and status. Without it the fleet is known only from its events: no silence or
    /// status alerts, no agents-online figures.
    #[serde(default)]
    pub etcd: Option<EtcdSection>,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub vulns: VulnsConfig,
}

/// Vulnerability feeds the operator downloads (the Debian security tracker's JSON, OSV
/// files, directories or zips), matched against the fleet's inventories.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VulnsConfig {
    /// Feed files or directories. Re-read when one changes (checked every
    /// `reload_secs`); a file that fails to load keeps its last good contents.
    #[serde(default)]
    pub feeds: Vec<PathBuf>,
    #[serde(default = "default_feed_reload_secs")]
    pub reload_secs: u64,
    /// A feed file larger than this is refused (the tracker's is ~70 MB).
    #[serde(default = "default_max_feed_bytes")]
    pub max_feed_bytes: u64,
}

impl Default for VulnsConfig {
    fn default() -> Self {
        VulnsConfig {
            feeds: Vec::new(),
            reload_secs: default_feed_reload_secs(),
            max_feed_bytes: default_max_feed_bytes(),
        }
    }
}

fn default_feed_reload_secs() -> u64 {
    60
}

fn default_max_feed_bytes() -> u64 {
    1 << 30
}

/// How to reach etcd: the same keys as the agent's `[control]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    pub endpoints: Vec<String>,
    /// The control plane's key prefix.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// A file (mode 0600) with a `[control]` table holding `user` and `password`.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// CA certificate (PEM) to verify etcd's certificate: TLS is on when given.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl EtcdSection {
    pub fn settings(&self) -> hids_control::EtcdSettings {
        hids_control::EtcdSettings {
            endpoints: self.endpoints.clone(),
            credentials_file: self.credentials_file.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

/// The fleet's health: program alerts, silence, reconciliation, event volume, the daily
/// resource league.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// A registered agent (its status key in etcd) that sends no event for this long is
    /// an alert (`hids-agent-silent`). Agents send their stats every minute.
    #[serde(default = "default_silence_secs")]
    pub silence_secs: u64,
    /// The topic the agents' own events (`event.category` host: stats, guard) go to;
    /// the instance holding a host's partition of it answers for the host's presence.
    /// Default: the first of `kafka.topics`.
    #[serde(default)]
    pub agent_topic: Option<String>,
    /// A gap in a run's sequence numbers still open after this long is loss: late
    /// events (a spool replaying) fill it before.
    #[serde(default = "default_loss_grace_secs")]
    pub loss_grace_secs: u64,
    /// The agent's Kafka backlog (its status says so) this long is an alert.
    #[serde(default = "default_backlog_secs")]
    pub backlog_secs: u64,
    /// The agent's spool this full (percent of its limit) is an alert.
    #[serde(default = "default_spool_percent")]
    pub spool_percent: f64,
    /// Event volume is counted in buckets of this length (server clock) ...
    #[serde(default = "default_volume_bucket_secs")]
    pub volume_bucket_secs: u64,
    /// ... and each bucket compared with the same bucket of this many previous days ...
    #[serde(default = "default_volume_history_days")]
    pub volume_history_days: u32,
    /// ... once at least this many of them are known (no alert before: a new host or
    /// a restarted server learns first).
    #[serde(default = "default_volume_min_history_days")]
    pub volume_min_history_days: u32,
    /// A bucket this many times above its history's median (or below it by the same
    /// factor), and outside four median deviations, is a flood (a silence).
    #[serde(default = "default_volume_ratio")]
    pub volume_ratio: f64,
    /// ... and only when it differs from the median by at least this many events or
    /// bytes: small hosts do not flap.
    #[serde(default = "default_volume_min_events")]
    pub volume_min_events: u64,
    #[serde(default = "default_volume_min_bytes")]
    pub volume_min_bytes: u64,
    /// Hosts this instance keeps books for; past it new hosts are counted, not kept.
    #[serde(default = "default_max_hosts")]
    pub max_hosts: usize,
    /// Hosts per figure each instance writes to the daily league (the API's limit).
    #[serde(default = "default_top_size")]
    pub top_size: usize,
    /// How often the day's league is rewritten in the store.
    #[serde(default = "default_league_secs")]
    pub league_secs: u64,
    /// Distinct values of each label (`idc`, `version`, ...) in `/metrics`; the rest are
    /// `_other`, so a lying agent cannot blow up the series count.
    #[serde(default = "default_max_label_values")]
    pub max_label_values: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            silence_secs: default_silence_secs(),
            agent_topic: None,
            loss_grace_secs: default_loss_grace_secs(),
            backlog_secs: default_backlog_secs(),
            spool_percent: default_spool_percent(),
            volume_bucket_secs: default_volume_bucket_secs(),
            volume_history_days: default_volume_history_days(),
            volume_min_history_days: default_volume_min_history_days(),
            volume_ratio: default_volume_ratio(),
            volume_min_events: default_volume_min_events(),
            volume_min_bytes: default_volume_min_bytes(),
            max_hosts: default_max_hosts(),
            top_size: default_top_size(),
            league_secs: default_league_secs(),
            max_label_values: default_max_label_values(),
        }
    }
}

impl FleetConfig {
    fn problems(&self, p: &mut Vec<String>) {
        if self.silence_secs == 0 || self.loss_grace_secs == 0 || self.backlog_secs == 0 {
            p.push(
                "fleet: silence_secs, loss_grace_secs and backlog_secs must be at least 1".into(),
            );
        }
        if !(self.spool_percent > 0.0 && self.spool_percent <= 100.0) {
            p.push("fleet.spool_percent: above 0, at most 100".into());
        }
        let slots =
            (86_400 / self.volume_bucket_secs.max(1)) * (u64::from(self.volume_history_days) + 1);
        if slots > 1_024 {
            p.push(format!(
                "fleet: volume_bucket_secs and volume_history_days make {slots} buckets per host \
                 (2 bytes each): at most 1024 (with hourly buckets, 28 days of history at most)"
            ));
        }
        if self.max_label_values > 10_000 {
            p.push("fleet.max_label_values: at most 10000 (each is a series)".into());
        }
        if self.volume_bucket_secs < 60 || 86_400 % self.volume_bucket_secs != 0 {
            p.push("fleet.volume_bucket_secs: at least 60 and a divisor of a day (300, 900, 3600, ...)".into());
        }
        if !(1..=28).contains(&self.volume_history_days)
            || self.volume_min_history_days == 0
            || self.volume_min_history_days > self.volume_history_days
        {
            p.push(
                "fleet.volume_history_days: 1 to 28, and volume_min_history_days between 1 and it"
                    .into(),
            );
        }
        if !(self.volume_ratio > 1.0 && self.volume_ratio.is_finite()) {
            p.push("fleet.volume_ratio: above 1".into());
        }
        if self.max_hosts == 0
            || self.top_size == 0
            || self.max_label_values == 0
            || self.league_secs == 0
        {
            p.push(
                "fleet: max_hosts, top_size, max_label_values and league_secs must be at least 1"
                    .into(),
            );
        }
        if self.top_size > hids_store::MAX_TOP {
            p.push(format!("fleet.top_size: at most {}", hids_store::MAX_TOP));
        }
    }
}

/// The event topics, read as one consumer group: every instance with the same `group`
/// shares the partitions (events are keyed by host id, so a host's events and its
/// frequency state stay on one instance).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The agents' event topics.
    pub topics: Vec<String>,
    /// The consumer group; instances that share it share the work.
    pub group: String,
    /// Where a group with no committed offset starts: `earliest` (default: every event
    /// still in Kafka is checked once) or `latest`.
    #[serde(default = "default_start")]
    pub start: String,
    /// New alerts are also written here (JSON, keyed by host id). None: not written.
    #[serde(default)]
    pub alerts_topic: Option<String>,
    /// Events taken per batch: the batch's alerts are stored, then its offsets committed.
    #[serde(default = "default_batch_events")]
    pub batch_events: usize,
    /// The longest a batch waits to fill, in milliseconds: the floor of alert latency.
    #[serde(default = "default_batch_wait_ms")]
    pub batch_wait_ms: u64,
    /// Events larger than this are counted (`too_large`) and skipped.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Extra librdkafka properties for the consumer and the alerts producer (TLS,
    /// SASL: `"security.protocol" = "ssl"`, ...). The group and commit settings the
    /// server depends on cannot be overridden.
    #[serde(default)]
    pub librdkafka: std::collections::BTreeMap<String, String>,
}

/// Where alerts live: `path` (embedded SQLite, one file, one instance) or `url`
/// (a PostgreSQL shared by several instances). Exactly one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `postgres://user@host:port/db`.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Directories of Sigma YAML rules (and our own, in the same format), read
    /// recursively. A file that does not parse is refused, the rest load.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Load the built-in pack as well (reverse shells, web servers spawning shells,
    /// download-and-run, miners, log tampering, bursts).
    #[serde(default = "default_true")]
    pub builtin: bool,
    /// Frequency rules keep per-host counters; past this many keys the oldest go
    /// (counted in `hids_server_frequency_keys_evicted`).
    #[serde(default = "default_max_frequency_keys")]
    pub max_frequency_keys: usize,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            paths: Vec::new(),
            builtin: true,
            max_frequency_keys: default_max_frequency_keys(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The API, `/metrics` and `/healthz`. Loopback by default: put a proxy with
    /// authentication in front before opening it wider.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// HTTPS: the certificate chain (PEM, the server's first) and its private key;
    /// both or neither. With them, the console's cookies are marked Secure.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The web console on the HTTP address (`/`, `/alerts`, `/hosts/ID`...).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Pages readable without logging in (a wall display on a trusted network);
    /// acknowledging and suppressing still need an operator.
    #[serde(default)]
    pub anonymous_read: bool,
    /// How long a login lasts.
    #[serde(default = "default_session_hours")]
    pub session_hours: u64,
    /// The console's address as operators' browsers see it (`https://hids.corp`), when a
    /// proxy in front rewrites the Host header: changes are accepted from pages of it.
    #[serde(default)]
    pub public_origin: Option<String>,
    /// Memory for the hosts' recent processes and listeners shown on their pages; past
    /// it, the hosts heard from longest ago are forgotten (and counted).
    #[serde(default = "default_recent_megabytes")]
    pub recent_megabytes: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            anonymous_read: false,
            session_hours: default_session_hours(),
            public_origin: None,
            recent_megabytes: default_recent_megabytes(),
        }
    }
}

fn default_session_hours() -> u64 {
    12
}

fn default_recent_megabytes() -> u64 {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// One alert per rule, host and window of this length (event time); more matches
    /// in the window raise its count instead of making copies.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Alerts not counted into for this long, by the server's clock, are deleted
    /// (checked at start and hourly).
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            window_secs: default_window_secs(),
            retention_days: default_retention_days(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the alert JSON is POSTed to.
    pub url: String,
    /// Only alerts at this level or above.
    #[serde(default = "default_min_level")]
    pub min_level: hids_types::alert::Level,
    /// One attempt's limit.
    #[serde(default = "default_webhook_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts per alert before it is given up (counted).
    #[serde(default = "default_webhook_attempts")]
    pub attempts: u32,
    /// Alerts waiting for this webhook; past it new ones are dropped (counted), so a
    /// dead gateway never holds detection back.
    #[serde(default = "default_webhook_queue")]
    pub queue_limit: usize,
}

fn default_etcd_prefix() -> String {
    hids_control::keys::DEFAULT_PREFIX.into()
}
fn default_silence_secs() -> u64 {
    300
}
fn default_loss_grace_secs() -> u64 {
    300
}
fn default_backlog_secs() -> u64 {
    120
}
fn default_spool_percent() -> f64 {
    80.0
}
fn default_volume_bucket_secs() -> u64 {
    3_600
}
fn default_volume_history_days() -> u32 {
    7
}
fn default_volume_min_history_days() -> u32 {
    3
}
fn default_volume_ratio() -> f64 {
    4.0
}
fn default_volume_min_events() -> u64 {
    1_000
}
fn default_volume_min_bytes() -> u64 {
    1_000_000
}
fn default_max_hosts() -> usize {
    2_000_000
}
fn default_top_size() -> usize {
    100
}
fn default_league_secs() -> u64 {
    300
}
fn default_max_label_values() -> usize {
    500
}
fn default_log_level() -> String {
    "info".into()
}
fn default_start() -> String {
    "earliest".into()
}
fn default_batch_events() -> usize {
    2_000
}
fn default_batch_wait_ms() -> u64 {
    100
}
fn default_max_event_bytes() -> usize {
    256 * 1024
}
fn default_true() -> bool {
    true
}
fn default_max_frequency_keys() -> usize {
    1_000_000
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_window_secs() -> u64 {
    3_600
}
fn default_retention_days() -> u64 {
    90
}
fn default_min_level() -> hids_types::alert::Level {
    hids_types::alert::Level::Medium
}
fn default_webhook_timeout_secs() -> u64 {
    5
}
fn default_webhook_attempts() -> u32 {
    8
}
fn default_webhook_queue() -> usize {
    10_000
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: ServerConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem at once, so an operator fixes the file in one go.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let k = &self.kafka;
        if k.brokers.is_empty() || k.brokers.iter().any(|b| b.trim().is_empty()) {
            problems.push("kafka.brokers: list at least one host:port".to_string());
        }
        if k.topics.is_empty() || k.topics.iter().any(|t| t.trim().is_empty()) {
            problems.push("kafka.topics: list the agents' event topics".to_string());
        }
        if k.group.trim().is_empty() {
            problems.push("kafka.group: name the consumer group".to_string());
        }
        if !matches!(k.start.as_str(), "earliest" | "latest") {
            problems.push(format!(
                "kafka.start: {:?}; use earliest or latest",
                k.start
            ));
        }
        if k.batch_events == 0 || k.batch_events > 100_000 {
            problems.push("kafka.batch_events: between 1 and 100000".to_string());
        }
        if k.batch_wait_ms > 10_000 {
            problems.push("kafka.batch_wait_ms: at most 10000".to_string());
        }
        if k.max_event_bytes < 1024 {
            problems.push("kafka.max_event_bytes: at least 1024".to_string());
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            problems.push(
                "http.tls_cert and http.tls_key: give both (HTTPS) or neither (HTTP)".to_string(),
            );
        }
        if !(1..=24 * 30).contains(&self.console.session_hours) {
            problems.push("console.session_hours: between 1 and 720".to_string());
        }
        if let Some(origin) = &self.console.public_origin {
            let scheme_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if scheme_host.is_none_or(|h| h.is_empty() || h.trim_end_matches('/').contains('/')) {
                problems.push(format!(
                    "console.public_origin: {origin:?}; write the scheme and host only, as https://hids.example.com"
                ));
            }
        }
        if self.console.recent_megabytes > 64 * 1024 {
            problems.push("console.recent_megabytes: at most 65536 (0 keeps nothing)".to_string());
        }
        match (&self.store.path, &self.store.url) {
            (Some(_), Some(_)) => problems.push(
                "store.path and store.url are both set: path is the SQLite file of a single \
                 instance, url a PostgreSQL shared by several; keep one"
                    .to_string(),
            ),
            (None, None) => problems
                .push("store: set path (an SQLite file) or url (postgres://...)".to_string()),
            (None, Some(url))
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") =>
            {
                problems.push(format!("store.url: {url:?} is not a postgres:// URL"))
            }
            _ => {}
        }
        if self.alerts.window_secs == 0 || self.alerts.window_secs > 7 * 86_400 {
            problems.push("alerts.window_secs: between 1 and 604800 (a week)".to_string());
        }
        if self.alerts.retention_days == 0 {
            problems.push("alerts.retention_days: at least 1".to_string());
        }
        if self.rules.max_frequency_keys == 0 {
            problems.push("rules.max_frequency_keys: at least 1".to_string());
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if !w.url.starts_with("http://") && !w.url.starts_with("https://") {
                problems.push(format!(
                    "webhooks[{i}].url: {:?} is not an http(s) URL",
                    w.url
                ));
            }
            if w.attempts == 0 || w.timeout_secs == 0 || w.queue_limit == 0 {
                problems.push(format!(
                    "webhooks[{i}]: attempts, timeout_secs and queue_limit must be at least 1"
                ));
            }
        }
        if let Some(etcd) = &self.etcd {
            if etcd.endpoints.is_empty()
                || etcd
                    .endpoints
                    .iter()
                    .any(|e| !e.starts_with("http://") && !e.starts_with("https://"))
            {
                problems.push(
                    "etcd.endpoints: list etcd's client URLs (http://host:2379 or https://...)"
                        .to_string(),
                );
            }
        }
        self.fleet.problems(&mut problems);
        if let Some(t) = &self.fleet.agent_topic {
            if !k.topics.contains(t) {
                problems.push(format!(
                    "fleet.agent_topic: {t:?} is not one of kafka.topics"
                ));
            }
        }
        if self.log_level.parse::<tracing::Level>().is_err() {
            problems.push(format!(
                "log_level: {:?}; use error, warn, info, debug or trace",
                self.log_level
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("\n")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
brokers = ["127.0.0.1:9092"]
topics = ["hids-events"]
group = "hids-server"

[store]
path = "/var/lib/hids/server/alerts.db"

[http]
listen = "127.0.0.1:8080"
"#;

    fn parse(text: &str) -> Result<ServerConfig, String> {
        let c: ServerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn minimal_config_takes_defaults_and_the_builtin_pack() {
        let c = parse(MINIMAL).unwrap();
        assert!(c.rules.builtin && c.rules.paths.is_empty());
        assert_eq!(c.alerts.window_secs, 3600);
        assert_eq!(c.kafka.start, "earliest");
    }

    #[test]
    fn the_packaged_example_parses() {
        let text = include_str!("../../../packaging/server.toml");
        parse(text).unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(&format!("{MINIMAL}\n[rules]\npath = [\"x\"]\n")).unwrap_err();
        assert!(err.contains("path"), "{err}");
    }

    #[test]
    fn both_stores_are_refused_naming_both_keys() {
        let text = MINIMAL.replace(
            "path = \"/var/lib/hids/server/alerts.db\"",
            "path = \"a.db\"\nurl = \"postgres://x@h/db\"",
        );
        let err = parse(&text).unwrap_err();
        assert!(
            err.contains("store.path") && err.contains("store.url"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let text = MINIMAL
            .replace("topics = [\"hids-events\"]", "topics = []")
            .replace("group = \"hids-server\"", "group = \"\"");
        let err = parse(&text).unwrap_err();
        assert!(
            err.contains("kafka.topics") && err.contains("kafka.group"),
            "{err}"
        );
    }

    #[test]
    fn console_and_https_settings_are_checked() {
        let text = format!(
            "{}tls_cert = \"/etc/hids/tls/server.pem\"\n\n\
             [console]\npublic_origin = \"hids.example.com/console\"\nsession_hours = 0\n\
             recent_megabytes = 100000\n",
            MINIMAL
        );
        let err = parse(&text).unwrap_err();
        for key in [
            "http.tls_cert and http.tls_key",
            "console.public_origin",
            "console.session_hours",
            "console.recent_megabytes",
        ] {
            assert!(err.contains(key), "{key} not refused: {err}");
        }
        let good = format!("{MINIMAL}\n[console]\npublic_origin = \"https://hids.example.com\"\n");
        assert!(parse(&good).is_ok());
    }
}
