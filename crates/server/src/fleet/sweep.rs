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
        let now = self.now_secs();
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
            // Over, or only ever named by a declaration, and settled: forgotten.
            book.runs.retain(|r| {
                !((r.superseded || r.baseline == 0)
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
        // Buckets close once a bucket (an hour by default): only then a pass over the
        // rings of every host.
        if bucket != self.swept_bucket {
            self.close_quiet_buckets(bucket, hits);
            self.swept_bucket = bucket;
        }
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
                let is_silent = quiet >= silence;
                silent += i64::from(judge_silence && is_silent);
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
                    // Unjudged, silence keeps its episode: no second alert when etcd
                    // comes back.
                    if bit == Raised::SILENT && !judge_silence && on {
                        continue;
                    }
                    if !on {
                        reg.raised &= !bit;
                    } else if reg.raised & bit == 0 {
                        reg.raised |= bit;
                        raised.push((id.clone(), evidence_of(reg, bit, quiet, last, since, now)));
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
    since: Secs,
    now: Secs,
) -> (FleetRule, SubjectParts, serde_json::Value) {
    let ago = |s: Secs| wall_time(now.saturating_sub(s));
    let (rule, found) = match bit {
        Raised::SILENT => (
            FleetRule::Silent,
            json!({
                "silent_secs": quiet,
                "last_event": last.map(ago),
                "registered_since": ago(since),
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

/// Pending entries per run at most: past it, neighbouring ranges are dated together
/// (each span by its latest), so an agent losing every other event costs a bounded
/// list and no range is reported before its grace (some later).
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
        if now.saturating_sub(noticed) >= grace {
            due.push(range);
        } else {
            pending.push((range, noticed));
        }
    }
    run.pending = coarsen(pending);
    if due.is_empty() {
        return;
    }
    let undeclared = subtract(&due, &run.ledger.declared);
    let (all, lost) = (count(&due), count(&undeclared));
    for &(a, b) in &due {
        run.ledger.received.insert_range(a, b);
    }
    forget_settled_declarations(run);
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

/// At most [`MAX_PENDING`] entries: neighbours merged into spans dated by the latest.
fn coarsen(pending: Vec<((u64, u64), Secs)>) -> Vec<((u64, u64), Secs)> {
    if pending.len() <= MAX_PENDING {
        return pending;
    }
    let per = pending.len().div_ceil(MAX_PENDING);
    pending
        .chunks(per)
        .filter_map(|c| {
            let first = c.first()?;
            let last = c.last()?;
            // The latest: no gap of the span is reported before its own grace.
            let noticed = c.iter().map(|(_, t)| *t).max()?;
            Some(((first.0 .0, last.0 .1), noticed))
        })
        .collect()
}

/// Declared ranges wholly accounted for are done with: a host declaring many small
/// drops does not grow its ledger without bound.
fn forget_settled_declarations(run: &mut RunBook) {
    if run.ledger.declared.is_empty() {
        return;
    }
    let mut kept = hids_types::ledger::SeqSet::new();
    for &(a, b) in run.ledger.declared.ranges() {
        if !run.ledger.received.missing(a, b).is_empty() {
            kept.insert_range(a, b);
        }
    }
    run.ledger.declared = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FleetConfig;
    use crate::fleet::book::Seen;
    use crate::metrics::Metrics;
    use hids_store::Position;
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn fleet(grace: u64) -> Fleet {
        let config = FleetConfig {
            loss_grace_secs: grace,
            ..FleetConfig::default()
        };
        Fleet::new(config, 3_600, 1, false, Arc::new(Metrics::default()))
    }

    fn ours() -> Ownership {
        Ownership {
            assigned: [(0u8, 0i32)].into_iter().collect(),
            ..Ownership::default()
        }
    }

    /// Feeds one event of `plugin`/`run` numbered `seq` (with `hids` extras).
    fn feed(
        f: &mut Fleet,
        plugin: &str,
        run: &str,
        seq: u64,
        action: &str,
        hids: Value,
    ) -> Vec<Hit> {
        let mut h = json!({"plugin": plugin, "run_id": run});
        if let (Some(h), Some(extra)) = (h.as_object_mut(), hids.as_object()) {
            h.extend(extra.clone());
        }
        let event = json!({"event": {"category": ["host"], "action": action, "sequence": seq},
                           "host": {"id": "h1"}, "hids": h});
        let payload = event.to_string();
        let labels = BTreeMap::new();
        let position = Position {
            topic: "t".into(),
            partition: 0,
            offset: 1,
        };
        let seen = Seen {
            host_id: "h1",
            hostname: "h1",
            labels: &labels,
            bytes: payload.len(),
            position: &position,
            topic_index: 0,
            payload: payload.as_bytes(),
        };
        let mut hits = Vec::new();
        f.observe(&event, &seen, &mut hits);
        hits
    }

    fn sweep(f: &mut Fleet) -> Vec<Hit> {
        let mut hits = Vec::new();
        f.sweep(&ours(), None, &mut hits);
        hits
    }

    fn counts(hits: &[Hit]) -> Vec<(String, u64)> {
        hits.iter().map(|h| (h.rule_id.clone(), h.count)).collect()
    }

    #[test]
    fn a_gap_is_reported_once_split_by_declaration_and_the_ledger_is_one_range_again() {
        let mut f = fleet(0);
        for seq in [1, 2, 3, 7, 8] {
            feed(&mut f, "process", "r1", seq, "exec", json!({}));
        }
        feed(
            &mut f,
            "pipeline",
            "p1",
            1,
            "dropped",
            json!({"dropped": [{"plugin": "process", "run_id": "r1", "from_seq": 5, "to_seq": 5, "reason": "queue_full"}]}),
        );
        let hits = sweep(&mut f);
        assert_eq!(
            counts(&hits),
            vec![
                ("hids-data-loss-undeclared".into(), 2),
                ("hids-data-loss-declared".into(), 1)
            ]
        );
        assert!(sweep(&mut f).is_empty(), "reported once");
        let run = &f.hosts["h1"].runs[0];
        assert_eq!(run.ledger.received.ranges(), &[(1, 8)]);
        assert!(run.ledger.declared.is_empty());
    }

    #[test]
    fn a_run_declared_before_its_events_is_owed_from_its_first_event() {
        let mut f = fleet(0);
        feed(
            &mut f,
            "pipeline",
            "p1",
            40,
            "run_end",
            json!({"ended": [{"plugin": "agent", "run_id": "a1", "last_seq": 600, "how": "stopped"}]}),
        );
        for seq in 598..=600 {
            feed(&mut f, "agent", "a1", seq, "exec", json!({}));
        }
        assert!(sweep(&mut f).is_empty());
    }

    #[test]
    fn lies_cannot_declare_billions_lost() {
        let mut f = fleet(0);
        feed(&mut f, "process", "r1", 1, "exec", json!({}));
        for _ in 0..3 {
            feed(
                &mut f,
                "pipeline",
                "p1",
                1,
                "dropped",
                json!({"dropped": [{"plugin": "process", "run_id": "r1", "from_seq": 2, "to_seq": u64::MAX, "reason": "x"}]}),
            );
        }
        feed(
            &mut f,
            "pipeline",
            "p1",
            2,
            "run_end",
            json!({"ended": [{"plugin": "process", "run_id": "r1", "last_seq": u64::MAX, "how": "stopped"}]}),
        );
        feed(&mut f, "process", "r1", u64::MAX, "exec", json!({}));
        assert!(sweep(&mut f).is_empty());
        // A new run of a plugin we watched start, its first number absurd: refused, and
        // the live run is not superseded by it.
        feed(&mut f, "process", "x", u64::MAX, "exec", json!({}));
        assert!(sweep(&mut f).is_empty());
        assert!(f.hosts["h1"].runs.iter().all(|r| !r.superseded));
    }

    #[test]
    fn many_gaps_keep_a_bounded_pending_list_and_each_keeps_its_grace() {
        let mut f = fleet(3_600);
        for seq in (1..=10_000u64).step_by(2) {
            feed(&mut f, "process", "r1", seq, "exec", json!({}));
        }
        assert!(sweep(&mut f).is_empty(), "within their grace");
        let run = &f.hosts["h1"].runs[0];
        assert!(run.pending.len() <= MAX_PENDING, "{}", run.pending.len());
        // The same gaps in a fleet with no grace: all of them reported at once.
        let mut g = fleet(0);
        for seq in (1..=10_000u64).step_by(2) {
            feed(&mut g, "process", "r1", seq, "exec", json!({}));
        }
        assert_eq!(
            counts(&sweep(&mut g)),
            vec![("hids-data-loss-undeclared".into(), 4_999)]
        );
    }
}
