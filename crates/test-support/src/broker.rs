//! A Kafka-protocol broker (tansu) on a free loopback port, and ways to read back and
//! reconcile what reached it.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, free_port, tag};

/// A Kafka-protocol broker (tansu) on a free loopback port. Storage is SQLite in a
/// temporary directory, so a restarted broker keeps its data.
pub struct Broker {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Broker {
    pub fn start() -> Broker {
        let mut b = Broker {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        };
        b.spawn();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // tansu resolves a sqlite:// path from its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tansu runs (cargo install tansu --locked --features dynostore,libsql)");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {}: {}",
                self.addr(),
                std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn create_topic(&self, name: &str) {
        self.create_topic_with(name, 1);
    }

    pub fn create_topic_with(&self, name: &str, partitions: u32) {
        let out = Command::new("tansu")
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", self.addr()),
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the broker neither accepts nor refuses, as a hung broker or a network
    /// black hole would.
    pub fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    pub fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let child = self.child.as_ref().expect("the broker runs");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Writes `(key, payload)` messages to `topic` (keyed, so one key stays on one
    /// partition, as the agents' events do) and waits until the broker has them all.
    pub fn produce(&self, topic: &str, messages: &[(String, Vec<u8>)]) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for (key, payload) in messages {
            let mut record = BaseRecord::to(topic)
                .key(key.as_str())
                .payload(payload.as_slice());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        // The local queue is full: let deliveries drain it.
                        producer.poll(Duration::from_millis(50));
                        record = back;
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }

    /// Every message of `topic` (one partition) from its beginning, parsed.
    pub fn messages(&self, topic: &str) -> Vec<Value> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .set("group.id", format!("test-{}", tag()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let start = Instant::now();
        let mut next = low;
        while next < high {
            assert!(start.elapsed() < Duration::from_secs(60), "reading {topic}");
            let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let msg = msg.unwrap();
            next = msg.offset() + 1;
            if let Some(v) = msg.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                out.push(v);
            }
        }
        out
    }

    /// `hidsctl reconcile --json` over `topic`.
    pub fn reconcile(&self, topic: &str) -> Value {
        let out = Command::new(bin("hidsctl"))
            .args([
                "reconcile",
                "--brokers",
                &self.addr(),
                "--topic",
                topic,
                "--json",
                "--timeout",
                "60s",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "reconcile: {e}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
