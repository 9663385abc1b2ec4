//! An in-memory platform: a store, a relay in the same process, a manual
//! clock, and a driver that runs a database's loop on the current thread.
//!
//! For tests, examples, and apps that want a database without a disk. The
//! relay here runs the same [`Room`] state machine as `concord-relay`, with
//! no tokens and no sockets.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::channel::mpsc;
use futures::future::{Either, LocalBoxFuture, select};
use futures::{FutureExt, StreamExt};
use sync_core::PersistBatch;
use sync_core::protocol::{self, Message};
use sync_core::room::{Room, RoomConfig, RoomInput, RoomOutput, SessionId};
use sync_core::store::{Record, Store};

use crate::changes::lock;
use crate::database::{Database, Options};
use crate::error::Error;
use crate::host::{HostLoop, Platform, open};
use crate::platform::{
    ClientStore, Incoming, Link, LinkSender, StoreError, StoreErrorKind, Timer, Transport,
    TransportError,
};

/// A store in memory. Clones share the same records, so opening a clone
/// is "reopening" the database. Writes can be made to fail, for tests.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<sync_core::store::MemoryStore>>,
    failing: Arc<AtomicBool>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Makes every write fail (`true`) or succeed again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Every stored record, in key order.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.records).read_all().unwrap_or_default()
    }
}

impl ClientStore for MemoryStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let result = if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::new(
                StoreErrorKind::Full,
                "simulated write failure",
            ))
        } else {
            lock(&self.records)
                .write(&batch)
                .map_err(|e| StoreError::new(StoreErrorKind::Io, e.to_string()))
        };
        futures::future::ready(result).boxed_local()
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        let result = lock(&self.records)
            .read_all()
            .map_err(|e| StoreError::new(StoreErrorKind::Io, e.to_string()));
        futures::future::ready(result).boxed_local()
    }
}

/// A clock that moves only when told to; sleeps end when it passes them.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
    sleepers: Mutex<Vec<(u64, Waker)>>,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicU64::new(now_ms),
            sleepers: Mutex::new(Vec::new()),
        })
    }

    /// Moves the clock forward by `ms`, waking the sleeps that end.
    pub fn advance(&self, ms: u64) {
        let now = self.now.fetch_add(ms, Ordering::SeqCst) + ms;
        let mut sleepers = lock(&self.sleepers);
        sleepers.retain(|(at, waker)| {
            if *at <= now {
                waker.wake_by_ref();
                false
            } else {
                true
            }
        });
    }

    /// The earliest time a sleep waits for, if any.
    pub fn next_wakeup(&self) -> Option<u64> {
        lock(&self.sleepers).iter().map(|(at, _)| *at).min()
    }
}

struct Sleep {
    clock: Arc<ManualClock>,
    at: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now.load(Ordering::SeqCst) >= self.at {
            return Poll::Ready(());
        }
        lock(&self.clock.sleepers).push((self.at, cx.waker().clone()));
        Poll::Pending
    }
}

/// A [`Timer`] reading a [`ManualClock`].
#[derive(Clone, Debug)]
pub struct ManualTimer(pub Arc<ManualClock>);

impl Timer for ManualTimer {
    fn now_ms(&self) -> u64 {
        self.0.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at_ms: u64) -> LocalBoxFuture<'static, ()> {
        Sleep {
            clock: self.0.clone(),
            at: at_ms,
        }
        .boxed_local()
    }
}

/// A transport that never connects, for local-only databases.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTransport;

impl Transport for NoTransport {
    fn connect(&self, _url: &str) -> LocalBoxFuture<'static, Result<Link, TransportError>> {
        futures::future::ready(Err(TransportError::new("this database has no transport")))
            .boxed_local()
    }
}

/// A relay in this process: one [`Room`] per room name, persisted in
/// memory, reached through [`MemoryRelay::transport`]. Joins are not
/// authenticated. Single-threaded: drive it with [`Driver`]s on one thread.
#[derive(Clone, Default)]
pub struct MemoryRelay {
    shared: Rc<RefCell<RelayState>>,
}

impl std::fmt::Debug for MemoryRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRelay").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct RelayState {
    rooms: BTreeMap<String, Room>,
    conns: BTreeMap<SessionId, Conn>,
    next_conn: SessionId,
    /// Refuse new connections (the relay is "down").
    down: bool,
    /// Frames received from clients so far.
    frames_from_clients: u64,
}

struct Conn {
    room: Option<String>,
    to_client: mpsc::UnboundedSender<Incoming>,
}

impl MemoryRelay {
    /// A relay with no rooms.
    pub fn new() -> MemoryRelay {
        MemoryRelay::default()
    }

    /// A transport whose connections reach this relay; `timer` gives the
    /// room its clock.
    pub fn transport(&self, timer: Arc<dyn Timer + Send + Sync>) -> MemoryTransport {
        MemoryTransport {
            relay: self.clone(),
            timer,
        }
    }

    /// Takes the relay down (every connection drops, new ones are refused)
    /// or brings it back up.
    pub fn set_down(&self, down: bool) {
        let mut state = self.shared.borrow_mut();
        state.down = down;
        if down {
            let conns = std::mem::take(&mut state.conns);
            for (session, conn) in conns {
                let _ = conn.to_client.unbounded_send(Incoming::Closed {
                    code: Some(1001),
                    reason: "relay down".into(),
                });
                if let Some(room) = conn.room.and_then(|r| state.rooms.get_mut(&r)) {
                    room.handle(0, RoomInput::Leave { session });
                }
            }
        }
    }

    /// Frames received from clients so far.
    pub fn frames_received(&self) -> u64 {
        self.shared.borrow().frames_from_clients
    }

    /// The latest offset of `room` (0 if it does not exist).
    pub fn head(&self, room: &str) -> u64 {
        self.shared.borrow().rooms.get(room).map_or(0, Room::head)
    }

    fn on_client_frame(&self, now: u64, session: SessionId, frame: Vec<u8>) {
        let mut state = self.shared.borrow_mut();
        state.frames_from_clients += 1;
        let joined = state.conns.get(&session).and_then(|c| c.room.clone());
        let room_name = match joined {
            Some(room) => {
                if let Some(room) = state.rooms.get_mut(&room) {
                    room.handle(
                        now,
                        RoomInput::Frame {
                            session,
                            frame: &frame,
                        },
                    );
                }
                room
            }
            None => {
                let Ok(Message::Hello(hello)) = protocol::decode(&frame, usize::MAX) else {
                    return;
                };
                let name = hello.room.clone();
                if let Some(conn) = state.conns.get_mut(&session) {
                    conn.room = Some(name.clone());
                }
                let room = state
                    .rooms
                    .entry(name.clone())
                    .or_insert_with(|| Room::new(RoomConfig::default()));
                room.handle(
                    now,
                    RoomInput::Join {
                        session,
                        hello,
                        read_only: false,
                    },
                );
                name
            }
        };
        drain_room(&mut state, &room_name, now);
    }

    fn client_closed(&self, now: u64, session: SessionId) {
        let mut state = self.shared.borrow_mut();
        if let Some(conn) = state.conns.remove(&session) {
            if let Some(name) = conn.room {
                if let Some(room) = state.rooms.get_mut(&name) {
                    room.handle(now, RoomInput::Leave { session });
                }
                drain_room(&mut state, &name, now);
            }
        }
    }
}

/// Runs a room's outputs: persists are durable at once (memory), frames go
/// to their connection.
fn drain_room(state: &mut RelayState, name: &str, now: u64) {
    let RelayState { rooms, conns, .. } = state;
    let Some(room) = rooms.get_mut(name) else {
        return;
    };
    while let Some(out) = room.poll() {
        match out {
            RoomOutput::Persist { id, .. } => room.handle(now, RoomInput::Persisted(id)),
            RoomOutput::Transmit { session, frame } => {
                if let Some(conn) = conns.get(&session) {
                    let _ = conn.to_client.unbounded_send(Incoming::Frame(frame));
                }
            }
            RoomOutput::Close {
                session,
                code,
                reason,
            } => {
                if let Some(conn) = conns.remove(&session) {
                    let _ = conn.to_client.unbounded_send(Incoming::Closed {
                        code: Some(code.as_u16()),
                        reason,
                    });
                }
            }
            RoomOutput::Compact(job) => {
                if let Ok(done) = job.run() {
                    room.handle(now, RoomInput::Compacted(done));
                }
            }
            RoomOutput::Timeout(_) => {}
        }
    }
}

/// Connections to a [`MemoryRelay`].
#[derive(Clone)]
pub struct MemoryTransport {
    relay: MemoryRelay,
    timer: Arc<dyn Timer + Send + Sync>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport").finish_non_exhaustive()
    }
}

impl Transport for MemoryTransport {
    fn connect(&self, _url: &str) -> LocalBoxFuture<'static, Result<Link, TransportError>> {
        let mut state = self.relay.shared.borrow_mut();
        if state.down {
            return futures::future::ready(Err(TransportError::new("connection refused")))
                .boxed_local();
        }
        state.next_conn += 1;
        let session = state.next_conn;
        let (to_client, incoming) = mpsc::unbounded();
        state.conns.insert(
            session,
            Conn {
                room: None,
                to_client,
            },
        );
        let link = Link {
            sender: Box::new(MemorySender {
                relay: self.relay.clone(),
                timer: self.timer.clone(),
                session,
            }),
            incoming: incoming.boxed_local(),
        };
        futures::future::ready(Ok(link)).boxed_local()
    }
}

struct MemorySender {
    relay: MemoryRelay,
    timer: Arc<dyn Timer + Send + Sync>,
    session: SessionId,
}

impl LinkSender for MemorySender {
    fn send(&mut self, frame: Vec<u8>) -> LocalBoxFuture<'_, Result<(), TransportError>> {
        let alive = self.relay.shared.borrow().conns.contains_key(&self.session);
        if !alive {
            return futures::future::ready(Err(TransportError::new("connection closed")))
                .boxed_local();
        }
        self.relay
            .on_client_frame(self.timer.now_ms(), self.session, frame);
        futures::future::ready(Ok(())).boxed_local()
    }

    fn close(&mut self, _code: u16, _reason: String) -> LocalBoxFuture<'_, ()> {
        self.relay.client_closed(self.timer.now_ms(), self.session);
        futures::future::ready(()).boxed_local()
    }
}

/// Runs a database's [`HostLoop`] on the current thread while the caller
/// waits for something.
pub struct Driver {
    host: Option<HostLoop>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl Driver {
    /// Drives `host`.
    pub fn new(host: HostLoop) -> Driver {
        Driver { host: Some(host) }
    }

    /// Runs the loop until `fut` completes, and returns its output.
    pub async fn run_until<F: Future + Unpin>(&mut self, fut: F) -> F::Output {
        let Some(host) = self.host.as_mut() else {
            return fut.await;
        };
        match select(host, fut).await {
            Either::Left(((), fut)) => {
                self.host = None;
                fut.await
            }
            Either::Right((output, _)) => output,
        }
    }

    /// Polls the loop once, letting it do what it can without waiting.
    pub fn poll_once(&mut self) -> bool {
        let Some(host) = self.host.as_mut() else {
            return true;
        };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if host.as_mut().poll(&mut cx).is_ready() {
            self.host = None;
        }
        self.host.is_none()
    }

    /// Whether the loop has ended (the database was closed).
    pub fn finished(&self) -> bool {
        self.host.is_none()
    }
}

/// Opens a local-only database in `store`, with a clock at a fixed time.
pub async fn open_local(
    store: MemoryStore,
    options: Options,
) -> Result<(Database, HostLoop), Error> {
    let clock = ManualClock::new(1_700_000_000_000);
    open(
        Platform {
            transport: NoTransport,
            store,
            timer: Arc::new(ManualTimer(clock)),
            seed: 0x00c0_ffee,
        },
        options,
    )
    .await
}
