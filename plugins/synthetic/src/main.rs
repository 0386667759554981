//! `hids-plugin-synthetic`: emits synthetic events through the normal plugin protocol,
//! at a set rate and size, with the same accounting fields as real plugins. For pipeline
//! tests and benchmarks: it measures the path from plugin to sink, not any capture.
//! Once done, it answers each of the master's requests (an operator's `snapshot`
//! command) with one `snapshot_requested` event, so tests can see a request arrive.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use clap::Parser;
use hids_plugin_sdk::{Output, Request, Session};
use hids_types::event::Producer;
use hids_types::Timestamp;

/// Synthetic event generator (a test and benchmark plugin).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Events to emit in all; then it idles until stopped.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Events per second (0: as fast as the pipe takes them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Bytes of filler per event, to set the event size.
    #[arg(long, default_value_t = 200)]
    pad: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    hids_plugin_sdk::init_logging("info");
    let mut session = Session::connect("synthetic", env!("CARGO_PKG_VERSION"))?;
    let requests = session.requests();
    let out = session.output();
    let stop = session.shutdown_flag();
    let producer = session.producer();
    let pad = "x".repeat(args.pad);
    let event = |kind: &str, category: &str, action: &str, seq: u64| {
        producer.event(Timestamp::now(), seq, kind, category, "info", action)
    };
    let start = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut emitted = 0;
    for seq in 1..=args.count {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(seq as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                out.flush()?;
                std::thread::sleep(wait);
            }
        }
        let mut ev = event("event", "process", "synthetic", seq);
        ev.hids.tty = Some(pad.clone());
        buf.clear();
        serde_json::to_writer(&mut buf, &ev)?;
        out.event(&buf)?;
        emitted = seq;
    }
    // A closing stats record, like real plugins write: it tells reconciliation how many
    // events this run produced, so a lost tail is visible too. What was emitted, not what
    // was asked for: a run stopped early (the guard, a shutdown) must not claim events
    // it never sent, or reconciliation reports them missing.
    let stats = serde_json::json!({
        "events_emitted": emitted,
        "stopped_early": emitted < args.count,
        "elapsed_secs": start.elapsed().as_secs_f64(),
    });
    let mut ev = event("metric", "host", "stats", emitted + 1);
    ev.hids.stats = Some(stats.clone());
    out.event(&serde_json::to_vec(&ev)?)?;
    out.flush()?;
    out.health(&serde_json::to_vec(&stats)?)?;
    let mut seq = emitted + 1;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match requests
            .as_ref()
            .map(|r| r.recv_timeout(Duration::from_millis(100)))
        {
            Some(Ok(request)) => {
                seq += 1;
                answer(&out, &producer, seq, request)?;
            }
            Some(Err(RecvTimeoutError::Timeout)) => {}
            // Standalone, or the master is gone (the shutdown flag follows).
            None | Some(Err(RecvTimeoutError::Disconnected)) => {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// One event per request: `event.action` "snapshot_requested", with the operator's
/// command id as `hids.command_id`.
fn answer(out: &Output, producer: &Producer, seq: u64, request: Request) -> anyhow::Result<()> {
    let Request::Snapshot { id } = request;
    let ev = producer.event(
        Timestamp::now(),
        seq,
        "event",
        "host",
        "info",
        "snapshot_requested",
    );
    let mut ev = serde_json::to_value(ev)?;
    if let Some(hids) = ev
        .get_mut("hids")
        .and_then(serde_json::Value::as_object_mut)
    {
        hids.insert("command_id".into(), id.into());
    }
    out.event(&serde_json::to_vec(&ev)?)?;
    Ok(out.flush()?)
}
