//! Memory per stored field: loads 1,000,000 fields (100,000 documents × 10)
//! into a replica along each path a replica gets its state (local puts,
//! remote operations, restore from stored records, snapshot decode) and
//! prints live heap bytes per field, value payload bytes per field and the
//! overhead between them.
//!
//! A counting global allocator (the `counting-alloc` dev-dependency, which
//! wraps `std::alloc::System`) measures the bytes the program requested. Run
//! with `cargo bench -p sync-core --bench memory`; results are recorded in
//! `docs/BENCHMARKS.md`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

use std::hint::black_box;
use std::mem::size_of;

use counting_alloc::{Counting, Stats, reset_peak, stats};
use sync_core::{Replica, ReplicaConfig, Snapshot, Stamp, Timestamp, Value};

mod common;
use common::{Docs, apply_all, load, new_replica, records_of, remote_ops};

#[global_allocator]
static ALLOC: Counting = Counting;

const DOCS: usize = 100_000;
const FIELDS: usize = DOCS * 10;
/// Overhead per stored field the issue aims for, in bytes.
const TARGET_OVERHEAD: f64 = 64.0;

/// One measurement: what a freshly built structure holds live.
struct Report {
    path: &'static str,
    heap: usize,
    allocs: usize,
    chunk_bytes: usize,
    peak: usize,
}

/// Measures what `build` leaves alive, relative to before it ran, and drops
/// it afterwards. `build` must free its temporaries before returning.
fn measure<T>(path: &'static str, build: impl FnOnce() -> T) -> Report {
    let before = stats();
    reset_peak();
    let built = build();
    let after = stats();
    let report = diff(path, before, after);
    drop(black_box(built));
    report
}

fn diff(path: &'static str, before: Stats, after: Stats) -> Report {
    Report {
        path,
        heap: after.live_bytes.saturating_sub(before.live_bytes),
        allocs: after.live_allocs.saturating_sub(before.live_allocs),
        chunk_bytes: after
            .live_chunk_bytes
            .saturating_sub(before.live_chunk_bytes),
        peak: after.peak_bytes.saturating_sub(before.live_bytes),
    }
}

fn print(report: &Report, payload_per_field: f64) {
    let per = |n: usize| n as f64 / FIELDS as f64;
    let heap = per(report.heap);
    let overhead = heap - payload_per_field;
    let verdict = if overhead <= TARGET_OVERHEAD {
        "PASS"
    } else {
        "MISS"
    };
    println!(
        "memory[{}]: {FIELDS} fields: heap {heap:.1} B/field, payload {payload_per_field:.1} B/field, \
         overhead {overhead:.1} B/field (target <= {TARGET_OVERHEAD:.0}: {verdict}); \
         {:.2} allocations/field, est. malloc footprint {:.1} B/field, peak while building {:.1} B/field",
        report.path,
        per(report.allocs),
        per(report.chunk_bytes),
        per(report.peak),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then a smoke run stays quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory: skipped (run it with `cargo bench -p sync-core --bench memory`)");
        return;
    }
    let docs = Docs::new(DOCS, 0);
    let payload = docs.payload_bytes() as f64 / FIELDS as f64;
    println!(
        "memory: sizes: Value {} B, Option<Value> {} B, Stamp {} B, (Stamp, Option<Value>, u32) {} B",
        size_of::<Value>(),
        size_of::<Option<Value>>(),
        size_of::<Stamp>(),
        size_of::<(Stamp, Option<Value>, u32)>(),
    );

    // Local puts: the replica an app builds by writing. The outbox is
    // acknowledged, events drained and the persist batch dropped, so what
    // is left is the merged state (plus a tiny version vector).
    let put = measure("local put", || {
        let mut replica = new_replica(1);
        drop(load(&mut replica, &docs));
        replica
    });
    print(&put, payload);

    // Restore from the records a store holds: the replica an app gets on start.
    let records = {
        let mut replica = new_replica(1);
        records_of(&load(&mut replica, &docs))
    };
    let restore = measure("restore", || {
        Replica::restore(ReplicaConfig::default(), records.clone())
            .expect("restore")
            .expect("stored")
    });
    print(&restore, payload);
    drop(records);

    // Snapshot decode: the state a client receives after compaction.
    let bytes = {
        let mut replica = new_replica(1);
        load(&mut replica, &docs);
        replica.encode_snapshot()
    };
    let decode = measure("snapshot decode", || {
        Snapshot::decode(&bytes).expect("decode")
    });
    print(&decode, payload);
    drop(bytes);

    // Remote operations: one ten-field put per document, applied with a
    // persist batch every 1,000 operations.
    let ops = remote_ops(DOCS, 1);
    let apply = measure("remote apply", || {
        let mut replica = new_replica(1);
        apply_all(&mut replica, &ops);
        replica
    });
    print(&apply, payload);

    // The peer comparison's memory workload: 1,000 documents of 1,000
    // integer fields, one put per document, each batch persisted; with the
    // outbox acknowledged after every put (steady state with a relay) and
    // never (offline, or before the relay answers), where the outbox holds
    // every operation.
    let names: Vec<String> = (0..1_000).map(|f| format!("f{f}")).collect();
    let ids: Vec<String> = (0..1_000).map(|d| format!("doc{d:04}")).collect();
    for acknowledged in [true, false] {
        let report = measure("1k docs x 1k int fields", || {
            let mut replica = new_replica(1);
            for (d, id) in ids.iter().enumerate() {
                let fields = names
                    .iter()
                    .enumerate()
                    .map(|(f, name)| (name.as_str(), Value::Int((d * f) as i64)));
                replica
                    .put(
                        Timestamp::from_unix_ms(common::T0),
                        common::COLLECTION,
                        id,
                        fields,
                    )
                    .expect("put");
                while replica.poll_event().is_some() {}
                drop(replica.take_persist());
                if acknowledged {
                    replica.acknowledge(replica.next_seq() - 1);
                }
            }
            replica
        });
        println!(
            "memory[{}, outbox {}]: 1000000 fields: heap {:.1} MiB ({:.1} B/field), \
             est. malloc footprint {:.1} MiB, {:.2} allocations/field",
            report.path,
            if acknowledged {
                "acknowledged"
            } else {
                "unacknowledged"
            },
            report.heap as f64 / (1 << 20) as f64,
            report.heap as f64 / 1e6,
            report.chunk_bytes as f64 / (1 << 20) as f64,
            report.allocs as f64 / 1e6,
        );
    }
}
