//! The control plane end to end: real etcd (started per test on free loopback ports),
//! real agents, real hidsctl.

use std::time::{Duration, Instant};

use hids_test_support::{json, plugin_state, wait_until, write_file, Agent, Certs, Etcd, KeyPair};
use rustix::process::Signal;

const DISABLE_PROCESS: &str = "[[plugins]]\nname = \"process\"\nenabled = false\n";

fn push(etcd: &Etcd, key: &KeyPair, file: &str, target: &[&str]) -> std::process::Output {
    let secret = key.secret();
    let mut args = vec![
        "push", "--key", &secret, "--file", file, "--wait", "30s", "--json",
    ];
    args.extend_from_slice(target);
    etcd.hidsctl(&args)
}

#[test]
fn agents_register_and_leave_within_the_ttl_after_kill_9() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let mut a = Agent::managed(
        &etcd,
        "reg-1",
        &[("env", "prod"), ("idc", "bj")],
        &key.public(),
        "",
    );
    // Registered at once; the plugin's state follows with the next status write.
    wait_until(
        "the agent to register with its plugin running",
        Duration::from_secs(10),
        || {
            etcd.agents(&[])
                .get("reg-1")
                .is_some_and(|a| plugin_state(a, "process") == "running")
        },
    );
    let listed = &etcd.agents(&[])["reg-1"];
    assert_eq!(listed["labels"]["idc"], "bj");
    assert_eq!(listed["applied_generation"], 0);
    assert!(listed["desired_error"].is_null());
    assert_eq!(plugin_state(listed, "process"), "running");
    assert_eq!(listed["mode"], "managed");

    a.stop_with(Signal::KILL);
    let killed = Instant::now();
    wait_until(
        "the agent to leave the listing",
        Duration::from_secs(5 + 5),
        || !etcd.agents(&[]).contains_key("reg-1"),
    );
    eprintln!(
        "left the listing {:?} after kill -9 (ttl 5 s)",
        killed.elapsed()
    );

    let mut b = Agent::managed(&etcd, "reg-2", &[], &key.public(), "");
    wait_until("the agent to register", Duration::from_secs(10), || {
        etcd.agents(&[]).contains_key("reg-2")
    });
    b.stop_with(Signal::TERM);
    // A clean stop revokes the lease: gone at once, not after the TTL.
    wait_until("a stopped agent to leave", Duration::from_secs(2), || {
        !etcd.agents(&[]).contains_key("reg-2")
    });
}

#[test]
fn push_reaches_only_the_selected_agents_and_garbage_is_refused() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let _p1 = Agent::managed(&etcd, "prod-1", &[("env", "prod")], &key.public(), "");
    let _p2 = Agent::managed(&etcd, "prod-2", &[("env", "prod")], &key.public(), "");
    let _s1 = Agent::managed(&etcd, "staging-1", &[("env", "staging")], &key.public(), "");
    wait_until("three agents", Duration::from_secs(10), || {
        etcd.agents(&[]).len() == 3
    });

    let file = write_file(key.dir.path(), "desired.toml", DISABLE_PROCESS);
    let out = push(&etcd, &key, &file, &["--selector", "env=prod"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = json(&out);
    assert_eq!(result["targets"], 2);
    assert_eq!(result["acked"], 2);
    let generation = result["generation"].as_u64().unwrap();

    wait_until("prod plugins to stop", Duration::from_secs(10), || {
        let agents = etcd.agents(&[]);
        ["prod-1", "prod-2"]
            .iter()
            .all(|h| plugin_state(&agents[*h], "process") == "disabled")
    });
    let agents = etcd.agents(&[]);
    for h in ["prod-1", "prod-2"] {
        assert_eq!(agents[h]["applied_generation"], generation);
    }
    assert_eq!(agents["staging-1"]["applied_generation"], 0);
    assert_eq!(plugin_state(&agents["staging-1"], "process"), "running");

    // Garbage straight into the staging agent's key: refused, plugins untouched.
    etcd.put("/hids/v1/desired/staging-1", "{not a signed document");
    wait_until(
        "the refusal to be reported",
        Duration::from_secs(10),
        || etcd.agents(&[])["staging-1"]["desired_error"].is_string(),
    );
    let s = &etcd.agents(&[])["staging-1"];
    assert!(
        s["desired_error"].as_str().unwrap().contains("malformed"),
        "{s:#}"
    );
    assert_eq!(plugin_state(s, "process"), "running");
    assert_eq!(s["applied_generation"], 0);

    // The history has the change, its author and targets.
    let out = etcd.hidsctl(&["history", "--json"]);
    let history = json(&out);
    let record = &history.as_array().unwrap()[0];
    assert_eq!(record["action"], "push");
    assert_eq!(record["generation"], generation);
    assert_eq!(record["hosts"].as_array().unwrap().len(), 2);
    assert!(record["target"].as_str().unwrap().contains("env=prod"));
}

#[test]
fn forged_documents_are_refused_with_their_reason() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let _a = Agent::managed(&etcd, "victim", &[], &key.public(), "");
    let _b = Agent::managed(&etcd, "other", &[], &key.public(), "");
    wait_until("two agents", Duration::from_secs(10), || {
        etcd.agents(&[]).len() == 2
    });
    let file = write_file(key.dir.path(), "desired.toml", DISABLE_PROCESS);
    assert!(push(&etcd, &key, &file, &["--hosts", "victim,other"])
        .status
        .success());
    let old_victim = etcd.get("/hids/v1/desired/victim");
    let other_doc = etcd.get("/hids/v1/desired/other");
    let enable = write_file(
        key.dir.path(),
        "enable.toml",
        "[[plugins]]\nname = \"process\"\nenabled = true\n",
    );
    let out = push(&etcd, &key, &enable, &["--hosts", "victim"]);
    assert!(out.status.success());
    let applied = json(&out)["generation"].as_u64().unwrap();
    wait_until("the plugin to run again", Duration::from_secs(10), || {
        plugin_state(&etcd.agents(&[])["victim"], "process") == "running"
    });

    let stranger = KeyPair::make(&etcd);
    let current = etcd.get("/hids/v1/desired/victim");
    let cases: Vec<(&str, String)> = vec![
        (
            "bad signature",
            current.replace("\"enabled\\\":true", "\"enabled\\\":false"),
        ),
        (
            "malformed",
            r#"{"generation":99,"host_id":"victim"}"#.to_owned(),
        ),
        ("rollback", old_victim),
        ("not this host", other_doc),
    ];
    for (reason, value) in cases {
        assert_ne!(value, current, "{reason}: the forgery must differ");
        etcd.put("/hids/v1/desired/victim", &value);
        wait_until(
            &format!("refusal: {reason}"),
            Duration::from_secs(10),
            || {
                etcd.agents(&[])["victim"]["desired_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(reason))
            },
        );
        let v = &etcd.agents(&[])["victim"];
        assert_eq!(v["applied_generation"], applied, "{reason}");
        assert_eq!(plugin_state(v, "process"), "running", "{reason}");
    }
    // Signed by a key the agent does not trust.
    let out = etcd.hidsctl(&[
        "push",
        "--key",
        &stranger.secret(),
        "--file",
        &file,
        "--hosts",
        "victim",
        "--wait",
        "10s",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "an untrusted push must not count as applied (exit 4: not every target applied it)"
    );
    let result = json(&out);
    assert_eq!(result["refused"], 1, "{result:#}");
    assert!(result["refusals"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("does not trust"));
    assert_eq!(
        plugin_state(&etcd.agents(&[])["victim"], "process"),
        "running"
    );
}

#[test]
fn percentage_rollout_is_stable_and_only_widens() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let hosts: Vec<String> = (0..6).map(|i| format!("pct-{i}")).collect();
    let _agents: Vec<Agent> = hosts
        .iter()
        .map(|h| Agent::managed(&etcd, h, &[], &key.public(), ""))
        .collect();
    wait_until("six agents", Duration::from_secs(15), || {
        etcd.agents(&[]).len() == 6
    });
    let file = write_file(key.dir.path(), "desired.toml", "log_level = \"debug\"\n");
    let mut previous: Vec<String> = Vec::new();
    for pct in ["30", "60", "100"] {
        let out = push(&etcd, &key, &file, &["--percent", pct]);
        let expected: Vec<String> = hosts
            .iter()
            .filter(|h| hids_control::select::in_percent(h, pct.parse().unwrap()))
            .cloned()
            .collect();
        if expected.is_empty() {
            assert!(!out.status.success(), "no host at {pct}% is an error");
            continue;
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let generation = json(&out)["generation"].as_u64().unwrap();
        let agents = etcd.agents(&[]);
        let reached: Vec<String> = hosts
            .iter()
            .filter(|h| agents[*h]["applied_generation"] == generation)
            .cloned()
            .collect();
        assert_eq!(reached, expected, "at {pct}%");
        assert!(
            previous.iter().all(|h| reached.contains(h)),
            "widening only adds hosts"
        );
        previous = reached;
    }
    assert_eq!(previous.len(), 6);
}

#[test]
fn stop_resume_and_restart_plugin() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let _a = Agent::managed(&etcd, "cmd-1", &[], &key.public(), "");
    wait_until("the agent", Duration::from_secs(10), || {
        etcd.agents(&[]).contains_key("cmd-1")
    });
    let out = etcd.hidsctl(&[
        "stop",
        "--all",
        "--key",
        &key.secret(),
        "--wait",
        "20s",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["acked"], 1);
    wait_until("plugins stopped", Duration::from_secs(10), || {
        let a = &etcd.agents(&[])["cmd-1"];
        plugin_state(a, "process") == "stopped" && a["stopped_by_command"] == true
    });
    let out = etcd.hidsctl(&["resume", "--all", "--key", &key.secret(), "--wait", "20s"]);
    assert!(out.status.success());
    wait_until("plugins running", Duration::from_secs(10), || {
        plugin_state(&etcd.agents(&[])["cmd-1"], "process") == "running"
    });
    let out = etcd.hidsctl(&[
        "restart-plugin",
        "process",
        "--hosts",
        "cmd-1",
        "--key",
        &key.secret(),
        "--wait",
        "20s",
    ]);
    assert!(out.status.success());
    wait_until("a restart", Duration::from_secs(10), || {
        let a = &etcd.agents(&[])["cmd-1"];
        a["plugins"][0]["restarts"].as_u64().unwrap_or(0) >= 1
            && plugin_state(a, "process") == "running"
    });
}

/// Issue 16: an operator's snapshot command goes through the signed desired state to
/// the running plugin (the synthetic one answers with one event carrying the command
/// id); a plugin the host does not have is only logged, and the document still applies.
#[test]
fn snapshot_command_reaches_the_running_plugin() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let synthetic = format!(
        "\n[[plugins]]\nname = \"synthetic\"\npath = {:?}\nargs = [\"--count\", \"10\"]\n",
        hids_test_support::bin("hids-plugin-synthetic")
    );
    let a = Agent::managed(&etcd, "snap-1", &[], &key.public(), &synthetic);
    // Its ten events and its stats record: from then on it waits for requests.
    a.wait_events("the synthetic run", Duration::from_secs(10), |evs| {
        evs.iter()
            .any(|e| e["hids"]["plugin"] == "synthetic" && e["event"]["action"] == "stats")
    });
    let snapshot = |plugin: &str| {
        let out = etcd.hidsctl(&[
            "snapshot",
            "--plugin",
            plugin,
            "--hosts",
            "snap-1",
            "--key",
            &key.secret(),
            "--wait",
            "20s",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result = json(&out);
        assert_eq!(result["acked"], 1, "{result:#}");
        assert_eq!(result["action"], format!("snapshot {plugin}"));
        format!("g{}", result["generation"].as_u64().unwrap())
    };
    let id = snapshot("synthetic");
    let answered = |evs: &[serde_json::Value]| {
        evs.iter()
            .filter(|e| e["event"]["action"] == "snapshot_requested")
            .map(|e| e["hids"]["command_id"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    a.wait_events("the plugin's answer", Duration::from_secs(10), |evs| {
        !answered(evs).is_empty()
    });

    let ghost = snapshot("ghost");
    assert!(
        a.stderr_contains_soon(
            &format!("command {ghost}: no snapshot from plugin \"ghost\""),
            Duration::from_secs(10)
        ),
        "{}",
        a.stderr()
    );
    // The ghost's document carries the first command again: it is not run twice.
    assert_eq!(answered(&a.events()), vec![id]);

    let out = etcd.hidsctl(&["stop", "--all", "--key", &key.secret(), "--wait", "20s"]);
    assert!(out.status.success());
    wait_until("plugins stopped", Duration::from_secs(10), || {
        plugin_state(&etcd.agents(&[])["snap-1"], "synthetic") == "stopped"
    });
    let held = snapshot("synthetic");
    assert!(
        a.stderr_contains_soon(
            &format!(
                "command {held}: no snapshot from plugin \"synthetic\": the plugin is stopped"
            ),
            Duration::from_secs(10)
        ),
        "{}",
        a.stderr()
    );
}

#[test]
fn large_settings_go_through_a_blob() {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let _a = Agent::managed(&etcd, "blob-1", &[], &key.public(), "");
    wait_until("the agent", Duration::from_secs(10), || {
        etcd.agents(&[]).contains_key("blob-1")
    });
    let long_args: Vec<String> = (0..100).map(|i| format!("\"arg-{i}\"")).collect();
    let text = format!(
        "[[plugins]]\nname = \"process\"\nargs = [\"3600\", {}]\n",
        long_args.join(", ")
    );
    let file = write_file(key.dir.path(), "big.toml", &text);
    let out = push(&etcd, &key, &file, &["--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = etcd.get("/hids/v1/desired/blob-1");
    assert!(
        doc.contains("body_sha256"),
        "the per-host document refers to the blob: {doc}"
    );
    assert!(
        doc.len() < 1024,
        "the per-host value stays small ({} bytes)",
        doc.len()
    );
    wait_until("the new args", Duration::from_secs(10), || {
        etcd.agents(&[])["blob-1"]["plugins"][0]["restarts"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
}

#[test]
fn etcd_restart_mid_session_agents_reregister_and_keep_applying() {
    let mut etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let _a = Agent::managed(&etcd, "survivor", &[], &key.public(), "");
    wait_until("the agent", Duration::from_secs(10), || {
        etcd.agents(&[]).contains_key("survivor")
    });
    etcd.restart();
    let file = write_file(key.dir.path(), "desired.toml", DISABLE_PROCESS);
    // Reconnects back off from 1 s; within the wait the agent is back and applies.
    let out = push(&etcd, &key, &file, &["--hosts", "survivor"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until("the plugin to stop", Duration::from_secs(10), || {
        plugin_state(&etcd.agents(&[])["survivor"], "process") == "disabled"
    });
}

#[test]
fn agent_started_while_etcd_is_down_runs_on_its_cache_and_registers_later() {
    let mut etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let mut a = Agent::managed(&etcd, "cached", &[], &key.public(), "");
    wait_until("the agent", Duration::from_secs(10), || {
        etcd.agents(&[]).contains_key("cached")
    });
    let file = write_file(key.dir.path(), "desired.toml", DISABLE_PROCESS);
    let out = push(&etcd, &key, &file, &["--hosts", "cached"]);
    assert!(out.status.success());
    let generation = json(&out)["generation"].as_u64().unwrap();
    a.stop_with(Signal::TERM);
    etcd.stop();

    a.spawn();
    wait_until(
        "the cached state to be applied without etcd",
        Duration::from_secs(10),
        || {
            a.status().is_some_and(|s| {
                s["applied_generation"] == generation && plugin_state(&s, "process") == "disabled"
            })
        },
    );
    assert!(
        a.stderr().contains("cached desired state"),
        "{}",
        a.stderr()
    );
    etcd.restart();
    wait_until(
        "registration once etcd is back",
        Duration::from_secs(40),
        || {
            etcd.agents(&[])
                .get("cached")
                .is_some_and(|s| s["applied_generation"] == generation)
        },
    );
}

#[test]
fn tls_and_rbac_agent_credentials_cannot_write_desired_states() {
    let certs = Certs::make();
    let etcd = Etcd::start_tls(&certs);
    let key = KeyPair::make(&etcd);
    let out = etcd.hidsctl(&[
        "bootstrap",
        "--root-password",
        "rootpw",
        "--insecure-shared-agent-user",
        "--agent-password",
        "agentpw",
        "--operator-password",
        "oppw",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let control_extra = format!(
        "user = \"hids-agent\"\npassword = \"agentpw\"\nca_file = {:?}\n",
        certs.path("ca.pem")
    );
    let _a = Agent::managed(&etcd, "tls-1", &[], &key.public(), &control_extra);
    let op = ["--user", "hids-operator", "--password", "oppw"];
    wait_until(
        "the agent to register over TLS with its credentials",
        Duration::from_secs(15),
        || etcd.agents(&op).contains_key("tls-1"),
    );
    // Without credentials nothing is readable.
    assert!(!etcd.hidsctl(&["agents", "--json"]).status.success());
    // The agent's credentials read desired states but cannot write them.
    let denied = etcd.etcdctl(
        &["put", "/hids/v1/desired/tls-1", "forged"],
        Some("hids-agent:agentpw"),
    );
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let read = etcd.etcdctl(
        &["get", "/hids/v1/desired/tls-1"],
        Some("hids-agent:agentpw"),
    );
    assert!(read.status.success());
    // The operator pushes, over TLS with its credentials.
    let file = write_file(key.dir.path(), "desired.toml", DISABLE_PROCESS);
    let mut args = op.to_vec();
    let secret = key.secret();
    args.extend([
        "push", "--key", &secret, "--file", &file, "--all", "--wait", "20s",
    ]);
    let out = etcd.hidsctl(&args);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
