//! The event pipeline: one bounded queue from the plugin readers to the sinks, drained by
//! a thread of its own so that a slow sink never stalls supervision.
//!
//! - Local sinks (stdout, files) are written in order; a failing one is counted.
//! - Kafka is sent to directly while it keeps up. When librdkafka's queue fills or a
//!   delivery fails, the pipeline enters *backlog*: every event goes to the disk spool,
//!   in order, and the spool is replayed a segment at a time; a segment is removed only
//!   when Kafka has acknowledged every record in it (so a crash or a failure during
//!   replay means duplicates, never loss). When the spool is empty, events go live again.
//! - Whatever is lost anyway (spool full: its oldest segment; no spool; a message Kafka
//!   refuses) is declared: a `dropped` event of stream `pipeline` names the plugin run
//!   and the exact sequence numbers, so reconciliation can tell declared loss from
//!   undeclared.
//!
//! Memory is bounded by the queue (events), librdkafka's buffer (`queue_kbytes`) and one
//! spool segment in replay.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hids_sink::kafka::{KafkaSink, Origin, SendError};
use hids_sink::spool::Spool;
use hids_sink::Sink;
use hids_types::event::DroppedRange;
use hids_types::status::PipelineStatus;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::events::Emitter;

#[derive(Default)]
pub struct PipelineCounters {
    events_out: AtomicU64,
    kafka_delivered: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    spool_bytes: AtomicU64,
    spool_records: AtomicU64,
    backlog: AtomicBool,
    dropped: Mutex<BTreeMap<String, u64>>,
}

impl PipelineCounters {
    pub fn status(&self) -> PipelineStatus {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PipelineStatus {
            events_out: get(&self.events_out),
            dropped: self
                .dropped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            kafka_delivered: get(&self.kafka_delivered),
            spooled: get(&self.spooled),
            replayed: get(&self.replayed),
            spool_bytes: get(&self.spool_bytes),
            spool_records: get(&self.spool_records),
            backlog: self.backlog.load(Ordering::Relaxed),
        }
    }

    /// Counts a loss by reason (also used for losses found outside the pipeline thread,
    /// such as the spool's recovery at start).
    pub fn count_drop(&self, reason: &str, n: u64) {
        *self
            .dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_owned())
            .or_default() += n;
    }
}

/// Where the pipeline writes.
pub struct Outputs {
    pub local: Vec<Box<dyn Sink>>,
    pub kafka: Option<KafkaSink>,
    pub spool: Option<Spool>,
}

/// How often the pipeline's own stats record is written.
const STATS_EVERY: Duration = Duration::from_secs(60);
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// Starts the pipeline thread. It ends, flushed, when every sender is dropped; events
/// still in Kafka's hands then are spooled, not lost.
pub fn start(
    rx: mpsc::Receiver<Vec<u8>>,
    outputs: Outputs,
    counters: Arc<PipelineCounters>,
    emitter: Emitter,
    stats_offset: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("pipeline cannot start: {e}");
                    return;
                }
            };
            let failing = vec![false; outputs.local.len()];
            let mut p = Pipeline {
                local: outputs.local,
                failing,
                kafka: outputs.kafka.map(|sink| Kafka {
                    sink,
                    // Events left in the spool by the last run go first.
                    backlog: outputs.spool.as_ref().is_some_and(|s| !s.is_empty()),
                    spool: outputs.spool,
                    replay: None,
                    retry_at: Instant::now(),
                    retry_delay: Duration::from_secs(1),
                    refusals: 0,
                }),
                counters,
                emitter,
                pending_declarations: Vec::new(),
            };
            rt.block_on(p.run(rx, stats_offset));
        })
}

struct Replay {
    segment: u64,
    outstanding: usize,
    failed: bool,
    /// The first delivery error of this attempt, for the log.
    error: Option<String>,
}

struct Kafka {
    sink: KafkaSink,
    spool: Option<Spool>,
    backlog: bool,
    replay: Option<Replay>,
    retry_at: Instant,
    retry_delay: Duration,
    /// Replays in a row that the broker answered with a refusal (not a timeout).
    refusals: u32,
}

struct Pipeline {
    local: Vec<Box<dyn Sink>>,
    failing: Vec<bool>,
    kafka: Option<Kafka>,
    counters: Arc<PipelineCounters>,
    emitter: Emitter,
    /// Lost events waiting to be declared (declaring can itself spool and drop).
    pending_declarations: Vec<(Vec<u8>, &'static str)>,
}

impl Pipeline {
    async fn run(&mut self, mut rx: mpsc::Receiver<Vec<u8>>, stats_offset: Duration) {
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stats =
            tokio::time::interval_at(tokio::time::Instant::now() + stats_offset, STATS_EVERY);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        self.handle(ev);
                        // Drain what is queued before paying for a flush.
                        for _ in 0..1024 {
                            match rx.try_recv() {
                                Ok(ev) => self.handle(ev),
                                Err(_) => break,
                            }
                        }
                        self.flush_local();
                    }
                    None => break,
                },
                _ = tick.tick() => self.housekeeping(),
                _ = stats.tick() => self.stats(),
            }
        }
        self.shutdown();
    }

    fn handle(&mut self, ev: Vec<u8>) {
        self.write_local(&ev);
        self.send_kafka(ev);
        self.declare_pending();
    }

    fn write_local(&mut self, ev: &[u8]) {
        if self.local.is_empty() {
            return;
        }
        let mut delivered = false;
        for (sink, failing) in self.local.iter_mut().zip(self.failing.iter_mut()) {
            match sink.write(ev) {
                Ok(()) => {
                    delivered = true;
                    if *failing {
                        tracing::info!("sink {} works again", sink.name());
                        *failing = false;
                    }
                }
                Err(e) => report(sink.name(), failing, &e),
            }
        }
        if delivered {
            self.counters.events_out.fetch_add(1, Ordering::Relaxed);
        } else if self.kafka.is_none() {
            self.pending_declarations.push((ev.to_vec(), "sink_error"));
        }
    }

    fn flush_local(&mut self) {
        for (sink, failing) in self.local.iter_mut().zip(self.failing.iter_mut()) {
            if let Err(e) = sink.flush() {
                report(sink.name(), failing, &e);
            }
        }
    }

    fn send_kafka(&mut self, ev: Vec<u8>) {
        let Some(k) = &mut self.kafka else { return };
        if !k.backlog {
            match k.sink.send(&ev, Origin::Live) {
                Ok(()) => return,
                Err(SendError::QueueFull) if k.spool.is_none() => {
                    // No spool: wait for room, serving delivery reports meanwhile. The
                    // pressure goes back to the plugins, whose bounded queues drop and
                    // count at the source; a netlink reader is never blocked by this.
                    self.send_when_room(ev);
                    return;
                }
                Err(SendError::QueueFull) => {
                    tracing::warn!("kafka is not keeping up (producer queue full); spooling events until it does");
                    k.backlog = true;
                    self.counters.backlog.store(true, Ordering::Relaxed);
                }
                Err(SendError::Other(e)) => {
                    tracing::warn!("kafka refused an event: {e}");
                    self.pending_declarations.push((ev, "kafka_refused"));
                    return;
                }
            }
        }
        self.spool(ev);
    }

    /// Waits until librdkafka takes `ev` (no spool configured). Meanwhile only delivery
    /// reports are served; failures are queued for declaration by the caller's loop,
    /// never declared from in here (a declaration is itself sent to Kafka).
    fn send_when_room(&mut self, ev: Vec<u8>) {
        loop {
            let Some(k) = &mut self.kafka else { return };
            for d in k.sink.poll() {
                match (d.origin, d.error, d.payload) {
                    (Origin::Live, None, _) => {
                        self.counters
                            .kafka_delivered
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    (Origin::Live, Some(_), Some(p)) => {
                        self.pending_declarations.push((p, "kafka_unavailable"))
                    }
                    _ => {}
                }
            }
            match k.sink.send(&ev, Origin::Live) {
                Ok(()) => return,
                Err(SendError::QueueFull) => std::thread::sleep(Duration::from_millis(2)),
                Err(SendError::Other(e)) => {
                    tracing::warn!("kafka refused an event: {e}");
                    self.pending_declarations.push((ev, "kafka_refused"));
                    return;
                }
            }
        }
    }

    fn spool(&mut self, ev: Vec<u8>) {
        let Some(k) = &mut self.kafka else { return };
        let Some(spool) = &mut k.spool else {
            self.pending_declarations.push((ev, "kafka_unavailable"));
            return;
        };
        match spool.append(&ev) {
            Ok(evicted) => {
                self.counters.spooled.fetch_add(1, Ordering::Relaxed);
                if !evicted.is_empty() {
                    tracing::error!(
                        "spool full: dropped its oldest segment ({} events); they are declared as lost",
                        evicted.len()
                    );
                    self.pending_declarations
                        .extend(evicted.into_iter().map(|e| (e, "spool_full")));
                }
            }
            Err(e) => {
                tracing::error!("cannot write to the spool: {e}");
                self.pending_declarations.push((ev, "spool_write_error"));
            }
        }
    }

    /// Declares lost events: counted by reason, and a `dropped` event naming their
    /// sequence ranges. Iterative, because a declaration can itself be spooled and
    /// cause a drop.
    fn declare_pending(&mut self) {
        for _ in 0..16 {
            if self.pending_declarations.is_empty() {
                return;
            }
            let lost = std::mem::take(&mut self.pending_declarations);
            let mut by_reason: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
            for (ev, reason) in lost {
                by_reason.entry(reason).or_default().push(ev);
            }
            for (reason, events) in by_reason {
                self.counters.count_drop(reason, events.len() as u64);
                // A lost declaration is counted, never declared again: that way lies a
                // declaration of a declaration of ...
                let events: Vec<Vec<u8>> =
                    events.into_iter().filter(|e| !is_declaration(e)).collect();
                let ranges = ranges_of(&events, reason);
                if ranges.is_empty() {
                    continue;
                }
                let ev = self.emitter.build("event", "host", "info", "dropped", |h| {
                    h.dropped = Some(ranges)
                });
                self.write_local(&ev);
                self.send_kafka(ev);
            }
        }
    }

    fn housekeeping(&mut self) {
        let Some(k) = &mut self.kafka else { return };
        for e in k.sink.errors() {
            tracing::debug!("kafka: {e}");
        }
        if let Some(fatal) = k.sink.fatal_error() {
            tracing::error!("kafka producer failed for good ({fatal}); starting a new one");
            k.backlog = true;
            if let Err(e) = k.sink.reset() {
                tracing::error!("cannot start a new kafka producer: {e}");
            }
        }
        let mut failed_live = Vec::new();
        for d in k.sink.poll() {
            match d.origin {
                Origin::Live => {
                    match d.error {
                        None => {
                            self.counters
                                .kafka_delivered
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Some(e) => {
                            if !k.backlog {
                                tracing::warn!("kafka delivery failed ({e}); spooling events until it works again");
                            }
                            k.backlog = true;
                            if let Some(p) = d.payload {
                                failed_live.push(p);
                            }
                        }
                    }
                }
                Origin::Spool(_) => {
                    if let Some(r) = &mut k.replay {
                        r.outstanding = r.outstanding.saturating_sub(1);
                        if let Some(e) = d.error {
                            r.failed = true;
                            r.error.get_or_insert(e);
                        } else {
                            self.counters
                                .kafka_delivered
                                .fetch_add(1, Ordering::Relaxed);
                            self.counters.replayed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        // Failed live events go to the spool before anything looks at whether it is
        // empty.
        for p in failed_live.drain(..) {
            self.spool(p);
        }
        let Some(k) = &mut self.kafka else { return };
        if let Some(r) = &k.replay {
            if r.outstanding == 0 {
                let segment = r.segment;
                if r.failed {
                    tracing::warn!(
                        "kafka: sending spool segment {segment} failed ({}); retrying in {:?}",
                        r.error.as_deref().unwrap_or("producer queue full"),
                        k.retry_delay
                    );
                    // The broker answered and refused (rather than not answering): after
                    // an outage an idempotent producer's sequence can be out of step with
                    // a broker that cannot reset it. A new producer starts afresh.
                    let refused = r.error.as_deref().is_some_and(|e| !e.contains("timed out"));
                    k.refusals = if refused { k.refusals + 1 } else { 0 };
                    if k.refusals >= 2 {
                        tracing::warn!("kafka keeps refusing this producer's messages; starting a new producer");
                        k.refusals = 0;
                        if let Err(e) = k.sink.reset() {
                            tracing::error!("cannot start a new kafka producer: {e}");
                        }
                    }
                    k.retry_at = Instant::now() + k.retry_delay;
                    k.retry_delay = (k.retry_delay * 2).min(Duration::from_secs(30));
                } else {
                    if let Some(s) = &mut k.spool {
                        if let Err(e) = s.remove(segment) {
                            tracing::warn!("cannot remove a delivered spool segment: {e}");
                        }
                    }
                    k.retry_delay = Duration::from_secs(1);
                    k.refusals = 0;
                }
                k.replay = None;
            }
        }
        // Invariant: while anything waits in the spool, new events queue behind it.
        if k.spool.as_ref().is_some_and(|s| !s.is_empty()) {
            k.backlog = true;
        }
        if k.backlog && k.replay.is_none() {
            match &mut k.spool {
                Some(s) if !s.is_empty() => {
                    if Instant::now() >= k.retry_at {
                        match s.oldest() {
                            Ok(Some((segment, records))) => {
                                let mut r = Replay {
                                    segment,
                                    outstanding: 0,
                                    failed: false,
                                    error: None,
                                };
                                for rec in &records {
                                    match k.sink.send(rec, Origin::Spool(segment)) {
                                        Ok(()) => r.outstanding += 1,
                                        Err(_) => {
                                            // Sent again, whole, on the next attempt.
                                            r.failed = true;
                                            break;
                                        }
                                    }
                                }
                                if r.outstanding == 0 && r.failed {
                                    k.retry_at = Instant::now() + k.retry_delay;
                                } else {
                                    k.replay = Some(r);
                                }
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!("cannot read the spool: {e}"),
                        }
                    }
                }
                _ => {
                    // Nothing waits: back to sending live. (Without a spool there is
                    // no backlog to keep: what Kafka cannot take is declared lost.)
                    tracing::info!("kafka caught up; events go straight to it again");
                    k.backlog = false;
                }
            }
        }
        if let Some(s) = &mut k.spool {
            if let Err(e) = s.flush() {
                tracing::warn!("cannot flush the spool: {e}");
            }
            self.counters
                .spool_bytes
                .store(s.bytes(), Ordering::Relaxed);
            self.counters
                .spool_records
                .store(s.records(), Ordering::Relaxed);
        }
        self.counters.backlog.store(k.backlog, Ordering::Relaxed);
        self.declare_pending();
    }

    /// The pipeline's periodic record of what it delivered, spooled and dropped.
    fn stats(&mut self) {
        let s = serde_json::to_value(self.counters.status()).ok();
        let ev = self
            .emitter
            .build("metric", "host", "info", "stats", |h| h.stats = s);
        self.handle(ev);
    }

    /// At exit: give Kafka a moment, then spool what it still holds.
    fn shutdown(&mut self) {
        self.stats();
        if let Some(k) = &mut self.kafka {
            k.sink.flush(Duration::from_millis(1500));
            k.sink.purge();
        }
        self.housekeeping();
        self.flush_local();
        if let Some(Kafka { spool: Some(s), .. }) = &mut self.kafka {
            let _ = s.flush();
        }
    }
}

/// Logs a sink failure once per failing spell, not once per event.
fn report(name: &str, failing: &mut bool, e: &std::io::Error) {
    if !*failing {
        tracing::error!("sink {name} failed: {e}; events it cannot take are counted as dropped");
        *failing = true;
    }
}

#[derive(Deserialize)]
struct Ids {
    event: Seq,
    hids: Origin2,
}
#[derive(Deserialize)]
struct Seq {
    sequence: u64,
}
#[derive(Deserialize)]
struct Origin2 {
    plugin: String,
    run_id: String,
}

fn is_declaration(event: &[u8]) -> bool {
    let needle = b"\"action\":\"dropped\"";
    event.windows(needle.len()).any(|w| w == needle)
}

/// Groups lost events into runs of consecutive sequence numbers per plugin run.
fn ranges_of(events: &[Vec<u8>], reason: &str) -> Vec<DroppedRange> {
    let mut ids: Vec<(String, String, u64)> = events
        .iter()
        .filter_map(|e| serde_json::from_slice::<Ids>(e).ok())
        .map(|i| (i.hids.plugin, i.hids.run_id, i.event.sequence))
        .collect();
    ids.sort();
    let mut out: Vec<DroppedRange> = Vec::new();
    for (plugin, run_id, seq) in ids {
        match out.last_mut() {
            Some(r) if r.plugin == plugin && r.run_id == run_id && r.to_seq + 1 == seq => {
                r.to_seq = seq
            }
            Some(r) if r.plugin == plugin && r.run_id == run_id && r.to_seq == seq => {}
            _ => out.push(DroppedRange {
                plugin,
                run_id,
                from_seq: seq,
                to_seq: seq,
                reason: reason.to_owned(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(plugin: &str, run: &str, seq: u64) -> Vec<u8> {
        format!(
            r#"{{"event":{{"sequence":{seq}}},"hids":{{"plugin":"{plugin}","run_id":"{run}"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn lost_events_become_exact_ranges() {
        let lost = vec![
            ev("process", "r1", 5),
            ev("process", "r1", 3),
            ev("process", "r1", 4),
            ev("process", "r1", 9),
            ev("agent", "a", 1),
            b"not json".to_vec(),
        ];
        let r = ranges_of(&lost, "spool_full");
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].plugin.as_str(), r[0].from_seq, r[0].to_seq),
            ("agent", 1, 1)
        );
        assert_eq!((r[1].from_seq, r[1].to_seq), (3, 5));
        assert_eq!((r[2].from_seq, r[2].to_seq), (9, 9));
        assert_eq!(r[2].reason, "spool_full");
    }
}
