//! A copied store continues under a new replica id (`Replica::fork`,
//! `Session::fork`): the copy never reuses the original's operation ids,
//! loses none of the writes it holds, and cannot override what the
//! original writes later.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use sync_core::Timestamp;
use sync_core::store::{MemoryStore, Store};
use sync_core::{Op, Replica, ReplicaConfig, ReplicaId, Value};

const NOW: u64 = 1_700_000_000_000;

fn restore(disk: &MemoryStore) -> Replica {
    Replica::restore(ReplicaConfig::default(), disk.read_all().expect("read"))
        .expect("restores")
        .expect("not empty")
}

fn persist(replica: &mut Replica, disk: &mut MemoryStore) {
    if let Some(batch) = replica.take_persist() {
        disk.write(&batch).expect("write");
    }
}

fn title(replica: &Replica, id: &str) -> Option<Value> {
    replica
        .get_field("todos", id, "title")
        .map(|v| v.to_value())
}

/// The original writes, a copy of its disk is taken with writes still
/// unsent, both go on writing, and a third replica receives everything
/// both ever queued, in both orders.
#[test]
fn a_forked_copy_and_its_original_converge_without_losing_or_reviving_writes() {
    for copy_first in [false, true] {
        let mut original = Replica::new(ReplicaId(1), ReplicaConfig::default());
        let mut disk = MemoryStore::new();
        original
            .put(
                Timestamp::from_unix_ms(NOW),
                "todos",
                "a",
                [("title", "first")],
            )
            .expect("put");
        original
            .put(
                Timestamp::from_unix_ms(NOW + 1),
                "todos",
                "b",
                [("title", "unsent at copy time")],
            )
            .expect("put");
        persist(&mut original, &mut disk);
        let mut copy = restore(&disk.clone());
        copy.fork(ReplicaId(2));

        // After the copy: the original renames "b"; the copy writes "c".
        original
            .put(
                Timestamp::from_unix_ms(NOW + 10),
                "todos",
                "b",
                [("title", "renamed later")],
            )
            .expect("put");
        copy.put(
            Timestamp::from_unix_ms(NOW + 5),
            "todos",
            "c",
            [("title", "written on the copy")],
        )
        .expect("put");

        let from_original: Vec<Op> = original.outbox().collect();
        let from_copy: Vec<Op> = copy.outbox().collect();
        // The copy never uses the original's ids.
        assert!(from_copy.iter().all(|op| op.id.replica == ReplicaId(2)));
        assert_eq!(
            from_copy.iter().map(|op| op.id.seq).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "the copy numbers its operations afresh"
        );

        let mut peer = Replica::new(ReplicaId(3), ReplicaConfig::default());
        let (first, second) = if copy_first {
            (&from_copy, &from_original)
        } else {
            (&from_original, &from_copy)
        };
        for op in first.iter().chain(second) {
            peer.apply(Timestamp::from_unix_ms(NOW + 20), op)
                .expect("applies");
        }
        assert_eq!(title(&peer, "a"), Some(Value::from("first")));
        assert_eq!(
            title(&peer, "b"),
            Some(Value::from("renamed later")),
            "the copy's replay of an old write must not win over a later one"
        );
        assert_eq!(title(&peer, "c"), Some(Value::from("written on the copy")));

        // The copy and the original converge with the peer once they see
        // each other's operations.
        for op in &from_copy {
            original
                .apply(Timestamp::from_unix_ms(NOW + 20), op)
                .expect("applies");
        }
        for op in &from_original {
            copy.apply(Timestamp::from_unix_ms(NOW + 20), op)
                .expect("applies");
        }
        for replica in [&original, &copy] {
            for id in ["a", "b", "c"] {
                assert_eq!(title(replica, id), title(&peer, id), "document {id}");
            }
        }
    }
}

/// The fork is stored: the copy reopens as the new replica with its
/// re-queued outbox, and reopening does not fork again by itself.
#[test]
fn a_fork_survives_reopening() {
    let mut original = Replica::new(ReplicaId(1), ReplicaConfig::default());
    let mut disk = MemoryStore::new();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        original
            .put(
                Timestamp::from_unix_ms(NOW + i as u64),
                "todos",
                id,
                [("title", id)],
            )
            .expect("put");
    }
    persist(&mut original, &mut disk);
    // The original's first write was acknowledged before the copy.
    original.acknowledge(1);
    persist(&mut original, &mut disk);

    let mut copy_disk = disk.clone();
    let mut copy = restore(&copy_disk);
    copy.fork(ReplicaId(9));
    persist(&mut copy, &mut copy_disk);
    let reopened = restore(&copy_disk);
    assert_eq!(reopened.id(), ReplicaId(9));
    assert_eq!(reopened.next_seq(), 3);
    let pending: Vec<Op> = reopened.outbox().collect();
    assert_eq!(
        pending
            .iter()
            .map(|op| (op.id.replica, op.id.seq))
            .collect::<Vec<_>>(),
        vec![(ReplicaId(9), 1), (ReplicaId(9), 2)],
        "exactly the two unacknowledged writes, renumbered"
    );
    let original_pending: Vec<Op> = original.outbox().collect();
    for (forked, was) in pending.iter().zip(&original_pending) {
        assert_eq!(forked.hlc, was.hlc);
        assert_eq!(forked.change, was.change);
    }
    // The original's disk is untouched by the copy's.
    assert_eq!(restore(&disk).id(), ReplicaId(1));
}

/// One step of [`the_stored_outbox_is_the_replicas_after_any_steps`].
#[derive(Clone, Debug)]
enum Step {
    /// A put to one of a few documents.
    Put(u8),
    /// A transaction of that many puts.
    Transaction(u8),
    /// An acknowledgement through the outbox operation at this index
    /// (modulo its length), written or not.
    Acknowledge(u8),
    /// A fork to a fresh id: the numbering restarts at 1.
    Fork,
    /// A persist batch taken and queued, not written yet (a host with a
    /// store write in flight).
    Take,
    /// The queued batches written: merged into one (`PersistBatch::extend_all`,
    /// as the host merges them) or one by one.
    Write { merged: bool },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => any::<u8>().prop_map(Step::Put),
        2 => (1u8..6).prop_map(Step::Transaction),
        3 => any::<u8>().prop_map(Step::Acknowledge),
        1 => Just(Step::Fork),
        3 => Just(Step::Take),
        2 => any::<bool>().prop_map(|merged| Step::Write { merged }),
    ]
}

/// Writes the queued batches and empties the queue.
fn write_queued(queued: &mut Vec<sync_core::PersistBatch>, disk: &mut MemoryStore, merged: bool) {
    if merged {
        let mut all = sync_core::PersistBatch::default();
        all.extend_all(std::mem::take(queued));
        disk.write(&all).expect("write");
    } else {
        for batch in queued.drain(..) {
            disk.write(&batch).expect("write");
        }
    }
}

proptest::proptest! {
    /// Acknowledgements remove outbox records by range and a fork stores
    /// new records under the numbers just removed: whatever the mix of
    /// writes, acknowledgements, forks and batches queued, merged or
    /// written one by one, the store ends up holding the replica's own
    /// outbox and documents (the oracle is the replica in memory, which
    /// never reads the store).
    #[test]
    fn the_stored_outbox_is_the_replicas_after_any_steps(
        steps in proptest::collection::vec(step(), 1..40),
        merged in proptest::bool::ANY,
    ) {
        let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
        let mut disk = MemoryStore::new();
        let mut queued = Vec::new();
        let mut next_id = 2;
        let mut now = NOW;
        for step in steps {
            now += 1;
            let at = Timestamp::from_unix_ms(now);
            match step {
                Step::Put(i) => {
                    let id = format!("d{}", i % 7);
                    replica.put(at, "todos", &id, [("title", Value::Int(i.into()))]).expect("put");
                }
                Step::Transaction(n) => {
                    replica
                        .transaction(at, |tx| {
                            for k in 0..n {
                                tx.put("todos", &format!("d{k}"), [("n", Value::Int(k.into()))])?;
                            }
                            Ok::<_, sync_core::WriteError>(())
                        })
                        .expect("transaction");
                }
                Step::Acknowledge(i) => {
                    let seqs: Vec<u64> = replica.outbox().map(|op| op.id.seq).collect();
                    if !seqs.is_empty() {
                        replica.acknowledge(seqs[usize::from(i) % seqs.len()]);
                    }
                }
                Step::Fork => {
                    replica.fork(ReplicaId(next_id));
                    next_id += 1;
                }
                Step::Take => queued.extend(replica.take_persist()),
                Step::Write { merged } => {
                    queued.extend(replica.take_persist());
                    write_queued(&mut queued, &mut disk, merged);
                }
            }
        }
        queued.extend(replica.take_persist());
        write_queued(&mut queued, &mut disk, merged);
        let restored = restore(&disk);
        proptest::prop_assert_eq!(restored.id(), replica.id());
        let stored: Vec<Op> = restored.outbox().collect();
        let expected: Vec<Op> = replica.outbox().collect();
        proptest::prop_assert_eq!(stored, expected);
        for i in 0..7 {
            let id = format!("d{i}");
            proptest::prop_assert_eq!(
                restored.get("todos", &id).map(|d| d.fields.clone()),
                replica.get("todos", &id).map(|d| d.fields.clone())
            );
        }
    }
}
