//! bench/detect: exec events per second per core through hids-server's full path (JSON
//! decode from bytes, prefilter, rules, frequency state, aggregation into alerts and the
//! SQLite store, exactly as the consumer runs it, Kafka aside), beside hids-detect alone
//! and sigma-rust's naive loop (every rule on every event) over the same event texts and
//! the same SigmaHQ rules, in one run on one thread. Usage:
//!
//!     detect_bench [--events 500000] [--naive-events 20000] [--sigma DIR]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: stop loudly

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use hids_detect::{mix, Detector, FrequencyLimits, RuleSet};
use hids_server::metrics::Metrics;
use hids_server::triage::Triage;
use hids_store::{Position, StoreConfig};
use hids_types::Timestamp;
use serde_json::Value;

/// Distinct event texts cycled through, so the benchmark's own memory stays small and
/// the peak RSS shows the detector's.
const POOL: usize = 20_000;

/// CPU time this thread has used, from /proc/thread-self/schedstat (nanoseconds).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn vm_hwm_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Args {
    events: usize,
    naive_events: usize,
    sigma: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        events: 500_000,
        naive_events: 20_000,
        sigma: PathBuf::from("../shared/data/sigma/rules/linux/process_creation"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).expect("each option takes a value");
        match pair[0].as_str() {
            "--events" => a.events = value.parse().expect("--events N"),
            "--naive-events" => a.naive_events = value.parse().expect("--naive-events N"),
            "--sigma" => a.sigma = PathBuf::from(value),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// Our full path: decode + detect, with or without the prefilter.
fn run_ours(
    set: &Arc<RuleSet>,
    pool: &[Vec<u8>],
    n: usize,
    prefilter: bool,
) -> (f64, u64, hids_detect::DetectorStats) {
    let mut det = Detector::new(Arc::clone(set), FrequencyLimits::default());
    let mut hits = Vec::new();
    let mut fired = 0u64;
    let start = Instant::now();
    for i in 0..n {
        let ev: Value = serde_json::from_slice(&pool[i % pool.len()]).unwrap();
        hits.clear();
        if prefilter {
            det.detect(&ev, &mut hits);
        } else {
            det.detect_every_rule(&ev, &mut hits);
        }
        fired += hits.len() as u64;
    }
    (n as f64 / start.elapsed().as_secs_f64(), fired, det.stats())
}

/// The consumer's path without Kafka: triage (decode, rules, suppressions, windows) per
/// event, then each batch of the server's default size stored in one transaction.
fn run_full(
    set: &Arc<RuleSet>,
    pool: &[Vec<u8>],
    n: usize,
    batch: usize,
) -> (f64, f64, u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = hids_store::open(&StoreConfig::Sqlite(dir.path().join("alerts.db"))).unwrap();
    let mut triage = Triage::new(
        Arc::clone(set),
        1_000_000,
        3_600,
        256 * 1024,
        Arc::new(Metrics::default()),
    );
    let mut hits = Vec::new();
    let mut stored = 0u64;
    let start = Instant::now();
    let cpu_start = cpu_ns();
    for (i, chunk) in (0..n).collect::<Vec<_>>().chunks(batch).enumerate() {
        hits.clear();
        for &j in chunk {
            let position = Position {
                topic: "events".into(),
                partition: 0,
                offset: (i * batch + j % batch) as i64,
            };
            triage.message(Some(&pool[j % pool.len()]), None, position, &mut hits);
        }
        if !hits.is_empty() {
            stored += store.record(&hits, Timestamp::now()).unwrap().len() as u64;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let per_cpu = n as f64 / ((cpu_ns() - cpu_start) as f64 / 1e9);
    let alerts = store
        .alerts(&hids_store::AlertQuery {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap()
        .len();
    (rate, per_cpu, stored, alerts)
}

fn decode_only(pool: &[Vec<u8>], n: usize) -> f64 {
    let start = Instant::now();
    let mut keys = 0usize;
    for i in 0..n {
        let ev: Value = serde_json::from_slice(&pool[i % pool.len()]).unwrap();
        keys += ev.as_object().map_or(0, |o| o.len());
    }
    std::hint::black_box(keys);
    n as f64 / start.elapsed().as_secs_f64()
}

/// Sigma's field names from our ECS event, as a naive integration would map them.
const SIGMA_FIELDS: &[(&str, &str)] = &[
    ("Image", "/process/executable"),
    ("CommandLine", "/process/command_line"),
    ("ParentImage", "/process/parent/executable"),
    ("ParentCommandLine", "/process/parent/command_line"),
    ("User", "/user/name"),
    ("CurrentDirectory", "/process/working_directory"),
    ("ProcessId", "/process/pid"),
    ("ParentProcessId", "/process/parent/pid"),
    ("LogonId", "/user/audit/id"),
];

fn run_sigma_rust(dir: &PathBuf, pool: &[Vec<u8>], n: usize) -> (f64, usize, u64) {
    let mut rules = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        if let Ok(rule) = sigma_rust::rule_from_yaml(&text) {
            rules.push(rule);
        }
    }
    let mut fired = 0u64;
    let start = Instant::now();
    for i in 0..n {
        let ev: Value = serde_json::from_slice(&pool[i % pool.len()]).unwrap();
        let mut event = sigma_rust::Event::new();
        for (name, pointer) in SIGMA_FIELDS {
            match ev.pointer(pointer) {
                Some(Value::String(s)) => event.insert(*name, s.clone()),
                Some(Value::Number(num)) => event.insert(*name, num.to_string()),
                _ => {}
            }
        }
        fired += rules.iter().filter(|r| r.is_match(&event)).count() as u64;
    }
    (n as f64 / start.elapsed().as_secs_f64(), rules.len(), fired)
}

fn main() {
    let a = args();
    println!("hwm_start_kb {}", vm_hwm_kb());
    // 1% attacks, 1000 hosts, as the agents write them.
    let pool: Vec<Vec<u8>> = mix::event_mix(POOL, 1000, 10, 14)
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let avg = pool.iter().map(Vec::len).sum::<usize>() / pool.len();
    let set = Arc::new(RuleSet::load(true, std::slice::from_ref(&a.sigma)).expect("rules"));
    println!(
        "rules: {} loaded ({} match rules, {} without a prefilter literal), {} listed; event texts: {} distinct, {avg} bytes on average",
        set.loaded(),
        set.match_rules(),
        set.always_evaluated(),
        set.rules().len(),
        pool.len()
    );
    let hwm_before = vm_hwm_kb();
    let mut full = 0.0;
    for batch in [2_000, 10_000] {
        let (wall, per_cpu, stored, alerts) = run_full(&set, &pool, a.events, batch);
        println!(
            "ours, full path (decode + prefilter + rules + aggregation + SQLite store), batches of {batch}: {per_cpu:.0} events per CPU-second; {wall:.0} events/s of wall-clock on this thread (the store's fsync per batch included); {stored} hits into {alerts}{} alerts",
            if alerts >= 10_000 { "+" } else { "" }
        );
        full = per_cpu;
    }
    println!(
        "peak RSS (VmHWM): {hwm_before} kB before, {} kB after the full path",
        vm_hwm_kb()
    );
    let (ours, fired, stats) = run_ours(&set, &pool, a.events, true);
    let hwm_after = vm_hwm_kb();
    println!(
        "ours, detection alone (decode + prefilter + rules): {ours:.0} events/s, {:.2} rules evaluated per event, {fired} hits over {} events, {} frequency keys",
        stats.rules_per_event, a.events, stats.frequency_keys
    );
    println!(
        "peak RSS (VmHWM): {hwm_before} kB before {} events, {hwm_after} kB after",
        a.events
    );
    let decode = decode_only(&pool, a.events.min(200_000));
    println!("decode alone (serde_json::Value): {decode:.0} events/s");
    let (every, fired_every, stats_every) = run_ours(&set, &pool, a.naive_events, false);
    println!(
        "ours, every rule on every event: {every:.0} events/s, {:.2} rules per event, {fired_every} hits over {} events",
        stats_every.rules_per_event, a.naive_events
    );
    let (naive, n_rules, fired_naive) = run_sigma_rust(&a.sigma, &pool, a.naive_events);
    println!(
        "sigma-rust 0.7, naive loop ({n_rules} rules on every event): {naive:.0} events/s, {fired_naive} hits over {} events",
        a.naive_events
    );
    println!(
        "speed-up: {:.1}x (full path), {:.1}x (detection alone)",
        full / naive,
        ours / naive
    );
    println!("hwm_end_kb {}", vm_hwm_kb());
}
