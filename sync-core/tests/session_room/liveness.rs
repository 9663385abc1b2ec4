//! Heartbeats, dead links, idle sessions, handshake timeouts, superseded
//! sessions, and closes that must stop reconnection.

use sync_core::Timestamp;
use sync_core::protocol::{CloseCode, ErrorCode, Message};
use sync_core::room::RoomConfig;
use sync_core::session::{Input, LinkState};

use crate::harness::World;

const HEARTBEAT: u64 = 15_000;
const DEAD_AFTER: u64 = 45_000;

fn pings(w: &World, i: usize) -> Vec<u64> {
    w.c(i)
        .sent()
        .iter()
        .filter_map(|m| match m {
            Message::Ping { nonce } => Some(*nonce),
            _ => None,
        })
        .collect()
}

#[test]
fn idle_live_session_pings_after_the_heartbeat_and_gets_pong() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let live_at = w.now;

    w.run_until(live_at + HEARTBEAT - 1);
    assert!(pings(&w, a).is_empty());
    w.run_until(live_at + HEARTBEAT);
    let sent = pings(&w, a);
    assert_eq!(sent.len(), 1);
    assert!(
        w.c(a)
            .received()
            .contains(&Message::Pong { nonce: sent[0] })
    );
    // A live pair keeps itself alive indefinitely.
    w.advance(10 * 60_000);
    assert_eq!(w.c(a).link(), LinkState::Live);
    assert_eq!(w.room.member_count(), 1);
    assert_eq!(w.c(a).connects(), 1);
}

#[test]
fn session_declares_a_silent_relay_dead_then_reconnects() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let live_at = w.now;
    w.cm(a).drop_inbound = true; // The relay's frames no longer arrive.
    w.cm(a).clear_trace();

    w.run_until(live_at + DEAD_AFTER - 1);
    assert_eq!(w.c(a).link(), LinkState::Live);
    assert_eq!(pings(&w, a).len(), 2, "pinged at 15 s and 30 s");

    w.run_until(live_at + DEAD_AFTER);
    assert_eq!(w.c(a).closes(), vec![CloseCode::IdleTimeout]);
    let disconnects = w.c(a).disconnects();
    assert_eq!(disconnects.len(), 1);
    assert_eq!(disconnects[0].0, CloseCode::IdleTimeout);
    let retry_at = disconnects[0].1.expect("reconnects");
    let backoff = w.c(a).config.backoff;
    assert!(retry_at - w.now >= backoff.initial_ms / 2 && retry_at - w.now <= backoff.initial_ms);

    w.cm(a).drop_inbound = false;
    w.run_until(retry_at);
    assert_eq!(w.c(a).connects(), 1);
    assert_eq!(w.c(a).link(), LinkState::Live);
}

#[test]
fn room_closes_a_silent_session_after_the_idle_timeout() {
    let mut w = World::new(RoomConfig::default());
    let joined_at = w.now;
    w.join_raw(99, 7);
    assert!(matches!(
        w.room_sent_to(99).first(),
        Some(Message::Welcome(_))
    ));
    assert_eq!(
        w.room.next_timeout(),
        Some(Timestamp::from_unix_ms(joined_at + 60_000))
    );

    w.run_until(joined_at + 60_000 - 1);
    assert_eq!(w.room.member_count(), 1);
    w.run_until(joined_at + 60_000);
    assert_eq!(w.room.member_count(), 0);
    assert_eq!(w.room_closes(99), vec![CloseCode::IdleTimeout]);
    assert!(matches!(
        w.room_sent_to(99).last(),
        Some(Message::Error {
            code: ErrorCode::IdleTimeout,
            ..
        })
    ));
}

#[test]
fn room_keeps_a_session_that_only_pings() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.advance(5 * 60_000);
    assert_eq!(w.room.member_count(), 1);
    assert!(w.room_closes(w.conn(a)).is_empty());
}

#[test]
fn handshake_times_out_when_no_welcome_comes() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.cm(a).drop_outbound = true; // The Hello never reaches the relay.
    let started = w.now;
    w.start(a);
    assert_eq!(w.c(a).link(), LinkState::Handshaking);
    let timeout = w.c(a).config.handshake_timeout_ms;

    w.run_until(started + timeout - 1);
    assert_eq!(w.c(a).link(), LinkState::Handshaking);
    w.run_until(started + timeout);
    assert_eq!(w.c(a).closes(), vec![CloseCode::HandshakeTimeout]);
    let disconnects = w.c(a).disconnects();
    assert_eq!(disconnects.len(), 1);
    assert_eq!(disconnects[0].0, CloseCode::HandshakeTimeout);
    assert!(matches!(w.c(a).link(), LinkState::Waiting { .. }));

    w.cm(a).drop_outbound = false;
    w.advance(60_000);
    assert_eq!(w.c(a).link(), LinkState::Live);
}

#[test]
fn second_session_of_the_same_replica_supersedes_the_first() {
    let mut w = World::new(RoomConfig::default());
    let first = w.add_client(1);
    w.start(first);
    w.write_many(first, "a", 2);
    let old_conn = w.conn(first);
    let second = w.add_twin(first);

    w.start(second);

    assert_eq!(w.room_closes(old_conn), vec![CloseCode::Superseded]);
    assert!(matches!(
        w.room_sent_to(old_conn).last(),
        Some(Message::Error {
            code: ErrorCode::Superseded,
            ..
        })
    ));
    assert_eq!(w.room.member_count(), 1);
    assert_eq!(w.c(second).link(), LinkState::Live);
    assert_eq!(w.c(second).welcomes()[0].accepted_seq, 2);
    assert_eq!(w.c(first).disconnects()[0].0, CloseCode::Superseded);
    assert_ne!(w.c(first).link(), LinkState::Live);
}

#[test]
fn reconnecting_client_supersedes_its_own_stale_connection_quietly() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let stale = w.conn(a);
    // The client notices the link is gone; the relay does not yet.
    w.cut_client_side(a);
    assert_eq!(w.room.member_count(), 1);

    w.advance(60_000);

    assert_eq!(w.room_closes(stale), vec![CloseCode::Superseded]);
    assert_eq!(w.room.member_count(), 1);
    assert_eq!(w.c(a).link(), LinkState::Live);
    assert!(
        w.c(a)
            .disconnects()
            .iter()
            .all(|d| d.0 != CloseCode::Superseded)
    );
}

#[test]
fn two_hosts_of_one_replica_take_turns_at_a_bounded_rate() {
    // Two live hosts sharing one replica id is misuse; what matters is that
    // they do not hammer the relay. (Superseded must still reconnect: a slow
    // handshake of an abandoned connection can overtake the current one.)
    let mut w = World::new(RoomConfig::default());
    let first = w.add_client(1);
    w.start(first);
    let second = w.add_twin(first);
    w.start(second);
    let superseded = |w: &World| -> usize {
        [first, second]
            .iter()
            .map(|&i| {
                w.c(i)
                    .disconnects()
                    .iter()
                    .filter(|d| d.0 == CloseCode::Superseded)
                    .count()
            })
            .sum()
    };

    w.advance(5 * 60_000);
    let settled = superseded(&w);
    w.advance(60_000);
    let per_minute = superseded(&w) - settled;
    assert!(
        per_minute <= 8,
        "{per_minute} superseded closes per minute at the backoff ceiling"
    );
}

#[test]
fn closes_that_retrying_cannot_fix_stop_reconnection() {
    for code in [
        CloseCode::Unauthorized,
        CloseCode::Forbidden,
        CloseCode::UnsupportedVersion,
    ] {
        let mut w = World::new(RoomConfig::default());
        let a = w.add_client(1);
        w.start(a);

        w.cut(a, Some(code.as_u16()));

        assert_eq!(w.c(a).link(), LinkState::Offline, "{code:?}");
        assert_eq!(w.c(a).disconnects(), vec![(code, None)]);
        assert_eq!(w.c(a).session.next_timeout(), None);
        w.advance(60 * 60_000);
        assert_eq!(w.c(a).connects(), 1, "{code:?}: no reconnection");
        // Local writes keep working.
        w.put(a, "offline", "n", 1);
        assert_eq!(w.c(a).pending(), 1);
    }
}

#[test]
fn relay_error_unauthorized_stops_reconnection_too() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let error = crate::harness::frame(&Message::Error {
        code: ErrorCode::Unauthorized,
        message: "token expired".into(),
    });
    w.client_input(a, Input::Received(&error));
    assert_eq!(w.c(a).closes(), vec![CloseCode::Unauthorized]);
    assert_eq!(w.c(a).disconnects(), vec![(CloseCode::Unauthorized, None)]);
    assert_eq!(w.c(a).link(), LinkState::Offline);
    w.advance(60 * 60_000);
    assert_eq!(w.c(a).connects(), 1);
}

#[test]
fn other_closes_schedule_a_reconnect() {
    for code in [Some(1001), Some(4005), Some(4011), Some(1006), None] {
        let mut w = World::new(RoomConfig::default());
        let a = w.add_client(1);
        w.start(a);
        w.cut(a, code);
        assert!(
            matches!(w.c(a).link(), LinkState::Waiting { .. }),
            "{code:?}"
        );
        w.advance(60_000);
        assert_eq!(w.c(a).link(), LinkState::Live, "{code:?}");
    }
}

#[test]
fn stop_closes_normally_and_stays_offline_until_started_again() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    let conn = w.conn(a);

    w.stop(a);

    assert_eq!(w.c(a).closes(), vec![CloseCode::Normal]);
    assert_eq!(w.c(a).disconnects(), vec![(CloseCode::Normal, None)]);
    assert_eq!(w.c(a).link(), LinkState::Offline);
    assert_eq!(w.room.member_count(), 0, "the room heard the close");
    assert!(w.room_closes(conn).is_empty());
    w.advance(60 * 60_000);
    assert_eq!(w.c(a).connects(), 1);

    w.start(a);
    assert_eq!(w.c(a).link(), LinkState::Live);
}
