//! One scan of the host's sockets with their holders, by whichever method is allowed:
//! the BPF task_file iterator ([`crate::bpf`]), or sock_diag in every network namespace
//! joined with one bounded `/proc/*/fd` walk ([`crate::fallback`]). Both produce the same
//! rows and say which was used.

use std::collections::HashSet;
use std::io;
use std::time::Instant;

use hids_types::Timestamp;
use serde::Serialize;

use crate::bpf::Kernel;
use crate::fallback::{self, FallbackLimits};
use crate::listeners::Listeners;
use crate::model::{SocketRow, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
use hids_procfs::fds::{self, FdOwner};

/// How snapshots are taken, as `--snapshot-method` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodChoice {
    /// The iterator when the kernel allows it, else sock_diag and /proc.
    Auto,
    /// Only the iterator, or fail.
    #[value(name = "bpf_iter")]
    BpfIter,
    /// Only sock_diag and /proc.
    #[value(name = "sock_diag")]
    SockDiag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    BpfIter,
    SockDiag,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::BpfIter => "bpf_iter",
            Method::SockDiag => "sock_diag",
        }
    }
}

/// Which sockets a scan wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// TCP listeners and unconnected UDP sockets.
    Listeners,
    /// Every TCP and UDP socket.
    All,
}

impl Scope {
    /// State masks (bit N = kernel state N) for TCP and UDP.
    pub fn masks(self) -> (u32, u32) {
        match self {
            Scope::Listeners => (1 << TCP_LISTEN, 1 << TCP_CLOSE),
            Scope::All => (u32::MAX, (1 << TCP_CLOSE) | (1 << TCP_ESTABLISHED)),
        }
    }
}

/// What one scan did, for the stats record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanStats {
    pub method: Option<Method>,
    /// Sockets found (each once, whatever its number of holders).
    pub sockets: u64,
    /// Socket lines written.
    pub reported: u64,
    /// Sockets no process was found holding.
    pub without_owner: u64,
    /// Rows beyond `--max-sockets`, not reported.
    pub over_limit: u64,
    pub duration_ms: u64,
    /// Iterator records read, malformed, and `EAGAIN`s retried.
    pub records: u64,
    pub malformed: u64,
    pub eagain: u64,
    /// Listener walks redone by the task_file iterator (a process with over 511
    /// listeners overflows the faster walker's output).
    #[serde(skip_serializing_if = "is_zero")]
    pub listener_walker_overflow: u64,
    /// Listener scans: listeners whose remembered holder was confirmed with one
    /// readlink instead of a walk over every descriptor.
    #[serde(skip_serializing_if = "is_zero")]
    pub owners_confirmed: u64,
    /// Listener scans: why the remembered holders could not be used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub walked_because: Option<&'static str>,
    /// Why the iterator was not used, when `auto` fell back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    #[serde(flatten)]
    pub fallback: fallback::FallbackStats,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub struct Scan {
    pub at: Timestamp,
    pub rows: Vec<SocketRow>,
    pub stats: ScanStats,
}

pub struct Scanner {
    pub choice: MethodChoice,
    pub max_sockets: usize,
    pub proc_root: String,
    pub limits: FallbackLimits,
}

impl Scanner {
    /// Scans once. Rows beyond `max_sockets` are dropped and counted.
    ///
    /// # Errors
    /// When the chosen method cannot run at all (not when sockets or processes vanish
    /// mid-scan: those are counted).
    pub fn scan(&self, kernel: Option<&mut Kernel>, scope: Scope) -> io::Result<Scan> {
        let started = Instant::now();
        let at = Timestamp::now();
        let mut rows = Vec::new();
        let mut stats = ScanStats::default();
        let iterator = kernel.filter(|k| k.has_iterator());
        match (self.choice, iterator) {
            (MethodChoice::Auto | MethodChoice::BpfIter, Some(kernel)) => {
                let (tcp, udp) = scope.masks();
                match kernel.walk(tcp, udp, self.max_sockets, &mut rows) {
                    Ok(walk) => {
                        stats.method = Some(Method::BpfIter);
                        stats.over_limit = walk.over_limit;
                        stats.listener_walker_overflow = walk.listener_walker_overflow;
                        stats.records = walk.records;
                        stats.malformed = walk.malformed;
                        stats.eagain = walk.eagain;
                    }
                    Err(e) if self.choice == MethodChoice::Auto => {
                        rows.clear();
                        stats.fallback_reason = Some(format!("the socket iterator failed: {e}"));
                        self.fallback(scope, &mut rows, &mut stats)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            (MethodChoice::BpfIter, None) => {
                return Err(io::Error::other(
                    "--snapshot-method bpf_iter: the kernel did not accept the socket iterator \
                     (needs Linux 5.8+ with BTF); use auto or sock_diag",
                ))
            }
            (MethodChoice::Auto, None) => {
                stats.fallback_reason = Some("the socket iterator is not loaded".into());
                self.fallback(scope, &mut rows, &mut stats)?;
            }
            (MethodChoice::SockDiag, _) => self.fallback(scope, &mut rows, &mut stats)?,
        }
        if rows.len() > self.max_sockets {
            stats.over_limit += (rows.len() - self.max_sockets) as u64;
            rows.truncate(self.max_sockets);
        }
        stats.duration_ms = started.elapsed().as_millis() as u64;
        Ok(Scan { at, rows, stats })
    }

    /// A listener scan that reuses what the last one learnt. sock_diag lists the
    /// listeners of every namespace (a fraction of a millisecond each: the kernel keeps
    /// them in their own table), and each listener's remembered holder is confirmed
    /// with one readlink of `/proc/<pid>/fd/<fd>`. Only a new listener, a holder that
    /// let go, or a refresh makes it walk every descriptor, which at 300,000 sockets is
    /// hundreds of milliseconds even in the kernel.
    ///
    /// # Errors
    /// As [`Scanner::scan`].
    pub fn scan_listeners(
        &self,
        mut kernel: Option<&mut Kernel>,
        known: &Listeners,
        refresh: bool,
    ) -> io::Result<Scan> {
        let started = Instant::now();
        let at = Timestamp::now();
        let (tcp, udp) = Scope::Listeners.masks();
        let (sockets, fallback) = fallback::dump(&self.proc_root, &self.limits, tcp, udp)?;
        let mut rows = Vec::with_capacity(sockets.len());
        let mut confirmed = 0u64;
        let mut walk_because = if refresh {
            Some("refresh")
        } else if fallback.namespaces_failed > 0 {
            // A namespace not dumped would look as if its listeners had closed.
            Some("a network namespace could not be dumped")
        } else {
            None
        };
        for (netns, socket) in &sockets {
            if walk_because.is_some() {
                break;
            }
            let row = fallback::row(*netns, socket);
            match known.holders(socket.inode) {
                None => walk_because = Some("a new listener"),
                // A socket no process holds (the kernel's own): nothing to confirm.
                Some([]) => rows.push(row),
                Some(holders) => {
                    let first = FdOwner {
                        pid: holders[0].pid,
                        fd: u32::try_from(holders[0].fd).unwrap_or(u32::MAX),
                    };
                    if !fds::holds_socket(&self.proc_root, first, socket.inode) {
                        walk_because = Some("a listener's holder let go of it");
                        continue;
                    }
                    confirmed += 1;
                    rows.extend(holders.iter().map(|h| SocketRow {
                        holder: Some(*h),
                        ..row.clone()
                    }));
                }
            }
        }
        if walk_because.is_none() {
            walk_because = self.missing_but_held(&sockets, known);
        }
        if let Some(why) = walk_because {
            let mut scan = self.scan(kernel.take(), Scope::Listeners)?;
            // What the walk did not find held stays a listener, without holder.
            let held: HashSet<u64> = scan.rows.iter().map(|r| r.inode).collect();
            for (netns, socket) in &sockets {
                if !held.contains(&socket.inode) {
                    scan.rows.push(fallback::row(*netns, socket));
                }
            }
            scan.stats.walked_because = Some(why);
            return Ok(scan);
        }
        let stats = ScanStats {
            method: Some(Method::SockDiag),
            owners_confirmed: confirmed,
            duration_ms: started.elapsed().as_millis() as u64,
            fallback,
            ..ScanStats::default()
        };
        Ok(Scan { at, rows, stats })
    }

    /// A remembered listener sock_diag did not list although its holder still holds it:
    /// it lives in a network namespace no process is in (kept by a bind mount), which
    /// only a walk sees. Without this it would be reported closed, then open again at
    /// the next refresh.
    fn missing_but_held(
        &self,
        dumped: &[(u64, hids_netlink::sock_diag::InetSocket)],
        known: &Listeners,
    ) -> Option<&'static str> {
        let listed: HashSet<u64> = dumped.iter().map(|(_, s)| s.inode).collect();
        known
            .remembered()
            .filter(|(inode, _)| !listed.contains(inode))
            .any(|(inode, holders)| {
                holders.first().is_some_and(|h| {
                    let owner = FdOwner {
                        pid: h.pid,
                        fd: u32::try_from(h.fd).unwrap_or(u32::MAX),
                    };
                    fds::holds_socket(&self.proc_root, owner, inode)
                })
            })
            .then_some("a listener sock_diag did not list is still held")
    }

    fn fallback(
        &self,
        scope: Scope,
        rows: &mut Vec<SocketRow>,
        stats: &mut ScanStats,
    ) -> io::Result<()> {
        stats.method = Some(Method::SockDiag);
        let (tcp, udp) = scope.masks();
        stats.fallback = fallback::scan(&self.proc_root, &self.limits, tcp, udp, rows)?;
        Ok(())
    }
}
