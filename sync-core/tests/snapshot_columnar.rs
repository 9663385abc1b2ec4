//! Snapshot format 4 (columns): mixed values and overwritten fields round
//! trip through it and through every older format; it is smaller than
//! format 2 on a realistic state; and bodies whose run-length columns claim
//! more than they hold are refused, bounded by the caller's limit, before
//! anything large is allocated.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use std::collections::BTreeMap;

use sync_core::Timestamp;
use sync_core::snapshot::COLUMNAR_SNAPSHOT_FORMAT;
use sync_core::{Replica, ReplicaConfig, ReplicaId, Snapshot, SnapshotError, Value};

const NOW: u64 = 1_700_000_000_000;

/// `docs` documents of mixed values, each field overwritten three times, some
/// by a second replica, a few fields removed: what an app's state looks like.
fn mixed_replica(docs: u64) -> Replica {
    let mut alice = Replica::new(ReplicaId(1), ReplicaConfig::default());
    let mut bob = Replica::new(ReplicaId(2), ReplicaConfig::default());
    let statuses = ["open", "done", "blocked"];
    for round in 0..3u64 {
        for d in 0..docs {
            let id = format!("item-{d:05}");
            let mut map = BTreeMap::new();
            map.insert("k".to_owned(), Value::Int(d as i64));
            let fields = [
                ("title", Value::from(format!("item {d} v{round}"))),
                ("status", Value::from(statuses[(d + round) as usize % 3])),
                ("count", Value::Int((d * 7 + round) as i64)),
                ("score", Value::Float(d as f64 * 0.5 + round as f64)),
                ("done", Value::Bool((d + round) % 2 == 0)),
                ("blob", Value::Bytes(vec![d as u8; 3])),
                ("tags", Value::List(vec![Value::from("a"), Value::Int(1)])),
                ("meta", Value::Map(map)),
            ];
            let writer = if d % 5 == 0 { &mut bob } else { &mut alice };
            writer
                .put(
                    Timestamp::from_unix_ms(NOW + round * 10 + d / 50),
                    "items",
                    &id,
                    fields,
                )
                .expect("put");
        }
    }
    alice
        .unset(
            Timestamp::from_unix_ms(NOW + 100),
            "items",
            "item-00003",
            ["score"],
        )
        .unwrap();
    alice
        .delete(Timestamp::from_unix_ms(NOW + 101), "items", "item-00004")
        .unwrap();
    for op in bob.outbox().collect::<Vec<_>>() {
        alice
            .apply(Timestamp::from_unix_ms(NOW + 200), &op)
            .expect("apply");
    }
    alice
}

#[test]
fn mixed_values_round_trip_in_every_format() {
    let replica = mixed_replica(200);
    for bytes in [
        replica.encode_snapshot(),
        replica.encode_snapshot_compressed(),
    ] {
        assert_eq!(bytes[4], COLUMNAR_SNAPSHOT_FORMAT);
        let snapshot = Snapshot::decode(&bytes).expect("decodes");
        assert!(snapshot.state == *replica.state(), "same state");
        for format in 1..=4 {
            let other = Snapshot::transcode(&bytes, format).expect("transcodes");
            assert_eq!(Snapshot::decode(&other).expect("decodes"), snapshot);
        }
    }
}

#[test]
fn columns_are_smaller_than_format_2() {
    let replica = mixed_replica(200);
    let columnar = replica.encode_snapshot();
    let format_2 = Snapshot::transcode(&columnar, 2).expect("transcodes");
    let format_3 = Snapshot::transcode(&columnar, 3).expect("transcodes");
    let deflated = replica.encode_snapshot_compressed();
    assert!(
        columnar.len() * 3 < format_2.len() * 2,
        "{} vs {}",
        columnar.len(),
        format_2.len()
    );
    assert!(
        deflated.len() < format_3.len(),
        "{} vs {}",
        deflated.len(),
        format_3.len()
    );
}

/// A format-4 payload by hand: mode, field count, then the body.
fn blob(fields: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = vec![0, 0];
    payload[1] = fields as u8;
    if fields >= 0x80 {
        payload.truncate(1);
        let mut v = fields;
        while v >= 0x80 {
            payload.push((v as u8) | 0x80);
            v >>= 7;
        }
        payload.push(v as u8);
    }
    payload.extend_from_slice(body);
    common::snapshot_blob(COLUMNAR_SNAPSHOT_FORMAT, &payload)
}

/// A body with one collection `c` of one document `d`, names `a` and `b`,
/// replica 7, and the given field-count and field-name columns; every other
/// column as given in `rest` (tags, ints).
fn body(field_counts: &[u8], field_names: &[u8], stamps: &[u8], tags: &[u8]) -> Vec<u8> {
    let mut b = vec![
        0, // version: no replicas
        0, // max_hlc
        0, // horizon
        2, 1, b'a', 1, b'b', // names
        1, 7, // replicas
        1, 1, b'c', 0, 0, 1, // collection c, no stamps, one doc
    ];
    let doc_ids = [0, 1, b'd'];
    let doc_flags = [2, 1]; // run of 1: written
    // One written stamp: wall 1, counter 0, replica 0.
    let wall = [2, 2];
    let counter = [2, 0];
    let replica = [2, 0];
    let columns: [&[u8]; 13] = [
        &doc_ids,
        &doc_flags,
        field_counts,
        field_names,
        stamps,
        &wall,
        &counter,
        &replica,
        tags,
        &[],
        &[],
        &[],
        &[],
    ];
    for c in columns {
        b.push(c.len() as u8);
    }
    for c in columns {
        b.extend_from_slice(c);
    }
    b
}

#[test]
fn a_hand_built_body_decodes() {
    // Two fields (a, b), both stamped `written`, both Null.
    let ok = blob(2, &body(&[2, 2], &[4, 1], &[4, 0], &[4, 1]));
    let snapshot = Snapshot::decode(&ok).expect("decodes");
    let doc = snapshot.state.get("c", "d").expect("document");
    assert_eq!(doc.fields.len(), 2);
    assert_eq!(doc.fields["a"], Value::Null);
}

#[test]
fn runs_that_claim_more_than_the_body_holds_are_refused() {
    let cases: [(&str, Vec<u8>); 6] = [
        (
            // A run of 2^40 field names for a document of two fields.
            "a name column with entries left over",
            blob(
                2,
                &body(
                    &[2, 2],
                    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 1],
                    &[4, 0],
                    &[4, 1],
                ),
            ),
        ),
        (
            "a document claiming more fields than there are names",
            blob(3, &body(&[2, 3], &[6, 1], &[6, 0], &[6, 1])),
        ),
        (
            "a field count above the body's total",
            blob(1, &body(&[2, 2], &[4, 1], &[4, 0], &[4, 1])),
        ),
        (
            "a field count below the body's total",
            blob(9, &body(&[2, 2], &[4, 1], &[4, 0], &[4, 1])),
        ),
        (
            "a run of length zero",
            blob(2, &body(&[0, 2], &[4, 1], &[4, 0], &[4, 1])),
        ),
        (
            "fields out of order",
            blob(2, &body(&[2, 2], &[3, 2, 0], &[4, 0], &[4, 1])),
        ),
    ];
    for (what, bytes) in cases {
        match Snapshot::decode(&bytes) {
            Err(SnapshotError::Malformed(_) | SnapshotError::Inconsistent(_)) => {}
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
}

/// The limit counts 4 bytes per claimed field on top of the body's bytes,
/// and is checked before anything is built: a payload claiming 2^50 fields
/// is refused as too large under any realistic limit.
#[test]
fn the_limit_bounds_claimed_fields() {
    let huge = blob(1 << 50, &body(&[2, 2], &[4, 1], &[4, 0], &[4, 1]));
    match Snapshot::decode_with_limit(&huge, 1 << 30) {
        Err(SnapshotError::TooLarge { size, limit }) => {
            assert!(size > 1 << 52);
            assert_eq!(limit, 1 << 30);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let replica = mixed_replica(200);
    for bytes in [
        replica.encode_snapshot(),
        replica.encode_snapshot_compressed(),
    ] {
        let len = Snapshot::body_len(&bytes);
        assert!(Snapshot::decode_with_limit(&bytes, len).is_ok());
        assert!(matches!(
            Snapshot::decode_with_limit(&bytes, len - 1),
            Err(SnapshotError::TooLarge { .. })
        ));
    }
}

/// Every truncation of the payload and every single-byte change to it
/// (with the checksum fixed up, so the body parser sees it) is refused or
/// decodes to a state that encodes again without panicking.
#[test]
fn damaged_payloads_never_panic() {
    let replica = mixed_replica(12);
    for bytes in [
        replica.encode_snapshot(),
        replica.encode_snapshot_compressed(),
    ] {
        let payload = &bytes[13..];
        for cut in (0..payload.len()).step_by(3) {
            let _ = Snapshot::decode(&common::snapshot_blob(4, &payload[..cut]));
        }
        for at in (0..payload.len()).step_by(2) {
            for delta in [1u8, 0x80, 0xff] {
                let mut damaged = payload.to_vec();
                damaged[at] = damaged[at].wrapping_add(delta);
                if let Ok(s) = Snapshot::decode(&common::snapshot_blob(4, &damaged)) {
                    let _ = Snapshot::encode(&s.state, &s.version, s.max_hlc, s.tombstone_horizon);
                }
            }
        }
    }
}
