//! Opening the configured outputs: done before any plugin starts, so a sink that cannot
//! be opened is an error the operator sees at once.

use std::time::Duration;

use anyhow::Context as _;
use hids_sink::kafka::KafkaSink;
use hids_sink::spool::Spool;
use hids_sink::Sink;

use crate::config::{Config, SinkConfig};
use crate::pipeline::counters::PipelineCounters;

/// Where the pipeline writes.
pub struct Outputs {
    pub local: Vec<Box<dyn Sink>>,
    pub kafka: Option<KafkaSink>,
    pub spool: Option<Spool>,
    /// How often the spool is forced to disk (zero: after every batch).
    pub fsync_interval: Duration,
}

impl Outputs {
    /// Opens every configured sink and the spool; a crash's partial record found in the
    /// spool is counted in `counters`.
    ///
    /// # Errors
    /// When a sink or the spool cannot be opened.
    pub fn open(
        config: &Config,
        host_id: &str,
        counters: &PipelineCounters,
    ) -> anyhow::Result<Outputs> {
        let mut outputs = Outputs {
            local: Vec::new(),
            kafka: None,
            spool: None,
            fsync_interval: Duration::from_millis(
                config.spool.as_ref().map_or(1000, |s| s.fsync_interval_ms),
            ),
        };
        let sinks = config
            .sinks
            .clone()
            .unwrap_or_else(|| vec![SinkConfig::Stdout]);
        for sink in sinks {
            match sink {
                SinkConfig::Stdout => outputs.local.push(Box::new(
                    hids_sink::StdoutSink::new().context("stdout is not open")?,
                )),
                SinkConfig::File {
                    path,
                    max_bytes,
                    keep,
                } => outputs.local.push(Box::new(
                    hids_sink::FileSink::open(&path, max_bytes, keep)
                        .with_context(|| format!("cannot open the file sink {}", path.display()))?,
                )),
                SinkConfig::Kafka(cfg) => {
                    outputs.kafka = Some(
                        KafkaSink::new(cfg, host_id)
                            .context("the kafka sink's settings are refused by librdkafka")?,
                    );
                }
            }
        }
        if let Some(sc) = &config.spool {
            outputs.spool = Some(open_spool(sc, counters)?);
        }
        Ok(outputs)
    }
}

fn open_spool(
    sc: &crate::config::SpoolConfig,
    counters: &PipelineCounters,
) -> anyhow::Result<Spool> {
    let (spool, recovery) = Spool::open(&sc.dir, sc.max_bytes, sc.segment_bytes)
        .with_context(|| format!("cannot open the spool in {}", sc.dir.display()))?;
    if recovery.records > 0 {
        tracing::info!(
            "spool: {} event(s) in {} segment(s) from before the last stop will be sent",
            recovery.records,
            recovery.segments
        );
    }
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            "spool: cut {} byte(s) of a record whose write was interrupted (a crash); that one event is lost",
            recovery.truncated_bytes
        );
        counters.count_drop("spool_partial_record", recovery.truncated_segments);
    }
    Ok(spool)
}
