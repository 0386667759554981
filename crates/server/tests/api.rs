//! hids-server end to end without an agent: events written to a real Kafka-protocol
//! broker (tansu) as the agents write them, the real server binary reading them as a
//! consumer group, its API, webhooks and alerts topic checked from outside.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hids_test_support::{skip_unless, tag, wait_until, Broker, Server};
use serde_json::{json, Value};

const T0: &str = "2026-11-30T10:00:05.000001Z";

fn setup(topic: &str) -> Broker {
    let broker = Broker::start();
    broker.create_topic(topic);
    broker
}

#[test]
fn matches_fold_into_one_alert_per_rule_host_and_window_with_a_count() {
    let topic = format!("events-{}", tag());
    let broker = setup(&topic);
    let labels = [("idc", "bj1"), ("project", "shop"), ("product", "pay")];
    let mut msgs = Vec::new();
    for seq in 1..=5 {
        msgs.push(("h1".to_string(), reverse_shell("h1", &labels, T0, seq)));
        msgs.push(("h1".to_string(), benign("h1", T0, 100 + seq)));
    }
    msgs.push((
        "h2".to_string(),
        reverse_shell("h2", &[("idc", "sh2")], T0, 1),
    ));
    // The next hour: a new window, a new alert.
    msgs.push((
        "h2".to_string(),
        reverse_shell("h2", &[("idc", "sh2")], "2026-11-30T11:00:01Z", 2),
    ));
    broker.produce(&topic, &msgs);
    let (_dir, server) = sqlite_server(&broker, &topic, "");
    let alerts = server.wait_alerts(
        "3 reverse-shell alerts",
        "?min_level=critical",
        Duration::from_secs(60),
        |a| {
            a.len() >= 3
                && a.iter()
                    .map(|x| x["count"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    >= 7
        },
    );
    let h1 = alerts_of(&alerts, "h1");
    assert_eq!(h1.len(), 1, "one alert for five matches: {alerts:#?}");
    let a = h1[0];
    assert_eq!(a["count"], 5);
    assert_eq!(a["level"], "critical");
    assert_eq!(a["labels"]["idc"], "bj1");
    assert_eq!(a["hostname"], "h1.example");
    for key in [
        "id",
        "rule_id",
        "title",
        "first_seen",
        "last_seen",
        "created_at",
    ] {
        assert!(a[key].is_string(), "{key} missing: {a:#}");
    }
    assert_eq!(
        a["event"]["process"]["command_line"], REVERSE_SHELL,
        "the evidence as received"
    );
    assert!(
        !a["techniques"].as_array().unwrap().is_empty(),
        "ATT&CK technique: {a:#}"
    );
    assert_eq!(alerts_of(&alerts, "h2").len(), 2, "two windows, two alerts");
    // Filters and aggregation.
    let rule = a["rule_id"].as_str().unwrap();
    let only_h1 = server.get(&format!("/api/v1/alerts?idc=bj1&rule_id={rule}"));
    assert_eq!(only_h1.as_array().unwrap().len(), 1);
    let by_rule = server.get("/api/v1/alerts/summary?by=rule_id&min_level=critical");
    let row = by_rule
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == rule)
        .unwrap();
    assert_eq!(
        (row["count"].as_u64(), row["events"].as_u64()),
        (Some(3), Some(7))
    );
    let by_idc = server.get("/api/v1/alerts/summary?by=idc&min_level=critical");
    let count_of = |key: &str| {
        by_idc
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .map(|r| r["count"].clone())
    };
    assert_eq!(count_of("bj1"), Some(json!(1)), "{by_idc}");
    assert_eq!(count_of("sh2"), Some(json!(2)), "{by_idc}");
    for by in ["level", "project", "product"] {
        let (status, rows) = server.get_status(&format!("/api/v1/alerts/summary?by={by}"));
        assert_eq!(status, 200, "{rows}");
        assert!(
            rows.as_array().is_some_and(|r| !r.is_empty()),
            "by {by}: {rows}"
        );
    }
    let (status, err) = server.get_status("/api/v1/alerts?levle=high");
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("levle"), "{err}");
    // Ordinary commands raised nothing.
    let all = server.get("/api/v1/alerts?limit=1000");
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|a| a["event"]["process"]["command_line"] != "ls -l /etc/hostname"),
        "{all:#}"
    );
}

#[test]
fn malformed_events_are_counted_and_skipped_and_the_consumer_goes_on() {
    let topic = format!("events-{}", tag());
    let broker = setup(&topic);
    let huge = format!(
        "{{\"host\":{{\"id\":\"h1\"}},\"x\":\"{}\"}}",
        "a".repeat(300 * 1024)
    );
    let wrong_types = br#"{"@timestamp":17,"host":{"id":"h1"},"event":{"action":["exec"]},"process":{"command_line":{"a":1},"executable":42,"args":"x"}}"#;
    let msgs: Vec<(String, Vec<u8>)> = vec![
        ("h1".into(), b"not json at all".to_vec()),
        ("h1".into(), b"[1,2,3]".to_vec()),
        ("h1".into(), br#"{"host":{"id":12}}"#.to_vec()),
        ("h1".into(), huge.into_bytes()),
        ("h1".into(), wrong_types.to_vec()),
        ("h1".into(), Vec::new()),
        ("h1".into(), reverse_shell("h1", &[], T0, 1)),
    ];
    broker.produce(&topic, &msgs);
    let (_dir, server) = sqlite_server(&broker, &topic, "");
    server.wait_alerts(
        "the alert after the bad events",
        "",
        Duration::from_secs(60),
        |a| !a.is_empty(),
    );
    let m = |reason: &str| {
        server.metric(&format!(
            "hids_server_events_malformed_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(m("not_json"), 2.0, "{}", server.metrics());
    assert_eq!(m("no_host"), 1.0);
    assert_eq!(m("too_large"), 1.0);
    assert_eq!(m("empty"), 1.0);
    assert!(server.metric("hids_server_events_total") >= 7.0);
    let health = server.get("/api/v1/health");
    for key in [
        "events_per_second",
        "consumer_lag",
        "detect_microseconds_per_event",
        "alerts_by_level",
    ] {
        assert!(!health[key].is_null(), "{key}: {health:#}");
    }
}

#[test]
fn rules_are_listed_loaded_or_refused_with_the_reason() {
    let sigma = sigma_dir();
    skip_unless!(
        sigma.is_dir(),
        "the SigmaHQ rules are not beside the checkout (../shared/data/sigma)"
    );
    let topic = format!("events-{}", tag());
    let broker = setup(&topic);
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("rules");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("broken.yml"), "title: [unclosed\n  detection: {").unwrap();
    std::fs::write(
        mine.join("ours.yml"),
        "title: Our own\nid: 0b5e7c1e-0000-4000-8000-000000000001\nlevel: high\n\
         logsource:\n  category: process_creation\n  product: linux\n\
         detection:\n  selection:\n    process.command_line|contains: 'our-marker'\n  condition: selection\n",
    )
    .unwrap();
    let extra = format!("[rules]\npaths = [{:?}, {:?}]\n", sigma, mine);
    let server = Server::start(&sqlite_config(
        &broker.addr(),
        &topic,
        "g1",
        &dir.path().join("a.db"),
        &extra,
    ));
    let rules = server.get("/api/v1/rules");
    let rules = rules.as_array().unwrap();
    let loaded_sigma = rules
        .iter()
        .filter(|r| {
            r["status"] == "loaded" && r["source"].as_str().unwrap().contains("process_creation")
        })
        .count();
    assert_eq!(
        loaded_sigma, 122,
        "every SigmaHQ process_creation rule loads"
    );
    let broken = rules
        .iter()
        .find(|r| r["source"].as_str().unwrap().ends_with("broken.yml"))
        .unwrap();
    assert_ne!(broken["status"], "loaded");
    assert!(
        broken["status"].as_str().unwrap().len() > 5,
        "a reason: {broken}"
    );
    let ours = rules
        .iter()
        .find(|r| r["id"] == "0b5e7c1e-0000-4000-8000-000000000001")
        .unwrap();
    assert_eq!(ours["status"], "loaded");
    assert!(
        rules
            .iter()
            .any(|r| r["source"].as_str().unwrap().starts_with("builtin:")
                && r["status"] == "loaded"),
        "the built-in pack loads beside the directories"
    );
    let other = rules
        .iter()
        .find(|r| r["source"].as_str().unwrap().contains("/file_event/"))
        .unwrap();
    assert_ne!(other["status"], "loaded", "{other}");
    for r in rules {
        for key in ["id", "title", "level", "source", "status"] {
            assert!(r[key].is_string(), "{key}: {r}");
        }
    }
    // Our own rule raises alerts like any other.
    broker.produce(
        &topic,
        &[(
            "h9".into(),
            exec_event(
                "h9",
                &[],
                T0,
                1,
                "run our-marker",
                "/usr/bin/run",
                "/usr/bin/bash",
            ),
        )],
    );
    server.wait_alerts(
        "our rule's alert",
        "?rule_id=0b5e7c1e-0000-4000-8000-000000000001",
        Duration::from_secs(60),
        |a| a.len() == 1,
    );
}

#[test]
fn a_suppressed_alert_kind_raises_nothing_more_for_that_host() {
    let topic = format!("events-{}", tag());
    let broker = setup(&topic);
    let (_dir, server) = sqlite_server(&broker, &topic, "");
    broker.produce(&topic, &[("h1".into(), reverse_shell("h1", &[], T0, 1))]);
    let first = server.wait_alerts("the first alert", "", Duration::from_secs(60), |a| {
        !a.is_empty()
    });
    let rule = first[0]["rule_id"].clone();
    let (status, body) = server.post(
        "/api/v1/suppressions",
        &json!({"rule_id": rule, "host_id": "h1", "comment": "red team exercise (ops-42)"}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.post("/api/v1/suppressions", &json!({"rule_id": "no-such-rule"}));
    assert_eq!(status, 400, "{body}");
    // Suppressions are re-read every 5 s: wait until this instance has it.
    wait_until(
        "the suppression to be in force",
        Duration::from_secs(30),
        || server.metric("hids_server_suppressions") >= 1.0,
    );
    broker.produce(
        &topic,
        &[
            (
                "h1".into(),
                reverse_shell("h1", &[], "2026-11-30T12:00:00Z", 2),
            ),
            (
                "h2".into(),
                reverse_shell("h2", &[], "2026-11-30T12:00:00Z", 1),
            ),
        ],
    );
    server.wait_alerts("h2's alert", "", Duration::from_secs(60), |a| {
        alerts_of(a, "h2").len() == 1
    });
    let all = server.get(&format!(
        "/api/v1/alerts?host_id=h1&rule_id={}",
        rule.as_str().unwrap()
    ));
    assert_eq!(
        all.as_array().unwrap().len(),
        1,
        "h1's second window was suppressed: {all:#}"
    );
    assert!(server.metric("hids_server_hits_suppressed_total") >= 1.0);
    assert_eq!(
        server.get("/api/v1/suppressions").as_array().unwrap().len(),
        1
    );
}

/// A webhook endpoint: refuses the first `refuse` requests with 500, then answers 200;
/// keeps the bodies it accepted.
fn webhook(refuse: usize) -> (u16, Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (got.clone(), calls.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { continue };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let body = read_http_body(&mut s);
            let answer = if n < refuse {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            if n >= refuse {
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push(v);
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 {answer}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, got, calls)
}

fn read_http_body(s: &mut std::net::TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = s.read(&mut chunk) else {
            return Vec::new();
        };
        if n == 0 {
            return Vec::new();
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return buf[end + 4..end + 4 + len].to_vec();
        }
    }
}

#[test]
fn webhooks_retry_a_refusing_gateway_and_a_hanging_one_holds_nothing_back() {
    let topic = format!("events-{}", tag());
    let alerts_topic = format!("alerts-{}", tag());
    let broker = setup(&topic);
    broker.create_topic(&alerts_topic);
    let (port, got, calls) = webhook(2);
    // A gateway that accepts connections and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    let extra = format!(
        "[[webhooks]]\nurl = \"http://127.0.0.1:{hang_port}/hook\"\nmin_level = \"high\"\ntimeout_secs = 2\nattempts = 2\nqueue_limit = 1\n\n\
         [[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nmin_level = \"high\"\ntimeout_secs = 2\nattempts = 5\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = sqlite_config(
        &broker.addr(),
        &topic,
        "g1",
        &dir.path().join("a.db"),
        &extra,
    );
    config = config.replace(
        "batch_wait_ms = 50\n",
        &format!("batch_wait_ms = 50\nalerts_topic = \"{alerts_topic}\"\n"),
    );
    let server = Server::start(&config);
    let mut msgs: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("h{i}"), reverse_shell(&format!("h{i}"), &[], T0, 1)))
        .collect();
    // A medium alert: below both webhooks' min_level, it goes to the topic only.
    msgs.push((
        "h9".into(),
        exec_event(
            "h9",
            &[],
            T0,
            2,
            "/tmp/x/run",
            "/tmp/x/run",
            "/usr/bin/bash",
        ),
    ));
    broker.produce(&topic, &msgs);
    // Detection and storage go on while one gateway hangs.
    server.wait_alerts("six alerts", "", Duration::from_secs(60), |a| a.len() >= 6);
    wait_until(
        "the refusing gateway to get all five",
        Duration::from_secs(60),
        || got.lock().unwrap().len() >= 5,
    );
    assert!(
        calls.load(Ordering::SeqCst) >= 7,
        "two refusals were retried"
    );
    let first = got.lock().unwrap()[0].clone();
    for key in [
        "id", "rule_id", "title", "level", "host_id", "labels", "count", "event",
    ] {
        assert!(!first[key].is_null(), "{key}: {first:#}");
    }
    let m = |series: &str| server.metric(series);
    assert!(
        m("hids_server_alert_delivery_failures_total{output=\"webhook\"}") >= 2.0,
        "{}",
        server.metrics()
    );
    assert!(
        m("hids_server_alerts_dropped_total{output=\"webhook\"}") >= 1.0,
        "the hanging gateway's queue of 1 overflowed"
    );
    // The alerts topic has each new alert once, the medium one too.
    wait_until(
        "six alerts on the alerts topic",
        Duration::from_secs(60),
        || broker.messages(&alerts_topic).len() >= 6,
    );
    std::thread::sleep(Duration::from_secs(2));
    let on_topic = broker.messages(&alerts_topic);
    assert_eq!(on_topic.len(), 6, "no copies: {on_topic:#?}");
    let mut ids: Vec<&str> = on_topic.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    // The webhooks' min_level is high: the medium alert never reached the gateway.
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 5, "{got:#?}");
    assert!(got.iter().all(|a| a["level"] == "critical"));
    drop(hang);
}

#[test]
fn a_restart_keeps_alerts_and_rereading_everything_counts_nothing_twice() {
    let topic = format!("events-{}", tag());
    let broker = setup(&topic);
    let msgs: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|s| ("h1".to_string(), reverse_shell("h1", &[], T0, s)))
        .collect();
    broker.produce(&topic, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut server = Server::start(&sqlite_config(&broker.addr(), &topic, "g1", &db, ""));
    server.wait_alerts("count 3", "", Duration::from_secs(60), |a| {
        a.len() == 1 && a[0]["count"] == 3
    });
    let status = server.stop().unwrap();
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status}\n{}",
        server.log()
    );
    // SIGTERM committed what was stored: the same group resumes after it and reads
    // nothing twice.
    server.spawn();
    broker.produce(
        &topic,
        &[("h1".to_string(), reverse_shell("h1", &[], T0, 4))],
    );
    server.wait_alerts("count 4", "", Duration::from_secs(60), |a| {
        a.len() == 1 && a[0]["count"] == 4
    });
    assert_eq!(server.metric("hids_server_hits_redelivered_total"), 0.0);
    server.stop();
    // A new group reads the topic from its start again: every event is redelivered.
    let again = Server::start(&sqlite_config(&broker.addr(), &topic, "g2", &db, ""));
    wait_until(
        "the new group to read everything",
        Duration::from_secs(60),
        || again.metric("hids_server_hits_redelivered_total") >= 4.0,
    );
    let alerts = again.get("/api/v1/alerts");
    assert_eq!(alerts.as_array().unwrap().len(), 1);
    assert_eq!(
        alerts[0]["count"], 4,
        "redelivered events are not counted twice"
    );
}
