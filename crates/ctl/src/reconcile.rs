//! `hidsctl reconcile`: proves what reached Kafka. Reads the topics from the beginning
//! to their current end and, per host and plugin run, compares the sequence numbers
//! received with those produced: missing ranges, duplicates, the drops the agents
//! declared (`dropped` events of their `pipeline` stream), and what is left: undeclared
//! loss.
//!
//! What a run produced is the highest of: the last sequence received, the count its
//! own stats record claims, the last sequence its master declared when the run ended
//! (`run_end`), and the declared drops. A run that ended without such a declaration
//! (its agent was killed, or lost power) while a later run of the same plugin exists is
//! reported as ended without a declared end: its tail cannot be proven.
//!
//! The account itself (interval sets of sequence numbers, what is missing, declared or
//! not) is `hids_types::ledger`, which `hids-server` keeps continuously; this module
//! only reads the topics and reports.
//!
//! Declarations are taken only from the `pipeline` stream of the same host: the agent
//! refuses plugin events that carry them, so a plugin cannot hide loss, and one host
//! cannot declare another's.

use crate::exit::Exit;
use hids_types::ledger::RunLedger;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

#[derive(Default)]
struct Run {
    /// Order of the run's first message in its partition (one host, one partition).
    first_seen: u64,
    /// Its sequence numbers, stats claims and declarations (one host's events share a
    /// partition, so `out_of_order` is the per-host order promise).
    ledger: RunLedger,
}

#[derive(Serialize)]
struct RunReport {
    host_id: String,
    plugin: String,
    run_id: String,
    produced: u64,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    missing: Vec<(u64, u64)>,
    declared_drops: u64,
    undeclared_loss: u64,
    undeclared: Vec<(u64, u64)>,
    /// `stopped` or `superseded` when the master declared the run's end; `null` for a
    /// run still going, or one that ended without a declaration (see `end_unknown`).
    ended: Option<String>,
    /// The run ended (a later run of the plugin exists) without a declared end: loss at
    /// its tail, if any, cannot be seen.
    end_unknown: bool,
}

#[derive(Serialize)]
struct Report {
    topics: Vec<String>,
    messages: u64,
    unparsed: u64,
    hosts: usize,
    produced: u64,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    declared_drops: u64,
    undeclared_loss: u64,
    /// Runs that ended without a declared end (a killed agent): their tails are unproven.
    runs_without_end: u64,
    runs: Vec<RunReport>,
}

/// Run key: host, plugin, run id.
type RunKey = (String, String, String);
/// Each partition's (topic, partition) end offset when reading started.
type PartitionEnds = HashMap<(String, i32), i64>;

/// Everything read from the topics, per run, before it is settled into a report.
#[derive(Default)]
struct Reading {
    runs: BTreeMap<RunKey, Run>,
    /// Drops the hosts' pipelines declared, by host.
    declared: Vec<(String, hids_types::event::DroppedRange)>,
    /// Run ends the hosts' pipelines declared, by host.
    ended: Vec<(String, hids_types::event::RunEnd)>,
    messages: u64,
    unparsed: u64,
}

pub async fn run(
    brokers: &str,
    topics: &[String],
    properties: &[(String, String)],
    timeout: Duration,
    json: bool,
) -> anyhow::Result<Exit> {
    let consumer = consumer(brokers, properties)?;
    let started = Instant::now();
    let (end, total) = assign(&consumer, brokers, topics)?;
    let progress = (!json).then(|| crate::progress::bar(total.max(0) as u64, "reading"));
    let mut reading = Reading::default();
    let mut remaining = end;
    while !remaining.is_empty() {
        if started.elapsed() > timeout {
            anyhow::bail!(
                "timed out after {timeout:?} with {} partition(s) not read to their end",
                remaining.len()
            );
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        let key = (msg.topic().to_owned(), msg.partition());
        if let Some(&high) = remaining.get(&key) {
            if msg.offset() + 1 >= high {
                remaining.remove(&key);
            }
        }
        if let Some(p) = &progress {
            p.inc(1);
        }
        reading.take(msg.payload());
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let report = reading.settle(topics);
    print(&report, json)?;
    Ok(if report.undeclared_loss > 0 {
        Exit::UndeclaredLoss
    } else {
        Exit::Success
    })
}

/// A consumer of its own group (nothing committed), with the extra properties.
fn consumer(brokers: &str, properties: &[(String, String)]) -> anyhow::Result<BaseConsumer> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("hidsctl-reconcile-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in properties {
        cfg.set(k, v);
    }
    Ok(cfg.create()?)
}

/// Assigns every non-empty partition of `topics` from its low watermark. Returns each
/// one's current end (its high watermark) and the messages to read in all.
fn assign(
    consumer: &BaseConsumer,
    brokers: &str,
    topics: &[String],
) -> anyhow::Result<(PartitionEnds, i64)> {
    let mut assignment = TopicPartitionList::new();
    let mut end = PartitionEnds::new();
    let mut total: i64 = 0;
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            anyhow::bail!("topic {topic} not found on {brokers}");
        };
        if t.partitions().is_empty() {
            anyhow::bail!("topic {topic} has no partitions (does it exist?)");
        }
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if high > low {
                assignment.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
                end.insert((topic.clone(), p.id()), high);
                total += high - low;
            }
        }
    }
    consumer.assign(&assignment)?;
    Ok((end, total))
}

impl Reading {
    /// One message: its run's sequence, stats and, from a `pipeline` stream, the
    /// declarations.
    fn take(&mut self, payload: Option<&[u8]>) {
        self.messages += 1;
        let Some(ids) = payload.and_then(|b| hids_types::event::EventIds::parse(b).ok()) else {
            self.unparsed += 1;
            return;
        };
        let Some(host) = ids.host.as_ref().map(|h| h.id.to_string()) else {
            self.unparsed += 1;
            return;
        };
        let next_order = self.runs.len() as u64;
        let run = self
            .runs
            .entry((
                host.clone(),
                ids.hids.plugin.to_string(),
                ids.hids.run_id.to_string(),
            ))
            .or_insert_with(|| Run {
                first_seen: next_order,
                ..Run::default()
            });
        run.ledger.receive(ids.event.sequence);
        if ids.event.action == "stats" {
            if let Some(n) = ids.hids.stats.as_ref().and_then(|s| s.events_emitted) {
                run.ledger.claim_emitted(n);
            }
        }
        if ids.hids.plugin == "pipeline" {
            for d in ids.hids.dropped.into_iter().flatten() {
                self.declared.push((host.clone(), d));
            }
            for e in ids.hids.ended.into_iter().flatten() {
                self.ended.push((host.clone(), e));
            }
        }
    }

    /// The declarations joined to their runs, and every run's account.
    fn settle(mut self, topics: &[String]) -> Report {
        for (host, d) in std::mem::take(&mut self.declared) {
            let run = self
                .runs
                .entry((host, d.plugin.clone(), d.run_id.clone()))
                .or_default();
            run.ledger.declare(d.from_seq, d.to_seq);
        }
        // A run may be known only from its end: every event of it lost.
        for (host, e) in std::mem::take(&mut self.ended) {
            let run = self
                .runs
                .entry((host, e.plugin.clone(), e.run_id.clone()))
                .or_default();
            run.ledger.end(&e.how, e.last_seq);
        }
        // The latest run of each host and plugin, by first appearance: any earlier run
        // has ended, declared or not.
        let mut latest: BTreeMap<(String, String), u64> = BTreeMap::new();
        for ((host, plugin, _), run) in &self.runs {
            let l = latest.entry((host.clone(), plugin.clone())).or_default();
            *l = (*l).max(run.first_seen);
        }
        let mut report = Report {
            topics: topics.to_vec(),
            messages: self.messages,
            unparsed: self.unparsed,
            hosts: self
                .runs
                .keys()
                .map(|k| &k.0)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            produced: 0,
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            declared_drops: 0,
            undeclared_loss: 0,
            runs_without_end: 0,
            runs: Vec::new(),
        };
        for (key, run) in self.runs {
            let superseded = latest
                .get(&(key.0.clone(), key.1.clone()))
                .is_some_and(|&l| l > run.first_seen);
            report.add(run_report(key, run, superseded));
        }
        report
    }
}

/// One run's account: what it produced, what arrived, and what is missing, declared
/// or not. `superseded`: a later run of the same plugin exists.
fn run_report((host_id, plugin, run_id): RunKey, run: Run, superseded: bool) -> RunReport {
    // Events count from 1.
    let account = run.ledger.account(1);
    RunReport {
        host_id,
        plugin,
        run_id,
        produced: account.produced,
        received: account.received,
        duplicates: account.duplicates,
        out_of_order: account.out_of_order,
        missing: account.missing,
        declared_drops: account.declared_drops,
        undeclared_loss: account.undeclared_loss,
        undeclared: account.undeclared,
        end_unknown: run.ledger.ended.is_none() && superseded,
        ended: run.ledger.ended.map(|(how, _)| how),
    }
}

impl Report {
    /// Adds a run to the report and to its totals.
    fn add(&mut self, run: RunReport) {
        self.produced = self.produced.saturating_add(run.produced);
        self.received += run.received;
        self.duplicates += run.duplicates;
        self.out_of_order += run.out_of_order;
        self.declared_drops = self.declared_drops.saturating_add(run.declared_drops);
        self.undeclared_loss = self.undeclared_loss.saturating_add(run.undeclared_loss);
        self.runs_without_end += u64::from(run.end_unknown);
        self.runs.push(run);
    }
}

/// The report as JSON, or as a table and a summary for a person.
fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let fmt = |r: &[(u64, u64)]| {
            if r.is_empty() {
                "-".to_owned()
            } else {
                let mut s: Vec<String> = r
                    .iter()
                    .take(5)
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                if r.len() > 5 {
                    s.push(format!("(+{} more)", r.len() - 5));
                }
                s.join(",")
            }
        };
        let rows: Vec<Vec<String>> = report
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.host_id.clone(),
                    r.plugin.clone(),
                    r.run_id.clone(),
                    r.produced.to_string(),
                    r.received.to_string(),
                    r.duplicates.to_string(),
                    r.declared_drops.to_string(),
                    r.undeclared_loss.to_string(),
                    fmt(&r.undeclared),
                ]
            })
            .collect();
        out_raw!(
            "{}",
            hids_types::text::table(
                &[
                    "HOST",
                    "PLUGIN",
                    "RUN",
                    "PRODUCED",
                    "RECEIVED",
                    "DUP",
                    "DECLARED",
                    "UNDECLARED",
                    "UNDECLARED SEQS"
                ],
                &rows
            )
        );
        out!(
            "{} message(s) from {} host(s): produced {}, received {}, duplicates {}, declared drops {}, undeclared loss {}",
            report.messages, report.hosts, report.produced, report.received, report.duplicates, report.declared_drops, report.undeclared_loss
        );
        if report.runs_without_end > 0 {
            out!(
                "{} run(s) ended without a declared end (an agent killed or a power cut): loss at their tails cannot be seen",
                report.runs_without_end
            );
        }
    }
    Ok(())
}
