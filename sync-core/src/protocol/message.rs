//! The messages of the sync protocol.

use serde::{Deserialize, Serialize};

use super::ErrorCode;
use crate::op::Op;
use crate::stamp::ReplicaId;

/// Variant index of [`Message::Deliver`], for frames spliced by hand.
pub(super) const DELIVER_TAG: u64 = 4;

/// Every message of the protocol. The variant index is the wire tag, so
/// variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Client → relay, first frame: who is asking for what.
    Hello(Hello),
    /// Relay → client, answer to `Hello`: the session is open.
    Welcome(Welcome),
    /// Client → relay: local operations, oldest first, at most one batch.
    Push {
        /// The operations.
        ops: Vec<Op>,
    },
    /// Relay → client: every operation of the client's replica up to
    /// `through_seq` is settled: durably stored, or refused for good (listed
    /// in `refused`).
    Ack {
        /// Highest settled sequence number of the client's replica.
        through_seq: u64,
        /// Operations of this push refused for good, with why (`Stale` or
        /// `InvalidOp`). They are settled too: the client drops them and
        /// resyncs to take their effect back out of its state.
        refused: Vec<(u64, ErrorCode)>,
    },
    /// Relay → client: room operations after offset `from`, up to `cursor`.
    ///
    /// The client's own operations are left out, so `ops` may hold fewer
    /// than `cursor - from` entries.
    Deliver {
        /// The cursor this batch continues from.
        from: u64,
        /// The cursor to save once the batch is applied.
        cursor: u64,
        /// The operations.
        ops: Vec<Op>,
    },
    /// Relay → client: one chunk of a snapshot of the room through offset
    /// `cursor`. Chunks arrive in order; the snapshot is complete when
    /// `offset + bytes.len() == total_len`.
    SnapshotChunk {
        /// The cursor to save once the snapshot is applied.
        cursor: u64,
        /// Total snapshot length in bytes.
        total_len: u64,
        /// Where this chunk starts in the snapshot.
        offset: u64,
        /// The chunk's bytes.
        bytes: Vec<u8>,
    },
    /// Client → relay: `frames` more `Deliver`/`SnapshotChunk` frames are
    /// consumed (the flow-control window reopens by that much), and
    /// everything up to `cursor` is applied and durable here. `frames` is 0
    /// for a cursor update alone.
    Applied {
        /// The client's saved cursor.
        cursor: u64,
        /// Frames this message confirms.
        frames: u32,
    },
    /// Relay → client: pushed operations were not accepted for now.
    /// `ClockAhead` covers this operation and the rest of its batch (push
    /// them again after `retry_after_ms`); `ReadOnly` covers the whole push.
    /// The session stays open. (Refusals for good travel in `Ack`.)
    Rejected {
        /// Sequence number of the first operation not accepted.
        seq: u64,
        /// Why.
        code: ErrorCode,
        /// For `ClockAhead`: when to push again.
        retry_after_ms: u64,
        /// A human-readable explanation.
        message: String,
    },
    /// Either way: are you there? Answered by `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Either way: answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Either way: a fatal problem; the sender closes the connection next.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
}

/// The client's opening message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client replica's id.
    pub replica: ReplicaId,
    /// The room to join.
    pub room: String,
    /// The access token, as issued by the app's server.
    pub token: Vec<u8>,
    /// Last room offset the client has applied (0: none).
    pub cursor: u64,
    /// The client holds every one of its own operations up to this sequence
    /// number; the relay delivers its own operations above it back to it
    /// (needed after the client replaced its state with a snapshot).
    pub own_seq: u64,
    /// Every operation of this replica up to this sequence number is either
    /// acknowledged or given up (the client's outbox starts after it).
    pub settled_seq: u64,
    /// Free-form client name and version, for logs.
    pub agent: String,
    /// Every protocol version the client speaks, in any order. The relay
    /// picks one and names it in `Welcome::version`.
    pub versions: Vec<u8>,
    /// Every snapshot format the client reads, in any order. The relay
    /// sends snapshots in one of them and names it in
    /// `Welcome::snapshot_format`.
    pub snapshot_formats: Vec<u8>,
}

/// The relay's answer to `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Offset of the room's latest operation.
    pub head: u64,
    /// Every operation of this replica up to this sequence number is stored
    /// or refused for good; the client drops them from its outbox.
    pub accepted_seq: u64,
    /// The relay's wall clock, for skew diagnostics.
    pub relay_time_ms: u64,
    /// Whether the session may only read.
    pub read_only: bool,
    /// How often the client should ping when otherwise silent.
    pub heartbeat_ms: u32,
    /// Most operations one `Push` may carry.
    pub max_batch_ops: u32,
    /// Most bytes of operations one `Push` may carry.
    pub max_batch_bytes: u32,
    /// Sequence numbers above the client's `settled_seq` that the relay
    /// refused for good (on an earlier connection whose `Rejected` frames the
    /// client may never have seen). They count as settled in `accepted_seq`.
    pub refused: Vec<u64>,
    /// The offset deliveries continue from: the client's cursor, or 0 when
    /// the relay does not know that cursor (then the client starts over).
    pub cursor: u64,
    /// The protocol version the session speaks from now on, one of
    /// `Hello::versions`: every later frame carries it as its version byte.
    pub version: u8,
    /// The snapshot format the relay sends snapshots in on this connection,
    /// one of `Hello::snapshot_formats`.
    pub snapshot_format: u8,
}
