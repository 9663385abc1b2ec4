//! What a platform supplies: a transport, a store and a timer.
//!
//! The host loop (`host.rs`) is written once against these three
//! traits. The browser adapter implements them with a WebSocket, IndexedDB
//! and `setTimeout`; the native adapter with tokio-tungstenite, SQLite and
//! tokio's timer; tests with in-memory fakes and virtual time.
//!
//! Every future here is `'static` and need not be `Send`: the loop runs on
//! one thread (a browser's event loop, or a thread of its own natively).

use futures::future::LocalBoxFuture;
use futures::stream::LocalBoxStream;
use sync_core::store::Record;
use sync_core::{PersistBatch, Timestamp};

/// Something that arrived on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A binary frame.
    Frame(Vec<u8>),
    /// The connection closed or failed; nothing follows. `code` is the
    /// WebSocket close code the peer sent, if it sent one.
    Closed {
        /// The close code, if any.
        code: Option<u16>,
        /// The close reason or the failure, for logs and status.
        reason: String,
    },
}

/// Why a transport could not connect or send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// What went wrong, for status displays and logs.
    pub message: String,
}

impl TransportError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> TransportError {
        TransportError {
            message: message.into(),
        }
    }
}

/// The sending half of an open connection.
pub trait LinkSender {
    /// Sends one binary frame. Resolves once the transport took it (not
    /// once the peer received it); frames leave in the order sent.
    fn send(&mut self, frame: Vec<u8>) -> LocalBoxFuture<'_, Result<(), TransportError>>;

    /// Closes the connection with a WebSocket close code and reason.
    fn close(&mut self, code: u16, reason: String) -> LocalBoxFuture<'_, ()>;
}

/// An open connection: a sender, and the stream of what arrives. The
/// stream ends after [`Incoming::Closed`] (or without it, which counts the
/// same).
pub struct Link {
    /// Sends frames and closes.
    pub sender: Box<dyn LinkSender>,
    /// What arrives, in order.
    pub incoming: LocalBoxStream<'static, Incoming>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// Opens connections to a relay.
pub trait Transport {
    /// Opens a WebSocket to `url` (`ws://` or `wss://`). The loop applies its
    /// own handshake timeout; a transport may fail sooner.
    fn connect(&self, url: &str) -> LocalBoxFuture<'static, Result<Link, TransportError>>;
}

/// Why a store could not read or write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// Details, for people.
    pub message: String,
}

impl StoreError {
    /// An error of `kind` with details.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }
}

/// The kinds of store failure an application may want to tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Another process (or tab) holds the database: close it there first.
    #[error("the database is locked by another process")]
    Locked,
    /// The stored data does not decode: restore a backup or start a new database.
    #[error("the stored data is corrupt")]
    Corrupt,
    /// The device is out of space or quota: free some and retry.
    #[error("no space left for the database")]
    Full,
    /// Any other IO failure.
    #[error("the store failed")]
    Io,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// What the loop hands a store with a write: the answer for the callers
/// waiting on it, to give once the write is durable (see
/// [`ClientStore::write_notify`]). Giving it may happen on any thread and
/// does not block.
pub struct OnDurable {
    answer: Box<dyn FnOnce() + Send>,
}

impl OnDurable {
    /// `answer` tells the callers waiting on a write that it is durable.
    pub fn new(answer: impl FnOnce() + Send + 'static) -> OnDurable {
        OnDurable {
            answer: Box::new(answer),
        }
    }

    /// Tells the callers the write is durable.
    pub fn call(self) {
        (self.answer)();
    }
}

impl std::fmt::Debug for OnDurable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDurable").finish_non_exhaustive()
    }
}

/// Durable storage for one database: the asynchronous form of
/// [`sync_core::store::Store`].
pub trait ClientStore {
    /// Applies every write of `batch` or none of them. When the future
    /// resolves `Ok`, the writes survive a crash of the process (and, where
    /// the platform allows, of the machine). Writes must land in the order
    /// they were issued; with [`ClientStore::max_writes_in_flight`] at 1
    /// (the default) the loop awaits each write before issuing the next, so
    /// any store does that.
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>>;

    /// Like [`ClientStore::write`], and calls `on_durable` as soon as the
    /// store knows the write is durable, possibly on a thread of its own and
    /// before the returned future resolves. The loop passes the answers to
    /// the callers waiting on the write's puts, so a store that commits on
    /// its own thread wakes them straight from there instead of through one
    /// more hop via the loop's thread.
    ///
    /// A store that overrides this must call `on_durable` at most once, only
    /// once this write and every write issued before it are durable, never
    /// for a write that fails, and without blocking on the loop (it must
    /// not wait for the returned future to be polled). It may drop it
    /// uncalled: the loop answers those callers itself when the write
    /// resolves. The default calls it when the write's future resolves `Ok`.
    fn write_notify(
        &self,
        batch: PersistBatch,
        on_durable: OnDurable,
    ) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let write = self.write(batch);
        Box::pin(async move {
            let result = write.await;
            if result.is_ok() {
                on_durable.call();
            }
            result
        })
    }

    /// How many writes the loop may have issued and not yet seen answered
    /// (at least 1; the default). A store that returns more promises, for
    /// writes issued while earlier ones are unanswered:
    ///
    /// - they are applied in the order issued, so what the store holds after
    ///   a crash is always a prefix of the writes issued;
    /// - when a write fails, every write issued after it and before the next
    ///   [`read_all`](ClientStore::read_all) fails too, without being
    ///   applied (the store keeps a prefix after a failure as well), and that
    ///   `read_all` sees none of them.
    ///
    /// The loop does its part: it counts a write as durable only once every
    /// write issued before it is answered `Ok`, and after a failure it
    /// forgets the writes still in flight, issues no new one, and reads the
    /// store back (`read_all`) to rebuild the database from what is stored.
    ///
    /// More than one write in flight lets a store whose writes take a
    /// thread hop or an fsync (SQLite on its own thread) start the next
    /// commit while the loop is still answering the last one.
    fn max_writes_in_flight(&self) -> usize {
        1
    }

    /// Every stored record, in key order.
    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>>;

    /// Whether these records were copied from another database's storage
    /// (a restored backup, a copied file or data directory) and have not
    /// been written here since. The loop then continues the database under
    /// a new replica id, so the copy and the original never write under
    /// one id, and its first write records that.
    ///
    /// A store that can tell (SQLite compares the file's identity with the
    /// one it recorded) answers `true` from opening until a write succeeds,
    /// and records its new identity in that write's transaction. Stores
    /// whose data cannot be copied behind the app's back (IndexedDB, memory)
    /// keep this default. Copies a store cannot see are still caught when
    /// the relay holds more of the replica than the store does (see
    /// `Event::StoreBehindRelay`).
    fn copied(&self) -> bool {
        false
    }
}

/// Wall-clock time and sleeping.
pub trait Timer {
    /// The wall clock now.
    fn now(&self) -> Timestamp;

    /// Resolves at `at` or soon after, and never before [`Timer::now`]
    /// reads at least `at`: the session reports each deadline once, so a
    /// wakeup that finds nothing due yet is not re-armed. Timers that sleep
    /// on a monotonic clock re-check the wall clock before resolving.
    fn sleep_until(&self, at: Timestamp) -> LocalBoxFuture<'static, ()>;

    /// Gives the platform a turn: the loop awaits this between the slices
    /// of a long piece of work (loading a large database, applying a large
    /// snapshot from the relay), so it never holds its thread for long.
    ///
    /// The default lets the executor run other tasks once, which is enough
    /// on a thread of the loop's own. A platform whose thread also runs a
    /// UI must yield to its event loop instead (a macrotask, e.g. the
    /// browser's `scheduler.yield()`), so input and rendering get their turn.
    fn yield_now(&self) -> LocalBoxFuture<'static, ()> {
        let mut yielded = false;
        Box::pin(futures::future::poll_fn(move |cx| {
            if yielded {
                return std::task::Poll::Ready(());
            }
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }))
    }
}
