//! The fleet simulator, `hids-sim`: many agent sessions against one etcd.

use std::process::{Child, Command};
use std::time::Duration;

use crate::{bin, Etcd};

/// A running `hids-sim`, READY (all its agents registered).
pub struct Sim {
    child: Child,
    pub ready_line: String,
    /// The last counters line (`online=... registered=... disconnects=...`), printed
    /// every `--report`.
    report: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Sim {
    pub fn start(etcd: &Etcd, agents: usize, extra: &[&str]) -> Sim {
        Sim::start_at(&etcd.url(), agents, extra)
    }

    /// Agents whose control endpoint is `url` (etcd, or a `hids-gateway`).
    pub fn start_at(url: &str, agents: usize, extra: &[&str]) -> Sim {
        use std::io::BufRead;
        let mut child = Command::new(bin("hids-sim"))
            .arg("--endpoints")
            .arg(url)
            .arg("--agents")
            .arg(agents.to_string())
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let report = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let last = report.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("READY") {
                    let _ = tx.send(line);
                } else if line.starts_with("online=") {
                    *last.lock().unwrap() = line;
                }
            }
        });
        let ready_line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("hids-sim did not print READY within 60 s");
        Sim {
            child,
            ready_line,
            report,
        }
    }

    /// A counter from the last `--report` line (`registered`, `disconnects`, ...).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let line = self.report.lock().unwrap().clone();
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// SIGKILL: no lease revoked, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits for the exit (leases revoked on the way out).
    pub fn stop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
