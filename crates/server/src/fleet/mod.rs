//! Fleet health: the agents' program alerts, silence, continuous reconciliation, event
//! volume against history, the daily resource league and presence from etcd. The
//! consumer thread feeds [`Fleet`] every event it reads and sweeps it every few
//! seconds; presence is followed by its own task. Everything per host stays here, in
//! memory and bounded: `/metrics` gets aggregates only.

pub mod book;
pub mod league;
pub mod presence;
pub mod rules;
mod sweep;
pub mod volume;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use hids_store::Hit;
use hids_types::fleet::{TopFigure, TopHost};
use hids_types::Timestamp;

use crate::config::FleetConfig;
use crate::metrics::Metrics;
use book::{Hosts, Secs, VOLUME_LABELS};
use rules::{FleetRule, Subject};
use volume::{Bucket, Verdict, VolumeRing, VolumeRules};

pub use sweep::Ownership;

pub struct Fleet {
    config: FleetConfig,
    volume_rules: VolumeRules,
    window_secs: i64,
    hosts: Hosts,
    /// Volume per label value, one map per label of [`VOLUME_LABELS`].
    dims: [HashMap<Box<str>, VolumeRing>; 3],
    plugins: HashSet<Arc<str>>,
    label_sets: HashSet<Arc<BTreeMap<String, String>>>,
    clock: Instant,
    metrics: Arc<Metrics>,
    /// Sequence gaps are judged (one event topic: every run is read whole by one
    /// instance).
    reconcile: bool,
    /// Presence comes from etcd: status-based alerts come from there, not from events.
    presence_on: bool,
    /// The volume bucket the last sweep closed up to.
    swept_bucket: volume::Bucket,
    /// The day whose league was last written, and the hosts written for it.
    league_day: u32,
    league_written: HashSet<Arc<str>>,
}

impl Fleet {
    /// `topics`: the event topics read; `presence_on`: etcd is followed.
    pub fn new(
        config: FleetConfig,
        window_secs: u64,
        topics: usize,
        presence_on: bool,
        metrics: Arc<Metrics>,
    ) -> Fleet {
        let volume_rules = VolumeRules {
            bucket_secs: config.volume_bucket_secs,
            history_days: config.volume_history_days,
            min_history_days: config.volume_min_history_days,
            ratio: config.volume_ratio,
            min_events: config.volume_min_events,
            min_bytes: config.volume_min_bytes,
        };
        Fleet {
            config,
            volume_rules,
            window_secs: i64::try_from(window_secs).unwrap_or(3_600).max(1),
            hosts: HashMap::new(),
            dims: Default::default(),
            plugins: HashSet::new(),
            label_sets: HashSet::new(),
            clock: Instant::now(),
            metrics,
            reconcile: topics <= 1,
            swept_bucket: 0,
            presence_on,
            league_day: today(),
            league_written: HashSet::new(),
        }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Seconds on the fleet's clock (since it was made): what [`Ownership`] dates
    /// assignments with.
    pub fn now_secs(&self) -> Secs {
        Secs::try_from(self.clock.elapsed().as_secs()).unwrap_or(Secs::MAX)
    }

    fn secs_of(&self, at: Instant) -> Secs {
        Secs::try_from(at.saturating_duration_since(self.clock).as_secs()).unwrap_or(Secs::MAX)
    }

    /// Hosts with books on this instance.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Volume verdicts of one host as alerts.
    fn volume_hits(&self, host_id: &str, verdicts: &[Verdict], hits: &mut Vec<Hit>) {
        if verdicts.is_empty() {
            return;
        }
        let Some(book) = self.hosts.get(host_id) else {
            return;
        };
        for v in verdicts {
            hits.push(self.volume_hit(host_id, &book.hostname, &book.labels, v));
        }
    }

    fn volume_hit(
        &self,
        subject: &str,
        hostname: &str,
        labels: &BTreeMap<String, String>,
        v: &Verdict,
    ) -> Hit {
        let rule = if v.flood {
            FleetRule::VolumeFlood
        } else {
            FleetRule::VolumeDrop
        };
        let bucket_start = v.bucket.saturating_mul(self.volume_rules.bucket_secs);
        let found = serde_json::json!({
            "bucket_start": Timestamp::from_unix_nanos(bucket_start.saturating_mul(1_000_000_000)),
            "bucket_secs": self.volume_rules.bucket_secs,
            "events": v.events,
            "bytes": v.bytes,
            "median_events": v.median_events,
            "median_bytes": v.median_bytes,
            "history_days": v.days,
        });
        rules::hit(
            rule,
            &Subject {
                host_id: subject,
                hostname,
                labels,
            },
            rules::evidence(subject, found),
            1,
            None,
            self.window_secs,
            Timestamp::now(),
        )
    }

    /// Counts the event into its labels' volumes (`idc`, `project`, `product`).
    fn dimension_volume(
        &mut self,
        labels: &BTreeMap<String, String>,
        bucket: Bucket,
        bytes: u64,
        hits: &mut Vec<Hit>,
    ) {
        for (i, name) in VOLUME_LABELS.iter().enumerate() {
            let Some(value) = labels.get(*name) else {
                continue;
            };
            let mut verdicts = Vec::new();
            let rings = &mut self.dims[i];
            let room = rings.len() < self.config.max_label_values;
            match rings.get_mut(value.as_str()) {
                Some(ring) => ring.add(&self.volume_rules, bucket, bytes, &mut verdicts),
                None if room => {
                    let mut ring = VolumeRing::new(&self.volume_rules, bucket);
                    ring.add(&self.volume_rules, bucket, bytes, &mut verdicts);
                    rings.insert(value.as_str().into(), ring);
                }
                // Past the limit a value is not judged: a lying agent cannot grow this.
                None => {}
            }
            self.dimension_hits(i, value, &verdicts, hits);
        }
    }

    fn dimension_hits(&self, label: usize, value: &str, verdicts: &[Verdict], hits: &mut Vec<Hit>) {
        if verdicts.is_empty() {
            return;
        }
        let name = VOLUME_LABELS.get(label).copied().unwrap_or("label");
        let subject = format!("{name}={value}");
        let labels = BTreeMap::from([(name.to_owned(), value.to_owned())]);
        for v in verdicts {
            hits.push(self.volume_hit(&subject, "", &labels, v));
        }
    }

    /// The league rows to write now: today's leaders by each figure (with the hosts
    /// written earlier today, brought up to date) and, once, yesterday's final ones
    /// after the day turned. Returns (day, figure, rows).
    pub fn league(&mut self) -> Vec<(String, TopFigure, Vec<TopHost>)> {
        let today = today();
        let mut out = Vec::new();
        if today != self.league_day {
            let last = self.league_day;
            out.extend(self.league_of(last));
            self.league_day = today;
            self.league_written.clear();
        }
        out.extend(self.league_of(today));
        out
    }

    fn league_of(&mut self, day: u32) -> Vec<(String, TopFigure, Vec<TopHost>)> {
        let name = Timestamp::from_unix_nanos(u64::from(day) * 86_400 * 1_000_000_000).utc_day();
        let mut out = Vec::new();
        for figure in TopFigure::ALL {
            let rows = league::leaders(
                &self.hosts,
                day,
                figure,
                self.config.top_size,
                &self.league_written,
            );
            for r in &rows {
                if self.league_written.len() < self.config.top_size * 20 {
                    self.league_written.insert(r.host_id.as_str().into());
                }
            }
            out.push((name.clone(), figure, rows));
        }
        out
    }
}

/// Days since the epoch, by the server's clock.
pub(crate) fn today() -> u32 {
    u32::try_from(Timestamp::now().unix_secs() / 86_400).unwrap_or(0)
}
