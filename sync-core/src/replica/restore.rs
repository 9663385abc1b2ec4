//! Work on a whole replica done a slice at a time, so a host on a UI
//! thread can yield between slices: rebuilding a replica from its stored
//! records ([`ReplicaLoader`]) and resetting it to a snapshot
//! ([`Replica::start_reset`], [`Replica::continue_reset`]).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

use super::{
    ApplyError, Dirty, DirtyIds, MAX_RUN_BYTES, Pending, RUN_LENGTH_BYTES, Replica, ReplicaConfig,
    RestoreError, push_run_record,
};
use crate::event::{Event, Origin};
use crate::hlc::{Clock, Hlc};
use crate::op::{OpId, OpRef};
use crate::persist::{
    ABSENT_DOCUMENT, CollectionRecord, MetaRecord, RecordError, StoreKey, checkpoint_snapshot,
    decode_doc_record, decode_record,
};
use crate::snapshot::{Snapshot, SnapshotDecoder, SnapshotError};
use crate::stamp::ReplicaId;
use crate::state::{DocState, Effect, FieldSlot, State};
use crate::store::Record;
use crate::timestamp::Timestamp;
use crate::value::Value;
use crate::version::VersionVector;

/// Rebuilds a replica from the records its batches wrote, fed in as many
/// slices as the host likes (see [`Replica::restore`] for all at once).
///
/// Records are expected in key order, as stores return them; any order
/// gives the same replica, only more slowly. Records under
/// [`StoreKey::Extension`] belong to other layers and are skipped. The
/// checkpoint (the state as one snapshot) is read first, in key order, and
/// the document and collection records override it.
///
/// ```
/// use sync_core::{Replica, ReplicaConfig, ReplicaId, Timestamp, ReplicaLoader};
/// use sync_core::store::{MemoryStore, Store};
///
/// let mut replica = Replica::new(ReplicaId(7), ReplicaConfig::default());
/// for n in 0..10 {
///     replica.put(Timestamp::from_unix_ms(1_000), "todos", &format!("t{n}"), [("n", n)])?;
/// }
/// let mut store = MemoryStore::new();
/// store.write(&replica.take_persist().expect("changed"))?;
///
/// let records = store.read_all()?;
/// let mut loader = ReplicaLoader::new(ReplicaConfig::default());
/// for slice in records.chunks(4) {
///     loader.feed(slice.iter().cloned())?; // a host may yield between slices
/// }
/// let restored = loader.finish()?.expect("not empty");
/// assert_eq!(restored.state(), replica.state());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ReplicaLoader {
    config: ReplicaConfig,
    meta: Option<MetaRecord>,
    state: State,
    /// The documents of the collection being read, in the order read: its
    /// tree is built in one pass when another collection starts (building
    /// from sorted keys is linear; inserting one by one walks the tree).
    building: Option<(String, Vec<(String, DocState)>)>,
    /// Outbox records read, as runs of consecutive operations of one
    /// replica, by the first one's number: records come in key order, so a
    /// run of 100,000 records is one allocation, not 100,000 entries.
    outbox: BTreeMap<u64, OutboxRun>,
    /// The first number of the run the next consecutive record joins.
    open_run: Option<u64>,
    any: bool,
    /// Collection records, applied over everything else at the end.
    collection_records: Vec<(String, CollectionRecord)>,
    /// Whether a checkpoint was read.
    checkpoint: bool,
    /// Keys of the document records read, by collection.
    overlay: BTreeMap<String, DirtyIds>,
    /// Documents whose records say they do not exist.
    absent: Vec<(String, String)>,
    /// The checkpoint being decoded (see [`ReplicaLoader::decode_slice`]).
    decoding: Option<SnapshotDecoder>,
}

impl ReplicaLoader {
    /// A loader that has read nothing yet.
    pub fn new(config: ReplicaConfig) -> ReplicaLoader {
        ReplicaLoader {
            config,
            meta: None,
            state: State::new(),
            building: None,
            outbox: BTreeMap::new(),
            open_run: None,
            any: false,
            collection_records: Vec::new(),
            checkpoint: false,
            overlay: BTreeMap::new(),
            absent: Vec::new(),
            decoding: None,
        }
    }

    /// Reads the next records.
    pub fn feed<I>(&mut self, records: I) -> Result<(), RestoreError>
    where
        I: IntoIterator<Item = Record>,
    {
        for (key_bytes, value) in records {
            self.finish_checkpoint()?;
            // Documents are nearly every record: their keys are parsed here
            // without allocating the collection name each time.
            if let Some((collection, id)) = document_key(&key_bytes) {
                let id =
                    std::str::from_utf8(id).map_err(|_| RecordError::BadKey(key_bytes.to_vec()))?;
                if value == ABSENT_DOCUMENT {
                    self.absent.push((collection.to_owned(), id.to_owned()));
                } else {
                    self.document(collection, id, &value)?;
                }
                DirtyIds::mark(&mut self.overlay, collection, id);
                self.any = true;
                continue;
            }
            let key = StoreKey::from_bytes(&key_bytes)?;
            match &key {
                StoreKey::Meta => self.meta = Some(decode_record(&key, &value)?),
                StoreKey::Collection(name) => {
                    let record: CollectionRecord = decode_record(&key, &value)?;
                    self.collection_records.push((name.clone(), record));
                }
                StoreKey::Checkpoint => self.start_checkpoint(value)?,
                StoreKey::Outbox(seq) => {
                    // Checked to decode as an operation; only its id is
                    // kept, so its strings are borrowed, not allocated.
                    let op: OpRef<'_, OutboxFields> = decode_record(&key, &value)?;
                    if op.id.seq != *seq {
                        return Err(RestoreError::Inconsistent(format!(
                            "outbox record {seq} holds operation {}",
                            op.id.seq
                        )));
                    }
                    self.outbox_record(op.id, &value);
                }
                StoreKey::Document { .. } | StoreKey::Extension(_) => continue,
            }
            self.any = true;
        }
        Ok(())
    }

    /// Adds a decoded outbox record to the run it continues, or starts one.
    fn outbox_record(&mut self, id: OpId, record: &[u8]) {
        let joins = self
            .open_run
            .and_then(|first| self.outbox.get_mut(&first))
            .filter(|run| run.continued_by(id, record.len()));
        match joins {
            Some(run) => run.push(record),
            None => {
                self.outbox.insert(id.seq, OutboxRun::new(id, record));
                self.open_run = Some(id.seq);
            }
        }
    }

    /// Decodes up to `max_docs` more documents of the checkpoint (the state
    /// as one snapshot) fed last, so that a host can yield between slices;
    /// returns whether any are left. Without these calls, the next record
    /// fed, or [`ReplicaLoader::finish`], decodes it in one go. The
    /// checkpoint's key comes first in key order: a host feeds the first
    /// record alone, then calls this until it returns `false`.
    pub fn decode_slice(&mut self, max_docs: usize) -> Result<bool, RestoreError> {
        let Some(decoder) = &mut self.decoding else {
            return Ok(false);
        };
        match decoder.step(max_docs) {
            Ok(None) => Ok(true),
            Ok(Some(snapshot)) => {
                self.decoding = None;
                self.use_checkpoint(snapshot);
                Ok(false)
            }
            Err(e) => {
                self.decoding = None;
                Err(corrupt_checkpoint(e).into())
            }
        }
    }

    fn finish_checkpoint(&mut self) -> Result<(), RestoreError> {
        while self.decode_slice(usize::MAX)? {}
        Ok(())
    }

    /// Starts decoding a checkpoint record.
    fn start_checkpoint(&mut self, value: Vec<u8>) -> Result<(), RestoreError> {
        let start = value.len() - checkpoint_snapshot(&value)?.len();
        let decoder = SnapshotDecoder::new(value, start, usize::MAX).map_err(corrupt_checkpoint)?;
        self.decoding = Some(decoder);
        Ok(())
    }

    /// Takes the checkpoint's state as the base the records override.
    fn use_checkpoint(&mut self, snapshot: Snapshot) {
        self.checkpoint = true;
        self.build_collection();
        let read = std::mem::replace(&mut self.state, snapshot.state);
        // Documents read before the checkpoint (records out of key order)
        // still override it: moved over, their names interned anew.
        let State { names, collections } = read;
        for (name, coll) in collections {
            let target = self.state.collections.entry(name).or_default();
            for (id, doc) in coll.docs {
                let into = &mut self.state.names;
                let deleted = doc.deleted();
                let mut fields: Vec<FieldSlot> = doc
                    .fields
                    .into_iter()
                    .map(|slot| {
                        let replica = names.replica(slot.replica);
                        FieldSlot {
                            name: into.intern(names.name(slot.name)),
                            replica: into.intern_replica(replica),
                            ..slot
                        }
                    })
                    .collect();
                sort_by_name(&mut fields);
                target
                    .docs
                    .insert(id, DocState::new(doc.written, deleted, fields, into));
            }
        }
    }

    fn document(&mut self, collection: &str, id: &str, value: &[u8]) -> Result<(), RestoreError> {
        // The key is built only for an error message.
        let key = || StoreKey::Document {
            collection: collection.to_owned(),
            id: id.to_owned(),
        };
        let record = decode_doc_record(&StoreKey::Meta, value).map_err(|e| with_key(e, key()))?;
        let names = &mut self.state.names;
        let mut fields = Vec::with_capacity(record.fields.len());
        for (name, stamp, value) in record.fields {
            let stamp = stamp.or(record.written).ok_or_else(|| {
                RestoreError::Inconsistent(format!(
                    "a field of {} has no stamp of its own and the document none",
                    key()
                ))
            })?;
            let name = names.intern(name);
            fields.push(FieldSlot::new(name, stamp, value, names));
        }
        sort_by_name(&mut fields);
        let doc = DocState::new(record.written, record.deleted, fields, names);
        match &mut self.building {
            Some((name, docs)) if name == collection => docs.push((id.to_owned(), doc)),
            _ => {
                self.build_collection();
                self.building = Some((collection.to_owned(), vec![(id.to_owned(), doc)]));
            }
        }
        Ok(())
    }

    /// Moves the documents read for one collection into its tree.
    fn build_collection(&mut self) {
        let Some((name, docs)) = self.building.take() else {
            return;
        };
        let coll = self.state.collections.entry(name).or_default();
        if coll.docs.is_empty() {
            // Sorted input: built bottom-up in linear time. Duplicates
            // (which a store never returns) keep the last, as inserting would.
            coll.docs = docs.into_iter().collect();
        } else {
            coll.docs.extend(docs);
        }
    }

    /// The replica the records describe; `Ok(None)` when nothing was read.
    pub fn finish(mut self) -> Result<Option<Replica>, RestoreError> {
        self.finish_checkpoint()?;
        self.build_collection();
        for (collection, id) in &self.absent {
            if let Some(coll) = self.state.collections.get_mut(collection) {
                coll.docs.remove(id);
            }
        }
        for (name, record) in std::mem::take(&mut self.collection_records) {
            let coll = self.state.collections.entry(name).or_default();
            coll.created = record.created;
            coll.dropped = record.dropped;
        }
        // The state keeps no collection with nothing in it.
        self.state
            .collections
            .retain(|_, c| c.created.is_some() || c.dropped.is_some() || !c.docs.is_empty());
        let ReplicaLoader {
            config,
            meta,
            state,
            outbox,
            any,
            checkpoint,
            overlay,
            ..
        } = self;
        let Some(meta) = meta else {
            return if any {
                Err(RestoreError::MissingMeta)
            } else {
                Ok(None)
            };
        };
        let own_highest = meta.version.highest(meta.replica);
        if meta.next_seq == 0 || meta.next_seq <= own_highest {
            return Err(RestoreError::Inconsistent(format!(
                "next sequence number {} is not above the replica's own operations (up to {own_highest})",
                meta.next_seq
            )));
        }
        if let Some(run) = outbox
            .values()
            .find(|run| run.replica != meta.replica || run.last_seq() >= meta.next_seq)
        {
            // The run's first operation that is foreign or future.
            let seq = match run.replica == meta.replica {
                true => run.first.max(meta.next_seq),
                false => run.first,
            };
            let id = OpId {
                replica: run.replica,
                seq,
            };
            return Err(RestoreError::Inconsistent(format!(
                "outbox holds foreign or future operation {id:?}"
            )));
        }
        Ok(Some(Replica {
            id: meta.replica,
            clock: Clock::resume(meta.clock, config.max_drift_ms),
            next_seq: meta.next_seq,
            state,
            version: meta.version,
            outbox_stored_through: outbox.values().next_back().map_or(0, OutboxRun::last_seq),
            outbox: Pending::queue(outbox.into_values().map(OutboxRun::into_pending)),
            scratch: Vec::new(),
            single: super::TxWrites::default(),
            dirty: Dirty::default(),
            events: VecDeque::new(),
            reset: None,
            checkpoints: super::checkpoint::Checkpoints::restored(config, checkpoint, overlay),
        }))
    }
}

/// A put's fields as an outbox record is checked with: each decoded (its
/// name borrowed) and dropped, none collected.
struct OutboxFields;

impl<'de> Deserialize<'de> for OutboxFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OutboxFields, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = OutboxFields;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a put's fields")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OutboxFields, A::Error> {
                while seq.next_element::<(&'de str, Option<Value>)>()?.is_some() {}
                Ok(OutboxFields)
            }
        }
        // As `Vec<(String, Option<Value>)>` is read: a sequence.
        d.deserialize_seq(Fields)
    }
}

/// Consecutive outbox records of one replica, as read.
#[derive(Debug)]
struct OutboxRun {
    replica: ReplicaId,
    /// The first record's operation number.
    first: u64,
    /// Records in the run.
    len: u32,
    /// The records, each after its length, as a [`Pending`] holds them.
    bytes: Vec<u8>,
}

impl OutboxRun {
    fn new(id: OpId, record: &[u8]) -> OutboxRun {
        let mut run = OutboxRun {
            replica: id.replica,
            first: id.seq,
            len: 0,
            bytes: Vec::new(),
        };
        run.push(record);
        run
    }

    fn last_seq(&self) -> u64 {
        // A run holds at least one record and grows only while the next
        // number exists, so this never overflows, even for a damaged
        // file's record at `u64::MAX` (`first + len` would).
        self.first + (u64::from(self.len) - 1)
    }

    /// Whether operation `id`, stored in `record_len` bytes, comes next in
    /// this run and fits in one [`Pending`].
    fn continued_by(&self, id: OpId, record_len: usize) -> bool {
        let bytes = self.bytes.len() as u64 + (RUN_LENGTH_BYTES + record_len) as u64;
        id.replica == self.replica
            && Some(id.seq) == self.last_seq().checked_add(1)
            && self.len < u32::MAX
            && bytes <= MAX_RUN_BYTES
    }

    fn push(&mut self, record: &[u8]) {
        push_run_record(&mut self.bytes, record);
        self.len += 1;
    }

    /// The run as an outbox entry (positioned by [`Pending::queue`]).
    fn into_pending(self) -> Pending {
        Pending {
            seq: self.first,
            before: 0,
            len: self.len,
            start: 0,
            bytes: self.bytes.into_boxed_slice(),
        }
    }
}

/// The collection and id bytes of a document key (`D`, u16 length,
/// collection, id), or `None` for any other key or a malformed one (which
/// the general parser then reports).
fn document_key(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let rest = bytes.strip_prefix(b"D")?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return None;
    }
    let (collection, id) = rest.split_at(len);
    Some((std::str::from_utf8(collection).ok()?, id))
}

/// Orders a document's fields by name, as `DocState::new` expects. One
/// function for both callers: each closure passed to a sort is a copy of
/// the sort's code of its own (about 2 KB of the wasm package). Unstable:
/// a document's field names are distinct (a record repeating one is
/// corrupt, and any order of the repeats is as good), and the unstable
/// sort compresses along with the unstable sorts the wasm package holds
/// anyway (0.3 KB less gzip than the stable sort's code there).
fn sort_by_name(fields: &mut [FieldSlot]) {
    fields.sort_unstable_by_key(|slot| slot.name);
}

/// A checkpoint record whose snapshot does not decode.
fn corrupt_checkpoint(e: SnapshotError) -> RecordError {
    RecordError::Corrupt {
        key: StoreKey::Checkpoint,
        reason: e.to_string(),
    }
}

/// `e` about `key` instead of the placeholder key it was decoded under.
fn with_key(e: RecordError, key: StoreKey) -> RecordError {
    match e {
        RecordError::UnsupportedVersion { found, .. } => {
            RecordError::UnsupportedVersion { key, found }
        }
        RecordError::Corrupt { reason, .. } => RecordError::Corrupt { key, reason },
        other => other,
    }
}

/// A snapshot reset whose records and change events are still being
/// produced, a slice of documents at a time (see [`Replica::continue_reset`]).
#[derive(Debug)]
pub(super) struct ResetProgress {
    /// The state before the reset: its documents need their records
    /// rewritten (or deleted) and their change announced.
    old: State,
    /// The version before the reset. The stored metadata keeps it until
    /// every document record is rewritten: a crash in between leaves a
    /// mix of old and new records, which must not claim the snapshot's
    /// operations (the relay sends the snapshot again instead).
    pub(super) old_version: VersionVector,
    /// The collection being visited and the last id visited in it; `None`
    /// once every collection is.
    at: Option<(String, Option<String>)>,
}

impl Replica {
    /// Starts replacing the state with a snapshot, as
    /// [`Replica::reset_to_snapshot`] does, but leaves the rewriting of
    /// document records and the change events to
    /// [`Replica::continue_reset`], a slice at a time.
    ///
    /// Reads see the snapshot's state (with the outbox's operations
    /// re-applied) from this call on; local writes made meanwhile are kept
    /// and stored like any other. Until the reset finishes, the stored
    /// metadata keeps the version from before it, so a store holding only
    /// part of the reset never claims the snapshot's operations. A reset
    /// still in progress is finished first.
    pub fn start_reset(&mut self, now: Timestamp, snapshot: Snapshot) -> Result<(), ApplyError> {
        let newest = snapshot.newest_hlc();
        self.start_reset_received(now, snapshot, None, newest)
    }

    /// [`Replica::start_reset`] with the snapshot's bytes as received
    /// (`received`), which the next persist batch stores as the checkpoint
    /// as they are; without them, it stores a checkpoint of the new state.
    ///
    /// Either way the reset rewrites no document record: the checkpoint
    /// holds the snapshot, and only the documents the outbox's operations
    /// changed on top of it are stored as records (in the same batch).
    pub(crate) fn start_reset_received(
        &mut self,
        now: Timestamp,
        snapshot: Snapshot,
        received: Option<Vec<u8>>,
        newest: Hlc,
    ) -> Result<(), ApplyError> {
        self.finish_reset();
        // As in `merge_snapshot`: check the stamps (`newest` is the
        // snapshot's `newest_hlc`), not only the claim.
        self.clock.observe(newest, now)?;
        let old = std::mem::replace(&mut self.state, snapshot.state);
        let old_version = std::mem::replace(&mut self.version, snapshot.version);
        match received {
            Some(bytes) => self.checkpoints.set_pending(bytes),
            None => self.checkpoints.force(),
        }
        let mut changed = Vec::new();
        for op in self.outbox.iter().flat_map(Pending::ops) {
            self.version.insert(op.id);
            changed.push(self.state.apply_owned(op));
        }
        // What the checkpoint (the snapshot alone) does not hold.
        for effect in changed {
            match effect {
                Effect::Unchanged => {}
                Effect::Document { collection, id, .. } => {
                    self.dirty.mark_doc(&collection, &id);
                }
                Effect::Collection {
                    collection,
                    documents,
                } => {
                    for id in documents {
                        self.dirty.mark_doc(&collection, &id);
                    }
                }
            }
        }
        // Collection records override the checkpoint: all are rewritten
        // with it, in the same batch.
        let names = old.collections.keys().chain(self.state.collections.keys());
        self.dirty.collections.extend(names.cloned());
        // As in `apply`: never reuse the number of an own operation it holds.
        if let Some(next) = self.version.highest(self.id).checked_add(1) {
            self.next_seq = self.next_seq.max(next);
        }
        let at = next_collection(&old, &self.state, None).map(|name| (name, None));
        self.reset = Some(Box::new(ResetProgress {
            old,
            old_version,
            at,
        }));
        Ok(())
    }

    /// Whether a reset started by [`Replica::start_reset`] has documents
    /// left to rewrite.
    pub fn is_resetting(&self) -> bool {
        self.reset.is_some()
    }

    /// Goes on with the reset in progress: marks up to `max_docs` documents
    /// (at least one) for rewriting and announces those that changed.
    /// Returns whether work is left; the call that returns `false` also
    /// marks the metadata, so the next persist batch completes the reset.
    pub fn continue_reset(&mut self, max_docs: usize) -> bool {
        let Some(mut progress) = self.reset.take() else {
            return false;
        };
        let mut left = max_docs.max(1);
        while left > 0 {
            let Some((name, after)) = progress.at.take() else {
                break;
            };
            let old_docs = progress.old.collections.get(&name).map(|c| &c.docs);
            let new_docs = self.state.collections.get(&name).map(|c| &c.docs);
            let (ids, exhausted) = next_ids(old_docs, new_docs, after.as_deref(), left);
            left -= ids.len();
            let last = ids.last().cloned();
            // The checkpoint written when the reset started holds the new
            // documents: only their change is announced here.
            for id in ids {
                if progress.old.revision(&name, &id) != self.state.revision(&name, &id) {
                    self.events.push_back(Event::DocumentChanged {
                        collection: name.clone(),
                        id,
                        origin: Origin::Remote,
                    });
                }
            }
            if !exhausted {
                progress.at = Some((name, last));
                continue;
            }
            let was = progress.old.collections().any(|c| c == name);
            let is = self.state.collections().any(|c| c == name);
            if was != is {
                self.events.push_back(Event::CollectionChanged {
                    collection: name.clone(),
                    origin: Origin::Remote,
                });
            }
            progress.at =
                next_collection(&progress.old, &self.state, Some(&name)).map(|next| (next, None));
            self.dirty.collections.insert(name);
        }
        if progress.at.is_none() {
            self.dirty.meta = true;
            return false;
        }
        self.reset = Some(progress);
        true
    }

    /// Finishes a reset in progress in one go, if there is one.
    pub(super) fn finish_reset(&mut self) {
        while self.continue_reset(usize::MAX) {}
    }
}

/// The first collection name after `after` (or the first of all) in either state.
fn next_collection(old: &State, new: &State, after: Option<&str>) -> Option<String> {
    fn first<'s>(state: &'s State, after: Option<&str>) -> Option<&'s str> {
        let from = (
            after.map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
        );
        state
            .collections
            .range::<str, _>(from)
            .next()
            .map(|(name, _)| name.as_str())
    }
    match (first(old, after), first(new, after)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .map(str::to_owned)
}

/// Up to `max` ids after `after` in either tree, in order, and whether
/// they are the last.
fn next_ids(
    old: Option<&crate::state::DocMap>,
    new: Option<&crate::state::DocMap>,
    after: Option<&str>,
    max: usize,
) -> (Vec<String>, bool) {
    fn keys<'d>(
        docs: Option<&'d crate::state::DocMap>,
        after: Option<&'d str>,
    ) -> std::iter::Peekable<impl Iterator<Item = &'d str>> {
        let from = (
            after.map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
        );
        docs.into_iter()
            .flat_map(move |docs| docs.range(from).map(|(id, _)| id))
            .peekable()
    }
    let (mut a, mut b) = (keys(old, after), keys(new, after));
    let mut ids = Vec::new();
    loop {
        let next = match (a.peek(), b.peek()) {
            (None, None) => return (ids, true),
            _ if ids.len() == max => return (ids, false),
            (Some(x), Some(y)) if x == y => {
                b.next();
                a.next()
            }
            (Some(x), Some(y)) if x < y => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
        };
        ids.extend(next.map(str::to_owned));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::op::{Change, Op};
    use crate::persist::encode_record;
    use crate::store::{MemoryStore, Store};

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_ms(1_700_000_000_000 + ms)
    }

    /// A replica holding documents in two collections, one deleted, with
    /// everything stored in `store`.
    fn replica(id: u64, docs: &[(&str, &str, i64)], store: &mut MemoryStore) -> Replica {
        let mut r = Replica::new(ReplicaId(id), ReplicaConfig::default());
        for (n, (c, d, v)) in docs.iter().enumerate() {
            r.put(at(n as u64), c, d, [("v", *v)]).unwrap();
        }
        r.delete(at(100), docs[0].0, docs[0].1).unwrap();
        store.write(&r.take_persist().unwrap()).unwrap();
        r
    }

    fn events(r: &mut Replica) -> Vec<String> {
        let mut all: Vec<String> = std::iter::from_fn(|| r.poll_event())
            .map(|e| {
                let text = format!("{e:?}");
                // What was announced, whatever the origin it was heard from.
                text.split(", origin").next().unwrap_or_default().to_owned()
            })
            .collect();
        all.sort();
        // A document changed by the reset and by a local write midway may
        // be announced in either order, or twice.
        all.dedup();
        all
    }

    #[test]
    fn a_sliced_reset_ends_as_a_whole_one_and_a_crash_midway_keeps_the_old_version() {
        let old_docs: Vec<(&str, &str, i64)> = (0..20)
            .map(|n| {
                (
                    if n % 2 == 0 { "a" } else { "b" },
                    ["x", "y", "z", "w"][n % 4],
                    n as i64,
                )
            })
            .chain([("a", "only-old", 1), ("c", "gone", 2)])
            .collect();
        let new_docs: Vec<(&str, &str, i64)> = vec![
            ("a", "x", 100),
            ("a", "new", 101),
            ("b", "y", 102),
            ("d", "fresh", 103),
            ("d", "fresh2", 104),
        ];
        let mut source_store = MemoryStore::new();
        let source = replica(2, &new_docs, &mut source_store);
        let snapshot = || Snapshot::decode(&source.encode_snapshot()).unwrap();

        let mut whole_store = MemoryStore::new();
        let mut whole = replica(1, &old_docs, &mut whole_store);
        let old_version = whole.version().clone();
        events(&mut whole);
        whole.reset_to_snapshot(at(200), snapshot()).unwrap();
        whole_store.write(&whole.take_persist().unwrap()).unwrap();

        let mut sliced_store = MemoryStore::new();
        let mut sliced = replica(1, &old_docs, &mut sliced_store);
        events(&mut sliced);
        sliced.start_reset(at(200), snapshot()).unwrap();
        assert_eq!(
            sliced.state(),
            whole.state(),
            "reads see the new state at once"
        );
        whole.put(at(201), "b", "y", [("local", true)]).unwrap();
        whole_store.write(&whole.take_persist().unwrap()).unwrap();
        let mut slices = 0;
        while sliced.continue_reset(2) {
            slices += 1;
            if slices == 1 {
                // A local write midway: stored with the next slice, with
                // the metadata its sequence number needs.
                sliced.put(at(201), "b", "y", [("local", true)]).unwrap();
            }
            sliced_store.write(&sliced.take_persist().unwrap()).unwrap();
            if slices == 2 {
                // A crash here: what is stored claims only the old version.
                let crashed =
                    Replica::restore(ReplicaConfig::default(), sliced_store.read_all().unwrap())
                        .unwrap()
                        .unwrap();
                assert_eq!(crashed.version(), &old_version);
            }
        }
        assert!(slices > 3, "done in slices: {slices}");
        assert!(!sliced.is_resetting());
        sliced_store.write(&sliced.take_persist().unwrap()).unwrap();

        assert_eq!(sliced.state(), whole.state());
        assert_eq!(events(&mut sliced), events(&mut whole));
        // The snapshot went into the checkpoint: the store holds no record of
        // a document it brought (the local write may be in the checkpoint
        // or a record, depending on when the checkpoint was taken).
        for store in [&sliced_store, &whole_store] {
            let documents = store
                .read_all()
                .unwrap()
                .into_iter()
                .filter(|(key, _)| key.first() == Some(&b'D'))
                .count();
            assert!(documents <= 1, "{documents} document records");
        }
        let whole_restored =
            Replica::restore(ReplicaConfig::default(), whole_store.read_all().unwrap())
                .unwrap()
                .unwrap();
        assert_eq!(whole_restored.state(), whole.state());
        let restored = Replica::restore(ReplicaConfig::default(), sliced_store.read_all().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(restored.state(), whole.state());
        assert_eq!(restored.version(), whole.version());
    }

    #[test]
    fn a_loader_fed_in_slices_or_out_of_order_restores_the_same_replica() {
        let docs: Vec<(&str, &str, i64)> = (0..30)
            .map(|n| {
                (
                    ["a", "b", "c"][n % 3],
                    ["p", "q", "r", "s", "t"][n % 5],
                    n as i64,
                )
            })
            .collect();
        let mut store = MemoryStore::new();
        let r = replica(3, &docs, &mut store);
        let records = store.read_all().unwrap();
        for slice in [1, 4, 1000] {
            let mut loader = ReplicaLoader::new(ReplicaConfig::default());
            for part in records.chunks(slice) {
                loader.feed(part.iter().cloned()).unwrap();
            }
            let restored = loader.finish().unwrap().unwrap();
            assert_eq!(restored.state(), r.state());
            assert_eq!(restored.version(), r.version());
            assert_eq!(restored.outbox().len(), r.outbox().len());
        }
        let mut reversed = records.clone();
        reversed.reverse();
        let restored = Replica::restore(ReplicaConfig::default(), reversed)
            .unwrap()
            .unwrap();
        assert_eq!(restored.state(), r.state());
    }

    /// A peer's snapshot holding one document, and its bytes.
    fn snapshot(peer: u64, value: i64) -> (Snapshot, Vec<u8>) {
        let mut r = Replica::new(ReplicaId(peer), ReplicaConfig::default());
        r.put(at(value as u64), "c", "d", [("v", value)]).unwrap();
        let bytes = r.encode_snapshot();
        (Snapshot::decode(&bytes).unwrap(), bytes)
    }

    #[test]
    fn a_reset_without_bytes_after_one_with_bytes_stores_the_newer_state() {
        let mut r = Replica::new(ReplicaId(1), ReplicaConfig::default());
        let mut store = MemoryStore::new();
        r.put(at(0), "c", "own", [("v", 0)]).unwrap();
        store.write(&r.take_persist().unwrap()).unwrap();
        // Two resets before the next persist: the received bytes of the
        // first must not stand for the state the second left.
        let (first, first_bytes) = snapshot(2, 10);
        let newest = first.newest_hlc();
        r.start_reset_received(at(20), first, Some(first_bytes), newest)
            .unwrap();
        let (second, _) = snapshot(3, 30);
        r.reset_to_snapshot(at(40), second).unwrap();
        store.write(&r.take_persist().unwrap()).unwrap();
        let restored = Replica::restore(ReplicaConfig::default(), store.read_all().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(restored.state(), r.state());
    }

    /// The store of a replica after `ops` one-field puts, and its outbox.
    fn outbox_records(replica: u64, ops: u64) -> (MemoryStore, Vec<Op>) {
        let mut r = Replica::new(ReplicaId(replica), ReplicaConfig::default());
        let mut store = MemoryStore::new();
        for n in 0..ops {
            r.put(at(n), "c", &format!("d{n}"), [("v", n as i64)])
                .unwrap();
            // One batch per put: the records are what separate writes store.
            store.write(&r.take_persist().unwrap()).unwrap();
        }
        (store, r.outbox().collect())
    }

    fn outbox_error(records: Vec<Record>) -> String {
        match Replica::restore(ReplicaConfig::default(), records) {
            Err(RestoreError::Inconsistent(e)) => e,
            other => panic!("expected an inconsistent outbox, got {other:?}"),
        }
    }

    #[test]
    fn outbox_records_restore_as_runs_and_every_operation_is_checked() {
        let (mut store, ops) = outbox_records(1, 5);
        let records = store.read_all().unwrap();
        let mut restored = Replica::restore(ReplicaConfig::default(), records.clone())
            .unwrap()
            .unwrap();
        assert_eq!(restored.outbox().collect::<Vec<_>>(), ops);
        assert_eq!(restored.outbox.len(), 1, "five records in a row: one entry");
        // Acknowledged inside the run read back: the rest stays, stored.
        assert_eq!(restored.acknowledge(2), 2);
        store.write(&restored.take_persist().unwrap()).unwrap();
        let again = Replica::restore(ReplicaConfig::default(), store.read_all().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(again.outbox().collect::<Vec<_>>(), ops[2..]);
        assert_eq!(again.outbox.len(), 1);

        // Operation 3 of another replica in the middle of replica 1's.
        let foreign = outbox_records(2, 3).0.read_all().unwrap();
        let key = StoreKey::Outbox(3).to_bytes();
        let theirs = foreign.iter().find(|(k, _)| *k == key).unwrap().clone();
        let mixed: Vec<Record> = records
            .iter()
            .map(|record| {
                if record.0 == key {
                    theirs.clone()
                } else {
                    record.clone()
                }
            })
            .collect();
        let e = outbox_error(mixed);
        assert!(e.contains("ReplicaId(2)") && e.contains("seq: 3"), "{e}");

        // Operation 6 stored with the metadata of a replica that made 5.
        let later = outbox_records(1, 6).0.read_all().unwrap();
        let key = StoreKey::Outbox(6).to_bytes();
        let mut ahead = records.clone();
        ahead.push(later.into_iter().find(|(k, _)| *k == key).unwrap());
        ahead.sort();
        let e = outbox_error(ahead);
        assert!(e.contains("ReplicaId(1)") && e.contains("seq: 6"), "{e}");
    }

    #[test]
    fn an_outbox_record_at_the_last_sequence_number_is_an_error_not_a_panic() {
        // A damaged file: its run ends at the largest number there is.
        let (store, _) = outbox_records(1, 1);
        let mut records = store.read_all().unwrap();
        let id = OpId {
            replica: ReplicaId(1),
            seq: u64::MAX,
        };
        let op = Op {
            id,
            hlc: Hlc::new(1_700_000_000_005, 0).unwrap(),
            change: Change::Delete {
                collection: "c".into(),
                id: "d".into(),
            },
        };
        records.push((StoreKey::Outbox(u64::MAX).to_bytes(), encode_record(&op)));
        records.sort();
        let e = outbox_error(records);
        assert!(e.contains(&format!("seq: {}", u64::MAX)), "{e}");
    }

    /// Whether `bytes` decode as an outbox record: as the operation itself
    /// (the oracle), and as the loader checks them.
    fn decodes(bytes: &[u8]) -> (Option<OpId>, Option<OpId>) {
        let key = StoreKey::Outbox(1);
        let op = decode_record::<Op>(&key, bytes).ok().map(|op| op.id);
        let checked = decode_record::<OpRef<'_, OutboxFields>>(&key, bytes)
            .ok()
            .map(|op| op.id);
        (op, checked)
    }

    #[test]
    fn the_outbox_check_accepts_exactly_the_records_that_decode_as_operations() {
        let id = OpId {
            replica: ReplicaId(0x0123_4567_89ab),
            seq: 300,
        };
        let nested = Value::List(vec![
            Value::from("é"),
            Value::Map([("k".to_owned(), Value::Bytes(vec![1, 2]))].into()),
        ]);
        let changes = [
            Change::Put {
                collection: "todos".into(),
                id: "milk".into(),
                fields: vec![
                    ("title".into(), Some(Value::from("Buy milk"))),
                    ("n".into(), Some(Value::Int(-7))),
                    ("f".into(), Some(Value::Float(0.5))),
                    ("gone".into(), None),
                    ("nested".into(), Some(nested)),
                ],
            },
            Change::Delete {
                collection: "todos".into(),
                id: "milk".into(),
            },
            Change::CreateCollection {
                collection: "c".into(),
            },
            Change::DropCollection {
                collection: "c".into(),
            },
        ];
        let mut checked = 0;
        for change in changes {
            let record = encode_record(&Op {
                id,
                hlc: Hlc::new(1_700_000_000_005, 3).unwrap(),
                change,
            });
            assert_eq!(decodes(&record), (Some(id), Some(id)));
            let mut variants = Vec::new();
            for len in 0..record.len() {
                variants.push(record[..len].to_vec());
            }
            for at in 0..record.len() {
                for byte in [0x00, 0x01, 0x7f, 0x80, 0xc3, 0xff, record[at] ^ 0x01] {
                    let mut bad = record.clone();
                    bad[at] = byte;
                    variants.push(bad);
                }
            }
            for bytes in variants {
                let (op, check) = decodes(&bytes);
                assert_eq!(op, check, "{bytes:?}");
                checked += 1;
            }
        }
        assert!(checked > 400, "{checked}");
    }
}
