//! The local sinks (stdout, files): every event is written to each, in order; a failing
//! one is counted, and logged once per failing spell.

use hids_sink::Sink;

use crate::pipeline::counters::PipelineCounters;
use crate::pipeline::internal_events::{SinkFailed, SinkRecovered};

pub struct LocalSinks {
    sinks: Vec<Box<dyn Sink>>,
    failing: Vec<bool>,
}

impl LocalSinks {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        let failing = vec![false; sinks.len()];
        LocalSinks { sinks, failing }
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Writes `ev` to every sink; true when at least one took it. The caller declares
    /// it when none did; those written earlier and lost with it are counted here.
    pub fn write(&mut self, ev: &[u8], counters: &PipelineCounters) -> bool {
        let mut delivered = false;
        for (sink, failing) in self.sinks.iter_mut().zip(self.failing.iter_mut()) {
            match sink.write(ev) {
                Ok(()) => {
                    delivered = true;
                    SinkRecovered { sink: sink.name() }.emit(failing);
                }
                Err(e) => SinkFailed {
                    sink: sink.name(),
                    error: &e.source,
                    lost: e.lost_events.saturating_sub(1),
                }
                .emit(failing, counters),
            }
        }
        delivered
    }

    pub fn flush(&mut self, counters: &PipelineCounters) {
        for (sink, failing) in self.sinks.iter_mut().zip(self.failing.iter_mut()) {
            if let Err(e) = sink.flush() {
                SinkFailed {
                    sink: sink.name(),
                    error: &e.source,
                    lost: e.lost_events,
                }
                .emit(failing, counters);
            }
        }
    }
}
