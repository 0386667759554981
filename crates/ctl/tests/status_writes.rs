//! Issue 12: an agent writes its status key on real changes and once per refresh period,
//! not on every guard sample. Real etcd, real `hids-agent`.

use std::time::{Duration, Instant};

use hids_test_support::{wait_until, Agent, Etcd, KeyPair};

/// The status key's (version, create revision) in etcd: the version counts the writes
/// since the key was created, the create revision tells a re-registration apart.
fn status_key(etcd: &Etcd, host_id: &str) -> Option<(i64, i64)> {
    let out = etcd.etcdctl(
        &["get", &format!("/hids/v1/agents/{host_id}"), "-w", "json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let kv = v["kvs"].get(0)?;
    Some((kv["version"].as_i64()?, kv["create_revision"].as_i64()?))
}

#[test]
fn issue12_an_idle_agent_sampling_every_second_writes_its_status_at_most_twice_in_50_s() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let started = Instant::now();
    // The default lease and refresh period; the guard samples every second, so its CPU
    // and RSS figures change all the time.
    let _agent = Agent::managed(
        &etcd,
        "idle-1",
        &[("env", "prod")],
        &key.public(),
        "lease_ttl_secs = 60\n[guard]\ninterval_secs = 1\n",
    );
    wait_until("the agent to register", Duration::from_secs(10), || {
        status_key(&etcd, "idle-1").is_some()
    });
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let before = status_key(&etcd, "idle-1");
    std::thread::sleep(Duration::from_secs(50));
    let after = status_key(&etcd, "idle-1");
    let (Some((v0, created0)), Some((v1, created1))) = (before, after) else {
        panic!("the status key went away: {before:?} then {after:?}");
    };
    assert_eq!(created0, created1, "the agent registered again");
    eprintln!("status key version {v0} -> {v1} over 50 s");
    assert!(
        v1 - v0 <= 2,
        "an idle agent wrote its status {} times in 50 s",
        v1 - v0
    );
}
