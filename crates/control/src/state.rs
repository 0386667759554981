//! The agent's side of the control plane: what it has applied, which commands it has run,
//! and the local cache of the last good desired state, so it keeps running on that state
//! when etcd is unreachable (also across restarts). The fleet simulator keeps one of
//! these per virtual agent, so what it acknowledges is what a real agent would.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use hids_types::desired::{CommandKind, DesiredBody, DesiredState};
use hids_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::session::Update;
use crate::TrustedKeys;

/// Command ids remembered, so a command is never run twice.
const MAX_EXECUTED: usize = 256;
const FILE: &str = "control.json";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ControlState {
    pub applied_generation: u64,
    /// The raw signed envelope last applied, re-verified at every start.
    #[serde(default)]
    pub envelope: Option<String>,
    /// Its settings (inline or from its blob).
    #[serde(default)]
    pub body: DesiredBody,
    /// Held by a `stop_all` command until `resume`.
    #[serde(default)]
    pub stopped: bool,
    #[serde(default)]
    pub executed: VecDeque<String>,
    #[serde(skip)]
    pub desired_error: Option<String>,
    #[serde(default)]
    pub desired_revision: i64,
}

/// What a desired state asks the agent to do beyond its settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub restart: Vec<String>,
}

impl ControlState {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// Loads the cache and re-verifies it against the trusted keys and this host. A cache
    /// that does not verify (keys rotated, file edited) is ignored, with a warning.
    pub fn load(state_dir: &Path, trusted: &TrustedKeys, host_id: &str) -> ControlState {
        let path = Self::path(state_dir);
        let Ok(bytes) = std::fs::read(&path) else {
            return ControlState::default();
        };
        let cached: ControlState = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("ignoring {}: {e}", path.display());
                return ControlState::default();
            }
        };
        let Some(envelope) = &cached.envelope else {
            return cached;
        };
        match trusted.verify(envelope.as_bytes(), host_id, 0) {
            Ok(crate::Verified::New(state)) if state.generation == cached.applied_generation => {
                tracing::info!(
                    "running on the cached desired state, generation {} (until the control plane says otherwise)",
                    state.generation
                );
                cached
            }
            Ok(_) => {
                tracing::warn!(
                    "ignoring {}: its generation does not match its document",
                    path.display()
                );
                ControlState::default()
            }
            Err(e) => {
                tracing::warn!("ignoring cached desired state in {}: {e}", path.display());
                ControlState::default()
            }
        }
    }

    /// # Errors
    /// When the state directory is not writable.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = state_dir.join(".control.json.tmp");
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, Self::path(state_dir))
    }

    /// Takes what the session reports. `Some` when a new desired state was applied: the
    /// caller re-applies its plugin set, runs the actions and saves the cache.
    pub fn take(&mut self, update: Update) -> Option<Actions> {
        match update {
            Update::Apply {
                state,
                body,
                raw,
                revision,
            } => {
                let actions = self.accept(&state, body, &raw);
                self.desired_revision = revision;
                Some(actions)
            }
            Update::Refused { reason, revision } => {
                self.desired_error = Some(reason.to_string());
                self.desired_revision = revision;
                None
            }
            Update::Connected | Update::Disconnected(_) => None,
        }
    }

    /// Records a verified desired state and runs its commands that are new and not
    /// expired. Returns what the caller must do besides re-applying the plugin set.
    pub fn accept(&mut self, state: &DesiredState, body: DesiredBody, raw: &[u8]) -> Actions {
        let mut actions = Actions::default();
        let now = Timestamp::now();
        for cmd in &state.commands {
            if self.executed.contains(&cmd.id) {
                continue;
            }
            if cmd.expires_at < now {
                tracing::info!("command {} ({:?}) expired; not run", cmd.id, cmd.kind);
                continue;
            }
            match cmd.kind {
                CommandKind::StopAll => {
                    tracing::warn!("command {}: stop_all: stopping every plugin", cmd.id);
                    self.stopped = true;
                }
                CommandKind::Resume => {
                    tracing::info!("command {}: resume", cmd.id);
                    self.stopped = false;
                }
                CommandKind::RestartPlugin => match &cmd.plugin {
                    Some(p) => {
                        tracing::info!("command {}: restart plugin {p}", cmd.id);
                        actions.restart.push(p.clone());
                    }
                    None => {
                        tracing::warn!("command {}: restart_plugin without a plugin name", cmd.id)
                    }
                },
            }
            self.executed.push_back(cmd.id.clone());
            while self.executed.len() > MAX_EXECUTED {
                self.executed.pop_front();
            }
        }
        self.applied_generation = state.generation;
        self.envelope = Some(String::from_utf8_lossy(raw).into_owned());
        self.body = body;
        self.desired_error = None;
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_types::desired::Command;

    fn state(generation: u64, commands: Vec<Command>) -> DesiredState {
        DesiredState {
            generation,
            host_id: "h".into(),
            issued_at: Timestamp::now(),
            issued_by: String::new(),
            body: None,
            body_sha256: None,
            commands,
        }
    }

    fn cmd(id: &str, kind: CommandKind, expires_in_secs: i64) -> Command {
        let now = std::time::SystemTime::now();
        let at = if expires_in_secs >= 0 {
            now + std::time::Duration::from_secs(expires_in_secs as u64)
        } else {
            now - std::time::Duration::from_secs((-expires_in_secs) as u64)
        };
        Command {
            id: id.into(),
            kind,
            plugin: Some("process".into()),
            expires_at: Timestamp(at),
        }
    }

    #[test]
    fn commands_run_once_and_not_when_expired() {
        let mut c = ControlState::default();
        c.accept(
            &state(1, vec![cmd("a", CommandKind::StopAll, 60)]),
            DesiredBody::default(),
            b"{}",
        );
        assert!(c.stopped);
        // The same command again in a later document: not run again.
        c.stopped = false;
        c.accept(
            &state(2, vec![cmd("a", CommandKind::StopAll, 60)]),
            DesiredBody::default(),
            b"{}",
        );
        assert!(!c.stopped);
        c.accept(
            &state(3, vec![cmd("b", CommandKind::StopAll, -5)]),
            DesiredBody::default(),
            b"{}",
        );
        assert!(!c.stopped, "expired");
        let a = c.accept(
            &state(4, vec![cmd("c", CommandKind::RestartPlugin, 60)]),
            DesiredBody::default(),
            b"{}",
        );
        assert_eq!(a.restart, vec!["process"]);
        assert_eq!(c.applied_generation, 4);
    }
}
