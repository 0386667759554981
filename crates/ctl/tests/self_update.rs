//! Self-update of plugins end to end (docs/updates.md): real etcd, a real agent under
//! control, builds served by a static HTTP server on loopback, pushes with hidsctl. What
//! the check does: version 2 installed and running, version 3 with a wrong
//! SHA-256 refused while 2 keeps running, version 4 that exits at once rolled back to 2.

use std::time::Duration;

use hids_test_support::{
    json, sha256_hex, wait_until, write_file, Agent, Etcd, KeyPair, StaticServer,
};
use serde_json::Value;

const V2: &[u8] = b"#!/bin/sh\nexec sleep 3600\n";
const V4_EXITS_AT_ONCE: &[u8] = b"#!/bin/sh\nexit 1\n";

/// Signs and writes `settings` (desired TOML) for host upd-1, as an operator would;
/// with `wait`, until the agent acknowledged it.
fn push(etcd: &Etcd, key: &KeyPair, name: &str, settings: &str, wait: bool) {
    let file = write_file(key.dir.path(), &format!("{name}.toml"), settings);
    let secret = key.secret();
    let mut args = vec![
        "push", "--key", &secret, "--file", &file, "--hosts", "upd-1", "--json",
    ];
    if wait {
        args.extend(["--wait", "30s"]);
    }
    let out = etcd.hidsctl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if wait {
        assert_eq!(json(&out)["acked"], 1);
    }
}

fn push_build(etcd: &Etcd, key: &KeyPair, version: &str, url: &str, sha256: &str) {
    let settings = format!(
        "[[plugins]]\nname = \"demo\"\nversion = {version:?}\nurl = {url:?}\nsha256 = {sha256:?}\n"
    );
    push(etcd, key, &format!("demo-{version}"), &settings, true);
}

fn demo(etcd: &Etcd) -> Value {
    etcd.agents(&[])
        .get("upd-1")
        .and_then(|a| {
            a["plugins"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "demo")
                .cloned()
        })
        .unwrap_or(Value::Null)
}

fn running(p: &Value, version: &str) -> bool {
    p["version"] == version && p["state"] == "running"
}

#[test]
fn a_plugin_is_updated_refused_on_a_wrong_hash_and_rolled_back_when_it_crashes() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let web = StaticServer::start();
    let mut agent = Agent::managed(
        &etcd,
        "upd-1",
        &[],
        &key.public(),
        "\n[update]\nspread_secs = 0\nhealthy_after_secs = 2\n",
    );
    wait_until("the agent to register", Duration::from_secs(10), || {
        etcd.agents(&[]).contains_key("upd-1")
    });

    let url2 = web.put("demo-2", V2);
    push_build(&etcd, &key, "2", &url2, &sha256_hex(V2));
    wait_until(
        "demo 2 to run and pass its gate",
        Duration::from_secs(30),
        || {
            let p = demo(&etcd);
            running(&p, "2") && p["update"]["phase"] == "healthy"
        },
    );
    let pid2 = demo(&etcd)["pid"].clone();

    // Version 3: the server has other bytes than the document pins.
    let url3 = web.put("demo-3", b"#!/bin/sh\necho not what was signed\n");
    push_build(&etcd, &key, "3", &url3, &sha256_hex(b"what was signed"));
    wait_until(
        "the wrong hash to be reported",
        Duration::from_secs(30),
        || {
            let p = demo(&etcd);
            p["update"]["phase"] == "failed" && p["update"]["target"] == "3"
        },
    );
    let p = demo(&etcd);
    let why = p["update_error"].as_str().unwrap_or_default();
    assert!(why.contains("SHA-256") || why.contains("sha256"), "{p:#}");
    assert!(running(&p, "2"), "{p:#}");
    assert_eq!(p["pid"], pid2, "version 2 kept running, never restarted");

    // Version 4 exits at once: rolled back to 2 by the agent itself.
    let url4 = web.put("demo-4", V4_EXITS_AT_ONCE);
    push_build(&etcd, &key, "4", &url4, &sha256_hex(V4_EXITS_AT_ONCE));
    wait_until(
        "version 4 to be rolled back to 2",
        Duration::from_secs(120),
        || {
            let p = demo(&etcd);
            running(&p, "2") && p["rolled_back"]["from"] == "4"
        },
    );
    let p = demo(&etcd);
    assert_eq!(p["rolled_back"]["to"], "2", "{p:#}");
    assert_eq!(p["update"]["phase"], "rolled_back", "{p:#}");
    assert!(
        p["rolled_back"]["reason"]
            .as_str()
            .unwrap()
            .contains("exits"),
        "{p:#}"
    );

    // Marked bad: not fetched or run again while the document still names it.
    let fetched_4 = || {
        web.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/demo-4")
            .count()
    };
    assert_eq!(fetched_4(), 1);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(fetched_4(), 1);
    assert!(running(&demo(&etcd), "2"));

    // Only what can run again is kept: build 2 (4 was removed with its bad mark kept).
    let versions = agent.state_dir().join("versions/demo");
    let mut builds: Vec<String> = std::fs::read_dir(&versions)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.') && n != "installed.json")
        .collect();
    builds.sort();
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert!(builds[0].starts_with("2-"), "{builds:?}");

    // kill -9 and start again: build 2 runs from disk at once, nothing downloaded.
    let requests_before = web.requests.lock().unwrap().len();
    agent.stop_with(rustix::process::Signal::KILL);
    agent.spawn();
    wait_until(
        "demo 2 to run again after kill -9",
        Duration::from_secs(30),
        || running(&demo(&etcd), "2"),
    );
    assert_eq!(web.requests.lock().unwrap().len(), requests_before);
}

/// The agent itself: a pushed build (a copy of the real agent) is downloaded, verified
/// and started in place of the running one by the launcher; a build that exits at once
/// is rolled back by the installed binary after three starts (the test restarts the
/// agent as systemd's `Restart=always` would).
#[test]
fn the_agent_updates_itself_and_a_build_that_cannot_start_is_rolled_back() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let web = StaticServer::start();
    let mut agent = Agent::managed(
        &etcd,
        "upd-1",
        &[],
        &key.public(),
        "\n[update]\nspread_secs = 0\nhealthy_after_secs = 2\n",
    );
    wait_until("the agent to register", Duration::from_secs(10), || {
        etcd.agents(&[]).contains_key("upd-1")
    });
    let status = || {
        etcd.agents(&[])
            .get("upd-1")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let push_agent = |version: &str, bytes: &[u8]| {
        let url = web.put(&format!("agent-{version}"), bytes);
        let sha = sha256_hex(bytes);
        let settings = format!("[agent]\nversion = {version:?}\nurl = {url:?}\nsha256 = {sha:?}\n");
        push(&etcd, &key, &format!("agent-{version}"), &settings, false);
    };

    let build = std::fs::read(hids_test_support::bin("hids-agent")).unwrap();
    push_agent("9.0.0", &build);
    wait_until(
        "agent build 9.0.0 to run and pass its gate",
        Duration::from_secs(120),
        || {
            let s = status();
            s["version"] == "9.0.0" && s["update"]["phase"] == "healthy"
        },
    );
    let s = status();
    let exe = std::fs::read_link(format!("/proc/{}/exe", s["pid"])).unwrap();
    assert!(
        exe.starts_with(agent.state_dir().join("versions/agent")),
        "{exe:?}"
    );

    push_agent("9.0.1", b"#!/bin/sh\nexit 1\n");
    for start in 1..=3 {
        agent
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("start {start} of 9.0.1 exits at once"));
        agent.spawn(); // Restart=always
    }
    wait_until(
        "9.0.1 rolled back to 9.0.0",
        Duration::from_secs(60),
        || {
            let s = status();
            s["version"] == "9.0.0" && s["rolled_back"]["from"] == "9.0.1"
        },
    );
    let s = status();
    assert_eq!(s["update"]["phase"], "rolled_back", "{s:#}");
    assert!(
        s["rolled_back"]["reason"]
            .as_str()
            .unwrap()
            .contains("3 starts"),
        "{s:#}"
    );
}
