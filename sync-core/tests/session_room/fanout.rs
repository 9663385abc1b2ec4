//! Fan-out: what the room delivers to whom.

use sync_core::Timestamp;
use sync_core::Value;
use sync_core::room::{CompactionPolicy, RoomConfig};

use crate::harness::{TODOS, World};

#[test]
fn two_sessions_converge() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    let b = w.add_client(2);
    w.start(a);
    w.start(b);
    w.write_many(a, "a", 20);
    w.write_many(b, "b", 20);
    // Concurrent edits of different fields of one document both survive.
    w.put(a, "shared", "title", "milk");
    w.put(b, "shared", "done", true);

    w.assert_converged();
    assert_eq!(w.room.head(), 42);
    let doc = w.c(a).session.replica().get(TODOS, "shared").expect("doc");
    assert_eq!(doc.fields["title"], Value::from("milk"));
    assert_eq!(doc.fields["done"], Value::from(true));
}

#[test]
fn pusher_does_not_get_its_own_operations_back() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    let b = w.add_client(2);
    w.start(a);
    w.start(b);
    w.write_many(a, "a", 25);

    let to_a = w.c(a).deliveries();
    assert!(!to_a.is_empty(), "the pusher's cursor still advances");
    assert!(to_a.iter().all(|(_, _, ops)| ops.is_empty()), "{to_a:?}");
    assert_eq!(to_a.last().map(|d| d.1), Some(25));
    assert_eq!(w.c(a).cursor(), 25);

    let to_b: Vec<u64> = w
        .c(b)
        .deliveries()
        .into_iter()
        .flat_map(|(_, _, ops)| ops)
        .map(|op| op.id.seq)
        .collect();
    assert_eq!(
        to_b,
        (1..=25).collect::<Vec<_>>(),
        "each exactly once, in order"
    );
    w.assert_converged();
}

#[test]
fn session_sent_a_snapshot_gets_its_own_acked_operations_back_in_the_tail() {
    // Fold everything but the last two entries once nobody holds compaction
    // back, however small the fold is next to the snapshot.
    let mut w = World::new(
        RoomConfig::default().with_compaction(
            CompactionPolicy::default()
                .with_min_ops(1)
                .with_keep_recent_ops(2)
                .with_min_fold_percent(0),
        ),
    );
    let a = w.add_client(1);
    let b = w.add_client(2);
    w.start(b);
    w.write_many(b, "b", 10);
    // `a` joins but does not read: its pushes land, their acks and the
    // deliveries wait unread, and its cursor stays at 0.
    w.cm(a).hold_inbound = true;
    w.start(a);
    w.deliver_next_to(a); // Welcome
    w.write_many(a, "a", 2);
    assert_eq!(w.room.head(), 12);
    w.cut(a, None);
    w.cm(a).hold_inbound = false;
    // With `a` gone the room compacts through 10: the snapshot lacks a's ops.
    assert_eq!(
        w.room
            .stats(Timestamp::from_unix_ms(w.now))
            .compacted_through,
        10
    );
    w.cm(a).clear_trace();

    w.advance(60_000);

    assert!(
        w.c(a)
            .received()
            .iter()
            .any(|m| matches!(m, sync_core::protocol::Message::SnapshotChunk { .. }))
    );
    let own: Vec<u64> = w
        .c(a)
        .deliveries()
        .into_iter()
        .flat_map(|(_, _, ops)| ops)
        .filter(|op| op.id.replica == w.c(a).id)
        .map(|op| op.id.seq)
        .collect();
    assert_eq!(
        own,
        vec![1, 2],
        "its own operations come back after the snapshot"
    );
    w.assert_converged();
    assert!(w.c(a).session.replica().get(TODOS, "a1").is_some());
}

#[test]
fn many_sessions_writing_the_same_fields_converge() {
    let mut w = World::new(
        RoomConfig::default()
            .with_max_batch_ops(7)
            .with_send_window(3),
    );
    let clients: Vec<usize> = (1..=5).map(|id| w.add_client(id)).collect();
    for &c in &clients {
        w.start(c);
    }
    for round in 0..40i64 {
        for &c in &clients {
            let now = w.c(c).local(w.now);
            let id = format!("doc{}", round % 3);
            w.cm(c)
                .session
                .put(
                    Timestamp::from_unix_ms(now),
                    TODOS,
                    &id,
                    [("owner", Value::Int(c as i64))],
                )
                .expect("write");
            if round % 7 == c as i64 {
                w.cm(c)
                    .session
                    .delete(
                        Timestamp::from_unix_ms(now),
                        TODOS,
                        &format!("doc{}", (round + 1) % 3),
                    )
                    .expect("delete");
            }
        }
        if round % 4 == 0 {
            w.settle();
        }
        w.advance(3);
    }
    w.settle();
    w.assert_converged();
}
