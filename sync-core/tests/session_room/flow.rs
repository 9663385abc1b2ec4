//! Flow control: the send window and the slow-consumer cut-off.

use sync_core::Event;
use sync_core::Timestamp;
use sync_core::protocol::{CloseCode, ErrorCode, Message};
use sync_core::room::{ConnectionId, RoomConfig};
use sync_core::session::LinkState;

use crate::harness::{World, session_config};

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

/// Frames client `i` received (`Deliver`s and snapshots' last chunks) that
/// are not applied yet: the ones past its cursor. Earlier chunks of a
/// snapshot are not counted: they only fill the blob being assembled.
fn received_unapplied(w: &World, i: usize) -> usize {
    let cursor = w.c(i).cursor();
    w.c(i)
        .received()
        .iter()
        .filter(|m| match m {
            Message::Deliver { cursor: c, .. } => *c > cursor,
            Message::SnapshotChunk {
                cursor: c,
                offset,
                total_len,
                bytes,
            } => *c > cursor && offset + bytes.len() as u64 == *total_len,
            _ => false,
        })
        .count()
}

#[test]
fn received_frames_waiting_to_apply_never_outnumber_the_send_window() {
    const WINDOW: usize = 3;
    let mut w = World::new(windowed().with_send_window(WINDOW));
    let writer = w.add_client(2);
    w.start(writer);
    w.write_many(writer, "old", 100);
    w.compact_now();
    // The reader applies the snapshot a document a slice, and only when
    // the test says: meanwhile the writer keeps writing.
    let reader = w.add_client_with(1, session_config().with_apply_slice_docs(1));
    w.cm(reader).hold_slices = true;
    w.start(reader);
    assert_eq!(
        w.c(reader).cursor(),
        0,
        "the snapshot is still being decoded"
    );

    let mut most = 0;
    let mut slices = 0;
    for k in 0..60 {
        w.put(writer, &format!("new{k}"), "n", k as i64);
        let waiting = received_unapplied(&w, reader);
        most = most.max(waiting);
        assert!(
            waiting <= WINDOW,
            "{waiting} received frames wait to be applied after {k} writes"
        );
        slices += usize::from(w.apply_slice(reader));
    }
    assert_eq!(slices, 60, "still applying the snapshot: the test means it");
    assert_eq!(most, WINDOW, "the relay kept the window full");

    // Nothing arrives any more: the confirmations of the frames applied
    // from here on go out with the slices that apply them.
    while w.apply_slice(reader) {
        assert!(received_unapplied(&w, reader) <= WINDOW);
    }
    w.cm(reader).hold_slices = false;
    w.settle();
    w.assert_converged();
    let cursors: Vec<u64> = w
        .c(reader)
        .sent()
        .iter()
        .filter_map(|m| match m {
            Message::Applied { cursor, .. } => Some(*cursor),
            _ => None,
        })
        .collect();
    assert!(
        cursors.windows(2).all(|p| p[0] <= p[1]),
        "the confirmed cursor never goes back: {cursors:?}"
    );
    assert_eq!(cursors.last(), Some(&w.room.head()));
}

#[test]
fn the_slice_that_finishes_decoding_a_snapshot_applies_none_of_it() {
    const SLICE: usize = 5;
    let mut w = World::new(windowed());
    let writer = w.add_client(2);
    w.start(writer);
    w.write_many(writer, "w", 40);
    w.compact_now();
    let reader = w.add_client_with(1, session_config().with_apply_slice_docs(SLICE));
    w.cm(reader).hold_slices = true;
    w.start(reader);

    let announced = |w: &World| {
        w.c(reader)
            .events()
            .iter()
            .filter(|e| matches!(e, Event::DocumentChanged { .. }))
            .count()
    };
    let mut decode_finished = false;
    loop {
        let resetting = w.c(reader).session.replica().is_resetting();
        let before = announced(&w);
        if !w.apply_slice(reader) {
            break;
        }
        let now = announced(&w) - before;
        assert!(now <= SLICE, "{now} documents announced in one slice");
        if !resetting && w.c(reader).session.replica().is_resetting() {
            decode_finished = true;
            assert_eq!(
                now, 0,
                "the slice that decoded the last documents also applied some"
            );
        }
    }
    assert!(decode_finished, "decoding ended in a slice of its own");
    assert_eq!(announced(&w), 40);
    w.cm(reader).hold_slices = false;
    w.settle();
    w.assert_converged();
}

#[test]
fn a_snapshot_cut_off_as_slow_is_finished_offline_and_not_fetched_again() {
    let (mut w, reader, compacted) = reader_cut_off_while_applying_a_snapshot();
    let connects = w.c(reader).connects();

    // The reader finishes the snapshot offline; the retry waits for it.
    let mut slices = 0;
    while w.apply_slice(reader) {
        slices += 1;
        w.advance(100);
        if w.apply_slice_pending(reader) {
            assert_eq!(
                w.c(reader).connects(),
                connects,
                "reconnected while still applying, after {slices} slices"
            );
        }
    }
    assert!(
        slices > 50,
        "the retry was due long before: {slices} slices"
    );
    // Its last slice stored the snapshot's cursor and connected at once.
    assert!(w.c(reader).stored_sync_state().map(|s| s.cursor()) >= Some(compacted));

    w.cm(reader).hold_slices = false;
    w.advance(60_000);
    assert_eq!(w.c(reader).link(), LinkState::Live);
    assert_eq!(w.c(reader).connects(), connects + 1);
    assert_resumed_after_the_one_snapshot(&w, reader, compacted);
}

/// `start` (what an app's `connect` calls, say on the browser's `online`
/// event) while a snapshot kept from a cut connection is still being
/// applied waits for it as the retry does: connecting at once would send
/// the cursor from before the snapshot, and the welcome would drop it.
#[test]
fn start_while_finishing_a_snapshot_offline_connects_once_it_is_applied() {
    let (mut w, reader, compacted) = reader_cut_off_while_applying_a_snapshot();
    assert!(
        w.apply_slice_pending(reader),
        "the snapshot is still applying"
    );
    let connects = w.c(reader).connects();

    w.start(reader);
    assert_eq!(
        w.c(reader).connects(),
        connects,
        "connected while a snapshot from before is still applying"
    );
    while w.c(reader).cursor() < compacted {
        assert_eq!(
            w.c(reader).connects(),
            connects,
            "connected before the cursor moved"
        );
        assert!(w.apply_slice(reader), "the snapshot's slices stopped");
    }
    // The last slice stored the snapshot's cursor and connected.
    assert_eq!(w.c(reader).connects(), connects + 1);
    w.cm(reader).hold_slices = false;
    w.settle();
    assert_eq!(w.c(reader).link(), LinkState::Live);
    assert_resumed_after_the_one_snapshot(&w, reader, compacted);
}

/// A room of 100 documents compacted into a snapshot, and a reader applying
/// it one document a slice, a second a slice, while the room keeps
/// writing: the snapshot's last chunk and a `Deliver` fill the window and
/// the room cuts the reader off as a slow consumer. Returns the world, the
/// reader and the snapshot's cursor.
fn reader_cut_off_while_applying_a_snapshot() -> (World, usize, u64) {
    let mut w = World::new(windowed());
    let writer = w.add_client(2);
    w.start(writer);
    w.write_many(writer, "old", 100);
    w.compact_now();
    let compacted = w.room.head();
    let reader = w.add_client_with(1, session_config().with_apply_slice_docs(1));
    w.cm(reader).hold_slices = true;
    w.start(reader);
    let session = w.conn(reader);
    for k in 0..10 {
        w.put(writer, &format!("new{k}"), "n", k as i64);
        w.advance(1_000);
        w.apply_slice(reader);
    }
    assert_eq!(w.room_closes(session), vec![CloseCode::SlowConsumer]);
    (w, reader, compacted)
}

/// How many snapshot chunks `client` received that ended a snapshot.
/// The client's last `Hello` resumes after the snapshot at `compacted`,
/// which the relay sent it once, and everyone converged.
fn assert_resumed_after_the_one_snapshot(w: &World, client: usize, compacted: u64) {
    assert_eq!(
        w.c(client).hellos().last().map(|h| h.cursor),
        Some(compacted),
        "resumes after the snapshot"
    );
    assert_eq!(
        last_snapshot_chunks(w, client),
        1,
        "the snapshot was sent once"
    );
    w.assert_converged();
}

fn last_snapshot_chunks(w: &World, client: usize) -> usize {
    w.c(client)
        .received()
        .iter()
        .filter(|m| {
            matches!(m, Message::SnapshotChunk { offset, total_len, bytes, .. }
                if offset + bytes.len() as u64 == *total_len)
        })
        .count()
}
