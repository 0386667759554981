//! The fleet's figures in `/metrics`: aggregates only (by `idc`, agent version, event
//! category, loss kind), never a series per host, so the series count stays flat
//! whatever the fleet's size; label values from agents are capped.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Distinct `event.category` values exported; the rest are `_other` (ECS defines 20).
const MAX_CATEGORIES: usize = 32;

/// Why a stats record (or an event's figures) was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StatsRefusal {
    /// No `hids.stats` in a stats event.
    missing,
    /// Negative, non-finite or impossible CPU or memory figures.
    absurd_figures,
    /// A claim of more events emitted than the record's own sequence number.
    emitted_beyond_sequence,
    /// A sequence number far beyond the run's highest (a lie or corruption, not loss).
    sequence_jump,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedStats {
    pub reason: StatsRefusal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OnlineLabels {
    pub idc: String,
    pub version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabel {
    /// `declared` (the agent said it dropped them) or `undeclared`.
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule_id: String,
}

#[derive(Default)]
pub struct FleetMetrics {
    pub agents_online: Family<OnlineLabels, Gauge>,
    pub agents_registered: Gauge,
    pub agents_silent: Gauge,
    pub hosts_sending: Gauge,
    pub hosts_tracked: Gauge,
    pub hosts_refused: Counter,
    pub runs_tracked: Gauge,
    pub gap_ranges: Gauge,
    pub events: Family<CategoryLabel, Counter>,
    pub event_bytes: Family<CategoryLabel, Counter>,
    pub guard_trips: Counter,
    pub loss_events: Family<LossLabel, Counter>,
    pub stats_refused: Family<RefusedStats, Counter>,
    pub status_unreadable: Counter,
    pub etcd_connected: Gauge,
    pub alerts_by_rule: Family<RuleLabel, Counter>,
    categories: Mutex<HashSet<String>>,
    by_category: Mutex<std::collections::HashMap<String, (Counter, Counter)>>,
}

impl FleetMetrics {
    pub fn register(&self, r: &mut Registry) {
        // Series that exist from the start, so a dashboard shows 0 rather than nothing.
        for kind in ["declared", "undeclared"] {
            let _ = self
                .loss_events
                .get_or_create(&LossLabel { kind: kind.into() });
        }
        r.register(
            "fleet_agents_online",
            "Agents registered in etcd (status keys), by idc and version: the same fleet-wide figure on every instance",
            self.agents_online.clone(),
        );
        r.register(
            "fleet_agents_registered",
            "Agents registered in etcd, in all",
            self.agents_registered.clone(),
        );
        r.register(
            "fleet_agents_silent",
            "Registered agents this instance owns that sent nothing for fleet.silence_secs",
            self.agents_silent.clone(),
        );
        r.register(
            "fleet_hosts_sending",
            "Hosts whose events this instance read within fleet.silence_secs",
            self.hosts_sending.clone(),
        );
        r.register(
            "fleet_hosts_tracked",
            "Hosts with books (volume, reconciliation, league) on this instance",
            self.hosts_tracked.clone(),
        );
        r.register(
            "fleet_hosts_refused",
            "Hosts not given a book: fleet.max_hosts reached",
            self.hosts_refused.clone(),
        );
        r.register(
            "fleet_runs_tracked",
            "Plugin runs with books on this instance",
            self.runs_tracked.clone(),
        );
        r.register(
            "fleet_gap_ranges",
            "Sequence ranges held beyond one per run (memory grows with these)",
            self.gap_ranges.clone(),
        );
        r.register(
            "fleet_events",
            "Events read, by ECS event.category",
            self.events.clone(),
        );
        r.register(
            "fleet_event_bytes",
            "Bytes of events read, by ECS event.category",
            self.event_bytes.clone(),
        );
        r.register(
            "fleet_guard_trips",
            "Agents' resource guard trips seen",
            self.guard_trips.clone(),
        );
        r.register(
            "fleet_loss_events",
            "Events found lost by reconciliation after the grace period, declared by the agent or not",
            self.loss_events.clone(),
        );
        r.register(
            "fleet_stats_refused",
            "Stats records or sequence numbers refused as absurd, by reason",
            self.stats_refused.clone(),
        );
        r.register(
            "fleet_status_unreadable",
            "Agent status values in etcd that are not status documents (still counted as presence)",
            self.status_unreadable.clone(),
        );
        r.register(
            "fleet_etcd_connected",
            "1 while the presence watch on etcd is up",
            self.etcd_connected.clone(),
        );
        r.register(
            "alerts_by_rule",
            "Alerts created, by rule",
            self.alerts_by_rule.clone(),
        );
    }

    /// One event of `bytes` in `category`. On the hot path: the counters of a known
    /// category are found without allocating.
    pub fn count_event(&self, category: &str, bytes: usize) {
        let mut cache = self.by_category.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((events, sizes)) = cache.get(category) {
            events.inc();
            sizes.inc_by(bytes as u64);
            return;
        }
        let label = CategoryLabel {
            category: self.category(category),
        };
        let events = self.events.get_or_create(&label).clone();
        let sizes = self.event_bytes.get_or_create(&label).clone();
        events.inc();
        sizes.inc_by(bytes as u64);
        if cache.len() < 2 * MAX_CATEGORIES {
            cache.insert(label.category, (events, sizes));
        }
    }

    fn category(&self, category: &str) -> String {
        let clean = !category.is_empty()
            && category.len() <= 32
            && category
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !clean {
            return "_other".into();
        }
        let mut known = self.categories.lock().unwrap_or_else(|p| p.into_inner());
        if known.contains(category) {
            return category.to_owned();
        }
        if known.len() < MAX_CATEGORIES {
            known.insert(category.to_owned());
            return category.to_owned();
        }
        "_other".into()
    }

    pub fn refuse_stats(&self, reason: StatsRefusal) {
        self.stats_refused
            .get_or_create(&RefusedStats { reason })
            .inc();
    }

    pub fn count_loss(&self, kind: &str, events: u64) {
        self.loss_events
            .get_or_create(&LossLabel { kind: kind.into() })
            .inc_by(events);
    }

    /// The agents registered under one (idc, version); a pair down to none leaves the
    /// exposition.
    pub fn set_online(&self, idc: &str, version: &str, count: i64) {
        let labels = OnlineLabels {
            idc: idc.to_owned(),
            version: version.to_owned(),
        };
        if count <= 0 {
            self.agents_online.remove(&labels);
        } else {
            self.agents_online.get_or_create(&labels).set(count);
        }
    }

    pub fn note_books(&self, hosts: usize, runs: usize, ranges: usize, sending: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.hosts_tracked.set(n(hosts));
        self.runs_tracked.set(n(runs));
        self.gap_ranges.set(n(ranges));
        self.hosts_sending.set(n(sending));
    }
}
