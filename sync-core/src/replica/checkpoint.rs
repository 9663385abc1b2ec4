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
//!
//! **Sliced**: under a session, whose host hands its thread back between
//! slices, a checkpoint the policy asks for when the records it supersedes
//! are mostly stored already (the batch's own documents would not have
//! made it due: the end of a catch-up) is encoded a slice of documents at
//! a time ([`Replica::checkpoint_step`]): the batch that asked for it is
//! written as document records, which keep everything durable meanwhile,
//! and the encoded bytes become the next batch's checkpoint, as received
//! snapshot bytes do. A checkpoint holds the state of one moment: should
//! any document or collection change before the last slice, the encoding
//! is dropped (its checkpoint would otherwise delete the records written
//! since it began, which are newer than its copy), and the next checkpoint
//! is encoded whole, so a state that never stops changing still gets one.

use std::collections::BTreeMap;

use super::{DirtyIds, Replica, ReplicaConfig};
use crate::hlc::Hlc;
use crate::persist::{ABSENT_DOCUMENT, PersistBatch, StoreKey, Write, encode_checkpoint};
use crate::snapshot::SnapshotEncoder;

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
    /// A checkpoint being encoded a slice at a time, of a state unchanged
    /// since it began.
    encoding: Option<Box<SnapshotEncoder>>,
    /// The last sliced encoding was dropped: the next checkpoint is encoded whole.
    whole_next: bool,
    /// [`crate::ReplicaConfig::checkpoint_min_records`].
    min_records: usize,
    /// [`crate::ReplicaConfig::sliced_checkpoints`].
    sliced: bool,
}

impl Checkpoints {
    /// No checkpoint stored, no record.
    pub(super) fn new(config: ReplicaConfig) -> Self {
        Checkpoints {
            min_records: config.checkpoint_min_records,
            sliced: config.sliced_checkpoints,
            ..Checkpoints::default()
        }
    }

    /// What a loader found: whether a checkpoint, and which document records.
    pub(super) fn restored(
        config: ReplicaConfig,
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
            encoding: None,
            whole_next: false,
            min_records: config.checkpoint_min_records,
            sliced: config.sliced_checkpoints,
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
        if catching_up || self.encoding.is_some() {
            return false;
        }
        self.overlay_len.saturating_add(dirty_docs) >= self.threshold(total_docs)
    }

    /// Records since the checkpoint that make the next one due.
    fn threshold(&self, total_docs: usize) -> usize {
        self.min_records.max(total_docs / 4).max(1)
    }

    /// Whether a checkpoint due with a batch of `dirty_docs` documents is
    /// encoded in slices: when slicing is on and the batch's own documents
    /// would not have made it due (the records it supersedes are mostly
    /// stored already, as at the end of a catch-up). A batch that rewrites
    /// much of the state (a large transaction) is cheaper stored as the
    /// checkpoint than as records and a checkpoint after them.
    fn slices(&self, dirty_docs: usize, total_docs: usize) -> bool {
        self.sliced
            && self.pending.is_none()
            && !self.forced
            && !self.whole_next
            && dirty_docs < self.threshold(total_docs)
    }

    /// Number of document records stored since the checkpoint.
    pub(super) fn overlay_len(&self) -> usize {
        self.overlay_len
    }

    /// Stores `snapshot` (bytes received from the relay) as the next checkpoint.
    pub(super) fn set_pending(&mut self, snapshot: Vec<u8>) {
        self.encoding = None;
        self.pending = Some(snapshot);
    }

    /// Drops the checkpoint being encoded in slices: the state changed
    /// under it. The next one is encoded whole.
    fn abandon(&mut self) {
        if self.encoding.take().is_some() {
            self.whole_next = true;
        }
    }

    /// Makes the next batch a checkpoint of the whole state. Snapshot bytes
    /// received earlier no longer stand for it (a reset to another snapshot
    /// came after them): they are dropped, not stored.
    pub(super) fn force(&mut self) {
        self.forced = true;
        self.pending = None;
        self.encoding = None;
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
        let (dirty, total) = self.checkpoint_counts(docs);
        self.checkpoints.due(dirty, total, catching_up)
    }

    /// The documents a batch writes, and the documents of the state: what
    /// the policy weighs.
    fn checkpoint_counts(&self, docs: &BTreeMap<String, DirtyIds>) -> (usize, usize) {
        let dirty = docs.values().map(DirtyIds::len).sum();
        let total = self.state.collections.values().map(|c| c.docs.len()).sum();
        (dirty, total)
    }

    /// Whether a checkpoint is being encoded in slices (see [`Replica::checkpoint_step`]).
    pub fn is_checkpointing(&self) -> bool {
        self.checkpoints.encoding.is_some()
    }

    /// Encodes up to `max_docs` more documents of the checkpoint being
    /// encoded in slices; once the last is, the next persist batch stores
    /// it. Returns whether slices are left. Drops the encoding instead when
    /// the state changed since it began (see the module documentation).
    pub fn checkpoint_step(&mut self, max_docs: usize) -> bool {
        self.check_checkpointing();
        let Some(encoder) = self.checkpoints.encoding.as_mut() else {
            return false;
        };
        if !encoder.step(&self.state, max_docs) {
            return true;
        }
        if let Some(encoder) = self.checkpoints.encoding.take() {
            // As `encode_snapshot` would now: the state is the one it began with.
            let bytes = encoder.finish(&self.state, &self.version, self.clock.last(), Hlc::ZERO);
            self.checkpoints.pending = Some(bytes);
            self.dirty.meta = true;
        }
        false
    }

    /// Drops a checkpoint being encoded in slices if the state changed
    /// since it began; called before a persist batch takes the changes.
    pub(super) fn check_checkpointing(&mut self) {
        if self.dirty.changes_state() {
            self.checkpoints.abandon();
        }
    }

    /// Adds the document writes of a persist batch to `batch`: the records
    /// of the dirty documents, or (when `due`) a checkpoint with the
    /// deletion of every record it supersedes. When sliced, a checkpoint
    /// to encode starts a sliced encoding instead, and this batch writes
    /// records.
    pub(super) fn persist_documents(
        &mut self,
        batch: &mut PersistBatch,
        docs: BTreeMap<String, DirtyIds>,
        due: bool,
    ) {
        let mut superseded = None;
        let sliced = due && {
            let (dirty, total) = self.checkpoint_counts(&docs);
            self.checkpoints.slices(dirty, total)
        };
        if sliced {
            self.checkpoints.encoding = Some(Box::new(SnapshotEncoder::new(&self.state)));
        } else if due {
            self.checkpoints.whole_next = false;
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
