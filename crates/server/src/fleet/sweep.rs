//! The periodic pass over the books: closes volume buckets of hosts gone quiet, turns
//! gaps that outlived their grace into loss alerts, raises the presence alerts of the
//! hosts this instance owns, forgets what has aged out, and sets the gauges.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use hids_store::Hit;
use hids_types::ledger::{count, subtract};
use hids_types::Timestamp;
use serde_json::json;

use super::book::{extra_ranges, spool_full, RunBook, Secs};
use super::presence::{Presence, Raised};
use super::rules::{self, FleetRule, Subject};
use super::Fleet;

/// Which hosts' presence this instance answers for: those whose events (keyed by host
/// id, librdkafka's default partitioner) land in a partition of the agents' topic that
/// it holds.
#[derive(Debug, Default, Clone)]
pub struct Ownership {
    /// Partitions of the agents' topic (0: not known yet: nobody is owned).
    pub partitions: u32,
    /// The ones held, with when each was assigned (fleet seconds).
    pub held: HashMap<i32, Secs>,
    /// This instance holds every partition of every topic: it sees every event, so even a
    /// run split over several topics can be reconciled.
    pub holds_everything: bool,
    /// Every partition held, by topic index (configuration order).
    pub assigned: std::collections::HashSet<(u8, i32)>,
}

impl Ownership {
    /// When the host's partition was assigned to us; None when it is not ours.
    pub fn owns(&self, hash: u32) -> Option<Secs> {
        if self.partitions == 0 {
            return None;
        }
        let partition = i32::try_from(hash % self.partitions).ok()?;
        self.held.get(&partition).copied()
    }
}

/// Loss found in one host's runs in one sweep.
#[derive(Default)]
struct Loss {
    undeclared: u64,
    declared: u64,
    runs: Vec<serde_json::Value>,
}

impl Fleet {
    /// One pass; alerts go to `hits`.
    pub fn sweep(
        &mut self,
        ownership: &Ownership,
        presence: Option<&Mutex<Presence>>,
        hits: &mut Vec<Hit>,
    ) {
        let now = self.now();
        let bucket = self.volume_rules.bucket_of(Timestamp::now().unix_secs());
        let grace = Secs::try_from(self.config.loss_grace_secs).unwrap_or(Secs::MAX);
        let keep_idle = Secs::try_from(u64::from(self.config.volume_history_days + 1) * 86_400)
            .unwrap_or(Secs::MAX);
        let mut losses: Vec<(Box<str>, Loss)> = Vec::new();
        let mut gone = Vec::new();
        let (mut runs, mut ranges, mut sending) = (0usize, 0usize, 0usize);
        let silence = Secs::try_from(self.config.silence_secs).unwrap_or(Secs::MAX);
        for (id, book) in self.hosts.iter_mut() {
            let mut loss = Loss::default();
            for run in book.runs.iter_mut() {
                let splittable = run.topics.count_ones() <= 1 || ownership.holds_everything;
                if splittable {
                    settle(run, now, grace, &mut loss);
                }
            }
            book.runs.retain(|r| {
                !(r.superseded
                    && r.pending.is_empty()
                    && now.saturating_sub(r.last_seen) > grace.saturating_mul(2))
            });
            runs += book.runs.len();
            ranges += extra_ranges(&book.runs);
            sending += usize::from(now.saturating_sub(book.last_event) < silence);
            if loss.undeclared + loss.declared > 0 {
                losses.push((id.clone(), loss));
            }
            // Idle past the history, or its partition went to another instance.
            if now.saturating_sub(book.last_event) > keep_idle
                || !ownership.assigned.contains(&book.read_from)
            {
                gone.push(id.clone());
            }
        }
        for id in gone {
            self.hosts.remove(&id);
        }
        self.loss_hits(losses, hits);
        self.close_quiet_buckets(bucket, hits);
        if let Some(presence) = presence {
            self.presence_alerts(ownership, presence, now, hits);
        }
        self.metrics
            .fleet
            .note_books(self.hosts.len(), runs, ranges, sending);
    }

    /// Closes every host's and label's bucket that time has passed, events or not: a
    /// host gone quiet is judged too.
    fn close_quiet_buckets(&mut self, bucket: u64, hits: &mut Vec<Hit>) {
        let mut judged = Vec::new();
        for (id, book) in self.hosts.iter_mut() {
            let mut verdicts = Vec::new();
            book.volume
                .advance(&self.volume_rules, bucket, &mut verdicts);
            if !verdicts.is_empty() {
                judged.push((id.clone(), verdicts));
            }
        }
        for (id, verdicts) in judged {
            self.volume_hits(&id, &verdicts, hits);
        }
        for label in 0..self.dims.len() {
            let mut judged = Vec::new();
            for (value, ring) in self.dims[label].iter_mut() {
                let mut verdicts = Vec::new();
                ring.advance(&self.volume_rules, bucket, &mut verdicts);
                if !verdicts.is_empty() {
                    judged.push((value.clone(), verdicts));
                }
            }
            for (value, verdicts) in judged {
                self.dimension_hits(label, &value, &verdicts, hits);
            }
        }
    }

    /// The partitions moved: what this instance counts per label is no longer the same
    /// share of the fleet, so the bucket in progress is not judged nor kept.
    pub fn partitions_moved(&mut self) {
        for rings in self.dims.iter_mut() {
            for ring in rings.values_mut() {
                ring.taint();
            }
        }
    }

    fn loss_hits(&mut self, losses: Vec<(Box<str>, Loss)>, hits: &mut Vec<Hit>) {
        for (id, loss) in losses {
            if loss.undeclared + loss.declared == 0 {
                continue;
            }
            let Some(book) = self.hosts.get(&id) else {
                continue;
            };
            let subject = Subject {
                host_id: &id,
                hostname: &book.hostname,
                labels: &book.labels,
            };
            let found = json!({"runs": loss.runs, "undeclared": loss.undeclared, "declared": loss.declared});
            for (rule, n) in [
                (FleetRule::LossUndeclared, loss.undeclared),
                (FleetRule::LossDeclared, loss.declared),
            ] {
                if n == 0 {
                    continue;
                }
                let kind = if rule == FleetRule::LossUndeclared {
                    "undeclared"
                } else {
                    "declared"
                };
                self.metrics.fleet.count_loss(kind, n);
                hits.push(rules::hit(
                    rule,
                    &subject,
                    rules::evidence(&id, found.clone()),
                    n,
                    None,
                    self.window_secs,
                    Timestamp::now(),
                ));
            }
        }
    }

    /// Alerts from the status and presence of the registered hosts this instance owns.
    fn presence_alerts(
        &mut self,
        ownership: &Ownership,
        presence: &Mutex<Presence>,
        now: Secs,
        hits: &mut Vec<Hit>,
    ) {
        let mut p = presence.lock().unwrap_or_else(|e| e.into_inner());
        let mut silent = 0i64;
        let silence = Secs::try_from(self.config.silence_secs).unwrap_or(Secs::MAX);
        let backlog = Duration::from_secs(self.config.backlog_secs);
        for (id, reg) in p.hosts.iter_mut() {
            let Some(assigned) = ownership.owns(reg.hash) else {
                continue;
            };
            let last = self.hosts.get(&**id).map(|b| b.last_event);
            let quiet_from = self.secs_of(reg.since).max(assigned).max(last.unwrap_or(0));
            let quiet = now.saturating_sub(quiet_from);
            let is_silent = quiet >= silence;
            silent += i64::from(is_silent);
            let ago = |s: Secs| wall_time(now.saturating_sub(s));
            let states = [
                (
                    Raised::SILENT,
                    FleetRule::Silent,
                    is_silent,
                    json!({
                        "silent_secs": quiet,
                        "last_event": last.map(ago),
                        "registered_since": ago(self.secs_of(reg.since)),
                        "kafka_backlog": reg.backlog_since.is_some(),
                    }),
                ),
                (
                    Raised::BACKLOG,
                    FleetRule::KafkaUnreachable,
                    reg.backlog_since.is_some_and(|t| t.elapsed() >= backlog),
                    json!({"backlog_secs": reg.backlog_since.map(|t| t.elapsed().as_secs()), "spool_bytes": reg.spool_bytes}),
                ),
                (
                    Raised::QUARANTINED,
                    FleetRule::PluginQuarantined,
                    reg.quarantined.is_some(),
                    json!({"plugins": reg.quarantined.as_deref()}),
                ),
                (
                    Raised::CRASH_LOOP,
                    FleetRule::PluginCrashLoop,
                    reg.crash_loop.is_some(),
                    json!({"plugins": reg.crash_loop.as_deref()}),
                ),
                (
                    Raised::DESIRED,
                    FleetRule::DesiredRefused,
                    reg.desired_error.is_some(),
                    json!({"desired_error": reg.desired_error.as_deref()}),
                ),
                (
                    Raised::SPOOL,
                    FleetRule::SpoolFilling,
                    spool_full(
                        reg.spool_bytes,
                        reg.spool_max_bytes,
                        self.config.spool_percent,
                    ),
                    json!({"spool_bytes": reg.spool_bytes, "spool_max_bytes": reg.spool_max_bytes}),
                ),
            ];
            for (bit, rule, on, found) in states {
                if !on {
                    reg.raised &= !bit;
                    continue;
                }
                if reg.raised & bit != 0 {
                    continue;
                }
                reg.raised |= bit;
                let subject = Subject {
                    host_id: id,
                    hostname: &reg.hostname,
                    labels: &reg.labels,
                };
                hits.push(rules::hit(
                    rule,
                    &subject,
                    rules::evidence(id, found),
                    1,
                    None,
                    self.window_secs,
                    Timestamp::now(),
                ));
            }
        }
        self.metrics.fleet.agents_silent.set(silent);
    }
}

/// The wall-clock time `ago` seconds before now.
fn wall_time(ago: Secs) -> Timestamp {
    Timestamp(
        SystemTime::now()
            .checked_sub(Duration::from_secs(u64::from(ago)))
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

/// Most ranges named in an alert's evidence per run.
const EVIDENCE_RANGES: usize = 10;

/// Moves the run's gaps towards loss: each missing range not yet reported is noticed
/// when first seen; once it has been missing for `grace`, it is reported (into
/// `loss`, declared and undeclared apart) and never again.
fn settle(run: &mut RunBook, now: Secs, grace: Secs, loss: &mut Loss) {
    let produced = run.ledger.produced();
    let whole = run.ledger.received.ranges().len() == 1
        && run.ledger.received.min().is_some_and(|m| m <= run.baseline)
        && run.ledger.received.max().is_some_and(|m| m >= produced);
    if whole && run.pending.is_empty() {
        return;
    }
    let account = run.ledger.account(run.baseline);
    let open = subtract(&account.missing, &run.reported);
    let mut pending = Vec::with_capacity(open.len());
    let mut due = Vec::new();
    for range in open {
        let noticed = run
            .pending
            .iter()
            .filter(|((a, b), _)| *a <= range.1 && *b >= range.0)
            .map(|(_, t)| *t)
            .min()
            .unwrap_or(now);
        if now.saturating_sub(noticed) >= grace {
            due.push(range);
        } else {
            pending.push((range, noticed));
        }
    }
    run.pending = pending;
    if due.is_empty() {
        return;
    }
    let undeclared = subtract(&due, &run.ledger.declared);
    let (all, lost) = (count(&due), count(&undeclared));
    for &(a, b) in &due {
        run.reported.insert_range(a, b);
    }
    loss.undeclared = loss.undeclared.saturating_add(lost);
    loss.declared = loss.declared.saturating_add(all - lost);
    if loss.runs.len() < EVIDENCE_RANGES {
        loss.runs.push(json!({
            "plugin": &*run.plugin,
            "run_id": &*run.run_id,
            "undeclared": undeclared.iter().take(EVIDENCE_RANGES).collect::<Vec<_>>(),
            "missing": due.iter().take(EVIDENCE_RANGES).collect::<Vec<_>>(),
            "declared_reason": run.drop_reason.as_deref(),
            "produced": produced,
        }));
    }
}
