//! Field stamps stored relative to the stamp before them.
//!
//! A document's fields are mostly stamped by one replica at nearby times, so
//! snapshots of formats 2 and 3 store each field's stamp as the document's
//! `written` stamp, or as a difference from the previous explicitly stored
//! stamp of the document: a few bytes instead of a nine-byte clock reading
//! and a replica id. The replica is written as `R`, an index into the
//! snapshot's table. (Store records take their stamps relative to the
//! document's `written` stamp instead: `persist.rs`, record version 3.)

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::stamp::{ReplicaId, Stamp};

/// One field's stamp, as stored.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) enum DeltaStamp<R> {
    /// The document's `written` stamp.
    Written,
    /// The previous stamp's replica; the clock reading moved by the delta.
    SameReplica(i64),
    /// Another replica; the clock reading moved by the delta.
    OtherReplica(i64, R),
}

/// Walks one document's fields in order, turning stamps into
/// [`DeltaStamp`]s and back. Encoder and decoder must see the same fields in
/// the same order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeltaCursor {
    written: Option<Stamp>,
    /// The stamp the next delta starts from: the last explicitly stored
    /// one, or `written` before the first.
    previous: Option<Stamp>,
}

impl DeltaCursor {
    /// A cursor for a document whose latest put is `written`.
    pub(crate) fn new(written: Option<Stamp>) -> DeltaCursor {
        DeltaCursor {
            written,
            previous: written,
        }
    }

    /// Encodes the next field's stamp; `replica` names another replica.
    pub(crate) fn encode<R>(
        &mut self,
        stamp: Stamp,
        replica: impl FnOnce(ReplicaId) -> R,
    ) -> DeltaStamp<R> {
        if Some(stamp) == self.written {
            return DeltaStamp::Written;
        }
        let same_replica = self.previous.is_some_and(|p| p.replica == stamp.replica);
        let base = self.previous.map_or(0, |p| p.hlc.as_u64());
        self.previous = Some(stamp);
        // Wrapping keeps every pair of readings representable; the decoder
        // wraps back the same way.
        let delta = stamp.hlc.as_u64().wrapping_sub(base) as i64;
        if same_replica {
            DeltaStamp::SameReplica(delta)
        } else {
            DeltaStamp::OtherReplica(delta, replica(stamp.replica))
        }
    }

    /// Decodes the next field's stamp; `replica` resolves another replica.
    pub(crate) fn decode<R>(
        &mut self,
        code: DeltaStamp<R>,
        replica: impl FnOnce(R) -> Result<ReplicaId, String>,
    ) -> Result<Stamp, String> {
        let (delta, replica) = match code {
            DeltaStamp::Written => {
                return self
                    .written
                    .ok_or_else(|| "a field of an unwritten document has no stamp".into());
            }
            DeltaStamp::SameReplica(delta) => {
                let replica = self
                    .previous
                    .map(|p| p.replica)
                    .ok_or("a field repeats the replica of a stamp that does not exist")?;
                (delta, replica)
            }
            DeltaStamp::OtherReplica(delta, other) => (delta, replica(other)?),
        };
        let base = self.previous.map_or(0, |p| p.hlc.as_u64());
        let stamp = Stamp::new(Hlc::from_u64(base.wrapping_add(delta as u64)), replica);
        self.previous = Some(stamp);
        Ok(stamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(hlc: u64, replica: u64) -> Stamp {
        Stamp::new(Hlc::from_u64(hlc), ReplicaId(replica))
    }

    /// Whatever the stamps, decoding what was encoded gives them back, and
    /// the encoding picks the shortest form the rules allow.
    #[test]
    fn round_trips_any_sequence_of_stamps() {
        let written = Some(stamp(1_000, 7));
        let fields = [
            stamp(1_000, 7),
            stamp(900, 7),
            stamp(950, 8),
            stamp(u64::MAX, 8),
            stamp(0, 7),
            stamp(1_000, 7),
        ];
        let mut encoder = DeltaCursor::new(written);
        let codes: Vec<DeltaStamp<ReplicaId>> =
            fields.iter().map(|s| encoder.encode(*s, |r| r)).collect();
        assert!(matches!(codes[0], DeltaStamp::Written));
        assert!(matches!(codes[1], DeltaStamp::SameReplica(-100)));
        assert!(matches!(
            codes[2],
            DeltaStamp::OtherReplica(50, ReplicaId(8))
        ));
        let mut decoder = DeltaCursor::new(written);
        for (code, expected) in codes.into_iter().zip(fields) {
            assert_eq!(decoder.decode(code, Ok), Ok(expected));
        }
    }

    #[test]
    fn refers_to_nothing_without_a_written_stamp() {
        let mut cursor = DeltaCursor::new(None);
        assert!(cursor.decode(DeltaStamp::<ReplicaId>::Written, Ok).is_err());
        assert!(
            cursor
                .decode(DeltaStamp::<ReplicaId>::SameReplica(1), Ok)
                .is_err()
        );
        assert_eq!(
            cursor.decode(DeltaStamp::OtherReplica(5, ReplicaId(3)), Ok),
            Ok(stamp(5, 3))
        );
    }
}
