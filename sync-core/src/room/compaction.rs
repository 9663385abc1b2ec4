//! Compaction: folding a log prefix into the room snapshot.
//!
//! The room hands out a [`CompactionJob`]: plain data that owns everything
//! it needs. The host runs [`CompactionJob::run`] wherever it likes (a
//! worker thread, so connections are never blocked) and hands the
//! [`Compacted`] result back to the room.

use std::sync::Arc;

use crate::buggify::{self, Switch};
use crate::hlc::Hlc;
use crate::protocol;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::state::State;
use crate::version::VersionVector;

/// Work to fold log entries into a new snapshot.
#[derive(Clone, Debug)]
pub struct CompactionJob {
    pub(crate) previous: Option<Arc<[u8]>>,
    pub(crate) entries: Vec<Arc<[u8]>>,
    pub(crate) through: u64,
    pub(crate) tombstone_horizon: Hlc,
}

/// A finished compaction, to feed back to the room.
#[derive(Clone, Debug)]
pub struct Compacted {
    pub(crate) through: u64,
    pub(crate) snapshot: Arc<[u8]>,
    pub(crate) tombstone_horizon: Hlc,
    pub(crate) tombstones_collected: usize,
}

/// Compaction failed: the room's own data did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompactionError {
    /// The previous snapshot is corrupt.
    #[error("the room's snapshot is corrupt: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A log entry is corrupt.
    #[error("log entry does not decode: {0}")]
    Entry(String),
}

impl CompactionJob {
    /// The last offset the new snapshot will cover.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Tombstones stamped at or before this are collected, and operations
    /// stamped at or before it are refused from the moment the job was handed out.
    pub fn tombstone_horizon(&self) -> Hlc {
        self.tombstone_horizon
    }

    /// Number of log entries being folded.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Builds the new snapshot. Pure computation; may run on any thread.
    pub fn run(self) -> Result<Compacted, CompactionError> {
        let (mut state, mut version, mut max_hlc) = match &self.previous {
            Some(bytes) => {
                let snapshot = Snapshot::decode(bytes)?;
                (snapshot.state, snapshot.version, snapshot.max_hlc)
            }
            None => (State::new(), VersionVector::new(), Hlc::ZERO),
        };
        for bytes in &self.entries {
            let op =
                protocol::decode_op(bytes).map_err(|e| CompactionError::Entry(e.to_string()))?;
            let dropped = buggify::on(Switch::CompactionDropsOps)
                && buggify::one_in(5, op.id.replica.0 ^ op.id.seq.rotate_left(32));
            if version.insert(op.id) && !dropped {
                state.apply(&op);
                max_hlc = max_hlc.max(op.hlc);
            }
        }
        let tombstones_collected = state.collect_tombstones(self.tombstone_horizon);
        // Compressed: the snapshot is stored and sent to every new client,
        // and compaction runs off the room's path.
        let snapshot: Arc<[u8]> =
            Snapshot::encode_compressed(&state, &version, max_hlc, self.tombstone_horizon).into();
        Ok(Compacted {
            through: self.through,
            snapshot,
            tombstone_horizon: self.tombstone_horizon,
            tombstones_collected,
        })
    }
}

impl Compacted {
    /// The last offset the snapshot covers.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Encoded size of the new snapshot.
    pub fn snapshot_len(&self) -> usize {
        self.snapshot.len()
    }

    /// How many tombstones were collected.
    pub fn tombstones_collected(&self) -> usize {
        self.tombstones_collected
    }
}
