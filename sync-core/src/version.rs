//! Version summaries: which operations of which replica have been applied.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::op::OpId;
use crate::stamp::ReplicaId;

/// The sequence numbers of one replica that have been applied.
///
/// Almost always a contiguous prefix `1..=contiguous`; operations that
/// arrived ahead of a gap are kept in `ahead` until the gap fills.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSeqSet")]
pub struct SeqSet {
    contiguous: u64,
    ahead: BTreeSet<u64>,
}

/// A `SeqSet` as decoded, before its canonical form is checked.
#[derive(Deserialize)]
struct RawSeqSet {
    contiguous: u64,
    ahead: BTreeSet<u64>,
}

impl TryFrom<RawSeqSet> for SeqSet {
    type Error = String;

    /// Only the canonical form is accepted: every number kept `ahead` is
    /// beyond the contiguous prefix and the gap after it, so two equal sets
    /// always compare equal.
    fn try_from(raw: RawSeqSet) -> Result<SeqSet, String> {
        match raw.ahead.first() {
            Some(&first) if first <= raw.contiguous.saturating_add(1) => Err(format!(
                "sequence set not canonical: {first} kept apart from the prefix 1..={}",
                raw.contiguous
            )),
            _ => Ok(SeqSet {
                contiguous: raw.contiguous,
                ahead: raw.ahead,
            }),
        }
    }
}

impl SeqSet {
    /// The set `1..=seq`.
    pub fn through(seq: u64) -> SeqSet {
        SeqSet {
            contiguous: seq,
            ahead: BTreeSet::new(),
        }
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.contiguous || self.ahead.contains(&seq)
    }

    /// Every sequence number up to this one is in the set.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// The highest sequence number in the set.
    pub fn highest(&self) -> u64 {
        self.ahead.last().copied().unwrap_or(self.contiguous)
    }

    /// Members above the contiguous prefix, in order.
    #[cfg(feature = "relay")]
    pub(crate) fn iter_ahead(&self) -> impl Iterator<Item = u64> + '_ {
        self.ahead.iter().copied()
    }

    /// Adds `seq`; returns false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) || seq == 0 {
            return false;
        }
        if Some(seq) == self.contiguous.checked_add(1) {
            self.contiguous = seq;
            self.absorb_ahead();
        } else {
            self.ahead.insert(seq);
        }
        true
    }

    /// Adds every number up to and including `seq`.
    pub fn insert_through(&mut self, seq: u64) {
        if seq > self.contiguous {
            self.contiguous = seq;
            // Nothing to move (a replica's own writes): no split.
            if self.ahead.is_empty() {
                return;
            }
            self.ahead = match seq.checked_add(1) {
                Some(next) => self.ahead.split_off(&next),
                None => BTreeSet::new(),
            };
            self.absorb_ahead();
        }
    }

    /// Moves numbers that continue the contiguous prefix out of `ahead`.
    /// Sequence numbers come from peers, so `u64::MAX` must not overflow.
    fn absorb_ahead(&mut self) {
        while let Some(next) = self.contiguous.checked_add(1) {
            if !self.ahead.remove(&next) {
                break;
            }
            self.contiguous = next;
        }
    }

    fn union(&mut self, other: &SeqSet) {
        self.insert_through(other.contiguous);
        for &seq in &other.ahead {
            self.insert(seq);
        }
    }
}

/// Per replica, the operations applied here: a version vector that also
/// remembers out-of-order arrivals, so duplicate detection is exact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector {
    replicas: BTreeMap<ReplicaId, SeqSet>,
}

impl VersionVector {
    /// An empty summary.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// Whether the operation has been applied.
    pub fn contains(&self, id: OpId) -> bool {
        self.replicas
            .get(&id.replica)
            .is_some_and(|set| set.contains(id.seq))
    }

    /// Records the operation; returns false when it was already recorded.
    pub fn insert(&mut self, id: OpId) -> bool {
        self.replicas.entry(id.replica).or_default().insert(id.seq)
    }

    /// Records operations `seqs` of `replica`: a replica's own writes,
    /// numbered in a row, with one lookup of the replica for all.
    pub(crate) fn insert_run(&mut self, replica: ReplicaId, seqs: RangeInclusive<u64>) {
        if seqs.is_empty() {
            return;
        }
        let set = self.replicas.entry(replica).or_default();
        // A run that continues the contiguous prefix with nothing held
        // ahead (a replica's own writes) extends it at once, not a number
        // at a time. (Not through `insert_through`: the browser package
        // would then carry `BTreeSet::split_off`, 1 KB, for this alone.)
        if set.ahead.is_empty() && *seqs.start() <= set.contiguous.saturating_add(1) {
            set.contiguous = set.contiguous.max(*seqs.end());
            return;
        }
        for seq in seqs {
            set.insert(seq);
        }
    }

    /// The highest sequence number applied from `replica` (0 if none).
    pub fn highest(&self, replica: ReplicaId) -> u64 {
        self.replicas.get(&replica).map_or(0, SeqSet::highest)
    }

    /// The applied sequence numbers of one replica.
    pub fn get(&self, replica: ReplicaId) -> Option<&SeqSet> {
        self.replicas.get(&replica)
    }

    /// Every replica with its applied sequence numbers, ordered by replica.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, &SeqSet)> {
        self.replicas.iter().map(|(id, set)| (*id, set))
    }

    /// Adds everything `other` has applied.
    pub fn merge(&mut self, other: &VersionVector) {
        for (replica, set) in &other.replicas {
            self.replicas.entry(*replica).or_default().union(set);
        }
    }

    /// Whether every operation recorded in `other` is recorded here.
    pub fn includes(&self, other: &VersionVector) -> bool {
        other.replicas.iter().all(|(replica, theirs)| {
            self.replicas.get(replica).is_some_and(|ours| {
                ours.contiguous >= theirs.contiguous
                    && theirs.ahead.iter().all(|&s| ours.contains(s))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs before, across and after a set's prefix and the numbers it
    /// holds ahead record what inserting each number would.
    #[test]
    fn insert_run_records_each_number() {
        let replica = ReplicaId(1);
        let bounds = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12];
        for start in bounds {
            for end in bounds {
                for held in [&[1, 2, 5, 7, 8][..], &[1, 2], &[]] {
                    let mut run = VersionVector::default();
                    let mut each = VersionVector::default();
                    for v in [&mut run, &mut each] {
                        for &seq in held {
                            v.insert(OpId { replica, seq });
                        }
                    }
                    run.insert_run(replica, start..=end);
                    for seq in start..=end {
                        each.insert(OpId { replica, seq });
                    }
                    assert_eq!(run, each, "{held:?} + {start}..={end}");
                }
            }
        }
    }

    #[test]
    fn out_of_order_arrivals_fill_gaps() {
        let mut set = SeqSet::default();
        assert!(set.insert(3));
        assert!(set.insert(1));
        assert_eq!(set.contiguous(), 1);
        assert!(!set.contains(2));
        assert!(set.insert(2));
        assert_eq!(set.contiguous(), 3);
        assert!(!set.insert(2));
        assert_eq!(set.highest(), 3);
    }

    #[test]
    fn insert_through_absorbs_ahead() {
        let mut set = SeqSet::default();
        set.insert(5);
        set.insert(7);
        set.insert_through(4);
        assert_eq!(set.contiguous(), 5);
        assert_eq!(set.highest(), 7);
    }
}
