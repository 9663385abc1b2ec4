//! Retention: how often the room compacts once it has a snapshot.
//!
//! Every compaction rewrites the whole snapshot, so with
//! `min_fold_percent` the room waits until the entries it would fold are
//! worth the rewrite. Driven on a bare [`Room`]: each round a session of
//! replica 1 joins, pushes one operation and leaves (with no session left,
//! nobody holds compaction back).

use sync_core::Timestamp;
use sync_core::protocol::{self, Hello, Message};
use sync_core::room::{CompactionPolicy, Room, RoomConfig, RoomInput, RoomOutput};
use sync_core::{Change, Hlc, Op, OpId, ReplicaId, Value};

const NOW: u64 = 1_700_000_000_000;

fn room(min_fold_percent: u64) -> Room {
    Room::new(
        RoomConfig::default().with_compaction(
            CompactionPolicy::default()
                .with_min_ops(1)
                .with_keep_recent_ops(0)
                .with_min_fold_percent(min_fold_percent),
        ),
    )
}

/// Replica 1 writes operation `seq` (a put of a document of its own), then
/// leaves. Runs any compaction the room asks for and returns how many.
fn write_one(room: &mut Room, seq: u64) -> usize {
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Join {
            connection: seq,
            hello: Hello {
                replica: ReplicaId(1),
                room: "r".into(),
                token: Vec::new(),
                cursor: room.head(),
                own_seq: seq - 1,
                settled_seq: seq - 1,
                agent: "test".into(),
                versions: vec![sync_core::protocol::PROTOCOL_VERSION],
                snapshot_formats: vec![1, 2, 3],
            },
            read_only: false,
        },
    );
    let op = Op {
        id: OpId {
            replica: ReplicaId(1),
            seq,
        },
        hlc: Hlc::new(NOW, u16::try_from(seq).expect("small")).expect("in range"),
        change: Change::Put {
            collection: "c".into(),
            id: format!("doc-{seq}"),
            fields: vec![("n".into(), Some(Value::Int(seq as i64)))],
        },
    };
    let frame = protocol::encode(&Message::Push { ops: vec![op] });
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Frame {
            connection: seq,
            frame: &frame,
        },
    );
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Leave { connection: seq },
    );
    let mut compactions = 0;
    while let Some(out) = room.poll() {
        match out {
            RoomOutput::Compact(job) => {
                compactions += 1;
                let done = job.run().expect("compaction");
                room.handle(Timestamp::from_unix_ms(NOW), RoomInput::Compacted(done));
            }
            RoomOutput::Persist { id, .. } => {
                room.handle(Timestamp::from_unix_ms(NOW), RoomInput::Persisted(id))
            }
            _ => {}
        }
    }
    compactions
}

#[test]
fn without_the_bound_every_operation_compacts() {
    let mut room = room(0);
    let compactions: usize = (1..=20).map(|seq| write_one(&mut room, seq)).sum();
    assert_eq!(compactions, 20);
}

#[test]
fn with_a_snapshot_the_room_waits_until_the_log_is_worth_rewriting_it() {
    let mut room = room(100);
    // No snapshot yet: the first operation compacts at once.
    assert_eq!(write_one(&mut room, 1), 1);
    let mut rounds_between = Vec::new();
    let mut since = 0;
    for seq in 2..=200 {
        since += 1;
        if write_one(&mut room, seq) > 0 {
            rounds_between.push(since);
            since = 0;
        }
    }
    // The snapshot grows by a document per operation, so each compaction
    // waits for more operations than the one before, never just one.
    assert!(rounds_between.len() >= 2, "{rounds_between:?}");
    assert!(rounds_between.iter().all(|&n| n > 1), "{rounds_between:?}");
    assert!(
        rounds_between.windows(2).all(|w| w[1] >= w[0]),
        "{rounds_between:?}"
    );
    // Nothing is lost: the log plus snapshot still cover every offset.
    assert_eq!(room.head(), 200);
}
