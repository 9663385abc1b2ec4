//! The merged state of a replica: collections of documents of fields, each
//! field resolved by last-writer-wins on its stamp.
//!
//! # The merge rules, and why they commute
//!
//! Every fact in the state is a stamped write, and every rule keeps the
//! write with the highest stamp, so applying writes in any order, any number
//! of times, gives the same state:
//!
//! * a field keeps the value with the highest stamp;
//! * a document remembers its highest *put* stamp (`written`) and its highest
//!   *delete* stamp; a collection its highest *create* and *drop* stamps;
//! * a document's tombstone is `max(document delete, collection drop)`; a
//!   field, a put or a document delete stamped at or before the tombstone that
//!   covers it is dropped on arrival and pruned when a later tombstone lands.
//!
//! Pruning keeps the state canonical: what survives is exactly the writes
//! stamped after their tombstone, whatever the arrival order. That is what
//! lets two replicas compare states for equality, and what keeps deleted
//! data from costing memory.

use std::collections::BTreeMap;
use std::iter::FusedIterator;
use std::ops::Bound;
use std::sync::Arc;

use crate::buggify::{self, Switch};
use crate::hlc::Hlc;
use crate::op::{Change, Op};
use crate::revision::{Revision, field_term, name_hash, revision_from_sum};
use crate::stamp::{ReplicaId, Stamp};
use crate::value::{StoredValue, Value, ValueRef};

mod doc_map;
pub(crate) use doc_map::DocMap;

/// Index of an interned field name.
pub(crate) type FieldId = u32;

/// Index of an interned replica id.
pub(crate) type ReplicaIdx = u32;

/// Field names and replica ids, interned once per replica: documents of a
/// collection share their field names and most stamps come from a few
/// replicas, so a field costs four bytes of name instead of a string and
/// four bytes of replica instead of eight.
#[derive(Clone, Debug, Default)]
pub(crate) struct Names {
    names: Vec<Arc<str>>,
    /// `revision::name_hash` of each name, by id: revision digests are kept
    /// up to date on every write, and hashing the name each time would cost
    /// as much as the rest of the update.
    hashes: Vec<u64>,
    index: BTreeMap<Arc<str>, FieldId>,
    /// A direct-mapped cache in front of `index`: slot `name_hash >> 56`
    /// holds the id last interned there. A hit costs one hash of the name and
    /// one comparison instead of a comparison per tree level; a miss, which is
    /// all a peer choosing colliding names can cause, falls back to `index`.
    /// Empty until the first name is interned.
    recent: Vec<FieldId>,
    replicas: Vec<ReplicaId>,
    replica_index: BTreeMap<ReplicaId, ReplicaIdx>,
}

/// Slots in [`Names::recent`].
const RECENT_SLOTS: usize = 256;

impl Names {
    pub(crate) fn intern(&mut self, name: &str) -> FieldId {
        let hash = name_hash(name);
        // The top byte: the multiply in FNV-1a mixes every input byte into it.
        let slot = (hash >> 56) as usize % RECENT_SLOTS;
        if let Some(&id) = self.recent.get(slot) {
            if self.names.get(id as usize).is_some_and(|n| **n == *name) {
                return id;
            }
        } else {
            self.recent = vec![FieldId::MAX; RECENT_SLOTS];
        }
        let id = match self.index.get(name) {
            Some(&id) => id,
            None => {
                let id = FieldId::try_from(self.names.len()).unwrap_or(FieldId::MAX);
                let name: Arc<str> = Arc::from(name);
                self.hashes.push(hash);
                self.names.push(name.clone());
                self.index.insert(name, id);
                id
            }
        };
        self.recent[slot] = id;
        id
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<FieldId> {
        self.index.get(name).copied()
    }

    /// Like [`Names::lookup`], trying the cache of recent names first: a
    /// read of a field by name costs one hash and one comparison when the
    /// name was interned or looked up lately.
    fn find(&self, name: &str) -> Option<FieldId> {
        let slot = (name_hash(name) >> 56) as usize % RECENT_SLOTS;
        if let Some(&id) = self.recent.get(slot) {
            if self.names.get(id as usize).is_some_and(|n| **n == *name) {
                return Some(id);
            }
        }
        self.lookup(name)
    }

    pub(crate) fn name(&self, id: FieldId) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// The cached `revision::name_hash` of an interned name.
    fn hash(&self, id: FieldId) -> u64 {
        self.hashes.get(id as usize).copied().unwrap_or(0)
    }

    /// The index of a replica id, interning it if it is new.
    pub(crate) fn intern_replica(&mut self, replica: ReplicaId) -> ReplicaIdx {
        // Most operations come from the replica that wrote last.
        if let Some(last) = self.replicas.len().checked_sub(1) {
            if self.replicas[last] == replica {
                return last as ReplicaIdx;
            }
        }
        *self.replica_index.entry(replica).or_insert_with(|| {
            self.replicas.push(replica);
            ReplicaIdx::try_from(self.replicas.len() - 1).unwrap_or(ReplicaIdx::MAX)
        })
    }

    /// The replica id interned at `index`.
    pub(crate) fn replica(&self, index: ReplicaIdx) -> ReplicaId {
        self.replicas
            .get(index as usize)
            .copied()
            .unwrap_or(ReplicaId(u64::MAX))
    }
}

/// One field of a document: its winning write, in 40 bytes. Not comparable:
/// its name and replica are indices into its own state's tables (compare
/// states, which resolve them).
#[derive(Clone, Debug)]
pub(crate) struct FieldSlot {
    /// `None` records that the winning write removed the field.
    pub(crate) value: Option<StoredValue>,
    /// The clock reading of the winning write's stamp.
    pub(crate) hlc: Hlc,
    /// The replica of the winning write's stamp, interned in [`Names`].
    pub(crate) replica: ReplicaIdx,
    pub(crate) name: FieldId,
}

impl FieldSlot {
    /// A slot for a write stamped `stamp`, interning its replica.
    pub(crate) fn new(
        name: FieldId,
        stamp: Stamp,
        value: Option<Value>,
        names: &mut Names,
    ) -> Self {
        FieldSlot {
            value: value.map(StoredValue::from),
            hlc: stamp.hlc,
            replica: names.intern_replica(stamp.replica),
            name,
        }
    }

    /// The winning write's stamp.
    pub(crate) fn stamp(&self, names: &Names) -> Stamp {
        Stamp::new(self.hlc, names.replica(self.replica))
    }
}

// The slot is most of the memory a field costs, and the document state a
// large part of the rest: keep them from growing unnoticed. The sizes are
// those of 64-bit targets (wasm32's pointers are half as wide).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<FieldSlot>() == 40);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<DocState>() == 72);

/// The persist generation in which a replica's local write last marked a
/// document for rewriting (see `Replica`'s dirty set): a write that finds
/// the current generation here knows the document is already in the set and
/// skips hashing its id. Zero is no generation. A copy starts unmarked, so a
/// state cloned from one replica never claims a place in another's set.
#[derive(Debug, Default)]
pub(crate) struct DirtyMark(u32);

impl Clone for DirtyMark {
    fn clone(&self) -> Self {
        DirtyMark(0)
    }
}

/// One document's merge state. Not comparable, for the reason
/// [`FieldSlot`] is not.
#[derive(Clone, Debug, Default)]
pub(crate) struct DocState {
    /// Highest put stamp after the tombstone; `Some` exactly when the document exists.
    pub(crate) written: Option<Stamp>,
    /// Highest delete stamp, kept while it is after the collection's drop.
    /// Boxed: few documents carry one, and inline it would cost 16 bytes
    /// more in every document.
    deleted: Option<Box<Stamp>>,
    /// Winning writes after the tombstone, sorted by field id.
    pub(crate) fields: Vec<FieldSlot>,
    /// Wrapping sum of `revision::field_term` over the fields that hold a
    /// value, kept up to date by every change to `fields` so that a
    /// revision costs O(1) rather than a pass over the document.
    /// Removed-field markers stay out: compaction may collect them, and a
    /// revision must not change when nothing visible did.
    digest: u64,
    /// See [`DirtyMark`].
    mark: DirtyMark,
}

impl DocState {
    /// A document built from stored or received parts; computes the digest
    /// sum over its fields (with the cached name hashes).
    pub(crate) fn new(
        written: Option<Stamp>,
        deleted: Option<Stamp>,
        fields: Vec<FieldSlot>,
        names: &Names,
    ) -> DocState {
        let mut doc = DocState {
            written,
            deleted: deleted.map(Box::new),
            fields,
            digest: 0,
            mark: DirtyMark(0),
        };
        doc.digest = doc
            .fields
            .iter()
            .filter(|slot| slot.value.is_some())
            .fold(0, |sum, slot| {
                sum.wrapping_add(field_term(names.hash(slot.name), slot.stamp(names)))
            });
        doc.debug_check(names);
        doc
    }

    /// The highest delete stamp, kept while it is after the collection's drop.
    pub(crate) fn deleted(&self) -> Option<Stamp> {
        self.deleted.as_deref().copied()
    }

    fn is_empty(&self) -> bool {
        self.written.is_none() && self.deleted.is_none() && self.fields.is_empty()
    }

    /// Forgets everything stamped at or before `tombstone`.
    fn prune(&mut self, tombstone: Stamp, names: &Names) {
        self.written = self.written.filter(|&s| s > tombstone);
        self.deleted = self.deleted.take().filter(|s| **s > tombstone);
        let digest = &mut self.digest;
        self.fields.retain(|slot| {
            let stamp = slot.stamp(names);
            let keep = stamp > tombstone;
            if !keep && slot.value.is_some() {
                *digest = digest.wrapping_sub(field_term(names.hash(slot.name), stamp));
            }
            keep
        });
    }

    /// Writes one field if `stamp` wins; the caller has checked the tombstone.
    /// `replica` is `stamp.replica` interned.
    fn write_field(
        &mut self,
        name: FieldId,
        stamp: Stamp,
        replica: ReplicaIdx,
        value: Option<StoredValue>,
        names: &Names,
    ) -> bool {
        let name_hash = names.hash(name);
        let adds = value.is_some();
        // A name newer than every name the document has goes last: the
        // common case when a document gains fields (names are numbered in
        // the order this replica first saw them), found without a search
        // whose every probe would miss the cache.
        let found = match self.fields.last() {
            Some(last) if last.name < name => Err(self.fields.len()),
            _ => self.fields.binary_search_by_key(&name, |slot| slot.name),
        };
        match found {
            Ok(at) => {
                let slot = &mut self.fields[at];
                let old = slot.stamp(names);
                if old >= stamp {
                    return false;
                }
                if slot.value.is_some() {
                    self.digest = self.digest.wrapping_sub(field_term(name_hash, old));
                }
                slot.hlc = stamp.hlc;
                slot.replica = replica;
                slot.value = value;
            }
            Err(at) => {
                if self.fields.len() == self.fields.capacity() {
                    // Grow by a little: documents gain fields one at a time
                    // and rarely many, so doubling mostly wastes memory.
                    self.fields.reserve_exact(1 + self.fields.len() / 4);
                }
                let slot = FieldSlot {
                    value,
                    hlc: stamp.hlc,
                    replica,
                    name,
                };
                self.fields.insert(at, slot);
            }
        }
        if adds {
            self.digest = self.digest.wrapping_add(field_term(name_hash, stamp));
        }
        true
    }

    /// The document's revision; `None` when it does not exist.
    fn revision(&self) -> Option<Revision> {
        Some(revision_from_sum(self.written?, self.digest))
    }

    /// The digest sum by its definition: every visible field's term, with
    /// its name hashed afresh rather than taken from the cache.
    pub(crate) fn digest_from_scratch(&self, names: &Names) -> u64 {
        self.fields
            .iter()
            .filter(|slot| slot.value.is_some())
            .fold(0u64, |sum, slot| {
                let hash = name_hash(names.name(slot.name));
                sum.wrapping_add(field_term(hash, slot.stamp(names)))
            })
    }

    /// Debug builds check after every change that the maintained digest
    /// sum equals the one computed from scratch.
    fn debug_check(&self, names: &Names) {
        debug_assert_eq!(
            self.digest,
            self.digest_from_scratch(names),
            "maintained revision digest drifted from its definition"
        );
    }
}

/// One collection's merge state.
#[derive(Clone, Debug, Default)]
pub(crate) struct CollectionState {
    pub(crate) created: Option<Stamp>,
    pub(crate) dropped: Option<Stamp>,
    pub(crate) docs: DocMap,
}

impl CollectionState {
    fn is_empty(&self) -> bool {
        self.created.is_none() && self.dropped.is_none() && self.docs.is_empty()
    }

    fn is_visible(&self) -> bool {
        self.created.is_some() || self.docs.values().any(|doc| doc.written.is_some())
    }
}

/// What applying a write changed, so the replica knows what to persist and announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing: the write lost to existing state or was a duplicate.
    Unchanged,
    /// One document's state changed.
    Document {
        collection: String,
        id: String,
        /// The document's revision after the change (`None`: it does not
        /// exist), so a local write need not look the document up again.
        revision: Option<Revision>,
    },
    /// A collection's own state changed; `documents` lists the documents
    /// whose state changed with it (pruned by a drop).
    Collection {
        collection: String,
        documents: Vec<String>,
    },
}

/// What one write did to its document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DocChange {
    /// Nothing: the write lost to existing state or repeated it.
    Unchanged,
    /// The document changed; this is its revision now (`None`: it does not exist).
    Changed(Option<Revision>),
}

impl DocChange {
    /// The effect of the change, naming the document only when it changed:
    /// `names` gives the collection and id, so an operation's own strings
    /// can be moved in rather than copied.
    fn effect(self, names: impl FnOnce() -> (String, String)) -> Effect {
        match self {
            DocChange::Unchanged => Effect::Unchanged,
            DocChange::Changed(revision) => {
                let (collection, id) = names();
                Effect::Document {
                    collection,
                    id,
                    revision,
                }
            }
        }
    }
}

/// A document as applications see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// The document id.
    pub id: String,
    /// Its live fields.
    pub fields: BTreeMap<String, Value>,
    /// Its revision, for conditional writes.
    pub revision: Revision,
}

/// The field named `field` of `doc`, if it holds a value.
fn field_of<'a>(doc: &'a DocState, names: &'a Names, field: &str) -> Option<ValueRef<'a>> {
    let name = names.find(field)?;
    let at = doc
        .fields
        .binary_search_by_key(&name, |slot| slot.name)
        .ok()?;
    doc.fields[at].value.as_ref().map(StoredValue::view)
}

/// A document borrowed from the state: its id, revision and fields, read
/// in place. Nothing is copied or allocated; [`DocumentRef::to_document`]
/// makes an owned [`Document`].
///
/// ```
/// use sync_core::{Timestamp, Replica, ReplicaConfig, ReplicaId, Value};
///
/// let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
/// let revision = replica.put(Timestamp::from_unix_ms(1_000), "todos", "milk", [("title", Value::from("Buy milk")), ("done", false.into())])?;
/// let doc = replica.document("todos", "milk").expect("exists");
/// assert_eq!(doc.id(), "milk");
/// assert_eq!(doc.revision(), revision);
/// assert_eq!(doc.get("title").and_then(|v| v.as_str()), Some("Buy milk"));
/// assert_eq!(doc.fields().count(), 2);
/// # Ok::<(), sync_core::WriteError>(())
/// ```
#[derive(Clone, Copy)]
pub struct DocumentRef<'a> {
    id: &'a str,
    doc: &'a DocState,
    names: &'a Names,
    /// The document's highest put stamp (it exists, so there is one).
    written: Stamp,
}

impl<'a> DocumentRef<'a> {
    /// A view of `doc`, `None` when it does not exist.
    fn new(id: &'a str, doc: &'a DocState, names: &'a Names) -> Option<DocumentRef<'a>> {
        Some(DocumentRef {
            id,
            doc,
            names,
            written: doc.written?,
        })
    }

    /// The document id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// Its revision, for conditional writes.
    pub fn revision(&self) -> Revision {
        revision_from_sum(self.written, self.doc.digest)
    }

    /// The value of one field, if the document has it.
    pub fn get(&self, field: &str) -> Option<ValueRef<'a>> {
        field_of(self.doc, self.names, field)
    }

    /// Its fields that hold a value, as `(name, value)` pairs.
    ///
    /// The order is unspecified (it is the order in which this replica
    /// first saw each name), but the same on every call; collect into a
    /// `BTreeMap` for name order.
    pub fn fields(&self) -> Fields<'a> {
        Fields {
            slots: self.doc.fields.iter(),
            names: self.names,
        }
    }

    /// An owned copy, as [`State::get`] returns it.
    pub fn to_document(&self) -> Document {
        Document {
            id: self.id.to_owned(),
            fields: self
                .fields()
                .map(|(name, value)| (name.to_owned(), value.to_value()))
                .collect(),
            revision: self.revision(),
        }
    }
}

impl core::fmt::Debug for DocumentRef<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DocumentRef")
            .field("id", &self.id)
            .field("revision", &self.revision())
            .field("fields", &DebugFields(*self))
            .finish()
    }
}

struct DebugFields<'a>(DocumentRef<'a>);

impl core::fmt::Debug for DebugFields<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map().entries(self.0.fields()).finish()
    }
}

/// The fields of a [`DocumentRef`] that hold a value, as `(name, value)`.
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    slots: std::slice::Iter<'a, FieldSlot>,
    names: &'a Names,
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a str, ValueRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.slots.find_map(|slot| {
            let value = slot.value.as_ref()?;
            Some((self.names.name(slot.name), value.view()))
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.slots.len()))
    }
}

impl FusedIterator for Fields<'_> {}

/// The existing documents of a collection, borrowed, in id order: see
/// [`State::documents`].
#[derive(Clone, Debug)]
pub struct Documents<'a> {
    docs: Option<&'a DocMap>,
    names: &'a Names,
    range: Option<doc_map::Iter<'a>>,
    after: Option<&'a str>,
    prefix: &'a str,
}

impl<'a> Documents<'a> {
    /// Only documents whose id sorts after `id` (not `id` itself): the
    /// start of the next page when `id` ended the last one.
    pub fn after(mut self, id: &'a str) -> Documents<'a> {
        self.after = Some(id);
        self.restart();
        self
    }

    /// Only documents whose id starts with `prefix`.
    pub fn prefix(mut self, prefix: &'a str) -> Documents<'a> {
        self.prefix = prefix;
        self.restart();
        self
    }

    /// Positions the range at the first id both bounds allow.
    fn restart(&mut self) {
        let start = match self.after {
            Some(after) if after >= self.prefix => Bound::Excluded(after),
            _ => Bound::Included(self.prefix),
        };
        self.range = self.docs.map(|docs| docs.range((start, Bound::Unbounded)));
    }
}

impl<'a> Iterator for Documents<'a> {
    type Item = DocumentRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let range = self.range.as_mut()?;
        for (id, doc) in range.by_ref() {
            if !id.starts_with(self.prefix) {
                // Ids with the prefix are contiguous: past them, none follow.
                self.range = None;
                return None;
            }
            if let Some(doc) = DocumentRef::new(id, doc, self.names) {
                return Some(doc);
            }
        }
        None
    }
}

impl FusedIterator for Documents<'_> {}

/// All collections, documents and fields of a replica, merged.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub(crate) names: Names,
    pub(crate) collections: BTreeMap<String, CollectionState>,
}

impl State {
    /// An empty state.
    pub fn new() -> State {
        State::default()
    }

    /// Applies one operation under the merge rules.
    pub(crate) fn apply(&mut self, op: &Op) -> Effect {
        let stamp = op.stamp();
        match &op.change {
            Change::Put {
                collection,
                id,
                fields,
            } => self
                .put(
                    collection,
                    id,
                    stamp,
                    fields.iter().map(|(n, v)| (n.as_str(), v.clone())),
                )
                .effect(|| (collection.clone(), id.clone())),
            Change::Delete { collection, id } => self
                .delete(collection, id, stamp)
                .effect(|| (collection.clone(), id.clone())),
            Change::CreateCollection { collection } => self.create_collection(collection, stamp),
            Change::DropCollection { collection } => self.drop_collection(collection, stamp),
        }
    }

    /// Applies one operation, moving its values, collection and id into the
    /// state and the effect instead of copying them.
    pub(crate) fn apply_owned(&mut self, op: Op) -> Effect {
        let stamp = op.stamp();
        match op.change {
            Change::Put {
                collection,
                id,
                fields,
            } => self
                .put(&collection, &id, stamp, fields)
                .effect(|| (collection, id)),
            Change::Delete { collection, id } => self
                .delete(&collection, &id, stamp)
                .effect(|| (collection, id)),
            Change::CreateCollection { collection } => self.create_collection(&collection, stamp),
            Change::DropCollection { collection } => self.drop_collection(&collection, stamp),
        }
    }

    /// Runs `f` on a collection's state, creating the collection only if `f`
    /// leaves something in it and removing it if `f` empties it.
    ///
    /// One search on the common path, and no key allocated unless the
    /// collection is new: a write that loses leaves no empty entry behind.
    fn with_collection<R>(
        &mut self,
        collection: &str,
        f: impl FnOnce(&mut CollectionState, &mut Names) -> R,
    ) -> R {
        if let Some(coll) = self.collections.get_mut(collection) {
            let result = f(coll, &mut self.names);
            if coll.is_empty() {
                self.collections.remove(collection);
            }
            return result;
        }
        let mut coll = CollectionState::default();
        let result = f(&mut coll, &mut self.names);
        if !coll.is_empty() {
            self.collections.insert(collection.to_owned(), coll);
        }
        result
    }

    /// A put: marks the document written at `stamp` and writes each field.
    pub(crate) fn put<N: AsRef<str>>(
        &mut self,
        collection: &str,
        id: &str,
        stamp: Stamp,
        fields: impl IntoIterator<Item = (N, Option<Value>)>,
    ) -> DocChange {
        self.put_marked(collection, id, stamp, fields, 0, true).0
    }

    /// Like [`State::put`]; a document it changes is marked with
    /// `generation` (see [`DirtyMark`]; zero marks nothing), and the flag
    /// says whether it changed and was not marked so before. Without
    /// `revision`, a change is reported as `Changed(None)`: the revision's
    /// digest costs three hashes, and a transaction of many writes reports
    /// none.
    pub(crate) fn put_marked<N: AsRef<str>>(
        &mut self,
        collection: &str,
        id: &str,
        stamp: Stamp,
        fields: impl IntoIterator<Item = (N, Option<Value>)>,
        generation: u32,
        revision: bool,
    ) -> (DocChange, bool) {
        self.with_collection(collection, |coll, names| {
            let dropped = coll.dropped;
            with_doc(&mut coll.docs, id, |doc| {
                if dropped.max(doc.deleted()).is_some_and(|t| stamp <= t) {
                    return (DocChange::Unchanged, false);
                }
                let mut changed = false;
                if doc.written < Some(stamp) {
                    doc.written = Some(stamp);
                    changed = true;
                }
                let fields = fields.into_iter();
                if doc.fields.is_empty() {
                    // A new document's fields arrive together: size the slots
                    // exactly rather than let insertion double the vector (a
                    // third of the memory per field otherwise).
                    doc.fields.reserve_exact(fields.size_hint().0);
                }
                let replica = names.intern_replica(stamp.replica);
                for (name, value) in fields {
                    if value.is_none() && buggify::on(Switch::IgnoreUnsets) {
                        continue;
                    }
                    let name = names.intern(name.as_ref());
                    let value = value.map(StoredValue::from);
                    changed |= doc.write_field(name, stamp, replica, value, names);
                }
                doc.debug_check(names);
                if !changed {
                    return (DocChange::Unchanged, false);
                }
                let newly = generation != 0 && doc.mark.0 != generation;
                if generation != 0 {
                    doc.mark.0 = generation;
                }
                let revision = if revision { doc.revision() } else { None };
                (DocChange::Changed(revision), newly)
            })
        })
    }

    /// Clears every document's [`DirtyMark`] (when the generations wrap).
    pub(crate) fn clear_dirty_marks(&mut self) {
        for coll in self.collections.values_mut() {
            for doc in coll.docs.values_mut() {
                doc.mark.0 = 0;
            }
        }
    }

    /// A document delete at `stamp`.
    pub(crate) fn delete(&mut self, collection: &str, id: &str, stamp: Stamp) -> DocChange {
        self.with_collection(collection, |coll, names| {
            let dropped = coll.dropped;
            with_doc(&mut coll.docs, id, |doc| {
                if dropped.max(doc.deleted()).is_some_and(|t| stamp <= t) {
                    return DocChange::Unchanged;
                }
                doc.prune(stamp, names);
                doc.deleted = Some(Box::new(stamp));
                doc.debug_check(names);
                DocChange::Changed(doc.revision())
            })
        })
    }

    /// A collection create at `stamp`.
    pub(crate) fn create_collection(&mut self, collection: &str, stamp: Stamp) -> Effect {
        self.with_collection(collection, |coll, _| {
            if coll.dropped.is_some_and(|d| stamp <= d) || coll.created >= Some(stamp) {
                return Effect::Unchanged;
            }
            coll.created = Some(stamp);
            Effect::Collection {
                collection: collection.to_owned(),
                documents: Vec::new(),
            }
        })
    }

    /// A collection drop at `stamp`: prunes everything it covers.
    pub(crate) fn drop_collection(&mut self, collection: &str, stamp: Stamp) -> Effect {
        self.with_collection(collection, |coll, names| {
            if coll.dropped >= Some(stamp) {
                return Effect::Unchanged;
            }
            coll.dropped = Some(stamp);
            coll.created = coll.created.filter(|&c| c > stamp);
            let mut documents = Vec::new();
            coll.docs.retain(|id, doc| {
                // Pruning only removes, so comparing what it can remove tells
                // whether the document changed.
                let before = (doc.written, doc.deleted(), doc.fields.len());
                doc.prune(stamp, names);
                doc.debug_check(names);
                if (doc.written, doc.deleted(), doc.fields.len()) != before {
                    documents.push(id.to_owned());
                }
                !doc.is_empty()
            });
            Effect::Collection {
                collection: collection.to_owned(),
                documents,
            }
        })
    }

    /// Joins a whole document's merge state from another replica (a snapshot).
    pub(crate) fn merge_document(
        &mut self,
        collection: &str,
        id: &str,
        other: DocParts<'_>,
    ) -> Effect {
        let mut changed = false;
        if let Some(deleted) = other.deleted {
            changed |= self.delete(collection, id, deleted) != DocChange::Unchanged;
        }
        if let Some(written) = other.written {
            let no_fields: [(&str, Option<Value>); 0] = [];
            changed |= self.put(collection, id, written, no_fields) != DocChange::Unchanged;
        }
        self.with_collection(collection, |coll, names| {
            let dropped = coll.dropped;
            with_doc(&mut coll.docs, id, |doc| {
                let tombstone = dropped.max(doc.deleted());
                for (name, stamp, value) in other.fields {
                    if tombstone.is_none_or(|t| stamp > t) {
                        let name = names.intern(name);
                        let replica = names.intern_replica(stamp.replica);
                        changed |= doc.write_field(name, stamp, replica, value.cloned(), names);
                    }
                }
                doc.debug_check(names);
                if changed {
                    DocChange::Changed(doc.revision())
                } else {
                    DocChange::Unchanged
                }
            })
        })
        .effect(|| (collection.to_owned(), id.to_owned()))
    }

    /// Joins a collection's own stamps from another replica (a snapshot).
    /// Returns what the drop and the create changed, as applying them would.
    pub(crate) fn merge_collection(
        &mut self,
        collection: &str,
        created: Option<Stamp>,
        dropped: Option<Stamp>,
    ) -> [Effect; 2] {
        let dropped = dropped.map_or(Effect::Unchanged, |d| self.drop_collection(collection, d));
        let created = created.map_or(Effect::Unchanged, |c| self.create_collection(collection, c));
        [dropped, created]
    }

    /// Forgets tombstones stamped at or before `horizon`: document deletes,
    /// collection drops and removed-field markers. Returns how many went.
    ///
    /// Only safe once no write stamped at or before `horizon` can still
    /// arrive; the room decides that from its clients' acknowledgements.
    #[cfg(feature = "relay")]
    pub(crate) fn collect_tombstones(&mut self, horizon: Hlc) -> usize {
        let old = |stamp: &Stamp| stamp.hlc <= horizon;
        let mut collected = 0;
        let names = &self.names;
        for coll in self.collections.values_mut() {
            if coll.dropped.as_ref().is_some_and(old) {
                coll.dropped = None;
                collected += 1;
            }
            coll.docs.retain(|_, doc| {
                if doc.deleted.as_deref().is_some_and(old) {
                    doc.deleted = None;
                    collected += 1;
                }
                let before = doc.fields.len();
                // Removed-field markers are not in the digest sum: it stays.
                doc.fields
                    .retain(|slot| slot.value.is_some() || slot.hlc > horizon);
                collected += before - doc.fields.len();
                doc.debug_check(names);
                !doc.is_empty()
            });
        }
        self.collections.retain(|_, coll| !coll.is_empty());
        collected
    }

    /// The document, if it exists.
    pub fn get(&self, collection: &str, id: &str) -> Option<Document> {
        let doc = self.collections.get(collection)?.docs.get(id)?;
        self.owned_document(id, doc)
    }

    /// A document, borrowed: reading it allocates nothing.
    ///
    /// `None` when it does not exist. See [`DocumentRef`].
    pub fn document<'a>(&'a self, collection: &str, id: &str) -> Option<DocumentRef<'a>> {
        let (id, doc) = self.collections.get(collection)?.docs.get_key_value(id)?;
        DocumentRef::new(id, doc, &self.names)
    }

    /// One field of a document, borrowed; `None` when the document does not
    /// exist or has no such field.
    ///
    /// ```
    /// use sync_core::{Timestamp, Replica, ReplicaConfig, ReplicaId, Value};
    ///
    /// let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
    /// replica.put(Timestamp::from_unix_ms(1_000), "todos", "milk", [("done", Value::from(false))])?;
    /// let state = replica.state();
    /// assert_eq!(state.get_field("todos", "milk", "done").and_then(|v| v.as_bool()), Some(false));
    /// assert_eq!(state.get_field("todos", "milk", "title"), None);
    /// # Ok::<(), sync_core::WriteError>(())
    /// ```
    pub fn get_field<'a>(
        &'a self,
        collection: &str,
        id: &str,
        field: &str,
    ) -> Option<ValueRef<'a>> {
        let doc = self.collections.get(collection)?.docs.get(id)?;
        doc.written?;
        field_of(doc, &self.names, field)
    }

    /// The existing documents of a collection, borrowed, in id order.
    ///
    /// Narrow the range with [`Documents::after`] and [`Documents::prefix`],
    /// and page with [`Iterator::take`]: a `list({prefix, limit, after})`
    /// is `documents(c).prefix(p).after(a).take(limit)`, and the next page
    /// starts after the last id of this one. Iterating allocates nothing.
    ///
    /// ```
    /// use sync_core::{Timestamp, Replica, ReplicaConfig, ReplicaId, Value};
    ///
    /// let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
    /// for id in ["a1", "a2", "a3", "b1"] {
    ///     replica.put(Timestamp::from_unix_ms(1_000), "todos", id, [("title", Value::from(id))])?;
    /// }
    /// let page: Vec<&str> = replica.documents("todos").prefix("a").after("a1").take(10)
    ///     .map(|doc| doc.id())
    ///     .collect();
    /// assert_eq!(page, ["a2", "a3"]);
    /// for doc in replica.documents("todos") {
    ///     for (name, value) in doc.fields() {
    ///         println!("{}.{name} = {value}", doc.id());
    ///     }
    /// }
    /// # Ok::<(), sync_core::WriteError>(())
    /// ```
    pub fn documents<'a>(&'a self, collection: &str) -> Documents<'a> {
        let docs = self.collections.get(collection).map(|c| &c.docs);
        Documents {
            docs,
            names: &self.names,
            range: docs.map(DocMap::iter),
            after: None,
            prefix: "",
        }
    }

    /// The document's revision, or `None` when it does not exist.
    pub fn revision(&self, collection: &str, id: &str) -> Option<Revision> {
        self.collections.get(collection)?.docs.get(id)?.revision()
    }

    /// Every existing document of a collection, ordered by id.
    pub fn list(&self, collection: &str) -> Vec<Document> {
        self.collections
            .get(collection)
            .map(|coll| {
                coll.docs
                    .iter()
                    .filter_map(|(id, doc)| self.owned_document(id, doc))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ids of every existing document of a collection, ordered.
    pub fn ids<'a>(&'a self, collection: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.collections
            .get(collection)
            .into_iter()
            .flat_map(|coll| coll.docs.iter())
            .filter(|(_, doc)| doc.written.is_some())
            .map(|(id, _)| id)
    }

    /// Names of the collections that exist (created, or holding a document), ordered.
    pub fn collections(&self) -> impl Iterator<Item = &str> + '_ {
        self.collections
            .iter()
            .filter(|(_, c)| c.is_visible())
            .map(|(name, _)| name.as_str())
    }

    /// Number of existing documents across all collections.
    pub fn document_count(&self) -> usize {
        self.collections
            .values()
            .flat_map(|c| c.docs.values())
            .filter(|d| d.written.is_some())
            .count()
    }

    /// Number of stored field slots, including removed-field markers.
    pub fn field_count(&self) -> usize {
        self.collections
            .values()
            .flat_map(|c| c.docs.values())
            .map(|d| d.fields.len())
            .sum()
    }

    fn owned_document(&self, id: &str, doc: &DocState) -> Option<Document> {
        let revision = doc.revision()?;
        let fields = doc
            .fields
            .iter()
            .filter_map(|slot| {
                let value = slot.value.as_ref()?.to_value();
                Some((self.names.name(slot.name).to_owned(), value))
            })
            .collect();
        Some(Document {
            id: id.to_owned(),
            fields,
            revision,
        })
    }

    /// Document state with field names resolved, for persistence and snapshots.
    pub(crate) fn doc_parts<'a>(&'a self, doc: &'a DocState) -> DocParts<'a> {
        DocParts {
            written: doc.written,
            deleted: doc.deleted(),
            fields: doc
                .fields
                .iter()
                .map(|s| {
                    (
                        self.names.name(s.name),
                        s.stamp(&self.names),
                        s.value.as_ref(),
                    )
                })
                .collect(),
        }
    }
}

impl PartialEq for State {
    /// Two states are equal when they hold the same writes, whatever order
    /// their field names were interned in.
    fn eq(&self, other: &State) -> bool {
        self.collections.len() == other.collections.len()
            && self
                .collections
                .iter()
                .zip(&other.collections)
                .all(|((an, a), (bn, b))| {
                    an == bn
                        && a.created == b.created
                        && a.dropped == b.dropped
                        && a.docs.len() == b.docs.len()
                        && a.docs.iter().zip(&b.docs).all(|((ai, ad), (bi, bd))| {
                            ai == bi && self.doc_parts(ad).sorted() == other.doc_parts(bd).sorted()
                        })
                })
    }
}

impl Eq for State {}

/// A document's merge state with names resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DocParts<'a> {
    pub(crate) written: Option<Stamp>,
    pub(crate) deleted: Option<Stamp>,
    pub(crate) fields: Vec<(&'a str, Stamp, Option<&'a StoredValue>)>,
}

impl DocParts<'_> {
    fn sorted(mut self) -> Self {
        self.fields.sort_by(|a, b| a.0.cmp(b.0));
        self
    }
}

/// Runs `f` on a document's state, as [`State::with_collection`] does for
/// collections: one search when the document exists, and no entry left
/// behind (nor key allocated) for a write that changes nothing.
fn with_doc<R>(docs: &mut DocMap, id: &str, f: impl FnOnce(&mut DocState) -> R) -> R {
    if let Some(doc) = docs.get_mut(id) {
        let result = f(doc);
        if doc.is_empty() {
            docs.remove(id);
        }
        return result;
    }
    let mut doc = DocState::default();
    let result = f(&mut doc);
    if !doc.is_empty() {
        docs.insert(id, doc);
    }
    result
}

#[cfg(test)]
impl State {
    /// Checks every document's maintained digest sum against its definition.
    pub(crate) fn check_revisions(&self) -> Result<(), String> {
        for (name, coll) in &self.collections {
            for (id, doc) in &coll.docs {
                let scratch = doc.digest_from_scratch(&self.names);
                if doc.digest != scratch {
                    return Err(format!(
                        "{name}/{id}: maintained digest {:#x}, from scratch {scratch:#x}",
                        doc.digest
                    ));
                }
            }
        }
        Ok(())
    }
}
