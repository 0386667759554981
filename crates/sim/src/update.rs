//! Simulated self-updates. A desired state whose plugin entry names a build the host
//! does not run starts an update that reports what the agent reports (`plugins[].update`
//! and friends, docs/updates.md): `downloading`, then `trial` (the new build running),
//! then `healthy`, or `rolled_back` with the old version running again. How long each
//! host takes and which hosts fail come from `hash(host_id)`, so a run is repeatable.
//!
//! Per host only what changes is kept (the update's plugin, versions and start: about
//! 100 bytes while one is tracked); phases are computed from the clock.

use std::time::{Duration, SystemTime};

use hids_types::desired::DesiredBody;
use hids_types::status::{PluginState, PluginStatus};
use hids_types::update::{Rollback, UpdatePhase, UpdateStatus};
use hids_types::Timestamp;

/// The part of an update spent downloading; the rest is the trial.
const DOWNLOAD_SHARE: f64 = 0.3;
/// Salts, so durations, failures and rollout buckets (`hash(host_id) mod 10,000`) are
/// independent of each other.
const TIME_SALT: u64 = 0x5eed_0f71_e5e5;
const FAIL_SALT: u64 = 0xfa11_0fba_5e5e;
/// Why a simulated trial failed.
const ROLLBACK_REASON: &str = "simulated: 3 exits within 60 s";

/// How simulated updates go, for every host.
#[derive(Debug, Clone, Copy)]
pub struct Outcomes {
    /// Typical time from the document to the outcome: each host takes 0.5 to 1.5 times
    /// this.
    pub secs: f64,
    /// Hosts per 10,000 whose updates fail their trial and roll back.
    pub fail_per_10000: u64,
}

impl Outcomes {
    pub fn new(secs: f64, fail_percent: f64) -> anyhow::Result<Outcomes> {
        if !(secs.is_finite() && (0.0..=86_400.0).contains(&secs)) {
            anyhow::bail!("--update-secs {secs}: give 0 to 86400");
        }
        if !(0.0..=100.0).contains(&fail_percent) {
            anyhow::bail!("--update-fail-percent {fail_percent}: give 0 to 100");
        }
        Ok(Outcomes {
            secs,
            fail_per_10000: (fail_percent * 100.0).round() as u64,
        })
    }

    fn duration(&self, host: u64) -> Duration {
        let spread = 0.5 + (crate::fleet::mix(host ^ TIME_SALT) % 1000) as f64 / 1000.0;
        Duration::from_secs_f64(self.secs * spread)
    }

    fn fails(&self, host: u64) -> bool {
        crate::fleet::mix(host ^ FAIL_SALT) % 10_000 < self.fail_per_10000
    }
}

/// One host, as its updates see it: its hash and the shared outcomes.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    pub hash: u64,
    pub outcomes: &'a Outcomes,
}

/// One plugin's update on one host.
struct Track {
    plugin: Box<str>,
    /// The version running before (`None`: the plugin did not run).
    from: Option<Box<str>>,
    target: Box<str>,
    began: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Downloading,
    Trial,
    Healthy,
    RolledBack,
}

impl Track {
    /// The stage at `now`, when it began, and how long until the next one.
    fn stage(&self, host: Host<'_>, now: SystemTime) -> (Stage, SystemTime, Option<Duration>) {
        let total = host.outcomes.duration(host.hash);
        let trial = total.mul_f64(DOWNLOAD_SHARE);
        let elapsed = now.duration_since(self.began).unwrap_or_default();
        if elapsed < trial {
            (Stage::Downloading, self.began, Some(trial - elapsed))
        } else if elapsed < total {
            (Stage::Trial, self.began + trial, Some(total - elapsed))
        } else if host.outcomes.fails(host.hash) {
            (Stage::RolledBack, self.began + total, None)
        } else {
            (Stage::Healthy, self.began + total, None)
        }
    }

    /// The version running at `now`.
    fn running(&self, host: Host<'_>, now: SystemTime) -> Option<Box<str>> {
        match self.stage(host, now).0 {
            Stage::Trial | Stage::Healthy => Some(self.target.clone()),
            Stage::Downloading | Stage::RolledBack => self.from.clone(),
        }
    }
}

/// A virtual agent's updates: usually none or one.
#[derive(Default)]
pub struct Updates {
    tracks: Vec<Track>,
}

impl Updates {
    /// Starts an update for each plugin entry of `body` that names a build other than
    /// the one running (`installed(name)` before any update). An entry naming the
    /// version already tracked changes nothing: a build that rolled back is not tried
    /// again, one in progress goes on. Entries that are not sound builds are ignored.
    pub fn apply(
        &mut self,
        body: &DesiredBody,
        host: Host<'_>,
        now: SystemTime,
        installed: impl Fn(&str) -> Option<&'static str>,
    ) {
        for entry in &body.plugins {
            let Ok(Some(release)) = entry.release() else {
                continue;
            };
            let version: Box<str> = release.version.into();
            match self.tracks.iter_mut().find(|t| *t.plugin == *entry.name) {
                Some(t) if t.target == version => {}
                Some(t) => {
                    *t = Track {
                        plugin: t.plugin.clone(),
                        from: t.running(host, now),
                        target: version,
                        began: now,
                    };
                }
                None => {
                    let from = installed(&entry.name);
                    if from == Some(&*version) {
                        continue;
                    }
                    self.tracks.push(Track {
                        plugin: entry.name.as_str().into(),
                        from: from.map(Into::into),
                        target: version,
                        began: now,
                    });
                }
            }
        }
    }

    /// How long until some update changes phase (the status must be published then).
    pub fn next_change(&self, host: Host<'_>, now: SystemTime) -> Option<Duration> {
        self.tracks
            .iter()
            .filter_map(|t| t.stage(host, now).2)
            .min()
            // Just past the boundary, so the phase read on waking is the next one.
            .map(|d| d + Duration::from_millis(1))
    }

    /// Puts each update's fields into the plugin's entry of `plugins` (added when the
    /// host did not run the plugin).
    pub fn report(&self, plugins: &mut Vec<PluginStatus>, host: Host<'_>, now: SystemTime) {
        for t in &self.tracks {
            let at = plugins.iter().position(|p| p.name == *t.plugin);
            let p = match at {
                Some(i) => &mut plugins[i],
                None => {
                    let path = format!("/var/lib/hids/plugins/{}", t.plugin);
                    plugins.push(PluginStatus::new(&t.plugin, &path, PluginState::Running));
                    let last = plugins.len() - 1;
                    &mut plugins[last]
                }
            };
            let (stage, since, _) = t.stage(host, now);
            let phase = match stage {
                Stage::Downloading => UpdatePhase::Downloading,
                Stage::Trial => UpdatePhase::Trial,
                Stage::Healthy => UpdatePhase::Healthy,
                Stage::RolledBack => UpdatePhase::RolledBack,
            };
            p.version = t.running(host, now).map(String::from);
            if p.version.is_none() && p.state == PluginState::Running {
                p.state = PluginState::Stopped;
            }
            p.update = Some(UpdateStatus {
                target: t.target.to_string(),
                phase,
                since: Timestamp(since),
            });
            p.rolled_back = (stage == Stage::RolledBack).then(|| Rollback {
                from: t.target.to_string(),
                to: t.from.as_deref().map(String::from),
                reason: ROLLBACK_REASON.into(),
                at: Timestamp(since),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_types::desired::DesiredPlugin;

    fn body(version: &str) -> DesiredBody {
        DesiredBody {
            plugins: vec![DesiredPlugin {
                name: "process".into(),
                version: Some(version.into()),
                url: Some("http://127.0.0.1:9/p".into()),
                sha256: Some("ab".repeat(32)),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn process() -> Vec<PluginStatus> {
        vec![PluginStatus {
            version: Some("1".into()),
            ..PluginStatus::new("process", "/p", PluginState::Running)
        }]
    }

    fn installed(name: &str) -> Option<&'static str> {
        (name == "process").then_some("1")
    }

    /// The phases one host goes through, sampled every 0.1 s of a 10 s update.
    fn phases(outcomes: &Outcomes, hash: u64) -> Vec<(UpdatePhase, Option<String>)> {
        let host = Host { hash, outcomes };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut u = Updates::default();
        u.apply(&body("2"), host, t0, installed);
        let mut seen: Vec<(UpdatePhase, Option<String>)> = Vec::new();
        for tenth in 0..200 {
            let now = t0 + Duration::from_millis(tenth * 100);
            let mut plugins = process();
            u.report(&mut plugins, host, now);
            let p = &plugins[0];
            let phase = (p.update.as_ref().unwrap().phase, p.version.clone());
            if seen.last() != Some(&phase) {
                seen.push(phase);
            }
        }
        assert!(u.next_change(host, t0 + Duration::from_secs(20)).is_none());
        seen
    }

    #[test]
    fn an_update_goes_through_its_phases_to_healthy_or_back() {
        let all_good = Outcomes::new(10.0, 0.0).unwrap();
        let v = |s: &str| Some(s.to_owned());
        assert_eq!(
            phases(&all_good, 42),
            [
                (UpdatePhase::Downloading, v("1")),
                (UpdatePhase::Trial, v("2")),
                (UpdatePhase::Healthy, v("2")),
            ]
        );
        let all_bad = Outcomes::new(10.0, 100.0).unwrap();
        assert_eq!(
            phases(&all_bad, 42),
            [
                (UpdatePhase::Downloading, v("1")),
                (UpdatePhase::Trial, v("2")),
                (UpdatePhase::RolledBack, v("1")),
            ]
        );
    }

    #[test]
    fn failures_are_a_stable_share_independent_of_rollout_buckets() {
        let o = Outcomes::new(5.0, 2.5).unwrap();
        let hashes: Vec<u64> = (0..20_000)
            .map(|i| hids_types::stagger::host_hash(&format!("sim-{i:06}")))
            .collect();
        let failing = hashes.iter().filter(|h| o.fails(**h)).count();
        assert!((400..600).contains(&failing), "{failing} of 20,000");
        // Among the first 10% bucket of a rollout, about the same share fails.
        let first_wave: Vec<&u64> = hashes.iter().filter(|h| **h % 10_000 < 1000).collect();
        let failing_first = first_wave.iter().filter(|h| o.fails(***h)).count();
        let share = failing_first as f64 / first_wave.len() as f64;
        assert!((0.01..0.045).contains(&share), "{share}");
        let spread: Vec<Duration> = hashes[..100].iter().map(|h| o.duration(*h)).collect();
        assert!(spread
            .iter()
            .all(|d| (2.5..=7.5).contains(&d.as_secs_f64())));
    }

    #[test]
    fn the_same_version_again_changes_nothing_and_a_new_one_starts_over() {
        let o = Outcomes::new(1.0, 0.0).unwrap();
        let host = Host {
            hash: 7,
            outcomes: &o,
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut u = Updates::default();
        u.apply(&body("1"), host, t0, installed);
        assert!(u.tracks.is_empty(), "already running 1");
        u.apply(&body("2"), host, t0, installed);
        let later = t0 + Duration::from_secs(5);
        u.apply(&body("2"), host, later, installed);
        assert_eq!(u.tracks[0].began, t0);
        u.apply(&body("3"), host, later, installed);
        assert_eq!(u.tracks.len(), 1);
        assert_eq!(u.tracks[0].from.as_deref(), Some("2"));
        // A plugin the host does not run appears in the status.
        let mut other = body("5");
        other.plugins[0].name = "demo".into();
        u.apply(&other, host, later, installed);
        let mut plugins = process();
        u.report(&mut plugins, host, later + Duration::from_secs(5));
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[1].version.as_deref(), Some("5"));
        assert_eq!(plugins[1].state, PluginState::Running);
    }
}
