//! Writing desired states, one implementation for every writer (`hidsctl` now; a server
//! and staged rollouts next): take a generation, sign one document per host, write the
//! documents with their history.
//!
//! 1. One new generation from the fleet-wide counter (compare-and-swap), so a change is
//!    above every earlier one on every host.
//! 2. Settings larger than a few hundred bytes are written once to `blobs/<sha256>`
//!    and referenced ([`Settings`]).
//! 3. Transactions of at most 127 documents plus one [`HistoryRecord`] each (etcd
//!    allows 128 operations per transaction by default), so every change is recorded
//!    with it.
//!
//! Deliberately absent: choosing the hosts, what each host's document holds beyond the
//! settings (the caller composes it), and waiting for the agents' acknowledgements.

use std::time::{Duration, SystemTime};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnResponse};
use hids_types::desired::{DesiredBody, DesiredState};
use hids_types::stagger::Backoff;
use hids_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{Keys, SigningKey};

/// Documents per transaction, leaving room for the history record.
pub const BATCH: usize = 127;
/// Transactions in flight while writing: etcd commits concurrent ones in one raft
/// round and one fsync, so a fleet-wide write is not 800 round trips in a row.
const TXNS_IN_FLIGHT: usize = 8;
/// Settings above this size go to a blob, so a fleet push writes small values.
const INLINE_BODY_MAX: usize = 512;

/// One transaction's worth of a change in `history/`: who changed what, when, for which
/// target and hosts. Written with the documents it describes, read by `hidsctl history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The record's key under `history/`: time, generation and batch, so keys sort by
    /// time.
    pub id: String,
    pub at: Timestamp,
    /// The operator.
    pub by: String,
    /// `push`, `stop`, `resume`, `restart-plugin <name>`.
    pub action: String,
    pub generation: u64,
    /// The target as the operator gave it (`--all`, a selector, hosts, a percentage).
    pub target: String,
    /// The signing key's id.
    pub key_id: String,
    /// The blob holding the settings, when they did not go inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// The hosts this transaction wrote.
    pub hosts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    #[error("could not take a generation number: too many concurrent pushes")]
    Contended,
    #[error("cannot encode a desired state: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("a write task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A change's settings as every host's document carries them: inline when small, else
/// by the hash of a blob written once.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub body: Option<DesiredBody>,
    pub body_sha256: Option<String>,
    blob: Option<Vec<u8>>,
}

impl Settings {
    /// # Errors
    /// When the settings cannot be encoded as JSON.
    pub fn new(body: &DesiredBody) -> Result<Settings, serde_json::Error> {
        let bytes = serde_json::to_vec(body)?;
        Ok(if bytes.len() > INLINE_BODY_MAX {
            Settings {
                body: None,
                body_sha256: Some(crate::sign::blob_hash(&bytes)),
                blob: Some(bytes),
            }
        } else {
            Settings {
                body: Some(body.clone()),
                ..Settings::default()
            }
        })
    }
}

/// What the history says about a change besides its hosts.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub generation: u64,
    pub at: SystemTime,
    pub by: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub body_sha256: Option<&'a str>,
}

impl Change<'_> {
    /// The record of batch `batch_no` of this change.
    fn record(&self, batch_no: usize, key_id: &str, hosts: &[String]) -> HistoryRecord {
        let nanos = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        HistoryRecord {
            id: format!("{nanos:020}-g{}-{batch_no:05}", self.generation),
            at: Timestamp(self.at),
            by: self.by.to_owned(),
            action: self.action.to_owned(),
            generation: self.generation,
            target: self.target.to_owned(),
            key_id: key_id.to_owned(),
            body_sha256: self.body_sha256.map(str::to_owned),
            hosts: hosts.to_vec(),
        }
    }
}

/// Writes desired states signed with one key.
pub struct Writer<'a> {
    client: Client,
    keys: &'a Keys,
    key: &'a SigningKey,
}

/// A written batch (its number) and the revision it was written at.
type TxnDone = Result<(usize, i64), etcd_client::Error>;

impl<'a> Writer<'a> {
    pub fn new(client: Client, keys: &'a Keys, key: &'a SigningKey) -> Self {
        Writer { client, keys, key }
    }

    /// The next fleet-wide generation, by compare-and-swap on the counter. Never below
    /// `floor` (the highest generation already written), in case the counter was lost.
    ///
    /// # Errors
    /// etcd failing, or 100 other writers taking generations in between.
    pub async fn next_generation(&mut self, floor: u64) -> Result<u64, WriteError> {
        let key = self.keys.generation();
        for _ in 0..100 {
            let resp = self.client.get(key.clone(), None).await?;
            let (current, cmp) = match resp.kvs().first() {
                Some(kv) => (
                    std::str::from_utf8(kv.value())
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(0),
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                ),
                None => (
                    0,
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                ),
            };
            let next = current.max(floor) + 1;
            let put = TxnOp::put(key.clone(), next.to_string(), None);
            let txn = Txn::new().when(vec![cmp]).and_then(vec![put]);
            if self.client.txn(txn).await?.succeeded() {
                return Ok(next);
            }
        }
        Err(WriteError::Contended)
    }

    /// Writes `blobs/<sha256>` when the settings go by blob; nothing when inline.
    ///
    /// # Errors
    /// When etcd refuses the write.
    pub async fn put_blob(&mut self, settings: &Settings) -> Result<(), WriteError> {
        if let (Some(hash), Some(bytes)) = (&settings.body_sha256, &settings.blob) {
            self.client
                .put(self.keys.blob(hash), bytes.clone(), None)
                .await?;
        }
        Ok(())
    }

    /// Signs `document(host)` for every host (on every core) and writes them, a batch
    /// and its history record per transaction, several transactions in flight. Calls
    /// `written(hosts, revision)` as each transaction commits.
    ///
    /// # Errors
    /// When a document cannot be encoded or a transaction fails (after retries while
    /// etcd is overloaded); batches committed before it stay written, with their
    /// history.
    pub async fn write(
        &mut self,
        hosts: &[String],
        change: &Change<'_>,
        document: impl Fn(&String) -> DesiredState + Sync,
        mut written: impl FnMut(&[String], i64),
    ) -> Result<(), WriteError> {
        let key = self.key;
        let signed = on_all_cores(hosts, |host| serde_json::to_vec(&key.sign(&document(host))));
        let mut signed = signed.into_iter();
        let batches: Vec<&[String]> = hosts.chunks(BATCH).collect();
        let key_id = key.key_id();
        let mut writes = tokio::task::JoinSet::new();
        for (batch_no, batch) in batches.iter().copied().enumerate() {
            let mut ops = Vec::with_capacity(batch.len() + 1);
            for (host, value) in batch.iter().zip(signed.by_ref()) {
                ops.push(TxnOp::put(self.keys.desired(host), value?, None));
            }
            let record = change.record(batch_no, &key_id, batch);
            let history = serde_json::to_vec(&record)?;
            ops.push(TxnOp::put(self.keys.history(&record.id), history, None));
            let mut client = self.client.clone();
            writes.spawn(async move {
                let resp = txn_retrying(&mut client, ops).await?;
                Ok::<_, etcd_client::Error>((batch_no, resp.header().map_or(0, |h| h.revision())))
            });
            // Let the transaction go out while the next batch is put together.
            tokio::task::yield_now().await;
            while writes.len() >= TXNS_IN_FLIGHT {
                committed(writes.join_next().await, &batches, &mut written)?;
            }
        }
        while !writes.is_empty() {
            committed(writes.join_next().await, &batches, &mut written)?;
        }
        Ok(())
    }
}

/// Tells `written` about a committed batch.
fn committed(
    done: Option<Result<TxnDone, tokio::task::JoinError>>,
    batches: &[&[String]],
    written: &mut impl FnMut(&[String], i64),
) -> Result<(), WriteError> {
    let Some(done) = done else { return Ok(()) };
    let (batch_no, revision) = done??;
    written(batches[batch_no], revision);
    Ok(())
}

/// A transaction, again after 0.2, 0.4, ... 6.4 s while etcd is overloaded. Safe to
/// repeat: it only puts fixed values.
async fn txn_retrying(
    client: &mut Client,
    ops: Vec<TxnOp>,
) -> Result<TxnResponse, etcd_client::Error> {
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
    loop {
        match client.txn(Txn::new().and_then(ops.clone())).await {
            Err(e) if retry.failures() < 6 && crate::overloaded(&e) => {
                tokio::time::sleep(retry.failed()).await;
            }
            result => return result,
        }
    }
}

/// `f` over `items` on every core: checking and making signatures is most of the CPU
/// of a fleet-wide push (40 and 25 µs each here, 100,000 of each).
pub fn on_all_cores<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_records_read_back_as_written() {
        let hosts = vec!["a".to_owned(), "b".to_owned()];
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let change = Change {
            generation: 7,
            at,
            by: "ops",
            action: "push",
            target: "--all",
            body_sha256: None,
        };
        let record = change.record(3, "k1", &hosts);
        assert_eq!(record.id, "01700000000000000000-g7-00003");
        let json = serde_json::to_value(&record).unwrap();
        // The keys `hidsctl history --json` has always shown; no body_sha256 when inline.
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "action",
                "at",
                "by",
                "generation",
                "hosts",
                "id",
                "key_id",
                "target"
            ]
        );
        let back: HistoryRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.hosts, hosts);
        assert_eq!(back.at.0, at);
        assert_eq!((back.generation, back.action.as_str()), (7, "push"));
    }

    #[test]
    fn large_settings_go_to_a_blob() {
        let small = Settings::new(&DesiredBody::default()).unwrap();
        assert!(small.body.is_some() && small.body_sha256.is_none());
        let big = Settings::new(&DesiredBody {
            log_level: Some("x".repeat(INLINE_BODY_MAX)),
            ..DesiredBody::default()
        })
        .unwrap();
        assert!(big.body.is_none() && big.blob.is_some());
        let hash = big.body_sha256.as_deref().unwrap();
        assert_eq!(hash, crate::sign::blob_hash(big.blob.as_deref().unwrap()));
    }
}
