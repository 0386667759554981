//! The rollout record, `rollouts/<id>`: written when the rollout starts, as each wave is
//! written and when each wave ends, so `rollout status` can tell where an interrupted
//! rollout stood and go on from there.

use std::time::{Duration, SystemTime};

use etcd_client::{Client, Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use hids_control::select::Target;
use hids_control::Keys;
use hids_types::desired::DesiredBody;
use hids_types::stagger::Backoff;
use hids_types::Timestamp;
use serde::{Deserialize, Serialize};

use super::plan::Release;
use super::wave::{Counts, Failure};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A `hidsctl` is driving it, or was until it was interrupted.
    Running,
    /// A wave ended well and more remain; `rollout status ID --continue` goes on.
    Paused,
    Completed,
    /// Failures or rollbacks went over the threshold.
    Halted,
    /// A wave timed out with hosts pending.
    TimedOut,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Completed => "completed",
            State::Halted => "halted",
            State::TimedOut => "timed_out",
        }
    }
}

/// Where a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    /// Not begun.
    Waiting,
    /// Its documents are being written (interrupted here: written again by
    /// `--continue`).
    Writing,
    /// Written; the hosts' statuses are being followed.
    Watching,
    /// Every host settled, failures within the threshold (or no hosts).
    Done,
    Halted,
    TimedOut,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wave {
    pub percent: f64,
    pub state: WaveState,
    /// The generation its documents carry; 0 until written.
    pub generation: u64,
    /// Hosts written.
    pub targets: usize,
    pub healthy: usize,
    /// Failed updates and refused documents.
    pub failed: usize,
    pub rolled_back: usize,
    pub pending: usize,
    pub elapsed_secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// The first revision its documents were written at.
    #[serde(default)]
    pub written_revision: i64,
    /// The start of its history records' ids (they name its hosts).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub history: String,
    /// Some failing hosts and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
}

impl Wave {
    fn new(percent: f64) -> Wave {
        Wave {
            percent,
            state: WaveState::Waiting,
            generation: 0,
            targets: 0,
            healthy: 0,
            failed: 0,
            rolled_back: 0,
            pending: 0,
            elapsed_secs: 0.0,
            started_at: None,
            written_revision: 0,
            history: String::new(),
            failures: Vec::new(),
        }
    }

    pub fn set_counts(&mut self, c: &Counts) {
        self.healthy = c.healthy;
        self.failed = c.failed;
        self.rolled_back = c.rolled_back;
        self.pending = c.pending;
    }

    /// Time since the wave began.
    pub fn since_start(&self) -> Duration {
        self.started_at
            .and_then(|t| SystemTime::now().duration_since(t.0).ok())
            .unwrap_or_default()
    }
}

/// The target as given, kept so `--continue` chooses the next waves' hosts the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// As the history names it.
    pub describe: String,
}

impl TargetSpec {
    pub fn of(target: &Target) -> TargetSpec {
        TargetSpec {
            hosts: target.hosts.clone(),
            selector: target.selector.as_ref().map(ToString::to_string),
            percent: target.percent,
            describe: target.describe(),
        }
    }

    /// # Errors
    /// When the selector kept in the record no longer parses.
    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(Target {
            hosts: self.hosts.clone(),
            selector: self.selector.as_deref().map(str::parse).transpose()?,
            percent: self.percent,
        })
    }
}

/// A rollout, as `rollouts/<id>` holds it and `--json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Its id.
    pub rollout: String,
    pub plugins: Vec<Release>,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub waves: Vec<Wave>,
    /// From its start to its last record.
    pub elapsed_secs: f64,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub by: String,
    pub key_id: String,
    pub target: TargetSpec,
    pub max_failure_percent: f64,
    pub wave_timeout_secs: u64,
    /// The settings every wave writes.
    pub settings: DesiredBody,
}

/// What a new rollout is.
pub struct Plan {
    pub plugins: Vec<Release>,
    pub waves: Vec<f64>,
    pub by: String,
    pub key_id: String,
    pub target: TargetSpec,
    pub max_failure_percent: f64,
    pub wave_timeout: Duration,
    pub settings: DesiredBody,
}

impl Record {
    pub fn new(plan: Plan) -> Record {
        let now = Timestamp::now();
        Record {
            rollout: String::new(),
            plugins: plan.plugins,
            state: State::Running,
            reason: None,
            waves: plan.waves.into_iter().map(Wave::new).collect(),
            elapsed_secs: 0.0,
            started_at: now,
            updated_at: now,
            by: plan.by,
            key_id: plan.key_id,
            target: plan.target,
            max_failure_percent: plan.max_failure_percent,
            wave_timeout_secs: plan.wave_timeout.as_secs(),
            settings: plan.settings,
        }
    }

    pub fn wave_timeout(&self) -> Duration {
        Duration::from_secs(self.wave_timeout_secs)
    }

    /// The waves' plugins and versions, `process 2.0, demo 3`.
    pub fn releases_text(&self) -> String {
        self.plugins
            .iter()
            .map(|r| format!("{} {}", r.plugin, r.version))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The first wave that has not ended.
    pub fn current_wave(&self) -> Option<usize> {
        self.waves.iter().position(|w| {
            matches!(
                w.state,
                WaveState::Waiting | WaveState::Writing | WaveState::Watching
            )
        })
    }

    /// Stores the record under a new id (its start time, to the second; `-2`, `-3`...
    /// when taken), and sets `rollout`.
    ///
    /// # Errors
    /// When etcd refuses.
    pub async fn create(&mut self, client: &mut Client, keys: &Keys) -> anyhow::Result<()> {
        let base = id_of(self.started_at);
        for n in 1..100 {
            self.rollout = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let key = keys.rollout(&self.rollout);
            let put = TxnOp::put(key.clone(), serde_json::to_vec(self)?, None);
            let absent = Compare::create_revision(key, CompareOp::Equal, 0);
            let txn = Txn::new().when(vec![absent]).and_then(vec![put]);
            let attempt = || {
                let (mut client, txn) = (client.clone(), txn.clone());
                async move { client.txn(txn).await }
            };
            if retrying(attempt).await?.succeeded() {
                return Ok(());
            }
        }
        anyhow::bail!("could not find a free rollout id after {base}")
    }

    /// Writes the record as it stands now.
    ///
    /// # Errors
    /// When etcd refuses.
    pub async fn save(&mut self, client: &mut Client, keys: &Keys) -> anyhow::Result<()> {
        self.updated_at = Timestamp::now();
        self.elapsed_secs = SystemTime::now()
            .duration_since(self.started_at.0)
            .unwrap_or_default()
            .as_secs_f64();
        let key = keys.rollout(&self.rollout);
        let value = serde_json::to_vec(self)?;
        let attempt = || {
            let (mut client, key, value) = (client.clone(), key.clone(), value.clone());
            async move { client.put(key, value, None).await }
        };
        retrying(attempt).await?;
        Ok(())
    }

    /// The rollout `id`, or the latest when `None`.
    ///
    /// # Errors
    /// When etcd fails, there is no such rollout, or its record does not parse.
    pub async fn load(
        client: &mut Client,
        keys: &Keys,
        id: Option<&str>,
    ) -> anyhow::Result<Record> {
        let resp = match id {
            Some(id) => client.get(keys.rollout(id), None).await?,
            None => {
                let opts = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(1);
                client.get(keys.rollouts(), Some(opts)).await?
            }
        };
        let Some(kv) = resp.kvs().first() else {
            match id {
                Some(id) => anyhow::bail!("no rollout {id:?} (see `hidsctl rollout list`)"),
                None => anyhow::bail!("no rollout yet"),
            }
        };
        serde_json::from_slice(kv.value()).map_err(|e| {
            anyhow::anyhow!(
                "rollout record {} does not parse: {e}",
                String::from_utf8_lossy(kv.key())
            )
        })
    }

    /// Every rollout, oldest first; records that do not parse are skipped with a word.
    ///
    /// # Errors
    /// When etcd fails.
    pub async fn list(client: &mut Client, keys: &Keys) -> anyhow::Result<Vec<Record>> {
        let (all, _) = crate::fleet::get_all(client, &keys.rollouts()).await?;
        let mut records = Vec::new();
        for (key, value, _) in all {
            match serde_json::from_slice(&value) {
                Ok(r) => records.push(r),
                Err(e) => eprintln!(
                    "hidsctl: skipped {}: not a rollout record ({e})",
                    String::from_utf8_lossy(&key)
                ),
            }
        }
        Ok(records)
    }
}

/// `request()`, again after 0.2, 0.4, ... 6.4 s while etcd is overloaded: a rollout
/// writes its record while the fleet's status writes load etcd the most (measured at
/// 100,000 agents: "etcdserver: too many requests").
pub async fn retrying<T, F>(mut request: impl FnMut() -> F) -> Result<T, etcd_client::Error>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
    loop {
        match request().await {
            Err(e) if retry.failures() < 8 && hids_control::overloaded(&e) => {
                tokio::time::sleep(retry.failed()).await;
            }
            result => return result,
        }
    }
}

/// `20261126T103158Z` for a start at 2026-11-26 10:31:58 UTC: ids sort by time.
fn id_of(at: Timestamp) -> String {
    humantime::format_rfc3339_seconds(at.0)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_689_118);
        let id = id_of(Timestamp(t));
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.ends_with('Z') && id.contains('T'), "{id}");
        let later = id_of(Timestamp(t + Duration::from_secs(1)));
        assert!(
            later > format!("{id}-2"),
            "a second later sorts after a same-second id"
        );
    }

    #[test]
    fn current_wave_skips_ended_ones() {
        let mut r = Record::new(Plan {
            plugins: vec![],
            waves: vec![1.0, 10.0],
            by: "t".into(),
            key_id: "k".into(),
            target: TargetSpec::default(),
            max_failure_percent: 5.0,
            wave_timeout: Duration::from_secs(60),
            settings: DesiredBody::default(),
        });
        assert_eq!(r.current_wave(), Some(0));
        r.waves[0].state = WaveState::Done;
        assert_eq!(r.current_wave(), Some(1));
        r.waves[1].state = WaveState::Halted;
        assert_eq!(r.current_wave(), None);
    }
}
