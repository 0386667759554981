//! Runs the real `hids-agent` binary in a temporary state directory.
#![allow(dead_code, clippy::unwrap_used)] // test harness: a failure here is a failed test

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A test that cannot run on this machine. Outside CI it says why on stderr, records the
/// skip in the file named by `HIDS_TEST_SKIPS` (scripts/test counts them at the end,
/// since `cargo test` hides a passing test's output) and the test passes. Under `CI`
/// (root on a BTF kernel, where everything can run) a skip is a failure: a green run
/// must mean the capture, the guard and eBPF were tested.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run here ({reason}), and CI must run every test");
    }
    eprintln!("skipped: {test}: {reason}");
    if let Some(path) = std::env::var_os("HIDS_TEST_SKIPS") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// Skips (see [`skip`]) unless `$cond` holds.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $reason:expr) => {
        if !$cond {
            common::skip($reason);
            return;
        }
    };
}

/// Skips (see [`skip`]) a test that needs root (the kernel's process events).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::skip_unless!(common::is_root(), "needs root for the proc connector")
    };
}

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hids-agent"))
}

pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts the agent with `extra` appended to a config that sets the state dir and
    /// a 1 s status interval.
    pub fn start(extra: &str) -> Agent {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// The same, in a given directory (to restart an agent on its old state).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Agent {
        let plugin = agent_bin().with_file_name("hids-plugin-process");
        assert!(
            plugin.exists(),
            "{} is missing: run `cargo build --workspace` before the tests",
            plugin.display()
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\nstatus_interval_secs = 1\n{extra}",
                dir.path().join("state")
            ),
        )
        .unwrap();
        let mut child = Command::new(agent_bin())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("agent printed a line that is not JSON ({e}): {line}")
                });
                sink.lock().unwrap().push(v);
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = stderr_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("agent: {line}");
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Agent {
            child,
            dir,
            lines,
            stderr: stderr_text,
        }
    }

    /// Waits until the built-in process plugin has said hello (it is capturing).
    pub fn wait_process_ready(&self) {
        self.wait_status(
            "the process plugin to say hello",
            Duration::from_secs(10),
            |s| Agent::plugin(s, "process")["framed"] == true,
        );
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.state_dir().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until the status satisfies `pred`, returning it; panics after `timeout`.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
                if start.elapsed() > timeout {
                    panic!("timed out waiting for {what}; last status: {s:#}");
                }
            } else if start.elapsed() > timeout {
                panic!("timed out waiting for {what}; no status file");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn plugin<'a>(status: &'a Value, name: &str) -> &'a Value {
        status["plugins"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no plugin {name} in {status:#}"))
    }

    pub fn events(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Takes the agent's directory (its state, spool) for a restarted agent to reuse.
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn stderr_contains_soon(&self, text: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.stderr().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Waits until `pred` holds for the events seen so far.
    pub fn wait_events(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            if start.elapsed() > timeout {
                panic!("timed out waiting for {what}; {} events seen", events.len());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for the agent to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first, so the agent cleans up (cgroups), then make sure.
        if let Ok(None) = self.child.try_wait() {
            self.signal(rustix::process::Signal::TERM);
            let _ = self.wait_exit(Duration::from_secs(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of all processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for pid in hids_procfs::list_pids("/proc").unwrap_or_default() {
        let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Ok(s) = hids_procfs::parse_stat(&stat) {
            if s.pgrp == pgid && s.state != b'Z' {
                members.push(pid);
            }
        }
    }
    members
}

pub fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|b| hids_procfs::parse_stat(&b).ok())
        .is_some_and(|s| s.state != b'Z')
}

/// A tag unique to this test run, for matching our own processes' events.
pub fn tag() -> String {
    hids_wire::new_run_id()[..10].to_owned()
}

/// A Kafka-protocol broker (tansu) on a free loopback port. Storage is SQLite in a
/// temporary directory, so a restarted broker keeps its data.
pub struct Broker {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    pub fn start() -> Broker {
        let mut b = Broker {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        };
        b.spawn();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // tansu resolves a sqlite:// path from its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tansu runs (cargo install tansu --locked --features dynostore,libsql)");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {}: {}",
                self.addr(),
                std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn create_topic(&self, name: &str) {
        let out = Command::new("tansu")
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", self.addr()),
                "--partitions",
                "1",
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the broker neither accepts nor refuses, as a hung broker or a network
    /// black hole would.
    pub fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    pub fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let child = self.child.as_ref().expect("the broker runs");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Every message of `topic` (one partition) from its beginning, parsed.
    pub fn messages(&self, topic: &str) -> Vec<Value> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .set("group.id", format!("test-{}", tag()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let start = Instant::now();
        let mut next = low;
        while next < high {
            assert!(start.elapsed() < Duration::from_secs(60), "reading {topic}");
            let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let msg = msg.unwrap();
            next = msg.offset() + 1;
            if let Some(v) = msg.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                out.push(v);
            }
        }
        out
    }

    /// `hidsctl reconcile --json` over `topic`.
    pub fn reconcile(&self, topic: &str) -> Value {
        let hidsctl = agent_bin().with_file_name("hidsctl");
        let out = Command::new(hidsctl)
            .args([
                "reconcile",
                "--brokers",
                &self.addr(),
                "--topic",
                topic,
                "--json",
                "--timeout",
                "60s",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "reconcile: {e}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
