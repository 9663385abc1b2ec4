//! Where a database lives: IndexedDB in browsers, memory in Node.

use std::rc::Rc;

use futures::FutureExt;
use futures::future::LocalBoxFuture;
use indexed_db_futures::KeyRange;
use indexed_db_futures::database::Database as IdbDatabase;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::{TransactionDurability, TransactionMode, TransactionOptions};
use sync_client::memory::MemoryStore;
use sync_client::platform::{ClientStore, StoreError, StoreErrorKind};
use sync_core::PersistBatch;
use sync_core::persist::Write;
use sync_core::store::Record;
use wasm_bindgen::{JsCast, JsValue};

/// The object store holding every record: binary keys (sorted by bytes,
/// which is the order `read_all` must return) to binary values.
const RECORDS: &str = "records";
/// The schema version; version 1 has the one object store above.
const SCHEMA_VERSION: u32 = 1;

/// A database's records in IndexedDB: one IndexedDB database per Concord
/// database, named by the application.
#[derive(Clone, Debug)]
pub struct IdbStore {
    db: Rc<IdbDatabase>,
}

impl IdbStore {
    /// Opens (creating if needed) the IndexedDB database `name`.
    pub async fn open(name: &str) -> Result<IdbStore, StoreError> {
        let db = IdbDatabase::open(name)
            .with_version(SCHEMA_VERSION)
            .with_on_upgrade_needed(|_event, db| {
                if !db.object_store_names().any(|n| n == RECORDS) {
                    db.create_object_store(RECORDS).build()?;
                }
                Ok(())
            })
            .await
            .map_err(|e| classify(&e.to_string()))?;
        Ok(IdbStore { db: Rc::new(db) })
    }

    /// Closes the connection; later reads and writes fail.
    pub fn close(&self) {
        IdbDatabase::clone(&self.db).close();
    }
}

/// Maps an IndexedDB failure to the kind applications can act on.
fn classify(message: &str) -> StoreError {
    let kind = if message.contains("QuotaExceeded") {
        StoreErrorKind::Full
    } else if message.contains("InvalidStateError") || message.contains("closing") {
        StoreErrorKind::Closed
    } else {
        StoreErrorKind::Io
    };
    StoreError::new(kind, format!("IndexedDB: {message}"))
}

fn io(e: impl std::fmt::Display) -> StoreError {
    classify(&e.to_string())
}

fn bytes(value: &[u8]) -> JsValue {
    js_sys::Uint8Array::from(value).into()
}

/// Record keys and values come back as `ArrayBuffer` (keys) or the
/// `Uint8Array` that was stored (values).
fn to_vec(value: &JsValue) -> Result<Vec<u8>, StoreError> {
    if value.is_instance_of::<js_sys::Uint8Array>() || value.is_instance_of::<js_sys::ArrayBuffer>()
    {
        Ok(js_sys::Uint8Array::new(value).to_vec())
    } else {
        Err(StoreError::new(
            StoreErrorKind::Corrupt,
            "IndexedDB holds a record that is not bytes",
        ))
    }
}

impl ClientStore for IdbStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let db = self.db.clone();
        async move {
            let mut options = TransactionOptions::new();
            // "strict": the transaction completes only once the browser has
            // flushed it to disk, which is what a resolved write promises.
            options.set_durability(TransactionDurability::Strict);
            let tx = db
                .transaction(RECORDS)
                .with_mode(TransactionMode::Readwrite)
                .with_options(options)
                .build()
                .map_err(io)?;
            let store = tx.object_store(RECORDS).map_err(io)?;
            // Requests go out as they are built and the commit waits for
            // all of them; their handles live until then.
            let mut puts = Vec::new();
            let mut deletes = Vec::new();
            for write in batch.writes {
                match write {
                    Write::Put { key, value } => puts.push(
                        store
                            .put(bytes(&value))
                            .with_key(bytes(&key.to_bytes()))
                            .primitive()
                            .map_err(io)?,
                    ),
                    Write::Delete { key } => deletes.push(
                        store
                            .delete(bytes(&key.to_bytes()))
                            .primitive()
                            .map_err(io)?,
                    ),
                }
            }
            let committed = tx.commit().await.map_err(io);
            drop((puts, deletes));
            committed
        }
        .boxed_local()
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        let db = self.db.clone();
        async move {
            // Page by page, each page its own pair of requests: the browser
            // hands each page's results to the page's thread in a task of
            // its own, so a large database is never cloned and copied in
            // one long task. Each page has its own read-only transaction
            // (an idle one commits between pages); nothing writes meanwhile,
            // as the database is opened before its loop starts and one tab
            // holds it.
            let mut records = Vec::new();
            let mut after: Option<JsValue> = None;
            loop {
                let tx = db
                    .transaction(RECORDS)
                    .with_mode(TransactionMode::Readonly)
                    .build()
                    .map_err(io)?;
                let store = tx.object_store(RECORDS).map_err(io)?;
                // Both requests run in one transaction, so keys and values
                // line up one to one, each in key order.
                let (keys, values) = match &after {
                    None => (
                        store
                            .get_all_keys::<JsValue>()
                            .with_limit(READ_PAGE)
                            .primitive()
                            .map_err(io)?,
                        store
                            .get_all::<JsValue>()
                            .with_limit(READ_PAGE)
                            .primitive()
                            .map_err(io)?,
                    ),
                    Some(last) => (
                        store
                            .get_all_keys::<JsValue>()
                            .with_query::<JsValue, _>(KeyRange::LowerBound(last.clone(), true))
                            .with_limit(READ_PAGE)
                            .primitive()
                            .map_err(io)?,
                        store
                            .get_all::<JsValue>()
                            .with_query::<JsValue, _>(KeyRange::LowerBound(last.clone(), true))
                            .with_limit(READ_PAGE)
                            .primitive()
                            .map_err(io)?,
                    ),
                };
                let keys = keys.await.map_err(io)?;
                let values = values.await.map_err(io)?;
                let before = records.len();
                for (key, value) in keys.zip(values) {
                    let key = key.map_err(io)?;
                    records.push((to_vec(&key)?, to_vec(&value.map_err(io)?)?));
                    after = Some(key);
                }
                if records.len() - before < READ_PAGE as usize {
                    return Ok(records);
                }
            }
        }
        .boxed_local()
    }
}

/// Records per page when reading a database back.
const READ_PAGE: u32 = 4096;

/// The store a database uses: IndexedDB, or memory where there is none.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// In memory: gone when the database closes.
    Memory(MemoryStore),
    /// In IndexedDB.
    IndexedDb(IdbStore),
}

impl ClientStore for AnyStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        match self {
            AnyStore::Memory(store) => store.write(batch),
            AnyStore::IndexedDb(store) => store.write(batch),
        }
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        match self {
            AnyStore::Memory(store) => store.read_all(),
            AnyStore::IndexedDb(store) => store.read_all(),
        }
    }
}
