//! Events converted but not yet handed over: one burst, bounded. Both backends queue
//! through it. When the enrichment thread's queue is full, events are dropped here and
//! counted: the plugin's one documented drop point.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Batch, CaptureConfig, Counters, Raw, MAX_BATCH};

/// One burst, bounded by `max_pending`.
pub struct Queue {
    counters: Arc<Counters>,
    max_pending: usize,
    out: Vec<Raw>,
    since: Option<Instant>,
    /// Index in `out` of the last exec of each pid, for the superseded check.
    execs: HashMap<u32, usize>,
}
impl Queue {
    pub fn new(cfg: &CaptureConfig, counters: Arc<Counters>) -> Self {
        Queue {
            counters,
            max_pending: cfg.max_pending,
            out: Vec::new(),
            since: None,
            execs: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    fn age(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Whether the burst has waited long enough (or grown large enough) to go.
    pub fn due(&self, linger: Duration) -> bool {
        !self.out.is_empty() && (self.age() >= linger || self.out.len() >= MAX_BATCH)
    }

    /// How long to wait for more events before the burst is due.
    pub fn wait(&self, linger: Duration) -> Duration {
        if self.out.is_empty() {
            Duration::from_millis(500)
        } else {
            // At least 1 ms, so a full queue downstream is not polled in a spin.
            linger
                .saturating_sub(self.age())
                .max(Duration::from_millis(1))
        }
    }

    pub fn push(&mut self, raw: Raw) {
        if self.out.len() >= self.max_pending {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            if matches!(raw, Raw::Exec { .. } | Raw::KernelExec { .. }) {
                self.counters
                    .queue_full_execs
                    .fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.counters
            .queue_bytes
            .fetch_add(raw.heap_bytes(), Ordering::Relaxed);
        self.since.get_or_insert_with(Instant::now);
        if let Raw::Exec { pid, .. } = raw {
            self.execs.insert(pid, self.out.len());
        }
        self.out.push(raw);
    }

    /// An exec of `pid` at `ts_ns`: a queued snapshot of `pid` finished after that
    /// moment may show this newer image, so it is not reported as the older one's.
    pub fn mark_superseded(&mut self, pid: u32, ts_ns: u64) {
        if let Some(&i) = self.execs.get(&pid) {
            if let Some(Raw::Exec {
                read_done_ns,
                superseded,
                ..
            }) = self.out.get_mut(i)
            {
                if *read_done_ns > ts_ns {
                    *superseded = true;
                }
            }
        }
    }

    /// At stop: hands over what is left, waiting a little for room (well inside the
    /// master's stop window); what still finds no room is counted as dropped.
    pub fn hand_over_before_exit(&mut self, tx: &SyncSender<Batch>) {
        let until = Instant::now() + Duration::from_millis(300);
        while !self.out.is_empty() && Instant::now() < until {
            if !self.hand_over(tx) {
                break;
            }
            if !self.out.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let left = std::mem::take(&mut self.out);
        let execs = left
            .iter()
            .filter(|raw| matches!(raw, Raw::Exec { .. } | Raw::KernelExec { .. }))
            .count();
        let bytes: usize = left.iter().map(Raw::heap_bytes).sum();
        self.counters
            .queue_full
            .fetch_add(left.len() as u64, Ordering::Relaxed);
        self.counters
            .queue_full_execs
            .fetch_add(execs as u64, Ordering::Relaxed);
        self.counters
            .queue_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Hands the batch over, or keeps it (bounded by `max_pending`) while the queue is
    /// full. Returns false when the consumer is gone.
    pub fn hand_over(&mut self, tx: &SyncSender<Batch>) -> bool {
        match tx.try_send(std::mem::take(&mut self.out)) {
            Ok(()) => {
                self.since = None;
                self.execs.clear();
                true
            }
            Err(TrySendError::Full(batch)) => {
                self.out = batch;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}
