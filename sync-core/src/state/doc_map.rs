//! A collection's documents by id: hashed for the point lookups that every
//! write and read makes, ordered for listing, paging and encoding.
//!
//! A tree alone made each lookup a string comparison per level, the
//! largest single cost of a local write; a hash table alone has no order.
//! The documents sit in slots; an ordered tree maps each id to its slot,
//! and an open-addressing table of slot numbers finds a slot by the id's
//! hash. The tree and the slot share the id's one allocation.
//!
//! The hash (`revision::IdHasher`) has no secret key, because the core
//! draws no randomness, so a peer can choose ids that collide. An insert
//! that finds no place within [`MAX_PROBES`] (after one rebuild at twice
//! the size) turns hashing off for the collection, whose lookups then go
//! through the tree: colliding ids cost at most what the tree alone costs,
//! plus [`MAX_PROBES`] probes per lookup before the switch.

use std::collections::{BTreeMap, btree_map};
use std::hash::Hasher;
use std::iter::FusedIterator;
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use super::DocState;
use crate::revision::IdHasher;

/// Most entries an insert or a lookup probes. Random ids in a table at
/// most half full need about two; a run of 64 occupied entries is rare
/// there (odds near 10⁻⁵ per id), and an insert that meets one rebuilds
/// the table at twice the size, a quarter full, where such runs are
/// beyond chance (odds far below 10⁻¹⁵).
const MAX_PROBES: usize = 64;

/// An index entry that holds no document and never did since the last rebuild.
const EMPTY: u32 = 0;
/// An index entry whose document was removed: lookups probe past it.
const TOMBSTONE: u32 = u32::MAX;

/// Documents by id. Every id in `order` names a slot that holds its
/// document, and (while hashing is on) the index holds that slot within
/// [`MAX_PROBES`] entries of the id's hash.
#[derive(Clone, Default)]
pub(crate) struct DocMap {
    /// Documents with their ids; a removed document's slot is on `free`
    /// (it keeps a default state and an empty id until reused).
    slots: Vec<(Arc<str>, DocState)>,
    free: Vec<u32>,
    /// Every id, in order, with its slot.
    order: BTreeMap<Arc<str>, u32>,
    /// Linear probing by id hash: [`EMPTY`], [`TOMBSTONE`] or a slot number
    /// plus one. A power of two long, at most half filled; empty while the
    /// map is or when hashing is off.
    index: Vec<u32>,
    /// Entries of `index` that are not [`EMPTY`].
    filled: usize,
    /// Ids collided past [`MAX_PROBES`]: lookups use `order`.
    unhashed: bool,
}

fn hash(id: &str) -> u64 {
    let mut hasher = IdHasher::default();
    hasher.write(id.as_bytes());
    hasher.finish()
}

/// The index positions an id's probes visit, in order.
fn probes(index_len: usize, hash: u64) -> impl Iterator<Item = usize> {
    let mask = index_len.wrapping_sub(1);
    // Truncating on 32-bit targets keeps the low bits, which the mask takes.
    let home = hash as usize;
    (0..MAX_PROBES.min(index_len)).map(move |i| home.wrapping_add(i) & mask)
}

/// Puts `slot` at the first free entry of its probes; `false` if none is.
fn place(index: &mut [u32], hash: u64, slot: u32) -> bool {
    for at in probes(index.len(), hash) {
        if index[at] == EMPTY || index[at] == TOMBSTONE {
            index[at] = slot + 1;
            return true;
        }
    }
    false
}

/// Marks `slot`'s entry removed.
fn unplace(index: &mut [u32], hash: u64, slot: u32) {
    for at in probes(index.len(), hash) {
        if index[at] == slot + 1 {
            index[at] = TOMBSTONE;
            return;
        }
    }
}

/// The id a free slot holds: a removed document's id is released with it,
/// not kept until the slot is reused (a collection emptied of many long
/// ids, as collecting tombstones does, would keep them all).
fn no_id() -> Arc<str> {
    static NONE: OnceLock<Arc<str>> = OnceLock::new();
    NONE.get_or_init(|| Arc::from("")).clone()
}

/// Index length for `live` documents: at most half full.
fn index_len(live: usize) -> usize {
    live.saturating_mul(2).max(8).next_power_of_two()
}

impl DocMap {
    /// Number of documents (including those that only hold a tombstone).
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The slot holding `id`'s document.
    fn find(&self, id: &str) -> Option<u32> {
        if self.unhashed {
            return self.order.get(id).copied();
        }
        for at in probes(self.index.len(), hash(id)) {
            match self.index[at] {
                EMPTY => return None,
                TOMBSTONE => {}
                entry => {
                    let slot = entry - 1;
                    if self.slots.get(slot as usize).is_some_and(|s| *s.0 == *id) {
                        return Some(slot);
                    }
                }
            }
        }
        None
    }

    pub(crate) fn get(&self, id: &str) -> Option<&DocState> {
        let slot = self.find(id)?;
        self.slots.get(slot as usize).map(|(_, doc)| doc)
    }

    /// The document with the map's own copy of its id.
    pub(crate) fn get_key_value(&self, id: &str) -> Option<(&str, &DocState)> {
        let slot = self.find(id)?;
        self.slots.get(slot as usize).map(|(id, doc)| (&**id, doc))
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut DocState> {
        let slot = self.find(id)?;
        self.slots.get_mut(slot as usize).map(|(_, doc)| doc)
    }

    /// Inserts or replaces a document; returns the one it replaced. The id
    /// is copied only when it is new.
    pub(crate) fn insert(&mut self, id: impl AsRef<str>, doc: DocState) -> Option<DocState> {
        let id = id.as_ref();
        if let Some(old) = self.get_mut(id) {
            return Some(std::mem::replace(old, doc));
        }
        let id: Arc<str> = Arc::from(id);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = (id.clone(), doc);
                slot
            }
            None => {
                // Slot numbers stay below u32::MAX - 1 (the index's markers):
                // a map never holds four billion documents in memory.
                let slot = u32::try_from(self.slots.len()).unwrap_or(TOMBSTONE - 1);
                self.slots.push((id.clone(), doc));
                slot
            }
        };
        let hash = hash(&id);
        self.order.insert(id, slot);
        if self.unhashed {
            return None;
        }
        if (self.filled + 1) * 2 > self.index.len() {
            self.rebuild(index_len(self.order.len()));
        } else if place(&mut self.index, hash, slot) {
            self.filled += 1;
        } else {
            self.rebuild(self.index.len() * 2);
        }
        None
    }

    /// Rebuilds the index from `order` at `len` entries, or twice that if
    /// an id finds no place. If it still does not, ids collide far beyond
    /// chance (see [`MAX_PROBES`]), and hashing goes off; so it does rather
    /// than grow the index past eight times its usual length.
    fn rebuild(&mut self, len: usize) {
        let usual = index_len(self.order.len());
        for len in [len, len * 2] {
            if len > usual * 8 {
                break;
            }
            let mut index = vec![EMPTY; len];
            let placed = self
                .order
                .iter()
                .all(|(id, &slot)| place(&mut index, hash(id), slot));
            if placed {
                self.filled = self.order.len();
                self.index = index;
                return;
            }
        }
        self.unhashed = true;
        self.index = Vec::new();
        self.filled = 0;
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<DocState> {
        let (id, slot) = self.order.remove_entry(id)?;
        if !self.unhashed {
            unplace(&mut self.index, hash(&id), slot);
        }
        self.free.push(slot);
        self.slots.get_mut(slot as usize).map(|(id, doc)| {
            *id = no_id();
            std::mem::take(doc)
        })
    }

    /// Keeps the documents for which `keep` is true, visiting them in id
    /// order (callers report what they drop in that order).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, &mut DocState) -> bool) {
        let (slots, index, free) = (&mut self.slots, &mut self.index, &mut self.free);
        let unhashed = self.unhashed;
        self.order.retain(|id, &mut slot| {
            let Some((slot_id, doc)) = slots.get_mut(slot as usize) else {
                return false;
            };
            if keep(id, doc) {
                return true;
            }
            *doc = DocState::default();
            *slot_id = no_id();
            if !unhashed {
                unplace(index, hash(id), slot);
            }
            free.push(slot);
            false
        });
    }

    /// The documents in id order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            ids: Ids::All(self.order.iter()),
            slots: &self.slots,
        }
    }

    /// The documents whose ids fall in `bounds`, in id order.
    pub(crate) fn range<'a>(&'a self, bounds: (Bound<&str>, Bound<&str>)) -> Iter<'a> {
        Iter {
            ids: Ids::Range(self.order.range::<str, _>(bounds)),
            slots: &self.slots,
        }
    }

    /// The documents' states in id order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &DocState> + '_ {
        self.iter().map(|(_, doc)| doc)
    }

    /// Every document's state, mutable, in no particular order (with the
    /// default states of free slots).
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut DocState> + '_ {
        self.slots.iter_mut().map(|(_, doc)| doc)
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
    slots: &'a [(Arc<str>, DocState)],
}

/// The ids an [`Iter`] visits: all of them, whose number is known (an
/// encoder writes it before the documents), or a range.
#[derive(Clone, Debug)]
enum Ids<'a> {
    All(btree_map::Iter<'a, Arc<str>, u32>),
    Range(btree_map::Range<'a, Arc<str>, u32>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a DocState);

    fn next(&mut self) -> Option<Self::Item> {
        let slots = self.slots;
        let found = |(id, &slot): (&'a Arc<str>, &'a u32)| {
            slots.get(slot as usize).map(|(_, doc)| (&**id, doc))
        };
        match &mut self.ids {
            Ids::All(ids) => ids.find_map(found),
            Ids::Range(ids) => ids.find_map(found),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.ids {
            // Exact: every id in the order has its slot.
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
            slots: self.slots,
        }
    }
}

/// Documents moved out of a [`DocMap`] in id order.
pub(crate) struct IntoIter {
    ids: btree_map::IntoIter<Arc<str>, u32>,
    slots: Vec<(Arc<str>, DocState)>,
}

impl Iterator for IntoIter {
    type Item = (Arc<str>, DocState);

    fn next(&mut self) -> Option<Self::Item> {
        let slots = &mut self.slots;
        self.ids.find_map(|(id, slot)| {
            let (_, doc) = slots.get_mut(slot as usize)?;
            Some((id, std::mem::take(doc)))
        })
    }
}

/// Builds the map in one pass; the order is built bottom-up, in linear
/// time when the ids arrive sorted (as decoders and stores give them).
/// Of repeated ids, the last document wins, as inserting would.
impl<K: AsRef<str>> FromIterator<(K, DocState)> for DocMap {
    fn from_iter<I: IntoIterator<Item = (K, DocState)>>(docs: I) -> DocMap {
        let docs = docs.into_iter();
        let mut slots = Vec::with_capacity(docs.size_hint().0);
        let mut ids = Vec::with_capacity(docs.size_hint().0);
        for (id, doc) in docs {
            let id: Arc<str> = Arc::from(id.as_ref());
            let slot = u32::try_from(slots.len()).unwrap_or(TOMBSTONE - 1);
            ids.push((id.clone(), slot));
            slots.push((id, doc));
        }
        let order: BTreeMap<Arc<str>, u32> = ids.into_iter().collect();
        if order.len() != slots.len() {
            // Repeated ids (no decoder or store gives them): insert in turn.
            let mut map = DocMap::default();
            map.extend(slots);
            return map;
        }
        let mut map = DocMap {
            slots,
            order,
            ..DocMap::default()
        };
        map.rebuild(index_len(map.order.len()));
        map
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

    /// Ids chosen to share the low 16 bits of their hash (as a peer could
    /// choose them) turn hashing off rather than make every probe long,
    /// and the map still finds, lists and removes them all.
    #[test]
    fn colliding_ids_fall_back_to_the_tree() {
        let colliding: Vec<String> = (0u64..)
            .map(|n| format!("x{n}"))
            .filter(|id| super::hash(id) & 0xffff == 0)
            .take(super::MAX_PROBES + 8)
            .collect();
        let mut map = DocMap::default();
        for (t, id) in colliding.iter().enumerate() {
            map.insert(id, doc(t as u64));
        }
        assert!(map.unhashed, "the collisions turned hashing off");
        for (t, id) in colliding.iter().enumerate() {
            assert_eq!(map.get(id).map(tag), Some(t as u64), "{id}");
        }
        let mut sorted = colliding.clone();
        sorted.sort();
        let ids: Vec<&str> = map.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, sorted);
        assert_eq!(map.remove(&colliding[3]).map(|d| tag(&d)), Some(3));
        assert!(map.get(&colliding[3]).is_none());
        assert_eq!(map.len(), colliding.len() - 1);
    }

    /// Removing documents, one at a time or by `retain`, releases their
    /// ids: the free slots hold none of them.
    #[test]
    fn removed_documents_release_their_ids() {
        let ids: Vec<String> = (0..20).map(|n| format!("{n:0>64}")).collect();
        let mut map = DocMap::default();
        for (t, id) in ids.iter().enumerate() {
            map.insert(id, doc(t as u64));
        }
        for id in &ids[..5] {
            map.remove(id);
        }
        map.retain(|_, d| tag(d) % 2 == 0);
        let live: Vec<&str> = map.iter().map(|(id, _)| id).collect();
        assert_eq!(live.len(), 7);
        let mut held: Vec<&str> = map
            .slots
            .iter()
            .map(|(id, _)| &**id)
            .filter(|id| !id.is_empty())
            .collect();
        held.sort_unstable();
        assert_eq!(held, live, "a free slot still holds a removed id");
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
