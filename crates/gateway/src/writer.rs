//! Writes to etcd on the agents' behalf: status puts and presence deletes merged into
//! transactions of up to 128 operations, all on the gateway's own lease.
//!
//! 100,000 acknowledgements of a fleet-wide command are 100,000 puts to etcd when each
//! agent writes its own (about 12 s of this machine's etcd, docs/benchmarks.md), and
//! about 800 transactions here. Each key goes to one lane by its hash, and a lane has
//! one transaction in flight, so two writes of one key land in the order they came.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use hids_types::stagger::Backoff;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use crate::leases::Leases;

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Under etcd's default 1.5 MiB request limit, with room for the keys.
pub const MAX_TXN_BYTES: usize = 1 << 20;
/// Largest status value taken (the agent keeps its document under 16 KiB).
pub const MAX_VALUE_BYTES: usize = 32 << 10;
/// Writes queued per lane: with [`MAX_VALUE_BYTES`], at most 32 MiB a lane.
const LANE_QUEUE: usize = 1024;
const TXN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a lane waits for more writes while it has fewer than [`MIN_BATCH`]. The
/// trickle of periodic status refreshes (100,000 agents every 300 s: 333 a second)
/// would otherwise cost etcd one transaction, and one disk sync, each (measured: etcd
/// at 23% of a core with nothing else to do).
pub const LINGER: Duration = Duration::from_millis(100);
/// Writes that make a transaction worth committing without waiting longer. During a
/// fleet-wide command they come within milliseconds; waiting the whole [`LINGER`] for
/// every transaction instead held each acknowledgement 100 ms, and a process speaking
/// for 10,000 agents on one connection (256 requests in flight) to 1,700 a second.
pub const MIN_BATCH: usize = 16;

/// One write for etcd.
enum Op {
    /// Written only if `lease` (the agent's) still owns the key when its transaction
    /// is built.
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
        reply: oneshot::Sender<Result<i64, Status>>,
    },
    /// Delete the key if it is still on the gateway's lease (a newer gateway may own it).
    Delete { key: String },
}

#[derive(Default)]
pub struct WriterCounters {
    pub txns: AtomicU64,
    pub puts: AtomicU64,
    pub deletes: AtomicU64,
    /// Transactions tried again (etcd away or overloaded).
    pub retries: AtomicU64,
    /// Puts answered with an error, deletes given up.
    pub failed: AtomicU64,
}

/// The gateway's own lease in etcd: every status key it writes is on it, so a gateway
/// that dies takes its agents out of the listing after one TTL, in one revocation.
pub struct GatewayLease {
    id: AtomicI64,
    changed: watch::Sender<i64>,
}

impl GatewayLease {
    pub fn new() -> Arc<Self> {
        Arc::new(GatewayLease {
            id: AtomicI64::new(0),
            changed: watch::channel(0).0,
        })
    }

    /// The current lease, 0 before the first grant.
    pub fn id(&self) -> i64 {
        self.id.load(Ordering::Acquire)
    }

    pub fn set(&self, id: i64) {
        self.id.store(id, Ordering::Release);
        self.changed.send_replace(id);
    }

    /// Waits for a lease.
    pub async fn wait(&self) -> i64 {
        let mut rx = self.changed.subscribe();
        let id = rx.wait_for(|id| *id != 0).await.map(|id| *id);
        id.unwrap_or(0)
    }

    /// etcd said `id` is gone: the keeper grants another (once per lost lease).
    pub fn lost(&self, id: i64) {
        let _ = self
            .id
            .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire);
        self.changed.send_if_modified(|cur| {
            if *cur == id {
                *cur = 0;
                true
            } else {
                false
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.changed.subscribe()
    }
}

pub struct Writer {
    lanes: Vec<mpsc::Sender<Op>>,
    pub counters: Arc<WriterCounters>,
}

/// The agent leases, shared with the lanes: ownership of a key is decided when its
/// transaction is built, in the key's lane, where a key's writes are in order. Decided
/// earlier (when the request came), a delete queued by an ending lease could land after
/// the put of the same host's new lease, or a put after the delete of its own lease.
pub type Owners = Arc<std::sync::Mutex<Leases>>;

impl Writer {
    /// Starts `lanes` lanes writing through `client` on `lease`, for the leases in `owners`.
    pub fn start(
        client: &Client,
        lease: &Arc<GatewayLease>,
        owners: &Owners,
        lanes: usize,
    ) -> Writer {
        let counters = Arc::new(WriterCounters::default());
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                let shared = Shared {
                    client: client.clone(),
                    lease: lease.clone(),
                    owners: owners.clone(),
                    counters: counters.clone(),
                };
                tokio::spawn(lane(rx, shared));
                tx
            })
            .collect();
        Writer { lanes, counters }
    }

    fn lane(&self, key: &str) -> &mpsc::Sender<Op> {
        let i = hids_types::stagger::host_hash(key) as usize % self.lanes.len();
        &self.lanes[i]
    }

    /// Writes `value` to `key` on the gateway's lease, if agent lease `lease` still
    /// owns the key then: the revision it was written at.
    ///
    /// # Errors
    /// What etcd said, NOT_FOUND when the lease ended first, or UNAVAILABLE when the
    /// writer is gone.
    pub async fn put(&self, key: String, value: Vec<u8>, lease: i64) -> Result<i64, Status> {
        let (reply, answer) = oneshot::channel();
        let lane = self.lane(&key);
        let op = Op::Put {
            key,
            value,
            lease,
            reply,
        };
        if lane.send(op).await.is_err() {
            return Err(Status::unavailable("the gateway is shutting down"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the gateway is shutting down")))
    }

    /// Deletes `key` if it is still on the gateway's lease.
    pub async fn delete(&self, key: String) {
        let _ = self.lane(&key).send(Op::Delete { key }).await;
    }
}

/// A transaction being gathered: the last write of each key wins (etcd refuses a key
/// twice in one transaction), and every waiting put gets the transaction's answer.
#[derive(Default)]
struct Batch {
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    bytes: usize,
}

struct Slot {
    key: String,
    /// The last put's value; `None`: no put, a delete.
    value: Option<Vec<u8>>,
    /// The agent lease the last put is for.
    lease: i64,
    /// Who waits, with the lease each wrote for.
    replies: Vec<(i64, oneshot::Sender<Result<i64, Status>>)>,
    /// A delete came too (from a lease that ended): it applies if, when the transaction
    /// is built, nobody owns the key.
    delete: bool,
}

fn lease_ended() -> Status {
    Status::not_found("etcdserver: requested lease not found")
}

impl Batch {
    fn full(&self) -> bool {
        self.slots.len() >= MAX_TXN_OPS || self.bytes >= MAX_TXN_BYTES
    }

    fn add(&mut self, op: Op) {
        let (key, value, lease, reply) = match op {
            Op::Put {
                key,
                value,
                lease,
                reply,
            } => (key, Some(value), lease, Some(reply)),
            Op::Delete { key } => (key, None, 0, None),
        };
        self.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.index.insert(key.clone(), self.slots.len());
                self.slots.push(Slot {
                    key,
                    value: None,
                    lease: 0,
                    replies: Vec::new(),
                    delete: false,
                });
                self.slots.len() - 1
            }
        };
        // Which of a put and a delete of one key wins is decided when the transaction
        // is built (`keep_current`), by who owns the key then: a delete from a host's
        // ended lease and a put from its new one can come in either order.
        let slot = &mut self.slots[i];
        match value {
            Some(v) => {
                slot.value = Some(v);
                slot.lease = lease;
                slot.replies.extend(reply.map(|r| (lease, r)));
            }
            None => slot.delete = true,
        }
    }

    /// Keeps what is still worth writing: a put whose lease still owns its key and that
    /// someone waits for (an agent that timed out writes again), a delete of a key no
    /// live lease owns. A put whose lease ended is answered NOT_FOUND.
    fn keep_current(&mut self, owners: &Owners, counters: &WriterCounters) {
        let leases = owners.lock().unwrap_or_else(|e| e.into_inner());
        self.slots.retain_mut(|s| {
            let owner = leases.owner(&s.key);
            let put_current = s.value.is_some() && owner == Some(s.lease);
            // Puts for a lease that does not own the key (any more) are not written.
            let (current, ended): (Vec<_>, Vec<_>) = s
                .replies
                .drain(..)
                .partition(|(lease, _)| put_current && Some(*lease) == owner);
            for (_, r) in ended {
                let _ = r.send(Err(lease_ended()));
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
            s.replies = current;
            if put_current {
                // Nobody waits any more: the agent timed out and writes again.
                return s.replies.iter().any(|(_, r)| !r.is_closed());
            }
            s.value = None;
            s.delete && owner.is_none()
        });
        drop(leases);
        self.index = (self.slots.iter().enumerate())
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
    }

    fn txn(&self, lease: i64) -> Txn {
        let ops: Vec<TxnOp> = self
            .slots
            .iter()
            .map(|s| match &s.value {
                Some(v) => TxnOp::put(
                    s.key.clone(),
                    v.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                None => TxnOp::txn(
                    Txn::new()
                        .when([Compare::lease(s.key.clone(), CompareOp::Equal, lease)])
                        .and_then([TxnOp::delete(s.key.clone(), None)]),
                ),
            })
            .collect();
        Txn::new().and_then(ops)
    }

    fn answer(self, result: &Result<i64, Status>, counters: &WriterCounters) {
        for slot in self.slots {
            let counter = match (&slot.value, result) {
                (_, Err(_)) => &counters.failed,
                (Some(_), Ok(_)) => &counters.puts,
                (None, Ok(_)) => &counters.deletes,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            for (_, reply) in slot.replies {
                let _ = reply.send(result.clone());
            }
        }
    }
}

/// What every lane uses.
struct Shared {
    client: Client,
    lease: Arc<GatewayLease>,
    owners: Owners,
    counters: Arc<WriterCounters>,
}

async fn lane(mut rx: mpsc::Receiver<Op>, shared: Shared) {
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::default();
        batch.add(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while !batch.full() {
            let next = if batch.slots.len() >= MIN_BATCH {
                rx.try_recv().ok()
            } else {
                tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten()
            };
            match next {
                Some(op) => batch.add(op),
                None => break,
            }
        }
        commit(&shared, batch).await;
    }
}

/// Commits `batch`, retrying while etcd is away or overloaded; what is still current
/// is decided again before each attempt.
async fn commit(shared: &Shared, mut batch: Batch) {
    let Shared {
        client,
        lease,
        owners,
        counters,
    } = shared;
    let mut retry = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        // The gateway's lease first: when it changes, every agent lease was dropped
        // before the new one was set, so the ownership seen next is after that.
        let id = lease.wait().await;
        batch.keep_current(owners, counters);
        if batch.slots.is_empty() {
            return;
        }
        let mut kv = client.kv_client();
        let result = tokio::time::timeout(TXN_TIMEOUT, kv.txn(batch.txn(id))).await;
        let error = match result {
            Ok(Ok(resp)) => {
                counters.txns.fetch_add(1, Ordering::Relaxed);
                let revision = resp.header().map_or(0, |h| h.revision());
                batch.answer(&Ok(revision), counters);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => etcd_client::Error::GRpcStatus(Status::deadline_exceeded("txn timed out")),
        };
        if lease_gone(&error) {
            tracing::warn!("gateway: etcd lost the gateway's lease {id:x}; granting another");
            lease.lost(id);
            let status = Status::not_found("etcdserver: requested lease not found");
            batch.answer(&Err(status), counters);
            return;
        }
        if !transient(&error) {
            tracing::warn!("gateway: status transaction refused: {error}");
            batch.answer(&Err(Status::unavailable(error.to_string())), counters);
            return;
        }
        counters.retries.fetch_add(1, Ordering::Relaxed);
        let delay = retry.failed();
        tracing::debug!("gateway: status transaction: {error}; again in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// etcd no longer has the lease (expired while the gateway was cut off).
pub fn lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        // The client's own word when a keepalive stream opens on a lease etcd lost.
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Worth trying again: etcd overloaded, restarting, without a leader, or unreachable.
pub fn transient(e: &etcd_client::Error) -> bool {
    if hids_control::overloaded(e) {
        return true;
    }
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Aborted
            ) || s.message().contains("leader")
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lease_is_told_from_etcd_being_away() {
        let status = |code, m: &str| etcd_client::Error::GRpcStatus(Status::new(code, m));
        let gone = status(
            tonic::Code::NotFound,
            "etcdserver: requested lease not found",
        );
        assert!(lease_gone(&gone) && !transient(&gone));
        let reopened = etcd_client::Error::LeaseKeepAliveError("lease not found".into());
        assert!(lease_gone(&reopened));
        let away = status(tonic::Code::Unavailable, "connection refused");
        assert!(!lease_gone(&away) && transient(&away));
    }

    fn put(key: &str, value: &str) -> (Op, oneshot::Receiver<Result<i64, Status>>) {
        put_for(key, value, 1)
    }

    /// A put of `value` to `key` for agent lease `lease`, and where its answer comes.
    fn put_for(key: &str, value: &str, lease: i64) -> (Op, oneshot::Receiver<Result<i64, Status>>) {
        let (reply, rx) = oneshot::channel();
        let op = Op::Put {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            lease,
            reply,
        };
        (op, rx)
    }

    #[test]
    fn a_key_written_twice_in_one_batch_is_written_once_with_its_last_value() {
        let mut batch = Batch::default();
        let (a1, mut r1) = put("k/a", "1");
        let (a2, mut r2) = put("k/a", "2");
        let (b, _rb) = put("k/b", "x");
        batch.add(a1);
        batch.add(b);
        batch.add(a2);
        assert_eq!(batch.slots.len(), 2);
        assert_eq!(batch.slots[0].value.as_deref(), Some(&b"2"[..]));
        let counters = WriterCounters::default();
        batch.answer(&Ok(42), &counters);
        assert_eq!(r1.try_recv().ok().and_then(|r| r.ok()), Some(42));
        assert_eq!(r2.try_recv().ok().and_then(|r| r.ok()), Some(42));
        assert_eq!(counters.puts.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_batch_stops_at_128_operations_or_a_mebibyte() {
        let mut batch = Batch::default();
        let mut waiting = Vec::new();
        for i in 0..MAX_TXN_OPS {
            assert!(!batch.full());
            let (op, rx) = put(&format!("k/{i}"), "v");
            batch.add(op);
            waiting.push(rx);
        }
        assert!(batch.full());
        let mut big = Batch::default();
        let (op, _rx) = put("k/big", &"x".repeat(MAX_TXN_BYTES));
        big.add(op);
        assert!(big.full());
    }

    #[test]
    fn a_put_and_a_delete_of_one_key_in_one_batch_are_settled_by_who_owns_it() {
        let owners: Owners = Arc::new(std::sync::Mutex::new(Leases::new(1)));
        let now = std::time::Instant::now();
        let (new, ended) = {
            let mut l = owners.lock().unwrap();
            let (new, _) = l.grant(60, 1, now);
            let (ended, _) = l.grant(60, 1, now);
            l.bind(new, 1, "k/back").unwrap();
            l.bind(ended, 1, "k/gone").unwrap();
            l.revoke(ended, 1).unwrap();
            (new, ended)
        };
        let mut batch = Batch::default();
        // The host came back on a new lease; its old lease's delete came after its put.
        let (back, _r_back) = put_for("k/back", "v", new);
        batch.add(back);
        batch.add(Op::Delete {
            key: "k/back".into(),
        });
        // A put whose lease then ended, and that lease's delete.
        let (gone, mut r_gone) = put_for("k/gone", "v", ended);
        batch.add(gone);
        batch.add(Op::Delete {
            key: "k/gone".into(),
        });
        batch.keep_current(&owners, &WriterCounters::default());
        let kept: Vec<_> = batch
            .slots
            .iter()
            .map(|s| (s.key.as_str(), s.value.is_some()))
            .collect();
        assert_eq!(kept, [("k/back", true), ("k/gone", false)]);
        assert!(matches!(r_gone.try_recv(), Ok(Err(s)) if s.code() == tonic::Code::NotFound));
    }

    #[test]
    fn only_current_writes_are_sent_and_a_put_whose_lease_ended_is_told_so() {
        let owners: Owners = Arc::new(std::sync::Mutex::new(Leases::new(1)));
        let now = std::time::Instant::now();
        let (a, b) = {
            let mut l = owners.lock().unwrap();
            let (a, _) = l.grant(60, 1, now);
            let (b, _) = l.grant(60, 1, now);
            l.bind(a, 1, "k/a").unwrap();
            l.bind(b, 1, "k/b").unwrap();
            (a, b)
        };
        let mut batch = Batch::default();
        let (current, _r1) = put_for("k/a", "v", a);
        let (stale, mut r2) = put_for("k/b", "v", a);
        let (abandoned, r3) = put_for("k/b", "v", b);
        batch.add(current);
        batch.add(stale);
        drop(r3);
        batch.add(Op::Delete { key: "k/c".into() });
        let mut other = Batch::default();
        other.add(abandoned);
        other.add(Op::Delete { key: "k/a".into() });
        let counters = WriterCounters::default();
        batch.keep_current(&owners, &counters);
        let kept: Vec<_> = batch.slots.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            kept,
            ["k/a", "k/c"],
            "k/b's put was for a lease that does not own it"
        );
        assert!(matches!(r2.try_recv(), Ok(Err(s)) if s.code() == tonic::Code::NotFound));
        other.keep_current(&owners, &counters);
        assert!(
            other.slots.is_empty(),
            "nobody waits for the put; k/a is owned: no delete"
        );
    }
}
