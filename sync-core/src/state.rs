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
use std::sync::Arc;

use crate::hlc::Hlc;
use crate::op::{Change, Op};
use crate::revision::{Revision, RevisionDigest};
use crate::stamp::Stamp;
use crate::value::Value;

/// Index of an interned field name.
pub(crate) type FieldId = u32;

/// Field names, interned once per replica: documents of a collection share
/// their field names, so each field costs four bytes of name instead of a string.
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldNames {
    names: Vec<Arc<str>>,
    index: BTreeMap<Arc<str>, FieldId>,
}

impl FieldNames {
    pub(crate) fn intern(&mut self, name: &str) -> FieldId {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        let id = FieldId::try_from(self.names.len()).unwrap_or(FieldId::MAX);
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.index.insert(name, id);
        id
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<FieldId> {
        self.index.get(name).copied()
    }

    pub(crate) fn name(&self, id: FieldId) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

/// One field of a document: its winning write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldSlot {
    pub(crate) stamp: Stamp,
    /// `None` records that the winning write removed the field.
    pub(crate) value: Option<Value>,
    pub(crate) name: FieldId,
}

/// One document's merge state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DocState {
    /// Highest put stamp after the tombstone; `Some` exactly when the document exists.
    pub(crate) written: Option<Stamp>,
    /// Highest delete stamp, kept while it is after the collection's drop.
    pub(crate) deleted: Option<Stamp>,
    /// Winning writes after the tombstone, sorted by field id.
    pub(crate) fields: Vec<FieldSlot>,
}

impl DocState {
    fn is_empty(&self) -> bool {
        self.written.is_none() && self.deleted.is_none() && self.fields.is_empty()
    }

    /// Forgets everything stamped at or before `tombstone`.
    fn prune(&mut self, tombstone: Stamp) {
        self.written = self.written.filter(|&s| s > tombstone);
        self.deleted = self.deleted.filter(|&s| s > tombstone);
        self.fields.retain(|slot| slot.stamp > tombstone);
    }

    /// Writes one field if `stamp` wins; the caller has checked the tombstone.
    fn write_field(&mut self, name: FieldId, stamp: Stamp, value: Option<Value>) -> bool {
        match self.fields.binary_search_by_key(&name, |slot| slot.name) {
            Ok(at) => {
                let slot = &mut self.fields[at];
                if slot.stamp >= stamp {
                    return false;
                }
                slot.stamp = stamp;
                slot.value = value;
            }
            Err(at) => {
                if self.fields.len() == self.fields.capacity() {
                    // Grow by a little: documents gain fields one at a time
                    // and rarely many, so doubling mostly wastes memory.
                    self.fields.reserve_exact(1 + self.fields.len() / 4);
                }
                self.fields.insert(at, FieldSlot { stamp, value, name });
            }
        }
        true
    }

    fn revision(&self, names: &FieldNames) -> Option<Revision> {
        let written = self.written?;
        let mut digest = RevisionDigest::new(written);
        // Removed-field markers stay out: compaction may collect them, and a
        // revision must not change when nothing visible did.
        for slot in self.fields.iter().filter(|slot| slot.value.is_some()) {
            digest.add_field(names.name(slot.name), slot.stamp);
        }
        Some(digest.finish())
    }
}

/// One collection's merge state.
#[derive(Clone, Debug, Default)]
pub(crate) struct CollectionState {
    pub(crate) created: Option<Stamp>,
    pub(crate) dropped: Option<Stamp>,
    pub(crate) docs: BTreeMap<String, DocState>,
}

impl CollectionState {
    fn is_empty(&self) -> bool {
        self.created.is_none() && self.dropped.is_none() && self.docs.is_empty()
    }

    fn is_visible(&self) -> bool {
        self.created.is_some() || self.docs.values().any(|doc| doc.written.is_some())
    }

    fn tombstone_for(&self, doc: Option<&DocState>) -> Option<Stamp> {
        self.dropped.max(doc.and_then(|d| d.deleted))
    }
}

/// What applying a write changed, so the replica knows what to persist and announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing: the write lost to existing state or was a duplicate.
    Unchanged,
    /// One document's state changed.
    Document { collection: String, id: String },
    /// A collection's own state changed; `documents` lists the documents
    /// whose state changed with it (pruned by a drop).
    Collection {
        collection: String,
        documents: Vec<String>,
    },
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

/// All collections, documents and fields of a replica, merged.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub(crate) names: FieldNames,
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
            } => self.put(
                collection,
                id,
                stamp,
                fields.iter().map(|(n, v)| (n.as_str(), v.clone())),
            ),
            Change::Delete { collection, id } => self.delete(collection, id, stamp),
            Change::CreateCollection { collection } => self.create_collection(collection, stamp),
            Change::DropCollection { collection } => self.drop_collection(collection, stamp),
        }
    }

    /// Applies one operation, moving its values into the state.
    pub(crate) fn apply_owned(&mut self, op: Op) -> Effect {
        let stamp = op.stamp();
        match op.change {
            Change::Put {
                collection,
                id,
                fields,
            } => self.put(&collection, &id, stamp, fields),
            Change::Delete { collection, id } => self.delete(&collection, &id, stamp),
            Change::CreateCollection { collection } => self.create_collection(&collection, stamp),
            Change::DropCollection { collection } => self.drop_collection(&collection, stamp),
        }
    }

    /// A put: marks the document written at `stamp` and writes each field.
    pub(crate) fn put<N: AsRef<str>>(
        &mut self,
        collection: &str,
        id: &str,
        stamp: Stamp,
        fields: impl IntoIterator<Item = (N, Option<Value>)>,
    ) -> Effect {
        let coll = self.collections.entry(collection.to_owned()).or_default();
        if coll
            .tombstone_for(coll.docs.get(id))
            .is_some_and(|t| stamp <= t)
        {
            cleanup_collection(&mut self.collections, collection);
            return Effect::Unchanged;
        }
        let doc = coll.docs.entry(id.to_owned()).or_default();
        let mut changed = false;
        if doc.written < Some(stamp) {
            doc.written = Some(stamp);
            changed = true;
        }
        let fields = fields.into_iter();
        if doc.fields.is_empty() {
            // A new document's fields arrive together: size the slots exactly
            // rather than let insertion double the vector (a third of the
            // memory per field otherwise).
            doc.fields.reserve_exact(fields.size_hint().0);
        }
        for (name, value) in fields {
            let name = self.names.intern(name.as_ref());
            changed |= doc.write_field(name, stamp, value);
        }
        document_effect(changed, collection, id)
    }

    /// A document delete at `stamp`.
    pub(crate) fn delete(&mut self, collection: &str, id: &str, stamp: Stamp) -> Effect {
        let coll = self.collections.entry(collection.to_owned()).or_default();
        let covered = coll
            .tombstone_for(coll.docs.get(id))
            .is_some_and(|t| stamp <= t);
        if covered {
            cleanup_collection(&mut self.collections, collection);
            return Effect::Unchanged;
        }
        let doc = coll.docs.entry(id.to_owned()).or_default();
        doc.prune(stamp);
        doc.deleted = Some(stamp);
        Effect::Document {
            collection: collection.to_owned(),
            id: id.to_owned(),
        }
    }

    /// A collection create at `stamp`.
    pub(crate) fn create_collection(&mut self, collection: &str, stamp: Stamp) -> Effect {
        let coll = self.collections.entry(collection.to_owned()).or_default();
        if coll.dropped.is_some_and(|d| stamp <= d) || coll.created >= Some(stamp) {
            cleanup_collection(&mut self.collections, collection);
            return Effect::Unchanged;
        }
        coll.created = Some(stamp);
        Effect::Collection {
            collection: collection.to_owned(),
            documents: Vec::new(),
        }
    }

    /// A collection drop at `stamp`: prunes everything it covers.
    pub(crate) fn drop_collection(&mut self, collection: &str, stamp: Stamp) -> Effect {
        let coll = self.collections.entry(collection.to_owned()).or_default();
        if coll.dropped >= Some(stamp) {
            cleanup_collection(&mut self.collections, collection);
            return Effect::Unchanged;
        }
        coll.dropped = Some(stamp);
        coll.created = coll.created.filter(|&c| c > stamp);
        let mut documents = Vec::new();
        coll.docs.retain(|id, doc| {
            let before = doc.clone();
            doc.prune(stamp);
            if *doc != before {
                documents.push(id.clone());
            }
            !doc.is_empty()
        });
        Effect::Collection {
            collection: collection.to_owned(),
            documents,
        }
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
            changed |= self.delete(collection, id, deleted) != Effect::Unchanged;
        }
        if let Some(written) = other.written {
            let no_fields: [(&str, Option<Value>); 0] = [];
            changed |= self.put(collection, id, written, no_fields) != Effect::Unchanged;
        }
        let coll = self.collections.entry(collection.to_owned()).or_default();
        let tombstone = coll.tombstone_for(coll.docs.get(id));
        let doc = coll.docs.entry(id.to_owned()).or_default();
        for (name, stamp, value) in other.fields {
            if tombstone.is_none_or(|t| stamp > t) {
                let name = self.names.intern(name);
                changed |= doc.write_field(name, stamp, value.cloned());
            }
        }
        if doc.is_empty() {
            coll.docs.remove(id);
        }
        cleanup_collection(&mut self.collections, collection);
        document_effect(changed, collection, id)
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
    pub fn collect_tombstones(&mut self, horizon: Hlc) -> usize {
        let old = |stamp: &Stamp| stamp.hlc <= horizon;
        let mut collected = 0;
        for coll in self.collections.values_mut() {
            if coll.dropped.as_ref().is_some_and(old) {
                coll.dropped = None;
                collected += 1;
            }
            coll.docs.retain(|_, doc| {
                if doc.deleted.as_ref().is_some_and(old) {
                    doc.deleted = None;
                    collected += 1;
                }
                let before = doc.fields.len();
                doc.fields
                    .retain(|slot| slot.value.is_some() || !old(&slot.stamp));
                collected += before - doc.fields.len();
                !doc.is_empty()
            });
        }
        self.collections.retain(|_, coll| !coll.is_empty());
        collected
    }

    /// The document, if it exists.
    pub fn get(&self, collection: &str, id: &str) -> Option<Document> {
        let doc = self.collections.get(collection)?.docs.get(id)?;
        self.document(id, doc)
    }

    /// The document's revision, or `None` when it does not exist.
    pub fn revision(&self, collection: &str, id: &str) -> Option<Revision> {
        self.collections
            .get(collection)?
            .docs
            .get(id)?
            .revision(&self.names)
    }

    /// Every existing document of a collection, ordered by id.
    pub fn list(&self, collection: &str) -> Vec<Document> {
        self.collections
            .get(collection)
            .map(|coll| {
                coll.docs
                    .iter()
                    .filter_map(|(id, doc)| self.document(id, doc))
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
            .map(|(id, _)| id.as_str())
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

    fn document(&self, id: &str, doc: &DocState) -> Option<Document> {
        let revision = doc.revision(&self.names)?;
        let fields = doc
            .fields
            .iter()
            .filter_map(|slot| Some((self.names.name(slot.name).to_owned(), slot.value.clone()?)))
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
            deleted: doc.deleted,
            fields: doc
                .fields
                .iter()
                .map(|s| (self.names.name(s.name), s.stamp, s.value.as_ref()))
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
    pub(crate) fields: Vec<(&'a str, Stamp, Option<&'a Value>)>,
}

impl DocParts<'_> {
    fn sorted(mut self) -> Self {
        self.fields.sort_by(|a, b| a.0.cmp(b.0));
        self
    }
}

fn document_effect(changed: bool, collection: &str, id: &str) -> Effect {
    if changed {
        Effect::Document {
            collection: collection.to_owned(),
            id: id.to_owned(),
        }
    } else {
        Effect::Unchanged
    }
}

/// Removes a collection entry that an ignored write created and left empty.
fn cleanup_collection(collections: &mut BTreeMap<String, CollectionState>, name: &str) {
    if collections.get(name).is_some_and(CollectionState::is_empty) {
        collections.remove(name);
    }
}
