//! Push and Ack: batching, durability order, deduplication.

use std::collections::BTreeSet;

use sync_core::Timestamp;
use sync_core::protocol::{self, Message};
use sync_core::room::{RoomConfig, RoomOutput};
use sync_core::session::Output;
use sync_core::store::Store;
use sync_core::{Event, OpId, StoreKey};

use crate::harness::{World, msg, persists_outbox};

/// Outbox sequence numbers present in a client's store.
fn stored_outbox(w: &World, i: usize) -> usize {
    w.c(i)
        .store
        .read_all()
        .expect("memory store")
        .iter()
        .filter(|(k, _)| matches!(StoreKey::from_bytes(k), Ok(StoreKey::Outbox(_))))
        .count()
}

#[test]
fn offline_writes_are_pushed_in_batches_bounded_by_max_batch_ops() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.write_many(a, "doc", 2_500);
    assert_eq!(w.c(a).pending(), 2_500);
    w.start(a);

    let sizes: Vec<usize> = w.c(a).pushes().iter().map(Vec::len).collect();
    assert!(sizes.len() >= 3, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 1_000), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 2_500);
    assert_eq!(w.room.head(), 2_500);
    assert_eq!(w.c(a).pending(), 0);
    assert!(w.c(a).events().contains(&Event::AllPushed));
}

#[test]
fn the_room_can_lower_the_batch_limit_in_its_welcome() {
    let mut w = World::new(RoomConfig::default().with_max_batch_ops(300));
    let a = w.add_client(1);
    w.write_many(a, "doc", 1_000);
    w.start(a);
    let sizes: Vec<usize> = w.c(a).pushes().iter().map(Vec::len).collect();
    assert!(sizes.iter().all(|&n| n <= 300), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 1_000);
    assert_eq!(w.c(a).pending(), 0);
}

#[test]
fn outbox_is_drained_only_as_acks_arrive() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.write_many(a, "doc", 2_500);
    w.cm(a).hold_inbound = true;
    w.start(a);
    // The Welcome is waiting; deliver it, and the pushes go out.
    assert!(matches!(w.deliver_next_to(a), Some(Message::Welcome(_))));
    assert_eq!(w.room.head(), 2_500, "the room stored every push");
    assert_eq!(w.c(a).pending(), 2_500, "no ack has arrived yet");
    assert_eq!(stored_outbox(&w, a), 2_500);

    let mut acks = Vec::new();
    while let Some(m) = w.deliver_next_to(a) {
        if let Message::Ack { through_seq, .. } = m {
            acks.push(through_seq);
            assert_eq!(w.c(a).pending() as u64, 2_500 - through_seq);
            assert_eq!(stored_outbox(&w, a) as u64, 2_500 - through_seq);
        }
    }
    assert_eq!(acks.last(), Some(&2_500), "{acks:?}");
    assert!(acks.len() >= 3);
    assert_eq!(w.c(a).pending(), 0);
    assert_eq!(stored_outbox(&w, a), 0);
}

#[test]
fn room_persists_operations_before_it_acks_or_delivers_them() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    let b = w.add_client(2);
    w.start(a);
    w.start(b);
    w.write_many(a, "a", 1_200);
    w.write_many(b, "b", 700);
    assert_eq!(w.room.head(), 1_900);

    let mut durable_ops: BTreeSet<OpId> = BTreeSet::new();
    let mut durable_through = 0;
    let (mut acks, mut delivers) = (0, 0);
    for out in &w.room_trace {
        match out {
            RoomOutput::Persist { batch, .. } => {
                for (offset, bytes) in &batch.append {
                    assert_eq!(*offset, durable_through + 1, "appends are contiguous");
                    durable_through = *offset;
                    durable_ops.insert(protocol::decode_op(bytes).expect("entry").id);
                }
            }
            RoomOutput::Transmit {
                connection: session,
                frame,
            } => match msg(frame) {
                Message::Ack { through_seq, .. } => {
                    acks += 1;
                    let replica = if *session == w.conn(a) {
                        w.c(a).id
                    } else {
                        w.c(b).id
                    };
                    for seq in 1..=through_seq {
                        assert!(
                            durable_ops.contains(&OpId { replica, seq }),
                            "ack through {through_seq} before {seq} was persisted"
                        );
                    }
                }
                Message::Deliver { cursor, .. } => {
                    delivers += 1;
                    assert!(
                        cursor <= durable_through,
                        "delivered {cursor} before persisting it"
                    );
                }
                _ => {}
            },
            _ => {}
        }
    }
    assert!(acks > 2 && delivers > 2);
}

#[test]
fn session_persists_its_outbox_before_pushing_it() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.start(a);
    w.write_many(a, "live", 50);
    w.stop(a);
    w.write_many(a, "offline", 50);
    w.start(a);

    let outputs = &w.c(a).outputs;
    let mut pushed = 0;
    for (k, out) in outputs.iter().enumerate() {
        let Output::Transmit(frame) = out else {
            continue;
        };
        let Message::Push { ops } = msg(frame) else {
            continue;
        };
        for op in ops {
            pushed += 1;
            let stored_before = outputs[..k].iter().any(
                |o| matches!(o, Output::Persist { batch, .. } if persists_outbox(batch, op.id.seq)),
            );
            assert!(
                stored_before,
                "op {} pushed before it was stored",
                op.id.seq
            );
        }
    }
    assert_eq!(pushed, 100);
}

#[test]
fn duplicate_push_is_deduplicated_and_still_acked() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.write_many(a, "doc", 3);
    w.start(a);
    assert_eq!(w.room.head(), 3);
    let push = w
        .c(a)
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::Transmit(f) if matches!(msg(f), Message::Push { .. }) => Some(f.clone()),
            _ => None,
        })
        .expect("a push");
    w.room_trace.clear();

    w.inject_to_room(a, &push);

    assert_eq!(w.room.head(), 3, "the duplicate was not appended");
    assert!(
        !w.room_trace
            .iter()
            .any(|o| matches!(o, RoomOutput::Persist { .. })),
        "nothing new to persist"
    );
    let sent = w.room_sent_to(w.conn(a));
    assert_eq!(
        sent,
        vec![Message::Ack {
            through_seq: 3,
            refused: Vec::new()
        }]
    );
    assert_eq!(w.c(a).pending(), 0);
}

#[test]
fn lost_ack_is_recovered_from_the_welcome_without_pushing_again() {
    let mut w = World::new(RoomConfig::default());
    let a = w.add_client(1);
    w.write_many(a, "doc", 10);
    w.cm(a).hold_inbound = true;
    w.start(a);
    assert!(matches!(w.deliver_next_to(a), Some(Message::Welcome(_))));
    assert_eq!(w.room.head(), 10);
    // The connection breaks with the Ack still in flight.
    w.cut(a, None);
    w.cm(a).hold_inbound = false;
    assert_eq!(w.c(a).pending(), 10);
    w.cm(a).clear_trace();

    w.advance(60_000);

    assert_eq!(w.c(a).welcomes()[0].accepted_seq, 10);
    assert_eq!(w.c(a).pending(), 0);
    assert!(w.c(a).pushes().is_empty(), "nothing needed pushing again");
    assert_eq!(w.room.head(), 10);
}

#[test]
fn one_oversized_write_does_not_wedge_the_outbox() {
    let mut w = World::new(RoomConfig::default().with_max_batch_bytes(64 * 1024));
    let a = w.add_client(1);
    let b = w.add_client(2);
    w.start(a);
    w.start(b);
    let blob = sync_core::Value::Bytes(vec![7; 200 * 1024]);
    let now = w.c(a).local(w.now);
    // Either the write is refused up front, or the relay must end up with the next one.
    let refused = w
        .cm(a)
        .session
        .put(
            Timestamp::from_unix_ms(now),
            crate::harness::TODOS,
            "big",
            [("blob", blob)],
        )
        .is_err();
    w.settle();
    w.put(a, "small", "n", 1);

    w.advance(60_000);

    let closes = w.c(a).disconnects().len();
    assert!(closes <= 1, "closed {closes} times by the relay");
    assert!(
        w.c(b)
            .session
            .replica()
            .get(crate::harness::TODOS, "small")
            .is_some(),
        "the write after the big one never arrived (big write refused: {refused})"
    );
}
