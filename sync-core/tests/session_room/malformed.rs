//! Malformed input: each side refuses it cleanly, closes with the right
//! code, and the room keeps serving everyone else.

use sync_core::protocol::{self, CloseCode, ErrorCode, Hello, Message};
use sync_core::room::RoomConfig;
use sync_core::session::{Input, LinkState};
use sync_core::{Event, Op, ReplicaId};

use crate::harness::{ROOM, TODOS, World};

const MAX_FRAME: usize = 512;

/// Feeds `frame` to the room from a joined session and checks it is closed
/// with `error` then `close`, while another session carries on.
fn room_refuses(frame: &[u8], error: ErrorCode, close: CloseCode) {
    room_with_config_refuses(RoomConfig::default(), frame, error, close);
}

fn room_with_config_refuses(config: RoomConfig, frame: &[u8], error: ErrorCode, close: CloseCode) {
    let mut w = World::new(config);
    let bad = w.add_client(1);
    let good = w.add_client(2);
    w.start(bad);
    w.start(good);
    let session = w.conn(bad);
    w.room_trace.clear();

    w.inject_to_room(bad, frame);

    let sent = w.room_sent_to(session);
    assert!(
        matches!(sent.as_slice(), [Message::Error { code, .. }] if *code == error),
        "{sent:?}"
    );
    assert_eq!(w.room_closes(session), vec![close]);
    assert_eq!(w.room.member_count(), 1);
    // The closed client heard why, and will come back unless retrying cannot help.
    let disconnects = w.c(bad).disconnects();
    assert_eq!(disconnects.len(), 1);
    assert_eq!(disconnects[0].0, close);
    assert_eq!(disconnects[0].1.is_some(), close.should_reconnect());

    // The room still serves the other session, and new ones.
    w.put(good, "after", "n", 1);
    assert_eq!(w.c(good).pending(), 0);
    assert_eq!(w.room.head(), 1);
    let late = w.add_client(3);
    w.start(late);
    assert!(w.c(late).session.replica().get(TODOS, "after").is_some());
}

fn ping() -> Vec<u8> {
    crate::harness::frame(&Message::Ping { nonce: 7 })
}

#[test]
fn room_closes_a_session_sending_garbage() {
    let garbage = [
        protocol::COMPACT_VERSION,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0x01,
    ];
    room_refuses(&garbage, ErrorCode::Malformed, CloseCode::ProtocolError);
}

#[test]
fn room_closes_a_session_speaking_another_version() {
    let mut frame = ping();
    frame[0] = protocol::COMPACT_VERSION + 1;
    room_refuses(
        &frame,
        ErrorCode::UnsupportedVersion,
        CloseCode::UnsupportedVersion,
    );
}

#[test]
fn room_closes_a_session_sending_an_empty_frame() {
    room_refuses(&[], ErrorCode::Malformed, CloseCode::ProtocolError);
}

#[test]
fn room_closes_a_session_sending_trailing_bytes() {
    let mut frame = ping();
    frame.push(0);
    room_refuses(&frame, ErrorCode::Malformed, CloseCode::ProtocolError);
}

#[test]
fn room_closes_a_session_sending_hello_after_joining() {
    let hello = protocol::encode(&Message::Hello(Hello {
        replica: ReplicaId(1),
        room: ROOM.into(),
        token: Vec::new(),
        cursor: 0,
        own_seq: 0,
        settled_seq: 0,
        agent: "again".into(),
        versions: vec![sync_core::protocol::PROTOCOL_VERSION],
        snapshot_formats: vec![1, 2, 3],
    }));
    room_refuses(&hello, ErrorCode::Malformed, CloseCode::ProtocolError);
}

#[test]
fn room_closes_a_session_sending_a_relay_only_message() {
    let deliver = crate::harness::frame(&Message::Deliver {
        from: 0,
        cursor: 0,
        ops: Vec::new(),
    });
    room_refuses(&deliver, ErrorCode::Malformed, CloseCode::ProtocolError);
}

#[test]
fn room_closes_a_session_sending_an_oversized_frame() {
    let config = RoomConfig::default().with_max_frame_bytes(MAX_FRAME);
    let mut frame = ping();
    frame.resize(MAX_FRAME + 1, 0);
    room_with_config_refuses(
        config,
        &frame,
        ErrorCode::FrameTooLarge,
        CloseCode::FrameTooLarge,
    );
}

#[test]
fn room_closes_a_session_pushing_more_than_a_batch() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.write_many(a, "doc", 1_001);
    let ops: Vec<Op> = w.c(a).session.replica().outbox().collect();
    let push = crate::harness::frame(&Message::Push { ops });
    room_refuses(&push, ErrorCode::BatchTooLarge, CloseCode::ProtocolError);
}

#[test]
fn session_receiving_garbage_closes_with_protocol_error_and_backs_off() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.cm(a).clear_trace();
    let at = w.now;

    w.client_input(
        a,
        Input::Received(&[protocol::COMPACT_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff]),
    );

    let c = w.c(a);
    assert!(
        c.events()
            .iter()
            .any(|e| matches!(e, Event::PeerMisbehaved { .. }))
    );
    assert!(c.sent().iter().any(|m| matches!(
        m,
        Message::Error {
            code: ErrorCode::Malformed,
            ..
        }
    )));
    assert_eq!(c.closes(), vec![CloseCode::ProtocolError]);
    let disconnects = c.disconnects();
    assert_eq!(disconnects.len(), 1);
    let (code, retry_at) = disconnects[0];
    assert_eq!(code, CloseCode::ProtocolError);
    let retry_at = retry_at.expect("a reconnect is scheduled");
    let backoff = c.config.backoff;
    assert!(
        (at + backoff.initial_ms / 2..=at + backoff.initial_ms).contains(&retry_at),
        "first retry at +{}",
        retry_at - at
    );
    assert_eq!(c.link(), LinkState::Waiting { retry_at });
    // The room heard the client's Error and let the session go.
    assert_eq!(w.room.member_count(), 0);

    w.run_until(retry_at - 1);
    assert_eq!(w.c(a).connects(), 0);
    w.run_until(retry_at);
    assert_eq!(w.c(a).connects(), 1);
    assert_eq!(w.c(a).link(), LinkState::Live);
}

#[test]
fn session_receiving_other_bad_frames_closes_with_the_matching_code() {
    let mut other_version = ping();
    other_version[0] = protocol::COMPACT_VERSION + 1;
    let welcome_again = crate::harness::frame(&Message::Welcome(sync_core::protocol::Welcome {
        head: 0,
        accepted_seq: 0,
        relay_time_ms: 0,
        read_only: false,
        heartbeat_ms: 1_000,
        max_batch_ops: 1,
        max_batch_bytes: 1,
        refused: Vec::new(),
        cursor: 0,
        version: sync_core::protocol::COMPACT_VERSION,
        snapshot_format: 3,
    }));
    let cases: [(&[u8], CloseCode); 4] = [
        (&[], CloseCode::ProtocolError),
        // A bad version byte mid-session is corruption: reconnect. (A relay that
        // really speaks another version says so with an Error message.)
        (&other_version, CloseCode::ProtocolError),
        (&welcome_again, CloseCode::ProtocolError),
        (&[0; 64], CloseCode::ProtocolError),
    ];
    for (frame, close) in cases {
        let mut w = World::new(RoomConfig::default());
        let a = w.add_client(1);
        w.start(a);
        w.cm(a).clear_trace();
        w.client_input(a, Input::Received(frame));
        assert_eq!(w.c(a).closes(), vec![close], "{frame:?}");
        let disconnects = w.c(a).disconnects();
        assert_eq!(disconnects.len(), 1);
        assert_eq!(disconnects[0].1.is_some(), close.should_reconnect());
    }
}

#[test]
fn session_refuses_a_frame_over_its_limit() {
    let mut w = World::new(RoomConfig::default());
    let mut config = crate::harness::session_config();
    config.max_frame_bytes = 64;
    let a = w.add_client_with(1, config);
    w.start(a);
    w.cm(a).clear_trace();
    let mut frame = ping();
    frame.resize(65, 0);
    w.client_input(a, Input::Received(&frame));
    assert_eq!(w.c(a).closes(), vec![CloseCode::FrameTooLarge]);
    assert!(w.c(a).disconnects()[0].1.is_some());
}

#[test]
fn reconnect_delays_grow_within_the_backoff_bounds() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.cm(a).refuse_connect = true;
    w.start(a);
    let backoff = w.c(a).config.backoff;
    for attempt in 0..12u32 {
        let (_, retry_at) = *w.c(a).disconnects().last().expect("a failed attempt");
        let retry_at = retry_at.expect("retries");
        let ceiling = (backoff.initial_ms << attempt).min(backoff.max_ms);
        let delay = retry_at - w.now;
        assert!(
            (ceiling / 2..=ceiling).contains(&delay),
            "attempt {attempt}: {delay} ms"
        );
        w.run_until(retry_at);
    }
    // Once the relay is reachable the session connects, and the delays start over.
    w.cm(a).refuse_connect = false;
    let (_, retry_at) = *w.c(a).disconnects().last().expect("failed");
    w.run_until(retry_at.expect("retries"));
    assert_eq!(w.c(a).link(), LinkState::Live);
    // Only a connection that stays up a while resets the backoff.
    w.advance(backoff.max_ms);
    w.cut(a, None);
    let (_, retry_at) = *w.c(a).disconnects().last().expect("cut");
    assert!(retry_at.expect("retries") - w.now <= backoff.initial_ms);
}
