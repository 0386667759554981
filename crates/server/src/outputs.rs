//! Where new alerts go besides the store: the alerts topic and webhooks. Both are fed
//! without waiting: a slow or dead destination fills its own bounded queue, and what
//! does not fit is counted, never held against detection.

use std::sync::Arc;
use std::time::Duration;

use hids_types::alert::{Alert, Level};
use hids_types::stagger::Backoff;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::mpsc;

use crate::config::{ServerConfig, WebhookConfig};
use crate::metrics::{output_label, Metrics};

pub struct Outputs {
    webhooks: Vec<Webhook>,
    topic: Option<AlertsTopic>,
    metrics: Arc<Metrics>,
}

struct Webhook {
    min_level: Level,
    queue: mpsc::Sender<Arc<Vec<u8>>>,
}

struct AlertsTopic {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
}

struct Deliveries {
    metrics: Arc<Metrics>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let label = output_label("kafka");
        match result {
            Ok(_) => {
                self.metrics.delivered.get_or_create(&label).inc();
            }
            Err((e, _)) => {
                self.metrics.delivery_given_up.get_or_create(&label).inc();
                tracing::warn!("alerts topic: an alert was not delivered: {e}");
            }
        }
    }
}

impl Outputs {
    /// Starts one delivery task per webhook on the current tokio runtime.
    pub fn start(config: &ServerConfig, metrics: Arc<Metrics>) -> anyhow::Result<Outputs> {
        let mut webhooks = Vec::new();
        for w in &config.webhooks {
            let (tx, rx) = mpsc::channel(w.queue_limit);
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(w.timeout_secs))
                .build()?;
            tokio::spawn(deliver_webhook(w.clone(), client, rx, metrics.clone()));
            webhooks.push(Webhook {
                min_level: w.min_level,
                queue: tx,
            });
        }
        let mut client = ClientConfig::new();
        for (k, v) in &config.kafka.librdkafka {
            client.set(k, v);
        }
        let topic = match &config.kafka.alerts_topic {
            Some(topic) => Some(AlertsTopic {
                producer: client
                    .set("bootstrap.servers", config.kafka.brokers.join(","))
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "20")
                    // Bounded: past this the send is refused and counted.
                    .set("queue.buffering.max.messages", "100000")
                    .set("message.timeout.ms", "300000")
                    .create_with_context(Deliveries {
                        metrics: metrics.clone(),
                    })?,
                topic: topic.clone(),
            }),
            None => None,
        };
        Ok(Outputs {
            webhooks,
            topic,
            metrics,
        })
    }

    /// Hands a new alert to every output; returns at once.
    pub fn send(&self, alert: &Alert) {
        let Ok(body) = serde_json::to_vec(alert) else {
            return;
        };
        let body = Arc::new(body);
        for w in &self.webhooks {
            if alert.level < w.min_level {
                continue;
            }
            if w.queue.try_send(body.clone()).is_err() {
                self.metrics
                    .delivery_dropped
                    .get_or_create(&output_label("webhook"))
                    .inc();
            }
        }
        if let Some(t) = &self.topic {
            let record = BaseRecord::to(&t.topic)
                .key(alert.host_id.as_str())
                .payload(body.as_slice());
            if let Err((e, _)) = t.producer.send(record) {
                self.metrics
                    .delivery_dropped
                    .get_or_create(&output_label("kafka"))
                    .inc();
                tracing::warn!("alerts topic: {e}");
            }
        }
    }

    /// At a stop: waits up to `budget` for the webhooks' queues to empty and the alerts
    /// topic to take what it holds. What is still queued then is dropped and counted.
    pub fn flush(&self, budget: Duration) {
        let deadline = std::time::Instant::now() + budget;
        // The topic first: dropping the producer afterwards purges what it still holds.
        if let Some(t) = &self.topic {
            let _ = t.producer.flush(budget / 2);
        }
        while self
            .webhooks
            .iter()
            .any(|w| w.queue.capacity() < w.queue.max_capacity())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left: usize = self
            .webhooks
            .iter()
            .map(|w| w.queue.max_capacity() - w.queue.capacity())
            .sum();
        if left > 0 {
            self.metrics
                .delivery_dropped
                .get_or_create(&output_label("webhook"))
                .inc_by(left as u64);
            tracing::warn!(
                "stopping with {left} alerts not yet sent to webhooks (they are in the store)"
            );
        }
    }
}

/// POSTs each alert, retrying with backoff up to `attempts`; one alert at a time, so a
/// hanging gateway costs one connection and its own queue, nothing else.
async fn deliver_webhook(
    config: WebhookConfig,
    client: reqwest::Client,
    mut queue: mpsc::Receiver<Arc<Vec<u8>>>,
    metrics: Arc<Metrics>,
) {
    let label = output_label("webhook");
    while let Some(body) = queue.recv().await {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = client
                .post(&config.url)
                .header("content-type", "application/json")
                .body(body.as_ref().clone())
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("answered {}", r.status())),
                Err(e) => Some(e.to_string()),
            };
            let Some(failure) = failure else {
                metrics.delivered.get_or_create(&label).inc();
                break;
            };
            metrics.delivery_failures.get_or_create(&label).inc();
            if attempt >= config.attempts {
                metrics.delivery_given_up.get_or_create(&label).inc();
                tracing::warn!(
                    "webhook {}: given up after {attempt} attempts: {failure}",
                    config.url
                );
                break;
            }
            let wait = backoff.failed();
            tracing::debug!("webhook {}: {failure}; retry in {wait:?}", config.url);
            tokio::time::sleep(wait).await;
        }
    }
}
