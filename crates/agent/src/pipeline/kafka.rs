//! The Kafka output and its spool: live while Kafka keeps up, in backlog (every event
//! into the spool, in order) when it does not, the spool replayed a segment at a time;
//! a segment is removed only when Kafka has acknowledged every record in it.

use std::time::{Duration, Instant};

use hids_sink::kafka::{Delivery, KafkaSink, Origin, SendError};
use hids_sink::spool::Spool;
use hids_types::stagger::Backoff;

use crate::pipeline::counters::PipelineCounters;
use crate::pipeline::declare::Lost;
use crate::pipeline::internal_events::{KafkaBacklog, KafkaCaughtUp, KafkaRefused, SpoolGaveBack};
use crate::pipeline::state::{Poisoned, Replay, State};

/// Time kept back from the stop budget for taking back what Kafka holds and spooling it.
const SPOOL_RESERVE: Duration = Duration::from_millis(500);
/// The longest the pipeline waits at stop for Kafka to acknowledge what it holds.
const KAFKA_AT_STOP: Duration = Duration::from_secs(2);

pub struct Kafka {
    sink: KafkaSink,
    spool: Option<Spool>,
    state: State,
    poisoned: Poisoned,
    retry_at: Instant,
    retry: Backoff,
    /// Replays in a row that the broker answered with a refusal (not a timeout).
    refusals: u32,
    fsync_interval: Duration,
    next_sync: Instant,
}

/// What the pipeline lends the Kafka output: where to count and what to declare.
pub struct Books<'a> {
    pub counters: &'a PipelineCounters,
    pub lost: &'a mut Lost,
}

impl Kafka {
    pub fn new(sink: KafkaSink, spool: Option<Spool>, fsync_interval: Duration) -> Self {
        Kafka {
            sink,
            state: State::at_start(spool.as_ref().is_some_and(|s| !s.is_empty())),
            spool,
            poisoned: Poisoned::default(),
            retry_at: Instant::now(),
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            refusals: 0,
            fsync_interval,
            next_sync: Instant::now() + fsync_interval,
        }
    }

    /// One event: straight to Kafka when live, else into the spool.
    pub fn send(&mut self, ev: Vec<u8>, books: Books<'_>) {
        if self.state.is_live() {
            match self.sink.send(&ev, Origin::Live) {
                Ok(()) => return,
                Err(SendError::QueueFull) if self.spool.is_none() => {
                    // No spool: wait for room, serving delivery reports meanwhile. The
                    // pressure goes back to the plugins, whose bounded queues drop and
                    // count at the source; a netlink reader is never blocked by this.
                    self.send_when_room(ev, books);
                    return;
                }
                Err(SendError::QueueFull) => {
                    KafkaBacklog::QueueFull.emit(&mut self.state, books.counters)
                }
                Err(SendError::Poison(e)) => {
                    KafkaRefused::Live(&e).emit(ev, books.lost);
                    return;
                }
                Err(SendError::Other(e)) => {
                    KafkaBacklog::CannotSend(&e).emit(&mut self.state, books.counters)
                }
            }
        }
        self.spool(ev, books);
    }

    /// Waits until librdkafka takes `ev` (no spool configured). Meanwhile only delivery
    /// reports are served; failures are queued for declaration by the caller's loop,
    /// never declared from in here (a declaration is itself sent to Kafka).
    fn send_when_room(&mut self, ev: Vec<u8>, books: Books<'_>) {
        loop {
            for d in self.sink.poll() {
                match (d.origin, d.error, d.payload) {
                    (Origin::Live, None, _) => books.counters.kafka_delivered(false),
                    (Origin::Live, Some(_), Some(p)) => books.lost.push(p, "kafka_unavailable"),
                    _ => {}
                }
            }
            match self.sink.send(&ev, Origin::Live) {
                Ok(()) => return,
                Err(SendError::QueueFull) => std::thread::sleep(Duration::from_millis(2)),
                Err(SendError::Poison(e)) => {
                    KafkaRefused::Live(&e).emit(ev, books.lost);
                    return;
                }
                Err(SendError::Other(e)) => {
                    // No spool to wait in: declared, as when Kafka is away.
                    tracing::warn!("kafka cannot take an event now: {e}");
                    books.lost.push(ev, "kafka_unavailable");
                    return;
                }
            }
        }
    }

    fn spool(&mut self, ev: Vec<u8>, books: Books<'_>) {
        let Some(spool) = &mut self.spool else {
            books.lost.push(ev, "kafka_unavailable");
            return;
        };
        let back = spool.append(&ev);
        books.counters.spooled();
        SpoolGaveBack(back).emit(books.counters, books.lost);
    }

    /// Hands what was spooled to the kernel (a crash of the agent then loses none of
    /// it), and forces it to disk when the interval is up (or at once when `now`).
    pub fn sync_spool_if_due(&mut self, now: bool, books: Books<'_>) {
        let Some(spool) = &mut self.spool else { return };
        let due = now || self.fsync_interval.is_zero() || Instant::now() >= self.next_sync;
        let back = if due {
            self.next_sync = Instant::now() + self.fsync_interval;
            spool.sync()
        } else {
            spool.flush()
        };
        SpoolGaveBack(back).emit(books.counters, books.lost);
    }

    /// The periodic work: the producer's health, delivery reports, the replay.
    pub fn housekeeping(&mut self, mut books: Books<'_>) {
        for e in self.sink.errors() {
            tracing::debug!("kafka: {e}");
        }
        if let Some(fatal) = self.sink.fatal_error() {
            tracing::error!("kafka producer failed for good ({fatal}); starting a new one");
            self.state.enter_backlog();
            if let Err(e) = self.sink.reset() {
                tracing::error!("cannot start a new kafka producer: {e}");
            }
        }
        let failed_live = self.serve_reports(&mut *books.lost, books.counters);
        // Failed live events go to the spool before anything looks at whether it is
        // empty.
        for p in failed_live {
            self.spool(p, books.reborrow());
        }
        self.finish_replay();
        self.replay_or_go_live(books.reborrow());
        self.sync_spool_if_due(false, books.reborrow());
        if let Some(s) = &self.spool {
            books
                .counters
                .spool_size(s.bytes(), s.records(), s.max_bytes());
        }
        books.counters.backlog(!self.state.is_live());
    }

    /// Takes Kafka's delivery reports: counts what was delivered, notes replay outcomes,
    /// and returns the live events that failed (for the spool).
    fn serve_reports(&mut self, lost: &mut Lost, counters: &PipelineCounters) -> Vec<Vec<u8>> {
        let mut failed_live = Vec::new();
        for d in self.sink.poll() {
            match (d.origin, &d.error) {
                (origin, None) => {
                    let replayed = matches!(origin, Origin::Spool { .. });
                    counters.kafka_delivered(replayed);
                    if let Some(r) = self.state.replay_mut().filter(|_| replayed) {
                        r.outstanding = r.outstanding.saturating_sub(1);
                    }
                }
                (Origin::Live, Some(e)) => {
                    KafkaBacklog::DeliveryFailed(e).emit(&mut self.state, counters);
                    if let Some(p) = d.payload {
                        failed_live.push(p);
                    }
                }
                (Origin::Spool { segment, index }, Some(_)) => {
                    self.replay_failed(d, segment, index, lost);
                }
            }
        }
        failed_live
    }

    /// A replayed record Kafka did not take: poison (declared, never sent again) or
    /// worth another try (the whole segment, later).
    fn replay_failed(&mut self, d: Delivery, segment: u64, index: usize, lost: &mut Lost) {
        let Some(r) = self.state.replay_mut().filter(|r| r.segment == segment) else {
            return;
        };
        r.outstanding = r.outstanding.saturating_sub(1);
        if d.permanent {
            if let Some(rec) = r.records.get(index) {
                if self.poisoned.insert(segment, index) {
                    lost.push(rec.clone(), "kafka_refused");
                }
            }
        } else {
            r.failed = true;
        }
        if let Some(e) = d.error {
            r.error.get_or_insert(e);
        }
    }

    /// A replay whose every record has an answer: the segment goes (declaring its poison
    /// records), or is tried again later.
    fn finish_replay(&mut self) {
        if self.state.replay().is_none_or(|r| r.outstanding > 0) {
            return;
        }
        let Some(r) = self.state.take_replay() else {
            return;
        };
        if !r.failed {
            if let Some(s) = &mut self.spool {
                if let Err(e) = s.remove(r.segment) {
                    tracing::warn!("cannot remove a delivered spool segment: {e}");
                }
            }
            self.poisoned.clear();
            self.retry.succeeded();
            self.refusals = 0;
            return;
        }
        let delay = self.retry.failed();
        tracing::warn!(
            "kafka: sending spool segment {} failed ({}); retrying in {delay:?}",
            r.segment,
            r.error.as_deref().unwrap_or("producer queue full"),
        );
        // The broker answered and refused (rather than not answering): after an
        // outage an idempotent producer's sequence can be out of step with a broker
        // that cannot reset it. A new producer starts afresh.
        let refused = r.error.as_deref().is_some_and(|e| !e.contains("timed out"));
        self.refusals = if refused { self.refusals + 1 } else { 0 };
        if self.refusals >= 2 {
            tracing::warn!(
                "kafka keeps refusing this producer's messages; starting a new producer"
            );
            self.refusals = 0;
            if let Err(e) = self.sink.reset() {
                tracing::error!("cannot start a new kafka producer: {e}");
            }
        }
        self.retry_at = Instant::now() + delay;
    }

    /// With a backlog and no replay running: send the oldest spool segment, or go live
    /// again when the spool is empty.
    fn replay_or_go_live(&mut self, books: Books<'_>) {
        // Invariant: while anything waits in the spool, new events queue behind it;
        // except behind the last segment, once it is on its way to Kafka.
        let replaying_last = self.state.replay().is_some_and(|r| r.last);
        let waiting = self.spool.as_ref().map_or(0, Spool::segment_count);
        if waiting > usize::from(replaying_last) {
            self.state.enter_backlog();
        }
        if !matches!(self.state, State::Backlog) {
            return;
        }
        if self.spool.as_ref().is_none_or(Spool::is_empty) {
            // Nothing waits: back to sending live. (Without a spool there is no backlog
            // to keep: what Kafka cannot take is declared lost.)
            KafkaCaughtUp.emit(&mut self.state, books.counters);
            return;
        }
        if Instant::now() < self.retry_at {
            return;
        }
        let Some(r) = self.send_oldest_segment(books.lost) else {
            return;
        };
        if r.outstanding == 0 && r.failed {
            self.retry_at = Instant::now() + self.retry.failed();
            return;
        }
        if r.last && !r.failed {
            KafkaCaughtUp.emit(&mut self.state, books.counters);
        }
        self.state.start_replay(r);
    }

    /// Sends the spool's oldest segment (but its poison records); `None` when there is
    /// none to read.
    fn send_oldest_segment(&mut self, lost: &mut Lost) -> Option<Replay> {
        let s = self.spool.as_mut()?;
        let (segment, records) = match s.oldest() {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!("cannot read the spool: {e}");
                return None;
            }
        };
        let skip = self.poisoned.of(segment);
        let mut r = Replay {
            segment,
            records: Vec::new(),
            outstanding: 0,
            failed: false,
            error: None,
            last: s.segment_count() == 1,
        };
        for (index, rec) in records.iter().enumerate() {
            if skip.contains(&index) {
                continue;
            }
            match self.sink.send(rec, Origin::Spool { segment, index }) {
                Ok(()) => r.outstanding += 1,
                Err(SendError::QueueFull | SendError::Other(_)) => {
                    // Sent again, whole, on the next attempt.
                    r.failed = true;
                    break;
                }
                Err(SendError::Poison(e)) => {
                    // Refused before it was queued (too large): it never will be sent.
                    if self.poisoned.insert(segment, index) {
                        KafkaRefused::Spooled(&e).emit(rec.clone(), lost);
                    }
                }
            }
        }
        r.records = records;
        Some(r)
    }

    /// At stop, after the last declarations: gives Kafka what is left of the stop budget,
    /// then takes back and spools whatever it still holds.
    pub fn shutdown(&mut self, stop_by: Option<Instant>, mut books: Books<'_>) {
        // A broker that answers delivers within a second; one that does not answer
        // (frozen, a black hole) would take the whole budget for nothing.
        let budget = stop_by
            .map_or(KAFKA_AT_STOP, |t| {
                t.saturating_duration_since(Instant::now())
                    .saturating_sub(SPOOL_RESERVE)
            })
            .min(KAFKA_AT_STOP);
        if !self.sink.drain(budget) {
            tracing::warn!(
                "kafka did not acknowledge every event within the stop budget; the rest is spooled for the next start"
            );
        }
        self.sink.purge();
        // Whatever comes back from here on goes to the spool, not to Kafka again.
        self.state.enter_backlog();
        let failed_live = self.serve_reports(&mut *books.lost, books.counters);
        for p in failed_live {
            self.spool(p, books.reborrow());
        }
        // A replay cut short is sent again, whole, at the next start.
        self.state.take_replay();
    }
}

impl Books<'_> {
    fn reborrow(&mut self) -> Books<'_> {
        Books {
            counters: self.counters,
            lost: &mut *self.lost,
        }
    }
}
