//! A real etcd (Debian's etcd-server 3.4) on free loopback ports, and what the
//! control-plane tests make with it: TLS material, signing keys, hidsctl runs.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{bin, free_port, wait_until};

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

/// Whether `etcd` and `etcdctl` are installed. Without them the calling test cannot
/// run: it is skipped (see [`crate::skip`]), which under CI is a failure.
pub fn etcd_available() -> bool {
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
    crate::skip("etcd or etcdctl is missing (install etcd-server and etcd-client)");
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
        let mut cmd = Command::new(bin("hidsctl"));
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
