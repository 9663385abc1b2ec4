//! Where syncing stands, and a stream of its changes.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;

use crate::changes::lock;

/// The state of the link to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Connection {
    /// Not syncing: no relay, `disconnect` was called, or syncing stopped
    /// for a reason retrying cannot fix (see [`Status::last_error`]).
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The link to the relay.
    pub connection: Connection,
    /// Local writes the relay has not acknowledged yet.
    pub pending_writes: usize,
    /// The room offset applied and stored here.
    pub cursor: u64,
    /// Room operations the relay has that are not applied here yet, as last known.
    pub lag: u64,
    /// Whether the token only allows reading.
    pub read_only: bool,
    /// The last problem: a dropped link, a refused token, a store failure.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Watcher {
    latest: Mutex<Option<Status>>,
    waker: AtomicWaker,
}

/// The database's side of every status stream.
#[derive(Debug, Default)]
pub(crate) struct StatusWatchers {
    list: Vec<Weak<Watcher>>,
    last: Option<Status>,
}

impl StatusWatchers {
    /// A stream that starts with `current`.
    pub(crate) fn watch(&mut self, current: Status) -> StatusStream {
        let watcher = Arc::new(Watcher {
            latest: Mutex::new(Some(current)),
            waker: AtomicWaker::new(),
        });
        self.list.push(Arc::downgrade(&watcher));
        StatusStream {
            watcher,
            ended: false,
        }
    }

    /// Tells every stream about `status` if it differs from the last one.
    pub(crate) fn publish(&mut self, status: Status) {
        if self.last.as_ref() == Some(&status) {
            return;
        }
        self.last = Some(status.clone());
        self.list.retain(|weak| {
            let Some(watcher) = weak.upgrade() else {
                return false;
            };
            *lock(&watcher.latest) = Some(status.clone());
            watcher.waker.wake();
            true
        });
    }

    /// Ends every stream (the database closed).
    pub(crate) fn end_all(&mut self) {
        for weak in self.list.drain(..) {
            if let Some(watcher) = weak.upgrade() {
                watcher.waker.wake();
            }
        }
    }
}

/// Status changes, from [`crate::Database::status_changes`]: the current
/// status first, then each new one. A slow reader skips to the latest.
#[derive(Debug)]
pub struct StatusStream {
    watcher: Arc<Watcher>,
    ended: bool,
}

impl Stream for StatusStream {
    type Item = Status;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Status>> {
        if self.ended {
            return Poll::Ready(None);
        }
        self.watcher.waker.register(cx.waker());
        if let Some(status) = lock(&self.watcher.latest).take() {
            return Poll::Ready(Some(status));
        }
        // Only the database's list holds a weak reference: when it is
        // gone, no more statuses can come.
        if Arc::weak_count(&self.watcher) == 0 {
            self.ended = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}
