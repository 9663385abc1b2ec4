//! The storage interface every host store implements, an in-memory store,
//! and the conformance suite every store must pass.
//!
//! The core never calls a store: the host drains [`crate::PersistBatch`]es
//! from the core and hands each to [`Store::write`], and on start feeds
//! [`Store::read_all`] to [`crate::Replica::restore`].

#[cfg(feature = "conformance")]
pub mod conformance;
mod memory;

pub use memory::MemoryStore;

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::persist::PersistBatch;

/// One stored record: key bytes, value bytes.
pub type Record = (Vec<u8>, Vec<u8>);

/// Removes from `records` every key from `first` to `last`, both included,
/// as [`crate::persist::Write::DeleteRange`] asks (nothing when `first`
/// sorts after `last`): for stores, or logs folded at read, that keep
/// records in a map ordered by key bytes.
pub fn remove_range(records: &mut BTreeMap<Vec<u8>, Vec<u8>>, first: &[u8], last: &[u8]) {
    // `BTreeMap::range` panics on a reversed range, which removes nothing.
    if first <= last {
        let doomed: Vec<Vec<u8>> = records
            .range::<[u8], _>((Bound::Included(first), Bound::Included(last)))
            .map(|(key, _)| key.clone())
            .collect();
        for key in doomed {
            records.remove(&key);
        }
    }
}

/// Durable key/value storage for one replica.
pub trait Store {
    /// What can go wrong reading or writing.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies every write of `batch`, or none of them, in the batch's
    /// order (a later write to a key wins; see [`PersistBatch`]); once this
    /// returns `Ok`, the writes survive a crash of the process. A
    /// [`crate::Write::DeleteRange`] is meant to be one native range delete,
    /// not a delete per key.
    fn write(&mut self, batch: &PersistBatch) -> Result<(), Self::Error>;

    /// Every stored record as `(key bytes, value bytes)`, in key order.
    fn read_all(&self) -> Result<Vec<Record>, Self::Error>;
}
