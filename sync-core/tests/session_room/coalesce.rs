//! Coalescing: operations appended by inputs the host feeds back to back
//! (before it polls) reach each session as one `Deliver`, within the
//! session's send window and the batch limits, and never ahead of the
//! `Persist` that stores them.
//!
//! These tests drive a bare [`Room`] the way the relay does: several inputs,
//! then one poll loop.

use sync_core::Timestamp;
use sync_core::protocol::{self, Hello, Message};
use sync_core::room::{ConnectionId, Room, RoomConfig, RoomInput, RoomOutput};
use sync_core::{Change, Hlc, Op, OpId, ReplicaId, Value};

const NOW: u64 = 1_700_000_000_000;

fn hello(replica: u64) -> Hello {
    Hello {
        replica: ReplicaId(replica),
        room: "r".into(),
        token: Vec::new(),
        cursor: 0,
        own_seq: 0,
        settled_seq: 0,
        agent: "test".into(),
        versions: vec![sync_core::protocol::PROTOCOL_VERSION],
        snapshot_formats: vec![1, 2, 3],
    }
}

/// A push of one put by `replica`, sequence number `seq`.
fn push(replica: u64, seq: u64) -> Vec<u8> {
    let op = Op {
        id: OpId {
            replica: ReplicaId(replica),
            seq,
        },
        hlc: Hlc::new(NOW, u16::try_from(seq).expect("small")).expect("in range"),
        change: Change::Put {
            collection: "c".into(),
            id: format!("d{replica}-{seq}"),
            fields: vec![("n".into(), Some(Value::Int(seq as i64)))],
        },
    };
    protocol::encode(&Message::Push { ops: vec![op] })
}

/// Joins sessions 1..=n (replicas 1..=n) and takes the welcomes.
fn room_with(config: RoomConfig, n: u64) -> Room {
    let mut room = Room::new(config);
    for s in 1..=n {
        room.handle(
            Timestamp::from_unix_ms(NOW),
            RoomInput::Join {
                connection: s,
                hello: hello(s),
                read_only: false,
            },
        );
    }
    outputs(&mut room);
    room
}

/// Everything the room wants done, in order, its persists reported
/// durable as soon as they are handed out.
fn outputs(room: &mut Room) -> Vec<RoomOutput> {
    std::iter::from_fn(|| {
        let out = room.poll()?;
        if let RoomOutput::Persist { id, .. } = &out {
            room.handle(Timestamp::from_unix_ms(NOW), RoomInput::Persisted(*id));
        }
        Some(out)
    })
    .collect()
}

/// `(from, cursor, op count)` of each `Deliver` to `session`, in order.
fn delivers_to(outs: &[RoomOutput], session: ConnectionId) -> Vec<(u64, u64, usize)> {
    outs.iter()
        .filter_map(|out| match out {
            RoomOutput::Transmit {
                connection: s,
                frame,
            } if *s == session => match protocol::decode(frame, usize::MAX).ok()? {
                Message::Deliver { from, cursor, ops } => Some((from, cursor, ops.len())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn applied(room: &mut Room, session: ConnectionId, cursor: u64, frames: u32) {
    let frame = protocol::encode(&Message::Applied { cursor, frames });
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Frame {
            connection: session,
            frame: &frame,
        },
    );
}

#[test]
fn pushes_handled_back_to_back_reach_each_session_as_one_deliver() {
    let mut room = room_with(RoomConfig::default(), 4);
    // Sessions 1..=3 each push twice; session 4 only reads.
    for seq in 1..=2 {
        for writer in 1..=3 {
            let frame = push(writer, seq);
            room.handle(
                Timestamp::from_unix_ms(NOW),
                RoomInput::Frame {
                    connection: writer,
                    frame: &frame,
                },
            );
        }
    }
    let outs = outputs(&mut room);
    assert_eq!(
        delivers_to(&outs, 4),
        vec![(0, 6, 6)],
        "one frame, every op"
    );
    for writer in 1..=3 {
        assert_eq!(
            delivers_to(&outs, writer),
            vec![(0, 6, 4)],
            "one frame without the writer's own two ops"
        );
    }
    // Every delivery comes after the last persist: it only names stored ops.
    let last_persist = outs
        .iter()
        .rposition(|o| matches!(o, RoomOutput::Persist { .. }))
        .expect("persists");
    let first_deliver = outs
        .iter()
        .position(|o| {
            matches!(o, RoomOutput::Transmit { frame, .. }
                if protocol::peek_kind(frame) == Some(protocol::MessageKind::Deliver))
        })
        .expect("deliveries");
    assert!(last_persist < first_deliver);
}

#[test]
fn coalescing_respects_the_send_window_and_the_batch_limit() {
    let config = RoomConfig::default()
        .with_send_window(2)
        .with_max_batch_ops(3);
    let mut room = room_with(config, 2);
    // The reader (session 2) has a full window after two rounds.
    for seq in 1..=2 {
        let frame = push(1, seq);
        room.handle(
            Timestamp::from_unix_ms(NOW),
            RoomInput::Frame {
                connection: 1,
                frame: &frame,
            },
        );
        let outs = outputs(&mut room);
        assert_eq!(delivers_to(&outs, 2), vec![(seq - 1, seq, 1)]);
    }
    // Seven more pushes back to back: nothing goes out while the window is full.
    for seq in 3..=9 {
        let frame = push(1, seq);
        room.handle(
            Timestamp::from_unix_ms(NOW),
            RoomInput::Frame {
                connection: 1,
                frame: &frame,
            },
        );
    }
    assert!(delivers_to(&outputs(&mut room), 2).is_empty());
    // Confirming both frames reopens the window: two frames, each at most
    // three offsets, carry the backlog.
    applied(&mut room, 2, 2, 2);
    assert_eq!(
        delivers_to(&outputs(&mut room), 2),
        vec![(2, 5, 3), (5, 8, 3)]
    );
    applied(&mut room, 2, 8, 2);
    assert_eq!(delivers_to(&outputs(&mut room), 2), vec![(8, 9, 1)]);
}
