//! `hids-server` on a free loopback port, in its own temporary directory, and a small
//! client for its API.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, free_port, wait_until};

pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
    http: reqwest::blocking::Client,
}

impl Server {
    /// Starts `hids-server` on `config` (everything but `[http]`, which is added) and
    /// waits until its API answers.
    pub fn start(config: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            format!("{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .unwrap();
        let mut s = Server {
            child: None,
            dir,
            port,
            config: path,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        s.spawn();
        s
    }

    /// (Re)starts the process on the same config and directory.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(bin("hids-server"))
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while self.try_get("/healthz").is_none() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hids-server exited ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "hids-server did not answer on port {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn try_get(&self, path: &str) -> Option<String> {
        let r = self.http.get(self.url(path)).send().ok()?;
        r.status().is_success().then(|| r.text().ok()).flatten()
    }

    /// GET, the status and the body as JSON (`null` when it is not JSON).
    pub fn get_status(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// GET of a JSON answer that must succeed.
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.get_status(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(self.url(path)).json(body).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> String {
        self.try_get("/metrics").unwrap_or_default()
    }

    /// The value of one series of `/metrics`, e.g.
    /// `hids_server_events_malformed_total{reason="not_json"}`; 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `/api/v1/alerts` (with `query`, e.g. `?limit=1000`) satisfies `done`.
    pub fn wait_alerts(
        &self,
        what: &str,
        query: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut last = Vec::new();
        let path = format!("/api/v1/alerts{query}");
        let start = Instant::now();
        loop {
            if let Some(Value::Array(list)) = self
                .try_get(&path)
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                if done(&list) {
                    return list;
                }
                last = list;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; alerts: {last:#?}\nserver log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to 20 s for the exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(c.id() as i32)?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let mut status = None;
        wait_until("hids-server to stop", Duration::from_secs(20), || {
            status = c.try_wait().unwrap();
            status.is_some()
        });
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
