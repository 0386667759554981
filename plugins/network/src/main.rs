//! `hids-plugin-network`: what listens and what is connected on the host, with the
//! processes that hold each socket, and the connections processes make and accept.
//!
//! Listeners are scanned every few minutes and reported as a snapshot, then as changes.
//! A full snapshot of every socket with its holders runs on a slower period and when an
//! operator asks (`hidsctl snapshot --plugin network`). Both read the kernel's sockets
//! with a BPF task_file iterator (one pass over every descriptor, no `/proc` reads) or,
//! where the kernel does not allow it, with sock_diag joined with one bounded
//! `/proc/*/fd` walk. Connects and accepts are reported as they happen, folded in the
//! kernel per (process, direction, peer). See docs/network.md.

mod bpf;
mod fallback;
mod listeners;
mod model;
mod record;
mod report;
mod scan;
mod skel;

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hids_plugin_sdk::{Request, Session};
use hids_types::Timestamp;
use serde::Serialize;

use crate::bpf::{BpfOptions, Kernel, KernelCounters};
use crate::fallback::FallbackLimits;
use crate::listeners::{ListenerStats, Listeners};
use crate::model::{group_by_socket, Transport};
use crate::record::ConnEvent;
use crate::report::{Line, Reporter};
use crate::scan::{MethodChoice, Scan, ScanStats, Scanner, Scope};

/// Network plugin of the HIDS agent. Started by `hids-agent`, which passes these
/// options from the plugin's `args` in its configuration. Run from a terminal, it prints
/// events as JSON lines; `--once` prints one full snapshot and exits. Needs root (BPF,
/// other processes' descriptors, other network namespaces).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Print one full snapshot (every listener and connection, with the processes that
    /// hold them) as JSON lines, then a stats line, and exit.
    #[arg(long)]
    once: bool,
    /// With --once: listeners only (TCP listen and unconnected UDP sockets).
    #[arg(long, requires = "once")]
    listeners_only: bool,
    /// With --once --listeners-only: then this many more listener scans the way the
    /// running plugin repeats them (remembered holders confirmed, no walk), each timed
    /// in the stats line (`warm_scans`). For benchmarks.
    #[arg(long, default_value_t = 0, requires = "listeners_only")]
    warm_scans: u32,
    /// How snapshots read sockets. auto: the BPF task_file iterator when the kernel
    /// allows it, else sock_diag joined with one /proc/*/fd walk. bpf_iter or
    /// sock_diag: only that one, or fail.
    #[arg(long, value_enum, default_value_t = MethodChoice::Auto)]
    snapshot_method: MethodChoice,
    /// Seconds between listener scans (the first comes within 10 s of the start, at the
    /// host's offset).
    #[arg(long, default_value_t = 300)]
    listen_interval_secs: u64,
    /// Seconds between full snapshots of every socket; the first comes at the host's
    /// offset within one period. 0: only when an operator asks.
    #[arg(long, default_value_t = 3600)]
    snapshot_interval_secs: u64,
    /// Report connects and accepts as they happen (eBPF).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    connections: bool,
    /// A process's connections to one peer (or accepted from one peer address on one
    /// port) are reported once per this many seconds; the kernel counts the rest
    /// (`hids.socket.folded` on the next report, `live.folded` in the stats).
    #[arg(long, default_value_t = 60)]
    fold_window_secs: u64,
    /// Keys (process, direction, peer) the kernel's fold table holds; the least
    /// recently used is forgotten first, and reported again when it recurs.
    #[arg(long, default_value_t = 16_384)]
    fold_entries: u32,
    /// Ring buffer for connect/accept events, bytes (rounded up to a power of two).
    /// Events that find it full are counted (`live.ring_buffer_full`).
    #[arg(long, default_value_t = 256 * 1024)]
    ring_buffer_bytes: usize,
    /// Socket rows (one per socket and holder) one snapshot holds; beyond it rows are
    /// dropped and counted (`over_limit`). 1,000,000 rows take ~100 MB.
    #[arg(long, default_value_t = 1_000_000)]
    max_sockets: usize,
    /// Listeners remembered between scans.
    #[arg(long, default_value_t = 65_536)]
    max_listeners: usize,
    /// sock_diag method: descriptors read per process; the rest of a huge table is
    /// skipped and counted (`fds_skipped`).
    #[arg(long, default_value_t = 1 << 20)]
    max_fds_per_process: usize,
    /// sock_diag method: threads walking /proc/*/fd side by side (the walk is kernel
    /// time in readlink, which scales with cores; one leaves the others to the host).
    #[arg(long, default_value_t = 1)]
    walk_threads: usize,
    /// Interval of the stats record.
    #[arg(long, default_value_t = 60)]
    stats_interval_secs: u64,
    /// Log level on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Where procfs is mounted.
    #[arg(long, default_value = "/proc", hide = true)]
    proc_root: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    hids_plugin_sdk::init_logging(&args.log_level);
    hids_plugin_sdk::exit_code(run(args))
}

fn run(args: Args) -> io::Result<()> {
    let kernel = load_kernel(&args)?;
    let scanner = Scanner {
        choice: args.snapshot_method,
        max_sockets: args.max_sockets.max(1),
        proc_root: args.proc_root.clone(),
        limits: FallbackLimits {
            max_fds_per_process: args.max_fds_per_process.max(1),
            max_sockets: args.max_sockets.max(1),
            walk_threads: args.walk_threads.max(1),
        },
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut session = if args.once {
        Session::standalone("network", shutdown)
    } else {
        Session::connect_with("network", env!("CARGO_PKG_VERSION"), shutdown)
    }
    .map_err(io::Error::other)?;
    let mut reporter = Reporter::new(session.producer(), session.output(), &args.proc_root);
    if args.once {
        return once(&args, kernel, &scanner, &mut reporter);
    }
    Plugin::new(&args, kernel, scanner, &mut session, reporter).run()
}

/// The kernel programs, or `None` with the reason logged when sock_diag must do.
fn load_kernel(args: &Args) -> io::Result<Option<Kernel>> {
    let wants_live = args.connections && !args.once;
    if args.snapshot_method == MethodChoice::SockDiag && !wants_live {
        return Ok(None);
    }
    if wants_live {
        use hids_procfs::tracefs::{self, Tracefs};
        match tracefs::ensure() {
            Tracefs::Present => {}
            Tracefs::Mounted => tracing::info!(
                "mounted tracefs at /sys/kernel/tracing: the connect/accept tracepoints are \
                 found there"
            ),
            Tracefs::Unavailable(why) => tracing::warn!("{why}"),
        }
    }
    let opts = BpfOptions {
        ring_buffer_bytes: args.ring_buffer_bytes,
        fold_entries: args.fold_entries,
        fold_window: Duration::from_secs(args.fold_window_secs),
        live: wants_live,
    };
    match Kernel::load(&opts) {
        Ok(kernel) => {
            for why in &kernel.missing {
                tracing::warn!("eBPF: {why}");
            }
            Ok(Some(kernel))
        }
        Err(why) if args.snapshot_method == MethodChoice::BpfIter => Err(io::Error::other(
            format!("--snapshot-method bpf_iter: the kernel refused the eBPF programs: {why}"),
        )),
        Err(why) => {
            tracing::warn!(
                "eBPF unavailable ({why}): snapshots read sock_diag and /proc, and no \
                 connect/accept events are reported"
            );
            Ok(None)
        }
    }
}

fn once(
    args: &Args,
    mut kernel: Option<Kernel>,
    scanner: &Scanner,
    reporter: &mut Reporter,
) -> io::Result<()> {
    let scope = if args.listeners_only {
        Scope::Listeners
    } else {
        Scope::All
    };
    let none = Listeners::new(1);
    let mut scan = match scope {
        Scope::Listeners => scanner.scan_listeners(kernel.as_mut(), &none, true)?,
        Scope::All => scanner.scan(kernel.as_mut(), scope)?,
    };
    let mut warm = Vec::new();
    if args.warm_scans > 0 {
        let mut known = Listeners::new(args.max_listeners);
        known.remember(&mut scan, reporter);
        for _ in 0..args.warm_scans {
            let again = scanner.scan_listeners(kernel.as_mut(), &known, false)?;
            warm.push(again.stats);
        }
    }
    report_snapshot(&mut scan, reporter)?;
    let stats = serde_json::json!({
        "events_emitted": reporter.emitted(),
        "snapshot": scan.stats,
        "warm_scans": warm,
    });
    reporter.stats(stats)?;
    reporter.flush()
}

/// Writes a full scan: every socket once, with its holders. A connection whose local
/// port is one a listener of the same namespace listens on was accepted (`ingress`);
/// any other was made from here (`egress`).
fn report_snapshot(scan: &mut Scan, reporter: &mut Reporter) -> io::Result<()> {
    let listening: HashSet<(u64, Transport, u16)> = scan
        .rows
        .iter()
        .filter(|r| r.is_listener())
        .map(|r| (r.netns, r.transport, r.local.port()))
        .collect();
    let capture = scan.stats.method.map_or("unknown", |m| m.name());
    let stats = &mut scan.stats;
    let mut result = Ok(());
    reporter.forget_names();
    group_by_socket(&mut scan.rows, |row, holders| {
        stats.sockets += 1;
        if holders.is_empty() {
            stats.without_owner += 1;
        }
        if result.is_err() {
            return;
        }
        let direction = if row.is_listener() {
            None
        } else if listening.contains(&(row.netns, row.transport, row.local.port())) {
            Some("ingress")
        } else {
            Some("egress")
        };
        stats.reported += 1;
        result = reporter.socket(scan.at, row, holders, Line::Snapshot, direction, capture);
    });
    result
}

/// Listener scans between two that walk every descriptor.
const REFRESH_EVERY: u64 = 12;

/// The stats record: docs/network.md describes each field.
#[derive(Debug, Serialize)]
struct Stats<'a> {
    events_emitted: u64,
    /// The snapshot method this kernel allows (`bpf_iter` or `sock_diag`).
    capture: &'static str,
    /// What eBPF could not do here, and why.
    missing: &'a [String],
    live: &'a LiveStats,
    listeners: &'a ListenerStats,
    last_listener_scan: Option<&'a ScanStats>,
    snapshots: u64,
    last_snapshot: Option<&'a ScanStats>,
    /// The operator's command id of the last snapshot taken on request.
    last_snapshot_request: Option<&'a str>,
    scan_failures: u64,
    requests_dropped: u64,
}

#[derive(Debug, Default, Serialize)]
struct LiveStats {
    enabled: bool,
    /// Connects and accepts the kernel reported, folded, and lost to a full ring.
    reported: u64,
    folded: u64,
    ring_buffer_full: u64,
    connect_table_full: u64,
    malformed: u64,
}

struct Plugin<'s> {
    kernel: Option<Kernel>,
    scanner: Scanner,
    reporter: Reporter,
    session: &'s Session,
    requests: Option<std::sync::mpsc::Receiver<Request>>,
    listeners: Listeners,
    listen_every: Duration,
    snapshot_every: Option<Duration>,
    stats_every: Duration,
    last_listener_scan: Option<ScanStats>,
    last_snapshot: Option<ScanStats>,
    last_request: Option<String>,
    snapshots: u64,
    scan_failures: u64,
}

impl<'s> Plugin<'s> {
    fn new(
        args: &Args,
        kernel: Option<Kernel>,
        scanner: Scanner,
        session: &'s mut Session,
        reporter: Reporter,
    ) -> Self {
        let requests = session.requests();
        Plugin {
            kernel,
            scanner,
            reporter,
            requests,
            session,
            listeners: Listeners::new(args.max_listeners),
            listen_every: Duration::from_secs(args.listen_interval_secs.max(1)),
            snapshot_every: (args.snapshot_interval_secs > 0)
                .then(|| Duration::from_secs(args.snapshot_interval_secs)),
            stats_every: Duration::from_secs(args.stats_interval_secs.max(1)),
            last_listener_scan: None,
            last_snapshot: None,
            last_request: None,
            snapshots: 0,
            scan_failures: 0,
        }
    }

    fn run(mut self) -> io::Result<()> {
        let host = self.session.hello.host_id.clone();
        let start = Instant::now();
        let mut next_listen = start
            + hids_types::stagger::offset(&host, self.listen_every.min(Duration::from_secs(10)));
        let mut next_snapshot = self
            .snapshot_every
            .map(|every| start + hids_types::stagger::offset(&host, every));
        let mut next_stats = start + self.stats_every;
        let conns: Rc<RefCell<Vec<ConnEvent>>> = Rc::default();
        let malformed: Rc<RefCell<u64>> = Rc::default();
        let ring = match &self.kernel {
            Some(k) => k
                .ring(conns.clone(), malformed.clone())
                .map_err(io::Error::other)?,
            None => None,
        };
        let mut live = LiveStats {
            enabled: ring.is_some(),
            ..LiveStats::default()
        };
        tracing::info!(
            "watching sockets ({}); connect/accept events {}",
            self.capability(),
            if live.enabled { "on" } else { "off" }
        );
        let shutdown = self.session.shutdown_flag();
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            let next = [Some(next_listen), next_snapshot, Some(next_stats)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now);
            let wait = next
                .saturating_duration_since(now)
                .min(Duration::from_millis(500));
            match &ring {
                Some(rb) => {
                    // EINTR and friends: the next turn polls again.
                    let _ = rb.poll(wait);
                }
                None => std::thread::sleep(wait),
            }
            self.report_connections(&conns)?;
            let now = Instant::now();
            if now >= next_listen {
                next_listen = now + self.listen_every;
                self.scan_listeners()?;
            }
            let requested = self.take_request();
            if requested || next_snapshot.is_some_and(|t| now >= t) {
                if let Some(every) = self.snapshot_every {
                    next_snapshot = Some(now + every);
                }
                self.reporter.command_id = requested.then(|| self.last_request.clone()).flatten();
                self.full_snapshot()?;
                self.reporter.command_id = None;
            }
            if now >= next_stats {
                next_stats = now + self.stats_every;
                live.malformed = *malformed.borrow();
                self.emit_stats(&mut live)?;
            }
            self.reporter.flush()?;
        }
        live.malformed = *malformed.borrow();
        self.emit_stats(&mut live)?;
        self.reporter.flush()
    }

    fn capability(&self) -> &'static str {
        match &self.kernel {
            Some(k) if k.has_iterator() && self.scanner.choice != MethodChoice::SockDiag => {
                "bpf_iter"
            }
            _ => "sock_diag",
        }
    }

    fn take_request(&mut self) -> bool {
        let Some(rx) = &self.requests else {
            return false;
        };
        match rx.try_recv() {
            Ok(Request::Snapshot { id }) => {
                tracing::info!("command {id}: full snapshot of every socket");
                self.last_request = Some(id);
                true
            }
            Err(_) => false,
        }
    }

    fn report_connections(&mut self, conns: &Rc<RefCell<Vec<ConnEvent>>>) -> io::Result<()> {
        let batch = std::mem::take(&mut *conns.borrow_mut());
        if batch.is_empty() {
            return Ok(());
        }
        let offset = mono_to_wall_ns();
        for conn in &batch {
            let at = Timestamp::from_unix_nanos((i128::from(conn.ts_ns) + offset).max(0) as u64);
            self.reporter.connection(at, conn)?;
        }
        Ok(())
    }

    fn scan_listeners(&mut self) -> io::Result<()> {
        // Remembered holders are trusted while their first one is confirmed; every
        // REFRESH_EVERY scans every descriptor is walked again (new workers sharing a
        // listener, a holder that moved).
        let refresh = self.listeners.stats.scans.is_multiple_of(REFRESH_EVERY);
        let scanned = self
            .scanner
            .scan_listeners(self.kernel.as_mut(), &self.listeners, refresh);
        match scanned {
            Ok(mut scan) => {
                // A pid named in an earlier scan may be another process now.
                self.reporter.forget_names();
                self.listeners.update(&mut scan, &mut self.reporter)?;
                self.last_listener_scan = Some(scan.stats);
            }
            Err(e) => {
                self.scan_failures += 1;
                tracing::warn!("listener scan failed: {e}");
            }
        }
        Ok(())
    }

    fn full_snapshot(&mut self) -> io::Result<()> {
        match self.scanner.scan(self.kernel.as_mut(), Scope::All) {
            Ok(mut scan) => {
                report_snapshot(&mut scan, &mut self.reporter)?;
                self.snapshots += 1;
                tracing::info!(
                    "snapshot: {} sockets by {} in {} ms",
                    scan.stats.sockets,
                    scan.stats.method.map_or("?", |m| m.name()),
                    scan.stats.duration_ms
                );
                self.last_snapshot = Some(scan.stats);
            }
            Err(e) => {
                self.scan_failures += 1;
                tracing::warn!("snapshot failed: {e}");
            }
        }
        Ok(())
    }

    fn emit_stats(&mut self, live: &mut LiveStats) -> io::Result<()> {
        let counters = self
            .kernel
            .as_ref()
            .map_or(KernelCounters::default(), Kernel::counters);
        live.reported = counters.emitted;
        live.folded = counters.folded;
        live.ring_buffer_full = counters.ring_buffer_full;
        live.connect_table_full = counters.connect_table_full;
        let missing: &[String] = self.kernel.as_ref().map_or(&[], |k| &k.missing);
        let stats = Stats {
            events_emitted: self.reporter.emitted(),
            capture: self.capability(),
            missing,
            live,
            listeners: &self.listeners.stats,
            last_listener_scan: self.last_listener_scan.as_ref(),
            snapshots: self.snapshots,
            last_snapshot: self.last_snapshot.as_ref(),
            last_snapshot_request: self.last_request.as_deref(),
            scan_failures: self.scan_failures,
            requests_dropped: self.session.requests_dropped().load(Ordering::Relaxed),
        };
        let value = serde_json::to_value(&stats).map_err(io::Error::other)?;
        self.reporter.stats(value)
    }
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns: the kernel stamps events with the latter.
fn mono_to_wall_ns() -> i128 {
    use rustix::time::{clock_gettime, ClockId};
    let ns = |id| {
        let t = clock_gettime(id);
        i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
    };
    ns(ClockId::Realtime) - ns(ClockId::Monotonic)
}
