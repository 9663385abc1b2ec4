//! Checkpoints: the replica's documents and collections stored as one
//! snapshot record, with the document records written since overriding it.
//!
//! A store of 100,000 documents holds 100,000 document records when every
//! document is its own record: opening it decodes them all, and syncing it
//! from scratch writes them all. With a checkpoint, it holds one snapshot
//! (read and written in one piece, several times faster per document) and
//! only the records of documents changed since.
//!
//! The replica keeps the keys of the document records stored since the last
//! checkpoint (the overlay). A checkpoint is written in one persist batch
//! with the deletion of every one of them, so whatever a crash keeps, each
//! document record in the store is newer than the checkpoint and overrides
//! it (the record layout is in `persist.rs`, at `CHECKPOINT_VERSION`).
//!
//! **When**: [`Checkpoints::due`] is the one policy. A persist batch becomes
//! a checkpoint when the overlay, counting the documents the batch would
//! write, reaches a quarter of all documents (and at least
//! [`crate::ReplicaConfig::checkpoint_min_records`]): reopening then reads
//! at most a quarter as many records as documents besides the snapshot, and
//! the cost of encoding the whole state is spread over at least that many
//! document writes. A transaction that rewrites most of a large database,
//! or the first sync of one, is a checkpoint at once instead of one record
//! per document. A snapshot reset (the initial sync from the relay) stores
//! the relay's snapshot bytes as they were received as the checkpoint.
//!
//! While a session catches up to the relay's head (an initial sync
//! delivered as operations), the policy waits: the state grows batch after
//! batch, and a checkpoint each time the overlay reaches a quarter of it
//! would encode the growing state again and again (about four times the
//! final state in all). The batch that reaches the head is then one
//! checkpoint of everything.

use std::collections::BTreeMap;

use super::{DirtyIds, Replica};
use crate::persist::{ABSENT_DOCUMENT, PersistBatch, StoreKey, Write, encode_checkpoint};

/// The replica's knowledge of its stored checkpoint and overlay.
#[derive(Debug, Default)]
pub(super) struct Checkpoints {
    /// Whether the store holds a checkpoint (once the batches taken so far are written).
    stored: bool,
    /// Keys of the document records stored since the checkpoint, by
    /// collection: the dirty map's type, so that the wasm package carries
    /// one copy of the tree code for both.
    overlay: BTreeMap<String, DirtyIds>,
    /// Number of keys in `overlay`.
    overlay_len: usize,
    /// Snapshot bytes to store as the next checkpoint: a snapshot received
    /// and being applied (the state, except for the documents marked dirty
    /// since, which the same batch writes as records).
    pending: Option<Vec<u8>>,
    /// The next batch writes a checkpoint of the whole state.
    forced: bool,
    /// [`crate::ReplicaConfig::checkpoint_min_records`].
    min_records: usize,
}

impl Checkpoints {
    /// No checkpoint stored, no record.
    pub(super) fn new(min_records: usize) -> Self {
        Checkpoints {
            min_records,
            ..Checkpoints::default()
        }
    }

    /// What a loader found: whether a checkpoint, and which document records.
    pub(super) fn restored(
        min_records: usize,
        stored: bool,
        overlay: BTreeMap<String, DirtyIds>,
    ) -> Self {
        let overlay_len = overlay.values().map(DirtyIds::len).sum();
        Checkpoints {
            stored,
            overlay,
            overlay_len,
            pending: None,
            forced: false,
            min_records,
        }
    }

    /// Whether the store will hold a checkpoint once the next batch is written.
    pub(super) fn stored_after(&self, due: bool) -> bool {
        self.stored || due
    }

    /// The policy: whether the next persist batch, which rewrites
    /// `dirty_docs` documents of a state of `total_docs`, is a checkpoint.
    /// While a session is `catching_up`, only a forced checkpoint or
    /// received snapshot bytes make one.
    pub(super) fn due(&self, dirty_docs: usize, total_docs: usize, catching_up: bool) -> bool {
        if self.forced || self.pending.is_some() {
            return true;
        }
        if catching_up {
            return false;
        }
        let records = self.overlay_len.saturating_add(dirty_docs);
        records >= self.min_records.max(total_docs / 4).max(1)
    }

    /// Number of document records stored since the checkpoint.
    pub(super) fn overlay_len(&self) -> usize {
        self.overlay_len
    }

    /// Stores `snapshot` (bytes received from the relay) as the next checkpoint.
    pub(super) fn set_pending(&mut self, snapshot: Vec<u8>) {
        self.pending = Some(snapshot);
    }

    /// Makes the next batch a checkpoint of the whole state. Snapshot bytes
    /// received earlier no longer stand for it (a reset to another snapshot
    /// came after them): they are dropped, not stored.
    pub(super) fn force(&mut self) {
        self.forced = true;
        self.pending = None;
    }

    fn insert(&mut self, collection: &str, id: &str) {
        if DirtyIds::mark(&mut self.overlay, collection, id) {
            self.overlay_len += 1;
        }
    }

    fn remove(&mut self, collection: &str, id: &str) -> bool {
        let Some(ids) = self.overlay.get_mut(collection) else {
            return false;
        };
        let removed = ids.remove(id);
        if removed {
            self.overlay_len -= 1;
            if ids.is_empty() {
                self.overlay.remove(collection);
            }
        }
        removed
    }
}

impl Replica {
    /// Asks for the next persist batch to be a checkpoint, whatever the
    /// policy says (for tests and benchmarks; the replica checkpoints by
    /// itself when it pays, see the module documentation).
    pub fn checkpoint(&mut self) {
        self.checkpoints.force();
        self.dirty.meta = true;
    }

    /// Number of document records stored since the last checkpoint (or
    /// all of them, in a store without one): what reopening decodes besides
    /// the checkpoint.
    pub fn records_since_checkpoint(&self) -> usize {
        self.checkpoints.overlay_len()
    }

    /// Whether the persist batch being taken, which rewrites `docs`, is a
    /// checkpoint.
    pub(super) fn checkpoint_due(
        &self,
        docs: &BTreeMap<String, DirtyIds>,
        catching_up: bool,
    ) -> bool {
        let dirty: usize = docs.values().map(DirtyIds::len).sum();
        let total: usize = self.state.collections.values().map(|c| c.docs.len()).sum();
        self.checkpoints.due(dirty, total, catching_up)
    }

    /// Adds the document writes of a persist batch to `batch`: the records
    /// of the dirty documents, or (when `due`) a checkpoint with the
    /// deletion of every record it supersedes.
    pub(super) fn persist_documents(
        &mut self,
        batch: &mut PersistBatch,
        docs: BTreeMap<String, DirtyIds>,
        due: bool,
    ) {
        let mut superseded = None;
        if due {
            let snapshot = match self.checkpoints.pending.take() {
                Some(received) => Some(received),
                None => {
                    batch.writes.push(Write::Put {
                        key: StoreKey::Checkpoint,
                        value: encode_checkpoint(self.encode_snapshot()),
                    });
                    None
                }
            };
            self.checkpoints.forced = false;
            self.checkpoints.stored = true;
            let old = std::mem::take(&mut self.checkpoints.overlay);
            self.checkpoints.overlay_len = 0;
            let Some(snapshot) = snapshot else {
                // The checkpoint holds the whole state: the dirty
                // documents too. Every record before it goes.
                push_deletes(batch, old);
                return;
            };
            batch.writes.push(Write::Put {
                key: StoreKey::Checkpoint,
                value: encode_checkpoint(snapshot),
            });
            superseded = Some(old);
        }
        let stored = self.checkpoints.stored;
        for (collection, ids) in docs {
            let state = self.state.collections.get(&collection).map(|c| &c.docs);
            for id in ids {
                if let Some(old) = superseded.as_mut() {
                    // Rewritten below: not to delete.
                    if let Some(old_ids) = old.get_mut(&collection) {
                        old_ids.remove(&id);
                    }
                }
                let value = state.and_then(|docs| docs.get(&id)).map(|doc| {
                    // At most about 48 bytes a field: name, stamp and a short
                    // value (much less when the stamp is left out).
                    let capacity = 32 + 48 * doc.fields.len();
                    crate::persist::encode_record_sized(
                        &crate::persist::DocRecordRef::new(doc, &self.state.names),
                        capacity,
                    )
                });
                let key = |id| StoreKey::Document {
                    collection: collection.clone(),
                    id,
                };
                let write = match value {
                    Some(value) => {
                        self.checkpoints.insert(&collection, &id);
                        Write::Put {
                            key: key(id),
                            value,
                        }
                    }
                    // The checkpoint may hold the document: say it is gone.
                    None if stored => {
                        self.checkpoints.insert(&collection, &id);
                        Write::Put {
                            key: key(id),
                            value: ABSENT_DOCUMENT.to_vec(),
                        }
                    }
                    None => {
                        self.checkpoints.remove(&collection, &id);
                        Write::Delete { key: key(id) }
                    }
                };
                batch.writes.push(write);
            }
        }
        if let Some(old) = superseded {
            push_deletes(batch, old);
        }
    }
}

/// Deletes every document record named in `overlay`.
fn push_deletes(batch: &mut PersistBatch, overlay: BTreeMap<String, DirtyIds>) {
    for (collection, ids) in overlay {
        for id in ids {
            batch.writes.push(Write::Delete {
                key: StoreKey::Document {
                    collection: collection.clone(),
                    id,
                },
            });
        }
    }
}
