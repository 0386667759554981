//! What one instance knows of each host whose events it reads: when it last spoke, its
//! runs' sequence ledgers (reconciliation), its event volume and the day's resource
//! figures. Fed event by event by the consumer thread, which alone owns it (no lock on
//! the hot path).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hids_store::{Hit, Position};
use hids_types::ledger::RunLedger;
use hids_types::Timestamp;
use serde_json::Value;

use super::league::DayFigures;
use super::rules::{self, FleetRule, Subject};
use super::volume::VolumeRing;
use super::Fleet;
use crate::fleet_metrics::StatsRefusal;

/// A sequence number this far past the run's highest is a lie (or a corrupt event),
/// not loss: it would declare billions of events missing.
const MAX_SEQUENCE_JUMP: u64 = 100_000_000;
/// CPU (percent of one core) and memory (MB) beyond these are absurd figures.
const MAX_CPU_PERCENT: f64 = 100_000.0;
const MAX_RSS_MB: f64 = 10_000_000.0;
/// The dimensions whose volume is judged besides each host's.
pub const VOLUME_LABELS: [&str; 3] = ["idc", "project", "product"];

/// Seconds since the fleet books were opened: four bytes a timestamp.
pub type Secs = u32;

pub struct HostBook {
    pub hostname: Box<str>,
    pub labels: Arc<BTreeMap<String, String>>,
    pub last_event: Secs,
    /// Where its last event was read (topic index, partition): when this instance no
    /// longer holds it, the host's events go to another instance, and so does its book.
    pub read_from: (u8, i32),
    pub runs: Vec<RunBook>,
    pub volume: VolumeRing,
    pub day: DayFigures,
    /// Plugins this instance has seen a run of: a new run of one of them is watched from
    /// its first sequence number (an earlier run means we were there when it started).
    pub known_plugins: Vec<Arc<str>>,
    /// An alert raised from the agent's stats is not raised again until it clears.
    pub spool_raised: bool,
}

pub struct RunBook {
    pub plugin: Arc<str>,
    pub run_id: Box<str>,
    pub ledger: RunLedger,
    /// The first sequence this instance accounts for: 1, or where it joined a run it
    /// did not see start (a server restart, an offset past the run's beginning); 0
    /// while unknown (a run named by a declaration before any of its events).
    pub baseline: u64,
    /// Missing ranges not yet raised, with when each was first noticed (sorted). Once
    /// raised, a range is counted into the ledger as accounted for: memory stays flat.
    pub pending: Vec<((u64, u64), Secs)>,
    pub last_seen: Secs,
    /// A later run of the same plugin exists.
    pub superseded: bool,
    /// The highest sequence number that arrived (0: none yet): what the limits on
    /// numbers and declarations are measured from, never moved by a declaration.
    pub top_received: u64,
    /// Kernel and ring-buffer loss last reported by the run's stats (None before the
    /// first stats record this instance read).
    pub kernel_lost: Option<u64>,
    pub capture_raised: bool,
    /// Why the agent said it dropped (the last reason declared).
    pub drop_reason: Option<Box<str>>,
}

/// The few fields of an event the books read.
pub struct Seen<'a> {
    pub host_id: &'a str,
    pub hostname: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub bytes: usize,
    pub position: &'a Position,
    pub topic_index: u8,
    pub payload: &'a [u8],
}

impl Fleet {
    /// One event. Fleet alerts it raises (a guard trip, kernel loss, a capture
    /// fallback, a volume verdict) go to `hits`.
    pub fn observe(&mut self, event: &Value, seen: &Seen<'_>, hits: &mut Vec<Hit>) {
        let now = self.now_secs();
        let category = event
            .pointer("/event/category/0")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.metrics.fleet.count_event(category, seen.bytes);
        let bucket = self.volume_rules.bucket_of(Timestamp::now().unix_secs());
        let rules = self.volume_rules;
        let Some(book) = self.book(seen, now) else {
            return;
        };
        book.last_event = now;
        book.read_from = (seen.topic_index, seen.position.partition);
        let mut verdicts = Vec::new();
        book.volume
            .add(&rules, bucket, seen.bytes as u64, &mut verdicts);
        self.volume_hits(seen.host_id, &verdicts, hits);
        self.dimension_volume(seen.labels, bucket, seen.bytes as u64, hits);
        let (Some(plugin), Some(run_id), Some(seq)) = (
            event.pointer("/hids/plugin").and_then(Value::as_str),
            event.pointer("/hids/run_id").and_then(Value::as_str),
            event.pointer("/event/sequence").and_then(Value::as_u64),
        ) else {
            return;
        };
        let action = event
            .pointer("/event/action")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !self.receive(seen, plugin, run_id, seq, now) {
            return;
        }
        match (plugin, action) {
            ("pipeline", "stats") => self.pipeline_stats(event, seen, hits),
            ("pipeline", _) => self.declarations(event, seen.host_id, now),
            ("agent", "stats") => self.agent_stats(event, seen.host_id),
            ("agent", "guard_tripped") => {
                self.metrics.fleet.guard_trips.inc();
                hits.push(self.event_hit(FleetRule::GuardTripped, seen, 1));
            }
            (_, "stats") => self.plugin_stats(event, seen, plugin, run_id, seq, hits),
            _ => {}
        }
    }

    /// The host's book, made on its first event; None past `max_hosts` (counted).
    fn book(&mut self, seen: &Seen<'_>, now: Secs) -> Option<&mut HostBook> {
        if !self.hosts.contains_key(seen.host_id) {
            if self.hosts.len() >= self.config.max_hosts {
                self.metrics.fleet.hosts_refused.inc();
                return None;
            }
            let labels = self.intern_labels(seen.labels);
            let bucket = self.volume_rules.bucket_of(Timestamp::now().unix_secs());
            self.hosts.insert(
                seen.host_id.into(),
                Box::new(HostBook {
                    hostname: seen.hostname.into(),
                    labels,
                    last_event: now,
                    read_from: (seen.topic_index, seen.position.partition),
                    runs: Vec::new(),
                    volume: VolumeRing::new(&self.volume_rules, bucket),
                    day: DayFigures::default(),
                    known_plugins: Vec::new(),
                    spool_raised: false,
                }),
            );
        }
        let labels_changed = self
            .hosts
            .get(seen.host_id)
            .is_some_and(|b| *b.labels != *seen.labels || *b.hostname != *seen.hostname);
        if labels_changed {
            let labels = self.intern_labels(seen.labels);
            if let Some(b) = self.hosts.get_mut(seen.host_id) {
                b.labels = labels;
                b.hostname = seen.hostname.into();
            }
        }
        self.hosts.get_mut(seen.host_id).map(|b| &mut **b)
    }

    /// Counts the sequence number into its run's ledger. False when the number is
    /// refused as absurd (counted).
    fn receive(
        &mut self,
        seen: &Seen<'_>,
        plugin: &str,
        run_id: &str,
        seq: u64,
        now: Secs,
    ) -> bool {
        let plugin = self.intern_plugin(plugin);
        let Some(book) = self.hosts.get_mut(seen.host_id) else {
            return false;
        };
        let reconcile = self.reconcile;
        // Checked before anything is made or superseded for it.
        if seq > event_limit(book, &plugin, run_id) {
            self.metrics.fleet.refuse_stats(StatsRefusal::sequence_jump);
            return false;
        }
        let i = run_index(book, &plugin, run_id, now);
        let run = &mut book.runs[i];
        run.last_seen = now;
        run.top_received = run.top_received.max(seq);
        if run.baseline == 0 {
            start(book, i, seq);
        }
        if reconcile {
            book.runs[i].ledger.receive(seq);
        }
        true
    }

    /// The pipeline's declarations: drops (by run) and run ends.
    fn declarations(&mut self, event: &Value, host_id: &str, now: Secs) {
        let Some(book) = self.hosts.get_mut(host_id) else {
            return;
        };
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        for d in array(event, "/hids/dropped") {
            let (Some(plugin), Some(run_id), Some(from), Some(to)) = (
                text(d, "plugin"),
                text(d, "run_id"),
                d.get("from_seq").and_then(Value::as_u64),
                d.get("to_seq").and_then(Value::as_u64),
            ) else {
                continue;
            };
            if !self.reconcile {
                continue;
            }
            let plugin = intern_in(&mut self.plugins, &plugin);
            if from > to || to > reach(book, &plugin, &run_id) {
                self.metrics.fleet.refuse_stats(StatsRefusal::sequence_jump);
                continue;
            }
            let i = run_index(book, &plugin, &run_id, now);
            let run = &mut book.runs[i];
            run.ledger.declare(from, to);
            run.drop_reason = text(d, "reason").map(|r| r.chars().take(64).collect());
        }
        for e in array(event, "/hids/ended") {
            let (Some(plugin), Some(run_id), Some(last)) = (
                text(e, "plugin"),
                text(e, "run_id"),
                e.get("last_seq").and_then(Value::as_u64),
            ) else {
                continue;
            };
            let plugin = intern_in(&mut self.plugins, &plugin);
            let how: String = text(e, "how")
                .unwrap_or_default()
                .chars()
                .take(32)
                .collect();
            if !self.reconcile {
                continue;
            }
            if last > reach(book, &plugin, &run_id) {
                self.metrics.fleet.refuse_stats(StatsRefusal::sequence_jump);
                continue;
            }
            let i = run_index(book, &plugin, &run_id, now);
            book.runs[i].ledger.end(&how, last);
        }
    }

    /// The agent's periodic figures: the day's league.
    fn agent_stats(&mut self, event: &Value, host_id: &str) {
        let guard = event.pointer("/hids/guard");
        let figure = |k: &str| guard.and_then(|g| g.get(k)).and_then(Value::as_f64);
        let (cpu, rss) = (figure("cpu_percent"), figure("rss_mb"));
        let sane =
            |v: Option<f64>, max: f64| v.filter(|v| v.is_finite() && (0.0..=max).contains(v));
        let (Some(cpu), Some(rss)) = (sane(cpu, MAX_CPU_PERCENT), sane(rss, MAX_RSS_MB)) else {
            self.metrics
                .fleet
                .refuse_stats(StatsRefusal::absurd_figures);
            return;
        };
        let day = super::today();
        if let Some(book) = self.hosts.get_mut(host_id) {
            book.day.add(day, cpu, rss);
        }
    }

    /// The pipeline's periodic record: how full the spool is.
    fn pipeline_stats(&mut self, event: &Value, seen: &Seen<'_>, hits: &mut Vec<Hit>) {
        let Some(stats) = event.pointer("/hids/stats") else {
            return self.metrics.fleet.refuse_stats(StatsRefusal::missing);
        };
        let (Some(used), Some(max)) = (
            stats.get("spool_bytes").and_then(Value::as_u64),
            stats.get("spool_max_bytes").and_then(Value::as_u64),
        ) else {
            return;
        };
        // With etcd, the status says it (once per episode, by the host's owner).
        if self.presence_on && self.metrics.fleet.etcd_connected.get() == 1 {
            if let Some(book) = self.hosts.get_mut(seen.host_id) {
                book.spool_raised = false;
            }
            return;
        }
        let full = spool_full(used, max, self.config.spool_percent);
        let Some(book) = self.hosts.get_mut(seen.host_id) else {
            return;
        };
        if full && !book.spool_raised {
            book.spool_raised = true;
            hits.push(self.event_hit(FleetRule::SpoolFilling, seen, 1));
        } else if !full {
            book.spool_raised = false;
        }
    }

    /// A plugin's stats: the events it claims, its capture backend, its kernel loss.
    fn plugin_stats(
        &mut self,
        event: &Value,
        seen: &Seen<'_>,
        plugin: &str,
        run_id: &str,
        seq: u64,
        hits: &mut Vec<Hit>,
    ) {
        let Some(stats) = event.pointer("/hids/stats") else {
            return self.metrics.fleet.refuse_stats(StatsRefusal::missing);
        };
        let emitted = stats.get("events_emitted").and_then(Value::as_u64);
        // The events written before this record: never more than its own number.
        if emitted.is_some_and(|e| e >= seq) {
            return self
                .metrics
                .fleet
                .refuse_stats(StatsRefusal::emitted_beyond_sequence);
        }
        let lost = ["kernel_lost", "ring_buffer_full"]
            .iter()
            .filter_map(|k| {
                stats
                    .pointer(&format!("/dropped/{k}"))
                    .and_then(Value::as_u64)
            })
            .fold(0u64, u64::saturating_add);
        let degraded = stats.get("capture").and_then(Value::as_str) == Some("cn_proc")
            && stats.get("capture_fallback").is_some_and(|f| !f.is_null());
        let plugin = self.intern_plugin(plugin);
        let now = self.now_secs();
        let Some(book) = self.hosts.get_mut(seen.host_id) else {
            return;
        };
        let i = run_index(book, &plugin, run_id, now);
        let run = &mut book.runs[i];
        if let Some(e) = emitted {
            run.ledger.claim_emitted(e);
        }
        // The first record this instance reads of a run it joined midway carries loss
        // counted before (and perhaps alerted by another instance): a starting point.
        let since = match run.kernel_lost {
            Some(before) => before,
            None if run.baseline == 1 => 0,
            None => lost,
        };
        let new_loss = lost.saturating_sub(since);
        run.kernel_lost = Some(since.max(lost));
        let raise_capture = degraded && !run.capture_raised;
        run.capture_raised |= degraded;
        if new_loss > 0 {
            hits.push(self.event_hit(FleetRule::KernelLoss, seen, new_loss));
        }
        if raise_capture {
            hits.push(self.event_hit(FleetRule::CaptureDegraded, seen, 1));
        }
    }

    /// An alert whose evidence is the event itself, at its Kafka position.
    fn event_hit(&self, rule: FleetRule, seen: &Seen<'_>, count: u64) -> Hit {
        rules::hit(
            rule,
            &Subject {
                host_id: seen.host_id,
                hostname: seen.hostname,
                labels: seen.labels,
            },
            String::from_utf8_lossy(seen.payload).into(),
            count,
            Some(seen.position.clone()),
            self.window_secs,
            Timestamp::now(),
        )
    }

    fn intern_plugin(&mut self, plugin: &str) -> Arc<str> {
        intern_in(&mut self.plugins, plugin)
    }

    /// Hosts of one image share their label set: one copy for all of them.
    fn intern_labels(
        &mut self,
        labels: &BTreeMap<String, String>,
    ) -> Arc<BTreeMap<String, String>> {
        intern_labels(&mut self.label_sets, labels)
    }
}

/// Distinct label sets shared; past it, hosts keep their own copy.
const MAX_LABEL_SETS: usize = 100_000;

/// One shared copy of a label set (hosts of one image have the same), from `sets`.
pub fn intern_labels(
    sets: &mut HashSet<Arc<BTreeMap<String, String>>>,
    labels: &BTreeMap<String, String>,
) -> Arc<BTreeMap<String, String>> {
    if let Some(l) = sets.get(labels) {
        return l.clone();
    }
    let l = Arc::new(labels.clone());
    if sets.len() < MAX_LABEL_SETS {
        sets.insert(l.clone());
    }
    l
}

/// Distinct plugin names kept; a lying host cannot grow the table past it.
const MAX_PLUGIN_NAMES: usize = 256;

fn intern_in(names: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(n) = names.get(name) {
        return n.clone();
    }
    let n: Arc<str> = name.into();
    if names.len() < MAX_PLUGIN_NAMES {
        names.insert(n.clone());
    }
    n
}

fn array<'a>(event: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    event
        .pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Whether a spool of `max` bytes holding `used` is past `percent` full.
pub fn spool_full(used: u64, max: u64, percent: f64) -> bool {
    max > 0 && used as f64 >= max as f64 * percent / 100.0
}

/// Runs of a host kept at most: a host restarting its plugins in a loop cannot grow
/// its book without bound (the oldest settled run goes first).
const MAX_RUNS_PER_HOST: usize = 32;

fn cut_run_id(run_id: &str) -> &str {
    match run_id.char_indices().nth(MAX_RUN_ID_CHARS) {
        Some((cut, _)) => &run_id[..cut],
        None => run_id,
    }
}

/// Where the run's book is, made when first named (by an event or a declaration) with
/// its baseline unknown until its first event ([`start`]).
fn run_index(book: &mut HostBook, plugin: &Arc<str>, run_id: &str, now: Secs) -> usize {
    let run_id = cut_run_id(run_id);
    if let Some(i) = book
        .runs
        .iter()
        .position(|r| r.plugin == *plugin && &*r.run_id == run_id)
    {
        return i;
    }
    if book.runs.len() >= MAX_RUNS_PER_HOST {
        // Superseded runs go first, then the longest idle; the plugin of a live run
        // evicted is forgotten too, so its return is owed from its first event seen,
        // not from 1.
        if let Some(oldest) = book
            .runs
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| (!r.superseded, r.last_seen))
            .map(|(i, _)| i)
        {
            let gone = book.runs.swap_remove(oldest);
            // A run named only by declarations never started here: its plugin stays known.
            if !gone.superseded && gone.baseline != 0 {
                book.known_plugins.retain(|p| *p != gone.plugin);
            }
        }
    }
    // Exactly: a vector doubling to 4 for 3 runs is 240 MB at a million hosts.
    book.runs.reserve_exact(1);
    book.runs.push(RunBook {
        plugin: plugin.clone(),
        run_id: run_id.into(),
        ledger: RunLedger::default(),
        baseline: 0,
        pending: Vec::new(),
        last_seen: now,
        superseded: false,
        top_received: 0,
        kernel_lost: None,
        capture_raised: false,
        drop_reason: None,
    });
    book.runs.len() - 1
}

/// The first event of run `i` arrived, numbered `seq`: the run is owed from 1 when we
/// were there before it started (we knew an earlier run of its plugin), else from
/// `seq`; earlier runs of its plugin are over.
fn start(book: &mut HostBook, i: usize, seq: u64) {
    let plugin = book.runs[i].plugin.clone();
    let known = book.known_plugins.contains(&plugin);
    book.runs[i].baseline = if known { 1 } else { seq.max(1) };
    for (j, r) in book.runs.iter_mut().enumerate() {
        if j != i && r.plugin == plugin {
            r.superseded = true;
        }
    }
    if !known && book.known_plugins.len() < MAX_RUNS_PER_HOST {
        book.known_plugins.reserve_exact(1);
        book.known_plugins.push(plugin);
    }
}

/// Characters of a run id kept (ours are 16 hex digits): a longer one is cut.
const MAX_RUN_ID_CHARS: usize = 64;

/// The highest sequence a declaration about a run may name: a number far past what
/// arrived of it is a lie or corruption (measured from what arrived only, so
/// declarations cannot raise it).
fn reach(book: &HostBook, plugin: &Arc<str>, run_id: &str) -> u64 {
    book.runs
        .iter()
        .find(|r| r.plugin == *plugin && &*r.run_id == cut_run_id(run_id))
        .map_or(0, |r| r.top_received)
        .saturating_add(MAX_SEQUENCE_JUMP)
}

/// The highest sequence an event of the run may carry: far past what arrived of it, or
/// (a new run of a plugin we watched start, owed from 1) far past 1, is a lie or
/// corruption; the first number of a run we join midway can be anything.
fn event_limit(book: &HostBook, plugin: &Arc<str>, run_id: &str) -> u64 {
    let run = book
        .runs
        .iter()
        .find(|r| r.plugin == *plugin && &*r.run_id == cut_run_id(run_id));
    match run {
        Some(r) if r.top_received > 0 => r.top_received.saturating_add(MAX_SEQUENCE_JUMP),
        _ if book.known_plugins.contains(plugin) => 1 + MAX_SEQUENCE_JUMP,
        _ => u64::MAX,
    }
}

/// The per-host runs' memory, for the figures: ranges held beyond one per ledger.
pub fn extra_ranges(runs: &[RunBook]) -> usize {
    runs.iter()
        .map(|r| {
            r.ledger.received.ranges().len().saturating_sub(1) + r.ledger.declared.ranges().len()
        })
        .sum()
}

/// Books boxed: the table's buckets hold a pointer, not a 160-byte book (at a million
/// hosts the table has two million buckets).
pub(super) type Hosts = HashMap<Box<str>, Box<HostBook>>;
