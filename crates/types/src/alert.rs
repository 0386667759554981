//! Alerts: what `hids-server` stores, serves on `/api/v1/alerts`, sends to its alerts topic
//! and webhooks, and what `hidsctl alerts` reads. One shape for all of them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// How bad a finding is, in Sigma's five grades (Falco's priorities map onto them).
/// Ordered: `Critical > High > ... > Informational`, so "level >= high" is a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Informational,
        Level::Low,
        Level::Medium,
        Level::High,
        Level::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Informational => "informational",
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }

    /// 0 (informational) to 4 (critical): how stores keep it, so "at least" is a `>=`.
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn from_rank(rank: u8) -> Option<Level> {
        Level::ALL.get(usize::from(rank)).copied()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown level {s:?}: one of informational, low, medium, high, critical")
            })
    }
}

/// One alert: one rule on one host within one window, however many events matched
/// (`count`). `id` is derived from those three, so a redelivered event can never make a
/// second alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub rule_id: String,
    pub title: String,
    pub level: Level,
    /// MITRE ATT&CK technique ids (`T1059.004`), from the rule's tags.
    #[serde(default)]
    pub techniques: Vec<String>,
    pub host_id: String,
    #[serde(default)]
    pub hostname: String,
    /// The host's labels as its events carried them (`idc`, `project`, `product`, `env`...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Matching events counted into this alert.
    pub count: u64,
    /// Event time of the first and the latest matching event.
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// When the server stored it (server clock): `created_at - first_seen` is the latency.
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The first evidence event, as received.
    pub event: serde_json::Value,
}

/// One row of `/api/v1/alerts/summary`: a group and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The group's value (`null` for alerts whose host has no such label).
    pub key: Option<String>,
    /// Alerts in the group.
    pub count: u64,
    /// Events counted into those alerts.
    pub events: u64,
}

/// What alerts can be grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupBy {
    RuleId,
    Level,
    HostId,
    /// A host label: `idc`, `project`, `product`, `env` or any other.
    Label(String),
}

impl FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rule_id" => Ok(GroupBy::RuleId),
            "level" => Ok(GroupBy::Level),
            "host_id" => Ok(GroupBy::HostId),
            "" => Err("by: empty; one of rule_id, level, host_id, idc, project, product, env or labels.<name>".into()),
            other => {
                let label = other.strip_prefix("labels.").unwrap_or(other);
                if label.is_empty() || label.contains(char::is_whitespace) {
                    return Err(format!("by: {other:?} is not a label name"));
                }
                Ok(GroupBy::Label(label.to_owned()))
            }
        }
    }
}

/// An operator's decision that an alert kind is accepted: matching hits are counted and
/// not stored. Every field that is set must match; `rule_id` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    #[serde(default)]
    pub id: i64,
    pub rule_id: String,
    /// Only this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// Only hosts with every one of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Only events whose `process.command_line` starts with this text (anchored, so an
    /// attacker cannot borrow the suppression by adding the text to their command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    /// Why it was accepted, and by whom.
    #[serde(default)]
    pub comment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

impl Suppression {
    /// Whether a hit of `rule_id` on this host, with this command line, is accepted.
    pub fn covers(
        &self,
        rule_id: &str,
        host_id: &str,
        labels: &BTreeMap<String, String>,
        command_line: Option<&str>,
    ) -> bool {
        self.rule_id == rule_id
            && self.host_id.as_deref().is_none_or(|h| h == host_id)
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self
                .command_line
                .as_deref()
                .is_none_or(|c| command_line.is_some_and(|line| line.starts_with(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_and_parse() {
        assert!(Level::Critical > Level::High && Level::Low > Level::Informational);
        assert_eq!("HIGH".parse::<Level>().unwrap(), Level::High);
        assert!("severe".parse::<Level>().is_err());
        for l in Level::ALL {
            assert_eq!(Level::from_rank(l.rank()), Some(l));
            assert_eq!(serde_json::to_string(&l).unwrap(), format!("\"{l}\""));
        }
    }

    #[test]
    fn group_by_names_labels_and_fixed_fields() {
        assert_eq!("rule_id".parse::<GroupBy>().unwrap(), GroupBy::RuleId);
        assert_eq!(
            "idc".parse::<GroupBy>().unwrap(),
            GroupBy::Label("idc".into())
        );
        assert_eq!(
            "labels.team".parse::<GroupBy>().unwrap(),
            GroupBy::Label("team".into())
        );
        assert!("".parse::<GroupBy>().is_err());
    }

    #[test]
    fn suppression_needs_every_set_field() {
        let labels = BTreeMap::from([("env".to_string(), "dev".to_string())]);
        let mut s = Suppression {
            id: 1,
            rule_id: "r".into(),
            host_id: None,
            labels: labels.clone(),
            command_line: Some("/opt/backup.sh".into()),
            comment: String::new(),
            created_at: None,
        };
        assert!(s.covers("r", "h", &labels, Some("/opt/backup.sh --all")));
        assert!(!s.covers("r", "h", &labels, Some("nc -e /bin/sh")));
        assert!(
            !s.covers("r", "h", &labels, Some("nc -e /bin/sh # /opt/backup.sh")),
            "anchored: the text anywhere else does not count"
        );
        assert!(!s.covers("r", "h", &BTreeMap::new(), Some("/opt/backup.sh")));
        assert!(!s.covers("other", "h", &labels, Some("/opt/backup.sh")));
        s.host_id = Some("h2".into());
        assert!(!s.covers("r", "h", &labels, Some("/opt/backup.sh")));
    }
}
