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
