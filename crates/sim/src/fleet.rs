//! The simulated hosts: who they are (ids, labels spread like a real fleet's), what
//! their status documents say, and the task that runs one agent's session and
//! acknowledges what it applies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use etcd_client::Client;
use hids_control::session::{Session, Update};
use hids_control::state::ControlState;
use hids_types::status::{AgentStatus, PipelineStatus, PluginState, PluginStatus};
use hids_types::Timestamp;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

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

    /// The status document a real agent with one process plugin would write.
    pub fn status(&self, i: usize, control: &ControlState) -> Vec<u8> {
        let host_id = self.host_id(i);
        let n = (self.first + i) as u64;
        let status = AgentStatus {
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
            guard: None,
        };
        serde_json::to_vec(&status).unwrap_or_default()
    }
}

/// splitmix64: spreads consecutive indexes over the label space.
fn mix(mut x: u64) -> u64 {
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

/// One virtual agent: the agent's session on a shared client, and the agent's own
/// handling of what the session delivers. Holds a ramp permit until it first registers.
pub async fn agent(
    i: usize,
    session: Session,
    client: Arc<Client>,
    profile: Arc<Profile>,
    counters: Arc<Counters>,
    ramp: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(permit) = ramp.acquire_owned().await else {
        return;
    };
    let mut control = ControlState::default();
    let (status_tx, status_rx) = watch::channel(profile.status(i, &control));
    let (updates_tx, mut updates_rx) = mpsc::channel(4);
    let consume = async {
        let mut permit = Some(permit);
        let mut online = false;
        while let Some(update) = updates_rx.recv().await {
            let republish = match &update {
                Update::Connected => {
                    if !online {
                        online = true;
                        counters.online.fetch_add(1, Ordering::Relaxed);
                    }
                    if permit.take().is_some() {
                        counters.registered.fetch_add(1, Ordering::Relaxed);
                        counters.changed.notify_one();
                    }
                    false
                }
                Update::Disconnected(_) => {
                    if online {
                        online = false;
                        counters.online.fetch_sub(1, Ordering::Relaxed);
                    }
                    counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Update::Apply { state, .. } => {
                    counters.applied.fetch_add(1, Ordering::Relaxed);
                    counters
                        .max_generation
                        .fetch_max(state.generation, Ordering::Relaxed);
                    true
                }
                Update::Refused { .. } => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    true
                }
            };
            control.take(update);
            // What was applied and which commands ran is kept, as an agent does; the
            // settings themselves only matter to plugins, which are not simulated.
            // Kept, a 32 KB rule set parsed in 100,000 agents is 13 GB (measured:
            // the simulator was OOM-killed).
            control.body = Default::default();
            if republish {
                status_tx.send_replace(profile.status(i, &control));
            }
        }
        if online {
            counters.online.fetch_sub(1, Ordering::Relaxed);
        }
    };
    tokio::join!(
        session.run_on(Some(client), status_rx, updates_tx, shutdown),
        consume
    );
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
        let s: AgentStatus =
            serde_json::from_slice(&p.status(3, &c)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.applied_generation, 5);
        assert!(s.stopped_by_command);
        assert_eq!(s.plugins[0].state, PluginState::Stopped);
        assert_eq!(s.host_id, "sim-000003");
    }
}
