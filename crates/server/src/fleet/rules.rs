//! The fleet's own alerts: what the agents say about themselves (guard trips, plugins
//! crash-looping, desired states refused, a spool filling, capture degraded, kernel
//! loss), what their absence says (registered and silent, Kafka out of reach), what
//! reconciliation finds (loss, declared or not) and what the volume says. Each has a
//! stable rule id and a level, and goes through the same store, suppressions and outputs
//! as the detection rules' alerts.

use std::collections::BTreeMap;
use std::sync::Arc;

use hids_store::{Hit, Position};
use hids_types::alert::Level;
use hids_types::Timestamp;

/// One kind of fleet alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FleetRule {
    Silent,
    KafkaUnreachable,
    GuardTripped,
    PluginQuarantined,
    PluginCrashLoop,
    DesiredRefused,
    SpoolFilling,
    CaptureDegraded,
    KernelLoss,
    LossUndeclared,
    LossDeclared,
    VolumeFlood,
    VolumeDrop,
}

impl FleetRule {
    pub const ALL: [FleetRule; 13] = [
        FleetRule::Silent,
        FleetRule::KafkaUnreachable,
        FleetRule::GuardTripped,
        FleetRule::PluginQuarantined,
        FleetRule::PluginCrashLoop,
        FleetRule::DesiredRefused,
        FleetRule::SpoolFilling,
        FleetRule::CaptureDegraded,
        FleetRule::KernelLoss,
        FleetRule::LossUndeclared,
        FleetRule::LossDeclared,
        FleetRule::VolumeFlood,
        FleetRule::VolumeDrop,
    ];

    pub fn id(self) -> &'static str {
        match self {
            FleetRule::Silent => "hids-agent-silent",
            FleetRule::KafkaUnreachable => "hids-agent-kafka-unreachable",
            FleetRule::GuardTripped => "hids-agent-guard-tripped",
            FleetRule::PluginQuarantined => "hids-agent-plugin-quarantined",
            FleetRule::PluginCrashLoop => "hids-agent-plugin-crash-loop",
            FleetRule::DesiredRefused => "hids-agent-desired-refused",
            FleetRule::SpoolFilling => "hids-agent-spool-filling",
            FleetRule::CaptureDegraded => "hids-agent-capture-degraded",
            FleetRule::KernelLoss => "hids-agent-kernel-loss",
            FleetRule::LossUndeclared => "hids-data-loss-undeclared",
            FleetRule::LossDeclared => "hids-data-loss-declared",
            FleetRule::VolumeFlood => "hids-data-volume-flood",
            FleetRule::VolumeDrop => "hids-data-volume-drop",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            FleetRule::Silent => "Agent registered but sending no events",
            FleetRule::KafkaUnreachable => "Agent cannot reach Kafka (events held in its spool)",
            FleetRule::GuardTripped => "Agent's resource guard stopped its plugins",
            FleetRule::PluginQuarantined => "Agent plugin quarantined after crashing repeatedly",
            FleetRule::PluginCrashLoop => "Agent plugin crash-looping",
            FleetRule::DesiredRefused => "Agent refused its desired state",
            FleetRule::SpoolFilling => "Agent spool nearly full",
            FleetRule::CaptureDegraded => "Process capture degraded to the proc connector",
            FleetRule::KernelLoss => "Events lost in the kernel or the ring buffer",
            FleetRule::LossUndeclared => "Events lost between host and server, undeclared",
            FleetRule::LossDeclared => "Events dropped by the agent (declared)",
            FleetRule::VolumeFlood => "Event volume far above its history",
            FleetRule::VolumeDrop => "Event volume far below its history",
        }
    }

    pub fn level(self) -> Level {
        match self {
            FleetRule::Silent
            | FleetRule::KafkaUnreachable
            | FleetRule::PluginQuarantined
            | FleetRule::LossUndeclared => Level::High,
            FleetRule::LossDeclared => Level::Low,
            _ => Level::Medium,
        }
    }
}

/// Where a fleet alert that no single event caused is "read": a name that is no Kafka
/// topic, and the time it was raised as the offset, so the store counts each raising
/// once (its idempotence is per alert, topic and partition).
pub const FLEET_TOPIC: &str = "hids-fleet";

/// Who a fleet alert is about.
pub struct Subject<'a> {
    pub host_id: &'a str,
    pub hostname: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// A fleet alert as a hit for the store. `evidence`: the event that raised it (raw), or
/// a document saying what was found; `position`: the event's, or `None` for one raised
/// by a sweep (see [`FLEET_TOPIC`]).
pub fn hit(
    rule: FleetRule,
    subject: &Subject<'_>,
    evidence: Arc<str>,
    count: u64,
    position: Option<Position>,
    window_secs: i64,
    now: Timestamp,
) -> Hit {
    let secs = now.unix_secs();
    let position = position.unwrap_or_else(|| Position {
        topic: FLEET_TOPIC.to_owned(),
        partition: 0,
        offset: secs,
    });
    Hit {
        rule_id: rule.id().to_owned(),
        title: rule.title().to_owned(),
        level: rule.level(),
        techniques: Vec::new(),
        host_id: subject.host_id.to_owned(),
        hostname: subject.hostname.to_owned(),
        labels: subject.labels.clone(),
        window_start: crate::triage::window_start(now, window_secs.max(1)),
        event_time: now,
        count: count.max(1),
        event: evidence,
        position,
    }
}

/// Evidence for a sweep-raised alert: a small ECS-shaped document (`host.id`, and
/// what was found under `hids.fleet`).
pub fn evidence(host_id: &str, found: serde_json::Value) -> Arc<str> {
    serde_json::json!({
        "@timestamp": Timestamp::now(),
        "host": {"id": host_id},
        "event": {"kind": "alert", "module": "hids", "dataset": "hids.fleet"},
        "hids": {"fleet": found},
    })
    .to_string()
    .into()
}
