//! The in-process relay: a `Room` per room name behind a [`Transport`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::future::LocalBoxFuture;
use futures::{FutureExt, StreamExt};
use sync_core::Timestamp;
use sync_core::protocol::{self, Message};
use sync_core::room::{ConnectionId, Room, RoomConfig, RoomInput, RoomOutput};

use crate::platform::{Incoming, Link, LinkSender, Timer, Transport, TransportError};

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
    conns: BTreeMap<ConnectionId, Conn>,
    next_conn: ConnectionId,
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
            for (connection, conn) in conns {
                let _ = conn.to_client.unbounded_send(Incoming::Closed {
                    code: Some(1001),
                    reason: "relay down".into(),
                });
                if let Some(room) = conn.room.and_then(|r| state.rooms.get_mut(&r)) {
                    room.handle(Timestamp::EPOCH, RoomInput::Leave { connection });
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

    /// Folds `room`'s whole log into its snapshot now, whatever the
    /// compaction policy says: a client whose cursor is behind then gets
    /// the snapshot instead of the operations.
    pub fn compact(&self, room: &str, now: Timestamp) {
        let mut state = self.shared.borrow_mut();
        let job = state.rooms.get_mut(room).and_then(|r| r.compact_now(now));
        if let Some(Ok(done)) = job.map(|job| job.run()) {
            if let Some(r) = state.rooms.get_mut(room) {
                r.handle(now, RoomInput::Compacted(done));
            }
            drain_room(&mut state, room, now);
        }
    }

    fn on_client_frame(&self, now: Timestamp, connection: ConnectionId, frame: Vec<u8>) {
        let mut state = self.shared.borrow_mut();
        state.frames_from_clients += 1;
        let joined = state.conns.get(&connection).and_then(|c| c.room.clone());
        let room_name = match joined {
            Some(room) => {
                if let Some(room) = state.rooms.get_mut(&room) {
                    room.handle(
                        now,
                        RoomInput::Frame {
                            connection,
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
                if let Some(conn) = state.conns.get_mut(&connection) {
                    conn.room = Some(name.clone());
                }
                let room = state
                    .rooms
                    .entry(name.clone())
                    .or_insert_with(|| Room::new(RoomConfig::default()));
                room.handle(
                    now,
                    RoomInput::Join {
                        connection,
                        hello,
                        read_only: false,
                    },
                );
                name
            }
        };
        drain_room(&mut state, &room_name, now);
    }

    fn client_closed(&self, now: Timestamp, connection: ConnectionId) {
        let mut state = self.shared.borrow_mut();
        if let Some(conn) = state.conns.remove(&connection) {
            if let Some(name) = conn.room {
                if let Some(room) = state.rooms.get_mut(&name) {
                    room.handle(now, RoomInput::Leave { connection });
                }
                drain_room(&mut state, &name, now);
            }
        }
    }
}

/// Runs a room's outputs: persists are durable at once (memory), frames go
/// to their connection.
fn drain_room(state: &mut RelayState, name: &str, now: Timestamp) {
    let RelayState { rooms, conns, .. } = state;
    let Some(room) = rooms.get_mut(name) else {
        return;
    };
    while let Some(out) = room.poll() {
        match out {
            RoomOutput::Persist { id, .. } => room.handle(now, RoomInput::Persisted(id)),
            RoomOutput::Transmit { connection, frame } => {
                if let Some(conn) = conns.get(&connection) {
                    let _ = conn
                        .to_client
                        .unbounded_send(Incoming::Frame(frame.to_vec()));
                }
            }
            RoomOutput::Close {
                connection,
                code,
                reason,
            } => {
                if let Some(conn) = conns.remove(&connection) {
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
        let connection = state.next_conn;
        let (to_client, incoming) = mpsc::unbounded();
        state.conns.insert(
            connection,
            Conn {
                room: None,
                to_client,
            },
        );
        let link = Link {
            sender: Box::new(MemorySender {
                relay: self.relay.clone(),
                timer: self.timer.clone(),
                connection,
            }),
            incoming: incoming.boxed_local(),
        };
        futures::future::ready(Ok(link)).boxed_local()
    }
}

struct MemorySender {
    relay: MemoryRelay,
    timer: Arc<dyn Timer + Send + Sync>,
    connection: ConnectionId,
}

impl LinkSender for MemorySender {
    fn send(&mut self, frame: Vec<u8>) -> LocalBoxFuture<'_, Result<(), TransportError>> {
        let alive = self
            .relay
            .shared
            .borrow()
            .conns
            .contains_key(&self.connection);
        if !alive {
            return futures::future::ready(Err(TransportError::new("connection closed")))
                .boxed_local();
        }
        self.relay
            .on_client_frame(self.timer.now(), self.connection, frame);
        futures::future::ready(Ok(())).boxed_local()
    }

    fn close(&mut self, _code: u16, _reason: String) -> LocalBoxFuture<'_, ()> {
        self.relay.client_closed(self.timer.now(), self.connection);
        futures::future::ready(()).boxed_local()
    }
}
