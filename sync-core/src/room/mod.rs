//! The relay side of the sync protocol: one room's log, its connections, and
//! the decisions the relay makes for them, as a no-IO state machine.
//!
//! The relay binary verifies tokens, owns sockets and storage, and drives
//! one [`Room`] per room:
//!
//! ```text
//! room.handle(now, RoomInput::Frame { connection, frame: &bytes });
//! while let Some(out) = room.poll() {
//!     match out {
//!         RoomOutput::Persist { id, batch }     => append/replace atomically, durably,
//!                                                  then RoomInput::Persisted(id)
//!         RoomOutput::Transmit { connection, frame } => send it
//!         RoomOutput::Close { connection, code, .. } => close that socket
//!         RoomOutput::Compact(job)             => run job.run() off-thread, feed RoomInput::Compacted
//!         RoomOutput::Timeout(at)              => call handle(at, RoomInput::Timeout) then
//!     }
//! }
//! ```
//!
//! The room enforces the ordering rule itself: a `Persist` is handed out at
//! once, but every frame queued after it is held back until the host
//! reports it durable with [`RoomInput::Persisted`]. Acknowledgements and
//! deliveries then only ever describe stored operations, however late the
//! host's writes complete. The host applies batches in the order it got
//! them, and may merge consecutive ones into one transaction. A failed
//! write ([`RoomInput::PersistFailed`]) leaves memory ahead of storage: the
//! room closes every connection and refuses new ones, and the host reloads it
//! from storage ([`Room::restore`]).
//!
//! Deliveries are built lazily, when the host polls and nothing else is
//! queued, not in `handle`. A host that feeds several inputs before polling
//! (the relay drains its whole inbox first) therefore sends each connection one
//! `Deliver` for everything those inputs appended, within the connection's send
//! window and the batch limits, instead of one frame per push: under fan-out
//! that divides the frames (and socket writes) by the pushes per drain.

mod compaction;
mod log;

pub use compaction::{Compacted, CompactionError, CompactionJob};

use crate::buggify::{self, Switch};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::deadline::ReportedDeadline;
use crate::gate::{Gate, PersistId};
use crate::hlc::{DEFAULT_MAX_DRIFT_MS, Hlc};
use crate::op::Op;
use crate::protocol::{self, CloseCode, ErrorCode, Hello, Message, Welcome};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::stamp::ReplicaId;
use crate::timestamp::Timestamp;
use crate::version::{SeqSet, VersionVector};
use log::{Entry, Log};

/// How long the room waits after a failed compaction before handing out another job.
const COMPACTION_RETRY_MS: u64 = 60_000;

/// Identifies one client connection to the room; the host picks it (the
/// relay numbers its WebSocket connections). Not to be confused with the
/// client-side [`crate::session::Session`].
pub type ConnectionId = u64;

/// When to fold the log into the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionPolicy {
    /// Never compact fewer entries than this at once.
    pub min_ops: u64,
    /// Keep at least this many recent entries, so briefly offline clients
    /// resume from the log rather than a snapshot.
    pub keep_recent_ops: u64,
    /// Compact entries beyond this many even if a connected client still needs them.
    pub max_log_ops: u64,
    /// Tombstones (deletes, drops) older than this are collected, and
    /// operations stamped older than that are refused as stale.
    pub tombstone_grace_ms: u64,
    /// Once a snapshot exists, wait until the entries to fold hold at least
    /// this percentage of the snapshot's state in bytes (its body before
    /// compression, [`Snapshot::body_len`]). Every compaction re-encodes the
    /// whole state; without this bound a room taking thousands of small
    /// operations a second compacted every `min_ops` operations and rewrote
    /// its snapshot many times over per second. At 100 the state encoded
    /// is at most the log bytes folded. 0 turns it off; `max_log_ops`
    /// overrides it.
    pub min_fold_percent: u64,
}

crate::setters::with_setters!(CompactionPolicy {
    with_min_ops => min_ops: u64,
    with_keep_recent_ops => keep_recent_ops: u64,
    with_max_log_ops => max_log_ops: u64,
    with_tombstone_grace_ms => tombstone_grace_ms: u64,
    with_min_fold_percent => min_fold_percent: u64,
});

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            min_ops: 1_000,
            keep_recent_ops: 10_000,
            max_log_ops: 1_000_000,
            tombstone_grace_ms: 30 * 24 * 3600 * 1000,
            min_fold_percent: 100,
        }
    }
}

/// Settings of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoomConfig {
    /// Operations stamped further ahead of the relay's clock are refused for now.
    pub max_drift_ms: u64,
    /// Most operations per `Push` and per `Deliver`.
    pub max_batch_ops: usize,
    /// Most bytes of operations per `Push` and per `Deliver`.
    pub max_batch_bytes: usize,
    /// Frames sent to a connection before it must confirm with `Applied`.
    pub send_window: usize,
    /// Bytes per snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Heartbeat interval announced to clients.
    pub heartbeat_ms: u64,
    /// Close connections silent for this long.
    pub idle_timeout_ms: u64,
    /// Close connections that leave their window full for this long.
    pub slow_consumer_ms: u64,
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// When to compact.
    pub compaction: CompactionPolicy,
}

crate::setters::with_setters!(RoomConfig {
    with_max_drift_ms => max_drift_ms: u64,
    with_max_batch_ops => max_batch_ops: usize,
    with_max_batch_bytes => max_batch_bytes: usize,
    with_send_window => send_window: usize,
    with_snapshot_chunk_bytes => snapshot_chunk_bytes: usize,
    with_heartbeat_ms => heartbeat_ms: u64,
    with_idle_timeout_ms => idle_timeout_ms: u64,
    with_slow_consumer_ms => slow_consumer_ms: u64,
    with_max_frame_bytes => max_frame_bytes: usize,
    with_compaction => compaction: CompactionPolicy,
});

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            max_drift_ms: DEFAULT_MAX_DRIFT_MS,
            max_batch_ops: 1000,
            max_batch_bytes: 1024 * 1024,
            send_window: 8,
            snapshot_chunk_bytes: 256 * 1024,
            heartbeat_ms: 15_000,
            idle_timeout_ms: 60_000,
            slow_consumer_ms: 30_000,
            max_frame_bytes: protocol::DEFAULT_MAX_FRAME_BYTES,
            compaction: CompactionPolicy::default(),
        }
    }
}

/// Something that happened to the room.
#[derive(Debug)]
pub enum RoomInput<'a> {
    /// A connection whose `Hello` the host decoded and whose token it verified.
    Join {
        /// The connection.
        connection: ConnectionId,
        /// Its hello.
        hello: Hello,
        /// Whether the token grants only reading.
        read_only: bool,
    },
    /// A frame from a joined connection.
    Frame {
        /// The connection.
        connection: ConnectionId,
        /// The frame.
        frame: &'a [u8],
    },
    /// The connection closed.
    Leave {
        /// The connection.
        connection: ConnectionId,
    },
    /// A requested timeout passed.
    Timeout,
    /// A compaction job finished.
    Compacted(Compacted),
    /// A compaction job failed (or its host gave up on it). The log is
    /// untouched; the room will hand out a new job when the policy says so.
    CompactionFailed,
    /// The batch of [`RoomOutput::Persist`] with this id is durable.
    Persisted(PersistId),
    /// The batch of [`RoomOutput::Persist`] with this id could not be stored.
    PersistFailed(PersistId),
}

/// Something the host must do.
#[derive(Clone, Debug)]
pub enum RoomOutput {
    /// Send a frame to a connection.
    Transmit {
        /// The connection.
        connection: ConnectionId,
        /// The frame. Shared: under fan-out every version-3 connection at one
        /// cursor gets the same `Deliver`, so a host sends these bytes to all
        /// of them without a copy per connection.
        frame: Bytes,
    },
    /// Close a connection; the room has already forgotten it.
    Close {
        /// The connection.
        connection: ConnectionId,
        /// The close code.
        code: CloseCode,
        /// Why.
        reason: String,
    },
    /// Store this atomically and durably, after the batches handed out
    /// before it, then report [`RoomInput::Persisted`]. The room holds back
    /// the frames that depend on it.
    Persist {
        /// Identifies the batch in the report.
        id: PersistId,
        /// The changes.
        batch: RoomPersist,
    },
    /// Run this compaction and hand back the result.
    Compact(CompactionJob),
    /// Call `handle(RoomInput::Timeout)` at this time (replaces earlier ones).
    Timeout(Timestamp),
}

/// Changes to a room's stored log, applied atomically.
#[derive(Clone, Debug, Default)]
pub struct RoomPersist {
    /// New log entries: offset and encoded operation.
    pub append: Vec<(u64, Arc<[u8]>)>,
    /// A new snapshot covering offsets up to the given one.
    pub snapshot: Option<(u64, Arc<[u8]>)>,
    /// Log entries up to and including this offset may be deleted.
    pub truncate_through: Option<u64>,
}

/// The stored room could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomRestoreError {
    /// The snapshot failed its checks.
    #[error("room snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A log entry does not decode.
    #[error("room log entry {offset} is corrupt: {reason}")]
    Entry {
        /// Its offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log has a hole.
    #[error("room log jumps from offset {after} to {next}")]
    Gap {
        /// The last offset present.
        after: u64,
        /// The next offset present.
        next: u64,
    },
}

/// What the stats endpoint shows about one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStats {
    /// The connection.
    pub connection: ConnectionId,
    /// Its replica.
    pub replica: ReplicaId,
    /// Offset the client confirmed as stored.
    pub cursor: u64,
    /// Room operations it has not confirmed.
    pub lag_ops: u64,
    /// Age of the oldest operation it has not confirmed, in milliseconds.
    pub lag_ms: u64,
    /// Whether it may only read.
    pub read_only: bool,
}

/// What the stats endpoint shows about the room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomStats {
    /// Offset of the latest operation.
    pub head: u64,
    /// Entries in the log (after the snapshot).
    pub log_len: usize,
    /// Offsets up to this are only in the snapshot.
    pub compacted_through: u64,
    /// Snapshot size in bytes.
    pub snapshot_bytes: usize,
    /// Compactions installed since the room was loaded.
    pub compactions: u64,
    /// When the last one was installed (host ms).
    pub last_compaction_at: Option<u64>,
    /// Every connected connection.
    pub members: Vec<MemberStats>,
}

/// A snapshot being streamed to one connection.
#[derive(Clone, Debug)]
struct SnapshotSend {
    bytes: Arc<[u8]>,
    cursor: u64,
    offset: usize,
}

/// One joined connection.
#[derive(Clone, Debug)]
struct Member {
    replica: ReplicaId,
    read_only: bool,
    /// Cursor of the last frame sent.
    sent: u64,
    /// Cursor the client confirmed as stored.
    confirmed: u64,
    /// Frames sent but not yet confirmed.
    in_flight: usize,
    snapshot: Option<SnapshotSend>,
    /// Which of its own operations the client holds (all up to `Hello`'s
    /// `own_seq`, plus what it pushed and what was delivered back), so
    /// deliveries leave those out.
    own_held: SeqSet,
    /// Deliver the connection's own operations regardless. Set once it has been
    /// sent a snapshot: the client replaces its state with it, so operations
    /// it pushed that are newer than the snapshot must come back to it.
    include_own: bool,
    last_heard: u64,
    /// Since when the window has been full with more to send.
    stalled_since: Option<u64>,
    /// The snapshot format agreed in `Welcome`.
    snapshot_format: u8,
    /// The protocol version agreed in `Welcome`.
    version: u8,
}

impl Member {
    /// Starts or stops the slow-consumer clock: it runs while the window is
    /// full and the connection is `behind` (has more to receive).
    fn update_stalled(&mut self, behind: bool, window: usize, now: u64) {
        self.stalled_since = match (behind && self.in_flight >= window, self.stalled_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
    }
}

/// One room of the relay.
///
/// Cloning is cheap: log entries and the snapshot are shared, not copied.
#[derive(Clone, Debug)]
pub struct Room {
    config: RoomConfig,
    log: Log,
    snapshot: Option<Arc<[u8]>>,
    /// The snapshot re-encoded for connections that read another format
    /// than the stored one's, by format; emptied when the snapshot changes.
    snapshot_in_format: BTreeMap<u8, Arc<[u8]>>,
    accepted: VersionVector,
    /// Operations stamped at or before this are refused as stale.
    tombstone_horizon: Hlc,
    /// Per replica, sequence numbers refused for good or given up by the
    /// client. Kept in memory only: after a restart a client's `Hello`
    /// re-establishes what it gave up.
    refused: BTreeMap<ReplicaId, SeqSet>,
    members: BTreeMap<ConnectionId, Member>,
    compacting: bool,
    /// No new compaction job before this, after one failed.
    compaction_retry_at: Option<u64>,
    compactions: u64,
    last_compaction_at: Option<u64>,
    outputs: Gate<RoomOutput>,
    /// A persist failed: memory is ahead of storage, and the room serves
    /// nobody until the host reloads it.
    failed: bool,
    pending_persist: RoomPersist,
    reported_timeout: ReportedDeadline,
    /// `next_timeout_ms` as of the last `poll` that returned `None`, until
    /// the next `handle` or `poll`: the host asks right after polling, and
    /// the answer scans every connection.
    polled_timeout: Option<Option<u64>>,
    /// Host time of the latest input whose deliveries are not built yet:
    /// `poll` builds them once the outputs queued ahead are taken.
    pump_due: Option<u64>,
    /// The latest version-3 `Deliver` frames built, by `(from, cursor)`.
    /// A version-3 frame carries every operation of its range, so every
    /// connection at the same cursor gets the same bytes: under fan-out the
    /// batch is encoded once, not once per receiver.
    compact_frames: VecDeque<(u64, u64, Bytes)>,
    /// Operations sent that their receivers did not hold, since the host
    /// last took the count.
    ops_delivered: u64,
}

/// How many version-3 `Deliver` frames the room keeps for reuse while it
/// builds one round of deliveries: enough for the few distinct cursors a
/// live room's connections sit at.
const COMPACT_FRAMES_KEPT: usize = 8;

/// The most decoding `op` from a version-3 batch can cost a receiver
/// against its frame limit (PROTOCOL.md 7.1, "Bounds"): the per-operation
/// charge and the names it carries, plus a table entry for each name as if
/// none were shared with another operation of the batch.
pub(crate) fn compact_decode_cost(op: &Op) -> usize {
    use crate::op::Change;
    let name = |n: &str| n.len() * 2 + protocol::compact::TABLE_ENTRY_COST;
    protocol::compact::DECODED_OP_COST
        + match &op.change {
            Change::Put {
                collection,
                id,
                fields,
            } => name(collection) + name(id) + fields.iter().map(|(f, _)| name(f)).sum::<usize>(),
            Change::Delete { collection, id } => name(collection) + name(id),
            Change::CreateCollection { collection } | Change::DropCollection { collection } => {
                name(collection)
            }
        }
}

impl Room {
    /// An empty room.
    pub fn new(config: RoomConfig) -> Room {
        Room {
            config,
            log: Log::default(),
            snapshot: None,
            snapshot_in_format: BTreeMap::new(),
            accepted: VersionVector::new(),
            tombstone_horizon: Hlc::ZERO,
            refused: BTreeMap::new(),
            members: BTreeMap::new(),
            compacting: false,
            compaction_retry_at: None,
            compactions: 0,
            last_compaction_at: None,
            outputs: Gate::default(),
            failed: false,
            pending_persist: RoomPersist::default(),
            reported_timeout: ReportedDeadline::default(),
            polled_timeout: None,
            pump_due: None,
            compact_frames: VecDeque::new(),
            ops_delivered: 0,
        }
    }

    /// Loads a room from its stored snapshot and log entries (any order).
    pub fn restore(
        config: RoomConfig,
        snapshot: Option<(u64, Vec<u8>)>,
        mut entries: Vec<(u64, Vec<u8>)>,
    ) -> Result<Room, RoomRestoreError> {
        let mut room = Room::new(config);
        let mut through = 0;
        if let Some((snapshot_through, bytes)) = snapshot {
            let decoded = Snapshot::decode(&bytes)?;
            room.accepted = decoded.version;
            room.tombstone_horizon = decoded.tombstone_horizon;
            room.snapshot = Some(bytes.into());
            through = snapshot_through;
        }
        room.log = Log::after(through);
        entries.sort_by_key(|(offset, _)| *offset);
        for (offset, bytes) in entries {
            if offset <= through {
                continue;
            }
            let expected = room.log.head() + 1;
            if offset != expected {
                return Err(RoomRestoreError::Gap {
                    after: expected - 1,
                    next: offset,
                });
            }
            let op = protocol::decode_op(&bytes).map_err(|e| RoomRestoreError::Entry {
                offset,
                reason: e.to_string(),
            })?;
            room.accepted.insert(op.id);
            room.log.push(Entry {
                replica: op.id.replica,
                seq: op.id.seq,
                hlc: op.hlc,
                compact_cost: compact_decode_cost(&op),
                encoded: bytes.into(),
            });
        }
        Ok(room)
    }

    /// Offset of the latest operation (0: none yet).
    pub fn head(&self) -> u64 {
        self.log.head()
    }

    /// Which operations the room holds.
    pub fn accepted(&self) -> &VersionVector {
        &self.accepted
    }

    /// Number of joined connections.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// A summary for the stats endpoint.
    pub fn stats(&self, now: Timestamp) -> RoomStats {
        let members = self
            .members
            .iter()
            .map(|(&connection, m)| {
                let oldest = self.log.get(m.confirmed + 1).map(|e| e.hlc.wall_ms());
                MemberStats {
                    connection,
                    replica: m.replica,
                    cursor: m.confirmed,
                    lag_ops: self.head().saturating_sub(m.confirmed),
                    lag_ms: oldest.map_or(0, |wall| now.unix_ms().saturating_sub(wall)),
                    read_only: m.read_only,
                }
            })
            .collect();
        RoomStats {
            head: self.head(),
            log_len: self.log.len(),
            compacted_through: self.log.compacted_through(),
            snapshot_bytes: self.snapshot.as_ref().map_or(0, |s| s.len()),
            compactions: self.compactions,
            last_compaction_at: self.last_compaction_at,
            members,
        }
    }

    /// Feeds one input at host time `now`.
    pub fn handle(&mut self, now: Timestamp, input: RoomInput<'_>) {
        self.polled_timeout = None;
        // Timing arithmetic inside the state machine is in plain milliseconds.
        let now = now.unix_ms();
        if self.failed {
            if let RoomInput::Join { connection, .. } = input {
                self.close(
                    connection,
                    ErrorCode::Internal,
                    "the relay could not store this room's data; reconnect later".into(),
                );
            }
            return;
        }
        match input {
            RoomInput::Persisted(id) => {
                // Nothing else changes: polling releases what waited for it.
                self.outputs.persisted(id);
                return;
            }
            RoomInput::PersistFailed(id) => {
                if self.outputs.is_pending(id) {
                    self.on_persist_failed();
                }
                return;
            }
            RoomInput::Join {
                connection,
                hello,
                read_only,
            } => self.join(now, connection, hello, read_only),
            RoomInput::Frame { connection, frame } => self.on_frame(now, connection, frame),
            RoomInput::Leave { connection } => {
                self.members.remove(&connection);
            }
            RoomInput::Timeout => self.on_timeout(now),
            RoomInput::Compacted(done) => self.install(now, done),
            RoomInput::CompactionFailed => {
                self.compacting = false;
                // A job that failed once likely fails again (a corrupt entry):
                // do not hand out another at once.
                self.compaction_retry_at = Some(now.saturating_add(COMPACTION_RETRY_MS));
            }
        }
        self.flush_persist();
        // Deliveries wait for `poll`, so inputs handled back to back share
        // one frame per connection (see the module doc). Every persist of this
        // input is queued above, so those frames follow it.
        self.pump_due = Some(now);
        self.maybe_compact(now);
    }

    /// The next thing the host must do.
    ///
    /// Deliveries for the inputs handled since the last `poll` are built
    /// when the outputs queued before them are taken, one frame per connection
    /// for all of them.
    pub fn poll(&mut self) -> Option<RoomOutput> {
        self.polled_timeout = None;
        if let Some(out) = self.outputs.pop() {
            return Some(out);
        }
        if let Some(now) = self.pump_due.take() {
            self.pump_all(now);
            if let Some(out) = self.outputs.pop() {
                return Some(out);
            }
        }
        let next = self.next_timeout_ms();
        self.polled_timeout = Some(next);
        self.reported_timeout
            .report(next)
            .map(|at| RoomOutput::Timeout(Timestamp::from_unix_ms(at)))
    }

    /// When the room next needs `RoomInput::Timeout`. Up to date once
    /// `poll` has returned `None` (deliveries built in `poll` can start a
    /// slow-consumer clock).
    pub fn next_timeout(&self) -> Option<Timestamp> {
        self.polled_timeout
            .unwrap_or_else(|| self.next_timeout_ms())
            .map(Timestamp::from_unix_ms)
    }

    fn next_timeout_ms(&self) -> Option<u64> {
        self.members
            .values()
            .flat_map(|m| {
                let idle = m.last_heard.saturating_add(self.config.idle_timeout_ms);
                let slow = m
                    .stalled_since
                    .map(|t| t.saturating_add(self.config.slow_consumer_ms));
                std::iter::once(idle).chain(slow)
            })
            .min()
    }

    fn join(&mut self, now: u64, connection: ConnectionId, hello: Hello, read_only: bool) {
        if !protocol::valid_room_name(&hello.room) {
            let reason = format!(
                "room names are 1 to {} bytes without control characters",
                crate::limits::MAX_ROOM_NAME_LEN
            );
            return self.close(connection, ErrorCode::InvalidRoom, reason);
        }
        let agreed = match protocol::negotiate(&hello) {
            Ok(agreed) => agreed,
            Err(e) => {
                // Not a member: the error and the close go out all the same.
                return self.close(connection, e.error_code(), e.to_string());
            }
        };
        let superseded: Vec<ConnectionId> = self
            .members
            .iter()
            .filter(|(_, m)| m.replica == hello.replica)
            .map(|(&id, _)| id)
            .collect();
        for old in superseded {
            self.close(
                old,
                ErrorCode::Superseded,
                "a newer connection of this replica joined".into(),
            );
        }
        // A cursor from the future (the relay lost data it once had) restarts the client from scratch.
        let cursor = if hello.cursor > self.head() {
            0
        } else {
            hello.cursor
        };
        // Everything below the client's outbox is stored or given up.
        self.refused
            .entry(hello.replica)
            .or_default()
            .insert_through(hello.settled_seq);
        let refused = self.refused_above(hello.replica, hello.settled_seq);
        let welcome = Welcome {
            head: self.head(),
            refused,
            accepted_seq: self.settled_seqs(hello.replica).contiguous(),
            relay_time_ms: now,
            read_only,
            heartbeat_ms: u32::try_from(self.config.heartbeat_ms).unwrap_or(u32::MAX),
            max_batch_ops: u32::try_from(self.config.max_batch_ops).unwrap_or(u32::MAX),
            max_batch_bytes: u32::try_from(self.config.max_batch_bytes).unwrap_or(u32::MAX),
            cursor,
            version: agreed.version,
            snapshot_format: agreed.snapshot_format,
        };
        self.outputs.push(RoomOutput::Transmit {
            connection,
            frame: protocol::encode_in(agreed.version, &Message::Welcome(welcome)).into(),
        });
        self.members.insert(
            connection,
            Member {
                replica: hello.replica,
                read_only,
                sent: cursor,
                confirmed: cursor,
                in_flight: 0,
                snapshot: None,
                own_held: SeqSet::through(hello.own_seq),
                include_own: false,
                last_heard: now,
                stalled_since: None,
                snapshot_format: agreed.snapshot_format,
                version: agreed.version,
            },
        );
    }

    fn on_frame(&mut self, now: u64, connection: ConnectionId, frame: &[u8]) {
        let Some(member) = self.members.get_mut(&connection) else {
            return;
        };
        member.last_heard = now;
        if let Some(&found) = frame
            .first()
            .filter(|&&v| v != member.version && protocol::SUPPORTED_VERSIONS.contains(&v))
        {
            // The version was agreed in `Welcome`: a frame in another one is
            // a broken (or duplicated, like a second `Hello`) frame, not a
            // client that cannot speak it, so the client may reconnect.
            let agreed = member.version;
            let reason =
                format!("frame of protocol version {found} on a version {agreed} connection");
            return self.close(connection, ErrorCode::Malformed, reason);
        }
        let message = match protocol::decode(frame, self.config.max_frame_bytes) {
            Ok(message) => message,
            Err(e) => return self.close(connection, e.error_code(), e.to_string()),
        };
        match message {
            Message::Push { ops } => self.on_push(now, connection, ops),
            Message::Applied { cursor, frames } => {
                if let Some(m) = self.members.get_mut(&connection) {
                    m.in_flight = m.in_flight.saturating_sub(frames as usize);
                    // Progress: the slow-consumer clock starts again.
                    if frames > 0 {
                        m.stalled_since = None;
                    }
                    m.confirmed = m.confirmed.max(cursor.min(m.sent));
                }
            }
            Message::Ping { nonce } => self.transmit(connection, &Message::Pong { nonce }),
            Message::Pong { .. } => {}
            Message::Error { code, message } => {
                self.members.remove(&connection);
                self.outputs.push(RoomOutput::Close {
                    connection,
                    code: CloseCode::Normal,
                    reason: format!("client reported {code:?}: {message}"),
                });
            }
            other => {
                let reason = format!("a client may not send {other:?} after joining");
                self.close(connection, ErrorCode::Malformed, reason);
            }
        }
    }

    fn on_push(&mut self, now: u64, connection: ConnectionId, ops: Vec<Op>) {
        let Some(member) = self.members.get(&connection) else {
            return;
        };
        let (replica, read_only) = (member.replica, member.read_only);
        let Some(first) = ops.first().map(|op| op.id.seq) else {
            return;
        };
        if read_only {
            let reason = "this connection's token grants read only".to_owned();
            return self.reject(connection, first, ErrorCode::ReadOnly, 0, reason);
        }
        let bytes: usize = ops.iter().map(Op::encoded_len_bound).sum();
        // One operation is always allowed (validation bounds its size), so a
        // large write can never wedge a client's outbox.
        if ops.len() > self.config.max_batch_ops
            || (ops.len() > 1 && bytes > self.config.max_batch_bytes)
        {
            let reason = format!(
                "push of {} operations / {bytes} bytes exceeds the batch limit",
                ops.len()
            );
            return self.close(connection, ErrorCode::BatchTooLarge, reason);
        }
        if let Some(op) = ops.iter().find(|op| op.id.replica != replica) {
            let reason = format!(
                "operation {:?} belongs to another replica than the connection's",
                op.id
            );
            return self.close(connection, ErrorCode::Forbidden, reason);
        }
        let limit = now.saturating_add(self.config.max_drift_ms);
        let mut refused = Vec::new();
        let mut clock_ahead = None;
        for op in &ops {
            if self.accepted.contains(op.id) {
                continue;
            }
            // Not stored (checked above), so a settled number is one refused
            // or given up before: refuse it again.
            let given_up = self
                .refused
                .get(&replica)
                .is_some_and(|r| r.contains(op.id.seq));
            // Horizon 0 means none: nothing is collected, an op stamped 0 is not stale.
            let behind_horizon =
                self.tombstone_horizon > Hlc::ZERO && op.hlc <= self.tombstone_horizon;
            let refusal = if op.validate().is_err() {
                Some(ErrorCode::InvalidOp)
            } else if behind_horizon
                || given_up
                || (buggify::on(Switch::SpuriousRefusals)
                    && buggify::one_in(7, op.id.replica.0 ^ op.id.seq.rotate_left(32)))
            {
                Some(ErrorCode::Stale)
            } else {
                None
            };
            if let Some(code) = refusal {
                // Refused for good: settled, so acknowledgements can move past it.
                self.refused.entry(replica).or_default().insert(op.id.seq);
                refused.push((op.id.seq, code));
                continue;
            }
            if op.hlc.wall_ms() > limit {
                // Refused for now: this and everything after it is pushed again later.
                let wait = op.hlc.wall_ms() - limit;
                let reason = format!(
                    "operation stamped {wait} ms beyond the relay's clock plus the drift bound"
                );
                clock_ahead = Some((op.id.seq, wait, reason));
                break;
            }
            let encoded: Arc<[u8]> = protocol::encode_op(op).into();
            self.accepted.insert(op.id);
            let offset = self.log.push(Entry {
                replica,
                seq: op.id.seq,
                hlc: op.hlc,
                compact_cost: compact_decode_cost(op),
                encoded: encoded.clone(),
            });
            self.pending_persist.append.push((offset, encoded));
        }
        // The client holds whatever it pushes (accepted or not), so
        // deliveries need not carry it back.
        if let Some(m) = self.members.get_mut(&connection) {
            for op in &ops {
                m.own_held.insert(op.id.seq);
            }
        }
        if let Some((seq, wait, reason)) = clock_ahead {
            self.reject(connection, seq, ErrorCode::ClockAhead, wait, reason);
        }
        // The ack must follow the append to storage. It names the operations
        // it settles by refusing them, so no other frame has to arrive for the
        // client to know (Welcome repeats them if the ack is lost).
        let ack_first = buggify::on(Switch::AckBeforePersist);
        if !ack_first {
            self.flush_persist();
        }
        let through_seq = self.settled_seqs(replica).contiguous();
        self.transmit(
            connection,
            &Message::Ack {
                through_seq,
                refused,
            },
        );
        if ack_first {
            self.flush_persist();
        }
    }

    /// Sequence numbers of `replica` above `seq` that were refused for good
    /// (not stored, not merely given up by the client).
    fn refused_above(&self, replica: ReplicaId, seq: u64) -> Vec<u64> {
        let Some(refused) = self.refused.get(&replica) else {
            return Vec::new();
        };
        (seq + 1..=refused.contiguous())
            .chain(refused.iter_ahead())
            .filter(|&s| !self.accepted.contains(crate::op::OpId { replica, seq: s }))
            .collect()
    }

    /// Sequence numbers of `replica` that are settled: stored, refused for
    /// good, or given up by the client (everything up to its `settled_seq`).
    fn settled_seqs(&self, replica: ReplicaId) -> SeqSet {
        let mut settled = self.accepted.get(replica).cloned().unwrap_or_default();
        if let Some(refused) = self.refused.get(&replica) {
            settled.insert_through(refused.contiguous());
            for seq in refused.iter_ahead() {
                settled.insert(seq);
            }
        }
        settled
    }

    fn reject(
        &mut self,
        connection: ConnectionId,
        seq: u64,
        code: ErrorCode,
        retry_after_ms: u64,
        message: String,
    ) {
        self.transmit(
            connection,
            &Message::Rejected {
                seq,
                code,
                retry_after_ms,
                message,
            },
        );
    }

    fn on_timeout(&mut self, now: u64) {
        let mut expired = Vec::new();
        for (&id, m) in &self.members {
            if now.saturating_sub(m.last_heard) >= self.config.idle_timeout_ms {
                expired.push((
                    id,
                    ErrorCode::IdleTimeout,
                    "no frame from the client within the idle timeout",
                ));
            } else if m
                .stalled_since
                .is_some_and(|t| now.saturating_sub(t) >= self.config.slow_consumer_ms)
            {
                expired.push((
                    id,
                    ErrorCode::SlowConsumer,
                    "the client did not keep up; resume from the cursor",
                ));
            }
        }
        for (id, code, reason) in expired {
            self.close(id, code, reason.into());
        }
    }

    /// Sends an error and closes the connection.
    fn close(&mut self, connection: ConnectionId, code: ErrorCode, reason: String) {
        self.transmit(
            connection,
            &Message::Error {
                code,
                message: reason.clone(),
            },
        );
        self.members.remove(&connection);
        self.outputs.push(RoomOutput::Close {
            connection,
            code: code.close_code(),
            reason,
        });
    }

    fn transmit(&mut self, connection: ConnectionId, message: &Message) {
        let version = self
            .members
            .get(&connection)
            .map_or(protocol::PROTOCOL_VERSION, |m| m.version);
        self.outputs.push(RoomOutput::Transmit {
            connection,
            frame: protocol::encode_in(version, message).into(),
        });
    }

    fn flush_persist(&mut self) {
        let batch = std::mem::take(&mut self.pending_persist);
        if !batch.append.is_empty() || batch.snapshot.is_some() || batch.truncate_through.is_some()
        {
            self.outputs
                .push_persist(|id| RoomOutput::Persist { id, batch });
        }
    }

    /// How many operations the room sent in `Deliver` frames since the
    /// last call, counting only those the receiving connection did not
    /// hold: the receiver's own operations that ride along in a shared
    /// version-3 frame (section 9.4 of the protocol) are not counted.
    pub fn take_ops_delivered(&mut self) -> u64 {
        std::mem::take(&mut self.ops_delivered)
    }

    /// Whether a persist failed, so the room must be reloaded from storage.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Memory is ahead of storage: whatever waited for the failed batch
    /// must never leave, and no connection may be served from this state.
    fn on_persist_failed(&mut self) {
        self.outputs.clear();
        self.failed = true;
        self.pump_due = None;
        let connections: Vec<ConnectionId> = self.members.keys().copied().collect();
        for connection in connections {
            self.close(
                connection,
                ErrorCode::Internal,
                "the relay could not store data; reconnect later".into(),
            );
        }
    }

    fn pump_all(&mut self, now: u64) {
        // Most polls follow an `Applied` or a heartbeat, not a new head: then
        // nearly every connection has nothing to send, and only its
        // slow-consumer clock is updated, in place. Taking each one out of
        // the map and back in (what `pump` needs) cost more than the rest
        // of the poll under fan-out.
        let (head, window) = (self.head(), self.config.send_window.max(1));
        let compacted = self.log.compacted_through();
        let mut ready = Vec::new();
        for (&id, member) in &mut self.members {
            let behind = member.snapshot.is_some() || member.sent < head;
            // A connection behind the snapshot is pumped even with a full
            // window: `pump` prepares (or fails to prepare) its snapshot.
            let needs_snapshot = member.snapshot.is_none() && member.sent < compacted;
            if (behind && member.in_flight < window) || needs_snapshot {
                ready.push(id);
            } else {
                member.update_stalled(behind, window, now);
            }
        }
        for id in ready {
            self.pump(now, id);
        }
        // The shared version-3 frames serve the connections pumped together;
        // kept longer they would only hold memory while the room is idle.
        self.compact_frames = VecDeque::new();
    }

    /// Sends a connection what it lacks, while its window has room.
    fn pump(&mut self, now: u64, connection: ConnectionId) {
        let Some(mut member) = self.members.remove(&connection) else {
            return;
        };
        let window = self.config.send_window.max(1);
        if member.snapshot.is_none()
            && member.sent < self.log.compacted_through()
            && !self.prepare_snapshot(member.snapshot_format)
        {
            let reason = "the room's snapshot cannot be re-encoded for this client".to_owned();
            self.members.insert(connection, member);
            return self.close(connection, ErrorCode::Internal, reason);
        }
        while member.in_flight < window {
            let Some(frame) = self.next_frame(&mut member) else {
                break;
            };
            member.in_flight += 1;
            self.outputs
                .push(RoomOutput::Transmit { connection, frame });
        }
        let behind = member.snapshot.is_some() || member.sent < self.head();
        member.update_stalled(behind, window, now);
        self.members.insert(connection, member);
    }

    /// Makes the snapshot available in `format` (re-encoding the stored
    /// one if it is in another); `false` if that fails.
    fn prepare_snapshot(&mut self, format: u8) -> bool {
        let Some(stored) = &self.snapshot else {
            return true;
        };
        if Snapshot::format_of(stored) == Some(format)
            || self.snapshot_in_format.contains_key(&format)
        {
            return true;
        }
        match Snapshot::transcode(stored, format) {
            Ok(bytes) => {
                self.snapshot_in_format.insert(format, bytes.into());
                true
            }
            Err(_) => false,
        }
    }

    /// The snapshot in `format`, once [`Room::prepare_snapshot`] made it.
    fn snapshot_for(&self, format: u8) -> Option<Arc<[u8]>> {
        let stored = self.snapshot.as_ref()?;
        if Snapshot::format_of(stored) == Some(format) {
            return Some(stored.clone());
        }
        self.snapshot_in_format.get(&format).cloned()
    }

    /// The next frame a connection needs: a snapshot chunk or a batch of the log.
    fn next_frame(&mut self, member: &mut Member) -> Option<Bytes> {
        if member.snapshot.is_none() && member.sent < self.log.compacted_through() {
            let bytes = self.snapshot_for(member.snapshot_format)?;
            member.snapshot = Some(SnapshotSend {
                bytes,
                cursor: self.log.compacted_through(),
                offset: 0,
            });
            member.include_own = true;
        }
        if let Some(send) = &mut member.snapshot {
            let total = send.bytes.len();
            let end = total.min(send.offset + self.config.snapshot_chunk_bytes.max(1));
            let frame = protocol::encode_in(
                member.version,
                &Message::SnapshotChunk {
                    cursor: send.cursor,
                    total_len: total as u64,
                    offset: send.offset as u64,
                    bytes: send
                        .bytes
                        .get(send.offset..end)
                        .unwrap_or_default()
                        .to_vec(),
                },
            );
            send.offset = end;
            if end == total {
                member.sent = send.cursor;
                member.snapshot = None;
            }
            return Some(frame.into());
        }
        if member.sent >= self.head() {
            return None;
        }
        let from = member.sent;
        let mut cursor = from;
        let mut ops: Vec<&[u8]> = Vec::new();
        let mut bytes = 0;
        // A version-3 frame carries the whole range (see below), so every
        // operation counts against the byte limit, and the cut is the same
        // for every version-3 connection at this cursor. Its batch also
        // costs the receiver's decoder more than its version-2 bytes for
        // small operations (PROTOCOL.md 7.1, "Bounds"): the larger of the
        // two is what the limit bounds, so a receiver that accepts a
        // version-2 frame of `max_batch_bytes` accepts the version-3 one.
        let compact = member.version == protocol::COMPACT_VERSION;
        for (offset, entry) in self.log.from(from + 1) {
            let first = if compact {
                cursor == from
            } else {
                ops.is_empty()
            };
            let size = if compact {
                entry.encoded.len().max(entry.compact_cost)
            } else {
                entry.encoded.len()
            };
            if cursor - from >= self.config.max_batch_ops as u64
                || (!first && bytes + size > self.config.max_batch_bytes)
            {
                break;
            }
            cursor = offset;
            let own = entry.replica == member.replica;
            let carried = !own || member.include_own || !member.own_held.contains(entry.seq);
            if carried {
                if own {
                    member.own_held.insert(entry.seq);
                }
                ops.push(&entry.encoded);
            }
            if carried || compact {
                bytes += size;
            }
        }
        // What the receiver did not hold: a version-3 frame's own operations
        // riding along are not deliveries (`Room::take_ops_delivered`).
        self.ops_delivered += ops.len() as u64;
        member.sent = cursor;
        if member.version != protocol::COMPACT_VERSION {
            return Some(protocol::encode_deliver(from, cursor, ops.into_iter()).into());
        }
        if ops.is_empty() {
            // Only operations the client holds (its own): nothing to carry.
            return Some(
                protocol::encode_in(
                    protocol::COMPACT_VERSION,
                    &Message::Deliver {
                        from,
                        cursor,
                        ops: Vec::new(),
                    },
                )
                .into(),
            );
        }
        // Anything else carries the whole range, the client's own
        // operations included (it skips those it holds), so the frame is
        // the same for every connection at this cursor.
        for (offset, entry) in self.log.from(from + 1) {
            if offset > cursor {
                break;
            }
            if entry.replica == member.replica {
                member.own_held.insert(entry.seq);
            }
        }
        Some(self.compact_deliver(from, cursor))
    }

    /// The version-3 `Deliver` of every operation at offsets
    /// `from + 1 ..= cursor`, built once per range and reused.
    fn compact_deliver(&mut self, from: u64, cursor: u64) -> Bytes {
        if let Some((_, _, frame)) = self
            .compact_frames
            .iter()
            .find(|(f, c, _)| (*f, *c) == (from, cursor))
        {
            return frame.clone();
        }
        let ops: Vec<Op> = self
            .log
            .from(from + 1)
            .take_while(|(offset, _)| *offset <= cursor)
            // Entries were encoded by this room from decoded operations
            // (or checked by `Room::restore`), so they decode.
            .filter_map(|(_, entry)| protocol::decode_op(&entry.encoded).ok())
            .collect();
        let frame = Bytes::from(protocol::encode_in(
            protocol::COMPACT_VERSION,
            &Message::Deliver { from, cursor, ops },
        ));
        if self.compact_frames.len() >= COMPACT_FRAMES_KEPT {
            self.compact_frames.pop_front();
        }
        self.compact_frames.push_back((from, cursor, frame.clone()));
        frame
    }

    fn maybe_compact(&mut self, now: u64) {
        if self.compacting || self.compaction_retry_at.is_some_and(|at| now < at) {
            return;
        }
        let policy = self.config.compaction;
        let head = self.head();
        let by_size = head.saturating_sub(policy.max_log_ops);
        let from = self.log.compacted_through();
        // `through` below is at most `most`: when even that folds too little,
        // skip the scan of every connection's cursor (this runs per input).
        let most = head.saturating_sub(policy.keep_recent_ops).max(by_size);
        if most <= from || most - from < policy.min_ops.max(1) {
            return;
        }
        let slowest = self
            .members
            .values()
            .map(|m| m.confirmed)
            .min()
            .unwrap_or(head);
        let by_cursor = slowest.min(head.saturating_sub(policy.keep_recent_ops));
        let through = by_cursor.max(by_size);
        if through <= from || through - from < policy.min_ops.max(1) {
            return;
        }
        let forced = by_size > from;
        if !forced && policy.min_fold_percent > 0 {
            // The state's size, not the compressed bytes: compaction's cost
            // is decoding and re-encoding the whole state.
            let snapshot = self
                .snapshot
                .as_ref()
                .map_or(0, |s| Snapshot::body_len(s) as u64);
            let fold = self.log.bytes_through(through);
            if fold.saturating_mul(100) < snapshot.saturating_mul(policy.min_fold_percent) {
                return;
            }
        }
        let job = self.start_compaction(now, through);
        self.outputs.push(RoomOutput::Compact(job));
    }

    /// Forces a compaction of everything up to the head now, whatever the
    /// policy says (for tests and admin tools). Returns the job, or `None`
    /// when one is already running or there is nothing to fold.
    pub fn compact_now(&mut self, now: Timestamp) -> Option<CompactionJob> {
        self.polled_timeout = None;
        if self.compacting || self.head() == self.log.compacted_through() {
            return None;
        }
        Some(self.start_compaction(now.unix_ms(), self.head()))
    }

    /// A job folding the log up to `through` into the snapshot.
    ///
    /// Tombstones may be collected only up to a horizon no operation still to
    /// be merged can be older than: the grace period's start, but below every
    /// entry left in the log. The horizon takes effect now, not when the job
    /// finishes, so operations pushed meanwhile are judged against it.
    fn start_compaction(&mut self, now: u64, through: u64) -> CompactionJob {
        let from = self.log.compacted_through();
        let entries = self
            .log
            .from(from + 1)
            .take_while(|(o, _)| *o <= through)
            .map(|(_, e)| e.encoded.clone())
            .collect();
        let grace_start = now.saturating_sub(self.config.compaction.tombstone_grace_ms);
        let mut horizon = Hlc::new(grace_start, u16::MAX).unwrap_or(Hlc::ZERO);
        if let Some(oldest_left) = self.log.from(through + 1).map(|(_, e)| e.hlc).min() {
            horizon = horizon.min(Hlc::from_u64(oldest_left.as_u64().saturating_sub(1)));
        }
        self.tombstone_horizon = self.tombstone_horizon.max(horizon);
        self.compacting = true;
        CompactionJob {
            previous: self.snapshot.clone(),
            entries,
            through,
            tombstone_horizon: self.tombstone_horizon,
        }
    }

    fn install(&mut self, now: u64, done: Compacted) {
        self.compacting = false;
        if done.through <= self.log.compacted_through() || done.through > self.head() {
            return;
        }
        self.snapshot = Some(done.snapshot.clone());
        self.snapshot_in_format.clear();
        self.log.truncate_through(done.through);
        self.tombstone_horizon = self.tombstone_horizon.max(done.tombstone_horizon);
        self.compactions += 1;
        self.last_compaction_at = Some(now);
        self.pending_persist.snapshot = Some((done.through, done.snapshot));
        self.pending_persist.truncate_through = Some(done.through);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Change, OpId};
    use crate::value::Value;

    const NOW: u64 = 1_700_000_000_000;

    fn join(room: &mut Room, connection: ConnectionId, replica: u64) {
        let hello = Hello {
            replica: ReplicaId(replica),
            room: "r".into(),
            token: Vec::new(),
            cursor: 0,
            own_seq: 0,
            settled_seq: 0,
            agent: "test".into(),
            versions: vec![protocol::PROTOCOL_VERSION, protocol::COMPACT_VERSION],
            snapshot_formats: vec![crate::snapshot::NEWEST_SNAPSHOT_FORMAT],
        };
        let input = RoomInput::Join {
            connection,
            hello,
            read_only: false,
        };
        room.handle(Timestamp::from_unix_ms(NOW), input);
    }

    fn push(room: &mut Room, connection: ConnectionId, replica: u64, doc: &str) {
        let op = Op {
            id: OpId {
                replica: ReplicaId(replica),
                seq: 1,
            },
            hlc: Hlc::new(NOW, 0).unwrap(),
            change: Change::Put {
                collection: "c".into(),
                id: doc.into(),
                fields: vec![("f".into(), Some(Value::Int(1)))],
            },
        };
        let frame =
            protocol::encode_in(protocol::COMPACT_VERSION, &Message::Push { ops: vec![op] });
        let input = RoomInput::Frame {
            connection,
            frame: &frame,
        };
        room.handle(Timestamp::from_unix_ms(NOW), input);
    }

    /// Polls until nothing is left, reporting every persist durable.
    fn drain(room: &mut Room) {
        while let Some(out) = room.poll() {
            if let RoomOutput::Persist { id, .. } = out {
                room.handle(Timestamp::from_unix_ms(NOW), RoomInput::Persisted(id));
            }
        }
    }

    #[test]
    fn own_operations_riding_along_are_not_counted_and_shared_frames_are_dropped() {
        let mut room = Room::new(RoomConfig::default());
        join(&mut room, 1, 10);
        join(&mut room, 2, 20);
        drain(&mut room);
        // Both push before the room polls: each gets one version-3 frame of
        // offsets 1..=2, the same bytes, its own operation riding along.
        push(&mut room, 1, 10, "a");
        push(&mut room, 2, 20, "b");
        drain(&mut room);
        assert_eq!(room.head(), 2);
        assert_eq!(room.take_ops_delivered(), 2, "one new operation each");
        assert_eq!(room.take_ops_delivered(), 0);
        assert!(
            room.compact_frames.is_empty(),
            "the shared frames are not kept once sent"
        );
    }

    #[test]
    fn connections_at_one_cursor_share_one_deliver_allocation() {
        let mut room = Room::new(RoomConfig::default());
        for (connection, replica) in [(1, 10), (2, 20), (3, 30)] {
            join(&mut room, connection, replica);
        }
        drain(&mut room);
        push(&mut room, 3, 30, "a");
        let mut delivers = Vec::new();
        while let Some(out) = room.poll() {
            match out {
                RoomOutput::Persist { id, .. } => {
                    room.handle(Timestamp::from_unix_ms(NOW), RoomInput::Persisted(id));
                }
                RoomOutput::Transmit { connection, frame }
                    if connection != 3
                        && protocol::peek_kind(&frame) == Some(protocol::MessageKind::Deliver) =>
                {
                    delivers.push(frame);
                }
                _ => {}
            }
        }
        // Not merely equal bytes: the same buffer, so a host fans it out
        // without a copy per connection.
        let [a, b] = delivers.as_slice() else {
            panic!("expected one Deliver each for connections 1 and 2, got {delivers:?}");
        };
        assert_eq!(a, b);
        assert_eq!(a.as_ptr(), b.as_ptr());
    }

    #[test]
    fn next_timeout_follows_input_handled_after_the_last_poll() {
        let mut room = Room::new(RoomConfig::default());
        join(&mut room, 1, 10);
        drain(&mut room);
        let before = room.next_timeout().expect("a member has an idle deadline");
        // Hearing from the member moves its idle deadline, before any poll.
        let ping = protocol::encode_in(protocol::COMPACT_VERSION, &Message::Ping { nonce: 1 });
        let input = RoomInput::Frame {
            connection: 1,
            frame: &ping,
        };
        room.handle(Timestamp::from_unix_ms(NOW + 1_000), input);
        let after = room.next_timeout().expect("still one member");
        assert_eq!(after.unix_ms(), before.unix_ms() + 1_000);
    }

    #[test]
    fn max_log_ops_compacts_past_a_member_that_never_confirms() {
        let config = RoomConfig {
            compaction: CompactionPolicy::default()
                .with_min_ops(1)
                .with_keep_recent_ops(100)
                .with_max_log_ops(5)
                .with_min_fold_percent(0),
            ..RoomConfig::default()
        };
        let mut room = Room::new(config);
        // Nobody ever confirms: only the log's length may force a compaction.
        for connection in 1..=8 {
            join(&mut room, connection, connection * 10);
        }
        drain(&mut room);
        let mut compacted_through = None;
        for connection in 2..=8 {
            push(&mut room, connection, connection * 10, "d");
            while let Some(out) = room.poll() {
                match out {
                    RoomOutput::Persist { id, .. } => {
                        room.handle(Timestamp::from_unix_ms(NOW), RoomInput::Persisted(id));
                    }
                    RoomOutput::Compact(job) => compacted_through = Some(job.through()),
                    _ => {}
                }
            }
        }
        assert_eq!(room.head(), 7);
        // As soon as the log holds 6 entries, the oldest is folded in (one
        // job at a time: the next waits for this one).
        assert_eq!(compacted_through, Some(1));
    }

    #[test]
    fn the_decode_cost_bounds_what_a_batch_charges() {
        let op = Op {
            id: OpId {
                replica: ReplicaId(1),
                seq: 1,
            },
            hlc: Hlc::new(NOW, 0).unwrap(),
            change: Change::Put {
                collection: "todos".into(),
                id: "d1".into(),
                fields: vec![("n".into(), Some(Value::Int(1)))],
            },
        };
        let ops = vec![op.clone(); 1];
        let frame = protocol::encode_in(protocol::COMPACT_VERSION, &Message::Push { ops });
        let cost = compact_decode_cost(&op);
        // The decoder accepts the batch within its cost plus the frame's
        // header, and refuses it within much less.
        assert!(protocol::decode(&frame, cost + 16).is_ok());
        assert!(protocol::decode(&frame, protocol::compact::DECODED_OP_COST).is_err());
    }
}
