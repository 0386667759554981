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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::KernelExec;

    #[test]
    fn at_stop_what_finds_no_room_is_counted_as_dropped_and_leaves_the_budget() {
        let counters = Arc::new(Counters::default());
        let mut queue = Queue::new(&CaptureConfig::for_tests(), counters.clone());
        // The consumer is alive but its queue is full.
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        tx.send(Vec::new()).unwrap();
        let exec = KernelExec {
            args: b"true\0".to_vec(),
            ..KernelExec::default()
        };
        queue.push(Raw::KernelExec {
            ts_ns: 1,
            pid: 7,
            exec: Box::new(exec),
        });
        queue.push(Raw::Exit {
            ts_ns: 2,
            pid: 7,
            exit_code: 0,
        });
        assert!(counters.queue_bytes.load(Ordering::Relaxed) > 0);
        queue.hand_over_before_exit(&tx);
        assert!(queue.is_empty());
        assert_eq!(counters.queue_full.load(Ordering::Relaxed), 2);
        assert_eq!(counters.queue_full_execs.load(Ordering::Relaxed), 1);
        assert_eq!(counters.queue_bytes.load(Ordering::Relaxed), 0);
    }
}
