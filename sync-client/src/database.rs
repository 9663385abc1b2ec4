//! The `Database` API: collections of documents, written locally at once,
//! durable when their future resolves, synced through a relay.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{LocalBoxFuture, Shared};
use futures::task::AtomicWaker;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sync_core::session::{LinkState, Session, SessionConfig};
use sync_core::{
    Document, DocumentRef, PersistId, ReplicaConfig, ReplicaId, Revision, Timestamp, Transaction,
    Value,
};

use crate::changes::{Filter, Subscribers, Subscription, lock};
use crate::error::Error;
use crate::platform::Timer;
use crate::status::{Connection, Status, StatusStream, StatusWatchers};

/// Asks the application's backend for a fresh token. Called when the relay
/// refuses the current one as expired or invalid, and shortly before it
/// expires; resolve to the new token, or to an error message to stay offline.
pub type TokenSource =
    Arc<dyn Fn() -> LocalBoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Where and how a database syncs.
#[derive(Clone)]
pub struct RelayOptions {
    /// The relay's sync endpoint, for example `ws://127.0.0.1:8787/v1/sync`.
    pub url: String,
    /// The room to sync with: every database in the room converges.
    pub room: String,
    /// The access token the app's backend issued for the room.
    pub token: String,
    /// Refreshes the token; without it, an expired token stops syncing
    /// until [`Database::set_token`].
    pub token_source: Option<TokenSource>,
    /// Start syncing as soon as the database opens (default `true`).
    pub connect: bool,
}

impl RelayOptions {
    /// Syncs `room` through the relay at `url`, presenting `token`.
    pub fn new(url: impl Into<String>, room: impl Into<String>, token: impl Into<String>) -> Self {
        RelayOptions {
            url: url.into(),
            room: room.into(),
            token: token.into(),
            token_source: None,
            connect: true,
        }
    }

    /// Refreshes the token through `source` when needed.
    pub fn token_source(mut self, source: TokenSource) -> Self {
        self.token_source = Some(source);
        self
    }

    /// Opens the database offline; call [`Database::connect`] later.
    pub fn start_offline(mut self) -> Self {
        self.connect = false;
        self
    }
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("url", &self.url)
            .field("room", &self.room)
            .field("token", &"…")
            .field("token_source", &self.token_source.is_some())
            .field("connect", &self.connect)
            .finish()
    }
}

/// How to open a database.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Options {
    /// The relay to sync with; `None` keeps the database local only.
    pub relay: Option<RelayOptions>,
    /// Names the client in the relay's logs.
    pub agent: Option<String>,
    /// Most records one step of loading the database reads, and most
    /// documents one step of applying a snapshot from the relay rewrites,
    /// before the loop yields to the platform (see
    /// [`crate::platform::Timer::yield_now`]). `None`: 4096.
    pub slice_docs: Option<usize>,
}

impl Options {
    /// A local-only database.
    pub fn local() -> Options {
        Options::default()
    }

    /// A database that syncs through `relay`.
    pub fn with_relay(relay: RelayOptions) -> Options {
        Options {
            relay: Some(relay),
            ..Options::default()
        }
    }
}

/// Paging for [`Collection::list`]: documents come in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only ids starting with this.
    pub prefix: Option<String>,
    /// Only ids after this one (the last id of the previous page).
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// A document's fields, by name.
pub type Fields = BTreeMap<String, Value>;

/// The relay settings the loop needs.
pub(crate) struct Relay {
    pub(crate) url: String,
    pub(crate) token_source: Option<TokenSource>,
}

/// Waits for a write to be durable.
pub(crate) struct DurableWaiter {
    pub(crate) id: PersistId,
    pub(crate) tx: oneshot::Sender<Result<(), Error>>,
}

/// Waits for the relay to acknowledge local writes.
pub(crate) struct FlushWaiter {
    /// Every local operation up to this sequence number.
    pub(crate) through_seq: u64,
    /// Refusals counted when the flush started.
    pub(crate) refusals_before: usize,
    pub(crate) tx: oneshot::Sender<Result<(), Error>>,
}

/// Everything behind the database's lock.
pub(crate) struct Core {
    pub(crate) session: Session,
    pub(crate) replica_config: ReplicaConfig,
    pub(crate) session_config: SessionConfig,
    pub(crate) seed: u64,
    pub(crate) relay: Option<Relay>,
    /// The application wants to be online (connect called or implied).
    pub(crate) online: bool,
    pub(crate) closed: bool,
    /// In persist order (see `settle_waiters`).
    pub(crate) durable_waiters: std::collections::VecDeque<DurableWaiter>,
    /// The waiter `Collection::put_now` hands the writes of this persist;
    /// dropped when a store write fails, since the session rebuilt after it
    /// numbers its persists from the start again.
    pub(crate) shared_waiter: Option<(PersistId, SharedWaiter)>,
    pub(crate) flush_waiters: Vec<FlushWaiter>,
    pub(crate) subscribers: Subscribers,
    pub(crate) status: StatusWatchers,
    pub(crate) last_error: Option<String>,
    /// Syncing stopped for a reason retrying cannot fix.
    pub(crate) stopped: Option<(sync_core::protocol::CloseCode, String)>,
    /// Local operations the relay refused for good, with its message.
    pub(crate) refusals: Vec<(u64, String)>,
    /// A failed store write is being recovered from.
    pub(crate) store_failed: Option<String>,
    /// The relay refused the token and a token source can replace it.
    pub(crate) refresh_requested: bool,
    /// The relay showed the store is an older copy: go on as a new replica.
    pub(crate) fork_requested: bool,
    /// Waiting for the loop to finish after `close`.
    pub(crate) close_waiters: Vec<oneshot::Sender<()>>,
    /// The loop has finished: everything written is stored.
    pub(crate) finished: bool,
}

impl Core {
    pub(crate) fn status(&self) -> Status {
        let s = self.session.status();
        let connection = match s.link {
            LinkState::Offline => Connection::Offline,
            LinkState::Waiting { retry_at } => Connection::Reconnecting {
                retry_at_ms: retry_at,
            },
            LinkState::Connecting | LinkState::Handshaking => Connection::Connecting,
            LinkState::Live => Connection::Online,
        };
        Status {
            connection,
            pending_writes: s.pending_ops,
            cursor: s.cursor,
            lag: s.lag(),
            read_only: s.read_only,
            last_error: self.last_error.clone(),
        }
    }

    /// Answers every waiter whose answer is known.
    pub(crate) fn settle_waiters(&mut self) {
        if let Some(message) = &self.store_failed {
            let error = Error::from(sync_core::WriteError::StoreFailed {
                message: message.clone(),
            });
            for waiter in self.durable_waiters.drain(..) {
                let _ = waiter.tx.send(Err(error.clone()));
            }
        }
        let session = &self.session;
        // Waiters are queued in persist order and persists become durable
        // in that order, so the durable ones are a prefix: settling stops
        // at the first that is not, and costs nothing per waiting write.
        while let Some(waiter) = self.durable_waiters.front() {
            if !session.is_durable(waiter.id) {
                break;
            }
            if let Some(waiter) = self.durable_waiters.pop_front() {
                let _ = waiter.tx.send(Ok(()));
            }
        }

        let first_pending = session.replica().outbox().first_seq();
        let read_only = session.status().read_only;
        let mut still = Vec::new();
        for waiter in self.flush_waiters.drain(..) {
            let refused: Vec<&(u64, String)> = self.refusals[waiter.refusals_before..]
                .iter()
                .filter(|(seq, _)| *seq <= waiter.through_seq)
                .collect();
            if let Some((_, message)) = refused.first() {
                let _ = waiter.tx.send(Err(Error::Rejected {
                    count: refused.len(),
                    message: message.clone(),
                }));
            } else if first_pending.is_none_or(|seq| seq > waiter.through_seq) {
                let _ = waiter.tx.send(Ok(()));
            } else if self.closed {
                let _ = waiter.tx.send(Err(Error::Closed));
            } else if read_only {
                let _ = waiter.tx.send(Err(Error::ReadOnly));
            } else if let Some((code, message)) = &self.stopped {
                let _ = waiter.tx.send(Err(Error::Offline {
                    code: *code,
                    message: message.clone(),
                }));
            } else {
                still.push(waiter);
            }
        }
        self.flush_waiters = still;
    }
}

/// What the database's handles and its host loop share.
pub(crate) struct Inner {
    pub(crate) core: Mutex<Core>,
    /// Wakes the host loop.
    pub(crate) waker: AtomicWaker,
    pub(crate) woken: AtomicBool,
    pub(crate) timer: Arc<dyn Timer + Send + Sync>,
}

impl Inner {
    pub(crate) fn wake(&self) {
        // A wake still pending (the loop has not taken the flag yet) covers
        // this one too: the loop drains everything once it runs. Many puts
        // in a burst then cost one wakeup of the loop's thread, not one each.
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.timer.now()
    }
}

/// Closes the database when the last handle is dropped.
struct CloseGuard(Arc<Inner>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        lock(&self.0.core).closed = true;
        self.0.wake();
    }
}

/// A local-first database: reads and writes are local and instant, and the
/// database syncs with a relay room whenever it can reach it.
///
/// Cloning is cheap; every clone is the same database. Dropping the last
/// clone closes it (writes already made still become durable).
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
    _guard: Arc<CloseGuard>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("replica", &self.replica_id())
            .finish_non_exhaustive()
    }
}

impl Database {
    pub(crate) fn new(inner: Arc<Inner>) -> Database {
        Database {
            _guard: Arc::new(CloseGuard(inner.clone())),
            inner,
        }
    }

    /// This database's replica id: random, made when it was created.
    pub fn replica_id(&self) -> ReplicaId {
        lock(&self.inner.core).session.replica().id()
    }

    /// The collection `name` (created on first write).
    pub fn collection(&self, name: impl Into<String>) -> Collection {
        Collection {
            db: self.clone(),
            name: name.into(),
        }
    }

    /// Names of the collections that exist (created, or holding a
    /// document), in order. Lets a caller copy the whole database, e.g. the
    /// npm package's leader tab answering a follower tab that just opened.
    pub fn collection_names(&self) -> Vec<String> {
        self.read(|s| {
            s.replica()
                .state()
                .collections()
                .map(str::to_owned)
                .collect()
        })
    }

    /// The collection `name`, its documents read and written as `T`
    /// (a serde type that serializes to a map of fields).
    pub fn typed_collection<T>(&self, name: impl Into<String>) -> TypedCollection<T> {
        TypedCollection {
            inner: self.collection(name),
            _type: PhantomData,
        }
    }

    /// Many writes as one, across documents and collections: all applied
    /// when the closure returns `Ok`, none if it returns an error (a write
    /// refused with `?`, or an error of its own), stored in one atomic
    /// batch. The future resolves when that batch is durable. Reads inside
    /// the closure ([`Transaction::state`]) see the state from before it.
    ///
    /// ```
    /// # use sync_client::{Options, Value, memory};
    /// # futures::executor::block_on(async {
    /// # let (db, host) = memory::open_local(memory::MemoryStore::new(), Options::local()).await?;
    /// # let mut driver = memory::Driver::new(host);
    /// let moved = db.transaction(|tx| {
    ///     tx.put("done", "milk", [("title", Value::from("Buy milk"))])?;
    ///     tx.delete("todos", "milk")?;
    ///     Ok(())
    /// });
    /// driver.run_until(moved).await?;
    /// # Ok::<(), sync_client::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn transaction<R>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, Error>,
    ) -> Pending<R> {
        self.write(|session, now| session.transaction(now, f))
    }

    /// Resolves once the relay has acknowledged every local write made so
    /// far. Fails if syncing stopped for good (see [`Error::Offline`]), if
    /// the relay refused one of those writes, or if there is no relay.
    pub fn flush(&self) -> impl Future<Output = Result<(), Error>> + use<> {
        let rx = {
            let mut core = lock(&self.inner.core);
            let next_seq = core.session.replica().next_seq();
            let pending = core.session.replica().outbox().len() > 0;
            let (tx, rx) = oneshot::channel();
            if !pending {
                let _ = tx.send(Ok(()));
            } else if core.relay.is_none() {
                let _ = tx.send(Err(Error::NoRelay));
            } else {
                let refusals_before = core.refusals.len();
                core.flush_waiters.push(FlushWaiter {
                    through_seq: next_seq - 1,
                    refusals_before,
                    tx,
                });
                core.settle_waiters();
            }
            rx
        };
        self.inner.wake();
        async move { rx.await.unwrap_or(Err(Error::Closed)) }
    }

    /// Every change to the database, local or remote, as a stream.
    pub fn subscribe(&self) -> Subscription {
        lock(&self.inner.core).subscribers.subscribe(Filter::All)
    }

    /// Where syncing stands now.
    pub fn status(&self) -> Status {
        lock(&self.inner.core).status()
    }

    /// The current status, then every change of it.
    pub fn status_changes(&self) -> StatusStream {
        let mut core = lock(&self.inner.core);
        let current = core.status();
        core.status.watch(current)
    }

    /// Starts syncing (again) with the relay given at open.
    pub fn connect(&self) -> Result<(), Error> {
        {
            let mut core = lock(&self.inner.core);
            if core.relay.is_none() {
                return Err(Error::NoRelay);
            }
            core.online = true;
            core.stopped = None;
            let now = self.inner.now();
            core.session.start(now);
        }
        self.inner.wake();
        Ok(())
    }

    /// Stops syncing; everything keeps working locally.
    pub fn disconnect(&self) {
        {
            let mut core = lock(&self.inner.core);
            core.online = false;
            core.session.stop();
        }
        self.inner.wake();
    }

    /// Replaces the access token. If syncing stopped because the token was
    /// refused, it starts again.
    pub fn set_token(&self, token: impl Into<String>) {
        {
            let mut core = lock(&self.inner.core);
            core.session.set_token(token.into().into_bytes());
            if core.online && core.stopped.is_some() {
                core.stopped = None;
                let now = self.inner.now();
                core.session.start(now);
            }
        }
        self.inner.wake();
    }

    /// Closes the database: stops syncing, finishes the writes already
    /// made, ends subscriptions. Other handles then fail with
    /// [`Error::Closed`]. The future resolves once everything applied
    /// before the close (remote changes included) is stored; dropping it
    /// does not stop the close.
    pub fn close(&self) -> impl Future<Output = ()> + use<> {
        let rx = {
            let mut core = lock(&self.inner.core);
            core.closed = true;
            let (tx, rx) = oneshot::channel();
            if core.finished {
                let _ = tx.send(());
            } else {
                core.close_waiters.push(tx);
            }
            rx
        };
        self.inner.wake();
        async move {
            let _ = rx.await;
        }
    }

    /// Applies a write now; the returned future resolves when it is durable.
    fn write<R>(&self, f: impl FnOnce(&mut Session, Timestamp) -> Result<R, Error>) -> Pending<R> {
        let mut core = lock(&self.inner.core);
        let pending = match apply(&mut core, self.inner.now(), f) {
            Err(e) => Pending::ready(Err(e)),
            Ok((value, Some(id))) => {
                let (tx, rx) = oneshot::channel();
                core.durable_waiters.push_back(DurableWaiter { id, tx });
                Pending {
                    state: State::Waiting {
                        value: Some(value),
                        rx,
                    },
                }
            }
            // Nothing new to store: durable with what came before.
            Ok((value, None)) => Pending::ready(Ok(value)),
        };
        drop(core);
        self.inner.wake();
        pending
    }

    /// Applies a write now; its [`Ticket`] resolves when it is durable,
    /// shared with the other writes of the same persist.
    fn write_now<R>(
        &self,
        f: impl FnOnce(&mut Session, Timestamp) -> Result<R, Error>,
    ) -> Result<(R, Ticket), Error> {
        let mut core = lock(&self.inner.core);
        let result = apply(&mut core, self.inner.now(), f).map(|(value, persist)| {
            let ticket = persist.map(|id| match &core.shared_waiter {
                Some((shared, waiter)) if *shared == id => waiter.clone(),
                _ => {
                    let (tx, rx) = oneshot::channel();
                    core.durable_waiters.push_back(DurableWaiter { id, tx });
                    let waiter = rx.shared();
                    core.shared_waiter = Some((id, waiter.clone()));
                    waiter
                }
            });
            (value, Ticket(ticket))
        });
        drop(core);
        self.inner.wake();
        result
    }

    fn read<R>(&self, f: impl FnOnce(&Session) -> R) -> R {
        f(&lock(&self.inner.core).session)
    }
}

/// Applies a write under the database's lock, and names the persist that
/// holds it unless that is durable already: queued, or promised to the
/// loop's next poll (writes made back to back share one).
fn apply<R>(
    core: &mut Core,
    now: Timestamp,
    f: impl FnOnce(&mut Session, Timestamp) -> Result<R, Error>,
) -> Result<(R, Option<PersistId>), Error> {
    if core.closed {
        return Err(Error::Closed);
    }
    let value = f(&mut core.session, now)?;
    let persist = core
        .session
        .latest_persist()
        .filter(|id| !core.session.is_durable(*id));
    Ok((value, persist))
}

/// The durability of writes made with [`Collection::put_now`]: resolves
/// once they are stored, or with the error that kept them from being
/// stored. The writes of one persist (usually every write made before the
/// loop next runs) share one, so a binding waiting for many writes waits
/// on as many tickets as there were persists, not one per write.
#[derive(Clone, Debug)]
#[must_use = "the write is applied; await this to know it is durable"]
pub struct Ticket(Option<SharedWaiter>);

/// A durability answer many writes wait for.
pub(crate) type SharedWaiter = Shared<oneshot::Receiver<Result<(), Error>>>;

impl Ticket {
    /// Whether `self` and `other` answer the same writes: one of them is
    /// enough to wait for.
    pub fn same_as(&self, other: &Ticket) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => a.ptr_eq(b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Future for Ticket {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match &mut self.get_mut().0 {
            None => Poll::Ready(Ok(())),
            Some(waiter) => Pin::new(waiter)
                .poll(cx)
                .map(|received| received.unwrap_or(Err(Error::Closed))),
        }
    }
}

/// A collection of documents, each a map of fields to [`Value`]s.
#[derive(Clone, Debug)]
pub struct Collection {
    db: Database,
    name: String,
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes fields of document `id`, creating it if needed. Fields not
    /// named keep their values, and concurrent writes of other fields on
    /// other devices all survive (last writer wins per field). Visible to
    /// reads at once; the future resolves with the new revision once the
    /// write is durable.
    pub fn put<K: Into<String>, V: Into<Value>>(
        &self,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Pending<Revision> {
        self.db
            .write(|s, now| Ok(s.put(now, &self.name, id, fields)?))
    }

    /// Like [`Collection::put`], but only if the document is still at
    /// `expected` (`None`: only if it does not exist); otherwise fails with
    /// [`Error::Conflict`] and changes nothing. For read-modify-write.
    pub fn put_if<K: Into<String>, V: Into<Value>>(
        &self,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
        expected: Option<Revision>,
    ) -> Pending<Revision> {
        self.db
            .write(|s, now| Ok(s.put_if(now, &self.name, id, fields, expected)?))
    }

    /// Like [`Collection::put`] (or [`Collection::put_if`] when `expected`
    /// is given), for bindings that wait for many writes together: the
    /// revision now, and a [`Ticket`] shared with the other writes of its
    /// persist instead of a future of its own.
    pub fn put_now<K: Into<String>, V: Into<Value>>(
        &self,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
        expected: Option<Option<Revision>>,
    ) -> Result<(Revision, Ticket), Error> {
        self.db.write_now(|s, now| {
            Ok(match expected {
                None => s.put(now, &self.name, id, fields)?,
                Some(expected) => s.put_if(now, &self.name, id, fields, expected)?,
            })
        })
    }

    /// Removes fields of document `id`.
    pub fn unset<K: Into<String>>(
        &self,
        id: &str,
        names: impl IntoIterator<Item = K>,
    ) -> Pending<Revision> {
        self.db
            .write(|s, now| Ok(s.unset(now, &self.name, id, names)?))
    }

    /// Deletes document `id`. A later write of any field brings it back
    /// with only the fields written after the delete.
    pub fn delete(&self, id: &str) -> Pending<()> {
        self.db.write(|s, now| Ok(s.delete(now, &self.name, id)?))
    }

    /// Document `id`, if it exists.
    pub fn get(&self, id: &str) -> Option<Document> {
        self.db.read(|s| s.replica().get(&self.name, id))
    }

    /// Documents in id order, filtered and paged by `options`.
    pub fn list(&self, options: &ListOptions) -> Vec<Document> {
        self.read_list(options, |docs| docs.map(|d| d.to_document()).collect())
    }

    /// Reads the documents [`Collection::list`] would return in place,
    /// without copying them: `read` gets them borrowed while the database
    /// is locked, so keep it short and do not call the database inside (a
    /// read as well as a write: it would wait for that lock forever).
    pub fn read_list<R>(
        &self,
        options: &ListOptions,
        read: impl FnOnce(&mut dyn Iterator<Item = DocumentRef<'_>>) -> R,
    ) -> R {
        self.db.read(|s| {
            let mut docs = s.replica().documents(&self.name);
            if let Some(prefix) = &options.prefix {
                docs = docs.prefix(prefix);
            }
            if let Some(after) = &options.after {
                docs = docs.after(after);
            }
            read(&mut docs.take(options.limit.unwrap_or(usize::MAX)))
        })
    }

    /// One field of document `id`, read without copying the document.
    pub fn get_field(&self, id: &str, field: &str) -> Option<Value> {
        self.db.read(|s| {
            s.replica()
                .get_field(&self.name, id, field)
                .map(|v| v.to_value())
        })
    }

    /// Reads document `id` in place, without copying it: `read` gets a
    /// borrowed view (its fields, its revision) while the database is
    /// locked, so keep it short and do not call the database inside (a read
    /// as well as a write: it would wait for that lock forever).
    pub fn read<R>(&self, id: &str, read: impl FnOnce(Option<DocumentRef<'_>>) -> R) -> R {
        self.db.read(|s| read(s.replica().document(&self.name, id)))
    }

    /// Changes to this collection's documents, local or remote.
    pub fn subscribe(&self) -> Subscription {
        lock(&self.db.inner.core)
            .subscribers
            .subscribe(Filter::Collection(self.name.clone()))
    }

    /// Changes to document `id`, local or remote.
    pub fn subscribe_document(&self, id: &str) -> Subscription {
        lock(&self.db.inner.core)
            .subscribers
            .subscribe(Filter::Document {
                collection: self.name.clone(),
                id: id.to_owned(),
            })
    }
}

/// A collection whose documents are read and written as `T`.
#[derive(Debug)]
pub struct TypedCollection<T> {
    inner: Collection,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for TypedCollection<T> {
    fn clone(&self) -> Self {
        TypedCollection {
            inner: self.inner.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> TypedCollection<T> {
    /// The same collection, untyped.
    pub fn untyped(&self) -> &Collection {
        &self.inner
    }

    /// Writes every field of `doc` to document `id` (see [`Collection::put`]).
    pub fn put(&self, id: &str, doc: &T) -> Pending<Revision> {
        match to_fields(doc) {
            Ok(fields) => self.inner.put(id, fields),
            Err(e) => Pending::ready(Err(e)),
        }
    }

    /// Document `id` as `T`, if it exists.
    pub fn get(&self, id: &str) -> Result<Option<T>, Error> {
        self.inner
            .get(id)
            .map(|doc| from_fields(&self.inner.name, &doc))
            .transpose()
    }

    /// Documents in id order as `(id, T)`, filtered and paged by `options`.
    pub fn list(&self, options: &ListOptions) -> Result<Vec<(String, T)>, Error> {
        self.inner
            .list(options)
            .into_iter()
            .map(|doc| Ok((doc.id.clone(), from_fields(&self.inner.name, &doc)?)))
            .collect()
    }

    /// Deletes document `id`.
    pub fn delete(&self, id: &str) -> Pending<()> {
        self.inner.delete(id)
    }

    /// Changes to this collection, local or remote.
    pub fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }
}

/// A document's fields from a serde value that serializes to a map.
pub fn to_fields<T: Serialize>(doc: &T) -> Result<Vec<(String, Value)>, Error> {
    let json = serde_json::to_value(doc).map_err(|e| Error::Encode(e.to_string()))?;
    let serde_json::Value::Object(map) = json else {
        return Err(Error::Encode(
            "a document must serialize to a map of fields".into(),
        ));
    };
    map.into_iter()
        .map(|(k, v)| {
            let value = Value::from_json(&v).map_err(|e| Error::Encode(e.to_string()))?;
            Ok((k, value))
        })
        .collect()
}

fn from_fields<T: DeserializeOwned>(collection: &str, doc: &Document) -> Result<T, Error> {
    let decode = |message: String| Error::Decode {
        collection: collection.to_owned(),
        id: doc.id.clone(),
        message,
    };
    let mut map = serde_json::Map::new();
    for (name, value) in &doc.fields {
        map.insert(
            name.clone(),
            value.to_json().map_err(|e| decode(e.to_string()))?,
        );
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| decode(e.to_string()))
}

enum State<T> {
    Ready(Option<Result<T, Error>>),
    Waiting {
        value: Option<T>,
        rx: oneshot::Receiver<Result<(), Error>>,
    },
}

/// A write already applied (reads see it), resolving once it is durable.
/// Dropping it does not undo or cancel the write.
#[must_use = "the write is applied; await this to know it is durable"]
pub struct Pending<T> {
    state: State<T>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    fn ready(result: Result<T, Error>) -> Pending<T> {
        Pending {
            state: State::Ready(Some(result)),
        }
    }
}

impl<T: Unpin> Future for Pending<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(Error::Closed))),
            State::Waiting { value, rx } => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(Ok(()))) => Poll::Ready(value.take().ok_or(Error::Closed)),
                Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e)),
                Poll::Ready(Err(_canceled)) => Poll::Ready(Err(Error::Closed)),
            },
        }
    }
}
