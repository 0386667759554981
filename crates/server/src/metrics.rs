//! The server's own health, as Prometheus metrics (`/metrics`) and the figures
//! `/api/v1/health` derives from them. Nothing per host is a series: a million hosts
//! would be a million series.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use hids_types::alert::Level;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why an event was skipped without being checked.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Malformed {
    /// Not JSON, or not a JSON object.
    not_json,
    /// No `host.id` string: nothing to attribute an alert to.
    no_host,
    /// Over `kafka.max_event_bytes`.
    too_large,
    /// An empty Kafka message.
    empty,
    /// An `inventory` event whose `hids.inventory` does not parse.
    bad_inventory,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: Malformed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabel {
    pub level: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabel {
    /// `webhook` or `kafka`.
    pub output: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    pub events: Counter,
    pub malformed: Family<ReasonLabel, Counter>,
    /// Time spent in the rules (prefilter and evaluation), in seconds (Prometheus's base
    /// unit; `promtool check metrics` refuses any other).
    pub detect_seconds: Counter<f64, AtomicU64>,
    /// Events whose time was too far from Kafka's: Kafka's was used.
    pub clock_skewed: Counter,
    /// Hits the store refused alone while the rest of their batch was stored.
    pub hits_refused: Counter,
    /// Suppressions in force on this instance.
    pub suppressions: Gauge,
    /// Hits (matches) that raised or counted into an alert, by level.
    pub hits: Family<LevelLabel, Counter>,
    /// Alerts created, by level.
    pub alerts: Family<LevelLabel, Counter>,
    /// Hits an operator's suppression accepted.
    pub suppressed: Counter,
    /// Redelivered hits the store had already counted.
    pub redelivered: Counter,
    pub store_failures: Counter,
    pub commit_failures: Counter,
    pub consumer_lag: Gauge,
    pub partitions: Gauge,
    pub rules_loaded: Gauge,
    pub rules_refused: Gauge,
    pub frequency_keys: Gauge,
    pub frequency_evicted: Gauge,
    /// Alerts handed to an output.
    pub delivered: Family<OutputLabel, Counter>,
    /// Failed attempts (each retry counts).
    pub delivery_failures: Family<OutputLabel, Counter>,
    /// Alerts given up after every attempt failed.
    pub delivery_given_up: Family<OutputLabel, Counter>,
    /// Alerts dropped because an output's queue was full.
    pub delivery_dropped: Family<OutputLabel, Counter>,
    /// Inventory reports stored, by what became of them (`published`, `pending`,
    /// `unknown_hash`, `refused`).
    pub inventory_reports: Family<OutcomeLabel, Counter>,
    /// The fleet's health figures.
    pub fleet: crate::fleet_metrics::FleetMetrics,
    /// For `/api/v1/health`: events per second over the last sampling period.
    rate: Mutex<RateSample>,
}

struct RateSample {
    at: Instant,
    events: u64,
    per_sec: f64,
}

impl Default for RateSample {
    fn default() -> Self {
        RateSample {
            at: Instant::now(),
            events: 0,
            per_sec: 0.0,
        }
    }
}

pub fn level_label(level: Level) -> LevelLabel {
    LevelLabel {
        level: level.as_str().to_owned(),
    }
}

pub fn output_label(output: &str) -> OutputLabel {
    OutputLabel {
        output: output.to_owned(),
    }
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("hids_server");
        r.register("events", "Events consumed from Kafka", self.events.clone());
        r.register(
            "events_malformed",
            "Events skipped unchecked, by reason",
            self.malformed.clone(),
        );
        r.register(
            "detect_seconds",
            "Time spent in the rules (prefilter and evaluation)",
            self.detect_seconds.clone(),
        );
        r.register(
            "events_clock_skewed",
            "Events whose time was over 7 days from Kafka's: Kafka's time was used",
            self.clock_skewed.clone(),
        );
        r.register(
            "hits_refused",
            "Hits whose values the database refused (left out; the rest of their batch stored)",
            self.hits_refused.clone(),
        );
        r.register(
            "suppressions",
            "Suppressions in force on this instance",
            self.suppressions.clone(),
        );
        self.register_outcomes(&mut r);
        r.register(
            "inventory_reports",
            "Inventory reports (parts or hashes of hosts' package lists) stored, by outcome",
            self.inventory_reports.clone(),
        );
        self.fleet.register(&mut r);
        r
    }

    /// What the events led to: hits, alerts, suppressions, the store, the group, the
    /// rules and the outputs.
    fn register_outcomes(&self, r: &mut Registry) {
        r.register(
            "hits",
            "Rule matches counted into alerts, by level",
            self.hits.clone(),
        );
        r.register("alerts", "Alerts created, by level", self.alerts.clone());
        r.register(
            "hits_suppressed",
            "Matches an operator's suppression accepted",
            self.suppressed.clone(),
        );
        r.register(
            "hits_redelivered",
            "Redelivered matches the store had counted already",
            self.redelivered.clone(),
        );
        r.register(
            "store_failures",
            "Batches the store refused (retried)",
            self.store_failures.clone(),
        );
        r.register(
            "commit_failures",
            "Offset commits that failed (a rebalance, the broker away)",
            self.commit_failures.clone(),
        );
        r.register(
            "consumer_lag_events",
            "Events in the assigned partitions not yet consumed",
            self.consumer_lag.clone(),
        );
        r.register(
            "partitions_assigned",
            "Partitions this instance holds",
            self.partitions.clone(),
        );
        r.register("rules_loaded", "Rules loaded", self.rules_loaded.clone());
        r.register(
            "rules_refused",
            "Rules refused (see /api/v1/rules for the reasons)",
            self.rules_refused.clone(),
        );
        r.register(
            "frequency_keys",
            "Per-host frequency counters held",
            self.frequency_keys.clone(),
        );
        r.register(
            "frequency_keys_evicted",
            "Frequency counters dropped at the limit",
            self.frequency_evicted.clone(),
        );
        r.register(
            "alerts_delivered",
            "Alerts handed to an output",
            self.delivered.clone(),
        );
        r.register(
            "alert_delivery_failures",
            "Failed delivery attempts",
            self.delivery_failures.clone(),
        );
        r.register(
            "alerts_given_up",
            "Alerts given up after every attempt failed",
            self.delivery_given_up.clone(),
        );
        r.register(
            "alerts_dropped",
            "Alerts dropped: an output's queue was full",
            self.delivery_dropped.clone(),
        );
    }

    /// Events per second since the previous call (at most every second: the health
    /// endpoint and the periodic log both read it).
    pub fn events_per_sec(&self) -> f64 {
        let Ok(mut s) = self.rate.lock() else {
            return 0.0;
        };
        let elapsed = s.at.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            let now = self.events.get();
            s.per_sec = now.saturating_sub(s.events) as f64 / elapsed;
            s.events = now;
            s.at = Instant::now();
        }
        s.per_sec
    }

    pub fn alerts_by_level(&self) -> Vec<(Level, u64)> {
        Level::ALL
            .into_iter()
            .map(|l| (l, self.alerts.get_or_create(&level_label(l)).get()))
            .collect()
    }

    /// Mean time in the rules per event since the start.
    pub fn detect_micros_per_event(&self) -> f64 {
        self.detect_seconds.get() * 1e6 / self.events.get().max(1) as f64
    }
}

/// An OpenMetrics exposition (what `prometheus-client` writes) in Prometheus's classic
/// text format (0.0.4), for clients that do not ask for OpenMetrics (`curl`, `promtool
/// check metrics`, older scrapers): a counter family's HELP and TYPE take its samples'
/// `_total` name, and `# UNIT` and `# EOF`, which 0.0.4 lacks, go. Samples are untouched.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {rest}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::classic_text;

    #[test]
    fn an_openmetrics_counter_reads_as_a_classic_counter() {
        let om = "# HELP x_events Events.\n# TYPE x_events counter\n# UNIT x_events events\n\
                  x_events_total{category=\"process\"} 3\n\
                  # HELP x_lag Lag.\n# TYPE x_lag gauge\nx_lag 0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP x_events_total Events.\n# TYPE x_events_total counter\n\
             x_events_total{category=\"process\"} 3\n\
             # HELP x_lag Lag.\n# TYPE x_lag gauge\nx_lag 0\n"
        );
    }
}
