//! The Kafka side of `bench/server-scale` and `bench/alert-latency`: fills a topic with
//! a realistic exec event mix as fast as librdkafka sends, and reads a topic back with
//! each message's Kafka timestamp.
//!
//! Usage:
//!   bench_topic produce BROKERS TOPIC COUNT [HOSTS [ATTACKS_PER_MILLE [SEED]]]
//!     COUNT events of `hids_detect::mix::event_mix`, keyed by host id as the agents key
//!     them; prints `sent COUNT in SECS s`, or fails when any delivery failed.
//!   bench_topic timestamps BROKERS TOPIC
//!     Every message of every partition, one JSON line each:
//!     `{"partition", "offset", "kafka_ms", "kafka_ts_type", "event"}` (`event` the
//!     payload, parsed; messages that are not JSON are counted on stderr).
//!   bench_topic group-lag BROKERS TOPIC GROUP
//!     Prints the events of TOPIC that GROUP has not committed yet (without joining it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

type Error = Box<dyn std::error::Error>;

const USAGE: &str = "usage: bench_topic produce BROKERS TOPIC COUNT [HOSTS [ATTACKS_PER_MILLE [SEED]]]\n       bench_topic timestamps BROKERS TOPIC\n       bench_topic group-lag BROKERS TOPIC GROUP";

/// Counts deliveries that failed, so a short topic is an error rather than a quiet gap.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> Result<T, Error> {
    match args.get(i) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("argument {i}: {text:?} is not a number\n{USAGE}").into()),
    }
}

fn produce(args: &[String]) -> Result<(), Error> {
    let (Some(brokers), Some(topic)) = (args.first(), args.get(1)) else {
        return Err(USAGE.into());
    };
    let count: usize = arg(args, 2, 200_000)?;
    let hosts: usize = arg(args, 3, 1_000)?;
    let per_mille: u32 = arg(args, 4, 10)?;
    let seed: u64 = arg(args, 5, 14)?;
    let events = hids_detect::mix::event_mix(count, hosts, per_mille, seed);
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.kbytes", "65536")
        .create_with_context(Deliveries::default())?;
    let start = Instant::now();
    for event in &events {
        let key = serde_json::from_str::<serde_json::Value>(event)?["host"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut record = BaseRecord::to(topic).key(&key).payload(event);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    // The local queue is full: let deliveries drain it.
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} of {count} deliveries failed").into());
    }
    println!("sent {count} in {:.3} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn timestamps(args: &[String]) -> Result<(), Error> {
    let (Some(brokers), Some(topic)) = (args.first(), args.get(1)) else {
        return Err(USAGE.into());
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-topic-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = 0;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
        remaining += high - low;
        assignment.add_partition_offset(topic, partition.id(), rdkafka::Offset::Offset(low))?;
    }
    consumer.assign(&assignment)?;
    let (mut not_json, start) = (0u64, Instant::now());
    while remaining > 0 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("{remaining} messages of {topic} not read in 120 s").into());
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        remaining -= 1;
        let (kafka_ms, kind) = match msg.timestamp() {
            Timestamp::CreateTime(ms) => (ms, "create"),
            Timestamp::LogAppendTime(ms) => (ms, "log_append"),
            Timestamp::NotAvailable => (0, "none"),
        };
        let Some(event) = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        else {
            not_json += 1;
            continue;
        };
        let line = serde_json::json!({"partition": msg.partition(), "offset": msg.offset(),
            "kafka_ms": kafka_ms, "kafka_ts_type": kind, "event": event});
        println!("{line}");
    }
    if not_json > 0 {
        eprintln!("{not_json} messages were not JSON");
    }
    Ok(())
}

fn group_lag(args: &[String]) -> Result<(), Error> {
    let [brokers, topic, group] = args else {
        return Err(USAGE.into());
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) =
            consumer.fetch_watermarks(topic, element.partition(), Duration::from_secs(10))?;
        let done = match element.offset() {
            rdkafka::Offset::Offset(n) => n,
            _ => low,
        };
        lag += (high - done).max(0);
    }
    println!("{lag}");
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("produce") => produce(&args[1..]),
        Some("timestamps") => timestamps(&args[1..]),
        Some("group-lag") => group_lag(&args[1..]),
        _ => Err(USAGE.into()),
    }
}
