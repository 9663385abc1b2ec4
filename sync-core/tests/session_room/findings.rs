//! Rules a client written from `docs/PROTOCOL.md` alone tripped over: room
//! names, operations stamped 0, over-confirming `Applied`, and values the
//! decoder refuses (which fail the whole frame, so clients must never
//! create them).

use sync_core::Timestamp;
use sync_core::protocol::{self, CloseCode, ErrorCode, Hello, Message};
use sync_core::room::{RoomConfig, RoomInput};
use sync_core::session::LinkState;
use sync_core::{Change, Hlc, Op, OpId, ReplicaId, Value, WriteError};

use crate::harness::{World, session_config};

fn join(w: &mut World, session: u64, replica: u64, room: &str) {
    w.room.handle(
        Timestamp::from_unix_ms(w.now),
        RoomInput::Join {
            connection: session,
            hello: Hello {
                replica: ReplicaId(replica),
                room: room.into(),
                token: Vec::new(),
                cursor: 0,
                own_seq: 0,
                settled_seq: 0,
                agent: "third-party".into(),
                versions: vec![protocol::PROTOCOL_VERSION],
                snapshot_formats: vec![2],
            },
            read_only: false,
        },
    );
    w.settle();
}

fn push(w: &mut World, session: u64, ops: Vec<Op>) {
    let frame = protocol::encode(&Message::Push { ops });
    w.room.handle(
        Timestamp::from_unix_ms(w.now),
        RoomInput::Frame {
            connection: session,
            frame: &frame,
        },
    );
    w.settle();
}

fn put(replica: u64, seq: u64, hlc: Hlc, value: Value) -> Op {
    Op {
        id: OpId {
            replica: ReplicaId(replica),
            seq,
        },
        hlc,
        change: Change::Put {
            collection: "todos".into(),
            id: "x".into(),
            fields: vec![("v".into(), Some(value))],
        },
    }
}

#[test]
fn an_invalid_room_name_is_refused_for_good_with_its_own_code() {
    let mut w = World::new(RoomConfig::default());
    for (session, room) in [
        (100, String::new()),
        (101, "a\u{7}b".to_owned()),
        (102, "a\u{85}b".to_owned()),
        (103, "r".repeat(257)),
    ] {
        join(&mut w, session, session, &room);
        let sent = w.room_sent_to(session);
        assert!(
            matches!(
                sent.as_slice(),
                [Message::Error {
                    code: ErrorCode::InvalidRoom,
                    ..
                }]
            ),
            "{room:?}: {sent:?}"
        );
        assert_eq!(w.room_closes(session), vec![CloseCode::InvalidRoom]);
    }
    assert_eq!(w.room.member_count(), 0);
    assert_eq!(CloseCode::InvalidRoom.as_u16(), 4012);
    assert!(!CloseCode::InvalidRoom.should_reconnect());
    // 256 bytes of any non-control characters are fine.
    join(&mut w, 104, 104, &"é".repeat(128));
    assert!(matches!(w.room_sent_to(104)[0], Message::Welcome(_)));
}

#[test]
fn a_session_with_an_invalid_room_name_never_connects() {
    let mut w = World::new(RoomConfig::default());
    let mut config = session_config();
    config.room = "bad\nroom".into();
    let a = w.add_client_with(1, config);
    w.start(a);
    assert_eq!(w.c(a).connects(), 0);
    assert_eq!(w.c(a).link(), LinkState::Offline);
    assert_eq!(w.c(a).disconnects(), vec![(CloseCode::InvalidRoom, None)]);
}

/// Horizon 0 means no horizon (nothing collected): an operation stamped 0
/// is stored, not refused as stale.
#[test]
fn an_operation_stamped_0_is_not_stale_without_a_horizon() {
    let mut w = World::new(RoomConfig::default());
    join(&mut w, 100, 7, "room");
    push(&mut w, 100, vec![put(7, 1, Hlc::ZERO, Value::Int(1))]);
    let acks: Vec<_> = w
        .room_sent_to(100)
        .into_iter()
        .filter(|m| matches!(m, Message::Ack { .. }))
        .collect();
    assert_eq!(
        acks,
        vec![Message::Ack {
            through_seq: 1,
            refused: vec![]
        }]
    );
    assert_eq!(w.room.head(), 1);
}

/// `Applied.frames` above the frames awaiting confirmation confirms them
/// all and no more: the window never opens past `send_window`.
#[test]
fn over_confirming_frames_does_not_widen_the_window() {
    let mut w = World::new(
        RoomConfig::default()
            .with_send_window(2)
            .with_max_batch_ops(1),
    );
    let writer = w.add_client(2);
    w.start(writer);
    join(&mut w, 100, 7, "room");
    w.write_many(writer, "d", 10);
    let frames = |w: &World| {
        w.room_sent_to(100)
            .iter()
            .filter(|m| matches!(m, Message::Deliver { .. }))
            .count()
    };
    assert_eq!(frames(&w), 2, "the window is full");
    let applied = protocol::encode(&Message::Applied {
        cursor: 0,
        frames: 1_000,
    });
    w.room.handle(
        Timestamp::from_unix_ms(w.now),
        RoomInput::Frame {
            connection: 100,
            frame: &applied,
        },
    );
    w.settle();
    assert_eq!(frames(&w), 4, "two confirmed, two more sent, not 1000");
    assert!(w.room_closes(100).is_empty(), "not an error");
}

/// A value nested deeper than 64 levels cannot be written locally, so a
/// client never queues an operation the relay's decoder refuses (which
/// would fail the whole push frame, not just the operation).
#[test]
fn values_the_decoder_refuses_cannot_be_written_and_fail_the_frame() {
    let mut deep = Value::Null;
    for _ in 0..65 {
        deep = Value::List(vec![deep]);
    }
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let now = w.now;
    let result = w.cm(a).session.put(
        Timestamp::from_unix_ms(now),
        "todos",
        "x",
        [("v", deep.clone())],
    );
    assert!(matches!(result, Err(WriteError::Invalid(_))), "{result:?}");
    assert_eq!(w.c(a).pending(), 0, "nothing queued");

    // Such an operation on the wire makes the whole push frame malformed.
    join(&mut w, 100, 7, "room");
    push(&mut w, 100, vec![put(7, 1, Hlc::from_u64(1 << 16), deep)]);
    assert!(matches!(
        w.room_sent_to(100).last(),
        Some(Message::Error {
            code: ErrorCode::Malformed,
            ..
        })
    ));
    assert_eq!(w.room_closes(100), vec![CloseCode::ProtocolError]);
}

/// A client never has more than `MAX_PUSH_WINDOW` pushes awaiting their
/// answer, whatever its configuration: a relay cuts off one that has.
#[test]
fn the_push_window_is_clamped_to_the_protocol_maximum() {
    let mut w = World::new(RoomConfig::default());
    let mut config = session_config();
    config.push_window = 100;
    config.max_batch_ops = 1;
    let a = w.add_client_with(1, config);
    w.start(a);
    // The relay's answers do not reach the client.
    w.cm(a).hold_inbound = true;
    w.write_many(a, "d", 30);
    assert_eq!(w.c(a).pushes().len(), protocol::MAX_PUSH_WINDOW);
    w.cm(a).hold_inbound = false;
    w.settle();
    assert_eq!(w.c(a).pending(), 0);
}
