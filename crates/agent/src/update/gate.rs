//! The health gate of a build on trial, judged from the supervisor's status of the
//! plugin: healthy once one run of the new build has stayed up `healthy_after_secs`
//! (60 s by default, the supervisor's `stable_after_secs`: a build that crashes every
//! 15 s never passes, its exits are counted);
//! failed after `crash_exits` exits in a row (the supervisor's count, which a run of
//! `stable_after_secs` resets), on quarantine, or when nothing healthy was seen within
//! `grace_secs`. A build that cannot even be started counts its failed starts as exits,
//! so it is rolled back the same way.

use std::path::Path;
use std::time::Duration;

use hids_types::status::{PluginState, PluginStatus};
use tokio::time::Instant;

use crate::config::UpdateConfig;

pub struct Gate {
    /// The version judged.
    version: String,
    /// The trial began (or resumed after a hold).
    since: Instant,
    /// The new build's executable, as the status reports it: until the supervisor has
    /// switched to it, what the status says is about the old build.
    path: String,
    /// The run being watched, and since when it has been seen up.
    run: Option<(u32, Instant)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pending,
    Healthy,
    Failed(String),
}

impl Gate {
    pub fn new(version: &str, path: &Path) -> Gate {
        Gate {
            version: version.to_owned(),
            since: Instant::now(),
            path: path.display().to_string(),
            run: None,
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn is_for(&self, path: &Path) -> bool {
        self.path == path.display().to_string()
    }

    pub fn judge(
        &mut self,
        status: Option<&PluginStatus>,
        now: Instant,
        config: &UpdateConfig,
    ) -> Verdict {
        // Held by the guard or a stop command, or disabled: the grace period waits too
        // (the supervisor has not even switched the status to the new build).
        if status.is_some_and(|s| matches!(s.state, PluginState::Stopped | PluginState::Disabled)) {
            self.since = now;
            self.run = None;
            return Verdict::Pending;
        }
        let grace = Duration::from_secs(config.grace_secs);
        let over = now.saturating_duration_since(self.since) > grace;
        let Some(s) = status.filter(|s| s.path == self.path) else {
            return if over {
                Verdict::Failed(format!("not started within {}s", config.grace_secs))
            } else {
                Verdict::Pending
            };
        };
        if s.consecutive_crashes >= config.crash_exits || s.state == PluginState::Quarantined {
            let last = s.last_exit.as_deref().unwrap_or("unknown");
            return Verdict::Failed(format!(
                "{} exits in a row (last: {last})",
                s.consecutive_crashes
            ));
        }
        match (s.state, s.pid) {
            (PluginState::Running, Some(pid)) => match self.run {
                Some((watched, up_since)) if watched == pid => {
                    if now.saturating_duration_since(up_since)
                        >= Duration::from_secs(config.healthy_after_secs)
                    {
                        return Verdict::Healthy;
                    }
                }
                _ => self.run = Some((pid, now)),
            },
            _ => self.run = None,
        }
        if over {
            return Verdict::Failed(format!("not healthy within {}s", config.grace_secs));
        }
        Verdict::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: PluginState, pid: Option<u32>, crashes: u32) -> PluginStatus {
        let mut s = PluginStatus::new("demo", "/v/4/demo", state);
        s.pid = pid;
        s.consecutive_crashes = crashes;
        s.last_exit = Some("exit status 1".into());
        s
    }

    fn config() -> UpdateConfig {
        UpdateConfig {
            healthy_after_secs: 10,
            grace_secs: 60,
            crash_exits: 3,
            ..UpdateConfig::default()
        }
    }

    #[test]
    fn healthy_after_one_run_stays_up() {
        let mut gate = Gate::new("4", Path::new("/v/4/demo"));
        let t0 = Instant::now();
        let up = status(PluginState::Running, Some(7), 0);
        assert_eq!(gate.judge(Some(&up), t0, &config()), Verdict::Pending);
        let restarted = status(PluginState::Running, Some(8), 1);
        let t = t0 + Duration::from_secs(9);
        assert_eq!(gate.judge(Some(&restarted), t, &config()), Verdict::Pending);
        let t = t + Duration::from_secs(10);
        assert_eq!(gate.judge(Some(&restarted), t, &config()), Verdict::Healthy);
    }

    #[test]
    fn a_crash_loop_or_a_build_that_never_starts_fails() {
        let mut gate = Gate::new("4", Path::new("/v/4/demo"));
        let t0 = Instant::now();
        let looping = status(PluginState::Backoff, None, 3);
        let Verdict::Failed(why) = gate.judge(Some(&looping), t0, &config()) else {
            panic!("a crash loop must fail the gate");
        };
        assert!(
            why.contains("3 exits") && why.contains("exit status 1"),
            "{why}"
        );

        let mut gate = Gate::new("4", Path::new("/v/4/demo"));
        let old_build = PluginStatus::new("demo", "/v/2/demo", PluginState::Running);
        assert_eq!(
            gate.judge(Some(&old_build), t0, &config()),
            Verdict::Pending
        );
        let late = t0 + Duration::from_secs(61);
        assert!(matches!(
            gate.judge(Some(&old_build), late, &config()),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn a_hold_pauses_the_grace_period() {
        let mut gate = Gate::new("4", Path::new("/v/4/demo"));
        let t0 = Instant::now();
        // Held before the supervisor even switched to the new build.
        let mut held = status(PluginState::Stopped, None, 0);
        held.path = "/v/2/demo".into();
        let later = t0 + Duration::from_secs(600);
        assert_eq!(gate.judge(Some(&held), later, &config()), Verdict::Pending);
        let up = status(PluginState::Running, Some(9), 0);
        let t = later + Duration::from_secs(30);
        assert_eq!(gate.judge(Some(&up), t, &config()), Verdict::Pending);
        let t = t + Duration::from_secs(31);
        assert_eq!(gate.judge(Some(&up), t, &config()), Verdict::Healthy);
    }
}
