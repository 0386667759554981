//! User and group names from `/etc/passwd` and `/etc/group`, reloaded when the files
//! change. Local files only: resolving through NSS (LDAP, SSSD) could block the
//! enrichment thread on the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Bound on names kept per file; hosts with more local accounts than this get ids only
/// for the rest.
const MAX_NAMES: usize = 65_536;
const RECHECK: Duration = Duration::from_secs(5);

pub struct Names {
    path: &'static str,
    by_id: HashMap<u32, Arc<str>>,
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Names {
    pub fn new(path: &'static str) -> Self {
        let mut names = Names {
            path,
            by_id: HashMap::new(),
            mtime: None,
            checked: None,
        };
        names.refresh();
        names
    }

    pub fn get(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(|name| &**name)
    }

    /// Rereads the file if it changed; checked at most every few seconds. Called on the
    /// enrichment thread's tick, not per lookup (a clock read per name adds up in a storm).
    pub fn refresh(&mut self) {
        if self.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return;
        }
        self.checked = Some(Instant::now());
        let mtime = std::fs::metadata(self.path).and_then(|m| m.modified()).ok();
        if mtime == self.mtime {
            return;
        }
        self.mtime = mtime;
        self.by_id.clear();
        if let Ok(bytes) = std::fs::read(self.path) {
            for (name, id) in hids_procfs::parse_id_file(&bytes).take(MAX_NAMES) {
                self.by_id.entry(id).or_insert_with(|| Arc::from(name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named() {
        let users = Names::new("/etc/passwd");
        assert_eq!(users.get(0), Some("root"));
        assert_eq!(users.get(4_000_000_000), None);
    }
}
