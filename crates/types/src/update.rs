//! How a self-update is going, as the status document reports it for each plugin and for
//! the agent itself (docs/updates.md). `hidsctl rollout` counts hosts from these fields.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Where one update stands. Reported with the version it is about (`target`), so a
/// rollout can tell this update's outcome from an earlier one's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The version the desired state names.
    pub target: String,
    pub phase: UpdatePhase,
    /// When this phase began.
    pub since: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    /// Waiting for this host's turn in the download spread (`hash(host_id)`), or to retry
    /// a download the server or the network failed (`update_error` says why).
    Waiting,
    Downloading,
    /// Installed and running; the health gate has not passed yet.
    Trial,
    /// Running and passed the health gate.
    Healthy,
    /// Not installed, and not retried soon (wrong bytes, refused entry, expired): the
    /// reason is in `update_error`; the running version keeps running.
    Failed,
    /// It ran and failed the health gate: the previous version runs again, and this one
    /// is marked bad on the host (see `rolled_back`).
    RolledBack,
}

impl UpdatePhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            UpdatePhase::Waiting => "waiting",
            UpdatePhase::Downloading => "downloading",
            UpdatePhase::Trial => "trial",
            UpdatePhase::Healthy => "healthy",
            UpdatePhase::Failed => "failed",
            UpdatePhase::RolledBack => "rolled_back",
        }
    }

    /// The update is over, one way or the other: what a rollout waits for.
    pub fn settled(&self) -> bool {
        matches!(
            self,
            UpdatePhase::Healthy | UpdatePhase::Failed | UpdatePhase::RolledBack
        )
    }
}

/// The last automatic rollback.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rollback {
    /// The version that failed (now marked bad on this host).
    pub from: String,
    /// The version running again; `None`: the build the host's own configuration names.
    pub to: Option<String>,
    /// `3 exits within 60 s`, `not healthy within 300 s`, ...
    pub reason: String,
    pub at: Timestamp,
}
