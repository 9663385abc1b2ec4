//! Golden byte vectors for the wire format (`docs/PROTOCOL.md`).
//!
//! Each file under `tests/vectors/` holds the exact bytes of one frame (or of
//! one snapshot blob) as hex. This test builds the same value in Rust and
//! checks that encoding it gives those bytes exactly, and that decoding
//! the bytes gives the value back. A change that alters the encoding fails
//! here: that is a protocol change, and needs a new protocol version.
//!
//! The normal run only compares. To (re)generate the files after a
//! deliberate change, run
//!
//! ```sh
//! UPDATE_VECTORS=1 cargo test -p sync-core --test vectors
//! ```
//!
//! and review the diff.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sync_core::Timestamp;
use sync_core::protocol::{self, CloseCode, ErrorCode, Hello, Message, Welcome};
use sync_core::{
    Change, Hlc, Op, OpId, Replica, ReplicaConfig, ReplicaId, Snapshot, Value, VersionVector,
};

/// 2023-11-14T22:13:20Z, in Unix milliseconds.
const T: u64 = 1_700_000_000_000;
const ALICE: ReplicaId = ReplicaId(0x0123_4567_89ab_cdef);
const BOB: ReplicaId = ReplicaId(0xb0b);

/// One golden vector.
struct Vector {
    /// File name under `tests/vectors/`, without the `.hex` extension.
    name: &'static str,
    /// One line for the file's header comment.
    about: String,
    kind: Kind,
}

enum Kind {
    /// A whole frame: version byte + message.
    Frame(Message),
    /// A whole frame of protocol version 3 (compact batches).
    FrameV3(Message),
    /// The refusal of a frame of protocol version `.0`, written in that
    /// version: `Error { UnsupportedVersion, .1 }`.
    VersionRefusal(u8, &'static str),
    /// A snapshot blob, as carried inside `SnapshotChunk`.
    Snapshot(Vec<u8>),
}

fn hlc(wall_ms: u64, counter: u16) -> Hlc {
    Hlc::new(wall_ms, counter).expect("in range")
}

fn op(replica: ReplicaId, seq: u64, at: Hlc, change: Change) -> Op {
    Op {
        id: OpId { replica, seq },
        hlc: at,
        change,
    }
}

fn put(fields: Vec<(&str, Option<Value>)>) -> Change {
    Change::Put {
        collection: "todos".into(),
        id: "milk".into(),
        fields: fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    }
}

/// A push of one put of one field `v` holding `value`.
fn push_value(value: Value) -> Message {
    Message::Push {
        ops: vec![op(ALICE, 1, hlc(T, 0), put(vec![("v", Some(value))]))],
    }
}

fn sample_map() -> Value {
    let mut map = BTreeMap::new();
    map.insert("b".to_owned(), Value::Bool(true));
    map.insert("a".to_owned(), Value::Int(1));
    Value::Map(map)
}

/// The small snapshot every snapshot vector carries: two replicas, two
/// collections, a live document, a deleted one, and an unset field.
fn sample_snapshot() -> Vec<u8> {
    let config = ReplicaConfig::default();
    let mut alice = Replica::new(ALICE, config);
    let mut bob = Replica::new(BOB, config);
    alice
        .put(
            Timestamp::from_unix_ms(T),
            "todos",
            "milk",
            [
                ("title", Value::from("Buy milk")),
                ("done", Value::from(false)),
            ],
        )
        .expect("put");
    alice
        .create_collection(Timestamp::from_unix_ms(T + 1), "notes")
        .expect("create");
    alice
        .put(
            Timestamp::from_unix_ms(T + 2),
            "todos",
            "eggs",
            [("title", "Eggs")],
        )
        .expect("put");
    alice
        .delete(Timestamp::from_unix_ms(T + 3), "todos", "eggs")
        .expect("delete");
    alice
        .unset(Timestamp::from_unix_ms(T + 4), "todos", "milk", ["title"])
        .expect("unset");
    bob.put(
        Timestamp::from_unix_ms(T + 5),
        "todos",
        "milk",
        [("done", true)],
    )
    .expect("put");
    for op in bob.outbox().collect::<Vec<_>>() {
        alice
            .apply(Timestamp::from_unix_ms(T + 5), &op)
            .expect("apply");
    }
    // `snapshot.hex` is frozen in format 2; `snapshot-timeline.hex` holds
    // the same content in format 5, as `encode_snapshot` writes it.
    Snapshot::transcode(&alice.encode_snapshot(), 2).expect("transcodes")
}

/// [`sample_snapshot`] in format 5, as `Replica::encode_snapshot` writes it.
fn sample_snapshot_timeline() -> Vec<u8> {
    let s = Snapshot::decode(&sample_snapshot()).expect("decodes");
    Snapshot::encode(&s.state, &s.version, s.max_hlc, s.tombstone_horizon)
}

fn vectors() -> Vec<Vector> {
    let mut all_values = BTreeMap::new();
    all_values.insert("list".to_owned(), Value::List(vec![Value::Null]));
    let snapshot = sample_snapshot();
    let split = snapshot.len() / 2;
    let mut v = vec![
        Vector {
            name: "hello",
            about: "Message::Hello: the client's first frame".into(),
            kind: Kind::Frame(Message::Hello(Hello {
                replica: ALICE,
                room: "room-1".into(),
                token: vec![0x74, 0x6f, 0x6b, 0x00, 0xff],
                cursor: 300,
                own_seq: 7,
                settled_seq: 6,
                agent: "concord/0.1".into(),
                versions: vec![2],
                snapshot_formats: vec![1, 2, 3],
            })),
        },
        Vector {
            name: "welcome",
            about: "Message::Welcome: the relay's answer to Hello".into(),
            kind: Kind::Frame(Message::Welcome(Welcome {
                head: 1000,
                accepted_seq: 7,
                relay_time_ms: T,
                read_only: false,
                heartbeat_ms: 15_000,
                max_batch_ops: 1000,
                max_batch_bytes: 1 << 20,
                refused: vec![5],
                cursor: 300,
                version: 2,
                snapshot_format: 3,
            })),
        },
        Vector {
            name: "welcome-read-only",
            about: "Message::Welcome for a read-only token, cursor reset to 0, snapshots in format 1"
                .into(),
            kind: Kind::Frame(Message::Welcome(Welcome {
                head: 5,
                accepted_seq: 0,
                relay_time_ms: 0,
                read_only: true,
                heartbeat_ms: 1000,
                max_batch_ops: 1,
                max_batch_bytes: 128,
                refused: Vec::new(),
                cursor: 0,
                version: 2,
                snapshot_format: 1,
            })),
        },
        Vector {
            name: "push-put",
            about: "Message::Push of one Change::Put with a field of every value kind and one unset field"
                .into(),
            kind: Kind::Frame(Message::Push {
                ops: vec![op(
                    ALICE,
                    8,
                    hlc(T, 3),
                    put(vec![
                        ("null", Some(Value::Null)),
                        ("yes", Some(Value::Bool(true))),
                        ("min", Some(Value::Int(i64::MIN))),
                        ("float", Some(Value::Float(-0.0))),
                        ("text", Some(Value::String("héllo".into()))),
                        ("raw", Some(Value::Bytes(vec![0, 1, 0xff]))),
                        (
                            "list",
                            Some(Value::List(vec![Value::Int(1), Value::String("x".into())])),
                        ),
                        ("map", Some(Value::Map(all_values))),
                        ("gone", None),
                    ]),
                )],
            }),
        },
        Vector {
            name: "push-value-null",
            about: "Message::Push, one put of field v = Value::Null".into(),
            kind: Kind::Frame(push_value(Value::Null)),
        },
        Vector {
            name: "push-value-bool",
            about: "Message::Push, one put of field v = Value::Bool(true)".into(),
            kind: Kind::Frame(push_value(Value::Bool(true))),
        },
        Vector {
            name: "push-value-int",
            about: "Message::Push, one put of field v = Value::Int(-3) (zigzag 5)".into(),
            kind: Kind::Frame(push_value(Value::Int(-3))),
        },
        Vector {
            name: "push-value-float",
            about: "Message::Push, one put of field v = Value::Float(1.5)".into(),
            kind: Kind::Frame(push_value(Value::Float(1.5))),
        },
        Vector {
            name: "push-value-string",
            about: "Message::Push, one put of field v = Value::String(\"hi\")".into(),
            kind: Kind::Frame(push_value(Value::String("hi".into()))),
        },
        Vector {
            name: "push-value-bytes",
            about: "Message::Push, one put of field v = Value::Bytes([0xde, 0xad])".into(),
            kind: Kind::Frame(push_value(Value::Bytes(vec![0xde, 0xad]))),
        },
        Vector {
            name: "push-value-list",
            about: "Message::Push, one put of field v = Value::List([Int(1), List([])])".into(),
            kind: Kind::Frame(push_value(Value::List(vec![
                Value::Int(1),
                Value::List(vec![]),
            ]))),
        },
        Vector {
            name: "push-value-map",
            about: "Message::Push, one put of field v = Value::Map({a: Int(1), b: Bool(true)})"
                .into(),
            kind: Kind::Frame(push_value(sample_map())),
        },
        Vector {
            name: "push-unset",
            about: "Message::Push, one put that removes field v (None)".into(),
            kind: Kind::Frame(Message::Push {
                ops: vec![op(ALICE, 1, hlc(T, 0), put(vec![("v", None)]))],
            }),
        },
        Vector {
            name: "push-delete",
            about: "Message::Push of one Change::Delete".into(),
            kind: Kind::Frame(Message::Push {
                ops: vec![op(
                    ALICE,
                    2,
                    hlc(T, 1),
                    Change::Delete {
                        collection: "todos".into(),
                        id: "milk".into(),
                    },
                )],
            }),
        },
        Vector {
            name: "push-create-collection",
            about: "Message::Push of one Change::CreateCollection".into(),
            kind: Kind::Frame(Message::Push {
                ops: vec![op(
                    ALICE,
                    3,
                    hlc(T + 1, 0),
                    Change::CreateCollection {
                        collection: "notes".into(),
                    },
                )],
            }),
        },
        Vector {
            name: "push-drop-collection",
            about: "Message::Push of one Change::DropCollection".into(),
            kind: Kind::Frame(Message::Push {
                ops: vec![op(
                    ALICE,
                    4,
                    hlc(T + 2, 0),
                    Change::DropCollection {
                        collection: "notes".into(),
                    },
                )],
            }),
        },
        Vector {
            name: "push-batch",
            about: "Message::Push of three operations, oldest first".into(),
            kind: Kind::Frame(Message::Push {
                ops: vec![
                    op(
                        ALICE,
                        5,
                        hlc(T + 3, 0),
                        Change::CreateCollection {
                            collection: "a".into(),
                        },
                    ),
                    op(
                        ALICE,
                        6,
                        hlc(T + 3, 1),
                        Change::Put {
                            collection: "a".into(),
                            id: "1".into(),
                            fields: vec![("n".into(), Some(Value::Int(300)))],
                        },
                    ),
                    op(
                        ALICE,
                        7,
                        hlc(T + 3, 2),
                        Change::Delete {
                            collection: "a".into(),
                            id: "1".into(),
                        },
                    ),
                ],
            }),
        },
        Vector {
            name: "ack",
            about: "Message::Ack through seq 7, seq 6 refused as stale".into(),
            kind: Kind::Frame(Message::Ack {
                through_seq: 7,
                refused: vec![(6, ErrorCode::Stale)],
            }),
        },
        Vector {
            name: "ack-unknown-code",
            about: "Message::Ack refusing seq 6 with error code 99, unknown to this build".into(),
            kind: Kind::Frame(Message::Ack {
                through_seq: 7,
                refused: vec![(6, ErrorCode::Unknown(99))],
            }),
        },
        Vector {
            name: "deliver",
            about: "Message::Deliver of offsets 301..=303 carrying two operations of other replicas"
                .into(),
            kind: Kind::Frame(Message::Deliver {
                from: 300,
                cursor: 303,
                ops: vec![
                    op(BOB, 1, hlc(T, 0), put(vec![("done", Some(Value::Bool(true)))])),
                    op(
                        ReplicaId(u64::MAX),
                        u64::MAX,
                        Hlc::from_u64(u64::MAX),
                        Change::DropCollection {
                            collection: "todos".into(),
                        },
                    ),
                ],
            }),
        },
        Vector {
            name: "deliver-empty",
            about: "Message::Deliver advancing the cursor over the client's own operations only"
                .into(),
            kind: Kind::Frame(Message::Deliver {
                from: 303,
                cursor: 305,
                ops: vec![],
            }),
        },
        Vector {
            name: "snapshot-chunk",
            about: "Message::SnapshotChunk carrying the whole of snapshot.hex in one chunk".into(),
            kind: Kind::Frame(Message::SnapshotChunk {
                cursor: 1000,
                total_len: snapshot.len() as u64,
                offset: 0,
                bytes: snapshot.clone(),
            }),
        },
        Vector {
            name: "snapshot-chunk-0",
            about: format!(
                "Message::SnapshotChunk: first of two chunks of snapshot.hex (bytes 0..{split})"
            ),
            kind: Kind::Frame(Message::SnapshotChunk {
                cursor: 1000,
                total_len: snapshot.len() as u64,
                offset: 0,
                bytes: snapshot[..split].to_vec(),
            }),
        },
        Vector {
            name: "snapshot-chunk-1",
            about: format!(
                "Message::SnapshotChunk: second of two chunks of snapshot.hex (bytes {split}..{})",
                snapshot.len()
            ),
            kind: Kind::Frame(Message::SnapshotChunk {
                cursor: 1000,
                total_len: snapshot.len() as u64,
                offset: split as u64,
                bytes: snapshot[split..].to_vec(),
            }),
        },
        Vector {
            name: "applied",
            about: "Message::Applied through cursor 303, confirming one frame".into(),
            kind: Kind::Frame(Message::Applied {
                cursor: 303,
                frames: 1,
            }),
        },
        Vector {
            name: "rejected-clock-ahead",
            about: "Message::Rejected: seq 9 stamped ahead of the relay's clock, retry in 1500 ms"
                .into(),
            kind: Kind::Frame(Message::Rejected {
                seq: 9,
                code: ErrorCode::ClockAhead,
                retry_after_ms: 1500,
                message: "clock ahead".into(),
            }),
        },
        Vector {
            name: "rejected-read-only",
            about: "Message::Rejected: seq 10 pushed by a read-only session".into(),
            kind: Kind::Frame(Message::Rejected {
                seq: 10,
                code: ErrorCode::ReadOnly,
                retry_after_ms: 0,
                message: "read only".into(),
            }),
        },
        Vector {
            name: "rejected-unknown-code",
            about: "Message::Rejected with error code 300 (two-byte varint), unknown to this build"
                .into(),
            kind: Kind::Frame(Message::Rejected {
                seq: 9,
                code: ErrorCode::Unknown(300),
                retry_after_ms: 2000,
                message: "later".into(),
            }),
        },
        Vector {
            name: "ping",
            about: "Message::Ping with nonce 0x0102030405060708".into(),
            kind: Kind::Frame(Message::Ping {
                nonce: 0x0102_0304_0506_0708,
            }),
        },
        Vector {
            name: "pong",
            about: "Message::Pong answering that ping".into(),
            kind: Kind::Frame(Message::Pong {
                nonce: 0x0102_0304_0506_0708,
            }),
        },
        Vector {
            name: "error",
            about: "Message::Error: Unauthorized, followed by close 4002".into(),
            kind: Kind::Frame(Message::Error {
                code: ErrorCode::Unauthorized,
                message: "token expired".into(),
            }),
        },
        Vector {
            name: "error-unknown-code",
            about: "Message::Error with error code 200, unknown to this build".into(),
            kind: Kind::Frame(Message::Error {
                code: ErrorCode::Unknown(200),
                message: "from a newer relay".into(),
            }),
        },
        Vector {
            name: "v3-push-batch",
            about: "push-batch.hex's Message::Push in protocol version 3".into(),
            kind: Kind::FrameV3(Message::Push {
                ops: vec![
                    op(ALICE, 5, hlc(T + 3, 0), Change::CreateCollection { collection: "a".into() }),
                    op(
                        ALICE,
                        6,
                        hlc(T + 3, 1),
                        Change::Put {
                            collection: "a".into(),
                            id: "1".into(),
                            fields: vec![("n".into(), Some(Value::Int(300)))],
                        },
                    ),
                    op(
                        ALICE,
                        7,
                        hlc(T + 3, 2),
                        Change::Delete { collection: "a".into(), id: "1".into() },
                    ),
                ],
            }),
        },
        Vector {
            name: "v3-deliver",
            about: "Message::Deliver in protocol version 3: two runs, shared name prefixes, \
                    implicit and explicit stamps and names"
                .into(),
            kind: Kind::FrameV3(Message::Deliver {
                from: 300,
                cursor: 306,
                ops: vec![
                    op(
                        ALICE,
                        5,
                        hlc(T, 0),
                        Change::Put {
                            collection: "todos".into(),
                            id: "item-1".into(),
                            fields: vec![
                                ("title".into(), Some(Value::String("milk".into()))),
                                ("done".into(), Some(Value::Bool(false))),
                            ],
                        },
                    ),
                    op(
                        ALICE,
                        6,
                        hlc(T, 1),
                        Change::Put {
                            collection: "todos".into(),
                            id: "item-2".into(),
                            fields: vec![("done".into(), Some(Value::Bool(true)))],
                        },
                    ),
                    op(
                        ALICE,
                        7,
                        hlc(T + 2, 0),
                        Change::Put {
                            collection: "todos".into(),
                            id: "item-1".into(),
                            fields: vec![("title".into(), None)],
                        },
                    ),
                    op(
                        BOB,
                        1,
                        hlc(T, 5),
                        Change::Delete { collection: "todos".into(), id: "item-2".into() },
                    ),
                    op(BOB, 2, hlc(T, 6), Change::CreateCollection { collection: "notes".into() }),
                ],
            }),
        },
        Vector {
            name: "v3-deliver-empty",
            about: "deliver-empty.hex in protocol version 3".into(),
            kind: Kind::FrameV3(Message::Deliver { from: 303, cursor: 305, ops: vec![] }),
        },
        Vector {
            name: "v3-ack",
            about: "ack.hex in protocol version 3: only the version byte differs".into(),
            kind: Kind::FrameV3(Message::Ack { through_seq: 7, refused: vec![(6, ErrorCode::Stale)] }),
        },
        Vector {
            name: "refusal-v1",
            about: "Error { UnsupportedVersion } refusing a version-1 Hello, as a version-1 frame"
                .into(),
            kind: Kind::VersionRefusal(1, "protocol version 2 only"),
        },
        Vector {
            name: "snapshot",
            about: "a snapshot blob (header + CRC-32 + postcard body), as SnapshotChunk carries it"
                .into(),
            kind: Kind::Snapshot(snapshot),
        },
        Vector {
            name: "snapshot-timeline",
            about: "snapshot.hex's content in snapshot format 5 (columns with a timeline, \
                    not deflated), as Replica::encode_snapshot writes it"
                .into(),
            kind: Kind::Snapshot(sample_snapshot_timeline()),
        },
    ];
    v.sort_by_key(|v| v.name);
    v
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Parses a `.hex` file: `#` lines are comments, whitespace is ignored.
fn parse_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.bytes().filter(|b| !b.is_ascii_whitespace()))
        .collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(s, 16).expect("hex digit")
        })
        .collect()
}

fn format_hex(about: &str, bytes: &[u8]) -> String {
    let mut out = format!("# {about}\n# {} bytes\n", bytes.len());
    for line in bytes.chunks(32) {
        for b in line {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

fn encode(kind: &Kind) -> Vec<u8> {
    match kind {
        Kind::Frame(message) => protocol::encode(message),
        Kind::FrameV3(message) => protocol::encode_in(protocol::COMPACT_VERSION, message),
        Kind::VersionRefusal(version, message) => {
            protocol::encode_version_refusal(*version, message)
        }
        Kind::Snapshot(bytes) => bytes.clone(),
    }
}

#[test]
fn golden_vectors() {
    let update = std::env::var_os("UPDATE_VECTORS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for vector in vectors() {
        let path = dir().join(format!("{}.hex", vector.name));
        let ours = encode(&vector.kind);
        if update {
            std::fs::write(&path, format_hex(&vector.about, &ours)).expect("write vector");
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (generate with UPDATE_VECTORS=1)", path.display()));
        let golden = parse_hex(&text);
        if ours != golden {
            failures.push(format!(
                "{}: encoding changed\n  file:    {}\n  encoded: {}",
                vector.name,
                hex(&golden),
                hex(&ours)
            ));
            continue;
        }
        match &vector.kind {
            Kind::Frame(message) | Kind::FrameV3(message) => {
                let decoded = protocol::decode(&golden, protocol::DEFAULT_MAX_FRAME_BYTES)
                    .unwrap_or_else(|e| panic!("{}: {e}", vector.name));
                assert_eq!(
                    &decoded, message,
                    "{}: decodes to another message",
                    vector.name
                );
            }
            Kind::VersionRefusal(version, message) => {
                assert_eq!(
                    protocol::decode_any_error(&golden),
                    Some((
                        *version,
                        ErrorCode::UnsupportedVersion,
                        (*message).to_owned()
                    )),
                    "{}",
                    vector.name
                );
            }
            Kind::Snapshot(_) => {
                let snapshot =
                    Snapshot::decode(&golden).unwrap_or_else(|e| panic!("{}: {e}", vector.name));
                let mut again = Snapshot::encode(
                    &snapshot.state,
                    &snapshot.version,
                    snapshot.max_hlc,
                    snapshot.tombstone_horizon,
                );
                if golden[4] != again[4] {
                    again = Snapshot::transcode(&again, golden[4]).expect("transcodes");
                }
                assert_eq!(
                    again, golden,
                    "{}: decode + encode changes bytes",
                    vector.name
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Snapshot blobs that are only decoded, never compared with our encoding:
/// an older format readers must still accept, and a compressed one (another
/// deflate encoder may choose other bytes for the same body). They are
/// frozen: `UPDATE_VECTORS` writes the compressed one only when it is missing.
const FROZEN_SNAPSHOTS: &[&str] = &[
    "snapshot-v1.hex",
    "snapshot-compressed.hex",
    "snapshot-columnar.hex",
    "hello-v1.hex",
];

/// `hello-v1.hex` is a `Hello` of protocol version 1 (no negotiation),
/// frozen: this build refuses it for its version byte alone, and answers
/// with `refusal-v1.hex`, which a version-1 client reads.
#[test]
fn version_1_hello_is_refused_by_its_version_byte() {
    let hello = parse_hex(&std::fs::read_to_string(dir().join("hello-v1.hex")).expect("file"));
    assert_eq!(hello[0], 1);
    assert_eq!(
        protocol::decode(&hello, protocol::DEFAULT_MAX_FRAME_BYTES),
        Err(protocol::FrameError::UnsupportedVersion { found: 1 })
    );
    let refusal = parse_hex(&std::fs::read_to_string(dir().join("refusal-v1.hex")).expect("file"));
    // A version-1 reader: version byte 1, then the `Error` message.
    assert_eq!(&refusal[..3], &[1, 10, 1]);
    assert_eq!(ErrorCode::UnsupportedVersion.close_code().as_u16(), 4001);
}

/// A relay re-encodes its snapshot in format 1 for a client that reads
/// nothing newer: the bytes are exactly the frozen `snapshot-v1.hex`.
#[test]
fn format_1_encoding_matches_the_frozen_vector() {
    let legacy = parse_hex(&std::fs::read_to_string(dir().join("snapshot-v1.hex")).expect("file"));
    assert_eq!(
        Snapshot::transcode(&sample_snapshot(), 1).expect("transcodes"),
        legacy
    );
    let compressed =
        parse_hex(&std::fs::read_to_string(dir().join("snapshot-compressed.hex")).expect("file"));
    assert_eq!(
        Snapshot::transcode(&compressed, 1).expect("transcodes"),
        legacy
    );
    assert_eq!(
        Snapshot::transcode(&compressed, 2).expect("transcodes"),
        sample_snapshot()
    );
    assert_eq!(
        Snapshot::transcode(&compressed, 3).expect("as is"),
        compressed
    );
    for format in [4, 5] {
        let columnar = Snapshot::transcode(&compressed, format).expect("transcodes");
        assert_eq!(columnar[4], format);
        assert_eq!(
            Snapshot::decode(&columnar).expect("decodes"),
            Snapshot::decode(&compressed).expect("decodes")
        );
    }
    assert!(Snapshot::transcode(&compressed, 6).is_err());
}

/// `snapshot-columnar.hex` is `snapshot.hex`'s content in format 4 with
/// plain columns, frozen: it decodes to the same snapshot, and the format-4
/// columns a relay writes for a client that reads nothing newer (deflated)
/// inflate to exactly its body.
#[test]
fn format_4_encoding_matches_the_frozen_vector() {
    let golden =
        parse_hex(&std::fs::read_to_string(dir().join("snapshot-columnar.hex")).expect("file"));
    assert_eq!(golden[4], 4, "the vector is in format 4");
    assert_eq!(golden[13], 0, "with plain columns");
    assert_eq!(
        Snapshot::decode(&golden).expect("decodes"),
        Snapshot::decode(&sample_snapshot()).expect("decodes")
    );
    let relayed = Snapshot::transcode(&sample_snapshot(), 4).expect("transcodes");
    // Payload: mode 1, the field count (one byte here), the body's length
    // (u32), then the body deflated.
    assert_eq!((relayed[13], relayed[14]), (1, golden[14]));
    let body = miniz_oxide::inflate::decompress_to_vec(&relayed[19..]).expect("inflates");
    assert_eq!(body, golden[15..], "format 4 columns changed");
}

/// `snapshot-compressed.hex` is `snapshot.hex`'s body deflated (format 3):
/// it decodes to the same snapshot.
#[test]
fn compressed_snapshot_vector_decodes() {
    let path = dir().join("snapshot-compressed.hex");
    let update = std::env::var_os("UPDATE_VECTORS").is_some_and(|v| v == "1");
    if update && !path.exists() {
        let current = Snapshot::decode(&sample_snapshot()).expect("current format decodes");
        let bytes = Snapshot::encode_compressed(
            &current.state,
            &current.version,
            current.max_hlc,
            current.tombstone_horizon,
        );
        let about = "snapshot.hex's body deflated (format 3); frozen: decoded, never re-encoded";
        std::fs::write(&path, format_hex(about, &bytes)).expect("write vector");
    }
    let golden = parse_hex(&std::fs::read_to_string(&path).expect("vector file"));
    assert_eq!(golden[4], 3, "the vector is in format 3");
    assert_eq!(
        Snapshot::decode(&golden).expect("compressed vector decodes"),
        Snapshot::decode(&sample_snapshot()).expect("current format decodes")
    );
}

/// `snapshot-v1.hex` is `snapshot.hex`'s content in format 1 (field stamps
/// stored in full): it decodes to the same snapshot, and encodes to today's
/// format.
#[test]
fn legacy_snapshot_v1_still_decodes() {
    let read = |name: &str| {
        let path = dir().join(name);
        parse_hex(&std::fs::read_to_string(&path).expect("vector file"))
    };
    let legacy = read("snapshot-v1.hex");
    assert_eq!(legacy[4], 1, "the legacy vector is in format 1");
    let old = Snapshot::decode(&legacy).expect("format 1 still decodes");
    let current = Snapshot::decode(&sample_snapshot()).expect("current format decodes");
    assert_eq!(old, current);
    let reencoded = Snapshot::encode(&old.state, &old.version, old.max_hlc, old.tombstone_horizon);
    assert_eq!(reencoded, sample_snapshot_timeline());
}

/// Every `.hex` file in the folder is one this test knows: none is stale.
#[test]
fn no_stray_vector_files() {
    let known: Vec<String> = vectors()
        .iter()
        .map(|v| format!("{}.hex", v.name))
        .chain(FROZEN_SNAPSHOTS.iter().map(|name| (*name).to_owned()))
        .collect();
    for entry in std::fs::read_dir(dir()).expect("vectors folder") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".hex") {
            assert!(known.contains(&name), "{name} has no builder in vectors.rs");
        }
    }
}

#[test]
fn every_message_change_and_value_variant_is_covered() {
    let mut messages = [false; 11];
    let mut changes = [false; 4];
    let mut values = [false; 8];
    fn mark_value(value: &Value, seen: &mut [bool; 8]) {
        let index = match value {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::String(_) => 4,
            Value::Bytes(_) => 5,
            Value::List(items) => {
                items.iter().for_each(|v| mark_value(v, seen));
                6
            }
            Value::Map(entries) => {
                entries.values().for_each(|v| mark_value(v, seen));
                7
            }
        };
        seen[index] = true;
    }
    for vector in vectors() {
        let Kind::Frame(message) = &vector.kind else {
            continue;
        };
        // The message's variant index is the byte after the version byte.
        let frame = protocol::encode(message);
        messages[usize::from(frame[1])] = true;
        let ops = match message {
            Message::Push { ops } | Message::Deliver { ops, .. } => ops.as_slice(),
            _ => &[],
        };
        for op in ops {
            match &op.change {
                Change::Put { fields, .. } => {
                    changes[0] = true;
                    for value in fields.iter().filter_map(|(_, v)| v.as_ref()) {
                        mark_value(value, &mut values);
                    }
                }
                Change::Delete { .. } => changes[1] = true,
                Change::CreateCollection { .. } => changes[2] = true,
                Change::DropCollection { .. } => changes[3] = true,
            }
        }
    }
    assert_eq!(messages, [true; 11], "a Message variant has no vector");
    assert_eq!(changes, [true; 4], "a Change variant has no vector");
    assert_eq!(values, [true; 8], "a Value variant has no vector");
}

/// `encode_deliver`, which splices pre-encoded operations, gives the same
/// bytes as the golden `Deliver` vectors.
#[test]
fn spliced_deliver_matches_the_vectors() {
    for vector in vectors() {
        if let Kind::Frame(Message::Deliver { from, cursor, ops }) = &vector.kind {
            let encoded: Vec<Vec<u8>> = ops.iter().map(protocol::encode_op).collect();
            let spliced =
                protocol::encode_deliver(*from, *cursor, encoded.iter().map(Vec::as_slice));
            assert_eq!(
                spliced,
                protocol::encode(&Message::Deliver {
                    from: *from,
                    cursor: *cursor,
                    ops: ops.clone(),
                })
            );
        }
    }
}

/// The variant indices and close code numbers `docs/PROTOCOL.md` tabulates.
#[test]
fn error_codes_and_close_codes_match_the_spec() {
    let codes = [
        (ErrorCode::Malformed, 0, 4000),
        (ErrorCode::UnsupportedVersion, 1, 4001),
        (ErrorCode::Unauthorized, 2, 4002),
        (ErrorCode::Forbidden, 3, 4003),
        (ErrorCode::ReadOnly, 4, 4003),
        (ErrorCode::ClockAhead, 5, 4000),
        (ErrorCode::Stale, 6, 4000),
        (ErrorCode::InvalidOp, 7, 4000),
        (ErrorCode::BatchTooLarge, 8, 4000),
        (ErrorCode::FrameTooLarge, 9, 4007),
        (ErrorCode::RateLimited, 10, 4008),
        (ErrorCode::TooManyConnections, 11, 4009),
        (ErrorCode::SlowConsumer, 12, 4005),
        (ErrorCode::IdleTimeout, 13, 4006),
        (ErrorCode::Superseded, 14, 4010),
        (ErrorCode::GoingAway, 15, 1001),
        (ErrorCode::Internal, 16, 4011),
        (ErrorCode::InvalidRoom, 17, 4012),
    ];
    for (code, index, close) in codes {
        assert_eq!(ErrorCode::from_index(u32::from(index)), code);
        assert_eq!(code.index(), u32::from(index));
        let frame = protocol::encode(&Message::Error {
            code,
            message: String::new(),
        });
        assert_eq!(
            frame,
            vec![protocol::PROTOCOL_VERSION, 10, index, 0],
            "{code:?}"
        );
        assert_eq!(code.close_code().as_u16(), close, "{code:?}");
    }
    let closes = [
        (1000, true),
        (1001, true),
        (4000, true),
        (4001, false),
        (4002, false),
        (4003, false),
        (4004, true),
        (4005, true),
        (4006, true),
        (4007, true),
        (4008, true),
        (4009, true),
        (4010, true),
        (4011, true),
        (4012, false),
    ];
    for (number, reconnect) in closes {
        let code = CloseCode::from_u16(number);
        assert!(code.is_known(), "{number}");
        assert_eq!(code.as_u16(), number);
        assert_eq!(code.should_reconnect(), reconnect, "{number}");
    }
    // Numbers of no known code: kept, and the client reconnects.
    for number in [1006, 4099, 4999] {
        let code = CloseCode::from_u16(number);
        assert_eq!(code, CloseCode::Other(number));
        assert!(!code.is_known());
        assert_eq!(code.as_u16(), number);
        assert!(code.should_reconnect(), "{number}");
    }
}

/// The small snapshot decodes to what was encoded.
#[test]
fn snapshot_vector_content() {
    let bytes = sample_snapshot();
    let snapshot = Snapshot::decode(&bytes).expect("decodes");
    let mut expected_version = VersionVector::new();
    for seq in 1..=5 {
        expected_version.insert(OpId {
            replica: ALICE,
            seq,
        });
    }
    expected_version.insert(OpId {
        replica: BOB,
        seq: 1,
    });
    assert_eq!(snapshot.version, expected_version);
    assert_eq!(snapshot.max_hlc, hlc(T + 5, 0));
    assert_eq!(&bytes[..4], b"CNSN");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
