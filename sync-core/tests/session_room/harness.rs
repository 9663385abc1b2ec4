//! A tiny, deterministic host for one [`Room`] and several [`Session`]s.
//!
//! No randomness and no network model: frames travel in order through
//! per-connection queues, persists are durable the moment they are drained,
//! and virtual time only moves when a test says so. Every output of every
//! machine is kept in a trace so tests can check ordering after the fact.
//!
//! What the relay host does around the room is done here too: the first
//! frame of a connection is decoded as `Hello` and turned into
//! [`RoomInput::Join`] (with the client's token rights); anything else as a
//! first frame closes the connection.

use std::collections::{BTreeMap, VecDeque};

use sync_core::Timestamp;
use sync_core::protocol::{self, CloseCode, Hello, Message, Welcome};
use sync_core::room::{ConnectionId, Room, RoomConfig, RoomInput, RoomOutput, RoomPersist};
use sync_core::session::{Input, LinkState, Output, Session, SessionConfig, SyncState};
use sync_core::store::{MemoryStore, Store};
use sync_core::{Event, Op, PersistBatch, Replica, ReplicaConfig, ReplicaId, StoreKey, Value};

/// Virtual time zero: a plausible wall clock in milliseconds.
pub(crate) const T0: u64 = 1_700_000_000_000;
/// The room every session joins.
pub(crate) const ROOM: &str = "room";
/// The collection test writes go to.
pub(crate) const TODOS: &str = "todos";

/// Decodes a frame the machines produced; they never produce bad ones.
pub(crate) fn msg(frame: &[u8]) -> Message {
    protocol::decode(frame, usize::MAX).expect("machines emit well-formed frames")
}

/// A frame in the version the harness's sessions agree on (the newest,
/// 3), for tests that hand-craft what a peer sends.
pub(crate) fn frame(message: &Message) -> Vec<u8> {
    protocol::encode_in(protocol::COMPACT_VERSION, message)
}

/// Session settings used unless a test changes them.
pub(crate) fn session_config() -> SessionConfig {
    SessionConfig::new(ROOM, b"token".to_vec())
}

/// A room's durable storage: a snapshot plus log entries by offset.
#[derive(Clone, Debug, Default)]
pub(crate) struct RoomStore {
    pub(crate) snapshot: Option<(u64, Vec<u8>)>,
    pub(crate) entries: BTreeMap<u64, Vec<u8>>,
}

impl RoomStore {
    fn write(&mut self, batch: &RoomPersist) {
        for (offset, bytes) in &batch.append {
            self.entries.insert(*offset, bytes.to_vec());
        }
        if let Some((through, bytes)) = &batch.snapshot {
            self.snapshot = Some((*through, bytes.to_vec()));
        }
        if let Some(through) = batch.truncate_through {
            self.entries.retain(|offset, _| *offset > through);
        }
    }

    /// The entries as `Room::restore` takes them.
    pub(crate) fn entry_list(&self) -> Vec<(u64, Vec<u8>)> {
        self.entries.iter().map(|(o, b)| (*o, b.clone())).collect()
    }
}

#[derive(Debug)]
enum Packet {
    Frame(Vec<u8>),
    /// The sender closed the connection (with this code) after everything before it.
    Fin(Option<u16>),
}

#[derive(Debug)]
struct Conn {
    client: usize,
    joined: bool,
    /// The room side has closed or forgotten this connection.
    room_closed: bool,
    to_room: VecDeque<Packet>,
    to_client: VecDeque<Packet>,
}

/// One client: a session, its store, and how its host behaves.
pub(crate) struct Client {
    pub(crate) id: ReplicaId,
    pub(crate) session: Session,
    pub(crate) config: SessionConfig,
    pub(crate) store: MemoryStore,
    /// Local clock minus true time, in milliseconds.
    pub(crate) skew: i64,
    /// What the relay host's token check grants.
    pub(crate) read_only_token: bool,
    /// The current connection, if any.
    pub(crate) conn: Option<ConnectionId>,
    /// When the session wants `Input::Timeout` (true time).
    pub(crate) timeout: Option<u64>,
    /// Every output of the session, in order.
    pub(crate) outputs: Vec<Output>,
    /// Every frame handed to the session, in order.
    pub(crate) received: Vec<Vec<u8>>,
    /// Frames to this client wait in the queue (it is not reading its socket).
    pub(crate) hold_inbound: bool,
    /// Frames to this client vanish.
    pub(crate) drop_inbound: bool,
    /// The host does not go on with received work by itself: the test
    /// calls [`World::apply_slice`].
    pub(crate) hold_slices: bool,
    /// Frames and closes from this client vanish.
    pub(crate) drop_outbound: bool,
    /// Connection attempts fail at once.
    pub(crate) refuse_connect: bool,
    seed: u64,
}

impl Client {
    fn new(session: Session, config: SessionConfig, store: MemoryStore, seed: u64) -> Client {
        Client {
            id: session.replica().id(),
            session,
            config,
            store,
            skew: 0,
            read_only_token: false,
            conn: None,
            timeout: None,
            outputs: Vec::new(),
            received: Vec::new(),
            hold_inbound: false,
            drop_inbound: false,
            hold_slices: false,
            drop_outbound: false,
            refuse_connect: false,
            seed,
        }
    }

    /// The client's local clock at true time `now`.
    pub(crate) fn local(&self, now: u64) -> u64 {
        now.saturating_add_signed(self.skew)
    }

    /// Every event the session reported.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every frame the session sent, decoded.
    pub(crate) fn sent(&self) -> Vec<Message> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Transmit(f) => Some(msg(f)),
                _ => None,
            })
            .collect()
    }

    /// Every frame the session received, decoded.
    pub(crate) fn received(&self) -> Vec<Message> {
        self.received.iter().map(|f| msg(f)).collect()
    }

    /// Every `Push` the session sent, as its operations.
    pub(crate) fn pushes(&self) -> Vec<Vec<Op>> {
        self.sent()
            .into_iter()
            .filter_map(|m| match m {
                Message::Push { ops } => Some(ops),
                _ => None,
            })
            .collect()
    }

    /// Every `Deliver` the session received, as `(from, cursor, ops)`.
    pub(crate) fn deliveries(&self) -> Vec<(u64, u64, Vec<Op>)> {
        self.received()
            .into_iter()
            .filter_map(|m| match m {
                Message::Deliver { from, cursor, ops } => Some((from, cursor, ops)),
                _ => None,
            })
            .collect()
    }

    /// The `Hello`s the session sent.
    pub(crate) fn hellos(&self) -> Vec<Hello> {
        self.sent()
            .into_iter()
            .filter_map(|m| match m {
                Message::Hello(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    /// The `Welcome`s the session received.
    pub(crate) fn welcomes(&self) -> Vec<Welcome> {
        self.received()
            .into_iter()
            .filter_map(|m| match m {
                Message::Welcome(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    /// `Event::Disconnected` as `(code, retry_at)`, in order.
    pub(crate) fn disconnects(&self) -> Vec<(CloseCode, Option<u64>)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Disconnected { code, retry_at, .. } => Some((code, retry_at)),
                _ => None,
            })
            .collect()
    }

    /// How many times the session asked for a transport.
    pub(crate) fn connects(&self) -> usize {
        self.outputs
            .iter()
            .filter(|o| matches!(o, Output::Connect))
            .count()
    }

    /// The close codes the session closed its transport with.
    pub(crate) fn closes(&self) -> Vec<CloseCode> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Close { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// Where the link stands.
    pub(crate) fn link(&self) -> LinkState {
        self.session.status().link
    }

    /// Operations waiting in the outbox.
    pub(crate) fn pending(&self) -> usize {
        self.session.status().pending_ops
    }

    /// The cursor as stored.
    pub(crate) fn cursor(&self) -> u64 {
        self.session.status().cursor
    }

    /// The sync state as found in the store right now.
    pub(crate) fn stored_sync_state(&self) -> Option<SyncState> {
        let key = StoreKey::Extension("session".into()).to_bytes();
        self.store
            .read_all()
            .expect("memory store")
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| SyncState::decode(&v).expect("stored sync state decodes"))
    }

    /// Forgets the traces (outputs and received frames).
    pub(crate) fn clear_trace(&mut self) {
        self.outputs.clear();
        self.received.clear();
    }
}

/// Whether a persist batch stores the outbox record of `seq`.
pub(crate) fn persists_outbox(batch: &PersistBatch, seq: u64) -> bool {
    batch
        .writes
        .iter()
        .any(|w| matches!(w, sync_core::Write::Put { key: StoreKey::Outbox(s), .. } if *s == seq))
}

/// One room, its store, and its clients.
pub(crate) struct World {
    /// True time.
    pub(crate) now: u64,
    pub(crate) room: Room,
    pub(crate) room_config: RoomConfig,
    pub(crate) room_store: RoomStore,
    /// Every output of the room, in order.
    pub(crate) room_trace: Vec<RoomOutput>,
    /// Every frame the room was handed, in order.
    pub(crate) room_received: Vec<(ConnectionId, Vec<u8>)>,
    pub(crate) room_timeout: Option<u64>,
    pub(crate) clients: Vec<Client>,
    conns: BTreeMap<ConnectionId, Conn>,
    next_conn: ConnectionId,
}

impl World {
    /// An empty room at `T0`.
    pub(crate) fn new(room_config: RoomConfig) -> World {
        World {
            now: T0,
            room: Room::new(room_config),
            room_config,
            room_store: RoomStore::default(),
            room_trace: Vec::new(),
            room_received: Vec::new(),
            room_timeout: None,
            clients: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
        }
    }

    /// Adds a client with the default session settings; returns its index.
    pub(crate) fn add_client(&mut self, id: u64) -> usize {
        self.add_client_with(id, session_config())
    }

    /// Adds a client with these session settings; returns its index.
    pub(crate) fn add_client_with(&mut self, id: u64, config: SessionConfig) -> usize {
        let replica = Replica::new(ReplicaId(id), ReplicaConfig::default());
        let session = Session::new(replica, config.clone(), id);
        self.clients
            .push(Client::new(session, config, MemoryStore::new(), id));
        self.clients.len() - 1
    }

    /// Adds a second host for an existing replica, from a copy of its store.
    pub(crate) fn add_twin(&mut self, of: usize) -> usize {
        let store = self.clients[of].store.clone();
        let config = self.clients[of].config.clone();
        let seed = self.clients[of].seed + 1000;
        let session = Session::restore(
            ReplicaConfig::default(),
            config.clone(),
            seed,
            store.read_all().expect("memory store"),
        )
        .expect("store restores")
        .expect("store is not empty");
        self.clients.push(Client::new(session, config, store, seed));
        self.clients.len() - 1
    }

    pub(crate) fn c(&self, i: usize) -> &Client {
        &self.clients[i]
    }

    pub(crate) fn cm(&mut self, i: usize) -> &mut Client {
        &mut self.clients[i]
    }

    /// The client's current connection id.
    pub(crate) fn conn(&self, i: usize) -> ConnectionId {
        self.clients[i].conn.expect("client is connected")
    }

    // ---- driving clients ----

    /// Starts the session and lets everything settle.
    pub(crate) fn start(&mut self, i: usize) {
        let now = self.clients[i].local(self.now);
        self.clients[i].session.start(Timestamp::from_unix_ms(now));
        self.settle();
    }

    /// Stops the session (clean close) and lets everything settle.
    pub(crate) fn stop(&mut self, i: usize) {
        self.clients[i].session.stop();
        self.settle();
    }

    /// Writes `n` documents `{prefix}{k}` with one field each, then settles.
    pub(crate) fn write_many(&mut self, i: usize, prefix: &str, n: usize) {
        for k in 0..n {
            let now = self.clients[i].local(self.now);
            self.clients[i]
                .session
                .put(
                    Timestamp::from_unix_ms(now),
                    TODOS,
                    &format!("{prefix}{k}"),
                    [("n", Value::Int(k as i64))],
                )
                .expect("local write");
        }
        self.settle();
    }

    /// Writes one field of one document, then settles.
    pub(crate) fn put(&mut self, i: usize, id: &str, field: &str, value: impl Into<Value>) {
        let now = self.clients[i].local(self.now);
        self.clients[i]
            .session
            .put(
                Timestamp::from_unix_ms(now),
                TODOS,
                id,
                [(field, value.into())],
            )
            .expect("local write");
        self.settle();
    }

    /// Deletes one document, then settles.
    pub(crate) fn delete(&mut self, i: usize, id: &str) {
        let now = self.clients[i].local(self.now);
        self.clients[i]
            .session
            .delete(Timestamp::from_unix_ms(now), TODOS, id)
            .expect("local delete");
        self.settle();
    }

    /// Feeds an input to a session at the current time, then settles.
    pub(crate) fn client_input(&mut self, i: usize, input: Input<'_>) {
        let now = self.clients[i].local(self.now);
        if let Input::Received(frame) = &input {
            self.clients[i].received.push(frame.to_vec());
        }
        self.clients[i]
            .session
            .handle(Timestamp::from_unix_ms(now), input);
        self.settle();
    }

    /// The transport of client `i` fails: both ends learn it is gone, with
    /// `code` as the close code the client sees.
    pub(crate) fn cut(&mut self, i: usize, code: Option<u16>) {
        if let Some(conn) = self.clients[i].conn.take() {
            if let Some(c) = self.conns.remove(&conn) {
                if c.joined && !c.room_closed {
                    self.room.handle(
                        Timestamp::from_unix_ms(self.now),
                        RoomInput::Leave { connection: conn },
                    );
                }
            }
            let now = self.clients[i].local(self.now);
            self.clients[i]
                .session
                .handle(Timestamp::from_unix_ms(now), Input::Disconnected { code });
        }
        self.settle();
    }

    /// Only the client learns its transport failed; the room still holds
    /// the session (as when a NAT drops the mapping silently).
    pub(crate) fn cut_client_side(&mut self, i: usize) {
        if self.clients[i].conn.take().is_some() {
            let now = self.clients[i].local(self.now);
            self.clients[i].session.handle(
                Timestamp::from_unix_ms(now),
                Input::Disconnected { code: None },
            );
        }
        self.settle();
    }

    /// The client process dies and restarts from its store.
    pub(crate) fn restart(&mut self, i: usize) {
        if let Some(conn) = self.clients[i].conn.take() {
            if let Some(c) = self.conns.remove(&conn) {
                if c.joined && !c.room_closed {
                    self.room.handle(
                        Timestamp::from_unix_ms(self.now),
                        RoomInput::Leave { connection: conn },
                    );
                }
            }
        }
        let c = &mut self.clients[i];
        c.seed += 1;
        c.session = Session::restore(
            ReplicaConfig::default(),
            c.config.clone(),
            c.seed,
            c.store.read_all().expect("memory store"),
        )
        .expect("store restores")
        .expect("store is not empty");
        c.timeout = None;
        self.settle();
    }

    /// Delivers the next frame waiting for a holding client; returns it.
    pub(crate) fn deliver_next_to(&mut self, i: usize) -> Option<Message> {
        let conn = self.clients[i].conn?;
        let packet = self.conns.get_mut(&conn)?.to_client.pop_front()?;
        let shown = match &packet {
            Packet::Frame(f) => Some(msg(f)),
            Packet::Fin(_) => None,
        };
        self.arrive_at_client(conn, packet);
        self.settle();
        shown
    }

    /// Client `i` decodes or applies one slice of what it received (see
    /// [`Client::hold_slices`]), then everything settles; returns whether
    /// work was left to do.
    pub(crate) fn apply_slice(&mut self, i: usize) -> bool {
        if !self.clients[i].session.is_applying() {
            return false;
        }
        let now = self.clients[i].local(self.now);
        self.clients[i]
            .session
            .apply_slice(Timestamp::from_unix_ms(now));
        self.settle();
        true
    }

    /// Whether client `i` still has received work to decode or apply.
    pub(crate) fn apply_slice_pending(&self, i: usize) -> bool {
        self.clients[i].session.is_applying()
    }

    /// Frames queued for client `i` on its current connection, decoded.
    pub(crate) fn queued_to(&self, i: usize) -> Vec<Message> {
        self.clients[i]
            .conn
            .and_then(|c| self.conns.get(&c))
            .map_or_else(Vec::new, |c| {
                c.to_client
                    .iter()
                    .filter_map(|p| match p {
                        Packet::Frame(f) => Some(msg(f)),
                        Packet::Fin(_) => None,
                    })
                    .collect()
            })
    }

    /// Deliver and SnapshotChunk frames queued for client `i`.
    pub(crate) fn queued_data_to(&self, i: usize) -> usize {
        self.queued_to(i)
            .iter()
            .filter(|m| matches!(m, Message::Deliver { .. } | Message::SnapshotChunk { .. }))
            .count()
    }

    /// Hands a raw frame to the room as if client `i` sent it.
    pub(crate) fn inject_to_room(&mut self, i: usize, frame: &[u8]) {
        let conn = self.conn(i);
        self.room_frame(conn, frame.to_vec());
        self.settle();
    }

    /// Compacts the room through its head now, as an admin tool would.
    pub(crate) fn compact_now(&mut self) {
        let job = self
            .room
            .compact_now(Timestamp::from_unix_ms(self.now))
            .expect("something to compact");
        let done = job.run().expect("compaction of the room's own data");
        self.room.handle(
            Timestamp::from_unix_ms(self.now),
            RoomInput::Compacted(done),
        );
        self.settle();
    }

    /// The relay process dies and restarts from its store; every
    /// connection breaks.
    pub(crate) fn restart_room(&mut self) {
        let store = &self.room_store;
        self.room = Room::restore(self.room_config, store.snapshot.clone(), store.entry_list())
            .expect("the room's own store restores");
        self.room_timeout = None;
        self.conns.clear();
        for i in 0..self.clients.len() {
            if self.clients[i].conn.take().is_some() {
                let now = self.clients[i].local(self.now);
                self.clients[i].session.handle(
                    Timestamp::from_unix_ms(now),
                    Input::Disconnected { code: None },
                );
            }
        }
        self.settle();
    }

    /// Joins a session straight into the room with no client behind it.
    pub(crate) fn join_raw(&mut self, session: ConnectionId, replica: u64) {
        let hello = Hello {
            replica: ReplicaId(replica),
            room: ROOM.into(),
            token: Vec::new(),
            cursor: 0,
            own_seq: 0,
            settled_seq: 0,
            agent: "raw".into(),
            versions: vec![sync_core::protocol::PROTOCOL_VERSION],
            snapshot_formats: vec![1, 2, 3],
        };
        self.room.handle(
            Timestamp::from_unix_ms(self.now),
            RoomInput::Join {
                connection: session,
                hello,
                read_only: false,
            },
        );
        self.settle();
    }

    // ---- time ----

    /// Runs every timeout due up to `until`, then sets the clock there.
    pub(crate) fn run_until(&mut self, until: u64) {
        loop {
            self.settle();
            let next = self
                .clients
                .iter()
                .filter_map(|c| c.timeout)
                .chain(self.room_timeout)
                .min();
            match next {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.fire_due();
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
        self.settle();
    }

    /// Moves the clock `ms` forward, running what falls due.
    pub(crate) fn advance(&mut self, ms: u64) {
        self.run_until(self.now + ms);
    }

    fn fire_due(&mut self) {
        if self.room_timeout.is_some_and(|t| t <= self.now) {
            self.room_timeout = None;
            self.room
                .handle(Timestamp::from_unix_ms(self.now), RoomInput::Timeout);
            return;
        }
        for i in 0..self.clients.len() {
            if self.clients[i].timeout.is_some_and(|t| t <= self.now) {
                self.clients[i].timeout = None;
                let now = self.clients[i].local(self.now);
                self.clients[i]
                    .session
                    .handle(Timestamp::from_unix_ms(now), Input::Timeout);
                return;
            }
        }
    }

    // ---- the pump ----

    /// Moves outputs and frames until nothing is left to do (time stands still).
    pub(crate) fn settle(&mut self) {
        for _ in 0..10_000_000 {
            let mut progress = false;
            for i in 0..self.clients.len() {
                progress |= self.drain_client(i);
            }
            progress |= self.drain_room();
            let conns: Vec<ConnectionId> = self.conns.keys().copied().collect();
            for conn in conns {
                if let Some(packet) = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| c.to_room.pop_front())
                {
                    progress = true;
                    self.arrive_at_room(conn, packet);
                }
                let Some(c) = self.conns.get(&conn) else {
                    continue;
                };
                if self.clients[c.client].hold_inbound {
                    continue;
                }
                if let Some(packet) = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| c.to_client.pop_front())
                {
                    progress = true;
                    self.arrive_at_client(conn, packet);
                }
            }
            if !progress {
                return;
            }
        }
        panic!("the machines never settled");
    }

    fn drain_client(&mut self, i: usize) -> bool {
        let mut progress = false;
        while let Some(out) = self.clients[i].session.poll() {
            progress = true;
            self.clients[i].outputs.push(out.clone());
            match out {
                Output::Connect => {
                    let now = self.clients[i].local(self.now);
                    if self.clients[i].refuse_connect {
                        self.clients[i].session.handle(
                            Timestamp::from_unix_ms(now),
                            Input::Disconnected { code: None },
                        );
                        continue;
                    }
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(
                        conn,
                        Conn {
                            client: i,
                            joined: false,
                            room_closed: false,
                            to_room: VecDeque::new(),
                            to_client: VecDeque::new(),
                        },
                    );
                    self.clients[i].conn = Some(conn);
                    self.clients[i]
                        .session
                        .handle(Timestamp::from_unix_ms(now), Input::Connected);
                }
                Output::Transmit(frame) => {
                    if self.clients[i].drop_outbound {
                        continue;
                    }
                    if let Some(c) = self.clients[i].conn.and_then(|c| self.conns.get_mut(&c)) {
                        c.to_room.push_back(Packet::Frame(frame));
                    }
                }
                Output::Close { code, .. } => {
                    let drop = self.clients[i].drop_outbound;
                    if let Some(conn) = self.clients[i].conn.take() {
                        if let Some(c) = self.conns.get_mut(&conn).filter(|_| !drop) {
                            c.to_room.push_back(Packet::Fin(Some(code.as_u16())));
                        }
                    }
                }
                Output::Persist { id, batch } => {
                    let now = self.clients[i].local(self.now);
                    let input = match self.clients[i].store.write(&batch) {
                        Ok(()) => Input::Persisted(id),
                        Err(_) => Input::PersistFailed {
                            id,
                            error: "memory store failed",
                        },
                    };
                    self.clients[i]
                        .session
                        .handle(Timestamp::from_unix_ms(now), input);
                }
                Output::Event(_) => {}
                Output::Timeout(at) => {
                    let skew = self.clients[i].skew;
                    self.clients[i].timeout = Some(at.unix_ms().saturating_add_signed(-skew));
                }
            }
        }
        // As a host does: one slice of received work, then the other
        // machines get a turn (frames may arrive in between).
        if !self.clients[i].hold_slices && self.clients[i].session.is_applying() {
            let now = self.clients[i].local(self.now);
            self.clients[i]
                .session
                .apply_slice(Timestamp::from_unix_ms(now));
            progress = true;
        }
        progress
    }

    fn drain_room(&mut self) -> bool {
        let mut progress = false;
        while let Some(out) = self.room.poll() {
            progress = true;
            self.room_trace.push(out.clone());
            match out {
                RoomOutput::Persist { id, batch } => {
                    self.room_store.write(&batch);
                    self.room
                        .handle(Timestamp::from_unix_ms(self.now), RoomInput::Persisted(id));
                }
                RoomOutput::Transmit {
                    connection: session,
                    frame,
                } => {
                    if let Some(c) = self.conns.get_mut(&session) {
                        c.to_client.push_back(Packet::Frame(frame.to_vec()));
                    }
                }
                RoomOutput::Close {
                    connection: session,
                    code,
                    ..
                } => {
                    if let Some(c) = self.conns.get_mut(&session) {
                        c.room_closed = true;
                        c.to_client.push_back(Packet::Fin(Some(code.as_u16())));
                    }
                }
                RoomOutput::Compact(job) => {
                    // Compaction jobs run at once, as if on a very fast worker.
                    let done = job.run().expect("compaction of the room's own data");
                    self.room.handle(
                        Timestamp::from_unix_ms(self.now),
                        RoomInput::Compacted(done),
                    );
                }
                RoomOutput::Timeout(at) => self.room_timeout = Some(at.unix_ms()),
            }
        }
        progress
    }

    fn arrive_at_room(&mut self, conn: ConnectionId, packet: Packet) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.room_closed {
            return;
        }
        match packet {
            Packet::Frame(frame) => self.room_frame(conn, frame),
            Packet::Fin(_) => {
                c.room_closed = true;
                if c.joined {
                    self.room.handle(
                        Timestamp::from_unix_ms(self.now),
                        RoomInput::Leave { connection: conn },
                    );
                }
            }
        }
    }

    /// What the relay host does with a frame from a connection.
    fn room_frame(&mut self, conn: ConnectionId, frame: Vec<u8>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.joined {
            self.room_received.push((conn, frame.clone()));
            self.room.handle(
                Timestamp::from_unix_ms(self.now),
                RoomInput::Frame {
                    connection: conn,
                    frame: &frame,
                },
            );
            return;
        }
        match protocol::decode(&frame, self.room_config.max_frame_bytes) {
            Ok(Message::Hello(hello)) => {
                c.joined = true;
                let read_only = self.clients[c.client].read_only_token;
                self.room.handle(
                    Timestamp::from_unix_ms(self.now),
                    RoomInput::Join {
                        connection: conn,
                        hello,
                        read_only,
                    },
                );
            }
            _ => {
                c.room_closed = true;
                c.to_client
                    .push_back(Packet::Fin(Some(CloseCode::ProtocolError.as_u16())));
            }
        }
    }

    fn arrive_at_client(&mut self, conn: ConnectionId, packet: Packet) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let i = c.client;
        if self.clients[i].conn != Some(conn) {
            return; // The client has moved on from this connection.
        }
        let now = self.clients[i].local(self.now);
        match packet {
            Packet::Frame(frame) => {
                if self.clients[i].drop_inbound {
                    return;
                }
                self.clients[i].received.push(frame.clone());
                self.clients[i]
                    .session
                    .handle(Timestamp::from_unix_ms(now), Input::Received(&frame));
            }
            Packet::Fin(code) => {
                self.clients[i].conn = None;
                self.conns.remove(&conn);
                self.clients[i]
                    .session
                    .handle(Timestamp::from_unix_ms(now), Input::Disconnected { code });
            }
        }
    }

    // ---- looking at the room ----

    /// Messages the room sent to a session, in order.
    pub(crate) fn room_sent_to(&self, session: ConnectionId) -> Vec<Message> {
        self.room_trace
            .iter()
            .filter_map(|o| match o {
                RoomOutput::Transmit {
                    connection: s,
                    frame,
                } if *s == session => Some(msg(frame)),
                _ => None,
            })
            .collect()
    }

    /// Close codes the room closed a session with.
    pub(crate) fn room_closes(&self, session: ConnectionId) -> Vec<CloseCode> {
        self.room_trace
            .iter()
            .filter_map(|o| match o {
                RoomOutput::Close {
                    connection: s,
                    code,
                    ..
                } if *s == session => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// Messages the room received from a session, in order.
    pub(crate) fn room_got_from(&self, session: ConnectionId) -> Vec<Message> {
        self.room_received
            .iter()
            .filter(|(s, _)| *s == session)
            .filter_map(|(_, f)| protocol::decode(f, usize::MAX).ok())
            .collect()
    }

    /// Whether every client holds exactly what client 0 holds, and all are at the head.
    pub(crate) fn assert_converged(&self) {
        let head = self.room.head();
        let first = self.clients[0].session.replica();
        for (i, c) in self.clients.iter().enumerate() {
            let replica = c.session.replica();
            assert_eq!(replica.state(), first.state(), "client {i} state differs");
            assert_eq!(c.cursor(), head, "client {i} cursor is not the room head");
            assert_eq!(c.pending(), 0, "client {i} has unpushed operations");
            for (id, seqs) in replica.version().iter() {
                for seq in 1..=seqs.contiguous() {
                    let op = sync_core::OpId { replica: id, seq };
                    assert!(self.room.accepted().contains(op), "room lacks {op:?}");
                }
            }
        }
    }
}
