//! Flow control: the send window and the slow-consumer cut-off.

use sync_core::Timestamp;
use sync_core::protocol::{CloseCode, ErrorCode, Message};
use sync_core::room::{ConnectionId, RoomConfig};
use sync_core::session::LinkState;

use crate::harness::World;

fn windowed() -> RoomConfig {
    RoomConfig::default()
        .with_send_window(2)
        .with_max_batch_ops(10)
        .with_snapshot_chunk_bytes(64)
        .with_slow_consumer_ms(5_000)
}

/// Deliver and SnapshotChunk frames the room sent to `session` that it has
/// not yet received an `Applied` for.
fn unconfirmed(w: &World, session: ConnectionId) -> usize {
    let sent = w
        .room_sent_to(session)
        .iter()
        .filter(|m| matches!(m, Message::Deliver { .. } | Message::SnapshotChunk { .. }))
        .count();
    let applied = w
        .room_got_from(session)
        .iter()
        .filter(|m| matches!(m, Message::Applied { .. }))
        .count();
    sent.saturating_sub(applied)
}

/// Releases the reader's frames one by one, checking the window each step.
fn drain_checking_window(w: &mut World, reader: usize, window: usize) -> usize {
    let session = w.conn(reader);
    let mut steps = 0;
    while w.deliver_next_to(reader).is_some() {
        steps += 1;
        let open = unconfirmed(w, session);
        assert!(
            open <= window,
            "{open} frames unconfirmed after step {steps}"
        );
    }
    steps
}

#[test]
fn room_never_has_more_than_send_window_deliveries_unconfirmed() {
    let mut w = World::new(windowed());
    let reader = w.add_client(1);
    let writer = w.add_client(2);
    w.start(reader);
    w.start(writer);
    w.cm(reader).hold_inbound = true;

    w.write_many(writer, "w", 200);

    let session = w.conn(reader);
    assert_eq!(w.room.head(), 200);
    assert_eq!(unconfirmed(&w, session), 2, "window full, no more");
    assert_eq!(w.queued_data_to(reader), 2);
    let steps = drain_checking_window(&mut w, reader, 2);
    assert!(steps >= 20, "200 ops in batches of 10: {steps} frames");
    w.cm(reader).hold_inbound = false;
    w.assert_converged();
}

#[test]
fn room_never_has_more_than_send_window_snapshot_chunks_unconfirmed() {
    let mut w = World::new(windowed());
    let writer = w.add_client(2);
    w.start(writer);
    w.write_many(writer, "w", 400);
    w.compact_now();
    let reader = w.add_client(1);
    w.cm(reader).hold_inbound = true;
    w.start(reader);
    assert!(matches!(
        w.deliver_next_to(reader),
        Some(Message::Welcome(_))
    ));
    let session = w.conn(reader);
    assert_eq!(unconfirmed(&w, session), 2);

    let steps = drain_checking_window(&mut w, reader, 2);
    let chunks = w
        .c(reader)
        .received()
        .iter()
        .filter(|m| matches!(m, Message::SnapshotChunk { .. }))
        .count();
    // Several windows' worth, so the window is what holds the rest back.
    assert!(chunks > 4, "64-byte chunks: {chunks}");
    assert!(steps >= chunks);
    w.cm(reader).hold_inbound = false;
    w.assert_converged();
}

#[test]
fn session_that_never_confirms_is_closed_as_slow_consumer_and_resumes_later() {
    let mut w = World::new(windowed());
    let reader = w.add_client(1);
    let writer = w.add_client(2);
    w.start(reader);
    w.start(writer);
    w.cm(reader).hold_inbound = true;
    let stalled_at = w.now;
    w.write_many(writer, "w", 100);
    let session = w.conn(reader);
    assert_eq!(
        w.room.next_timeout(),
        Some(Timestamp::from_unix_ms(stalled_at + 5_000))
    );

    w.run_until(stalled_at + 4_999);
    assert_eq!(w.room.member_count(), 2);
    assert!(w.room_closes(session).is_empty());

    w.run_until(stalled_at + 5_000);
    assert_eq!(w.room.member_count(), 1);
    assert_eq!(w.room_closes(session), vec![CloseCode::SlowConsumer]);
    let sent = w.room_sent_to(session);
    assert!(matches!(
        sent.last(),
        Some(Message::Error {
            code: ErrorCode::SlowConsumer,
            ..
        })
    ));
    assert_eq!(unconfirmed(&w, session), 2, "still only the window's worth");

    // The reader wakes up, reads what was sent, learns it was cut off, and resumes.
    w.cm(reader).hold_inbound = false;
    w.settle();
    let disconnects = w.c(reader).disconnects();
    assert_eq!(disconnects.len(), 1);
    assert_eq!(disconnects[0].0, CloseCode::SlowConsumer);
    assert!(disconnects[0].1.is_some(), "it will retry");
    let applied = w.c(reader).deliveries().last().map(|d| d.1);
    assert!(applied > Some(0));
    assert_eq!(Some(w.c(reader).cursor()), applied, "kept what it applied");

    w.advance(60_000);
    assert_eq!(w.c(reader).link(), LinkState::Live);
    assert_eq!(w.c(reader).hellos().last().map(|h| h.cursor), applied);
    w.assert_converged();
}

#[test]
fn consumer_that_keeps_confirming_is_not_cut_off_as_slow() {
    let mut w = World::new(windowed());
    let reader = w.add_client(1);
    let writer = w.add_client(2);
    w.start(reader);
    w.start(writer);
    w.cm(reader).hold_inbound = true;
    w.write_many(writer, "w", 300); // 30 frames of 10
    let session = w.conn(reader);

    // Read one frame a second: steady progress, never 5 s without confirming.
    for second in 1..=40 {
        w.advance(1_000);
        w.deliver_next_to(reader);
        assert!(
            w.room_closes(session).is_empty(),
            "closed {:?} after {second} s with cursor {} of 300",
            w.room_closes(session),
            w.c(reader).cursor()
        );
    }
    w.cm(reader).hold_inbound = false;
    w.settle();
    w.assert_converged();
}
