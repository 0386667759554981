//! `hids-plugin-inventory`: the software installed on the host.
//!
//! Reads dpkg's and rpm's databases (read-only, without their locks), Python and npm
//! packages, the jars running Java processes have open, the kernel and the OS release.
//! Runs at start and then daily at the host's offset in the day, niced. The server gets
//! the whole list only when its hash changed (or weekly, or when an operator asks with
//! `hidsctl snapshot --plugin inventory`); otherwise the hash alone. A change is also
//! reported package by package (added, removed, upgraded). See docs/inventory.md.

mod collect;
mod dpkg;
mod jar;
mod npm;
mod os;
mod python;
mod report;
mod rpm;
mod state;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hids_plugin_sdk::{Request, Session};
use serde_json::json;

use crate::collect::{Collector, Inventory};
use crate::dpkg::DpkgLimits;
use crate::report::Reporter;
use crate::state::{Sent, StateFile};

/// Inventory plugin of the HIDS agent. Started by `hids-agent`, which passes these
/// options from the plugin's `args` in its configuration. Run from a terminal, it prints
/// events as JSON lines; `--once` prints every package as one line and exits.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Print the inventory, one ECS line per package (`package.*`, and the source package
    /// in `hids.package_source`), then a stats line, and exit.
    #[arg(long)]
    once: bool,
    /// Seconds between inventories; each host runs at its own offset in the period
    /// (hash of its host id), so a fleet does not read its disks at once.
    #[arg(long, default_value_t = 86_400)]
    interval_secs: u64,
    /// Send the whole list at least this often even when unchanged (seconds), so a
    /// server that lost it gets it back.
    #[arg(long, default_value_t = 7 * 86_400)]
    full_every_secs: u64,
    /// Where the last inventory sent is remembered. Default: the directory the agent
    /// gives (HIDS_PLUGIN_STATE_DIR); without one, every inventory is sent whole.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Scheduling niceness the plugin runs at (0-19): reading package databases is
    /// never urgent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    nice: i32,
    /// Largest dpkg status file read (bytes); a larger one is refused and the inventory
    /// not sent. (rpm's database, whose indexes make it larger, may take 2 GiB.)
    #[arg(long, default_value_t = 256 << 20)]
    max_db_bytes: u64,
    /// Most packages one database may hold.
    #[arg(long, default_value_t = 200_000)]
    max_packages: usize,
    /// Serialized packages per inventory event (bytes): under the agent's frame limit
    /// (1 MiB) and hids-server's `kafka.max_event_bytes` (256 KiB by default).
    #[arg(long, default_value_t = 128 << 10)]
    part_bytes: usize,
    /// Log level on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// The file system root the databases are read under (for tests and for reading
    /// a mounted image).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Where procfs is mounted.
    #[arg(long, default_value = "/proc", hide = true)]
    proc_root: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    hids_plugin_sdk::init_logging(&args.log_level);
    hids_plugin_sdk::exit_code(run(args))
}

fn run(args: Args) -> io::Result<()> {
    if args.nice > 0 {
        if let Err(e) = rustix::process::setpriority_process(None, args.nice) {
            tracing::warn!(
                "cannot lower the plugin's priority to nice {}: {e}",
                args.nice
            );
        }
    }
    let collector = Collector {
        root: args.root.clone(),
        proc_root: args.proc_root.clone(),
        dpkg: DpkgLimits {
            max_file_bytes: args.max_db_bytes,
            max_packages: args.max_packages,
            ..DpkgLimits::default()
        },
        rpm: rpm::RpmLimits {
            max_packages: args.max_packages,
            ..rpm::RpmLimits::default()
        },
        languages: python::Limits::default(),
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut session = if args.once {
        Session::standalone("inventory", shutdown)
    } else {
        Session::connect_with("inventory", env!("CARGO_PKG_VERSION"), shutdown)
    }
    .map_err(io::Error::other)?;
    let mut reporter = Reporter::new(session.producer(), session.output(), args.part_bytes);
    if args.once {
        let inventory = collector.collect();
        reporter.package_lines(&inventory)?;
        reporter.stats(stats(&inventory, None))?;
        return match inventory.sources.iter().find_map(|s| s.error.as_ref()) {
            Some(e) => Err(io::Error::other(format!(
                "the inventory is incomplete: {e}"
            ))),
            None => Ok(()),
        };
    }
    let host_id = session.hello.host_id.clone();
    let plugin = Plugin {
        state: StateFile::new(
            args.state_dir
                .or_else(|| std::env::var_os(hids_wire::PLUGIN_STATE_DIR_ENV).map(PathBuf::from))
                .as_deref(),
        ),
        interval: Duration::from_secs(args.interval_secs.max(60)),
        full_every: args.full_every_secs,
        offset: hids_types::stagger::offset(
            &host_id,
            Duration::from_secs(args.interval_secs.max(60)),
        ),
        collector,
        shutdown: session.shutdown_flag(),
    };
    plugin.run(&mut reporter, session.requests())
}

/// An inventory that could not be read whole is tried again this soon.
const RETRY_INCOMPLETE: Duration = Duration::from_secs(15 * 60);

struct Plugin {
    state: StateFile,
    interval: Duration,
    full_every: u64,
    offset: Duration,
    collector: Collector,
    shutdown: Arc<AtomicBool>,
}

impl Plugin {
    /// An inventory at start, then one each period at the host's offset, and one
    /// whenever an operator asks.
    fn run(&self, reporter: &mut Reporter, requests: Option<Receiver<Request>>) -> io::Result<()> {
        let mut command_id = None;
        loop {
            let sent = self.once(reporter, command_id.take())?;
            // A database caught mid-write (dpkg folding its journal, rpm in a
            // transaction) is read again soon, not a day later.
            let wait = if sent {
                self.until_next()
            } else {
                self.until_next().min(RETRY_INCOMPLETE)
            };
            let due = SystemTime::now() + wait;
            loop {
                if self.shutdown.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let left = due.duration_since(SystemTime::now()).unwrap_or_default();
                if left.is_zero() {
                    break;
                }
                // Wakes at least every second to see a shutdown.
                let wait = left.min(Duration::from_secs(1));
                match requests.as_ref().map(|r| r.recv_timeout(wait)) {
                    Some(Ok(Request::Snapshot { id })) => {
                        tracing::info!("inventory asked for by command {id}");
                        command_id = Some(id);
                        break;
                    }
                    Some(Err(RecvTimeoutError::Timeout)) => {}
                    None | Some(Err(RecvTimeoutError::Disconnected)) => std::thread::sleep(wait),
                }
            }
        }
    }

    /// Time until the next run: the next instant that is `offset` past a multiple of
    /// the interval since the epoch.
    fn until_next(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let period = self.interval.as_millis().max(1);
        let into = (now.as_millis() + period - self.offset.as_millis() % period) % period;
        Duration::from_millis(u64::try_from(period - into).unwrap_or(u64::MAX))
    }

    /// One inventory, sent; false when it was incomplete and so not sent.
    fn once(&self, reporter: &mut Reporter, command_id: Option<String>) -> io::Result<bool> {
        let inventory = self.collector.collect();
        if !inventory.complete {
            tracing::warn!(
                "inventory not sent: a package database could not be read (the last one \
                 sent stands); see the stats record"
            );
            return reporter.stats(stats(&inventory, None)).map(|()| false);
        }
        let last = self.state.load();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let unchanged = last.as_ref().is_some_and(|l| l.hash == inventory.hash);
        let whole = !unchanged
            || command_id.is_some()
            || last
                .as_ref()
                .is_some_and(|l| now.saturating_sub(l.full_at) >= self.full_every);
        let changes = match &last {
            Some(l) if !unchanged => Some(reporter.changes(&l.packages, &inventory.packages)?),
            _ => None,
        };
        let events = reporter.inventory(&inventory, whole, command_id.as_deref())?;
        let full_at = match (&last, whole) {
            (Some(l), false) => l.full_at,
            _ => now,
        };
        let sent = Sent {
            hash: inventory.hash.clone(),
            full_at,
            packages: inventory.packages.clone(),
        };
        if let Err(e) = self.state.save(&sent) {
            tracing::warn!("cannot remember the inventory sent: {e}; the next is sent whole");
        }
        let mut figures = stats(&inventory, changes.as_ref());
        figures["sent"] = json!({ "whole": whole, "events": events });
        reporter.stats(figures)?;
        Ok(true)
    }
}

fn stats(inventory: &Inventory, changes: Option<&report::Changes>) -> serde_json::Value {
    let mut v = json!({
        "inventory": {
            "hash": inventory.hash,
            "packages": inventory.packages.len(),
            "complete": inventory.complete,
            "took_ms": inventory.took.as_millis() as u64,
            "os": inventory.os,
            "kernel": inventory.kernel,
        },
        "sources": inventory.sources,
    });
    if let Some(c) = changes {
        v["changes"] = json!({
            "added": c.added, "removed": c.removed, "upgraded": c.upgraded,
            "unreported": c.unreported,
        });
    }
    v
}
