//! The master's own events (guard transitions), on the same data path as the plugins'
//! and with the same accounting fields: plugin `agent`, its run id, a sequence number.

use std::sync::Arc;

use hids_types::event::{Event, EventMeta, Hids, Host};
use hids_types::guard::GuardStatus;
use hids_types::Timestamp;
use tokio::sync::mpsc;

pub struct AgentEvents {
    host: Host,
    run_id: Arc<str>,
    seq: u64,
    tx: mpsc::Sender<Vec<u8>>,
    /// Events not queued because the pipeline was full.
    pub dropped: u64,
}

impl AgentEvents {
    pub fn new(host_id: &str, hostname: &str, tx: mpsc::Sender<Vec<u8>>) -> Self {
        AgentEvents {
            host: Host {
                id: host_id.into(),
                hostname: hostname.into(),
            },
            run_id: hids_wire::new_run_id().into(),
            seq: 0,
            tx,
            dropped: 0,
        }
    }

    /// `guard_tripped`, `guard_probing`, `guard_recovered`.
    pub fn guard(&mut self, action: &str, status: &GuardStatus) {
        self.seq += 1;
        let mut event = EventMeta::new("event", "host", "change", action, "agent");
        event.sequence = self.seq;
        let mut hids = Hids::new("agent".into(), self.run_id.clone());
        hids.guard = Some(status.clone());
        let ev = Event {
            timestamp: Timestamp::now(),
            event,
            host: self.host.clone(),
            process: None,
            user: None,
            group: None,
            container: None,
            hids,
        };
        // The pipeline is bounded; a full one costs this event, counted, never a wait.
        match serde_json::to_vec(&ev).map(|b| self.tx.try_send(b)) {
            Ok(Ok(())) => {}
            _ => self.dropped += 1,
        }
    }
}
