//! Many watches on one gRPC watch stream, the way etcd's gRPC proxy coalesces them.
//!
//! A real agent opens its own stream (one per host, by design). A process that speaks
//! for many agents (the fleet simulator, or a future per-rack relay) can instead put
//! every agent's watch on a few shared streams: etcd then keeps one stream's buffers
//! and goroutines per stream instead of per agent (about 35 KB each, see
//! docs/control-plane.md).
//!
//! One task per stream owns both halves: it sends create and cancel requests and routes
//! each response to its subscriber by watch id. etcd answers creates on a stream in the
//! order they were sent, which is how a `created` response finds its subscriber.
//! A subscriber that falls behind is dropped from the stream (its receiver ends, it
//! re-reads and watches again), so one slow consumer never stalls the others.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use etcd_client::{Client, WatchOptions, WatchRequestSender, WatchResponse};
use tokio::sync::mpsc;

/// Responses buffered per subscriber before it counts as fallen behind.
const SUBSCRIBER_BUFFER: usize = 8;
/// Create/cancel requests queued for a stream.
const REQUEST_QUEUE: usize = 1024;

/// A handle on one shared watch stream (cheap to clone). The stream is opened by the
/// first watch and opened again by the first watch after it broke.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    requests: tokio::sync::Mutex<Option<mpsc::Sender<Request>>>,
    next_token: AtomicU64,
    /// Subscribers dropped because their buffer was full.
    lagged: AtomicU64,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("lagged", &self.lagged())
            .finish_non_exhaustive()
    }
}

enum Request {
    Watch {
        key: Vec<u8>,
        options: WatchOptions,
        token: u64,
        to: mpsc::Sender<WatchResponse>,
    },
    Cancel(u64),
}

/// One watch on a shared stream. Dropping it cancels the watch.
pub struct Subscription {
    responses: mpsc::Receiver<WatchResponse>,
    token: u64,
    requests: mpsc::Sender<Request>,
}

impl Subscription {
    /// The next response for this watch; `None` once the watch is gone from the stream
    /// (the stream broke, or this subscriber fell behind): read again and re-watch.
    pub async fn message(&mut self) -> Option<WatchResponse> {
        self.responses.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // When the queue is full the stream task still cancels the watch, at its next
        // response, when it finds nobody listening.
        let _ = self.requests.try_send(Request::Cancel(self.token));
    }
}

impl WatchHub {
    pub fn new(client: Client) -> Self {
        WatchHub {
            inner: Arc::new(Inner {
                client,
                requests: tokio::sync::Mutex::new(None),
                next_token: AtomicU64::new(1),
                lagged: AtomicU64::new(0),
            }),
        }
    }

    /// Subscribers dropped so far because they fell behind.
    pub fn lagged(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
    }

    /// Watches `key` with `options` on the shared stream, opening it if needed.
    ///
    /// # Errors
    /// When the stream cannot be opened.
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: WatchOptions,
    ) -> Result<Subscription, etcd_client::Error> {
        let key = key.into();
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        let (to, responses) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut slot = self.inner.requests.lock().await;
        if let Some(requests) = slot.as_ref().filter(|r| !r.is_closed()) {
            let requests = requests.clone();
            drop(slot);
            let request = Request::Watch {
                key,
                options,
                token,
                to,
            };
            if requests.send(request).await.is_ok() {
                return Ok(Subscription {
                    responses,
                    token,
                    requests,
                });
            }
            return Err(etcd_client::Error::WatchError(
                "shared watch stream closed".into(),
            ));
        }
        // The stream opens with this subscriber's create request.
        let mut client = self.inner.client.clone();
        let stream = client.watch(key, Some(options)).await?;
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        *slot = Some(requests.clone());
        drop(slot);
        tokio::spawn(serve_stream(
            stream,
            queue,
            token,
            to,
            Arc::downgrade(&self.inner),
        ));
        Ok(Subscription {
            responses,
            token,
            requests,
        })
    }
}

struct Route {
    to: mpsc::Sender<WatchResponse>,
    watch_id: Option<i64>,
}

/// One stream's routing: which subscriber each watch id, and each create request not
/// yet answered, belongs to.
struct Routing {
    sender: WatchRequestSender,
    routes: HashMap<u64, Route>,
    by_id: HashMap<i64, u64>,
    /// Tokens whose create request was sent and not yet answered, oldest first.
    awaiting: VecDeque<u64>,
    hub: Weak<Inner>,
}

impl Routing {
    /// Routing for a stream opened with `first`'s create request.
    fn new(
        sender: WatchRequestSender,
        first_token: u64,
        first: mpsc::Sender<WatchResponse>,
        hub: Weak<Inner>,
    ) -> Self {
        let route = Route {
            to: first,
            watch_id: None,
        };
        Routing {
            sender,
            routes: HashMap::from([(first_token, route)]),
            by_id: HashMap::new(),
            awaiting: VecDeque::from([first_token]),
            hub,
        }
    }

    /// Sends a subscriber's create or cancel request on the stream.
    async fn request(&mut self, request: Request) -> Result<(), etcd_client::Error> {
        match request {
            Request::Watch {
                key,
                options,
                token,
                to,
            } => {
                self.routes.insert(token, Route { to, watch_id: None });
                self.awaiting.push_back(token);
                self.sender.watch(key, Some(options)).await
            }
            Request::Cancel(token) => match self.routes.remove(&token) {
                Some(Route {
                    watch_id: Some(id), ..
                }) => {
                    self.by_id.remove(&id);
                    self.sender.cancel(id).await
                }
                // Not created yet: the route is gone, so the create answer finds
                // nobody and cancels then.
                _ => Ok(()),
            },
        }
    }

    /// Passes a response to its subscriber.
    async fn response(&mut self, resp: WatchResponse) -> Result<(), etcd_client::Error> {
        let id = resp.watch_id();
        let token = if resp.created() {
            match self.created(&resp).await? {
                Some(token) => token,
                None => return Ok(()),
            }
        } else {
            match self.by_id.get(&id) {
                Some(token) => *token,
                None => return Ok(()),
            }
        };
        let ended = resp.canceled();
        let Some(route) = self.routes.get(&token) else {
            return Ok(());
        };
        let delivered = match route.to.try_send(resp) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(hub) = self.hub.upgrade() {
                    hub.lagged.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if ended || !delivered {
            self.routes.remove(&token);
            self.by_id.remove(&id);
            if !ended {
                self.sender.cancel(id).await?;
            }
        }
        Ok(())
    }

    /// The subscriber a create answer is for (etcd answers creates in the order they
    /// were sent); `None` when nobody waits for it any more, and then the new watch is
    /// cancelled.
    async fn created(&mut self, resp: &WatchResponse) -> Result<Option<u64>, etcd_client::Error> {
        let Some(token) = self.awaiting.pop_front() else {
            return Ok(None);
        };
        let id = resp.watch_id();
        match self.routes.get_mut(&token) {
            Some(route) if !resp.canceled() => {
                route.watch_id = Some(id);
                self.by_id.insert(id, token);
            }
            Some(_) => {}
            None => {
                if !resp.canceled() {
                    self.sender.cancel(id).await?;
                }
                return Ok(None);
            }
        }
        Ok(Some(token))
    }
}

/// Owns one stream until it breaks or every handle on it is gone.
async fn serve_stream(
    stream: etcd_client::WatchStream,
    mut queue: mpsc::Receiver<Request>,
    first_token: u64,
    first: mpsc::Sender<WatchResponse>,
    hub: Weak<Inner>,
) {
    let (sender, mut responses) = stream.split();
    let mut routing = Routing::new(sender, first_token, first, hub.clone());
    loop {
        let sent = tokio::select! {
            request = queue.recv() => match request {
                None => break,
                Some(request) => routing.request(request).await,
            },
            message = responses.message() => match message {
                Ok(Some(resp)) => routing.response(resp).await,
                _ => break,
            },
        };
        if sent.is_err() {
            break;
        }
    }
    // Dropping the routes ends every subscriber's receiver: each reads again and
    // watches on a new stream.
    drop(routing);
    drop(queue);
    let Some(hub) = hub.upgrade() else { return };
    let mut slot = hub.requests.lock().await;
    if slot.as_ref().is_some_and(mpsc::Sender::is_closed) {
        *slot = None;
    }
}
