//! Changes and status, pulled by foreign code: an `async` `next` for
//! Kotlin flows and Swift async sequences, a blocking `wait_next` with a
//! time limit for Python iterators. Foreign code never runs on the
//! database's thread, so a slow or throwing consumer cannot stall it (a
//! consumer far behind gets [`Change::Lagged`]).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::task::AtomicWaker;

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Origin {
    /// A write made through this database.
    Local,
    /// A write received from the relay.
    Remote,
}

/// Something changed in the database.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Change {
    /// A document was written or deleted.
    Document {
        /// Its collection.
        collection: String,
        /// Its id.
        id: String,
        /// Local or remote.
        origin: Origin,
    },
    /// A collection was created or dropped.
    Collection {
        /// The collection.
        collection: String,
        /// Local or remote.
        origin: Origin,
    },
    /// The subscriber fell far behind and missed changes: re-read what it shows.
    Lagged,
}

fn origin(origin: sync_ffi::Origin) -> Origin {
    match origin {
        sync_ffi::Origin::Local => Origin::Local,
        sync_ffi::Origin::Remote => Origin::Remote,
    }
}

impl From<sync_ffi::Change> for Change {
    fn from(change: sync_ffi::Change) -> Change {
        match change {
            sync_ffi::Change::Document {
                collection,
                id,
                origin: o,
            } => Change::Document {
                collection,
                id,
                origin: origin(o),
            },
            sync_ffi::Change::Collection {
                collection,
                origin: o,
            } => Change::Collection {
                collection,
                origin: origin(o),
            },
            // Lagged, and any kind added later: re-reading is always right.
            _ => Change::Lagged,
        }
    }
}

/// The state of the link to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Connection {
    /// Not syncing (no relay, disconnected, or stopped: see `last_error`).
    Offline,
    /// Opening a connection or joining the room.
    Connecting,
    /// Joined: writes go out and changes come in as they happen.
    Online,
    /// The link dropped; the next attempt is at `retry_at_ms`.
    Reconnecting {
        /// When the next attempt starts (ms since the Unix epoch).
        retry_at_ms: u64,
    },
}

/// A summary of syncing, for status displays.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Status {
    /// The link to the relay.
    pub connection: Connection,
    /// Local writes the relay has not acknowledged yet.
    pub pending_writes: u64,
    /// The room offset applied and stored here.
    pub cursor: u64,
    /// Room operations not applied here yet, as last known.
    pub lag: u64,
    /// Whether the token only allows reading.
    pub read_only: bool,
    /// The last problem: a dropped link, a refused token, a store failure.
    pub last_error: Option<String>,
}

impl From<sync_ffi::Status> for Status {
    fn from(status: sync_ffi::Status) -> Status {
        let connection = match status.connection {
            sync_ffi::Connection::Connecting => Connection::Connecting,
            sync_ffi::Connection::Online => Connection::Online,
            sync_ffi::Connection::Reconnecting { retry_at_ms } => {
                Connection::Reconnecting { retry_at_ms }
            }
            // Offline, and any state added later.
            _ => Connection::Offline,
        };
        Status {
            connection,
            pending_writes: status.pending_writes as u64,
            cursor: status.cursor,
            lag: status.lag,
            read_only: status.read_only,
            last_error: status.last_error,
        }
    }
}

/// A stream shared between foreign calls: `None` once it ended or was
/// cancelled. The waker of the last poll is kept so that `cancel` from
/// another thread wakes a reader waiting in `next` (else it would wait
/// forever: the stream that would have woken it is gone).
struct Pull<S> {
    stream: Mutex<Option<S>>,
    waker: AtomicWaker,
}

impl<S: Stream + Unpin> Pull<S> {
    fn new(stream: S) -> Pull<S> {
        Pull {
            stream: Mutex::new(Some(stream)),
            waker: AtomicWaker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<S>> {
        // A panic cannot happen while the lock is held (polling only), but
        // a poisoned lock must not turn into a panic across the FFI.
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.waker.register(cx.waker());
        let mut guard = self.lock();
        let Some(stream) = guard.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(stream).poll_next(cx);
        if let Poll::Ready(None) = polled {
            *guard = None;
        }
        polled
    }

    async fn next(&self) -> Option<S::Item> {
        poll_fn(|cx| self.poll(cx)).await
    }

    /// The next item, waiting at most `timeout`: `None` on timeout or end.
    fn wait_next(&self, timeout: Duration) -> Option<S::Item> {
        let deadline = Instant::now() + timeout;
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(item) = self.poll(&mut cx) {
                return item;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    fn is_ended(&self) -> bool {
        self.lock().is_none()
    }

    fn close(&self) {
        self.lock().take();
        self.waker.wake();
    }
}

/// Wakes a thread parked in [`Pull::wait_next`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Changes to a database, a collection or a document, in order. Read it
/// from one place at a time; close it (or let it be collected) to stop.
#[derive(uniffi::Object)]
pub struct Subscription(Pull<sync_ffi::Subscription>);

impl Subscription {
    pub(crate) fn new(inner: sync_ffi::Subscription) -> Subscription {
        Subscription(Pull::new(inner))
    }
}

#[uniffi::export]
impl Subscription {
    /// The next change; `None` once the database closed or this was cancelled.
    pub async fn next(&self) -> Option<Change> {
        self.0.next().await.map(Into::into)
    }

    /// The next change, waiting at most `timeout_ms`; `None` on timeout or
    /// end (tell them apart with [`Subscription::is_ended`]).
    pub fn wait_next(&self, timeout_ms: u64) -> Option<Change> {
        self.0
            .wait_next(Duration::from_millis(timeout_ms))
            .map(Into::into)
    }

    /// Whether no more changes can come.
    pub fn is_ended(&self) -> bool {
        self.0.is_ended()
    }

    /// Stops the subscription; a waiting `next` returns `None`. (Not
    /// `close`: Kotlin's `AutoCloseable.close` frees the handle.)
    pub fn cancel(&self) {
        self.0.close();
    }
}

/// The current status, then each change of it (a slow reader skips to the
/// latest).
#[derive(uniffi::Object)]
pub struct StatusStream(Pull<sync_ffi::StatusStream>);

impl StatusStream {
    pub(crate) fn new(inner: sync_ffi::StatusStream) -> StatusStream {
        StatusStream(Pull::new(inner))
    }
}

#[uniffi::export]
impl StatusStream {
    /// The next status; `None` once the database closed or this was cancelled.
    pub async fn next(&self) -> Option<Status> {
        self.0.next().await.map(Into::into)
    }

    /// The next status, waiting at most `timeout_ms`; `None` on timeout or end.
    pub fn wait_next(&self, timeout_ms: u64) -> Option<Status> {
        self.0
            .wait_next(Duration::from_millis(timeout_ms))
            .map(Into::into)
    }

    /// Whether no more statuses can come.
    pub fn is_ended(&self) -> bool {
        self.0.is_ended()
    }

    /// Stops the stream; a waiting `next` returns `None`.
    pub fn cancel(&self) {
        self.0.close();
    }
}
