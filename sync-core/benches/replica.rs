//! Throughput of sync-core's replica: local writes, applying remote
//! operations, snapshot encode/decode and restore from stored records.
//!
//! Every throughput is counted in *field* operations (`Throughput::Elements`),
//! so a ten-field put counts ten. Run with `cargo bench -p sync-core`; the
//! results and the targets they are measured against live in
//! `docs/BENCHMARKS.md`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

use std::cell::OnceCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sync_core::store::Record;
use sync_core::{Replica, ReplicaConfig, Snapshot, Value, WriteError};

mod common;
use common::{
    ACK_EVERY, COLLECTION, Docs, FIELD_NAMES, ack_all, apply_all, apply_all_owned, drain_events,
    load, new_replica, now_for, records_of, remote_ops,
};

/// Documents the write benchmarks cycle through.
const WRITE_DOCS: usize = 1_000;
/// Passes over `WRITE_DOCS` documents in the remote-apply benchmark.
const APPLY_ROUNDS: usize = 10;
/// Documents in the snapshot and restore benchmarks (ten fields each).
const BIG_DOCS: usize = 100_000;

/// `Replica::put` of 1 or 10 fields into 1,000 documents round-robin, with
/// and without taking the persist batch after every write. Events are
/// drained after every write and the outbox acknowledged every
/// `ACK_EVERY` writes in both variants, as a host would.
fn local_write(c: &mut Criterion) {
    let docs = Docs::new(WRITE_DOCS, 0);
    let mut group = c.benchmark_group("local_write");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for fields in [1usize, 10] {
        group.throughput(Throughput::Elements(fields as u64));
        for drain in [false, true] {
            let variant = if drain {
                "take_persist_every_write"
            } else {
                "no_persist"
            };
            let id = BenchmarkId::new(format!("{fields}_field_put"), variant);
            group.bench_function(id, |b| {
                let mut replica = new_replica(1);
                let mut i = 0usize;
                b.iter(|| {
                    let doc = i % WRITE_DOCS;
                    let slots = &docs.fields[doc];
                    let now = now_for(i);
                    let id = &docs.ids[doc];
                    let written = if fields == 1 {
                        // Cycle through the ten fields (and so value kinds).
                        let slot = &slots[(i / WRITE_DOCS) % slots.len()];
                        replica.put(now, COLLECTION, id, [slot.clone()])
                    } else {
                        replica.put(now, COLLECTION, id, slots.iter().cloned())
                    };
                    black_box(written.expect("put"));
                    if drain {
                        black_box(replica.take_persist());
                    }
                    drain_events(&mut replica);
                    i += 1;
                    if i % ACK_EVERY == 0 {
                        ack_all(&mut replica);
                    }
                });
            });
        }
    }
    group.finish();
}

/// Operations made on one replica (ten fields per put, 10 passes over 1,000
/// documents) applied on a fresh replica, with a persist batch taken every
/// 1,000 operations: by reference (`Replica::apply`) and by value
/// (`Replica::apply_owned`).
fn remote_apply(c: &mut Criterion) {
    let ops = remote_ops(WRITE_DOCS, APPLY_ROUNDS);
    let field_ops = ops.len() * 10;
    let mut group = c.benchmark_group("remote_apply");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(field_ops as u64));
    let name = format!("{}_ops_over_{WRITE_DOCS}_docs", ops.len());
    group.bench_function(BenchmarkId::new("10_field_ops_by_ref", &name), |b| {
        b.iter_batched(
            || new_replica(1),
            |mut replica| {
                apply_all(&mut replica, &ops);
                replica
            },
            BatchSize::PerIteration,
        );
    });
    // `Replica::apply_owned` moves the values in instead of cloning them.
    group.bench_function(BenchmarkId::new("10_field_ops_owned", &name), |b| {
        b.iter_batched(
            || (new_replica(1), ops.clone()),
            |(mut replica, ops)| {
                apply_all_owned(&mut replica, ops);
                replica
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// The fixture of the snapshot and restore benchmarks: a replica holding
/// 100,000 documents of ten fields, its snapshot and its store records.
struct Big {
    replica: Replica,
    snapshot: Vec<u8>,
    /// The store as written: a checkpoint (one batch of 100k documents
    /// makes one) and the other records.
    records: Vec<Record>,
    /// The store as written with checkpoints off: one record per document.
    records_only: Vec<Record>,
}

impl Big {
    /// Builds the fixture and prints its sizes.
    fn new() -> Big {
        let docs = Docs::new(BIG_DOCS, 0);
        let mut replica = new_replica(1);
        let records = records_of(&load(&mut replica, &docs));
        let mut records_only_replica = Replica::new(
            replica.id(),
            ReplicaConfig::default().with_checkpoint_min_records(usize::MAX),
        );
        let records_only = records_of(&load(&mut records_only_replica, &docs));
        let snapshot = replica.encode_snapshot();
        let decoded = Snapshot::decode(&snapshot).expect("snapshot decodes");
        assert!(decoded.state == *replica.state(), "snapshot round trip");
        let fields = (BIG_DOCS * 10) as f64;
        let store_bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
        println!(
            "sizes: value payload {:.1} B/field; snapshot of {BIG_DOCS} docs x 10 fields = {} \
             bytes ({:.1} B/field); store records = {} records, {} bytes ({:.1} B/field)",
            docs.payload_bytes() as f64 / fields,
            snapshot.len(),
            snapshot.len() as f64 / fields,
            records.len(),
            store_bytes,
            store_bytes as f64 / fields,
        );
        Big {
            replica,
            snapshot,
            records,
            records_only,
        }
    }
}

/// Snapshot encode and decode of 100,000 documents of ten fields, and
/// restore from the records a `MemoryStore` holds for the same state: its
/// checkpoint, or (checkpoints off) one record per document.
fn snapshot_and_restore(c: &mut Criterion) {
    // Built on first use, so a filtered run that skips these pays nothing.
    let big = OnceCell::new();
    let mut group = c.benchmark_group("snapshot");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements((BIG_DOCS * 10) as u64));
    group.bench_function("encode_100k_docs_x10", |b| {
        let replica = &big.get_or_init(Big::new).replica;
        b.iter(|| black_box(replica.encode_snapshot()));
    });
    group.bench_function("decode_100k_docs_x10", |b| {
        let bytes = &big.get_or_init(Big::new).snapshot;
        // The decoded state is dropped outside the timed section.
        b.iter_with_large_drop(|| Snapshot::decode(black_box(bytes)).expect("decode"));
    });
    group.bench_function("restore_100k_docs_x10_records_only", |b| {
        let records = &big.get_or_init(Big::new).records_only;
        b.iter_batched(
            || records.clone(),
            |records| {
                Replica::restore(ReplicaConfig::default(), records)
                    .expect("restore")
                    .expect("stored")
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("restore_100k_docs_x10", |b| {
        let records = &big.get_or_init(Big::new).records;
        b.iter_batched(
            || records.clone(),
            |records| {
                Replica::restore(ReplicaConfig::default(), records)
                    .expect("restore")
                    .expect("stored")
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Writes in one transaction (`Replica::transaction`, one persist batch
/// taken at the end, events drained) against the same writes made one by
/// one (also with one persist batch at the end): 100,000 one-field puts
/// round-robin over 1,000 documents with 100 field names, as the peer
/// comparison's batched writes, and 10,000 ten-field puts.
fn transaction(c: &mut Criterion) {
    const WRITES: usize = 100_000;
    let ids: Vec<String> = (0..WRITE_DOCS).map(common::doc_id).collect();
    let names: Vec<String> = (0..WRITES / WRITE_DOCS).map(|f| format!("f{f}")).collect();
    let docs = Docs::new(WRITES / 10, 0);
    let mut group = c.benchmark_group("transaction");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(WRITES as u64));
    let one_field = |i: usize| {
        let (d, f) = (i % WRITE_DOCS, i / WRITE_DOCS);
        (&ids[d], [(names[f].as_str(), Value::Int(i as i64))])
    };
    group.bench_function("1_field_puts_100k/transaction", |b| {
        b.iter_batched(
            || new_replica(1),
            |mut replica| {
                replica
                    .transaction(now_for(0), |tx| {
                        for i in 0..WRITES {
                            let (id, fields) = one_field(i);
                            tx.put(COLLECTION, id, fields)?;
                        }
                        Ok::<_, WriteError>(())
                    })
                    .expect("transaction");
                black_box(replica.take_persist());
                drain_events(&mut replica);
                replica
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("1_field_puts_100k/one_by_one", |b| {
        b.iter_batched(
            || new_replica(1),
            |mut replica| {
                for i in 0..WRITES {
                    let (id, fields) = one_field(i);
                    replica
                        .put(now_for(0), COLLECTION, id, fields)
                        .expect("put");
                }
                black_box(replica.take_persist());
                drain_events(&mut replica);
                replica
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("10_field_puts_10k/transaction", |b| {
        b.iter_batched(
            || new_replica(1),
            |mut replica| {
                replica
                    .transaction(now_for(0), |tx| {
                        for (id, fields) in docs.ids.iter().zip(&docs.fields) {
                            tx.put(COLLECTION, id, fields.iter().cloned())?;
                        }
                        Ok::<_, WriteError>(())
                    })
                    .expect("transaction");
                black_box(replica.take_persist());
                drain_events(&mut replica);
                replica
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Reading every field of 100,000 documents of ten fields (1M fields) from
/// a live replica: the borrowed API scanning the collection
/// (`documents` then `fields`), the same scan reading each field by name
/// (`DocumentRef::get`), one `get_field` call per field (a lookup of the
/// document each time), and the copying `get` per document it replaces.
fn reads(c: &mut Criterion) {
    let big = OnceCell::new();
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements((BIG_DOCS * 10) as u64));
    group.bench_function("scan_fields_1M", |b| {
        let replica = &big.get_or_init(Big::new).replica;
        b.iter(|| {
            let mut n = 0usize;
            for doc in replica.documents(COLLECTION) {
                for (name, value) in doc.fields() {
                    black_box((name, value));
                    n += 1;
                }
            }
            assert_eq!(n, BIG_DOCS * 10);
        });
    });
    group.bench_function("scan_get_by_name_1M", |b| {
        let replica = &big.get_or_init(Big::new).replica;
        b.iter(|| {
            for doc in replica.documents(COLLECTION) {
                for name in FIELD_NAMES {
                    black_box(doc.get(name).expect("field"));
                }
            }
        });
    });
    group.bench_function("get_field_1M", |b| {
        let replica = &big.get_or_init(Big::new).replica;
        let ids: Vec<String> = (0..BIG_DOCS).map(common::doc_id).collect();
        b.iter(|| {
            for id in &ids {
                for name in FIELD_NAMES {
                    black_box(replica.get_field(COLLECTION, id, name).expect("field"));
                }
            }
        });
    });
    group.bench_function("get_cloned_1M", |b| {
        let replica = &big.get_or_init(Big::new).replica;
        b.iter(|| {
            for id in replica.state().ids(COLLECTION) {
                let doc = replica.get(COLLECTION, id).expect("document");
                for value in doc.fields.values() {
                    black_box(value);
                }
            }
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    local_write,
    remote_apply,
    snapshot_and_restore,
    transaction,
    reads
);
criterion_main!(benches);
