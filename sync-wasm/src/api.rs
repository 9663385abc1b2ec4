//! The JavaScript-facing API: `openDatabase` and the `WasmDatabase` class.
//! The npm package's TypeScript layer wraps these in its idiomatic API;
//! everything here forwards to `sync_client::Database`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::{AbortHandle, Abortable};
use sync_client::{
    Change, Collection, Connection, Database, Error, ListOptions, Options, Origin, Platform,
    RelayOptions, Revision, Status, Ticket, TokenSource,
};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise, spawn_local};

use crate::convert::object;
use crate::packed::{Op, Writer, read_op, read_ops, revision_text};
use crate::store::{AnyStore, IdbStore};
use crate::timer::JsTimer;
use crate::transport::{WebSocketTransport, js_message};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
    fn get_random_values(buf: &mut [u8]);
}

thread_local! {
    /// Token-fetching functions by id. `TokenSource` must be `Send +
    /// Sync` (the native client calls it from its own thread); a
    /// JavaScript function is neither, so the source captures only an id
    /// and looks the function up on the one thread wasm runs on.
    static TOKEN_FUNCTIONS: RefCell<HashMap<u32, js_sys::Function>> = RefCell::new(HashMap::new());
    static NEXT_TOKEN_FUNCTION: RefCell<u32> = const { RefCell::new(0) };
}

/// A thrown error: a JavaScript `Error` with `kind` (the variant of
/// `sync_client::Error`) and the variant's details as properties, which
/// the TypeScript layer turns into typed error classes.
fn js_error(error: &Error) -> JsValue {
    let e = js_sys::Error::new(&error.to_string());
    let mut props: Vec<(&str, JsValue)> = Vec::new();
    let kind = match error {
        Error::Conflict {
            collection,
            id,
            expected,
            actual,
        } => {
            props.push(("collection", collection.as_str().into()));
            props.push(("id", id.as_str().into()));
            props.push(("expected", revision_js(expected.as_ref())));
            props.push(("actual", revision_js(actual.as_ref())));
            "Conflict"
        }
        Error::InvalidWrite(_) => "InvalidWrite",
        Error::Store(store) => {
            props.push(("storeKind", format!("{:?}", store.kind).into()));
            "Store"
        }
        Error::Load(_) => "Load",
        Error::Decode { .. } => "Decode",
        Error::Encode(_) => "Encode",
        Error::Rejected { count, .. } => {
            props.push(("count", (*count as f64).into()));
            "Rejected"
        }
        Error::Offline { code, .. } => {
            props.push(("code", format!("{code:?}").into()));
            "Offline"
        }
        Error::ReadOnly => "ReadOnly",
        Error::NoRelay => "NoRelay",
        Error::Closed => "Closed",
        _ => "Unknown",
    };
    props.push(("kind", kind.into()));
    for (key, value) in props {
        let _ = js_sys::Reflect::set(&e, &key.into(), &value);
    }
    e.into()
}

/// An `Encode` error for a value JavaScript handed in.
fn encode_error(message: String) -> JsValue {
    js_error(&Error::Encode(message))
}

fn revision_js(revision: Option<&Revision>) -> JsValue {
    revision.map_or(JsValue::NULL, |r| r.to_string().into())
}

fn change_js(change: &Change) -> JsValue {
    let origin = |o: &Origin| {
        JsValue::from_str(if *o == Origin::Local {
            "local"
        } else {
            "remote"
        })
    };
    match change {
        Change::Document {
            collection,
            id,
            origin: o,
        } => object([
            ("type", "document".into()),
            ("collection", collection.as_str().into()),
            ("id", id.as_str().into()),
            ("origin", origin(o)),
        ]),
        Change::Collection {
            collection,
            origin: o,
        } => object([
            ("type", "collection".into()),
            ("collection", collection.as_str().into()),
            ("origin", origin(o)),
        ]),
        _ => object([("type", "lagged".into())]),
    }
}

fn status_js(status: &Status) -> JsValue {
    let (connection, retry_at) = match status.connection {
        Connection::Offline => ("offline", JsValue::NULL),
        Connection::Connecting => ("connecting", JsValue::NULL),
        Connection::Online => ("online", JsValue::NULL),
        Connection::Reconnecting { retry_at_ms } => ("reconnecting", (retry_at_ms as f64).into()),
        _ => ("offline", JsValue::NULL),
    };
    object([
        ("connection", connection.into()),
        ("retryAt", retry_at),
        ("pendingWrites", (status.pending_writes as f64).into()),
        ("cursor", (status.cursor as f64).into()),
        ("lag", (status.lag as f64).into()),
        ("readOnly", status.read_only.into()),
        (
            "lastError",
            status
                .last_error
                .as_deref()
                .map_or(JsValue::NULL, JsValue::from_str),
        ),
    ])
}

fn get(options: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn get_string(options: &JsValue, key: &str) -> Result<Option<String>, JsValue> {
    let value = get(options, key);
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    value
        .as_string()
        .map(Some)
        .ok_or_else(|| js_sys::TypeError::new(&format!("option {key} must be a string")).into())
}

fn seed() -> u64 {
    let mut buf = [0u8; 8];
    get_random_values(&mut buf);
    u64::from_le_bytes(buf)
}

/// A token source calling the JavaScript function registered as `id`,
/// which returns a token or a Promise of one.
fn token_source(id: u32) -> TokenSource {
    Arc::new(move || {
        let function = TOKEN_FUNCTIONS.with(|f| f.borrow().get(&id).cloned());
        Box::pin(async move {
            let function = function.ok_or("the database was closed")?;
            let result = function
                .call0(&JsValue::UNDEFINED)
                .map_err(|e| js_message(&e))?;
            let token = JsFuture::from(js_sys::Promise::resolve(&result))
                .await
                .map_err(|e| js_message(&e))?;
            token
                .as_string()
                .ok_or_else(|| "the token function must return a string".to_owned())
        })
    })
}

/// Opens a database. `options`: `name` (string), `storage` (`"indexeddb"`,
/// `"memory"`; default IndexedDB where it exists, else memory), and for
/// syncing `relayUrl`, `room`, `token`, `tokenSource` (a function returning
/// a token or a Promise of one), `connect` (default true), `agent`.
#[wasm_bindgen(js_name = openDatabase)]
pub async fn open_database(options: JsValue) -> Result<WasmDatabase, JsValue> {
    let name = get_string(&options, "name")?
        .ok_or_else(|| JsValue::from(js_sys::TypeError::new("option name is required")))?;
    let has_idb = js_sys::Reflect::has(&js_sys::global(), &"indexedDB".into()).unwrap_or(false)
        && !get(&js_sys::global(), "indexedDB").is_undefined();
    let store = match get_string(&options, "storage")?.as_deref() {
        Some("memory") => AnyStore::Memory(Default::default()),
        Some("indexeddb") | None if has_idb => AnyStore::IndexedDb(
            IdbStore::open(&name)
                .await
                .map_err(|e| js_error(&Error::Store(e)))?,
        ),
        None => AnyStore::Memory(Default::default()),
        Some(other) => {
            return Err(js_sys::TypeError::new(&format!(
                "storage '{other}' is not available here (use \"indexeddb\" in a browser or \"memory\")"
            ))
            .into());
        }
    };
    let mut opts = Options::local();
    let mut token_id = None;
    if let Some(url) = get_string(&options, "relayUrl")? {
        let room = get_string(&options, "room")?.ok_or_else(|| {
            JsValue::from(js_sys::TypeError::new(
                "option room is required with relayUrl",
            ))
        })?;
        let token = get_string(&options, "token")?.unwrap_or_default();
        let mut relay = RelayOptions::new(url, room, token);
        let source = get(&options, "tokenSource");
        if let Some(function) = source.dyn_ref::<js_sys::Function>() {
            let id = NEXT_TOKEN_FUNCTION.with(|n| {
                let mut n = n.borrow_mut();
                *n += 1;
                *n
            });
            TOKEN_FUNCTIONS.with(|f| f.borrow_mut().insert(id, function.clone()));
            relay = relay.token_source(token_source(id));
            token_id = Some(id);
        }
        if get(&options, "connect").as_bool() == Some(false) {
            relay = relay.start_offline();
        }
        opts = Options::with_relay(relay);
    }
    opts.agent = get_string(&options, "agent")?;
    let platform = Platform {
        transport: WebSocketTransport,
        store: store.clone(),
        timer: Arc::new(JsTimer),
        seed: seed(),
    };
    let (db, host) = sync_client::open(platform, opts)
        .await
        .map_err(|e| js_error(&e))?;
    spawn_local(host);
    Ok(WasmDatabase {
        db,
        store,
        token_id,
        turn: RefCell::default(),
        collection: RefCell::default(),
    })
}

/// An open database (the TypeScript layer's `Database` wraps it).
#[wasm_bindgen]
pub struct WasmDatabase {
    db: Database,
    store: AnyStore,
    token_id: Option<u32>,
    /// The writes `put` applied since `durable` was last called.
    turn: RefCell<Turn>,
    /// The collection the last put or get named: apps write to one
    /// collection many times in a row, and a fresh handle per call (its
    /// name copied, then freed) cost more than the lookup.
    collection: RefCell<Option<Collection>>,
}

/// The writes of one turn of the event loop, in order.
#[derive(Default)]
struct Turn {
    /// The writes' durability: each ticket with how many writes in a row
    /// share it (usually one ticket for the whole turn).
    durable: Vec<(Ticket, usize)>,
    /// Each write's revision as text, `REVISION_LEN` bytes each: formatted
    /// into one buffer that crosses into JavaScript as one string.
    revisions: Vec<u8>,
}

/// A running subscription; `cancel` ends it.
#[wasm_bindgen]
pub struct WasmSubscription {
    handle: AbortHandle,
}

#[wasm_bindgen]
impl WasmSubscription {
    /// Stops calling the callback.
    pub fn cancel(&self) {
        self.handle.abort();
    }
}

/// Runs `callback` for each item of `stream` until cancelled.
fn run_subscription<S, T>(
    stream: S,
    callback: js_sys::Function,
    to_js: fn(&T) -> JsValue,
) -> WasmSubscription
where
    S: futures::Stream<Item = T> + 'static,
    T: 'static,
{
    let (handle, registration) = AbortHandle::new_pair();
    let task = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            // A throwing callback must not end the subscription.
            if let Err(e) = callback.call1(&JsValue::UNDEFINED, &to_js(&item)) {
                web_sys::console::error_2(&"concord-sync: a subscriber threw".into(), &e);
            }
        }
    };
    spawn_local(async move {
        let _ = Abortable::new(task, registration).await;
    });
    WasmSubscription { handle }
}

/// An expected revision as a putIf gives it (`None`: the document must be
/// absent).
fn revision(expected: Option<String>) -> Result<Option<Revision>, Error> {
    expected
        .map(|r| {
            r.parse::<Revision>()
                .map_err(|_| Error::Encode(format!("'{r}' is not a revision")))
        })
        .transpose()
}

fn promise_of<T: Unpin + 'static>(
    pending: sync_client::Pending<T>,
    to_js: fn(T) -> JsValue,
) -> js_sys::Promise {
    future_to_promise(async move { pending.await.map(to_js).map_err(|e| js_error(&e)) })
}

impl WasmDatabase {
    /// Runs `f` on collection `name`, through the handle kept from the
    /// last call when it names the same collection.
    fn with_collection<R>(&self, name: &str, f: impl FnOnce(&Collection) -> R) -> R {
        // Nothing `f` does calls back into this database synchronously; if
        // something ever did, it gets a handle of its own instead of a
        // panic on the borrow.
        let Ok(mut kept) = self.collection.try_borrow_mut() else {
            return f(&self.db.collection(name));
        };
        let collection = match kept.take() {
            Some(c) if c.name() == name => c,
            _ => self.db.collection(name),
        };
        let result = f(&collection);
        *kept = Some(collection);
        result
    }
}

#[wasm_bindgen]
impl WasmDatabase {
    /// This database's replica id.
    #[wasm_bindgen(js_name = replicaId)]
    pub fn replica_id(&self) -> String {
        self.db.replica_id().to_string()
    }

    /// Applies one packed `put` or `putIf` (see `packed.rs`) now. Its
    /// revision and durability join the turn that
    /// [`WasmDatabase::durable`] hands out: one Promise and one string per
    /// turn instead of one of each per write (the TypeScript layer hands
    /// each write a Promise derived from its turn's).
    pub fn put(&self, op: &[u8]) -> Result<(), JsValue> {
        let Op::Put {
            collection,
            id,
            fields,
            expected,
        } = read_op(op).map_err(encode_error)?
        else {
            return Err(encode_error("a put must be a packed put".into()));
        };
        let expected = expected
            .map(revision)
            .transpose()
            .map_err(|e| js_error(&e))?;
        let (revision, ticket) = self
            .with_collection(collection, |c| c.put_now(id, fields, expected))
            .map_err(|e| js_error(&e))?;
        let mut turn = self.turn.borrow_mut();
        match turn.durable.last_mut() {
            Some((last, count)) if last.same_as(&ticket) => *count += 1,
            _ => turn.durable.push((ticket, 1)),
        }
        revision_text(&mut turn.revisions, &revision);
        Ok(())
    }

    /// Ends the turn: the writes `put` applied since the last call. Returns
    /// a Promise of `{ revisions, errors }` once each of them is durable or
    /// failed: `revisions` their revisions in order, each
    /// `REVISION_LEN` (50) characters, in one string; `errors` undefined
    /// when all are stored, else an array holding, for each write in order,
    /// null or the error that kept it from being stored.
    pub fn durable(&self) -> js_sys::Promise {
        let Turn { durable, revisions } = std::mem::take(&mut *self.turn.borrow_mut());
        // ASCII hex digits and dashes only, so never lossy; checked whole,
        // which is cheaper than the lossy conversion's walk by chunks.
        let revisions = match String::from_utf8(revisions) {
            Ok(text) => JsValue::from_str(&text),
            Err(e) => JsValue::from_str(&String::from_utf8_lossy(e.as_bytes())),
        };
        future_to_promise(async move {
            let mut errors: Option<js_sys::Array> = None;
            let mut done = 0;
            for (ticket, count) in durable {
                match (ticket.await, &errors) {
                    (Ok(()), None) => {}
                    (Ok(()), Some(list)) => {
                        for _ in 0..count {
                            list.push(&JsValue::NULL);
                        }
                    }
                    (Err(e), _) => {
                        let list = errors
                            .get_or_insert_with(|| (0..done).map(|_| JsValue::NULL).collect());
                        for _ in 0..count {
                            list.push(&js_error(&e));
                        }
                    }
                }
                done += count;
            }
            Ok(object([
                ("revisions", revisions),
                ("errors", errors.map_or(JsValue::UNDEFINED, Into::into)),
            ]))
        })
    }

    /// Removes fields of a document.
    pub fn unset(&self, collection: &str, id: &str, names: Vec<String>) -> js_sys::Promise {
        let pending = self.db.collection(collection).unset(id, names);
        promise_of(pending, |r| r.to_string().into())
    }

    /// Deletes a document.
    pub fn delete(&self, collection: &str, id: &str) -> js_sys::Promise {
        promise_of(self.db.collection(collection).delete(id), |()| {
            JsValue::UNDEFINED
        })
    }

    /// A document packed (id, revision, fields), or undefined.
    pub fn get(&self, collection: &str, id: &str) -> Option<Vec<u8>> {
        self.with_collection(collection, |c| {
            c.read(id, |doc| {
                doc.map(|doc| {
                    let mut writer = Writer::default();
                    writer.document(&doc);
                    writer.finish()
                })
            })
        })
    }

    /// Names of the collections that exist, in order.
    #[wasm_bindgen(js_name = collectionNames)]
    pub fn collection_names(&self) -> Vec<String> {
        self.db.collection_names()
    }

    /// Documents in id order, filtered and paged, packed: their count,
    /// then each document.
    pub fn list(
        &self,
        collection: &str,
        prefix: Option<String>,
        after: Option<String>,
        limit: Option<u32>,
    ) -> Vec<u8> {
        let options = ListOptions {
            prefix,
            after,
            limit: limit.map(|l| l as usize),
        };
        self.db.collection(collection).read_list(&options, |docs| {
            let docs: Vec<_> = docs.collect();
            let mut writer = Writer::default();
            writer.count(docs.len());
            for doc in &docs {
                writer.document(doc);
            }
            writer.finish()
        })
    }

    /// Applies packed ops (see `packed.rs`) all together or not at all.
    /// Each op is read as it is applied: malformed input found midway fails
    /// the transaction (nothing of it applies) with an `Encode` error.
    pub fn transaction(&self, ops: &[u8]) -> Result<js_sys::Promise, JsValue> {
        let ops = read_ops(ops).map_err(encode_error)?;
        let pending = self.db.transaction(move |tx| {
            for op in ops {
                match op.map_err(Error::Encode)? {
                    Op::Put {
                        collection,
                        id,
                        fields,
                        expected: None,
                    } => tx.put(collection, id, fields)?,
                    Op::Put {
                        collection,
                        id,
                        fields,
                        expected: Some(expected),
                    } => tx.put_if(collection, id, fields, revision(expected)?)?,
                    Op::Unset {
                        collection,
                        id,
                        names,
                    } => tx.unset(collection, id, names)?,
                    Op::Delete { collection, id } => tx.delete(collection, id)?,
                }
            }
            Ok(())
        });
        Ok(promise_of(pending, |()| JsValue::UNDEFINED))
    }

    /// Calls `callback(change)` for every change, to one collection, or
    /// to one document (`collection` and `id` both given).
    pub fn subscribe(
        &self,
        collection: Option<String>,
        id: Option<String>,
        callback: js_sys::Function,
    ) -> WasmSubscription {
        let stream = match (collection, id) {
            (Some(c), Some(id)) => self.db.collection(c).subscribe_document(&id),
            (Some(c), None) => self.db.collection(c).subscribe(),
            _ => self.db.subscribe(),
        };
        run_subscription(stream, callback, change_js)
    }

    /// Where syncing stands.
    pub fn status(&self) -> JsValue {
        status_js(&self.db.status())
    }

    /// Calls `callback(status)` now and on every status change.
    #[wasm_bindgen(js_name = watchStatus)]
    pub fn watch_status(&self, callback: js_sys::Function) -> WasmSubscription {
        run_subscription(self.db.status_changes(), callback, status_js)
    }

    /// Starts syncing (again).
    pub fn connect(&self) -> Result<(), JsValue> {
        self.db.connect().map_err(|e| js_error(&e))
    }

    /// Stops syncing; everything keeps working locally.
    pub fn disconnect(&self) {
        self.db.disconnect();
    }

    /// Replaces the access token.
    #[wasm_bindgen(js_name = setToken)]
    pub fn set_token(&self, token: String) {
        self.db.set_token(token);
    }

    /// Resolves once the relay has acknowledged every local write so far.
    pub fn flush(&self) -> js_sys::Promise {
        let flush = self.db.flush();
        future_to_promise(async move {
            flush
                .await
                .map(|()| JsValue::UNDEFINED)
                .map_err(|e| js_error(&e))
        })
    }

    /// Closes the database once everything applied is stored.
    pub fn close(&self) -> js_sys::Promise {
        let close = self.db.close();
        let store = self.store.clone();
        let token_id = self.token_id;
        future_to_promise(async move {
            close.await;
            if let Some(id) = token_id {
                TOKEN_FUNCTIONS.with(|f| f.borrow_mut().remove(&id));
            }
            if let AnyStore::IndexedDb(idb) = store {
                idb.close();
            }
            Ok(JsValue::UNDEFINED)
        })
    }
}
