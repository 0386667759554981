//! The master's event queue, from the plugin readers and the agent's own streams to the
//! pipeline thread: bounded in events *and* in bytes. A count alone is no bound on
//! memory: 4,096 events of up to a 1 MiB frame each would be 4 GiB.
//!
//! Events travel in batches of one stream (a plugin reader sends what one read of its
//! pipe brought), so a burst costs one send and one wake-up of the pipeline, not one per
//! event. Each queued batch holds its share of both budgets until the pipeline has
//! handled it. A plugin reader waits for room (the pressure goes back through its pipe
//! to the plugin, whose own bounded queue drops and counts at the source); the agent's
//! own events never wait: what does not fit is counted by the caller.

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

/// Consecutive events of one run of one stream, in order: each with its sequence
/// number.
pub struct Batch {
    pub plugin: Arc<str>,
    pub run_id: Arc<str>,
    pub events: Vec<(u64, Vec<u8>)>,
    bytes: usize,
}

impl Batch {
    pub fn new(plugin: Arc<str>, run_id: Arc<str>) -> Self {
        Batch {
            plugin,
            run_id,
            events: Vec::new(),
            bytes: 0,
        }
    }

    pub fn push(&mut self, seq: u64, event: Vec<u8>) {
        self.bytes += event.len();
        self.events.push((seq, event));
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Bytes of the events held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Where its last event sits in its stream.
    pub fn last(&self) -> Option<Position> {
        self.events.last().map(|(seq, _)| Position {
            plugin: self.plugin.clone(),
            run_id: self.run_id.clone(),
            seq: *seq,
        })
    }

    fn one(bytes: Vec<u8>, position: Position) -> Self {
        let mut batch = Batch::new(position.plugin, position.run_id);
        batch.push(position.seq, bytes);
        batch
    }
}

/// One queued batch.
pub struct Queued {
    pub batch: Batch,
    /// Its share of the byte and event budgets, given back when the batch is dropped.
    _room: OwnedSemaphorePermit,
    _count: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    count: Arc<Semaphore>,
    limit_bytes: u32,
    limit_events: u32,
}

/// The queue is closed: the pipeline is gone (the agent is stopping).
#[derive(Debug)]
pub struct Closed;

/// A queue of at most `events` events and `bytes` bytes of them.
pub fn channel(events: usize, bytes: u32) -> (EventSender, mpsc::Receiver<Queued>) {
    let limit_events = u32::try_from(events.max(1)).unwrap_or(u32::MAX);
    // Every batch holds at least one event: the channel is never the tighter bound.
    let (tx, rx) = mpsc::channel(limit_events as usize);
    let limit_bytes = bytes.max(1);
    let room = Arc::new(Semaphore::new(limit_bytes as usize));
    let count = Arc::new(Semaphore::new(limit_events as usize));
    (
        EventSender {
            tx,
            room,
            count,
            limit_bytes,
            limit_events,
        },
        rx,
    )
}

impl EventSender {
    /// The queue's bounds: events, bytes.
    pub fn limits(&self) -> (usize, usize) {
        (self.limit_events as usize, self.limit_bytes as usize)
    }

    /// Its share of the budgets. A batch larger than a whole budget takes all of it (it
    /// waits for an empty queue) rather than never fitting.
    fn cost(&self, batch: &Batch) -> (u32, u32) {
        let bytes = u32::try_from(batch.bytes())
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit_bytes);
        let events = u32::try_from(batch.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit_events);
        (bytes, events)
    }

    /// Queues `batch`, waiting for room.
    ///
    /// # Errors
    /// When the pipeline is gone.
    pub async fn send_batch(&self, batch: Batch) -> Result<(), Closed> {
        let (bytes, events) = self.cost(&batch);
        let room = self.room.clone().acquire_many_owned(bytes).await;
        let count = self.count.clone().acquire_many_owned(events).await;
        let (Ok(room), Ok(count)) = (room, count) else {
            return Err(Closed);
        };
        self.tx
            .send(Queued {
                batch,
                _room: room,
                _count: count,
            })
            .await
            .map_err(|_| Closed)
    }

    /// Queues `bytes` only if there is room now.
    ///
    /// # Errors
    /// When the queue is full (in events or bytes) or closed: the event comes back.
    pub fn try_send(&self, bytes: Vec<u8>, position: Position) -> Result<(), Vec<u8>> {
        let batch = Batch::one(bytes, position);
        let (bytes, events) = self.cost(&batch);
        let room = self.room.clone().try_acquire_many_owned(bytes);
        let count = self.count.clone().try_acquire_many_owned(events);
        let (Ok(room), Ok(count)) = (room, count) else {
            return Err(into_event(batch));
        };
        self.tx
            .try_send(Queued {
                batch,
                _room: room,
                _count: count,
            })
            .map_err(|e| into_event(e.into_inner().batch))
    }
}

/// The event of a batch of one.
fn into_event(batch: Batch) -> Vec<u8> {
    batch
        .events
        .into_iter()
        .next()
        .map(|(_, bytes)| bytes)
        .unwrap_or_default()
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
        assert_eq!(first.batch.last().unwrap().seq, 1);
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

    #[tokio::test]
    async fn a_batch_takes_its_events_from_the_count_and_its_bytes_from_the_budget() {
        let (tx, mut rx) = channel(10, 1000);
        let mut batch = Batch::new("p".into(), "r".into());
        for seq in 1..=8 {
            batch.push(seq, vec![b'x'; 10]);
        }
        tx.send_batch(batch).await.unwrap();
        tx.try_send(vec![b'x'; 10], at(9)).unwrap();
        tx.try_send(vec![b'x'; 10], at(10)).unwrap();
        assert!(
            tx.try_send(vec![b'x'; 10], at(11)).is_err(),
            "11 events do not fit in 10, although 110 bytes fit in 1,000"
        );
        let first = rx.recv().await.unwrap();
        assert_eq!(first.batch.len(), 8);
        assert_eq!(first.batch.bytes(), 80);
        let last = first.batch.last().unwrap();
        assert_eq!((&*last.plugin, &*last.run_id, last.seq), ("p", "r", 8));
        drop(first);
        tx.try_send(vec![b'x'; 10], at(11)).unwrap();
    }
}
