//! What a watch gateway (`hids-gateway`) reports about itself under `gateways/<name>`,
//! one definition for the gateway that writes it and `hidsctl gateways` that checks it.
//!
//! The original design's health signal was "active watch streams = agents": with
//! gateways in front of etcd, etcd sees one stream per gateway, so each gateway says how
//! many agents it speaks for, and `hidsctl gateways` checks that against the status
//! keys on the gateway's lease.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayReport {
    pub name: String,
    pub version: String,
    /// Where agents connect.
    pub listen: String,
    /// The gateway's etcd lease: every status key it writes is on it.
    pub lease: i64,
    /// Status keys the gateway owns (agents it speaks for).
    pub agents: u64,
    /// Agent leases held (an agent between grant and first status write has one but no key).
    pub leases: u64,
    /// Agent watches and the streams carrying them.
    pub watches: u64,
    pub watch_streams: u64,
    /// Agent connections open (a process speaking for many agents, like the simulator,
    /// uses few).
    pub connections: u64,
    /// Desired states cached, and the etcd revision the cache is complete up to.
    pub desired: u64,
    pub revision: i64,
    /// Seconds since the Unix epoch when the gateway started, and when it wrote this.
    pub started_unix: u64,
    pub reported_unix: u64,
    /// How often it writes this report: one older than three of these is stale (the
    /// gateway is gone; the report leaves with its lease).
    pub report_interval_secs: u64,
    /// Status transactions committed, and puts and deletes in them.
    pub txns: u64,
    pub puts: u64,
    pub deletes: u64,
    /// Writes failed or given up, and transactions retried.
    pub write_failures: u64,
    pub write_retries: u64,
    /// Agent leases that ended unrenewed or with their connection.
    pub expired: u64,
    /// Agent watches whose stream was full when a response came (the stream was
    /// closed; its agents' sessions end and register again).
    pub watch_overflows: u64,
    /// Agent keepalive streams open; desired-state events taken from etcd and watch
    /// responses sent to agents; blobs read from etcd and blobs forgotten for room.
    #[serde(default)]
    pub keepalive_streams: u64,
    #[serde(default)]
    pub events: u64,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub blob_reads: u64,
    #[serde(default)]
    pub blob_evicted: u64,
}

impl GatewayReport {
    /// Written more than three report intervals before `now_unix`: its gateway is
    /// gone or cut off from etcd.
    pub fn stale(&self, now_unix: u64) -> bool {
        now_unix.saturating_sub(self.reported_unix) > 3 * self.report_interval_secs.max(1)
    }
}
