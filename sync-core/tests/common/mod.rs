//! Helpers shared by the integration tests: a small universe of names,
//! values and stamps (so random operations collide often), generators of
//! valid operations over it, and comparisons that look at a replica through
//! every public read.
//!
//! Each test crate uses only part of this module.
#![allow(dead_code)]

use proptest::prelude::*;
use sync_core::Timestamp;
use sync_core::{Change, Hlc, Op, OpId, Replica, ReplicaConfig, ReplicaId, Snapshot, Value};

/// Collections of the universe.
pub(crate) const COLLECTIONS: [&str; 2] = ["c0", "c1"];
/// Document ids of the universe.
pub(crate) const DOC_IDS: [&str; 3] = ["d0", "d1", "d2"];
/// Field names of the universe.
pub(crate) const FIELDS: [&str; 3] = ["f0", "f1", "f2"];
/// Replicas that write operations (reader replicas use other ids).
pub(crate) const WRITERS: [u64; 3] = [1, 2, 3];
/// The id of replicas that only receive operations.
pub(crate) const READER: ReplicaId = ReplicaId(100);
/// A wall clock far enough ahead of every generated stamp that no drift
/// check refuses one.
pub(crate) const LATE_NOW: u64 = 1_000_000;

/// Proptest settings with an explicit case count, kept small so the suite
/// stays fast; set `PROPTEST_CASES` to run more (a soak). Failing cases are
/// saved next to the test file (`<test>.proptest-regressions`) and replayed
/// first.
pub(crate) fn proptest_config(cases: u32) -> ProptestConfig {
    let soak = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    ProptestConfig {
        cases: soak.unwrap_or(cases),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

/// A small set of field values, some of them nested.
pub(crate) fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::Bool(true)),
        Just(Value::Int(0)),
        Just(Value::Int(1)),
        Just(Value::Float(0.5)),
        Just(Value::from("x")),
        Just(Value::Bytes(vec![0, 255])),
        Just(Value::List(vec![Value::Int(1), Value::from("y")])),
    ]
}

/// One of the universe's collections.
pub(crate) fn collection() -> impl Strategy<Value = String> {
    prop::sample::select(&COLLECTIONS[..]).prop_map(str::to_owned)
}

/// One of the universe's document ids.
pub(crate) fn doc_id() -> impl Strategy<Value = String> {
    prop::sample::select(&DOC_IDS[..]).prop_map(str::to_owned)
}

/// A put's fields: distinct names, each set to a value or removed (`None`).
pub(crate) fn put_fields() -> impl Strategy<Value = Vec<(String, Option<Value>)>> {
    prop::sample::subsequence(&FIELDS[..], 0..=FIELDS.len())
        .prop_shuffle()
        .prop_flat_map(|names| {
            let values = prop::collection::vec(prop::option::weighted(0.8, value()), names.len());
            (Just(names), values)
        })
        .prop_map(|(names, values)| {
            names
                .into_iter()
                .map(str::to_owned)
                .zip(values)
                .collect::<Vec<_>>()
        })
}

/// A valid change over the universe; puts are the most common.
pub(crate) fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        6 => (collection(), doc_id(), put_fields())
            .prop_map(|(collection, id, fields)| Change::Put { collection, id, fields }),
        2 => (collection(), doc_id()).prop_map(|(collection, id)| Change::Delete { collection, id }),
        1 => collection().prop_map(|collection| Change::CreateCollection { collection }),
        1 => collection().prop_map(|collection| Change::DropCollection { collection }),
    ]
}

/// A clock reading in a tiny range, so stamps of different replicas often
/// share an HLC and ties break on the replica id.
pub(crate) fn small_hlc() -> impl Strategy<Value = Hlc> {
    (1u64..=4, 0u16..=1).prop_map(|(wall, counter)| Hlc::new(wall, counter).expect("in range"))
}

/// Up to `max` operations as a set of real replicas could have made them:
/// every stamp `(hlc, replica)` is unique, and each writer numbers its
/// operations 1, 2, 3, … in the order of their clock readings.
pub(crate) fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    let raw = (prop::sample::select(&WRITERS[..]), small_hlc(), change());
    prop::collection::vec(raw, 0..=max).prop_map(number_ops)
}

/// Turns raw `(writer, hlc, change)` triples into operations with unique
/// stamps and gap-free per-writer sequence numbers, keeping generation order.
fn number_ops(raw: Vec<(u64, Hlc, Change)>) -> Vec<Op> {
    let mut seen = std::collections::BTreeSet::new();
    let kept: Vec<_> = raw
        .into_iter()
        .filter(|(replica, hlc, _)| seen.insert((*hlc, *replica)))
        .collect();
    // Sequence numbers follow each writer's clock, as a real replica's do.
    let mut by_stamp: Vec<usize> = (0..kept.len()).collect();
    by_stamp.sort_by_key(|&i| (kept[i].1, kept[i].0));
    let mut seqs = vec![0; kept.len()];
    let mut next = std::collections::BTreeMap::new();
    for i in by_stamp {
        let seq = next.entry(kept[i].0).or_insert(0u64);
        *seq += 1;
        seqs[i] = *seq;
    }
    kept.into_iter()
        .zip(seqs)
        .map(|((replica, hlc, change), seq)| Op {
            id: OpId {
                replica: ReplicaId(replica),
                seq,
            },
            hlc,
            change,
        })
        .collect()
}

/// A fresh reader replica.
pub(crate) fn reader() -> Replica {
    Replica::new(READER, ReplicaConfig::default())
}

/// A fresh reader replica that applied `ops` in order.
pub(crate) fn applied<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Replica {
    let mut replica = reader();
    apply_all(&mut replica, ops);
    replica
}

/// Applies every operation, which must all be accepted.
pub(crate) fn apply_all<'a>(replica: &mut Replica, ops: impl IntoIterator<Item = &'a Op>) {
    for op in ops {
        if let Err(e) = replica.apply(Timestamp::from_unix_ms(LATE_NOW), op) {
            panic!("valid operation {op:?} refused: {e}");
        }
    }
}

/// Decodes a replica's encoded snapshot, which must succeed.
pub(crate) fn snapshot_of(replica: &Replica) -> Snapshot {
    match Snapshot::decode(&replica.encode_snapshot()) {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("a replica's own snapshot does not decode: {e}"),
    }
}

/// Merges a snapshot, which must be accepted.
pub(crate) fn merge(replica: &mut Replica, snapshot: &Snapshot) {
    if let Err(e) = replica.merge_snapshot(Timestamp::from_unix_ms(LATE_NOW), snapshot) {
        panic!("snapshot refused: {e}");
    }
}

/// A fresh reader replica that merged the snapshots in order.
pub(crate) fn joined(snapshots: &[&Snapshot]) -> Replica {
    let mut replica = reader();
    for snapshot in snapshots {
        merge(&mut replica, snapshot);
    }
    replica
}

/// Everything an application can read from a replica about the universe,
/// in a form that compares and prints well.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reads {
    collections: Vec<String>,
    lists: Vec<Vec<sync_core::Document>>,
    docs: Vec<Option<sync_core::Document>>,
    revisions: Vec<Option<sync_core::Revision>>,
    document_count: usize,
    field_count: usize,
}

/// Reads everything an application can see of the universe.
pub(crate) fn reads(replica: &Replica) -> Reads {
    let mut docs = Vec::new();
    let mut revisions = Vec::new();
    for collection in COLLECTIONS {
        for id in DOC_IDS {
            let doc = replica.get(collection, id);
            let revision = replica.revision(collection, id);
            assert_eq!(
                doc.as_ref().map(|d| d.revision),
                revision,
                "get and revision disagree on {collection}/{id}"
            );
            docs.push(doc);
            revisions.push(revision);
        }
    }
    let lists: Vec<_> = COLLECTIONS.iter().map(|c| replica.list(c)).collect();
    for (collection, list) in COLLECTIONS.iter().zip(&lists) {
        let ids: Vec<&str> = replica.state().ids(collection).collect();
        let listed: Vec<&str> = list.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, listed, "ids and list disagree on {collection}");
    }
    Reads {
        collections: replica.state().collections().map(str::to_owned).collect(),
        lists,
        docs,
        revisions,
        document_count: replica.state().document_count(),
        field_count: replica.state().field_count(),
    }
}

/// Asserts that two replicas hold the same state, through `==` and through
/// every read. `what` names the comparison in failure messages.
pub(crate) fn assert_same_state(a: &Replica, b: &Replica, what: &str) {
    assert_eq!(a.state(), b.state(), "{what}: states differ");
    assert_eq!(reads(a), reads(b), "{what}: reads differ");
}

/// Like [`assert_same_state`], and the version vectors must match too.
pub(crate) fn assert_same_replica(a: &Replica, b: &Replica, what: &str) {
    assert_same_state(a, b, what);
    assert_eq!(a.version(), b.version(), "{what}: version vectors differ");
}

/// A snapshot blob of the given format around `payload`: magic, format
/// byte, payload length and CRC-32 all correct, so a decoder reaches the
/// payload (for hand-built and random bodies).
pub(crate) fn snapshot_blob(format: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = b"CNSN".to_vec();
    out.push(format);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}
