//! `hids-gateway` between simulated agents (the agent's own session code, in `hids-sim`)
//! and a real etcd, steered by the real `hidsctl`: what docs/control-plane.md promises
//! of the gateway, at the edges (kill -9 of agents and of the gateway, etcd restarted,
//! a document signed by an untrusted key, an agent writing a key not its own).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hids_test_support::{etcd_available, json, wait_until, Etcd, Gateway, KeyPair, Sim};
use serde_json::Value;

fn change(etcd: &Etcd, key: &KeyPair, args: &[&str]) -> Value {
    let secret = key.secret();
    let mut all = args.to_vec();
    all.extend(["--key", &secret, "--wait", "60s", "--json"]);
    json(&etcd.hidsctl(&all))
}

fn gateways(etcd: &Etcd) -> (Value, i32) {
    let out = etcd.hidsctl(&["gateways", "--json"]);
    (json(&out), out.status.code().unwrap_or(-1))
}

/// Waits until the gateways' reports match etcd and count `agents`.
fn wait_reported(etcd: &Etcd, agents: u64) -> Value {
    let mut last = Value::Null;
    wait_until(
        "gateway reports to match etcd",
        Duration::from_secs(30),
        || {
            let (summary, code) = gateways(etcd);
            let ok = code == 0
                && summary["reported_agents"] == agents
                && summary["keys_via_gateways"] == agents;
            last = summary;
            ok
        },
    );
    last
}

fn sim_through(gw: &Gateway, agents: usize, key: &KeyPair) -> Sim {
    let trusted = key.public();
    Sim::start_at(
        &gw.url(),
        agents,
        &["--trusted-key", trusted.to_str().unwrap(), "--report", "1s"],
    )
}

#[test]
fn agents_behind_a_gateway_acknowledge_a_fleet_wide_stop_and_are_counted() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let gw = Gateway::start(&etcd, &["--report-interval", "1s"]);
    let sim = sim_through(&gw, 200, &key);
    assert!(sim.ready_line.contains("agents=200"), "{}", sim.ready_line);
    // etcd holds the gateway's one watch on desired/, not one per agent.
    assert_eq!(etcd.metric("etcd_debugging_mvcc_watcher_total"), 1.0);

    let out = change(&etcd, &key, &["stop", "--all"]);
    assert_eq!(out["targets"], 200, "{out}");
    assert_eq!(out["acked"], 200, "{out}");
    let agents = etcd.agents(&[]);
    assert!(agents.values().all(|a| a["stopped_by_command"] == true));

    let summary = wait_reported(&etcd, 200);
    let gw_report = &summary["gateways"][0];
    assert_eq!(gw_report["watches"], 200, "{summary}");
    assert_eq!(summary["keys_direct"], 0, "{summary}");
    let (puts, txns) = (
        gw_report["puts"].as_u64().unwrap(),
        gw_report["txns"].as_u64().unwrap(),
    );
    assert!(
        puts >= 200 && puts >= 8 * txns,
        "acknowledgements are merged: {summary}"
    );

    // The table says the same, and exit 0 means consistent.
    let out = etcd.hidsctl(&["gateways"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("200"), "{table}");

    // A status key on the gateway's lease that the gateway does not know of: the
    // check fails with its own exit code.
    let lease = format!("{:x}", gw_report["lease"].as_i64().unwrap());
    let ghost = etcd.etcdctl(
        &[
            "put",
            &format!("--lease={lease}"),
            "/hids/v1/agents/ghost",
            "{}",
        ],
        None,
    );
    assert!(
        ghost.status.success(),
        "{}",
        String::from_utf8_lossy(&ghost.stderr)
    );
    let (summary, code) = gateways(&etcd);
    assert_eq!(code, 7, "{summary}");
    assert_eq!(summary["gateways"][0]["difference"], -1, "{summary}");
}

#[test]
fn several_gateways_share_one_etcd_and_each_agent_uses_one_of_them() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let a = Gateway::start(&etcd, &["--report-interval", "1s", "--name", "gw-a"]);
    let b = Gateway::start(&etcd, &["--report-interval", "1s", "--name", "gw-b"]);
    let trusted = key.public();
    let endpoints = format!("{},{}", a.url(), b.url());
    let _sim = Sim::start_at(
        &endpoints,
        100,
        &[
            "--trusted-key",
            trusted.to_str().unwrap(),
            "--connections",
            "4",
        ],
    );
    let out = change(&etcd, &key, &["stop", "--all"]);
    assert_eq!(out["acked"], 100, "{out}");
    let summary = wait_reported(&etcd, 100);
    let served: Vec<u64> = summary["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["agents"].as_u64().unwrap())
        .collect();
    assert_eq!(served, [50, 50], "{summary}");
    // Each gateway watches desired/ once.
    assert_eq!(etcd.metric("etcd_debugging_mvcc_watcher_total"), 2.0);
}

#[test]
fn agents_killed_leave_the_listing_within_seconds_though_their_leases_are_long() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let gw = Gateway::start(&etcd, &["--agent-lease-ttl", "3600s"]);
    let mut sim = sim_through(&gw, 50, &key);
    assert_eq!(etcd.agents(&[]).len(), 50);
    let killed = Instant::now();
    sim.kill();
    // Their connections closed: the gateway ends their leases and deletes their keys.
    wait_until(
        "the killed agents' keys to go",
        Duration::from_secs(10),
        || etcd.agents(&[]).is_empty(),
    );
    assert!(killed.elapsed() < Duration::from_secs(10));
    let (summary, code) = gateways(&etcd);
    assert_eq!(code, 0, "{summary}");
}

#[test]
fn agents_ride_out_an_etcd_restart_without_registering_again() {
    if !etcd_available() {
        return;
    }
    let mut etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let gw = Gateway::start(&etcd, &["--report-interval", "1s"]);
    let sim = sim_through(&gw, 100, &key);
    let before = wait_reported(&etcd, 100);
    let lease = before["gateways"][0]["lease"].clone();
    wait_until(
        "the simulator's first report",
        Duration::from_secs(5),
        || sim.counter("disconnects").is_some(),
    );

    etcd.restart();
    let restarted = Instant::now();
    // Back: a fleet-wide stop acknowledged by every agent, on the same gateway lease.
    let out = change(&etcd, &key, &["stop", "--all"]);
    assert_eq!(out["acked"], 100, "{out}");
    let after = wait_reported(&etcd, 100);
    assert_eq!(after["gateways"][0]["lease"], lease, "{after}");
    eprintln!("resumed in {:?}", restarted.elapsed());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sim.counter("disconnects"),
        Some(0),
        "no agent session ended: nothing registered again\n{}",
        gw.log_text()
    );
}

#[test]
fn agents_move_to_a_restarted_gateway_and_the_old_lease_takes_nothing_with_it() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let mut gw = Gateway::start(&etcd, &["--report-interval", "1s", "--lease-ttl", "10s"]);
    let _sim = sim_through(&gw, 60, &key);
    let before = wait_reported(&etcd, 60);
    let old_lease = before["gateways"][0]["lease"].as_i64().unwrap();

    gw.restart();
    // The agents reconnect (spread by hash(host_id)) and their keys move to the new
    // gateway's lease; the old one expires after its 10 s and takes nothing with it.
    // The new gateway (same name) writes its report over the dead one's.
    wait_until(
        "the agents to move to the new gateway",
        Duration::from_secs(30),
        || {
            let (summary, code) = gateways(&etcd);
            let moved =
                summary["gateways"].as_array().unwrap().iter().any(|g| {
                    g["lease"] != old_lease && g["agents"] == 60 && g["keys_on_lease"] == 60
                });
            moved && code == 0
        },
    );
    std::thread::sleep(Duration::from_secs(12));
    let (summary, _) = gateways(&etcd);
    assert_eq!(
        summary["gateways"].as_array().unwrap().len(),
        1,
        "{summary}"
    );
    assert_eq!(etcd.agents(&[]).len(), 60);
    let out = change(&etcd, &key, &["stop", "--all"]);
    assert_eq!(out["acked"], 60, "{out}");
}

#[test]
fn a_document_signed_by_an_untrusted_key_is_relayed_unchanged_and_refused() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let trusted = KeyPair::make(&etcd);
    let other = KeyPair::make(&etcd);
    let gw = Gateway::start(&etcd, &[]);
    let _sim = sim_through(&gw, 20, &trusted);
    let out = change(&etcd, &other, &["stop", "--all"]);
    assert_eq!(out["targets"], 20, "{out}");
    assert_eq!(out["acked"], 0, "{out}");
    assert_eq!(out["refused"], 20, "{out}");
    let agents = etcd.agents(&[]);
    assert!(agents.values().all(|a| a["stopped_by_command"] == false));
    assert!(agents.values().all(|a| a["desired_error"]
        .as_str()
        .is_some_and(|e| e.contains("does not trust"))));
}

/// The gateway takes from an agent only what an agent does: one status key per lease,
/// reads and watches of single desired/ keys; everything else is refused.
#[test]
fn an_agent_can_write_only_the_one_status_key_of_its_lease() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let gw = Gateway::start(&etcd, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([gw.url()], None)
            .await
            .unwrap();
        let mut ready = false;
        for _ in 0..50 {
            if c.lease_grant(60, None).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "the gateway never became ready");
        let lease = c.lease_grant(60, None).await.unwrap();
        assert!(lease.ttl() >= 600, "the gateway grants its long TTL");
        let with_lease = || Some(etcd_client::PutOptions::new().with_lease(lease.id()));
        c.put("/hids/v1/agents/a", "{}", with_lease())
            .await
            .unwrap();
        let other = c.put("/hids/v1/agents/b", "{}", with_lease()).await;
        let denied = format!("{:?}", other.unwrap_err());
        assert!(denied.contains("PermissionDenied"), "{denied}");
        let desired = c.put("/hids/v1/desired/a", "{}", None).await;
        assert!(format!("{:?}", desired.unwrap_err()).contains("PermissionDenied"));
        let listing = c
            .get(
                "/hids/v1/agents/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await;
        assert!(listing.is_err(), "no listing through the gateway");
        // The write went to etcd, on the gateway's lease, and the revoke removes it.
        assert_eq!(etcd.get("/hids/v1/agents/a"), "{}");
        c.lease_revoke(lease.id()).await.unwrap();
    });
    wait_until(
        "the revoked lease's key to go",
        Duration::from_secs(5),
        || etcd.get("/hids/v1/agents/a").is_empty(),
    );
}

/// etcd lost the gateway's lease (here: revoked by hand; in the field, a gateway cut
/// off longer than its TTL): every status key went with it. The gateway takes a new
/// lease and ends its agents' sessions; they register again and their keys come back.
#[test]
fn agents_come_back_when_etcd_loses_the_gateways_lease() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let gw = Gateway::start(&etcd, &["--report-interval", "1s", "--lease-ttl", "12s"]);
    let _sim = sim_through(&gw, 50, &key);
    let before = wait_reported(&etcd, 50);
    let old_lease = before["gateways"][0]["lease"].as_i64().unwrap();
    let revoked = etcd.etcdctl(&["lease", "revoke", &format!("{old_lease:x}")], None);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    wait_until(
        "the agents back on a new gateway lease",
        Duration::from_secs(40),
        || {
            let (summary, code) = gateways(&etcd);
            code == 0
                && summary["keys_total"] == 50
                && summary["gateways"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g["lease"] != old_lease && g["keys_on_lease"] == 50)
        },
    );
    let out = change(&etcd, &key, &["stop", "--all"]);
    assert_eq!(out["acked"], 50, "{out}\n{}", gw.log_text());
}
