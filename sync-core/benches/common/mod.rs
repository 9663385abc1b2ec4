//! The workload both benchmarks share: a "tasks" collection whose documents
//! have ten realistic fields (four short strings, two ints, two floats, two
//! bools), plus helpers that drive a replica the way a host does.

use std::hint::black_box;

use sync_core::store::{MemoryStore, Record, Store};
use sync_core::{Op, PersistBatch, Replica, ReplicaConfig, ReplicaId, Timestamp, Value};

/// The collection every benchmark writes to.
pub(crate) const COLLECTION: &str = "tasks";

/// Field names, in the order `field_value` understands.
pub(crate) const FIELD_NAMES: [&str; 10] = [
    "title",
    "owner",
    "status",
    "tag",
    "priority",
    "created_at",
    "estimate",
    "progress",
    "done",
    "pinned",
];

/// A wall clock reading (ms) to start from.
pub(crate) const T0: u64 = 1_700_000_000_000;

/// The relay acknowledges the outbox every this many local writes, so the
/// outbox stays bounded (as it does in production).
pub(crate) const ACK_EVERY: usize = 1_000;

/// Document ids are `task-000042`: 11 bytes.
pub(crate) fn doc_id(doc: usize) -> String {
    format!("task-{doc:06}")
}

/// Value of field `field` of document `doc`, at write round `round`.
pub(crate) fn field_value(doc: usize, field: usize, round: usize) -> Value {
    const STATUS: [&str; 4] = ["todo", "doing", "done", "blocked"];
    const TAGS: [&str; 5] = ["work", "home", "urgent", "later", "errand"];
    let n = doc.wrapping_mul(31).wrapping_add(round);
    match field {
        0 => Value::String(format!("Call back customer {}", n % 10_000)),
        1 => Value::String(format!("user{:03}", n % 997)),
        2 => Value::from(STATUS[n % STATUS.len()]),
        3 => Value::from(TAGS[n % TAGS.len()]),
        4 => Value::Int((n % 5) as i64),
        5 => Value::Int(1_700_000_000_000 + n as i64),
        6 => Value::Float((n % 97) as f64 * 0.25),
        7 => Value::Float((n % 101) as f64 / 100.0),
        8 => Value::Bool(n % 2 == 0),
        _ => Value::Bool(n % 7 == 0),
    }
}

/// Payload bytes of a value as the memory report counts them: string bytes,
/// 8 per number, 1 per bool.
pub(crate) fn payload_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Int(_) | Value::Float(_) => 8,
        Value::Bool(_) => 1,
        other => other.payload_len(),
    }
}

/// Ten-field documents, prebuilt so a benchmark pays only for cloning them
/// into a write (as an app turning its own data into values would).
pub(crate) struct Docs {
    pub(crate) ids: Vec<String>,
    pub(crate) fields: Vec<[(&'static str, Value); 10]>,
}

impl Docs {
    pub(crate) fn new(count: usize, round: usize) -> Docs {
        Docs {
            ids: (0..count).map(doc_id).collect(),
            fields: (0..count)
                .map(|d| std::array::from_fn(|f| (FIELD_NAMES[f], field_value(d, f, round))))
                .collect(),
        }
    }

    /// Total payload bytes of every field of every document.
    pub(crate) fn payload_bytes(&self) -> usize {
        self.fields
            .iter()
            .flat_map(|doc| doc.iter().map(|(_, v)| payload_bytes(v)))
            .sum()
    }
}

/// The wall clock a host would pass for the `i`th operation: about a
/// thousand operations per millisecond.
pub(crate) fn now_for(i: usize) -> Timestamp {
    Timestamp::from_unix_ms(T0 + (i / 1_000) as u64)
}

/// A replica with a random-looking 64-bit id (hosts pick ids at random, so
/// stamps in records and operations carry full-width ids, not tiny ones).
pub(crate) fn new_replica(n: u64) -> Replica {
    let id = ReplicaId(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63);
    Replica::new(id, ReplicaConfig::default())
}

/// Drains and drops every pending event.
pub(crate) fn drain_events(replica: &mut Replica) {
    while let Some(event) = replica.poll_event() {
        black_box(event);
    }
}

/// Acknowledges the whole outbox, as a relay's ack would.
pub(crate) fn ack_all(replica: &mut Replica) {
    let last = replica.next_seq() - 1;
    replica.acknowledge(last);
}

/// Writes every document of `docs` once (all ten fields per put), draining
/// events and acknowledging every [`ACK_EVERY`] writes, and returns the one
/// persist batch that holds the result.
pub(crate) fn load(replica: &mut Replica, docs: &Docs) -> PersistBatch {
    for (i, (id, fields)) in docs.ids.iter().zip(&docs.fields).enumerate() {
        replica
            .put(now_for(i), COLLECTION, id, fields.iter().cloned())
            .expect("put");
        drain_events(replica);
        if (i + 1) % ACK_EVERY == 0 {
            ack_all(replica);
        }
    }
    ack_all(replica);
    replica.take_persist().unwrap_or_default()
}

/// The store records a host would hold after persisting `batch`.
pub(crate) fn records_of(batch: &PersistBatch) -> Vec<Record> {
    let mut store = MemoryStore::new();
    store.write(batch).expect("memory store write");
    store.read_all().expect("memory store read")
}

/// `rounds` passes of ten-field puts over `docs` documents, made on one
/// replica and returned as the operations a relay would forward.
pub(crate) fn remote_ops(doc_count: usize, rounds: usize) -> Vec<Op> {
    let mut source = new_replica(2);
    let mut ops = Vec::with_capacity(doc_count * rounds);
    let mut i = 0;
    for round in 0..rounds {
        let docs = Docs::new(doc_count, round);
        for (id, fields) in docs.ids.iter().zip(docs.fields) {
            source.put(now_for(i), COLLECTION, id, fields).expect("put");
            i += 1;
            drain_events(&mut source);
        }
        ops.extend(source.outbox());
        ack_all(&mut source);
        source.take_persist();
    }
    ops
}

/// Applies `ops` to `replica` as a host receiving batches would: draining
/// events after each, and one persist batch every [`ACK_EVERY`] operations.
pub(crate) fn apply_all(replica: &mut Replica, ops: &[Op]) {
    let now = now_for(ops.len());
    for batch in ops.chunks(ACK_EVERY) {
        for op in batch {
            replica.apply(now, op).expect("apply");
            drain_events(replica);
        }
        black_box(replica.take_persist());
    }
}

/// Like [`apply_all`], but hands each operation over by value
/// (`Replica::apply_owned`), as a host that decoded a batch can.
#[allow(dead_code)] // the memory bench measures the by-reference path only
pub(crate) fn apply_all_owned(replica: &mut Replica, ops: Vec<Op>) {
    let now = now_for(ops.len());
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        for op in ops.by_ref().take(ACK_EVERY) {
            replica.apply_owned(now, op).expect("apply");
            drain_events(replica);
        }
        black_box(replica.take_persist());
    }
}
