//! The client side of the sync protocol: a no-IO state machine that keeps a
//! [`Replica`] in sync with a room on the relay.
//!
//! The host owns a transport (a WebSocket) and a store. It feeds the session
//! [`Input`]s and drains [`Output`]s until [`Session::poll`] returns `None`:
//!
//! ```text
//! session.handle(now, Input::Received(&frame));
//! while let Some(out) = session.poll() {
//!     match out {
//!         Output::Connect               => open the socket, then Input::Connected
//!         Output::Transmit(frame)       => send it
//!         Output::Close { .. }          => close the socket, then Input::Disconnected
//!         Output::Persist { id, batch } => write it atomically, then Input::Persisted(id)
//!         Output::Event(event)          => tell the app
//!         Output::Timeout(at)           => call handle(at, Input::Timeout) then
//!     }
//! }
//! ```
//!
//! The session enforces the one ordering rule itself: it hands out a
//! `Persist` at once, but holds back every frame and event queued after it
//! until the host reports it durable with [`Input::Persisted`]. Writes may
//! complete later and on another thread (IndexedDB, SQLite on a writer
//! thread); the host only has to apply batches in the order it got them
//! (it may merge consecutive ones into one transaction). That is what makes
//! "acknowledged" mean "stored" on both sides. A write that fails is
//! reported with [`Input::PersistFailed`]: the session's memory is then
//! ahead of its store, so it stops syncing and refuses writes until the
//! host rebuilds it from the store ([`Session::restore`]).

mod backoff;
mod inbound;

pub use backoff::Backoff;

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::buggify::{self, Switch};
use crate::deadline::ReportedDeadline;
use crate::event::Event;
use crate::gate::{Gate, PersistId};
use crate::op::Op;
use crate::persist::{PersistBatch, RecordError, StoreKey, Write, decode_record, encode_record};
use crate::protocol::{self, CloseCode, ErrorCode, Hello, Message, Welcome};
use crate::quoted::Quoted;
use crate::replica::{Replica, ReplicaConfig, RestoreError, Transaction, WriteError};
use crate::revision::Revision;
use crate::rng::SplitMix64;
use crate::snapshot::{Snapshot, SnapshotDecoder};
use crate::state::{DocumentRef, Documents};
use crate::store::Record;
use crate::timestamp::Timestamp;
use crate::value::{Value, ValueRef};
use inbound::{Inbound, InboundQueue};

/// Least pause after a `Rejected` with a code this build does not know.
const UNKNOWN_REJECTION_PAUSE_MS: u64 = 1000;

/// Name of the store record that holds the session's sync state.
const SESSION_RECORD: &str = "session";

/// Settings of a client session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The room to sync with.
    pub room: String,
    /// The access token presented in `Hello`.
    pub token: Vec<u8>,
    /// Client name and version, for the relay's logs.
    pub agent: String,
    /// Ping the relay after this long without sending anything.
    pub heartbeat_ms: u64,
    /// Declare the link dead after this long without hearing anything.
    pub dead_after_ms: u64,
    /// Give up on a connection attempt or handshake after this long.
    pub handshake_timeout_ms: u64,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Most operations per push (the relay may lower it).
    pub max_batch_ops: usize,
    /// Most bytes of operations per push (the relay may lower it).
    pub max_batch_bytes: usize,
    /// Most pushes awaiting acknowledgement at once (1 to
    /// [`protocol::MAX_PUSH_WINDOW`]; values outside are clamped).
    pub push_window: usize,
    /// Largest frame accepted from the relay.
    pub max_frame_bytes: usize,
    /// Largest snapshot accepted from the relay: its bytes on the wire, and
    /// its body once inflated, if it is compressed.
    pub max_snapshot_bytes: u64,
    /// The snapshot formats this client reads, announced in `Hello`; a
    /// snapshot in any other format is refused. Defaults to every format
    /// this build reads.
    pub snapshot_formats: Vec<u8>,
    /// The protocol versions this client offers in `Hello`; the relay
    /// picks the newest it also speaks. Defaults to every version this
    /// build speaks ([`protocol::SUPPORTED_VERSIONS`]); a client limited
    /// to `[2]` sends and receives operations in the version-2 encoding.
    pub protocol_versions: Vec<u8>,
    /// Most documents of a received snapshot decoded or rewritten, or
    /// received operations applied, per step: more is done over several
    /// calls (see [`Session::is_applying`]), so a host on a UI thread can
    /// yield between them.
    pub apply_slice_docs: usize,
}

crate::setters::with_setters!(SessionConfig {
    with_room => room: String,
    with_token => token: Vec<u8>,
    with_agent => agent: String,
    with_heartbeat_ms => heartbeat_ms: u64,
    with_dead_after_ms => dead_after_ms: u64,
    with_handshake_timeout_ms => handshake_timeout_ms: u64,
    with_backoff => backoff: Backoff,
    with_max_batch_ops => max_batch_ops: usize,
    with_max_batch_bytes => max_batch_bytes: usize,
    with_push_window => push_window: usize,
    with_max_frame_bytes => max_frame_bytes: usize,
    with_max_snapshot_bytes => max_snapshot_bytes: u64,
    with_snapshot_formats => snapshot_formats: Vec<u8>,
    with_protocol_versions => protocol_versions: Vec<u8>,
    with_apply_slice_docs => apply_slice_docs: usize,
});

impl SessionConfig {
    /// Defaults for a room and token.
    pub fn new(room: impl Into<String>, token: impl Into<Vec<u8>>) -> SessionConfig {
        SessionConfig {
            room: room.into(),
            token: token.into(),
            agent: concat!("concord-sync-core/", env!("CARGO_PKG_VERSION")).to_owned(),
            heartbeat_ms: 15_000,
            dead_after_ms: 45_000,
            handshake_timeout_ms: 10_000,
            backoff: Backoff::default(),
            max_batch_ops: 1000,
            max_batch_bytes: 1024 * 1024,
            push_window: 4,
            max_frame_bytes: protocol::DEFAULT_MAX_FRAME_BYTES,
            max_snapshot_bytes: 1 << 30,
            snapshot_formats: (crate::snapshot::OLDEST_SNAPSHOT_FORMAT
                ..=crate::snapshot::NEWEST_SNAPSHOT_FORMAT)
                .collect(),
            protocol_versions: protocol::SUPPORTED_VERSIONS.to_vec(),
            apply_slice_docs: 4096,
        }
    }
}

/// Something that happened to the session.
#[derive(Debug)]
pub enum Input<'a> {
    /// The transport the session asked for is open.
    Connected,
    /// A frame arrived.
    Received(&'a [u8]),
    /// Frames that arrived together (what the transport had ready at
    /// once), in arrival order. Each is handled as a [`Input::Received`],
    /// except that the operations they deliver are handed out in one
    /// [`Output::Persist`], and the frames are confirmed by one `Applied`
    /// behind it: a document several of them touch is written once.
    ReceivedMany(&'a [Vec<u8>]),
    /// The transport closed or failed (`code`: the WebSocket close code, if any).
    Disconnected {
        /// The close code received, if any.
        code: Option<u16>,
    },
    /// A timeout the session asked for has passed.
    Timeout,
    /// The batch of [`Output::Persist`] with this id is durable.
    Persisted(PersistId),
    /// The batch of [`Output::Persist`] with this id could not be written.
    PersistFailed {
        /// The batch.
        id: PersistId,
        /// What went wrong, for the application.
        error: &'a str,
    },
}

/// Something the host must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a transport to the relay, then report `Input::Connected` or
    /// `Input::Disconnected`.
    Connect,
    /// Send this frame.
    Transmit(Vec<u8>),
    /// Close the transport with this code.
    Close {
        /// The close code.
        code: CloseCode,
        /// Why, for the close frame.
        reason: String,
    },
    /// Write this batch atomically and durably, after the batches handed
    /// out before it, then report [`Input::Persisted`] (or
    /// [`Input::PersistFailed`]). The session holds back what depends on it.
    Persist {
        /// Identifies the batch in the report.
        id: PersistId,
        /// The writes.
        batch: PersistBatch,
    },
    /// Tell the application.
    Event(Event),
    /// Call `handle(Input::Timeout)` at this time (replaces earlier timeouts).
    Timeout(Timestamp),
}

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not connecting: [`Session::stop`] was called, or a close said retrying cannot help.
    Offline,
    /// Waiting to retry.
    Waiting {
        /// When the next attempt starts.
        retry_at: u64,
    },
    /// The host is opening a transport.
    Connecting,
    /// `Hello` sent, waiting for `Welcome`.
    Handshaking,
    /// Joined the room.
    Live,
}

/// A summary for status displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Where the connection stands.
    pub link: LinkState,
    /// Local operations not yet acknowledged.
    pub pending_ops: usize,
    /// Room offset applied and stored here.
    pub cursor: u64,
    /// The room's latest offset as last reported by the relay.
    pub relay_head: u64,
    /// Whether the token only allows reading.
    pub read_only: bool,
}

impl Status {
    /// Room operations the relay has that are not applied here yet (as last known).
    pub fn lag(&self) -> u64 {
        self.relay_head.saturating_sub(self.cursor)
    }
}

/// The sync state saved with the replica, so a session resumes across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub(crate) room: String,
    pub(crate) cursor: u64,
    pub(crate) relay_head: u64,
    /// The relay refused a local operation for good: download the room
    /// again once every other pending push is answered.
    pub(crate) resync: bool,
}

impl SyncState {
    /// The room this replica syncs with.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The room offset applied and stored here.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The room's latest offset as last reported by the relay.
    pub fn relay_head(&self) -> u64 {
        self.relay_head
    }

    /// Encodes the state as stored.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_record(self)
    }

    /// Decodes a stored state.
    pub fn decode(bytes: &[u8]) -> Result<SyncState, RecordError> {
        decode_record(&StoreKey::Extension(SESSION_RECORD.into()), bytes)
    }
}

/// The state of a live connection.
#[derive(Clone, Debug)]
struct Live {
    /// The protocol version agreed in `Welcome`: every later frame both
    /// ways carries it.
    version: u8,
    read_only: bool,
    last_heard: u64,
    last_sent: u64,
    /// Highest sequence number pushed on this connection.
    pushed_through: u64,
    /// Last sequence number of each push awaiting acknowledgement.
    in_flight: VecDeque<u64>,
    /// Pushes paused until then (the relay said our clock is ahead).
    push_paused_until: Option<u64>,
    max_batch_ops: usize,
    max_batch_bytes: usize,
    heartbeat_ms: u64,
    /// Cursor of the last frame received, ahead of the stored cursor while
    /// operations wait in the inbound queue.
    received: u64,
    /// A snapshot being assembled from chunks.
    assembling: Option<Assembly>,
    reported_all_pushed: bool,
    /// When `Welcome` arrived; a connection that lasts resets the backoff.
    joined_at: u64,
    /// The room head announced in `Welcome`; `CaughtUp` fires once on reaching it.
    catch_up_target: Option<u64>,
}

#[derive(Clone, Debug)]
struct Assembly {
    cursor: u64,
    total_len: u64,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Link {
    Offline,
    Waiting { retry_at: u64 },
    Connecting { since: u64 },
    Handshaking { since: u64 },
    Live(Box<Live>),
}

/// A client session: a replica plus everything needed to sync it with a room.
#[derive(Debug)]
pub struct Session {
    replica: Replica,
    config: SessionConfig,
    sync: SyncState,
    sync_dirty: bool,
    link: Link,
    attempt: u32,
    rng: SplitMix64,
    inbound: InboundQueue,
    outputs: Gate<Output>,
    /// A persist failed: memory is ahead of the store. Nothing more is
    /// sent or written; the host rebuilds the session from its store.
    store_failed: Option<String>,
    /// Set by a local write whose persist and pushes are not queued yet:
    /// the host time of the latest such write. Writes made back to back
    /// (many puts before the host polls) share one persist batch, so each
    /// changed document is encoded once per batch, not once per write.
    local_writes_at: Option<u64>,
    /// Persists from this id on were given up when the store failed.
    failed_from: Option<PersistId>,
    reported_timeout: ReportedDeadline,
    /// Refused operations already reported since the last resync. An ack
    /// overtaken by a later one must still report its refusals, so whether
    /// an operation is still in the outbox cannot be the test.
    reported_refusals: BTreeSet<u64>,
    /// `OpsRejected` events waiting for the persist that drops their
    /// operations from the outbox: an app told "refused for good" must not
    /// see the operation come back after a crash.
    refusal_events: Vec<Event>,
    /// While [`Input::ReceivedMany`] is handled: the frames applied so
    /// far, whose persist and `Applied` wait for the last of its frames.
    batched_frames: Option<u32>,
}

/// Rebuilds a session from its store's records fed in slices, so a host
/// can yield between them; [`Session::restore`] takes them all at once.
#[derive(Debug)]
pub struct SessionLoader {
    replica: crate::replica::ReplicaLoader,
    sync: Option<Vec<u8>>,
}

impl SessionLoader {
    /// A loader that has read nothing yet.
    pub fn new(replica_config: ReplicaConfig) -> SessionLoader {
        SessionLoader {
            replica: crate::replica::ReplicaLoader::new(replica_config),
            sync: None,
        }
    }

    /// Reads the next records (in key order, as stores return them).
    pub fn feed<I>(&mut self, records: I) -> Result<(), RestoreError>
    where
        I: IntoIterator<Item = Record>,
    {
        let sync = &mut self.sync;
        self.replica
            .feed(records.into_iter().filter_map(|(key, value)| {
                if key.as_slice() == SESSION_KEY {
                    *sync = Some(value);
                    return None;
                }
                Some((key, value))
            }))
    }

    /// Decodes up to `max_docs` more documents of the checkpoint fed last
    /// (see [`crate::ReplicaLoader::decode_slice`]); returns whether any
    /// are left.
    pub fn decode_slice(&mut self, max_docs: usize) -> Result<bool, RestoreError> {
        self.replica.decode_slice(max_docs)
    }

    /// The session the records describe, or `None` for an empty store.
    ///
    /// A stored sync state for another room is ignored: the session starts
    /// that room from offset 0.
    pub fn finish(self, config: SessionConfig, seed: u64) -> Result<Option<Session>, RestoreError> {
        let sync = self.sync.as_deref().map(SyncState::decode).transpose()?;
        let Some(replica) = self.replica.finish()? else {
            return Ok(None);
        };
        let mut session = Session::new(replica, config, seed);
        if let Some(sync) = sync.filter(|s| s.room == session.config.room) {
            session.sync = sync;
            session.sync_dirty = false;
        }
        Ok(Some(session))
    }
}

/// [`SESSION_RECORD`]'s key as stored.
const SESSION_KEY: &[u8] = b"Xsession";

impl Session {
    /// A session around `replica`, offline until [`Session::start`].
    ///
    /// `seed` feeds the reconnect jitter; pass fresh randomness.
    pub fn new(replica: Replica, config: SessionConfig, seed: u64) -> Session {
        let sync = SyncState {
            room: config.room.clone(),
            ..SyncState::default()
        };
        Session {
            replica,
            config,
            sync,
            sync_dirty: true,
            link: Link::Offline,
            attempt: 0,
            rng: SplitMix64::new(seed),
            inbound: InboundQueue::default(),
            outputs: Gate::default(),
            store_failed: None,
            local_writes_at: None,
            failed_from: None,
            reported_timeout: ReportedDeadline::default(),
            reported_refusals: BTreeSet::new(),
            refusal_events: Vec::new(),
            batched_frames: None,
        }
    }

    /// Rebuilds a session from its store's records, or `None` for an empty store.
    ///
    /// A stored sync state for another room is ignored: the session starts
    /// that room from offset 0.
    pub fn restore(
        replica_config: ReplicaConfig,
        config: SessionConfig,
        seed: u64,
        records: Vec<Record>,
    ) -> Result<Option<Session>, RestoreError> {
        let mut loader = SessionLoader::new(replica_config);
        loader.feed(records)?;
        loader.finish(config, seed)
    }

    /// Whether received data is still being decoded or applied (a
    /// snapshot, or more operations than a slice), or a checkpoint encoded
    /// (see `replica/checkpoint.rs`): the host calls
    /// [`Session::apply_slice`] (yielding to its platform in between) until
    /// this is `false`. Reads see the snapshot's state once
    /// its last slice is decoded (and checked), none of it before; the
    /// cursor is stored, and `CaughtUp` reported, once the last slice is
    /// applied. `false`
    /// while the store is failed: no slice can make progress then, and the
    /// host reloads from the store instead.
    pub fn is_applying(&self) -> bool {
        (self.replica.is_resetting() || self.inbound.ready() || self.replica.is_checkpointing())
            && self.store_failed.is_none()
    }

    /// Decodes or applies the next slice (at most
    /// [`SessionConfig::apply_slice_docs`] documents or operations) of what
    /// was received.
    pub fn apply_slice(&mut self, now: Timestamp) {
        let now = now.unix_ms();
        self.settle_local_writes();
        if self.store_failed.is_some() {
            return;
        }
        if !self.inbound.applying_front() {
            // The snapshot's item was dropped with its connection: finish
            // the reset anyway; the cursor stays where it was.
            self.replica.continue_reset(self.config.apply_slice_docs);
        }
        self.replica.checkpoint_step(self.config.apply_slice_docs);
        self.drain_inbound(now);
        self.connect_when_due(now);
    }

    /// Starts the connection attempt that is due, unless received work is
    /// still being applied (see [`InboundQueue::keep_snapshot_only`]): a
    /// `Hello` sent meanwhile would carry the cursor from before the
    /// snapshot, and the relay would send the snapshot again.
    fn connect_when_due(&mut self, now: u64) {
        if let Link::Waiting { retry_at } = self.link {
            if now >= retry_at && !self.applying_offline() {
                self.link = Link::Connecting { since: now };
                self.outputs.push(Output::Connect);
            }
        }
    }

    /// Whether a received snapshot is still being decoded or applied while
    /// there is no connection; [`Session::apply_slice`] connects once it is done.
    /// One held by the clock does not count: the wait could be long, with
    /// this device's writes not pushed meanwhile, and once connected the
    /// relay sends the snapshot again.
    fn applying_offline(&self) -> bool {
        self.replica.is_resetting() || self.inbound.ready()
    }

    /// The replica, for reads.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// A document, borrowed (see [`Replica::document`]).
    pub fn document<'a>(&'a self, collection: &str, id: &str) -> Option<DocumentRef<'a>> {
        self.replica.document(collection, id)
    }

    /// One field of a document, borrowed (see [`Replica::get_field`]).
    pub fn get_field<'a>(
        &'a self,
        collection: &str,
        id: &str,
        field: &str,
    ) -> Option<ValueRef<'a>> {
        self.replica.get_field(collection, id, field)
    }

    /// A collection's existing documents, borrowed, in id order (see
    /// [`Replica::documents`]).
    pub fn documents<'a>(&'a self, collection: &str) -> Documents<'a> {
        self.replica.documents(collection)
    }

    /// The sync state as it will be stored.
    pub fn sync_state(&self) -> &SyncState {
        &self.sync
    }

    /// The session's configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// A summary for status displays.
    pub fn status(&self) -> Status {
        let (link, read_only) = match &self.link {
            Link::Offline => (LinkState::Offline, false),
            Link::Waiting { retry_at } => (
                LinkState::Waiting {
                    retry_at: *retry_at,
                },
                false,
            ),
            Link::Connecting { .. } => (LinkState::Connecting, false),
            Link::Handshaking { .. } => (LinkState::Handshaking, false),
            Link::Live(live) => (LinkState::Live, live.read_only),
        };
        Status {
            link,
            pending_ops: self.replica.outbox().len(),
            cursor: self.sync.cursor,
            relay_head: self.sync.relay_head,
            read_only,
        }
    }

    /// Replaces the access token; the next connection presents it (a live
    /// connection keeps the one it joined with).
    pub fn set_token(&mut self, token: impl Into<Vec<u8>>) {
        self.config.token = token.into();
    }

    /// Starts connecting (now, or once a snapshot received whole before
    /// the last connection ended is applied: see
    /// [`Session::apply_slice`]) and keeps reconnecting until [`Session::stop`].
    ///
    /// A room name the relay would refuse (see
    /// [`protocol::valid_room_name`]) never connects: the session reports
    /// `Disconnected { code: InvalidRoom }` and stays offline.
    pub fn start(&mut self, now: Timestamp) {
        self.settle_local_writes();
        if self.store_failed.is_some() {
            return;
        }
        if !protocol::valid_room_name(&self.config.room) {
            self.link = Link::Offline;
            self.outputs.push(Output::Event(Event::Disconnected {
                code: CloseCode::InvalidRoom,
                reason: format!("invalid room name {}", Quoted(&self.config.room)),
                retry_at: None,
            }));
            return;
        }
        if matches!(self.link, Link::Offline | Link::Waiting { .. }) {
            self.attempt = 0;
            // Due now, but, as for a retry, not before a snapshot kept from
            // the last connection is applied (see `connect_when_due`).
            self.link = Link::Waiting {
                retry_at: now.unix_ms(),
            };
            self.connect_when_due(now.unix_ms());
        }
    }

    /// Disconnects and stays offline; local writes keep working.
    pub fn stop(&mut self) {
        self.settle_local_writes();
        if matches!(
            self.link,
            Link::Connecting { .. } | Link::Handshaking { .. } | Link::Live(_)
        ) {
            self.outputs.push(Output::Close {
                code: CloseCode::Normal,
                reason: "client stopped".into(),
            });
            self.outputs.push(Output::Event(Event::Disconnected {
                code: CloseCode::Normal,
                reason: "client stopped".into(),
                retry_at: None,
            }));
        }
        self.link = Link::Offline;
    }

    /// Continues under a new replica id (see [`Replica::fork`]): for a
    /// store that turned out to be a copy of another database's. The
    /// session disconnects first if it was connected; call
    /// [`Session::start`] again to sync as the new replica.
    pub fn fork(&mut self, new_id: crate::ReplicaId) {
        self.stop();
        self.replica.fork(new_id);
        // Refusals were reported by sequence number, which the fork reuses.
        self.reported_refusals.clear();
        // Stored before anything is sent under the new id (the gate holds
        // every later frame behind this persist).
        self.flush_persist();
    }

    // ---- local writes: the replica's API, followed by persist and push ----

    /// Writes fields of a document (see [`Replica::put`]).
    pub fn put<K: Into<String>, V: Into<Value>>(
        &mut self,
        now: Timestamp,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Revision, WriteError> {
        self.check_store()?;
        let fields = fields.into_iter().map(|(k, v)| (k.into(), v));
        let result = self.replica.put(now, collection, id, fields);
        self.after_local_write(now.unix_ms());
        result
    }

    /// Writes fields if the document is still at `expected` (see [`Replica::put_if`]).
    pub fn put_if<K: Into<String>, V: Into<Value>>(
        &mut self,
        now: Timestamp,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
        expected: Option<Revision>,
    ) -> Result<Revision, WriteError> {
        self.check_store()?;
        let fields = fields.into_iter().map(|(k, v)| (k.into(), v));
        let result = self.replica.put_if(now, collection, id, fields, expected);
        self.after_local_write(now.unix_ms());
        result
    }

    /// Removes fields of a document (see [`Replica::unset`]).
    pub fn unset<K: Into<String>>(
        &mut self,
        now: Timestamp,
        collection: &str,
        id: &str,
        names: impl IntoIterator<Item = K>,
    ) -> Result<Revision, WriteError> {
        self.check_store()?;
        let names = names.into_iter().map(Into::<String>::into);
        let result = self.replica.unset(now, collection, id, names);
        self.after_local_write(now.unix_ms());
        result
    }

    /// Deletes a document (see [`Replica::delete`]).
    pub fn delete(&mut self, now: Timestamp, collection: &str, id: &str) -> Result<(), WriteError> {
        self.check_store()?;
        let result = self.replica.delete(now, collection, id);
        self.after_local_write(now.unix_ms());
        result
    }

    /// Creates a collection (see [`Replica::create_collection`]).
    pub fn create_collection(
        &mut self,
        now: Timestamp,
        collection: &str,
    ) -> Result<(), WriteError> {
        self.check_store()?;
        let result = self.replica.create_collection(now, collection);
        self.after_local_write(now.unix_ms());
        result
    }

    /// Drops a collection (see [`Replica::drop_collection`]).
    pub fn drop_collection(&mut self, now: Timestamp, collection: &str) -> Result<(), WriteError> {
        self.check_store()?;
        let result = self.replica.drop_collection(now, collection);
        self.after_local_write(now.unix_ms());
        result
    }

    /// Applies many writes as one unit (see [`Replica::transaction`]): all
    /// or nothing, then one persist batch for all of them, then pushes.
    pub fn transaction<T, E>(
        &mut self,
        now: Timestamp,
        build: impl FnOnce(&mut Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<WriteError>,
    {
        self.check_store()?;
        let result = self.replica.transaction(now, build);
        self.after_local_write(now.unix_ms());
        result
    }

    /// Notes a local write; its persist and pushes are queued by the next
    /// [`Session::poll`] or input (see [`Session::settle_local_writes`]).
    fn after_local_write(&mut self, now: u64) {
        self.local_writes_at = Some(self.local_writes_at.map_or(now, |t| t.max(now)));
    }

    /// Queues the persist of the local writes made since the last one, then
    /// the pushes they allow. Every path that queues outputs or handles
    /// input runs this first, so no frame is queued ahead of the persist of
    /// a write made before it. The persist is queued even when empty, so
    /// the id [`Session::latest_persist`] promised is always issued.
    fn settle_local_writes(&mut self) {
        let Some(now) = self.local_writes_at.take() else {
            return;
        };
        if self.store_failed.is_some() {
            return; // The host rebuilds the session from the store.
        }
        if buggify::on(Switch::PushBeforePersist) {
            self.flush_pushes(now);
        }
        let promised = self.outputs.next_id();
        self.flush_persist();
        if self.outputs.next_id() == promised {
            self.outputs.push_persist(|id| Output::Persist {
                id,
                batch: PersistBatch::default(),
            });
        }
        self.flush_pushes(now);
    }

    // ---- inputs ----

    /// Feeds one input at host time `now`.
    pub fn handle(&mut self, now: Timestamp, input: Input<'_>) {
        // Timing arithmetic inside the state machine is in plain milliseconds.
        let now = now.unix_ms();
        self.settle_local_writes();
        if self.store_failed.is_some() {
            return; // Stopped for good; see `on_store_failed`.
        }
        match input {
            Input::Connected => self.on_connected(now),
            Input::Received(frame) => self.on_frame(now, frame),
            Input::ReceivedMany(frames) => self.on_frames(now, frames),
            Input::Disconnected { code } => {
                let code = code.map_or(CloseCode::GoingAway, CloseCode::from_u16);
                self.lose_link(now, code, "transport closed".into(), false);
            }
            Input::Timeout => self.on_timeout(now),
            Input::Persisted(id) => {
                // Nothing else changes: polling releases what waited for it.
                self.outputs.persisted(id);
                return;
            }
            Input::PersistFailed { id, error } => {
                if self.outputs.is_pending(id) {
                    self.on_store_failed(error);
                }
                return;
            }
        }
        self.flush_persist();
    }

    /// A batch could not be stored: everything queued after it depended on
    /// it, and memory is ahead of the store from here on.
    fn on_store_failed(&mut self, error: &str) {
        let message = error.to_owned();
        self.failed_from = Some(self.outputs.durable_below());
        self.outputs.clear();
        self.refusal_events.clear();
        self.store_failed = Some(message.clone());
        let reason = format!("the local store failed: {message}");
        if matches!(
            self.link,
            Link::Connecting { .. } | Link::Handshaking { .. } | Link::Live(_)
        ) {
            self.outputs.push(Output::Close {
                code: CloseCode::Normal,
                reason: reason.clone(),
            });
        }
        self.link = Link::Offline;
        self.inbound.clear();
        self.outputs
            .push(Output::Event(Event::StoreFailed { message }));
        self.outputs.push(Output::Event(Event::Disconnected {
            code: CloseCode::Normal,
            reason,
            retry_at: None,
        }));
    }

    /// The store's error, once a persist failed (see [`Input::PersistFailed`]).
    pub fn store_failed(&self) -> Option<&str> {
        self.store_failed.as_deref()
    }

    /// The id of the latest persist queued, if any, or of the one the next
    /// [`Session::poll`] queues for local writes made since the last: a
    /// local write made just before this call is durable once this id is
    /// (see [`Session::is_durable`]).
    pub fn latest_persist(&self) -> Option<PersistId> {
        let next = self.outputs.next_id();
        if self.local_writes_at.is_some() {
            // Local writes not queued yet: the next persist will hold them.
            return Some(next);
        }
        (next.0 > 1).then(|| PersistId(next.0 - 1))
    }

    /// Whether the persist `id`, and every one before it, is durable.
    pub fn is_durable(&self, id: PersistId) -> bool {
        id < self.outputs.durable_below() && self.failed_from.is_none_or(|failed| id < failed)
    }

    fn check_store(&self) -> Result<(), WriteError> {
        match &self.store_failed {
            Some(message) => Err(WriteError::StoreFailed {
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    fn on_connected(&mut self, now: u64) {
        if !matches!(self.link, Link::Connecting { .. }) {
            return;
        }
        let hello = Hello {
            replica: self.replica.id(),
            room: self.config.room.clone(),
            token: self.config.token.clone(),
            cursor: self.sync.cursor,
            own_seq: self
                .replica
                .version()
                .get(self.replica.id())
                .map_or(0, |s| s.contiguous()),
            settled_seq: self
                .replica
                .outbox()
                .next()
                .map_or(self.replica.next_seq(), |op| op.id.seq)
                - 1,
            agent: self.config.agent.clone(),
            versions: self.config.protocol_versions.clone(),
            snapshot_formats: self.config.snapshot_formats.clone(),
        };
        self.outputs
            .push(Output::Transmit(protocol::encode(&Message::Hello(hello))));
        self.link = Link::Handshaking { since: now };
    }

    /// Frames that arrived together: one persist for what they applied,
    /// then one `Applied` for them all (queued behind that persist, so it
    /// leaves only once their documents and cursor are durable).
    fn on_frames(&mut self, now: u64, frames: &[Vec<u8>]) {
        self.batched_frames = Some(0);
        for frame in frames {
            self.on_frame(now, frame);
        }
        let applied = self.batched_frames.take().unwrap_or(0);
        self.flush_persist();
        // A link lost within the batch confirms nothing: the next
        // connection resumes from the stored cursor.
        if applied > 0 && matches!(self.link, Link::Live(_)) {
            self.confirm(now, applied);
        }
        self.check_caught_up();
    }

    fn on_frame(&mut self, now: u64, frame: &[u8]) {
        if !matches!(self.link, Link::Handshaking { .. } | Link::Live(_)) {
            return; // A straggler from a connection already given up.
        }
        let message = match protocol::decode(frame, self.config.max_frame_bytes) {
            Ok(message) => message,
            // A bad version byte from a relay that spoke our version moments
            // ago is corruption, not a version mismatch: reconnect. A relay
            // that really speaks another version says so in an `Error`.
            Err(e) => {
                // A relay that does not speak our version refuses the
                // `Hello` with an `Error` in its own version; every
                // version lays `Error` out alike.
                if let (Link::Handshaking { .. }, protocol::FrameError::UnsupportedVersion { .. }) =
                    (&self.link, &e)
                {
                    if let Some((version, code, message)) = protocol::decode_any_error(frame) {
                        let reason = format!("relay error {code:?} (version {version}): {message}");
                        return self.lose_link(now, code.close_code(), reason, true);
                    }
                }
                let close = match e {
                    protocol::FrameError::UnsupportedVersion { .. } => CloseCode::ProtocolError,
                    _ => e.close_code(),
                };
                return self.fail(now, close, e.error_code(), e.to_string());
            }
        };
        if let Link::Live(live) = &mut self.link {
            // Every frame after `Welcome` carries the agreed version, except
            // that an `Error` (laid out alike in every version) is read in
            // any: a relay host may refuse a session before the room does.
            if frame.first() != Some(&live.version) && !matches!(message, Message::Error { .. }) {
                let reason = format!(
                    "frame of protocol version {:?} on a version {} connection",
                    frame.first(),
                    live.version
                );
                return self.fail(now, CloseCode::ProtocolError, ErrorCode::Malformed, reason);
            }
            live.last_heard = now;
        }
        match (&self.link, message) {
            (Link::Handshaking { .. }, Message::Welcome(welcome)) => self.on_welcome(now, welcome),
            (
                Link::Live(_),
                Message::Ack {
                    through_seq,
                    refused,
                },
            ) => self.on_ack(now, through_seq, refused),
            (Link::Live(_), Message::Deliver { from, cursor, ops }) => {
                self.on_deliver(now, from, cursor, ops)
            }
            (
                Link::Live(_),
                Message::SnapshotChunk {
                    cursor,
                    total_len,
                    offset,
                    bytes,
                },
            ) => self.on_chunk(now, cursor, total_len, offset, bytes),
            (
                Link::Live(_),
                Message::Rejected {
                    seq,
                    code,
                    retry_after_ms,
                    message,
                },
            ) => self.on_rejected(now, seq, code, retry_after_ms, message),
            (Link::Live(_), Message::Ping { nonce }) => self.send(now, &Message::Pong { nonce }),
            (Link::Live(_), Message::Pong { .. }) => {}
            (Link::Handshaking { .. } | Link::Live(_), Message::Error { code, message }) => self
                .lose_link(
                    now,
                    code.close_code(),
                    format!("relay error {code:?}: {message}"),
                    true,
                ),
            (_, other) => self.fail(
                now,
                CloseCode::ProtocolError,
                ErrorCode::Malformed,
                format!("unexpected {} in this state", message_name(&other)),
            ),
        }
    }

    fn on_welcome(&mut self, now: u64, welcome: Welcome) {
        if !protocol::SUPPORTED_VERSIONS.contains(&welcome.version)
            || !self.config.protocol_versions.contains(&welcome.version)
            || !self
                .config
                .snapshot_formats
                .contains(&welcome.snapshot_format)
        {
            let reason = format!(
                "relay chose protocol version {} and snapshot format {}, which this client did \
                 not offer",
                welcome.version, welcome.snapshot_format
            );
            return self.fail(now, CloseCode::ProtocolError, ErrorCode::Malformed, reason);
        }
        if welcome.accepted_seq >= self.replica.next_seq() {
            // The relay settled numbers this store never handed out: it was
            // restored from an older copy, and new writes would reuse them.
            self.outputs.push(Output::Event(Event::StoreBehindRelay {
                relay_seq: welcome.accepted_seq,
                local_next_seq: self.replica.next_seq(),
            }));
            let reason = "this replica's store is older than the relay's record of it".to_owned();
            self.outputs.push(Output::Close {
                code: CloseCode::Normal,
                reason: reason.clone(),
            });
            self.link = Link::Offline;
            self.outputs.push(Output::Event(Event::Disconnected {
                code: CloseCode::Normal,
                reason,
                retry_at: None,
            }));
            return;
        }
        let max_batch_ops = self
            .config
            .max_batch_ops
            .min(welcome.max_batch_ops as usize)
            .max(1);
        let max_batch_bytes = self
            .config
            .max_batch_bytes
            .min(welcome.max_batch_bytes as usize)
            .max(1);
        let heartbeat_ms = self
            .config
            .heartbeat_ms
            .min(u64::from(welcome.heartbeat_ms).max(1000));
        // Refused on an earlier connection: the client may never have heard.
        let refused = welcome
            .refused
            .iter()
            .map(|&seq| (seq, ErrorCode::Stale))
            .collect();
        self.note_refused(refused, "refused by the relay on an earlier connection");
        // The relay already settled these: their acknowledgement was lost.
        self.replica.acknowledge(welcome.accepted_seq);
        let acked_through = self
            .replica
            .outbox()
            .next()
            .map_or(self.replica.next_seq() - 1, |op| op.id.seq - 1);
        self.link = Link::Live(Box::new(Live {
            version: welcome.version,
            read_only: welcome.read_only,
            last_heard: now,
            last_sent: now,
            pushed_through: acked_through,
            in_flight: VecDeque::new(),
            push_paused_until: None,
            max_batch_ops,
            max_batch_bytes,
            heartbeat_ms,
            received: welcome.cursor,
            assembling: None,
            reported_all_pushed: false,
            joined_at: now,
            catch_up_target: Some(welcome.head),
        }));
        self.inbound.clear();
        if welcome.cursor < self.sync.cursor {
            // The relay no longer knows our cursor (it lost data): start over.
            self.sync.cursor = welcome.cursor;
            self.sync_dirty = true;
        }
        self.set_relay_head(welcome.head);
        let skew = i128::from(welcome.relay_time_ms) - i128::from(now);
        let drift = i128::from(self.replica.max_drift_ms());
        if skew.abs() > drift {
            let ahead_ms =
                i64::try_from(skew).unwrap_or(if skew > 0 { i64::MAX } else { i64::MIN });
            self.outputs
                .push(Output::Event(Event::ClockSkew { ahead_ms }));
        }
        self.outputs.push(Output::Event(Event::Connected {
            read_only: welcome.read_only,
        }));
        self.check_caught_up();
        self.flush_pushes(now);
    }

    fn on_ack(&mut self, now: u64, through_seq: u64, refused: Vec<(u64, ErrorCode)>) {
        self.note_refused(refused, "refused by the relay");
        self.replica.acknowledge(through_seq);
        if let Link::Live(live) = &mut self.link {
            while live
                .in_flight
                .front()
                .is_some_and(|&last| last <= through_seq)
            {
                live.in_flight.pop_front();
            }
        }
        self.flush_persist();
        self.flush_pushes(now);
    }

    fn on_deliver(&mut self, now: u64, from: u64, cursor: u64, ops: Vec<Op>) {
        let Link::Live(live) = &mut self.link else {
            return;
        };
        if from != live.received {
            if cursor <= live.received {
                return; // A duplicate of a batch already taken.
            }
            let reason = format!(
                "delivery continues from {from}, but this replica is at {}",
                live.received
            );
            return self.fail(now, CloseCode::ProtocolError, ErrorCode::Malformed, reason);
        }
        if cursor < from {
            return self.fail(
                now,
                CloseCode::ProtocolError,
                ErrorCode::Malformed,
                "delivery cursor goes back".into(),
            );
        }
        live.received = cursor;
        self.set_relay_head(cursor);
        // Confirmed once applied (by `drain_inbound`), not on arrival: the
        // relay's send window then bounds the inbound queue.
        self.inbound.push(Inbound::Ops { ops, cursor });
        self.drain_inbound(now);
    }

    fn on_chunk(&mut self, now: u64, cursor: u64, total_len: u64, offset: u64, bytes: Vec<u8>) {
        let max = self.config.max_snapshot_bytes;
        let Link::Live(live) = &mut self.link else {
            return;
        };
        if total_len > max {
            let reason =
                format!("snapshot of {total_len} bytes exceeds this client's limit of {max}");
            return self.fail(now, CloseCode::ProtocolError, ErrorCode::Malformed, reason);
        }
        if offset == 0 {
            live.assembling = Some(Assembly {
                cursor,
                total_len,
                bytes: Vec::new(),
            });
        }
        let Some(assembly) = live.assembling.as_mut() else {
            return self.fail(
                now,
                CloseCode::ProtocolError,
                ErrorCode::Malformed,
                "snapshot chunk out of order".into(),
            );
        };
        let fits = assembly.cursor == cursor
            && assembly.total_len == total_len
            && offset == assembly.bytes.len() as u64
            && offset.saturating_add(bytes.len() as u64) <= total_len;
        if !fits {
            return self.fail(
                now,
                CloseCode::ProtocolError,
                ErrorCode::Malformed,
                "snapshot chunk out of order".into(),
            );
        }
        assembly.bytes.extend_from_slice(&bytes);
        if (assembly.bytes.len() as u64) < total_len {
            // Chunks before the last are confirmed on arrival: the blob is
            // bounded by the snapshot limit, and holding them back would
            // stall a blob longer than the window.
            return self.confirm(now, 1);
        }
        let Some(done) = live.assembling.take() else {
            return;
        };
        let format = Snapshot::format_of(&done.bytes);
        if !format.is_some_and(|f| self.config.snapshot_formats.contains(&f)) {
            let reason = format!(
                "relay sent a snapshot in format {format:?}; this client reads {:?}",
                self.config.snapshot_formats
            );
            return self.fail(now, CloseCode::ProtocolError, ErrorCode::Malformed, reason);
        }
        // The limit bounds the body too, should the snapshot be compressed.
        let max_body = usize::try_from(max).unwrap_or(usize::MAX);
        // Decoded a slice at a time (the host yields in between), in
        // its place in the queue: what arrives meanwhile waits behind it.
        // The last chunk is confirmed once the snapshot is applied.
        match SnapshotDecoder::new(done.bytes, 0, max_body) {
            Ok(decoder) => {
                live.received = done.cursor;
                self.set_relay_head(done.cursor);
                self.inbound.push(Inbound::Decoding {
                    decoder: Box::new(decoder),
                    cursor: done.cursor,
                });
                self.drain_inbound(now);
            }
            Err(e) => self.fail_bad_snapshot(now, &e),
        }
    }

    /// Closes the link over a snapshot that does not decode: nothing of it
    /// was applied, and the relay sends it again on reconnecting.
    fn fail_bad_snapshot(&mut self, now: u64, error: &dyn std::fmt::Display) {
        let reason = format!("relay sent a bad snapshot: {error}");
        self.fail(now, CloseCode::ProtocolError, ErrorCode::Malformed, reason);
    }

    /// Applies what the clock allows from the inbound queue, stores the
    /// cursor, and confirms the frames applied (the `Applied` waits for
    /// that store, so its cursor is durable); within
    /// [`Input::ReceivedMany`], the batch's end does both.
    fn drain_inbound(&mut self, now: u64) {
        let drained = self.inbound.drain(
            now,
            &mut self.replica,
            &mut self.outputs,
            self.config.apply_slice_docs,
        );
        if let Some(cursor) = drained.through {
            if cursor > self.sync.cursor {
                self.sync.cursor = cursor;
                self.sync_dirty = true;
            }
        }
        if let Some(batched) = &mut self.batched_frames {
            // Stored and confirmed once the batch's last frame is handled.
            *batched += drained.frames;
            if drained.bad_snapshot.is_none() {
                return;
            }
        }
        self.flush_persist();
        if let Some(e) = drained.bad_snapshot {
            return self.fail_bad_snapshot(now, &e);
        }
        if drained.frames > 0 && matches!(self.link, Link::Live(_)) {
            self.confirm(now, drained.frames);
        }
        self.check_caught_up();
    }

    /// Announces, once per connection, that the relay's head at join time is applied.
    fn check_caught_up(&mut self) {
        let cursor = self.sync.cursor;
        if let Link::Live(live) = &mut self.link {
            if live.catch_up_target.is_some_and(|target| cursor >= target)
                && self.inbound.is_empty()
            {
                live.catch_up_target = None;
                self.outputs.push(Output::Event(Event::CaughtUp { cursor }));
            }
        }
    }

    /// Reports operations the relay refused for good, among those still in
    /// the outbox, and schedules the resync that takes their effect back out.
    fn note_refused(&mut self, refused: Vec<(u64, ErrorCode)>, message: &str) {
        let mut by_code: Vec<(ErrorCode, Vec<u64>)> = Vec::new();
        for (seq, code) in refused {
            if seq >= self.replica.next_seq() || !self.reported_refusals.insert(seq) {
                continue; // Not ours, or already reported.
            }
            match by_code.iter_mut().find(|(c, _)| *c == code) {
                Some((_, seqs)) => seqs.push(seq),
                None => by_code.push((code, vec![seq])),
            }
        }
        for (code, seqs) in by_code {
            self.sync.resync = true;
            self.sync_dirty = true;
            self.refusal_events.push(Event::OpsRejected {
                seqs,
                code,
                message: message.to_owned(),
            });
        }
    }

    /// Tells the relay how many frames are consumed and what is stored.
    fn confirm(&mut self, now: u64, frames: u32) {
        if self.batched_frames.is_some() {
            // The cursor it reports may be one a batch has applied but not
            // yet handed out for storing: that persist goes first.
            self.flush_persist();
        }
        let cursor = self.sync.cursor;
        self.send(now, &Message::Applied { cursor, frames });
    }

    fn on_rejected(
        &mut self,
        now: u64,
        seq: u64,
        code: ErrorCode,
        retry_after_ms: u64,
        message: String,
    ) {
        let Link::Live(live) = &mut self.link else {
            return;
        };
        match code {
            ErrorCode::ClockAhead => {
                // This and everything after it must be pushed again later.
                live.pushed_through = live.pushed_through.min(seq.saturating_sub(1));
                live.in_flight.retain(|&last| last < seq);
                live.push_paused_until = Some(now.saturating_add(retry_after_ms.max(1)));
                let ahead_ms = i64::try_from(retry_after_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_neg();
                self.outputs
                    .push(Output::Event(Event::ClockSkew { ahead_ms }));
            }
            ErrorCode::ReadOnly => {
                live.pushed_through = live.pushed_through.min(seq.saturating_sub(1));
                live.in_flight.clear();
                live.read_only = true;
            }
            ErrorCode::Unknown(_) => {
                // A newer relay's "not now": push this and the rest again
                // later, at least a second from now.
                live.pushed_through = live.pushed_through.min(seq.saturating_sub(1));
                live.in_flight.retain(|&last| last < seq);
                let wait = retry_after_ms.max(UNKNOWN_REJECTION_PAUSE_MS);
                live.push_paused_until = Some(now.saturating_add(wait));
            }

            _ => {
                let reason = format!("relay rejected the push: {code:?}: {message}");
                return self.fail(now, CloseCode::ProtocolError, ErrorCode::Malformed, reason);
            }
        }
        self.flush_pushes(now);
    }

    fn on_timeout(&mut self, now: u64) {
        match &mut self.link {
            Link::Offline => {}
            Link::Waiting { .. } => self.connect_when_due(now),
            Link::Connecting { since } | Link::Handshaking { since } => {
                if now.saturating_sub(*since) >= self.config.handshake_timeout_ms {
                    self.lose_link(
                        now,
                        CloseCode::HandshakeTimeout,
                        "no welcome from the relay in time".into(),
                        true,
                    );
                }
            }
            Link::Live(live) => {
                if now.saturating_sub(live.last_heard) >= self.config.dead_after_ms {
                    return self.lose_link(
                        now,
                        CloseCode::IdleTimeout,
                        "relay silent: link presumed dead".into(),
                        true,
                    );
                }
                if live.push_paused_until.is_some_and(|t| now >= t) {
                    live.push_paused_until = None;
                }
                if now.saturating_sub(live.last_sent) >= live.heartbeat_ms {
                    let nonce = self.rng.next_u64();
                    self.send(now, &Message::Ping { nonce });
                }
            }
        }
        if !self.inbound.is_empty() {
            // Operations that waited for the clock: their frames are
            // confirmed as they apply.
            self.drain_inbound(now);
        }
        self.flush_pushes(now);
    }

    // ---- outputs ----

    /// The next thing the host must do, or `None` when there is nothing.
    ///
    /// When nothing else is pending, reports the next timeout once each time
    /// it changes.
    pub fn poll(&mut self) -> Option<Output> {
        self.settle_local_writes();
        if let Some(out) = self.outputs.pop() {
            return Some(out);
        }
        if let Some(event) = self.replica.poll_event() {
            return Some(Output::Event(event));
        }
        let next = self.next_timeout_ms();
        self.reported_timeout
            .report(next)
            .map(|at| Output::Timeout(Timestamp::from_unix_ms(at)))
    }

    /// When the session next needs `Input::Timeout`, if ever.
    pub fn next_timeout(&self) -> Option<Timestamp> {
        self.next_timeout_ms().map(Timestamp::from_unix_ms)
    }

    fn next_timeout_ms(&self) -> Option<u64> {
        let link = match &self.link {
            Link::Offline => None,
            Link::Waiting { .. } if self.applying_offline() => None,
            Link::Waiting { retry_at } => Some(*retry_at),
            Link::Connecting { since } | Link::Handshaking { since } => {
                Some(since.saturating_add(self.config.handshake_timeout_ms))
            }
            Link::Live(live) => {
                let dead = live.last_heard.saturating_add(self.config.dead_after_ms);
                let ping = live.last_sent.saturating_add(live.heartbeat_ms);
                let resume = live
                    .push_paused_until
                    .filter(|_| self.replica.outbox().len() > 0);
                Some(dead.min(ping).min(resume.unwrap_or(u64::MAX)))
            }
        };
        match (link, self.inbound.retry_at(self.replica.max_drift_ms())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn send(&mut self, now: u64, message: &Message) {
        let mut version = protocol::PROTOCOL_VERSION;
        if let Link::Live(live) = &mut self.link {
            live.last_sent = now;
            version = live.version;
        }
        self.outputs
            .push(Output::Transmit(protocol::encode_in(version, message)));
    }

    fn set_relay_head(&mut self, head: u64) {
        if head > self.sync.relay_head {
            self.sync.relay_head = head;
            self.sync_dirty = true;
        }
    }

    /// Queues the replica's changes and the sync state as one atomic batch.
    fn flush_persist(&mut self) {
        let cursor = self.sync.cursor;
        let catching_up = matches!(&self.link, Link::Live(live)
            if live.catch_up_target.is_some_and(|target| cursor < target));
        let mut batch = self
            .replica
            .take_persist_catching_up(catching_up)
            .unwrap_or_default();
        if buggify::on(Switch::CursorBeforeState) && self.sync_dirty && !batch.is_empty() {
            self.sync_dirty = false;
            let mut cursor = PersistBatch::default();
            cursor.push(Write::Put {
                key: StoreKey::Extension(SESSION_RECORD.into()),
                value: self.sync.encode(),
            });
            self.outputs
                .push_persist(|id| Output::Persist { id, batch: cursor });
        }
        if self.sync_dirty {
            self.sync_dirty = false;
            batch.push(Write::Put {
                key: StoreKey::Extension(SESSION_RECORD.into()),
                value: self.sync.encode(),
            });
        }
        if !batch.is_empty() {
            self.outputs
                .push_persist(|id| Output::Persist { id, batch });
        }
        // Behind the batch that records the refusal (`note_refused` marks
        // the sync state dirty, so there is one).
        for event in self.refusal_events.drain(..) {
            self.outputs.push(Output::Event(event));
        }
    }

    /// Pushes outbox operations not yet sent on this connection, in batches,
    /// while the window allows.
    fn flush_pushes(&mut self, now: u64) {
        let Link::Live(live) = &mut self.link else {
            return;
        };
        if live.read_only || live.push_paused_until.is_some() {
            return;
        }
        let mut frames = Vec::new();
        let window = self.config.push_window.clamp(1, protocol::MAX_PUSH_WINDOW);
        while live.in_flight.len() < window {
            let mut batch = Vec::new();
            let mut bytes = 0;
            for op in self.replica.outbox().after(live.pushed_through) {
                let size = op.encoded_len_bound();
                if !batch.is_empty()
                    && (batch.len() >= live.max_batch_ops || bytes + size > live.max_batch_bytes)
                {
                    break;
                }
                bytes += size;
                batch.push(op);
            }
            let Some(last) = batch.last().map(|op| op.id.seq) else {
                break;
            };
            live.pushed_through = last;
            live.in_flight.push_back(last);
            frames.push(protocol::encode_in(
                live.version,
                &Message::Push { ops: batch },
            ));
        }
        if !frames.is_empty() {
            live.last_sent = now;
            live.reported_all_pushed = false;
        } else if live.in_flight.is_empty() && self.sync.resync {
            return self.resync(now);
        } else if live.in_flight.is_empty()
            && self.replica.outbox().len() == 0
            && !live.reported_all_pushed
        {
            live.reported_all_pushed = true;
            self.outputs.push(Output::Event(Event::AllPushed));
        }
        for frame in frames {
            self.outputs.push(Output::Transmit(frame));
        }
    }

    /// Forgets everything received from the relay and downloads the room
    /// again: the only way to take a refused operation's effect back out of
    /// the local state. Local operations still pending are kept and re-applied.
    fn resync(&mut self, now: u64) {
        // Nothing received before the resync may move the cursor after it.
        self.inbound.clear();
        let empty = Snapshot::empty();
        // The empty snapshot's clock reading is zero, which the clock always accepts.
        let _ = self
            .replica
            .reset_to_snapshot(Timestamp::from_unix_ms(now), empty);
        self.sync.cursor = 0;
        self.sync.resync = false;
        self.reported_refusals.clear();
        self.sync_dirty = true;
        self.flush_persist();
        self.lose_link(
            now,
            CloseCode::Normal,
            "resyncing after a refused operation".into(),
            true,
        );
    }

    /// Ends the connection because the relay broke the protocol.
    fn fail(&mut self, now: u64, close: CloseCode, code: ErrorCode, reason: String) {
        self.outputs.push(Output::Event(Event::PeerMisbehaved {
            reason: reason.clone(),
        }));
        let version = match &self.link {
            Link::Live(live) => live.version,
            _ => protocol::PROTOCOL_VERSION,
        };
        self.outputs.push(Output::Transmit(protocol::encode_in(
            version,
            &Message::Error {
                code,
                message: reason.clone(),
            },
        )));
        self.lose_link(now, close, reason, true);
    }

    /// The connection is gone: close it if we are the ones ending it, and
    /// schedule the next attempt unless retrying cannot help.
    fn lose_link(&mut self, now: u64, code: CloseCode, reason: String, we_close: bool) {
        if matches!(self.link, Link::Offline | Link::Waiting { .. }) {
            return;
        }
        if we_close {
            self.outputs.push(Output::Close {
                code,
                reason: reason.clone(),
            });
        }
        self.inbound.keep_snapshot_only();
        // Only a connection that stayed up a while proves the relay healthy;
        // one that fails right after its welcome keeps backing off.
        if let Link::Live(live) = &self.link {
            if now.saturating_sub(live.joined_at) >= self.config.backoff.max_ms {
                self.attempt = 0;
            }
        }
        let retry_at = code.should_reconnect().then(|| {
            let delay = self.config.backoff.delay(self.attempt, &mut self.rng);
            self.attempt = self.attempt.saturating_add(1);
            now.saturating_add(delay)
        });
        self.link = match retry_at {
            Some(retry_at) => Link::Waiting { retry_at },
            None => Link::Offline,
        };
        self.outputs.push(Output::Event(Event::Disconnected {
            code,
            reason,
            retry_at,
        }));
    }
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "Hello",
        Message::Welcome(_) => "Welcome",
        Message::Push { .. } => "Push",
        Message::Ack { .. } => "Ack",
        Message::Deliver { .. } => "Deliver",
        Message::SnapshotChunk { .. } => "SnapshotChunk",
        Message::Applied { .. } => "Applied",
        Message::Rejected { .. } => "Rejected",
        Message::Ping { .. } => "Ping",
        Message::Pong { .. } => "Pong",
        Message::Error { .. } => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::SyncState;

    #[test]
    fn sync_state_encodes_and_decodes() {
        let state = SyncState {
            room: "team/42".into(),
            cursor: 1_234_567,
            relay_head: 2_000_000,
            resync: true,
        };
        assert_eq!(SyncState::decode(&state.encode()), Ok(state.clone()));
        assert_eq!(
            SyncState::decode(&SyncState::default().encode()),
            Ok(SyncState::default())
        );
        let bytes = state.encode();
        assert!(SyncState::decode(&[]).is_err());
        assert!(SyncState::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(SyncState::decode(&[bytes.as_slice(), &[0]].concat()).is_err());
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 99;
        assert!(SyncState::decode(&wrong_version).is_err());
    }
}

#[cfg(test)]
mod loader_tests {
    #[test]
    fn the_session_key_is_the_session_records_key() {
        let key = super::StoreKey::Extension(super::SESSION_RECORD.into()).to_bytes();
        assert_eq!(key, super::SESSION_KEY);
    }
}
