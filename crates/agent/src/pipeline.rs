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
//! - A poison record (one Kafka can never take: too large, topic not authorized) is
//!   declared and skipped, never retried forever in front of everything behind it.
//! - The end of every run is declared too (`run_end`, with the last sequence number the
//!   master took from it): when a plugin starts a new run, and for every stream at stop.
//!   Loss at the tail of a run is then as visible as loss in its middle.
//! - At stop, what Kafka has not acknowledged within the stop budget is taken back and
//!   spooled (replayed at the next start), or declared when there is no spool.
//!
//! Memory is bounded by the queue (events and bytes), librdkafka's buffer
//! (`queue_kbytes`) and one spool segment in replay.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hids_sink::kafka::{KafkaSink, Origin, SendError};
use hids_sink::spool::{Handback, Spool};
use hids_sink::Sink;
use hids_types::event::{DroppedRange, EventIds, RunEnd};
use hids_types::stagger::Backoff;
use hids_types::status::PipelineStatus;
use tokio::sync::mpsc;

use crate::events::Emitter;
use crate::queue::{Position, Queued};

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
    /// The agent's own events that found the queue full, to be declared by the pipeline
    /// (their sequence numbers are known). Bounded; past it they are only counted.
    lost_agent_events: Mutex<Vec<Vec<u8>>>,
}

/// Agent events kept for declaration at most (the rest only counted).
const LOST_AGENT_EVENTS_MAX: usize = 1024;

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

    /// An event of the agent's own stream that could not be queued: declared lost by
    /// the pipeline at its next housekeeping (counted then, as `agent_events_queue_full`).
    pub fn agent_event_lost(&self, event: Vec<u8>) {
        let mut lost = self
            .lost_agent_events
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if lost.len() < LOST_AGENT_EVENTS_MAX {
            lost.push(event);
        } else {
            drop(lost);
            self.count_drop("agent_events_queue_full", 1);
        }
    }

    fn take_lost_agent_events(&self) -> Vec<Vec<u8>> {
        std::mem::take(
            &mut *self
                .lost_agent_events
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
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
    /// How often the spool is forced to disk (zero: after every batch).
    pub fsync_interval: Duration,
}

/// When the agent must be gone: set by the master when it starts stopping, read by the
/// pipeline to size its last wait for Kafka.
pub type StopBy = Arc<OnceLock<Instant>>;

/// Time kept back from the stop budget for taking back what Kafka holds and spooling it.
const SPOOL_RESERVE: Duration = Duration::from_millis(500);
/// The longest the pipeline waits at stop for Kafka to acknowledge what it holds.
const KAFKA_AT_STOP: Duration = Duration::from_secs(2);

/// How often the pipeline's own stats record is written.
const STATS_EVERY: Duration = Duration::from_secs(60);
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// Starts the pipeline thread. It ends, flushed, when every sender is dropped; events
/// Kafka has not acknowledged by `stop_by` are then spooled, not lost.
pub fn start(
    rx: mpsc::Receiver<Queued>,
    outputs: Outputs,
    counters: Arc<PipelineCounters>,
    emitter: Emitter,
    stats_offset: Duration,
    stop_by: StopBy,
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
                    poisoned: None,
                    retry_at: Instant::now(),
                    retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
                    refusals: 0,
                    fsync_interval: outputs.fsync_interval,
                    next_sync: Instant::now() + outputs.fsync_interval,
                }),
                counters,
                emitter,
                pending_declarations: Vec::new(),
                runs: BTreeMap::new(),
            };
            rt.block_on(p.run(rx, stats_offset));
            p.shutdown(stop_by.get().copied());
        })
}

struct Replay {
    segment: u64,
    /// The segment's records: a poison one is declared from its bytes.
    records: Vec<Vec<u8>>,
    outstanding: usize,
    /// A record failed in a way a retry can cure: the segment goes again later.
    failed: bool,
    /// The first delivery error of this attempt, for the log.
    error: Option<String>,
    /// It holds the spool's last segment: new events go live behind it (librdkafka
    /// sends them after it, in order) instead of into a spool that, under a steady
    /// stream of events, would never be seen empty.
    last: bool,
}

struct Kafka {
    sink: KafkaSink,
    spool: Option<Spool>,
    backlog: bool,
    replay: Option<Replay>,
    /// Records of one segment Kafka refused for good and that were declared lost: never
    /// sent again when the segment is retried for its other records.
    poisoned: Option<(u64, BTreeSet<usize>)>,
    retry_at: Instant,
    retry: Backoff,
    /// Replays in a row that the broker answered with a refusal (not a timeout).
    refusals: u32,
    fsync_interval: Duration,
    next_sync: Instant,
}

struct Pipeline {
    local: Vec<Box<dyn Sink>>,
    failing: Vec<bool>,
    kafka: Option<Kafka>,
    counters: Arc<PipelineCounters>,
    emitter: Emitter,
    /// Lost events waiting to be declared (declaring can itself spool and drop).
    pending_declarations: Vec<(Vec<u8>, &'static str)>,
    /// The current run of every stream seen, and the last sequence number taken from it.
    runs: BTreeMap<Arc<str>, Position>,
}

impl Pipeline {
    async fn run(&mut self, mut rx: mpsc::Receiver<Queued>, stats_offset: Duration) {
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stats =
            tokio::time::interval_at(tokio::time::Instant::now() + stats_offset, STATS_EVERY);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        self.take(ev);
                        // Drain what is queued before paying for a flush.
                        for _ in 0..1024 {
                            match rx.try_recv() {
                                Ok(ev) => self.take(ev),
                                Err(_) => break,
                            }
                        }
                        self.flush_local();
                        self.sync_spool_if_due(false);
                    }
                    None => break,
                },
                _ = tick.tick() => self.housekeeping(),
                _ = stats.tick() => self.stats(),
            }
        }
    }

    /// An event from the queue: noted as its run's latest, then handled.
    fn take(&mut self, ev: Queued) {
        let Queued {
            bytes, position, ..
        } = ev;
        let previous = self.runs.insert(position.plugin.clone(), position.clone());
        if let Some(old) = previous.filter(|old| old.run_id != position.run_id) {
            self.declare_ends(vec![run_end(&old, "superseded")]);
        }
        self.handle(bytes);
    }

    fn handle(&mut self, ev: Vec<u8>) {
        self.write_local(&ev);
        self.send_kafka(ev);
        self.declare_pending();
    }

    /// A `run_end` event on the pipeline's stream.
    fn declare_ends(&mut self, ended: Vec<RunEnd>) {
        let ev = self.emitter.build("event", "host", "info", "run_end", |h| {
            h.ended = Some(ended)
        });
        self.handle(ev);
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
                Err(e) => {
                    report(sink.name(), failing, &e.source);
                    // This event is declared below if no output took it; those written
                    // earlier and lost with it are counted.
                    self.counters
                        .count_drop("sink_write_error", e.lost_events.saturating_sub(1));
                }
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
                report(sink.name(), failing, &e.source);
                self.counters.count_drop("sink_write_error", e.lost_events);
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
                Err(SendError::Poison(e)) => {
                    tracing::warn!("kafka refused an event for good: {e}");
                    self.pending_declarations.push((ev, "kafka_refused"));
                    return;
                }
                Err(SendError::Other(e)) => {
                    tracing::warn!(
                        "kafka cannot take events now ({e}); spooling them until it can"
                    );
                    k.backlog = true;
                    self.counters.backlog.store(true, Ordering::Relaxed);
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
                Err(SendError::Poison(e)) => {
                    tracing::warn!("kafka refused an event for good: {e}");
                    self.pending_declarations.push((ev, "kafka_refused"));
                    return;
                }
                Err(SendError::Other(e)) => {
                    // No spool to wait in: declared, as when Kafka is away.
                    tracing::warn!("kafka cannot take an event now: {e}");
                    self.pending_declarations.push((ev, "kafka_unavailable"));
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
        let back = spool.append(&ev);
        self.counters.spooled.fetch_add(1, Ordering::Relaxed);
        self.take_back(back);
    }

    /// What the spool gave back is declared lost: evicted to stay within its bound, or
    /// not written (disk full).
    fn take_back(&mut self, back: Handback) {
        if back.is_empty() {
            return;
        }
        if !back.evicted.is_empty() {
            tracing::error!(
                "spool full: dropped its oldest segment ({} events); they are declared as lost",
                back.evicted.len()
            );
        }
        if let Some(e) = &back.error {
            tracing::error!(
                "spool: {e}; {} event(s) could not be written and are declared as lost",
                back.unwritten.len()
            );
        }
        if back.unreadable > 0 {
            // Their bytes are gone, so their sequence numbers cannot be declared.
            self.counters
                .count_drop("spool_unreadable", back.unreadable);
        }
        self.pending_declarations
            .extend(back.evicted.into_iter().map(|e| (e, "spool_full")));
        self.pending_declarations
            .extend(back.unwritten.into_iter().map(|e| (e, "spool_write_error")));
    }

    /// Hands what was spooled to the kernel (a crash of the agent then loses none of
    /// it), and forces it to disk when the interval is up (or at once when `now`).
    fn sync_spool_if_due(&mut self, now: bool) {
        let Some(k) = &mut self.kafka else { return };
        let Some(spool) = &mut k.spool else { return };
        let due = now || k.fsync_interval.is_zero() || Instant::now() >= k.next_sync;
        let back = if due {
            k.next_sync = Instant::now() + k.fsync_interval;
            spool.sync()
        } else {
            spool.flush()
        };
        self.take_back(back);
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
                // A lost declaration (a spool full of them, evicting its own) takes what
                // it declared with it: that is declared again here, with the lost
                // declaration's own sequence number. One new event per loss, never a
                // chain of declarations about declarations.
                let (mut ranges, ended) = carried_declarations(&events);
                ranges.extend(ranges_of(&events, reason));
                if !ended.is_empty() {
                    let ev = self.emitter.build("event", "host", "info", "run_end", |h| {
                        h.ended = Some(ended)
                    });
                    self.write_local(&ev);
                    self.send_kafka(ev);
                }
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
        let lost = self.counters.take_lost_agent_events();
        self.pending_declarations
            .extend(lost.into_iter().map(|e| (e, "agent_events_queue_full")));
        if self.kafka.is_none() {
            self.declare_pending();
        }
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
        let failed_live = self.serve_reports();
        // Failed live events go to the spool before anything looks at whether it is
        // empty.
        for p in failed_live {
            self.spool(p);
        }
        self.finish_replay();
        self.replay_or_go_live();
        self.sync_spool_if_due(false);
        if let Some(k) = &mut self.kafka {
            if let Some(s) = &k.spool {
                self.counters
                    .spool_bytes
                    .store(s.bytes(), Ordering::Relaxed);
                self.counters
                    .spool_records
                    .store(s.records(), Ordering::Relaxed);
            }
            self.counters.backlog.store(k.backlog, Ordering::Relaxed);
        }
        self.declare_pending();
    }

    /// Takes Kafka's delivery reports: counts what was delivered, notes replay outcomes,
    /// and returns the live events that failed (for the spool).
    fn serve_reports(&mut self) -> Vec<Vec<u8>> {
        let Some(k) = &mut self.kafka else {
            return Vec::new();
        };
        let mut failed_live = Vec::new();
        for d in k.sink.poll() {
            match (d.origin, d.error) {
                (_, None) => {
                    self.counters
                        .kafka_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    if matches!(d.origin, Origin::Spool { .. }) {
                        self.counters.replayed.fetch_add(1, Ordering::Relaxed);
                        if let Some(r) = &mut k.replay {
                            r.outstanding = r.outstanding.saturating_sub(1);
                        }
                    }
                }
                (Origin::Live, Some(e)) => {
                    if !k.backlog {
                        tracing::warn!(
                            "kafka delivery failed ({e}); spooling events until it works again"
                        );
                    }
                    k.backlog = true;
                    if let Some(p) = d.payload {
                        failed_live.push(p);
                    }
                }
                (Origin::Spool { segment, index }, Some(e)) => {
                    let Some(r) = k.replay.as_mut().filter(|r| r.segment == segment) else {
                        continue;
                    };
                    r.outstanding = r.outstanding.saturating_sub(1);
                    if d.permanent {
                        if let Some(rec) = r.records.get(index) {
                            if poison(&mut k.poisoned, segment, index) {
                                self.pending_declarations
                                    .push((rec.clone(), "kafka_refused"));
                            }
                        }
                    } else {
                        r.failed = true;
                    }
                    r.error.get_or_insert(e);
                }
            }
        }
        failed_live
    }

    /// A replay whose every record has an answer: the segment goes (declaring its poison
    /// records), or is tried again later.
    fn finish_replay(&mut self) {
        let Some(k) = &mut self.kafka else { return };
        if k.replay.as_ref().is_none_or(|r| r.outstanding > 0) {
            return;
        }
        let Some(r) = k.replay.take() else { return };
        if r.failed {
            let delay = k.retry.failed();
            tracing::warn!(
                "kafka: sending spool segment {} failed ({}); retrying in {delay:?}",
                r.segment,
                r.error.as_deref().unwrap_or("producer queue full"),
            );
            // The broker answered and refused (rather than not answering): after an
            // outage an idempotent producer's sequence can be out of step with a broker
            // that cannot reset it. A new producer starts afresh.
            let refused = r.error.as_deref().is_some_and(|e| !e.contains("timed out"));
            k.refusals = if refused { k.refusals + 1 } else { 0 };
            if k.refusals >= 2 {
                tracing::warn!(
                    "kafka keeps refusing this producer's messages; starting a new producer"
                );
                k.refusals = 0;
                if let Err(e) = k.sink.reset() {
                    tracing::error!("cannot start a new kafka producer: {e}");
                }
            }
            k.retry_at = Instant::now() + delay;
        } else {
            if let Some(s) = &mut k.spool {
                if let Err(e) = s.remove(r.segment) {
                    tracing::warn!("cannot remove a delivered spool segment: {e}");
                }
            }
            k.poisoned = None;
            k.retry.succeeded();
            k.refusals = 0;
        }
    }

    /// With a backlog and no replay running: send the oldest spool segment, or go live
    /// again when the spool is empty.
    fn replay_or_go_live(&mut self) {
        let Some(k) = &mut self.kafka else { return };
        // Invariant: while anything waits in the spool, new events queue behind it;
        // except behind the last segment, once it is on its way to Kafka.
        let replaying_last = k.replay.as_ref().is_some_and(|r| r.last);
        let waiting = k.spool.as_ref().map_or(0, Spool::segment_count);
        if waiting > usize::from(replaying_last) {
            k.backlog = true;
        }
        if !k.backlog || k.replay.is_some() {
            return;
        }
        let Some(s) = k.spool.as_mut().filter(|s| !s.is_empty()) else {
            // Nothing waits: back to sending live. (Without a spool there is no backlog
            // to keep: what Kafka cannot take is declared lost.)
            tracing::info!("kafka caught up; events go straight to it again");
            k.backlog = false;
            return;
        };
        if Instant::now() < k.retry_at {
            return;
        }
        let (segment, records) = match s.oldest() {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("cannot read the spool: {e}");
                return;
            }
        };
        let skip = match &k.poisoned {
            Some((s, set)) if *s == segment => set.clone(),
            _ => BTreeSet::new(),
        };
        let last = s.segment_count() == 1;
        let mut r = Replay {
            segment,
            records: Vec::new(),
            outstanding: 0,
            failed: false,
            error: None,
            last,
        };
        for (index, rec) in records.iter().enumerate() {
            if skip.contains(&index) {
                continue;
            }
            match k.sink.send(rec, Origin::Spool { segment, index }) {
                Ok(()) => r.outstanding += 1,
                Err(SendError::QueueFull | SendError::Other(_)) => {
                    // Sent again, whole, on the next attempt.
                    r.failed = true;
                    break;
                }
                Err(SendError::Poison(e)) => {
                    // Refused before it was queued (too large): it never will be sent.
                    if poison(&mut k.poisoned, segment, index) {
                        tracing::error!("kafka refused a spooled event for good ({e}); it is declared lost and skipped");
                        self.pending_declarations
                            .push((rec.clone(), "kafka_refused"));
                    }
                }
            }
        }
        r.records = records;
        if r.outstanding == 0 && r.failed {
            k.retry_at = Instant::now() + k.retry.failed();
        } else {
            if r.last && !r.failed {
                tracing::info!("kafka caught up; events go straight to it again");
                k.backlog = false;
            }
            k.replay = Some(r);
        }
    }

    /// The pipeline's periodic record of what it delivered, spooled and dropped.
    fn stats(&mut self) {
        let s = serde_json::to_value(self.counters.status()).ok();
        let ev = self
            .emitter
            .build("metric", "host", "info", "stats", |h| h.stats = s);
        self.handle(ev);
    }

    /// At exit: declare where every run ended, give Kafka what is left of the stop
    /// budget, then take back and spool whatever it still holds.
    fn shutdown(&mut self, stop_by: Option<Instant>) {
        self.stats();
        let mut ended: Vec<RunEnd> = self.runs.values().map(|p| run_end(p, "stopped")).collect();
        // This very event is the last of the pipeline's own stream.
        let mut own = self.emitter.position();
        own.seq = self.emitter.next_sequence();
        ended.push(run_end(&own, "stopped"));
        self.declare_ends(ended);
        if let Some(k) = &mut self.kafka {
            // A broker that answers delivers within a second; one that does not answer
            // (frozen, a black hole) would take the whole budget for nothing.
            let budget = stop_by
                .map_or(KAFKA_AT_STOP, |t| {
                    t.saturating_duration_since(Instant::now())
                        .saturating_sub(SPOOL_RESERVE)
                })
                .min(KAFKA_AT_STOP);
            if !k.sink.drain(budget) {
                tracing::warn!(
                    "kafka did not acknowledge every event within the stop budget; the rest is spooled for the next start"
                );
            }
            k.sink.purge();
            // Whatever comes back from here on goes to the spool, not to Kafka again.
            k.backlog = true;
        }
        let failed_live = self.serve_reports();
        for p in failed_live {
            self.spool(p);
        }
        if let Some(k) = &mut self.kafka {
            // A replay cut short is sent again, whole, at the next start.
            k.replay = None;
        }
        self.declare_pending();
        self.flush_local();
        self.sync_spool_if_due(true);
    }
}

/// Notes that record `index` of `segment` was refused for good; true the first time
/// (when it is to be declared).
fn poison(poisoned: &mut Option<(u64, BTreeSet<usize>)>, segment: u64, index: usize) -> bool {
    match poisoned {
        Some((s, set)) if *s == segment => set.insert(index),
        _ => {
            *poisoned = Some((segment, BTreeSet::from([index])));
            true
        }
    }
}

fn run_end(p: &Position, how: &str) -> RunEnd {
    RunEnd {
        plugin: p.plugin.to_string(),
        run_id: p.run_id.to_string(),
        last_seq: p.seq,
        how: how.to_owned(),
    }
}

/// Logs a sink failure once per failing spell, not once per event.
fn report(name: &str, failing: &mut bool, e: &std::io::Error) {
    if !*failing {
        tracing::error!("sink {name} failed: {e}; events it cannot take are counted as dropped");
        *failing = true;
    }
}

/// What lost declarations had declared: drops and run ends, to declare again.
fn carried_declarations(events: &[Vec<u8>]) -> (Vec<DroppedRange>, Vec<RunEnd>) {
    let (mut dropped, mut ended) = (Vec::new(), Vec::new());
    for ids in events.iter().filter_map(|e| EventIds::parse(e).ok()) {
        dropped.extend(ids.hids.dropped.into_iter().flatten());
        ended.extend(ids.hids.ended.into_iter().flatten());
    }
    (dropped, ended)
}

/// Groups lost events into runs of consecutive sequence numbers per plugin run.
fn ranges_of(events: &[Vec<u8>], reason: &str) -> Vec<DroppedRange> {
    let mut ids: Vec<(String, String, u64)> = events
        .iter()
        .filter_map(|e| EventIds::parse(e).ok())
        .map(|i| {
            (
                i.hids.plugin.into_owned(),
                i.hids.run_id.into_owned(),
                i.event.sequence,
            )
        })
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
    fn a_lost_declaration_is_declared_again_with_its_own_number() {
        let lost_declaration = br#"{"event":{"sequence":4},"hids":{"plugin":"pipeline","run_id":"p","dropped":[{"plugin":"process","run_id":"r1","from_seq":1,"to_seq":9,"reason":"spool_full"}]}}"#.to_vec();
        let events = vec![lost_declaration, ev("process", "r1", 10)];
        let (mut ranges, ended) = carried_declarations(&events);
        ranges.extend(ranges_of(&events, "spool_full"));
        assert!(ended.is_empty());
        let covered: Vec<(&str, u64, u64)> = ranges
            .iter()
            .map(|r| (r.plugin.as_str(), r.from_seq, r.to_seq))
            .collect();
        assert!(
            covered.contains(&("process", 1, 9)),
            "carried over: {covered:?}"
        );
        assert!(covered.contains(&("process", 10, 10)));
        assert!(
            covered.contains(&("pipeline", 4, 4)),
            "its own number: {covered:?}"
        );
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
