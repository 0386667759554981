//! The fleet simulator against a real etcd, steered by the real hidsctl: what
//! `bench/fleet` measures at 100,000 agents, checked for behaviour at a few hundred.

use std::time::Duration;

use hids_test_support::{json, wait_until, Etcd, KeyPair, Sim};

fn change(etcd: &Etcd, key: &KeyPair, args: &[&str]) -> serde_json::Value {
    let secret = key.secret();
    let mut all = args.to_vec();
    all.extend(["--key", &secret, "--wait", "60s", "--json"]);
    json(&etcd.hidsctl(&all))
}

#[test]
fn every_simulated_agent_acknowledges_a_fleet_wide_stop_and_a_canary() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let trusted = key.public();
    let mut sim = Sim::start(
        &etcd,
        300,
        &[
            "--connections",
            "2",
            "--trusted-key",
            trusted.to_str().unwrap(),
        ],
    );
    assert!(sim.ready_line.contains("agents=300"), "{}", sim.ready_line);
    // One watch, on its own stream, per agent: what etcd reports is the fleet size.
    assert_eq!(etcd.metric("etcd_debugging_mvcc_watcher_total"), 300.0);
    assert_eq!(etcd.metric("etcd_debugging_mvcc_watch_stream_total"), 300.0);

    let out = change(&etcd, &key, &["stop", "--all"]);
    assert_eq!(out["targets"], 300, "{out}");
    assert_eq!(out["acked"], 300, "{out}");
    assert!(out["elapsed_secs"].as_f64().unwrap() > 0.0);
    let agents = etcd.agents(&[]);
    assert_eq!(agents.len(), 300);
    assert!(agents.values().all(|a| a["stopped_by_command"] == true));
    // Labels spread over the four dimensions, and a selector finds a real subset.
    let prod = agents
        .values()
        .filter(|a| a["labels"]["env"] == "prod")
        .count();
    assert!((150..270).contains(&prod), "{prod} prod agents of 300");

    let canary = change(&etcd, &key, &["resume", "--percent", "10"]);
    let targets = canary["targets"].as_u64().unwrap();
    assert!((10..60).contains(&targets), "{canary}");
    assert_eq!(canary["acked"], canary["targets"], "{canary}");
    let resumed = etcd
        .agents(&[])
        .values()
        .filter(|a| a["stopped_by_command"] == false)
        .count();
    assert_eq!(resumed as u64, targets);

    // SIGTERM revokes every lease: the fleet leaves at once, not after the TTL.
    sim.stop();
    wait_until(
        "the simulated fleet to leave",
        Duration::from_secs(10),
        || etcd.agents(&[]).is_empty(),
    );
}

#[test]
fn shared_watch_streams_deliver_the_same_and_bad_documents_are_refused() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let other = KeyPair::make(&etcd);
    let trusted = key.public();
    let _sim = Sim::start(
        &etcd,
        200,
        &[
            "--watch-streams",
            "3",
            "--trusted-key",
            trusted.to_str().unwrap(),
        ],
    );
    assert_eq!(etcd.metric("etcd_debugging_mvcc_watcher_total"), 200.0);
    assert_eq!(etcd.metric("etcd_debugging_mvcc_watch_stream_total"), 3.0);

    let out = change(&etcd, &key, &["stop", "--all"]);
    assert_eq!(out["acked"], 200, "{out}");

    // A document signed by a key the agents do not trust: refused, reason reported,
    // the last good state (stopped) kept.
    let host = "sim-000007";
    let out = change(&etcd, &other, &["resume", "--hosts", host]);
    assert_eq!(out["refused"], 1, "{out}");
    assert!(
        out["refusals"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("does not trust"),
        "{out}"
    );
    let agents = etcd.agents(&[]);
    assert_eq!(agents[host]["stopped_by_command"], true);

    // The trusted key still steers it (its generation is above the refused one).
    let out = change(&etcd, &key, &["resume", "--hosts", host]);
    assert_eq!(out["acked"], 1, "{out}");
}
