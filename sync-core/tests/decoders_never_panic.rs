//! Every decoder of outside bytes or text returns `Ok` or `Err` and never
//! panics: `Snapshot::decode`, `StoreKey::from_bytes`, `Replica::restore`,
//! postcard decoding of `Op`, `Change`, `Value` and `VersionVector`,
//! `Revision` parsing and `Value::from_json`. Inputs are random bytes, and
//! — to get past checksums and version bytes — valid encodings with random
//! damage. What a decoder accepts must also be usable: an accepted
//! operation can be applied, an accepted snapshot merged, a restored replica
//! read, written to and snapshotted, all without panicking.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use proptest::prelude::*;
use proptest::sample::Index;
use sync_core::Timestamp;
use sync_core::snapshot::SNAPSHOT_FORMAT;
use sync_core::store::{MemoryStore, Store};
use sync_core::{
    Change, Op, Replica, ReplicaConfig, ReplicaId, Revision, Snapshot, StoreKey, Value,
    VersionVector,
};

const NOW: u64 = 1_700_000_000_000;

fn config() -> ProptestConfig {
    common::proptest_config(256)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..512)
}

/// A replica with every kind of record: meta, collections, documents with
/// set and removed fields, tombstones, outbox operations.
fn sample_replica() -> Replica {
    let mut r = Replica::new(ReplicaId(1), ReplicaConfig::default());
    r.put(
        at(NOW),
        "todos",
        "a",
        [("title", Value::from("milk")), ("n", 1.into())],
    )
    .unwrap();
    r.unset(at(NOW + 1), "todos", "a", ["n"]).unwrap();
    r.put(
        at(NOW + 1),
        "todos",
        "b",
        [("list", Value::List(vec![1.into(), "x".into()]))],
    )
    .unwrap();
    r.delete(at(NOW + 2), "todos", "b").unwrap();
    r.create_collection(at(NOW + 2), "notes").unwrap();
    r.put(at(NOW + 3), "old", "x", [("y", Value::Bytes(vec![1, 2]))])
        .unwrap();
    r.drop_collection(at(NOW + 4), "old").unwrap();
    let remote = Op {
        id: sync_core::OpId {
            replica: ReplicaId(2),
            seq: 1,
        },
        hlc: sync_core::Hlc::new(NOW, 0).unwrap(),
        change: Change::Put {
            collection: "todos".into(),
            id: "a".into(),
            fields: vec![("by".into(), Some(Value::Float(0.5)))],
        },
    };
    r.apply(at(NOW + 5), &remote).unwrap();
    r.acknowledge(2);
    r
}

fn sample_records() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut r = sample_replica();
    let mut store = MemoryStore::new();
    let batch = r.take_persist().expect("something to persist");
    let Ok(()) = store.write(&batch);
    let Ok(records) = store.read_all();
    records
}

/// One change to a list of stored records.
#[derive(Clone, Debug)]
enum Damage {
    /// XOR one byte of one value.
    Flip(Index, Index, u8),
    /// XOR one byte of one key.
    FlipKey(Index, Index, u8),
    /// Cut a value short.
    Truncate(Index, Index),
    /// Exchange the values of two records.
    Swap(Index, Index),
    /// Lose a record.
    Remove(Index),
    /// Add a record: a known tag, random key bytes, random value.
    Add(u8, Vec<u8>, Vec<u8>),
    /// Add a copy of a record's value under a random key of the same kind.
    Graft(Index, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let tag = prop::sample::select(&b"MCDOX"[..]);
    let short = prop::collection::vec(any::<u8>(), 0..24);
    prop_oneof![
        3 => (any::<Index>(), any::<Index>(), 1u8..=255).prop_map(|(r, b, m)| Damage::Flip(r, b, m)),
        1 => (any::<Index>(), any::<Index>(), 1u8..=255).prop_map(|(r, b, m)| Damage::FlipKey(r, b, m)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(r, l)| Damage::Truncate(r, l)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Damage::Swap(a, b)),
        1 => any::<Index>().prop_map(Damage::Remove),
        1 => (tag, short.clone(), short.clone()).prop_map(|(t, k, v)| Damage::Add(t, k, v)),
        1 => (any::<Index>(), short).prop_map(|(r, k)| Damage::Graft(r, k)),
    ]
}

fn apply_damage(records: &mut Vec<(Vec<u8>, Vec<u8>)>, damage: &Damage) {
    if records.is_empty() {
        if let Damage::Add(tag, key, value) = damage {
            records.push((key_with_tag(*tag, key), value.clone()));
        }
        return;
    }
    match damage {
        Damage::Flip(r, b, mask) => {
            let value = &mut r.get_mut(records).1;
            if !value.is_empty() {
                *b.get_mut(value) ^= mask;
            }
        }
        Damage::FlipKey(r, b, mask) => {
            let key = &mut r.get_mut(records).0;
            if !key.is_empty() {
                *b.get_mut(key) ^= mask;
            }
        }
        Damage::Truncate(r, len) => {
            let value = &mut r.get_mut(records).1;
            let keep = len.index(value.len() + 1);
            value.truncate(keep);
        }
        Damage::Swap(a, b) => {
            let (a, b) = (a.index(records.len()), b.index(records.len()));
            let value = records[a].1.clone();
            records[a].1 = std::mem::replace(&mut records[b].1, value);
        }
        Damage::Remove(r) => {
            records.remove(r.index(records.len()));
        }
        Damage::Add(tag, key, value) => records.push((key_with_tag(*tag, key), value.clone())),
        Damage::Graft(r, key) => {
            let (old_key, value) = r.get(records).clone();
            records.push((key_with_tag(old_key[0], key), value));
        }
    }
}

/// A key with a valid tag: document keys get a plausible length prefix.
fn key_with_tag(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = vec![tag];
    if tag == b'D' {
        let len = rest.first().map_or(0, |&b| u16::from(b % 8));
        key.extend_from_slice(&len.to_be_bytes());
    }
    key.extend_from_slice(rest);
    key
}

/// Uses a restored replica in every way a host would; nothing may panic.
fn exercise(mut replica: Replica) {
    let names: Vec<String> = replica.state().collections().map(str::to_owned).collect();
    for name in &names {
        for doc in replica.list(name) {
            let _ = replica.get(name, &doc.id);
            let _ = doc.revision.to_string();
        }
    }
    let _ = replica.take_persist();
    if let Ok(snapshot) = Snapshot::decode(&replica.encode_snapshot()) {
        let mut other = Replica::new(ReplicaId(99), ReplicaConfig::default());
        let _ = other.merge_snapshot(at(u64::MAX / 2), &snapshot);
    }
    let now = replica.clock().wall_ms() + 1;
    let _ = replica.put(at(now), "todos", "a", [("title", "again")]);
    let _ = replica.delete(at(now), "todos", "b");
    let _ = replica.drop_collection(at(now), "notes");
    let _ = replica.acknowledge(u64::MAX);
    let _ = replica.take_persist();
    while replica.poll_event().is_some() {}
}

/// A random operation decoded from bytes is applied; nothing may panic.
fn exercise_op(op: &Op) {
    let _ = op.validate();
    let _ = op.encoded_len_bound();
    for id in [1, op.id.replica.0] {
        let mut r = Replica::new(ReplicaId(id), ReplicaConfig::default());
        r.put(at(NOW), "c", "d", [("f", 1)]).unwrap();
        let _ = r.apply(at(NOW), op);
        let _ = r.apply(at(u64::MAX), op);
        let _ = r.put(at(NOW), "c", "d", [("f", 2)]);
        let _ = r.take_persist();
        let _ = Snapshot::decode(&r.encode_snapshot());
    }
}

/// A random JSON value, nested at most `depth` levels.
fn json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<u64>().prop_map(J::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(J::Null, J::Number)),
        ".{0,8}".prop_map(J::String),
        prop::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| marker("$bytes", J::String(base64(&b)))),
        "[A-Za-z0-9+/=!]{0,9}".prop_map(|s| marker("$bytes", J::String(s))),
    ];
    leaf.prop_recursive(depth, 256, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            prop::collection::btree_map("[$a-c]{0,3}", inner.clone(), 0..4)
                .prop_map(|m| J::Object(m.into_iter().collect())),
            inner.clone().prop_map(|v| marker("$map", v)),
            inner.prop_map(|v| marker("$bytes", v)),
        ]
    })
}

fn marker(key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    object.insert(key.to_owned(), value);
    serde_json::Value::Object(object)
}

/// Standard padded base64, written out here so the test does not trust the
/// crate's own encoder.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Wraps a payload in a snapshot header with a correct length and checksum.
fn with_header(payload: &[u8]) -> Vec<u8> {
    common::snapshot_blob(SNAPSHOT_FORMAT, payload)
}

/// A revision-like string: three groups of hex-ish characters.
fn revision_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,60}",
        "[0-9a-fA-F+-]{14,17}-[0-9a-fA-F+-]{14,17}-[0-9a-fA-F+-]{14,17}(-[0-9a-f]{0,2})?",
        "[0-9a-f]{16}-[0-9a-f]{16}-[0-9a-f]{16}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn snapshot_decode_of_random_bytes(data in bytes()) {
        let _ = Snapshot::decode(&data);
        // And with a valid header in front, so the payload parser runs.
        if let Ok(snapshot) = Snapshot::decode(&with_header(&data)) {
            let mut r = Replica::new(ReplicaId(1), ReplicaConfig::default());
            let _ = r.merge_snapshot(at(u64::MAX / 2), &snapshot);
            exercise(r);
        }
    }

    /// Random bodies, deflated behind a format-3 header (so the body parser
    /// runs after inflating), and random bytes where the deflate stream goes.
    #[test]
    fn compressed_snapshot_decode_of_random_bytes(data in bytes(), raw in any::<bool>()) {
        let mut payload = (data.len() as u32).to_le_bytes().to_vec();
        if raw {
            payload.extend_from_slice(&data);
        } else {
            payload.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(&data, 1));
        }
        let format = sync_core::snapshot::COMPRESSED_SNAPSHOT_FORMAT;
        if let Ok(snapshot) = Snapshot::decode(&common::snapshot_blob(format, &payload)) {
            let mut r = Replica::new(ReplicaId(1), ReplicaConfig::default());
            let _ = r.merge_snapshot(at(u64::MAX / 2), &snapshot);
            exercise(r);
        }
    }

    #[test]
    fn snapshot_decode_of_damaged_payloads(
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        cut in any::<Index>(),
    ) {
        let bytes = sample_replica().encode_snapshot();
        let mut payload = bytes[13..].to_vec();
        for (at, value) in &edits {
            *at.get_mut(&mut payload) = *value;
        }
        payload.truncate(cut.index(payload.len() + 1).max(payload.len() / 2));
        if let Ok(snapshot) = Snapshot::decode(&with_header(&payload)) {
            let mut r = Replica::new(ReplicaId(1), ReplicaConfig::default());
            let _ = r.merge_snapshot(at(u64::MAX / 2), &snapshot);
            exercise(r);
        }
    }

    #[test]
    fn store_key_from_random_bytes(data in bytes(), tag in prop::sample::select(&b"MCDOX"[..])) {
        for key in [data.clone(), key_with_tag(tag, &data)] {
            if let Ok(parsed) = StoreKey::from_bytes(&key) {
                prop_assert_eq!(parsed.to_bytes(), key, "parsed {:?}", parsed);
            }
        }
    }

    #[test]
    fn restore_from_random_records(
        records in prop::collection::vec(
            (prop::sample::select(&b"MCDOX"[..]), bytes(), bytes()),
            0..6,
        ),
    ) {
        let records: Vec<_> = records
            .into_iter()
            .map(|(tag, key, value)| (key_with_tag(tag, &key[..key.len().min(16)]), value))
            .collect();
        if let Ok(Some(replica)) = Replica::restore(ReplicaConfig::default(), records) {
            exercise(replica);
        }
    }

    #[test]
    fn restore_from_damaged_records(damage in prop::collection::vec(damage(), 1..5)) {
        let mut records = sample_records();
        for d in &damage {
            apply_damage(&mut records, d);
        }
        if let Ok(Some(replica)) = Replica::restore(ReplicaConfig::default(), records) {
            exercise(replica);
        }
    }

    #[test]
    fn postcard_decoding_of_random_bytes(data in bytes()) {
        if let Ok(op) = postcard::from_bytes::<Op>(&data) {
            exercise_op(&op);
        }
        if let Ok(change) = postcard::from_bytes::<Change>(&data) {
            let _ = change.validate();
        }
        if let Ok(value) = postcard::from_bytes::<Value>(&data) {
            let _ = value.to_json();
            let _ = value.to_string();
            prop_assert!(value.depth() <= sync_core::value::MAX_VALUE_DEPTH);
        }
        if let Ok(mut version) = postcard::from_bytes::<VersionVector>(&data) {
            let other = version.clone();
            version.merge(&other);
            let _ = version.includes(&other);
        }
    }

    #[test]
    fn postcard_decoding_of_damaged_operations(
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        for op in sample_replica().outbox() {
            let mut data = postcard::to_allocvec(&op).unwrap();
            for (at, value) in &edits {
                *at.get_mut(&mut data) = *value;
            }
            if let Ok(op) = postcard::from_bytes::<Op>(&data) {
                exercise_op(&op);
            }
        }
    }

    #[test]
    fn revision_parse_of_random_text(text in revision_text()) {
        if let Ok(revision) = text.parse::<Revision>() {
            let again: Revision = revision.to_string().parse().expect("display parses");
            prop_assert_eq!(again, revision);
        }
    }

    #[test]
    fn value_from_random_json(json in json(6)) {
        if let Ok(value) = Value::from_json(&json) {
            prop_assert!(value.depth() <= sync_core::value::MAX_VALUE_DEPTH);
            if let Ok(back) = value.to_json() {
                prop_assert_eq!(Value::from_json(&back), Ok(value));
            }
        }
    }

    #[test]
    fn value_from_json_parsed_from_random_bytes(data in bytes()) {
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&data) {
            let _ = Value::from_json(&json);
        }
    }
}

#[test]
fn deeply_nested_inputs_are_refused_not_overflowed() {
    // JSON far deeper than the value limit.
    let mut deep = serde_json::Value::Null;
    for _ in 0..1_000 {
        deep = serde_json::Value::Array(vec![deep]);
    }
    assert!(Value::from_json(&deep).is_err());
    // Postcard: a list tag (6) with one item, a thousand times over.
    let mut data = Vec::new();
    for _ in 0..1_000 {
        data.extend_from_slice(&[6, 1]);
    }
    data.push(0);
    assert!(postcard::from_bytes::<Value>(&data).is_err());
    // Iterative drop: the serde_json value is dismantled level by level.
    while let serde_json::Value::Array(mut items) = deep {
        deep = items.pop().unwrap_or(serde_json::Value::Null);
    }
}

#[test]
fn length_prefixes_larger_than_the_input_are_refused() {
    // A snapshot body announcing billions of names, in a few bytes.
    let mut payload = vec![0, 0, 0]; // empty version vector, max_hlc 0, horizon 0
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(Snapshot::decode(&with_header(&payload)).is_err());
    // A value announcing a huge string or list.
    for tag in [4u8, 5, 6, 7] {
        let data = [tag, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(postcard::from_bytes::<Value>(&data).is_err(), "tag {tag}");
    }
}

#[test]
fn damaged_sample_records_are_mostly_refused() {
    // The damage strategies must reach the record decoders, not only the
    // key parser: flipping the version byte of each record is refused.
    let records = sample_records();
    assert!(Replica::restore(ReplicaConfig::default(), records.clone()).is_ok());
    for i in 0..records.len() {
        let mut bad = records.clone();
        bad[i].1[0] ^= 0x40;
        assert!(
            Replica::restore(ReplicaConfig::default(), bad).is_err(),
            "record {i} with a bad version byte was accepted"
        );
    }
}

/// Known, left alone (value.rs, not a merge rule): `from_json` counts a
/// `{"$bytes": ...}` marker as one more level of nesting, so a value at the
/// deepest allowed level whose innermost item is bytes converts to JSON but
/// not back, although `from_json` is documented as the inverse of `to_json`.
#[test]
#[ignore = "known: JSON round trip of bytes at the maximum nesting depth fails with TooDeep"]
fn json_round_trip_at_the_maximum_depth() {
    let deepest = (0..sync_core::value::MAX_VALUE_DEPTH)
        .fold(Value::Bytes(vec![1]), |v, _| Value::List(vec![v]));
    assert_eq!(deepest.depth(), sync_core::value::MAX_VALUE_DEPTH);
    let json = deepest.to_json().expect("has a JSON form");
    assert_eq!(Value::from_json(&json), Ok(deepest));
}

/// The host clock reading `ms` milliseconds after the epoch.
fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}
