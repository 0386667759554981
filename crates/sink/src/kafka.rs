//! Kafka through librdkafka (the `rdkafka` crate): the field's standard client, with
//! idempotent, ordered, compressed batches. Events are keyed by host id, so one host's
//! events land in one partition, in order.
//!
//! Delivery is asynchronous: [`KafkaSink::send`] queues, and [`KafkaSink::poll`] returns
//! the delivery reports, each tagged with where the event came from (live, or a spool
//! segment), so the pipeline can spool what failed and retire what was delivered.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic for events whose category has no topic of its own.
    pub topic: String,
    /// Topic per ECS `event.category` (`process`, `network`, `host`, ...).
    pub topics: BTreeMap<String, String>,
    /// `lz4`, `zstd`, `gzip`, `snappy` or `none`.
    pub compression: String,
    /// `all`, `1` or `0`.
    pub acks: String,
    pub idempotence: bool,
    /// After this long without delivery a message is given back as failed (and spooled).
    pub message_timeout_ms: u64,
    /// Memory librdkafka may hold for unsent messages.
    pub queue_kbytes: u64,
    /// Any other librdkafka property (`security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`, ...), passed through as given.
    pub properties: BTreeMap<String, String>,
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Live,
    Spool(u64),
}

/// The outcome of one message.
#[derive(Debug)]
pub struct Delivery {
    pub origin: Origin,
    pub error: Option<String>,
    /// The event, when a live one failed: it goes to the spool.
    pub payload: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// librdkafka's queue is full: Kafka is slow or away.
    #[error("producer queue full")]
    QueueFull,
    #[error("{0}")]
    Other(String),
}

struct Reports {
    done: Mutex<Vec<Delivery>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Origin>;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Box<Origin>) {
        let d = match result {
            Ok(_) => Delivery {
                origin: *origin,
                error: None,
                payload: None,
            },
            Err((e, msg)) => Delivery {
                origin: *origin,
                error: Some(e.to_string()),
                payload: (*origin == Origin::Live)
                    .then(|| msg.payload().map(<[u8]>::to_vec))
                    .flatten(),
            },
        };
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push(d);
    }
}

pub struct KafkaSink {
    producer: BaseProducer<Reports>,
    cfg: KafkaConfig,
    key: String,
    label: String,
}

impl KafkaSink {
    /// # Errors
    /// When librdkafka refuses the configuration (a bad property name or value).
    pub fn new(cfg: KafkaConfig, host_id: &str) -> Result<Self, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cfg.brokers)
            .set("compression.type", &cfg.compression)
            .set("acks", &cfg.acks)
            .set("enable.idempotence", cfg.idempotence.to_string())
            .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
            .set("queue.buffering.max.kbytes", cfg.queue_kbytes.to_string())
            .set("queue.buffering.max.messages", "100000")
            .set("linger.ms", "20")
            .set("client.id", format!("hids-agent-{host_id}"));
        for (k, v) in &cfg.properties {
            c.set(k, v);
        }
        let producer = c.create_with_context(Reports {
            done: Mutex::new(Vec::new()),
        })?;
        Ok(KafkaSink {
            producer,
            label: format!("kafka:{}/{}", cfg.brokers, cfg.topic),
            cfg,
            key: host_id.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.label
    }

    /// The topic for an event: by its first `event.category`, else the default. Found by
    /// a scan of the JSON text, not a parse: events are written by our own code.
    fn topic_for(&self, event: &[u8]) -> &str {
        if self.cfg.topics.is_empty() {
            return &self.cfg.topic;
        }
        let needle = b"\"category\":[\"";
        let category = event
            .windows(needle.len())
            .position(|w| w == needle)
            .and_then(|at| {
                let rest = &event[at + needle.len()..];
                let end = rest.iter().position(|&c| c == b'"')?;
                std::str::from_utf8(&rest[..end]).ok()
            });
        category
            .and_then(|c| self.cfg.topics.get(c))
            .map_or(&self.cfg.topic, String::as_str)
    }

    /// Queues one event.
    ///
    /// # Errors
    /// [`SendError::QueueFull`] when librdkafka's buffer is full; other errors for
    /// messages Kafka can never take (too large, bad topic).
    pub fn send(&self, event: &[u8], origin: Origin) -> Result<(), SendError> {
        let record = BaseRecord::with_opaque_to(self.topic_for(event), Box::new(origin))
            .key(self.key.as_str())
            .payload(event);
        self.producer.send(record).map_err(|(e, _)| match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
            other => SendError::Other(other.to_string()),
        })
    }

    /// Serves librdkafka's callbacks and returns the delivery reports since last time.
    pub fn poll(&self) -> Vec<Delivery> {
        self.producer.poll(Duration::ZERO);
        std::mem::take(
            &mut *self
                .producer
                .context()
                .done
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Messages queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Waits up to `timeout` for everything queued to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }

    /// Gives back everything still queued or in flight as failed deliveries (at
    /// shutdown, so the caller spools them instead of losing them).
    pub fn purge(&self) {
        use rdkafka::producer::PurgeConfig;
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        self.producer.poll(Duration::ZERO);
    }
}
