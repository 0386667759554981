//! `hids-plugin-process`: reports every program executed on the host.
//!
//! Two capture backends, one output. eBPF (kernels with BTF): the exec is recorded in
//! the kernel, arguments included, so even a process that exits at once is reported
//! whole. The proc connector (any kernel): the kernel says that a process exec'd and the
//! arguments, executable, user and container are read from `/proc` the moment it is
//! reported; a process gone before that read is still reported, marked incomplete with
//! the reason, and counted. See `docs/events.md` for the events.

mod backend;
mod capture;
mod enrich;
mod table;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::Parser;
use hids_plugin_sdk::Session;

use crate::backend::{Backend, CaptureThread, Started};
use crate::capture::ebpf::EbpfOptions;
use crate::capture::{CaptureConfig, Counters};
use crate::enrich::{Emit, EnrichConfig, Enricher, Running};
use crate::table::Table;

/// Process plugin of the HIDS agent. Started by `hids-agent`, which passes these
/// options from the plugin's `args` in its configuration. Run from a terminal, it prints
/// events as JSON lines (needs root, for the kernel's process events).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where process events come from. auto: eBPF when the kernel has BTF and accepts
    /// the programs (full command lines, even of processes that exit at once), else the
    /// proc connector, saying why. ebpf or cn_proc: only that one, or fail.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    capture: Backend,
    /// eBPF ring buffer between the kernel and the plugin, in bytes (rounded up to a
    /// power of two). Records that find it full are counted (`dropped.ring_buffer_full`).
    /// It is mapped twice into the plugin (for wrap-around reads), so it counts double in
    /// the plugin's RSS once written through.
    #[arg(long, default_value_t = 1 << 20)]
    ring_buffer_bytes: usize,
    /// Event kinds to report, comma-separated: exec, exit, fork, setuid, setgid, setsid.
    #[arg(long, value_delimiter = ',', default_value = "exec,exit,setuid,setgid")]
    emit: Vec<String>,
    /// Longest argument list read per exec, in bytes; longer ones are cut and flagged
    /// (`hids.args_truncated`). eBPF reads at most 24 KiB (its record is built in a
    /// per-CPU map value, which the kernel caps at 32 KiB with the other fields).
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
    /// Bytes of exec data (eBPF records, `/proc` snapshots) the capture queue holds;
    /// beyond it execs are reported without their arguments (eBPF) or `/proc` fields
    /// (proc connector), marked `hids.incomplete: backlog`.
    #[arg(long, default_value_t = 4 << 20)]
    queue_bytes: usize,
    /// Kernel receive buffer for process events (proc connector), in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    recv_buffer_bytes: usize,
    /// Processes the table remembers (for naming parents).
    #[arg(long, default_value_t = 32_768)]
    max_processes: usize,
    /// How long an exited process stays in the table, so late children can name it.
    #[arg(long, default_value_t = 30)]
    exited_linger_secs: u64,
    /// Report the processes already running when capture begins, one `exec` event each
    /// (`event.kind: state`, `hids.snapshot: true`; not kernel threads or zombies), so
    /// that nothing started before the agent stays invisible. They go 32 at a time
    /// between live batches, from the host's offset within 5 s of the start.
    /// `--report-running false` leaves them out.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    report_running: bool,
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
    // Subscribed first, scanned second: a process started during the scan is seen
    // either by the scan or by the events queued meanwhile.
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::sync_channel(args.queue_batches.max(1));
    let (started_tx, started_rx) = mpsc::channel::<anyhow::Result<Started>>();
    let shutdown = Arc::new(AtomicBool::new(false));
    let cfg = CaptureConfig {
        proc_root: args.proc_root.clone(),
        max_args_bytes: args.max_args_bytes.max(256),
        queue_bytes: args.queue_bytes,
        max_pending: args.max_pending_events.max(64),
        linger: Duration::from_micros(args.linger_us),
        only_ids: false,
    };
    let thread = CaptureThread {
        choice: args.capture,
        ebpf: EbpfOptions {
            ring_buffer_bytes: args.ring_buffer_bytes,
            max_args_bytes: cfg.max_args_bytes,
        },
        cfg,
        recv_buffer_bytes: args.recv_buffer_bytes,
        emit_ids: emit.ids(),
        tx,
        counters: counters.clone(),
        shutdown: shutdown.clone(),
        started: started_tx,
    };
    let capture = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || thread.run())?;
    let started = match started_rx.recv() {
        Ok(started) => started?,
        Err(_) => {
            return match capture.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("capture thread ended before it started")),
            }
        }
    };
    // Hello only now: the master takes it to mean that events are being captured.
    let session = Session::connect_with("process", env!("CARGO_PKG_VERSION"), shutdown.clone())?;
    if let Some(why) = &started.fallback {
        tracing::warn!(
            "eBPF capture unavailable ({why}); using the proc connector: command lines of \
             processes that exit at once can be missing"
        );
    }

    let mut table = Table::new(
        args.max_processes,
        Duration::from_secs(args.exited_linger_secs),
    );
    table.scan(&args.proc_root);
    tracing::info!(
        "watching process events ({}); {} processes already running",
        started.backend,
        table.len()
    );
    let running = if args.report_running {
        Running::list(&args.proc_root, &session.producer().host.id)
    } else {
        Running::none()
    };
    let enricher = Enricher::new(
        EnrichConfig {
            capture: started.backend,
            capture_fallback: started.fallback,
            ids_capture: started.ids_capture,
            emit,
            stats_interval: Duration::from_secs(args.stats_interval_secs.max(1)),
        },
        session.producer(),
        session.output(),
        counters,
        table,
    );
    let result = enricher
        .with_running(running, &args.proc_root, args.max_args_bytes.max(256))
        .run(rx);
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
