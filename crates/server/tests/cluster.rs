//! Two hids-server instances in one consumer group on a shared PostgreSQL: they share
//! the partitions, and a kill -9 of one during a run loses no alert and counts nothing
//! twice (the survivor replays the dead one's uncommitted batches; the store's Kafka
//! positions make the replay idempotent).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{benign, reverse_shell};
use hids_test_support::{tag, wait_until, Broker, Postgres, Server};
use serde_json::Value;

const HOSTS: usize = 40;
const PARTITIONS: u32 = 4;

fn config(broker: &Broker, topic: &str, pg: &Postgres) -> String {
    format!(
        "[kafka]\nbrokers = [\"{}\"]\ntopics = [\"{topic}\"]\ngroup = \"cluster\"\nbatch_events = 50\nbatch_wait_ms = 50\n\n\
         [store]\nurl = \"{}\"\n",
        broker.addr(),
        pg.url()
    )
}

/// Per host: 5 reverse shells in each of two windows, between benign commands.
fn events(hour: u32) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for h in 0..HOSTS {
        let host = format!("host-{h:03}");
        for i in 0..5u64 {
            let ts = format!("2026-11-30T{hour:02}:{:02}:00Z", i * 7);
            out.push((
                host.clone(),
                benign(&host, &ts, u64::from(hour) * 100 + i * 2),
            ));
            out.push((
                host.clone(),
                reverse_shell(
                    &host,
                    &[("idc", "bj1")],
                    &ts,
                    u64::from(hour) * 100 + i * 2 + 1,
                ),
            ));
        }
    }
    out
}

fn counts(server: &Server) -> BTreeMap<(String, String), u64> {
    let alerts = server.get("/api/v1/alerts?min_level=critical&limit=1000");
    let mut by = BTreeMap::new();
    for a in alerts.as_array().unwrap() {
        let key = (
            a["host_id"].as_str().unwrap().to_owned(),
            a["first_seen"].as_str().unwrap()[..13].to_owned(),
        );
        let before = by.insert(key.clone(), a["count"].as_u64().unwrap());
        assert!(
            before.is_none(),
            "two alerts for one rule, host and window: {key:?}"
        );
    }
    by
}

/// Waits until `done` holds, or fails showing `survivor`'s log and alert counts.
fn wait_for(
    what: &str,
    survivor: &Server,
    timeout: Duration,
    done: impl Fn(&BTreeMap<(String, String), u64>) -> bool,
) {
    let start = std::time::Instant::now();
    loop {
        let c = counts(survivor);
        if done(&c) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: {} alerts, short: {:?}\n{}",
            c.len(),
            c.iter()
                .filter(|(_, n)| **n < 5)
                .take(5)
                .collect::<Vec<_>>(),
            survivor.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_instances_share_the_work_and_a_kill_9_loses_and_duplicates_nothing() {
    hids_test_support::skip_unless!(
        hids_test_support::postgres_available(),
        "needs PostgreSQL (Debian's postgresql) and root"
    );
    let pg = Postgres::start();
    let topic = format!("events-{}", tag());
    let broker = Broker::start();
    broker.create_topic_with(&topic, PARTITIONS);
    let cfg = config(&broker, &topic, &pg);
    // The first member leads the group. tansu 0.6 cannot replace a dead group leader
    // (its coordinator keeps the dead leader while the group re-forms and answers every
    // SyncGroup with REBALANCE_IN_PROGRESS; Kafka elects a new one), so the instance
    // killed here is the second: the survivor must still take its partitions over and
    // replay what it had not committed.
    let survivor = Server::start(&cfg);
    wait_until(
        "the first instance to hold every partition",
        Duration::from_secs(60),
        || survivor.metric("hids_server_partitions_assigned") == f64::from(PARTITIONS),
    );
    let mut victim = Server::start(&cfg);
    wait_until(
        "both instances to hold partitions",
        Duration::from_secs(60),
        || {
            survivor.metric("hids_server_partitions_assigned") >= 1.0
                && victim.metric("hids_server_partitions_assigned") >= 1.0
                && survivor.metric("hids_server_partitions_assigned")
                    + victim.metric("hids_server_partitions_assigned")
                    == f64::from(PARTITIONS)
        },
    );
    broker.produce(&topic, &events(10));
    wait_for(
        "the first window's alerts",
        &survivor,
        Duration::from_secs(90),
        |c| c.len() == HOSTS && c.values().all(|n| *n == 5),
    );
    assert!(
        survivor.metric("hids_server_events_total") > 0.0
            && victim.metric("hids_server_events_total") > 0.0,
        "both instances worked"
    );
    // Mid-run: the second window's events arrive while the victim dies without a word.
    let second = events(11);
    let (early, late) = second.split_at(second.len() / 2);
    let before = victim.metric("hids_server_events_total");
    broker.produce(&topic, early);
    wait_until(
        "the victim to take some of them",
        Duration::from_secs(60),
        || victim.metric("hids_server_events_total") > before,
    );
    victim.kill9();
    broker.produce(&topic, late);
    wait_for(
        "every alert complete on the survivor",
        &survivor,
        Duration::from_secs(120),
        |c| c.len() == 2 * HOSTS && c.values().all(|n| *n >= 5),
    );
    assert_eq!(
        survivor.metric("hids_server_partitions_assigned"),
        f64::from(PARTITIONS)
    );
    // Let any replay finish, then the counts must be exact.
    std::thread::sleep(Duration::from_secs(3));
    let c = counts(&survivor);
    assert_eq!(c.len(), 2 * HOSTS, "one alert per host and window");
    let wrong: Vec<_> = c.iter().filter(|(_, n)| **n != 5).collect();
    assert!(
        wrong.is_empty(),
        "every alert counts its 5 events exactly once: {wrong:?}"
    );
    let all: Value = survivor.get("/api/v1/alerts/summary?by=idc&min_level=critical");
    assert_eq!(all[0]["count"], 2 * HOSTS as u64);
    assert_eq!(all[0]["events"], 10 * HOSTS as u64);
}
