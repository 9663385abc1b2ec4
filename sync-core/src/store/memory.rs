//! An in-memory store, for tests and for apps that want no persistence.

use std::collections::BTreeMap;
use std::convert::Infallible;

use super::{Record, Store};
use crate::persist::{PersistBatch, Write};

/// A store that keeps records in memory. Clone it to simulate reopening.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStore {
    records: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the store holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Total bytes of keys and values held.
    pub fn size_bytes(&self) -> usize {
        self.records.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Applies `batch` as [`Store::write`] does, moving its values in
    /// instead of copying them: for a caller that hands its batch over
    /// (sync-client's memory store gets each persist batch by value).
    pub fn write_owned(&mut self, batch: PersistBatch) {
        for write in batch.writes {
            match write {
                Write::Put { key, value } => {
                    self.records.insert(key.to_bytes(), value);
                }
                Write::Delete { key } => {
                    self.records.remove(&key.to_bytes());
                }
                Write::DeleteRange { first, last } => self.remove_range(&first, &last),
            }
        }
    }

    /// Removes the records from `first` to `last`, both included.
    fn remove_range(&mut self, first: &crate::StoreKey, last: &crate::StoreKey) {
        super::remove_range(&mut self.records, &first.to_bytes(), &last.to_bytes());
    }
}

impl Store for MemoryStore {
    type Error = Infallible;

    fn write(&mut self, batch: &PersistBatch) -> Result<(), Infallible> {
        for write in &batch.writes {
            match write {
                Write::Put { key, value } => {
                    self.records.insert(key.to_bytes(), value.clone());
                }
                Write::Delete { key } => {
                    self.records.remove(&key.to_bytes());
                }
                Write::DeleteRange { first, last } => self.remove_range(first, last),
            }
        }
        Ok(())
    }

    fn read_all(&self) -> Result<Vec<Record>, Infallible> {
        Ok(self
            .records
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreKey;

    #[test]
    fn write_owned_stores_what_write_stores() {
        let mut first = PersistBatch::default();
        for seq in [1, 2] {
            first.push(Write::Put {
                key: StoreKey::Outbox(seq),
                value: vec![seq as u8; 3],
            });
        }
        let mut second = PersistBatch::default();
        second.push(Write::Delete {
            key: StoreKey::Outbox(1),
        });
        second.push(Write::Put {
            key: StoreKey::Outbox(2),
            value: b"new".to_vec(),
        });
        let mut copied = MemoryStore::new();
        let mut moved = MemoryStore::new();
        for batch in [first, second] {
            let Ok(()) = copied.write(&batch);
            moved.write_owned(batch);
        }
        assert_eq!(moved, copied);
        assert_eq!(moved.len(), 1, "the delete applied");
    }
}
