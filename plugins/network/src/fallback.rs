//! The snapshot where the kernel allows no socket iterator: sock_diag in every network
//! namespace in use (each dumped once, from a socket created inside it), joined by
//! inode with one bounded walk of `/proc/*/fd` held in a hash map (never `ss -p`'s 256
//! buckets). Namespaces that vanish, processes that exit mid-walk, truncated replies
//! and oversized fd tables are counted, never fatal.

use std::collections::HashSet;
use std::io;

use hids_netlink::sock_diag::{DiagSocket, Family, InetSocket, Protocol};
use hids_procfs::fds::{self, WalkOptions};
use serde::Serialize;

use crate::model::{Holder, SocketRow, Transport};

#[derive(Debug, Clone, Copy)]
pub struct FallbackLimits {
    pub max_fds_per_process: usize,
    pub max_sockets: usize,
    /// Threads walking `/proc/*/fd` side by side.
    pub walk_threads: usize,
}

/// What the sock_diag method did, for the stats record (flattened into the scan's).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FallbackStats {
    #[serde(skip_serializing_if = "is_zero")]
    pub namespaces: u64,
    /// Namespaces gone or unreadable before they could be dumped.
    #[serde(skip_serializing_if = "is_zero")]
    pub namespaces_failed: u64,
    /// sock_diag messages that did not parse, and datagrams cut short.
    #[serde(skip_serializing_if = "is_zero")]
    pub dump_parse_errors: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub dump_truncated: u64,
    /// Sockets no file holds (TIME_WAIT, request sockets): not reported.
    #[serde(skip_serializing_if = "is_zero")]
    pub without_file: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub processes_walked: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub processes_vanished: u64,
    /// Processes whose descriptors could not be read (a hardened `/proc`): their
    /// sockets have no owner.
    #[serde(skip_serializing_if = "is_zero")]
    pub processes_unreadable: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub processes_capped: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub fds_read: u64,
    /// Descriptors beyond `--max-fds-per-process`, not read.
    #[serde(skip_serializing_if = "is_zero")]
    pub fds_skipped: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub inodes_dropped: u64,
    /// Sockets of the dump beyond `--max-sockets`, not reported.
    #[serde(skip_serializing_if = "is_zero")]
    pub dump_over_limit: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Appends every socket in the state masks, one row per holder, to `rows`.
///
/// # Errors
/// Only when `/proc` cannot be listed.
pub fn scan(
    proc_root: &str,
    limits: &FallbackLimits,
    tcp_states: u32,
    udp_states: u32,
    rows: &mut Vec<SocketRow>,
) -> io::Result<FallbackStats> {
    let (sockets, mut stats) = dump(proc_root, limits, tcp_states, udp_states)?;
    let wanted: HashSet<u64> = sockets.iter().map(|(_, s)| s.inode).collect();
    let walk_limits = WalkOptions {
        max_fds_per_process: limits.max_fds_per_process,
        max_inodes: limits.max_sockets,
        threads: limits.walk_threads.max(1),
    };
    let (owners, walk) = fds::socket_owners(proc_root, &walk_limits, Some(&wanted))?;
    stats.processes_walked = walk.processes_walked;
    stats.processes_vanished = walk.processes_vanished;
    stats.processes_unreadable = walk.processes_unreadable;
    stats.processes_capped = walk.processes_capped;
    stats.fds_read = walk.fds_read;
    stats.fds_skipped = walk.fds_skipped;
    stats.inodes_dropped = walk.inodes_dropped;
    drop(wanted);
    for (netns, s) in sockets {
        let row = row(netns, &s);
        match owners.get(&s.inode) {
            Some(held) => rows.extend(held.iter().map(|o| SocketRow {
                holder: Some(Holder {
                    pid: o.pid,
                    fd: i32::try_from(o.fd).unwrap_or(i32::MAX),
                }),
                ..row.clone()
            })),
            None => rows.push(row),
        }
    }
    Ok(stats)
}

/// The sockets in the state masks in every network namespace in use, without holders
/// (sockets no file holds are counted and left out).
///
/// # Errors
/// Only when `/proc` cannot be listed.
pub fn dump(
    proc_root: &str,
    limits: &FallbackLimits,
    tcp_states: u32,
    udp_states: u32,
) -> io::Result<(Vec<(u64, InetSocket)>, FallbackStats)> {
    let mut stats = FallbackStats::default();
    let mut sockets: Vec<(u64, InetSocket)> = Vec::new();
    for (netns, pid) in fds::net_namespaces(proc_root)? {
        stats.namespaces += 1;
        let dumped = std::fs::File::open(format!("{proc_root}/{pid}/ns/net"))
            .map_err(|e| e.to_string())
            .and_then(|ns| DiagSocket::open_in_netns(&ns).map_err(|e| e.to_string()))
            .and_then(|mut diag| {
                let mut into = Into {
                    netns,
                    limits,
                    sockets: &mut sockets,
                    stats: &mut stats,
                };
                dump_namespace(&mut diag, tcp_states, udp_states, &mut into)
            });
        if let Err(e) = dumped {
            stats.namespaces_failed += 1;
            tracing::debug!("network namespace {netns} (pid {pid}) not dumped: {e}");
        }
    }
    Ok((sockets, stats))
}

/// A socket of a dump as a row without holder.
pub fn row(netns: u64, s: &InetSocket) -> SocketRow {
    SocketRow {
        inode: s.inode,
        netns,
        transport: transport(s.protocol),
        state: s.state,
        local: s.local,
        remote: s.remote,
        holder: None,
    }
}

fn transport(protocol: Protocol) -> Transport {
    match protocol {
        Protocol::Tcp => Transport::Tcp,
        Protocol::Udp => Transport::Udp,
    }
}

/// Where one namespace's dump goes.
struct Into<'a> {
    netns: u64,
    limits: &'a FallbackLimits,
    sockets: &'a mut Vec<(u64, InetSocket)>,
    stats: &'a mut FallbackStats,
}

fn dump_namespace(
    diag: &mut DiagSocket,
    tcp_states: u32,
    udp_states: u32,
    into: &mut Into<'_>,
) -> Result<(), String> {
    for family in [Family::V4, Family::V6] {
        for (protocol, states) in [(Protocol::Tcp, tcp_states), (Protocol::Udp, udp_states)] {
            let dump = diag
                .dump(family, protocol, states, |s| {
                    if s.inode == 0 {
                        into.stats.without_file += 1;
                    } else if into.sockets.len() < into.limits.max_sockets {
                        into.sockets.push((into.netns, *s));
                    } else {
                        into.stats.dump_over_limit += 1;
                    }
                })
                .map_err(|e| e.to_string())?;
            into.stats.dump_parse_errors += dump.parse_errors;
            into.stats.dump_truncated += dump.truncated_datagrams;
        }
    }
    Ok(())
}
