//! The real `hids-agent`, in a temporary directory of its own: standalone (events on
//! its stdout) or managed through an [`Etcd`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hids_types::status::AgentStatus;
use serde_json::Value;

use crate::{bin, Etcd};

pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    /// Every JSON line the agent printed (its stdout sink), across restarts.
    events: Arc<Mutex<Vec<Value>>>,
    /// Everything it logged (stderr), across restarts; also echoed as `agent: ...`.
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// A standalone agent: `extra` appended to a config that sets the state dir and a
    /// 1 s status interval.
    pub fn start(extra: &str) -> Agent {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// The same, in a given directory (to restart an agent on its old state).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Agent {
        // Its default plugin; checked here so a missing build says what to do.
        bin("hids-plugin-process");
        let state = dir.path().join("state");
        let config = format!("state_dir = {state:?}\nstatus_interval_secs = 1\n{extra}");
        Self::launch(dir, &config)
    }

    /// An agent steered through `etcd`, trusting `key`, whose one plugin, `process`, is a
    /// sleeping /bin/sleep (no root needed). `control_extra` is appended to its
    /// `[control]` section; the lease TTL is 5 s unless it sets one.
    pub fn managed(
        etcd: &Etcd,
        host_id: &str,
        labels: &[(&str, &str)],
        key: &Path,
        control_extra: &str,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        let ttl = if control_extra.contains("lease_ttl_secs") {
            ""
        } else {
            "lease_ttl_secs = 5\n"
        };
        let config = format!(
            "host_id = {host_id:?}\nstate_dir = {:?}\nstatus_interval_secs = 1\n\
             [supervisor]\nstop_timeout_ms = 1000\n\
             [labels]\n{labels}\n\
             [[plugins]]\nname = \"process\"\npath = \"/bin/sleep\"\nargs = [\"3600\"]\n\
             [control]\nendpoints = [{:?}]\ntrusted_keys = [{:?}]\n{ttl}{control_extra}\n",
            dir.path().join("state"),
            etcd.url(),
            key
        );
        Self::launch(dir, &config)
    }

    fn launch(dir: tempfile::TempDir, config: &str) -> Agent {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let mut agent = Agent {
            child: None,
            dir,
            config: path,
            events: Arc::default(),
            stderr: Arc::default(),
        };
        agent.spawn();
        agent
    }

    /// Starts the agent process (again, after [`Agent::stop_with`]) on its config.
    pub fn spawn(&mut self) {
        let mut child = Command::new(bin("hids-agent"))
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let events = self.events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("agent printed a line that is not JSON ({e}): {line}")
                });
                events.lock().unwrap().push(v);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let log = self.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("agent: {line}");
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        self.child = Some(child);
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

    /// The local status file, as JSON (what tests assert on field by field).
    pub fn status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.state_dir().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The local status file as the agent's own type: a test that reads it this way
    /// fails to compile when a field it uses is renamed.
    pub fn typed_status(&self) -> Option<AgentStatus> {
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

    /// Plugin `name`'s entry in a status document.
    pub fn plugin<'a>(status: &'a Value, name: &str) -> &'a Value {
        status["plugins"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no plugin {name} in {status:#}"))
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Everything the agent logged so far.
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

    /// Sends `sig` to the agent, if it runs.
    pub fn signal(&self, sig: rustix::process::Signal) {
        if let Some(child) = &self.child {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Sends `sig` and waits for the agent to exit, however long it takes.
    pub fn stop_with(&mut self, sig: rustix::process::Signal) {
        self.signal(sig);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Waits for the agent to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first, so the agent cleans up (cgroups, its lease), then make sure.
        if let Some(Ok(None)) = self.child.as_mut().map(Child::try_wait) {
            self.signal(rustix::process::Signal::TERM);
            let _ = self.wait_exit(Duration::from_secs(5));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
