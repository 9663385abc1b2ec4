//! Where a database lives: IndexedDB in browsers, memory in Node.
//!
//! The IndexedDB store keeps one record per store key (object store
//! `records`), the layout `read_all` returns. Writing a large batch that
//! way costs one IndexedDB request per key, and each request is a round
//! trip through the browser's storage process: 100,000 puts issued
//! together make 200,000 requests (a document record and an outbox record
//! each). So a batch of at least [`LOG_THRESHOLD`] writes is stored as ONE
//! record of the object store `log` instead, which makes it durable with a
//! single request; afterwards, off the write's path, the store copies that
//! record's writes into `records` in transactions of `APPLY_CHUNK` writes
//! and deletes it in the last of them. Until every logged batch is copied,
//! later batches go to the log too, so that the order of writes is kept:
//! reading applies `records` first and then the logged batches in order.
//! While a read pages through `records`, nothing changes them: writes go
//! to the log and the copy waits until the read ends.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use futures::FutureExt;
use futures::future::LocalBoxFuture;
use sync_client::memory::MemoryStore;
use sync_client::platform::{ClientStore, StoreError, StoreErrorKind};
use sync_core::PersistBatch;
use sync_core::persist::Write;
use sync_core::store::Record;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// The object store holding every record: binary keys (sorted by bytes,
/// which is the order `read_all` must return) to binary values.
const RECORDS: &str = "records";
/// The object store holding logged batches not yet copied into
/// [`RECORDS`]: sequence numbers (ascending) to encoded batches.
const LOG: &str = "log";
/// The schema version: 1 had [`RECORDS`] only, 2 adds [`LOG`]. Versions of
/// the package that know only schema 1 cannot open a database at 2.
const SCHEMA_VERSION: u32 = 2;
/// Batches with at least this many writes go to the log.
pub const LOG_THRESHOLD: usize = 512;
/// How many writes of a logged batch one copying transaction carries:
/// small enough that the page stays responsive between them.
const APPLY_CHUNK: usize = 4096;

// IndexedDB through a few lines of JavaScript (`idb.js`) and its objects
// as opaque handles: the `web-sys` bindings would need a Rust closure per
// event handler, and an IndexedDB crate brings its own runtime and error
// formatting into the download.
#[wasm_bindgen(module = "/src/idb.js")]
extern "C" {
    /// An open IndexedDB connection (`IDBDatabase`).
    #[derive(Clone, Debug)]
    type Connection;
    /// An `IDBTransaction`.
    type Transaction;
    /// An `IDBObjectStore` of a transaction.
    type ObjectStore;

    #[wasm_bindgen(js_name = openDb)]
    fn open_db(name: &str, version: u32, stores: Vec<String>) -> js_sys::Promise;
    #[wasm_bindgen(catch)]
    fn begin(db: &Connection, stores: Vec<String>, write: bool) -> Result<Transaction, JsValue>;
    fn commit(tx: &Transaction) -> js_sys::Promise;
    #[wasm_bindgen(catch, js_name = queue)]
    fn queue_js(store: &ObjectStore, key: &JsValue, value: &JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = queueRange)]
    fn queue_range_js(store: &ObjectStore, first: &JsValue, last: &JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(catch, js_name = readPage)]
    fn read_page(
        db: &Connection,
        name: &str,
        after: &JsValue,
        limit: Option<u32>,
    ) -> Result<js_sys::Promise, JsValue>;
    #[wasm_bindgen(catch, js_name = readOne)]
    fn read_one(db: &Connection, name: &str, key: &JsValue) -> Result<js_sys::Promise, JsValue>;

    #[wasm_bindgen(method, catch, js_name = objectStore)]
    fn object_store(this: &Transaction, name: &str) -> Result<ObjectStore, JsValue>;
    #[wasm_bindgen(method)]
    fn close(this: &Connection);
}

/// The logged batches this store knows of, shared by its clones and the
/// task that copies them into `records`.
#[derive(Debug, Default)]
struct Log {
    /// Sequence numbers of logged batches not yet copied, oldest first.
    pending: VecDeque<u64>,
    /// The sequence number the next logged batch takes.
    next: u64,
    /// Whether the copying task runs.
    applying: bool,
    /// How many `read_all` calls are under way. While any is, `records`
    /// must not change (a paged read would see part of a batch): every
    /// write goes to the log and the copy starts no new transaction.
    reading: usize,
}

/// A database's records in IndexedDB: one IndexedDB database per Concord
/// database, named by the application.
#[derive(Clone, Debug)]
pub struct IdbStore {
    db: Connection,
    log: Rc<RefCell<Log>>,
    threshold: usize,
}

impl IdbStore {
    /// Opens (creating if needed) the IndexedDB database `name`.
    ///
    /// A tab running an older package that knows only schema 1 and keeps
    /// the database open blocks the upgrade to schema 2: that fails with a
    /// [`StoreErrorKind::Locked`] error saying so, rather than waiting.
    pub async fn open(name: &str) -> Result<IdbStore, StoreError> {
        let db: Connection = JsFuture::from(open_db(
            name,
            SCHEMA_VERSION,
            vec![RECORDS.to_owned(), LOG.to_owned()],
        ))
        .await
        .map_err(dom_error)?
        .unchecked_into();
        // Batches logged before a reload or a crash still wait to be copied.
        let mut pending = VecDeque::new();
        let (keys, _) = page(&db, LOG, &JsValue::UNDEFINED, None).await?;
        for key in keys.iter() {
            pending.push_back(log_seq(&key)?);
        }
        let next = pending.back().map_or(0, |last| last + 1);
        let store = IdbStore {
            db,
            log: Rc::new(RefCell::new(Log {
                pending,
                next,
                applying: false,
                reading: 0,
            })),
            threshold: LOG_THRESHOLD,
        };
        store.start_applying();
        Ok(store)
    }

    /// The same store, logging every batch of at least `threshold` writes
    /// (1: every batch). For tests of the logged path.
    #[doc(hidden)]
    pub fn with_log_threshold(mut self, threshold: usize) -> IdbStore {
        self.threshold = threshold.max(1);
        self
    }

    /// How many logged batches wait to be copied into `records`.
    #[doc(hidden)]
    pub fn logged_batches(&self) -> usize {
        self.log.borrow().pending.len()
    }

    /// Whether the task copying logged batches into `records` runs.
    #[doc(hidden)]
    pub fn is_copying(&self) -> bool {
        self.log.borrow().applying
    }

    /// Closes the connection; later reads and writes fail.
    pub fn close(&self) {
        self.db.close();
    }

    /// Starts the task copying logged batches into `records`, unless it
    /// runs, a read is under way, or there is nothing to copy.
    fn start_applying(&self) {
        {
            let mut log = self.log.borrow_mut();
            if log.applying || log.pending.is_empty() || log.reading > 0 {
                return;
            }
            log.applying = true;
        }
        let db = self.db.clone();
        let log = self.log.clone();
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                let Some(seq) = log.borrow().pending.front().copied() else {
                    break;
                };
                // Not copied (a read under way, or a failure: the batch's
                // write failed, the database closed, the disk full): the
                // batch stays pending, reads still see what the log holds,
                // and the read's end, the write's settling, the next logged
                // write or the next open tries again. (The batch's write
                // was issued before it became pending, so IndexedDB orders
                // this task's read of it after that write.)
                if !matches!(apply_logged(&db, &log, seq).await, Ok(true)) {
                    break;
                }
                log.borrow_mut().pending.pop_front();
            }
            log.borrow_mut().applying = false;
        });
    }
}

/// Copies logged batch `seq` into `records` and deletes it from the log,
/// the delete in the same transaction as the last writes. `Ok(false)` when
/// the log does not hold the batch (its write failed), or when a read
/// started: the copy then stops between two transactions, the batch stays
/// logged, and copying it again from its first write later is harmless
/// (no later batch reached `records` meanwhile).
async fn apply_logged(db: &Connection, log: &RefCell<Log>, seq: u64) -> Result<bool, StoreError> {
    let key = JsValue::from_f64(seq as f64);
    let value = JsFuture::from(read_one(db, LOG, &key).map_err(dom_error)?)
        .await
        .map_err(dom_error)?;
    if value.is_undefined() {
        return Ok(false);
    }
    let writes = decode_batch(&to_vec(&value)?)?;
    let chunks = writes.len().div_ceil(APPLY_CHUNK).max(1);
    for (i, chunk) in writes
        .chunks(APPLY_CHUNK)
        .chain(writes.is_empty().then_some(&[][..]))
        .enumerate()
    {
        // Each chunk waits for a macrotask, so the work the write's own
        // completion set off (resolving the Promises of every put in the
        // batch, change notifications) runs first and is not delayed.
        crate::timer::sleep_ms(0.0).await;
        if log.borrow().reading > 0 {
            return Ok(false);
        }
        let last = i + 1 == chunks;
        let stores: &[&str] = if last { &[RECORDS, LOG] } else { &[RECORDS] };
        let tx = transaction(db, stores)?;
        let records = tx.object_store(RECORDS).map_err(dom_error)?;
        for write in chunk {
            match write {
                LoggedWrite::Put(k, v) => queue(&records, k, Some(v))?,
                LoggedWrite::Delete(k) => queue(&records, k, None)?,
                LoggedWrite::DeleteRange(first, last) => queue_range(&records, first, last)?,
            }
        }
        if last {
            let log = tx.object_store(LOG).map_err(dom_error)?;
            queue_js(&log, &key, &JsValue::UNDEFINED).map_err(dom_error)?;
        }
        JsFuture::from(commit(&tx)).await.map_err(dom_error)?;
    }
    Ok(true)
}

/// A read-write transaction over `stores` that completes only once the
/// browser has flushed it to disk, which is what a resolved write promises.
fn transaction(db: &Connection, stores: &[&str]) -> Result<Transaction, StoreError> {
    begin(db, stores.iter().map(|s| (*s).to_owned()).collect(), true).map_err(dom_error)
}

/// Queues in `store` a put of `value` under `key`, or a delete of `key`
/// when `value` is `None`; the transaction's commit waits for it.
fn queue(store: &ObjectStore, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    let value = value.map_or(JsValue::UNDEFINED, bytes);
    queue_js(store, &bytes(key), &value).map_err(dom_error)
}

/// Queues in `store` the delete of every key from `first` to `last`, both
/// included (none when `first` sorts after `last`, which IndexedDB would
/// refuse as a range).
fn queue_range(store: &ObjectStore, first: &[u8], last: &[u8]) -> Result<(), StoreError> {
    if first > last {
        return Ok(());
    }
    queue_range_js(store, &bytes(first), &bytes(last)).map_err(dom_error)
}

/// Up to `limit` records of object store `name` after key `after`
/// (`undefined`: from the first), keys and values in key order.
async fn page(
    db: &Connection,
    name: &str,
    after: &JsValue,
    limit: Option<u32>,
) -> Result<(js_sys::Array, js_sys::Array), StoreError> {
    let both: js_sys::Array = JsFuture::from(read_page(db, name, after, limit).map_err(dom_error)?)
        .await
        .map_err(dom_error)?
        .unchecked_into();
    Ok((both.get(0).unchecked_into(), both.get(1).unchecked_into()))
}

/// Maps an IndexedDB failure (a `DOMException`, or the `BlockedError`
/// of `idb.js`) to the kind applications can act on.
fn dom_error(e: JsValue) -> StoreError {
    let text = |field: &str| {
        js_sys::Reflect::get(&e, &field.into())
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    let (name, message) = (text("name"), text("message"));
    let kind = match name.as_str() {
        "BlockedError" => StoreErrorKind::Locked,
        "QuotaExceededError" => StoreErrorKind::Full,
        "InvalidStateError" => StoreErrorKind::Closed,
        _ if message.contains("closing") => StoreErrorKind::Closed,
        _ => StoreErrorKind::Io,
    };
    StoreError::new(kind, format!("IndexedDB: {name}: {message}"))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, format!("IndexedDB holds {what}"))
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
        Err(corrupt("a record that is not bytes"))
    }
}

/// A log key: a sequence number, stored as a JavaScript number.
fn log_seq(key: &JsValue) -> Result<u64, StoreError> {
    match key.as_f64() {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 => Ok(n as u64),
        _ => Err(corrupt("a log entry whose key is not a sequence number")),
    }
}

/// One write of a logged batch, with its key as stored.
#[derive(Debug, PartialEq)]
enum LoggedWrite {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// The first and last key removed.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// A batch as one log value: per write a tag byte (`P` put, `D` delete,
/// `R` range delete), the key's length (u32 little-endian) and bytes, and
/// for a put the value's length and bytes, for a range delete the last
/// key's. (Builds before `R` existed wrote only `P` and `D`: their logs
/// read the same.)
fn encode_batch(writes: &[Write]) -> Vec<u8> {
    let mut out = Vec::new();
    let part = |out: &mut Vec<u8>, bytes: &[u8]| {
        // Keys and values are far below 4 GiB (frames and records are
        // bounded by the core's limits).
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    for write in writes {
        match write {
            Write::Put { key, value } => {
                out.push(b'P');
                part(&mut out, &key.to_bytes());
                part(&mut out, value);
            }
            Write::Delete { key } => {
                out.push(b'D');
                part(&mut out, &key.to_bytes());
            }
            Write::DeleteRange { first, last } => {
                out.push(b'R');
                part(&mut out, &first.to_bytes());
                part(&mut out, &last.to_bytes());
            }
        }
    }
    out
}

/// Reads a value [`encode_batch`] made.
fn decode_batch(mut bytes: &[u8]) -> Result<Vec<LoggedWrite>, StoreError> {
    fn part(bytes: &mut &[u8]) -> Result<Vec<u8>, StoreError> {
        let bad = || corrupt("a truncated log entry");
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        let (part, rest) = rest.split_at_checked(len).ok_or_else(bad)?;
        *bytes = rest;
        Ok(part.to_vec())
    }
    let mut writes = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        writes.push(match tag {
            b'P' => {
                let key = part(&mut bytes)?;
                LoggedWrite::Put(key, part(&mut bytes)?)
            }
            b'D' => LoggedWrite::Delete(part(&mut bytes)?),
            b'R' => {
                let first = part(&mut bytes)?;
                LoggedWrite::DeleteRange(first, part(&mut bytes)?)
            }
            _ => return Err(corrupt("a log entry of an unknown kind")),
        });
    }
    Ok(writes)
}

impl ClientStore for IdbStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let this = self.clone();
        async move {
            // Decided when the write is issued to IndexedDB (now, in one
            // synchronous step with its transaction), not when it was asked
            // for: a write whose future is dropped unpolled then takes no
            // sequence number, and the transactions land in the order the
            // log's sequence numbers say.
            let logged = {
                let mut log = this.log.borrow_mut();
                if batch.writes.len() >= this.threshold
                    || !log.pending.is_empty()
                    || log.reading > 0
                {
                    let seq = log.next;
                    log.next += 1;
                    log.pending.push_back(seq);
                    Some(seq)
                } else {
                    None
                }
            };
            let db = &this.db;
            if let Some(seq) = logged {
                let issued = (|| {
                    let tx = transaction(db, &[LOG])?;
                    let log = tx.object_store(LOG).map_err(dom_error)?;
                    let value = bytes(&encode_batch(&batch.writes));
                    queue_js(&log, &JsValue::from_f64(seq as f64), &value).map_err(dom_error)?;
                    Ok(commit(&tx))
                })();
                let committed = match issued {
                    Ok(committed) => committed,
                    Err(e) => {
                        this.settle_logged(seq, false);
                        return Err(e);
                    }
                };
                // The bookkeeping of the log follows the transaction, not
                // only this future: were this future dropped before the
                // commit completes, the batch would stay pending whatever
                // became of it. Settling twice changes nothing; settling
                // here too has the copy under way when the write resolves.
                let settle = this.clone();
                let outcome = committed.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    let ok = JsFuture::from(outcome).await.is_ok();
                    settle.settle_logged(seq, ok);
                });
                let result = JsFuture::from(committed).await;
                this.settle_logged(seq, result.is_ok());
                return result.map(drop).map_err(dom_error);
            }
            let tx = transaction(db, &[RECORDS])?;
            let store = tx.object_store(RECORDS).map_err(dom_error)?;
            // Requests go out as they are queued; the commit waits for all.
            for write in &batch.writes {
                match write {
                    Write::Put { key, value } => queue(&store, &key.to_bytes(), Some(value))?,
                    Write::Delete { key } => queue(&store, &key.to_bytes(), None)?,
                    Write::DeleteRange { first, last } => {
                        queue_range(&store, &first.to_bytes(), &last.to_bytes())?;
                    }
                }
            }
            JsFuture::from(commit(&tx)).await.map_err(dom_error)?;
            Ok(())
        }
        .boxed_local()
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        // From here until the read ends (or its future is dropped)
        // `records` stays as it is: transactions that change it and were
        // created before this read's are ordered before them by IndexedDB,
        // and no new one starts (see `Log::reading`).
        let reading = Reading::start(self);
        let db = self.db.clone();
        async move {
            let _reading = reading;
            // The records page by page, each page its own read-only
            // transaction with a pair of requests (keys and values line up
            // one to one, each in key order): the browser hands each page's
            // results to the page's thread in a task of its own, so a large
            // database is never cloned and copied in one long task.
            let mut records = Vec::new();
            let mut after = JsValue::UNDEFINED;
            loop {
                let (keys, values) = page(&db, RECORDS, &after, Some(READ_PAGE)).await?;
                let count = keys.length();
                for (key, value) in keys.iter().zip(values.iter()) {
                    records.push((to_vec(&key)?, to_vec(&value)?));
                    after = key;
                }
                if count < READ_PAGE {
                    break;
                }
            }
            // Then the log, after the records: every batch logged before
            // this read or during it, including one whose copy into
            // `records` had begun (a batch leaves the log only with its
            // last copied writes). Replaying that one over the records
            // changes nothing, as no later batch was copied before it.
            let (_, logged) = page(&db, LOG, &JsValue::UNDEFINED, None).await?;
            let mut batches = Vec::new();
            for value in logged.iter() {
                batches.push(decode_batch(&to_vec(&value)?)?);
            }
            Ok(fold_logged(records, batches))
        }
        .boxed_local()
    }
}

impl IdbStore {
    /// Settles logged batch `seq` once its transaction is over: copied into
    /// `records` from now on when it committed, forgotten when it did not
    /// (its write failed, and the log does not hold it).
    fn settle_logged(&self, seq: u64, committed: bool) {
        if !committed {
            self.log.borrow_mut().pending.retain(|&s| s != seq);
        }
        self.start_applying();
    }
}

/// A `read_all` under way, counted in [`Log::reading`] until dropped; the
/// copy of logged batches paused for it resumes then.
struct Reading(IdbStore);

impl Reading {
    fn start(store: &IdbStore) -> Reading {
        store.log.borrow_mut().reading += 1;
        Reading(store.clone())
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.log.borrow_mut().reading -= 1;
        self.0.start_applying();
    }
}

/// Records per page when reading a database back.
const READ_PAGE: u32 = 4096;

/// The records after the logged batches, in order: still in key order.
fn fold_logged(records: Vec<Record>, batches: Vec<Vec<LoggedWrite>>) -> Vec<Record> {
    if batches.is_empty() {
        return records;
    }
    // Inserted one by one rather than collected: collecting sorts first,
    // which would add a sort of these pairs to the wasm for nothing (the
    // records come in key order).
    let mut all = BTreeMap::new();
    for (key, value) in records {
        all.insert(key, value);
    }
    for write in batches.into_iter().flatten() {
        match write {
            LoggedWrite::Put(key, value) => {
                all.insert(key, value);
            }
            LoggedWrite::Delete(key) => {
                all.remove(&key);
            }
            LoggedWrite::DeleteRange(first, last) => {
                sync_core::store::remove_range(&mut all, &first, &last);
            }
        }
    }
    all.into_iter().collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::persist::StoreKey;

    fn key(name: &str) -> StoreKey {
        StoreKey::Extension(name.to_owned())
    }

    #[test]
    fn batches_round_trip_through_the_log_encoding() {
        let writes = vec![
            Write::Put {
                key: key("a"),
                value: vec![1, 2, 3],
            },
            Write::Delete { key: key("b") },
            Write::DeleteRange {
                first: key("c"),
                last: key("e"),
            },
            Write::Put {
                key: key(""),
                value: Vec::new(),
            },
        ];
        let decoded = decode_batch(&encode_batch(&writes)).unwrap();
        assert_eq!(
            decoded,
            vec![
                LoggedWrite::Put(key("a").to_bytes(), vec![1, 2, 3]),
                LoggedWrite::Delete(key("b").to_bytes()),
                LoggedWrite::DeleteRange(key("c").to_bytes(), key("e").to_bytes()),
                LoggedWrite::Put(key("").to_bytes(), Vec::new()),
            ]
        );
        assert!(decode_batch(&[]).unwrap().is_empty());
    }

    /// A log entry as builds before range deletes wrote it (spelled out
    /// byte by byte) still reads: a database closed with batches not yet
    /// copied opens under this build.
    #[test]
    fn logs_of_earlier_builds_still_read() {
        let old = [
            &b"P\x01\x00\x00\x00a\x02\x00\x00\x00v1"[..],
            &b"D\x01\x00\x00\x00b"[..],
        ]
        .concat();
        assert_eq!(
            decode_batch(&old).unwrap(),
            vec![
                LoggedWrite::Put(b"a".to_vec(), b"v1".to_vec()),
                LoggedWrite::Delete(b"b".to_vec()),
            ]
        );
    }

    #[test]
    fn damaged_log_entries_are_corrupt_errors() {
        let encoded = encode_batch(&[Write::Put {
            key: key("a"),
            value: vec![9; 10],
        }]);
        for cut in 1..encoded.len() {
            let error = decode_batch(&encoded[..cut]).unwrap_err();
            assert_eq!(error.kind, StoreErrorKind::Corrupt);
        }
        let error = decode_batch(b"X").unwrap_err();
        assert_eq!(error.kind, StoreErrorKind::Corrupt);
    }

    #[test]
    fn logged_batches_apply_over_records_in_order() {
        let records = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"c".to_vec(), b"1".to_vec()),
        ];
        let batches = vec![
            vec![
                LoggedWrite::Put(b"b".to_vec(), b"2".to_vec()),
                LoggedWrite::Delete(b"c".to_vec()),
            ],
            vec![
                LoggedWrite::Put(b"a".to_vec(), b"3".to_vec()),
                LoggedWrite::Put(b"c".to_vec(), b"3".to_vec()),
                LoggedWrite::Delete(b"b".to_vec()),
            ],
        ];
        assert_eq!(
            fold_logged(records.clone(), batches),
            vec![
                (b"a".to_vec(), b"3".to_vec()),
                (b"c".to_vec(), b"3".to_vec()),
            ]
        );
        assert_eq!(fold_logged(records.clone(), Vec::new()), records);
    }

    #[test]
    fn logged_range_deletes_apply_in_order() {
        let record = |k: &[u8]| (k.to_vec(), b"1".to_vec());
        let records = vec![
            record(b"a"),
            record(b"b"),
            record(b"ba"),
            record(b"c"),
            record(b"d"),
        ];
        let batches = vec![
            vec![
                LoggedWrite::DeleteRange(b"b".to_vec(), b"c".to_vec()),
                LoggedWrite::Put(b"c".to_vec(), b"2".to_vec()),
                // Reversed: removes nothing.
                LoggedWrite::DeleteRange(b"d".to_vec(), b"a".to_vec()),
            ],
            vec![
                LoggedWrite::Put(b"e".to_vec(), b"2".to_vec()),
                LoggedWrite::DeleteRange(b"e".to_vec(), b"e".to_vec()),
            ],
        ];
        assert_eq!(
            fold_logged(records, batches),
            vec![record(b"a"), (b"c".to_vec(), b"2".to_vec()), record(b"d")]
        );
    }
}
