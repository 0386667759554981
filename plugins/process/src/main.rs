//! `hids-plugin-process`: reports every program executed on the host.
//!
//! The kernel's proc connector says that a process forked, exec'd or exited; the
//! arguments, executable, user and container are read from `/proc` the moment the exec
//! is reported. A process gone before that read is still reported, marked incomplete
//! with the reason, and counted. See `docs/events.md` for the events.

mod capture;
mod enrich;
mod snapshot;
mod table;
mod users;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::Parser;
use hids_netlink::{ProcSocket, SocketOptions};
use hids_plugin_sdk::Session;
use hids_types::event::Host;

use crate::capture::{CaptureConfig, Counters};
use crate::enrich::{Emit, EnrichConfig, Enricher};
use crate::table::Table;

/// Process plugin of the HIDS agent. Started by `hids-agent`, which passes these
/// options from the plugin's `args` in its configuration. Run from a terminal, it prints
/// events as JSON lines (needs root, for the kernel's process events).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Event kinds to report, comma-separated: exec, exit, fork, setuid, setgid, setsid.
    #[arg(long, value_delimiter = ',', default_value = "exec,exit,setuid,setgid")]
    emit: Vec<String>,
    /// Longest argument list read per exec, in bytes; longer ones are cut and flagged
    /// (`hids.args_truncated`).
    #[arg(long, default_value_t = 32 * 1024)]
    max_args_bytes: usize,
    /// Batches the capture queue holds (a batch is one burst of events, at most 512).
    #[arg(long, default_value_t = 64)]
    queue_batches: usize,
    /// Events the capture thread holds while the queue is full; beyond it events are
    /// dropped and counted.
    #[arg(long, default_value_t = 8192)]
    max_pending_events: usize,
    /// How long a burst may wait for more events before it is handed on, in
    /// microseconds. Longer means fewer wake-ups (less CPU) and later events.
    #[arg(long, default_value_t = 10_000)]
    linger_us: u64,
    /// Bytes of `/proc` data the capture queue holds; beyond it execs are reported
    /// without `/proc` fields (`hids.incomplete: backlog`).
    #[arg(long, default_value_t = 4 << 20)]
    queue_bytes: usize,
    /// Kernel receive buffer for process events, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    recv_buffer_bytes: usize,
    /// Processes the table remembers (for naming parents).
    #[arg(long, default_value_t = 32_768)]
    max_processes: usize,
    /// How long an exited process stays in the table, so late children can name it.
    #[arg(long, default_value_t = 30)]
    exited_linger_secs: u64,
    /// Interval of the stats record (produced, dropped, incomplete counts).
    #[arg(long, default_value_t = 60)]
    stats_interval_secs: u64,
    /// Log level on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Where procfs is mounted.
    #[arg(long, default_value = "/proc", hide = true)]
    proc_root: String,
}

fn parse_emit(kinds: &[String]) -> anyhow::Result<Emit> {
    let mut emit = Emit::default();
    for k in kinds {
        match k.trim() {
            "exec" => emit.exec = true,
            "exit" => emit.exit = true,
            "fork" => emit.fork = true,
            "setuid" => emit.setuid = true,
            "setgid" => emit.setgid = true,
            "setsid" => emit.setsid = true,
            "" => {}
            other => anyhow::bail!(
                "unknown event kind {other:?} in --emit; use exec, exit, fork, setuid, setgid, setsid"
            ),
        }
    }
    Ok(emit)
}

fn main() -> ExitCode {
    let args = Args::parse();
    hids_plugin_sdk::init_logging(&args.log_level);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let emit = parse_emit(&args.emit)?;
    let session = Session::connect("process", env!("CARGO_PKG_VERSION"))?;
    let sock = ProcSocket::open(&SocketOptions {
        recv_buffer_bytes: args.recv_buffer_bytes,
        recv_timeout: Duration::from_millis(500),
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot subscribe to the kernel's process events ({e}); this needs root \
             (CAP_NET_ADMIN) in the host's initial namespaces and a kernel with \
             CONFIG_PROC_EVENTS"
        )
    })?;

    // Subscribed first, scanned second: a process started during the scan is seen
    // either by the scan or by the events queued meanwhile.
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::sync_channel(args.queue_batches.max(1));
    let shutdown = session.shutdown_flag();
    let capture = {
        let cfg = CaptureConfig {
            proc_root: args.proc_root.clone(),
            max_args_bytes: args.max_args_bytes.max(256),
            queue_bytes: args.queue_bytes,
            max_pending: args.max_pending_events.max(64),
            linger: Duration::from_micros(args.linger_us),
        };
        let counters = counters.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture::run(sock, tx, cfg, counters, shutdown))?
    };

    let mut table = Table::new(
        args.max_processes,
        Duration::from_secs(args.exited_linger_secs),
    );
    table.scan(&args.proc_root);
    tracing::info!(
        "watching process events (cn_proc); {} processes already running",
        table.len()
    );
    let host = Host {
        id: session.hello.host_id.as_str().into(),
        hostname: session.hello.hostname.as_str().into(),
    };
    let enricher = Enricher::new(
        EnrichConfig {
            emit,
            stats_interval: Duration::from_secs(args.stats_interval_secs.max(1)),
        },
        host,
        session.hello.plugin.as_str().into(),
        session.hello.run_id.as_str().into(),
        session.output(),
        counters,
        table,
    );
    let result = enricher.run(rx);
    // Whatever ended the enricher (stdout closed, shutdown), the capture thread follows.
    shutdown.store(true, Ordering::SeqCst);
    match capture.join() {
        Ok(Err(e)) => return Err(e),
        Err(_) => anyhow::bail!("capture thread panicked"),
        Ok(Ok(())) => {}
    }
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
