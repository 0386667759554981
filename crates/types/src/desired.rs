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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
