//! What a change asks for, taken from the command line before any work (ripgrep's
//! `HiArgs`): the signing key loaded, the target checked, the settings file parsed.

use std::path::Path;
use std::time::Duration;

use hids_control::select::Target;
use hids_control::SigningKey;
use hids_types::desired::{CommandKind, DesiredBody};

/// New settings, or a command.
pub enum Change {
    Settings(DesiredBody),
    Command(CommandKind, Option<String>),
}

impl Change {
    /// The settings of `push --file FILE`.
    ///
    /// # Errors
    /// When the file cannot be read, is not desired settings (TOML), or names what an
    /// agent would not act on (a build without url or hash, a bad plugin name).
    pub fn settings_from(file: &Path) -> anyhow::Result<Change> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let body: DesiredBody = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
        let problems = body.problems();
        if !problems.is_empty() {
            anyhow::bail!(
                "{}: {} (nothing was written)",
                file.display(),
                problems.join("; ")
            );
        }
        Ok(Change::Settings(body))
    }

    /// The name the history and the summary give it.
    pub fn action(&self) -> String {
        match self {
            Change::Settings(_) => "push".into(),
            Change::Command(kind, plugin) => match (kind, plugin) {
                (CommandKind::StopAll, _) => "stop".into(),
                (CommandKind::Resume, _) => "resume".into(),
                (CommandKind::RestartPlugin, p) => {
                    format!("restart-plugin {}", p.as_deref().unwrap_or("?"))
                }
                (CommandKind::Snapshot, p) => {
                    format!("snapshot {}", p.as_deref().unwrap_or("?"))
                }
                (CommandKind::Unknown, _) => "unknown command".into(),
            },
        }
    }
}

/// One change, as the operator asked for it.
pub struct Request {
    /// The key that signs every document.
    pub key: SigningKey,
    /// Who makes the change, for the history.
    pub operator: String,
    pub target: Target,
    pub change: Change,
    /// How long to wait for acknowledgements; `None`: do not wait.
    pub wait: Option<Duration>,
    /// Print the outcome as JSON (and draw no progress bars).
    pub json: bool,
}
