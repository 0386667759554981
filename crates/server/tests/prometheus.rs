//! The fleet dashboard (packaging/grafana/hids-fleet.json) against a real Prometheus
//! scraping a real hids-server and a real etcd: every query of every panel returns data,
//! and the server's exposition passes `promtool check metrics` with no per-host label.
//!
//! Grafana fills `$__rate_interval` and `$__range` itself; here they become `1m` and `1h`
//! (any other `$` variable in a query fails the test, so the dashboard cannot come to
//! need one Grafana alone knows). A 1 s scrape interval gives a rate after two scrapes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{exec_event, reverse_shell, sqlite_config};
use hids_test_support::{
    etcd_available, prometheus_available, promtool_check_metrics, tag, wait_until, Agent, Broker,
    Etcd, KeyPair, Prometheus, Server,
};
use hids_types::event::{DroppedRange, Host, Producer};
use hids_types::guard::{GuardState, GuardStatus};
use hids_types::Timestamp;
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../../packaging/grafana/hids-fleet.json");

/// What Grafana substitutes in a query, and what this test puts in its place.
const GRAFANA_VARIABLES: [(&str, &str); 2] = [("$__rate_interval", "1m"), ("$__range", "1h")];

/// Every `(panel title, expr)` of the dashboard, rows' nested panels included.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("untitled").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str();
                let expr = expr.unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push((title.clone(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `expr` as Prometheus can run it: Grafana's variables replaced.
fn runnable(expr: &str) -> String {
    let mut expr = expr.to_owned();
    for (variable, value) in GRAFANA_VARIABLES {
        expr = expr.replace(variable, value);
    }
    assert!(
        !expr.contains('$'),
        "{expr:?} uses a variable only Grafana knows"
    );
    expr
}

/// The host's agent-stream events: a guard trip, then a stats record whose figures are
/// absurd (negative), which the server must count and ignore.
fn agent_stream(host: &str, labels: &[(&str, &str)]) -> Vec<Vec<u8>> {
    let producer = Producer {
        host: Host {
            id: host.into(),
            hostname: format!("{host}.example").into(),
        },
        labels: Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        plugin: "agent".into(),
        run_id: format!("agent-run-{host}").into(),
    };
    let guard = |state, cpu_percent, rss_mb| GuardStatus {
        state,
        trips: 1,
        cooldown_secs: 60,
        reason: Some("cpu 93.0% over 10.0% for 3 samples".into()),
        since: Some(Timestamp::now()),
        cpu_percent,
        cpu_percent_host: cpu_percent / 4.0,
        rss_mb,
        processes: Vec::new(),
    };
    let mut tripped = producer.event(
        Timestamp::now(),
        1,
        "event",
        "host",
        "change",
        "guard_tripped",
    );
    tripped.hids.guard = Some(guard(GuardState::Tripped, 93.0, 40.0));
    let mut absurd = producer.event(Timestamp::now(), 2, "metric", "host", "info", "stats");
    absurd.hids.guard = Some(guard(GuardState::Tripped, -5.0, -1.0));
    let pipeline = Producer {
        plugin: "pipeline".into(),
        run_id: format!("pipeline-run-{host}").into(),
        ..producer
    };
    // The process run lost 4..=5 and said so.
    let mut dropped = pipeline.event(Timestamp::now(), 1, "event", "host", "info", "dropped");
    dropped.hids.dropped = Some(vec![DroppedRange {
        plugin: "process".into(),
        run_id: format!("run-{host}"),
        from_seq: 4,
        to_seq: 5,
        reason: "queue_full".into(),
    }]);
    [tripped, absurd, dropped]
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect()
}

/// The host's process run `run-<host>`: 1..=12 without 4..=5 (declared lost by
/// [`agent_stream`]) and 8 (lost, undeclared); 3 is a reverse shell (a critical alert).
fn process_stream(host: &str, labels: &[(&str, &str)]) -> Vec<Vec<u8>> {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    (1..=12)
        .filter(|seq| !matches!(seq, 4 | 5 | 8))
        .map(|seq| match seq {
            3 => reverse_shell(host, labels, &now, seq),
            _ => exec_event(
                host,
                labels,
                &now,
                seq,
                "ls -l /etc/hostname",
                "/usr/bin/ls",
                "/usr/bin/bash",
            ),
        })
        .collect()
}

/// The lines of an exposition that carry a label named `host_id`.
fn host_id_lines(exposition: &str) -> Vec<&str> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split_once('{')
                .is_some_and(|(_, labels)| labels.contains("host_id="))
        })
        .collect()
}

/// Waits until every query returns a non-empty result; after `timeout`, panics listing
/// each query still empty.
fn wait_every_query_has_data(prom: &Prometheus, queries: &[(String, String)], timeout: Duration) {
    let start = Instant::now();
    loop {
        let empty: Vec<&(String, String)> = queries
            .iter()
            .filter(|(_, expr)| {
                prom.query(&runnable(expr))
                    .as_array()
                    .is_none_or(Vec::is_empty)
            })
            .collect();
        if empty.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "after {timeout:?}, these dashboard queries still return nothing:\n{}",
            empty
                .iter()
                .map(|(panel, expr)| format!("  {panel}: {expr}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What the dashboard watches: etcd with one real agent registered (labels idc, project,
/// product), and hids-server, presence from that etcd, having read the agent's events.
struct Fleet {
    etcd: Etcd,
    server: Server,
    host: String,
    _agent: Agent,
    _broker: Broker,
    _store: tempfile::TempDir,
}

fn start_fleet() -> Fleet {
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let broker = Broker::start();
    let topic = format!("events-{}", tag());
    broker.create_topic(&topic);

    // A real agent registered in etcd the way every agent is (lease, status key, watch).
    let host = format!("prom-{}", tag());
    let labels = [("idc", "idc-a"), ("project", "hids"), ("product", "web")];
    let agent = Agent::managed(&etcd, &host, &labels, &key.public(), "");
    wait_until(
        "the agent to register in etcd",
        Duration::from_secs(20),
        || etcd.agents(&[]).contains_key(&host),
    );

    let store = tempfile::tempdir().unwrap();
    let extra = format!(
        "[etcd]\nendpoints = [{:?}]\n\n[fleet]\nsilence_secs = 5\nloss_grace_secs = 1\n",
        etcd.url()
    );
    let server = Server::start(&sqlite_config(
        &broker.addr(),
        &topic,
        "g1",
        &store.path().join("a.db"),
        &extra,
    ));
    let messages: Vec<(String, Vec<u8>)> = process_stream(&host, &labels)
        .into_iter()
        .chain(agent_stream(&host, &labels))
        .map(|payload| (host.clone(), payload))
        .collect();
    broker.produce(&topic, &messages);
    wait_until(
        "the server to consume the events",
        Duration::from_secs(30),
        || server.metric("hids_server_events_total") >= messages.len() as f64,
    );
    Fleet {
        etcd,
        server,
        host,
        _agent: agent,
        _broker: broker,
        _store: store,
    }
}

/// promtool accepts `/metrics`, and no series names a host.
fn assert_exposition_is_clean(server: &Server, host: &str) {
    let exposition = server.metrics();
    if let Err(e) = promtool_check_metrics(&exposition) {
        panic!("{e}\n/metrics:\n{exposition}");
    }
    let per_host = host_id_lines(&exposition);
    assert!(
        per_host.is_empty(),
        "series labelled host_id: {per_host:#?}"
    );
    assert!(
        !exposition.contains(host),
        "a host id reached /metrics:\n{exposition}"
    );
}

/// The figures behind a few panels, not only their presence.
fn assert_panel_figures(prom: &Prometheus, queries: &[(String, String)]) {
    let series = |title: &str, label: &str| -> BTreeMap<String, f64> {
        let (_, expr) = queries.iter().find(|(t, _)| t == title).unwrap();
        prom.query(&runnable(expr))
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"][label].as_str().unwrap_or("").to_owned(), value)
            })
            .collect()
    };
    assert_eq!(
        series("Agents online by IDC", "idc"),
        BTreeMap::from([("idc-a".to_owned(), 1.0)])
    );
    let categories = series("Events consumed by category", "category");
    assert!(
        categories.contains_key("process") && categories.contains_key("host"),
        "{categories:?}"
    );
    let rules = series("Top rules by alerts (dashboard range)", "rule_id");
    assert!(
        rules.contains_key("hids-linux-reverse-shell-bash-dev-tcp"),
        "{rules:?}"
    );
    wait_until(
        "the loss panel to show both kinds",
        Duration::from_secs(60),
        || {
            let loss = series("Events lost, declared and undeclared", "kind");
            loss.get("declared").is_some_and(|&n| n > 0.0)
                && loss.get("undeclared").is_some_and(|&n| n > 0.0)
        },
    );
}

#[test]
fn every_dashboard_query_returns_data_from_a_prometheus_scraping_the_server_and_etcd() {
    if !etcd_available() || !prometheus_available() {
        return;
    }
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(
        queries.len() >= 20,
        "{} queries in the dashboard",
        queries.len()
    );
    let fleet = start_fleet();
    assert_exposition_is_clean(&fleet.server, &fleet.host);

    let prom = Prometheus::start(&[
        ("hids-server", format!("127.0.0.1:{}", fleet.server.port)),
        ("etcd", format!("127.0.0.1:{}", fleet.etcd.port)),
    ]);
    prom.wait_for_targets_up(Duration::from_secs(30));
    wait_every_query_has_data(&prom, &queries, Duration::from_secs(120));
    assert_panel_figures(&prom, &queries);
}
