//! `hids-gateway`: a watch gateway between many agents and one etcd.
//!
//! Agents connect to a gateway exactly as to etcd (same gRPC protocol, same client
//! code): they grant a lease, write their status key on it, read and watch their
//! `desired/<host_id>` key. The gateway answers from what it holds instead of passing
//! each request on:
//!
//! - one etcd watch on `desired/` feeds a cache that serves every agent's read and
//!   watch ([`cache`]): a fleet-wide push costs etcd one stream per gateway, not one per
//!   agent; documents are relayed byte for byte, signed for their host;
//! - agent leases live in the gateway ([`leases`]): keepalives never reach etcd;
//! - status writes are merged into transactions of up to 128 operations on the
//!   gateway's own etcd lease ([`writer`]); an agent whose lease ends has its key
//!   deleted (only while still on this gateway's lease).
//!
//! Everything a gateway holds can be rebuilt from etcd, so gateways are interchangeable
//! and can restart: agents reconnect (spread by `hash(host_id)`), register on another
//! gateway, and their keys move to that gateway's lease. An etcd restart is invisible
//! to the agents: the gateway keeps their streams, resumes its watch from its revision
//! and keeps its lease (etcd restores leases on restart).

pub mod cache;
pub mod conn;
pub mod leases;
pub mod service;
pub mod upstream;
pub mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use hids_control::gateways::GatewayReport;
use hids_control::Keys;

use crate::cache::Cache;
use crate::leases::Leases;
use crate::writer::{GatewayLease, Writer};

#[derive(Default)]
pub struct Counters {
    /// Agent connections open now.
    pub connections: AtomicU64,
    pub expired: AtomicU64,
    pub watch_streams: AtomicU64,
    pub keepalive_streams: AtomicU64,
    pub blob_reads: AtomicU64,
    pub blob_evicted: AtomicU64,
}

/// Blobs (`blobs/<sha256>`) the agents read, kept up to a byte budget: a push with
/// large settings has every agent read the same blob, etcd serves it once per gateway.
/// A blob's name is its hash, so a kept copy never goes stale.
pub struct BlobCache {
    budget: usize,
    bytes: usize,
    blobs: HashMap<Vec<u8>, Arc<Vec<u8>>>,
    order: VecDeque<Vec<u8>>,
}

impl BlobCache {
    pub fn new(budget: usize) -> Self {
        BlobCache {
            budget,
            bytes: 0,
            blobs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<Arc<Vec<u8>>> {
        self.blobs.get(key).cloned()
    }

    /// Keeps `value`, forgetting the oldest blobs beyond the budget: how many were.
    pub fn insert(&mut self, key: Vec<u8>, value: Arc<Vec<u8>>) -> u64 {
        if value.len() > self.budget || self.blobs.contains_key(&key) {
            return 0;
        }
        self.bytes += value.len();
        self.order.push_back(key.clone());
        self.blobs.insert(key, value);
        let mut evicted = 0;
        while self.bytes > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.blobs.remove(&old) {
                self.bytes -= v.len();
                evicted += 1;
            }
        }
        evicted
    }
}

/// What every part of a running gateway shares.
pub struct Gateway {
    pub keys: Keys,
    pub name: String,
    pub listen: String,
    pub cache: Cache,
    leases: writer::Owners,
    pub lease: Arc<GatewayLease>,
    pub writer: Writer,
    pub blobs: Mutex<BlobCache>,
    pub counters: Counters,
    pub upstream: etcd_client::Client,
    /// Shortest TTL granted to an agent lease, in seconds.
    pub agent_lease_ttl: i64,
    pub report_interval: std::time::Duration,
    started: SystemTime,
}

/// How a gateway is set up.
pub struct Settings {
    pub keys: Keys,
    pub name: String,
    pub listen: String,
    pub lanes: usize,
    pub blob_cache_bytes: usize,
    /// Shortest TTL granted to an agent lease (an agent asking for more gets more).
    pub agent_lease_ttl: std::time::Duration,
    /// How often the gateway writes its report under `gateways/`.
    pub report_interval: std::time::Duration,
}

impl Gateway {
    pub fn new(settings: Settings, upstream: etcd_client::Client) -> Arc<Gateway> {
        let lease = GatewayLease::new();
        let salt = hids_types::stagger::host_hash(&format!(
            "{}-{:?}-{}",
            settings.name,
            SystemTime::now(),
            std::process::id()
        )) as u32;
        let leases: writer::Owners = Arc::new(Mutex::new(Leases::new(salt)));
        let writer = Writer::start(&upstream, &lease, &leases, settings.lanes);
        Arc::new(Gateway {
            keys: settings.keys,
            name: settings.name,
            listen: settings.listen,
            cache: Cache::default(),
            leases,
            lease,
            writer,
            blobs: Mutex::new(BlobCache::new(settings.blob_cache_bytes)),
            counters: Counters::default(),
            upstream,
            agent_lease_ttl: settings.agent_lease_ttl.as_secs() as i64,
            report_interval: settings.report_interval,
            started: SystemTime::now(),
        })
    }

    /// The agents' leases (a plain map; never held across an await).
    pub fn agent_leases(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An agent connection closed: the leases granted on it end.
    pub fn connection_closed(&self, connection: u64) {
        self.counters.connections.fetch_sub(1, Ordering::Relaxed);
        let now = std::time::Instant::now();
        self.agent_leases().connection_closed(connection, now);
    }

    pub fn report(&self) -> GatewayReport {
        let (agents, leases) = {
            let l = self.agent_leases();
            (l.agents() as u64, l.leases() as u64)
        };
        let (desired, watches) = self.cache.sizes();
        let w = &self.writer.counters;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GatewayReport {
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listen: self.listen.clone(),
            lease: self.lease.id(),
            agents,
            leases,
            watches: watches as u64,
            watch_streams: load(&self.counters.watch_streams),
            connections: load(&self.counters.connections),
            desired: desired as u64,
            revision: self.cache.revision(),
            started_unix: unix_secs(self.started),
            reported_unix: unix_secs(SystemTime::now()),
            report_interval_secs: self.report_interval.as_secs(),
            txns: load(&w.txns),
            puts: load(&w.puts),
            deletes: load(&w.deletes),
            write_failures: load(&w.failed),
            write_retries: load(&w.retries),
            expired: load(&self.counters.expired),
            watch_overflows: load(&self.cache.counters.overflowed),
            keepalive_streams: load(&self.counters.keepalive_streams),
            events: load(&self.cache.counters.events),
            delivered: load(&self.cache.counters.delivered),
            blob_reads: load(&self.counters.blob_reads),
            blob_evicted: load(&self.counters.blob_evicted),
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    hids_types::Timestamp(t).unix_secs().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blob_cache_keeps_to_its_budget_oldest_out_first() {
        let mut c = BlobCache::new(10);
        assert_eq!(c.insert(b"a".to_vec(), Arc::new(vec![0; 4])), 0);
        assert_eq!(c.insert(b"b".to_vec(), Arc::new(vec![0; 4])), 0);
        assert_eq!(c.insert(b"c".to_vec(), Arc::new(vec![0; 4])), 1);
        assert!(c.get(b"a").is_none() && c.get(b"c").is_some());
        assert_eq!(c.insert(b"huge".to_vec(), Arc::new(vec![0; 11])), 0);
        assert!(c.get(b"huge").is_none());
    }
}
