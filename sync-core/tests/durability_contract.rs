//! The ordering contract both state machines enforce for their hosts: a
//! `Persist` is handed out at once, and nothing queued after it leaves
//! before the host reports it durable; a failed persist stops the machine.
//!
//! The hosts here complete writes only when a test says so, the way
//! IndexedDB or a SQLite writer thread completes them later.

use sync_core::Timestamp;
use sync_core::protocol::{self, CloseCode, ErrorCode, Hello, Message};
use sync_core::room::{ConnectionId, Room, RoomConfig, RoomInput, RoomOutput};
use sync_core::session::{Input, LinkState, Output, Session, SessionConfig, SyncState};
use sync_core::{
    Change, Event, Hlc, Op, OpId, PersistId, Replica, ReplicaConfig, ReplicaId, StoreKey, Value,
    Write, WriteError,
};

const NOW: u64 = 1_700_000_000_000;

fn session(id: u64) -> Session {
    let replica = Replica::new(ReplicaId(id), ReplicaConfig::default());
    Session::new(replica, SessionConfig::new("room", Vec::new()), id)
}

fn drain_session(s: &mut Session) -> Vec<Output> {
    std::iter::from_fn(|| s.poll())
        .filter(|o| !matches!(o, Output::Timeout(_)))
        .collect()
}

fn drain_room(r: &mut Room) -> Vec<RoomOutput> {
    std::iter::from_fn(|| r.poll())
        .filter(|o| !matches!(o, RoomOutput::Timeout(_)))
        .collect()
}

fn persist_ids(outs: &[Output]) -> Vec<PersistId> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Persist { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

fn frames(outs: &[Output]) -> Vec<Message> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Transmit(f) => Some(protocol::decode(f, usize::MAX).expect("decodes")),
            _ => None,
        })
        .collect()
}

fn room_frames(outs: &[RoomOutput], to: ConnectionId) -> Vec<Message> {
    outs.iter()
        .filter_map(|o| match o {
            RoomOutput::Transmit {
                connection: session,
                frame,
            } if *session == to => Some(protocol::decode(frame, usize::MAX).expect("decodes")),
            _ => None,
        })
        .collect()
}

fn room_persists(outs: &[RoomOutput]) -> Vec<PersistId> {
    outs.iter()
        .filter_map(|o| match o {
            RoomOutput::Persist { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

/// Everything the session wants done, its persists reported durable at once.
fn settle_session(s: &mut Session) -> Vec<Output> {
    let mut all = Vec::new();
    loop {
        let outs = drain_session(s);
        if outs.is_empty() {
            return all;
        }
        for pid in persist_ids(&outs) {
            s.handle(at(NOW), Input::Persisted(pid));
        }
        all.extend(outs);
    }
}

/// A session joined to `room` as session `sid`, every write so far durable.
fn joined(room: &mut Room, id: u64, sid: ConnectionId) -> Session {
    let mut s = session(id);
    s.start(at(NOW));
    settle_session(&mut s);
    s.handle(at(NOW), Input::Connected);
    let hello = settle_session(&mut s)
        .into_iter()
        .find_map(|o| match o {
            Output::Transmit(f) => match protocol::decode(&f, usize::MAX).expect("hello") {
                Message::Hello(h) => Some(h),
                _ => None,
            },
            _ => None,
        })
        .expect("a hello");
    room.handle(
        at(NOW),
        RoomInput::Join {
            connection: sid,
            hello,
            read_only: false,
        },
    );
    for out in drain_room(room) {
        if let RoomOutput::Transmit {
            connection: session,
            frame,
        } = out
        {
            if session == sid {
                s.handle(at(NOW), Input::Received(&frame));
            }
        }
    }
    assert_eq!(s.status().link, LinkState::Live);
    settle_session(&mut s);
    s
}

#[test]
fn a_push_waits_until_its_write_is_durable() {
    let mut room = Room::new(RoomConfig::default());
    let mut s = joined(&mut room, 1, 1);
    s.put(at(NOW), "todos", "a", [("title", "milk")])
        .expect("put");
    let ticket = s.latest_persist().expect("a persist was queued");
    assert!(!s.is_durable(ticket));

    let outs = drain_session(&mut s);
    assert_eq!(persist_ids(&outs), vec![ticket]);
    assert!(
        frames(&outs).is_empty(),
        "nothing leaves before the write is durable"
    );
    // A second write meanwhile: its persist is handed out at once (the store
    // applies batches in order), its push waits too.
    s.put(at(NOW), "todos", "b", [("title", "eggs")])
        .expect("put");
    let second = drain_session(&mut s);
    assert_eq!(persist_ids(&second).len(), 1);
    assert!(frames(&second).is_empty());

    s.handle(at(NOW), Input::Persisted(ticket));
    assert!(s.is_durable(ticket));
    let released = frames(&drain_session(&mut s));
    assert!(
        matches!(&released[..], [Message::Push { ops }] if ops.len() == 1),
        "only the first write's push is released: {released:?}"
    );
    s.handle(at(NOW), Input::Persisted(persist_ids(&second)[0]));
    let released = frames(&drain_session(&mut s));
    assert!(
        matches!(&released[..], [Message::Push { .. }]),
        "{released:?}"
    );
}

#[test]
fn a_report_for_a_batch_not_handed_out_is_ignored() {
    let mut s = session(1);
    s.put(at(NOW), "todos", "a", [("n", 1)]).expect("put");
    let ticket = s.latest_persist().expect("queued");
    // Reported before the host polled it: the host cannot have written it.
    s.handle(at(NOW), Input::Persisted(ticket));
    assert!(!s.is_durable(ticket));
    let outs = drain_session(&mut s);
    assert_eq!(persist_ids(&outs), vec![ticket]);
    s.handle(at(NOW), Input::Persisted(ticket));
    assert!(s.is_durable(ticket));
}

#[test]
fn a_failed_write_stops_the_session_and_refuses_writes() {
    let mut room = Room::new(RoomConfig::default());
    let mut s = joined(&mut room, 1, 1);
    s.put(at(NOW), "todos", "a", [("n", 1)]).expect("put");
    let ticket = s.latest_persist().expect("queued");
    drain_session(&mut s);
    s.handle(
        at(NOW),
        Input::PersistFailed {
            id: ticket,
            error: "disk full",
        },
    );
    let outs = drain_session(&mut s);
    assert!(
        frames(&outs).is_empty(),
        "the held push is never sent: {outs:?}"
    );
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Event(Event::StoreFailed { message }) if message == "disk full"
    )));
    assert!(outs.iter().any(|o| matches!(o, Output::Close { .. })));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Event(Event::Disconnected { retry_at: None, .. })))
    );
    assert_eq!(s.status().link, LinkState::Offline);
    assert_eq!(s.store_failed(), Some("disk full"));
    assert!(!s.is_durable(ticket));
    // A late success report changes nothing; writes stay refused.
    s.handle(at(NOW), Input::Persisted(ticket));
    assert!(!s.is_durable(ticket));
    assert!(matches!(
        s.put(at(NOW), "todos", "b", [("n", 2)]),
        Err(WriteError::StoreFailed { .. })
    ));
    s.start(at(NOW));
    assert!(drain_session(&mut s).is_empty(), "it does not reconnect");
}

#[test]
fn the_room_acknowledges_and_delivers_only_what_is_durable() {
    let mut room = Room::new(RoomConfig::default());
    let mut a = joined(&mut room, 1, 1);
    let _b = joined(&mut room, 2, 2);
    a.put(at(NOW), "todos", "x", [("n", 1)]).expect("put");
    let outs = drain_session(&mut a);
    a.handle(at(NOW), Input::Persisted(persist_ids(&outs)[0]));
    let push = drain_session(&mut a)
        .into_iter()
        .find_map(|o| match o {
            Output::Transmit(f) => Some(f),
            _ => None,
        })
        .expect("push");
    room.handle(
        at(NOW),
        RoomInput::Frame {
            connection: 1,
            frame: &push,
        },
    );
    let outs = drain_room(&mut room);
    let ids = room_persists(&outs);
    assert_eq!(ids.len(), 1);
    assert!(room_frames(&outs, 1).is_empty(), "no ack before durable");
    assert!(
        room_frames(&outs, 2).is_empty(),
        "no delivery before durable"
    );

    room.handle(at(NOW), RoomInput::Persisted(ids[0]));
    let outs = drain_room(&mut room);
    // The writer gets its ack (and a cursor-only delivery without its own op).
    assert!(matches!(
        &room_frames(&outs, 1)[..],
        [Message::Ack { through_seq: 1, .. }, Message::Deliver { ops, .. }] if ops.is_empty()
    ));
    assert!(matches!(
        &room_frames(&outs, 2)[..],
        [Message::Deliver { ops, .. }] if ops.len() == 1
    ));
}

#[test]
fn a_failed_room_write_closes_every_session_and_refuses_joins() {
    let mut room = Room::new(RoomConfig::default());
    let mut a = joined(&mut room, 1, 1);
    let _b = joined(&mut room, 2, 2);
    a.put(at(NOW), "todos", "x", [("n", 1)]).expect("put");
    let outs = drain_session(&mut a);
    a.handle(at(NOW), Input::Persisted(persist_ids(&outs)[0]));
    let push = frames(&drain_session(&mut a));
    let push = protocol::encode_in(protocol::COMPACT_VERSION, &push[0]);
    room.handle(
        at(NOW),
        RoomInput::Frame {
            connection: 1,
            frame: &push,
        },
    );
    let ids = room_persists(&drain_room(&mut room));
    room.handle(at(NOW), RoomInput::PersistFailed(ids[0]));
    assert!(room.has_failed());
    let outs = drain_room(&mut room);
    for sid in [1, 2] {
        assert!(
            !room_frames(&outs, sid)
                .iter()
                .any(|m| matches!(m, Message::Ack { .. } | Message::Deliver { .. })),
            "nothing that depended on the failed write leaves"
        );
        assert!(outs.iter().any(|o| matches!(
            o,
            RoomOutput::Close { connection: session, code: CloseCode::Internal, .. } if *session == sid
        )));
    }
    assert_eq!(room.member_count(), 0);
    let mut c = session(3);
    c.start(at(NOW));
    drain_session(&mut c);
    c.handle(at(NOW), Input::Connected);
    let hello = frames(&drain_session(&mut c))
        .into_iter()
        .find_map(|m| match m {
            Message::Hello(h) => Some(h),
            _ => None,
        })
        .expect("hello");
    room.handle(
        at(NOW),
        RoomInput::Join {
            connection: 3,
            hello,
            read_only: false,
        },
    );
    let outs = drain_room(&mut room);
    assert!(matches!(
        &room_frames(&outs, 3)[..],
        [Message::Error {
            code: ErrorCode::Internal,
            ..
        }]
    ));
}

/// An app told "refused for good" must never see the operation come back:
/// `OpsRejected` waits until the outbox without the operation is durable.
/// Released earlier, a crash before that write completed brings the
/// operation back into the outbox; if the room crashed too (forgetting the
/// refusal and the tombstone horizon it had not stored yet) the push is
/// accepted after the app was told it never would be.
#[test]
fn a_refusal_is_reported_only_once_the_dropped_operation_is_durable() {
    let mut room = Room::new(RoomConfig::default());
    let mut s = joined(&mut room, 1, 1);
    s.put(at(NOW), "todos", "a", [("title", "milk")])
        .expect("put");
    let pushed = settle_session(&mut s);
    assert!(
        matches!(&frames(&pushed)[..], [Message::Push { ops }] if ops.len() == 1),
        "{pushed:?}"
    );
    let ack = protocol::encode_in(
        protocol::COMPACT_VERSION,
        &Message::Ack {
            through_seq: 1,
            refused: vec![(1, ErrorCode::Stale)],
        },
    );
    s.handle(at(NOW), Input::Received(&ack));
    let outs = drain_session(&mut s);
    // The outbox without the op (then the resync it starts) is persisted.
    let drop = persist_ids(&outs);
    assert!(!drop.is_empty(), "{outs:?}");
    let rejected = |outs: &[Output]| {
        outs.iter()
            .any(|o| matches!(o, Output::Event(Event::OpsRejected { .. })))
    };
    assert!(
        !rejected(&outs),
        "OpsRejected released before the refusal is durable: {outs:?}"
    );
    s.handle(at(NOW), Input::Persisted(drop[0]));
    let outs = drain_session(&mut s);
    assert!(rejected(&outs), "{outs:?}");
    assert!(drop[1..].iter().all(|&id| !s.is_durable(id)));
}

/// The host clock reading `ms` milliseconds after the epoch.
fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

#[test]
fn writes_made_back_to_back_share_one_persist() {
    let mut room = Room::new(RoomConfig::default());
    let mut s = joined(&mut room, 1, 1);
    s.put(at(NOW), "todos", "a", [("n", 1)]).expect("put");
    let ticket = s.latest_persist().expect("promised");
    s.put(at(NOW), "todos", "a", [("n", 2)]).expect("put");
    s.put(at(NOW), "todos", "b", [("n", 3)]).expect("put");
    assert_eq!(
        s.latest_persist(),
        Some(ticket),
        "one persist holds all three"
    );

    let outs = drain_session(&mut s);
    assert_eq!(persist_ids(&outs), vec![ticket]);
    let keys: Vec<&StoreKey> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Persist { batch, .. } => Some(batch.writes.iter().filter_map(|w| w.key())),
            _ => None,
        })
        .flatten()
        .collect();
    let documents = keys
        .iter()
        .filter(|k| matches!(k, StoreKey::Document { .. }))
        .count();
    let outbox = keys
        .iter()
        .filter(|k| matches!(k, StoreKey::Outbox(_)))
        .count();
    // The document written twice is stored once; each write's operation
    // has its outbox record.
    assert_eq!((documents, outbox), (2, 3), "{keys:?}");
    assert!(
        frames(&outs).is_empty(),
        "nothing leaves before it is stored"
    );

    s.handle(at(NOW), Input::Persisted(ticket));
    let released = frames(&drain_session(&mut s));
    assert!(
        matches!(&released[..], [Message::Push { ops }] if ops.len() == 3),
        "{released:?}"
    );
}

#[test]
fn a_write_not_yet_polled_is_stored_before_an_ack_releases_its_push() {
    let mut room = Room::new(RoomConfig::default());
    let mut s = joined(&mut room, 1, 1);
    s.put(at(NOW), "todos", "a", [("n", 1)]).expect("put");
    let push = settle_session(&mut s)
        .into_iter()
        .find_map(|o| match o {
            Output::Transmit(frame) => Some(frame),
            _ => None,
        })
        .expect("the first write's push");
    room.handle(
        at(NOW),
        RoomInput::Frame {
            connection: 1,
            frame: &push,
        },
    );
    let mut replies = Vec::new();
    loop {
        let outs = drain_room(&mut room);
        if outs.is_empty() {
            break;
        }
        for id in room_persists(&outs) {
            room.handle(at(NOW), RoomInput::Persisted(id));
        }
        replies.extend(outs.into_iter().filter_map(|o| match o {
            RoomOutput::Transmit {
                connection: 1,
                frame,
            } => Some(frame),
            _ => None,
        }));
    }
    assert!(!replies.is_empty(), "the room acknowledges the push");

    // A second write the host has not polled yet, then the ack arrives: the
    // ack frees the push window, but the second push must wait for its write.
    s.put(at(NOW), "todos", "b", [("n", 2)]).expect("put");
    let ticket = s.latest_persist().expect("promised");
    for frame in &replies {
        s.handle(at(NOW), Input::Received(frame));
    }
    let outs = drain_session(&mut s);
    let persists = persist_ids(&outs);
    assert_eq!(persists.first(), Some(&ticket), "the write is stored first");
    assert!(
        !frames(&outs)
            .iter()
            .any(|m| matches!(m, Message::Push { .. })),
        "a push left before its write was stored: {outs:?}"
    );
    for id in persists {
        s.handle(at(NOW), Input::Persisted(id));
    }
    let released = frames(&drain_session(&mut s));
    assert!(
        released.iter().any(|m| matches!(m, Message::Push { .. })),
        "{released:?}"
    );
}

/// What the room hands out, its persists reported durable at once.
fn settle_room(room: &mut Room) -> Vec<RoomOutput> {
    let mut all = Vec::new();
    loop {
        let outs = drain_room(room);
        if outs.is_empty() {
            return all;
        }
        for id in room_persists(&outs) {
            room.handle(at(NOW), RoomInput::Persisted(id));
        }
        all.extend(outs);
    }
}

/// Three frames the relay delivered one by one, fed to the session as
/// having arrived together: what they apply is handed out in one persist,
/// and their one `Applied` leaves only once that persist is durable.
#[test]
fn frames_received_together_are_stored_in_one_persist_then_confirmed_once() {
    let mut room = Room::new(RoomConfig::default());
    let mut s = joined(&mut room, 1, 1);
    // A writer joins raw, as connection 2, and pushes one put at a time.
    room.handle(
        at(NOW),
        RoomInput::Join {
            connection: 2,
            hello: Hello {
                replica: ReplicaId(2),
                room: "room".into(),
                token: Vec::new(),
                cursor: 0,
                own_seq: 0,
                settled_seq: 0,
                agent: "test".into(),
                versions: vec![protocol::PROTOCOL_VERSION],
                snapshot_formats: vec![1],
            },
            read_only: false,
        },
    );
    settle_room(&mut room);
    let mut delivered = Vec::new();
    for seq in 1..=3u64 {
        let op = Op {
            id: OpId {
                replica: ReplicaId(2),
                seq,
            },
            hlc: Hlc::new(NOW, u16::try_from(seq).expect("small")).expect("in range"),
            change: Change::Put {
                collection: "todos".into(),
                id: "a".into(),
                fields: vec![(format!("f{seq}"), Some(Value::Int(seq as i64)))],
            },
        };
        let push = protocol::encode(&Message::Push { ops: vec![op] });
        room.handle(
            at(NOW),
            RoomInput::Frame {
                connection: 2,
                frame: &push,
            },
        );
        for out in settle_room(&mut room) {
            if let RoomOutput::Transmit {
                connection: 1,
                frame,
            } = out
            {
                delivered.push(frame.to_vec());
            }
        }
    }
    assert_eq!(delivered.len(), 3, "one Deliver per push");

    s.handle(at(NOW), Input::ReceivedMany(&delivered));
    let outs = drain_session(&mut s);
    let persists: Vec<&Vec<Write>> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Persist { batch, .. } => Some(&batch.writes),
            _ => None,
        })
        .collect();
    assert_eq!(persists.len(), 1, "one persist for the three frames");
    let documents = persists[0]
        .iter()
        .filter(|w| matches!(w.key(), Some(StoreKey::Document { .. })))
        .count();
    let cursor = persists[0].iter().find_map(|w| match w {
        Write::Put {
            key: StoreKey::Extension(_),
            value,
        } => SyncState::decode(value).ok().map(|state| state.cursor()),
        _ => None,
    });
    assert_eq!((documents, cursor), (1, Some(3)), "{persists:?}");
    assert!(
        frames(&outs).is_empty(),
        "nothing is confirmed before it is stored: {:?}",
        frames(&outs)
    );
    for seq in 1..=3 {
        assert!(s.get_field("todos", "a", &format!("f{seq}")).is_some());
    }

    s.handle(at(NOW), Input::Persisted(persist_ids(&outs)[0]));
    assert_eq!(
        frames(&drain_session(&mut s)),
        vec![Message::Applied {
            cursor: 3,
            frames: 3
        }]
    );
}
