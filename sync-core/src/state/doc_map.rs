//! A collection's documents by id: hashed for the point lookups that every
//! write and read makes, ordered for listing, paging and encoding.
//!
//! A tree alone made each lookup a string comparison per level, the
//! largest single cost of a local write; a hash table alone has no order.
//! Both hold the id's one allocation, so a document costs 16 bytes of
//! pointer more than in a tree alone, and the table's buckets hold the
//! document state inline.
//!
//! The hash (`revision::IdHasher`) has no secret key, because the core
//! draws no randomness: ids a peer chose to collide in the table's low
//! bits make lookups in their collection slower, in proportion to how many
//! collide. Bounding that (a probe limit falling back to the ordered set)
//! needs a table of our own; std's does not report its probe lengths.

use std::collections::{BTreeSet, HashMap, btree_set};
use std::hash::BuildHasherDefault;
use std::iter::FusedIterator;
use std::ops::Bound;
use std::sync::Arc;

use super::DocState;
use crate::revision::IdHasher;

/// The hash table of a [`DocMap`].
type ById = HashMap<Arc<str>, DocState, BuildHasherDefault<IdHasher>>;

/// Documents by id. Every id in `order` is a key of `by_id` and back.
#[derive(Clone, Default)]
pub(crate) struct DocMap {
    /// Every document by id. Never iterated where the order shows: it
    /// depends on the table's history, not on the ids alone.
    by_id: ById,
    /// The same ids, in order.
    order: BTreeSet<Arc<str>>,
}

impl DocMap {
    /// Number of documents (including those that only hold a tombstone).
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&DocState> {
        self.by_id.get(id)
    }

    /// The document with the map's own copy of its id.
    pub(crate) fn get_key_value(&self, id: &str) -> Option<(&str, &DocState)> {
        self.by_id.get_key_value(id).map(|(id, doc)| (&**id, doc))
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut DocState> {
        self.by_id.get_mut(id)
    }

    /// Inserts or replaces a document; returns the one it replaced. The id
    /// is copied only when it is new.
    pub(crate) fn insert(&mut self, id: impl AsRef<str>, doc: DocState) -> Option<DocState> {
        let id = id.as_ref();
        if let Some(old) = self.by_id.get_mut(id) {
            return Some(std::mem::replace(old, doc));
        }
        let id: Arc<str> = Arc::from(id);
        self.order.insert(id.clone());
        self.by_id.insert(id, doc);
        None
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<DocState> {
        let doc = self.by_id.remove(id)?;
        self.order.remove(id);
        Some(doc)
    }

    /// Keeps the documents for which `keep` is true, visiting them in id
    /// order (callers report what they drop in that order).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, &mut DocState) -> bool) {
        let by_id = &mut self.by_id;
        self.order.retain(|id| {
            let kept = by_id.get_mut(&**id).is_some_and(|doc| keep(id, doc));
            if !kept {
                by_id.remove(&**id);
            }
            kept
        });
    }

    /// The documents in id order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            ids: Ids::All(self.order.iter()),
            by_id: &self.by_id,
        }
    }

    /// The documents whose ids fall in `bounds`, in id order.
    pub(crate) fn range<'a>(&'a self, bounds: (Bound<&str>, Bound<&str>)) -> Iter<'a> {
        Iter {
            ids: Ids::Range(self.order.range::<str, _>(bounds)),
            by_id: &self.by_id,
        }
    }

    /// The documents' states in id order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &DocState> + '_ {
        self.iter().map(|(_, doc)| doc)
    }

    /// The documents' states, mutable, in no particular order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut DocState> + '_ {
        self.by_id.values_mut()
    }
}

/// In id order, so that a state's debug output is the same every run.
impl std::fmt::Debug for DocMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Documents in id order, borrowed: see [`DocMap::range`].
#[derive(Clone, Debug)]
pub(crate) struct Iter<'a> {
    ids: Ids<'a>,
    by_id: &'a ById,
}

/// The ids an [`Iter`] visits: all of them, whose number is known (an
/// encoder writes it before the documents), or a range.
#[derive(Clone, Debug)]
enum Ids<'a> {
    All(btree_set::Iter<'a, Arc<str>>),
    Range(btree_set::Range<'a, Arc<str>>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a DocState);

    fn next(&mut self) -> Option<Self::Item> {
        let by_id = self.by_id;
        let found = |id: &'a Arc<str>| by_id.get_key_value(&**id).map(|(id, doc)| (&**id, doc));
        match &mut self.ids {
            Ids::All(ids) => ids.find_map(found),
            Ids::Range(ids) => ids.find_map(found),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.ids {
            // Exact: every id in the order has its document.
            Ids::All(ids) => ids.size_hint(),
            Ids::Range(ids) => ids.size_hint(),
        }
    }
}

impl FusedIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a DocMap {
    type Item = (&'a str, &'a DocState);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The documents, moved out in id order.
impl IntoIterator for DocMap {
    type Item = (Arc<str>, DocState);
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter {
            ids: self.order.into_iter(),
            by_id: self.by_id,
        }
    }
}

/// Documents moved out of a [`DocMap`] in id order.
pub(crate) struct IntoIter {
    ids: btree_set::IntoIter<Arc<str>>,
    by_id: ById,
}

impl Iterator for IntoIter {
    type Item = (Arc<str>, DocState);

    fn next(&mut self) -> Option<Self::Item> {
        let by_id = &mut self.by_id;
        self.ids.find_map(|id| by_id.remove_entry(&*id))
    }
}

/// Builds the map in one pass; the order is built bottom-up, in linear
/// time when the ids arrive sorted (as decoders and stores give them).
/// Of repeated ids, the last document wins, as inserting would.
impl<K: AsRef<str>> FromIterator<(K, DocState)> for DocMap {
    fn from_iter<I: IntoIterator<Item = (K, DocState)>>(docs: I) -> DocMap {
        let docs = docs.into_iter();
        let mut by_id = ById::with_capacity_and_hasher(docs.size_hint().0, Default::default());
        let mut ids = Vec::with_capacity(docs.size_hint().0);
        for (id, doc) in docs {
            let id = id.as_ref();
            if let Some(old) = by_id.get_mut(id) {
                *old = doc;
                continue;
            }
            let id: Arc<str> = Arc::from(id);
            ids.push(id.clone());
            by_id.insert(id, doc);
        }
        DocMap {
            by_id,
            order: ids.into_iter().collect(),
        }
    }
}

impl<K: AsRef<str>> Extend<(K, DocState)> for DocMap {
    fn extend<I: IntoIterator<Item = (K, DocState)>>(&mut self, docs: I) {
        for (id, doc) in docs {
            self.insert(id, doc);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Bound;

    use proptest::prelude::*;

    use super::{DocMap, DocState};
    use crate::hlc::Hlc;
    use crate::stamp::{ReplicaId, Stamp};

    /// A document told apart by `tag` (its put stamp's replica).
    fn doc(tag: u64) -> DocState {
        DocState {
            written: Hlc::new(1, 0).map(|hlc| Stamp::new(hlc, ReplicaId(tag))),
            ..DocState::default()
        }
    }

    fn tag(doc: &DocState) -> u64 {
        doc.written.map_or(u64::MAX, |s| s.replica.0)
    }

    #[derive(Clone, Debug)]
    enum Step {
        Insert(String, u64),
        Remove(String),
        /// Adds to the tag of the document, if there is one.
        Bump(String, u64),
        /// Keeps the documents whose tag is not divisible by the number.
        Retain(u64),
    }

    /// Short ids over a few letters, so that steps often hit the same id
    /// and ids share prefixes.
    fn id() -> impl Strategy<Value = String> {
        "[ab]{0,3}"
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (id(), 0u64..100).prop_map(|(id, t)| Step::Insert(id, t)),
            2 => id().prop_map(Step::Remove),
            1 => (id(), 1u64..10).prop_map(|(id, t)| Step::Bump(id, t)),
            1 => (2u64..5).prop_map(Step::Retain),
        ]
    }

    /// The oracle's content in id order, as the map's iteration must give it.
    fn listed(map: &DocMap) -> Vec<(String, u64)> {
        map.iter()
            .map(|(id, doc)| (id.to_owned(), tag(doc)))
            .collect()
    }

    proptest! {
        /// Any sequence of changes leaves the map holding what a
        /// `BTreeMap` given the same changes holds, in the same order,
        /// whichever way it is read; `retain` visits in id order.
        #[test]
        fn behaves_like_an_ordered_map(
            start in prop::collection::vec((id(), 0u64..100), 0..20),
            steps in prop::collection::vec(step(), 0..60),
            from in id(),
        ) {
            let mut map: DocMap = start.iter().map(|(id, t)| (id.as_str(), doc(*t))).collect();
            let mut oracle: BTreeMap<String, u64> = start.into_iter().collect();
            for step in steps {
                match step {
                    Step::Insert(id, t) => {
                        let old = map.insert(&id, doc(t)).map(|d| tag(&d));
                        prop_assert_eq!(old, oracle.insert(id, t));
                    }
                    Step::Remove(id) => {
                        let old = map.remove(&id).map(|d| tag(&d));
                        prop_assert_eq!(old, oracle.remove(&id));
                    }
                    Step::Bump(id, by) => {
                        if let Some(d) = map.get_mut(&id) {
                            *d = doc(tag(d) + by);
                        }
                        if let Some(t) = oracle.get_mut(&id) {
                            *t += by;
                        }
                    }
                    Step::Retain(by) => {
                        let mut visited = Vec::new();
                        map.retain(|id, d| {
                            visited.push(id.to_owned());
                            tag(d) % by != 0
                        });
                        let expected: Vec<String> = oracle.keys().cloned().collect();
                        prop_assert_eq!(visited, expected);
                        oracle.retain(|_, t| *t % by != 0);
                    }
                }
                let expected: Vec<(String, u64)> =
                    oracle.iter().map(|(id, t)| (id.clone(), *t)).collect();
                prop_assert_eq!(listed(&map), expected);
                prop_assert_eq!(map.len(), oracle.len());
                prop_assert_eq!(map.order.len(), oracle.len(), "an id left in the order");
                // Exact, as an encoder that writes the count first needs.
                prop_assert_eq!(map.iter().size_hint(), (oracle.len(), Some(oracle.len())));
            }
            for id in ["", "a", "ab", "b", "bba"] {
                prop_assert_eq!(map.get(id).map(tag), oracle.get(id).copied());
                let kv = map.get_key_value(id).map(|(k, d)| (k.to_owned(), tag(d)));
                prop_assert_eq!(kv, oracle.get_key_value(id).map(|(k, t)| (k.clone(), *t)));
            }
            let after: Vec<String> = map
                .range((Bound::Excluded(from.as_str()), Bound::Unbounded))
                .map(|(id, _)| id.to_owned())
                .collect();
            let expected: Vec<String> = oracle
                .range::<str, _>((Bound::Excluded(from.as_str()), Bound::Unbounded))
                .map(|(id, _)| id.clone())
                .collect();
            prop_assert_eq!(after, expected);
            let values: Vec<u64> = map.values().map(tag).collect();
            prop_assert_eq!(values, oracle.values().copied().collect::<Vec<_>>());
            let moved: Vec<(String, u64)> =
                map.into_iter().map(|(id, d)| (id.to_string(), tag(&d))).collect();
            prop_assert_eq!(moved, oracle.into_iter().collect::<Vec<_>>());
        }
    }

    /// Building from a list that names an id twice keeps the later
    /// document, once, as inserting them in turn would.
    #[test]
    fn collect_keeps_the_last_of_repeated_ids() {
        let map: DocMap = [("b", doc(1)), ("a", doc(2)), ("b", doc(3))]
            .into_iter()
            .collect();
        let listed = listed(&map);
        assert_eq!(listed, [("a".to_owned(), 2), ("b".to_owned(), 3)]);
        assert_eq!(map.len(), 2);
    }
}
