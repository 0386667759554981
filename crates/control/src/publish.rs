//! The owner's side of the status key: hands each new status document to the session,
//! and tells it to write at once only when the document really changed.
//!
//! The agent and the fleet simulator both publish through here, so what the simulator
//! writes to etcd is what real agents write. What counts as a change is defined once, in
//! [`hids_types::status::AgentStatus::change_fingerprint`]; everything else (counters,
//! health, CPU and memory figures) waits for the session's periodic refresh.

use std::sync::Arc;

use hids_types::status::{AgentStatus, STATUS_MAX_BYTES};
use tokio::sync::watch;

/// What a session writes to the status key: encoded when written, not when published.
/// An agent publishes on every guard sample (every 5 s) and writes about once per
/// refresh (300 s): serializing every sample cost the fleet simulator, 100,000 agents
/// in one process, a fifth of a core for nothing.
pub trait StatusValue: Send + Sync + 'static {
    fn encode(&self) -> Vec<u8>;
}

impl StatusValue for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
}

/// Fills in what moves all the time but never counts as a change (measurements, the
/// time), when the document is written.
pub type Refresh = Arc<dyn Fn(&mut AgentStatus) + Send + Sync>;

/// The latest document published, as the session holds it.
#[derive(Clone, Default)]
pub struct Published {
    doc: Option<Arc<AgentStatus>>,
    refresh: Option<Refresh>,
}

impl StatusValue for Published {
    fn encode(&self) -> Vec<u8> {
        match (&self.doc, &self.refresh) {
            (Some(doc), Some(refresh)) => {
                let mut doc = AgentStatus::clone(doc);
                refresh(&mut doc);
                encode(&doc)
            }
            (Some(doc), None) => encode(doc),
            (None, _) => Vec::new(),
        }
    }
}

/// Sends status documents to a [`Session`](crate::session::Session).
pub struct StatusPublisher {
    tx: watch::Sender<Published>,
    refresh: Option<Refresh>,
    /// Fingerprint of the last document published; `None` before the first.
    last: Option<u64>,
}

impl StatusPublisher {
    /// A publisher and the receiver to give the session. The session writes nothing
    /// before the first [`StatusPublisher::publish`].
    pub fn new() -> (StatusPublisher, watch::Receiver<Published>) {
        let (tx, rx) = watch::channel(Published::default());
        let publisher = StatusPublisher {
            tx,
            refresh: None,
            last: None,
        };
        (publisher, rx)
    }

    /// Has `refresh` fill in every document as it is written. For a process speaking
    /// for many agents (the fleet simulator): its agents' guard figures move on every
    /// sample but never count as a change, so instead of every agent republishing every
    /// sample (20,000 documents a second at 100,000 agents), the figures are filled in
    /// when a document goes to etcd; etcd sees the same writes.
    #[must_use]
    pub fn with_refresh(mut self, refresh: Refresh) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// Makes `doc` the value the session's next write sends (a refresh included), and
    /// wakes the session for a write now only when `doc` differs from the previous
    /// document in a way [`hids_types::status::changed`] counts. Returns whether it did.
    pub fn publish(&mut self, doc: AgentStatus) -> bool {
        let fingerprint = doc.change_fingerprint();
        let changed = self.last != Some(fingerprint);
        self.last = Some(fingerprint);
        let published = Published {
            doc: Some(Arc::new(doc)),
            refresh: self.refresh.clone(),
        };
        self.tx.send_if_modified(|current| {
            *current = published;
            changed
        });
        changed
    }
}

/// `doc` as the status key holds it: JSON, cut to [`STATUS_MAX_BYTES`] when larger (one
/// serialization when it fits, which is always but for a misbehaving plugin).
pub fn encode(doc: &AgentStatus) -> Vec<u8> {
    // Plain data with string keys: serialization cannot fail.
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    if bytes.len() <= STATUS_MAX_BYTES {
        return bytes;
    }
    let mut cut = doc.clone();
    cut.fit(STATUS_MAX_BYTES);
    serde_json::to_vec(&cut).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_types::status::{PipelineStatus, PluginState, PluginStatus};
    use hids_types::Timestamp;

    fn doc() -> AgentStatus {
        AgentStatus {
            version: "1".into(),
            host_id: "h".into(),
            hostname: "h".into(),
            pid: 1,
            mode: "managed".into(),
            labels: Default::default(),
            ips: Vec::new(),
            applied_generation: 0,
            desired_error: None,
            desired_revision: 0,
            stopped_by_command: false,
            started_at: Timestamp::now(),
            updated_at: Timestamp::now(),
            plugins: vec![PluginStatus::new("p", "/p", PluginState::Running)],
            pipeline: PipelineStatus::default(),
            guard: None,
            cut: None,
            update: None,
            update_error: None,
            rolled_back: None,
        }
    }

    #[test]
    fn only_changes_wake_the_session_but_every_document_is_kept() {
        let (mut publisher, mut rx) = StatusPublisher::new();
        let mut d = doc();
        assert!(
            publisher.publish(d.clone()),
            "the first document is a change"
        );
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        d.plugins[0].events = 500;
        assert!(!publisher.publish(d.clone()));
        assert!(!rx.has_changed().unwrap_or(true), "counters wake nobody");
        let bytes = rx.borrow().encode();
        let kept: AgentStatus = serde_json::from_slice(&bytes).unwrap_or_else(|_| doc());
        assert_eq!(
            kept.plugins[0].events, 500,
            "the refresh sends the latest counters"
        );
        d.plugins[0].state = PluginState::Backoff;
        assert!(publisher.publish(d));
        assert!(rx.has_changed().unwrap_or(false));
    }

    #[test]
    fn a_refresh_fills_in_the_figures_when_the_document_is_written() {
        let refresh: Refresh = Arc::new(|d: &mut AgentStatus| d.pid = 4242);
        let (publisher, rx) = StatusPublisher::new();
        let mut publisher = publisher.with_refresh(refresh);
        publisher.publish(doc());
        let sent: AgentStatus =
            serde_json::from_slice(&rx.borrow().encode()).unwrap_or_else(|_| doc());
        assert_eq!(sent.pid, 4242);
    }

    #[test]
    fn an_oversized_document_is_cut_before_it_is_sent() {
        let mut d = doc();
        d.plugins[0].health = Some(serde_json::json!({"x": "y".repeat(1 << 20)}));
        let bytes = encode(&d);
        assert!(bytes.len() <= STATUS_MAX_BYTES);
        let sent: AgentStatus = serde_json::from_slice(&bytes).unwrap_or_else(|_| doc());
        assert_eq!(sent.cut.map(|c| c.health), Some(1));
    }
}
