//! The process plugin run on its own, as from a terminal: events as JSON lines on
//! stdout, the log on stderr. The plugin SDK runs standalone when stdin is a terminal,
//! so the plugin is started behind a pseudo-terminal (python3's pty module: no unsafe
//! code here, and python3 is needed by these tests anyway).
//!
//! These tests need root, a kernel with BTF and python3. Elsewhere they say why and
//! pass (hids-test-support's `skip`: recorded in `HIDS_TEST_SKIPS`); under `CI` they fail.
#![allow(dead_code)] // each test file uses its own part of these helpers

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use hids_test_support::{execs_with_arg, skip};

/// Whether the eBPF capture can run here; if not, says why (see [`skip`]).
pub fn can_run() -> bool {
    if !rustix::process::geteuid().is_root() {
        skip("needs root to load eBPF programs");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        skip("this kernel has no BTF, so the eBPF backend cannot load");
        return false;
    }
    if !has_python3() {
        skip("needs python3 (Debian: apt-get install python3)");
        return false;
    }
    true
}

fn has_python3() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A name no other test run uses.
pub fn tag(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{what}-{}-{nanos}", std::process::id())
}

/// A name that is also a number of seconds, for sleep(1) to take as an argument: a
/// fraction of a second, with the digits of [`tag`].
pub fn seconds_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("0.{}{nanos:09}", std::process::id())
}

/// Starts `argv` with stdin on a new pseudo-terminal; the master end stays open in the
/// process, so the terminal is never hung up.
const ON_A_PTY: &str = "import os, pty, sys\n\
m, s = pty.openpty()\n\
os.set_inheritable(m, True)\n\
os.dup2(s, 0)\n\
os.close(s)\n\
os.execvp(sys.argv[1], sys.argv[1:])\n";

/// A running plugin and what it printed, each line with when it was read.
pub struct Plugin {
    child: Child,
    events: Arc<Mutex<Vec<(Instant, Value)>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Plugin {
    /// Starts the plugin with `args` and waits until it watches process events.
    pub fn start(args: &[&str]) -> Plugin {
        Plugin::start_under(&[], args)
    }

    /// Starts the plugin as `start` does, through the command `wrapper` (which must end
    /// by executing its arguments: the child's pid is then the plugin's).
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Plugin {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg("python3");
                c
            }
            None => Command::new("python3"),
        };
        let mut child = command
            .arg("-c")
            .arg(ON_A_PTY)
            .arg(env!("CARGO_BIN_EXE_hids-plugin-process"))
            .args(["--report-running", "false"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 starts the plugin");
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push((Instant::now(), v));
                }
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("plugin: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let plugin = Plugin { child, events, log };
        plugin.wait_log("watching process events", Duration::from_secs(30));
        plugin
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {timeout:?}: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `done` holds for the events read so far; returns them.
    pub fn wait_events(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "no {what} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn events(&self) -> Vec<Value> {
        let events = self.events.lock().unwrap();
        events.iter().map(|(_, v)| v.clone()).collect()
    }

    /// When the first event matching `pred` was read, if it was.
    pub fn seen_at(&self, pred: impl Fn(&Value) -> bool) -> Option<Instant> {
        let events = self.events.lock().unwrap();
        events.iter().find(|(_, v)| pred(v)).map(|(t, _)| *t)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events of `action` for process `pid`.
pub fn actions_of<'a>(events: &'a [Value], action: &str, pid: u32) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"]["action"] == action && e["process"]["pid"] == pid)
        .collect()
}

/// A scratch directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(tag(what));
        std::fs::create_dir_all(&dir).unwrap();
        // The kernel names the real path: /tmp may itself be a symlink.
        TempDir(std::fs::canonicalize(&dir).unwrap())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
