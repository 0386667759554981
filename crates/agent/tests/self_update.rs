//! The agent updating itself (issue 18, item 4), end to end with the real binary: the
//! installed `hids-agent` is the launcher and `exec`s the agent build installed under
//! `<state_dir>/versions/agent/`; a build that dies at every start is rolled back by the
//! installed binary after three starts, the new build doing nothing right.
//!
//! The installed build is set up the way `Slot::install` leaves it (crates/agent/src/
//! update/store.rs): `versions/agent/<version>-<first 12 hex of sha256>/agent`, mode
//! 0700, and `versions/agent/installed.json` naming it current and on trial. The
//! service manager (systemd `Restart=always`) is played by the test: it starts the
//! agent again whenever it exits.

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use hids_test_support::{bin, Agent};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A plugin that needs no root and no build of ours.
const IDLE_PLUGIN: &str = "[[plugins]]\nname = \"idle\"\npath = \"/bin/sleep\"\nargs = [\"600\"]\n";

/// Installs `content` as agent build `version`, current and on trial, in `state`; its
/// executable's path.
fn install_trial_build(state: &Path, version: &str, content: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let sha = Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let dir = format!("{version}-{}", &sha[..12]);
    let slot = state.join("versions/agent");
    std::fs::create_dir_all(slot.join(&dir)).unwrap();
    let exe = slot.join(&dir).join("agent");
    std::fs::write(&exe, content).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700)).unwrap();
    let manifest = json!({
        "current": {
            "version": version,
            "sha256": sha,
            "dir": dir,
            "installed_at": hids_types::Timestamp::now(),
        },
        "previous": null,
        "trial": true,
        "bad": [],
    });
    std::fs::write(slot.join("installed.json"), manifest.to_string()).unwrap();
    exe
}

fn manifest(state: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(state.join("versions/agent/installed.json")).unwrap())
        .unwrap()
}

fn starts(state: &Path) -> Option<Value> {
    let bytes = std::fs::read(state.join("versions/agent.starts.json")).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// The executable of the process the status file says is the agent.
fn running_exe(status: &Value) -> PathBuf {
    let pid = status["pid"].as_u64().unwrap();
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

#[test]
fn a_new_agent_that_exits_at_once_is_rolled_back_by_the_installed_one_after_three_starts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    install_trial_build(&state, "9.9.9", b"#!/bin/sh\nexit 1\n");
    let mut agent = Agent::start_in(dir, IDLE_PLUGIN);
    for start in 1..=3u64 {
        let exit = agent
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("start {start} runs the new build, which exits at once"));
        assert_eq!(exit.code(), Some(1), "start {start}");
        assert_eq!(starts(&state).unwrap()["starts"], start);
        agent.spawn(); // Restart=always
    }
    // The fourth start: the installed binary rolls the build back and runs itself.
    let status = agent.wait_status(
        "the installed agent running",
        Duration::from_secs(30),
        |s| s["pid"].as_u64().is_some(),
    );
    assert_eq!(
        running_exe(&status),
        std::fs::canonicalize(bin("hids-agent")).unwrap()
    );
    assert!(
        agent.wait_exit(Duration::from_secs(2)).is_none(),
        "it keeps running"
    );
    let m = manifest(&state);
    assert!(m["current"].is_null(), "{m:#}");
    assert_eq!(m["trial"], false, "{m:#}");
    assert_eq!(m["bad"][0]["version"], "9.9.9", "{m:#}");
    assert_eq!(
        m["bad"][0]["reason"], "did not pass its health gate in 3 starts",
        "{m:#}"
    );
    assert_eq!(starts(&state), None, "the counter is cleared");
    assert!(
        agent.stderr().contains(
            "agent build 9.9.9 rolled back to the installed build: did not pass its health gate in 3 starts"
        ),
        "{}",
        agent.stderr()
    );
    // Stopped with SIGTERM when dropped.
}

#[test]
fn a_good_trial_build_runs_in_place_of_the_installed_binary() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let content = std::fs::read(bin("hids-agent")).unwrap();
    let exe = install_trial_build(&state, "9.9.9", &content);
    let config = format!("{IDLE_PLUGIN}[update]\nhealthy_after_secs = 1\n");
    let agent = Agent::start_in(dir, &config);
    let status = agent.wait_status("the new build running", Duration::from_secs(60), |s| {
        s["pid"].as_u64().is_some()
    });
    assert_eq!(running_exe(&status), exe);
    let counted = starts(&state).unwrap();
    assert_eq!(counted["starts"], 1);
    assert_eq!(counted["dir"], manifest(&state)["current"]["dir"]);
    assert!(
        agent.stderr().contains("starting agent build 9.9.9"),
        "{}",
        agent.stderr()
    );
    // It passes its health gate (standalone: up for healthy_after_secs): confirmed,
    // counter cleared, and the status says so.
    let status = agent.wait_status("the build to pass its gate", Duration::from_secs(30), |s| {
        s["update"]["phase"] == "healthy"
    });
    assert_eq!(status["version"], "9.9.9");
    let m = manifest(&state);
    assert_eq!(m["trial"], false, "{m:#}");
    assert_eq!(m["current"]["passed"], true, "{m:#}");
    assert_eq!(starts(&state), None);
    // Stopped with SIGTERM when dropped.
}
