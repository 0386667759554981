//! `hidsctl snapshot --plugin network` end to end: the command goes through etcd to a
//! managed agent, which asks the running network plugin, whose full snapshot carries the
//! command's id on every line. Real etcd: run under `flock /tmp/test.lock`.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{plugin_entry, stats, wait_framed};
use hids_test_support::{etcd_available, json, require_root, Agent, Etcd, KeyPair};
use serde_json::Value;

const HOST: &str = "net-snap-1";

/// Sends the command; its id (`g<generation>`).
fn request_snapshot(etcd: &Etcd, key: &KeyPair) -> String {
    let out = etcd.hidsctl(&[
        "snapshot",
        "--plugin",
        "network",
        "--hosts",
        HOST,
        "--key",
        &key.secret(),
        "--wait",
        "30s",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = json(&out);
    assert_eq!(result["acked"], 1, "{result:#}");
    assert_eq!(result["action"], "snapshot network", "{result:#}");
    format!("g{}", result["generation"].as_u64().unwrap())
}

#[test]
fn a_requested_snapshot_carries_the_command_id_on_every_line() {
    require_root!();
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let _server = listener.accept().unwrap();
    // No periodic snapshot: every full snapshot line is the command's.
    let plugin = plugin_entry(&[
        "--snapshot-interval-secs",
        "0",
        "--stats-interval-secs",
        "1",
        "--connections",
        "false",
    ]);
    // The resource guard would stop the plugin mid-snapshot on a host that also holds
    // another test's 300,000-socket farm (a debug build writing every line).
    let guard = "[guard]\ncpu_percent = 1000.0\nmemory_mb = 0\n";
    let agent = Agent::managed(
        &etcd,
        HOST,
        &[],
        &key.public(),
        &format!("\n{guard}{plugin}"),
    );
    wait_framed(&agent);

    let id = request_snapshot(&etcd, &key);
    // The stats record naming the command comes after the snapshot's last line.
    let events = agent.wait_events(
        "the snapshot and the stats after it",
        Duration::from_secs(300),
        |evs| {
            stats(evs)
                .iter()
                .any(|s| s["last_snapshot_request"] == id.as_str())
        },
    );
    let answered = stats(&events)
        .into_iter()
        .find(|s| s["last_snapshot_request"] == id.as_str())
        .unwrap();
    assert_eq!(answered["snapshots"], 1, "{answered:#}");
    let reported = answered["last_snapshot"]["reported"].as_u64().unwrap();

    let with_id: Vec<&Value> = events
        .iter()
        .filter(|e| e["hids"]["command_id"] == id.as_str())
        .collect();
    assert_eq!(
        with_id.len() as u64,
        reported,
        "every line of the snapshot ({reported}) carries {id}"
    );
    for e in &with_id {
        assert_eq!(e["hids"]["plugin"], "network", "{e:#}");
        assert_eq!(e["hids"]["snapshot"], true, "{e:#}");
        assert_eq!(e["event"]["kind"], "state", "{e:#}");
    }
    // Snapshot lines without the id are the first listener scan's only.
    let without_id: Vec<_> = events
        .iter()
        .filter(|e| e["hids"]["snapshot"] == true && e["hids"]["command_id"].is_null())
        .filter(|e| e["event"]["action"] != "listening")
        .collect();
    assert!(without_id.is_empty(), "{without_id:#?}");

    let me = std::process::id();
    let ours = |action: &str, local: u16| {
        with_id.iter().any(|e| {
            e["event"]["action"] == action
                && e["source"]["port"] == local
                && e["process"]["pid"] == me
        })
    };
    assert!(
        ours("listening", port),
        "our listener is not in the snapshot"
    );
    assert!(ours("connection", port), "our accepted end is not in it");
    assert!(
        ours("connection", client_port),
        "our client end is not in it"
    );
}
