//! The etcd v3 gRPC services as the agents use them, answered by the gateway: `KV`
//! (read of `desired/<id>` and `blobs/<sha256>`, put of `agents/<id>`), `Watch` (single
//! `desired/` keys) and `Lease` (grant, keepalive, revoke, time-to-live). Anything else
//! an agent does not do is refused with a message saying to use etcd itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use etcd_client::proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{Outgoing, StreamOut};
use crate::conn::ConnInfo;
use crate::leases::LeaseError;
use crate::writer::MAX_VALUE_BYTES;
use crate::Gateway;

/// Keepalive answers queued per stream (a stream carries one lease per agent; a process
/// speaking for many agents opens many streams).
const KEEPALIVE_QUEUE: usize = 64;
/// A blob read passed on to etcd gives up after this (the agent retries, staggered).
const BLOB_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct Services {
    gw: Arc<Gateway>,
    next_stream: Arc<AtomicU64>,
}

impl Services {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Services {
            gw,
            next_stream: Arc::new(AtomicU64::new(1)),
        }
    }

    fn ready(&self) -> Result<(), Status> {
        if self.gw.cache.ready() && self.gw.lease.id() != 0 {
            Ok(())
        } else {
            Err(Status::unavailable(
                "etcdserver: the gateway has not reached etcd yet; try again",
            ))
        }
    }

    fn header(&self) -> Option<PbResponseHeader> {
        Some(self.gw.cache.header())
    }

    /// The host of a single `desired/<id>` key with a valid host id.
    fn desired_host<'a>(&self, key: &'a [u8], range_end: &[u8]) -> Option<&'a str> {
        if !range_end.is_empty() {
            return None;
        }
        valid_host(self.gw.keys.host_of(&self.gw.keys.desired_dir(), key))
    }

    async fn read_blob(&self, key: Vec<u8>) -> Result<Vec<PbKeyValue>, Status> {
        let cached = self
            .gw
            .blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key);
        if let Some(value) = cached {
            return Ok(vec![blob_kv(key, &value)]);
        }
        self.gw.counters.blob_reads.fetch_add(1, Ordering::Relaxed);
        let mut kv = self.gw.upstream.kv_client();
        let resp = tokio::time::timeout(BLOB_READ_TIMEOUT, kv.get(key.clone(), None))
            .await
            .map_err(|_| Status::unavailable("etcd did not answer the blob read; try again"))?
            .map_err(upstream_status)?;
        let Some(found) = resp.0.kvs.into_iter().next() else {
            return Ok(Vec::new());
        };
        let value = Arc::new(found.value.clone());
        let evicted = self
            .gw
            .blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
        self.gw
            .counters
            .blob_evicted
            .fetch_add(evicted, Ordering::Relaxed);
        Ok(vec![found])
    }
}

/// A host id that can be a key (bounded, plain characters): a 4 MiB key name would
/// push a whole transaction of other agents' writes past etcd's request limit.
fn valid_host(host: Option<&str>) -> Option<&str> {
    host.filter(|h| hids_control::keys::check_host_id(h).is_ok())
}

/// The connection a request came on (its leases are its own).
fn connection<T>(request: &Request<T>) -> u64 {
    request.extensions().get::<ConnInfo>().map_or(0, |c| c.id)
}

fn blob_kv(key: Vec<u8>, value: &[u8]) -> PbKeyValue {
    PbKeyValue {
        key,
        value: value.to_vec(),
        version: 1,
        ..Default::default()
    }
}

/// etcd's answer, passed on with its code.
fn upstream_status(e: etcd_client::Error) -> Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => Status::unavailable(other.to_string()),
    }
}

fn not_served(what: &str) -> Status {
    Status::permission_denied(format!(
        "hids-gateway serves agents (their desired/ and blobs/ reads and watches, their \
         agents/ status and leases); {what} goes to etcd itself"
    ))
}

fn lease_status(e: LeaseError) -> Status {
    match e {
        LeaseError::NotFound => Status::not_found(e.to_string()),
        LeaseError::OtherKey { .. } => Status::permission_denied(e.to_string()),
    }
}

#[tonic::async_trait]
impl PbKvService for Services {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        self.ready()?;
        let req = request.into_inner();
        let mut kvs = if self.desired_host(&req.key, &req.range_end).is_some() {
            let read = self.gw.cache.get(&req.key);
            let resp = PbRangeResponse {
                count: i64::from(read.kv.is_some()),
                kvs: read.kv.into_iter().collect(),
                header: Some(read.header),
                more: false,
            };
            return Ok(Response::new(strip(resp, &req)));
        } else if req.range_end.is_empty()
            && valid_host(self.gw.keys.host_of(&self.gw.keys.blobs(), &req.key)).is_some()
        {
            self.read_blob(req.key.clone()).await?
        } else {
            return Err(not_served("this read"));
        };
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        let resp = PbRangeResponse {
            header: self.header(),
            count: kvs.len() as i64,
            kvs,
            more: false,
        };
        Ok(Response::new(strip(resp, &req)))
    }

    type RangeStreamStream = ReceiverStream<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(not_served("a streamed range"))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        self.ready()?;
        let connection = connection(&request);
        let req = request.into_inner();
        let Some(host) = valid_host(self.gw.keys.host_of(&self.gw.keys.agents(), &req.key)) else {
            return Err(not_served("a write outside agents/<host_id>"));
        };
        if req.lease == 0 {
            return Err(Status::invalid_argument(
                "a status key is written on the agent's lease (grant one first)",
            ));
        }
        if req.value.len() > MAX_VALUE_BYTES {
            return Err(Status::invalid_argument(format!(
                "status of {host} is {} bytes; the gateway takes up to {MAX_VALUE_BYTES}",
                req.value.len()
            )));
        }
        let key = self.gw.keys.agent(host);
        self.gw
            .agent_leases()
            .bind(req.lease, connection, &key)
            .map_err(lease_status)?;
        let revision = self.gw.writer.put(key, req.value, req.lease).await?;
        let header = PbResponseHeader {
            revision,
            ..self.gw.cache.header()
        };
        Ok(Response::new(PbPutResponse {
            header: Some(header),
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        _r: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        Err(not_served("a delete"))
    }

    async fn txn(&self, _r: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        Err(not_served("a transaction"))
    }

    async fn compact(
        &self,
        _r: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        Err(not_served("compaction"))
    }
}

/// Applies `count_only` and `keys_only` of the request.
fn strip(mut resp: PbRangeResponse, req: &PbRangeRequest) -> PbRangeResponse {
    if req.count_only {
        resp.kvs.clear();
    } else if req.keys_only {
        resp.kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    resp
}

#[tonic::async_trait]
impl PbWatchService for Services {
    type WatchStream = Outgoing;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Outgoing>, Status> {
        self.ready()?;
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (out, outgoing) = StreamOut::open(id);
        let this = self.clone();
        tokio::spawn(this.serve_watches(request.into_inner(), out));
        Ok(Response::new(outgoing))
    }
}

impl Services {
    /// Creates and cancels the watches of one stream until the agent closes it.
    async fn serve_watches(self, mut requests: Streaming<PbWatchRequest>, out: Arc<StreamOut>) {
        let gw = &self.gw;
        gw.counters.watch_streams.fetch_add(1, Ordering::Relaxed);
        let mut watches: std::collections::HashMap<i64, Vec<u8>> = Default::default();
        let mut next_id: i64 = 0;
        while let Ok(Some(req)) = requests.message().await {
            match req.request_union {
                Some(PbWatchRequestUnion::CreateRequest(create)) => {
                    let watch_id = if create.watch_id != 0 {
                        create.watch_id
                    } else {
                        while watches.contains_key(&next_id) {
                            next_id += 1;
                        }
                        next_id
                    };
                    if self.desired_host(&create.key, &create.range_end).is_none()
                        || watches.contains_key(&watch_id)
                    {
                        out.offer(PbWatchResponse {
                            header: self.header(),
                            watch_id,
                            created: true,
                            canceled: true,
                            cancel_reason: format!(
                                "hids-gateway watches single {} keys, each id once per stream",
                                gw.keys.desired_dir()
                            ),
                            ..Default::default()
                        });
                        continue;
                    }
                    watches.insert(watch_id, create.key.clone());
                    gw.cache
                        .watch(create.key, create.start_revision, watch_id, &out);
                }
                Some(PbWatchRequestUnion::CancelRequest(cancel)) => {
                    if let Some(key) = watches.remove(&cancel.watch_id) {
                        gw.cache.unwatch(&key, out.id, cancel.watch_id);
                    }
                    out.offer(PbWatchResponse {
                        header: self.header(),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    });
                }
                Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                    out.offer(PbWatchResponse {
                        header: self.header(),
                        watch_id: -1,
                        ..Default::default()
                    });
                }
                None => {}
            }
        }
        for (watch_id, key) in watches {
            gw.cache.unwatch(&key, out.id, watch_id);
        }
        gw.counters.watch_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl PbLeaseService for Services {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        self.ready()?;
        let connection = connection(&request);
        let ttl = request.into_inner().ttl.max(self.gw.agent_lease_ttl);
        let (id, ttl) = self
            .gw
            .agent_leases()
            .grant(ttl, connection, Instant::now());
        Ok(Response::new(PbLeaseGrantResponse {
            header: self.header(),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let connection = connection(&request);
        let id = request.into_inner().id;
        let key = self
            .gw
            .agent_leases()
            .revoke(id, connection)
            .map_err(lease_status)?;
        if let Some(key) = key {
            self.gw.writer.delete(key).await;
        }
        Ok(Response::new(PbLeaseRevokeResponse {
            header: self.header(),
        }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<PbLeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE);
        let gw = self.gw.clone();
        let connection = connection(&request);
        let mut requests = request.into_inner();
        tokio::spawn(async move {
            gw.counters
                .keepalive_streams
                .fetch_add(1, Ordering::Relaxed);
            while let Ok(Some(req)) = requests.message().await {
                let ttl = gw
                    .agent_leases()
                    .keep_alive(req.id, connection, Instant::now());
                let resp = PbLeaseKeepAliveResponse {
                    header: Some(gw.cache.header()),
                    id: req.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            gw.counters
                .keepalive_streams
                .fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let connection = connection(&request);
        let req = request.into_inner();
        let found = (self.gw.agent_leases()).time_to_live(req.id, connection, Instant::now());
        let (ttl, granted_ttl, keys) = match found {
            Some((left, granted, key)) => {
                let keys = match (req.keys, key) {
                    (true, Some(k)) => vec![k.into_bytes()],
                    _ => Vec::new(),
                };
                (left, granted, keys)
            }
            None => (-1, 0, Vec::new()),
        };
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header: self.header(),
            id: req.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _r: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        Err(not_served("listing leases"))
    }
}
