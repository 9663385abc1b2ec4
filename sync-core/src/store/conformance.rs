//! The conformance suite every [`Store`] implementation runs.
//!
//! A store crate implements [`Harness`] (how to open a fresh store and how to
//! close and reopen one) and invokes [`store_conformance_tests!`] in its
//! tests, which expands to one `#[test]` per check below. The checks panic
//! with a message on failure, as tests do.
//!
//! The checks are written against [`OpenStore`], whose methods return
//! futures, so that asynchronous stores (IndexedDB in a browser) run the
//! very same checks through [`run_check`]; synchronous stores go through
//! [`Harness`], whose futures are always ready and are driven here.
//!
//! ```
//! use sync_core::store::{MemoryStore, conformance::Harness};
//!
//! struct Memory;
//! impl Harness for Memory {
//!     type Store = MemoryStore;
//!     fn open_fresh(&mut self) -> MemoryStore { MemoryStore::new() }
//!     fn reopen(&mut self, store: MemoryStore) -> MemoryStore { store.clone() }
//! }
//!
//! sync_core::store::conformance::run_all(&mut Memory);
//! ```
//!
//! [`store_conformance_tests!`]: crate::store_conformance_tests

// A test suite fails by panicking, like the assertions it is built from.
#![allow(clippy::panic)]

use crate::Timestamp;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::{Record, Store};
use crate::persist::{PersistBatch, StoreKey, Write};
use crate::replica::{Replica, ReplicaConfig};
use crate::stamp::ReplicaId;
use crate::value::Value;

/// Opens stores for the suite.
pub trait Harness {
    /// The store under test.
    type Store: Store;
    /// A new, empty store.
    fn open_fresh(&mut self) -> Self::Store;
    /// Closes `store` and opens the same underlying storage again.
    fn reopen(&mut self, store: Self::Store) -> Self::Store;
}

/// What an [`OpenStore`] method returns: a future borrowing the store.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One conformance check.
pub type Check = for<'a> fn(&'a mut dyn OpenStore) -> StoreFuture<'a, ()>;

/// Every check, by name, for [`run_all`], [`run_one`] and the test macro.
pub const CHECKS: &[(&str, Check)] = &[
    ("empty_store_reads_nothing", |s| {
        Box::pin(empty_store_reads_nothing(s))
    }),
    ("batch_writes_are_read_back", |s| {
        Box::pin(batch_writes_are_read_back(s))
    }),
    ("overwrite_and_delete", |s| {
        Box::pin(overwrite_and_delete(s))
    }),
    ("records_come_back_in_key_order", |s| {
        Box::pin(records_come_back_in_key_order(s))
    }),
    ("binary_keys_and_large_values", |s| {
        Box::pin(binary_keys_and_large_values(s))
    }),
    ("writes_survive_reopen", |s| {
        Box::pin(writes_survive_reopen(s))
    }),
    ("replica_round_trips_through_store", |s| {
        Box::pin(replica_round_trips_through_store(s))
    }),
    ("acknowledged_ops_leave_the_store", |s| {
        Box::pin(acknowledged_ops_leave_the_store(s))
    }),
    ("range_deletes_remove_their_keys_only", |s| {
        Box::pin(range_deletes_remove_their_keys_only(s))
    }),
    ("writes_apply_in_batch_order", |s| {
        Box::pin(writes_apply_in_batch_order(s))
    }),
    ("forked_outbox_survives_reopen", |s| {
        Box::pin(forked_outbox_survives_reopen(s))
    }),
];

/// Runs every check against stores from `harness`.
pub fn run_all<H: Harness>(harness: &mut H)
where
    <H::Store as Store>::Error: Debug,
{
    for (name, _) in CHECKS {
        run_one(harness, name);
    }
}

/// Runs the check called `name` against a fresh store from `harness`.
pub fn run_one<H: Harness>(harness: &mut H, name: &str)
where
    <H::Store as Store>::Error: Debug,
{
    let Some((_, check)) = CHECKS.iter().find(|(n, _)| *n == name) else {
        panic!("no conformance check named {name:?}");
    };
    let store = harness.open_fresh();
    let mut open = Open {
        harness,
        store: Some(store),
    };
    // A synchronous store's futures are ready at once: one poll finishes.
    let mut check = check(&mut open);
    match check.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(()) => {}
        Poll::Pending => panic!("a synchronous store's check did not finish"),
    }
}

/// Runs the check called `name` against `store`, a fresh, empty store
/// (for asynchronous stores, which implement [`OpenStore`] themselves).
pub async fn run_check(store: &mut dyn OpenStore, name: &str) {
    let Some((_, check)) = CHECKS.iter().find(|(n, _)| *n == name) else {
        panic!("no conformance check named {name:?}");
    };
    check(store).await;
}

/// Expands to one `#[test]` per conformance check, each run against stores
/// from the harness expression (evaluated afresh for every test).
#[macro_export]
macro_rules! store_conformance_tests {
    ($harness:expr) => {
        $crate::store_conformance_tests!(@each $harness;
            empty_store_reads_nothing, batch_writes_are_read_back, overwrite_and_delete,
            records_come_back_in_key_order, binary_keys_and_large_values, writes_survive_reopen,
            replica_round_trips_through_store, acknowledged_ops_leave_the_store,
            range_deletes_remove_their_keys_only, writes_apply_in_batch_order,
            forked_outbox_survives_reopen);
    };
    (@each $harness:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                $crate::store::conformance::run_one(&mut $harness, stringify!($check));
            }
        )*
    };
}

/// One open store as the checks see it: methods over a trait object,
/// each returning a future (ready at once for synchronous stores).
pub trait OpenStore {
    /// Writes a batch, panicking on error.
    fn write<'a>(&'a mut self, batch: &'a PersistBatch) -> StoreFuture<'a, ()>;
    /// Reads every record, panicking on error.
    fn read_all(&mut self) -> StoreFuture<'_, Vec<Record>>;
    /// Closes and reopens the store.
    fn reopen(&mut self) -> StoreFuture<'_, ()>;
}

struct Open<'h, H: Harness> {
    harness: &'h mut H,
    store: Option<H::Store>,
}

impl<H: Harness> Open<'_, H> {
    fn store(&mut self) -> &mut H::Store {
        let harness = &mut *self.harness;
        self.store.get_or_insert_with(|| harness.open_fresh())
    }
}

impl<H: Harness> OpenStore for Open<'_, H>
where
    <H::Store as Store>::Error: Debug,
{
    fn write<'a>(&'a mut self, batch: &'a PersistBatch) -> StoreFuture<'a, ()> {
        if let Err(e) = self.store().write(batch) {
            panic!("store write failed: {e:?}");
        }
        Box::pin(std::future::ready(()))
    }
    fn read_all(&mut self) -> StoreFuture<'_, Vec<Record>> {
        let records = match self.store().read_all() {
            Ok(records) => records,
            Err(e) => panic!("store read failed: {e:?}"),
        };
        Box::pin(std::future::ready(records))
    }
    fn reopen(&mut self) -> StoreFuture<'_, ()> {
        let store = self
            .store
            .take()
            .unwrap_or_else(|| self.harness.open_fresh());
        self.store = Some(self.harness.reopen(store));
        Box::pin(std::future::ready(()))
    }
}

fn put(key: StoreKey, value: &[u8]) -> Write {
    Write::Put {
        key,
        value: value.to_vec(),
    }
}

fn batch(writes: Vec<Write>) -> PersistBatch {
    PersistBatch { writes }
}

fn doc_key(id: &str) -> StoreKey {
    StoreKey::Document {
        collection: "c".into(),
        id: id.into(),
    }
}

async fn empty_store_reads_nothing(s: &mut dyn OpenStore) {
    assert!(
        s.read_all().await.is_empty(),
        "a fresh store must hold no records"
    );
}

async fn batch_writes_are_read_back(s: &mut dyn OpenStore) {
    s.write(&batch(vec![
        put(StoreKey::Meta, b"m"),
        put(doc_key("a"), b"1"),
        put(StoreKey::Outbox(1), b"o"),
    ]))
    .await;
    let records = s.read_all().await;
    assert_eq!(records.len(), 3, "every write of a batch must be stored");
    assert!(records.contains(&(doc_key("a").to_bytes(), b"1".to_vec())));
}

async fn overwrite_and_delete(s: &mut dyn OpenStore) {
    s.write(&batch(vec![
        put(doc_key("a"), b"1"),
        put(doc_key("b"), b"2"),
    ]))
    .await;
    s.write(&batch(vec![
        put(doc_key("a"), b"3"),
        Write::Delete { key: doc_key("b") },
    ]))
    .await;
    s.write(&batch(vec![Write::Delete {
        key: doc_key("never-written"),
    }]))
    .await;
    assert_eq!(
        s.read_all().await,
        vec![(doc_key("a").to_bytes(), b"3".to_vec())],
        "put replaces, delete removes"
    );
}

async fn records_come_back_in_key_order(s: &mut dyn OpenStore) {
    let keys = [
        StoreKey::Outbox(300),
        StoreKey::Outbox(2),
        StoreKey::Meta,
        doc_key("z"),
        doc_key("a"),
    ];
    s.write(&batch(keys.iter().map(|k| put(k.clone(), b"v")).collect()))
        .await;
    let read: Vec<Vec<u8>> = s.read_all().await.into_iter().map(|(k, _)| k).collect();
    let mut sorted = read.clone();
    sorted.sort();
    assert_eq!(
        read, sorted,
        "read_all must return records in byte order of their keys"
    );
}

async fn binary_keys_and_large_values(s: &mut dyn OpenStore) {
    let id: String = (1..=255u8).map(char::from).collect();
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    s.write(&batch(vec![
        put(doc_key(&id), &big),
        put(doc_key("\u{0}nul"), b""),
    ]))
    .await;
    let records = s.read_all().await;
    assert!(
        records.contains(&(doc_key(&id).to_bytes(), big)),
        "a 4 MiB value with any key bytes must survive"
    );
    assert!(
        records.contains(&(doc_key("\u{0}nul").to_bytes(), Vec::new())),
        "empty values must survive"
    );
}

async fn writes_survive_reopen(s: &mut dyn OpenStore) {
    s.write(&batch(vec![
        put(StoreKey::Meta, b"m"),
        put(doc_key("a"), b"1"),
    ]))
    .await;
    s.write(&batch(vec![
        Write::Delete { key: doc_key("a") },
        put(doc_key("b"), b"2"),
    ]))
    .await;
    s.reopen().await;
    assert_eq!(
        s.read_all().await,
        vec![
            (doc_key("b").to_bytes(), b"2".to_vec()),
            (StoreKey::Meta.to_bytes(), b"m".to_vec())
        ],
        "what was written must be there after reopening"
    );
}

async fn drain(replica: &mut Replica, s: &mut dyn OpenStore) {
    if let Some(batch) = replica.take_persist() {
        s.write(&batch).await;
    }
}

/// Checks a local write succeeded and stores what it produced.
async fn step(r: &mut Replica, s: &mut dyn OpenStore, result: Result<(), crate::WriteError>) {
    assert!(result.is_ok(), "local write failed: {result:?}");
    drain(r, s).await;
}

/// A replica that put `count` one-field documents into collection "c",
/// each stored as it was written.
async fn stored_puts(id: ReplicaId, count: u64, s: &mut dyn OpenStore) -> Replica {
    let mut replica = Replica::new(id, ReplicaConfig::default());
    for i in 0..count {
        let result = replica.put(
            Timestamp::from_unix_ms(1_000 + i),
            "c",
            &format!("d{i}"),
            [("n", Value::Int(i as i64))],
        );
        step(&mut replica, s, result.map(drop)).await;
    }
    replica
}

async fn replica_round_trips_through_store(s: &mut dyn OpenStore) {
    let mut replica = Replica::new(ReplicaId(7), ReplicaConfig::default());
    let now = 1_700_000_000_000;
    let r = replica
        .put(
            Timestamp::from_unix_ms(now),
            "todos",
            "a",
            [("title", Value::from("milk")), ("done", false.into())],
        )
        .map(|_| ());
    step(&mut replica, s, r).await;
    let r = replica
        .put(
            Timestamp::from_unix_ms(now + 1),
            "todos",
            "b",
            [("title", "eggs")],
        )
        .map(|_| ());
    step(&mut replica, s, r).await;
    let r = replica.delete(Timestamp::from_unix_ms(now + 2), "todos", "b");
    step(&mut replica, s, r).await;
    let r = replica.create_collection(Timestamp::from_unix_ms(now + 3), "notes");
    step(&mut replica, s, r).await;
    let r = replica
        .unset(Timestamp::from_unix_ms(now + 4), "todos", "a", ["done"])
        .map(|_| ());
    step(&mut replica, s, r).await;
    s.reopen().await;
    let restored = match Replica::restore(ReplicaConfig::default(), s.read_all().await) {
        Ok(Some(r)) => r,
        other => panic!("restore failed: {other:?}"),
    };
    assert_eq!(restored.state(), replica.state(), "restored state differs");
    assert_eq!(restored.version(), replica.version());
    assert_eq!(restored.next_seq(), replica.next_seq());
    assert_eq!(restored.clock(), replica.clock());
    assert_eq!(
        restored.outbox().collect::<Vec<_>>(),
        replica.outbox().collect::<Vec<_>>()
    );
}

async fn acknowledged_ops_leave_the_store(s: &mut dyn OpenStore) {
    let mut replica = stored_puts(ReplicaId(8), 10, s).await;
    replica.acknowledge(6);
    drain(&mut replica, s).await;
    s.reopen().await;
    let restored = match Replica::restore(ReplicaConfig::default(), s.read_all().await) {
        Ok(Some(r)) => r,
        other => panic!("restore failed: {other:?}"),
    };
    let seqs: Vec<u64> = restored.outbox().map(|op| op.id.seq).collect();
    assert_eq!(
        seqs,
        vec![7, 8, 9, 10],
        "acknowledged operations must be gone from the stored outbox"
    );
}

fn keys_of(records: &[Record]) -> Vec<StoreKey> {
    records
        .iter()
        .map(|(k, _)| match StoreKey::from_bytes(k) {
            Ok(key) => key,
            Err(e) => panic!("the store returned a key it was not given: {e}"),
        })
        .collect()
}

async fn range_deletes_remove_their_keys_only(s: &mut dyn OpenStore) {
    let mut writes: Vec<Write> = (1..=6)
        .map(|seq| put(StoreKey::Outbox(seq), b"o"))
        .collect();
    for id in ["a", "b", "c", "ca", "d", "da"] {
        writes.push(put(doc_key(id), b"d"));
    }
    writes.push(put(StoreKey::Meta, b"m"));
    s.write(&batch(writes)).await;
    s.write(&batch(vec![
        Write::DeleteRange {
            first: StoreKey::Outbox(2),
            last: StoreKey::Outbox(4),
        },
        // Both bounds included; keys extending the last one sort after it.
        Write::DeleteRange {
            first: doc_key("b"),
            last: doc_key("d"),
        },
        // Reversed: removes nothing.
        Write::DeleteRange {
            first: StoreKey::Outbox(6),
            last: StoreKey::Outbox(5),
        },
        // Nothing stored in it.
        Write::DeleteRange {
            first: StoreKey::Extension("a".into()),
            last: StoreKey::Extension("z".into()),
        },
    ]))
    .await;
    let expected = vec![
        doc_key("a"),
        doc_key("da"),
        StoreKey::Meta,
        StoreKey::Outbox(1),
        StoreKey::Outbox(5),
        StoreKey::Outbox(6),
    ];
    assert_eq!(
        keys_of(&s.read_all().await),
        expected,
        "a range delete removes the keys from its first to its last, both included, and no other"
    );
    s.reopen().await;
    assert_eq!(keys_of(&s.read_all().await), expected, "after reopening");
}

async fn writes_apply_in_batch_order(s: &mut dyn OpenStore) {
    let outbox = |seqs: std::ops::RangeInclusive<u64>, value: &[u8]| -> Vec<Write> {
        seqs.map(|seq| put(StoreKey::Outbox(seq), value)).collect()
    };
    let range = |first, last| Write::DeleteRange {
        first: StoreKey::Outbox(first),
        last: StoreKey::Outbox(last),
    };
    s.write(&batch(outbox(1..=3, b"old"))).await;
    // A removal then new records under the same keys (a fork's outbox),
    // and new records then a removal over them: the later write wins.
    let mut writes = vec![range(1, 3)];
    writes.extend(outbox(1..=2, b"new"));
    writes.extend(outbox(7..=9, b"gone"));
    writes.push(range(7, 9));
    writes.push(Write::Delete {
        key: StoreKey::Outbox(2),
    });
    s.write(&batch(writes)).await;
    let expected = vec![(StoreKey::Outbox(1).to_bytes(), b"new".to_vec())];
    assert_eq!(
        s.read_all().await,
        expected,
        "a store applies a batch's writes in order"
    );
    s.reopen().await;
    assert_eq!(s.read_all().await, expected, "after reopening");
}

async fn forked_outbox_survives_reopen(s: &mut dyn OpenStore) {
    let mut replica = stored_puts(ReplicaId(9), 4, s).await;
    replica.acknowledge(1);
    replica.fork(ReplicaId(10));
    drain(&mut replica, s).await;
    s.reopen().await;
    let restored = match Replica::restore(ReplicaConfig::default(), s.read_all().await) {
        Ok(Some(r)) => r,
        other => panic!("restore failed: {other:?}"),
    };
    let ids: Vec<(ReplicaId, u64)> = restored
        .outbox()
        .map(|op| (op.id.replica, op.id.seq))
        .collect();
    assert_eq!(
        ids,
        vec![(ReplicaId(10), 1), (ReplicaId(10), 2), (ReplicaId(10), 3)],
        "the forked outbox, renumbered from 1, replaces the old one"
    );
    assert_eq!(
        restored.outbox().collect::<Vec<_>>(),
        replica.outbox().collect::<Vec<_>>()
    );
}
