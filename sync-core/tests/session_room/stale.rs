//! Operations older than the room's tombstone horizon.

use sync_core::Event;
use sync_core::protocol::{ErrorCode, Message};
use sync_core::room::{CompactionPolicy, RoomConfig};
use sync_core::session::LinkState;

use crate::harness::{TODOS, World};

/// Tombstones older than a second are collected at compaction.
fn short_grace() -> RoomConfig {
    RoomConfig::default()
        .with_compaction(CompactionPolicy::default().with_tombstone_grace_ms(1_000))
}

fn rejections(w: &World, i: usize) -> Vec<(u64, ErrorCode)> {
    w.c(i)
        .received()
        .into_iter()
        .flat_map(|m| match m {
            Message::Rejected { seq, code, .. } => vec![(seq, code)],
            // Refusals for good travel in the ack that settles them.
            Message::Ack { refused, .. } => refused,
            _ => Vec::new(),
        })
        .collect()
}

/// `old` wrote one op offline at T0; `writer` wrote one live; ten seconds
/// later the room compacted, moving its horizon past T0.
fn horizon_past_an_offline_write() -> (World, usize, usize) {
    let mut w = World::new(short_grace());
    let old = w.add_client(1);
    let writer = w.add_client(2);
    w.start(writer);
    w.put(old, "x", "note", "written offline long ago");
    w.put(writer, "y", "n", 1);
    w.advance(10_000);
    w.compact_now();
    (w, old, writer)
}

#[test]
fn op_older_than_the_tombstone_horizon_is_rejected_as_stale_and_dropped() {
    let (mut w, old, _) = horizon_past_an_offline_write();
    w.start(old);
    assert_eq!(rejections(&w, old), vec![(1, ErrorCode::Stale)]);
    assert!(w.c(old).events().iter().any(|e| matches!(
        e,
        Event::OpsRejected { seqs, code: ErrorCode::Stale, .. } if *seqs == vec![1]
    )));
    assert_eq!(w.c(old).pending(), 0, "dropped from the outbox");
    assert_eq!(w.room.head(), 1);
    // It resyncs to take the refused write back out of its state.
    w.advance(5_000);
    assert_eq!(w.c(old).link(), LinkState::Live);
    assert!(
        w.c(old).session.replica().get(TODOS, "x").is_none(),
        "the refused write is gone locally"
    );
    assert!(w.c(old).session.replica().get(TODOS, "y").is_some());
}

#[test]
fn writes_after_a_stale_rejection_are_acknowledged() {
    let (mut w, old, writer) = horizon_past_an_offline_write();
    w.start(old);
    assert_eq!(rejections(&w, old), vec![(1, ErrorCode::Stale)]);
    w.advance(5_000); // the resync reconnects

    w.write_many(old, "new", 10);

    assert_eq!(w.c(old).pending(), 0, "every new write acknowledged");
    assert_eq!(w.room.head(), 11, "and stored");
    assert!(w.c(old).events().contains(&Event::AllPushed));
    // Later writes are not held back either, on this connection or the next.
    w.cut(old, None);
    w.advance(60_000);
    w.write_many(old, "later", 5);
    assert_eq!(w.c(old).pending(), 0);
    assert!(w.c(writer).session.replica().get(TODOS, "later4").is_some());
}

#[test]
fn restored_room_still_refuses_stale_ops() {
    let mut w = World::new(short_grace());
    let old = w.add_client(1);
    let writer = w.add_client(2);
    w.start(writer);
    w.put(writer, "x", "title", "v1");
    // `old` edits x while offline, before the delete below.
    w.put(old, "x", "note", "offline edit");
    w.advance(1);
    w.delete(writer, "x");
    w.advance(10_000);
    // The delete's tombstone is past the grace period: compaction collects it.
    w.compact_now();
    w.restart_room();

    w.start(old);

    let refused = rejections(&w, old);
    // Whatever happened, everyone must agree on x.
    w.advance(60_000);
    let fresh = w.add_client(3);
    w.start(fresh);
    let x = |i: usize| w.c(i).session.replica().get(TODOS, "x");
    assert_eq!(x(writer), None);
    assert_eq!(x(fresh), x(writer), "a fresh replica resurrected x");
    assert_eq!(refused, vec![(1, ErrorCode::Stale)]);
}
