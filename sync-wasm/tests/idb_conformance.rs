//! The IndexedDB store passes sync-core's store conformance suite, in a
//! real browser: `cargo test -p sync-wasm --target wasm32-unknown-unknown
//! --test idb_conformance` (wasm-bindgen-test-runner drives headless
//! Chromium through chromedriver).
//!
//! Every check runs twice: with the store's own threshold (small batches
//! go record by record) and with every batch logged first (`logged_*`),
//! so both ways a batch reaches IndexedDB are held to the suite.
#![cfg(target_arch = "wasm32")]

use sync_client::platform::ClientStore;
use sync_core::PersistBatch;
use sync_core::store::Record;
use sync_core::store::conformance::{OpenStore, StoreFuture, run_check};
use sync_wasm::store::IdbStore;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// One IndexedDB database, opened under a name no other test uses.
struct Idb {
    name: String,
    store: Option<IdbStore>,
    /// The store's log threshold, or `None` for its default.
    threshold: Option<usize>,
}

impl Idb {
    async fn fresh(check: &str, threshold: Option<usize>) -> Idb {
        let name = format!("conformance-{check}-{}", js_sys::Math::random());
        let store = open(&name, threshold).await;
        Idb {
            name,
            store: Some(store),
            threshold,
        }
    }

    fn store(&self) -> &IdbStore {
        self.store.as_ref().expect("the store is open")
    }
}

async fn open(name: &str, threshold: Option<usize>) -> IdbStore {
    let store = IdbStore::open(name).await.expect("open IndexedDB");
    match threshold {
        Some(n) => store.with_log_threshold(n),
        None => store,
    }
}

impl OpenStore for Idb {
    fn write<'a>(&'a mut self, batch: &'a PersistBatch) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.store()
                .write(batch.clone())
                .await
                .expect("IndexedDB write");
        })
    }

    fn read_all(&mut self) -> StoreFuture<'_, Vec<Record>> {
        Box::pin(async move { self.store().read_all().await.expect("IndexedDB read") })
    }

    fn reopen(&mut self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if let Some(store) = self.store.take() {
                store.close();
            }
            self.store = Some(open(&self.name, self.threshold).await);
        })
    }
}

macro_rules! checks {
    ($threshold:expr; $($check:ident),*) => {
        $(
            #[wasm_bindgen_test]
            async fn $check() {
                let mut idb = Idb::fresh(stringify!($check), $threshold).await;
                run_check(&mut idb, stringify!($check)).await;
            }
        )*
    };
}

macro_rules! all_checks {
    ($threshold:expr) => {
        checks!($threshold;
    empty_store_reads_nothing,
    batch_writes_are_read_back,
    overwrite_and_delete,
    records_come_back_in_key_order,
    binary_keys_and_large_values,
    writes_survive_reopen,
    replica_round_trips_through_store,
    acknowledged_ops_leave_the_store,
    range_deletes_remove_their_keys_only,
    writes_apply_in_batch_order,
    forked_outbox_survives_reopen
        );
    };
}

all_checks!(None);

/// Every batch through the log (and copied into records afterwards).
mod logged {
    use super::*;
    all_checks!(Some(1));
}

/// Waits `ms` milliseconds (a hang guard's tick, not a timed assertion).
async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout: js_sys::Function =
            js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into())
                .expect("setTimeout")
                .into();
        set_timeout
            .call2(&wasm_bindgen::JsValue::UNDEFINED, &resolve, &ms.into())
            .expect("setTimeout");
    });
    wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .expect("sleep");
}

fn put(key: &str, value: &str) -> sync_core::persist::Write {
    sync_core::persist::Write::Put {
        key: sync_core::persist::StoreKey::Extension(key.to_owned()),
        value: value.as_bytes().to_vec(),
    }
}

fn record(key: &str, value: &str) -> Record {
    (
        sync_core::persist::StoreKey::Extension(key.to_owned()).to_bytes(),
        value.as_bytes().to_vec(),
    )
}

/// The store reads `expected` now and again after closing and reopening
/// the database by `name`; the reopened store is returned open.
async fn assert_reads_before_and_after_reopen(
    store: IdbStore,
    name: &str,
    expected: &[Record],
) -> IdbStore {
    assert_eq!(store.read_all().await.expect("read"), expected);
    store.close();
    let again = IdbStore::open(name).await.expect("reopen");
    assert_eq!(again.read_all().await.expect("read after reopen"), expected);
    again
}

/// A logged batch, then a small one right behind it (which must be logged
/// too, or it would be overwritten by the copy of the first): reads see
/// the later value at once, after the copy into records, and after a
/// reopen, and the log is empty once copied.
#[wasm_bindgen_test]
async fn small_writes_behind_a_logged_batch_keep_their_order() {
    let name = format!("logged-order-{}", js_sys::Math::random());
    let store = IdbStore::open(&name)
        .await
        .expect("open")
        .with_log_threshold(3);
    let big = PersistBatch {
        writes: vec![put("a", "1"), put("b", "1"), put("c", "1")],
    };
    store.write(big).await.expect("logged write");
    let small = PersistBatch {
        writes: vec![
            put("b", "2"),
            sync_core::persist::Write::Delete {
                key: sync_core::persist::StoreKey::Extension("c".to_owned()),
            },
        ],
    };
    store.write(small).await.expect("small write");
    let expected = vec![record("a", "1"), record("b", "2")];
    assert_eq!(store.read_all().await.expect("read"), expected);
    // Hang guard: the copy of two tiny batches takes milliseconds.
    for _ in 0..500 {
        if store.logged_batches() == 0 {
            break;
        }
        sleep(10).await;
    }
    assert_eq!(store.logged_batches(), 0, "the log was not copied");
    let again = assert_reads_before_and_after_reopen(store, &name, &expected).await;
    assert_eq!(
        again.logged_batches(),
        0,
        "a copied batch stayed in the log"
    );
    // Below the threshold and with an empty log: record by record.
    again
        .write(PersistBatch {
            writes: vec![put("d", "1")],
        })
        .await
        .expect("plain write");
    assert_eq!(again.logged_batches(), 0);
    again.close();
}

/// Waits (hang guard: five seconds) until the store's copy task is idle.
async fn until_copy_idle(store: &IdbStore) {
    for _ in 0..500 {
        if !store.is_copying() {
            return;
        }
        sleep(10).await;
    }
    panic!("the copy of logged batches did not finish");
}

/// A write is issued to IndexedDB when its future first runs, and only
/// then takes its place in the log: one asked for but not yet run leaves
/// the copy free to finish, and once run it is logged, copied, and a later
/// small write to `records` stays the newest value.
#[wasm_bindgen_test]
async fn a_logged_write_takes_its_place_when_it_runs() {
    let name = format!("logged-unwritten-{}", js_sys::Math::random());
    let store = IdbStore::open(&name)
        .await
        .expect("open")
        .with_log_threshold(1);
    let first = PersistBatch {
        writes: vec![put("a", "1")],
    };
    store.write(first).await.expect("logged write");
    let second = store.write(PersistBatch {
        writes: vec![put("b", "1")],
    });
    until_copy_idle(&store).await;
    assert_eq!(store.logged_batches(), 0, "the first batch was not copied");
    second.await.expect("second logged write");
    until_copy_idle(&store).await;
    assert_eq!(store.logged_batches(), 0, "the log was not copied");
    // A small write below the threshold, on the key the logged batch set.
    let small = store.clone().with_log_threshold(usize::MAX);
    small
        .write(PersistBatch {
            writes: vec![put("b", "2")],
        })
        .await
        .expect("small write");
    let expected = vec![record("a", "1"), record("b", "2")];
    let again = assert_reads_before_and_after_reopen(store, &name, &expected).await;
    again.close();
}

/// A logged write whose future is dropped before it runs is never
/// written and leaves nothing pending: the batches logged after it are
/// copied into `records`, and writes go record by record again. Were its
/// sequence number left pending, the copy would stop at it for good and
/// every later write would go to the log.
#[wasm_bindgen_test]
async fn a_dropped_logged_write_leaves_nothing_pending() {
    let name = format!("logged-dropped-{}", js_sys::Math::random());
    let store = IdbStore::open(&name)
        .await
        .expect("open")
        .with_log_threshold(2);
    drop(store.write(PersistBatch {
        writes: vec![put("a", "1"), put("b", "1")],
    }));
    store
        .write(PersistBatch {
            writes: vec![put("b", "2"), put("c", "2")],
        })
        .await
        .expect("logged write");
    until_copy_idle(&store).await;
    assert_eq!(store.logged_batches(), 0, "a dropped write stays pending");
    store
        .write(PersistBatch {
            writes: vec![put("d", "3")],
        })
        .await
        .expect("small write");
    assert_eq!(
        store.logged_batches(),
        0,
        "a small write was logged: the log never emptied"
    );
    let expected = vec![record("b", "2"), record("c", "2"), record("d", "3")];
    let again = assert_reads_before_and_after_reopen(store, &name, &expected).await;
    again.close();
}

/// A batch logged while a read pages through `records` and copied
/// before the read ends must not show up half: the read returns the state
/// before the batch or after it, never some of its writes. Ten pages of
/// records (a read's page holds 4,096), and a batch rewriting keys of the
/// first page and of the last, written and copied (one transaction) while
/// the read runs: were the copy to land between two pages, the read would
/// see the last page's keys new and the first page's old.
#[wasm_bindgen_test]
async fn a_read_sees_a_batch_written_during_it_whole_or_not_at_all() {
    let name = format!("read-during-copy-{}", js_sys::Math::random());
    let store = IdbStore::open(&name)
        .await
        .expect("open")
        .with_log_threshold(16);
    const KEYS: usize = 40_000;
    let key = |i: usize| format!("k{i:05}");
    store
        .write(PersistBatch {
            writes: (0..KEYS).map(|i| put(&key(i), "old")).collect(),
        })
        .await
        .expect("first batch");
    until_copy_idle(&store).await;
    assert_eq!(store.logged_batches(), 0);
    let ends: Vec<usize> = (0..8).chain(KEYS - 8..KEYS).collect();
    let read = store.read_all();
    let write = async {
        store
            .write(PersistBatch {
                writes: ends.iter().map(|&i| put(&key(i), "new")).collect(),
            })
            .await
            .expect("second batch");
        until_copy_idle(&store).await;
    };
    let (records, ()) = futures::future::join(read, write).await;
    let records = records.expect("read");
    assert_eq!(records.len(), KEYS);
    let new = ends
        .iter()
        .filter(|&&i| records[i] == record(&key(i), "new"))
        .count();
    assert!(
        new == 0 || new == ends.len(),
        "the read saw {new} of the {} writes of one batch",
        ends.len()
    );
    until_copy_idle(&store).await;
    assert_eq!(store.logged_batches(), 0, "the log was not copied");
    let records = store.read_all().await.expect("read");
    for &i in &ends {
        assert_eq!(records[i], record(&key(i), "new"));
    }
    store.close();
}
