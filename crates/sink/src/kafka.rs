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

/// The Kafka sink's settings: `[[sinks]] kind = "kafka"` in the agent's configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port`, one string (comma-separated) or a list.
    pub brokers: Brokers,
    /// Topic for events whose category has no topic of its own.
    pub topic: String,
    /// Topic per ECS `event.category` (`process = "hids-process"`).
    #[serde(default)]
    pub topics: BTreeMap<String, String>,
    /// `lz4`, `zstd`, `gzip`, `snappy` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// `all`, `1` or `0`.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// librdkafka's idempotent producer: no duplicates from retries. Off by default: the
    /// Kafka-API broker this project tests against (tansu) loses its storage when an
    /// idempotent producer resumes after a broker restart. Turn it on for Apache Kafka.
    /// Off, retries may duplicate an event (reconciliation counts duplicates) but never
    /// reorder one host's events (one request in flight).
    #[serde(default)]
    pub idempotence: bool,
    /// After this long without delivery a message is given back as failed (and spooled).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Memory librdkafka may hold for unsent messages.
    #[serde(default = "default_queue_kbytes")]
    pub queue_kbytes: u64,
    /// Any other librdkafka property: TLS (`security.protocol = "ssl"`,
    /// `ssl.ca.location`), SASL (`sasl.mechanism`, `sasl.username`, ...).
    #[serde(default, rename = "librdkafka")]
    pub properties: BTreeMap<String, String>,
}

/// Brokers as one comma-separated string or a list.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum Brokers {
    One(String),
    Many(Vec<String>),
}

impl Brokers {
    pub fn joined(&self) -> String {
        match self {
            Brokers::One(s) => s.clone(),
            Brokers::Many(v) => v.join(","),
        }
    }
}

fn default_compression() -> String {
    "lz4".into()
}
fn default_acks() -> String {
    "all".into()
}
fn default_message_timeout_ms() -> u64 {
    10_000
}
fn default_queue_kbytes() -> u64 {
    16 * 1024
}

impl KafkaConfig {
    /// Problems a person can fix, one per entry.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !["lz4", "zstd", "gzip", "snappy", "none"].contains(&self.compression.as_str()) {
            p.push(format!(
                "sinks: compression = {:?}: use lz4, zstd, gzip, snappy or none",
                self.compression
            ));
        }
        if !["all", "-1", "1", "0"].contains(&self.acks.as_str()) {
            p.push(format!("sinks: acks = {:?}: use all, 1 or 0", self.acks));
        }
        // hids-server finds the instance that answers for a host by this partitioner
        // (CRC-32 of the host id): another would make hosts look silent.
        for key in ["partitioner", "partitioner_cb"] {
            if self.properties.contains_key(key) {
                p.push(format!(
                    "sinks: librdkafka.{key} cannot be set: hids-server expects librdkafka's default (consistent_random: CRC-32 of the host id)"
                ));
            }
        }
        if self.brokers.joined().trim().is_empty() || self.topic.is_empty() {
            p.push("sinks: a kafka sink needs brokers and topic".into());
        }
        p
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Live,
    /// Record `index` of spool segment `segment`.
    Spool {
        segment: u64,
        index: usize,
    },
}

/// The outcome of one message.
#[derive(Debug)]
pub struct Delivery {
    pub origin: Origin,
    pub error: Option<String>,
    /// The failure is about this message and sending it again cannot help (too large,
    /// topic not authorized): it must be declared lost, not retried forever.
    pub permanent: bool,
    /// The event, when a live one failed: it goes to the spool.
    pub payload: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// librdkafka's queue is full: Kafka is slow or away.
    #[error("producer queue full")]
    QueueFull,
    /// Refused before it was queued for a reason about the message itself (too large,
    /// invalid): never sendable.
    #[error("{0}")]
    Poison(String),
    /// Refused before it was queued for a reason that may pass (a producer in a fatal
    /// state, metadata not known yet): worth sending again later.
    #[error("{0}")]
    Other(String),
}

/// Errors that are about the message itself (or its topic's permission): retrying the
/// same message cannot succeed, and retrying it forever would hold every event queued
/// behind it. Cluster-wide and configuration errors are not among them: they hold for
/// every message, and the spool waits them out.
fn permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidTopic
                | C::MessageBatchTooLarge
                | C::TopicAuthorizationFailed
        )
    )
}

struct Reports {
    done: Mutex<Vec<Delivery>>,
    /// librdkafka's client-level errors (broker down, authentication), latest last.
    errors: Mutex<Vec<String>>,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 64 {
            e.push(format!("{error}: {reason}"));
        }
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Origin>;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Box<Origin>) {
        let d = match result {
            Ok(_) => Delivery {
                origin: *origin,
                error: None,
                permanent: false,
                payload: None,
            },
            Err((e, msg)) => Delivery {
                origin: *origin,
                error: Some(e.to_string()),
                permanent: permanent(e),
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
        Ok(KafkaSink {
            producer: Self::producer(&cfg, host_id)?,
            label: format!("kafka:{}/{}", cfg.brokers.joined(), cfg.topic),
            cfg,
            key: host_id.to_owned(),
        })
    }

    /// Replaces the producer with a new one (a new producer id, so sequence numbers
    /// start afresh). Everything the old one held comes back first as failed
    /// deliveries, through [`KafkaSink::poll`] as usual.
    ///
    /// # Errors
    /// When the new producer cannot be made; the old one stays.
    pub fn reset(&mut self) -> Result<(), KafkaError> {
        let fresh = Self::producer(&self.cfg, &self.key)?;
        self.purge();
        let old = std::mem::replace(&mut self.producer, fresh);
        let left: Vec<Delivery> =
            std::mem::take(&mut *old.context().done.lock().unwrap_or_else(|p| p.into_inner()));
        self.producer
            .context()
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(left);
        Ok(())
    }

    fn producer(cfg: &KafkaConfig, host_id: &str) -> Result<BaseProducer<Reports>, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", cfg.brokers.joined())
            .set("compression.type", &cfg.compression)
            .set("acks", &cfg.acks)
            .set("enable.idempotence", cfg.idempotence.to_string())
            .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
            .set("queue.buffering.max.kbytes", cfg.queue_kbytes.to_string())
            .set("queue.buffering.max.messages", "100000")
            .set("linger.ms", "20")
            .set("client.id", format!("hids-agent-{host_id}"));
        if !cfg.idempotence {
            // Without idempotence, only one request in flight keeps retries in order.
            c.set("max.in.flight.requests.per.connection", "1");
        }
        for (k, v) in &cfg.properties {
            c.set(k, v);
        }
        c.create_with_context(Reports {
            done: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
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
            other if permanent(&other) => SendError::Poison(other.to_string()),
            other => SendError::Other(other.to_string()),
        })
    }

    /// Waits up to `timeout` for everything queued to be delivered, serving delivery
    /// reports meanwhile; true when nothing is left in flight.
    pub fn drain(&self, timeout: Duration) -> bool {
        self.producer.flush(timeout).is_ok()
    }

    /// Serves librdkafka's callbacks and returns the delivery reports since last time.
    pub fn poll(&self) -> Vec<Delivery> {
        self.serve();
        std::mem::take(&mut *self.reports())
    }

    /// `poll` with a zero timeout serves exactly one event (one batch of reports): call
    /// it until a call brings nothing new, so reports never fall behind.
    fn serve(&self) {
        for _ in 0..100_000 {
            let before = self.queued_reports();
            self.producer.poll(Duration::ZERO);
            if self.queued_reports() == before {
                break;
            }
        }
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, Vec<Delivery>> {
        self.producer
            .context()
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn queued_reports(&self) -> usize {
        self.reports().len()
    }

    /// librdkafka's client errors since the last call (connection refused, ...).
    pub fn errors(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// A fatal error leaves the producer unusable (an idempotent producer can reach one
    /// when messages time out against a broker that cannot reset its sequence): the
    /// caller must make a new one.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, text)| format!("{code:?}: {text}"))
    }

    /// Messages queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Gives back everything still queued or in flight as failed deliveries (at
    /// shutdown, so the caller spools them instead of losing them).
    pub fn purge(&self) {
        use rdkafka::producer::PurgeConfig;
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        self.serve();
    }
}
