//! The fleet simulator, `hids-sim`: many agent sessions against one etcd.

use std::process::{Child, Command};
use std::time::Duration;

use crate::{bin, Etcd};

/// A running `hids-sim`, READY (all its agents registered).
pub struct Sim {
    child: Child,
    pub ready_line: String,
}

impl Sim {
    pub fn start(etcd: &Etcd, agents: usize, extra: &[&str]) -> Sim {
        use std::io::BufRead;
        let mut child = Command::new(bin("hids-sim"))
            .arg("--endpoints")
            .arg(etcd.url())
            .arg("--agents")
            .arg(agents.to_string())
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("READY") {
                    let _ = tx.send(line);
                }
            }
        });
        let ready_line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("hids-sim did not print READY within 60 s");
        Sim { child, ready_line }
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
