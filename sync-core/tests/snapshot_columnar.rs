//! Snapshot formats 4 and 5 (columns): mixed values and overwritten fields
//! round trip through them and through every older format; they are smaller
//! than format 2 on a realistic state, and format 5's timeline is smaller
//! than format 4 where fields were written one at a time; and bodies whose
//! run-length columns or timeline claim more than they hold are refused,
//! bounded by the caller's limit, before anything large is allocated.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use std::collections::BTreeMap;

use sync_core::Timestamp;
use sync_core::snapshot::{COLUMNAR_SNAPSHOT_FORMAT, TIMELINE_SNAPSHOT_FORMAT};
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
        assert_eq!(bytes[4], TIMELINE_SNAPSHOT_FORMAT);
        let snapshot = Snapshot::decode(&bytes).expect("decodes");
        assert!(snapshot.state == *replica.state(), "same state");
        for format in 1..=TIMELINE_SNAPSHOT_FORMAT {
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
    let format_4 = Snapshot::transcode(&columnar, 4).expect("transcodes");
    // Every field here is stamped like its document: no stamp to list, so
    // the timeline costs format 5 next to nothing over format 4.
    assert!(
        format_4.len() + 64 > replica.encode_snapshot_compressed().len(),
        "deflated format 5 is no larger than deflated format 4"
    );
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
            let _ = Snapshot::decode(&common::snapshot_blob(bytes[4], &payload[..cut]));
        }
        for at in (0..payload.len()).step_by(2) {
            for delta in [1u8, 0x80, 0xff] {
                let mut damaged = payload.to_vec();
                damaged[at] = damaged[at].wrapping_add(delta);
                if let Ok(s) = Snapshot::decode(&common::snapshot_blob(bytes[4], &damaged)) {
                    let _ = Snapshot::encode(&s.state, &s.version, s.max_hlc, s.tombstone_horizon);
                }
            }
        }
    }
}

/// Workload 1 of the peer comparison, small: `docs` documents of `fields`
/// fields, written one field per put, document after document round
/// robin, so no two fields of a document share a stamp and a document's
/// consecutive fields were written `docs` writes apart. The clock moves
/// one millisecond every `per_ms` writes.
fn field_per_write(docs: usize, fields: usize, per_ms: usize) -> Replica {
    let mut r = Replica::new(ReplicaId(0x5eed_cafe_f00d), ReplicaConfig::default());
    for i in 0..docs * fields {
        let (doc, field) = (format!("doc{:04}", i % docs), format!("f{}", i / docs));
        let now = Timestamp::from_unix_ms(NOW + (i / per_ms) as u64);
        r.put(now, "docs", &doc, [(field, Value::Int(i as i64))])
            .expect("put");
    }
    r
}

/// Where every field has a stamp of its own, written at irregular
/// intervals, format 4's stamp differences are literal numbers and format
/// 5's references to the timeline collapse into runs.
#[test]
fn the_timeline_shrinks_stamps_written_one_field_at_a_time() {
    // 333 writes a millisecond: the counter climbs and resets irregularly
    // against the 100-write stride between a document's fields.
    let replica = field_per_write(100, 50, 333);
    let timeline = replica.encode_snapshot();
    assert_eq!(timeline[4], TIMELINE_SNAPSHOT_FORMAT);
    let columns = Snapshot::transcode(&timeline, 4).expect("transcodes");
    assert_eq!(columns[4], COLUMNAR_SNAPSHOT_FORMAT);
    assert!(Snapshot::decode(&columns).expect("decodes").state == *replica.state());
    // `transcode` deflates format 4; `body_len` is the body's length
    // inflated, plus 4 bytes per field in both formats.
    let nominal = 4 * replica.state().field_count();
    let (body_5, body_4) = (
        Snapshot::body_len(&timeline) - nominal,
        Snapshot::body_len(&columns) - nominal,
    );
    assert!(
        body_5 * 3 < body_4,
        "format 5 body {body_5} bytes, format 4 body {body_4} bytes"
    );
    let decoded = Snapshot::decode(&timeline).expect("decodes");
    assert!(decoded.state == *replica.state(), "same state");
    assert_eq!(
        Snapshot::encode(
            &decoded.state,
            &decoded.version,
            decoded.max_hlc,
            decoded.tombstone_horizon
        ),
        timeline,
        "encodes again byte for byte"
    );
}

/// A format-5 body: [`body`]'s document (written, two fields `a` and `b`
/// stamped like it, both Null), with the given timeline length, timeline
/// columns (wall, counter, replica) and reference column.
fn body_5(timeline_len: &[u8], timeline: [&[u8]; 3], refs: &[u8]) -> Vec<u8> {
    let mut b = vec![
        0, // version: no replicas
        0, // max_hlc
        0, // horizon
        2, 1, b'a', 1, b'b', // names
        1, 7, // replicas
        1, 1, b'c', 0, 0, 1, // collection c, no stamps, one doc
    ];
    b.extend_from_slice(timeline_len);
    let columns: [&[u8]; 14] = [
        &[0, 1, b'd'], // doc id `d`
        &[2, 1],       // flags: written
        &[2, 2],       // two fields
        &[4, 1],       // names a, b
        &[4, 0],       // both stamped `written`
        timeline[0],
        timeline[1],
        timeline[2],
        &[4, 1], // both Null
        &[],
        &[],
        &[],
        &[],
        refs,
    ];
    for c in columns {
        b.push(c.len() as u8);
    }
    for c in columns {
        b.extend_from_slice(c);
    }
    b
}

/// A format-5 blob of two fields around `body`.
fn blob_5(body: &[u8]) -> Vec<u8> {
    let mut payload = vec![0, 2];
    payload.extend_from_slice(body);
    common::snapshot_blob(TIMELINE_SNAPSHOT_FORMAT, &payload)
}

/// One stamp on the timeline: wall 1, counter 0, replica index 0.
const ONE_STAMP: [&[u8]; 3] = [&[2, 2], &[2, 0], &[2, 0]];

#[test]
fn a_hand_built_timeline_body_decodes() {
    let snapshot = Snapshot::decode(&blob_5(&body_5(&[1], ONE_STAMP, &[2, 0]))).expect("decodes");
    // The same content as the format-4 body with that stamp in place.
    let inline = Snapshot::decode(&blob(2, &body(&[2, 2], &[4, 1], &[4, 0], &[4, 1])))
        .expect("format 4 decodes");
    assert!(snapshot.state == inline.state, "the same state");
    assert_eq!(
        snapshot.state.get("c", "d").expect("document").fields.len(),
        2
    );
}

/// A timeline is bounded by the stamps the body can use, listed in strictly
/// ascending order, and every reference points into it.
#[test]
fn timelines_that_do_not_fit_the_body_are_refused() {
    // The same stamp twice: wall 1 then +0, counter 0 twice, replica 0 twice.
    let twice: [&[u8]; 3] = [&[3, 2, 0], &[4, 0], &[4, 0]];
    let cases: [(&str, Vec<u8>); 5] = [
        (
            // 2^40 stamps for a body of one document and two fields: refused
            // before anything is allocated for them.
            "a timeline longer than the body's uses",
            body_5(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20], ONE_STAMP, &[2, 0]),
        ),
        (
            "a timeline listing a stamp twice",
            body_5(&[2], twice, &[2, 0]),
        ),
        (
            "a reference past the timeline's end",
            body_5(&[1], ONE_STAMP, &[2, 2]),
        ),
        (
            "a reference before the timeline's start",
            body_5(&[1], ONE_STAMP, &[2, 1]),
        ),
        (
            "a reference column with entries left over",
            body_5(&[1], ONE_STAMP, &[4, 0]),
        ),
    ];
    for (what, body) in cases {
        match Snapshot::decode(&blob_5(&body)) {
            Err(SnapshotError::Malformed(_) | SnapshotError::Inconsistent(_)) => {}
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
}
