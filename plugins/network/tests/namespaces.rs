//! Sockets in another network namespace (a container's) are reported with their holder
//! and their namespace: by `--once` with either method, and by the plugin under the
//! agent. The namespace is made with `unshare -n`; its process is `python3` (util-linux,
//! iproute2 and python3 are on a fresh machine).
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{netns_of, network_agent, once, NO_BTF};
use hids_test_support::{require_root, skip_unless};
use serde_json::Value;

/// In a new network namespace with `lo` up: a listener and a connection to it (both
/// ends), then "LISTEN_PORT CLIENT_PORT" on stdout; holds them until stdin closes.
const HOLDER: &str = r#"
import socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
print(listener.getsockname()[1], client.getsockname()[1], flush=True)
sys.stdin.read()
"#;

/// A process in a network namespace of its own, holding [`HOLDER`]'s sockets.
struct Holder {
    child: Child,
    pid: u32,
    listen_port: u16,
    client_port: u16,
}

impl Holder {
    fn start() -> Holder {
        // Neither unshare (without --fork) nor sh (exec) forks: the child's pid is
        // python's.
        let mut child = Command::new("unshare")
            .args(["-n", "sh", "-c"])
            .arg(r#"ip link set lo up && exec python3 -c "$1""#)
            .args(["sh", HOLDER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(ports.len(), 2, "the holder said {line:?}");
        Holder {
            pid: child.id(),
            child,
            listen_port: ports[0],
            client_port: ports[1],
        }
    }

    /// The holder's lines: its pid holds them.
    fn lines<'a>(&self, events: &'a [Value]) -> Vec<&'a Value> {
        events
            .iter()
            .filter(|e| e["process"]["pid"] == self.pid)
            .collect()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tools_present() -> bool {
    ["unshare", "ip", "python3"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

const NO_TOOLS: &str = "needs unshare (util-linux), ip (iproute2) and python3";

/// The listener and both ends of the connection, each once, held by the holder, in its
/// namespace, with the direction docs/network.md gives a snapshot line.
fn check_holder_lines(method: &str, holder: &Holder, lines: &[&Value], netns: u64) {
    let context = format!("--once --snapshot-method {method}: {lines:#?}");
    assert_eq!(lines.len(), 3, "{context}");
    for line in lines {
        assert_eq!(line["hids"]["socket"]["netns"], netns, "{context}");
        assert_eq!(line["hids"]["capture"], method, "{context}");
        assert_eq!(line["hids"]["snapshot"], true, "{context}");
        assert_eq!(line["process"]["name"], "python3", "{context}");
        assert_eq!(line["network"]["transport"], "tcp", "{context}");
        assert_eq!(line["network"]["type"], "ipv4", "{context}");
        assert_eq!(line["source"]["ip"], "127.0.0.1", "{context}");
    }
    let (lport, cport) = (holder.listen_port, holder.client_port);
    let find = |action: &str, local: u16| {
        lines
            .iter()
            .find(|l| l["event"]["action"] == action && l["source"]["port"] == local)
            .unwrap_or_else(|| panic!("no {action} line from port {local}; {context}"))
    };
    let listening = find("listening", lport);
    assert_eq!(listening["hids"]["socket"]["state"], "listen", "{context}");
    assert!(listening["network"]["direction"].is_null(), "{context}");
    let egress = find("connection", cport);
    assert_eq!(egress["destination"]["port"], lport, "{context}");
    assert_eq!(egress["network"]["direction"], "egress", "{context}");
    assert_eq!(egress["hids"]["socket"]["state"], "established");
    let ingress = find("connection", lport);
    assert_eq!(ingress["destination"]["port"], cport, "{context}");
    assert_eq!(ingress["network"]["direction"], "ingress", "{context}");
}

#[test]
fn sockets_in_another_network_namespace_are_reported_with_it() {
    require_root!();
    skip_unless!(tools_present(), NO_TOOLS);
    let host = netns_of("self");
    let holder = Holder::start();
    let theirs = netns_of(&holder.pid.to_string());
    assert_ne!(theirs, host, "unshare -n made no new namespace");

    let btf = common::btf();
    for method in ["bpf_iter", "sock_diag"] {
        if method == "bpf_iter" && !btf {
            hids_test_support::skip(NO_BTF);
            continue;
        }
        let pid = holder.pid;
        let needle = format!("\"pid\":{pid}");
        let lines = once(&["--snapshot-method", method], &needle, |l| {
            l["process"]["pid"] == pid
        });
        check_holder_lines(method, &holder, &holder.lines(&lines), theirs);
    }

    // The running plugin's first listener scan is a snapshot: the namespace's listener
    // is in it (or, had the scan come first, reported as new).
    let agent = network_agent(&[
        "--listen-interval-secs",
        "1",
        "--stats-interval-secs",
        "1",
        "--connections",
        "false",
    ]);
    let port = holder.listen_port;
    let events = agent.wait_events(
        "the namespace's listener from the agent",
        Duration::from_secs(60),
        |evs| {
            holder
                .lines(evs)
                .iter()
                .any(|e| e["event"]["action"] == "listening" && e["source"]["port"] == port)
        },
    );
    let seen = holder.lines(&events);
    let listening: Vec<_> = seen
        .iter()
        .filter(|e| e["event"]["action"] == "listening")
        .collect();
    assert_eq!(listening.len(), 1, "{seen:#?}");
    let listener = listening[0];
    assert_eq!(listener["source"]["port"], port, "{listener:#}");
    assert_eq!(listener["hids"]["socket"]["netns"], theirs, "{listener:#}");
    assert_eq!(
        listener["hids"]["socket"]["state"], "listen",
        "{listener:#}"
    );
    assert_eq!(listener["process"]["name"], "python3", "{listener:#}");

    // Later scans (cached holders, the namespace dumped again) do not lose it.
    let events = agent.wait_events("three more scans", Duration::from_secs(60), |evs| {
        common::stats(evs)
            .iter()
            .any(|s| s["listeners"]["scans"].as_u64().unwrap_or(0) >= 4)
    });
    let closed: Vec<_> = holder
        .lines(&events)
        .into_iter()
        .filter(|e| e["event"]["action"] == "listener_closed")
        .collect();
    assert!(
        closed.is_empty(),
        "a listener still open reported closed: {closed:#?}"
    );
}
