//! Fixed, deterministic workloads for comparing sync-core builds by the
//! instructions they execute (valgrind's callgrind), which, unlike time,
//! do not depend on what else the machine is doing.
//!
//! ```sh
//! cd benches/callgrind && cargo build --release --locked
//! ./run.sh                      # every workload: Ir in total and per unit
//! ./run.sh compare-1 put-1      # some of them
//! ```
//!
//! Only the part inside [`timed`] is counted (`--toggle-collect`). The
//! workloads mirror `benches/compare` (Concord's side: 100 one-field writes
//! per document, alone or in one transaction, the mixed writes of workload
//! 7, the merge and the incremental sync) and
//! `sync-core/benches/replica.rs` (ten-field documents), with a fixed clock.

use std::hint::black_box;

use sync_core::protocol::{self, Message};
use sync_core::store::{MemoryStore, Record, Store};
use sync_core::{
    Change, Hlc, Op, OpId, Replica, ReplicaConfig, ReplicaId, Snapshot, Timestamp, Value,
    WriteError,
};

/// Runs the counted part of a workload.
#[inline(never)]
fn timed<T>(f: impl FnOnce() -> T) -> T {
    f()
}

const T0: u64 = 1_700_000_000_000;

/// The host's clock for the `i`th write: about a thousand per millisecond.
fn now_for(i: usize) -> Timestamp {
    Timestamp::from_unix_ms(T0 + (i / 1_000) as u64)
}

fn replica(id: u64) -> Replica {
    Replica::new(ReplicaId(id), ReplicaConfig::default())
}

fn drain_events(r: &mut Replica) {
    while let Some(event) = r.poll_event() {
        black_box(event);
    }
}

fn ack_all(r: &mut Replica) {
    let last = r.next_seq() - 1;
    r.acknowledge(last);
}

// ---- benches/compare's workloads ------------------------------------------

/// Ids `doc0000`… and field names `f0`…, as benches/compare formats them.
struct Names {
    docs: Vec<String>,
    fields: Vec<String>,
}

impl Names {
    fn new() -> Names {
        Names {
            docs: (0..1_000).map(|d| format!("doc{d:04}")).collect(),
            fields: (0..1_000).map(|f| format!("f{f}")).collect(),
        }
    }

    /// Write `i`: documents round-robin, then the next field.
    fn write(&self, r: &mut Replica, i: usize, value: i64, now: Timestamp) {
        let (doc, field) = (&self.docs[i % 1_000], self.fields[i / 1_000].as_str());
        r.put(now, "docs", doc, [(field, Value::Int(value))])
            .expect("put");
        drain_events(r);
    }
}

/// One `Deliver` frame of `ops`, decoded and applied, as benches/compare does.
fn transfer(ops: &[Op], to: &mut Replica, now: Timestamp) -> usize {
    let encoded: Vec<Vec<u8>> = ops.iter().map(protocol::encode_op).collect();
    let frame = protocol::encode_deliver(0, ops.len() as u64, encoded.iter().map(Vec::as_slice));
    let Ok(Message::Deliver { ops, .. }) = protocol::decode(&frame, usize::MAX) else {
        panic!("deliver frame does not decode");
    };
    for op in ops {
        to.apply_owned(now, op).expect("apply");
    }
    drain_events(to);
    frame.len()
}

/// Workload 1: 100,000 one-field writes over 1,000 documents.
fn compare_1(names: &Names) {
    let r = timed(|| {
        let mut r = replica(1);
        for i in 0..100_000 {
            names.write(&mut r, i, i as i64, now_for(i));
        }
        r
    });
    black_box(r);
}

/// Workload 1b: workload 1's writes in one transaction, as benches/compare
/// makes them.
fn compare_1b(names: &Names) {
    let r = timed(|| {
        let mut r = replica(1);
        r.transaction(now_for(0), |tx| {
            for i in 0..100_000 {
                let (doc, field) = (&names.docs[i % 1_000], names.fields[i / 1_000].as_str());
                tx.put("docs", doc, [(field, Value::Int(i as i64))])?;
            }
            Ok::<_, WriteError>(())
        })
        .expect("transaction");
        drain_events(&mut r);
        r
    });
    black_box(r);
}

/// Labels of workload 7, as benches/compare writes them.
const LABELS: [&str; 8] = [
    "open", "done", "blocked", "review", "draft", "shipped", "archived", "urgent",
];

/// Workload 7: 100,000 writes over 1,000 documents × 25 fields (each
/// overwritten 4 times), of mixed types, one put each, as benches/compare
/// makes them.
fn compare_7(names: &Names) {
    let r = timed(|| {
        let mut r = replica(1);
        for i in 0..100_000 {
            let (d, f) = (i % 1_000, (i / 1_000) % 25);
            let value = match f % 4 {
                0 => Value::Int(i as i64),
                1 => Value::from(LABELS[i % LABELS.len()]),
                2 => Value::Float(i as f64 * 0.25),
                _ => Value::Bool(i % 3 == 0),
            };
            let field = names.fields[f].as_str();
            r.put(now_for(i), "docs", &names.docs[d], [(field, value)])
                .expect("put");
            drain_events(&mut r);
        }
        r
    });
    black_box(r);
}

/// Workload 2: 2 × 50,000 concurrent writes, exchanged both ways.
fn compare_2(names: &Names) {
    let (mut a, mut b) = (replica(1), replica(2));
    for i in 0..50_000 {
        names.write(&mut a, i, i as i64, now_for(i));
        names.write(&mut b, i, -(i as i64), now_for(i));
    }
    let from_a: Vec<Op> = a.outbox().collect();
    let from_b: Vec<Op> = b.outbox().collect();
    timed(|| {
        transfer(&from_a, &mut b, now_for(60_000));
        transfer(&from_b, &mut a, now_for(60_000));
    });
    assert!(a.state() == b.state());
}

/// Workload 5: a replica in sync with workload 1's state (from a snapshot)
/// receives 1,000 more writes. With `consolidate`, one large allocation
/// before the counted part lets glibc consolidate the chunks the setup freed
/// (acknowledging 100,000 operations); otherwise the first large allocation
/// inside it does, as in benches/compare.
fn compare_5(names: &Names, consolidate: bool) {
    let mut a = replica(1);
    for i in 0..100_000 {
        names.write(&mut a, i, i as i64, now_for(i));
    }
    let mut b = replica(2);
    let snapshot = Snapshot::decode(&a.encode_snapshot()).expect("snapshot");
    b.reset_to_snapshot(now_for(100_000), snapshot)
        .expect("reset");
    ack_all(&mut a);
    for i in 0..1_000 {
        names.write(&mut a, i, 1_000_000 + i as i64, now_for(100_000 + i));
    }
    if consolidate {
        drop(black_box(vec![0u8; 64 << 10]));
    }
    let bytes = timed(|| {
        let pending: Vec<Op> = a.outbox().collect();
        let delivered = transfer(&pending, &mut b, now_for(102_000));
        let cursor = pending.len() as u64;
        delivered + protocol::encode(&Message::Applied { cursor, frames: 1 }).len()
    });
    black_box(bytes);
    assert!(a.state() == b.state());
}

// ---- sync-core/benches/replica.rs's workloads ----------------------------

// The documents of sync-core's own benchmarks (`sync-core/benches/common`),
// so instruction counts here and times there measure the same workload.
#[path = "../../../sync-core/benches/common/mod.rs"]
#[allow(dead_code)]
mod common;
use common::{FIELD_NAMES, doc_id, field_value};

type Fields = [(&'static str, Value); 10];

/// Ten-field documents `task-000000`…
fn docs(count: usize, round: usize) -> Vec<(String, Fields)> {
    (0..count)
        .map(|d| {
            let fields = std::array::from_fn(|f| (FIELD_NAMES[f], field_value(d, f, round)));
            (doc_id(d), fields)
        })
        .collect()
}

/// A replica with a random-looking full-width id, as hosts pick them.
fn wide_replica(n: u64) -> Replica {
    replica(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63)
}

/// Write `i` of the local-write benchmark: 1 field (cycling through the
/// ten) or all ten, into 1,000 documents round-robin.
fn put_step(r: &mut Replica, docs: &[(String, Fields)], i: usize, ten: bool, durable: bool) {
    let (id, fields) = &docs[i % 1_000];
    let written = if ten {
        r.put(now_for(i), "tasks", id, fields.iter().cloned())
    } else {
        let field = fields[(i / 1_000) % 10].clone();
        r.put(now_for(i), "tasks", id, [field])
    };
    black_box(written.expect("put"));
    if durable {
        black_box(r.take_persist());
    }
    drain_events(r);
    if (i + 1) % 1_000 == 0 {
        ack_all(r);
    }
}

/// 20,000 puts counted after 10,000 that bring every document to ten fields.
fn put(ten: bool, durable: bool) {
    let docs = docs(1_000, 0);
    let mut r = wide_replica(1);
    for i in 0..10_000 {
        put_step(&mut r, &docs, i, ten, durable);
    }
    timed(|| {
        for i in 10_000..30_000 {
            put_step(&mut r, &docs, i, ten, durable);
        }
    });
}

/// 10 passes of ten-field puts over 1,000 documents, as operations.
fn remote_ops() -> Vec<Op> {
    let mut source = wide_replica(2);
    let mut ops = Vec::new();
    let mut i = 0;
    for round in 0..10 {
        for (id, fields) in docs(1_000, round) {
            source.put(now_for(i), "tasks", &id, fields).expect("put");
            i += 1;
            drain_events(&mut source);
        }
        ops.extend(source.outbox());
        ack_all(&mut source);
        source.take_persist();
    }
    ops
}

/// Applies 10,000 ten-field operations to a fresh replica, one persist
/// batch every 1,000.
fn apply(owned: bool) {
    let ops = remote_ops();
    let now = now_for(ops.len());
    let mut r = wide_replica(1);
    if owned {
        timed(|| {
            let mut ops = ops.into_iter().peekable();
            while ops.peek().is_some() {
                for op in ops.by_ref().take(1_000) {
                    r.apply_owned(now, op).expect("apply");
                    drain_events(&mut r);
                }
                black_box(r.take_persist());
            }
        });
    } else {
        timed(|| {
            for batch in ops.chunks(1_000) {
                for op in batch {
                    r.apply(now, op).expect("apply");
                    drain_events(&mut r);
                }
                black_box(r.take_persist());
            }
        });
    }
}

/// Restores 10,000 ten-field documents from a `MemoryStore`'s records.
fn restore() {
    let mut r = wide_replica(1);
    for (i, (id, fields)) in docs(10_000, 0).into_iter().enumerate() {
        r.put(now_for(i), "tasks", &id, fields).expect("put");
        drain_events(&mut r);
        if (i + 1) % 1_000 == 0 {
            ack_all(&mut r);
        }
    }
    ack_all(&mut r);
    let mut store = MemoryStore::new();
    store
        .write(&r.take_persist().expect("batch"))
        .expect("write");
    let records: Vec<Record> = store.read_all().expect("read");
    let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
    eprintln!(
        "store records: {bytes} bytes, {:.2} B/field",
        bytes as f64 / 100_000.0
    );
    let back = timed(|| Replica::restore(ReplicaConfig::default(), records).expect("restore"));
    assert!(back.expect("stored").state() == r.state());
}

/// Validates one put of 4,096 distinct fields (the limit).
fn validate_4096() {
    let fields = (0..4_096)
        .map(|i| (format!("field{i:04}"), Some(Value::Int(i))))
        .collect();
    let op = Op {
        id: OpId {
            replica: ReplicaId(1),
            seq: 1,
        },
        hlc: Hlc::ZERO,
        change: Change::Put {
            collection: "c".into(),
            id: "d".into(),
            fields,
        },
    };
    timed(|| op.validate()).expect("valid");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_default();
    let units = match workload.as_str() {
        "compare-1" | "compare-1b" | "compare-2" | "compare-7" => 100_000,
        "compare-5" | "compare-5-consolidated" => 1_000,
        "put-1" | "put-1-durable" | "put-10" | "put-10-durable" => 20_000,
        "apply-by-ref" | "apply-owned" => 10_000,
        "restore" => 100_000,
        "validate-4096" => 1,
        other => panic!("unknown workload {other:?}"),
    };
    if args.next().as_deref() == Some("--units") {
        println!("{units}");
        return;
    }
    let names = Names::new();
    match workload.as_str() {
        "compare-1" => compare_1(&names),
        "compare-1b" => compare_1b(&names),
        "compare-7" => compare_7(&names),
        "compare-2" => compare_2(&names),
        "compare-5" => compare_5(&names, false),
        "compare-5-consolidated" => compare_5(&names, true),
        "put-1" => put(false, false),
        "put-1-durable" => put(false, true),
        "put-10" => put(true, false),
        "put-10-durable" => put(true, true),
        "apply-by-ref" => apply(false),
        "apply-owned" => apply(true),
        "restore" => restore(),
        _ => validate_4096(),
    }
}
