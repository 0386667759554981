//! The consumer: reads the event topics as one Kafka consumer group, checks each batch,
//! stores what it raised, and only then commits the batch's offsets. A crash between the
//! two replays the batch; the store counts each event once (by its Kafka position), so
//! a replay neither loses nor duplicates an alert.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hids_store::{Hit, Position, Recorded, Store};
use hids_types::alert::Alert;
use hids_types::stagger::Backoff;
use hids_types::Timestamp;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::{KafkaConfig, ServerConfig};
use crate::fleet::presence::Presence;
use crate::fleet::Ownership;
use crate::fleet_metrics::RuleLabel;
use crate::metrics::{level_label, Metrics};
use crate::outputs::Outputs;
use crate::triage::Triage;

/// How often the operators' suppressions are re-read from the store, so one made on
/// any instance applies on all within this.
const SUPPRESSIONS_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// The fleet's pass (silence, loss past its grace, quiet buckets): a tenth of the
/// smallest delay it judges (a minute).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const SWEEP_AT_MOST: Duration = Duration::from_secs(30);
/// The topics' partition counts are looked up again this often.
const METADATA_EVERY: Duration = Duration::from_secs(60);

/// librdkafka's view of this member: rebalances logged, lag from its statistics.
struct Member {
    metrics: Arc<Metrics>,
    /// Partitions rebalances took from us since the consumer last looked: the fleet
    /// books of their hosts go with them.
    revoked: std::sync::Mutex<Vec<(String, i32)>>,
}

impl ClientContext for Member {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!("kafka {fac}: {message}")
            }
            L::Warning => tracing::warn!("kafka {fac}: {message}"),
            L::Notice | L::Info => tracing::info!("kafka {fac}: {message}"),
            L::Debug => tracing::debug!("kafka {fac}: {message}"),
        }
    }

    fn stats(&self, stats: Statistics) {
        let mut lag = 0i64;
        for topic in stats.topics.values() {
            for (id, p) in &topic.partitions {
                // -1 is librdkafka's "internal" partition; a negative lag is unknown.
                if *id >= 0 && p.consumer_lag >= 0 {
                    lag += p.consumer_lag;
                }
            }
        }
        self.metrics.consumer_lag.set(lag);
    }
}

impl ConsumerContext for Member {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Ok(held) = consumer.assignment() {
            self.metrics
                .partitions
                .set(i64::try_from(held.count()).unwrap_or(i64::MAX));
        }
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!("partitions assigned: {}", describe(tpl)),
            Rebalance::Revoke(tpl) => {
                tracing::info!("partitions revoked: {}", describe(tpl));
                let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
                revoked.extend(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition())),
                );
            }
            Rebalance::Error(e) => tracing::warn!("rebalance failed: {e}"),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

fn consumer(cfg: &KafkaConfig, metrics: Arc<Metrics>) -> anyhow::Result<BaseConsumer<Member>> {
    let mut client = ClientConfig::new();
    // A fetch answers after this at the latest when there is nothing new (librdkafka
    // waits 500 ms). With tansu, which holds a fetch for the whole wait, exec-to-alert
    // p50 was 360 ms at 500 ms and 78 ms at 50 ms (docs/benchmarks.md).
    client.set("fetch.wait.max.ms", "100");
    for (k, v) in &cfg.librdkafka {
        client.set(k, v);
    }
    let consumer: BaseConsumer<Member> = client
        .set("bootstrap.servers", cfg.brokers.join(","))
        .set("group.id", &cfg.group)
        .set("client.id", "hids-server")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &cfg.start)
        // Cooperative: a joining or leaving instance moves only the partitions that
        // change hands; the others keep consuming through the rebalance.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A dead instance's partitions move after 10 s (librdkafka's default is 45 s).
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        .set("statistics.interval.ms", "5000")
        .create_with_context(Member {
            metrics,
            revoked: std::sync::Mutex::default(),
        })?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// One message, owned: the batch outlives the consumer's borrow. A payload over
/// `max_event_bytes` is not copied (`oversized`), only counted.
struct Taken {
    position: Position,
    kafka_time: Option<Timestamp>,
    payload: Option<Vec<u8>>,
    oversized: bool,
}

pub struct Consume {
    /// Registered agents from etcd (None without `[etcd]`).
    pub presence: Option<Arc<std::sync::Mutex<Presence>>>,
    pub config: ServerConfig,
    pub triage: Triage,
    pub store: Box<dyn Store>,
    pub outputs: Outputs,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<AtomicBool>,
    /// The inventory index, told when the batch stored inventories.
    pub inventory: Option<Arc<crate::inventory::Inventory>>,
}

impl Consume {
    /// Runs until `shutdown` is set; then finishes and commits the batch in hand.
    pub fn run(mut self) -> anyhow::Result<()> {
        let consumer = consumer(&self.config.kafka, self.metrics.clone())?;
        let mut batch = Vec::with_capacity(self.config.kafka.batch_events);
        let mut hits = Vec::new();
        let mut suppressions_at: Option<Instant> = None;
        let mut pruned_at: Option<Instant> = None;
        let mut swept_at = Instant::now();
        let mut sweep_every = SWEEP_EVERY;
        let mut league_at = Instant::now();
        let mut owner = Owner::default();
        while !self.shutdown.load(Ordering::Relaxed) {
            if swept_at.elapsed() >= sweep_every {
                swept_at = Instant::now();
                self.follow_assignment(&consumer, &mut owner);
                hits.clear();
                let presence = self.presence.clone();
                let pass = Instant::now();
                self.triage
                    .sweep(&owner.ownership, presence.as_deref(), &mut hits);
                // At a million hosts a pass takes a second or two: it may take at most
                // a twentieth of the thread, and still comes every half minute.
                sweep_every = (pass.elapsed() * 20).clamp(SWEEP_EVERY, SWEEP_AT_MOST);
                if !self.store_all(&hits) {
                    break;
                }
            }
            if league_at.elapsed() >= Duration::from_secs(self.config.fleet.league_secs) {
                league_at = Instant::now();
                self.write_league();
            }
            if suppressions_at.is_none_or(|t| t.elapsed() >= SUPPRESSIONS_EVERY) {
                self.reload_suppressions();
                suppressions_at = Some(Instant::now());
            }
            if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.prune();
                pruned_at = Some(Instant::now());
            }
            self.fill(&consumer, &mut batch);
            if batch.is_empty() {
                continue;
            }
            hits.clear();
            for m in &batch {
                if m.oversized {
                    self.triage.oversized();
                    continue;
                }
                self.triage.message(
                    m.payload.as_deref(),
                    m.kafka_time,
                    m.position.clone(),
                    &mut hits,
                );
            }
            self.note_detector();
            if !self.store_all(&hits) || !self.store_inventories() {
                break;
            }
            self.commit(&consumer, &batch);
            batch.clear();
        }
        self.write_league();
        // Leaving the group now hands our partitions over at once instead of after the
        // session timeout.
        consumer.unsubscribe();
        self.outputs.flush(Duration::from_secs(5));
        Ok(())
    }

    /// Up to `batch_events` messages, waiting at most `batch_wait_ms` for them.
    fn fill(&self, consumer: &BaseConsumer<Member>, batch: &mut Vec<Taken>) {
        let deadline = Instant::now() + Duration::from_millis(self.config.kafka.batch_wait_ms);
        while batch.len() < self.config.kafka.batch_events {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.shutdown.load(Ordering::Relaxed) {
                break;
            }
            match consumer.poll(left) {
                Some(Ok(m)) => batch.push(Taken {
                    position: Position {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                    },
                    kafka_time: broker_time(m.timestamp()),
                    payload: m
                        .payload()
                        .filter(|p| p.len() <= self.config.kafka.max_event_bytes)
                        .map(<[u8]>::to_vec),
                    oversized: m
                        .payload()
                        .is_some_and(|p| p.len() > self.config.kafka.max_event_bytes),
                }),
                Some(Err(e)) => {
                    tracing::warn!("kafka: {e}");
                    break;
                }
                None => break,
            }
        }
    }

    /// Stores the batch's hits, retrying with backoff while the store is away: offsets
    /// are not committed before this succeeds, so nothing is lost. False when asked to
    /// stop before the store came back.
    fn store_all(&mut self, hits: &[Hit]) -> bool {
        if hits.is_empty() {
            return true;
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let now = Timestamp::now();
            match self.store.record(hits, now) {
                Ok(recorded) => {
                    self.deliver(hits, &recorded, now);
                    return true;
                }
                Err(e) => {
                    self.metrics.store_failures.inc();
                    if e.refuses_the_data() && self.store_one_by_one(hits) {
                        return true;
                    }
                    let wait = backoff.failed();
                    tracing::error!(
                        "store: {e}; retrying in {wait:?} (offsets stay uncommitted until it succeeds)"
                    );
                    if self.sleep_unless_stopped(wait) {
                        return false;
                    }
                }
            }
        }
    }

    /// Stores the batch's inventory reports, retrying like [`Consume::store_all`]: the
    /// offsets wait for it. False when asked to stop first.
    fn store_inventories(&mut self) -> bool {
        let reports = self.triage.take_inventories();
        if reports.is_empty() {
            return true;
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.store.record_inventories(&reports, Timestamp::now()) {
                Ok(outcomes) => {
                    self.count_inventory_outcomes(&reports, &outcomes);
                    if let Some(inventory) = &self.inventory {
                        inventory.poke();
                    }
                    return true;
                }
                Err(e) => {
                    self.metrics.store_failures.inc();
                    if e.refuses_the_data() && self.store_inventories_one_by_one(&reports) {
                        return true;
                    }
                    let wait = backoff.failed();
                    tracing::error!(
                        "store: inventories: {e}; retrying in {wait:?} (offsets stay uncommitted until it succeeds)"
                    );
                    if self.sleep_unless_stopped(wait) {
                        return false;
                    }
                }
            }
        }
    }

    /// After a batch the database refused for its values: each report alone, so one it
    /// cannot hold is refused and counted instead of stalling the partition. False when
    /// the store failed otherwise (the caller retries the batch).
    fn store_inventories_one_by_one(&mut self, reports: &[hids_store::InventoryReport]) -> bool {
        let mut outcomes = Vec::with_capacity(reports.len());
        for report in reports {
            match self
                .store
                .record_inventories(std::slice::from_ref(report), Timestamp::now())
            {
                Ok(mut one) => outcomes.append(&mut one),
                Err(e) if e.refuses_the_data() => outcomes.push(
                    hids_store::InventoryOutcome::Refused(format!("the store refused it: {e}")),
                ),
                Err(_) => return false,
            }
        }
        self.count_inventory_outcomes(reports, &outcomes);
        if let Some(inventory) = &self.inventory {
            inventory.poke();
        }
        true
    }

    fn count_inventory_outcomes(
        &self,
        reports: &[hids_store::InventoryReport],
        outcomes: &[hids_store::InventoryOutcome],
    ) {
        use hids_store::InventoryOutcome as O;
        for (report, outcome) in reports.iter().zip(outcomes) {
            let label = match outcome {
                O::Published { .. } => "published",
                O::Pending => "pending",
                O::UnknownHash => "unknown_hash",
                O::Refused(why) => {
                    tracing::warn!("inventory of host {} refused: {why}", report.host_id);
                    "refused"
                }
            };
            self.metrics
                .inventory_reports
                .get_or_create(&crate::metrics::OutcomeLabel { outcome: label })
                .inc();
        }
    }

    /// After a batch failed: each hit alone, so one whose values the database refuses
    /// (a character PostgreSQL cannot hold) does not hold the others back for ever.
    /// True when every hit was either stored or refused for its values (those are
    /// counted and left out); false at the first other error (the store is away or
    /// busy): the caller retries the whole batch, and what was stored meanwhile is not
    /// counted twice.
    fn store_one_by_one(&mut self, hits: &[Hit]) -> bool {
        let mut refused = Vec::new();
        let mut stored = 0usize;
        for hit in hits {
            let now = Timestamp::now();
            match self.store.record(std::slice::from_ref(hit), now) {
                Ok(recorded) => {
                    stored += 1;
                    self.deliver(std::slice::from_ref(hit), &recorded, now);
                }
                Err(e) if e.refuses_the_data() => refused.push((hit, e)),
                Err(_) => return false,
            }
        }
        // Every hit of several refused: the database (its schema, a constraint) is at
        // fault, not these values. Retry rather than drop a whole batch of alerts.
        if stored == 0 && hits.len() > 1 {
            return false;
        }
        for (hit, e) in refused {
            self.metrics.hits_refused.inc();
            tracing::error!(
                "store refused a hit of rule {} on host {:?} at {}/{}@{}: {e}; left out, the rest of the batch is stored",
                hit.rule_id, hit.host_id, hit.position.topic, hit.position.partition, hit.position.offset
            );
        }
        true
    }

    /// New alerts go to the outputs; counted hits to the metrics.
    fn deliver(&self, hits: &[Hit], recorded: &[Recorded], now: Timestamp) {
        for (hit, r) in hits.iter().zip(recorded) {
            if !r.counted {
                self.metrics.redelivered.inc();
                continue;
            }
            if r.created {
                self.metrics
                    .alerts
                    .get_or_create(&level_label(hit.level))
                    .inc();
                self.metrics
                    .fleet
                    .alerts_by_rule
                    .get_or_create(&RuleLabel {
                        rule_id: hit.rule_id.clone(),
                    })
                    .inc();
                self.outputs.send(&alert_of(hit, &r.alert_id, now));
            }
        }
    }

    /// Commits the next offset of every partition in the batch. A failure (a rebalance
    /// took the partition, the broker is away) is counted: the next owner replays from
    /// the last commit and the store's positions keep the counts exact.
    fn commit(&self, consumer: &BaseConsumer<Member>, batch: &[Taken]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let e = next
                .entry((m.position.topic.as_str(), m.position.partition))
                .or_insert(0);
            *e = (*e).max(m.position.offset + 1);
        }
        // A partition a rebalance took during the batch is left to its new owner: our
        // commit could move its offset back past what the new owner committed.
        let held = consumer.assignment().unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if held.find_partition(topic, partition).is_none() {
                continue;
            }
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!("commit {topic}/{partition}: {e}");
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            self.metrics.commit_failures.inc();
            tracing::warn!("offset commit failed: {e}; the batch will be replayed by the partition's next owner (alerts stay exact)");
        }
    }

    /// Brings the fleet's view of our partitions up to date: books of revoked
    /// partitions dropped, ownership of the agents' topic refreshed.
    fn follow_assignment(&mut self, consumer: &BaseConsumer<Member>, owner: &mut Owner) {
        let Some(fleet) = self.triage.fleet_mut() else {
            return;
        };
        let revoked = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let gone: std::collections::HashSet<(u8, i32)> = revoked
            .iter()
            .filter_map(|(topic, p)| Some((topic_index(&self.config, topic)?, *p)))
            .collect();
        if !gone.is_empty() {
            fleet.forget(&gone);
            // Revoked and perhaps given back since: dated again from now, so hosts whose
            // books just went are not judged silent on the old date.
            let agents = agent_topic(&self.config);
            for (topic, p) in &revoked {
                if *topic == agents {
                    owner.ownership.held.remove(p);
                }
            }
        }
        owner.refresh(consumer, &self.config, fleet.now_secs());
        if owner.moved {
            fleet.partitions_moved();
        }
    }

    /// Writes the daily league's leaders among this instance's hosts. A failure is
    /// logged: the next write (minutes later) carries the same figures, newer.
    fn write_league(&mut self) {
        let Some(fleet) = self.triage.fleet_mut() else {
            return;
        };
        let now = Timestamp::now();
        for (day, figure, rows) in fleet.league() {
            if rows.is_empty() {
                continue;
            }
            if let Err(e) = self.store.put_top(&day, figure, &rows, now) {
                tracing::warn!("cannot write the {day} {} league: {e}", figure.as_str());
            }
        }
    }

    fn reload_suppressions(&mut self) {
        match self.store.suppressions() {
            Ok(s) => {
                self.metrics
                    .suppressions
                    .set(i64::try_from(s.len()).unwrap_or(i64::MAX));
                self.triage.set_suppressions(s);
            }
            Err(e) => tracing::warn!("cannot read suppressions (keeping the last ones): {e}"),
        }
    }

    fn prune(&mut self) {
        let keep = Duration::from_secs(self.config.alerts.retention_days.saturating_mul(86_400));
        let Some(before) = std::time::SystemTime::now()
            .checked_sub(keep)
            .map(Timestamp)
        else {
            return;
        };
        match self.store.prune(before) {
            Ok(0) => {}
            Ok(n) => tracing::info!("retention: deleted {n} alerts last seen before {before:?}"),
            Err(e) => tracing::warn!("retention: {e}"),
        }
        if let Err(e) = self.store.prune_top(&before.utc_day()) {
            tracing::warn!("retention of the daily league: {e}");
        }
    }

    fn note_detector(&self) {
        let stats = self.triage.detector().stats();
        self.metrics
            .frequency_keys
            .set(i64::try_from(stats.frequency_keys).unwrap_or(i64::MAX));
        self.metrics
            .frequency_evicted
            .set(i64::try_from(stats.frequency_evicted).unwrap_or(i64::MAX));
    }

    /// True when asked to stop while waiting.
    fn sleep_unless_stopped(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.shutdown.load(Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// When the broker appended the message, if the topic records it (LogAppendTime): a
/// clock the hosts do not control. A CreateTime is the producing host's own clock, no
/// check on it.
fn broker_time(t: rdkafka::Timestamp) -> Option<Timestamp> {
    match t {
        rdkafka::Timestamp::LogAppendTime(ms) => u64::try_from(ms)
            .ok()
            .map(|ms| Timestamp::from_unix_nanos(ms.saturating_mul(1_000_000))),
        _ => None,
    }
}

/// The alert a hit just created, as the outputs send it.
pub fn alert_of(hit: &Hit, id: &str, now: Timestamp) -> Alert {
    Alert {
        id: id.to_owned(),
        rule_id: hit.rule_id.clone(),
        title: hit.title.clone(),
        level: hit.level,
        techniques: hit.techniques.clone(),
        host_id: hit.host_id.clone(),
        hostname: hit.hostname.clone(),
        labels: hit.labels.clone(),
        count: hit.count,
        first_seen: hit.event_time,
        last_seen: hit.event_time,
        created_at: now,
        updated_at: now,
        event: serde_json::from_str(&hit.event).unwrap_or(serde_json::Value::Null),
    }
}

/// This instance's share of the hosts: which partitions of the agents' topic it holds
/// and since when, refreshed every sweep (partition counts every minute).
#[derive(Default)]
struct Owner {
    ownership: Ownership,
    counted_at: Option<Instant>,
    /// The assignment changed since the previous refresh.
    moved: bool,
}

impl Owner {
    /// `now`: the fleet's clock, which assignments are dated by.
    fn refresh(&mut self, consumer: &BaseConsumer<Member>, config: &ServerConfig, now: u32) {
        let agent_topic = agent_topic(config);
        if self
            .counted_at
            .is_none_or(|t| t.elapsed() >= METADATA_EVERY)
        {
            if let Some(agents) = partition_count(consumer, &agent_topic) {
                self.ownership.partitions = agents;
                self.counted_at = Some(Instant::now());
            }
        }
        // Unknown for a moment (the client busy): the previous view stands.
        let Ok(held) = consumer.assignment() else {
            self.moved = false;
            return;
        };
        let mine: Vec<i32> = held
            .elements()
            .iter()
            .filter(|e| e.topic() == agent_topic)
            .map(|e| e.partition())
            .collect();
        let before = self.ownership.held.len();
        self.ownership.held.retain(|p, _| mine.contains(p));
        let mut moved = self.ownership.held.len() != before;
        for p in mine {
            self.ownership.held.entry(p).or_insert_with(|| {
                moved = true;
                now
            });
        }
        self.moved = moved;
        self.ownership.assigned = held
            .elements()
            .iter()
            .filter_map(|e| Some((topic_index(config, e.topic())?, e.partition())))
            .collect();
    }
}

/// The topic of the agents' own stream: `fleet.agent_topic`, else the first topic.
fn agent_topic(config: &ServerConfig) -> String {
    config
        .fleet
        .agent_topic
        .clone()
        .or_else(|| config.kafka.topics.first().cloned())
        .unwrap_or_default()
}

/// A topic's place in `kafka.topics` (what the fleet's books record).
fn topic_index(config: &ServerConfig, topic: &str) -> Option<u8> {
    let i = config.kafka.topics.iter().position(|t| t == topic)?;
    u8::try_from(i).ok()
}

/// The partitions of the agents' topic; None when the broker does not answer (the
/// previous count stays).
fn partition_count(consumer: &BaseConsumer<Member>, topic: &str) -> Option<u32> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    u32::try_from(n).ok().filter(|&n| n > 0)
}
