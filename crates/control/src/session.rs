//! An agent's session with etcd: one lease, the presence/status key on that lease, and
//! one watch on the agent's own `desired/<host_id>` key.
//!
//! - The watch starts from the revision of the initial read, so no update can slip in
//!   between read and watch. A compacted or cancelled watch re-reads and re-watches.
//! - Keepalives go every TTL/3, phase-shifted by the host's stagger offset, from a task
//!   of their own, so nothing the session waits for delays them. An expired or revoked
//!   lease ends the session; the next one grants a new lease and registers again.
//! - A lost connection (or a member without a leader) ends the session; reconnects back
//!   off exponentially from 1 s to 60 s, plus the host's stagger offset, so a fleet that
//!   lost its etcd does not return in one thundering herd.
//! - The watch is on the session's own gRPC stream (what a real agent does), or on a
//!   shared stream of a [`WatchHub`] when one process speaks for many agents.
//! - Desired states are verified here (signature, host, generation, blob hash), so
//!   every user of the session (the agent, the fleet simulator) applies only what passed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use hids_types::desired::{DesiredBody, DesiredState};
use hids_types::stagger::{self, Backoff};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::hub::{Subscription, WatchHub};
use crate::publish::StatusValue;
use crate::sign::{Refusal, TrustedKeys, Verified};
use crate::{EtcdConfig, Keys};

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub etcd: EtcdConfig,
    pub keys: Keys,
    pub host_id: String,
    pub lease_ttl: Duration,
    /// How often the status key is rewritten even when nothing changed (staggered).
    pub status_refresh: Duration,
    /// Shortest gap between two status writes caused by changes.
    pub status_min_gap: Duration,
}

/// What the session tells its owner.
#[derive(Debug)]
pub enum Update {
    /// A verified desired state, newer than the last applied one, with its settings
    /// (from the document or its blob) and the raw envelope (for the local cache).
    Apply {
        state: Box<DesiredState>,
        body: Box<DesiredBody>,
        raw: Vec<u8>,
        /// The blob the settings came from (`body_sha256`), cached with the envelope so
        /// the cache can be checked against the signed hash at the next start.
        blob: Option<Vec<u8>>,
        /// The value's etcd modification revision.
        revision: i64,
    },
    /// A desired state was refused; the previous one stays in force.
    Refused {
        reason: Refusal,
        revision: i64,
    },
    /// Registered: lease granted, status written, watch running.
    Connected,
    Disconnected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    #[error("lease {0:x} expired or was revoked")]
    LeaseLost(i64),
    #[error("{0} stream closed by the server")]
    Closed(&'static str),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
}

impl SessionError {
    /// etcd is there but cannot keep up (timeouts, "too many requests"): worth retrying
    /// the same request later, not worth tearing the session down.
    pub fn is_overload(&self) -> bool {
        match self {
            SessionError::Timeout(_) => true,
            SessionError::Etcd(e) => crate::overloaded(e),
            _ => false,
        }
    }
}

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Shutdown,
    /// The owner dropped its end of the update channel.
    OwnerGone,
}

/// Resolves once shutdown is signalled (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two session attempts (before the host's stagger offset).
const RECONNECT_CAP: Duration = Duration::from_secs(60);

/// Session attempts: 1 s doubling to [`RECONNECT_CAP`], plus the host's offset.
fn reconnect_backoff(host_id: &str) -> Backoff {
    Backoff::new(Duration::from_secs(1), RECONNECT_CAP).staggered(host_id)
}

/// Status writes and blob reads refused by an overloaded etcd: 2 s doubling to 32 s,
/// plus the host's offset.
fn overload_backoff(host_id: &str) -> Backoff {
    Backoff::new(Duration::from_secs(2), Duration::from_secs(32)).staggered(host_id)
}
/// Retries of a blob read while etcd is overloaded (2, 4, 8, 16, 32 s, staggered).
const BLOB_RETRIES: u32 = 5;

/// An etcd call with a deadline, in one of `slots` when given (the deadline runs once
/// the call has its slot). Boxed: a gRPC call's future is kilobytes, and a session
/// awaits several kinds of them in its loop; unboxed they would all live in the
/// session's own state for its whole life (35 KB per session, measured), which a
/// process holding thousands of sessions (the fleet simulator) pays per session.
fn timed<'a, T: 'a>(
    slots: Option<Arc<Semaphore>>,
    f: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'a,
) -> Pin<Box<dyn Future<Output = Result<T, SessionError>> + Send + 'a>> {
    Box::pin(async move {
        let _slot = match &slots {
            Some(s) => Some(
                s.acquire()
                    .await
                    .map_err(|_| SessionError::Closed("rpc slots"))?,
            ),
            None => None,
        };
        match tokio::time::timeout(RPC_TIMEOUT, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::Timeout(RPC_TIMEOUT)),
        }
    })
}

pub struct Session {
    pub cfg: SessionConfig,
    trusted: TrustedKeys,
    applied_generation: u64,
    shared_watch: Option<WatchHub>,
    rpc_slots: Option<Arc<Semaphore>>,
}

/// The one watch on `desired/<host_id>`. One per session, so a 240-byte variant is
/// cheaper inline than boxed.
#[allow(clippy::large_enum_variant)]
enum DesiredWatch {
    Own(etcd_client::WatchStream),
    Shared(Subscription),
}

/// What the watch said next.
enum Next {
    Response(etcd_client::WatchResponse),
    /// The shared stream let go of this watch: read again and re-watch.
    Rewatch,
}

impl DesiredWatch {
    async fn next(&mut self) -> Result<Next, SessionError> {
        match self {
            DesiredWatch::Own(stream) => match stream.message().await? {
                Some(resp) => Ok(Next::Response(resp)),
                None => Err(SessionError::Closed("watch")),
            },
            DesiredWatch::Shared(sub) => {
                Ok(sub.message().await.map_or(Next::Rewatch, Next::Response))
            }
        }
    }
}

/// A desired state that passed every check.
struct Accepted {
    state: Box<DesiredState>,
    body: DesiredBody,
    blob: Option<Vec<u8>>,
}

/// The lease's keepalive streams, owned by the task that keeps the lease.
struct LeaseStreams {
    client: etcd_client::LeaseClient,
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    keepalives: etcd_client::LeaseKeepAliveStream,
    slots: Option<Arc<Semaphore>>,
}

/// The task keeping a session's lease; aborted when the session ends (dropped).
struct KeepAliveTask(tokio::task::JoinHandle<SessionError>);

impl Drop for KeepAliveTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A session's lease: its id, its TTL in seconds, and the task keeping it.
struct Lease {
    id: i64,
    ttl: i64,
    keeper: KeepAliveTask,
}

/// Writes of the status key, on the session's lease: when the status changed (at most
/// one per `status_min_gap`) or is due for its refresh.
struct StatusWrites {
    key: String,
    lease: i64,
    slots: Option<Arc<Semaphore>>,
    min_gap: Duration,
    /// A write is due.
    dirty: bool,
    /// Not before this.
    next_put: Instant,
    retry: Backoff,
}

impl StatusWrites {
    fn new(cfg: &SessionConfig, lease: i64, slots: Option<Arc<Semaphore>>) -> Self {
        StatusWrites {
            key: cfg.keys.agent(&cfg.host_id),
            lease,
            slots,
            min_gap: cfg.status_min_gap,
            dirty: false,
            next_put: Instant::now() + cfg.status_min_gap,
            retry: overload_backoff(&cfg.host_id),
        }
    }

    /// No write for `min_gap` from now.
    fn hold(&mut self) {
        self.next_put = Instant::now() + self.min_gap;
    }

    fn put(
        &self,
        client: &Client,
        value: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<etcd_client::PutResponse, SessionError>> + Send>> {
        let mut client = client.clone();
        let key = self.key.clone();
        let options = PutOptions::new().with_lease(self.lease);
        timed(self.slots.clone(), async move {
            client.put(key, value, Some(options)).await
        })
    }

    /// Writes the status that is due.
    ///
    /// # Errors
    /// Any failure but an overloaded etcd: that is no reason to drop the lease and
    /// register again (which costs it four more requests); the status stays due and
    /// goes again after a staggered backoff.
    async fn due(&mut self, client: &Client, value: Vec<u8>) -> Result<(), SessionError> {
        match self.put(client, value).await {
            Ok(_) => {
                self.retry.succeeded();
                self.dirty = false;
                self.hold();
            }
            Err(e) if e.is_overload() => {
                let delay = self.retry.failed();
                self.next_put = Instant::now() + delay;
                tracing::debug!("control plane: status write: {e}; again in {delay:?}");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Sends a keepalive every `period` from `first` until the lease is lost or its stream
/// fails for good, and says why. It runs in a task of its own for the session's whole
/// life: in the session's loop a keepalive waited behind whatever that loop awaited (a
/// blob read retried for up to a minute, a status write waiting for an rpc slot, an
/// owner slow to take an update), and a lease of 60 s expired behind it.
async fn keep_lease(mut s: LeaseStreams, period: Duration, first: Instant) -> SessionError {
    let mut timer = interval_at(first, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {
                if let Err(e) = timed(None, s.keeper.keep_alive()).await {
                    return e;
                }
            }
            msg = s.keepalives.message() => match msg.map_err(SessionError::from) {
                Ok(Some(r)) if r.ttl() > 0 => {}
                Ok(Some(_)) => return SessionError::LeaseLost(s.lease),
                Ok(None) => return SessionError::Closed("keepalive"),
                // etcd ended the stream because it is behind, not because the lease is
                // gone: keep the lease (and the registration) on a new stream.
                Err(e) if e.is_overload() => {
                    tracing::debug!("control plane: keepalive stream: {e}; opening another");
                    match timed(s.slots.clone(), s.client.keep_alive(s.lease)).await {
                        Ok((keeper, keepalives)) => (s.keeper, s.keepalives) = (keeper, keepalives),
                        Err(e) => return e,
                    }
                }
                Err(e) => return e,
            },
        }
    }
}

impl Session {
    /// `applied_generation` is what the owner already runs (from its cache), so a
    /// replayed older document is refused as a rollback.
    pub fn new(cfg: SessionConfig, trusted: TrustedKeys, applied_generation: u64) -> Self {
        Session {
            cfg,
            trusted,
            applied_generation,
            shared_watch: None,
            rpc_slots: None,
        }
    }

    /// Makes every request wait for one of `slots` (shared by the sessions on one
    /// connection). A process speaking for thousands of agents must queue on its side:
    /// 100,000 status writes at once time out in etcd's queue, each timeout resets an
    /// HTTP/2 stream, and after 1,024 resets the client library drops the connection
    /// with every session on it (measured: 570,000 re-registrations in one stop).
    #[must_use]
    pub fn with_rpc_slots(mut self, slots: Arc<Semaphore>) -> Self {
        self.rpc_slots = Some(slots);
        self
    }

    /// Watches on `hub`'s shared stream instead of a stream of the session's own.
    #[must_use]
    pub fn with_shared_watch(mut self, hub: WatchHub) -> Self {
        self.shared_watch = Some(hub);
        self
    }

    /// Runs sessions until `shutdown`, reconnecting after every failure.
    pub async fn run<S: StatusValue>(
        self,
        status: watch::Receiver<S>,
        updates: mpsc::Sender<Update>,
        shutdown: watch::Receiver<bool>,
    ) {
        self.run_on(None, status, updates, shutdown).await;
    }

    /// [`Session::run`] on `shared`, a client many sessions use (its connection
    /// re-establishes itself), or on a connection of its own when `None`.
    pub async fn run_on<S: StatusValue>(
        mut self,
        shared: Option<Arc<Client>>,
        mut status: watch::Receiver<S>,
        updates: mpsc::Sender<Update>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut retry = reconnect_backoff(&self.cfg.host_id);
        // Never reset (unlike the backoff): each failed session moves to the next
        // endpoint in this host's order.
        let mut endpoint: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            // Boxed: a client is 3.7 KB, and kept inline it would sit in every idle
            // session's state (the simulator holds 100,000 of them).
            let client: Result<Box<Client>, String> = match &shared {
                Some(client) => Ok(Box::new(Client::clone(client))),
                None => {
                    let etcd = self.cfg.etcd.one_endpoint(&self.cfg.host_id, endpoint);
                    let connect = Box::pin(async move { etcd.connect().await });
                    connect.await.map(Box::new).map_err(|e| e.to_string())
                }
            };
            let error = match client {
                Ok(mut client) => {
                    let served = self.serve(&mut client, &mut status, &updates, &mut shutdown);
                    match served.await {
                        Ok(_) => return,
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            endpoint = endpoint.wrapping_add(1);
            if started.elapsed() > Duration::from_secs(60) {
                retry.succeeded();
            }
            let delay = retry.failed();
            let failures = retry.failures();
            if failures == 1 || failures.is_power_of_two() {
                tracing::warn!(
                    "control plane: {error}; retrying in {delay:?} (attempt {failures})"
                );
            }
            if updates.send(Update::Disconnected(error)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    }

    /// One session on a connected client (possibly shared with many sessions, see
    /// [`Session::run_on`]), until an error or shutdown.
    ///
    /// # Errors
    /// Any etcd failure, a lost lease, or a closed stream: the caller reconnects.
    pub async fn serve<S: StatusValue>(
        &mut self,
        client: &mut Client,
        status: &mut watch::Receiver<S>,
        updates: &mpsc::Sender<Update>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Exit, SessionError> {
        let host = self.cfg.host_id.clone();
        let mut lease = self.grant_lease(client).await?;
        let mut writes = StatusWrites::new(&self.cfg, lease.id, self.rpc_slots.clone());
        let value = status.borrow_and_update().encode();
        writes.put(client, value).await?;
        let first_watch = Box::pin(self.read_and_watch(client, updates));
        let mut watch = first_watch.await?;
        if updates.send(Update::Connected).await.is_err() {
            return Ok(Exit::OwnerGone);
        }
        tracing::info!(
            "control plane: registered as {host} (lease {:x}, ttl {}s)",
            lease.id,
            lease.ttl
        );

        let refresh = self.cfg.status_refresh.max(Duration::from_secs(1));
        let mut refresh_timer =
            interval_at(Instant::now() + stagger::offset(&host, refresh), refresh);
        refresh_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        writes.hold();
        loop {
            tokio::select! {
                ended = &mut lease.keeper.0 => {
                    return Err(ended.unwrap_or(SessionError::Closed("keepalive task")));
                }
                next = watch.next() => {
                    let watched = Box::pin(self.on_watch(client, next?, &mut watch, updates));
                    if !watched.await? {
                        return Ok(Exit::OwnerGone);
                    }
                }
                changed = status.changed() => {
                    if changed.is_err() {
                        return Ok(Exit::OwnerGone);
                    }
                    writes.dirty = true;
                }
                _ = tokio::time::sleep_until(writes.next_put), if writes.dirty => {
                    let value = status.borrow_and_update().encode();
                    writes.due(client, value).await?;
                }
                _ = refresh_timer.tick() => writes.dirty = true,
                _ = stopped(shutdown) => {
                    // Leave the fleet listing at once rather than after the TTL.
                    let revoke = Box::pin(tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease.id)));
                    let _ = revoke.await;
                    return Ok(Exit::Shutdown);
                }
            }
        }
    }

    /// Grants the session's lease and starts the task that keeps it, every TTL/3 from
    /// the host's stagger offset. The TTL is the one granted, as etcd's own client does:
    /// etcd grants what was asked, a watch gateway (`hids-gateway`) may grant more,
    /// because it sees an agent's death by its connection rather than by keepalives.
    async fn grant_lease(&self, client: &mut Client) -> Result<Lease, SessionError> {
        let asked = self.cfg.lease_ttl.as_secs().max(2) as i64;
        let slots = self.rpc_slots.clone();
        let grant = timed(slots.clone(), client.lease_grant(asked, None)).await?;
        let (id, ttl) = (grant.id(), grant.ttl().max(2));
        let keep_alive = timed(slots.clone(), client.lease_keep_alive(id));
        let (keeper, keepalives) = keep_alive.await?;
        let period = Duration::from_secs((ttl / 3).max(1) as u64);
        let streams = LeaseStreams {
            client: client.lease_client(),
            lease: id,
            keeper,
            keepalives,
            slots,
        };
        let first = Instant::now() + stagger::offset(&self.cfg.host_id, period);
        let keeper = KeepAliveTask(tokio::spawn(keep_lease(streams, period, first)));
        Ok(Lease { id, ttl, keeper })
    }

    /// What the watch said: desired states delivered, or the watch read again and
    /// renewed when it ended. False when the owner is gone.
    async fn on_watch(
        &mut self,
        client: &mut Client,
        next: Next,
        watch: &mut DesiredWatch,
        updates: &mpsc::Sender<Update>,
    ) -> Result<bool, SessionError> {
        let resp = match next {
            Next::Response(resp) => resp,
            Next::Rewatch => {
                *watch = Box::pin(self.read_and_watch(client, updates)).await?;
                return Ok(true);
            }
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            tracing::info!(
                "control plane: watch ended ({}); reading again",
                resp.cancel_reason()
            );
            *watch = Box::pin(self.read_and_watch(client, updates)).await?;
            return Ok(true);
        }
        for ev in resp.events() {
            if ev.event_type() == EventType::Put {
                if let Some(kv) = ev.kv() {
                    let raw = kv.value().to_vec();
                    let delivery = Box::pin(self.deliver(client, raw, kv.mod_revision(), updates));
                    if !delivery.await {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Reads `desired/<host>` and watches it from the next revision.
    async fn read_and_watch(
        &mut self,
        client: &mut Client,
        updates: &mpsc::Sender<Update>,
    ) -> Result<DesiredWatch, SessionError> {
        let key = self.cfg.keys.desired(&self.cfg.host_id);
        let resp = timed(self.rpc_slots.clone(), client.get(key.clone(), None)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if let Some(kv) = resp.kvs().first() {
            let raw = kv.value().to_vec();
            self.deliver(client, raw, kv.mod_revision(), updates).await;
        }
        let opts = WatchOptions::new().with_start_revision(revision + 1);
        let mut watch = match &self.shared_watch {
            None => {
                let slots = self.rpc_slots.clone();
                DesiredWatch::Own(timed(slots, client.watch(key, Some(opts))).await?)
            }
            Some(hub) => DesiredWatch::Shared(timed(None, hub.watch(key, opts)).await?),
        };
        // Registered means etcd holds the watch: wait for its answer to the create.
        match tokio::time::timeout(RPC_TIMEOUT, watch.next()).await {
            Err(_) => Err(SessionError::Timeout(RPC_TIMEOUT)),
            Ok(Ok(Next::Response(r))) if r.created() && !r.canceled() => Ok(watch),
            Ok(Ok(_)) => Err(SessionError::Closed("watch (at creation)")),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Verifies a desired value and passes it on. False when the owner is gone.
    async fn deliver(
        &mut self,
        client: &mut Client,
        raw: Vec<u8>,
        revision: i64,
        updates: &mpsc::Sender<Update>,
    ) -> bool {
        let update = match self.verify(client, &raw).await {
            Ok(None) => return true,
            Ok(Some(Accepted { state, body, blob })) => {
                self.applied_generation = state.generation;
                Update::Apply {
                    state,
                    body: Box::new(body),
                    raw,
                    blob,
                    revision,
                }
            }
            Err(reason) => {
                tracing::warn!(
                    "control plane: refused desired state: {reason}; keeping the current one"
                );
                Update::Refused { reason, revision }
            }
        };
        updates.send(update).await.is_ok()
    }

    /// The verified document, its settings and the blob they came from, if any; `None`
    /// for the document already applied.
    async fn verify(&self, client: &mut Client, raw: &[u8]) -> Result<Option<Accepted>, Refusal> {
        let state = match self
            .trusted
            .verify(raw, &self.cfg.host_id, self.applied_generation)?
        {
            Verified::Current => return Ok(None),
            Verified::New(state) => state,
        };
        let blob = match &state.body_sha256 {
            Some(hash) => Some(self.fetch_blob(client, hash).await?),
            None => None,
        };
        let body = crate::sign::signed_body(&state, blob.as_deref())?;
        Ok(Some(Accepted { state, body, blob }))
    }

    /// Reads `blobs/<hash>`. A whole fleet fetches the same blob at once: an overloaded
    /// etcd gets a staggered retry, not a refusal the host would keep until the next
    /// push. (The lease is kept meanwhile by its own task.)
    async fn fetch_blob(&self, client: &mut Client, hash: &str) -> Result<Vec<u8>, Refusal> {
        let key = self.cfg.keys.blob(hash);
        let mut retry = overload_backoff(&self.cfg.host_id);
        let resp = loop {
            let slots = self.rpc_slots.clone();
            let fetch = timed(slots, client.get(key.clone(), Some(GetOptions::new())));
            match fetch.await {
                Ok(resp) => break resp,
                Err(e) if e.is_overload() && retry.failures() < BLOB_RETRIES => {
                    tokio::time::sleep(retry.failed()).await;
                }
                Err(e) => return Err(Refusal::BlobMissing(format!("{hash} ({e})"))),
            }
        };
        resp.kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .ok_or_else(|| Refusal::BlobMissing(hash.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_from_1_s_to_the_documented_60_s() {
        // The session's own schedule: each delay is the base plus the host's offset
        // within it. docs/control-plane.md: "reconnect after 1 s, doubling to 60 s" (it
        // stopped at 32 s before issue 12).
        let mut retry = reconnect_backoff("host-a");
        for secs in [1, 2, 4, 8, 16, 32, 60, 60] {
            let base = Duration::from_secs(secs);
            assert_eq!(retry.failed(), base + stagger::offset("host-a", base));
        }
    }
}
