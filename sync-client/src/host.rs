//! The host loop: the one place that turns a [`Session`]'s outputs into IO,
//! written once for every platform.
//!
//! It opens and closes the transport, hands persist batches to the store
//! (merging the batches queued meanwhile into one write: group commit;
//! keeping as many writes in flight as the store allows, see
//! [`ClientStore::max_writes_in_flight`]), reports each batch durable in the
//! order the writes were issued, sends the frames the
//! session releases, arms the session's timer, refreshes tokens, delivers
//! change events to subscribers and answers the futures of writes and
//! flushes. The session itself holds back frames until the persists they
//! depend on are durable, so this loop cannot send anything too early.
//!
//! After a failed store write, memory is ahead of the store: the loop
//! rejects every write waiting for durability, forgets the writes still in
//! flight behind the failed one (their answers can never count: the store
//! fails them, and the rebuilt session numbers its persists afresh), reads
//! the store back and rebuilds the session from it, then carries on
//! (syncing again if it was).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::{LocalBoxFuture, poll_fn};
use futures::stream::{FuturesUnordered, LocalBoxStream, ReadyChunks};
use futures::{FutureExt, StreamExt};
use sync_core::protocol::CloseCode;
use sync_core::session::{Input, Output, Session, SessionConfig, SessionLoader};
use sync_core::store::Record;
use sync_core::token::TokenClaims;
use sync_core::{Event, PersistBatch, PersistId, Replica, ReplicaConfig, ReplicaId, Timestamp};

use crate::changes::{Change, Subscribers, lock};
use crate::database::{Core, Database, DurableWaiter, Inner, Options, Relay};
use crate::error::Error;
use crate::platform::{
    ClientStore, Incoming, Link, LinkSender, OnDurable, StoreError, Timer, Transport,
    TransportError,
};
use crate::status::StatusWatchers;

/// Refresh a token this long before it expires.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// Ask the token source at most this often: a source that keeps returning
/// an expired or refused token must not be called in a tight loop.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Records per loading step, and documents per step of applying a
/// snapshot, unless [`Options::slice_docs`] says otherwise: a few
/// milliseconds of work natively, a few tens in a browser's wasm.
const DEFAULT_SLICE_DOCS: usize = 4096;

/// Most received frames the session takes in one turn of the loop (see
/// [`Input::ReceivedMany`]): twice the relay's default send window, so a
/// client behind the relay takes a whole window at a time, while a relay
/// with a wider window still leaves the platform its turn in between.
const MAX_FRAMES_PER_TURN: usize = 16;

/// The loop of one database, to be driven by the platform (spawned on a
/// local executor). It ends once the database is closed and its last
/// writes are stored.
pub type HostLoop = LocalBoxFuture<'static, ()>;

/// What a platform hands to [`open`].
pub struct Platform<T, S> {
    /// Opens connections to the relay.
    pub transport: T,
    /// Stores the database durably.
    pub store: S,
    /// Wall-clock time and sleeping.
    pub timer: Arc<dyn Timer + Send + Sync>,
    /// Fresh randomness: the replica id of a new database and reconnect
    /// jitter derive from it. Never reuse a value.
    pub seed: u64,
}

impl<T, S> std::fmt::Debug for Platform<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform").finish_non_exhaustive()
    }
}

/// Opens a database stored in `platform.store`: loads what is stored (or
/// starts an empty database with a new random replica id), then returns the
/// database and the loop the platform must drive for it to store and sync.
pub async fn open<T, S>(
    platform: Platform<T, S>,
    options: Options,
) -> Result<(Database, HostLoop), Error>
where
    T: Transport + 'static,
    S: ClientStore + 'static,
{
    let Platform {
        transport,
        store,
        timer,
        seed,
    } = platform;
    let records = store.read_all().await?;
    // This loop calls `Session::apply_slice` while the session asks for
    // it: a checkpoint is encoded a slice at a time, between the yields.
    let replica_config = ReplicaConfig::default().with_sliced_checkpoints(true);
    let (room, token) = match &options.relay {
        Some(relay) => (relay.room.clone(), relay.token.clone()),
        None => (String::new(), String::new()),
    };
    let slice = options.slice_docs.unwrap_or(DEFAULT_SLICE_DOCS).max(1);
    let mut session_config = SessionConfig::new(room, token.into_bytes());
    session_config.agent = options
        .agent
        .clone()
        .unwrap_or_else(|| concat!("concord-sync-client/", env!("CARGO_PKG_VERSION")).to_owned());
    session_config.apply_slice_docs = slice;
    let jitter_seed = mix(seed ^ 0x5eed);
    // Decoded a slice at a time, yielding in between: a large database
    // must not hold a UI thread for the whole load.
    let load_error = |e: sync_core::RestoreError| Error::Load(e.to_string());
    let mut loader = SessionLoader::new(replica_config);
    let mut records = records.into_iter();
    // The checkpoint, the first key when there is one, is fed alone and
    // decoded a slice at a time: most of a large database is in it.
    loader.feed(records.by_ref().take(1)).map_err(load_error)?;
    while loader.decode_slice(slice).map_err(load_error)? {
        timer.yield_now().await;
    }
    let mut take = slice - 1;
    loop {
        loader
            .feed(records.by_ref().take(take))
            .map_err(load_error)?;
        if records.len() == 0 {
            break;
        }
        take = slice;
        timer.yield_now().await;
    }
    let restored = loader
        .finish(session_config.clone(), jitter_seed)
        .map_err(load_error)?;
    let session = load_session(
        restored,
        replica_config,
        &session_config,
        jitter_seed,
        ReplicaId(mix(seed).max(1)),
        store.copied(),
    );
    let relay = options.relay.as_ref().map(|r| Relay {
        url: r.url.clone(),
        token_source: r.token_source.clone(),
    });
    let online = options.relay.as_ref().is_some_and(|r| r.connect);
    let mut core = Core {
        session,
        replica_config,
        session_config,
        seed: jitter_seed,
        relay,
        online,
        closed: false,
        durable_waiters: std::collections::VecDeque::new(),
        shared_waiter: None,
        flush_waiters: Vec::new(),
        subscribers: Subscribers::default(),
        status: StatusWatchers::default(),
        last_error: None,
        stopped: None,
        refusals: Vec::new(),
        store_failed: None,
        refresh_requested: false,
        fork_requested: false,
        close_waiters: Vec::new(),
        finished: false,
    };
    if online {
        let now = timer.now();
        core.session.start(now);
    }
    let inner = Arc::new(Inner {
        core: std::sync::Mutex::new(core),
        waker: futures::task::AtomicWaker::new(),
        woken: AtomicBool::new(true),
        timer: timer.clone(),
    });
    let db = Database::new(inner.clone());
    let finish = Finish(inner.clone());
    let host = Host {
        inner,
        transport,
        store: Box::new(store),
        timer,
        link: None,
        connecting: None,
        closing: FuturesUnordered::new(),
        writing: std::collections::VecDeque::new(),
        queued: Vec::new(),
        sleep: None,
        refresh_at: None,
        refreshing: None,
        last_refresh: None,
        reloading: None,
        applying: false,
        yielding: None,
        actions: Vec::new(),
        finish,
    };
    Ok((db, host.run().boxed_local()))
}

/// The session restored from a store (`None`: the store is empty, and a
/// new session starts as replica `new_id`). A store that is a copy of
/// another database's ([`ClientStore::copied`]) continues as replica
/// `new_id` (see `Session::fork`), so the copy and the original never
/// share an id.
fn load_session(
    restored: Option<Session>,
    replica_config: ReplicaConfig,
    session_config: &SessionConfig,
    seed: u64,
    new_id: ReplicaId,
    copied: bool,
) -> Session {
    match restored {
        Some(mut session) => {
            if copied {
                session.fork(new_id);
            }
            session
        }
        None => Session::new(
            Replica::new(new_id, replica_config),
            session_config.clone(),
            seed,
        ),
    }
}

/// A replica id for a database going on under a new identity: random (from
/// the platform's seed), never 0, never `old`.
fn fresh_replica_id(seed: u64, old: ReplicaId) -> ReplicaId {
    let mut candidate = mix(seed ^ old.0);
    while candidate == 0 || candidate == old.0 {
        candidate = mix(candidate);
    }
    ReplicaId(candidate)
}

/// SplitMix64's finaliser: spreads a seed over 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

enum Outgoing {
    Frame(Vec<u8>),
    Close(u16, String),
}

/// An open connection: frames go through a channel to the pump, which
/// sends them in order while the loop goes on.
struct LiveLink {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// What arrived, taken as everything ready at once: frames that
    /// arrived together are stored in one persist.
    incoming: ReadyChunks<LocalBoxStream<'static, Incoming>>,
    pump: LocalBoxFuture<'static, ()>,
}

impl LiveLink {
    fn new(link: Link) -> LiveLink {
        let (tx, rx) = mpsc::unbounded();
        LiveLink {
            tx,
            incoming: link.incoming.ready_chunks(MAX_FRAMES_PER_TURN),
            pump: pump(link.sender, rx).boxed_local(),
        }
    }
}

async fn pump(mut sender: Box<dyn LinkSender>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(out) = rx.next().await {
        match out {
            Outgoing::Frame(frame) => {
                if sender.send(frame).await.is_err() {
                    return;
                }
            }
            Outgoing::Close(code, reason) => {
                sender.close(code, reason).await;
                return;
            }
        }
    }
}

/// A store write in flight.
type StoreWrite = LocalBoxFuture<'static, Result<(), StoreError>>;

/// The callers waiting on a store write in flight: answered by whichever
/// comes first, the store's `on_durable` (from its own thread) or the loop
/// once the write resolves.
type Waiters = Arc<std::sync::Mutex<Vec<DurableWaiter>>>;

/// One store write in flight.
struct InFlight {
    /// The persists it carries.
    ids: Vec<PersistId>,
    /// The callers it answers (see [`Waiters`]).
    waiters: Waiters,
    write: StoreWrite,
}

/// Answers `waiters` (taking them, so each is answered once).
fn answer_waiters(waiters: &Waiters, result: &Result<(), Error>) {
    for waiter in std::mem::take(&mut *lock(waiters)) {
        let _ = waiter.tx.send(result.clone());
    }
}

/// What woke the loop.
enum Wake {
    Woken,
    Connected(Result<Link, TransportError>),
    /// What arrived, in order (`None`: the link's stream ended).
    Incoming(Option<Vec<Incoming>>),
    LinkBroken,
    Written(Result<(), StoreError>),
    Reloaded(Result<Vec<Record>, StoreError>),
    Timer,
    RefreshDue,
    Refreshed(Result<String, String>),
    /// The platform gave the loop its turn back: time for the next slice.
    Yielded,
}

struct Host<T> {
    inner: Arc<Inner>,
    transport: T,
    store: Box<dyn ClientStore>,
    timer: Arc<dyn Timer + Send + Sync>,
    link: Option<LiveLink>,
    connecting: Option<LocalBoxFuture<'static, Result<Link, TransportError>>>,
    /// Connections being closed politely.
    closing: FuturesUnordered<LocalBoxFuture<'static, ()>>,
    /// The store writes in flight, oldest first. Only the oldest is polled:
    /// a later write counts as durable only once every write before it has
    /// been answered `Ok`.
    writing: std::collections::VecDeque<InFlight>,
    /// Persists waiting for a place among the writes in flight.
    queued: Vec<(PersistId, PersistBatch)>,
    sleep: Option<(Timestamp, LocalBoxFuture<'static, ()>)>,
    refresh_at: Option<(Timestamp, LocalBoxFuture<'static, ()>)>,
    refreshing: Option<LocalBoxFuture<'static, Result<String, String>>>,
    /// When the token source was last asked.
    last_refresh: Option<Timestamp>,
    reloading: Option<LocalBoxFuture<'static, Result<Vec<Record>, StoreError>>>,
    /// The session is applying a snapshot a slice at a time.
    applying: bool,
    /// The yield to the platform before the next slice.
    yielding: Option<LocalBoxFuture<'static, ()>>,
    /// Session outputs taken while handling a wake, acted on by the next drain.
    actions: Vec<Output>,
    /// Last, so that it drops after the store when the loop unwinds.
    finish: Finish,
}

/// Answers everyone still waiting on the loop once it ends, however it
/// ends: closed in order, or dropped unfinished (its task cancelled, or a
/// panic unwinding its thread). Without it a loop that died would leave
/// `close()` and every pending write waiting forever.
struct Finish(Arc<Inner>);

impl Drop for Finish {
    fn drop(&mut self) {
        let mut core = lock(&self.0.core);
        if core.finished {
            return;
        }
        core.closed = true;
        core.settle_waiters();
        for waiter in core.durable_waiters.drain(..) {
            let _ = waiter.tx.send(Err(Error::Closed));
        }
        for waiter in core.flush_waiters.drain(..) {
            let _ = waiter.tx.send(Err(Error::Closed));
        }
        core.subscribers.end_all();
        core.status.end_all();
        core.finished = true;
        for waiter in core.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl<T: Transport> Host<T> {
    async fn run(mut self) {
        loop {
            let closed = self.drain();
            if closed && self.writing.is_empty() && self.queued.is_empty() {
                return self.shut_down();
            }
            self.start_write();
            // The next slice once the platform had its turn, and once the
            // last slice's records are on their way to the store: a store
            // slower than the slices must not let them pile up into one
            // huge write.
            if self.applying && self.yielding.is_none() && self.queued.is_empty() {
                self.yielding = Some(self.timer.yield_now());
            }
            let wake = self.next_wake().await;
            self.on_wake(wake);
        }
    }

    /// Takes everything the session has for the host, under the lock; acts
    /// on what needs no IO at once. Returns whether the database is closed.
    fn drain(&mut self) -> bool {
        let mut actions = std::mem::take(&mut self.actions);
        let closed;
        {
            let inner = self.inner.clone();
            let mut core = lock(&inner.core);
            if core.closed {
                core.session.stop();
            }
            loop {
                take_outputs(&mut core, &mut actions);
                if !std::mem::take(&mut core.fork_requested) {
                    break;
                }
                // The relay holds more of this replica than its store: the
                // store was restored from an older copy. Go on as a new
                // replica (its first persist records that) and reconnect.
                let new_id = fresh_replica_id(core.seed, core.session.replica().id());
                core.session.fork(new_id);
                if core.online && !core.closed {
                    core.session.start(self.timer.now());
                }
            }
            self.applying = core.session.is_applying();
            core.settle_waiters();
            let status = core.status();
            core.status.publish(status);
            // A checkpoint being encoded is finished and stored first: the
            // records are durable without it, but reopening reads it in a
            // fraction of their time.
            closed = core.closed && !(self.applying && core.session.replica().is_checkpointing());
            let refresh_now = std::mem::take(&mut core.refresh_requested);
            if self.refresh_at.is_none() && self.refreshing.is_none() {
                self.schedule_refresh(&core);
            }
            drop(core);
            if refresh_now && self.refreshing.is_none() {
                let now = self.timer.now();
                match self.earliest_refresh() {
                    Some(at) if at > now => {
                        self.refresh_at = Some((at, self.timer.sleep_until(at)));
                    }
                    _ => self.start_refresh(),
                }
            }
        }
        for action in actions {
            match action {
                Output::Connect => self.connect(),
                Output::Transmit(frame) => {
                    if let Some(link) = &self.link {
                        let _ = link.tx.unbounded_send(Outgoing::Frame(frame));
                    }
                }
                Output::Close { code, reason } => {
                    self.connecting = None;
                    if let Some(link) = self.link.take() {
                        let _ = link
                            .tx
                            .unbounded_send(Outgoing::Close(code.as_u16(), reason));
                        self.closing.push(link.pump);
                    }
                }
                Output::Persist { id, batch } => self.queued.push((id, batch)),
                Output::Timeout(at) => self.sleep = Some((at, self.timer.sleep_until(at))),
                Output::Event(_) => {}
            }
        }
        closed
    }

    fn connect(&mut self) {
        self.link = None;
        let url = lock(&self.inner.core).relay.as_ref().map(|r| r.url.clone());
        self.connecting = url.map(|url| self.transport.connect(&url));
    }

    /// Starts one store write for every persist queued (group commit), if
    /// the store takes another write in flight.
    fn start_write(&mut self) {
        let limit = self.store.max_writes_in_flight().max(1);
        if self.writing.len() >= limit || self.queued.is_empty() || self.reloading.is_some() {
            return;
        }
        let (ids, batch) = merge(std::mem::take(&mut self.queued));
        // The callers waiting on these persists (and any waiting on an
        // earlier one still in flight: this write is durable only after
        // those) are answered from wherever the store learns the write is
        // durable, without waiting for this thread to hear of it.
        let waiters: Waiters = Default::default();
        if let Some(last) = ids.last() {
            let mut core = lock(&self.inner.core);
            let mut taken = lock(&waiters);
            while core.durable_waiters.front().is_some_and(|w| w.id <= *last) {
                taken.extend(core.durable_waiters.pop_front());
            }
        }
        let on_durable = {
            let waiters = waiters.clone();
            OnDurable::new(move || answer_waiters(&waiters, &Ok(())))
        };
        let write = self.store.write_notify(batch, on_durable);
        self.writing.push_back(InFlight {
            ids,
            waiters,
            write,
        });
    }

    /// Arms the refresh of a token that expires, if there is a way to refresh it.
    fn schedule_refresh(&mut self, core: &Core) {
        let has_source = core
            .relay
            .as_ref()
            .is_some_and(|r| r.token_source.is_some());
        if !has_source || !core.online {
            return;
        }
        let token = String::from_utf8_lossy(&core.session.config().token).into_owned();
        if let Some(claims) = TokenClaims::read(&token) {
            let expires = Timestamp::from_unix_ms(claims.expires_at.saturating_mul(1000));
            let at = expires
                .saturating_sub(REFRESH_BEFORE_EXPIRY)
                .max(self.earliest_refresh().unwrap_or(Timestamp::EPOCH));
            self.refresh_at = Some((at, self.timer.sleep_until(at)));
        }
    }

    /// The earliest time the token source may be asked again.
    fn earliest_refresh(&self) -> Option<Timestamp> {
        self.last_refresh
            .map(|last| last.saturating_add(MIN_REFRESH_INTERVAL))
    }

    fn start_refresh(&mut self) {
        self.last_refresh = Some(self.timer.now());
        let source = lock(&self.inner.core)
            .relay
            .as_ref()
            .and_then(|r| r.token_source.clone());
        self.refreshing = source.map(|source| source());
    }

    async fn next_wake(&mut self) -> Wake {
        let inner = self.inner.clone();
        poll_fn(|cx| {
            inner.waker.register(cx.waker());
            if inner.woken.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Wake::Woken);
            }
            if let Some(InFlight { write, .. }) = self.writing.front_mut() {
                if let Poll::Ready(result) = write.poll_unpin(cx) {
                    return Poll::Ready(Wake::Written(result));
                }
            }
            if let Some(reload) = &mut self.reloading {
                if let Poll::Ready(result) = reload.poll_unpin(cx) {
                    self.reloading = None;
                    return Poll::Ready(Wake::Reloaded(result));
                }
            }
            if let Some(connecting) = &mut self.connecting {
                if let Poll::Ready(result) = connecting.poll_unpin(cx) {
                    self.connecting = None;
                    return Poll::Ready(Wake::Connected(result));
                }
            }
            if let Some(link) = &mut self.link {
                if let Poll::Ready(incoming) = link.incoming.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Incoming(incoming));
                }
                if link.pump.poll_unpin(cx).is_ready() {
                    return Poll::Ready(Wake::LinkBroken);
                }
            }
            while let Poll::Ready(Some(())) = self.closing.poll_next_unpin(cx) {}
            if let Some(yielding) = &mut self.yielding {
                if yielding.poll_unpin(cx).is_ready() {
                    self.yielding = None;
                    return Poll::Ready(Wake::Yielded);
                }
            }
            if let Some((_, sleep)) = &mut self.sleep {
                if sleep.poll_unpin(cx).is_ready() {
                    self.sleep = None;
                    return Poll::Ready(Wake::Timer);
                }
            }
            if let Some((_, sleep)) = &mut self.refresh_at {
                if sleep.poll_unpin(cx).is_ready() {
                    return Poll::Ready(Wake::RefreshDue);
                }
            }
            if let Some(refresh) = &mut self.refreshing {
                if let Poll::Ready(result) = refresh.poll_unpin(cx) {
                    self.refreshing = None;
                    return Poll::Ready(Wake::Refreshed(result));
                }
            }
            Poll::Pending
        })
        .await
    }

    fn on_wake(&mut self, wake: Wake) {
        let now = self.timer.now();
        let inner = self.inner.clone();
        let mut core = lock(&inner.core);
        let mut refresh = false;
        match wake {
            Wake::Woken => {}
            Wake::Connected(Ok(link)) => {
                self.link = Some(LiveLink::new(link));
                core.session.handle(now, Input::Connected);
            }
            Wake::Connected(Err(e)) => {
                core.last_error = Some(format!("cannot reach the relay: {e}"));
                core.session.handle(now, Input::Disconnected { code: None });
            }
            Wake::Incoming(Some(incoming)) => {
                let mut frames = Vec::with_capacity(incoming.len());
                let mut closed = None;
                for item in incoming {
                    match item {
                        Incoming::Frame(frame) => frames.push(frame),
                        // The stream ends after it: nothing follows.
                        Incoming::Closed { code, reason } => {
                            closed = Some((code, reason));
                            break;
                        }
                    }
                }
                if !frames.is_empty() {
                    core.session.handle(now, Input::ReceivedMany(&frames));
                }
                if let Some((code, reason)) = closed {
                    self.link = None;
                    if !reason.is_empty() {
                        core.last_error = Some(format!("connection closed: {reason}"));
                    }
                    core.session.handle(now, Input::Disconnected { code });
                }
            }
            Wake::Incoming(None) | Wake::LinkBroken => {
                self.link = None;
                core.session.handle(now, Input::Disconnected { code: None });
            }
            Wake::Written(result) => {
                let Some(InFlight { ids, waiters, .. }) = self.writing.pop_front() else {
                    return;
                };
                match result {
                    Ok(()) => {
                        // Those the store did not answer already.
                        answer_waiters(&waiters, &Ok(()));
                        for id in ids {
                            core.session.handle(now, Input::Persisted(id));
                        }
                    }
                    Err(e) => {
                        let error = e.to_string();
                        if let Some(first) = ids.first() {
                            core.session.handle(
                                now,
                                Input::PersistFailed {
                                    id: *first,
                                    error: &error,
                                },
                            );
                        }
                        // Everything queued or in flight behind it depended
                        // on it too. The store fails the writes in flight
                        // (its contract); their answers are dropped unheard,
                        // since the session rebuilt below numbers its
                        // persists from the start again and would take a late
                        // `Persisted` for one of its own.
                        self.queued.clear();
                        // Their callers are answered with the failure below.
                        for in_flight in std::iter::once(waiters)
                            .chain(self.writing.drain(..).map(|w| w.waiters))
                        {
                            core.durable_waiters
                                .extend(std::mem::take(&mut *lock(&in_flight)));
                        }
                        core.store_failed = Some(error.clone());
                        core.shared_waiter = None;
                        core.last_error = Some(format!("the local store failed: {error}"));
                        core.settle_waiters();
                        self.reloading = Some(self.store.read_all());
                    }
                }
            }
            Wake::Reloaded(Ok(records)) => {
                // An empty store (the first write failed) keeps the replica
                // id: nothing of it was ever pushed.
                let restored = Session::restore(
                    core.replica_config,
                    core.session_config.clone(),
                    core.seed,
                    records,
                )
                .map(|restored| {
                    load_session(
                        restored,
                        core.replica_config,
                        &core.session_config,
                        core.seed,
                        core.session.replica().id(),
                        self.store.copied(),
                    )
                });
                match restored {
                    Ok(mut session) => {
                        session.set_token(core.session.config().token.clone());
                        core.session = session;
                        core.store_failed = None;
                        if core.online && !core.closed {
                            core.session.start(now);
                        }
                    }
                    Err(e) => {
                        core.last_error =
                            Some(format!("the stored database cannot be loaded: {e}"));
                    }
                }
            }
            Wake::Reloaded(Err(e)) => {
                core.last_error = Some(format!("the local store failed: {e}"));
            }
            Wake::Timer => core.session.handle(now, Input::Timeout),
            Wake::Yielded => core.session.apply_slice(now),
            Wake::RefreshDue => {
                self.refresh_at = None;
                refresh = true;
            }
            Wake::Refreshed(Ok(token)) => {
                core.session.set_token(token.into_bytes());
                if core.online && core.stopped.take().is_some() {
                    core.session.start(now);
                }
            }
            Wake::Refreshed(Err(message)) => {
                core.last_error = Some(format!("the token could not be refreshed: {message}"));
            }
        }
        // What the session made of it is applied before the lock is let go,
        // so that no reader sees its new state without its events (a link
        // gone offline without the error that stopped it, say).
        take_outputs(&mut core, &mut self.actions);
        drop(core);
        if refresh {
            self.start_refresh();
        }
    }

    /// Stops for good: everything written is stored, the link is closed,
    /// streams end and futures still waiting fail with [`Error::Closed`].
    fn shut_down(self) {
        let Host {
            link,
            store,
            finish,
            ..
        } = self;
        if let Some(link) = link {
            let _ = link.tx.unbounded_send(Outgoing::Close(
                CloseCode::Normal.as_u16(),
                "database closed".into(),
            ));
        }
        // Released before anyone hears the database closed, so it can be
        // opened again at once (a file store holds an OS lock).
        drop(store);
        drop(finish);
    }
}

/// Applies the session's events to the database's state and subscribers,
/// and queues the rest of its outputs for the loop to act on.
fn take_outputs(core: &mut Core, actions: &mut Vec<Output>) {
    while let Some(out) = core.session.poll() {
        match out {
            Output::Event(event) => on_event(core, event),
            other => actions.push(other),
        }
    }
}

/// Applies a session event to the database's state and subscribers.
fn on_event(core: &mut Core, event: Event) {
    match event {
        Event::DocumentChanged {
            collection,
            id,
            origin,
        } => core.subscribers.publish(&Change::Document {
            collection,
            id,
            origin,
        }),
        Event::CollectionChanged { collection, origin } => core
            .subscribers
            .publish(&Change::Collection { collection, origin }),
        Event::Connected { .. } => core.last_error = None,
        Event::Disconnected {
            code,
            reason,
            retry_at,
        } => {
            if code != CloseCode::Normal {
                core.last_error = Some(reason.clone());
            }
            if retry_at.is_none() && core.online && code != CloseCode::Normal {
                let refreshable = code == CloseCode::Unauthorized
                    && core
                        .relay
                        .as_ref()
                        .is_some_and(|r| r.token_source.is_some());
                core.stopped = Some((code, reason));
                if refreshable {
                    core.refresh_requested = true;
                }
            }
        }
        Event::OpsRejected { seqs, message, .. } => {
            core.last_error = Some(format!("the relay refused writes: {message}"));
            core.refusals
                .extend(seqs.into_iter().map(|seq| (seq, message.clone())));
        }
        Event::StoreFailed { message } => {
            core.last_error = Some(format!("the local store failed: {message}"));
        }
        Event::StoreBehindRelay { .. } => {
            core.last_error = Some(
                "this database's store is older than the relay's record of it (restored from \
                 a backup?); it continues as a new replica"
                    .to_owned(),
            );
            core.fork_requested = true;
        }
        Event::ClockSkew { ahead_ms } => {
            core.last_error = Some(format!(
                "this device's clock is off by {} ms from the relay's; fix the clock",
                -ahead_ms
            ));
        }
        Event::PeerMisbehaved { reason } => {
            core.last_error = Some(format!("the relay broke the protocol: {reason}"));
        }
        _ => {}
    }
}

/// One batch for many: later writes to a key replace earlier ones.
fn merge(mut persists: Vec<(PersistId, PersistBatch)>) -> (Vec<PersistId>, PersistBatch) {
    let ids = persists.iter().map(|(id, _)| *id).collect();
    // A lone batch goes as it is (a store applies its writes in order, so
    // nothing in it needs dropping): indexing its keys cost puts issued
    // together in Node about a tenth of their CPU time, for a merge with
    // nothing else.
    if persists.len() == 1 {
        if let Some((_, batch)) = persists.pop() {
            return (ids, batch);
        }
    }
    let mut merged = PersistBatch::default();
    merged.extend_all(persists.into_iter().map(|(_, batch)| batch));
    (ids, merged)
}
