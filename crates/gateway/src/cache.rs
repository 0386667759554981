//! Every host's desired state, kept from one etcd watch on `desired/`, and the agents'
//! single-key watches served from it.
//!
//! etcd sees one watcher per gateway instead of one per agent: a fleet-wide push is
//! N events on one stream to each gateway, which fans them out to its agents' streams.
//! Values are relayed byte for byte (the documents are signed for their host, and the
//! agent verifies them), so a gateway can delay or drop a document but never forge one.
//!
//! Only the latest value of each key is kept: an agent's watch starting at revision R
//! gets that value at once when it changed at or after R, then every later change. An
//! agent only ever applies the newest document, so the intermediate ones etcd would have
//! replayed change nothing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use etcd_client::proto::{PbEvent, PbKeyValue, PbResponseHeader, PbWatchResponse};
use tokio::sync::mpsc;
use tonic::Status;

/// Responses queued per agent watch stream before the stream counts as too slow and is
/// closed (its agents read again and watch again: a range served from this cache).
pub const STREAM_QUEUE: usize = 1024;

const EVENT_PUT: i32 = 0;
const EVENT_DELETE: i32 = 1;

/// The outgoing half of one agent's watch stream.
pub struct StreamOut {
    pub id: u64,
    tx: mpsc::Sender<PbWatchResponse>,
    /// Set when a response did not fit: the stream ends with an error at its next poll.
    overflowed: AtomicBool,
}

impl StreamOut {
    /// The stream's sender and what tonic sends from.
    pub fn open(id: u64) -> (Arc<StreamOut>, Outgoing) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let out = Arc::new(StreamOut {
            id,
            tx,
            overflowed: AtomicBool::new(false),
        });
        let outgoing = Outgoing {
            rx,
            out: out.clone(),
            done: false,
        };
        (out, outgoing)
    }

    /// Queues `resp`; false (and the stream marked for closing) when it is full or gone.
    pub fn offer(&self, resp: PbWatchResponse) -> bool {
        if self.tx.try_send(resp).is_ok() {
            return true;
        }
        self.overflowed.store(true, Ordering::Relaxed);
        false
    }

    /// Ends the stream with an error at its next poll (woken by an empty response that
    /// is never sent).
    fn end(&self) {
        self.overflowed.store(true, Ordering::Relaxed);
        let _ = self.tx.try_send(PbWatchResponse::default());
    }
}

/// The responses of one watch stream, as tonic sends them; ends with
/// `RESOURCE_EXHAUSTED` once the stream fell [`STREAM_QUEUE`] responses behind.
pub struct Outgoing {
    rx: mpsc::Receiver<PbWatchResponse>,
    out: Arc<StreamOut>,
    done: bool,
}

impl tokio_stream::Stream for Outgoing {
    type Item = Result<PbWatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.out.overflowed.load(Ordering::Relaxed) {
            self.done = true;
            return Poll::Ready(Some(Err(closed_by_gateway())));
        }
        let next = self.rx.poll_recv(cx);
        // Ended while this poll waited: the empty response that woke it (see
        // `StreamOut::end`) is not for the agent.
        if matches!(next, Poll::Ready(Some(_))) && self.out.overflowed.load(Ordering::Relaxed) {
            self.done = true;
            return Poll::Ready(Some(Err(closed_by_gateway())));
        }
        next.map(|r| r.map(Ok))
    }
}

fn closed_by_gateway() -> Status {
    Status::resource_exhausted(
        "watch stream closed by the gateway (it fell behind, or the gateway's etcd lease \
         was lost); watch again",
    )
}

/// One agent watch on one stream.
struct Subscriber {
    watch_id: i64,
    out: Arc<StreamOut>,
}

#[derive(Default)]
struct Inner {
    /// The revision the cache is complete up to.
    revision: i64,
    docs: HashMap<Vec<u8>, PbKeyValue>,
    watchers: HashMap<Vec<u8>, Vec<Subscriber>>,
    watches: usize,
}

/// Counters of the cache, for the gateway's report.
#[derive(Default)]
pub struct CacheCounters {
    pub events: AtomicU64,
    pub delivered: AtomicU64,
    /// Responses that found their stream full (the stream was then closed).
    pub overflowed: AtomicU64,
}

#[derive(Default)]
pub struct Cache {
    inner: Mutex<Inner>,
    header: Mutex<PbResponseHeader>,
    ready: AtomicBool,
    pub counters: CacheCounters,
}

/// What a range on one desired key answers.
pub struct Read {
    pub header: PbResponseHeader,
    pub kv: Option<PbKeyValue>,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data: keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the first full read of `desired/` is in.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The header of the latest etcd answer, with the cache's revision.
    pub fn header(&self) -> PbResponseHeader {
        let mut header = *self.header.lock().unwrap_or_else(|e| e.into_inner());
        header.revision = self.lock().revision;
        header
    }

    pub fn set_cluster(&self, cluster_id: u64, member_id: u64, raft_term: u64) {
        let mut header = self.header.lock().unwrap_or_else(|e| e.into_inner());
        header.cluster_id = cluster_id;
        header.member_id = member_id;
        header.raft_term = raft_term;
    }

    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// (documents, watches) held.
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.docs.len(), inner.watches)
    }

    pub fn get(&self, key: &[u8]) -> Read {
        let header = self.header();
        let inner = self.lock();
        Read {
            header: PbResponseHeader {
                revision: inner.revision,
                ..header
            },
            kv: inner.docs.get(key).cloned(),
        }
    }

    /// Registers watch `watch_id` on `key` for `out`, and queues its `created` answer
    /// followed by the current value when it changed at or after `start_revision` (both
    /// under the lock, so no event can come between them).
    pub fn watch(&self, key: Vec<u8>, start_revision: i64, watch_id: i64, out: &Arc<StreamOut>) {
        let header = self.header();
        let mut inner = self.lock();
        let header = PbResponseHeader {
            revision: inner.revision,
            ..header
        };
        let created = PbWatchResponse {
            header: Some(header),
            watch_id,
            created: true,
            ..Default::default()
        };
        if !out.offer(created) {
            return;
        }
        if let Some(kv) = inner.docs.get(&key) {
            if start_revision > 0 && kv.mod_revision >= start_revision {
                let event = PbEvent {
                    r#type: EVENT_PUT,
                    kv: Some(kv.clone()),
                    prev_kv: None,
                };
                let resp = PbWatchResponse {
                    header: Some(header),
                    watch_id,
                    events: vec![event],
                    ..Default::default()
                };
                if !out.offer(resp) {
                    return;
                }
            }
        }
        inner.watches += 1;
        inner.watchers.entry(key).or_default().push(Subscriber {
            watch_id,
            out: out.clone(),
        });
    }

    /// Removes watch `watch_id` of stream `stream` on `key`.
    pub fn unwatch(&self, key: &[u8], stream: u64, watch_id: i64) {
        let mut inner = self.lock();
        let Some(subs) = inner.watchers.get_mut(key) else {
            return;
        };
        let before = subs.len();
        subs.retain(|s| !(s.out.id == stream && s.watch_id == watch_id));
        let removed = before - subs.len();
        if subs.is_empty() {
            inner.watchers.remove(key);
        }
        inner.watches -= removed;
    }

    /// Replaces the whole cache with a fresh read at `revision`, and tells the watchers
    /// of every key that changed meanwhile (a gap in the etcd watch, compaction).
    pub fn reload(&self, kvs: Vec<PbKeyValue>, revision: i64) {
        let header = self.header();
        let mut inner = self.lock();
        let mut fresh: HashMap<Vec<u8>, PbKeyValue> =
            kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        let mut events = Vec::new();
        for (key, kv) in &fresh {
            let changed = inner
                .docs
                .get(key)
                .is_none_or(|old| old.mod_revision != kv.mod_revision);
            if changed {
                events.push(put_event(kv.clone()));
            }
        }
        for key in inner.docs.keys() {
            if !fresh.contains_key(key) {
                events.push(delete_event(key.clone(), revision));
            }
        }
        std::mem::swap(&mut inner.docs, &mut fresh);
        inner.revision = revision;
        let header = PbResponseHeader { revision, ..header };
        for event in events {
            self.deliver(&mut inner, &header, event);
        }
        drop(inner);
        self.ready.store(true, Ordering::Release);
    }

    /// Applies events etcd sent at `revision`, and passes each to its key's watchers.
    pub fn apply(&self, events: Vec<PbEvent>, revision: i64) {
        let header = self.header();
        let mut inner = self.lock();
        let header = PbResponseHeader { revision, ..header };
        for event in events {
            let Some(kv) = &event.kv else { continue };
            if event.r#type == EVENT_DELETE {
                inner.docs.remove(&kv.key);
            } else {
                inner.docs.insert(kv.key.clone(), kv.clone());
            }
            self.deliver(&mut inner, &header, event);
        }
        inner.revision = inner.revision.max(revision);
    }

    /// Ends every agent watch stream (their sessions end and register again) and
    /// forgets their watches: how many streams.
    pub fn end_all_streams(&self) -> usize {
        let mut inner = self.lock();
        let mut streams = std::collections::HashSet::new();
        for sub in inner.watchers.values().flatten() {
            if streams.insert(sub.out.id) {
                sub.out.end();
            }
        }
        inner.watchers.clear();
        inner.watches = 0;
        streams.len()
    }

    /// Moves the cache's revision on (an etcd progress notification: nothing changed
    /// under `desired/` up to `revision`).
    pub fn progress(&self, revision: i64) {
        let mut inner = self.lock();
        inner.revision = inner.revision.max(revision);
    }

    fn deliver(&self, inner: &mut Inner, header: &PbResponseHeader, event: PbEvent) {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let Some(kv) = &event.kv else { return };
        let Some(subs) = inner.watchers.get_mut(&kv.key) else {
            return;
        };
        let before = subs.len();
        subs.retain(|s| {
            let resp = PbWatchResponse {
                header: Some(*header),
                watch_id: s.watch_id,
                events: vec![event.clone()],
                ..Default::default()
            };
            s.out.offer(resp)
        });
        let dropped = before - subs.len();
        self.counters
            .delivered
            .fetch_add(subs.len() as u64, Ordering::Relaxed);
        if dropped > 0 {
            self.counters
                .overflowed
                .fetch_add(dropped as u64, Ordering::Relaxed);
            let key = kv.key.clone();
            if subs.is_empty() {
                inner.watchers.remove(&key);
            }
            inner.watches -= dropped;
        }
    }
}

fn put_event(kv: PbKeyValue) -> PbEvent {
    PbEvent {
        r#type: EVENT_PUT,
        kv: Some(kv),
        prev_kv: None,
    }
}

fn delete_event(key: Vec<u8>, revision: i64) -> PbEvent {
    PbEvent {
        r#type: EVENT_DELETE,
        kv: Some(PbKeyValue {
            key,
            mod_revision: revision,
            ..Default::default()
        }),
        prev_kv: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::Stream as _;

    fn kv(key: &str, value: &str, rev: i64) -> PbKeyValue {
        PbKeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    fn drain(rx: &mut Outgoing) -> Vec<PbWatchResponse> {
        let mut got = Vec::new();
        while let Ok(r) = rx.rx.try_recv() {
            got.push(r);
        }
        got
    }

    #[test]
    fn a_watch_gets_created_then_the_value_it_missed_then_later_changes_only_for_its_key() {
        let cache = Cache::default();
        cache.reload(vec![kv("d/a", "a1", 5), kv("d/b", "b1", 6)], 10);
        let (out, mut rx) = StreamOut::open(1);
        // Started after the read at 4: the value written at 5 is new to it.
        cache.watch(b"d/a".to_vec(), 5, 7, &out);
        // Started at 11: nothing to replay.
        cache.watch(b"d/b".to_vec(), 11, 8, &out);
        let got = drain(&mut rx);
        assert_eq!(got.len(), 3);
        assert!(got[0].created && got[0].watch_id == 7);
        assert_eq!(
            got[1].events[0].kv.as_ref().map(|k| &k.value[..]),
            Some(&b"a1"[..])
        );
        assert!(got[2].created && got[2].watch_id == 8);

        cache.apply(vec![put_event(kv("d/b", "b2", 12))], 12);
        cache.apply(vec![put_event(kv("d/c", "c1", 13))], 13);
        let got = drain(&mut rx);
        assert_eq!(got.len(), 1, "only d/b is watched");
        assert_eq!(got[0].watch_id, 8);
        assert_eq!(got[0].header.as_ref().map(|h| h.revision), Some(12));
        assert_eq!(cache.revision(), 13);

        cache.unwatch(b"d/b", 1, 8);
        cache.apply(vec![put_event(kv("d/b", "b3", 14))], 14);
        assert!(drain(&mut rx).is_empty());
        assert_eq!(cache.sizes(), (3, 1));
    }

    #[test]
    fn a_reload_after_a_gap_tells_watchers_what_changed_and_what_went() {
        let cache = Cache::default();
        cache.reload(vec![kv("d/a", "a1", 5), kv("d/b", "b1", 6)], 10);
        let (out, mut rx) = StreamOut::open(1);
        cache.watch(b"d/a".to_vec(), 11, 1, &out);
        cache.watch(b"d/b".to_vec(), 11, 2, &out);
        drain(&mut rx);
        cache.reload(vec![kv("d/a", "a2", 20)], 30);
        let got = drain(&mut rx);
        assert_eq!(got.len(), 2);
        let put = got
            .iter()
            .find(|r| r.watch_id == 1)
            .map(|r| r.events[0].r#type);
        let del = got
            .iter()
            .find(|r| r.watch_id == 2)
            .map(|r| r.events[0].r#type);
        assert_eq!((put, del), (Some(EVENT_PUT), Some(EVENT_DELETE)));
    }

    #[test]
    fn a_stream_that_falls_behind_is_ended_not_waited_for() {
        let cache = Cache::default();
        cache.reload(vec![], 1);
        let (out, mut rx) = StreamOut::open(1);
        cache.watch(b"d/a".to_vec(), 0, 1, &out);
        for rev in 2..(STREAM_QUEUE as i64 + 10) {
            cache.apply(vec![put_event(kv("d/a", "x", rev))], rev);
        }
        assert_eq!(cache.counters.overflowed.load(Ordering::Relaxed), 1);
        assert_eq!(cache.sizes().1, 0, "the slow watch is gone");
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let first = Pin::new(&mut rx).poll_next(&mut cx);
        assert!(matches!(first, Poll::Ready(Some(Err(_)))));
        assert!(matches!(
            Pin::new(&mut rx).poll_next(&mut cx),
            Poll::Ready(None)
        ));
    }
}
