//! The resource guard end to end: real burners, real cgroups, the real agent.

use std::process::Command;
use std::time::Duration;

use hids_test_support::Agent;
use hids_test_support::{require_root, skip_unless};
use serde_json::Value;

fn guard(status: &Value) -> &Value {
    &status["guard"]
}

fn cgroups_writable() -> bool {
    if !hids_test_support::is_root() {
        return false;
    }
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.contains("memory"));
    v1 || v2
}

#[test]
fn a_burner_trips_the_breaker_everything_stops_comes_back_and_the_cooldown_doubles() {
    let with_process = if hids_test_support::is_root() {
        "[[plugins]]\nname = \"process\"\n"
    } else {
        ""
    };
    // Where cgroups work the burner is held to 30% of a core: still far over the 5%
    // threshold, without starving the tests running beside this one.
    let quota = if cgroups_writable() {
        "cpu_percent = 30\n"
    } else {
        ""
    };
    let agent = Agent::start(&format!(
        "[guard]\ncpu_percent = 5\nconsecutive = 3\ninterval_secs = 1\ncooldown_secs = 6\nmax_cooldown_secs = 60\n\
         [[plugins]]\nname = \"burn\"\npath = \"/bin/sh\"\nargs = [\"-c\", \"while :; do :; done\"]\n{quota}\
         [[plugins]]\nname = \"idle\"\npath = \"/bin/sleep\"\nargs = [\"600\"]\n{with_process}"
    ));
    let first = agent.wait_status("the first trip", Duration::from_secs(10), |s| {
        guard(s)["state"] == "tripped"
    });
    assert_eq!(guard(&first)["trips"], 1);
    assert_eq!(guard(&first)["cooldown_secs"], 6);
    assert!(
        guard(&first)["reason"].as_str().unwrap().contains("cpu"),
        "{first:#}"
    );
    let stopped = agent.wait_status("every plugin stopped", Duration::from_secs(5), |s| {
        s["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "stopped" && p["pid"].is_null())
    });
    assert_eq!(
        guard(&stopped)["state"],
        "tripped",
        "the master stays up while tripped"
    );

    // After the cooldown the plugins run again (probing), and the burner trips it again.
    agent.wait_status(
        "probing with plugins running",
        Duration::from_secs(10),
        |s| guard(s)["state"] == "probing" && Agent::plugin(s, "burn")["state"] == "running",
    );
    let second = agent.wait_status("the second trip", Duration::from_secs(10), |s| {
        guard(s)["trips"] == 2
    });
    assert_eq!(
        guard(&second)["cooldown_secs"],
        12,
        "a trip while probing doubles the cooldown"
    );

    // Every transition is an event on the data path, with the agent's own sequence.
    let events = agent.wait_events("guard events", Duration::from_secs(5), |evs| {
        evs.iter()
            .filter(|e| e["event"]["action"] == "guard_tripped")
            .count()
            >= 2
    });
    let actions: Vec<&str> = events
        .iter()
        // Transitions only: the agent's periodic `stats` metric shares the stream.
        .filter(|e| e["hids"]["plugin"] == "agent" && e["event"]["kind"] == "event")
        .map(|e| e["event"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..3],
        &["guard_tripped", "guard_probing", "guard_tripped"]
    );
    let tripped = events
        .iter()
        .find(|e| e["event"]["action"] == "guard_tripped")
        .unwrap();
    assert!(tripped["hids"]["guard"]["cpu_percent"].as_f64().unwrap() > 5.0);
    assert!(agent.stderr().contains("resource guard tripped"));
}

#[test]
fn a_memory_hog_is_killed_by_its_cgroup_and_restarted() {
    skip_unless!(
        cgroups_writable(),
        "needs root and a writable memory cgroup"
    );
    let agent = Agent::start(
        "[guard]\nmemory_mb = 0\ncpu_percent = 10000\n\
         [supervisor]\nbackoff_initial_ms = 100\nquarantine_after = 100\n\
         [[plugins]]\nname = \"hog\"\npath = \"/usr/bin/python3\"\nmemory_mb = 40\n\
         args = [\"-c\", \"import time; b = bytearray(200 << 20); time.sleep(600)\"]\n",
    );
    let status = agent.wait_status("an OOM kill and a restart", Duration::from_secs(20), |s| {
        let p = Agent::plugin(s, "hog");
        p["oom_kills"].as_u64().unwrap_or(0) >= 1 && p["restarts"].as_u64().unwrap_or(0) >= 1
    });
    let p = Agent::plugin(&status, "hog");
    assert!(
        p["last_exit"]
            .as_str()
            .unwrap()
            .contains("memory limit (40 MB)"),
        "{p:#}"
    );
    assert_eq!(
        guard(&status)["trips"],
        0,
        "the cgroup acted, not the breaker"
    );
}

#[test]
fn a_cpu_quota_holds_a_plugin_to_its_share() {
    skip_unless!(
        cgroups_writable()
            && (std::path::Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists()
                || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                    .is_ok_and(|c| c.contains("cpu"))),
        "needs root and a writable cpu cgroup"
    );
    let agent = Agent::start(
        "[guard]\ncpu_percent = 10000\ninterval_secs = 1\n\
         [[plugins]]\nname = \"burn\"\npath = \"/bin/sh\"\ncpu_percent = 20\n\
         args = [\"-c\", \"while :; do :; done\"]\n",
    );
    // A few samples in, the burner is held near 20% of one core instead of 100%.
    let status = agent.wait_status("three samples", Duration::from_secs(10), |s| {
        guard(s)["processes"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["name"] == "burn" && p["cpu_percent"].as_f64().unwrap_or(0.0) > 5.0)
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    let status = agent.status().unwrap_or(status);
    let burn = guard(&status)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "burn")
        .unwrap()
        .clone();
    let cpu = burn["cpu_percent"].as_f64().unwrap();
    assert!(cpu < 35.0, "quota of 20% not enforced: {cpu}%");
}

#[test]
fn no_trip_on_an_idle_host_or_under_a_moderate_exec_storm() {
    require_root!();
    let agent = Agent::start(
        "[guard]\ncpu_percent = 40\nconsecutive = 3\ninterval_secs = 1\n[[plugins]]\nname = \"process\"\n",
    );
    agent.wait_process_ready();
    std::thread::sleep(Duration::from_secs(4));
    // About 150 execs a second for five seconds (two per loop). The threshold is 40%
    // here, not the default 5%: the tests run the debug build, whose per-exec cost is
    // several times the release build's (0.1 ms, docs/benchmarks.md), and every exec on
    // the host counts, including those of the tests running beside this one: the debug
    // agent was measured at 24% of a core for three samples on a loaded 2-core machine.
    // The release build's cost against the 5% budget is a benchmark's business
    // (bench/exec-capture); this test is about behaviour: no trip, no false alarm.
    let storm = Command::new("/bin/sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 500 ]; do /bin/true storm-$i; i=$((i+1)); sleep 0.01; done",
        ])
        .status()
        .unwrap();
    assert!(storm.success());
    std::thread::sleep(Duration::from_secs(2));
    let status = agent.status().unwrap();
    assert_eq!(guard(&status)["trips"], 0, "{:#}", guard(&status));
    assert_eq!(guard(&status)["state"], "ok");
    assert!(guard(&status)["cpu_percent"].as_f64().unwrap() < 40.0);
}
