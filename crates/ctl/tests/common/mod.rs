//! Real etcd, real agents, real hidsctl, on loopback ports picked for each test.
#![allow(dead_code, clippy::unwrap_used)] // test harness: a failure here is a failed test

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn hidsctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hidsctl"))
}

pub fn agent_bin() -> PathBuf {
    let p = hidsctl_bin().with_file_name("hids-agent");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// Polls `f` until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// TLS material made with openssl: a CA, a server certificate for 127.0.0.1.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hids-test-ca",
        ]);
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server-key.pem",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Whether `etcd` and `etcdctl` are installed. Without them a test cannot run: under CI
/// (env `CI` set) that is a failure, elsewhere the test says so and passes.
pub fn etcd_available(test: &str) -> bool {
    let runs = |bin: &str, arg: &str| {
        Command::new(bin)
            .arg(arg)
            .env("ETCDCTL_API", "3")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs("etcd", "--version") && runs("etcdctl", "version") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: etcd or etcdctl is missing (Debian packages etcd-server, etcd-client) and CI is set"
    );
    eprintln!("{test}: skipped: etcd or etcdctl is missing (install etcd-server and etcd-client)");
    // Counted by scripts/test, as the agent tests' skips are.
    if let Some(path) = std::env::var_os("HIDS_TEST_SKIPS") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: etcd or etcdctl is missing");
        }
    }
    false
}

pub struct Etcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    peer: u16,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Etcd {
    pub fn start() -> Etcd {
        Self::launch(None)
    }

    pub fn start_tls(certs: &Certs) -> Etcd {
        Self::launch(Some((
            certs.path("ca.pem"),
            certs.path("server.pem"),
            certs.path("server-key.pem"),
        )))
    }

    fn launch(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            peer: free_port(),
            tls,
        };
        etcd.spawn();
        etcd
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("etcd.log")).unwrap());
        if let Some((_, cert, key)) = &self.tls {
            cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
        }
        self.child = Some(cmd.spawn().expect("etcd runs (Debian package etcd-server)"));
        let me = &*self;
        wait_until("etcd to answer", Duration::from_secs(15), || {
            me.etcdctl(&["endpoint", "health"], None).status.success()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs etcdctl (v3 API) against this etcd, optionally as `user:password`.
    pub fn etcdctl(&self, args: &[&str], user: Option<&str>) -> Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.url())
            .arg("--dial-timeout=2s");
        if let Some((ca, _, _)) = &self.tls {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some(u) = user {
            cmd.arg("--user").arg(u);
        }
        cmd.args(args)
            .output()
            .expect("etcdctl runs (Debian package etcd-client)")
    }

    pub fn put(&self, key: &str, value: &str) {
        let out = self.etcdctl(&["put", key, value], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn get(&self, key: &str) -> String {
        let out = self.etcdctl(&["get", key, "--print-value-only"], None);
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Runs hidsctl against this etcd.
    pub fn hidsctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(hidsctl_bin());
        cmd.arg("--endpoints").arg(self.url());
        if let Some((ca, _, _)) = &self.tls {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.args(args).env_remove("HIDSCTL_KEY").output().unwrap()
    }

    /// `hidsctl agents --json`, by host id.
    pub fn agents(&self, extra: &[&str]) -> std::collections::BTreeMap<String, Value> {
        let mut args = extra.to_vec();
        args.extend(["agents", "--json"]);
        let out = self.hidsctl(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        list.into_iter()
            .map(|a| (a["host_id"].as_str().unwrap().to_owned(), a))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A signing key pair made with `hidsctl keygen`.
pub struct KeyPair {
    pub dir: tempfile::TempDir,
}

impl KeyPair {
    pub fn make(etcd: &Etcd) -> KeyPair {
        let dir = tempfile::tempdir().unwrap();
        let out = etcd.hidsctl(&["keygen", "--out", dir.path().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        KeyPair { dir }
    }
    pub fn secret(&self) -> String {
        self.dir.path().join("signing.key").display().to_string()
    }
    pub fn public(&self) -> PathBuf {
        self.dir.path().join("signing.pub")
    }
}

pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub host_id: String,
    config: PathBuf,
}

impl Agent {
    /// An agent whose one plugin, `process`, is a sleeping /bin/sleep (no root needed).
    /// `control_extra` is appended to its `[control]` section.
    pub fn start(
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
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "host_id = {host_id:?}\nstate_dir = {:?}\nstatus_interval_secs = 1\n\
                 [supervisor]\nstop_timeout_ms = 1000\n\
                 [labels]\n{labels}\n\
                 [[plugins]]\nname = \"process\"\npath = \"/bin/sleep\"\nargs = [\"3600\"]\n\
                 [control]\nendpoints = [{:?}]\ntrusted_keys = [{:?}]\n{ttl}{control_extra}\n",
                dir.path().join("state"),
                etcd.url(),
                key
            ),
        )
        .unwrap();
        let mut agent = Agent {
            child: None,
            dir,
            host_id: host_id.to_owned(),
            config,
        };
        agent.spawn();
        agent
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        self.child = Some(
            Command::new(agent_bin())
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The local status file.
    pub fn status(&self) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("state/status.json")).ok()?).ok()
    }

    pub fn signal(&mut self, sig: rustix::process::Signal) {
        if let Some(c) = &self.child {
            let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, sig);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::KILL);
    }
}

pub fn plugin_state(agent: &Value, name: &str) -> String {
    agent["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["state"].as_str())
        .unwrap_or("absent")
        .to_owned()
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A running `hids-sim`, READY (all its agents registered).
pub struct Sim {
    child: Child,
    pub ready_line: String,
}

impl Sim {
    pub fn start(etcd: &Etcd, agents: usize, extra: &[&str]) -> Sim {
        use std::io::BufRead;
        let bin = hidsctl_bin().with_file_name("hids-sim");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace` before the tests",
            bin.display()
        );
        let mut child = Command::new(bin)
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

impl Etcd {
    /// One metric from etcd's own `/metrics` (plain HTTP only).
    pub fn metric(&self, name: &str) -> f64 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in etcd's /metrics"))
    }
}

/// A command's stdout as JSON; on failure, says what it printed.
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
