//! The IndexedDB store passes sync-core's store conformance suite, in a
//! real browser: `cargo test -p sync-wasm --target wasm32-unknown-unknown
//! --test idb_conformance` (wasm-bindgen-test-runner drives headless
//! Chromium through chromedriver).
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
}

impl Idb {
    async fn fresh(check: &str) -> Idb {
        let name = format!("conformance-{check}-{}", js_sys::Math::random());
        let store = IdbStore::open(&name).await.expect("open IndexedDB");
        Idb {
            name,
            store: Some(store),
        }
    }

    fn store(&self) -> &IdbStore {
        self.store.as_ref().expect("the store is open")
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
            self.store = Some(IdbStore::open(&self.name).await.expect("reopen IndexedDB"));
        })
    }
}

macro_rules! checks {
    ($($check:ident),*) => {
        $(
            #[wasm_bindgen_test]
            async fn $check() {
                let mut idb = Idb::fresh(stringify!($check)).await;
                run_check(&mut idb, stringify!($check)).await;
            }
        )*
    };
}

checks!(
    empty_store_reads_nothing,
    batch_writes_are_read_back,
    overwrite_and_delete,
    records_come_back_in_key_order,
    binary_keys_and_large_values,
    writes_survive_reopen,
    replica_round_trips_through_store,
    acknowledged_ops_leave_the_store
);
