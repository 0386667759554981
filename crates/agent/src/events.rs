//! The master's own event streams, on the same data path as the plugins' and with the
//! same accounting: `agent` (resource guard transitions and the periodic resource
//! figures) and `pipeline` (declared drops, delivery stats), each with its own run id
//! and sequence.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hids_types::event::{Hids, Host, Labels, Producer};
use hids_types::guard::GuardStatus;
use hids_types::Timestamp;

use crate::queue::{EventSender, Position};

/// How often the `agent` stream reports the guard's figures (CPU and memory of the agent
/// and each plugin). They change on every sample, so they travel here, on the data
/// path, and not as status writes to etcd.
pub const AGENT_STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Builds the events of one stream (`hids.plugin` = its name).
pub struct Emitter {
    host: Host,
    labels: Labels,
    plugin: Arc<str>,
    run_id: Arc<str>,
    seq: u64,
}

impl Emitter {
    pub fn new(host: Host, labels: Labels, plugin: &str) -> Self {
        Emitter {
            host,
            labels,
            plugin: plugin.into(),
            run_id: hids_wire::new_run_id().into(),
            seq: 0,
        }
    }

    pub fn host_id(&self) -> &str {
        &self.host.id
    }

    /// One event: `kind`/`category`/`type` per ECS, `fill` adds the `hids` details.
    pub fn build(
        &mut self,
        kind: &str,
        category: &str,
        type_: &str,
        action: &str,
        fill: impl FnOnce(&mut Hids),
    ) -> Vec<u8> {
        self.seq += 1;
        let producer = Producer {
            host: self.host.clone(),
            labels: self.labels.clone(),
            plugin: self.plugin.clone(),
            run_id: self.run_id.clone(),
        };
        let mut ev = producer.event(Timestamp::now(), self.seq, kind, category, type_, action);
        fill(&mut ev.hids);
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_vec(&ev).unwrap_or_default()
    }

    /// Where the last event built sits in this stream.
    pub fn position(&self) -> Position {
        Position {
            plugin: self.plugin.clone(),
            run_id: self.run_id.clone(),
            seq: self.seq,
        }
    }

    /// The sequence number the next event will carry.
    pub fn next_sequence(&self) -> u64 {
        self.seq + 1
    }
}

/// Guard transitions and the periodic figures, queued into the pipeline like any
/// plugin's events.
pub struct AgentEvents {
    emitter: Emitter,
    tx: EventSender,
    /// Where events not queued (the pipeline full) wait to be declared.
    unqueued: Arc<Unqueued>,
}

impl AgentEvents {
    pub fn new(emitter: Emitter, tx: EventSender, unqueued: Arc<Unqueued>) -> Self {
        AgentEvents {
            emitter,
            tx,
            unqueued,
        }
    }

    /// `guard_tripped`, `guard_probing`, `guard_recovered`.
    pub fn guard(&mut self, action: &str, status: &GuardStatus) {
        let ev = self.emitter.build("event", "host", "change", action, |h| {
            h.guard = Some(status.clone())
        });
        self.queue(ev);
    }

    /// `stats` (`event.kind: metric`): the guard's state and the last sample's figures,
    /// every [`AGENT_STATS_EVERY`].
    pub fn stats(&mut self, status: &GuardStatus) {
        let ev = self.emitter.build("metric", "host", "info", "stats", |h| {
            h.guard = Some(status.clone())
        });
        self.queue(ev);
    }

    fn queue(&mut self, ev: Vec<u8>) {
        // The pipeline is bounded; a full one costs this event, declared, never a wait.
        if let Err(ev) = self.tx.try_send(ev, self.emitter.position()) {
            self.unqueued.push(ev);
        }
    }
}

/// The agent's own events that found the queue full: the pipeline declares them lost at
/// its next housekeeping (their sequence numbers are known), as `agent_events_queue_full`.
#[derive(Default)]
pub struct Unqueued {
    events: Mutex<Vec<Vec<u8>>>,
    /// Those past [`UNQUEUED_MAX`]: only counted.
    overflow: AtomicU64,
}

/// Agent events kept for declaration at most (the rest only counted).
const UNQUEUED_MAX: usize = 1024;

impl Unqueued {
    fn push(&self, event: Vec<u8>) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() < UNQUEUED_MAX {
            events.push(event);
        } else {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What waits to be declared, and how many more were only counted.
    pub fn take(&self) -> (Vec<Vec<u8>>, u64) {
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()));
        (events, self.overflow.swap(0, Ordering::Relaxed))
    }
}
