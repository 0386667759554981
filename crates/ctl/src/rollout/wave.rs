//! Where each host of a wave stands, from its status key: healthy (every build of the
//! rollout running and past its health gate), failed, rolled back, or pending; and the
//! halting rule.

use std::collections::HashMap;
use std::time::Instant;

use hids_types::status::PluginState;
use hids_types::update::UpdatePhase;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::plan::Release;
use crate::push::Follower;

/// An agent's reason, as kept in the record: 20 failures per wave of up to 100 waves
/// must stay far below etcd's 1.5 MiB request limit.
const REASON_BYTES: usize = 256;

fn clip(mut text: String) -> String {
    if text.len() > REASON_BYTES {
        let mut end = REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Failing hosts named in the record, at most (with why).
const LISTED_FAILURES: usize = 20;

/// The part of a status document a rollout reads: parsing only this keeps following
/// 100,000 hosts cheap.
#[derive(Deserialize)]
struct StatusView {
    #[serde(default)]
    applied_generation: u64,
    #[serde(default)]
    desired_error: Option<String>,
    #[serde(default)]
    desired_revision: i64,
    #[serde(default)]
    plugins: Vec<PluginView>,
    /// The agent's own build and its update, for an `[agent]` release.
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    update: Option<UpdateView>,
    #[serde(default)]
    update_error: Option<String>,
    #[serde(default)]
    rolled_back: Option<RollbackView>,
}

impl StatusView {
    /// The agent's own build seen as a plugin that is running (it wrote this status).
    fn agent_view(&self) -> PluginView {
        PluginView {
            name: super::plan::AGENT.to_owned(),
            version: self.version.clone(),
            state: PluginState::Running.as_str().to_owned(),
            update: self.update.clone(),
            update_error: self.update_error.clone(),
            rolled_back: self.rolled_back.clone(),
        }
    }
}

/// States and phases are read as text: a newer agent's new phase is "pending", not a
/// status that fails to parse.
#[derive(Deserialize)]
struct PluginView {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    state: String,
    #[serde(default)]
    update: Option<UpdateView>,
    #[serde(default)]
    update_error: Option<String>,
    #[serde(default)]
    rolled_back: Option<RollbackView>,
}

#[derive(Clone, Deserialize)]
struct UpdateView {
    target: String,
    phase: String,
}

#[derive(Clone, Deserialize)]
struct RollbackView {
    #[serde(default)]
    reason: String,
}

/// Where one host of a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pending,
    Healthy,
    /// The update failed (not installed; the old build runs), or the agent refused the
    /// document.
    Failed,
    RolledBack,
}

/// A failing host and why, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub host_id: String,
    pub outcome: String,
    pub reason: String,
}

/// What the wave's document is, to judge the statuses by.
pub struct Judge<'a> {
    pub releases: &'a [Release],
    pub generation: u64,
    /// The first revision the wave was written at: a refusal must be newer.
    pub written_revision: i64,
}

impl Judge<'_> {
    /// One host's verdict, and why when it failed.
    fn verdict(&self, status: Option<&StatusView>) -> (Verdict, Option<String>) {
        let Some(s) = status else {
            return (Verdict::Pending, None);
        };
        if s.applied_generation < self.generation {
            return match &s.desired_error {
                Some(e) if s.desired_revision >= self.written_revision => {
                    (Verdict::Failed, Some(format!("refused: {e}")))
                }
                _ => (Verdict::Pending, None),
            };
        }
        let mut worst = Verdict::Healthy;
        let mut why = None;
        let agent = s.agent_view();
        for r in self.releases {
            let plugin = if r.plugin == super::plan::AGENT {
                Some(&agent)
            } else {
                s.plugins.iter().find(|p| p.name == r.plugin)
            };
            let (v, reason) = plugin_verdict(plugin, &r.version);
            // A rollback outranks a failure, which outranks waiting.
            let rank = |v: Verdict| match v {
                Verdict::Healthy => 0,
                Verdict::Pending => 1,
                Verdict::Failed => 2,
                Verdict::RolledBack => 3,
            };
            if rank(v) > rank(worst) {
                worst = v;
                why = reason.map(|x| format!("{}: {x}", r.plugin));
            }
        }
        (worst, why)
    }
}

fn plugin_verdict(plugin: Option<&PluginView>, version: &str) -> (Verdict, Option<String>) {
    let Some(p) = plugin else {
        return (Verdict::Pending, None);
    };
    let Some(update) = p.update.as_ref().filter(|u| u.target == version) else {
        return (Verdict::Pending, None);
    };
    if update.phase == UpdatePhase::RolledBack.as_str() {
        let reason = p.rolled_back.as_ref().map(|r| r.reason.clone());
        return (Verdict::RolledBack, reason);
    }
    if update.phase == UpdatePhase::Failed.as_str() {
        return (Verdict::Failed, p.update_error.clone());
    }
    let running = p.state == PluginState::Running.as_str();
    if update.phase == UpdatePhase::Healthy.as_str()
        && running
        && p.version.as_deref() == Some(version)
    {
        return (Verdict::Healthy, None);
    }
    (Verdict::Pending, None)
}

/// Counts of a wave's hosts by verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub healthy: usize,
    /// Failed updates and refused documents.
    pub failed: usize,
    pub rolled_back: usize,
    pub pending: usize,
}

impl Counts {
    fn slot(&mut self, v: Verdict) -> &mut usize {
        match v {
            Verdict::Pending => &mut self.pending,
            Verdict::Healthy => &mut self.healthy,
            Verdict::Failed => &mut self.failed,
            Verdict::RolledBack => &mut self.rolled_back,
        }
    }

    pub fn settled(&self) -> usize {
        self.healthy + self.failed + self.rolled_back
    }

    /// Failures and rollbacks are above `max_percent` of `targets`. Hosts still pending
    /// can only add to them, so once above, the wave's outcome is certain.
    pub fn over_threshold(&self, targets: usize, max_percent: f64) -> bool {
        // failing / targets > max / 100, without dividing: 29 of 100 is not above 29%.
        let failing = (self.failed + self.rolled_back) as f64;
        failing * 100.0 > max_percent * targets as f64
    }
}

/// Every host of one wave, kept up to date one status change at a time.
pub struct WaveTally<'a> {
    judge: Judge<'a>,
    max_failure_percent: f64,
    hosts: HashMap<&'a str, Verdict>,
    pub counts: Counts,
    pub failures: Vec<Failure>,
}

impl<'a> WaveTally<'a> {
    /// Every host pending until its status says otherwise (an offline host stays
    /// pending).
    pub fn new(hosts: &'a [String], judge: Judge<'a>, max_failure_percent: f64) -> Self {
        WaveTally {
            judge,
            max_failure_percent,
            hosts: hosts
                .iter()
                .map(|h| (h.as_str(), Verdict::Pending))
                .collect(),
            counts: Counts {
                pending: hosts.len(),
                ..Counts::default()
            },
            failures: Vec::new(),
        }
    }

    fn record(&mut self, host: &str, status: Option<&StatusView>) {
        let Some((&name, &before)) = self.hosts.get_key_value(host) else {
            return;
        };
        let (verdict, why) = self.judge.verdict(status);
        if verdict == before {
            return;
        }
        self.hosts.insert(name, verdict);
        *self.counts.slot(before) -= 1;
        *self.counts.slot(verdict) += 1;
        self.failures.retain(|f| f.host_id != name);
        let outcome = match verdict {
            Verdict::Failed => "failed",
            Verdict::RolledBack => "rolled_back",
            Verdict::Pending | Verdict::Healthy => return,
        };
        if self.failures.len() < LISTED_FAILURES {
            self.failures.push(Failure {
                host_id: name.to_owned(),
                outcome: outcome.into(),
                reason: clip(why.unwrap_or_default()),
            });
        }
    }

    /// Failures and rollbacks are over the threshold.
    pub fn over_threshold(&self) -> bool {
        self.counts
            .over_threshold(self.hosts.len(), self.max_failure_percent)
    }
}

impl Follower for WaveTally<'_> {
    fn set(&mut self, host: &str, status: Option<&[u8]>, _now: Instant) {
        if !self.hosts.contains_key(host) {
            return;
        }
        // A value that is not a status document says nothing: as if offline.
        let view: Option<StatusView> = status.and_then(|v| serde_json::from_slice(v).ok());
        self.record(host, view.as_ref());
    }

    fn done(&self) -> bool {
        self.counts.pending == 0 || self.over_threshold()
    }

    fn draw(&self, bar: &ProgressBar) {
        let c = &self.counts;
        bar.set_position(c.settled() as u64);
        bar.set_message(format!(
            "healthy {}  failed {}  rolled back {}  pending {}",
            c.healthy, c.failed, c.rolled_back, c.pending
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn releases() -> Vec<Release> {
        vec![Release {
            plugin: "demo".into(),
            version: "2".into(),
        }]
    }

    fn status(applied: u64, plugin: &str) -> Vec<u8> {
        format!(
            r#"{{"applied_generation":{applied},"desired_revision":50,"unknown":1,"plugins":[{plugin}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn an_agent_release_is_judged_from_the_top_level_fields() {
        let hosts: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let releases = vec![Release {
            plugin: crate::rollout::plan::AGENT.into(),
            version: "9".into(),
        }];
        let judge = Judge {
            releases: &releases,
            generation: 7,
            written_revision: 40,
        };
        let mut t = WaveTally::new(&hosts, judge, 50.0);
        let now = Instant::now();
        let healthy = br#"{"applied_generation":7,"version":"9","plugins":[],"update":{"target":"9","phase":"healthy","since":"2026-01-01T00:00:00Z"}}"#;
        let rolled = br#"{"applied_generation":7,"version":"8","plugins":[],"update":{"target":"9","phase":"rolled_back","since":"2026-01-01T00:00:00Z"},"rolled_back":{"from":"9","to":"8","reason":"did not pass its health gate in 3 starts","at":"2026-01-01T00:00:00Z"}}"#;
        t.set("a", Some(healthy), now);
        t.set("b", Some(rolled), now);
        assert_eq!(t.counts.healthy, 1);
        assert_eq!(t.counts.rolled_back, 1);
    }

    #[test]
    fn verdicts_follow_the_update_fields() {
        let hosts: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let releases = releases();
        let judge = Judge {
            releases: &releases,
            generation: 7,
            written_revision: 40,
        };
        let mut t = WaveTally::new(&hosts, judge, 50.0);
        let now = Instant::now();
        let healthy = r#"{"name":"demo","state":"running","version":"2","update":{"target":"2","phase":"healthy","since":"2026-01-01T00:00:00Z"}}"#;
        // Healthy, but for the previous generation: not yet this wave's answer.
        t.set("a", Some(&status(6, healthy)), now);
        assert_eq!(t.counts.pending, 5);
        t.set("a", Some(&status(7, healthy)), now);
        let trial = r#"{"name":"demo","state":"running","version":"2","update":{"target":"2","phase":"trial","since":"2026-01-01T00:00:00Z"}}"#;
        t.set("b", Some(&status(7, trial)), now);
        let rolled = r#"{"name":"demo","state":"running","version":"1","update":{"target":"2","phase":"rolled_back","since":"2026-01-01T00:00:00Z"},"rolled_back":{"from":"2","to":"1","reason":"3 exits within 60 s","at":"2026-01-01T00:00:00Z"}}"#;
        t.set("c", Some(&status(7, rolled)), now);
        let failed = r#"{"name":"demo","state":"running","version":"1","update":{"target":"2","phase":"failed","since":"2026-01-01T00:00:00Z"},"update_error":"sha256 mismatch"}"#;
        t.set("d", Some(&status(7, failed)), now);
        let refused =
            br#"{"applied_generation":6,"desired_error":"bad signature","desired_revision":45}"#;
        t.set("e", Some(refused), now);
        t.set("not-in-wave", Some(&status(7, healthy)), now);
        assert_eq!(
            t.counts,
            Counts {
                healthy: 1,
                failed: 2,
                rolled_back: 1,
                pending: 1
            }
        );
        assert_eq!(t.failures.len(), 3);
        assert!(t
            .failures
            .iter()
            .any(|f| f.reason.contains("sha256 mismatch")));
        assert!(t.failures.iter().any(|f| f.reason.contains("3 exits")));
        assert!(t
            .failures
            .iter()
            .any(|f| f.reason.contains("bad signature")));
        // 3 of 5 failing is over 50%: certain, whatever b does.
        assert!(t.over_threshold() && t.done());
        // The agent went offline: pending again, the failure no longer counted.
        t.set("c", None, now);
        assert_eq!((t.counts.rolled_back, t.counts.pending), (0, 2));
        assert_eq!(t.failures.len(), 2);
        assert!(!t.over_threshold());
    }

    #[test]
    fn an_old_refusal_or_another_version_is_not_an_answer() {
        let hosts = vec!["a".to_owned()];
        let releases = releases();
        let judge = Judge {
            releases: &releases,
            generation: 7,
            written_revision: 40,
        };
        let mut t = WaveTally::new(&hosts, judge, 5.0);
        let now = Instant::now();
        t.set(
            "a",
            Some(br#"{"applied_generation":6,"desired_error":"old","desired_revision":30}"#),
            now,
        );
        assert_eq!(t.counts.pending, 1);
        let other = r#"{"name":"demo","state":"running","version":"1","update":{"target":"1b","phase":"rolled_back","since":"2026-01-01T00:00:00Z"}}"#;
        t.set("a", Some(&status(7, other)), now);
        assert_eq!(t.counts.pending, 1);
        t.set("a", Some(b"not json"), now);
        assert_eq!(t.counts.pending, 1);
    }

    #[test]
    fn threshold_is_a_share_of_the_wave() {
        let c = Counts {
            failed: 2,
            rolled_back: 3,
            ..Counts::default()
        };
        assert!(!c.over_threshold(100, 5.0), "5 of 100 is not above 5%");
        assert!(c.over_threshold(99, 5.0));
        assert!(c.over_threshold(3, 0.0));
        assert!(!Counts::default().over_threshold(0, 0.0));
    }
}
