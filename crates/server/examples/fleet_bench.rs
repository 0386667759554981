//! bench/fleet-health: what the fleet's books cost hids-server for N simulated hosts
//! (default 1,000,000), fed through `Triage::message` (the consumer's own path, Kafka
//! aside) with what each agent sends at its steady rate for a simulated period: per
//! host and minute the agent's `stats` (guard figures), the pipeline's `stats` (spool),
//! the process plugin's `stats` and its exec events; 0.1% of the runs lose events (half
//! of those declared by the pipeline), 0.5% of the hosts restart once (new run ids,
//! their ends declared). The books are swept once per simulated minute (the consumer
//! sweeps every 5 s of real time: at a million hosts that is too many for a benchmark)
//! and the daily league is drawn every 5 simulated minutes.
//!
//! Printed, in one run: RSS before and after the feed and the peak, per host; the
//! naive alternative (every sequence number kept, in a `HashMap<(host, plugin, run),
//! Vec<u64>>`, as `hidsctl reconcile` did) fed the same numbers in a child process;
//! events/s through `Triage::message` with and without the fleet on the same events;
//! sweep and league times; then a `Presence` of every host (their etcd status
//! documents) and the time to encode `/metrics`. Usage:
//!
//!     fleet_bench [--hosts 1000000] [--minutes 60] [--compare-minutes 3] [--skip-naive]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: stop loudly

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hids_detect::RuleSet;
use hids_server::config::FleetConfig;
use hids_server::fleet::presence::Presence;
use hids_server::fleet::{Fleet, Ownership};
use hids_server::metrics::Metrics;
use hids_server::triage::Triage;
use hids_store::{Hit, Position};
use hids_types::event::{
    DroppedRange, Group, Host, Labels, Process, ProcessRef, Producer, RunEnd, User,
};
use hids_types::guard::{GuardState, GuardStatus, ProcessUsage};
use hids_types::status::{AgentStatus, PipelineStatus, PluginState, PluginStatus};
use hids_types::Timestamp;

const TOPIC: &str = "hids-events";
const PARTITIONS: u32 = 12;
const IDCS: u64 = 50;
const PROJECTS: u64 = 500;
const PRODUCTS: u64 = 50;
const VERSIONS: [&str; 5] = ["1.4.0", "1.4.1", "1.5.0", "1.5.1", "1.6.0"];
/// The agent's streams: its own (guard figures), its pipeline's, the process plugin's.
const STREAMS: [&str; 3] = ["agent", "pipeline", "process"];
const AGENT: usize = 0;
const PIPELINE: usize = 1;
const PROCESS: usize = 2;
/// Hosts rendered and fed at a time (one simulated minute of each).
const CHUNK: usize = 1_000;
/// Fixed for every host: the partitioner's count in a real deployment.
const SPOOL_MAX_BYTES: u64 = 1 << 30;

// ---------------------------------------------------------------- measurements

fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rss_kb() -> u64 {
    proc_status_kb("VmRSS:")
}

fn hwm_kb() -> u64 {
    proc_status_kb("VmHWM:")
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Bytes per host of an RSS growth in kB.
fn per_host(kb: u64, hosts: usize) -> f64 {
    kb as f64 * 1024.0 / hosts.max(1) as f64
}

fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let median = v.get(v.len() / 2).copied().unwrap_or_default();
    (median, v.last().copied().unwrap_or_default())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- the simulated fleet

/// splitmix64: every host's traits derive from its index, so nothing per host is kept
/// besides [`HostState`].
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn host_id(h: usize) -> String {
    format!("{:016x}{:016x}", mix(h as u64), mix(!(h as u64)))
}

fn run_id(h: usize, stream: usize, generation: u16) -> String {
    format!(
        "{:016x}",
        mix(((h as u64) << 20) ^ ((stream as u64) << 16) ^ u64::from(generation))
    )
}

/// (idc, project, product): a project belongs to one product and lives in about three
/// data centres, so the fleet has a few thousand distinct label sets.
fn label_values(h: usize) -> (u64, u64, u64) {
    let r = mix(h as u64 ^ 0x5eed);
    let project = r % PROJECTS;
    let idc = (project * 7 + (r >> 32) % 3) % IDCS;
    (idc, project, project % PRODUCTS)
}

fn labels(h: usize) -> BTreeMap<String, String> {
    let (idc, project, product) = label_values(h);
    BTreeMap::from([
        ("env".to_owned(), "prod".to_owned()),
        ("idc".to_owned(), format!("idc-{idc:02}")),
        ("product".to_owned(), format!("product-{product:02}")),
        ("project".to_owned(), format!("project-{project:03}")),
    ])
}

fn hostname(h: usize) -> String {
    let (idc, project, _) = label_values(h);
    format!("p{project:03}-idc{idc:02}-{h:07}")
}

/// Exec events the host's process plugin sends per minute (0, 1 or 2: 1 on average).
fn execs_per_minute(h: usize) -> u64 {
    mix(h as u64 ^ 0xe7ec) % 3
}

/// The minute the host's agent restarts, for 0.5% of the hosts.
fn restart_minute(h: usize, minutes: u32) -> Option<u32> {
    let r = mix(h as u64 ^ 0x7e57);
    (r.is_multiple_of(200) && minutes > 2).then(|| 1 + (r >> 32) as u32 % (minutes - 1))
}

/// 0.1% of the runs lose a stats record every 15 minutes (from minute 2); Some(declared).
fn gappy(h: usize, stream: usize, generation: u16) -> Option<bool> {
    let r = mix(((h as u64) << 8) ^ ((stream as u64) << 4) ^ u64::from(generation) ^ 0x9a9);
    r.is_multiple_of(1_000)
        .then_some((r >> 32).is_multiple_of(2))
}

#[derive(Clone, Copy, Default)]
struct HostState {
    /// Each stream's last sequence number.
    seq: [u64; 3],
    /// The agent's start: a restart makes new runs.
    generation: u16,
}

enum Kind {
    AgentStats,
    PipelineStats,
    ProcessStats,
    Exec,
    Dropped(DroppedRange),
    RunEnds(Vec<RunEnd>),
}

/// One event of the simulation, before it is rendered (or only counted, in the naive
/// child: both see the very same sequence numbers).
struct SimEvent {
    host: usize,
    stream: usize,
    generation: u16,
    seq: u64,
    /// Position within the host's minute: events are fed interleaved across hosts.
    slot: u8,
    at_secs: u64,
    kind: Kind,
}

struct Sim {
    minutes: u32,
    start_secs: u64,
    state: Vec<HostState>,
}

impl Sim {
    fn new(hosts: usize, minutes: u32) -> Sim {
        // The simulated period ends now: event times stay within the clock tolerance.
        let now = Timestamp::now().unix_secs() as u64;
        Sim {
            minutes,
            start_secs: now.saturating_sub(u64::from(minutes) * 60),
            state: vec![HostState::default(); hosts],
        }
    }

    /// Host `h`'s events of minute `m`, appended to `out`.
    fn host_minute(&mut self, h: usize, m: u32, out: &mut Vec<SimEvent>) {
        let at = self.start_secs + u64::from(m) * 60 + mix(h as u64) % 60;
        let mut slot = 0u8;
        if restart_minute(h, self.minutes) == Some(m) {
            self.restart(h, at, out);
            slot += 1;
        }
        let plan = [
            (AGENT, Kind::AgentStats),
            (PIPELINE, Kind::PipelineStats),
            (PROCESS, Kind::ProcessStats),
        ];
        for _ in 0..execs_per_minute(h) {
            self.emit(h, m, PROCESS, Kind::Exec, at, &mut slot, out);
        }
        for (stream, kind) in plan {
            self.emit(h, m, stream, kind, at, &mut slot, out);
        }
    }

    /// The agent stops (its pipeline declares where every run ended) and starts again.
    fn restart(&mut self, h: usize, at: u64, out: &mut Vec<SimEvent>) {
        let st = self.state[h];
        let own = st.seq[PIPELINE] + 1;
        let ends = (0..STREAMS.len())
            .map(|s| RunEnd {
                plugin: STREAMS[s].to_owned(),
                run_id: run_id(h, s, st.generation),
                last_seq: if s == PIPELINE { own } else { st.seq[s] },
                how: "stopped".to_owned(),
            })
            .collect();
        out.push(SimEvent {
            host: h,
            stream: PIPELINE,
            generation: st.generation,
            seq: own,
            slot: 0,
            at_secs: at,
            kind: Kind::RunEnds(ends),
        });
        self.state[h] = HostState {
            seq: [0; 3],
            generation: st.generation + 1,
        };
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        h: usize,
        m: u32,
        stream: usize,
        kind: Kind,
        at: u64,
        slot: &mut u8,
        out: &mut Vec<SimEvent>,
    ) {
        let st = &mut self.state[h];
        st.seq[stream] += 1;
        let (seq, generation) = (st.seq[stream], st.generation);
        // Only the periodic records go missing (a declaration is never itself lost).
        let is_stats = matches!(
            kind,
            Kind::AgentStats | Kind::PipelineStats | Kind::ProcessStats
        );
        if let (true, 2, Some(declared)) = (is_stats, m % 15, gappy(h, stream, generation)) {
            // Lost on the way; the pipeline says so for half of these runs.
            if declared {
                let drop = DroppedRange {
                    plugin: STREAMS[stream].to_owned(),
                    run_id: run_id(h, stream, generation),
                    from_seq: seq,
                    to_seq: seq,
                    reason: "spool_full".to_owned(),
                };
                self.emit(h, m, PIPELINE, Kind::Dropped(drop), at, slot, out);
            }
            return;
        }
        out.push(SimEvent {
            host: h,
            stream,
            generation,
            seq,
            slot: *slot,
            at_secs: at + u64::from(*slot),
            kind,
        });
        *slot += 1;
    }

    /// Minute `m` of hosts `from..to`, interleaved across hosts as a partition would mix
    /// them.
    fn chunk(&mut self, from: usize, to: usize, m: u32, out: &mut Vec<SimEvent>) {
        out.clear();
        for h in from..to {
            self.host_minute(h, m, out);
        }
        out.sort_by_key(|e| e.slot);
    }
}

// ---------------------------------------------------------------- rendering

/// Events rendered as the agent writes them: one buffer, one span per event.
#[derive(Default)]
struct Rendered {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize, i32)>,
}

/// What a host's events share: its identity and labels (one copy per chunk).
struct HostView {
    host: Host,
    labels: Labels,
    partition: i32,
}

fn host_view(h: usize) -> HostView {
    let id = host_id(h);
    HostView {
        partition: (crc32fast::hash(id.as_bytes()) % PARTITIONS) as i32,
        host: Host {
            id: id.into(),
            hostname: hostname(h).into(),
        },
        labels: Arc::new(labels(h)),
    }
}

fn guard_figures(h: usize, seq: u64) -> GuardStatus {
    let r = mix(h as u64 ^ seq.rotate_left(17));
    let cpu = 0.1 + (r % 300) as f64 / 100.0;
    let rss = 12.0 + ((r >> 20) % 3_000) as f64 / 100.0;
    GuardStatus {
        state: GuardState::Ok,
        trips: 0,
        cooldown_secs: 60,
        reason: None,
        since: None,
        cpu_percent: cpu,
        cpu_percent_host: cpu / 2.0,
        rss_mb: rss,
        processes: vec![
            ProcessUsage {
                name: "agent".into(),
                pid: 7711,
                cpu_percent: cpu / 2.0,
                rss_mb: rss - 3.1,
            },
            ProcessUsage {
                name: "process".into(),
                pid: 7713,
                cpu_percent: cpu / 2.0,
                rss_mb: 3.1,
            },
        ],
    }
}

/// The pipeline's counters; 0.1% of the hosts hold a spool over 80% full.
fn pipeline_figures(h: usize, seq: u64) -> PipelineStatus {
    let filling = mix(h as u64 ^ 0x5b001).is_multiple_of(1_000);
    PipelineStatus {
        events_out: 0,
        dropped: BTreeMap::new(),
        kafka_delivered: seq * 4,
        spooled: 0,
        replayed: 0,
        spool_bytes: if filling { SPOOL_MAX_BYTES / 10 * 9 } else { 0 },
        spool_records: 0,
        spool_max_bytes: SPOOL_MAX_BYTES,
        backlog: filling,
    }
}

fn process_figures(seq: u64, execs: u64) -> serde_json::Value {
    serde_json::json!({
        "args_truncated": 0, "capture": "ebpf", "capture_fallback": null,
        "dropped": {"capture_queue_full": 0, "kernel_lost": 0, "ring_buffer_full": 0},
        "dropped_execs": 0, "enobufs": 0, "events_emitted": seq - 1, "execs_seen": execs,
        "forced_batches": 0, "incomplete": {"exited": 0}, "netlink_datagrams": 0,
        "parse_errors": 0, "queue_bytes": 0, "ring_records": execs * 3,
        "table": {"entries": 180, "evicted": 0}
    })
}

/// An ordinary exec that no rule of the pack matches (so the detector keeps no
/// per-host state and the RSS growth is the fleet's).
fn exec_details(h: usize, seq: u64, at: Timestamp) -> (Process, User, Group) {
    let pid = 20_000 + (mix(h as u64 ^ seq) % 40_000) as u32;
    let args: Vec<String> = ["/usr/sbin/logrotate", "/etc/logrotate.conf"]
        .map(String::from)
        .into();
    let process = Process {
        pid,
        entity_id: Some(format!("{pid}-139279")),
        name: Some("logrotate".into()),
        executable: Some("/usr/sbin/logrotate".into()),
        args_count: Some(args.len()),
        command_line: Some(args.join(" ")),
        args: Some(args),
        working_directory: Some("/".into()),
        start: Some(at),
        interactive: Some(false),
        session_leader: Some(ProcessRef {
            pid: 1054,
            ..Default::default()
        }),
        parent: Some(ProcessRef {
            pid: 1054,
            entity_id: Some("1054-1320".into()),
            name: Some("cron".into()),
            executable: Some("/usr/sbin/cron".into()),
            args: Some(vec!["/usr/sbin/cron".into(), "-f".into()]),
            command_line: Some("/usr/sbin/cron -f".into()),
        }),
        ..Default::default()
    };
    let user = User {
        id: "0".into(),
        name: Some("root".into()),
        ..Default::default()
    };
    let group = Group {
        id: "0".into(),
        name: Some("root".into()),
    };
    (process, user, group)
}

fn render_one(e: &SimEvent, view: &HostView, buf: &mut Vec<u8>) {
    let producer = Producer {
        host: view.host.clone(),
        labels: view.labels.clone(),
        plugin: STREAMS[e.stream].into(),
        run_id: run_id(e.host, e.stream, e.generation).into(),
    };
    let at = Timestamp::from_unix_nanos(e.at_secs * 1_000_000_000 + 118_734_000);
    let ev = match &e.kind {
        Kind::AgentStats => {
            let mut ev = producer.event(at, e.seq, "metric", "host", "info", "stats");
            ev.hids.guard = Some(guard_figures(e.host, e.seq));
            ev
        }
        Kind::PipelineStats => {
            let mut ev = producer.event(at, e.seq, "metric", "host", "info", "stats");
            ev.hids.stats = serde_json::to_value(pipeline_figures(e.host, e.seq)).ok();
            ev
        }
        Kind::ProcessStats => {
            let mut ev = producer.event(at, e.seq, "metric", "host", "info", "stats");
            ev.hids.stats = Some(process_figures(e.seq, execs_per_minute(e.host)));
            ev
        }
        Kind::Exec => {
            let mut ev = producer.event(at, e.seq, "event", "process", "start", "exec");
            let (process, user, group) = exec_details(e.host, e.seq, at);
            (ev.process, ev.user, ev.group) = (Some(process), Some(user), Some(group));
            ev.hids.capture = Some("ebpf".into());
            ev.hids.pid_ns = Some(4_026_531_836);
            ev
        }
        Kind::Dropped(range) => {
            let mut ev = producer.event(at, e.seq, "event", "host", "info", "dropped");
            ev.hids.dropped = Some(vec![range.clone()]);
            ev
        }
        Kind::RunEnds(ends) => {
            let mut ev = producer.event(at, e.seq, "event", "host", "info", "run_end");
            ev.hids.ended = Some(ends.clone());
            ev
        }
    };
    serde_json::to_writer(buf, &ev).unwrap();
}

fn render(events: &[SimEvent], from: usize, views: &mut Vec<HostView>, out: &mut Rendered) {
    out.bytes.clear();
    out.spans.clear();
    views.clear();
    let to = events.iter().map(|e| e.host + 1).max().unwrap_or(from);
    views.extend((from..to).map(host_view));
    for e in events {
        let view = &views[e.host - from];
        let start = out.bytes.len();
        render_one(e, view, &mut out.bytes);
        out.spans.push((start, out.bytes.len(), view.partition));
    }
}

// ---------------------------------------------------------------- the fleet path

/// Hits raised, by rule.
type Tally = BTreeMap<String, u64>;

fn tally(hits: &mut Vec<Hit>, into: &mut Tally) {
    for h in hits.drain(..) {
        *into.entry(h.rule_id).or_default() += 1;
    }
}

/// The consumer's path: one `Triage::message` per event, at its Kafka position.
fn feed(
    triage: &mut Triage,
    rendered: &Rendered,
    offsets: &mut [i64],
    hits: &mut Vec<Hit>,
) -> Duration {
    let started = Instant::now();
    for &(start, end, partition) in &rendered.spans {
        let offset = &mut offsets[partition as usize];
        *offset += 1;
        let position = Position {
            topic: TOPIC.to_owned(),
            partition,
            offset: *offset,
        };
        triage.message(Some(&rendered.bytes[start..end]), None, position, hits);
    }
    started.elapsed()
}

/// This instance holds every partition (one instance, the worst case for memory).
fn ownership() -> Ownership {
    Ownership {
        partitions: PARTITIONS,
        held: (0..PARTITIONS as i32).map(|p| (p, 0)).collect(),
        assigned: (0..PARTITIONS as i32).map(|p| (0u8, p)).collect(),
    }
}

struct Args {
    hosts: usize,
    minutes: u32,
    compare_minutes: u32,
    naive: bool,
    skip_naive: bool,
}

fn args() -> Args {
    let mut a = Args {
        hosts: 1_000_000,
        minutes: 60,
        compare_minutes: 3,
        naive: false,
        skip_naive: false,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().expect("the option takes a value");
        match flag.as_str() {
            "--hosts" => a.hosts = value().parse().expect("--hosts N"),
            "--minutes" => a.minutes = value().parse().expect("--minutes N"),
            "--compare-minutes" => {
                a.compare_minutes = value().parse().expect("--compare-minutes N")
            }
            "--naive" => a.naive = true,
            "--skip-naive" => a.skip_naive = true,
            other => panic!("unknown option {other}"),
        }
    }
    a.minutes = a.minutes.max(2);
    a.compare_minutes = a.compare_minutes.clamp(1, a.minutes - 1);
    a
}

/// Feed time and events of each simulated minute.
#[derive(Default, Clone, Copy)]
struct Minute {
    events: u64,
    bytes: u64,
    feed: Duration,
}

struct FleetRun {
    triage: Triage,
    minutes: Vec<Minute>,
    sweeps: Vec<Duration>,
    leagues: Vec<Duration>,
    hits: Tally,
    rss_before: u64,
    rss_after: u64,
    hwm_after: u64,
    books: usize,
}

/// Rendering buffers sized before the first measurement, so they are not counted.
fn buffers() -> (Vec<SimEvent>, Vec<HostView>, Rendered) {
    let events = Vec::with_capacity(CHUNK * 8);
    let views = Vec::with_capacity(CHUNK);
    let rendered = Rendered {
        bytes: Vec::with_capacity(CHUNK * 8 * 1_200),
        spans: Vec::with_capacity(CHUNK * 8),
    };
    (events, views, rendered)
}

fn fleet_run(a: &Args, rules: &Arc<RuleSet>, metrics: &Arc<Metrics>) -> FleetRun {
    let mut sim = Sim::new(a.hosts, a.minutes);
    let (mut events, mut views, mut rendered) = buffers();
    let mut hits = Vec::with_capacity(10_000);
    let own = ownership();
    let fleet = Fleet::new(FleetConfig::default(), 3_600, 1, true, metrics.clone());
    let mut triage = Triage::new(rules.clone(), 1_000_000, 3_600, 256 * 1024, metrics.clone())
        .with_fleet(fleet, vec![TOPIC.to_owned()]);
    let mut offsets = [0i64; PARTITIONS as usize];
    let mut run = FleetRun {
        triage: Triage::new(rules.clone(), 1, 3_600, 1, metrics.clone()),
        minutes: Vec::new(),
        sweeps: Vec::new(),
        leagues: Vec::new(),
        hits: Tally::new(),
        rss_before: rss_kb(),
        rss_after: 0,
        hwm_after: 0,
        books: 0,
    };
    let wall = Instant::now();
    for m in 0..a.minutes {
        let mut minute = Minute::default();
        for from in (0..a.hosts).step_by(CHUNK) {
            sim.chunk(from, (from + CHUNK).min(a.hosts), m, &mut events);
            render(&events, from, &mut views, &mut rendered);
            minute.feed += feed(&mut triage, &rendered, &mut offsets, &mut hits);
            minute.events += rendered.spans.len() as u64;
            minute.bytes += rendered.bytes.len() as u64;
            tally(&mut hits, &mut run.hits);
        }
        let started = Instant::now();
        triage.sweep(&own, None, &mut hits);
        run.sweeps.push(started.elapsed());
        tally(&mut hits, &mut run.hits);
        if m % 5 == 4 {
            let started = Instant::now();
            let rows = triage.fleet_mut().map_or(0, |f| f.league().len());
            std::hint::black_box(rows);
            run.leagues.push(started.elapsed());
        }
        eprintln!(
            "fleet minute {}/{}: {} events, {:.0} events/s in Triage::message, sweep {:.0} ms, RSS {:.0} MB, {:.0} s elapsed",
            m + 1,
            a.minutes,
            minute.events,
            minute.events as f64 / minute.feed.as_secs_f64(),
            ms(run.sweeps[run.sweeps.len() - 1]),
            mb(rss_kb()),
            wall.elapsed().as_secs_f64()
        );
        run.minutes.push(minute);
    }
    run.rss_after = rss_kb();
    run.hwm_after = hwm_kb();
    run.books = triage.fleet_mut().map_or(0, |f| f.hosts());
    run.triage = triage;
    run
}

/// The same events of minutes 1..=k through a Triage without the fleet (minute 0 is
/// generated, not fed, so the sequence numbers are the same).
fn without_fleet(a: &Args, rules: &Arc<RuleSet>) -> Vec<Minute> {
    let mut sim = Sim::new(a.hosts, a.minutes);
    let (mut events, mut views, mut rendered) = buffers();
    let mut hits = Vec::new();
    let mut triage = Triage::new(
        rules.clone(),
        1_000_000,
        3_600,
        256 * 1024,
        Arc::new(Metrics::default()),
    );
    let mut offsets = [0i64; PARTITIONS as usize];
    let mut out = Vec::new();
    for m in 0..=a.compare_minutes {
        let mut minute = Minute::default();
        for from in (0..a.hosts).step_by(CHUNK) {
            sim.chunk(from, (from + CHUNK).min(a.hosts), m, &mut events);
            if m == 0 {
                continue;
            }
            render(&events, from, &mut views, &mut rendered);
            minute.feed += feed(&mut triage, &rendered, &mut offsets, &mut hits);
            minute.events += rendered.spans.len() as u64;
            hits.clear();
        }
        if m > 0 {
            eprintln!(
                "without fleet, minute {m}: {:.0} events/s",
                minute.events as f64 / minute.feed.as_secs_f64()
            );
            out.push(minute);
        }
    }
    out
}

fn rate(minutes: &[Minute]) -> f64 {
    let events: u64 = minutes.iter().map(|m| m.events).sum();
    let time: Duration = minutes.iter().map(|m| m.feed).sum();
    events as f64 / time.as_secs_f64()
}

// ---------------------------------------------------------------- the naive alternative

/// The child process: every sequence number kept, per (host, plugin, run), fed the
/// same numbers as the fleet; prints its own RSS figures.
fn naive_child(a: &Args) {
    let mut sim = Sim::new(a.hosts, a.minutes);
    let mut events = Vec::with_capacity(CHUNK * 8);
    let mut runs: HashMap<(String, String, String), Vec<u64>> = HashMap::new();
    let before = rss_kb();
    let mut numbers = 0u64;
    for m in 0..a.minutes {
        for from in (0..a.hosts).step_by(CHUNK) {
            sim.chunk(from, (from + CHUNK).min(a.hosts), m, &mut events);
            for e in &events {
                let key = (
                    host_id(e.host),
                    STREAMS[e.stream].to_owned(),
                    run_id(e.host, e.stream, e.generation),
                );
                runs.entry(key).or_default().push(e.seq);
                numbers += 1;
            }
        }
        if m % 10 == 9 {
            eprintln!(
                "naive minute {}/{}: RSS {:.0} MB",
                m + 1,
                a.minutes,
                mb(rss_kb())
            );
        }
    }
    let after = rss_kb();
    println!(
        "naive {} {} {} {} {}",
        before,
        after,
        hwm_kb(),
        numbers,
        runs.len()
    );
}

/// Runs the naive child; (rss before, after, peak in kB, numbers, runs).
fn naive(a: &Args) -> Option<[u64; 5]> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args([
            "--naive",
            "--hosts",
            &a.hosts.to_string(),
            "--minutes",
            &a.minutes.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("naive "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    v.try_into().ok()
}

// ---------------------------------------------------------------- presence and /metrics

/// The status document the host's agent keeps in etcd.
fn status_document(h: usize, started: Timestamp) -> Vec<u8> {
    let id = host_id(h);
    let mut process = PluginStatus::new(
        "process",
        "/usr/lib/hids/plugins/process",
        PluginState::Running,
    );
    process.pid = Some(7713);
    process.run_id = Some(run_id(h, PROCESS, 0));
    process.version = Some("1.5.0".into());
    process.events = 120;
    process.health = Some(process_figures(121, 1));
    let status = AgentStatus {
        version: VERSIONS[(mix(h as u64 ^ 0x7e) % VERSIONS.len() as u64) as usize].into(),
        host_id: id,
        hostname: hostname(h),
        pid: 7711,
        mode: "managed".into(),
        labels: labels(h),
        ips: vec![format!("10.{}.{}.{}", h >> 16 & 255, h >> 8 & 255, h & 255)],
        applied_generation: 3,
        desired_error: None,
        desired_revision: 1_234_567,
        stopped_by_command: false,
        started_at: started,
        updated_at: started,
        plugins: vec![process],
        pipeline: pipeline_figures(h, 60),
        guard: Some(guard_figures(h, 60)),
        cut: None,
        update: None,
        update_error: None,
        rolled_back: None,
    };
    serde_json::to_vec(&status).unwrap()
}

struct PresenceRun {
    presence: Mutex<Presence>,
    rss_before: u64,
    rss_after: u64,
    put: Duration,
    doc_bytes: u64,
}

fn presence_run(a: &Args, metrics: &Arc<Metrics>) -> PresenceRun {
    let max_values = FleetConfig::default().max_label_values;
    let rss_before = rss_kb();
    let mut presence = Presence::new(max_values, metrics.clone());
    let started = Timestamp::now();
    let mut put = Duration::ZERO;
    let mut doc_bytes = 0u64;
    for h in 0..a.hosts {
        let doc = status_document(h, started);
        doc_bytes += doc.len() as u64;
        let t = Instant::now();
        presence.put(&host_id(h), &doc);
        put += t.elapsed();
        if h % 200_000 == 199_999 {
            eprintln!("presence: {} hosts, RSS {:.0} MB", h + 1, mb(rss_kb()));
        }
    }
    PresenceRun {
        presence: Mutex::new(presence),
        rss_before,
        rss_after: rss_kb(),
        put,
        doc_bytes,
    }
}

/// Encodes the registry 20 times: (median, max, series, bytes, a host_id label seen).
fn scrape(metrics: &Metrics) -> (Duration, Duration, usize, usize, bool) {
    let registry = metrics.registry();
    let mut times = Vec::new();
    let mut text = String::new();
    for _ in 0..20 {
        text = String::new();
        let t = Instant::now();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        times.push(t.elapsed());
    }
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let host_label = text.lines().any(|l| l.contains("host_id="));
    let (median, max) = median_max(times);
    (median, max, series, text.len(), host_label)
}

// ---------------------------------------------------------------- report

fn report_fleet(a: &Args, run: &FleetRun, naive: Option<[u64; 5]>, bare: &[Minute]) {
    let events: u64 = run.minutes.iter().map(|m| m.events).sum();
    let bytes: u64 = run.minutes.iter().map(|m| m.bytes).sum();
    let fleet = run.books;
    let grown = run.rss_after.saturating_sub(run.rss_before);
    println!(
        "fed: {} hosts x {} simulated minutes = {events} events ({:.0} bytes on average, {:.1} per host and minute) through Triage::message with the fleet; {fleet} hosts with books",
        a.hosts,
        a.minutes,
        bytes as f64 / events.max(1) as f64,
        events as f64 / (a.hosts as f64 * f64::from(a.minutes)),
    );
    println!(
        "fleet books: RSS {:.0} MB before, {:.0} MB after (+{:.0} MB = {:.0} bytes per host), peak (VmHWM) {:.0} MB; target < 2048 MB at 1,000,000 hosts",
        mb(run.rss_before),
        mb(run.rss_after),
        mb(grown),
        per_host(grown, a.hosts),
        mb(run.hwm_after)
    );
    if let Some([before, after, peak, numbers, runs]) = naive {
        let grown = after.saturating_sub(before);
        println!(
            "naive (every sequence number kept, HashMap<(host, plugin, run), Vec<u64>>, child process): {numbers} numbers in {runs} runs, RSS {:.0} MB before, {:.0} MB after (+{:.0} MB = {:.0} bytes per host, {:.1} per number), peak {:.0} MB; at this rate a day of the fleet is {:.0} MB",
            mb(before),
            mb(after),
            mb(grown),
            per_host(grown, a.hosts),
            grown as f64 * 1024.0 / numbers.max(1) as f64,
            mb(peak),
            mb(grown) * 1_440.0 / f64::from(a.minutes),
        );
    }
    let k = bare.len();
    let with: Vec<Minute> = run.minutes.iter().skip(1).take(k).copied().collect();
    let (rw, rb) = (rate(&with), rate(bare));
    println!(
        "Triage::message, same events of minutes 1..={k}: {rw:.0} events/s with the fleet, {rb:.0} without ({:.2} us per event for the books); whole feed with the fleet {:.0} events/s, first minute (books made) {:.0}",
        1e6 / rw - 1e6 / rb,
        rate(&run.minutes),
        rate(&run.minutes[..1]),
    );
    let (sm, sx) = median_max(run.sweeps.clone());
    let (lm, lx) = median_max(run.leagues.clone());
    println!(
        "sweep of the books: median {:.0} ms, max {:.0} ms ({} sweeps; the consumer sweeps every 5 s: {:.1}% of its thread); league (both figures): median {:.0} ms, max {:.0} ms",
        ms(sm),
        ms(sx),
        run.sweeps.len(),
        ms(sm) / 5_000.0 * 100.0,
        ms(lm),
        ms(lx)
    );
    println!("fleet alerts raised (hits, by rule): {:?}", run.hits);
    println!(
        "struct sizes (bytes, heap aside): HostBook {}, RunBook {}, RunLedger {}, SeqSet {}, VolumeRing {} (+{} of history on the heap); a host with 3 runs holds them in a Vec of capacity 4",
        std::mem::size_of::<hids_server::fleet::book::HostBook>(),
        std::mem::size_of::<hids_server::fleet::book::RunBook>(),
        std::mem::size_of::<hids_types::ledger::RunLedger>(),
        std::mem::size_of::<hids_types::ledger::SeqSet>(),
        std::mem::size_of::<hids_server::fleet::volume::VolumeRing>(),
        hids_server::fleet::volume::VolumeRing::new(&volume_rules(), 0).heap_bytes(),
    );
}

fn volume_rules() -> hids_server::fleet::volume::VolumeRules {
    let c = FleetConfig::default();
    hids_server::fleet::volume::VolumeRules {
        bucket_secs: c.volume_bucket_secs,
        history_days: c.volume_history_days,
        min_history_days: c.volume_min_history_days,
        ratio: c.volume_ratio,
        min_events: c.volume_min_events,
        min_bytes: c.volume_min_bytes,
    }
}

fn main() {
    let a = args();
    if a.naive {
        return naive_child(&a);
    }
    println!(
        "# fleet-health: {} simulated hosts, {} simulated minutes, sweep every simulated minute, {} CPUs",
        a.hosts,
        a.minutes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let naive = if a.skip_naive { None } else { naive(&a) };
    let rules = Arc::new(RuleSet::load(true, &[]).expect("the built-in pack loads"));
    let metrics = Arc::new(Metrics::default());
    let mut run = fleet_run(&a, &rules, &metrics);
    let bare = without_fleet(&a, &rules);
    report_fleet(&a, &run, naive, &bare);
    let p = presence_run(&a, &metrics);
    let grown = p.rss_after.saturating_sub(p.rss_before);
    println!(
        "presence: {} status documents ({:.0} bytes on average) put in {:.1} s; RSS +{:.0} MB = {:.0} bytes per host; whole process now {:.0} MB, peak {:.0} MB",
        a.hosts,
        p.doc_bytes as f64 / a.hosts.max(1) as f64,
        p.put.as_secs_f64(),
        mb(grown),
        per_host(grown, a.hosts),
        mb(rss_kb()),
        mb(hwm_kb())
    );
    let mut hits = Vec::new();
    let t = Instant::now();
    run.triage.sweep(&ownership(), Some(&p.presence), &mut hits);
    println!(
        "sweep with presence (books and {} registered hosts): {:.0} ms, {} alerts",
        a.hosts,
        ms(t.elapsed()),
        hits.len()
    );
    let (median, max, series, bytes, host_label) = scrape(&metrics);
    println!(
        "/metrics encode with {} hosts known: median {:.2} ms, max {:.2} ms over 20 runs; {series} series, {bytes} bytes; host_id label: {}; target < 50 ms",
        a.hosts,
        ms(median),
        ms(max),
        if host_label { "PRESENT (wrong)" } else { "none" }
    );
}
