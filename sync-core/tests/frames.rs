//! Property tests of the frame codec (`protocol::encode` / `decode`):
//! arbitrary bytes never make the decoder panic, every message survives a
//! round trip, decoding a valid encoding and encoding it again gives the
//! same bytes, and the relay's spliced `Deliver` frames are byte-identical
//! to encoded ones. The same holds for protocol version 3's compact
//! batches (`protocol::encode_in`), generated with runs of sequence
//! numbers, shared names and stamps both near and far apart.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sync_core::protocol::{self, ErrorCode, Hello, Message, Welcome};
use sync_core::{Change, Hlc, Op, OpId, ReplicaId, Value};

const MAX: usize = protocol::DEFAULT_MAX_FRAME_BYTES;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        ".{0,8}".prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            prop::collection::btree_map(".{0,4}", inner, 0..4).prop_map(Value::Map),
        ]
    })
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_é]{1,8}"
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (
            name(),
            name(),
            prop::collection::vec((name(), prop::option::of(value())), 0..4)
        )
            .prop_map(|(collection, id, fields)| Change::Put {
                collection,
                id,
                fields,
            }),
        (name(), name()).prop_map(|(collection, id)| Change::Delete { collection, id }),
        name().prop_map(|collection| Change::CreateCollection { collection }),
        name().prop_map(|collection| Change::DropCollection { collection }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    (any::<u64>(), 1..=u64::MAX, any::<u64>(), change()).prop_map(|(replica, seq, hlc, change)| {
        Op {
            id: OpId {
                replica: ReplicaId(replica),
                seq,
            },
            hlc: Hlc::from_u64(hlc),
            change,
        }
    })
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..4)
}

/// Operations as real batches hold them: a few replicas writing runs of
/// consecutive sequence numbers, stamps mostly close together, names that
/// repeat and share prefixes; mixed with fully random operations.
fn batch() -> impl Strategy<Value = Vec<Op>> {
    let near = (
        0u64..3,
        prop_oneof![Just(1u64), 0u64..70_000, any::<u64>()],
        prop_oneof![
            4 => (0usize..3, "doc[0-9]{1,3}", prop::collection::vec(("f[0-2]", prop::option::of(value())), 1..3))
                .prop_map(|(c, id, fields)| Change::Put { collection: format!("c{c}"), id, fields }),
            1 => change(),
        ],
        any::<bool>(),
    );
    prop::collection::vec(
        prop_oneof![4 => near.prop_map(Some), 1 => Just(None)],
        0..24,
    )
    .prop_flat_map(|shape| {
        let n = shape.len();
        (Just(shape), prop::collection::vec(op(), n))
    })
    .prop_map(|(shape, randoms)| {
        let mut seqs = [0u64; 3];
        let mut hlc = 0u64;
        shape
            .into_iter()
            .zip(randoms)
            .map(|(near, random)| match near {
                None => random,
                Some((replica, step, change, gap)) => {
                    let seq = &mut seqs[replica as usize];
                    *seq += if gap { 2 } else { 1 };
                    hlc = hlc.wrapping_add(step);
                    Op {
                        id: OpId {
                            replica: ReplicaId(replica + 7),
                            seq: *seq,
                        },
                        hlc: Hlc::from_u64(hlc),
                        change,
                    }
                }
            })
            .collect()
    })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::Malformed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::ReadOnly,
        ErrorCode::ClockAhead,
        ErrorCode::Stale,
        ErrorCode::InvalidOp,
        ErrorCode::BatchTooLarge,
        ErrorCode::FrameTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::TooManyConnections,
        ErrorCode::SlowConsumer,
        ErrorCode::IdleTimeout,
        ErrorCode::Superseded,
        ErrorCode::GoingAway,
        ErrorCode::Internal,
    ])
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u64>(),
            ".{0,12}",
            prop::collection::vec(any::<u8>(), 0..32),
            any::<u64>(),
            any::<u64>(),
            ".{0,12}"
        )
            .prop_map(|(replica, room, token, cursor, own_seq, agent)| {
                Message::Hello(Hello {
                    replica: ReplicaId(replica),
                    room,
                    token,
                    cursor,
                    own_seq,
                    settled_seq: own_seq / 2,
                    agent,
                    versions: vec![protocol::PROTOCOL_VERSION, (own_seq % 256) as u8],
                    snapshot_formats: vec![(cursor % 5) as u8],
                })
            }),
        (
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()),
            (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>())
        )
            .prop_map(
                |(
                    (head, accepted_seq, relay_time_ms, read_only),
                    (heartbeat_ms, max_batch_ops, max_batch_bytes, cursor),
                )| {
                    Message::Welcome(Welcome {
                        head,
                        accepted_seq,
                        relay_time_ms,
                        read_only,
                        heartbeat_ms,
                        max_batch_ops,
                        max_batch_bytes,
                        refused: vec![accepted_seq / 2],
                        cursor,
                        version: (head % 256) as u8,
                        snapshot_format: (cursor % 256) as u8,
                    })
                }
            ),
        ops().prop_map(|ops| Message::Push { ops }),
        (any::<u64>(), any::<u64>()).prop_map(|(through_seq, seq)| Message::Ack {
            through_seq,
            refused: vec![(seq, ErrorCode::Stale)]
        }),
        (any::<u64>(), any::<u64>(), ops()).prop_map(|(from, cursor, ops)| Message::Deliver {
            from,
            cursor,
            ops
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(
                |(cursor, total_len, offset, bytes)| Message::SnapshotChunk {
                    cursor,
                    total_len,
                    offset,
                    bytes,
                }
            ),
        (any::<u64>(), any::<u32>())
            .prop_map(|(cursor, frames)| Message::Applied { cursor, frames }),
        (any::<u64>(), error_code(), any::<u64>(), ".{0,16}").prop_map(
            |(seq, code, retry_after_ms, message)| Message::Rejected {
                seq,
                code,
                retry_after_ms,
                message,
            }
        ),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        (error_code(), ".{0,16}").prop_map(|(code, message)| Message::Error { code, message }),
    ]
}

/// One way to damage a frame.
#[derive(Clone, Debug)]
enum Damage {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, x)| Damage::Flip(i, x)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Remove),
    ]
}

fn apply(frame: &mut Vec<u8>, damage: &Damage) {
    if frame.is_empty() {
        return;
    }
    match damage {
        Damage::Truncate(i) => frame.truncate(i.index(frame.len())),
        Damage::Flip(i, x) => {
            let at = i.index(frame.len());
            frame[at] ^= x;
        }
        Damage::Insert(i, b) => {
            let at = i.index(frame.len() + 1);
            frame.insert(at, *b);
        }
        Damage::Remove(i) => {
            let at = i.index(frame.len());
            frame.remove(at);
        }
    }
}

/// Whatever `decode` accepts, it accepts again after re-encoding.
fn check_stable(frame: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(message) = protocol::decode(frame, MAX) {
        let again = protocol::encode(&message);
        prop_assert_eq!(protocol::decode(&again, MAX), Ok(message));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(versioned in any::<bool>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut frame = Vec::with_capacity(body.len() + 1);
        if versioned {
            frame.push(protocol::PROTOCOL_VERSION);
        }
        frame.extend_from_slice(&body);
        check_stable(&frame)?;
        let _ = protocol::decode_op(&body);
    }

    #[test]
    fn damaged_frames_never_panic(message in message(), damages in prop::collection::vec(damage(), 1..4)) {
        let mut frame = protocol::encode(&message);
        for d in &damages {
            apply(&mut frame, d);
        }
        check_stable(&frame)?;
    }

    #[test]
    fn messages_round_trip(message in message()) {
        let frame = protocol::encode(&message);
        prop_assert_eq!(frame[0], protocol::PROTOCOL_VERSION);
        let decoded = protocol::decode(&frame, MAX);
        prop_assert_eq!(decoded.as_ref(), Ok(&message));
        // The encoding is canonical: decoding then encoding gives the same bytes.
        prop_assert_eq!(protocol::encode(&decoded.unwrap()), frame.clone());
        // One byte short is never a valid frame.
        prop_assert!(protocol::decode(&frame[..frame.len() - 1], MAX).is_err());
        // And no frame is accepted over the limit.
        prop_assert!(protocol::decode(&frame, frame.len() - 1).is_err());
    }

    #[test]
    fn compact_batches_round_trip(ops in batch(), from in any::<u64>(), cursor in any::<u64>()) {
        for message in [Message::Push { ops: ops.clone() }, Message::Deliver { from, cursor, ops: ops.clone() }] {
            let frame = protocol::encode_in(protocol::COMPACT_VERSION, &message);
            prop_assert_eq!(frame[0], protocol::COMPACT_VERSION);
            let decoded = protocol::decode(&frame, MAX);
            prop_assert_eq!(decoded.as_ref(), Ok(&message));
            // Canonical: encoding the decoded message gives the same bytes.
            prop_assert_eq!(protocol::encode_in(protocol::COMPACT_VERSION, &decoded.unwrap()), frame.clone());
            prop_assert!(protocol::decode(&frame[..frame.len() - 1], MAX).is_err());
        }
    }

    #[test]
    fn every_message_round_trips_in_version_3(message in message()) {
        let frame = protocol::encode_in(protocol::COMPACT_VERSION, &message);
        prop_assert_eq!(protocol::decode(&frame, MAX), Ok(message));
    }

    #[test]
    fn damaged_version_3_frames_never_panic(ops in batch(), damages in prop::collection::vec(damage(), 1..4)) {
        let mut frame = protocol::encode_in(protocol::COMPACT_VERSION, &Message::Push { ops });
        for d in &damages {
            apply(&mut frame, d);
        }
        check_stable(&frame)?;
    }

    #[test]
    fn random_version_3_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        for tag in [2u8, 4] {
            let mut frame = vec![protocol::COMPACT_VERSION, tag];
            frame.extend_from_slice(&body);
            check_stable(&frame)?;
        }
    }

    #[test]
    fn ops_round_trip_alone(op in op()) {
        let bytes = protocol::encode_op(&op);
        prop_assert_eq!(protocol::decode_op(&bytes), Ok(op));
    }

    #[test]
    fn spliced_deliver_equals_encoded_deliver(from in any::<u64>(), cursor in any::<u64>(), ops in prop::collection::vec(op(), 0..8)) {
        let encoded: Vec<Vec<u8>> = ops.iter().map(protocol::encode_op).collect();
        let spliced = protocol::encode_deliver(from, cursor, encoded.iter().map(Vec::as_slice));
        let message = Message::Deliver { from, cursor, ops };
        prop_assert_eq!(&spliced, &protocol::encode(&message));
        prop_assert_eq!(protocol::decode(&spliced, MAX), Ok(message));
    }
}

/// Map keys travel in ascending order and come back in it; a map that
/// arrives out of order is accepted and re-encoded in order.
#[test]
fn map_keys_are_sorted_on_the_wire() {
    let mut map = BTreeMap::new();
    map.insert("b".to_owned(), Value::Int(2));
    map.insert("a".to_owned(), Value::Int(1));
    let message = Message::Push {
        ops: vec![Op {
            id: OpId {
                replica: ReplicaId(1),
                seq: 1,
            },
            hlc: Hlc::from_u64(1),
            change: Change::Put {
                collection: "c".into(),
                id: "d".into(),
                fields: vec![("v".into(), Some(Value::Map(map)))],
            },
        }],
    };
    let frame = protocol::encode(&message);
    let tail = [7, 2, 1, b'a', 2, 2, 1, b'b', 2, 4];
    assert!(frame.ends_with(&tail), "{frame:?}");
    let mut reversed = frame.clone();
    let at = reversed.len() - tail.len();
    reversed[at..].copy_from_slice(&[7, 2, 1, b'b', 2, 4, 1, b'a', 2, 2]);
    assert_eq!(protocol::decode(&reversed, MAX), Ok(message));
}

/// Varints are decoded leniently (a zero-padded varint is accepted), but
/// every encoder emits the shortest form; see `docs/PROTOCOL.md`.
#[test]
fn padded_varints_decode_but_are_never_produced() {
    let padded = [protocol::PROTOCOL_VERSION, 8, 0x87, 0x80, 0x00];
    assert_eq!(
        protocol::decode(&padded, MAX),
        Ok(Message::Ping { nonce: 7 })
    );
    assert_eq!(
        protocol::encode(&Message::Ping { nonce: 7 }),
        vec![protocol::PROTOCOL_VERSION, 8, 7]
    );
}
