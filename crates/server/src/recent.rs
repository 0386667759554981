//! What each host did lately, for its page in the console: the last processes it ran
//! and what listens on it now, from the event stream this instance reads. Kept in memory
//! under a byte budget (the hosts touched longest ago are forgotten first, and counted);
//! an instance knows only the hosts of the partitions it reads, and nothing from before
//! its start.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::Value;

/// Processes kept per host, newest first.
pub const PROCESSES_PER_HOST: usize = 10;
/// Listeners kept per host: past this, new ones are not kept (and counted).
pub const LISTENERS_PER_HOST: usize = 256;
/// Longest command line kept (bytes); longer ones are cut at a character boundary.
const MAX_COMMAND_BYTES: usize = 512;
/// Hosts forgotten at once when over budget: a scan for the oldest is amortised over
/// them.
const EVICT_FRACTION: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub at: String,
    pub pid: u64,
    pub user: String,
    pub executable: String,
    pub command_line: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub transport: String,
    pub address: String,
    pub port: u64,
    pub process: String,
    pub pid: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Activity {
    pub processes: VecDeque<Process>,
    /// By socket (network namespace, inode).
    pub listeners: BTreeMap<(u64, u64), Listener>,
    /// The network plugin's run: a new run re-reports every listener.
    network_run: String,
    touched: u64,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    hosts: HashMap<Box<str>, Activity>,
    bytes: usize,
    clock: u64,
}

/// Recent activity per host, under a byte budget.
pub struct Recent {
    inner: Mutex<Inner>,
    budget: usize,
    /// Hosts forgotten to stay within the budget.
    pub hosts_forgotten: AtomicU64,
    /// Listeners not kept: a host over [`LISTENERS_PER_HOST`].
    pub listeners_dropped: AtomicU64,
}

impl Recent {
    pub fn new(budget_bytes: usize) -> Recent {
        Recent {
            inner: Mutex::default(),
            budget: budget_bytes,
            hosts_forgotten: AtomicU64::new(0),
            listeners_dropped: AtomicU64::new(0),
        }
    }

    /// Takes what matters of one event (exec, listening, listener_closed).
    pub fn observe(&self, host_id: &str, event: &Value) {
        let action = event.pointer("/event/action").and_then(Value::as_str);
        if !matches!(action, Some("exec" | "listening" | "listener_closed")) {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.clock += 1;
        let clock = inner.clock;
        let activity = inner.hosts.entry(host_id.into()).or_default();
        let before = activity.bytes;
        activity.touched = clock;
        match action {
            Some("exec") => activity.exec(event),
            Some("listening") => {
                if !activity.listening(event) {
                    self.listeners_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => activity.closed(event),
        }
        activity.bytes = activity.size() + host_id.len();
        let after = activity.bytes;
        inner.bytes = inner.bytes.saturating_sub(before) + after;
        while inner.bytes > self.budget && !inner.hosts.is_empty() {
            let forgotten = inner.evict_oldest();
            self.hosts_forgotten
                .fetch_add(forgotten as u64, Ordering::Relaxed);
        }
    }

    /// A copy of one host's activity.
    pub fn host(&self, host_id: &str) -> Option<Activity> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.hosts.get(host_id).cloned()
    }

    /// Hosts kept and their bytes.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.hosts.len(), inner.bytes)
    }
}

impl Inner {
    /// Forgets the hosts touched longest ago, a fraction of them at once; returns how
    /// many.
    fn evict_oldest(&mut self) -> usize {
        let count = (self.hosts.len() / EVICT_FRACTION).max(1);
        let mut ages: Vec<u64> = self.hosts.values().map(|a| a.touched).collect();
        let cut = count.min(ages.len()).saturating_sub(1);
        let (_, &mut threshold, _) = ages.select_nth_unstable(cut);
        let before = self.hosts.len();
        let mut freed = 0;
        self.hosts.retain(|_, a| {
            let keep = a.touched > threshold;
            if !keep {
                freed += a.bytes;
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
        before - self.hosts.len()
    }
}

/// A string field, at most `max` bytes (cut at a character boundary) and allocated at
/// that size: an event's 256 KiB field never sits behind a short count.
fn text(event: &Value, pointer: &str, max: usize) -> String {
    let s = event
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn number(event: &Value, pointer: &str) -> u64 {
    event.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

impl Activity {
    fn exec(&mut self, event: &Value) {
        self.processes.push_front(Process {
            at: text(event, "/@timestamp", 40),
            pid: number(event, "/process/pid"),
            user: text(event, "/user/name", 64),
            executable: text(event, "/process/executable", MAX_COMMAND_BYTES),
            command_line: text(event, "/process/command_line", MAX_COMMAND_BYTES),
        });
        self.processes.truncate(PROCESSES_PER_HOST);
    }

    fn socket(event: &Value) -> (u64, u64) {
        (
            number(event, "/hids/socket/netns"),
            number(event, "/hids/socket/inode"),
        )
    }

    /// Returns false when the listener could not be kept (too many).
    fn listening(&mut self, event: &Value) -> bool {
        let run = text(event, "/hids/run_id", 64);
        if !run.is_empty() && run != self.network_run {
            // A new run of the plugin reports every listener again, from scratch.
            self.listeners.clear();
            self.network_run = run;
        }
        let key = Activity::socket(event);
        if self.listeners.len() >= LISTENERS_PER_HOST && !self.listeners.contains_key(&key) {
            return false;
        }
        self.listeners.insert(
            key,
            Listener {
                transport: text(event, "/network/transport", 16),
                address: text(event, "/source/ip", 64),
                port: number(event, "/source/port"),
                process: text(event, "/process/name", 64),
                pid: number(event, "/process/pid"),
            },
        );
        true
    }

    fn closed(&mut self, event: &Value) {
        self.listeners.remove(&Activity::socket(event));
    }

    /// Bytes held: the structs, their strings' capacity, and the map's nodes (a B-tree
    /// node per entry is an overestimate, as a budget should be).
    fn size(&self) -> usize {
        const NODE: usize = 48;
        let processes: usize = self
            .processes
            .iter()
            .map(|p| {
                std::mem::size_of::<Process>()
                    + p.at.capacity()
                    + p.user.capacity()
                    + p.executable.capacity()
                    + p.command_line.capacity()
            })
            .sum();
        let listeners: usize = self
            .listeners
            .values()
            .map(|l| {
                std::mem::size_of::<((u64, u64), Listener)>()
                    + NODE
                    + l.transport.capacity()
                    + l.address.capacity()
                    + l.process.capacity()
            })
            .sum();
        // A host's key and its slot in the hash map.
        std::mem::size_of::<Activity>()
            + 2 * std::mem::size_of::<usize>()
            + self
                .processes
                .capacity()
                .saturating_sub(self.processes.len())
                * std::mem::size_of::<Process>()
            + processes
            + listeners
            + self.network_run.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exec(n: u64) -> Value {
        json!({"@timestamp": "2026-11-30T10:00:00Z", "event": {"action": "exec"},
               "process": {"pid": n, "executable": "/usr/bin/true",
                           "command_line": format!("true {n}")},
               "user": {"name": "root"}})
    }

    fn listening(run: &str, inode: u64, port: u64) -> Value {
        json!({"event": {"action": "listening"}, "network": {"transport": "tcp"},
               "source": {"ip": "0.0.0.0", "port": port}, "process": {"name": "sshd", "pid": 7},
               "hids": {"run_id": run, "socket": {"netns": 1, "inode": inode}}})
    }

    #[test]
    fn the_last_processes_are_kept_newest_first() {
        let r = Recent::new(1 << 20);
        for n in 0..15 {
            r.observe("h1", &exec(n));
        }
        let a = r.host("h1").unwrap();
        assert_eq!(a.processes.len(), PROCESSES_PER_HOST);
        assert_eq!(a.processes[0].command_line, "true 14");
        assert!(r.host("h2").is_none());
    }

    #[test]
    fn listeners_follow_opens_closes_and_a_new_run() {
        let r = Recent::new(1 << 20);
        r.observe("h1", &listening("run1", 10, 22));
        r.observe("h1", &listening("run1", 11, 80));
        r.observe(
            "h1",
            &json!({"event": {"action": "listener_closed"},
                    "hids": {"socket": {"netns": 1, "inode": 11}}}),
        );
        let ports: Vec<u64> = r
            .host("h1")
            .unwrap()
            .listeners
            .values()
            .map(|l| l.port)
            .collect();
        assert_eq!(ports, [22]);
        // The plugin restarted: its first scan is the whole truth.
        r.observe("h1", &listening("run2", 12, 443));
        let ports: Vec<u64> = r
            .host("h1")
            .unwrap()
            .listeners
            .values()
            .map(|l| l.port)
            .collect();
        assert_eq!(ports, [443]);
    }

    #[test]
    fn listeners_past_the_cap_are_counted_not_kept() {
        let r = Recent::new(1 << 24);
        for i in 0..(LISTENERS_PER_HOST as u64 + 5) {
            r.observe("h1", &listening("run1", i, i));
        }
        assert_eq!(r.host("h1").unwrap().listeners.len(), LISTENERS_PER_HOST);
        assert_eq!(r.listeners_dropped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn the_budget_forgets_the_hosts_touched_longest_ago() {
        let r = Recent::new(200_000);
        for h in 0..2_000 {
            r.observe(&format!("host-{h}"), &exec(h));
        }
        let (hosts, bytes) = r.size();
        assert!(bytes <= 200_000, "{bytes}");
        assert!(hosts < 2_000);
        assert!(r.hosts_forgotten.load(Ordering::Relaxed) > 0);
        assert!(
            r.host("host-1999").is_some(),
            "the newest host was forgotten"
        );
        assert!(r.host("host-0").is_none(), "the oldest host was kept");
    }

    #[test]
    fn a_huge_field_is_kept_at_its_cap_and_counted_as_kept() {
        let r = Recent::new(1 << 20);
        let mut ev = listening("run1", 1, 22);
        ev["source"]["ip"] = json!("9".repeat(200_000));
        ev["process"]["name"] = json!("é".repeat(100_000));
        r.observe("h1", &ev);
        let a = r.host("h1").unwrap();
        let l = a.listeners.values().next().unwrap();
        assert_eq!(l.address.len(), 64);
        assert!(l.process.len() <= 64 && l.process.chars().all(|c| c == 'é'));
        let (_, bytes) = r.size();
        assert!(bytes < 2_000, "{bytes} bytes counted for one listener");
    }

    #[test]
    fn other_events_are_ignored() {
        let r = Recent::new(1 << 20);
        r.observe("h1", &json!({"event": {"action": "connect"}}));
        assert!(r.host("h1").is_none());
    }
}
