//! A real Prometheus (Debian's `prometheus` package) on a free loopback port, scraping
//! the targets a test gives it every second, and `promtool` to lint an exposition.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, wait_until};

const PROMETHEUS: &str = "prometheus";
const PROMTOOL: &str = "promtool";

/// Whether `prometheus` and `promtool` are installed. Without them the calling test
/// cannot run: it is skipped (see [`crate::skip`]), which under CI is a failure.
pub fn prometheus_available() -> bool {
    let runs = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs(PROMETHEUS) && runs(PROMTOOL) {
        return true;
    }
    crate::skip("prometheus or promtool is missing (install Debian's prometheus package)");
    false
}

/// Runs `promtool check metrics` on an exposition as a scrape of `/metrics` returns it
/// (the classic text format: promtool reads no other). Err holds what promtool said.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let text = text.to_owned();
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool does not run ({e}): install Debian's prometheus"))?;
    let mut stdin = child.stdin.take().ok_or("promtool has no stdin")?;
    // A thread writes, so a promtool that answers before reading everything cannot
    // leave both sides blocked on full pipes.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let written = writer.join().map_err(|_| "promtool's writer panicked")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("promtool check metrics ({}): {said}", out.status));
    }
    written.map_err(|e| format!("writing to promtool: {e}; it said: {said}"))
}

/// A Prometheus scraping `targets` every second; killed (and its TSDB removed) on drop.
pub struct Prometheus {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    http: reqwest::blocking::Client,
}

impl Prometheus {
    /// Starts Prometheus on `(job, "host:port")` targets (each job scraped at
    /// `/metrics`) and waits until it is ready. Call [`prometheus_available`] first.
    pub fn start(targets: &[(&str, String)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets)).unwrap();
        let port = free_port();
        let mut p = Prometheus {
            child: None,
            dir,
            port,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        p.spawn(&config);
        p
    }

    fn spawn(&mut self, config: &Path) {
        let log = std::fs::File::create(self.dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (Debian package prometheus)");
        self.child = Some(child);
        let start = Instant::now();
        while !self.ready() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus was not ready on port {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ready(&self) -> bool {
        self.http
            .get(self.url("/-/ready"))
            .send()
            .is_ok_and(|r| r.status().is_success())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `data.result` array (`[]` when nothing matches; a scalar
    /// or string result is returned as its `[time, value]` pair). A PromQL error is a
    /// panic carrying Prometheus's message.
    pub fn query(&self, expr: &str) -> Value {
        let r = self
            .http
            .get(self.url("/api/v1/query"))
            .query(&[("query", expr)])
            .send()
            .unwrap_or_else(|e| panic!("query {expr:?}: {e}"));
        let status = r.status();
        let body: Value = r
            .json()
            .unwrap_or_else(|e| panic!("query {expr:?}: {status}, not JSON: {e}"));
        if body["status"] != "success" {
            panic!(
                "query {expr:?}: {status}: {} {}",
                body["errorType"].as_str().unwrap_or_default(),
                body["error"].as_str().unwrap_or_default()
            );
        }
        body["data"]["result"].clone()
    }

    /// The scrape targets as Prometheus reports them (`data.activeTargets`).
    pub fn targets(&self) -> Vec<Value> {
        let body: Value = self
            .http
            .get(self.url("/api/v1/targets"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until every configured target's last scrape succeeded; on timeout, panics
    /// with each target's health and last error.
    pub fn wait_for_targets_up(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let last = self.targets();
            if !last.is_empty() && last.iter().all(|t| t["health"] == "up") {
                return;
            }
            if start.elapsed() > timeout {
                let why: Vec<String> = last
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {}: {} {}",
                            t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]
                        )
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for the scrape targets: {why:#?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `expr` returns a non-empty result and returns it; panics after
    /// `timeout` naming the expression.
    pub fn wait_for_data(&self, expr: &str, timeout: Duration) -> Value {
        let mut result = Value::Null;
        wait_until(&format!("data from {expr:?}"), timeout, || {
            result = self.query(expr);
            result.as_array().is_some_and(|a| !a.is_empty())
        });
        result
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// prometheus.yml: one scrape job per target, scraped every second (so a test sees a
/// rate after a few seconds, not minutes).
fn config_text(targets: &[(&str, String)]) -> String {
    let mut yml = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n",
    );
    for (job, addr) in targets {
        yml.push_str(&format!(
            "  - job_name: {job:?}\n    static_configs:\n      - targets: [{addr:?}]\n"
        ));
    }
    yml
}
