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

/// One page of records, newest first.
pub struct Page {
    pub records: Vec<Value>,
    /// Records that did not parse as JSON (skipped).
    pub unreadable: usize,
    /// The key (under the directory) to list older records from, if there may be any.
    pub older: Option<String>,
}

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

    /// The newest configuration changes, older than the record `before` when given,
    /// and the id of the page's last record when there may be older ones.
    pub async fn history(&self, before: Option<&str>) -> Result<Page, String> {
        let dir = self.keys.history_dir();
        self.newest(&dir, before).await
    }

    /// The newest rollouts, older than the one `before` when given.
    pub async fn rollouts(&self, before: Option<&str>) -> Result<Page, String> {
        let dir = self.keys.rollouts();
        self.newest(&dir, before).await
    }

    /// Records under `dir` with keys below `dir + before`, newest key first (keys sort
    /// by time).
    async fn newest(&self, dir: &str, before: Option<&str>) -> Result<Page, String> {
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
        let kvs = resp.kvs();
        // Paged by key, not by what parsed: a record that does not parse is skipped
        // (and counted on the page), never the end of the listing.
        let older = (kvs.len() == PAGE)
            .then(|| kvs.last())
            .flatten()
            .and_then(|kv| kv.key_str().ok())
            .and_then(|k| k.strip_prefix(dir))
            .map(str::to_owned);
        let records: Vec<Value> = kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        Ok(Page {
            unreadable: kvs.len() - records.len(),
            records,
            older,
        })
    }

    async fn client(&self) -> Result<etcd_client::Client, String> {
        // Page views queue behind one connection attempt at most TIMEOUT long.
        let mut slot = tokio::time::timeout(TIMEOUT, self.client.lock())
            .await
            .map_err(|_| "another page is still connecting to etcd; retry".to_string())?;
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
