//! The etcd key layout, defined once. Every key lives under a prefix (default
//! `/hids/v1/`) so several deployments, or a future v2 layout, can share a cluster.

/// The default prefix of every key.
pub const DEFAULT_PREFIX: &str = "/hids/v1/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// A layout under `prefix` (a trailing `/` is added when missing).
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `agents/`: presence and status of every online agent (each key on its lease).
    pub fn agents(&self) -> String {
        format!("{}agents/", self.prefix)
    }

    pub fn agent(&self, host_id: &str) -> String {
        format!("{}agents/{host_id}", self.prefix)
    }

    /// `desired/`: the signed desired state of each host; the only key an agent watches.
    pub fn desired_dir(&self) -> String {
        format!("{}desired/", self.prefix)
    }

    pub fn desired(&self, host_id: &str) -> String {
        format!("{}desired/{host_id}", self.prefix)
    }

    /// `blobs/`: payloads shared by many desired states, by SHA-256.
    pub fn blobs(&self) -> String {
        format!("{}blobs/", self.prefix)
    }

    pub fn blob(&self, sha256_hex: &str) -> String {
        format!("{}blobs/{sha256_hex}", self.prefix)
    }

    /// `history/`: one record per change, written in the change's transaction.
    pub fn history_dir(&self) -> String {
        format!("{}history/", self.prefix)
    }

    /// Records sort by time: the id starts with zero-padded nanoseconds.
    pub fn history(&self, record_id: &str) -> String {
        format!("{}history/{record_id}", self.prefix)
    }

    /// `rollouts/`: one record per staged rollout (`hidsctl rollout`), its settings,
    /// waves and progress.
    pub fn rollouts(&self) -> String {
        format!("{}rollouts/", self.prefix)
    }

    /// Ids sort by start time, so the latest rollout is the last key.
    pub fn rollout(&self, id: &str) -> String {
        format!("{}rollouts/{id}", self.prefix)
    }

    /// `gateways/`: one report per running watch gateway, on the gateway's lease.
    pub fn gateways(&self) -> String {
        format!("{}gateways/", self.prefix)
    }

    pub fn gateway(&self, name: &str) -> String {
        format!("{}gateways/{name}", self.prefix)
    }

    /// The fleet-wide generation counter.
    pub fn generation(&self) -> String {
        format!("{}meta/generation", self.prefix)
    }

    /// The host id at the end of a key under `dir` (`agents/` or `desired/`).
    pub fn host_of<'a>(&self, dir: &str, key: &'a [u8]) -> Option<&'a str> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(dir)
            .filter(|h| !h.is_empty() && !h.contains('/'))
    }
}

/// Longest host id: a fully qualified host name fits (253), and etcd user and role
/// names built from it stay short.
pub const MAX_HOST_ID_LEN: usize = 253;

/// Why a host id cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostIdError {
    #[error("host id is empty")]
    Empty,
    #[error("host id {0:?} is longer than {MAX_HOST_ID_LEN} characters")]
    TooLong(String),
    #[error(
        "host id {0:?}: use letters, digits, '.', '-', '_' and ':', starting with a letter or digit \
         (it becomes an etcd key, an etcd user name and a file name)"
    )]
    Charset(String),
}

/// Checks a host id before it becomes a key name (`agents/<id>`), an etcd user and role
/// name (`hids-host-<id>`) and a file name (`<id>.toml`). Machine ids (32 hex digits) and
/// host names pass; `/`, spaces, a leading `.` or `-` (`..`, option-like names) do not.
///
/// # Errors
/// Which rule the id breaks.
pub fn check_host_id(id: &str) -> Result<(), HostIdError> {
    let Some(first) = id.chars().next() else {
        return Err(HostIdError::Empty);
    };
    if id.len() > MAX_HOST_ID_LEN {
        return Err(HostIdError::TooLong(id.to_owned()));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if !first.is_ascii_alphanumeric() || !id.chars().all(allowed) {
        return Err(HostIdError::Charset(id.to_owned()));
    }
    Ok(())
}

/// The end of the range of all keys starting with `prefix` (etcd's prefix convention).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::default();
        assert_eq!(k.agent("h1"), "/hids/v1/agents/h1");
        assert_eq!(k.desired("h1"), "/hids/v1/desired/h1");
        assert_eq!(k.blob("ab"), "/hids/v1/blobs/ab");
        assert_eq!(k.rollout("r1"), "/hids/v1/rollouts/r1");
        assert_eq!(Keys::new("/x").agents(), "/x/agents/");
        assert_eq!(k.host_of(&k.agents(), b"/hids/v1/agents/h1"), Some("h1"));
        assert_eq!(k.host_of(&k.agents(), b"/hids/v1/agents/"), None);
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }

    #[test]
    fn host_ids_that_cannot_be_keys_users_or_files_are_refused() {
        for ok in [
            "3d1219c7c4c5404aaa1f6d2a48adfda4",
            "web-17.bj",
            "db_1:5432",
            "A",
        ] {
            assert_eq!(check_host_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_host_id(""), Err(HostIdError::Empty));
        for bad in [
            "a/b", "..", ".hidden", "-rf", "web 17", "tab\t", "naïve", "a*",
        ] {
            assert!(
                matches!(check_host_id(bad), Err(HostIdError::Charset(_))),
                "{bad}"
            );
        }
        let long = "a".repeat(MAX_HOST_ID_LEN + 1);
        assert!(matches!(check_host_id(&long), Err(HostIdError::TooLong(_))));
    }
}
