//! The event model, with Elastic Common Schema field names.
//!
//! Events serialize as nested JSON objects (`{"process":{"pid":1}}`), the canonical ECS
//! form. Every event carries `host.id`, the producing plugin, that plugin's run id and a
//! sequence number (`event.sequence`), so a gap downstream is visible as loss.
//! Fields we add beyond ECS live under `hids.*`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

mod quick_ids;

/// One event, as written to every sink: a single JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "@timestamp")]
    pub timestamp: Timestamp,
    pub event: EventMeta,
    pub host: Host,
    /// ECS `labels`: the host's labels from the agent's config (`idc`, `project`,
    /// `product`, `env`, ...), on every event so the server can group alerts by them
    /// without asking anyone. Absent when the host has none.
    #[serde(default, skip_serializing_if = "no_labels")]
    pub labels: Labels,
    /// ECS `network.*`: transport, IP version and direction of a connection or listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// ECS `source.*`. For network events, this host's end of the socket (what `ss`
    /// prints as Local); `network.direction` says which side initiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    /// ECS `destination.*`: the socket's peer (unspecified for a listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// ECS `package.*`: for the inventory plugin's package lines and changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<crate::package::EcsPackage>,
    pub hids: Hids,
}

/// `event.*`: what happened. `kind`, `category`, `type` take ECS's allowed values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventMeta {
    /// `event` for things that happened, `metric` for periodic stats.
    pub kind: String,
    pub category: Vec<String>,
    #[serde(rename = "type")]
    pub type_: Vec<String>,
    /// Our precise name for it: `exec`, `exit`, `setuid`, `stats`, ...
    pub action: String,
    /// Position in the producing plugin run's stream, from 1, without gaps at the source.
    pub sequence: u64,
    /// ECS `event.module`: always `hids`.
    pub module: String,
    /// ECS `event.dataset`: `hids.<plugin>`.
    pub dataset: String,
}

/// `host.*`: which machine. `id` is the fleet-wide identity (machine-id by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub id: Arc<str>,
    pub hostname: Arc<str>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Unique across pid reuse on this host: `<pid>-<start time in clock ticks>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// True when the process has a controlling terminal: someone typed this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Tty>,
    /// The session leader (normally the login shell); `pid` is the session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_leader: Option<ProcessRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ProcessRef>,
}

/// A related process (parent, session leader), as much as is known of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tty {
    pub char_device: CharDevice,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CharDevice {
    pub major: u32,
    pub minor: u32,
}

/// `user.*`: the real user; `effective` when it differs matters for privilege changes;
/// `audit` is the login user (audit loginuid), which survives `su` and `sudo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<UserRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<UserRef>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserRef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `network.*`, with ECS's allowed values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    /// `tcp` or `udp`.
    pub transport: String,
    /// `ipv4` or `ipv6`.
    #[serde(rename = "type")]
    pub type_: String,
    /// From the host's point of view: `ingress` (a peer connected to us), `egress` (we
    /// connected out); absent for listeners and when it cannot be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
}

/// `source.*` / `destination.*`: one end of a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: std::net::IpAddr,
    pub port: u16,
}

/// `hids.socket`: what the kernel says of a socket beyond ECS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Socket {
    /// TCP state as `ss` names it in lower case (`established`, `listen`, `time_wait`,
    /// ...); UDP sockets are `unconnected` or `established`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The socket's inode (`socket:[N]` in `/proc/<pid>/fd`); absent for live events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// The file descriptor `process.pid` holds it under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// The network namespace's inode: tells a container's sockets apart from the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// Every process holding it, when more than one does (forked workers sharing a
    /// listener); `process.pid` is the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners: Option<Vec<SocketOwner>>,
    /// Holders beyond the bound on `owners`, counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners_omitted: Option<u64>,
    /// For `connect`/`accept`: how many more connections of the same process, direction
    /// and peer the kernel folded into this event since that key was last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded: Option<u64>,
}

/// A process holding a socket, and under which descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOwner {
    pub pid: u32,
    pub fd: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
}

/// Our own fields, beyond ECS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hids {
    /// The plugin that produced the event.
    pub plugin: Arc<str>,
    /// Random per start of that plugin: with `event.sequence` it names every event uniquely.
    pub run_id: Arc<str>,
    /// Set when some fields could not be read; says why (`exited`, `superseded`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
    /// Set on the `exec` of a process that was already running when capture began: read
    /// from `/proc` at the plugin's start, not seen as it happened (`event.kind: state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
    /// How the event was captured (`cn_proc`, `ebpf`): the fidelity an analyst can expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Terminal name (`pts/3`), for replaying an interactive session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<String>,
    /// The process's pid namespace inode: tells container processes apart on one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    /// Set when the argument list was cut at the configured bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_truncated: Option<bool>,
    /// The operator's command this event answers (`hidsctl snapshot`'s id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// For the network plugin's events: the socket's state, inode and holders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<Socket>,
    /// For `exit`: the signal that ended the process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// For `event.kind = metric`: the producer's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
    /// For package lines: the source package it was built from (what security feeds
    /// name), when the package's database says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_source: Option<crate::package::PackageSource>,
    /// For `package_upgraded`: the version that was installed before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// For `inventory` events: one part of the host's whole package list, or its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<crate::package::InventoryPart>,
    /// For the agent's guard events: the guard's state and the numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardStatus>,
    /// For the pipeline's `dropped` events: exactly which events were lost, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Vec<DroppedRange>>,
    /// For the pipeline's `run_end` events: runs that ended, with the last sequence
    /// number the master took from each, so loss at the tail of a run is visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Vec<RunEnd>>,
}

/// A run of consecutive events of one plugin run that the agent declares lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedRange {
    pub plugin: String,
    pub run_id: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub reason: String,
}

/// A run of one stream that is over, and the last sequence number it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnd {
    pub plugin: String,
    pub run_id: String,
    pub last_seq: u64,
    /// `stopped` (the agent stopped), `superseded` (the plugin started a new run).
    pub how: String,
}

/// The master's own streams: only they may declare loss or the end of a run, and no
/// plugin may take their names.
pub const MASTER_STREAMS: [&str; 2] = ["agent", "pipeline"];

/// What names an event and what it declares, read without the rest of it: the master
/// checks these on every plugin event, and reconciliation reads them from every message.
/// Strings are borrowed from the event's bytes when they hold no escapes.
#[derive(Debug, Deserialize)]
pub struct EventIds<'a> {
    #[serde(borrow, default)]
    pub host: Option<HostIds<'a>>,
    #[serde(borrow)]
    pub event: EventIdsMeta<'a>,
    #[serde(borrow)]
    pub hids: HidsIds<'a>,
}

#[derive(Debug, Deserialize)]
pub struct HostIds<'a> {
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct EventIdsMeta<'a> {
    pub sequence: u64,
    #[serde(borrow, default)]
    pub action: std::borrow::Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct HidsIds<'a> {
    #[serde(borrow)]
    pub plugin: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub run_id: std::borrow::Cow<'a, str>,
    #[serde(default)]
    pub dropped: Option<Vec<DroppedRange>>,
    #[serde(default)]
    pub ended: Option<Vec<RunEnd>>,
    #[serde(default)]
    pub stats: Option<EmittedStats>,
}

/// From a stats record: how many events the run says it emitted.
#[derive(Debug, Deserialize)]
pub struct EmittedStats {
    #[serde(default)]
    pub events_emitted: Option<u64>,
}

impl<'a> EventIds<'a> {
    /// # Errors
    /// When `bytes` is not an event object with `event.sequence`, `hids.plugin` and
    /// `hids.run_id`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        use std::borrow::Cow::Borrowed;
        // The plain case (every event a plugin writes) in one pass; the rest, and every
        // refusal with its reason, from serde_json.
        let Some(quick) = quick_ids::scan(bytes) else {
            return serde_json::from_slice(bytes);
        };
        Ok(EventIds {
            host: quick.host_id.map(|id| HostIds { id: Borrowed(id) }),
            event: EventIdsMeta {
                sequence: quick.sequence,
                action: Borrowed(quick.action),
            },
            hids: HidsIds {
                plugin: Borrowed(quick.plugin),
                run_id: Borrowed(quick.run_id),
                dropped: None,
                ended: None,
                stats: None,
            },
        })
    }

    /// Whether the event declares something only the master may declare.
    pub fn declares(&self) -> bool {
        self.hids.dropped.is_some() || self.hids.ended.is_some()
    }
}

/// A host's labels, shared by every event of a stream.
pub type Labels = Arc<BTreeMap<String, String>>;

fn no_labels(labels: &Labels) -> bool {
    labels.is_empty()
}

/// Who writes a stream of events: the host, the stream's name (`hids.plugin`, also in
/// `event.dataset`) and its run. Every producer, the agent's own streams and every
/// plugin, builds its events' envelope here, so the fields that name an event are
/// written one way.
#[derive(Debug, Clone)]
pub struct Producer {
    pub host: Host,
    pub labels: Labels,
    pub plugin: Arc<str>,
    pub run_id: Arc<str>,
}

impl Producer {
    /// An event of this stream: `@timestamp`, `event.*` (ECS `kind`, `category`, `type`,
    /// our `action`, and `sequence`, the event's position in the run from 1), `host` and
    /// `hids.plugin`/`hids.run_id`; nothing else, the caller adds the details.
    pub fn event(
        &self,
        timestamp: Timestamp,
        sequence: u64,
        kind: &str,
        category: &str,
        type_: &str,
        action: &str,
    ) -> Event {
        Event {
            timestamp,
            event: EventMeta {
                sequence,
                ..EventMeta::new(kind, category, type_, action, &self.plugin)
            },
            host: self.host.clone(),
            labels: self.labels.clone(),
            network: None,
            source: None,
            destination: None,
            process: None,
            user: None,
            group: None,
            container: None,
            package: None,
            hids: Hids::new(self.plugin.clone(), self.run_id.clone()),
        }
    }
}

impl Hids {
    pub fn new(plugin: Arc<str>, run_id: Arc<str>) -> Self {
        Hids {
            plugin,
            run_id,
            incomplete: None,
            snapshot: None,
            capture: None,
            tty: None,
            pid_ns: None,
            args_truncated: None,
            command_id: None,
            socket: None,
            package_source: None,
            previous_version: None,
            inventory: None,
            exit_signal: None,
            stats: None,
            guard: None,
            dropped: None,
            ended: None,
        }
    }
}

impl EventMeta {
    /// An ECS `event` section; the sequence is filled in when the event is emitted.
    pub fn new(kind: &str, category: &str, type_: &str, action: &str, plugin: &str) -> Self {
        EventMeta {
            kind: kind.to_owned(),
            category: vec![category.to_owned()],
            type_: vec![type_.to_owned()],
            action: action.to_owned(),
            sequence: 0,
            module: "hids".to_owned(),
            // Built by hand: `format!` costs more than the rest of the event's envelope.
            dataset: ["hids.", plugin].concat(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_without_the_rest_and_declarations_are_seen() {
        let plain = br#"{"@timestamp":"x","event":{"kind":"event","sequence":7,"action":"exec"},"host":{"id":"h\u0031"},"process":{"args":["a"]},"hids":{"plugin":"process","run_id":"r1"}}"#;
        let ids = EventIds::parse(plain).unwrap();
        assert_eq!(ids.event.sequence, 7);
        assert_eq!(ids.host.unwrap().id, "h1");
        assert_eq!((&*ids.hids.plugin, &*ids.hids.run_id), ("process", "r1"));
        let forged = br#"{"event":{"sequence":1},"hids":{"plugin":"x","run_id":"r","dropped":[]}}"#;
        assert!(EventIds::parse(forged).unwrap().declares());
        assert!(EventIds::parse(b"{\"event\":{}}").is_err());
        assert!(EventIds::parse(b"not json").is_err());
    }

    #[test]
    fn producer_writes_the_envelope_and_nothing_else() {
        let producer = Producer {
            host: Host {
                id: "h1".into(),
                hostname: "web-1".into(),
            },
            labels: Default::default(),
            plugin: "agent".into(),
            run_id: "r1".into(),
        };
        let ev = producer.event(
            Timestamp::from_unix_nanos(0),
            7,
            "metric",
            "host",
            "info",
            "stats",
        );
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"@timestamp":"1970-01-01T00:00:00.000000Z","event":{"kind":"metric","category":["host"],"type":["info"],"action":"stats","sequence":7,"module":"hids","dataset":"hids.agent"},"host":{"id":"h1","hostname":"web-1"},"hids":{"plugin":"agent","run_id":"r1"}}"#
        );
    }

    #[test]
    fn exec_event_uses_ecs_field_names() {
        let event = Event {
            timestamp: Timestamp::from_unix_nanos(0),
            event: EventMeta::new("event", "process", "start", "exec", "process"),
            host: Host {
                id: "h1".into(),
                hostname: "web-1".into(),
            },
            labels: Arc::new(BTreeMap::from([("idc".into(), "bj1".into())])),
            network: None,
            source: None,
            destination: None,
            process: Some(Process {
                pid: 42,
                args: Some(vec!["/bin/true".into(), "x".into()]),
                parent: Some(ProcessRef {
                    pid: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            user: Some(User {
                id: "0".into(),
                name: Some("root".into()),
                ..Default::default()
            }),
            group: None,
            container: None,
            package: None,
            hids: Hids::new("process".into(), "r1".into()),
        };
        let v: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(v["event"]["category"][0], "process");
        assert_eq!(v["event"]["type"][0], "start");
        assert_eq!(v["process"]["pid"], 42);
        assert_eq!(v["process"]["args"][1], "x");
        assert_eq!(v["process"]["parent"]["pid"], 1);
        assert_eq!(v["user"]["name"], "root");
        assert_eq!(v["host"]["id"], "h1");
        assert_eq!(v["@timestamp"], "1970-01-01T00:00:00.000000Z");
        assert!(
            v["process"].get("executable").is_none(),
            "absent fields are omitted"
        );
    }
}
