//! Hello → Welcome: what each side announces, and the events that follow.

use sync_core::Event;
use sync_core::ReplicaId;
use sync_core::room::RoomConfig;
use sync_core::session::LinkState;

use crate::harness::{ROOM, World};

#[test]
fn hello_is_answered_by_a_welcome_with_head_cursor_and_rights() {
    let mut w = World::new(RoomConfig::default());
    let writer = w.add_client(1);
    w.start(writer);
    w.write_many(writer, "w", 5);

    let reader = w.add_client(2);
    w.start(reader);

    let hellos = w.c(reader).hellos();
    assert_eq!(hellos.len(), 1);
    let hello = &hellos[0];
    assert_eq!(hello.replica, ReplicaId(2));
    assert_eq!(hello.room, ROOM);
    assert_eq!(hello.token, b"token".to_vec());
    assert_eq!((hello.cursor, hello.own_seq), (0, 0));

    let welcomes = w.c(reader).welcomes();
    assert_eq!(welcomes.len(), 1);
    let welcome = &welcomes[0];
    assert_eq!(welcome.head, 5);
    assert_eq!(welcome.accepted_seq, 0);
    assert!(!welcome.read_only);
    assert_eq!(welcome.cursor, 0);
    assert_eq!(welcome.relay_time_ms, w.now);
    assert_eq!(welcome.max_batch_ops, 1000);
    assert_eq!(welcome.heartbeat_ms, 15_000);

    assert_eq!(w.c(reader).link(), LinkState::Live);
    assert_eq!(w.c(reader).cursor(), 5);
    assert_eq!(w.c(reader).session.status().relay_head, 5);
}

#[test]
fn connected_comes_first_and_caught_up_fires_once_at_the_welcome_head() {
    let mut w = World::new(RoomConfig::default());
    let writer = w.add_client(1);
    w.start(writer);
    w.write_many(writer, "w", 5);
    let reader = w.add_client(2);
    w.start(reader);
    // More writes on the same connection do not announce catching up again.
    w.write_many(writer, "more", 3);

    let events = w.c(reader).events();
    let connected = events
        .iter()
        .position(|e| *e == Event::Connected { read_only: false })
        .expect("Connected");
    let caught_up: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::CaughtUp { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(caught_up.len(), 1, "{events:?}");
    assert!(connected < caught_up[0]);
    assert_eq!(events[caught_up[0]], Event::CaughtUp { cursor: 5 });
    assert_eq!(w.c(reader).cursor(), 8);
}

#[test]
fn empty_room_is_caught_up_at_once() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let events = w.c(a).events();
    assert!(events.contains(&Event::Connected { read_only: false }));
    assert!(events.contains(&Event::CaughtUp { cursor: 0 }));
}

#[test]
fn each_new_connection_announces_caught_up_again() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.write_many(a, "a", 2);
    w.cut(a, None);
    w.advance(60_000);
    assert_eq!(w.c(a).link(), LinkState::Live);
    let caught_up = w
        .c(a)
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::CaughtUp { .. }))
        .count();
    assert_eq!(caught_up, 2);
}

#[test]
fn returning_replica_is_welcomed_with_what_the_room_already_holds() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.write_many(a, "a", 3);
    assert_eq!(w.c(a).pending(), 0);
    w.stop(a);
    w.restart(a);
    w.cm(a).clear_trace();
    w.start(a);

    let hello = &w.c(a).hellos()[0];
    assert_eq!((hello.cursor, hello.own_seq), (3, 3));
    let welcome = &w.c(a).welcomes()[0];
    assert_eq!(welcome.accepted_seq, 3);
    assert_eq!(welcome.cursor, 3);
    assert_eq!(welcome.head, 3);
}
