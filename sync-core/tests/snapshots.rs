//! Snapshots round-trip and refuse damage: decoding an encoded random state
//! gives back the same state, version and `max_hlc` (and re-encoding gives
//! the same bytes); every truncation and every single-byte change of a
//! snapshot is refused with the matching `SnapshotError`, never a panic; and
//! payloads that pass the checksum but break the data model are refused as
//! inconsistent.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use common::{applied, ops, reader, snapshot_of};
use proptest::prelude::*;
use serde::Serialize;
use sync_core::Timestamp;
use sync_core::snapshot::{
    COMPRESSED_SNAPSHOT_FORMAT, NEWEST_SNAPSHOT_FORMAT, TIMELINE_SNAPSHOT_FORMAT,
};
use sync_core::{
    Hlc, OpId, Replica, ReplicaConfig, ReplicaId, Snapshot, SnapshotError, Value, VersionVector,
};

const HEADER_LEN: usize = 13;
const NOW: u64 = 1_700_000_000_000;

fn config() -> ProptestConfig {
    common::proptest_config(256)
}

/// A small replica with a bit of everything: fields, a removed field, a
/// deleted document, a created and a dropped collection, two writers.
fn small_replica() -> Replica {
    let mut alice = Replica::new(ReplicaId(1), ReplicaConfig::default());
    let mut bob = Replica::new(ReplicaId(2), ReplicaConfig::default());
    alice
        .put(
            Timestamp::from_unix_ms(NOW),
            "todos",
            "a",
            [("title", Value::from("milk")), ("n", 1.into())],
        )
        .unwrap();
    alice
        .unset(Timestamp::from_unix_ms(NOW + 1), "todos", "a", ["n"])
        .unwrap();
    alice
        .put(
            Timestamp::from_unix_ms(NOW + 1),
            "todos",
            "b",
            [("title", "eggs")],
        )
        .unwrap();
    alice
        .delete(Timestamp::from_unix_ms(NOW + 2), "todos", "b")
        .unwrap();
    bob.create_collection(Timestamp::from_unix_ms(NOW), "notes")
        .unwrap();
    bob.put(
        Timestamp::from_unix_ms(NOW),
        "old",
        "x",
        [("y", Value::Bytes(vec![1, 2]))],
    )
    .unwrap();
    bob.drop_collection(Timestamp::from_unix_ms(NOW + 1), "old")
        .unwrap();
    for op in bob.outbox() {
        alice.apply(Timestamp::from_unix_ms(NOW + 3), &op).unwrap();
    }
    alice
}

fn small_snapshot() -> Vec<u8> {
    small_replica().encode_snapshot()
}

/// Wraps a format-1 payload in a snapshot header with a correct length and
/// checksum. The hand-built bodies below use format 1 (field stamps stored
/// in full), which readers still accept; format 2 bodies are covered by the
/// round trips and by `v2_*` tests.
fn with_header(payload: &[u8]) -> Vec<u8> {
    common::snapshot_blob(1, payload)
}

// Hand-built snapshot bodies, in the layout `snapshot.rs` documents: stamps
// are (hlc, replica index); a document is (id, written, deleted, fields);
// a field is (name index, stamp or `None` for the document's written stamp,
// value); a collection is (name, created,
// dropped, documents).
type Packed = (u64, u32);
type RawField = (u32, Option<Packed>, Option<Value>);
type RawDoc = (String, Option<Packed>, Option<Packed>, Vec<RawField>);
type RawCollection = (String, Option<Packed>, Option<Packed>, Vec<RawDoc>);

#[derive(Serialize)]
struct RawBody {
    version: VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
    names: Vec<String>,
    replicas: Vec<ReplicaId>,
    collections: Vec<RawCollection>,
}

fn at(wall: u64) -> u64 {
    Hlc::new(wall, 0).unwrap().as_u64()
}

/// A valid body: collection "c" holding document "d" with field "f" = 1,
/// written by replica 7 at 10.
fn valid_body() -> RawBody {
    RawBody {
        version: VersionVector::new(),
        max_hlc: Hlc::new(10, 0).unwrap(),
        tombstone_horizon: Hlc::ZERO,
        names: vec!["f".into()],
        replicas: vec![ReplicaId(7)],
        collections: vec![(
            "c".into(),
            None,
            None,
            vec![(
                "d".into(),
                Some((at(10), 0)),
                None,
                vec![(0, Some((at(10), 0)), Some(Value::Int(1)))],
            )],
        )],
    }
}

fn encode_raw(body: &RawBody) -> Vec<u8> {
    with_header(&postcard::to_allocvec(body).expect("serialises"))
}

/// Decodes a hand-built body, expecting it to be refused as inconsistent.
fn assert_inconsistent(body: &RawBody, what: &str) {
    match Snapshot::decode(&encode_raw(body)) {
        Err(SnapshotError::Inconsistent(_)) => {}
        other => panic!("{what}: expected Inconsistent, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(config())]

    /// A compressed snapshot decodes to what the plain one does, and both
    /// encodings are deterministic.
    #[test]
    fn compressed_snapshots_decode_like_plain_ones(ops in ops(20)) {
        let replica = applied(&ops);
        let compressed = replica.encode_snapshot_compressed();
        prop_assert_eq!(compressed[4], TIMELINE_SNAPSHOT_FORMAT);
        let plain = Snapshot::decode(&replica.encode_snapshot()).expect("plain decodes");
        let inflated = Snapshot::decode(&compressed).expect("compressed decodes");
        prop_assert_eq!(&inflated, &plain);
        // Every older format a relay serves holds the same content.
        for format in 1..TIMELINE_SNAPSHOT_FORMAT {
            let older = Snapshot::transcode(&compressed, format).expect("transcodes");
            prop_assert_eq!(older[4], format);
            prop_assert_eq!(&Snapshot::decode(&older).expect("decodes"), &plain);
        }
        prop_assert_eq!(replica.encode_snapshot_compressed(), compressed);
    }

    /// decode(encode(state)) gives the same state, version and max_hlc, and
    /// encoding again gives the same bytes.
    #[test]
    fn snapshots_round_trip(ops in ops(20)) {
        let replica = applied(&ops);
        let bytes = replica.encode_snapshot();
        let snapshot = Snapshot::decode(&bytes).expect("decodes");
        prop_assert_eq!(&snapshot.state, replica.state());
        prop_assert_eq!(&snapshot.version, replica.version());
        prop_assert_eq!(snapshot.max_hlc, replica.clock());
        prop_assert_eq!(snapshot.tombstone_horizon, Hlc::ZERO);
        let again = Snapshot::encode(
            &snapshot.state,
            &snapshot.version,
            snapshot.max_hlc,
            snapshot.tombstone_horizon,
        );
        prop_assert_eq!(again, bytes, "encoding is not deterministic");
    }

    /// A replica restored from a snapshot answers every read the same way.
    #[test]
    fn merged_snapshot_reads_the_same(ops in ops(20)) {
        let replica = applied(&ops);
        let mut copy = reader();
        common::merge(&mut copy, &snapshot_of(&replica));
        common::assert_same_replica(&replica, &copy, "snapshot copy");
        // A snapshot of the copy is the same snapshot.
        prop_assert_eq!(snapshot_of(&copy).state, snapshot_of(&replica).state);
    }

    /// Any prefix of a random snapshot is refused as truncated.
    #[test]
    fn truncated_random_snapshots_are_refused(ops in ops(12), cut in any::<prop::sample::Index>()) {
        let bytes = applied(&ops).encode_snapshot();
        let len = cut.index(bytes.len());
        prop_assert!(
            matches!(Snapshot::decode(&bytes[..len]), Err(SnapshotError::Truncated { .. })),
            "prefix of {} bytes", len
        );
    }

    /// Any single-byte change of a random snapshot is refused.
    #[test]
    fn corrupted_random_snapshots_are_refused(
        ops in ops(12),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let mut bytes = applied(&ops).encode_snapshot();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        prop_assert!(Snapshot::decode(&bytes).is_err(), "byte {} ^ {:#x} accepted", i, mask);
    }
}

#[test]
fn small_snapshot_round_trips() {
    let replica = small_replica();
    let snapshot = Snapshot::decode(&replica.encode_snapshot()).unwrap();
    assert_eq!(&snapshot.state, replica.state());
    assert_eq!(&snapshot.version, replica.version());
    assert_eq!(snapshot.max_hlc, replica.clock());
    // The small replica really has something of each kind.
    assert_eq!(
        snapshot.state.collections().collect::<Vec<_>>(),
        ["notes", "todos"]
    );
    assert_eq!(snapshot.state.document_count(), 1);
    assert!(snapshot.state.field_count() >= 2);
}

#[test]
fn every_prefix_of_a_snapshot_is_truncated() {
    let bytes = small_snapshot();
    for len in 0..bytes.len() {
        let expected = SnapshotError::Truncated {
            have: len,
            need: if len < HEADER_LEN {
                HEADER_LEN
            } else {
                bytes.len()
            },
        };
        assert_eq!(
            Snapshot::decode(&bytes[..len]),
            Err(expected),
            "prefix {len}"
        );
    }
    assert!(Snapshot::decode(&bytes).is_ok());
}

#[test]
fn every_single_byte_change_is_refused_with_the_matching_error() {
    let bytes = small_snapshot();
    for i in 0..bytes.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= mask;
            let result = Snapshot::decode(&bad);
            let ok = match i {
                0..4 => result == Err(SnapshotError::BadMagic),
                // Another readable format: the body does not parse as that format.
                4 if (1..=NEWEST_SNAPSHOT_FORMAT).contains(&bad[4]) => {
                    matches!(result, Err(SnapshotError::Malformed(_)))
                }
                4 => result == Err(SnapshotError::UnsupportedVersion(bad[4])),
                5..9 => matches!(
                    result,
                    Err(SnapshotError::Truncated { .. } | SnapshotError::TrailingBytes(_))
                ),
                _ => matches!(result, Err(SnapshotError::ChecksumMismatch { .. })),
            };
            assert!(ok, "byte {i} ^ {mask:#04x} gave {result:?}");
        }
    }
}

#[test]
fn wrong_magic_version_and_trailing_bytes_are_named() {
    let bytes = small_snapshot();
    let mut magic = bytes.clone();
    magic[..4].copy_from_slice(b"CNSX");
    assert_eq!(Snapshot::decode(&magic), Err(SnapshotError::BadMagic));
    assert_eq!(
        Snapshot::decode(b"not a snapshot at all"),
        Err(SnapshotError::BadMagic)
    );
    for version in [0, NEWEST_SNAPSHOT_FORMAT + 1, 255] {
        let mut other = bytes.clone();
        other[4] = version;
        assert_eq!(
            Snapshot::decode(&other),
            Err(SnapshotError::UnsupportedVersion(version))
        );
    }
    let mut long = bytes.clone();
    long.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        Snapshot::decode(&long),
        Err(SnapshotError::TrailingBytes(3))
    );
    let mut bad_sum = bytes;
    bad_sum[HEADER_LEN - 1] ^= 1;
    assert!(matches!(
        Snapshot::decode(&bad_sum),
        Err(SnapshotError::ChecksumMismatch { .. })
    ));
}

#[test]
fn a_payload_that_does_not_parse_is_malformed() {
    for payload in [&b""[..], &[0xff; 8], &[0, 0, 0]] {
        assert!(
            matches!(
                Snapshot::decode(&with_header(payload)),
                Err(SnapshotError::Malformed(_))
            ),
            "payload {payload:?}"
        );
    }
}

#[test]
fn hand_built_valid_body_decodes() {
    let snapshot = Snapshot::decode(&encode_raw(&valid_body())).expect("valid body");
    let doc = snapshot.state.get("c", "d").expect("document");
    assert_eq!(doc.fields["f"], Value::Int(1));
    assert_eq!(doc.revision.stamp.replica, ReplicaId(7));
}

/// The one document of a body built from [`valid_body`].
fn doc(body: &mut RawBody) -> &mut RawDoc {
    &mut body.collections[0].3[0]
}

#[test]
fn bodies_that_break_the_data_model_are_inconsistent() {
    let mut body = valid_body();
    doc(&mut body).3[0].0 = 1;
    assert_inconsistent(&body, "field name index out of range");

    let mut body = valid_body();
    doc(&mut body).1 = Some((at(10), 1));
    assert_inconsistent(&body, "replica index out of range");

    let mut body = valid_body();
    doc(&mut body).3[0].1 = Some((at(11), 0));
    assert_inconsistent(&body, "field stamped after the document's last put");

    let mut body = valid_body();
    doc(&mut body).2 = Some((at(10), 0));
    assert_inconsistent(&body, "put at the delete's stamp");

    let mut body = valid_body();
    body.collections[0].2 = Some((at(12), 0));
    assert_inconsistent(&body, "document written before the collection's drop");

    for deleted in [11, 12] {
        let mut body = valid_body();
        body.collections[0].2 = Some((at(12), 0));
        *doc(&mut body) = ("d".into(), None, Some((at(deleted), 0)), vec![]);
        assert_inconsistent(&body, "document deleted at or before the collection's drop");
    }

    let mut body = valid_body();
    body.collections[0].1 = Some((at(5), 0));
    body.collections[0].2 = Some((at(5), 0));
    body.collections[0].3.clear();
    assert_inconsistent(&body, "collection created at its drop");

    let mut body = valid_body();
    let d = doc(&mut body);
    d.1 = None;
    d.3.clear();
    assert_inconsistent(&body, "document neither written nor deleted");

    let mut body = valid_body();
    body.names.push("f".into());
    assert_inconsistent(&body, "field name listed twice");

    let mut body = valid_body();
    body.names.push(String::new());
    assert_inconsistent(&body, "empty field name");

    let mut body = valid_body();
    body.collections[0].0 = String::new();
    assert_inconsistent(&body, "empty collection name");

    let mut body = valid_body();
    doc(&mut body).0 = String::new();
    assert_inconsistent(&body, "empty document id");

    let mut body = valid_body();
    let copy = body.collections[0].clone();
    body.collections.push(copy);
    assert_inconsistent(&body, "collection listed twice");

    let mut body = valid_body();
    let copy = body.collections[0].3[0].clone();
    body.collections[0].3.push(copy);
    assert_inconsistent(&body, "document listed twice");

    let mut body = valid_body();
    let field = doc(&mut body).3[0].clone();
    doc(&mut body).3.push(field);
    assert_inconsistent(&body, "field listed twice");
}

#[test]
fn a_snapshot_version_vector_is_merged() {
    let replica = small_replica();
    let mut other = reader();
    other
        .merge_snapshot(Timestamp::from_unix_ms(NOW + 10), &snapshot_of(&replica))
        .unwrap();
    assert!(other.version().includes(replica.version()));
    assert!(other.version().contains(OpId {
        replica: ReplicaId(2),
        seq: 3
    }));
    // Applying an operation the snapshot included is a duplicate.
    let op = replica.outbox().next().unwrap();
    assert_eq!(
        other.apply(Timestamp::from_unix_ms(NOW + 10), &op),
        Ok(sync_core::Applied::Duplicate)
    );
}

/// Junk inside the announced length (with a matching checksum) is refused,
/// as store records refuse trailing bytes.
#[test]
fn junk_after_the_body_is_refused() {
    let mut payload = postcard::to_allocvec(&valid_body()).unwrap();
    payload.push(0);
    assert!(Snapshot::decode(&with_header(&payload)).is_err());
}

/// A format-2 field stamp, as `snapshot.rs` encodes it: the document's
/// `written` stamp, or a wrapping delta from the previous explicit field
/// stamp (the `written` stamp before the first) with the same or another
/// replica.
#[derive(Serialize)]
enum RawStamp {
    Written,
    SameReplica(i64),
    OtherReplica(i64, u32),
}

type RawFieldV2 = (u32, RawStamp, Option<Value>);
type RawDocV2 = (String, Option<Packed>, Option<Packed>, Vec<RawFieldV2>);
type RawCollectionV2 = (String, Option<Packed>, Option<Packed>, Vec<RawDocV2>);

/// A format-2 body: like [`RawBody`] with [`RawStamp`] field stamps.
#[derive(Serialize)]
struct RawBodyV2 {
    version: VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
    names: Vec<String>,
    replicas: Vec<ReplicaId>,
    collections: Vec<RawCollectionV2>,
}

/// Document "d" in collection "c" written by replica 7 at 10 (`written`),
/// with the given fields `f0`, `f1`; replicas 7 and 8 are in the table.
fn v2_body(written: Option<Packed>, fields: Vec<RawFieldV2>) -> Vec<u8> {
    let body = RawBodyV2 {
        version: VersionVector::new(),
        max_hlc: Hlc::new(10, 0).unwrap(),
        tombstone_horizon: Hlc::ZERO,
        names: vec!["f0".into(), "f1".into()],
        replicas: vec![ReplicaId(7), ReplicaId(8)],
        collections: vec![(
            "c".into(),
            None,
            None,
            vec![("d".into(), written, None, fields)],
        )],
    };
    common::snapshot_blob(2, &postcard::to_allocvec(&body).expect("serialises"))
}

#[test]
fn v2_field_stamps_are_deltas_from_the_previous_stamp() {
    let written = Some((at(10), 0));
    // f0 by replica 8 one ms before `written`; f1 by replica 8 again, one ms
    // before f0: each delta is from the stamp before it.
    let one_ms = at(1) as i64;
    let bytes = v2_body(
        written,
        vec![
            (0, RawStamp::OtherReplica(-one_ms, 1), Some(Value::Int(0))),
            (1, RawStamp::SameReplica(-one_ms), Some(Value::Int(1))),
        ],
    );
    let snapshot = Snapshot::decode(&bytes).expect("valid format-2 body");
    let reencoded = Snapshot::encode(
        &snapshot.state,
        &snapshot.version,
        snapshot.max_hlc,
        snapshot.tombstone_horizon,
    );
    let reencoded = Snapshot::transcode(&reencoded, 2).expect("transcodes");
    assert_eq!(reencoded, bytes, "the encoder writes the same deltas");
    let doc = snapshot.state.get("c", "d").expect("document");
    assert_eq!(doc.fields.len(), 2);
    assert_eq!(
        doc.revision.stamp,
        sync_core::Stamp::new(Hlc::new(10, 0).unwrap(), ReplicaId(7))
    );
}

#[test]
fn v2_bodies_with_bad_field_stamps_are_inconsistent() {
    let expect_inconsistent = |bytes: Vec<u8>, what: &str| match Snapshot::decode(&bytes) {
        Err(SnapshotError::Inconsistent(_)) => {}
        other => panic!("{what}: expected Inconsistent, got {other:?}"),
    };
    let field = |stamp| vec![(0, stamp, Some(Value::Int(1)))];
    expect_inconsistent(
        v2_body(None, field(RawStamp::Written)),
        "`Written` in a document that was never written",
    );
    expect_inconsistent(
        v2_body(None, field(RawStamp::SameReplica(5))),
        "`SameReplica` with no stamp before it",
    );
    expect_inconsistent(
        v2_body(Some((at(10), 0)), field(RawStamp::OtherReplica(-1, 2))),
        "replica index out of range",
    );
    expect_inconsistent(
        v2_body(
            Some((at(10), 0)),
            field(RawStamp::SameReplica(at(1) as i64)),
        ),
        "a field stamp after the document's `written` stamp",
    );
    expect_inconsistent(
        v2_body(Some((at(10), 0)), field(RawStamp::SameReplica(i64::MIN))),
        "a delta that wraps to a far-future stamp",
    );
}

/// Format 3 bodies whose deflated stream is wrong in each way a reader must
/// catch, all named `Malformed`, none inflated beyond what they claim.
#[test]
fn damaged_compressed_bodies_are_malformed() {
    let plain = Snapshot::transcode(&small_snapshot(), 2).expect("transcodes");
    let body = &plain[13..];
    let compressed = |claimed: u32, deflated: &[u8]| {
        let mut payload = claimed.to_le_bytes().to_vec();
        payload.extend_from_slice(deflated);
        common::snapshot_blob(COMPRESSED_SNAPSHOT_FORMAT, &payload)
    };
    let deflated = miniz_oxide::deflate::compress_to_vec(body, 2);
    let len = body.len() as u32;
    assert_eq!(
        Snapshot::decode(&compressed(len, &deflated)).expect("well-formed"),
        Snapshot::decode(&plain).expect("plain"),
    );
    let mut trailing = deflated.clone();
    trailing.push(0);
    let cases: [(&str, Vec<u8>); 6] = [
        ("bytes after the final block", compressed(len, &trailing)),
        (
            "no length",
            common::snapshot_blob(COMPRESSED_SNAPSHOT_FORMAT, &[1, 0]),
        ),
        (
            "claims more than deflate can hold",
            compressed(u32::MAX, &deflated),
        ),
        (
            "inflates to more than claimed",
            compressed(len - 1, &deflated),
        ),
        (
            "inflates to less than claimed",
            compressed(len + 1, &deflated),
        ),
        ("not a deflate stream", compressed(len, &[0xff; 16])),
    ];
    for (what, bytes) in cases {
        match Snapshot::decode(&bytes) {
            Err(SnapshotError::Malformed(_)) => {}
            other => panic!("{what}: expected Malformed, got {other:?}"),
        }
    }
}

/// `decode_with_limit` bounds the inflated body: a compressed snapshot whose
/// body claims more than the limit is refused before anything is inflated.
#[test]
fn compressed_bodies_over_the_limit_are_too_large() {
    let replica = small_replica();
    for compressed in [
        replica.encode_snapshot_compressed(),
        Snapshot::transcode(&replica.encode_snapshot(), 3).expect("transcodes"),
    ] {
        let body_len = Snapshot::body_len(&compressed);
        assert!(Snapshot::decode_with_limit(&compressed, body_len).is_ok());
        assert_eq!(
            Snapshot::decode_with_limit(&compressed, body_len - 1),
            Err(SnapshotError::TooLarge {
                size: body_len as u64,
                limit: body_len as u64 - 1,
            })
        );
    }
}

/// `body_len` is the state's encoded size whether or not the snapshot is
/// compressed: what a compaction re-encodes.
#[test]
fn body_len_is_the_same_for_plain_and_compressed() {
    let replica = small_replica();
    let plain = replica.encode_snapshot();
    let compressed = replica.encode_snapshot_compressed();
    assert_eq!(Snapshot::body_len(&compressed), Snapshot::body_len(&plain));
    let format_2 = Snapshot::transcode(&plain, 2).expect("transcodes");
    let format_3 = Snapshot::transcode(&plain, 3).expect("transcodes");
    assert_eq!(Snapshot::body_len(&format_2), format_2.len() - 13);
    assert_eq!(Snapshot::body_len(&format_3), Snapshot::body_len(&format_2));
    assert_eq!(Snapshot::body_len(b"short"), 0);
}
