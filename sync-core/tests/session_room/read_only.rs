//! Read-only sessions: they read, they never get to write.

use sync_core::protocol::{ErrorCode, Message};
use sync_core::room::{RoomConfig, RoomOutput};
use sync_core::session::LinkState;
use sync_core::{Event, Op};

use crate::harness::{TODOS, World};

/// A read-only client `r` and a writer `w0`, both live; `r` wrote 3 ops locally.
fn read_only_world() -> (World, usize, usize) {
    let mut w = World::new(RoomConfig::default());
    let r = w.add_client(1);
    let writer = w.add_client(2);
    w.cm(r).read_only_token = true;
    w.start(r);
    w.start(writer);
    w.write_many(r, "mine", 3);
    (w, r, writer)
}

#[test]
fn read_only_session_keeps_its_writes_and_still_receives() {
    let (mut w, r, writer) = read_only_world();
    assert!(w.c(r).welcomes()[0].read_only);
    assert!(
        w.c(r)
            .events()
            .contains(&Event::Connected { read_only: true })
    );
    assert!(w.c(r).session.status().read_only);
    assert!(w.c(r).pushes().is_empty(), "it knows not to push");
    assert_eq!(w.c(r).pending(), 3);

    w.write_many(writer, "theirs", 4);

    assert_eq!(w.c(r).link(), LinkState::Live);
    assert_eq!(w.c(r).cursor(), 4);
    assert!(w.c(r).session.replica().get(TODOS, "theirs3").is_some());
    assert_eq!(w.c(r).pending(), 3, "local ops stay in the outbox");
    assert!(w.c(writer).session.replica().get(TODOS, "mine0").is_none());
}

#[test]
fn room_rejects_a_push_from_a_read_only_session_and_keeps_it_open() {
    let (mut w, r, writer) = read_only_world();
    let ops: Vec<Op> = w.c(r).session.replica().outbox().collect();
    w.room_trace.clear();

    w.inject_to_room(r, &crate::harness::frame(&Message::Push { ops }));

    let session = w.conn(r);
    let sent = w.room_sent_to(session);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(matches!(
        &sent[0],
        Message::Rejected {
            seq: 1,
            code: ErrorCode::ReadOnly,
            ..
        }
    ));
    assert!(
        !w.room_trace
            .iter()
            .any(|o| matches!(o, RoomOutput::Persist { .. } | RoomOutput::Close { .. }))
    );
    assert_eq!(w.room.head(), 0);
    assert_eq!(w.room.member_count(), 2);

    // The session took the rejection in stride and still receives.
    assert_eq!(w.c(r).link(), LinkState::Live);
    assert_eq!(w.c(r).pending(), 3);
    w.write_many(writer, "theirs", 2);
    assert_eq!(w.c(r).cursor(), 2);
}

#[test]
fn session_told_read_only_by_a_rejection_stops_pushing_and_keeps_its_ops() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    assert!(!w.c(a).session.status().read_only);
    // Rights were lowered after the Welcome: the relay refuses a push.
    w.client_input(
        a,
        sync_core::session::Input::Received(&crate::harness::frame(&Message::Rejected {
            seq: 1,
            code: ErrorCode::ReadOnly,
            retry_after_ms: 0,
            message: "read only".into(),
        })),
    );
    assert!(w.c(a).session.status().read_only);
    assert_eq!(w.c(a).link(), LinkState::Live);
    w.cm(a).clear_trace();

    w.write_many(a, "a", 5);

    assert!(w.c(a).pushes().is_empty());
    assert_eq!(w.c(a).pending(), 5);
    assert_eq!(w.c(a).link(), LinkState::Live);
}
