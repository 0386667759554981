//! The master's event queue, from the plugin readers and the agent's own streams to the
//! pipeline thread: bounded in events *and* in bytes. A count alone is no bound on
//! memory: 4,096 events of up to a 1 MiB frame each would be 4 GiB.
//!
//! Each queued event holds a share of the byte budget until the pipeline has handled it.
//! A plugin reader waits for room (the pressure goes back through its pipe to the
//! plugin, whose own bounded queue drops and counts at the source); the agent's own
//! events never wait: what does not fit is counted by the caller.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Which stream an event belongs to and where in it: known to the sender (checked
/// against the event by the plugin reader, or set by the master's own emitter), so the
/// pipeline can say where each run ended without parsing events again.
#[derive(Debug, Clone)]
pub struct Position {
    pub plugin: Arc<str>,
    pub run_id: Arc<str>,
    pub seq: u64,
}

/// One queued event.
pub struct Queued {
    pub bytes: Vec<u8>,
    pub position: Position,
    /// Its share of the byte budget, given back when the event is dropped.
    _room: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    limit_bytes: u32,
}

/// The queue is closed: the pipeline is gone (the agent is stopping).
#[derive(Debug)]
pub struct Closed;

/// A queue of at most `events` events and `bytes` bytes of them.
pub fn channel(events: usize, bytes: u32) -> (EventSender, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(events.max(1));
    let limit_bytes = bytes.max(1);
    let room = Arc::new(Semaphore::new(limit_bytes as usize));
    (
        EventSender {
            tx,
            room,
            limit_bytes,
        },
        rx,
    )
}

impl EventSender {
    /// An event larger than the whole budget takes all of it (it waits for an empty
    /// queue) rather than never fitting.
    fn cost(&self, bytes: &[u8]) -> u32 {
        u32::try_from(bytes.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit_bytes)
    }

    /// Queues `bytes`, waiting for room.
    ///
    /// # Errors
    /// When the pipeline is gone.
    pub async fn send(&self, bytes: Vec<u8>, position: Position) -> Result<(), Closed> {
        let room = self
            .room
            .clone()
            .acquire_many_owned(self.cost(&bytes))
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Queued {
                bytes,
                position,
                _room: room,
            })
            .await
            .map_err(|_| Closed)
    }

    /// Queues `bytes` only if there is room now.
    ///
    /// # Errors
    /// When the queue is full (in events or bytes) or closed: the event comes back.
    pub fn try_send(&self, bytes: Vec<u8>, position: Position) -> Result<(), Vec<u8>> {
        let room = match self.room.clone().try_acquire_many_owned(self.cost(&bytes)) {
            Ok(room) => room,
            Err(_) => return Err(bytes),
        };
        self.tx
            .try_send(Queued {
                bytes,
                position,
                _room: room,
            })
            .map_err(|e| e.into_inner().bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Position {
        Position {
            plugin: "p".into(),
            run_id: "r".into(),
            seq,
        }
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_and_come_back_when_handled() {
        let (tx, mut rx) = channel(100, 1000);
        tx.try_send(vec![b'x'; 600], at(1)).unwrap();
        assert!(
            tx.try_send(vec![b'x'; 600], at(2)).is_err(),
            "1,200 bytes do not fit in 1,000, although 2 events fit in 100"
        );
        tx.try_send(vec![b'x'; 400], at(3)).unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(first.position.seq, 1);
        drop(first);
        tx.try_send(vec![b'x'; 600], at(4)).unwrap();
    }

    #[tokio::test]
    async fn an_event_larger_than_the_budget_waits_for_an_empty_queue() {
        let (tx, mut rx) = channel(100, 1000);
        tx.try_send(vec![b'x'; 10], at(1)).unwrap();
        assert!(tx.try_send(vec![b'x'; 5000], at(2)).is_err());
        drop(rx.recv().await.unwrap());
        tx.try_send(vec![b'x'; 5000], at(2)).unwrap();
        assert!(tx.try_send(vec![b'x'; 1], at(3)).is_err());
    }
}
