//! Fleet health end to end: real agents registered in a real etcd, events through a real
//! Kafka API (tansu), the server's fleet alerts, league and metrics.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sqlite_server;
use hids_test_support::{etcd_available, require_root, tag, Agent, Broker, Etcd, KeyPair};
use serde_json::{json, Value};

/// An event of one of the agent's own streams (or a plugin's stats), as the agent writes
/// it (docs/events.md).
fn stream_event(
    host: &str,
    plugin: &str,
    run: &str,
    seq: u64,
    action: &str,
    hids: Value,
) -> Vec<u8> {
    let mut h = json!({"plugin": plugin, "run_id": run});
    if let (Some(h), Some(extra)) = (h.as_object_mut(), hids.as_object()) {
        h.extend(extra.clone());
    }
    json!({
        "@timestamp": "2026-11-30T10:00:00.000000Z",
        "event": {"kind": if action == "stats" { "metric" } else { "event" },
                  "category": ["host"], "type": ["info"], "action": action,
                  "sequence": seq, "module": "hids", "dataset": format!("hids.{plugin}")},
        "host": {"id": host, "hostname": format!("{host}.example")},
        "labels": {"idc": "bj1", "project": "shop"},
        "hids": h,
    })
    .to_string()
    .into_bytes()
}

fn guard_stats(cpu: f64, rss: f64) -> Value {
    json!({"guard": {"state": "ok", "trips": 0, "cooldown_secs": 60, "cpu_percent": cpu,
                     "cpu_percent_host": cpu / 2.0, "rss_mb": rss, "processes": []}})
}

fn with_rule<'a>(alerts: &'a [Value], rule: &str, host: &str) -> Option<&'a Value> {
    alerts
        .iter()
        .find(|a| a["rule_id"] == rule && a["host_id"] == host)
}

#[test]
fn gaps_nobody_declared_are_loss_declared_drops_are_not_and_restarts_and_bad_stats_are_neither() {
    let topic = format!("fleet-{}", tag());
    let broker = Broker::start();
    broker.create_topic(&topic);
    let (lossy, restarts, liar) = (
        format!("lossy-{}", tag()),
        format!("restart-{}", tag()),
        format!("liar-{}", tag()),
    );
    let mut batch = Vec::new();
    let mut send = |host: &str, ev: Vec<u8>| batch.push((host.to_owned(), ev));
    // `lossy`: process run r1 emits 1..=10; 4..=6 never arrive, the pipeline declares 5.
    for seq in (1..=10).filter(|s| !(4..=6).contains(s)) {
        send(
            &lossy,
            stream_event(&lossy, "process", "r1", seq, "exec", json!({})),
        );
    }
    send(
        &lossy,
        stream_event(
            &lossy,
            "pipeline",
            "p1",
            1,
            "dropped",
            json!({"dropped": [{"plugin": "process", "run_id": "r1", "from_seq": 5, "to_seq": 5, "reason": "queue_full"}]}),
        ),
    );
    // `restarts`: run a1 killed at 3 (no declared end), a2 starts from 1; a clock that jumped.
    for seq in 1..=3 {
        send(
            &restarts,
            stream_event(&restarts, "process", "a1", seq, "exec", json!({})),
        );
    }
    for seq in 1..=3 {
        let mut ev: Value = serde_json::from_slice(&stream_event(
            &restarts,
            "process",
            "a2",
            seq,
            "exec",
            json!({}),
        ))
        .unwrap();
        ev["@timestamp"] = json!("2031-01-01T00:00:00Z");
        send(&restarts, ev.to_string().into_bytes());
    }
    // `liar`: absurd stats (negative CPU, u64::MAX emitted, a sequence jump), counted and ignored.
    send(
        &liar,
        stream_event(&liar, "agent", "g1", 1, "stats", guard_stats(-5.0, 10.0)),
    );
    send(
        &liar,
        stream_event(
            &liar,
            "process",
            "x1",
            1,
            "stats",
            json!({"stats": {"events_emitted": u64::MAX, "capture": "ebpf"}}),
        ),
    );
    send(
        &liar,
        stream_event(&liar, "process", "x1", u64::MAX, "exec", json!({})),
    );
    // `joined`: the server meets a run midway (started late, or the partition moved):
    // owed from its first number seen, not from 1.
    let joined = format!("joined-{}", tag());
    for seq in 500..=505 {
        send(
            &joined,
            stream_event(&joined, "process", "j1", seq, "exec", json!({})),
        );
    }
    // Its pipeline declares the end of a run before any event of it arrives, then its
    // last events come: nothing before them is owed.
    send(
        &joined,
        stream_event(
            &joined,
            "pipeline",
            "jp",
            77,
            "run_end",
            json!({"ended": [{"plugin": "agent", "run_id": "ja", "last_seq": 600, "how": "stopped"}]}),
        ),
    );
    for seq in 598..=600 {
        send(
            &joined,
            stream_event(&joined, "agent", "ja", seq, "stats", guard_stats(1.0, 10.0)),
        );
    }
    // `kern`: kernel loss counted before the server joined the run is a starting point;
    // what grows after it is an alert, counted.
    let kern = format!("kern-{}", tag());
    for (seq, lost) in [(10, 50), (11, 55)] {
        send(
            &kern,
            stream_event(
                &kern,
                "process",
                "k1",
                seq,
                "stats",
                json!({"stats": {"events_emitted": seq - 1, "capture": "ebpf", "dropped": {"kernel_lost": lost, "ring_buffer_full": 0}}}),
            ),
        );
    }
    // The league: three hosts' agent stats.
    for (i, cpu) in [(1, 0.5), (2, 4.5), (3, 2.0)] {
        let h = format!("league-{i}-{}", tag());
        send(
            &h,
            stream_event(
                &h,
                "agent",
                "g1",
                1,
                "stats",
                guard_stats(cpu, 10.0 * f64::from(i)),
            ),
        );
        send(
            &h,
            stream_event(&h, "agent", "g1", 2, "stats", guard_stats(cpu, 5.0)),
        );
    }
    broker.produce(&topic, &batch);
    let (_dir, server) = sqlite_server(
        &broker,
        &topic,
        "[fleet]\nloss_grace_secs = 1\nleague_secs = 1\n",
    );
    let alerts = server.wait_alerts(
        "the loss alerts",
        "?limit=1000",
        Duration::from_secs(60),
        |a| {
            with_rule(a, "hids-data-loss-undeclared", &lossy).is_some()
                && with_rule(a, "hids-data-loss-declared", &lossy).is_some()
        },
    );
    let kernel = with_rule(&alerts, "hids-agent-kernel-loss", &kern).expect("kernel loss alert");
    assert_eq!(kernel["count"], 5, "{kernel:#}");
    let undeclared = with_rule(&alerts, "hids-data-loss-undeclared", &lossy).unwrap();
    assert_eq!(undeclared["count"], 2, "{undeclared:#}");
    assert_eq!(undeclared["level"], "high");
    assert_eq!(undeclared["labels"]["idc"], "bj1");
    assert_eq!(
        with_rule(&alerts, "hids-data-loss-declared", &lossy).unwrap()["count"],
        1
    );
    // Give the sweeps time to be wrong about the others.
    std::thread::sleep(Duration::from_secs(4));
    let alerts: Vec<Value> =
        serde_json::from_value(server.get("/api/v1/alerts?limit=1000")).unwrap();
    for host in [&restarts, &liar, &joined] {
        assert!(
            alerts.iter().all(|a| a["host_id"] != host.as_str()),
            "no alert for {host}: {alerts:#?}"
        );
    }
    assert!(
        server.metric("hids_server_fleet_stats_refused_total{reason=\"absurd_figures\"}") >= 1.0
    );
    assert!(
        server.metric("hids_server_fleet_stats_refused_total{reason=\"emitted_beyond_sequence\"}")
            >= 1.0
    );
    assert!(
        server.metric("hids_server_fleet_stats_refused_total{reason=\"sequence_jump\"}") >= 1.0
    );
    assert_eq!(
        server.metric("hids_server_fleet_loss_events_total{kind=\"undeclared\"}"),
        2.0
    );
    // The league: highest mean CPU first, with labels; memory by the day's peak.
    let top = server.get("/api/v1/fleet/top?by=cpu&limit=2");
    let top = top.as_array().unwrap();
    assert_eq!(top.len(), 2, "{top:#?}");
    assert!(top[0]["host_id"].as_str().unwrap().starts_with("league-2-"));
    assert_eq!(top[0]["value"], 4.5);
    assert_eq!(top[0]["labels"]["idc"], "bj1");
    assert!(top[1]["host_id"].as_str().unwrap().starts_with("league-3-"));
    let mem = server.get("/api/v1/fleet/top?by=memory&limit=1");
    assert!(
        mem[0]["host_id"].as_str().unwrap().starts_with("league-3-"),
        "{mem:#}"
    );
    assert_eq!(mem[0]["value"], 30.0);
    let (status, err) = server.get_status("/api/v1/fleet/top?by=disk");
    assert_eq!(status, 400, "{err}");
    // hidsctl lists the same, as a table and as JSON.
    let hidsctl = |args: &[&str]| {
        let out = std::process::Command::new(hids_test_support::bin("hidsctl"))
            .args(["top", "--server", &server.url("")])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed: Value = serde_json::from_str(&hidsctl(&["--by", "memory", "--json"])).unwrap();
    assert_eq!(listed[0]["value"], 30.0, "{listed:#}");
    let table = hidsctl(&["--limit", "3"]);
    assert!(
        table.contains("HOST") && table.contains("idc=bj1"),
        "{table}"
    );
    // Nothing per host in the metrics.
    let metrics = server.metrics();
    assert!(!metrics.contains("host_id="), "{metrics}");
    assert!(!metrics.contains(&lossy), "{metrics}");
}

#[test]
fn a_registered_agent_whose_events_never_arrive_raises_silence_and_kafka_alerts() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let topic = format!("fleet-{}", tag());
    let broker = Broker::start();
    broker.create_topic(&topic);
    let host = format!("silent-{}", tag());
    let spool = tempfile::tempdir().unwrap();
    // Its Kafka is a closed port: registered in etcd, events never arrive.
    let closed = hids_test_support::free_port();
    let _agent = Agent::managed(
        &etcd,
        &host,
        &[("idc", "sz2"), ("project", "pay")],
        &key.public(),
        // Kafka's backlog is no "change" to write at once (a fleet-wide Kafka outage would
        // be a million etcd writes): it travels with the status refresh.
        &format!(
            "status_refresh_secs = 2\n[[sinks]]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:{closed}\"\ntopic = \"{topic}\"\nmessage_timeout_ms = 1000\n\
             [spool]\ndir = {:?}\n",
            spool.path()
        ),
    );
    let silence_secs = 5;
    let (_dir, server) = sqlite_server(
        &broker,
        &topic,
        &format!(
            "[etcd]\nendpoints = [\"{}\"]\n[fleet]\nsilence_secs = {silence_secs}\nbacklog_secs = 5\n",
            etcd.url()
        ),
    );
    let started = std::time::Instant::now();
    let alerts = server.wait_alerts(
        "the silence alert",
        "?rule_id=hids-agent-silent",
        Duration::from_secs(silence_secs + 60 + 15),
        |a| with_rule(a, "hids-agent-silent", &host).is_some(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(silence_secs + 60),
        "silence alert after {:?}",
        started.elapsed()
    );
    let silent = with_rule(&alerts, "hids-agent-silent", &host).unwrap();
    assert_eq!(silent["level"], "high");
    assert_eq!(silent["labels"]["idc"], "sz2");
    assert!(
        silent["event"]["hids"]["fleet"]["silent_secs"]
            .as_u64()
            .unwrap()
            >= silence_secs
    );
    server.wait_alerts(
        "the Kafka alert",
        "?rule_id=hids-agent-kafka-unreachable",
        Duration::from_secs(60),
        |a| with_rule(a, "hids-agent-kafka-unreachable", &host).is_some(),
    );
    // Presence by label and version, fleet-wide, in the API and the metrics.
    let summary = server.get("/api/v1/fleet/summary?by=idc");
    assert_eq!(summary["registered"]["by"]["sz2"], 1, "{summary:#}");
    assert_eq!(summary["etcd_connected"], true);
    let metrics = server.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("hids_server_fleet_agents_online{") && l.contains("idc=\"sz2\"")),
        "{metrics}"
    );
    assert!(!metrics.contains("host_id="));
}

#[test]
fn an_agent_whose_guard_trips_raises_an_alert() {
    require_root!();
    let topic = format!("fleet-{}", tag());
    let broker = Broker::start();
    broker.create_topic(&topic);
    let host = format!("guarded-{}", tag());
    // A limit no agent meets: the guard trips after its first sample over it.
    let agent = Agent::start(&format!(
        "host_id = \"{host}\"\n\
         [[sinks]]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
         [guard]\ncpu_percent = 0.000001\nconsecutive = 1\ninterval_secs = 1\n\
         [labels]\nidc = \"gz3\"\n",
        broker.addr()
    ));
    // Not waiting for the plugins: the guard may stop them before they are up (its
    // first sample comes after a second, an eBPF load on a busy machine takes longer),
    // and the trip is the agent's own event either way.
    let _agent = agent;
    let (_dir, server) = sqlite_server(&broker, &topic, "[fleet]\nleague_secs = 1\n");
    let alerts = server.wait_alerts(
        "the guard alert",
        "?rule_id=hids-agent-guard-tripped",
        Duration::from_secs(90),
        |a| with_rule(a, "hids-agent-guard-tripped", &host).is_some(),
    );
    let a = with_rule(&alerts, "hids-agent-guard-tripped", &host).unwrap();
    assert_eq!(a["level"], "medium");
    assert_eq!(a["labels"]["idc"], "gz3");
    assert_eq!(a["event"]["event"]["action"], "guard_tripped");
    assert!(server.metric("hids_server_fleet_guard_trips_total") >= 1.0);
}

/// Presence alerts come from the instance holding `crc32(host_id) % partitions` of the
/// agents' topic: true only if librdkafka's default partitioner (what the agent uses; it
/// refuses another) puts a keyed message exactly there.
#[test]
fn the_owner_of_a_host_is_the_partition_librdkafka_puts_its_events_in() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let topic = format!("owners-{}", tag());
    let broker = Broker::start();
    broker.create_topic_with(&topic, 4);
    let hosts: Vec<String> = (0..64).map(|i| format!("host-{i}-{}", tag())).collect();
    let batch: Vec<(String, Vec<u8>)> = hosts.iter().map(|h| (h.clone(), b"{}".to_vec())).collect();
    broker.produce(&topic, &batch);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", format!("owners-{}", tag()))
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen < hosts.len() && std::time::Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        let hash = crc32fast::hash(key.as_bytes());
        assert_eq!(m.partition() as u32, hash % 4, "{key}");
        for p in 0..4 {
            let ownership = hids_server::fleet::Ownership {
                partitions: 4,
                held: [(p, 0)].into_iter().collect(),
                ..Default::default()
            };
            assert_eq!(
                ownership.owns(hash).is_some(),
                p == m.partition(),
                "{key} {p}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, hosts.len());
}
