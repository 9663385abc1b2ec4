//! `SqliteStore` durability costs: the latency of one durable write, and
//! durable puts per second with 1 and 8 writer threads (group commit).
//!
//! Every write is one document record (a 100-byte value) in a batch of its
//! own, and every write is durable (fsynced) when it is answered.
//!
//! Besides criterion's timings, the run prints p50/p99 of single-write
//! latency. Short run:
//!
//! ```text
//! cargo bench -p sync-ffi --bench sqlite -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! `CONCORD_BENCH_LATENCY_SAMPLES` sets how many writes the percentiles are
//! taken over (default 500).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use futures::future::LocalBoxFuture;
use sync_client::platform::{ClientStore, StoreError};
use sync_core::persist::{PersistBatch, StoreKey, Write};
use sync_core::store::Store;
use sync_ffi::SqliteStore;

/// A write queued and not yet answered.
type Pending = LocalBoxFuture<'static, Result<(), StoreError>>;

/// Writes each pipelined writer keeps in flight.
const WINDOW: usize = 32;

fn batch(writer: usize, n: u64) -> PersistBatch {
    PersistBatch {
        writes: vec![Write::Put {
            key: StoreKey::Document {
                collection: "todos".into(),
                id: format!("w{writer}-{n}"),
            },
            value: vec![0x5a; 100],
        }],
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(dir.path().join("bench.sqlite3")).unwrap()
}

/// p50/p99 of one durable write with nothing else going on: first on a
/// fresh file, whose WAL grows with every commit (each fsync also commits
/// file-size metadata), then once the WAL has been checkpointed and is
/// being rewritten in place, as it is in a database in use.
fn latency_percentiles() {
    let samples: u64 = std::env::var("CONCORD_BENCH_LATENCY_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let measure = |store: &mut SqliteStore, label: &str, from: u64| {
        let mut times: Vec<Duration> = (from..from + samples)
            .map(|n| {
                let batch = batch(0, n);
                let started = Instant::now();
                Store::write(store, &batch).unwrap();
                started.elapsed()
            })
            .collect();
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "sqlite/durable_write latency, {label}, {samples} writes: p50 {:?}, p99 {:?}, max {:?}",
            at(0.50),
            at(0.99),
            at(1.0)
        );
    };
    measure(&mut store, "fresh file", 0);
    // SQLite checkpoints the WAL every 1000 pages; after that it rewrites
    // the WAL from its start.
    measure(&mut store, "warming up", samples);
    let mut n = 2 * samples;
    while n < 3000 {
        Store::write(&mut store, &batch(1, n)).unwrap();
        n += 1;
    }
    measure(&mut store, "steady state", n);
}

/// `threads` writers each making `per_thread` blocking durable writes.
fn blocking_writers(store: &SqliteStore, threads: usize, per_thread: u64) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let mut store = store.clone();
            s.spawn(move || {
                for n in 0..per_thread {
                    Store::write(&mut store, &batch(t, n)).unwrap();
                }
            });
        }
    });
    started.elapsed()
}

/// `threads` writers each keeping `WINDOW` asynchronous durable writes in
/// flight, awaiting them in order.
fn pipelined_writers(store: &SqliteStore, threads: usize, per_thread: u64) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = store.clone();
            s.spawn(move || {
                futures::executor::block_on(async {
                    let mut in_flight: VecDeque<Pending> = VecDeque::with_capacity(WINDOW);
                    for n in 0..per_thread {
                        if in_flight.len() == WINDOW {
                            in_flight.pop_front().unwrap().await.unwrap();
                        }
                        in_flight.push_back(ClientStore::write(&store, batch(t, n)));
                    }
                    for write in in_flight {
                        write.await.unwrap();
                    }
                });
            });
        }
    });
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    latency_percentiles();

    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let mut group = c.benchmark_group("sqlite");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    let mut n = 0;
    group.bench_function("durable_write", |b| {
        b.iter(|| {
            n += 1;
            Store::write(&mut store, &batch(0, n)).unwrap();
        });
    });
    for threads in [1usize, 8] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("durable_puts/{threads}_writers"), |b| {
            b.iter_custom(|iters| blocking_writers(&store, threads, iters));
        });
    }
    group.throughput(Throughput::Elements(8));
    group.bench_function(format!("durable_puts/8_writers_{WINDOW}_in_flight"), |b| {
        b.iter_custom(|iters| pipelined_writers(&store, 8, iters));
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
