//! The replica: local writes, remote operations, the outbox, and the
//! persistence and event queues a host drains.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::ops::Range;

use crate::event::{Event, Origin};
use crate::hlc::{Clock, ClockError, DEFAULT_MAX_DRIFT_MS, Hlc};
use crate::op::{Change, ChangeRef, InvalidOp, Op, OpId, OpRef};
use crate::persist::{
    CollectionRecord, MetaRecordRef, PersistBatch, RecordError, StoreKey, Write, decode_record,
    encode_record, encode_record_into, push_op_record,
};
use crate::revision::{IdHasher, Revision};
use crate::snapshot::Snapshot;
use crate::stamp::ReplicaId;
use crate::state::{DocChange, Document, DocumentRef, Documents, Effect, State};
use crate::timestamp::Timestamp;
use crate::value::{Value, ValueRef};
use crate::version::VersionVector;

mod checkpoint;
mod restore;
pub use restore::ReplicaLoader;

/// Settings of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaConfig {
    /// Remote stamps further ahead of the local wall clock than this are refused.
    pub max_drift_ms: u64,
    /// Fewest document records stored since the last checkpoint that make
    /// the next persist batch a checkpoint (it also takes a quarter of all
    /// documents; see `replica/checkpoint.rs`). Default 1024.
    pub checkpoint_min_records: usize,
    /// Whether a checkpoint is encoded a slice of documents at a time
    /// rather than in one piece (see `replica/checkpoint.rs`): the caller
    /// then calls [`Replica::checkpoint_step`] while
    /// [`Replica::is_checkpointing`]. A session does when its host drives
    /// [`crate::session::Session::apply_slice`]. Default `false`.
    pub sliced_checkpoints: bool,
}

crate::setters::with_setters!(ReplicaConfig {
    with_max_drift_ms => max_drift_ms: u64,
    with_checkpoint_min_records => checkpoint_min_records: usize,
    with_sliced_checkpoints => sliced_checkpoints: bool,
});

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            max_drift_ms: DEFAULT_MAX_DRIFT_MS,
            checkpoint_min_records: 1024,
            sliced_checkpoints: false,
        }
    }
}

/// A local write was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A conditional write found the document at another revision.
    #[error(
        "document {collection}/{id} is at revision {}, not the expected {}; read it again and retry",
        display_revision(.actual), display_revision(.expected)
    )]
    RevisionMismatch {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The revision the caller expected (`None`: "does not exist").
        expected: Option<Revision>,
        /// The revision the document has (`None`: it does not exist).
        actual: Option<Revision>,
    },
    /// The write breaks the data model's rules (names, sizes, nesting).
    #[error(transparent)]
    Invalid(#[from] InvalidOp),
    /// The clock could not produce a stamp.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// The write was stamped at or before a tombstone already merged, so it
    /// was dropped: the replica's clock is behind data it holds.
    #[error(
        "write to {collection}/{id} was stamped before a delete already merged; the clock is behind"
    )]
    Superseded {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// An earlier write could not be stored, so this replica's memory is
    /// ahead of its store: reopen the database (it reloads what is stored).
    #[error("the local store failed ({message}); reopen the database")]
    StoreFailed {
        /// The store's error.
        message: String,
    },
}

fn display_revision(revision: &Option<Revision>) -> String {
    revision.map_or_else(|| "absent".to_owned(), |r| r.to_string())
}

/// A remote operation or snapshot was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The operation breaks the data model's rules: the peer misbehaved.
    #[error("peer sent an invalid operation {op:?}: {reason}")]
    Invalid {
        /// Which operation.
        op: OpId,
        /// What is wrong with it.
        reason: InvalidOp,
    },
    /// The operation's stamp is too far ahead of the local clock.
    #[error(transparent)]
    Clock(#[from] ClockError),
}

/// Whether a remote operation was new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It was new and has been merged.
    New,
    /// It had been applied before; nothing changed.
    Duplicate,
}

/// The persisted records could not be turned back into a replica.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A record does not decode.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Records exist but the replica's own bookkeeping record does not.
    #[error("the store holds replica data but no metadata record; it is incomplete")]
    MissingMeta,
    /// The records contradict each other.
    #[error("the stored replica is inconsistent: {0}")]
    Inconsistent(String),
}

/// What changed since the last persist batch was taken.
#[derive(Debug)]
struct Dirty {
    /// This batch's generation, never zero: a document a local put marked
    /// with it (`state::DirtyMark`) is in `docs` already, so the put skips
    /// the set. Every new `Dirty` after a batch is taken gets the next one.
    generation: u32,
    meta: bool,
    collections: BTreeSet<String>,
    /// Documents by collection: a write looks up its collection, then its
    /// id, and allocates a key only the first time a document turns dirty.
    docs: BTreeMap<String, DirtyIds>,
    /// Acknowledged operations whose outbox records were written, to
    /// remove: runs of sequence numbers, first and last included, each
    /// stored as one range delete. (Operations to write need no entry:
    /// they are the outbox's tail above `Replica::outbox_stored_through`.)
    outbox_removed: Vec<(u64, u64)>,
}

impl Dirty {
    /// Marks the stored records of operations `first..=last` for removal,
    /// extending the last run when this one continues it.
    fn remove_outbox(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        match self.outbox_removed.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(first) => *end = last,
            _ => self.outbox_removed.push((first, last)),
        }
    }

    /// Whether a document or collection changed since the last batch.
    fn changes_state(&self) -> bool {
        !self.docs.is_empty() || !self.collections.is_empty()
    }
}

/// Ids of documents to rewrite in one collection.
///
/// Hashed while there are few, because every write marks its document and
/// a tree of ids costs a string comparison per level. The core draws no
/// randomness, so the hash has no secret key, and ids a peer chose to
/// collide cost a probe per colliding id already in the set. Past
/// [`DirtyIds::MAX_HASHED`] ids (a snapshot reset marks every document) the
/// ids move to an ordered set, so colliding ids cost at most
/// `MAX_HASHED² / 2` probes per batch, whatever a peer sends. The order only
/// decides the order of writes inside one batch, which does not matter.
///
/// The first id has a slot of its own, and the sets a box: most batches (a
/// durable put is taken after every write) rewrite one document per
/// collection, and a set would allocate and hash for it, then free its
/// table, every batch. Boxed, the sets keep this small, so that a
/// collection's entry in `Dirty::docs` does too (a larger one makes the
/// tree's nodes outgrow the allocator's fast path).
#[derive(Debug, Default)]
struct DirtyIds {
    /// The first id added; `None` only while `more` is too.
    first: Option<String>,
    /// The ids after the first.
    more: Option<Box<MoreIds>>,
}

/// [`DirtyIds`] past the first.
#[derive(Debug, Default)]
struct MoreIds {
    hashed: HashSet<String, BuildHasherDefault<IdHasher>>,
    ordered: BTreeSet<String>,
}

impl DirtyIds {
    /// Most ids kept in the hashed set.
    const MAX_HASHED: usize = 1024;

    /// Number of ids.
    fn len(&self) -> usize {
        let more = self
            .more
            .as_ref()
            .map_or(0, |more| more.hashed.len() + more.ordered.len());
        usize::from(self.first.is_some()) + more
    }

    /// Adds `id`; whether it was new.
    fn insert(&mut self, id: &str) -> bool {
        match &self.first {
            None => {
                self.first = Some(id.to_owned());
                true
            }
            Some(first) if first == id => false,
            Some(_) => self.more.get_or_insert_with(Box::default).insert(id),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Removes `id`; whether it was there. Another id takes the first
    /// slot when it empties, so `first` is `None` only while `more` is too.
    fn remove(&mut self, id: &str) -> bool {
        let removed = if self.first.as_deref() == Some(id) {
            self.first = self.more.as_mut().and_then(|more| more.pop());
            true
        } else {
            self.more.as_mut().is_some_and(|more| more.remove(id))
        };
        if self.more.as_ref().is_some_and(|more| more.is_empty()) {
            self.more = None;
        }
        removed
    }

    /// Adds `id` to `collection`'s ids in `by_collection`; whether it was new.
    fn mark(by_collection: &mut BTreeMap<String, DirtyIds>, collection: &str, id: &str) -> bool {
        match by_collection.get_mut(collection) {
            Some(ids) => ids.insert(id),
            None => {
                let mut ids = DirtyIds::default();
                ids.insert(id);
                by_collection.insert(collection.to_owned(), ids);
                true
            }
        }
    }
}

impl MoreIds {
    /// Adds `id`; whether it was new.
    fn insert(&mut self, id: &str) -> bool {
        if self.ordered.is_empty() {
            if self.hashed.len() < DirtyIds::MAX_HASHED {
                // Look up first: allocate the key only for a new id.
                return !self.hashed.contains(id) && self.hashed.insert(id.to_owned());
            }
            self.ordered.extend(self.hashed.drain());
        }
        !self.ordered.contains(id) && self.ordered.insert(id.to_owned())
    }

    fn is_empty(&self) -> bool {
        self.hashed.is_empty() && self.ordered.is_empty()
    }

    /// Removes `id`; whether it was there.
    fn remove(&mut self, id: &str) -> bool {
        self.hashed.remove(id) || self.ordered.remove(id)
    }

    /// Takes out any one id.
    fn pop(&mut self) -> Option<String> {
        match self.hashed.iter().next().cloned() {
            Some(id) => self.hashed.take(&id),
            None => self.ordered.pop_first(),
        }
    }
}

impl IntoIterator for DirtyIds {
    type Item = String;
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<String>,
        std::iter::Chain<
            std::collections::hash_set::IntoIter<String>,
            std::collections::btree_set::IntoIter<String>,
        >,
    >;

    fn into_iter(self) -> Self::IntoIter {
        // Empty sets allocate nothing.
        let MoreIds { hashed, ordered } = self.more.map(|more| *more).unwrap_or_default();
        self.first
            .into_iter()
            .chain(hashed.into_iter().chain(ordered))
    }
}

impl Default for Dirty {
    fn default() -> Self {
        Dirty {
            generation: 1,
            meta: false,
            collections: BTreeSet::new(),
            docs: BTreeMap::new(),
            outbox_removed: Vec::new(),
        }
    }
}

impl Dirty {
    /// Marks a document's record for rewriting; whether it was not yet.
    fn mark_doc(&mut self, collection: &str, id: &str) -> bool {
        DirtyIds::mark(&mut self.docs, collection, id)
    }
}

/// One replica of a Concord database: the merged state plus everything
/// needed to sync it.
///
/// It does no IO. Writes take the host's wall clock `now` in milliseconds;
/// after any call the host drains [`Replica::take_persist`] (one atomic
/// store write) and [`Replica::poll_event`].
#[derive(Debug)]
pub struct Replica {
    id: ReplicaId,
    clock: Clock,
    next_seq: u64,
    state: State,
    version: VersionVector,
    /// Unacknowledged local operations as their encoded outbox records:
    /// a tenth of the memory of the operations themselves, which would
    /// repeat every value the state already holds.
    outbox: VecDeque<Pending>,
    /// Reused buffer for encoding operations.
    scratch: Vec<u8>,
    /// Reused buffer for a single write ([`Replica::put`] and kin): it goes
    /// through the transaction path, which builds no operation and copies
    /// no name into a string of its own.
    single: TxWrites,
    /// Every operation in the outbox numbered up to this has its record
    /// written; those above it are new since the last persist batch. The
    /// outbox is ordered by sequence number, so this replaces a set of
    /// dirty sequence numbers that every local write would insert into.
    outbox_stored_through: u64,
    dirty: Dirty,
    events: VecDeque<Event>,
    /// A snapshot reset still rewriting records, a slice at a time.
    reset: Option<Box<restore::ResetProgress>>,
    /// The stored checkpoint and the document records written since.
    checkpoints: checkpoint::Checkpoints,
}

impl Replica {
    /// A new, empty replica. The host picks `id` at random once and keeps it.
    pub fn new(id: ReplicaId, config: ReplicaConfig) -> Replica {
        Replica {
            id,
            clock: Clock::new(config.max_drift_ms),
            next_seq: 1,
            state: State::new(),
            version: VersionVector::new(),
            outbox: VecDeque::new(),
            scratch: Vec::new(),
            single: TxWrites::default(),
            outbox_stored_through: 0,
            dirty: Dirty {
                meta: true,
                ..Dirty::default()
            },
            events: VecDeque::new(),
            reset: None,
            checkpoints: checkpoint::Checkpoints::new(config),
        }
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The merged state, for reads.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// A document, if it exists, copied out of the state.
    ///
    /// [`Replica::document`] and [`Replica::get_field`] read without copying.
    pub fn get(&self, collection: &str, id: &str) -> Option<Document> {
        self.state.get(collection, id)
    }

    /// Every document of a collection, ordered by id.
    ///
    /// This copies every document; [`Replica::documents`] reads them in place.
    pub fn list(&self, collection: &str) -> Vec<Document> {
        self.state.list(collection)
    }

    /// A document, borrowed (see [`State::document`]).
    pub fn document<'a>(&'a self, collection: &str, id: &str) -> Option<DocumentRef<'a>> {
        self.state.document(collection, id)
    }

    /// One field of a document, borrowed (see [`State::get_field`]).
    pub fn get_field<'a>(
        &'a self,
        collection: &str,
        id: &str,
        field: &str,
    ) -> Option<ValueRef<'a>> {
        self.state.get_field(collection, id, field)
    }

    /// A collection's existing documents, borrowed, in id order (see
    /// [`State::documents`]).
    pub fn documents<'a>(&'a self, collection: &str) -> Documents<'a> {
        self.state.documents(collection)
    }

    /// A document's revision, `None` when it does not exist.
    pub fn revision(&self, collection: &str, id: &str) -> Option<Revision> {
        self.state.revision(collection, id)
    }

    /// Which operations have been applied here.
    pub fn version(&self) -> &VersionVector {
        &self.version
    }

    /// The latest clock reading made or observed.
    pub fn clock(&self) -> Hlc {
        self.clock.last()
    }

    /// The drift bound remote stamps are checked against.
    pub fn max_drift_ms(&self) -> u64 {
        self.clock.max_drift_ms()
    }

    /// The sequence number the next local operation will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Local operations not yet acknowledged, oldest first.
    ///
    /// The outbox keeps operations encoded, so this decodes each as it
    /// goes; [`Outbox::after`] skips the ones already sent without decoding
    /// them.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox::new(&self.outbox)
    }

    /// Writes fields of a document, creating it if needed.
    ///
    /// Fields not named keep their values (per-field last-writer-wins);
    /// returns the document's new revision.
    pub fn put<K, V>(
        &mut self,
        now: Timestamp,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Revision, WriteError>
    where
        K: AsRef<str>,
        V: Into<Value>,
    {
        let fields = fields.into_iter().map(|(k, v)| (k, Some(v.into())));
        self.write_fields(now, collection, id, fields, Precondition::None)
    }

    /// Like [`Replica::put`], but only if the document is still at `expected`
    /// (`None`: only if it does not exist).
    pub fn put_if<K, V>(
        &mut self,
        now: Timestamp,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
        expected: Option<Revision>,
    ) -> Result<Revision, WriteError>
    where
        K: AsRef<str>,
        V: Into<Value>,
    {
        let fields = fields.into_iter().map(|(k, v)| (k, Some(v.into())));
        self.write_fields(
            now,
            collection,
            id,
            fields,
            Precondition::Revision(expected),
        )
    }

    /// Removes fields of an existing or new document.
    pub fn unset<K: AsRef<str>>(
        &mut self,
        now: Timestamp,
        collection: &str,
        id: &str,
        names: impl IntoIterator<Item = K>,
    ) -> Result<Revision, WriteError> {
        let fields = names.into_iter().map(|n| (n, None));
        self.write_fields(now, collection, id, fields, Precondition::None)
    }

    /// Deletes a document: every field written at or before now is gone.
    pub fn delete(&mut self, now: Timestamp, collection: &str, id: &str) -> Result<(), WriteError> {
        let change = Change::Delete {
            collection: collection.to_owned(),
            id: id.to_owned(),
        };
        self.commit_local(now, change).map(|_| ())
    }

    /// Creates a collection (writing into one creates it too).
    pub fn create_collection(
        &mut self,
        now: Timestamp,
        collection: &str,
    ) -> Result<(), WriteError> {
        self.commit_local(
            now,
            Change::CreateCollection {
                collection: collection.to_owned(),
            },
        )
        .map(|_| ())
    }

    /// Drops a collection and everything written to it at or before now.
    pub fn drop_collection(&mut self, now: Timestamp, collection: &str) -> Result<(), WriteError> {
        self.commit_local(
            now,
            Change::DropCollection {
                collection: collection.to_owned(),
            },
        )
        .map(|_| ())
    }

    /// One put: buffered, checked and committed as a transaction of one
    /// write, which encodes, applies and queues it without building an
    /// operation (no string per name, no vector of fields).
    fn write_fields<K: AsRef<str>>(
        &mut self,
        now: Timestamp,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, Option<Value>)>,
        precondition: Precondition,
    ) -> Result<Revision, WriteError> {
        if let Precondition::Revision(expected) = precondition {
            let actual = self.state.revision(collection, id);
            if actual != expected {
                return Err(WriteError::RevisionMismatch {
                    collection: collection.to_owned(),
                    id: id.to_owned(),
                    expected,
                    actual,
                });
            }
        }
        let mut single = std::mem::take(&mut self.single);
        single.clear();
        let result = single
            .push(TxKind::Put, collection, id, fields)
            .and_then(|()| self.commit_transaction(now, &mut single));
        self.single = single;
        // The clock orders every local stamp after everything merged, so a
        // put always lands; `Superseded` would mean that invariant broke.
        match result? {
            DocChange::Changed(Some(revision)) => Ok(revision),
            _ => Err(WriteError::Superseded {
                collection: collection.to_owned(),
                id: id.to_owned(),
            }),
        }
    }

    /// Validates, stamps, applies and queues one local change. Returns the
    /// revision of the document it changed, if it changed one that exists.
    fn commit_local(
        &mut self,
        now: Timestamp,
        change: Change,
    ) -> Result<Option<Revision>, WriteError> {
        // Validate before ticking, so a refused write leaves the clock alone.
        let change = validate_local(self.id, change)?;
        let hlc = self.clock.tick(now)?;
        let revision = self.push_local(hlc, change);
        self.dirty.meta = true;
        Ok(revision)
    }

    /// Numbers, applies and queues one validated local change stamped `hlc`.
    /// Returns the revision of the document it changed, if it exists.
    fn push_local(&mut self, hlc: Hlc, change: Change) -> Option<Revision> {
        let op = Op {
            id: OpId {
                replica: self.id,
                seq: self.next_seq,
            },
            hlc,
            change,
        };
        self.next_seq += 1;
        let id = op.id;
        // Encoded into the reused buffer and copied out at its exact size.
        // Encoding into a vector cannot fail; were it to, the record would
        // be empty and the outbox would skip it.
        let scratch = std::mem::take(&mut self.scratch);
        let scratch = encode_record_into(&op, scratch);
        let mut run = Vec::with_capacity(RUN_LENGTH_BYTES + scratch.len());
        push_run_record(&mut run, &scratch);
        self.push_run(id.seq, 1, run);
        self.scratch = scratch;
        let effect = self.state.apply_owned(op);
        let revision = match &effect {
            Effect::Document { revision, .. } => *revision,
            _ => None,
        };
        self.version.insert(id);
        self.record_effect(effect, Origin::Local);
        revision
    }

    /// Runs `build` to collect many writes, then applies them as one unit.
    ///
    /// The writes are stamped in the order they were made, one clock tick
    /// each, and the state and outbox end up exactly as if they had been
    /// made one by one, but each document and collection changed is announced
    /// once (in the order of first change); and they are all-or-nothing: if `build`
    /// returns an error (a write it made was refused, or its own), or the
    /// clock cannot stamp them all, nothing changes. Every change lands in
    /// the next [`Replica::take_persist`] batch together, so a store makes
    /// the whole transaction durable at once.
    ///
    /// Inside `build`, reads and the conditions of [`Transaction::put_if`]
    /// see the state as it was before the transaction: its own writes are
    /// applied only when `build` returns.
    ///
    /// ```
    /// use sync_core::{Timestamp, Replica, ReplicaConfig, ReplicaId, Value, WriteError};
    ///
    /// let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
    /// replica.transaction(Timestamp::from_unix_ms(1_000), |tx| {
    ///     tx.put("lists", "groceries", [("title", Value::from("Groceries"))])?;
    ///     tx.put("todos", "milk", [("list", Value::from("groceries")), ("done", false.into())])?;
    ///     tx.delete("todos", "old")?;
    ///     Ok::<_, WriteError>(())
    /// })?;
    /// assert_eq!(replica.outbox().len(), 3);
    /// let batch = replica.take_persist().expect("one batch for the whole transaction");
    ///
    /// // A refused write in the middle leaves everything as it was.
    /// let refused = replica.transaction(Timestamp::from_unix_ms(1_001), |tx| {
    ///     tx.put("todos", "bread", [("done", false)])?;
    ///     tx.put("todos", "", [("done", false)])?; // an empty id is invalid
    ///     Ok::<_, WriteError>(())
    /// });
    /// assert!(refused.is_err());
    /// assert!(replica.document("todos", "bread").is_none());
    /// assert!(replica.take_persist().is_none());
    /// # let _ = batch;
    /// # Ok::<(), WriteError>(())
    /// ```
    pub fn transaction<T, E>(
        &mut self,
        now: Timestamp,
        build: impl FnOnce(&mut Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<WriteError>,
    {
        let mut tx = Transaction {
            state: &self.state,
            writes: TxWrites::default(),
        };
        let output = build(&mut tx)?;
        let mut writes = tx.writes;
        self.commit_transaction(now, &mut writes)?;
        Ok(output)
    }

    /// Stamps every write first (so a clock that runs out changes
    /// nothing), then encodes, applies and queues them in order, straight
    /// from the transaction's buffer: no operation is built, and each
    /// document changed is announced once. Returns what the last write did
    /// to its document: with its revision for a single write, without
    /// (`Changed(None)`) for more, whose callers report none.
    fn commit_transaction(
        &mut self,
        now: Timestamp,
        tx: &mut TxWrites,
    ) -> Result<DocChange, WriteError> {
        if tx.writes.is_empty() {
            return Ok(DocChange::Unchanged);
        }
        let saved = self.clock.clone();
        // The buffer of a reused `TxWrites` (single writes): no allocation.
        let mut hlcs = std::mem::take(&mut tx.hlcs);
        hlcs.clear();
        hlcs.reserve(tx.writes.len());
        for _ in 0..tx.writes.len() {
            match self.clock.tick(now) {
                Ok(hlc) => hlcs.push(hlc),
                Err(e) => {
                    self.clock = saved;
                    return Err(e.into());
                }
            }
        }
        // With no document dirty before, a document first changed by the
        // transaction is one it newly marks dirty: no second set needed. A
        // single put or delete announces its document whatever was dirty
        // before, without the set.
        let single = tx.writes.len() == 1;
        let single_doc = single && matches!(tx.writes[0].kind, TxKind::Put | TxKind::Delete);
        let mut announced =
            (!single_doc && !self.dirty.docs.is_empty()).then(BTreeMap::<String, DirtyIds>::new);
        let mut last = DocChange::Unchanged;
        let mut announced_collections = BTreeSet::new();
        // The transaction's outbox records, one run: one allocation for the
        // whole transaction instead of one per write.
        let mut run: Vec<u8> = Vec::new();
        let mut scratch = std::mem::take(&mut self.scratch);
        let first_seq = self.next_seq;
        let mut run_first = first_seq;
        let mut run_len = 0;
        let text = tx.text.as_str();
        for (write, &hlc) in tx.writes.iter().zip(&hlcs) {
            let id = OpId {
                replica: self.id,
                seq: self.next_seq,
            };
            self.next_seq += 1;
            let stamp = crate::stamp::Stamp::new(hlc, self.id);
            let collection = &text[write.collection.clone()];
            let doc_id = &text[write.id.clone()];
            let fields = &mut tx.fields[write.fields.clone()];
            // Whether the write's document is known to be dirty already.
            let mut marked = false;
            let change = match write.kind {
                TxKind::Put => ChangeRef::Put {
                    collection,
                    id: doc_id,
                    fields: TxFieldsRef { text, fields },
                },
                TxKind::Delete => ChangeRef::Delete {
                    collection,
                    id: doc_id,
                },
                TxKind::CreateCollection => ChangeRef::CreateCollection { collection },
                TxKind::DropCollection => ChangeRef::DropCollection { collection },
            };
            // A run's first record is encoded into the scratch buffer, to
            // size the run from it; the rest in place, after their length.
            let first = run_len == 0;
            let out = if first { &mut scratch } else { &mut run };
            if first {
                out.clear();
            }
            let start = out.len();
            out.extend_from_slice(&[0; RUN_LENGTH_BYTES]);
            push_op_record(out, &OpRef { id, hlc, change });
            // Records are far below 4 GiB (see `push_run`); were one not,
            // it is left out, as an empty one.
            let len = u32::try_from(out.len() - start - RUN_LENGTH_BYTES).unwrap_or(0);
            out.truncate(start + RUN_LENGTH_BYTES + len as usize);
            out[start..start + RUN_LENGTH_BYTES].copy_from_slice(&len.to_le_bytes());
            if first {
                // Exact for a single write, and about right for a
                // transaction of similar writes. (Capped: a large first
                // value must not reserve for all.)
                let writes_left =
                    tx.writes.len() - usize::try_from(id.seq - run_first).unwrap_or(0);
                let estimate = scratch.len().saturating_mul(writes_left);
                run.reserve_exact(estimate.min(16 << 20).max(scratch.len()));
                run.extend_from_slice(&scratch);
            } else if run.len() as u64 > MAX_RUN_BYTES {
                // In u64: on 32-bit targets the usize length could not exceed it.
                let record = run.split_off(start);
                self.push_run(run_first, run_len, std::mem::replace(&mut run, record));
                (run_first, run_len) = (id.seq, 0);
            }
            run_len += 1;
            let changed = match write.kind {
                TxKind::Put => {
                    let fields = fields
                        .iter_mut()
                        .map(|field| (&text[field.name.clone()], field.value.take()));
                    let (changed, newly) = self.state.put_marked(
                        collection,
                        doc_id,
                        stamp,
                        fields,
                        self.dirty.generation,
                        // Only a single write reports its revision.
                        single,
                    );
                    marked = !newly;
                    changed
                }
                TxKind::Delete => self.state.delete(collection, doc_id, stamp),
                TxKind::CreateCollection | TxKind::DropCollection => {
                    let effect = if write.kind == TxKind::CreateCollection {
                        self.state.create_collection(collection, stamp)
                    } else {
                        self.state.drop_collection(collection, stamp)
                    };
                    if let Effect::Collection {
                        collection,
                        documents,
                    } = effect
                    {
                        for id in &documents {
                            self.tx_doc_changed(&mut announced, &collection, id, false);
                        }
                        if announced_collections.insert(collection.clone()) {
                            self.events.push_back(Event::CollectionChanged {
                                collection: collection.clone(),
                                origin: Origin::Local,
                            });
                        }
                        self.dirty.collections.insert(collection);
                    }
                    DocChange::Unchanged
                }
            };
            if changed != DocChange::Unchanged {
                if single {
                    if !marked {
                        self.dirty.mark_doc(collection, doc_id);
                    }
                    self.events.push_back(Event::DocumentChanged {
                        collection: collection.to_owned(),
                        id: doc_id.to_owned(),
                        origin: Origin::Local,
                    });
                } else {
                    self.tx_doc_changed(&mut announced, collection, doc_id, marked);
                }
            }
            last = changed;
        }
        self.push_run(run_first, run_len, run);
        self.scratch = scratch;
        // Nothing above reads the version: the writes are recorded at once.
        self.version
            .insert_run(self.id, first_seq..=self.next_seq - 1);
        tx.hlcs = hlcs;
        self.dirty.meta = true;
        Ok(last)
    }

    /// Queues a run of `len` outbox records numbered from `first_seq` (see
    /// [`Pending`]); nothing for an empty run.
    fn push_run(&mut self, first_seq: u64, len: u32, run: Vec<u8>) {
        if len == 0 {
            return;
        }
        self.outbox.push_back(Pending {
            seq: first_seq,
            before: self.outbox.back().map_or(0, Pending::end),
            len,
            start: 0,
            bytes: run.into_boxed_slice(),
        });
    }

    /// Marks a document a transaction changed for rewriting, and announces
    /// it unless `announced` shows it was already.
    /// `announced` is `None` when no document was dirty before the
    /// transaction: then those it newly marks dirty are those it changes
    /// first. `marked`: the document is known to be dirty already.
    #[inline]
    fn tx_doc_changed(
        &mut self,
        announced: &mut Option<BTreeMap<String, DirtyIds>>,
        collection: &str,
        id: &str,
        marked: bool,
    ) {
        let newly_dirty = !marked && self.dirty.mark_doc(collection, id);
        let new = match announced {
            None => newly_dirty,
            Some(announced) => match announced.get_mut(collection) {
                Some(ids) => ids.insert(id),
                None => announced
                    .entry(collection.to_owned())
                    .or_default()
                    .insert(id),
            },
        };
        if new {
            self.events.push_back(Event::DocumentChanged {
                collection: collection.to_owned(),
                id: id.to_owned(),
                origin: Origin::Local,
            });
        }
    }

    /// Merges an operation received from elsewhere.
    ///
    /// Idempotent: an operation applied before is reported as a duplicate
    /// and changes nothing. An invalid operation, or one stamped further in
    /// the future than the drift bound allows, is refused and changes nothing.
    pub fn apply(&mut self, now: Timestamp, op: &Op) -> Result<Applied, ApplyError> {
        if !self.admit(now, op)? {
            return Ok(Applied::Duplicate);
        }
        let effect = self.state.apply(op);
        self.record_remote(op.id, effect);
        Ok(Applied::New)
    }

    /// Like [`Replica::apply`], but moves the operation's values into the
    /// state instead of copying them: the fast path for received batches.
    pub fn apply_owned(&mut self, now: Timestamp, op: Op) -> Result<Applied, ApplyError> {
        if !self.admit(now, &op)? {
            return Ok(Applied::Duplicate);
        }
        let id = op.id;
        let effect = self.state.apply_owned(op);
        self.record_remote(id, effect);
        Ok(Applied::New)
    }

    /// Checks a remote stamp against the drift bound, changing nothing.
    pub fn check_drift(&self, hlc: Hlc, now: Timestamp) -> Result<(), ClockError> {
        self.clock.check_drift(hlc, now)
    }

    /// Validates a remote operation and observes its clock; `false` for a duplicate.
    fn admit(&mut self, now: Timestamp, op: &Op) -> Result<bool, ApplyError> {
        op.validate()
            .map_err(|reason| ApplyError::Invalid { op: op.id, reason })?;
        if self.version.contains(op.id) {
            return Ok(false);
        }
        self.clock.observe(op.hlc, now)?;
        Ok(true)
    }

    fn record_remote(&mut self, id: OpId, effect: Effect) {
        self.version.insert(id);
        if id.replica == self.id {
            // Our own operation coming back (say, after restoring an older
            // backup): never hand out its sequence number again.
            if let Some(next) = id.seq.checked_add(1) {
                self.next_seq = self.next_seq.max(next);
            }
        }
        self.record_effect(effect, Origin::Remote);
        self.dirty.meta = true;
    }

    /// Drops acknowledged operations, those numbered up to `through_seq`,
    /// from the outbox. Returns how many were dropped.
    pub fn acknowledge(&mut self, through_seq: u64) -> usize {
        let mut dropped = 0;
        while let Some(front) = self.outbox.front_mut() {
            if front.seq > through_seq {
                break;
            }
            let n = (through_seq - front.seq + 1).min(u64::from(front.len));
            // An op written and acknowledged before any persist needs no record at all.
            let stored = self.outbox_stored_through.min(front.seq + n - 1);
            self.dirty.remove_outbox(front.seq, stored);
            dropped += usize::try_from(n).unwrap_or(usize::MAX);
            match u32::try_from(n) {
                Ok(n) if n < front.len => {
                    front.drop_front(n);
                    break;
                }
                _ => {
                    self.outbox.pop_front();
                }
            }
        }
        dropped
    }

    /// Continues this replica under a new id: for a database whose files
    /// were copied (a restored backup, a copied data directory), so that
    /// the copy and the original never write under one id.
    ///
    /// Two replicas writing under one id would number different operations
    /// alike, and every peer would keep whichever arrived first and drop
    /// the other as already seen. After `fork`, new writes are numbered
    /// from 1 under `new_id`. The operations still waiting in the outbox
    /// were the original's too (it may push them as well, or may be gone):
    /// each is queued again under `new_id`, with its original clock value,
    /// so the copy delivers them without letting them win over anything
    /// written later. Where both versions arrive, they hold the same values
    /// at the same clock value, so peers converge on them either way.
    ///
    /// The state, clock and version vector are kept; the next
    /// [`Replica::take_persist`] batch rewrites the outbox and the replica
    /// record, and must be stored before the new id is used anywhere.
    ///
    /// ```
    /// use sync_core::{Timestamp, Replica, ReplicaConfig, ReplicaId, Value, store::{MemoryStore, Store}};
    ///
    /// let mut original = Replica::new(ReplicaId(1), ReplicaConfig::default());
    /// original.put(Timestamp::from_unix_ms(1_000), "todos", "milk", [("title", Value::from("Buy milk"))])?;
    /// let mut disk = MemoryStore::new();
    /// disk.write(&original.take_persist().expect("a write"))?;
    ///
    /// // A backup of the disk is restored elsewhere: it must not go on as replica 1.
    /// let mut copy = Replica::restore(ReplicaConfig::default(), disk.read_all()?)?.expect("stored");
    /// copy.fork(ReplicaId(2));
    /// let pending = copy.outbox().next().expect("the unsent write, queued again");
    /// assert_eq!(pending.id.replica, ReplicaId(2));
    /// assert_eq!(pending.hlc, original.outbox().next().expect("queued").hlc);
    /// assert_eq!(copy.get("todos", "milk").unwrap().fields, original.get("todos", "milk").unwrap().fields);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fork(&mut self, new_id: ReplicaId) {
        if new_id == self.id {
            return;
        }
        let pending: Vec<Op> = self.outbox.iter().flat_map(Pending::ops).collect();
        for old in std::mem::take(&mut self.outbox) {
            let stored = self.outbox_stored_through.min(old.last_seq());
            self.dirty.remove_outbox(old.seq, stored);
        }
        self.id = new_id;
        self.next_seq = 1;
        self.outbox_stored_through = 0;
        self.dirty.meta = true;
        for op in pending {
            self.push_local(op.hlc, op.change);
        }
    }

    /// Merges a snapshot (for example from the relay after compaction).
    ///
    /// Local writes not in the snapshot survive: merging is the same join as
    /// applying operations.
    pub fn merge_snapshot(
        &mut self,
        now: Timestamp,
        snapshot: &Snapshot,
    ) -> Result<(), ApplyError> {
        // `max_hlc` is the sender's claim: the drift bound applies to the
        // stamps themselves, as it does to operations.
        self.clock.observe(snapshot.newest_hlc(), now)?;
        let other = &snapshot.state;
        for (name, coll) in &other.collections {
            // A drop lists the documents it pruned (some of them now gone):
            // they are announced and rewritten, as when applying the drop.
            for effect in self
                .state
                .merge_collection(name, coll.created, coll.dropped)
            {
                self.record_effect(effect, Origin::Remote);
            }
            for (id, doc) in &coll.docs {
                let effect = self.state.merge_document(name, id, other.doc_parts(doc));
                self.record_effect(effect, Origin::Remote);
            }
        }
        self.version.merge(&snapshot.version);
        // As in `apply`: our own operations may come back in a snapshot
        // (say, after restoring an older backup); never reuse their numbers.
        if let Some(next) = self.version.highest(self.id).checked_add(1) {
            self.next_seq = self.next_seq.max(next);
        }
        self.dirty.meta = true;
        Ok(())
    }

    /// Replaces the state with a snapshot, then re-applies the local
    /// operations still in the outbox (the snapshot cannot hold them yet).
    ///
    /// This is how a client catches up after the relay compacted past its
    /// cursor: the relay's snapshot holds everything the client had received
    /// and acknowledged, and may have collected tombstones the client's state
    /// still needs removed, so merging would be wrong where replacing is right.
    pub fn reset_to_snapshot(
        &mut self,
        now: Timestamp,
        snapshot: Snapshot,
    ) -> Result<(), ApplyError> {
        self.start_reset(now, snapshot)?;
        self.finish_reset();
        Ok(())
    }

    /// Encodes the whole merged state as a checksummed snapshot.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        // A replica collects no tombstones of its own, so its horizon is zero.
        Snapshot::encode(&self.state, &self.version, self.clock.last(), Hlc::ZERO)
    }

    /// Like [`Replica::encode_snapshot`], deflated: about a quarter of the
    /// bytes for several times the encoding time. For a snapshot to store or
    /// send (a backup, a copy for another device).
    pub fn encode_snapshot_compressed(&self) -> Vec<u8> {
        Snapshot::encode_compressed(&self.state, &self.version, self.clock.last(), Hlc::ZERO)
    }

    fn record_effect(&mut self, effect: Effect, origin: Origin) {
        match effect {
            Effect::Unchanged => {}
            Effect::Document { collection, id, .. } => {
                self.dirty.mark_doc(&collection, &id);
                // The effect's strings move into the event: no copies.
                self.events.push_back(Event::DocumentChanged {
                    collection,
                    id,
                    origin,
                });
            }
            Effect::Collection {
                collection,
                documents,
            } => {
                for id in documents {
                    self.dirty.mark_doc(&collection, &id);
                    self.events.push_back(Event::DocumentChanged {
                        collection: collection.clone(),
                        id,
                        origin,
                    });
                }
                self.events.push_back(Event::CollectionChanged {
                    collection: collection.clone(),
                    origin,
                });
                self.dirty.collections.insert(collection);
            }
        }
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Everything changed since the last call, as one batch the store must
    /// write atomically; `None` when nothing changed.
    ///
    /// A local write is durable once its batch is written.
    pub fn take_persist(&mut self) -> Option<PersistBatch> {
        self.take_persist_catching_up(false)
    }

    /// [`Replica::take_persist`] for a session that may be catching up to
    /// the relay's head: while `catching_up`, the checkpoint policy waits
    /// for the head (see the checkpoint module).
    pub(crate) fn take_persist_catching_up(&mut self, catching_up: bool) -> Option<PersistBatch> {
        self.check_checkpointing();
        let dirty = std::mem::take(&mut self.dirty);
        // A new generation, so that no document's mark claims a place in
        // the new, empty set; after 2^32 - 1 batches, every mark is cleared
        // rather than let an old one come round again.
        self.dirty.generation = dirty.generation.checked_add(1).unwrap_or_else(|| {
            self.state.clear_dirty_marks();
            1
        });
        let mut batch = PersistBatch::default();
        let checkpoint = self.checkpoint_due(&dirty.docs, catching_up);
        // A checkpoint is always stored with the metadata it goes with.
        if dirty.meta || checkpoint {
            let meta = MetaRecordRef {
                replica: self.id,
                clock: self.clock.last(),
                next_seq: self.next_seq,
                // Mid-reset, the version from before it (see `start_reset`).
                version: self
                    .reset
                    .as_ref()
                    .map_or(&self.version, |reset| &reset.old_version),
            };
            batch.writes.push(Write::Put {
                key: StoreKey::Meta,
                value: encode_record(&meta),
            });
        }
        for name in dirty.collections {
            let record = self.state.collections.get(&name).map(|c| CollectionRecord {
                created: c.created,
                dropped: c.dropped,
            });
            let key = StoreKey::Collection(name);
            batch.writes.push(match record {
                Some(record) if record.created.is_some() || record.dropped.is_some() => {
                    Write::Put {
                        key,
                        value: encode_record(&record),
                    }
                }
                // Under a checkpoint, which may hold stamps for it.
                Some(record) if self.checkpoints.stored_after(checkpoint) => Write::Put {
                    key,
                    value: encode_record(&record),
                },
                None if self.checkpoints.stored_after(checkpoint) => Write::Put {
                    key,
                    value: encode_record(&CollectionRecord {
                        created: None,
                        dropped: None,
                    }),
                },
                _ => Write::Delete { key },
            });
        }
        self.persist_documents(&mut batch, dirty.docs, checkpoint);
        // Removals are all at or below the stored mark and new records above
        // it, so the writes come out in sequence order (after a fork the new
        // numbering restarts at 1: a removal and a put may share a key, and
        // the put, written later, wins).
        for (first, last) in dirty.outbox_removed {
            batch.writes.push(Write::DeleteRange {
                first: StoreKey::Outbox(first),
                last: StoreKey::Outbox(last),
            });
        }
        let stored = self.outbox_stored_through;
        let new = self
            .outbox
            .partition_point(|pending| pending.last_seq() <= stored);
        for pending in self.outbox.range(new..) {
            batch
                .writes
                .extend(
                    pending
                        .records()
                        .filter(|(seq, _)| *seq > stored)
                        .map(|(seq, record)| Write::Put {
                            key: StoreKey::Outbox(seq),
                            value: record.to_vec(),
                        }),
                );
        }
        if let Some(last) = self.outbox.back() {
            self.outbox_stored_through = stored.max(last.last_seq());
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// Rebuilds a replica from the records its batches wrote.
    ///
    /// Returns `Ok(None)` for an empty store. Records under
    /// [`StoreKey::Extension`] belong to other layers and are skipped.
    pub fn restore<I>(config: ReplicaConfig, records: I) -> Result<Option<Replica>, RestoreError>
    where
        I: IntoIterator<Item = crate::store::Record>,
    {
        let mut loader = ReplicaLoader::new(config);
        loader.feed(records)?;
        loader.finish()
    }
}

/// A run of unacknowledged local operations made together (one
/// transaction, or one write), numbered consecutively, as their outbox
/// records (version byte, then the encoded operation: exactly the bytes the
/// store gets under [`StoreKey::Outbox`]), each preceded by its length (4
/// bytes, little-endian), in one allocation. A transaction of 100,000
/// writes is one entry, not 100,000 boxes. Made only by encoding operations,
/// or from stored records that decoded, so every record decodes.
#[derive(Debug)]
struct Pending {
    /// Number of the first operation still pending.
    seq: u64,
    /// Operations queued in the whole outbox before this entry's first
    /// pending one: positions let [`Outbox`] count and skip without
    /// walking the entries.
    before: u64,
    /// Operations still pending (at least one: an entry with none is removed).
    len: u32,
    /// Where the first pending record's length starts in `bytes`: the
    /// acknowledged records before it go when the whole entry goes.
    start: u32,
    bytes: Box<[u8]>,
}

/// Bytes before each record in a [`Pending`] run: its length.
const RUN_LENGTH_BYTES: usize = 4;

/// The most bytes in one [`Pending`] run, so that offsets fit in a `u32`;
/// a larger transaction queues several runs.
const MAX_RUN_BYTES: u64 = u32::MAX as u64;

impl Pending {
    /// Numbers entries' positions in order, for an outbox made of them.
    fn queue(entries: impl IntoIterator<Item = Pending>) -> VecDeque<Pending> {
        let mut position = 0;
        entries
            .into_iter()
            .map(|mut entry| {
                entry.before = position;
                position += u64::from(entry.len);
                entry
            })
            .collect()
    }

    /// The number of the last operation still pending.
    fn last_seq(&self) -> u64 {
        self.seq + u64::from(self.len) - 1
    }

    /// The position after this entry's last operation.
    fn end(&self) -> u64 {
        self.before + u64::from(self.len)
    }

    /// The pending records with their sequence numbers, in order.
    fn records(&self) -> Records<'_> {
        Records {
            bytes: self.bytes.get(self.start as usize..).unwrap_or_default(),
            seq: self.seq,
            left: self.len,
        }
    }

    /// The pending operations, decoded.
    fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.records()
            .filter_map(|(seq, record)| decode_pending(seq, record))
    }

    /// Forgets the first `n` pending operations (fewer than `len`).
    fn drop_front(&mut self, n: u32) {
        let mut records = self.records();
        let before = records.bytes.len();
        records.skip_records(n);
        let skipped = before - records.bytes.len();
        // `start` stays below `bytes.len()`, which `push_run` keeps within u32.
        self.start += u32::try_from(skipped).unwrap_or(u32::MAX);
        self.seq += u64::from(n);
        self.before += u64::from(n);
        self.len -= n;
    }
}

/// Appends one record, with its length, to a run's bytes.
fn push_run_record(run: &mut Vec<u8>, record: &[u8]) {
    // Records are far below 4 GiB (see `push_run`); were one not, its
    // length would not fit and the record is left out, as an empty one.
    let len = u32::try_from(record.len()).unwrap_or(0);
    run.extend_from_slice(&len.to_le_bytes());
    run.extend_from_slice(&record[..len as usize]);
}

/// Decodes one outbox record.
fn decode_pending(seq: u64, record: &[u8]) -> Option<Op> {
    let op = decode_record(&StoreKey::Outbox(seq), record).ok();
    debug_assert!(op.is_some(), "outbox record {seq} does not decode");
    op
}

/// The records of a [`Pending`] run, with their sequence numbers.
#[derive(Clone, Debug)]
struct Records<'a> {
    bytes: &'a [u8],
    seq: u64,
    left: u32,
}

impl Records<'_> {
    /// Skips `n` records without decoding them.
    fn skip_records(&mut self, n: u32) {
        for _ in 0..n {
            if self.next().is_none() {
                break;
            }
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<(u64, &'a [u8])> {
        if self.left == 0 {
            return None;
        }
        let (len, rest) = self.bytes.split_first_chunk::<RUN_LENGTH_BYTES>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let record = rest.get(..len)?;
        self.bytes = rest.get(len..).unwrap_or_default();
        let seq = self.seq;
        self.seq += 1;
        self.left -= 1;
        Some((seq, record))
    }
}

/// The local operations not yet acknowledged, oldest first, decoded as
/// they are read: see [`Replica::outbox`].
///
/// ```
/// use sync_core::{Timestamp, Replica, ReplicaConfig, ReplicaId};
///
/// let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
/// for n in 0..3 {
///     replica.put(Timestamp::from_unix_ms(1_000), "todos", "milk", [("count", n)])?;
/// }
/// assert_eq!(replica.outbox().len(), 3);
/// assert_eq!(replica.outbox().first_seq(), Some(1));
/// let unsent: Vec<u64> = replica.outbox().after(1).map(|op| op.id.seq).collect();
/// assert_eq!(unsent, [2, 3]);
/// assert_eq!(replica.outbox().next_back().map(|op| op.id.seq), Some(3));
/// # Ok::<(), sync_core::WriteError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Outbox<'a> {
    pending: &'a VecDeque<Pending>,
    /// Operations at positions `front..back` are still to be read (a
    /// position counts operations from the outbox's first entry's).
    front: u64,
    back: u64,
    /// The entry holding position `front` and its records from there on,
    /// once reading has started there.
    cursor: Option<(usize, Records<'a>)>,
}

impl<'a> Outbox<'a> {
    fn new(pending: &'a VecDeque<Pending>) -> Outbox<'a> {
        Outbox {
            pending,
            front: pending.front().map_or(0, |p| p.before),
            back: pending.back().map_or(0, Pending::end),
            cursor: None,
        }
    }

    /// The index of the entry holding `position`.
    fn entry_at(&self, position: u64) -> usize {
        self.pending.partition_point(|p| p.end() <= position)
    }

    /// Skips the operations numbered up to `seq` (without decoding them).
    pub fn after(mut self, seq: u64) -> Self {
        let at = self.pending.partition_point(|p| p.last_seq() <= seq);
        let position = self.pending.get(at).map_or(self.back, |p| {
            p.before + (seq + 1).saturating_sub(p.seq).min(u64::from(p.len))
        });
        if position > self.front {
            self.front = position.min(self.back);
            self.cursor = None;
        }
        self
    }

    /// The sequence number of the next operation, without decoding it.
    pub fn first_seq(&self) -> Option<u64> {
        if self.front >= self.back {
            return None;
        }
        let entry = self.pending.get(self.entry_at(self.front))?;
        Some(entry.seq + (self.front - entry.before))
    }
}

impl Iterator for Outbox<'_> {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        while self.front < self.back {
            let (index, records) = match &mut self.cursor {
                Some(cursor) => cursor,
                None => {
                    let index = self.entry_at(self.front);
                    let entry = self.pending.get(index)?;
                    let mut records = entry.records();
                    records.skip_records(u32::try_from(self.front - entry.before).ok()?);
                    self.cursor.insert((index, records))
                }
            };
            match records.next() {
                Some((seq, record)) => {
                    self.front += 1;
                    if let Some(op) = decode_pending(seq, record) {
                        return Some(op);
                    }
                }
                None => {
                    let next = *index + 1;
                    let entry = self.pending.get(next)?;
                    self.front = self.front.max(entry.before);
                    self.cursor = Some((next, entry.records()));
                }
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = usize::try_from(self.back.saturating_sub(self.front)).unwrap_or(usize::MAX);
        (len, Some(len))
    }

    fn last(mut self) -> Option<Op> {
        self.next_back()
    }
}

/// Reading from the back finds the operation's record by walking its
/// entry's records from the start: meant for a look at the last few.
impl DoubleEndedIterator for Outbox<'_> {
    fn next_back(&mut self) -> Option<Op> {
        while self.front < self.back {
            self.back -= 1;
            let entry = self.pending.get(self.entry_at(self.back))?;
            let nth = usize::try_from(self.back.checked_sub(entry.before)?).ok()?;
            if let Some(op) = entry
                .records()
                .nth(nth)
                .and_then(|(seq, record)| decode_pending(seq, record))
            {
                return Some(op);
            }
        }
        None
    }
}

/// Exact: one operation per sequence number between the two ends, as
/// every record the outbox holds decodes.
impl ExactSizeIterator for Outbox<'_> {}

impl std::iter::FusedIterator for Outbox<'_> {}

/// Checks a local change as an operation of `replica` would be checked,
/// before it is stamped; hands it back on success.
fn validate_local(replica: ReplicaId, change: Change) -> Result<Change, WriteError> {
    let op = Op {
        id: OpId { replica, seq: 1 },
        hlc: Hlc::ZERO,
        change,
    };
    op.validate()?;
    Ok(op.change)
}

/// Writes collected by [`Replica::transaction`] (or
/// [`crate::session::Session::transaction`]), applied together when the
/// closure returns `Ok`.
///
/// Each method checks its write at once and returns the error
/// [`Replica`]'s method of the same name would; pass it on with `?` to
/// abandon the transaction, or ignore it to go on without that write.
#[derive(Debug)]
pub struct Transaction<'r> {
    state: &'r State,
    writes: TxWrites,
}

/// A transaction's writes, buffered without an allocation per write:
/// names, collections and ids in one string, fields in one vector.
#[derive(Debug, Default)]
struct TxWrites {
    text: String,
    writes: Vec<TxWrite>,
    fields: Vec<TxField>,
    /// The writes' stamps while they are committed (kept for reuse).
    hlcs: Vec<Hlc>,
}

#[derive(Debug)]
struct TxWrite {
    kind: TxKind,
    collection: Range<usize>,
    /// Empty for collection writes.
    id: Range<usize>,
    /// Empty except for puts.
    fields: Range<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxKind {
    Put,
    Delete,
    CreateCollection,
    DropCollection,
}

#[derive(Debug)]
struct TxField {
    name: Range<usize>,
    /// `None` removes the field.
    value: Option<Value>,
}

/// A buffered put's fields, as names and values to encode.
#[derive(Clone, Copy)]
struct TxFieldsRef<'a> {
    text: &'a str,
    fields: &'a [TxField],
}

impl<'a> IntoIterator for TxFieldsRef<'a> {
    type Item = (&'a str, Option<&'a Value>);
    type IntoIter = TxFieldsIter<'a>;

    fn into_iter(self) -> TxFieldsIter<'a> {
        TxFieldsIter {
            text: self.text,
            fields: self.fields.iter(),
        }
    }
}

/// [`TxFieldsRef`]'s names and values, in order.
struct TxFieldsIter<'a> {
    text: &'a str,
    fields: std::slice::Iter<'a, TxField>,
}

impl<'a> Iterator for TxFieldsIter<'a> {
    type Item = (&'a str, Option<&'a Value>);

    fn next(&mut self) -> Option<Self::Item> {
        let field = self.fields.next()?;
        Some((&self.text[field.name.clone()], field.value.as_ref()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.fields.size_hint()
    }
}

impl ExactSizeIterator for TxFieldsIter<'_> {}

impl TxWrites {
    /// Empties the buffer, keeping its capacity for the next writes.
    fn clear(&mut self) {
        self.text.clear();
        self.writes.clear();
        self.fields.clear();
    }

    // Inlined: a call per string cost more than the copy (three a put).
    #[inline]
    fn push_text(&mut self, text: &str) -> Range<usize> {
        let start = self.text.len();
        self.text.push_str(text);
        start..self.text.len()
    }

    /// Buffers a write of `kind`; for a put, `fields` are its fields.
    /// Checks it first, as [`Op::validate`] would, and buffers nothing if
    /// it is refused.
    fn push<K: AsRef<str>>(
        &mut self,
        kind: TxKind,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, Option<Value>)>,
    ) -> Result<(), WriteError> {
        let (text_len, fields_len) = (self.text.len(), self.fields.len());
        let result = self.push_unchecked(kind, collection, id, fields);
        if result.is_err() {
            self.text.truncate(text_len);
            self.fields.truncate(fields_len);
        }
        result
    }

    fn push_unchecked<K: AsRef<str>>(
        &mut self,
        kind: TxKind,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, Option<Value>)>,
    ) -> Result<(), WriteError> {
        match kind {
            TxKind::Put => {}
            TxKind::Delete => {
                crate::op::check_collection(collection)?;
                crate::op::check_doc_id(id)?;
            }
            TxKind::CreateCollection | TxKind::DropCollection => {
                crate::op::check_collection(collection)?;
            }
        }
        let collection = self.push_text(collection);
        let id = self.push_text(id);
        let start = self.fields.len();
        if kind == TxKind::Put {
            for (name, value) in fields {
                let name = self.push_text(name.as_ref());
                self.fields.push(TxField { name, value });
            }
            // Checked here: a put of one field, the usual, makes no call.
            if self.fields.len() - start > 1 {
                self.drop_repeated_names(start);
            }
            let text = self.text.as_str();
            let parts = self.fields[start..]
                .iter()
                .map(|f| (&text[f.name.clone()], f.value.as_ref()));
            crate::op::check_distinct_put(&text[collection.clone()], &text[id.clone()], parts)?;
        }
        self.writes.push(TxWrite {
            kind,
            collection,
            id,
            fields: start..self.fields.len(),
        });
        Ok(())
    }

    /// Of fields named more than once since `start`, keeps the last (as in
    /// a JSON object), in the same order.
    fn drop_repeated_names(&mut self, start: usize) {
        let count = self.fields.len() - start;
        if count < 2 {
            return;
        }
        let text = self.text.as_str();
        let name = |field: &TxField| &text[field.name.clone()];
        let keep: Vec<bool> = if count <= 32 {
            let tail = &self.fields[start..];
            (0..count)
                .map(|i| {
                    !tail[i + 1..]
                        .iter()
                        .any(|later| name(later) == name(&tail[i]))
                })
                .collect()
        } else {
            let mut seen = BTreeSet::new();
            let mut keep: Vec<bool> = self.fields[start..]
                .iter()
                .rev()
                .map(|field| seen.insert(name(field)))
                .collect();
            keep.reverse();
            keep
        };
        let mut index = 0;
        let mut tail = self.fields.split_off(start);
        tail.retain(|_| {
            index += 1;
            keep[index - 1]
        });
        self.fields.append(&mut tail);
    }
}

impl<'r> Transaction<'r> {
    /// The state as it was before the transaction, for reads.
    pub fn state(&self) -> &'r State {
        self.state
    }

    /// Writes made so far in this transaction.
    pub fn len(&self) -> usize {
        self.writes.writes.len()
    }

    /// Whether no write was made yet.
    pub fn is_empty(&self) -> bool {
        self.writes.writes.is_empty()
    }

    /// Writes fields of a document (see [`Replica::put`]).
    pub fn put<K, V>(
        &mut self,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), WriteError>
    where
        K: AsRef<str>,
        V: Into<Value>,
    {
        let fields = fields.into_iter().map(|(k, v)| (k, Some(v.into())));
        self.writes.push(TxKind::Put, collection, id, fields)
    }

    /// Writes fields if the document is at `expected` before the
    /// transaction (`None`: if it does not exist); see [`Replica::put_if`].
    pub fn put_if<K, V>(
        &mut self,
        collection: &str,
        id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
        expected: Option<Revision>,
    ) -> Result<(), WriteError>
    where
        K: AsRef<str>,
        V: Into<Value>,
    {
        let actual = self.state.revision(collection, id);
        if actual != expected {
            return Err(WriteError::RevisionMismatch {
                collection: collection.to_owned(),
                id: id.to_owned(),
                expected,
                actual,
            });
        }
        self.put(collection, id, fields)
    }

    /// Removes fields of a document (see [`Replica::unset`]).
    pub fn unset<K: AsRef<str>>(
        &mut self,
        collection: &str,
        id: &str,
        names: impl IntoIterator<Item = K>,
    ) -> Result<(), WriteError> {
        let fields = names.into_iter().map(|n| (n, None));
        self.writes.push(TxKind::Put, collection, id, fields)
    }

    /// Deletes a document (see [`Replica::delete`]).
    pub fn delete(&mut self, collection: &str, id: &str) -> Result<(), WriteError> {
        self.writes.push(
            TxKind::Delete,
            collection,
            id,
            std::iter::empty::<(&str, _)>(),
        )
    }

    /// Creates a collection (see [`Replica::create_collection`]).
    pub fn create_collection(&mut self, collection: &str) -> Result<(), WriteError> {
        self.writes.push(
            TxKind::CreateCollection,
            collection,
            "",
            std::iter::empty::<(&str, _)>(),
        )
    }

    /// Drops a collection (see [`Replica::drop_collection`]).
    pub fn drop_collection(&mut self, collection: &str) -> Result<(), WriteError> {
        self.writes.push(
            TxKind::DropCollection,
            collection,
            "",
            std::iter::empty::<(&str, _)>(),
        )
    }
}

/// What must hold for a write to go ahead.
#[derive(Clone, Copy)]
enum Precondition {
    None,
    Revision(Option<Revision>),
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::persist::decode_doc_record;
    use crate::store::{MemoryStore, Store};

    /// The first id's own slot and the sets after it make one set: each id
    /// is new once, counted once and handed out once.
    #[test]
    fn dirty_ids_hold_each_id_once() {
        let mut ids = DirtyIds::default();
        let added: Vec<bool> = ["a", "a", "b", "a", "c", "b"]
            .into_iter()
            .map(|id| ids.insert(id))
            .collect();
        assert_eq!(added, [true, false, true, false, true, false]);
        assert_eq!(ids.len(), 3);
        let mut out: Vec<String> = ids.into_iter().collect();
        out.sort();
        assert_eq!(out, ["a", "b", "c"]);
    }

    /// Removing the id in the first slot moves another one there: the set
    /// still holds the rest, and is empty only once they are all removed.
    #[test]
    fn dirty_ids_removed_first_keep_the_rest() {
        let mut ids = DirtyIds::default();
        for id in ["a", "b", "c"] {
            ids.insert(id);
        }
        assert!(ids.remove("a"));
        assert!(!ids.remove("a"));
        assert!(!ids.is_empty());
        assert_eq!(ids.len(), 2);
        assert!(
            !ids.insert("b") && !ids.insert("c"),
            "b and c are still held"
        );
        assert!(ids.remove("c") && ids.remove("b"));
        assert!(ids.is_empty());
        assert_eq!(ids.len(), 0);
        assert!(ids.more.is_none(), "an empty set keeps no allocation");
        assert!(ids.insert("b"), "b was removed");
    }

    /// Past `DirtyIds::MAX_HASHED` documents a batch keeps working (the ids
    /// move to the ordered set): every document is written exactly once.
    #[test]
    fn a_batch_of_many_dirty_documents_writes_each_once() {
        // Records, not a checkpoint, for every document.
        let config = ReplicaConfig::default().with_checkpoint_min_records(usize::MAX);
        let mut r = Replica::new(ReplicaId(1), config);
        let count = DirtyIds::MAX_HASHED * 3 / 2;
        for round in 0..2 {
            for d in 0..count {
                let id = format!("d{d}");
                r.put(
                    Timestamp::from_unix_ms(1_000),
                    "c",
                    &id,
                    [("f", Value::Int(round))],
                )
                .unwrap();
            }
        }
        let batch = r.take_persist().expect("a batch");
        let mut docs: Vec<&StoreKey> = batch
            .writes
            .iter()
            .filter_map(Write::key)
            .filter(|key| matches!(key, StoreKey::Document { .. }))
            .collect();
        assert_eq!(docs.len(), count);
        docs.sort();
        docs.dedup();
        assert_eq!(docs.len(), count, "each document once");
    }

    /// The outbox holds each local operation's record bytes: it reads back
    /// the operations made, skips by sequence number, persists exactly
    /// those bytes, and replays them after a reset to a snapshot.
    #[test]
    fn the_encoded_outbox_reads_persists_and_replays_its_operations() {
        let mut r = Replica::new(ReplicaId(3), ReplicaConfig::default());
        r.put(
            Timestamp::from_unix_ms(1_000),
            "c",
            "a",
            [("x", Value::from("long enough text"))],
        )
        .unwrap();
        r.unset(Timestamp::from_unix_ms(1_001), "c", "a", ["y"])
            .unwrap();
        r.delete(Timestamp::from_unix_ms(1_002), "c", "b").unwrap();
        r.create_collection(Timestamp::from_unix_ms(1_003), "d")
            .unwrap();
        let ops: Vec<Op> = r.outbox().collect();
        assert_eq!(
            ops.iter().map(|op| op.id.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(matches!(&ops[1].change, Change::Put { fields, .. } if fields[0].1.is_none()));
        assert_eq!(r.outbox().after(2).collect::<Vec<_>>(), ops[2..]);
        assert_eq!(r.outbox().after(9).len(), 0);
        assert_eq!(
            r.outbox().rev().collect::<Vec<_>>(),
            ops.iter().rev().cloned().collect::<Vec<_>>()
        );
        let batch = r.take_persist().unwrap();
        for op in &ops {
            let stored = batch
                .writes
                .iter()
                .find(|w| w.key() == Some(&StoreKey::Outbox(op.id.seq)));
            assert_eq!(
                stored,
                Some(&Write::Put {
                    key: StoreKey::Outbox(op.id.seq),
                    value: encode_record(op)
                })
            );
        }
        // The state forgets everything; the outbox brings the writes back.
        r.reset_to_snapshot(Timestamp::from_unix_ms(1_004), Snapshot::empty())
            .unwrap();
        assert_eq!(
            r.get_field("c", "a", "x"),
            Some(crate::ValueRef::String("long enough text"))
        );
        assert!(r.state().collections().any(|c| c == "d"));
        assert_eq!(r.acknowledge(3), 3);
        assert_eq!(r.outbox().collect::<Vec<_>>(), ops[3..]);
    }

    /// A transaction's operations are one outbox entry (one run of
    /// records), yet read, skip, persist, acknowledge part by part and
    /// restore exactly as operations queued one by one.
    #[test]
    fn a_transaction_is_one_outbox_run_read_and_acknowledged_op_by_op() {
        let now = Timestamp::from_unix_ms(1_000);
        let mut r = Replica::new(ReplicaId(5), ReplicaConfig::default());
        r.put(now, "c", "a", [("x", 0)]).unwrap();
        r.transaction(now, |tx| {
            for n in 0..6 {
                tx.put("c", &format!("d{n}"), [("x", n)])?;
            }
            tx.delete("c", "a")
        })
        .unwrap();
        r.put(now, "c", "b", [("y", Value::from("after"))]).unwrap();
        assert_eq!(r.outbox.len(), 3, "a single, the run, a single");
        let ops: Vec<Op> = r.outbox().collect();
        let seqs: Vec<u64> = ops.iter().map(|op| op.id.seq).collect();
        assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
        assert_eq!(r.outbox().len(), 9);
        for skip in 0..=9 {
            let after: Vec<Op> = r.outbox().after(skip).collect();
            assert_eq!(after, ops[skip as usize..], "after {skip}");
            assert_eq!(r.outbox().after(skip).len(), 9 - skip as usize);
            assert_eq!(
                r.outbox().after(skip).first_seq(),
                seqs.get(skip as usize).copied()
            );
        }
        assert_eq!(
            r.outbox().rev().collect::<Vec<_>>(),
            ops.iter().rev().cloned().collect::<Vec<_>>()
        );
        // Both ends at once meet in the middle of the run.
        let mut both = r.outbox().after(2);
        assert_eq!(both.next_back().map(|op| op.id.seq), Some(9));
        assert_eq!(both.next().map(|op| op.id.seq), Some(3));
        assert_eq!(both.len(), 5);
        assert_eq!(
            both.map(|op| op.id.seq).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8]
        );

        // Stored as one record per operation, the bytes an operation encodes to.
        let mut disk = MemoryStore::new();
        let batch = r.take_persist().unwrap();
        for op in &ops {
            let stored = batch
                .writes
                .iter()
                .find(|w| w.key() == Some(&StoreKey::Outbox(op.id.seq)));
            assert_eq!(
                stored,
                Some(&Write::Put {
                    key: StoreKey::Outbox(op.id.seq),
                    value: encode_record(op)
                })
            );
        }
        disk.write(&batch).unwrap();

        // Acknowledged up to the middle of the run: the stored records of
        // those are deleted, the rest stay and read on.
        assert_eq!(r.acknowledge(4), 4);
        assert_eq!(r.outbox().collect::<Vec<_>>(), ops[4..]);
        assert_eq!(r.outbox().first_seq(), Some(5));
        assert_eq!(r.outbox().after(6).collect::<Vec<_>>(), ops[6..]);
        r.transaction(now, |tx| tx.put("c", "e", [("z", 1)]))
            .unwrap();
        assert_eq!(r.acknowledge(5), 1);
        let batch = r.take_persist().unwrap();
        // The five acknowledged operations, removed by one range delete.
        let deleted: Vec<&Write> = batch
            .writes
            .iter()
            .filter(|w| !matches!(w, Write::Put { .. }))
            .filter(|w| w.key().is_none_or(|key| matches!(key, StoreKey::Outbox(_))))
            .collect();
        assert_eq!(
            deleted,
            [&Write::DeleteRange {
                first: StoreKey::Outbox(1),
                last: StoreKey::Outbox(5)
            }]
        );
        disk.write(&batch).unwrap();
        let expected: Vec<Op> = r.outbox().collect();
        assert_eq!(expected.len(), 5);
        let restored = Replica::restore(ReplicaConfig::default(), disk.read_all().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(restored.outbox().collect::<Vec<_>>(), expected);

        // The rest of the run, then everything.
        assert_eq!(r.acknowledge(8), 3);
        assert_eq!(r.outbox().map(|op| op.id.seq).collect::<Vec<_>>(), [9, 10]);
        assert_eq!(r.acknowledge(u64::MAX), 2);
        assert_eq!(r.outbox().len(), 0);
        assert!(r.outbox.is_empty());
    }

    /// A put skips the dirty set when its document carries this batch's
    /// generation; when the generations wrap, older marks must not pass for
    /// the new ones, or a write would never be stored.
    #[test]
    fn a_document_written_again_is_rewritten_in_every_batch_even_when_generations_wrap() {
        let now = Timestamp::from_unix_ms(1_000);
        let doc_keys = |batch: &PersistBatch| -> Vec<String> {
            batch
                .writes
                .iter()
                .filter_map(|w| match w.key()? {
                    StoreKey::Document { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect()
        };
        let mut r = Replica::new(ReplicaId(5), ReplicaConfig::default());
        r.put(now, "c", "a", [("x", 1)]).unwrap();
        r.put(now, "c", "a", [("x", 2)]).unwrap();
        assert_eq!(doc_keys(&r.take_persist().unwrap()), ["a"]);
        r.transaction(now, |tx| {
            tx.put("c", "b", [("x", 3)])?;
            tx.put("c", "d", [("x", 3)])?;
            tx.put("c", "b", [("y", 3)])
        })
        .unwrap();
        let mut keys = doc_keys(&r.take_persist().unwrap());
        keys.sort();
        assert_eq!(keys, ["b", "d"]);
        // "a" carries the first generation, the one the counter wraps to.
        r.dirty.generation = u32::MAX;
        r.put(now, "c", "b", [("x", 4)]).unwrap();
        assert_eq!(doc_keys(&r.take_persist().unwrap()), ["b"]);
        for round in 0..3 {
            r.put(now, "c", "a", [("x", 5 + round)]).unwrap();
            assert_eq!(doc_keys(&r.take_persist().unwrap()), ["a"], "round {round}");
        }
    }

    /// One step of a random history over three replicas, a tiny universe
    /// (two collections, three documents, four fields) so that writes,
    /// deletes, drops and tombstone collection keep colliding.
    #[derive(Clone, Debug)]
    enum Step {
        Put(usize, usize, usize, Vec<(usize, Option<i64>)>),
        Delete(usize, usize, usize),
        Drop(usize, usize),
        Create(usize, usize),
        /// Every operation made so far, applied on one replica.
        Sync(usize),
        MergeSnapshot(usize, usize),
        /// Replace a replica's state with another's snapshot after
        /// collecting its tombstones, as a client does after compaction.
        ResetToCompacted(usize, usize),
        Restore(usize),
        Tick,
    }

    fn step() -> impl Strategy<Value = Step> {
        let r = 0..3usize;
        let c = 0..2usize;
        let d = 0..3usize;
        prop_oneof![
            6 => (r.clone(), c.clone(), d.clone(),
                  prop::collection::vec((0..4usize, prop::option::weighted(0.8, 0..3i64)), 1..4))
                .prop_map(|(r, c, d, f)| Step::Put(r, c, d, f)),
            2 => (r.clone(), c.clone(), d).prop_map(|(r, c, d)| Step::Delete(r, c, d)),
            1 => (r.clone(), c.clone()).prop_map(|(r, c)| Step::Drop(r, c)),
            1 => (r.clone(), c).prop_map(|(r, c)| Step::Create(r, c)),
            2 => r.clone().prop_map(Step::Sync),
            1 => (r.clone(), r.clone()).prop_map(|(a, b)| Step::MergeSnapshot(a, b)),
            1 => (r.clone(), r.clone()).prop_map(|(a, b)| Step::ResetToCompacted(a, b)),
            1 => r.prop_map(Step::Restore),
            1 => Just(Step::Tick),
        ]
    }

    /// Restore reads document records of version 1 (every field with its
    /// own stamp) and 2 (a whole stamp unless it is `written`) as well as
    /// the version 3 records this build writes (stamps relative to `written`).
    #[test]
    fn restore_reads_version_1_and_2_document_records() {
        // Written out by hand: an oracle apart from the decoder under test.
        #[derive(serde::Serialize)]
        struct DocRecordOld<'a, S> {
            written: Option<crate::stamp::Stamp>,
            deleted: Option<crate::stamp::Stamp>,
            fields: Vec<(&'a str, S, Option<&'a Value>)>,
        }
        // A full-width id: the whole stamps are the larger.
        let mut replica = Replica::new(ReplicaId(u64::MAX - 7), ReplicaConfig::default());
        replica
            .put(
                Timestamp::from_unix_ms(1_000),
                "c",
                "a",
                [("x", 1), ("y", 2)],
            )
            .unwrap();
        replica
            .put(Timestamp::from_unix_ms(1_001), "c", "a", [("y", 3)])
            .unwrap();
        replica
            .put(Timestamp::from_unix_ms(1_002), "c", "b", [("x", 4)])
            .unwrap();
        replica
            .unset(Timestamp::from_unix_ms(1_003), "c", "b", ["z"])
            .unwrap();
        let mut v3 = MemoryStore::new();
        v3.write(&replica.take_persist().unwrap()).unwrap();
        let records = v3.read_all().unwrap();
        let old = |version: u8| -> Vec<_> {
            records
                .iter()
                .map(|(key, value)| {
                    let parsed = StoreKey::from_bytes(key).unwrap();
                    if !matches!(parsed, StoreKey::Document { .. }) {
                        return (key.clone(), value.clone());
                    }
                    assert_eq!(value[0], 3, "documents are written at version 3");
                    let record = decode_doc_record(&parsed, value).unwrap();
                    let mut bytes = vec![version];
                    if version == 1 {
                        let fields = record
                            .fields
                            .iter()
                            .map(|(n, s, v)| (*n, s.or(record.written).unwrap(), v.as_ref()))
                            .collect();
                        let old = DocRecordOld {
                            written: record.written,
                            deleted: record.deleted,
                            fields,
                        };
                        bytes.extend(postcard::to_allocvec(&old).unwrap());
                    } else {
                        let fields = record
                            .fields
                            .iter()
                            .map(|(n, s, v)| (*n, *s, v.as_ref()))
                            .collect();
                        let old = DocRecordOld {
                            written: record.written,
                            deleted: record.deleted,
                            fields,
                        };
                        bytes.extend(postcard::to_allocvec(&old).unwrap());
                    }
                    assert!(bytes.len() > value.len(), "version 3 is the smaller");
                    (key.clone(), bytes)
                })
                .collect()
        };
        let (v1, v2) = (old(1), old(2));
        for records in [records, v1, v2] {
            let back = Replica::restore(ReplicaConfig::default(), records)
                .unwrap()
                .unwrap();
            assert!(back.state() == replica.state());
            assert_eq!(back.revision("c", "a"), replica.revision("c", "a"));
        }
    }

    const COLLECTIONS: [&str; 2] = ["a", "b"];
    const DOCS: [&str; 3] = ["x", "y", "z"];
    const FIELDS: [&str; 4] = ["f0", "f1", "f2", "f3"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The revision digest each document keeps up to date equals the
        /// one computed from its fields, after any history; and replicas
        /// holding the same writes agree on every revision.
        #[test]
        fn maintained_revisions_equal_recomputed(steps in prop::collection::vec(step(), 1..40)) {
            let mut replicas: Vec<Replica> = (1..=3)
                .map(|i| Replica::new(ReplicaId(i), ReplicaConfig::default()))
                .collect();
            let mut stores: Vec<MemoryStore> = (0..3).map(|_| MemoryStore::new()).collect();
            let mut ops: Vec<Op> = Vec::new();
            let mut now = 1_000u64;
            for step in steps {
                match step {
                    Step::Put(r, c, d, fields) => {
                        let fields: Vec<(String, Option<Value>)> = fields
                            .into_iter()
                            .map(|(f, v)| (FIELDS[f].to_owned(), v.map(Value::Int)))
                            .collect();
                        let _ = replicas[r].write_fields(
                            Timestamp::from_unix_ms(now), COLLECTIONS[c], DOCS[d], fields, Precondition::None);
                    }
                    Step::Delete(r, c, d) => {
                        replicas[r].delete(Timestamp::from_unix_ms(now), COLLECTIONS[c], DOCS[d]).unwrap();
                    }
                    Step::Drop(r, c) => replicas[r].drop_collection(Timestamp::from_unix_ms(now), COLLECTIONS[c]).unwrap(),
                    Step::Create(r, c) => {
                        replicas[r].create_collection(Timestamp::from_unix_ms(now), COLLECTIONS[c]).unwrap();
                    }
                    Step::Sync(r) => {
                        for op in &ops {
                            replicas[r].apply(Timestamp::from_unix_ms(now), op).unwrap();
                        }
                    }
                    Step::MergeSnapshot(from, to) => {
                        let snapshot = Snapshot::decode(&replicas[from].encode_snapshot()).unwrap();
                        replicas[to].merge_snapshot(Timestamp::from_unix_ms(now), &snapshot).unwrap();
                    }
                    Step::ResetToCompacted(from, to) => {
                        let mut snapshot =
                            Snapshot::decode(&replicas[from].encode_snapshot()).unwrap();
                        snapshot.state.collect_tombstones(replicas[from].clock());
                        snapshot.state.check_revisions().map_err(TestCaseError::fail)?;
                        replicas[to].reset_to_snapshot(Timestamp::from_unix_ms(now), snapshot).unwrap();
                    }
                    Step::Restore(r) => {
                        let id = replicas[r].id();
                        let restored = Replica::restore(
                            ReplicaConfig::default(), stores[r].read_all().unwrap()).unwrap();
                        replicas[r] = restored
                            .unwrap_or_else(|| Replica::new(id, ReplicaConfig::default()));
                    }
                    Step::Tick => now += 1,
                }
                for (replica, store) in replicas.iter_mut().zip(&mut stores) {
                    for op in replica.outbox() {
                        if !ops.contains(&op) {
                            ops.push(op);
                        }
                    }
                    if let Some(batch) = replica.take_persist() {
                        store.write(&batch).unwrap();
                    }
                    replica.state().check_revisions().map_err(TestCaseError::fail)?;
                }
            }
            // Bring everyone up to date (snapshots first: a reset may have
            // dropped operations the others hold), then compare revisions.
            for from in 0..3 {
                let snapshot = Snapshot::decode(&replicas[from].encode_snapshot()).unwrap();
                for replica in &mut replicas {
                    replica.merge_snapshot(Timestamp::from_unix_ms(now), &snapshot).unwrap();
                }
            }
            for replica in &replicas {
                replica.state().check_revisions().map_err(TestCaseError::fail)?;
            }
            for c in COLLECTIONS {
                for d in DOCS {
                    let revision = replicas[0].revision(c, d);
                    prop_assert_eq!(revision, replicas[1].revision(c, d));
                    prop_assert_eq!(revision, replicas[2].revision(c, d));
                }
            }
        }
    }
}
