//! The gateway's own work against etcd: following `desired/` into the cache, keeping
//! the gateway's lease, ending expired agent leases, and reporting what it serves.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions, SortOrder, SortTarget, WatchOptions};
use hids_types::stagger::Backoff;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::writer::{lease_gone, transient};
use crate::Gateway;

/// Keys per page of the initial read of `desired/` (under gRPC's 4 MiB message limit
/// with documents of a few KiB).
const PAGE: i64 = 500;
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why following `desired/` has to start over.
enum Gap {
    /// The stream broke: watch again from the cache's revision.
    Broken(etcd_client::Error),
    /// etcd compacted past the cache's revision: read everything again.
    Compacted,
}

/// Keeps the cache equal to etcd's `desired/`: a full read, then one watch from the
/// read's revision; a broken stream resumes from the cache's revision, a compacted one
/// reads everything again.
pub async fn follow_desired(gw: Arc<Gateway>, client: Client) {
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut need_read = true;
    loop {
        if need_read {
            match read_desired(&gw, &client).await {
                Ok(()) => need_read = false,
                Err(e) => {
                    let delay = retry.failed();
                    tracing::warn!("gateway: reading desired states: {e}; again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
        }
        let started = Instant::now();
        match watch_desired(&gw, &client).await {
            Gap::Compacted => {
                tracing::info!("gateway: desired/ watch compacted; reading everything again");
                need_read = true;
            }
            Gap::Broken(e) => {
                if started.elapsed() > Duration::from_secs(30) {
                    retry.succeeded();
                }
                let delay = retry.failed();
                tracing::warn!("gateway: desired/ watch: {e}; watching again in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reads all of `desired/` page by page at one revision into the cache.
async fn read_desired(gw: &Gateway, client: &Client) -> Result<(), etcd_client::Error> {
    let dir = gw.keys.desired_dir();
    let end = hids_control::keys::prefix_end(&dir);
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(hids_control::read::WATCH_MESSAGE_BYTES);
    let mut from = dir.as_bytes().to_vec();
    let mut revision = 0;
    let mut kvs = Vec::new();
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let page = tokio::time::timeout(RPC_TIMEOUT, kv.get(from.clone(), Some(opts)))
            .await
            .map_err(|_| timed_out())??;
        let page = page.0;
        if let Some(h) = &page.header {
            if revision == 0 {
                revision = h.revision;
                gw.cache.set_cluster(h.cluster_id, h.member_id, h.raft_term);
            }
        }
        let more = page.more;
        if let Some(last) = page.kvs.last() {
            from = last.key.clone();
            from.push(0);
        }
        kvs.extend(page.kvs);
        if !more {
            break;
        }
    }
    let n = kvs.len();
    gw.cache.reload(kvs, revision);
    tracing::info!("gateway: {n} desired states read at revision {revision}");
    Ok(())
}

fn timed_out() -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded("etcd did not answer"))
}

/// Follows `desired/` from the cache's revision until the stream ends.
async fn watch_desired(gw: &Gateway, client: &Client) -> Gap {
    let dir = gw.keys.desired_dir();
    let opts = WatchOptions::new()
        .with_progress_notify()
        .with_start_revision(gw.cache.revision() + 1);
    let watch = hids_control::read::watch_prefix(client, &dir, opts);
    let stream = match tokio::time::timeout(RPC_TIMEOUT, watch).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Gap::Broken(e),
        Err(_) => return Gap::Broken(timed_out()),
    };
    let (_requests, mut responses) = stream.split();
    loop {
        let resp = match responses.0.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return Gap::Broken(closed()),
            Err(status) => return Gap::Broken(etcd_client::Error::GRpcStatus(status)),
        };
        if resp.compact_revision > 0 {
            return Gap::Compacted;
        }
        if resp.canceled {
            return Gap::Broken(etcd_client::Error::WatchError(format!(
                "cancelled: {}",
                resp.cancel_reason
            )));
        }
        if let Some(h) = &resp.header {
            gw.cache.set_cluster(h.cluster_id, h.member_id, h.raft_term);
        }
        // The header's revision is etcd's current one, not how far this watch got: a
        // `created` answer and the batches of a watch catching up carry it too. Taken
        // as the cache's revision, a break during the catch-up would resume past events
        // never applied. Only a progress notification (sent to a caught-up watcher)
        // vouches for it; otherwise the cache is as far as its last event.
        if resp.created {
            continue;
        }
        match resp
            .events
            .iter()
            .filter_map(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
            .max()
        {
            Some(last) => gw.cache.apply(resp.events, last),
            None => gw
                .cache
                .progress(resp.header.as_ref().map_or(0, |h| h.revision)),
        }
    }
}

fn closed() -> etcd_client::Error {
    etcd_client::Error::WatchError("etcd closed the watch stream".into())
}

/// Keeps the gateway's lease in etcd: granted at start, renewed every TTL/3; when etcd
/// says it is gone (the gateway was cut off longer than the TTL, so etcd deleted every
/// status key on it), a new one is granted and every agent lease is dropped, so the
/// agents register again and their keys come back.
pub async fn keep_gateway_lease(gw: Arc<Gateway>, client: Client, ttl: Duration) {
    let ttl_secs = ttl.as_secs().max(10) as i64;
    let period = Duration::from_secs((ttl_secs / 3).max(1) as u64);
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut lease = client.lease_client();
    loop {
        let id = match gw.lease.id() {
            0 => match lease.grant(ttl_secs, None).await {
                Ok(r) => {
                    let dropped = gw.agent_leases().clear();
                    if dropped > 0 {
                        // Their keys went with the old lease: end their sessions now
                        // (not at their next keepalive, up to 200 s away) so they
                        // register again within seconds.
                        let streams = gw.cache.end_all_streams();
                        tracing::warn!(
                            "gateway: new etcd lease {:x}: {dropped} agent leases dropped, \
                             {streams} watch streams closed; the agents register again",
                            r.id()
                        );
                    }
                    gw.lease.set(r.id());
                    retry.succeeded();
                    r.id()
                }
                Err(e) => {
                    let delay = retry.failed();
                    tracing::warn!("gateway: granting its etcd lease: {e}; again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
            id => id,
        };
        let renewed = tokio::select! {
            r = renew(&mut lease, id, period) => r,
            // The writer found the lease gone first: grant the next one now.
            _ = lost(&gw, id) => Ok(()),
        };
        match renewed {
            Err(e) if lease_gone(&e) => gw.lease.lost(id),
            Err(e) if transient(&e) => {
                let delay = retry.failed();
                tracing::warn!("gateway: keeping lease {id:x}: {e}; again in {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::warn!("gateway: keeping lease {id:x}: {e}");
                tokio::time::sleep(retry.failed()).await;
            }
            Ok(()) => {}
        }
    }
}

/// Resolves once the gateway's lease is no longer `id`.
async fn lost(gw: &Gateway, id: i64) {
    let mut changed = gw.lease.subscribe();
    let _ = changed.wait_for(|current| *current != id).await;
}

/// Renews `id` every `period` on one keepalive stream until it fails.
async fn renew(
    lease: &mut etcd_client::LeaseClient,
    id: i64,
    period: Duration,
) -> Result<(), etcd_client::Error> {
    let (mut keeper, mut answers) = lease.keep_alive(id).await?;
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        keeper.keep_alive().await?;
        let answer = tokio::time::timeout(RPC_TIMEOUT, answers.message())
            .await
            .map_err(|_| timed_out())?;
        match answer? {
            Some(r) if r.ttl() > 0 => {}
            Some(_) => {
                return Err(etcd_client::Error::GRpcStatus(tonic::Status::not_found(
                    "etcdserver: requested lease not found",
                )))
            }
            None => return Err(closed()),
        }
    }
}

/// Ends agent leases past their TTL once a second and deletes their status keys.
pub async fn expire_agent_leases(gw: Arc<Gateway>) {
    let mut tick = interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let keys = gw.agent_leases().expire(std::time::Instant::now());
        if !keys.is_empty() {
            gw.counters
                .expired
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
        for key in keys {
            gw.writer.delete(key).await;
        }
    }
}

/// Writes the gateway's report (`gateways/<name>`, on its lease) every `every`: the
/// agents it serves, so the sum over gateways can be checked against `agents/`.
pub async fn report(gw: Arc<Gateway>, client: Client, every: Duration) {
    let mut tick = interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut kv = client.kv_client();
    loop {
        tick.tick().await;
        let lease = gw.lease.id();
        if lease == 0 || !gw.cache.ready() {
            continue;
        }
        let value = match serde_json::to_vec(&gw.report()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("gateway: report: {e}");
                continue;
            }
        };
        let key = gw.keys.gateway(&gw.name);
        let put = kv.put(key, value, Some(PutOptions::new().with_lease(lease)));
        match tokio::time::timeout(RPC_TIMEOUT, put).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("gateway: report: {e}"),
            Err(_) => tracing::debug!("gateway: report: etcd did not answer"),
        }
    }
}
