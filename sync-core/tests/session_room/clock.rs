//! Clocks beyond the drift bound, on either side.

use sync_core::Event;
use sync_core::Timestamp;
use sync_core::protocol::{CloseCode, ErrorCode, Message};
use sync_core::room::RoomConfig;
use sync_core::session::LinkState;

use crate::harness::{TODOS, World, session_config};

/// The drift bound of room and replicas (the default).
const MAX_DRIFT: u64 = 60_000;
/// How far the odd clock is off: 30 s beyond the bound.
const SKEW: u64 = 90_000;

#[test]
fn op_stamped_beyond_the_drift_bound_is_refused_then_pushed_again_after_retry_after() {
    let mut w = World::new(RoomConfig::default());
    let fast = w.add_client(1);
    w.cm(fast).skew = SKEW as i64;
    w.start(fast);
    w.cm(fast).clear_trace();
    let written_at = w.now;

    w.put(fast, "doc", "n", 1);

    let rejected: Vec<(u64, ErrorCode, u64)> = w
        .c(fast)
        .received()
        .into_iter()
        .filter_map(|m| match m {
            Message::Rejected {
                seq,
                code,
                retry_after_ms,
                ..
            } => Some((seq, code, retry_after_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, vec![(1, ErrorCode::ClockAhead, SKEW - MAX_DRIFT)]);
    assert!(
        w.c(fast)
            .events()
            .iter()
            .any(|e| matches!(e, Event::ClockSkew { ahead_ms } if *ahead_ms < 0))
    );
    assert_eq!(w.room.head(), 0);
    assert_eq!(w.c(fast).pending(), 1);

    w.run_until(written_at + (SKEW - MAX_DRIFT) - 1);
    assert_eq!(w.c(fast).pushes().len(), 1, "no push before retry_after");
    assert_eq!(w.room.head(), 0);

    w.run_until(written_at + (SKEW - MAX_DRIFT));
    assert_eq!(w.c(fast).pushes().len(), 2, "pushed again once allowed");
    assert_eq!(w.room.head(), 1, "and accepted");
    assert_eq!(w.c(fast).pending(), 0);
}

#[test]
fn session_with_a_clock_behind_holds_deliveries_until_its_clock_catches_up() {
    let (mut w, slow, writer) = slow_reader_and_writer(RoomConfig::default());
    assert!(
        w.c(slow).events().contains(&Event::ClockSkew {
            ahead_ms: SKEW as i64
        }),
        "the Welcome's relay time already shows the skew"
    );
    w.cm(slow).clear_trace();
    let written_at = w.now;

    w.put(writer, "doc", "n", 1);

    // Received, not applied: the stamp is too far ahead of the slow clock.
    assert_eq!(w.c(slow).deliveries().len(), 1);
    assert!(w.c(slow).events().contains(&Event::ClockSkew {
        ahead_ms: SKEW as i64
    }));
    assert!(w.c(slow).session.replica().get(TODOS, "doc").is_none());
    assert_eq!(w.c(slow).cursor(), 0);
    let slow_conn = w.conn(slow);
    let room_cursor = |w: &World| {
        w.room
            .stats(Timestamp::from_unix_ms(w.now))
            .members
            .into_iter()
            .find(|m| m.connection == slow_conn)
            .map(|m| m.cursor)
    };
    assert_eq!(room_cursor(&w), Some(0));

    let catch_up = written_at + (SKEW - MAX_DRIFT);
    w.run_until(catch_up - 1);
    assert!(w.c(slow).session.replica().get(TODOS, "doc").is_none());
    assert_eq!(w.c(slow).cursor(), 0);

    w.run_until(catch_up);
    assert!(w.c(slow).session.replica().get(TODOS, "doc").is_some());
    assert_eq!(w.c(slow).cursor(), 1);
    assert_eq!(w.c(slow).stored_sync_state().map(|s| s.cursor()), Some(1));
    assert!(
        w.c(slow)
            .sent()
            .iter()
            .any(|m| matches!(m, Message::Applied { cursor: 1, .. }))
    );
    assert_eq!(room_cursor(&w), Some(1), "the room learned the new cursor");
    w.assert_converged();
}

#[test]
fn clock_blocked_session_gets_no_more_than_send_window_frames_in_flight() {
    let (mut w, slow, writer) = slow_reader_and_writer(
        RoomConfig::default()
            .with_send_window(1)
            .with_slow_consumer_ms(600_000),
    );
    w.cm(slow).clear_trace();
    let written_at = w.now;
    // First delivery: received, held by the clock check, unconfirmed until
    // it applies, so it fills the window.
    w.put(writer, "doc0", "n", 0);
    w.cm(slow).hold_inbound = true;
    w.put(writer, "doc1", "n", 1);
    w.put(writer, "doc2", "n", 2);
    assert_eq!(w.queued_data_to(slow), 0, "the held frame fills the window");
    let confirmed = |w: &World| -> u32 {
        w.c(slow)
            .sent()
            .iter()
            .map(|m| match m {
                Message::Applied { frames, .. } => *frames,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(confirmed(&w), 0, "nothing applied, nothing confirmed");

    w.run_until(written_at + (SKEW - MAX_DRIFT));
    assert!(w.c(slow).session.replica().get(TODOS, "doc0").is_some());

    assert!(
        w.queued_data_to(slow) <= 1,
        "{} frames in flight with a window of 1",
        w.queued_data_to(slow)
    );
    let processed = w.c(slow).deliveries().len();
    assert_eq!(
        confirmed(&w) as usize,
        processed,
        "each Deliver confirmed exactly once"
    );
    w.cm(slow).hold_inbound = false;
    w.settle();
    w.assert_converged();
}

/// Operations held by the clock when the app stops syncing do not hold
/// back its next `start` (only work the slices can go on with does): the
/// welcome drops them, and the relay sends them again.
#[test]
fn restart_with_operations_held_by_the_clock_connects_at_once() {
    let (mut w, slow, writer) = slow_reader_and_writer(RoomConfig::default());
    let written_at = w.now;
    w.put(writer, "doc0", "n", 0);
    assert!(w.c(slow).session.replica().get(TODOS, "doc0").is_none());

    w.stop(slow);
    let connects = w.c(slow).connects();
    w.start(slow);
    assert_eq!(w.c(slow).connects(), connects + 1, "connected at once");
    assert_eq!(w.c(slow).link(), LinkState::Live);

    w.run_until(written_at + (SKEW - MAX_DRIFT));
    assert!(w.c(slow).session.replica().get(TODOS, "doc0").is_some());
    w.assert_converged();
}

/// A snapshot kept from a connection cut as a slow consumer, decoded
/// offline and then held by the clock (its newest stamp is beyond the drift
/// bound of this device's clock), does not keep the session offline until
/// the clock allows it: the session reconnects (its pushes go on meanwhile)
/// and the relay sends the snapshot again.
#[test]
fn a_kept_snapshot_held_by_the_clock_does_not_keep_the_session_offline() {
    let mut w = World::new(
        RoomConfig::default()
            .with_send_window(2)
            .with_max_batch_ops(10)
            .with_snapshot_chunk_bytes(64)
            .with_slow_consumer_ms(5_000),
    );
    let writer = w.add_client(2);
    w.start(writer);
    w.write_many(writer, "old", 100);
    w.compact_now();
    let reader = w.add_client_with(1, session_config().with_apply_slice_docs(1));
    w.cm(reader).skew = -(SKEW as i64);
    w.cm(reader).hold_slices = true;
    w.start(reader);
    let session = w.conn(reader);
    let cut_at = w.now;
    for k in 0..10 {
        w.put(writer, &format!("new{k}"), "n", k as i64);
        w.advance(1_000);
        w.apply_slice(reader);
    }
    assert_eq!(w.room_closes(session), vec![CloseCode::SlowConsumer]);
    // Decoded offline, then held by the clock.
    while w.apply_slice(reader) {}
    assert_eq!(w.c(reader).cursor(), 0, "held by the clock, not applied");

    w.cm(reader).hold_slices = false;
    w.advance(5_000);
    assert!(
        w.now < cut_at + (SKEW - MAX_DRIFT),
        "the clock still holds the snapshot"
    );
    assert_eq!(w.c(reader).link(), LinkState::Live, "reconnected meanwhile");
    w.advance(60_000);
    w.assert_converged();
}

/// A room with two started clients: `slow`, whose clock is `SKEW` behind,
/// and `writer`. Returns the world and the two clients.
fn slow_reader_and_writer(config: RoomConfig) -> (World, usize, usize) {
    let mut w = World::new(config);
    let slow = w.add_client(1);
    let writer = w.add_client(2);
    w.cm(slow).skew = -(SKEW as i64);
    w.start(slow);
    w.start(writer);
    (w, slow, writer)
}
