//! What happens to a supervised plugin: a log line (with the plugin's name as a field)
//! and the change in its status, under one short lock, taken before the line is written.

use std::sync::Mutex;
use std::time::Duration;

use hids_types::status::{PluginState, PluginStatus};

fn update<R>(status: &Mutex<PluginStatus>, f: impl FnOnce(&mut PluginStatus) -> R) -> R {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut s)
}

/// A run of the plugin started.
pub struct PluginStarted<'a> {
    /// What was started: name, path, and the version of a build installed by
    /// self-update.
    pub spec: &'a crate::config::PluginSpec,
    pub pid: u32,
    pub run_id: &'a str,
}

impl PluginStarted<'_> {
    pub fn emit(self, status: &Mutex<PluginStatus>) {
        update(status, |s| {
            s.state = PluginState::Running;
            s.pid = Some(self.pid);
            s.run_id = Some(self.run_id.to_owned());
            s.framed = None;
            s.version = self.spec.version.clone();
        });
        let (pid, run_id, spec) = (self.pid, self.run_id, self.spec);
        tracing::info!(plugin = %spec.name, pid, run_id, "started {}", spec.path.display());
    }
}

/// It died; it is restarted after `delay`.
pub struct PluginRestartScheduled<'a> {
    pub plugin: &'a str,
    pub last_exit: &'a str,
    /// Crashes in a row, this one included.
    pub crashes: u32,
    /// Restarts allowed before quarantine.
    pub max_restarts: u32,
    pub delay: Duration,
}

impl PluginRestartScheduled<'_> {
    pub fn emit(self, status: &Mutex<PluginStatus>) {
        update(status, |s| s.state = PluginState::Backoff);
        tracing::warn!(
            plugin = %self.plugin,
            "plugin {} stopped unexpectedly ({}); restart {} of at most {} in {:?}",
            self.plugin,
            self.last_exit,
            self.crashes,
            self.max_restarts,
            self.delay
        );
    }
}

/// It died too often in a row: no more restarts until the agent restarts or an
/// operator asks.
pub struct PluginQuarantined<'a> {
    pub plugin: &'a str,
    pub last_exit: &'a str,
    pub crashes: u32,
}

impl PluginQuarantined<'_> {
    pub fn emit(self, status: &Mutex<PluginStatus>) {
        update(status, |s| s.state = PluginState::Quarantined);
        tracing::error!(
            plugin = %self.plugin,
            "plugin {} failed {} times in a row (last: {}); quarantined: \
             it will not be restarted until the agent restarts or an operator asks",
            self.plugin,
            self.crashes,
            self.last_exit
        );
    }
}

/// The kernel killed it for going over its cgroup memory limit.
pub struct PluginOutOfMemory<'a> {
    pub plugin: &'a str,
    pub limit_mb: u64,
}

impl PluginOutOfMemory<'_> {
    pub fn emit(self, status: &Mutex<PluginStatus>) {
        update(status, |s| s.oom_kills += 1);
        tracing::warn!(plugin = %self.plugin, "killed by its cgroup memory limit ({} MB)", self.limit_mb);
    }
}

/// Its output broke the protocol: it is killed (and restarted with the crash backoff).
pub struct PluginOutputRefused<'a> {
    pub plugin: &'a str,
    pub why: &'a str,
}

impl PluginOutputRefused<'_> {
    pub fn emit(self, status: &Mutex<PluginStatus>) {
        update(status, |s| s.frames_rejected += 1);
        tracing::error!(plugin = %self.plugin, "refusing plugin output: {}; killing it", self.why);
    }
}

/// One event frame refused (not its own run, not one line of JSON, declaring loss);
/// logged at the 1st, 2nd, 4th, 8th... so a flood costs a few lines.
pub struct EventFrameRefused<'a> {
    pub plugin: &'a str,
    pub why: &'a str,
    /// Refused so far in this run, this one included.
    pub refused: u64,
}

impl EventFrameRefused<'_> {
    pub fn emit(self, status: &Mutex<PluginStatus>) {
        update(status, |s| s.frames_rejected += 1);
        if self.refused.is_power_of_two() {
            tracing::warn!(
                plugin = %self.plugin,
                "refused {} event frame(s); the last: {}",
                self.refused,
                self.why
            );
        }
    }
}

/// Its first bytes are no frame header: it is supervised for liveness only, its
/// stdout discarded and counted.
pub struct PluginUnframed<'a> {
    pub plugin: &'a str,
    /// Bytes already read (and discarded).
    pub discarded: u64,
}

impl PluginUnframed<'_> {
    pub fn emit(self, status: &Mutex<PluginStatus>) {
        update(status, |s| {
            s.framed = Some(false);
            s.bytes_discarded += self.discarded;
        });
        tracing::warn!(
            plugin = %self.plugin,
            "plugin {} does not speak the frame protocol; supervising it for liveness only and discarding its stdout",
            self.plugin
        );
    }
}
