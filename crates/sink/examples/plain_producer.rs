//! The baseline for `bench/pipeline`: a plain librdkafka producer, with the agent's
//! producer settings, sending JSON lines from a file as fast as it can.
//!
//! Usage: plain_producer BROKERS TOPIC FILE

use std::io::BufRead;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, file] = &args[..] else {
        return Err("usage: plain_producer BROKERS TOPIC FILE".into());
    };
    let lines: Vec<Vec<u8>> = std::io::BufReader::new(std::fs::File::open(file)?)
        .split(b'\n')
        .collect::<Result<_, _>>()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", "lz4")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("max.in.flight.requests.per.connection", "1")
        .set("queue.buffering.max.kbytes", "16384")
        .create()?;
    let start = Instant::now();
    for line in &lines {
        let mut record = BaseRecord::to(topic).key("bench-host").payload(line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    let secs = start.elapsed().as_secs_f64();
    println!("sent {} in {secs:.3} s", lines.len());
    Ok(())
}
