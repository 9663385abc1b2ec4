//! [`SnapshotDecoder`] a slice at a time: it gives back exactly the state
//! that was encoded, whatever the slice size, layout and framing; and a
//! document found bad in any slice refuses the snapshot at that slice,
//! with nothing handed out before. The oracle is always the state given
//! to the encoder, never a decoder.

use proptest::prelude::*;

use super::{COLUMNAR_SNAPSHOT_FORMAT, Snapshot, SnapshotDecoder, SnapshotError};
use crate::hlc::Hlc;
use crate::limits::MAX_DOC_ID_LEN;
use crate::replica::{Replica, ReplicaConfig};
use crate::stamp::ReplicaId;
use crate::timestamp::Timestamp;
use crate::value::Value;

const COLLECTIONS: [&str; 3] = ["a", "b", "c"];
const FIELDS: [&str; 5] = ["f0", "f1", "title", "n", "x"];

/// One generated write: replica, collection, document, field, what to write.
type Write = (usize, usize, usize, usize, u8, i64);

/// The state three replicas reach after `writes`, merged into the first:
/// values of every kind, removed fields, deleted documents, stamps of
/// several replicas and times, collections created and dropped.
fn merged(writes: &[Write]) -> Replica {
    let mut replicas: Vec<Replica> = (1..=3)
        .map(|i| Replica::new(ReplicaId(i), ReplicaConfig::default()))
        .collect();
    for (at, &(r, c, d, f, kind, n)) in writes.iter().enumerate() {
        let now = Timestamp::from_unix_ms(1_000 + at as u64 / 3);
        let (replica, coll, id) = (&mut replicas[r], COLLECTIONS[c], format!("doc-{d:03}"));
        let value = match kind {
            0 => Value::Int(n),
            1 => Value::Float(n as f64 / 3.0),
            // Few distinct strings: the dictionary is used.
            2 => Value::from(format!("s{}", n.rem_euclid(5))),
            3 => Value::Bool(n % 2 == 0),
            4 => Value::Null,
            5 => Value::Bytes(vec![n as u8; 3]),
            6 => Value::List(vec![Value::Int(n), Value::from("x")]),
            7 => {
                replica.unset(now, coll, &id, [FIELDS[f]]).expect("unset");
                continue;
            }
            8 => {
                replica.delete(now, coll, &id).expect("delete");
                continue;
            }
            9 => {
                replica.create_collection(now, coll).expect("create");
                continue;
            }
            _ => {
                replica.drop_collection(now, coll).expect("drop");
                continue;
            }
        };
        replica
            .put(now, coll, &id, [(FIELDS[f], value)])
            .expect("put");
    }
    let later = Timestamp::from_unix_ms(10_000);
    let ops: Vec<_> = replicas[1..]
        .iter()
        .flat_map(|r| r.outbox().collect::<Vec<_>>())
        .collect();
    for op in ops {
        replicas[0].apply(later, &op).expect("apply");
    }
    replicas.swap_remove(0)
}

/// Decodes `blob[start..]` `slice` documents at a time; returns the result
/// and how many steps it took.
fn sliced(
    blob: Vec<u8>,
    start: usize,
    slice: usize,
) -> (Result<Snapshot, SnapshotError>, usize, Vec<u8>) {
    let mut decoder = match SnapshotDecoder::new(blob.clone(), start, usize::MAX) {
        Ok(decoder) => decoder,
        Err(e) => return (Err(e), 0, blob),
    };
    let mut steps = 0;
    loop {
        steps += 1;
        match decoder.step(slice) {
            Ok(None) => continue,
            Ok(Some(snapshot)) => {
                // Found while decoding, as walking the state finds it.
                assert_eq!(decoder.newest(), snapshot.newest_hlc(), "newest stamp");
                return (Ok(snapshot), steps, decoder.into_bytes());
            }
            Err(e) => return (Err(e), steps, decoder.into_bytes()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Formats 4 and 5, plain and deflated, after a prefix or not: decoded
    /// a few documents at a time, the snapshot is the state encoded, the
    /// bytes come back as given, and it took a step per slice.
    #[test]
    fn sliced_decoding_gives_back_the_state_encoded(
        writes in prop::collection::vec(
            (0usize..3, 0usize..3, 0usize..40, 0usize..5, 0u8..11, -50i64..50),
            0..120,
        ),
        slice in 1usize..8,
        prefix in 0usize..3,
    ) {
        let replica = merged(&writes);
        let (state, version) = (replica.state(), replica.version());
        let (max_hlc, horizon) = (Hlc::from_u64(77 << 16), Hlc::from_u64(5 << 16));
        let expected = Snapshot {
            version: version.clone(),
            max_hlc,
            tombstone_horizon: horizon,
            state: state.clone(),
        };
        let docs: usize = state.collections.values().map(|c| c.docs.len()).sum();
        let blobs = [
            Snapshot::encode(state, version, max_hlc, horizon),
            Snapshot::encode_compressed(state, version, max_hlc, horizon),
            Snapshot::encode_in_format(COLUMNAR_SNAPSHOT_FORMAT, state, version, max_hlc, horizon)
                .expect("format 4"),
        ];
        for blob in blobs {
            let blob: Vec<u8> = [vec![9; prefix], blob].concat();
            let (decoded, steps, back) = sliced(blob.clone(), prefix, slice);
            prop_assert_eq!(decoded, Ok(expected.clone()));
            prop_assert!(steps > docs / slice, "{steps} steps for {docs} documents");
            prop_assert_eq!(back, blob);
        }
    }
}

/// Snapshot bytes of 20 documents with, after document `after`, one whose
/// id is too long (which the encoder writes, and every decoder refuses):
/// plain and deflated.
fn with_a_bad_document(after: usize) -> [Vec<u8>; 2] {
    let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
    for d in 0..20 {
        let id = format!("doc-{d:03}");
        let now = Timestamp::from_unix_ms(1_000 + d);
        replica.put(now, "c", &id, [("n", d as i64)]).expect("put");
    }
    let mut state = replica.state().clone();
    let docs = &mut state.collections.get_mut("c").expect("there").docs;
    let copy = docs.values().next().expect("a document").clone();
    let bad = format!("doc-{after:03}{}", "x".repeat(MAX_DOC_ID_LEN));
    docs.insert(bad, copy);
    let (version, max_hlc) = (replica.version(), Hlc::from_u64(1 << 30));
    [
        Snapshot::encode(&state, version, max_hlc, Hlc::ZERO),
        Snapshot::encode_compressed(&state, version, max_hlc, Hlc::ZERO),
    ]
}

/// A document found bad refuses the snapshot in the step that reads it,
/// for a bad document at, before and after every slice boundary: the steps
/// before hand out nothing, and the error is the one decoding in one call
/// gives.
#[test]
fn a_bad_document_in_any_slice_refuses_the_snapshot_in_that_slice() {
    for after in 0..20 {
        // The bad document is the one read at this position.
        let position = after + 1;
        let [plain, deflated] = with_a_bad_document(after);
        for (blob, inflating) in [(plain, false), (deflated, true)] {
            let whole = Snapshot::decode(&blob).expect_err("refused in one call");
            for slice in [1, 3, 4, 7] {
                let (decoded, steps, _) = sliced(blob.clone(), 0, slice);
                assert_eq!(
                    decoded,
                    Err(whole.clone()),
                    "slice {slice}, bad at {position}"
                );
                let reading = position / slice + 1;
                if inflating {
                    // The steps that inflate the body come first (the
                    // last of them reads the first slice of documents).
                    assert!(steps >= reading, "slice {slice}, bad at {position}");
                } else {
                    assert_eq!(
                        steps, reading,
                        "refused in the slice holding document {position} (slices of {slice})"
                    );
                }
            }
        }
    }
}

/// Once the snapshot is handed out, or refused, the decoder has nothing
/// more: a step after that is an error, never a second snapshot.
#[test]
fn a_decoder_hands_out_one_snapshot() {
    let replica = merged(&[(0, 0, 1, 0, 0, 1), (1, 1, 2, 1, 2, 3)]);
    let mut decoder = SnapshotDecoder::new(replica.encode_snapshot(), 0, usize::MAX).unwrap();
    while decoder.step(1).expect("decodes").is_none() {}
    assert!(decoder.step(1).is_err());
    let [bad, _] = with_a_bad_document(0);
    let mut decoder = SnapshotDecoder::new(bad, 0, usize::MAX).unwrap();
    assert!(decoder.step(usize::MAX).is_err());
    assert!(decoder.step(usize::MAX).is_err());
}

/// A deflated body is inflated a piece at a time (1 KiB a step when a
/// step is one document) and gives back the state encoded.
#[test]
fn a_deflated_body_inflates_a_piece_at_a_time() {
    let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
    for d in 0..2_000 {
        let id = format!("doc-{d:04}");
        let now = Timestamp::from_unix_ms(1_000 + d);
        let fields = [
            ("title", Value::from(format!("item {d}"))),
            ("n", Value::Int(d as i64)),
        ];
        replica.put(now, "c", &id, fields).expect("put");
    }
    let blob = replica.encode_snapshot_compressed();
    // The body's length, inflated: what `body_len` counts less 4 bytes a field.
    let inflated = Snapshot::body_len(&blob) - 4 * 4_000;
    let (decoded, steps, _) = sliced(blob, 0, 1);
    assert!(decoded.expect("decodes").state == *replica.state());
    assert!(
        steps > 2_000 + inflated / 1024,
        "{steps} steps for 2,000 documents and {inflated} bytes"
    );
}
