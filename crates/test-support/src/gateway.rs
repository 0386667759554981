//! `hids-gateway` between agents (or `hids-sim`) and a test's etcd.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{bin, free_port, wait_until, Etcd};

/// A running gateway on a free loopback port, its log in `log`.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub log: std::path::PathBuf,
    etcd_url: String,
    extra: Vec<String>,
}

impl Gateway {
    pub fn start(etcd: &Etcd, extra: &[&str]) -> Gateway {
        let mut gw = Gateway {
            child: None,
            port: free_port(),
            log: etcd.dir.path().join(format!("gateway-{}.log", free_port())),
            etcd_url: etcd.url(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        gw.spawn();
        gw
    }

    /// What agents and `hids-sim` use as their control endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(bin("hids-gateway"))
            .args(["--etcd", &self.etcd_url])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until("hids-gateway to listen", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGKILL: no goodbye to etcd or the agents.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Killed and started again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}
