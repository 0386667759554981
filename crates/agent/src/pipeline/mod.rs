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
//!
//! Here, the queue loop; beside it, `local` (stdout and file sinks), `kafka` (the Kafka
//! output and its spool, whose route is one `state::State`: live, backlog, replay,
//! catching up), `declare` (what is declared lost, and where runs ended), `counters`
//! (what the status reports), `outputs` (opening them) and `internal_events` (each
//! notable thing's log line with its counter or declaration).

mod counters;
mod declare;
mod internal_events;
mod kafka;
mod local;
mod outputs;
mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hids_types::event::RunEnd;
use tokio::sync::mpsc;

use crate::events::{Emitter, Unqueued};
use crate::queue::{Position, Queued};

pub use counters::PipelineCounters;
pub use outputs::Outputs;

use declare::{declaring, run_end, Lost};
use kafka::{Books, Kafka};
use local::LocalSinks;

/// How often the pipeline's own stats record is written.
const STATS_EVERY: Duration = Duration::from_secs(60);
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Events taken from the queue, at most, before the sinks are flushed.
const DRAIN_EVENTS: usize = 1024;

/// The running pipeline, as the master holds it.
pub struct Handle {
    thread: JoinHandle<()>,
    /// When the agent must be gone: set by the master when it starts stopping, read by
    /// the pipeline to size its last wait for Kafka.
    stop_by: Arc<OnceLock<Instant>>,
}

impl Handle {
    /// The agent must be gone by `deadline`.
    pub fn stop_by(&self, deadline: Instant) {
        let _ = self.stop_by.set(deadline);
    }

    /// Waits, at most `left`, for the pipeline to finish (once every sender of its
    /// queue is gone). False when it did not.
    pub async fn join(self, left: Duration) -> bool {
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        tokio::time::timeout(left, joined).await.is_ok()
    }
}

/// Starts the pipeline thread. It ends, flushed, when every sender is dropped; events
/// Kafka has not acknowledged by the stop deadline are then spooled, not lost.
/// `unqueued` holds the agent's own events that found the queue full, to declare.
pub fn start(
    rx: mpsc::Receiver<Queued>,
    outputs: Outputs,
    counters: Arc<PipelineCounters>,
    unqueued: Arc<Unqueued>,
    emitter: Emitter,
    stats_offset: Duration,
) -> std::io::Result<Handle> {
    let stop_by: Arc<OnceLock<Instant>> = Arc::default();
    let stop = stop_by.clone();
    let thread = std::thread::Builder::new()
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
            let mut p = Pipeline {
                local: LocalSinks::new(outputs.local),
                kafka: outputs
                    .kafka
                    .map(|sink| Kafka::new(sink, outputs.spool, outputs.fsync_interval)),
                counters,
                unqueued,
                emitter,
                lost: Lost::default(),
                runs: BTreeMap::new(),
            };
            rt.block_on(p.run(rx, stats_offset));
            p.shutdown(stop.get().copied());
        })?;
    Ok(Handle { thread, stop_by })
}

struct Pipeline {
    local: LocalSinks,
    kafka: Option<Kafka>,
    counters: Arc<PipelineCounters>,
    unqueued: Arc<Unqueued>,
    emitter: Emitter,
    /// Lost events waiting to be declared.
    lost: Lost,
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
                queued = rx.recv() => match queued {
                    Some(queued) => {
                        let mut taken = self.take(queued);
                        // Drain what is queued before paying for a flush.
                        while taken < DRAIN_EVENTS {
                            match rx.try_recv() {
                                Ok(queued) => taken += self.take(queued),
                                Err(_) => break,
                            }
                        }
                        self.local.flush(&self.counters);
                        self.sync_spool_if_due(false);
                    }
                    None => break,
                },
                _ = tick.tick() => self.housekeeping(),
                _ = stats.tick() => self.stats(),
            }
        }
    }

    /// A batch from the queue (events of one run, in order): its last event noted as its
    /// run's latest, then each handled. Returns how many it held.
    fn take(&mut self, queued: Queued) -> usize {
        let batch = &queued.batch;
        let Some(position) = batch.last() else {
            return 0;
        };
        let previous = self.runs.insert(position.plugin.clone(), position);
        if let Some(old) = previous.filter(|old| old.run_id != batch.run_id) {
            self.declare_ends(vec![run_end(&old, "superseded")]);
        }
        // The batch's share of the queue's budgets is given back once all are handled.
        let Queued { batch, .. } = queued;
        let taken = batch.events.len();
        for (_, bytes) in batch.events {
            self.handle(bytes);
        }
        taken
    }

    fn handle(&mut self, ev: Vec<u8>) {
        self.deliver(ev);
        self.declare_pending();
    }

    /// To every output; declared lost when no output can take it.
    fn deliver(&mut self, ev: Vec<u8>) {
        if !self.local.is_empty() {
            if self.local.write(&ev, &self.counters) {
                self.counters.event_out();
            } else if self.kafka.is_none() {
                self.lost.push(ev.clone(), "sink_error");
            }
        }
        if let Some((k, books)) = self.kafka() {
            k.send(ev, books);
        }
    }

    /// The Kafka output, with the books it keeps in.
    fn kafka(&mut self) -> Option<(&mut Kafka, Books<'_>)> {
        let k = self.kafka.as_mut()?;
        let books = Books {
            counters: &self.counters,
            lost: &mut self.lost,
        };
        Some((k, books))
    }

    /// A `run_end` event on the pipeline's stream.
    fn declare_ends(&mut self, ended: Vec<RunEnd>) {
        let ev = self.emitter.build("event", "host", "info", "run_end", |h| {
            h.ended = Some(ended)
        });
        self.handle(ev);
    }

    fn sync_spool_if_due(&mut self, now: bool) {
        if let Some((k, books)) = self.kafka() {
            k.sync_spool_if_due(now, books);
        }
    }

    /// Declares lost events: counted by reason, and a `dropped` event naming their
    /// sequence ranges. Iterative, because a declaration can itself be spooled and
    /// cause a drop.
    fn declare_pending(&mut self) {
        for _ in 0..16 {
            if self.lost.is_empty() {
                return;
            }
            for (reason, events) in self.lost.take_by_reason() {
                self.counters.count_drop(reason, events.len() as u64);
                let (ranges, ended) = declaring(&events, reason);
                if !ended.is_empty() {
                    let ev = self.emitter.build("event", "host", "info", "run_end", |h| {
                        h.ended = Some(ended)
                    });
                    self.deliver(ev);
                }
                if ranges.is_empty() {
                    continue;
                }
                let ev = self.emitter.build("event", "host", "info", "dropped", |h| {
                    h.dropped = Some(ranges)
                });
                self.deliver(ev);
            }
        }
    }

    fn housekeeping(&mut self) {
        self.take_unqueued();
        if let Some((k, books)) = self.kafka() {
            k.housekeeping(books);
        }
        self.declare_pending();
    }

    /// The agent's own events that found the queue full since the last look: counted,
    /// and put on the list of losses to declare.
    fn take_unqueued(&mut self) {
        let (unqueued, uncounted) = self.unqueued.take();
        if uncounted > 0 {
            self.counters
                .count_drop("agent_events_queue_full", uncounted);
        }
        self.lost.extend(unqueued, "agent_events_queue_full");
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
        // Those that found the queue full after the last housekeeping are declared too.
        self.take_unqueued();
        self.stats();
        let mut ended: Vec<RunEnd> = self.runs.values().map(|p| run_end(p, "stopped")).collect();
        // This very event is the last of the pipeline's own stream.
        let mut own = self.emitter.position();
        own.seq = self.emitter.next_sequence();
        ended.push(run_end(&own, "stopped"));
        self.declare_ends(ended);
        if let Some((k, books)) = self.kafka() {
            k.shutdown(stop_by, books);
        }
        self.declare_pending();
        self.local.flush(&self.counters);
        self.sync_spool_if_due(true);
    }
}
