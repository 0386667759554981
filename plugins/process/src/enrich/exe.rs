//! The executable's path when `/proc` cannot say: the path given to execve, resolved
//! the way `/proc/<pid>/exe` would show it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hids_procfs as procfs;

use super::facts::lossy;

/// Resolves the path given to execve the way `/proc/<pid>/exe` would show it (symlinks
/// followed: `/bin/sh` is `/usr/bin/dash`), for processes gone before `/proc` could say.
/// Only for processes in our own pid namespace (a container's paths are not ours to
/// resolve) and absolute paths. Cached, bounded, and forgotten every minute so a changed
/// symlink is seen.
pub struct ExePaths {
    own_pid_ns: Option<u64>,
    cache: HashMap<Vec<u8>, Option<Arc<str>>>,
    cleared: Instant,
}

impl ExePaths {
    const MAX: usize = 4096;

    pub fn new(proc_root: &str) -> Self {
        let own_pid_ns = std::fs::read_link(format!("{proc_root}/self/ns/pid"))
            .ok()
            .and_then(|l| procfs::parse_ns_link(l.as_os_str().as_encoded_bytes()));
        ExePaths {
            own_pid_ns,
            cache: HashMap::new(),
            cleared: Instant::now(),
        }
    }

    pub fn resolve(&mut self, given: &[u8], pid_ns: u32) -> Option<String> {
        if given.is_empty() {
            return None;
        }
        let ours = self.own_pid_ns == Some(u64::from(pid_ns));
        if !ours || !given.starts_with(b"/") {
            return Some(lossy(given));
        }
        // Looked up before the entry API, which would copy the key on every hit.
        let resolved = match self.cache.get(given) {
            Some(hit) => hit.clone(),
            None => {
                if self.cache.len() >= Self::MAX {
                    self.cache.clear();
                }
                let path = std::path::Path::new(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(given),
                );
                let resolved = std::fs::canonicalize(path)
                    .ok()
                    .map(|p| Arc::from(p.to_string_lossy().as_ref()));
                self.cache.insert(given.to_vec(), resolved.clone());
                resolved
            }
        };
        Some(resolved.map_or_else(|| lossy(given), |r| r.to_string()))
    }

    /// Called once a second, not per lookup: forgets every path after a minute, so a
    /// changed symlink is seen.
    pub fn expire(&mut self) {
        if self.cleared.elapsed() >= Duration::from_secs(60) {
            self.cache.clear();
            self.cleared = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_ns(paths: &ExePaths) -> u32 {
        paths.own_pid_ns.map_or(0, |ns| ns as u32)
    }

    #[test]
    fn own_namespace_paths_are_resolved_like_proc_exe() {
        let dir = std::env::temp_dir().join(format!("exe-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("sh");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/proc/self/exe", &link).unwrap();
        let mut paths = ExePaths::new("/proc");
        let ns = own_ns(&paths);
        let given = link.as_os_str().as_encoded_bytes();
        let me = std::fs::canonicalize("/proc/self/exe").unwrap();
        assert_eq!(paths.resolve(given, ns), Some(me.display().to_string()));
        // Cached: the answer stays until the cache is cleared.
        std::fs::remove_file(&link).unwrap();
        assert_eq!(paths.resolve(given, ns), Some(me.display().to_string()));
        std::fs::remove_dir(&dir).unwrap();
        // What does not exist is reported as given.
        assert_eq!(
            paths.resolve(b"/nonexistent/x", ns).as_deref(),
            Some("/nonexistent/x")
        );
    }

    #[test]
    fn other_namespaces_relative_paths_and_nothing_are_reported_as_given() {
        let mut paths = ExePaths::new("/proc");
        let other = own_ns(&paths).wrapping_add(1);
        assert_eq!(
            paths.resolve(b"/proc/self/exe", other).as_deref(),
            Some("/proc/self/exe")
        );
        let ns = own_ns(&paths);
        assert_eq!(paths.resolve(b"./run", ns).as_deref(), Some("./run"));
        assert_eq!(paths.resolve(b"", ns), None);
    }
}
