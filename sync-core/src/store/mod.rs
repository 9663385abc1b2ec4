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

use crate::persist::PersistBatch;

/// One stored record: key bytes, value bytes.
pub type Record = (Vec<u8>, Vec<u8>);

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
