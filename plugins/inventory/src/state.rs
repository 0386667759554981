//! What the plugin last sent, kept in its state directory across restarts: so an
//! unchanged inventory goes out as its hash alone, and a changed one as added, removed
//! and upgraded packages.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use hids_types::package::Package;
use serde::{Deserialize, Serialize};

const FILE: &str = "inventory.json";
/// A state file larger than this is not ours: ignored (the next inventory is sent whole).
const MAX_STATE_BYTES: u64 = 256 << 20;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Sent {
    /// The hash of the inventory last sent whole.
    pub hash: String,
    /// Unix seconds when it was last sent whole.
    pub full_at: u64,
    /// Its packages, sorted.
    pub packages: Vec<Package>,
}

pub struct StateFile {
    path: Option<PathBuf>,
}

impl StateFile {
    /// `dir` None: nothing is remembered (a plugin run by hand, or a master that gave
    /// no state directory); every inventory is then sent whole.
    pub fn new(dir: Option<&Path>) -> StateFile {
        StateFile {
            path: dir.map(|d| d.join(FILE)),
        }
    }

    /// The last inventory sent; None when there is none or the file is unreadable
    /// (logged: the next inventory is then sent whole, which heals it).
    pub fn load(&self) -> Option<Sent> {
        let path = self.path.as_ref()?;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("{}: {e}; the next inventory is sent whole", path.display());
                return None;
            }
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.take(MAX_STATE_BYTES).read_to_end(&mut bytes) {
            tracing::warn!("{}: {e}; the next inventory is sent whole", path.display());
            return None;
        }
        match serde_json::from_slice(&bytes) {
            Ok(sent) => Some(sent),
            Err(e) => {
                tracing::warn!(
                    "{}: not a state file ({e}); the next inventory is sent whole",
                    path.display()
                );
                None
            }
        }
    }

    /// Writes it whole or not at all (temporary file, fsync, rename).
    pub fn save(&self, sent: &Sent) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(sent).map_err(io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_state_file_means_send_whole_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(Some(dir.path()));
        assert!(state.load().is_none());
        state
            .save(&Sent {
                hash: "ab".into(),
                full_at: 7,
                packages: vec![],
            })
            .unwrap();
        assert_eq!(state.load().unwrap().hash, "ab");
        std::fs::write(dir.path().join(FILE), b"{\"hash\": tru").unwrap();
        assert!(state.load().is_none());
        assert!(StateFile::new(None).load().is_none());
        StateFile::new(None).save(&Sent::default()).unwrap();
    }
}
