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
use super::presence::{Presence, Raised, Registered};
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
                // A run's stats travel on the agents' topic and its events on theirs:
                // with several topics no instance is sure to see a whole run.
                if self.reconcile {
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
            if loss.undeclared.saturating_add(loss.declared) > 0 {
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
    /// share of the fleet, and history learned on the old share would judge the new one
    /// a flood or a drop. The labels' volumes start learning again.
    pub fn partitions_moved(&mut self) {
        for rings in self.dims.iter_mut() {
            rings.clear();
        }
    }

    /// Forgets the hosts last read from these partitions (topic index, partition): a
    /// rebalance gave them to another instance, which now keeps their books; should
    /// they come back, what was read meanwhile is not ours to account for.
    pub fn forget(&mut self, partitions: &std::collections::HashSet<(u8, i32)>) {
        self.hosts.retain(|_, b| !partitions.contains(&b.read_from));
    }

    fn loss_hits(&mut self, losses: Vec<(Box<str>, Loss)>, hits: &mut Vec<Hit>) {
        for (id, loss) in losses {
            if loss.undeclared.saturating_add(loss.declared) == 0 {
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
    /// Only the states are judged under the presence lock (the etcd watcher waits for
    /// it); evidence is written for the few states newly raised.
    fn presence_alerts(
        &mut self,
        ownership: &Ownership,
        presence: &Mutex<Presence>,
        now: Secs,
        hits: &mut Vec<Hit>,
    ) {
        // Without etcd the list is stale (agents that left are still on it), and past
        // max_hosts some hosts have no book: silence cannot be told then.
        let judge_silence = self.metrics.fleet.etcd_connected.get() == 1
            && self.hosts.len() < self.config.max_hosts;
        let silence = Secs::try_from(self.config.silence_secs).unwrap_or(Secs::MAX);
        let backlog = Secs::try_from(self.config.backlog_secs).unwrap_or(Secs::MAX);
        let mut raised = Vec::new();
        let mut silent = 0i64;
        {
            let mut p = presence.lock().unwrap_or_else(|e| e.into_inner());
            for (id, reg) in p.hosts.iter_mut() {
                let Some(assigned) = ownership.owns(reg.hash) else {
                    continue;
                };
                let last = self.hosts.get(&**id).map(|b| b.last_event);
                let since = self.secs_of(reg.since);
                let quiet = now.saturating_sub(since.max(assigned).max(last.unwrap_or(0)));
                let is_silent = judge_silence && quiet >= silence;
                silent += i64::from(is_silent);
                // Held back since `held`, and no event from it since: Kafka is out of its
                // reach (events flowing again clear it, whatever the status still says).
                let held = reg.backlog_since.map(|t| self.secs_of(t));
                let unreachable = held.is_some_and(|h| {
                    now.saturating_sub(h) >= backlog && last.is_none_or(|l| l <= h)
                });
                let states = [
                    (Raised::SILENT, is_silent),
                    (Raised::BACKLOG, unreachable),
                    (Raised::QUARANTINED, reg.quarantined.is_some()),
                    (Raised::CRASH_LOOP, reg.crash_loop.is_some()),
                    (Raised::DESIRED, reg.desired_error.is_some()),
                    (
                        Raised::SPOOL,
                        spool_full(
                            reg.spool_bytes,
                            reg.spool_max_bytes,
                            self.config.spool_percent,
                        ),
                    ),
                ];
                for (bit, on) in states {
                    if !on {
                        reg.raised &= !bit;
                    } else if reg.raised & bit == 0 {
                        reg.raised |= bit;
                        raised.push((id.clone(), evidence_of(reg, bit, quiet, last, now)));
                    }
                }
            }
        }
        self.metrics.fleet.agents_silent.set(silent);
        for (id, (rule, (hostname, labels), found)) in raised {
            let subject = Subject {
                host_id: &id,
                hostname: &hostname,
                labels: &labels,
            };
            hits.push(rules::hit(
                rule,
                &subject,
                rules::evidence(&id, found),
                1,
                None,
                self.window_secs,
                Timestamp::now(),
            ));
        }
    }
}

type SubjectParts = (
    Box<str>,
    std::sync::Arc<std::collections::BTreeMap<String, String>>,
);

/// The rule, who it is about and what was found, for a state newly raised.
fn evidence_of(
    reg: &Registered,
    bit: u8,
    quiet: Secs,
    last: Option<Secs>,
    now: Secs,
) -> (FleetRule, SubjectParts, serde_json::Value) {
    let ago = |s: Secs| wall_time(now.saturating_sub(s));
    let (rule, found) = match bit {
        Raised::SILENT => (
            FleetRule::Silent,
            json!({
                "silent_secs": quiet,
                "last_event": last.map(ago),
                "kafka_backlog": reg.backlog_since.is_some(),
            }),
        ),
        Raised::BACKLOG => (
            FleetRule::KafkaUnreachable,
            json!({"held_back_secs": reg.backlog_since.map(|t| t.elapsed().as_secs()),
                   "spool_bytes": reg.spool_bytes, "last_event": last.map(ago)}),
        ),
        Raised::QUARANTINED => (
            FleetRule::PluginQuarantined,
            json!({"plugins": reg.quarantined.as_deref()}),
        ),
        Raised::CRASH_LOOP => (
            FleetRule::PluginCrashLoop,
            json!({"plugins": reg.crash_loop.as_deref()}),
        ),
        Raised::DESIRED => (
            FleetRule::DesiredRefused,
            json!({"desired_error": reg.desired_error.as_deref()}),
        ),
        _ => (
            FleetRule::SpoolFilling,
            json!({"spool_bytes": reg.spool_bytes, "spool_max_bytes": reg.spool_max_bytes}),
        ),
    };
    (rule, (reg.hostname.clone(), reg.labels.clone()), found)
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

/// Ranges missing from one run at most before they are reported at once, whatever
/// their grace: an agent losing every other event cannot grow the books without bound.
const MAX_PENDING: usize = 1_024;

/// Moves the run's gaps towards loss: each missing range is noticed when first seen;
/// once it has been missing for `grace` (or the run has too many), it is reported (into
/// `loss`, declared and undeclared apart) and counted into the ledger as accounted
/// for, so it is never reported again and the ledger is one range again.
fn settle(run: &mut RunBook, now: Secs, grace: Secs, loss: &mut Loss) {
    if run.baseline == 0 {
        return;
    }
    let produced = run.ledger.produced();
    let whole = run.ledger.received.ranges().len() == 1
        && run.ledger.received.min().is_some_and(|m| m <= run.baseline)
        && run.ledger.received.max().is_some_and(|m| m >= produced);
    if whole && run.pending.is_empty() {
        return;
    }
    let open = run.ledger.received.missing(run.baseline, produced);
    let overflow = open.len() > MAX_PENDING;
    // Both lists are sorted: one walk dates every open range by the earliest pending
    // range it overlaps.
    let mut pending = Vec::with_capacity(open.len().min(MAX_PENDING));
    let mut due = Vec::new();
    let mut k = 0;
    for range in open {
        while k < run.pending.len() && run.pending[k].0 .1 < range.0 {
            k += 1;
        }
        let mut noticed = now;
        let mut j = k;
        while j < run.pending.len() && run.pending[j].0 .0 <= range.1 {
            noticed = noticed.min(run.pending[j].1);
            j += 1;
        }
        if overflow || now.saturating_sub(noticed) >= grace {
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
        run.ledger.received.insert_range(a, b);
    }
    loss.undeclared = loss.undeclared.saturating_add(lost);
    loss.declared = loss.declared.saturating_add(all.saturating_sub(lost));
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
