//! Protocol benchmarks: the client and room state machines wired together
//! in memory, no sockets, so the figures are the core's own cost.
//!
//! - initial sync of a room holding 100,000 documents × 10 fields to a new
//!   client, from the log and from a compacted snapshot;
//! - resume after 1,000 missed operations;
//! - encoded bytes per operation on the wire.
//!
//! Byte counts are printed once before the timings.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sync_core::Timestamp;
use sync_core::protocol::{self, Message};
use sync_core::room::{CompactionPolicy, Room, RoomConfig, RoomInput, RoomOutput};
use sync_core::session::{Input, Output, Session, SessionConfig};
use sync_core::store::{MemoryStore, Store};
use sync_core::{Replica, ReplicaConfig, ReplicaId, Value};

const NOW: u64 = 1_700_000_000_000;

fn room_config() -> RoomConfig {
    // Never compact on its own: the benchmarks decide.
    RoomConfig::default().with_compaction(CompactionPolicy::default().with_min_ops(u64::MAX))
}

/// Ten fields of the kinds apps store: short strings, numbers, flags.
fn fields(i: u64) -> Vec<(String, Value)> {
    vec![
        ("title".into(), Value::from(format!("Task number {i}"))),
        ("owner".into(), Value::from(format!("user-{}", i % 97))),
        (
            "status".into(),
            Value::from(["open", "doing", "done"][(i % 3) as usize]),
        ),
        ("priority".into(), Value::Int((i % 5) as i64)),
        ("estimate".into(), Value::Float(i as f64 * 0.25)),
        ("done".into(), Value::Bool(i % 2 == 0)),
        ("created".into(), Value::Int(1_700_000_000 + i as i64)),
        ("tag".into(), Value::from(format!("t{}", i % 13))),
        ("score".into(), Value::Float(i as f64 / 7.0)),
        ("note".into(), Value::from("lorem ipsum dolor")),
    ]
}

/// A room holding `docs` documents written by one replica, one put each.
fn populated_room(docs: u64) -> Room {
    let mut writer = Replica::new(ReplicaId(1), ReplicaConfig::default());
    let mut room = Room::new(room_config());
    let hello = hello(ReplicaId(1), 0, 0);
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Join {
            connection: 1,
            hello,
            read_only: false,
        },
    );
    for i in 0..docs {
        writer
            .put(
                Timestamp::from_unix_ms(NOW + i / 1000),
                "tasks",
                &format!("task-{i:06}"),
                fields(i),
            )
            .expect("put");
    }
    let ops: Vec<_> = writer.outbox().collect();
    for batch in ops.chunks(1000) {
        let frame = protocol::encode(&Message::Push {
            ops: batch.to_vec(),
        });
        room.handle(
            Timestamp::from_unix_ms(NOW),
            RoomInput::Frame {
                connection: 1,
                frame: &frame,
            },
        );
        settle(&mut room);
    }
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Leave { connection: 1 },
    );
    settle(&mut room);
    room
}

/// Takes every output of `room`, reporting its persists durable at once.
fn settle(room: &mut Room) {
    while let Some(out) = room.poll() {
        if let RoomOutput::Persist { id, .. } = out {
            room.handle(Timestamp::from_unix_ms(NOW), RoomInput::Persisted(id));
        }
    }
}

fn hello(replica: ReplicaId, cursor: u64, own_seq: u64) -> sync_core::protocol::Hello {
    sync_core::protocol::Hello {
        replica,
        room: "bench".into(),
        token: Vec::new(),
        cursor,
        own_seq,
        settled_seq: own_seq,
        agent: "bench".into(),
        versions: vec![sync_core::protocol::PROTOCOL_VERSION],
        snapshot_formats: vec![1, 2, 3],
    }
}

/// Connects `session` to `room` and pumps frames both ways until nothing
/// moves. Returns the bytes the room sent.
fn sync(room: &mut Room, session: &mut Session, store: &mut MemoryStore, sid: u64) -> usize {
    session.start(Timestamp::from_unix_ms(NOW));
    let mut to_room: Vec<Vec<u8>> = Vec::new();
    let mut to_client: Vec<bytes::Bytes> = Vec::new();
    let mut joined = false;
    let mut bytes = 0;
    loop {
        while let Some(out) = session.poll() {
            match out {
                Output::Connect => session.handle(Timestamp::from_unix_ms(NOW), Input::Connected),
                Output::Transmit(frame) => to_room.push(frame),
                Output::Persist { id, batch } => {
                    store.write(&batch).expect("memory");
                    session.handle(Timestamp::from_unix_ms(NOW), Input::Persisted(id));
                }
                _ => {}
            }
        }
        for frame in to_room.drain(..) {
            if joined {
                room.handle(
                    Timestamp::from_unix_ms(NOW),
                    RoomInput::Frame {
                        connection: sid,
                        frame: &frame,
                    },
                );
            } else if let Ok(Message::Hello(hello)) = protocol::decode(&frame, usize::MAX) {
                joined = true;
                room.handle(
                    Timestamp::from_unix_ms(NOW),
                    RoomInput::Join {
                        connection: sid,
                        hello,
                        read_only: false,
                    },
                );
            }
        }
        while let Some(out) = room.poll() {
            match out {
                RoomOutput::Transmit { frame, .. } => {
                    bytes += frame.len();
                    to_client.push(frame);
                }
                RoomOutput::Persist { id, .. } => {
                    room.handle(Timestamp::from_unix_ms(NOW), RoomInput::Persisted(id))
                }
                _ => {}
            }
        }
        if to_client.is_empty() {
            return bytes;
        }
        for frame in to_client.drain(..) {
            session.handle(Timestamp::from_unix_ms(NOW), Input::Received(&frame));
        }
    }
}

fn new_client(id: u64) -> Session {
    Session::new(
        Replica::new(ReplicaId(id), ReplicaConfig::default()),
        SessionConfig::new("bench", Vec::new()),
        id,
    )
}

fn initial_sync(c: &mut Criterion) {
    const DOCS: u64 = 100_000;
    let log_room = populated_room(DOCS);
    let mut snapshot_room = populated_room(DOCS);
    let job = snapshot_room
        .compact_now(Timestamp::from_unix_ms(NOW))
        .expect("something to compact");
    snapshot_room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Compacted(job.run().expect("compaction")),
    );
    settle(&mut snapshot_room);

    for (name, room) in [("log", &log_room), ("snapshot", &snapshot_room)] {
        let mut room = clone_room(room);
        let mut client = new_client(2);
        let bytes = sync(&mut room, &mut client, &mut MemoryStore::new(), 9);
        assert_eq!(client.replica().state().document_count() as u64, DOCS);
        println!(
            "initial sync from the {name}: {bytes} bytes on the wire ({:.1} bytes per field)",
            bytes as f64 / (DOCS * 10) as f64
        );
    }

    let mut group = c.benchmark_group("initial_sync_100k_docs_x10");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for (name, room) in [("from_log", &log_room), ("from_snapshot", &snapshot_room)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || (clone_room(room), new_client(2), MemoryStore::new()),
                |(mut room, mut client, mut store)| {
                    black_box(sync(&mut room, &mut client, &mut store, 9))
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn clone_room(room: &Room) -> Room {
    room.clone()
}

fn resume(c: &mut Criterion) {
    // A client in sync with a 10,000-op room misses 1,000 ops, then resumes.
    let mut room = populated_room(10_000);
    let mut client = new_client(2);
    let mut store = MemoryStore::new();
    sync(&mut room, &mut client, &mut store, 9);
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Leave { connection: 9 },
    );
    settle(&mut room);
    let mut writer = Replica::new(ReplicaId(3), ReplicaConfig::default());
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Join {
            connection: 5,
            hello: hello(ReplicaId(3), room.head(), 0),
            read_only: false,
        },
    );
    for i in 0..1_000u64 {
        writer
            .put(
                Timestamp::from_unix_ms(NOW),
                "tasks",
                &format!("task-{:06}", i * 7),
                [("status", Value::from("done"))],
            )
            .expect("put");
    }
    let ops: Vec<_> = writer.outbox().collect();
    let push = protocol::encode(&Message::Push { ops: ops.clone() });
    room.handle(
        Timestamp::from_unix_ms(NOW),
        RoomInput::Frame {
            connection: 5,
            frame: &push,
        },
    );
    settle(&mut room);
    let per_op = ops
        .iter()
        .map(|op| protocol::encode_op(op).len())
        .sum::<usize>() as f64
        / ops.len() as f64;
    println!(
        "one-field put on the wire: {per_op:.1} bytes per operation (encoded op inside Push/Deliver)"
    );
    let ten = protocol::encode_op(&{
        let mut r = Replica::new(ReplicaId(0x1234_5678_9abc_def0), ReplicaConfig::default());
        r.put(
            Timestamp::from_unix_ms(NOW),
            "tasks",
            "task-000001",
            fields(1),
        )
        .expect("put");
        r.outbox().next().expect("op")
    });
    println!(
        "ten-field put on the wire: {} bytes per operation",
        ten.len()
    );

    let records = store.read_all().expect("memory");
    let restored = || {
        Session::restore(
            ReplicaConfig::default(),
            SessionConfig::new("bench", Vec::new()),
            2,
            records.clone(),
        )
        .expect("restore")
        .expect("stored")
    };
    let mut probe_room = clone_room(&room);
    let bytes = sync(
        &mut probe_room,
        &mut restored(),
        &mut MemoryStore::new(),
        10,
    );
    println!("resume after 1,000 missed operations: {bytes} bytes on the wire");

    let mut group = c.benchmark_group("resume_after_1000_missed_ops");
    group.sample_size(20);
    group.bench_function("resume", |b| {
        b.iter_batched(
            || (clone_room(&room), restored(), MemoryStore::new()),
            |(mut room, mut client, mut store)| {
                black_box(sync(&mut room, &mut client, &mut store, 10))
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, initial_sync, resume);
criterion_main!(benches);
