//! Staged rollouts (`hidsctl rollout`) against a real etcd and `hids-sim`'s simulated
//! updates: what `bench/rollout` runs at 100,000 agents, checked at a few hundred.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hids_test_support::{bin, json, wait_until, write_file, Etcd, KeyPair, Sim};
use serde_json::Value;

const AGENTS: usize = 300;

fn desired(version: &str, url: bool) -> String {
    let mut text = format!("[[plugins]]\nname = \"process\"\nversion = \"{version}\"\n");
    text.push_str(&format!("sha256 = \"{}\"\n", "ab".repeat(32)));
    if url {
        text.push_str("url = \"http://127.0.0.1:9/hids-plugin-process\"\n");
    }
    text
}

fn sim(etcd: &Etcd, key: &KeyPair, update_secs: &str, fail_percent: &str) -> Sim {
    let trusted = key.public();
    Sim::start(
        etcd,
        AGENTS,
        &[
            "--connections",
            "2",
            "--trusted-key",
            trusted.to_str().unwrap(),
            "--update-secs",
            update_secs,
            "--update-fail-percent",
            fail_percent,
        ],
    )
}

fn hidsctl(etcd: &Etcd, args: &[&str]) -> (Option<i32>, Value, Output) {
    let out = etcd.hidsctl(args);
    let value = if out.stdout.is_empty() {
        Value::Null
    } else {
        json(&out)
    };
    (out.status.code(), value, out)
}

/// Every host's desired generation, from etcd.
fn desired_generations(etcd: &Etcd) -> BTreeMap<String, u64> {
    let out = etcd.etcdctl(&["get", "--prefix", "/hids/v1/desired/"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|kv| {
            let host = kv[0].rsplit('/').next().unwrap().to_owned();
            let envelope: Value = serde_json::from_str(kv[1]).unwrap();
            let doc: Value = serde_json::from_str(envelope["doc"].as_str().unwrap()).unwrap();
            (host, doc["generation"].as_u64().unwrap())
        })
        .collect()
}

fn records(etcd: &Etcd) -> Vec<Value> {
    let out = etcd.etcdctl(
        &[
            "get",
            "--prefix",
            "/hids/v1/rollouts/",
            "--print-value-only",
        ],
        None,
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sum(out: &Value, field: &str) -> u64 {
    out["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[field].as_u64().unwrap())
        .sum()
}

#[test]
fn a_rollout_goes_wave_by_wave_to_every_host() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let secret = key.secret();
    let dir = tempfile::tempdir().unwrap();
    let _sim = sim(&etcd, &key, "1", "0");

    // A build without a url: refused before anything is written.
    let bad = write_file(dir.path(), "bad.toml", &desired("2.0.0", false));
    let (code, _, out) = hidsctl(
        &etcd,
        &[
            "rollout", "start", "--file", &bad, "--all", "--key", &secret,
        ],
    );
    assert_eq!(code, Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("no url"), "{err}");
    assert!(records(&etcd).is_empty());
    assert!(desired_generations(&etcd).is_empty());

    let file = write_file(dir.path(), "desired.toml", &desired("2.0.0", true));
    let (code, out, _) = hidsctl(
        &etcd,
        &[
            "rollout",
            "start",
            "--file",
            &file,
            "--all",
            "--key",
            &secret,
            "--waves",
            "1,10,50,100",
            "--wave-timeout",
            "2m",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out["state"], "completed", "{out}");
    assert_eq!(out["plugins"][0]["version"], "2.0.0");
    assert_eq!(out["waves"].as_array().unwrap().len(), 4);
    assert_eq!(sum(&out, "targets"), AGENTS as u64, "{out}");
    assert_eq!(sum(&out, "healthy"), AGENTS as u64, "{out}");
    assert_eq!(sum(&out, "failed") + sum(&out, "rolled_back"), 0);
    // Each host written once, by its own wave's generation.
    let generations = desired_generations(&etcd);
    assert_eq!(generations.len(), AGENTS);
    for w in out["waves"].as_array().unwrap() {
        let g = w["generation"].as_u64().unwrap();
        let written = generations.values().filter(|x| **x == g).count() as u64;
        assert_eq!(written, w["targets"].as_u64().unwrap(), "{w}");
    }
    let agents = etcd.agents(&[]);
    assert!(agents
        .values()
        .all(|a| a["plugins"][0]["version"] == "2.0.0"
            && a["plugins"][0]["update"]["phase"] == "healthy"));
    // The history names the rollout and the wave.
    let (_, history, _) = hidsctl(&etcd, &["history", "--limit", "100", "--json"]);
    let id = out["rollout"].as_str().unwrap();
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == format!("rollout {id} wave 4/4 (100%)")));
    let (code, listed, _) = hidsctl(&etcd, &["rollout", "list", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(listed[0]["rollout"], id);
}

#[test]
fn a_rollout_with_many_rollbacks_halts_at_its_first_wave() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let secret = key.secret();
    let dir = tempfile::tempdir().unwrap();
    let _sim = sim(&etcd, &key, "1", "50");
    let file = write_file(dir.path(), "desired.toml", &desired("2.0.0", true));
    let (code, out, _) = hidsctl(
        &etcd,
        &[
            "rollout",
            "start",
            "--file",
            &file,
            "--all",
            "--key",
            &secret,
            "--waves",
            "10,100",
            "--max-failure-percent",
            "5",
            "--json",
        ],
    );
    assert_eq!(code, Some(6), "{out}");
    assert_eq!(out["state"], "halted", "{out}");
    let first = &out["waves"][0];
    assert_eq!(first["state"], "halted");
    assert!(first["rolled_back"].as_u64().unwrap() > 0, "{out}");
    assert!(
        out["reason"].as_str().unwrap().contains("rolled back"),
        "{out}"
    );
    assert!(first["failures"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("3 exits"));
    // The second wave was never written: only the first wave's hosts have documents.
    assert_eq!(out["waves"][1]["state"], "waiting");
    assert_eq!(out["waves"][1]["generation"], 0);
    let generations = desired_generations(&etcd);
    assert_eq!(generations.len() as u64, first["targets"].as_u64().unwrap());
    // The record says the same.
    let (code, status, _) = hidsctl(&etcd, &["rollout", "status", "--json"]);
    assert_eq!(code, Some(6));
    assert_eq!(status["state"], "halted");
}

#[test]
fn rollout_status_resumes_a_killed_rollout_and_continue_finishes_it() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let secret = key.secret();
    let dir = tempfile::tempdir().unwrap();
    let _sim = sim(&etcd, &key, "8", "0");
    let file = write_file(dir.path(), "desired.toml", &desired("2.0.0", true));
    let mut child = Command::new(bin("hidsctl"))
        .args([
            "--endpoints",
            &etcd.url(),
            "rollout",
            "start",
            "--file",
            &file,
        ])
        .args(["--all", "--key", &secret, "--waves", "20,100", "--json"])
        .env_remove("HIDSCTL_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the first wave to be written",
        Duration::from_secs(30),
        || {
            records(&etcd)
                .first()
                .is_some_and(|r| r["waves"][0]["state"] == "watching")
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let record = &records(&etcd)[0];
    assert_eq!(record["state"], "running", "{record}");
    let id = record["rollout"].as_str().unwrap().to_owned();

    // Follows the wave in progress to its end, records it, and waits for --continue.
    let (code, out, _) = hidsctl(&etcd, &["rollout", "status", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out["rollout"], id.as_str());
    assert_eq!(out["state"], "paused", "{out}");
    let first = &out["waves"][0];
    assert_eq!(first["state"], "done");
    assert_eq!(first["healthy"], first["targets"], "{out}");
    assert_eq!(out["waves"][1]["generation"], 0);
    assert_eq!(records(&etcd)[0]["state"], "paused");

    let (code, out, _) = hidsctl(
        &etcd,
        &[
            "rollout",
            "status",
            &id,
            "--continue",
            "--key",
            &secret,
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out["state"], "completed", "{out}");
    assert_eq!(sum(&out, "healthy"), AGENTS as u64, "{out}");
    let g0 = out["waves"][0]["generation"].as_u64().unwrap();
    let g1 = out["waves"][1]["generation"].as_u64().unwrap();
    assert!(g1 > g0);
    let generations = desired_generations(&etcd);
    assert_eq!(generations.len(), AGENTS);
    assert!(generations.values().all(|g| *g == g0 || *g == g1));
    // Nothing left to continue.
    let (code, _, out) = hidsctl(
        &etcd,
        &["rollout", "status", &id, "--continue", "--key", &secret],
    );
    assert_eq!(code, Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no wave left"));
}

/// Hosts that come online after their bucket's wave was written join the next wave:
/// none is skipped, none is written twice.
#[test]
fn hosts_that_missed_their_wave_join_the_next_one() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let secret = key.secret();
    let dir = tempfile::tempdir().unwrap();
    let _early = sim(&etcd, &key, "4", "0");
    let file = write_file(dir.path(), "demo.toml", &desired("2", true));
    let rollout = Command::new(bin("hidsctl"))
        .args([
            "--endpoints",
            &etcd.url(),
            "rollout",
            "start",
            "--file",
            &file,
        ])
        .args(["--all", "--key", &secret, "--waves", "20,100", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("wave 1 to be written", Duration::from_secs(60), || {
        records(&etcd)
            .first()
            .is_some_and(|r| r["waves"][0]["state"] == "watching")
    });
    let trusted = key.public();
    let late_agents = 100;
    let _late = Sim::start(
        &etcd,
        late_agents,
        &[
            "--host-prefix",
            "late-",
            "--trusted-key",
            trusted.to_str().unwrap(),
            "--update-secs",
            "1",
        ],
    );
    let out = rollout.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["state"], "completed", "{result:#}");
    assert_eq!(
        sum(&result, "targets") as usize,
        AGENTS + late_agents,
        "{result:#}"
    );
    assert_eq!(
        sum(&result, "healthy") as usize,
        AGENTS + late_agents,
        "{result:#}"
    );
    let generations = desired_generations(&etcd);
    let wave_2 = result["waves"][1]["generation"].as_u64().unwrap();
    let late: Vec<_> = generations
        .iter()
        .filter(|(h, _)| h.starts_with("late-"))
        .collect();
    assert_eq!(late.len(), late_agents);
    assert!(
        late.iter().all(|(_, g)| **g == wave_2),
        "late hosts all in wave 2"
    );
}
