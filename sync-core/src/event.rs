//! Events the core reports to the host and, through it, to applications.

use crate::protocol::{CloseCode, ErrorCode};

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A write made on this replica.
    Local,
    /// An operation or snapshot received from elsewhere.
    Remote,
}

/// Something applications may want to react to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A document's state changed: it was written, deleted, or pruned by a drop.
    DocumentChanged {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// Who changed it.
        origin: Origin,
    },
    /// A collection was created or dropped.
    CollectionChanged {
        /// The collection.
        collection: String,
        /// Who changed it.
        origin: Origin,
    },
    /// The session joined the room and is exchanging operations.
    Connected {
        /// Whether the token only allows reading.
        read_only: bool,
    },
    /// The connection ended; a reconnect is scheduled unless `retry_at` is `None`.
    Disconnected {
        /// Why, as a close code.
        code: CloseCode,
        /// Why, in words.
        reason: String,
        /// When the next attempt happens (host milliseconds).
        retry_at: Option<u64>,
    },
    /// Everything the relay had when it last reported is applied here.
    CaughtUp {
        /// The room offset now applied.
        cursor: u64,
    },
    /// Every local operation has been acknowledged by the relay.
    AllPushed,
    /// The relay refused local operations for good; they are dropped from
    /// the outbox (their effect stays in the local state until overwritten).
    OpsRejected {
        /// Sequence numbers of the refused operations.
        seqs: Vec<u64>,
        /// Why.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// Clocks disagree by more than the drift bound; operations wait until
    /// the clocks agree closely enough. Fix the device clock.
    ClockSkew {
        /// How far ahead the other side's stamps are, in milliseconds
        /// (negative: ours are ahead of the relay's).
        ahead_ms: i64,
    },
    /// The relay holds operations of this replica numbered beyond any this
    /// store has made: the store was restored from an older copy. Syncing
    /// stops (nothing is pushed that the relay would mistake for operations
    /// it already has); open the database under a new replica id and copy the
    /// documents over.
    StoreBehindRelay {
        /// Highest sequence number of this replica the relay holds.
        relay_seq: u64,
        /// The next sequence number this store would hand out.
        local_next_seq: u64,
    },
    /// A write to the local store failed. The session stopped syncing and
    /// refuses writes: memory is ahead of the store. Reopen the database;
    /// it reloads the last state stored.
    StoreFailed {
        /// The store's error.
        message: String,
    },
    /// The peer sent something it should not have; the core dropped it.
    PeerMisbehaved {
        /// What was wrong.
        reason: String,
    },
}
