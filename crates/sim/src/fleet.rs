//! The simulated hosts: who they are (ids, labels spread like a real fleet's), what
//! their status documents say, and the task that runs one agent's session, acknowledges
//! what it applies and publishes its status through the agent's own publisher (so only
//! what a real agent would write reaches etcd). The guard's figures, which move on every
//! sample but never count as a change, are filled in when a status is written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::{Duration, SystemTime};

use etcd_client::Client;
use hids_control::publish::{Refresh, StatusPublisher};
use hids_control::session::{Session, Update};
use hids_control::state::ControlState;
use hids_types::guard::{GuardConfig, GuardState, GuardStatus};
use hids_types::status::{AgentStatus, PipelineStatus, PluginState, PluginStatus};
use hids_types::Timestamp;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::update::{Host, Outcomes, Updates};

const IDCS: [&str; 8] = ["bj1", "bj2", "sh1", "sh2", "gz1", "sz1", "hk1", "sg1"];
const PRODUCTS: [&str; 12] = [
    "search", "ads", "maps", "video", "mail", "pay", "cloud", "news", "games", "music", "shop",
    "infra",
];

/// What every simulated host has in common.
pub struct Profile {
    host_prefix: String,
    first: usize,
    width: usize,
    started_at: Timestamp,
    pid: u32,
}

impl Profile {
    pub fn new(host_prefix: &str, first: usize, agents: usize) -> Self {
        Profile {
            host_prefix: host_prefix.to_owned(),
            first,
            width: (first + agents).to_string().len().max(6),
            started_at: Timestamp::now(),
            pid: std::process::id(),
        }
    }

    pub fn host_id(&self, i: usize) -> String {
        format!("{}{:0w$}", self.host_prefix, self.first + i, w = self.width)
    }

    /// Labels from a hash of the index: 8 IDCs, 70% prod / 20% staging / 10% test,
    /// 64 groups, 12 product lines; the same host always gets the same labels.
    pub fn labels(&self, i: usize) -> BTreeMap<String, String> {
        let h = mix((self.first + i) as u64);
        let env = match (h >> 8) % 10 {
            0..=6 => "prod",
            7 | 8 => "staging",
            _ => "test",
        };
        BTreeMap::from([
            ("idc".to_owned(), IDCS[(h % 8) as usize].to_owned()),
            ("env".to_owned(), env.to_owned()),
            ("group".to_owned(), format!("g{:02}", (h >> 16) % 64)),
            (
                "product".to_owned(),
                PRODUCTS[((h >> 24) % PRODUCTS.len() as u64) as usize].to_owned(),
            ),
        ])
    }

    /// The status document a real agent with one process plugin would write, with the
    /// guard's last sample.
    pub fn status(&self, i: usize, control: &ControlState, guard: &GuardStatus) -> AgentStatus {
        let host_id = self.host_id(i);
        let n = (self.first + i) as u64;
        AgentStatus {
            version: concat!(env!("CARGO_PKG_VERSION"), "-sim").to_owned(),
            hostname: host_id.clone(),
            host_id,
            pid: self.pid,
            mode: "managed".to_owned(),
            labels: self.labels(i),
            ips: vec![format!(
                "10.{}.{}.{}",
                (n >> 16) & 255,
                (n >> 8) & 255,
                n & 255
            )],
            applied_generation: control.applied_generation,
            desired_error: control.desired_error.clone(),
            desired_revision: control.desired_revision,
            stopped_by_command: control.stopped,
            started_at: self.started_at,
            updated_at: Timestamp::now(),
            plugins: vec![PluginStatus {
                framed: Some(true),
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                ..PluginStatus::new(
                    "process",
                    "/usr/lib/hids/plugins/hids-plugin-process",
                    if control.stopped {
                        PluginState::Stopped
                    } else {
                        PluginState::Running
                    },
                )
            }],
            pipeline: PipelineStatus::default(),
            guard: Some(guard.clone()),
            cut: None,
            update: None,
            update_error: None,
            rolled_back: None,
        }
    }
}

/// Samples the simulator's own CPU and memory every `period` and shares the result
/// with every virtual agent, whose guard reports it. One sampler for the whole fleet:
/// a sampler per virtual agent would read `/proc` 100,000 times a second, the
/// simulator's own cost rather than anything an agent pays. The figures move on every
/// sample like a real agent's, which is what matters here: whether they cause status
/// writes. The breaker itself is not simulated (the simulator's CPU is not an agent's),
/// so the guard stays `ok`.
pub async fn sample_guard(
    period: Duration,
    tx: watch::Sender<GuardStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sampler = hids_procfs::usage::Sampler::new();
    let procs = [("agent".to_owned(), std::process::id())];
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let usage = sampler.sample(&procs);
        let (cpu_percent, cpu_percent_host, rss_mb) = usage.figures();
        tx.send_modify(|g| {
            g.cpu_percent = cpu_percent;
            g.cpu_percent_host = cpu_percent_host;
            g.rss_mb = rss_mb;
            g.processes = usage.processes;
        });
    }
}

/// The guard of a virtual agent before the first sample.
pub fn idle_guard() -> GuardStatus {
    GuardStatus {
        state: GuardState::Ok,
        trips: 0,
        cooldown_secs: GuardConfig::default().cooldown_secs,
        reason: None,
        since: None,
        cpu_percent: 0.0,
        cpu_percent_host: 0.0,
        rss_mb: 0.0,
        processes: Vec::new(),
    }
}

/// splitmix64: spreads consecutive indexes over the label space.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fleet-wide counters, shared by every agent task.
#[derive(Default)]
pub struct Counters {
    /// Agents that registered at least once.
    pub registered: AtomicUsize,
    /// Agents registered now.
    pub online: AtomicI64,
    pub applied: AtomicU64,
    pub refused: AtomicU64,
    pub disconnects: AtomicU64,
    pub max_generation: AtomicU64,
    /// Signalled at each first registration.
    pub changed: Notify,
}

impl Counters {
    pub fn line(&self, shared_lagged: u64) -> String {
        format!(
            "online={} registered={} applied={} refused={} disconnects={} max_generation={} shared_watch_lagged={} rss_mb={:.1}",
            self.online.load(Ordering::Relaxed),
            self.registered.load(Ordering::Relaxed),
            self.applied.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.disconnects.load(Ordering::Relaxed),
            self.max_generation.load(Ordering::Relaxed),
            shared_lagged,
            rss_mb(),
        )
    }
}

/// What every virtual agent task shares.
pub struct Fleet {
    pub profile: Profile,
    pub counters: Counters,
    /// Agents registering at once while the fleet comes up.
    pub ramp: Arc<Semaphore>,
    /// The latest guard sample (see [`sample_guard`]).
    pub guard: watch::Receiver<GuardStatus>,
    /// How simulated plugin updates go.
    pub outcomes: Outcomes,
}

/// The version of a plugin a simulated host runs before any update.
fn installed(plugin: &str) -> Option<&'static str> {
    (plugin == "process").then_some(env!("CARGO_PKG_VERSION"))
}

/// One virtual agent: the agent's session on a shared client, the agent's own handling
/// of what the session delivers, and the agent's status publishing.
/// Holds a ramp permit until it first registers.
pub async fn agent(
    i: usize,
    session: Session,
    client: Arc<Client>,
    fleet: Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(permit) = fleet.ramp.clone().acquire_owned().await else {
        return;
    };
    let mut control = ControlState::default();
    let mut updates = Updates::default();
    let host = Host {
        hash: hids_types::stagger::host_hash(&fleet.profile.host_id(i)),
        outcomes: &fleet.outcomes,
    };
    // The guard's figures and the time never count as a change: filled in when the
    // status is written rather than republished on every sample by every agent.
    let sample = fleet.guard.clone();
    let refresh: Refresh = Arc::new(move |doc: &mut AgentStatus| {
        doc.guard = Some(sample.borrow().clone());
        doc.updated_at = Timestamp::now();
    });
    let (publisher, status_rx) = StatusPublisher::new();
    let mut publisher = publisher.with_refresh(refresh);
    let status = |control: &ControlState, updates: &Updates| {
        let mut s = fleet.profile.status(i, control, &fleet.guard.borrow());
        updates.report(&mut s.plugins, host, SystemTime::now());
        s
    };
    publisher.publish(status(&control, &updates));
    let (updates_tx, mut updates_rx) = mpsc::channel(4);
    let consume = async {
        let mut permit = Some(permit);
        let mut online = false;
        loop {
            let next_phase = updates.next_change(host, SystemTime::now());
            tokio::select! {
                update = updates_rx.recv() => {
                    let Some(update) = update else { break };
                    fleet.counters.count(&update, &mut online, &mut permit);
                    if let Update::Apply { body, .. } = &update {
                        updates.apply(body, host, SystemTime::now(), installed);
                    }
                    control.take(update);
                    // What was applied and which commands ran is kept, as an agent does;
                    // the settings themselves only matter to plugins, which are not
                    // simulated. Kept, a 32 KB rule set parsed in 100,000 agents is 13 GB
                    // (measured: the simulator was OOM-killed).
                    control.body = Default::default();
                    control.blob = None;
                }
                // A simulated update changes phase: published at once, as the agent does.
                _ = tokio::time::sleep(next_phase.unwrap_or_default()), if next_phase.is_some() => {}
            }
            // As the agent does after every update: the publisher decides whether etcd
            // is written now or with the next refresh.
            publisher.publish(status(&control, &updates));
        }
        if online {
            fleet.counters.online.fetch_sub(1, Ordering::Relaxed);
        }
    };
    tokio::join!(
        session.run_on(Some(client), status_rx, updates_tx, shutdown),
        consume
    );
}

impl Counters {
    /// Counts what the session reported; `online` and the ramp `permit` are the agent's.
    fn count(
        &self,
        update: &Update,
        online: &mut bool,
        permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        match update {
            Update::Connected => {
                if !*online {
                    *online = true;
                    self.online.fetch_add(1, Ordering::Relaxed);
                }
                if permit.take().is_some() {
                    self.registered.fetch_add(1, Ordering::Relaxed);
                    self.changed.notify_one();
                }
            }
            Update::Disconnected(_) => {
                if *online {
                    *online = false;
                    self.online.fetch_sub(1, Ordering::Relaxed);
                }
                self.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            Update::Apply { state, .. } => {
                self.applied.fetch_add(1, Ordering::Relaxed);
                self.max_generation
                    .fetch_max(state.generation, Ordering::Relaxed);
            }
            Update::Refused { .. } => {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// This process's resident memory, MB.
pub fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stable_and_spread() {
        let p = Profile::new("sim-", 0, 10_000);
        assert_eq!(p.host_id(7), "sim-000007");
        assert_eq!(p.labels(42), p.labels(42));
        let prod = (0..10_000)
            .filter(|&i| p.labels(i)["env"] == "prod")
            .count();
        assert!((6_500..7_500).contains(&prod), "{prod}");
        let idcs: std::collections::BTreeSet<_> =
            (0..1000).map(|i| p.labels(i)["idc"].clone()).collect();
        assert_eq!(idcs.len(), IDCS.len());
    }

    #[test]
    fn status_reflects_control_state() {
        let p = Profile::new("sim-", 0, 10);
        let c = ControlState {
            applied_generation: 5,
            stopped: true,
            ..Default::default()
        };
        let s = p.status(3, &c, &idle_guard());
        assert_eq!(s.applied_generation, 5);
        assert!(s.stopped_by_command);
        assert_eq!(s.plugins[0].state, PluginState::Stopped);
        assert_eq!(s.host_id, "sim-000003");
    }
}
