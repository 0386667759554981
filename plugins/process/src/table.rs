//! The process table: what we know of every live process (and of recently exited ones),
//! so an exec can name its parent even after the parent is gone.
//!
//! Built from a `/proc` scan at start and kept current by fork, exec and exit events.
//! Bounded: at `max_entries`, exited processes go first, then the oldest known; every
//! eviction is counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hids_procfs::{list_pids, parse_cmdline, parse_stat, ProcDir};

/// How much of a command line the table keeps per process. Parents are named for
/// attribution, not reproduced in full: this bounds the table at a few hundred bytes
/// per process.
pub const KEPT_ARGS_BYTES: usize = 512;

#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub ppid: u32,
    pub start_ticks: Option<u64>,
    pub name: Option<Arc<str>>,
    pub exe: Option<Arc<str>>,
    /// The first arguments, up to [`KEPT_ARGS_BYTES`]. Shared with forked children,
    /// which run the same image until they exec.
    pub args: Option<Arc<[String]>>,
    pub exited_at: Option<Instant>,
    /// Whether it ever forked. One that did not can never be named as a parent after
    /// it exits (its fork events would have come first), so it is forgotten at once.
    pub forked: bool,
}

impl Entry {
    pub fn entity_id(&self, pid: u32) -> Option<String> {
        self.start_ticks.map(|s| format!("{pid}-{s}"))
    }
}

pub struct Table {
    map: HashMap<u32, Entry>,
    max_entries: usize,
    linger: Duration,
    pub evicted: u64,
}

impl Table {
    pub fn new(max_entries: usize, linger: Duration) -> Self {
        Table {
            map: HashMap::new(),
            max_entries: max_entries.max(16),
            linger,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, pid: u32) -> Option<&Entry> {
        self.map.get(&pid)
    }

    /// Fills the table from `/proc`. Processes that vanish mid-scan are skipped.
    pub fn scan(&mut self, proc_root: &str) {
        let Ok(pids) = list_pids(proc_root) else {
            tracing::warn!(
                "cannot list {proc_root}: parents of already running processes will be unnamed"
            );
            return;
        };
        let mut buf = Vec::new();
        for pid in pids {
            let Ok(dir) = ProcDir::open(proc_root, pid) else {
                continue;
            };
            let Ok(_) = dir.read("stat", &mut buf, 4096) else {
                continue;
            };
            let Ok(stat) = parse_stat(&buf) else { continue };
            let exe = dir
                .read_link("exe")
                .ok()
                .map(|b| Arc::from(String::from_utf8_lossy(&b).as_ref()));
            let args = dir
                .read("cmdline", &mut buf, KEPT_ARGS_BYTES)
                .ok()
                .map(|_| keep_args(parse_cmdline(&buf)));
            self.insert(
                pid,
                Entry {
                    ppid: stat.ppid,
                    start_ticks: Some(stat.start_ticks),
                    name: Some(Arc::from(stat.comm.as_str())),
                    exe,
                    args,
                    exited_at: None,
                    // Unknown for processes found by the scan: assume children.
                    forked: true,
                },
            );
        }
    }

    /// A new process: it runs its parent's image until it execs.
    pub fn fork(&mut self, parent: u32, child: u32) {
        let mut entry = match self.map.get_mut(&parent) {
            Some(p) => {
                p.forked = true;
                p.clone()
            }
            None => Entry::default(),
        };
        entry.ppid = parent;
        entry.start_ticks = None;
        entry.exited_at = None;
        entry.forked = false;
        self.insert(child, entry);
    }

    pub fn exec(&mut self, pid: u32, entry: Entry) {
        self.insert(pid, entry);
    }

    /// A process exited: kept for `linger` if it has children that may still name it,
    /// forgotten at once otherwise. This keeps the table small in an exec storm.
    pub fn exit(&mut self, pid: u32) {
        match self.map.get_mut(&pid) {
            Some(e) if e.forked => e.exited_at = Some(Instant::now()),
            Some(_) => {
                self.map.remove(&pid);
            }
            None => {}
        }
    }

    /// Forgets processes that exited more than `linger` ago.
    pub fn sweep(&mut self) {
        let linger = self.linger;
        self.map
            .retain(|_, e| e.exited_at.is_none_or(|t| t.elapsed() < linger));
    }

    fn insert(&mut self, pid: u32, entry: Entry) {
        if self.map.len() >= self.max_entries && !self.map.contains_key(&pid) {
            self.make_room();
        }
        self.map.insert(pid, entry);
    }

    fn make_room(&mut self) {
        let before = self.map.len();
        self.map.retain(|_, e| e.exited_at.is_none());
        if self.map.len() >= self.max_entries {
            // Still full of live processes: drop an arbitrary tenth rather than one at a
            // time, so a table at its bound does not pay this on every insert.
            let drop: Vec<u32> = self
                .map
                .keys()
                .take(self.max_entries / 10 + 1)
                .copied()
                .collect();
            for pid in drop {
                self.map.remove(&pid);
            }
        }
        self.evicted += (before - self.map.len()) as u64;
    }
}

/// Keeps the leading arguments that fit in [`KEPT_ARGS_BYTES`].
pub fn keep_args(args: Vec<String>) -> Arc<[String]> {
    let mut total = 0;
    let mut kept = Vec::new();
    for a in args {
        total += a.len() + 1;
        if total > KEPT_ARGS_BYTES && !kept.is_empty() {
            break;
        }
        kept.push(a);
    }
    kept.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Entry {
        Entry {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn fork_inherits_the_parent_image_and_exit_lingers() {
        let mut t = Table::new(100, Duration::from_secs(60));
        t.exec(10, named("bash"));
        t.fork(10, 11);
        assert_eq!(t.get(11).unwrap().ppid, 10);
        assert_eq!(t.get(11).unwrap().name.as_deref(), Some("bash"));
        t.exit(10);
        t.sweep();
        assert!(
            t.get(10).is_some(),
            "an exited parent is still named for a while"
        );
    }

    #[test]
    fn bounded_with_exited_evicted_first() {
        let mut t = Table::new(16, Duration::from_secs(60));
        for pid in 0..16 {
            t.exec(pid, named("x"));
        }
        t.fork(3, 2);
        t.exit(3);
        t.exec(100, named("y"));
        assert_eq!(t.len(), 16);
        assert!(t.get(3).is_none());
        assert_eq!(t.evicted, 1);
        for pid in 200..300 {
            t.exec(pid, named("z"));
        }
        assert!(t.len() <= 16);
    }

    #[test]
    fn kept_args_are_bounded() {
        let kept = keep_args(vec!["a".repeat(400), "b".repeat(400), "c".into()]);
        assert_eq!(kept.len(), 1);
        let huge = keep_args(vec!["a".repeat(10_000)]);
        assert_eq!(huge.len(), 1, "the program name is always kept");
    }

    #[test]
    fn scan_finds_this_process() {
        let mut t = Table::new(100_000, Duration::from_secs(60));
        t.scan("/proc");
        let me = t.get(std::process::id()).unwrap();
        assert!(me.exe.is_some());
        assert!(me.start_ticks.is_some());
    }
}
