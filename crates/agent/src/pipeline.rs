//! The event pipeline: one bounded queue from the plugin readers to the sinks, drained
//! by a dedicated thread so that a slow sink never stalls supervision.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use hids_sink::Sink;
use hids_types::status::PipelineStatus;
use tokio::sync::mpsc;

#[derive(Default)]
pub struct PipelineCounters {
    pub events_out: AtomicU64,
    /// Events a sink refused (written nowhere).
    pub sink_errors: AtomicU64,
}

impl PipelineCounters {
    pub fn status(&self) -> PipelineStatus {
        let mut dropped = BTreeMap::new();
        let errors = self.sink_errors.load(Ordering::Relaxed);
        if errors > 0 {
            dropped.insert("sink_error".to_owned(), errors);
        }
        PipelineStatus {
            events_out: self.events_out.load(Ordering::Relaxed),
            dropped,
        }
    }
}

/// Starts the sink thread. It ends, after flushing, when every sender is dropped.
pub fn start(
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut sinks: Vec<Box<dyn Sink>>,
    counters: Arc<PipelineCounters>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sinks".into())
        .spawn(move || {
            let mut failing = vec![false; sinks.len()];
            while let Some(event) = rx.blocking_recv() {
                write_all(&mut sinks, &mut failing, &event, &counters);
                // Drain what is already queued before paying for a flush.
                while let Ok(event) = rx.try_recv() {
                    write_all(&mut sinks, &mut failing, &event, &counters);
                }
                for (sink, failing) in sinks.iter_mut().zip(failing.iter_mut()) {
                    if let Err(e) = sink.flush() {
                        report(sink.name(), failing, &e);
                    }
                }
            }
        })
}

fn write_all(
    sinks: &mut [Box<dyn Sink>],
    failing: &mut [bool],
    event: &[u8],
    counters: &PipelineCounters,
) {
    let mut delivered = false;
    for (sink, failing) in sinks.iter_mut().zip(failing.iter_mut()) {
        match sink.write(event) {
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
        counters.events_out.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.sink_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Logs a sink failure once per failing spell, not once per event.
fn report(name: &str, failing: &mut bool, e: &std::io::Error) {
    if !*failing {
        tracing::error!("sink {name} failed: {e}; events it cannot take are counted as dropped");
        *failing = true;
    }
}
