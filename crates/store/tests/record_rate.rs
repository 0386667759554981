//! Benchmark, not a test (ignored by default): hits recorded per second, in batches of
//! 100 and of 1, on SQLite and on PostgreSQL (durable commits on both: SQLite
//! `synchronous=FULL`, PostgreSQL's default fsync). Run it alone on the machine:
//!
//! `CARGO_INCREMENTAL=0 flock /tmp/bench.lock cargo test --release -p hids-store --test record_rate -- --ignored --nocapture`
//!
//! The hits fold into 500 alerts (5 rules on 100 hosts), like a fleet where a few rules
//! fire repeatedly: after the first pass, nearly every hit updates an existing alert.

#![allow(clippy::unwrap_used)] // benchmark harness: a failure here is a failed run

use std::collections::BTreeMap;
use std::time::Instant;

use hids_store::{open, Hit, Level, Position, StoreConfig, Timestamp};

const RUNS: usize = 3;

fn hits(n: usize) -> Vec<Hit> {
    let labels = BTreeMap::from([
        ("idc".to_string(), "sh1".to_string()),
        ("project".to_string(), "web".to_string()),
        ("product".to_string(), "shop".to_string()),
    ]);
    (0..n)
        .map(|i| Hit {
            rule_id: format!("rule-{}", i % 5),
            title: "a shell spawned by a web server".into(),
            level: Level::High,
            techniques: vec!["T1059.004".into()],
            host_id: format!("host-{:04}", (i / 5) % 100),
            hostname: "web-01.example".into(),
            labels: labels.clone(),
            window_start: 1_764_000_000,
            event_time: Timestamp::now(),
            count: 1,
            event: format!(
                r#"{{"@timestamp":"2026-11-26T10:01:13.123456Z","host":{{"id":"host-{i}"}},"process":{{"pid":{i},"executable":"/bin/sh","command_line":"sh -c id; uname -a","parent":{{"executable":"/usr/sbin/nginx"}}}},"user":{{"name":"www-data"}}}}"#
            ).into(),
            position: Position {
                topic: "hids.events".into(),
                partition: (i % 4) as i32,
                offset: i as i64,
            },
        })
        .collect()
}

/// Hits per second recording `total` hits in batches of `batch` on a fresh database.
fn rate(cfg: &StoreConfig, total: usize, batch: usize) -> f64 {
    let mut store = open(cfg).unwrap();
    let hits = hits(total);
    let start = Instant::now();
    for chunk in hits.chunks(batch) {
        store.record(chunk, Timestamp::now()).unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn measure(backend: &str, mut fresh: impl FnMut(usize) -> StoreConfig) {
    for (batch, total) in [(100, 20_000), (1, 1_000)] {
        let rates: Vec<f64> = (0..RUNS)
            .map(|run| rate(&fresh(run * 1000 + batch), total, batch))
            .collect();
        println!(
            "{backend}: batches of {batch}: median {:.0} hits/s over {RUNS} runs of {total} hits ({})",
            median(rates.clone()),
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

#[test]
#[ignore = "benchmark: run with --ignored under flock /tmp/bench.lock"]
fn record_rate() {
    let dir = tempfile::tempdir().unwrap();
    measure("sqlite", |n| {
        StoreConfig::Sqlite(dir.path().join(format!("alerts-{n}.db")))
    });
    hids_test_support::skip_unless!(hids_test_support::postgres_available(), "no PostgreSQL");
    let pg = hids_test_support::Postgres::start();
    measure("postgresql", |n| {
        StoreConfig::Postgres(pg.create_database(&format!("bench_{n}")))
    });
}
