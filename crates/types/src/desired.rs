//! The desired state: what the control plane wants one agent to be. Written by `hidsctl`
//! under `desired/<host_id>`, signed; the only key an agent watches.
//!
//! The document travels as JSON text inside a [`SignedDocument`], and the signature
//! covers those exact bytes, so no canonical form is needed. Settings shared by many
//! hosts can live once in a blob (`blobs/<sha256>`), referenced from each host's document
//! by hash: the signature covers the hash, so the blob needs no signature of its own.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Version of the envelope format.
pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Increases with every change; an agent refuses a generation not above the one it
    /// applied. Assigned from one fleet-wide counter, so every push is above every
    /// earlier one for every host.
    pub generation: u64,
    /// The one host this document is for: a document copied to another host's key is
    /// refused.
    pub host_id: String,
    pub issued_at: Timestamp,
    /// Who pushed it (operator name, for the record).
    #[serde(default)]
    pub issued_by: String,
    /// The settings, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<DesiredBody>,
    /// Or the settings in `blobs/<sha256>`, shared by many hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// One-shot commands; each runs once (by id) unless expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Command>,
}

/// Settings the control plane can change. Absent fields leave the local configuration
/// as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Overrides for plugins, by name: a listed plugin takes these settings over the
    /// local configuration's; plugins not listed keep theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<DesiredPlugin>,
    /// Replaces the local `[guard]` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardConfig>,
    /// The agent's own build to run (self-update); absent: the installed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Box<Release>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredPlugin {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Executable for a plugin the local configuration does not declare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The build to run (self-update, docs/updates.md): its version, with `sha256` and
    /// `url`; absent, the local executable (or `path`) runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// A build the agent downloads, verifies against `sha256` before anything else, and runs
/// (docs/updates.md). The signature over the document covers the hash, so the download
/// itself needs no signature and any static server or object store can serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The version's name, as reported in the status (`plugins[].version`).
    pub version: String,
    /// SHA-256 of the executable, 64 hex digits.
    #[serde(default)]
    pub sha256: String,
    /// Where to fetch it: `http://` or `https://`.
    #[serde(default)]
    pub url: String,
    /// The download's size limit in bytes; absent: the agent's `update.max_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Hosts spread their downloads over this many seconds, each at its own
    /// `hash(host_id)` offset; absent: the agent's `update.spread_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_secs: Option<u64>,
    /// After this the entry starts no new update (the running build keeps running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl Release {
    /// What is wrong with the entry, if anything: such an entry is not acted on and the
    /// reason is reported.
    pub fn problem(&self) -> Option<String> {
        if self.version.is_empty() || self.version.len() > 64 {
            return Some("version must be 1 to 64 characters".into());
        }
        if !self
            .version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
        {
            return Some(format!(
                "version {:?}: only letters, digits and . _ + ~ - are allowed",
                self.version
            ));
        }
        if self.url.is_empty() {
            return Some(format!("version {} names no url", self.version));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Some(format!(
                "version {}: url {:?} is not http:// or https://",
                self.version, self.url
            ));
        }
        if self.sha256.is_empty() {
            return Some(format!("version {} names no sha256", self.version));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(format!(
                "version {}: sha256 must be 64 hex digits",
                self.version
            ));
        }
        None
    }
}

impl DesiredBody {
    /// What an agent would not act on in these settings, one line each: plugin names,
    /// build entries (a version without url or hash, ...), the agent's build. `hidsctl`
    /// refuses such settings before writing anything.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, entry) in self.plugins.iter().enumerate() {
            if let Some(p) = plugin_name_problem(&entry.name) {
                problems.push(p);
            }
            if let Err(p) = entry.release() {
                problems.push(format!("plugin {:?}: {p}", entry.name));
            }
            if self.plugins[..i].iter().any(|e| e.name == entry.name) {
                problems.push(format!("plugin {:?} is listed twice", entry.name));
            }
        }
        if let Some(p) = self.agent.as_ref().and_then(|r| r.problem()) {
            problems.push(format!("[agent]: {p}"));
        }
        problems
    }
}

/// What is wrong with a plugin name, if anything: 1-64 letters, digits, `-` or `_`, and
/// not one of the agent's own event streams. The name becomes a directory under the
/// agent's state (its state and its installed builds), so nothing else may pass.
pub fn plugin_name_problem(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Some(format!(
            "plugin name {name:?}: use 1-64 letters, digits, '-' or '_'"
        ));
    }
    if crate::event::MASTER_STREAMS.contains(&name) {
        return Some(format!(
            "plugin name {name:?} is the agent's own event stream; choose another name"
        ));
    }
    None
}

impl DesiredPlugin {
    /// The build this entry names, if any. An entry with `sha256`, `url` or a limit but
    /// no `version` is an error, as is a [`Release`] with a [`Release::problem`].
    ///
    /// # Errors
    /// What is wrong with the entry, for the status.
    pub fn release(&self) -> Result<Option<Release>, String> {
        let Some(version) = &self.version else {
            if self.sha256.is_some() || self.url.is_some() || self.max_bytes.is_some() {
                return Err("sha256 or url given without a version".into());
            }
            return Ok(None);
        };
        let release = Release {
            version: version.clone(),
            sha256: self.sha256.clone().unwrap_or_default(),
            url: self.url.clone().unwrap_or_default(),
            max_bytes: self.max_bytes,
            spread_secs: self.spread_secs,
            expires_at: self.expires_at,
        };
        match release.problem() {
            Some(p) => Err(p),
            None => Ok(Some(release)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Unique per command; an agent runs each id at most once.
    pub id: String,
    pub kind: CommandKind,
    /// The plugin a `restart_plugin` or `snapshot` command is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Not run after this time (a host that was offline for a day does not act on a
    /// day-old restart).
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Stop every plugin; the agent stays registered and controllable.
    StopAll,
    /// Undo `stop_all`.
    Resume,
    /// Restart the plugin named by [`Command::plugin`] (also out of quarantine).
    RestartPlugin,
    /// Ask the running plugin named by [`Command::plugin`] for a full snapshot now (the
    /// network plugin: every listener and connection with its owner), besides its
    /// periodic ones. An agent older than this refuses the whole document (unknown
    /// command kind), so push it only to agents that know it.
    Snapshot,
    /// A kind this agent does not know (a newer control plane): logged and not run, so
    /// that the rest of the document (a stop, new settings) still applies. Agents from
    /// before this variant refuse such a document instead.
    #[serde(other)]
    Unknown,
}

/// The signed envelope stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDocument {
    pub v: u32,
    /// First 8 bytes of SHA-256 of the signing public key, hex: which trusted key to use.
    pub key_id: String,
    /// Ed25519 signature of `doc`'s bytes, hex.
    pub sig: String,
    /// The [`DesiredState`] as JSON text.
    pub doc: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_an_agent_would_not_act_on_are_named() {
        let body: DesiredBody = serde_json::from_value(serde_json::json!({
            "plugins": [
                {"name": "demo", "version": "2", "url": "https://builds.example/demo-2"},
                {"name": "../etc"},
                {"name": "demo"}
            ],
            "agent": {"version": "9", "url": "http://x/agent", "sha256": "abc"}
        }))
        .unwrap();
        let problems = body.problems().join("\n");
        assert!(problems.contains("names no sha256"), "{problems}");
        assert!(problems.contains("\"../etc\""), "{problems}");
        assert!(problems.contains("listed twice"), "{problems}");
        assert!(
            problems.contains("[agent]: version 9: sha256 must be 64 hex"),
            "{problems}"
        );
        let fine: DesiredBody = serde_json::from_value(
            serde_json::json!({"plugins": [{"name": "process", "enabled": false}]}),
        )
        .unwrap();
        assert!(fine.problems().is_empty());
    }
}
