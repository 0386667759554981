//! The pipeline's notable things, one type each: `emit` writes its log line and does
//! what goes with it (a counter, a declaration, a change of Kafka state), in one place.

use hids_sink::spool::Handback;

use crate::pipeline::counters::PipelineCounters;
use crate::pipeline::declare::Lost;
use crate::pipeline::state::State;

/// A local sink failed; logged once per failing spell, not once per event.
pub struct SinkFailed<'a> {
    pub sink: &'a str,
    pub error: &'a std::io::Error,
    /// Events lost with it that no declaration will name.
    pub lost: u64,
}

impl SinkFailed<'_> {
    pub fn emit(self, failing: &mut bool, counters: &PipelineCounters) {
        if !*failing {
            tracing::error!(
                "sink {} failed: {}; events it cannot take are counted as dropped",
                self.sink,
                self.error
            );
            *failing = true;
        }
        counters.count_drop("sink_write_error", self.lost);
    }
}

/// A failing local sink took an event again.
pub struct SinkRecovered<'a> {
    pub sink: &'a str,
}

impl SinkRecovered<'_> {
    pub fn emit(self, failing: &mut bool) {
        if *failing {
            tracing::info!("sink {} works again", self.sink);
            *failing = false;
        }
    }
}

/// Kafka cannot take events now: new events go to the spool, behind what waits there.
pub enum KafkaBacklog<'a> {
    /// librdkafka's queue is full.
    QueueFull,
    /// Sending failed before anything was queued.
    CannotSend(&'a str),
    /// A live event's delivery failed.
    DeliveryFailed(&'a str),
}

impl KafkaBacklog<'_> {
    pub fn emit(self, state: &mut State, counters: &PipelineCounters) {
        if state.is_live() {
            match self {
                KafkaBacklog::QueueFull => tracing::warn!(
                    "kafka is not keeping up (producer queue full); spooling events until it does"
                ),
                KafkaBacklog::CannotSend(e) => {
                    tracing::warn!("kafka cannot take events now ({e}); spooling them until it can")
                }
                KafkaBacklog::DeliveryFailed(e) => tracing::warn!(
                    "kafka delivery failed ({e}); spooling events until it works again"
                ),
            }
        }
        state.enter_backlog();
        counters.backlog(true);
    }
}

/// Nothing waits in the spool any more (or the last of it is on its way): new events
/// go straight to Kafka again.
pub struct KafkaCaughtUp;

impl KafkaCaughtUp {
    pub fn emit(self, state: &mut State, counters: &PipelineCounters) {
        tracing::info!("kafka caught up; events go straight to it again");
        state.go_live();
        counters.backlog(false);
    }
}

/// Kafka refused an event for good (too large, topic not authorized): declared lost,
/// never retried in front of everything behind it. It was live, or came from the spool
/// (and is skipped when its segment is sent again); with Kafka's reason.
pub enum KafkaRefused<'a> {
    Live(&'a str),
    Spooled(&'a str),
}

impl KafkaRefused<'_> {
    pub fn emit(self, event: Vec<u8>, lost: &mut Lost) {
        match self {
            KafkaRefused::Live(e) => tracing::warn!("kafka refused an event for good: {e}"),
            KafkaRefused::Spooled(e) => tracing::error!(
                "kafka refused a spooled event for good ({e}); it is declared lost and skipped"
            ),
        }
        lost.push(event, "kafka_refused");
    }
}

/// What the spool gave back is declared lost: evicted to stay within its bound, or not
/// written (disk full); what it could not even read is counted.
pub struct SpoolGaveBack(pub Handback);

impl SpoolGaveBack {
    pub fn emit(self, counters: &PipelineCounters, lost: &mut Lost) {
        let back = self.0;
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
            counters.count_drop("spool_unreadable", back.unreadable);
        }
        lost.extend(back.evicted, "spool_full");
        lost.extend(back.unwritten, "spool_write_error");
    }
}
