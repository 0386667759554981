//! The one harness every integration test uses: the real binaries (`hids-agent`,
//! `hidsctl`, `hids-sim`) run against a real etcd and a real Kafka-protocol broker
//! (tansu), each on free loopback ports and in its own temporary directory; a real
//! Prometheus scrapes them when a test checks what they export.
//!
//! Dev-only: no product crate depends on it. A failure in here is a failed test, so it
//! unwraps freely.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod bins;
mod broker;
mod etcd;
mod gateway;
mod postgres;
mod procs;
mod prometheus;
mod server;
mod sim;
mod skip;
pub mod sockets;
mod static_http;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

pub use agent::Agent;
pub use bins::bin;
pub use broker::Broker;
pub use etcd::{etcd_available, Certs, Etcd, KeyPair};
pub use gateway::Gateway;
pub use postgres::{postgres_available, Postgres};
pub use procs::{alive, execs_with_arg, group_members, tag};
pub use prometheus::{prometheus_available, promtool_check_metrics, Prometheus};
pub use server::Server;
pub use sim::Sim;
pub use skip::{is_root, skip};
pub use static_http::{sha256_hex, StaticServer};

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `timeout`.
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

/// A command's stdout as JSON; on failure, says what it printed.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Writes `text` to `dir/name` and returns the path as a string (for command lines).
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The state of plugin `name` in an agent's status document (local file or etcd
/// listing), or `absent`.
pub fn plugin_state(agent: &serde_json::Value, name: &str) -> String {
    agent["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["state"].as_str())
        .unwrap_or("absent")
        .to_owned()
}
