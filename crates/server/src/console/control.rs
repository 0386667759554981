//! What the operators did through the control plane, read from etcd for the console:
//! the configuration history (`history/`, one record per change, written by `hidsctl`
//! in the change's transaction) and the staged rollouts (`rollouts/`). Read on demand,
//! newest first, a bounded page at a time; records are shown as `hidsctl` wrote them
//! (JSON), so a newer `hidsctl`'s fields never make a page fail.

use std::time::Duration;

use etcd_client::{GetOptions, SortOrder, SortTarget};
use hids_control::{EtcdConfig, Keys};
use serde_json::Value;

/// Records on one page.
pub const PAGE: usize = 50;
/// How long a page waits for etcd.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct ControlView {
    etcd: EtcdConfig,
    keys: Keys,
    /// One connection, made at the first page and kept (the client reconnects itself).
    client: tokio::sync::Mutex<Option<etcd_client::Client>>,
}

impl ControlView {
    pub fn new(etcd: EtcdConfig, keys: Keys) -> ControlView {
        ControlView {
            etcd,
            keys,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The newest configuration changes, older than the record `before` when given.
    pub async fn history(&self, before: Option<&str>) -> Result<Vec<Value>, String> {
        let dir = self.keys.history_dir();
        self.newest(&dir, before).await
    }

    /// The newest rollouts, older than the one `before` when given.
    pub async fn rollouts(&self, before: Option<&str>) -> Result<Vec<Value>, String> {
        let dir = self.keys.rollouts();
        self.newest(&dir, before).await
    }

    /// Records under `dir` with keys below `dir + before`, newest key first (keys sort
    /// by time).
    async fn newest(&self, dir: &str, before: Option<&str>) -> Result<Vec<Value>, String> {
        let mut client = self.client().await?;
        let opts = GetOptions::new()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(PAGE as i64);
        let (from, opts) = match before {
            Some(id) => (dir.to_owned(), opts.with_range(format!("{dir}{id}"))),
            None => (dir.to_owned(), opts.with_prefix()),
        };
        let resp = tokio::time::timeout(TIMEOUT, client.get(from, Some(opts)))
            .await
            .map_err(|_| format!("etcd did not answer within {TIMEOUT:?}"))?
            .map_err(|e| format!("etcd: {e}"))?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    async fn client(&self) -> Result<etcd_client::Client, String> {
        let mut slot = self.client.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(TIMEOUT, self.etcd.connect())
            .await
            .map_err(|_| format!("etcd did not answer within {TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        *slot = Some(c.clone());
        Ok(c)
    }
}
