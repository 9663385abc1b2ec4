//! The room's operation log: offsets, encoded operations, and the
//! snapshot that replaced its compacted prefix.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::hlc::Hlc;
use crate::stamp::ReplicaId;

/// One accepted operation, encoded once and shared by every delivery.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) replica: ReplicaId,
    pub(crate) seq: u64,
    pub(crate) hlc: Hlc,
    pub(crate) encoded: Arc<[u8]>,
    /// What decoding it from a version-3 batch may cost the receiver at
    /// most ([`super::compact_decode_cost`]).
    pub(crate) compact_cost: usize,
}

/// Offsets `base..=head` in memory; everything before `base` lives in the snapshot.
#[derive(Clone, Debug)]
pub(crate) struct Log {
    base: u64,
    entries: VecDeque<Entry>,
    /// For each entry, the encoded bytes appended up to and including it
    /// (a running total), so the size of any prefix is one subtraction.
    ends: VecDeque<u64>,
    /// The running total just before `base`.
    base_bytes: u64,
}

impl Default for Log {
    fn default() -> Self {
        Log::after(0)
    }
}

impl Log {
    /// A log whose next entry gets offset `through + 1`.
    pub(crate) fn after(through: u64) -> Log {
        Log {
            base: through + 1,
            entries: VecDeque::new(),
            ends: VecDeque::new(),
            base_bytes: 0,
        }
    }

    /// Offset of the latest entry (0 when the room has none).
    pub(crate) fn head(&self) -> u64 {
        self.base + self.entries.len() as u64 - 1
    }

    /// Offsets up to this one are only in the snapshot.
    pub(crate) fn compacted_through(&self) -> u64 {
        self.base - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends an entry; returns its offset.
    pub(crate) fn push(&mut self, entry: Entry) -> u64 {
        let end = self.ends.back().copied().unwrap_or(self.base_bytes);
        self.ends.push_back(end + entry.encoded.len() as u64);
        self.entries.push_back(entry);
        self.head()
    }

    /// Encoded bytes of the entries in memory up to and including `offset`.
    pub(crate) fn bytes_through(&self, offset: u64) -> u64 {
        let Some(index) = offset.checked_sub(self.base) else {
            return 0;
        };
        let last = usize::try_from(index)
            .ok()
            .and_then(|i| self.ends.get(i))
            .or(self.ends.back());
        last.map_or(0, |end| end - self.base_bytes)
    }

    /// The entry at `offset`, if it is in memory.
    pub(crate) fn get(&self, offset: u64) -> Option<&Entry> {
        let index = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        self.entries.get(index)
    }

    /// Entries from `offset` on, with their offsets.
    pub(crate) fn from(&self, offset: u64) -> impl Iterator<Item = (u64, &Entry)> {
        let skip = usize::try_from(offset.saturating_sub(self.base)).unwrap_or(usize::MAX);
        self.entries
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, e)| (self.base + i as u64, e))
    }

    /// Forgets entries up to and including `through`.
    pub(crate) fn truncate_through(&mut self, through: u64) {
        while self.base <= through && self.entries.pop_front().is_some() {
            self.base += 1;
            if let Some(end) = self.ends.pop_front() {
                self.base_bytes = end;
            }
        }
        if self.entries.is_empty() && self.base <= through {
            self.base = through + 1;
        }
    }
}
