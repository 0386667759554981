//! Presence from etcd: an agent is online exactly while its status key exists. One
//! watch on the `agents/` directory (read whole at start and after every break, a page
//! at a time, then followed from that revision) keeps, per registered host, what the
//! fleet alerts need from its status: labels, version, and the states that are
//! alerts (Kafka backlog, plugins quarantined or crash-looping, a refused desired
//! state, the spool's fill). The counts by `idc` and version feed `/metrics`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use hids_control::Keys;
use hids_types::stagger::Backoff;
use serde::Deserialize;

use crate::metrics::Metrics;

/// Label values longer than this (or with control characters) are shown as `_invalid`
/// in the metrics.
const MAX_VALUE_LEN: usize = 64;
/// (idc, version) pairs exported: the product of two capped label sets could still be
/// large, so the pairs are capped too (the rest are counted under `_other`).
const MAX_ONLINE_PAIRS: usize = 2_000;
/// Plugin crashes in a row that make a crash loop (the agent quarantines later).
pub const CRASH_LOOP: u32 = 3;

/// What the fleet alerts read of a status document; every field optional, so an older
/// or newer agent's status still counts as presence.
#[derive(Debug, Default, Deserialize)]
struct StatusView {
    #[serde(default)]
    version: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    desired_error: Option<String>,
    #[serde(default)]
    plugins: Vec<PluginView>,
    #[serde(default)]
    pipeline: PipelineView,
}

#[derive(Debug, Default, Deserialize)]
struct PluginView {
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    consecutive_crashes: u32,
}

#[derive(Debug, Default, Deserialize)]
struct PipelineView {
    #[serde(default)]
    backlog: bool,
    #[serde(default)]
    spool_bytes: u64,
    #[serde(default)]
    spool_max_bytes: u64,
}

/// One registered agent.
pub struct Registered {
    /// CRC-32 of the host id: librdkafka's default partitioner (`consistent_random`)
    /// puts the host's events in partition `hash % partitions`.
    pub hash: u32,
    pub hostname: Box<str>,
    pub labels: Arc<BTreeMap<String, String>>,
    idc: Arc<str>,
    version: Arc<str>,
    /// When this server first saw it registered (this session of the key).
    pub since: Instant,
    pub backlog_since: Option<Instant>,
    pub desired_error: Option<Box<str>>,
    /// Plugins quarantined, and those crash-looping (names, comma-separated).
    pub quarantined: Option<Box<str>>,
    pub crash_loop: Option<Box<str>>,
    pub spool_bytes: u64,
    pub spool_max_bytes: u64,
    /// Alerts raised for the present episode of each state (see [`Raised`]).
    pub raised: u8,
    /// The read (generation) that last saw it: after a full re-read, older ones left.
    generation: u32,
}

impl Registered {
    /// The agent's version, as its status says.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// Bits of [`Registered::raised`].
pub struct Raised;
impl Raised {
    pub const SILENT: u8 = 1;
    pub const BACKLOG: u8 = 2;
    pub const QUARANTINED: u8 = 4;
    pub const CRASH_LOOP: u8 = 8;
    pub const DESIRED: u8 = 16;
    pub const SPOOL: u8 = 32;
}

/// Label values as metric labels: at most `max` distinct, the rest `_other`.
struct Capped {
    known: HashSet<Arc<str>>,
    max: usize,
}

impl Capped {
    fn get(&mut self, value: &str) -> Arc<str> {
        if value.len() > MAX_VALUE_LEN || value.chars().any(char::is_control) {
            return "_invalid".into();
        }
        if let Some(v) = self.known.get(value) {
            return v.clone();
        }
        if self.known.len() >= self.max {
            return "_other".into();
        }
        let v: Arc<str> = value.into();
        self.known.insert(v.clone());
        v
    }
}

pub struct Presence {
    pub hosts: HashMap<Box<str>, Registered>,
    /// Registered agents by (idc, version), as exported.
    counts: HashMap<(Arc<str>, Arc<str>), i64>,
    idcs: Capped,
    versions: Capped,
    label_sets: HashSet<Arc<BTreeMap<String, String>>>,
    generation: u32,
    metrics: Arc<Metrics>,
}

impl Presence {
    pub fn new(max_label_values: usize, metrics: Arc<Metrics>) -> Presence {
        let capped = || Capped {
            known: HashSet::new(),
            max: max_label_values,
        };
        Presence {
            hosts: HashMap::new(),
            counts: HashMap::new(),
            idcs: capped(),
            versions: capped(),
            label_sets: HashSet::new(),
            generation: 0,
            metrics,
        }
    }

    /// A status key written (or read in a full read).
    pub fn put(&mut self, host_id: &str, value: &[u8]) {
        let view: StatusView = serde_json::from_slice(value).unwrap_or_else(|_| {
            self.metrics.fleet.status_unreadable.inc();
            StatusView::default()
        });
        let mut idc = self
            .idcs
            .get(view.labels.get("idc").map_or("", String::as_str));
        let mut version = self.versions.get(&view.version);
        if !self.counts.contains_key(&(idc.clone(), version.clone()))
            && self.counts.len() >= MAX_ONLINE_PAIRS
        {
            (idc, version) = ("_other".into(), "_other".into());
        }
        let labels = super::book::intern_labels(&mut self.label_sets, &view.labels);
        let now = Instant::now();
        let generation = self.generation;
        let old = self.hosts.remove(host_id);
        if let Some(old) = &old {
            self.count(&old.idc, &old.version, -1);
        }
        let mut reg = old.unwrap_or_else(|| Registered {
            hash: crc32fast::hash(host_id.as_bytes()),
            hostname: Box::from(""),
            labels: labels.clone(),
            idc: idc.clone(),
            version: version.clone(),
            since: now,
            backlog_since: None,
            desired_error: None,
            quarantined: None,
            crash_loop: None,
            spool_bytes: 0,
            spool_max_bytes: 0,
            raised: 0,
            generation,
        });
        self.count(&idc, &version, 1);
        reg.generation = generation;
        reg.hostname = view.hostname.chars().take(253).collect::<String>().into();
        reg.labels = labels;
        reg.idc = idc;
        reg.version = version;
        // Events waiting in the spool, or new ones going there: the agent's own
        // `backlog` flag flickers while a last segment is retried, its spool does not.
        let held_back = view.pipeline.backlog || view.pipeline.spool_bytes > 0;
        reg.backlog_since = match (held_back, reg.backlog_since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
            (false, _) => None,
        };
        reg.desired_error = view
            .desired_error
            .map(|e| e.chars().take(512).collect::<String>().into());
        reg.quarantined = names(&view.plugins, |p| p.state == "quarantined");
        reg.crash_loop = names(&view.plugins, |p| {
            p.state == "backoff" && p.consecutive_crashes >= CRASH_LOOP
        });
        reg.spool_bytes = view.pipeline.spool_bytes;
        reg.spool_max_bytes = view.pipeline.spool_max_bytes;
        self.hosts.insert(host_id.into(), reg);
        self.note_registered();
    }

    /// A status key gone: its lease expired or the agent stopped.
    pub fn delete(&mut self, host_id: &str) {
        if let Some(old) = self.hosts.remove(host_id) {
            self.count(&old.idc, &old.version, -1);
        }
        self.note_registered();
    }

    /// A full read starts: what it does not see again has left.
    fn begin_read(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn end_read(&mut self) {
        let generation = self.generation;
        let gone: Vec<Box<str>> = self
            .hosts
            .iter()
            .filter(|(_, r)| r.generation != generation)
            .map(|(h, _)| h.clone())
            .collect();
        for h in gone {
            self.delete(&h);
        }
    }

    fn count(&mut self, idc: &Arc<str>, version: &Arc<str>, delta: i64) {
        let n = self
            .counts
            .entry((idc.clone(), version.clone()))
            .or_default();
        *n += delta;
        let n = *n;
        self.metrics.fleet.set_online(idc, version, n);
        if n <= 0 {
            // A pair no agent has any more frees its place under the cap.
            self.counts.remove(&(idc.clone(), version.clone()));
        }
    }

    fn note_registered(&self) {
        self.metrics
            .fleet
            .agents_registered
            .set(i64::try_from(self.hosts.len()).unwrap_or(i64::MAX));
    }

    /// Registered agents by a label (`idc`, `project`, `product`, ...) or by `version`:
    /// the `limit` largest groups, and how many other groups there were.
    pub fn counts_by(&self, by: &str, limit: usize) -> (BTreeMap<String, u64>, usize) {
        self.counts_by_each(&[by], limit).pop().unwrap_or_default()
    }

    /// [`Presence::counts_by`] for several labels in one pass over the hosts.
    pub fn counts_by_each(
        &self,
        labels: &[&str],
        limit: usize,
    ) -> Vec<(BTreeMap<String, u64>, usize)> {
        let mut all: Vec<HashMap<&str, u64>> = vec![HashMap::new(); labels.len()];
        for r in self.hosts.values() {
            for (by, counts) in labels.iter().zip(all.iter_mut()) {
                let key = if *by == "version" {
                    &*r.version
                } else {
                    r.labels.get(*by).map_or("", String::as_str)
                };
                *counts.entry(key).or_default() += 1;
            }
        }
        all.into_iter()
            .map(|counts| {
                let mut groups: Vec<(&str, u64)> = counts.into_iter().collect();
                groups.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                let rest = groups.len().saturating_sub(limit);
                groups.truncate(limit);
                (
                    groups.into_iter().map(|(k, n)| (k.to_owned(), n)).collect(),
                    rest,
                )
            })
            .collect()
    }
}

/// The names of the plugins in `state`, comma-separated; None when there are none.
fn names(plugins: &[PluginView], pick: impl Fn(&PluginView) -> bool) -> Option<Box<str>> {
    let list: Vec<&str> = plugins
        .iter()
        .filter(|p| pick(p))
        .map(|p| p.name.as_str())
        .take(16)
        .collect();
    (!list.is_empty()).then(|| list.join(", ").into())
}

/// Follows the `agents/` directory until `shutdown`: a full read, then the watch from
/// its revision; after any break (etcd away, the revision compacted) it reconnects
/// with backoff and reads again. Never gives up: presence comes back with etcd.
pub async fn follow(
    etcd: hids_control::EtcdConfig,
    keys: Keys,
    presence: Arc<Mutex<Presence>>,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while !shutdown.load(Ordering::Relaxed) {
        match follow_once(&etcd, &keys, &presence, &metrics, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                metrics.fleet.etcd_connected.set(0);
                let wait = backoff.failed();
                tracing::warn!("etcd presence: {e}; reading agents/ again in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn lock(presence: &Mutex<Presence>) -> std::sync::MutexGuard<'_, Presence> {
    presence.lock().unwrap_or_else(|p| p.into_inner())
}

async fn follow_once(
    etcd: &hids_control::EtcdConfig,
    keys: &Keys,
    presence: &Mutex<Presence>,
    metrics: &Metrics,
    shutdown: &AtomicBool,
) -> anyhow::Result<()> {
    let mut client = etcd.connect().await?;
    let dir = keys.agents();
    lock(presence).begin_read();
    let page = hids_control::read::SAFE_PAGE;
    let revision = hids_control::read::for_each_page(&mut client, &dir, false, page, |kvs| {
        let mut p = lock(presence);
        for kv in kvs {
            if let Some(host) = keys.host_of(&dir, kv.key()) {
                p.put(host, kv.value());
            }
        }
    })
    .await?;
    let registered = {
        let mut p = lock(presence);
        p.end_read();
        p.hosts.len()
    };
    metrics.fleet.etcd_connected.set(1);
    tracing::info!("etcd presence: {registered} agent(s) registered at revision {revision}");
    let opts = WatchOptions::new().with_start_revision(revision + 1);
    let mut stream = hids_control::read::watch_prefix(&client, &dir, opts).await?;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        let message = tokio::time::timeout(Duration::from_secs(1), stream.message()).await;
        let Ok(message) = message else {
            continue;
        };
        let Some(resp) = message? else {
            anyhow::bail!("the watch stream closed");
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            anyhow::bail!("the watch was cancelled (revision compacted?)");
        }
        let mut p = lock(presence);
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(host) = keys.host_of(&dir, kv.key()) else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => p.put(host, kv.value()),
                EventType::Delete => p.delete(host),
            }
        }
    }
}
