//! What the pipeline counts: read by the master for its status and by the pipeline's
//! own `stats` events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use hids_types::status::PipelineStatus;

#[derive(Default)]
pub struct PipelineCounters {
    events_out: AtomicU64,
    kafka_delivered: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    spool_bytes: AtomicU64,
    spool_records: AtomicU64,
    spool_max_bytes: AtomicU64,
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
            spool_max_bytes: get(&self.spool_max_bytes),
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

    /// An event some local sink took.
    pub fn event_out(&self) {
        self.events_out.fetch_add(1, Ordering::Relaxed);
    }

    /// An event Kafka acknowledged; `replayed` when it came from the spool.
    pub fn kafka_delivered(&self, replayed: bool) {
        self.kafka_delivered.fetch_add(1, Ordering::Relaxed);
        if replayed {
            self.replayed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn spooled(&self) {
        self.spooled.fetch_add(1, Ordering::Relaxed);
    }

    /// What waits in the spool, and the most it holds.
    pub fn spool_size(&self, bytes: u64, records: u64, max_bytes: u64) {
        self.spool_max_bytes.store(max_bytes, Ordering::Relaxed);
        self.spool_bytes.store(bytes, Ordering::Relaxed);
        self.spool_records.store(records, Ordering::Relaxed);
    }

    /// Whether new events go to the spool rather than straight to Kafka.
    pub fn backlog(&self, on: bool) {
        self.backlog.store(on, Ordering::Relaxed);
    }
}
