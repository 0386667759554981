//! One behaviour suite, run against both backends: SQLite in a temporary directory (one
//! test per case) and PostgreSQL on a throwaway cluster (one test running every case,
//! each in its own database, so the cluster starts once).

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, UNIX_EPOCH};

use hids_store::{
    alert_id, open, AlertQuery, GroupBy, Hit, InventoryOutcome, InventoryReport, Level, Position,
    StoreConfig, StoreError, SummaryRow, Suppression, Timestamp,
};
use hids_types::package::{inventory_hash, InventoryPart, OsRelease, Package, PackageType};

fn at(secs: u64) -> Timestamp {
    Timestamp(UNIX_EPOCH + Duration::from_secs(secs))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A hit of `rule` on `host` in the window starting at 1000, read at `offset` of
/// partition 0 of topic `events`.
fn hit(rule: &str, host: &str, offset: i64) -> Hit {
    Hit {
        rule_id: rule.into(),
        title: format!("{rule} fired"),
        level: Level::High,
        techniques: vec!["T1059.004".into()],
        host_id: host.into(),
        hostname: format!("{host}.example"),
        labels: labels(&[("idc", "sh1"), ("project", "web")]),
        window_start: 1000,
        event_time: at(1000 + offset.unsigned_abs()),
        count: 1,
        event: format!(r#"{{"offset":{offset},"process":{{"command_line":"nc -e /bin/sh"}}}}"#)
            .into(),
        position: Position {
            topic: "events".into(),
            partition: 0,
            offset,
        },
    }
}

/// Runs SQL on the database behind `cfg` without the store (to damage it).
fn raw_execute(cfg: &StoreConfig, sql: &str) {
    match cfg {
        StoreConfig::Sqlite(path) => {
            rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }
        StoreConfig::Postgres(url) => {
            postgres::Client::connect(url, postgres::NoTls)
                .unwrap()
                .batch_execute(sql)
                .unwrap();
        }
    }
}

fn creates_then_counts(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    let first = hit("shell", "h1", 1);
    let r = store
        .record(std::slice::from_ref(&first), at(2000))
        .unwrap();
    let id = alert_id("shell", "h1", 1000);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].alert_id.as_str(), r[0].created, r[0].counted),
        (id.as_str(), true, true)
    );

    let mut later = hit("shell", "h1", 5);
    later.count = 3;
    later.labels = labels(&[("idc", "other")]);
    let mut earlier_event = hit("shell", "h1", 7);
    earlier_event.event_time = at(900);
    let r = store.record(&[later, earlier_event], at(2100)).unwrap();
    assert!(r
        .iter()
        .all(|r| !r.created && r.counted && r.alert_id == id));

    let a = store.alert(&id).unwrap().unwrap();
    assert_eq!(a.count, 5);
    assert_eq!(
        (a.rule_id.as_str(), a.title.as_str()),
        ("shell", "shell fired")
    );
    assert_eq!(
        (a.level, a.host_id.as_str(), a.hostname.as_str()),
        (Level::High, "h1", "h1.example")
    );
    assert_eq!(a.techniques, vec!["T1059.004".to_string()]);
    // The first hit's labels and evidence are kept.
    assert_eq!(a.labels, first.labels);
    assert_eq!(
        a.event,
        serde_json::from_str::<serde_json::Value>(&first.event).unwrap()
    );
    assert_eq!((a.first_seen, a.last_seen), (at(900), at(1005)));
    assert_eq!((a.created_at, a.updated_at), (at(2000), at(2100)));
    assert!(store.alert("no-such-alert").unwrap().is_none());
}

fn redelivery_is_not_counted(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    let counted = |r: Vec<hids_store::Recorded>| r.iter().map(|r| r.counted).collect::<Vec<_>>();
    assert_eq!(
        counted(store.record(&[hit("r", "h", 10)], at(1)).unwrap()),
        [true]
    );
    // Same position again, and a lower offset: not counted.
    assert_eq!(
        counted(store.record(&[hit("r", "h", 10)], at(2)).unwrap()),
        [false]
    );
    assert_eq!(
        counted(store.record(&[hit("r", "h", 4)], at(3)).unwrap()),
        [false]
    );
    // Within one batch: the duplicate is counted once, in any order.
    let batch = [hit("r", "h", 12), hit("r", "h", 11), hit("r", "h", 12)];
    assert_eq!(
        counted(store.record(&batch, at(4)).unwrap()),
        [true, true, false]
    );
    // Another partition keeps its own offsets.
    let mut other = hit("r", "h", 3);
    other.position.partition = 1;
    assert_eq!(
        counted(store.record(&[other.clone()], at(5)).unwrap()),
        [true]
    );
    assert_eq!(counted(store.record(&[other], at(6)).unwrap()), [false]);
    let a = store.alert(&alert_id("r", "h", 1000)).unwrap().unwrap();
    assert_eq!(a.count, 4);
    assert_eq!(a.updated_at, at(5), "an uncounted hit changes nothing");
}

/// The consumer of two instances during a rebalance (both hold the partition, both read
/// the same offsets) and an HTTP handle reading meanwhile.
fn two_handles_record_the_same_alert(cfg: &StoreConfig) {
    const OFFSETS: i64 = 300;
    open(cfg).unwrap();
    let start = Arc::new(Barrier::new(3));
    let writer = |partitions: Vec<i32>, batch: usize| {
        let (cfg, start) = (cfg.clone(), start.clone());
        std::thread::spawn(move || {
            let mut store = open(&cfg).unwrap();
            start.wait();
            let (mut created, mut counted) = (0, 0);
            let hits: Vec<Hit> = (0..OFFSETS)
                .flat_map(|o| {
                    partitions.iter().map(move |&p| {
                        let mut h = hit("race", "h", o);
                        h.position.partition = p;
                        h
                    })
                })
                .collect();
            for chunk in hits.chunks(batch) {
                for r in store.record(chunk, Timestamp::now()).unwrap() {
                    created += usize::from(r.created);
                    counted += usize::from(r.counted);
                }
            }
            (created, counted)
        })
    };
    let a = writer(vec![0, 1], 7);
    let b = writer(vec![1, 0], 5);
    let (cfg2, start2) = (cfg.clone(), start.clone());
    let reader = std::thread::spawn(move || {
        let mut store = open(&cfg2).unwrap();
        start2.wait();
        for _ in 0..50 {
            store.alerts(&AlertQuery::default()).unwrap();
        }
    });
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    reader.join().unwrap();
    assert_eq!(a.0 + b.0, 1, "exactly one hit created the alert");
    assert_eq!(
        a.1 + b.1,
        2 * OFFSETS as usize,
        "each position counted once"
    );
    let mut store = open(cfg).unwrap();
    let alert = store.alert(&alert_id("race", "h", 1000)).unwrap().unwrap();
    assert_eq!(alert.count, 2 * OFFSETS as u64);
}

fn windows_make_separate_alerts(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    let mut next = hit("r", "h", 1);
    next.window_start = 1300;
    let r = store.record(&[hit("r", "h", 1), next], at(1)).unwrap();
    assert!(r.iter().all(|r| r.created && r.counted));
    assert_ne!(r[0].alert_id, r[1].alert_id);
    assert_eq!(r[1].alert_id, alert_id("r", "h", 1300));
    assert_eq!(store.alerts(&AlertQuery::default()).unwrap().len(), 2);
    // Stable, and no two triples share an id.
    assert_eq!(alert_id("r", "h", 1300), alert_id("r", "h", 1300));
    assert_ne!(alert_id("ab", "c", 1), alert_id("a", "bc", 1));
    assert_eq!(alert_id("r", "h", 1).len(), 32);
}

/// Five alerts: (rule, host, level, labels, event time).
fn fixture(store: &mut dyn hids_store::Store) {
    let rows = [
        (
            "shell",
            "h1",
            Level::Critical,
            labels(&[("idc", "sh1"), ("project", "web")]),
            100,
        ),
        (
            "shell",
            "h2",
            Level::High,
            labels(&[("idc", "sh1"), ("project", "db")]),
            200,
        ),
        (
            "miner",
            "h1",
            Level::Medium,
            labels(&[("idc", "sh1"), ("project", "web")]),
            300,
        ),
        ("miner", "h3", Level::Medium, labels(&[("idc", "bj2")]), 400),
        ("history", "h4", Level::Low, BTreeMap::new(), 500),
    ];
    let hits: Vec<Hit> = rows
        .into_iter()
        .enumerate()
        .map(|(i, (rule, host, level, labels, time))| {
            let mut h = hit(rule, host, i as i64);
            h.level = level;
            h.labels = labels;
            h.event_time = at(time);
            h.count = 10 - i as u64;
            h
        })
        .collect();
    store.record(&hits, at(1000)).unwrap();
}

fn ids(alerts: &[hids_store::Alert]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| (a.rule_id.clone(), a.host_id.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, h)| (r.to_string(), h.to_string()))
        .collect()
}

fn query_filters(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    fixture(store.as_mut());
    let mut list = |q: AlertQuery| ids(&store.alerts(&q).unwrap());
    let all = pairs(&[
        ("history", "h4"),
        ("miner", "h3"),
        ("miner", "h1"),
        ("shell", "h2"),
        ("shell", "h1"),
    ]);
    assert_eq!(list(AlertQuery::default()), all, "newest last_seen first");
    let q = |f: fn(&mut AlertQuery)| {
        let mut q = AlertQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(
        list(q(|q| q.level = Some(Level::Medium))),
        pairs(&[("miner", "h3"), ("miner", "h1")])
    );
    assert_eq!(
        list(q(|q| q.min_level = Some(Level::High))),
        pairs(&[("shell", "h2"), ("shell", "h1")])
    );
    assert_eq!(
        list(q(|q| q.rule_id = Some("miner".into()))),
        pairs(&[("miner", "h3"), ("miner", "h1")])
    );
    assert_eq!(
        list(q(|q| q.host_id = Some("h1".into()))),
        pairs(&[("miner", "h1"), ("shell", "h1")])
    );
    assert_eq!(
        list(q(|q| q.labels = labels(&[("project", "web")]))),
        pairs(&[("miner", "h1"), ("shell", "h1")])
    );
    assert_eq!(
        list(q(
            |q| q.labels = labels(&[("idc", "sh1"), ("project", "db")])
        )),
        pairs(&[("shell", "h2")])
    );
    assert!(list(q(|q| q.labels = labels(&[("idc", "nowhere")]))).is_empty());
    assert_eq!(
        list(q(|q| q.since = Some(at(400)))),
        pairs(&[("history", "h4"), ("miner", "h3")])
    );
    assert_eq!(
        list(q(|q| q.until = Some(at(200)))),
        pairs(&[("shell", "h2"), ("shell", "h1")])
    );
    assert_eq!(
        list(q(|q| {
            q.since = Some(at(200));
            q.until = Some(at(300));
            q.min_level = Some(Level::Medium);
        })),
        pairs(&[("miner", "h1"), ("shell", "h2")])
    );
    assert_eq!(list(q(|q| q.limit = 2)), all[..2].to_vec());
    assert_eq!(list(q(|q| q.limit = 0)), all, "0 is the default limit");
    assert_eq!(
        list(q(|q| q.limit = usize::MAX)),
        all,
        "capped, not refused"
    );
    let too_many = AlertQuery {
        labels: (0..40).map(|i| (format!("k{i}"), "v".into())).collect(),
        ..AlertQuery::default()
    };
    assert!(matches!(
        store.alerts(&too_many),
        Err(StoreError::Invalid(_))
    ));
}

fn summary_groups(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    fixture(store.as_mut());
    let mut summary =
        |by: &str, q: &AlertQuery| store.summary(&by.parse::<GroupBy>().unwrap(), q).unwrap();
    let row = |key: Option<&str>, count: u64, events: u64| SummaryRow {
        key: key.map(str::to_owned),
        count,
        events,
    };
    let all = AlertQuery::default();
    // Counts: shell 10+9, miner 8+7, history 6.
    assert_eq!(
        summary("rule_id", &all),
        [
            row(Some("shell"), 2, 19),
            row(Some("miner"), 2, 15),
            row(Some("history"), 1, 6)
        ]
    );
    assert_eq!(
        summary("level", &all),
        [
            row(Some("medium"), 2, 15),
            row(Some("critical"), 1, 10),
            row(Some("high"), 1, 9),
            row(Some("low"), 1, 6)
        ]
    );
    assert_eq!(
        summary("host_id", &all),
        [
            row(Some("h1"), 2, 18),
            row(Some("h2"), 1, 9),
            row(Some("h3"), 1, 7),
            row(Some("h4"), 1, 6)
        ]
    );
    assert_eq!(
        summary("idc", &all),
        [
            row(Some("sh1"), 3, 27),
            row(Some("bj2"), 1, 7),
            row(None, 1, 6)
        ]
    );
    assert_eq!(
        summary("project", &all),
        [
            row(Some("web"), 2, 18),
            row(None, 2, 13),
            row(Some("db"), 1, 9)
        ]
    );
    assert_eq!(summary("labels.product", &all), [row(None, 5, 40)]);
    let high = AlertQuery {
        min_level: Some(Level::High),
        ..AlertQuery::default()
    };
    assert_eq!(summary("idc", &high), [row(Some("sh1"), 2, 19)]);
    let top = AlertQuery {
        limit: 1,
        ..AlertQuery::default()
    };
    assert_eq!(summary("host_id", &top), [row(Some("h1"), 2, 18)]);
}

fn suppressions_crud(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    assert!(store.suppressions().unwrap().is_empty());
    let s = Suppression {
        id: 0,
        rule_id: "shell".into(),
        host_id: Some("h1".into()),
        labels: labels(&[("env", "dev")]),
        command_line: Some("backup.sh".into()),
        comment: "accepted by ops".into(),
        created_at: None,
    };
    let first = store.add_suppression(&s, at(50)).unwrap();
    assert!(first.id > 0);
    assert_eq!(first.created_at, Some(at(50)));
    let bare = Suppression {
        host_id: None,
        labels: BTreeMap::new(),
        command_line: None,
        ..s.clone()
    };
    let second = store.add_suppression(&bare, at(60)).unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(
        store.suppressions().unwrap(),
        [first.clone(), second.clone()]
    );
    assert!(store.remove_suppression(first.id).unwrap());
    assert!(!store.remove_suppression(first.id).unwrap());
    assert_eq!(store.suppressions().unwrap(), [second]);
    let unnamed = Suppression {
        rule_id: " ".into(),
        ..s
    };
    assert!(matches!(
        store.add_suppression(&unnamed, at(70)),
        Err(StoreError::Invalid(_))
    ));
}

fn prune_drops_old_alerts(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    fixture(store.as_mut());
    // Retention goes by the server's clock (updated_at), not the hosts' event times:
    // the fixture's alerts were all stored at 1000, however old their events.
    assert_eq!(store.prune(at(300)).unwrap(), 0);
    // Two with labels, last counted at 100 and 200 by the server's clock (their events
    // claim a later time).
    for (i, now) in [(0, 100), (1, 200)] {
        let mut old = hit("shell", &format!("old-{i}"), i);
        old.event_time = at(5000);
        old.labels = labels(&[("project", "old")]);
        store.record(&[old], at(now)).unwrap();
    }
    assert_eq!(store.prune(at(300)).unwrap(), 2);
    assert_eq!(store.alerts(&AlertQuery::default()).unwrap().len(), 5);
    // Their labels went with them.
    let by_project = store
        .summary(&GroupBy::Label("project".into()), &AlertQuery::default())
        .unwrap();
    assert_eq!(by_project.iter().map(|r| r.count).sum::<u64>(), 5);
    assert!(by_project.iter().all(|r| r.key.as_deref() != Some("old")));
    assert_eq!(store.prune(at(300)).unwrap(), 0);
    // And so did their positions: the same event makes a new alert.
    let mut again = hit("shell", "old-0", 0);
    again.event_time = at(5000);
    let again = store.record(&[again], at(2000)).unwrap();
    assert!(again[0].created && again[0].counted);
}

fn league_ranks_every_instance_rows(cfg: &StoreConfig) {
    use hids_store::{TopFigure, TopHost};
    let mut a = open(cfg).unwrap();
    let mut b = open(cfg).unwrap();
    let row = |host: &str, value: f64| TopHost {
        host_id: host.into(),
        labels: labels(&[("idc", "bj1")]),
        value,
    };
    // Two instances, each with its own hosts; one host rewritten lower later.
    a.put_top(
        "2026-11-29",
        TopFigure::Cpu,
        &[row("a1", 3.5), row("a2", 0.25)],
        at(10),
    )
    .unwrap();
    b.put_top("2026-11-29", TopFigure::Cpu, &[row("b1", 7.125)], at(10))
        .unwrap();
    a.put_top("2026-11-29", TopFigure::Cpu, &[row("a1", 1.0)], at(20))
        .unwrap();
    a.put_top("2026-11-29", TopFigure::Memory, &[row("a2", 99.0)], at(20))
        .unwrap();
    a.put_top("2026-11-30", TopFigure::Cpu, &[row("a1", 50.0)], at(20))
        .unwrap();
    let top = a.top("2026-11-29", TopFigure::Cpu, 2).unwrap();
    assert_eq!(
        top.iter()
            .map(|r| (r.host_id.as_str(), r.value))
            .collect::<Vec<_>>(),
        vec![("b1", 7.125), ("a1", 1.0)]
    );
    assert_eq!(top[0].labels.get("idc").map(String::as_str), Some("bj1"));
    assert_eq!(a.top("2026-11-29", TopFigure::Memory, 10).unwrap().len(), 1);
    // Retention by day.
    assert_eq!(a.prune_top("2026-11-30").unwrap(), 4);
    assert!(a.top("2026-11-29", TopFigure::Cpu, 10).unwrap().is_empty());
    assert_eq!(a.top("2026-11-30", TopFigure::Cpu, 10).unwrap().len(), 1);
}

fn reopen_keeps_data(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    store.record(&[hit("r", "h", 1)], at(1)).unwrap();
    let s = Suppression {
        id: 0,
        rule_id: "r".into(),
        host_id: None,
        labels: BTreeMap::new(),
        command_line: None,
        comment: String::new(),
        created_at: None,
    };
    store.add_suppression(&s, at(1)).unwrap();
    drop(store);
    let mut store = open(cfg).unwrap();
    assert_eq!(store.alerts(&AlertQuery::default()).unwrap().len(), 1);
    assert_eq!(store.suppressions().unwrap().len(), 1);
    // The redelivery rule survives too.
    assert!(!store.record(&[hit("r", "h", 1)], at(2)).unwrap()[0].counted);
}

fn older_schema_is_migrated_keeping_alerts(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    store.record(&[hit("shell", "h1", 1)], at(1000)).unwrap();
    drop(store);
    // What a version-1 database looked like: no league, inventory or console tables.
    for table in [
        "fleet_top",
        "inventories",
        "host_inventories",
        "inventory_parts",
        "operators",
        "console_sessions",
        "alert_acks",
        "console_history",
        "console_links",
    ] {
        raw_execute(cfg, &format!("DROP TABLE {table}"));
    }
    raw_execute(cfg, "DROP INDEX alerts_by_time_level");
    raw_execute(cfg, "UPDATE schema_version SET version = 1");
    let mut store = open(cfg).unwrap();
    assert_eq!(store.alerts(&AlertQuery::default()).unwrap().len(), 1);
    assert!(store
        .top("2026-11-30", hids_store::TopFigure::Cpu, 1)
        .unwrap()
        .is_empty());
    assert!(store.operators().unwrap().is_empty());
}

fn package(name: &str, version: &str) -> Package {
    Package {
        kind: PackageType::Deb,
        name: name.into(),
        version: version.into(),
        architecture: "amd64".into(),
        source: String::new(),
        source_version: String::new(),
        path: String::new(),
    }
}

/// A report from `host` at `secs`: part `part` of `parts` of the list `all` (its
/// packages `items`), or the hash alone (`parts` 0).
fn report(
    host: &str,
    secs: u64,
    all: &[Package],
    part: u32,
    parts: u32,
    items: &[Package],
) -> InventoryReport {
    let os = OsRelease::default();
    InventoryReport {
        host_id: host.into(),
        hostname: host.into(),
        labels: labels(&[("idc", "sh1")]),
        reported_at: at(secs),
        part: InventoryPart {
            hash: inventory_hash(&os, "6.1", all),
            packages: all.len() as u64,
            part,
            parts,
            os,
            kernel: "6.1".into(),
            items: items.to_vec(),
            command_id: None,
        },
    }
}

fn inventories_are_verified_assembled_and_stored_once(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    let list = vec![
        package("bash", "5.2.15-2"),
        package("curl", "7.88.1-10"),
        package("vim", "2:9.0"),
    ];
    let published = |host: &str| InventoryOutcome::Published {
        host_id: host.into(),
        hash: inventory_hash(&OsRelease::default(), "6.1", &list),
    };
    // Whole from h1; the hash alone from h2 (unknown first, then known).
    let out = store
        .record_inventories(
            &[
                report("h2", 10, &list, 0, 0, &[]),
                report("h1", 10, &list, 0, 1, &list),
            ],
            at(20),
        )
        .unwrap();
    assert_eq!(out, vec![InventoryOutcome::UnknownHash, published("h1")]);
    let out = store
        .record_inventories(&[report("h2", 11, &list, 0, 0, &[])], at(21))
        .unwrap();
    assert_eq!(out, vec![published("h2")]);
    // In parts, out of order, from h3; a redelivered part changes nothing.
    let (a, b) = list.split_at(2);
    let out = store
        .record_inventories(
            &[
                report("h3", 10, &list, 1, 2, b),
                report("h3", 10, &list, 0, 2, a),
            ],
            at(22),
        )
        .unwrap();
    assert_eq!(out, vec![InventoryOutcome::Pending, published("h3")]);
    let out = store
        .record_inventories(&[report("h3", 10, &list, 1, 2, b)], at(23))
        .unwrap();
    assert_eq!(out, vec![published("h3")]);
    // A lying host: packages that do not hash to the name, or parts that disagree.
    let unknown = vec![package("zsh", "5.9-4")];
    let mut lie = report("h4", 10, &unknown, 0, 1, &unknown);
    lie.part.items[0].version = "9.9".into();
    let mut disagree = report("h5", 10, &list, 1, 3, b);
    disagree.part.parts = 3;
    let out = store
        .record_inventories(&[lie, disagree, report("h5", 10, &list, 0, 2, a)], at(24))
        .unwrap();
    assert!(
        matches!(&out[0], InventoryOutcome::Refused(why) if why.contains("hash to")),
        "{out:?}"
    );
    assert_eq!(out[1], InventoryOutcome::Pending);
    assert!(
        matches!(&out[2], InventoryOutcome::Refused(why) if why.contains("disagree")),
        "{out:?}"
    );
    // Naming a stored list with other packages only points the host at the stored one.
    let mut own = report("h6", 10, &list, 0, 1, &list);
    own.part.items.truncate(1);
    assert_eq!(
        store.record_inventories(&[own], at(24)).unwrap(),
        vec![published("h6")]
    );
    // One inventory, four hosts on it; an older report does not move a host back.
    let hosts = store.inventory_hosts(at(0), "", 100).unwrap().rows;
    assert_eq!(hosts.len(), 4, "{hosts:?}");
    assert!(hosts.iter().all(|h| h.hash == hosts[0].hash));
    let other = vec![package("bash", "5.2.15-1")];
    store
        .record_inventories(&[report("h1", 5, &other, 0, 1, &other)], at(25))
        .unwrap();
    let h1 = store.inventory_hosts(at(0), "", 1).unwrap().rows;
    assert_eq!(h1[0].hash, hosts[0].hash, "an older report is ignored");
    assert_eq!(h1[0].host_id, "h1");
    assert_eq!(h1[0].reported_at, at(10));
    let stored = store.inventory(&hosts[0].hash).unwrap().unwrap();
    assert_eq!(stored.packages, list);
    // Pruning: the list h1 never moved to is not referenced.
    assert_eq!(
        store.prune_inventories(at(1_000)).unwrap(),
        1,
        "the list nobody points at"
    );
    assert!(store.inventory(&hosts[0].hash).unwrap().is_some());
}

fn newer_schema_refused(cfg: &StoreConfig) {
    drop(open(cfg).unwrap());
    raw_execute(cfg, "UPDATE schema_version SET version = 99");
    let err = open(cfg).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                known: hids_store::SCHEMA_VERSION
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("newer than this hids-server knows"),
        "{err}"
    );
}

fn unreadable_rows_are_skipped(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    fixture(store.as_mut());
    let broken = alert_id("miner", "h3", 1000);
    raw_execute(
        cfg,
        &format!("UPDATE alerts SET level_rank = 9 WHERE id = '{broken}'"),
    );
    let listed = store.alerts(&AlertQuery::default()).unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(store.unreadable_rows(), 1);
    let err = store.alert(&broken).unwrap_err();
    assert!(
        err.to_string().contains(&broken) && err.to_string().contains("level_rank"),
        "{err}"
    );
    raw_execute(
        cfg,
        &format!("UPDATE alerts SET level_rank = 2, event = '{{nope' WHERE id = '{broken}'"),
    );
    assert_eq!(store.alerts(&AlertQuery::default()).unwrap().len(), 4);
    assert_eq!(
        store
            .summary(&GroupBy::Level, &AlertQuery::default())
            .unwrap()
            .len(),
        4
    );
}

fn bad_evidence_is_replaced(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    let mut not_json = hit("r", "h1", 1);
    not_json.event = "{truncated".into();
    let mut huge = hit("r", "h2", 1);
    huge.event = format!(
        r#"{{"x":"{}"}}"#,
        "a".repeat(hids_store::MAX_EVIDENCE_BYTES)
    )
    .into();
    store.record(&[not_json, huge], at(1)).unwrap();
    assert_eq!(store.dropped_evidence(), 2);
    for host in ["h1", "h2"] {
        let a = store.alert(&alert_id("r", host, 1000)).unwrap().unwrap();
        assert!(
            a.event["hids_evidence_dropped"]["reason"].is_string(),
            "{}",
            a.event
        );
        assert_eq!(a.count, 1);
    }
}

/// Operators, sessions, acknowledgements and history: what the web console keeps.
fn console_accounts_sessions_acks_and_history(cfg: &StoreConfig) {
    let mut store = open(cfg).unwrap();
    assert!(!store.has_operators().unwrap());
    assert!(store.put_operator("ana", "hash-1", at(1)).unwrap());
    assert!(store.has_operators().unwrap());
    assert_eq!(
        store.operator_password("ana").unwrap().as_deref(),
        Some("hash-1")
    );
    assert_eq!(store.operator_password("bob").unwrap(), None);

    // Sessions: found until they expire; a new password ends them.
    store
        .start_session("tok-a", "ana", at(10), at(100))
        .unwrap();
    assert_eq!(
        store.session("tok-a", at(50)).unwrap().as_deref(),
        Some("ana")
    );
    assert_eq!(store.session("tok-a", at(101)).unwrap(), None);
    assert_eq!(store.session("nope", at(50)).unwrap(), None);
    store
        .start_session("tok-b", "ana", at(10), at(100))
        .unwrap();
    assert!(!store.put_operator("ana", "hash-2", at(20)).unwrap());
    assert_eq!(store.session("tok-b", at(50)).unwrap(), None);
    store
        .start_session("tok-c", "ana", at(10), at(100))
        .unwrap();
    store.end_session("tok-c").unwrap();
    assert_eq!(store.session("tok-c", at(50)).unwrap(), None);

    // An operator's sessions are capped: the oldest go first.
    for i in 0..hids_store::MAX_SESSIONS_PER_OPERATOR + 3 {
        store
            .start_session(&format!("many-{i}"), "ana", at(200 + i as u64), at(10_000))
            .unwrap();
    }
    for gone in 0..3 {
        assert_eq!(
            store.session(&format!("many-{gone}"), at(300)).unwrap(),
            None
        );
    }
    assert_eq!(
        store.session("many-3", at(300)).unwrap().as_deref(),
        Some("ana")
    );
    let last = format!("many-{}", hids_store::MAX_SESSIONS_PER_OPERATOR + 2);
    assert_eq!(
        store.session(&last, at(300)).unwrap().as_deref(),
        Some("ana")
    );

    // Acknowledgements: only of alerts that exist; the first one stands; gone with the
    // alert at retention.
    store.record(&[hit("r", "h1", 1)], at(1)).unwrap();
    let id = alert_id("r", "h1", 1000);
    assert_eq!(store.acknowledge(&id, "ana", at(30)).unwrap(), Some(true));
    assert_eq!(store.acknowledge(&id, "bob", at(31)).unwrap(), Some(false));
    assert_eq!(
        store.acknowledge("no-such-alert", "ana", at(30)).unwrap(),
        None
    );
    let acks = store.acks(&[id.clone(), "other".into()]).unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].operator.as_str(), acks[0].at), ("ana", at(30)));

    // Login links: apart from sessions, used once, not after they expire.
    store
        .create_login_link("link-1", "ana", at(10), at(130))
        .unwrap();
    assert_eq!(store.session("link-1", at(20)).unwrap(), None);
    assert_eq!(
        store.take_login_link("link-1", at(20)).unwrap().as_deref(),
        Some("ana")
    );
    assert_eq!(store.take_login_link("link-1", at(21)).unwrap(), None);
    store
        .create_login_link("link-2", "ana", at(10), at(130))
        .unwrap();
    assert_eq!(store.take_login_link("link-2", at(131)).unwrap(), None);
    // A new password, or removing the operator, voids the links made before.
    store
        .create_login_link("link-3", "ana", at(10), at(130))
        .unwrap();
    store.put_operator("ana", "hash-3", at(20)).unwrap();
    assert_eq!(store.take_login_link("link-3", at(21)).unwrap(), None);
    store.put_operator("cleo", "hash-c", at(20)).unwrap();
    store
        .create_login_link("link-4", "cleo", at(10), at(130))
        .unwrap();
    assert!(store.remove_operator("cleo").unwrap());
    assert_eq!(store.take_login_link("link-4", at(21)).unwrap(), None);
    assert_eq!(
        store.session(&last, at(300)).unwrap(),
        None,
        "the new password kept a session"
    );

    // History, newest first, paged by id.
    for i in 0..5 {
        store
            .record_change("ana", "acknowledge", &format!("alert {i}"), at(40 + i))
            .unwrap();
    }
    let page = store.changes(None, 2).unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].detail, "alert 4");
    let next = store.changes(Some(page[1].id), 10).unwrap();
    assert_eq!(
        next.iter().map(|c| c.detail.as_str()).collect::<Vec<_>>(),
        ["alert 2", "alert 1", "alert 0"]
    );
    assert!(store
        .record_change("ana", "x", &"y".repeat(5_000), at(50))
        .is_err());

    store.prune(at(1_000_000)).unwrap();
    assert!(store.acks(std::slice::from_ref(&id)).unwrap().is_empty());
    assert_eq!(store.operators().unwrap().len(), 1);
    assert!(store.remove_operator("ana").unwrap());
    assert_eq!(store.session(&last, at(300)).unwrap(), None);
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$case(&super::StoreConfig::Sqlite(dir.path().join("alerts.db")));
                }
            )*
        }

        #[test]
        fn postgres_runs_the_same_suite() {
            hids_test_support::skip_unless!(hids_test_support::postgres_available(), "no PostgreSQL");
            let pg = hids_test_support::Postgres::start();
            $(
                eprintln!("postgres: {}", stringify!($case));
                $case(&StoreConfig::Postgres(pg.create_database(stringify!($case))));
            )*
        }
    };
}

suite!(
    creates_then_counts,
    redelivery_is_not_counted,
    two_handles_record_the_same_alert,
    windows_make_separate_alerts,
    query_filters,
    summary_groups,
    suppressions_crud,
    prune_drops_old_alerts,
    league_ranks_every_instance_rows,
    reopen_keeps_data,
    newer_schema_refused,
    older_schema_is_migrated_keeping_alerts,
    inventories_are_verified_assembled_and_stored_once,
    unreadable_rows_are_skipped,
    bad_evidence_is_replaced,
    console_accounts_sessions_acks_and_history,
);

#[test]
fn sqlite_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = open(&StoreConfig::Sqlite(path.clone()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not an SQLite database") && err.contains(path.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn sqlite_path_that_cannot_be_written_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = open(&StoreConfig::Sqlite(dir.path().to_owned()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is a directory"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let err = open(&StoreConfig::Sqlite(file.join("alerts.db")))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot create its directory"), "{err}");
    // A missing directory is made.
    let nested = dir.path().join("a/b/alerts.db");
    open(&StoreConfig::Sqlite(nested.clone())).unwrap();
    assert!(nested.exists());
}

#[test]
fn postgres_that_is_not_there_is_named() {
    let port = hids_test_support::free_port();
    let url = format!("postgresql://hids:secret@127.0.0.1:{port}/alerts");
    let err = open(&StoreConfig::Postgres(url)).err().unwrap().to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}/alerts")) && err.contains("connecting"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}
