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
use crate::{Refusal, TrustedKeys};

/// Command ids remembered, so a command is never run twice.
const MAX_EXECUTED: usize = 256;
const FILE: &str = "control.json";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ControlState {
    pub applied_generation: u64,
    /// The raw signed envelope last applied, re-verified at every start.
    #[serde(default)]
    pub envelope: Option<String>,
    /// The blob its `body_sha256` names (JSON text), checked against that hash at every
    /// start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Its settings (inline or from its blob). Not cached: recomputed from the signed
    /// document at every start, so an edit of the file cannot change them.
    #[serde(skip)]
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

/// Why a cached desired state was not trusted. Every local field is checked against
/// the signed document: with an unchecked `applied_generation` of 2^64-1 or a future
/// command id in `executed`, an edited cache would make the host refuse every later
/// document or command, i.e. unsteerable.
#[derive(Debug, thiserror::Error)]
pub enum CacheRefusal {
    #[error("not a cache file: {0}")]
    Malformed(String),
    #[error("it holds no signed document")]
    Unsigned,
    #[error("its document does not verify: {0}")]
    Document(#[from] Refusal),
    #[error("its applied generation {cached} is not its document's ({signed})")]
    Generation { cached: u64, signed: u64 },
    #[error("command {0} of its document has not expired but is not recorded as run")]
    CommandNotRun(String),
    #[error("it says stopped = {cached}, but the commands of its document that ran leave stopped = {signed}")]
    Stopped { cached: bool, signed: bool },
}

/// What a desired state asks the agent to do beyond its settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// Plugins to restart.
    pub restart: Vec<String>,
    /// Plugins to ask for a full snapshot now.
    pub snapshot: Vec<SnapshotRequest>,
}

/// A `snapshot` command for one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub plugin: String,
    /// The command's id: the plugin's answer carries it, so the operator can find it.
    pub command_id: String,
}

impl ControlState {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// Loads the cache and re-verifies it against the trusted keys and this host (see
    /// [`ControlState::from_cache`]). A cache that does not verify (keys rotated, file
    /// edited) is ignored with a warning saying why: the agent starts from its local
    /// settings and waits for the control plane.
    pub fn load(state_dir: &Path, trusted: &TrustedKeys, host_id: &str) -> ControlState {
        let path = Self::path(state_dir);
        let Ok(bytes) = std::fs::read(&path) else {
            return ControlState::default();
        };
        match Self::from_cache(&bytes, trusted, host_id, Timestamp::now()) {
            Ok(state) => {
                tracing::info!(
                    "running on the cached desired state, generation {} (until the control plane says otherwise)",
                    state.applied_generation
                );
                state
            }
            Err(e) => {
                tracing::warn!(
                    "ignoring the cached desired state in {}: {e}; running on the local settings until the control plane answers",
                    path.display()
                );
                ControlState::default()
            }
        }
    }

    /// A cache file's state, trusted only as far as its signed document vouches for it:
    /// the document verifies (trusted key, this host); the applied generation is the
    /// document's; the settings are recomputed from the document (or its blob, checked
    /// against the signed hash); `executed` keeps only the document's command ids (an id
    /// the document does not carry can never come back: later documents carry this
    /// one's unexpired commands plus new ones); every unexpired command of the document
    /// is recorded as run; and `stopped` is what the document's commands that ran leave
    /// it. When no stop or resume of the document ran, `stopped` is the one local fact
    /// left: it cannot lock the host out, since any later `resume` is a new command.
    ///
    /// # Errors
    /// Which of these checks failed.
    pub fn from_cache(
        bytes: &[u8],
        trusted: &TrustedKeys,
        host_id: &str,
        now: Timestamp,
    ) -> Result<ControlState, CacheRefusal> {
        let cached: ControlState =
            serde_json::from_slice(bytes).map_err(|e| CacheRefusal::Malformed(e.to_string()))?;
        let envelope = cached.envelope.as_deref().ok_or(CacheRefusal::Unsigned)?;
        let state = match trusted.verify(envelope.as_bytes(), host_id, 0)? {
            crate::Verified::New(state) => state,
            crate::Verified::Current => {
                return Err(CacheRefusal::Generation {
                    cached: cached.applied_generation,
                    signed: 0,
                })
            }
        };
        if state.generation != cached.applied_generation {
            return Err(CacheRefusal::Generation {
                cached: cached.applied_generation,
                signed: state.generation,
            });
        }
        let body = crate::sign::signed_body(&state, cached.blob.as_deref().map(str::as_bytes))?;
        let executed: VecDeque<String> = cached
            .executed
            .iter()
            .filter(|id| state.commands.iter().any(|c| &c.id == *id))
            .cloned()
            .collect();
        if let Some(c) = state
            .commands
            .iter()
            .find(|c| c.expires_at >= now && !executed.contains(&c.id))
        {
            return Err(CacheRefusal::CommandNotRun(c.id.clone()));
        }
        let signed_stop = state
            .commands
            .iter()
            .rev()
            .filter(|c| executed.contains(&c.id))
            .filter_map(|c| match c.kind {
                CommandKind::StopAll => Some(true),
                CommandKind::Resume => Some(false),
                CommandKind::RestartPlugin | CommandKind::Snapshot | CommandKind::Unknown => None,
            })
            .next();
        if let Some(signed) = signed_stop.filter(|s| *s != cached.stopped) {
            return Err(CacheRefusal::Stopped {
                cached: cached.stopped,
                signed,
            });
        }
        Ok(ControlState {
            applied_generation: state.generation,
            envelope: cached.envelope,
            blob: cached.blob,
            body,
            stopped: cached.stopped,
            executed,
            desired_error: None,
            desired_revision: cached.desired_revision,
        })
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
                blob,
                revision,
            } => {
                let actions = self.accept(&state, *body, &raw);
                self.blob = blob.map(|b| String::from_utf8_lossy(&b).into_owned());
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
                CommandKind::Unknown => tracing::warn!(
                    "command {}: a kind this agent does not know (the control plane is newer); \
                     not run",
                    cmd.id
                ),
                CommandKind::Snapshot => match &cmd.plugin {
                    Some(p) => {
                        tracing::info!("command {}: snapshot of plugin {p}", cmd.id);
                        actions.snapshot.push(SnapshotRequest {
                            plugin: p.clone(),
                            command_id: cmd.id.clone(),
                        });
                    }
                    None => tracing::warn!("command {}: snapshot without a plugin name", cmd.id),
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

    #[test]
    fn a_command_kind_from_a_newer_control_plane_is_skipped_and_the_rest_applies() {
        let doc = r#"{"id":"n1","kind":"reboot_the_world","expires_at":"2999-01-01T00:00:00Z"}"#;
        let unknown: Command = serde_json::from_str(doc).unwrap();
        assert_eq!(unknown.kind, CommandKind::Unknown);
        let mut st = ControlState::default();
        let actions = st.accept(
            &state(5, vec![unknown, cmd("s", CommandKind::StopAll, 60)]),
            DesiredBody::default(),
            b"{}",
        );
        assert_eq!(actions, Actions::default());
        assert!(st.stopped, "the stop in the same document still ran");
        assert_eq!(st.applied_generation, 5);
        assert!(st.executed.contains(&"n1".to_owned()), "and is not retried");
    }

    #[test]
    fn a_snapshot_command_is_handed_on_once_with_its_id() {
        let mut c = ControlState::default();
        let mut nameless = cmd("s0", CommandKind::Snapshot, 60);
        nameless.plugin = None;
        let docs = [
            state(1, vec![cmd("s1", CommandKind::Snapshot, 60), nameless]),
            state(2, vec![cmd("s1", CommandKind::Snapshot, 60)]),
            state(3, vec![cmd("s3", CommandKind::Snapshot, -5)]),
        ];
        let actions: Vec<Actions> = docs
            .iter()
            .map(|d| c.accept(d, DesiredBody::default(), b"{}"))
            .collect();
        assert_eq!(
            actions[0].snapshot,
            vec![SnapshotRequest {
                plugin: "process".into(),
                command_id: "s1".into(),
            }],
            "the nameless one is logged and skipped"
        );
        assert!(actions[0].restart.is_empty());
        assert!(actions[1].snapshot.is_empty(), "already run");
        assert!(actions[2].snapshot.is_empty(), "expired");
        assert!(!c.stopped);
        assert_eq!(c.executed, ["s1", "s0"]);
    }

    #[test]
    fn a_cache_with_a_snapshot_command_loads_and_does_not_run_it_again() {
        let key = key();
        let docs = [state(
            2,
            vec![
                cmd("g2", CommandKind::StopAll, 60),
                cmd("g2s", CommandKind::Snapshot, 60),
            ],
        )];
        let c = cache(&key, &docs, None);
        let mut loaded = reload(&key, &c).unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.stopped, "a snapshot says nothing about stop_all");
        assert_eq!(loaded.executed, ["g2", "g2s"]);
        let again = loaded.accept(&docs[0], DesiredBody::default(), b"{}");
        assert_eq!(again, Actions::default());
    }

    /// A cache as the agent writes it: `docs` accepted in order, then saved.
    fn cache(key: &crate::SigningKey, docs: &[DesiredState], blob: Option<&[u8]>) -> ControlState {
        let mut c = ControlState::default();
        for d in docs {
            let raw = serde_json::to_vec(&key.sign(d)).unwrap_or_default();
            let body = crate::sign::signed_body(d, blob).unwrap_or_default();
            c.take(Update::Apply {
                state: Box::new(d.clone()),
                body: Box::new(body),
                raw,
                blob: blob.map(<[u8]>::to_vec),
                revision: 1,
            });
        }
        c
    }

    fn reload(key: &crate::SigningKey, c: &ControlState) -> Result<ControlState, CacheRefusal> {
        let bytes = serde_json::to_vec(c).unwrap_or_default();
        ControlState::from_cache(
            &bytes,
            &TrustedKeys::from_signing_key(key),
            "h",
            Timestamp::now(),
        )
    }

    fn key() -> crate::SigningKey {
        crate::SigningKey::generate().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_cache_the_agent_wrote_loads_back_with_its_settings() {
        let key = key();
        let blob = br#"{"log_level":"debug"}"#;
        let mut doc = state(5, vec![cmd("g5", CommandKind::StopAll, 60)]);
        doc.body_sha256 = Some(crate::sign::blob_hash(blob));
        let c = cache(&key, &[doc], Some(blob));
        let loaded = reload(&key, &c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.applied_generation, 5);
        assert!(loaded.stopped);
        assert_eq!(loaded.executed, ["g5"]);
        assert_eq!(loaded.body.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn an_unsigned_or_foreign_cache_is_refused() {
        let key = key();
        let unsigned =
            br#"{"applied_generation":18446744073709551615,"stopped":true,"executed":["g9"]}"#;
        let trusted = TrustedKeys::from_signing_key(&key);
        assert!(matches!(
            ControlState::from_cache(unsigned, &trusted, "h", Timestamp::now()),
            Err(CacheRefusal::Unsigned)
        ));
        let c = cache(
            &crate::SigningKey::generate().unwrap_or_else(|e| panic!("{e}")),
            &[state(3, vec![])],
            None,
        );
        assert!(
            matches!(reload(&key, &c), Err(CacheRefusal::Document(_))),
            "signed by an untrusted key"
        );
    }

    #[test]
    fn edited_local_fields_are_refused_or_recomputed() {
        let key = key();
        let docs = [
            state(4, vec![cmd("g4", CommandKind::StopAll, 60)]),
            state(
                6,
                vec![
                    cmd("g4", CommandKind::StopAll, 60),
                    cmd("g6", CommandKind::Resume, 60),
                ],
            ),
        ];
        let good = cache(&key, &docs, None);
        assert!(!good.stopped);

        let mut c = cache(&key, &docs, None);
        c.applied_generation = u64::MAX;
        assert!(matches!(
            reload(&key, &c),
            Err(CacheRefusal::Generation { signed: 6, .. })
        ));

        let mut c = cache(&key, &docs, None);
        c.stopped = true;
        assert!(matches!(
            reload(&key, &c),
            Err(CacheRefusal::Stopped { signed: false, .. })
        ));

        let mut c = cache(&key, &docs, None);
        c.executed.retain(|id| id != "g6");
        assert!(matches!(reload(&key, &c), Err(CacheRefusal::CommandNotRun(id)) if id == "g6"));

        // Future command ids would block those commands forever: dropped.
        let mut c = cache(&key, &docs, None);
        c.executed.extend(["g7".to_owned(), "g1000".to_owned()]);
        let loaded = reload(&key, &c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.executed, ["g4", "g6"]);

        // A blob edited in the cache no longer matches the signed hash.
        let blob = br#"{"log_level":"info"}"#;
        let mut doc = state(8, vec![]);
        doc.body_sha256 = Some(crate::sign::blob_hash(blob));
        let mut c = cache(&key, &[doc], Some(blob));
        c.blob = Some(r#"{"log_level":"trace"}"#.to_owned());
        assert!(matches!(
            reload(&key, &c),
            Err(CacheRefusal::Document(Refusal::BlobMismatch(_)))
        ));
    }
}
