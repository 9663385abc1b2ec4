//! The host loop and the Database API, deterministically: in-memory stores
//! (some completing writes only when the test says so), an in-process relay
//! running the real `Room`, and a manual clock.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::executor::LocalPool;
use futures::future::LocalBoxFuture;
use futures::task::LocalSpawnExt;
use futures::{FutureExt, StreamExt};
use sync_client::memory::{ManualClock, ManualTimer, MemoryRelay, MemoryStore};
use sync_client::platform::{ClientStore, OnDurable, StoreError, Timer};
use sync_client::{
    Change, Connection, Database, Error, HostLoop, ListOptions, Options, Origin, Platform,
    RelayOptions, Value, open,
};
use sync_core::PersistBatch;
use sync_core::Timestamp;
use sync_core::store::Record;

const T0: u64 = 1_700_000_000_000;

struct World {
    pool: LocalPool,
    clock: Arc<ManualClock>,
    relay: MemoryRelay,
    seed: u64,
}

impl World {
    fn new() -> World {
        World {
            pool: LocalPool::new(),
            clock: ManualClock::new(Timestamp::from_unix_ms(T0)),
            relay: MemoryRelay::new(),
            seed: 1,
        }
    }

    fn timer(&self) -> Arc<dyn Timer + Send + Sync> {
        Arc::new(ManualTimer(self.clock.clone()))
    }

    fn open_with<S: ClientStore + 'static>(&mut self, store: S, relay: bool) -> Database {
        self.seed += 1;
        let platform = Platform {
            transport: self.relay.transport(self.timer()),
            store,
            timer: self.timer(),
            seed: self.seed,
        };
        let options = if relay {
            Options::with_relay(RelayOptions::new("mem://relay", "room", "token"))
        } else {
            Options::local()
        };
        let (db, host) = self.pool.run_until(open(platform, options)).expect("opens");
        self.pool.spawner().spawn_local(host).expect("spawn");
        self.settle();
        db
    }

    fn open(&mut self, store: &MemoryStore) -> Database {
        self.open_with(store.clone(), true)
    }

    /// Runs every loop until none can make progress without time passing.
    fn settle(&mut self) {
        self.pool.run_until_stalled();
    }

    /// Lets `ms` of time pass, in steps, running the loops at each wakeup.
    fn advance(&mut self, ms: u64) {
        let end = self.clock_now() + Duration::from_millis(ms);
        loop {
            self.settle();
            let next = self.clock.next_wakeup().filter(|&at| at <= end);
            let now = self.clock_now();
            match next {
                Some(at) if at > now => self.clock.advance(at.saturating_duration_since(now)),
                Some(_) => self.clock.advance(Duration::from_millis(1)),
                None => {
                    self.clock.advance(end.saturating_duration_since(now));
                    self.settle();
                    return;
                }
            }
        }
    }

    fn clock_now(&self) -> Timestamp {
        ManualTimer(self.clock.clone()).now()
    }

    fn block<F: std::future::Future>(&mut self, fut: F) -> F::Output {
        self.pool.run_until(fut)
    }
}

fn title(db: &Database, id: &str) -> Option<Value> {
    db.collection("todos")
        .get(id)
        .and_then(|d| d.fields.get("title").cloned())
}

#[test]
fn a_write_is_visible_at_once_and_durable_when_its_future_resolves() {
    let mut w = World::new();
    let store = MemoryStore::new();
    let db = w.open_with(store.clone(), false);
    let todos = db.collection("todos");
    let write = todos.put("a", [("title", "milk")]);
    assert_eq!(title(&db, "a"), Some(Value::from("milk")));
    w.block(write).expect("durable");
    drop(todos);
    drop(db);
    w.settle();

    // Reopening the same store finds the write.
    let again = w.open_with(store, false);
    assert_eq!(title(&again, "a"), Some(Value::from("milk")));
}

#[test]
fn collection_names_lists_the_collections_holding_documents_in_order() {
    let mut w = World::new();
    let db = w.open_with(MemoryStore::new(), false);
    assert!(db.collection_names().is_empty());
    let writes = (
        db.collection("todos").put("a", [("title", "milk")]),
        db.collection("notes").put("n", [("text", "hi")]),
    );
    assert_eq!(db.collection_names(), ["notes", "todos"]);
    w.block(writes.0).expect("durable");
    w.block(writes.1).expect("durable");
    w.block(db.collection("notes").delete("n"))
        .expect("durable");
    assert_eq!(db.collection_names(), ["todos"]);
}

/// A write the test has not released yet.
type HeldWrite = (PersistBatch, oneshot::Sender<()>);

/// A store whose writes complete only when the test releases them, in order.
#[derive(Clone, Default)]
struct GatedStore {
    inner: MemoryStore,
    held: Rc<RefCell<VecDeque<HeldWrite>>>,
}

impl GatedStore {
    fn release_one(&self) -> bool {
        let Some((batch, done)) = self.held.borrow_mut().pop_front() else {
            return false;
        };
        let inner = self.inner.clone();
        futures::executor::block_on(inner.write(batch)).expect("memory");
        let _ = done.send(());
        true
    }

    fn waiting(&self) -> usize {
        self.held.borrow().len()
    }
}

impl ClientStore for GatedStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.held.borrow_mut().push_back((batch, tx));
        async move {
            rx.await
                .map_err(|_| StoreError::new(sync_client::platform::StoreErrorKind::Closed, "gone"))
        }
        .boxed_local()
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        self.inner.read_all()
    }
}

#[test]
fn nothing_reaches_the_relay_before_the_write_is_stored() {
    let mut w = World::new();
    let store = GatedStore::default();
    let db = w.open_with(store.clone(), true);
    // Opening stores the session's state before it joins.
    while store.release_one() {
        w.settle();
    }
    assert_eq!(db.status().connection, Connection::Online);
    let frames_before = w.relay.frames_received();

    let mut write = db.collection("todos").put("a", [("title", "milk")]);
    w.settle();
    assert_eq!(store.waiting(), 1, "one store write in flight");
    assert_eq!(
        w.relay.frames_received(),
        frames_before,
        "the push waits for the store"
    );
    assert!((&mut write).now_or_never().is_none(), "not durable yet");
    assert_eq!(w.relay.head("room"), 0);

    store.release_one();
    w.settle();
    assert_eq!(w.relay.head("room"), 1, "pushed once stored");
    assert!(write.now_or_never().expect("resolved").is_ok());
}

#[test]
fn writes_made_while_a_store_write_runs_share_the_next_write() {
    let mut w = World::new();
    let store = GatedStore::default();
    let db = w.open_with(store.clone(), false);
    while store.release_one() {
        w.settle();
    }
    let todos = db.collection("todos");
    let first = todos.put("a", [("n", 1)]);
    w.settle();
    assert_eq!(store.waiting(), 1);
    let rest: Vec<_> = (0..50)
        .map(|i| todos.put(&format!("b{i}"), [("n", i)]))
        .collect();
    w.settle();
    assert_eq!(store.waiting(), 1, "the 50 writes wait behind the first");
    store.release_one();
    w.settle();
    assert_eq!(store.waiting(), 1, "and go to the store as one write");
    store.release_one();
    w.settle();
    assert!(first.now_or_never().expect("done").is_ok());
    for write in rest {
        assert!(write.now_or_never().expect("done").is_ok());
    }
}

#[test]
fn two_databases_converge_and_subscribers_see_remote_changes() {
    let mut w = World::new();
    let a = w.open(&MemoryStore::new());
    let b = w.open(&MemoryStore::new());
    let mut changes = b.collection("todos").subscribe();

    let write = a.collection("todos").put("x", [("title", "milk")]);
    w.block(write).expect("durable");
    w.settle();
    assert_eq!(title(&b, "x"), Some(Value::from("milk")));
    let change = changes.next().now_or_never().flatten().expect("a change");
    assert_eq!(
        change,
        Change::Document {
            collection: "todos".into(),
            id: "x".into(),
            origin: Origin::Remote,
        }
    );

    // Concurrent edits of different fields both survive.
    let w1 = a.collection("todos").put("x", [("title", "oat milk")]);
    let w2 = b.collection("todos").put("x", [("done", true)]);
    w.block(async { (w1.await, w2.await) }).0.expect("stored");
    w.settle();
    for db in [&a, &b] {
        let doc = db.collection("todos").get("x").expect("exists");
        assert_eq!(doc.fields["title"], Value::from("oat milk"));
        assert_eq!(doc.fields["done"], Value::from(true));
    }
}

#[test]
fn writes_made_while_the_relay_is_down_sync_when_it_returns() {
    let mut w = World::new();
    let a = w.open(&MemoryStore::new());
    let b = w.open(&MemoryStore::new());
    w.relay.set_down(true);
    w.settle();
    assert!(matches!(
        a.status().connection,
        Connection::Reconnecting { .. }
    ));
    let write = a.collection("todos").put("offline", [("title", "kept")]);
    w.block(write).expect("durable locally");
    assert_eq!(a.status().pending_writes, 1);
    let mut flushed = Box::pin(a.flush());
    w.advance(5_000);
    assert!((&mut flushed).now_or_never().is_none(), "relay still down");

    w.relay.set_down(false);
    w.advance(60_000);
    assert!(flushed.now_or_never().expect("flushed").is_ok());
    assert_eq!(a.status().pending_writes, 0);
    assert_eq!(title(&b, "offline"), Some(Value::from("kept")));
}

#[test]
fn a_failed_store_write_fails_its_future_and_the_database_recovers() {
    let mut w = World::new();
    let store = MemoryStore::new();
    let db = w.open_with(store.clone(), false);
    let todos = db.collection("todos");
    w.block(todos.put("kept", [("n", 1)])).expect("stored");

    store.set_failing(true);
    let failed = todos.put("lost", [("n", 2)]);
    assert!(todos.get("lost").is_some(), "visible until the store fails");
    let err = w.block(failed).expect_err("the store failed");
    assert!(matches!(err, Error::Store(_)), "{err}");
    w.settle();
    // Memory went back to what is stored.
    assert!(todos.get("lost").is_none());
    assert!(todos.get("kept").is_some());
    assert!(db.status().last_error.is_some());

    store.set_failing(false);
    w.block(todos.put("later", [("n", 3)]))
        .expect("works again");
    assert!(todos.get("later").is_some());
}

#[test]
fn writes_made_together_share_one_ticket_and_a_failure_fails_only_its_own() {
    let mut w = World::new();
    let store = MemoryStore::new();
    let db = w.open_with(store.clone(), false);
    let todos = db.collection("todos");
    let (first, a) = todos.put_now("a", [("n", 1)], None).expect("applied");
    let (second, b) = todos
        .put_now("b", [("n", 2)], Some(None))
        .expect("applied: b was absent");
    assert_eq!(todos.get("a").expect("visible").revision, first);
    assert_eq!(todos.get("b").expect("visible").revision, second);
    assert!(a.same_as(&b), "written before the loop ran: one persist");
    assert!(store.records().is_empty(), "not stored yet");
    w.block(b).expect("stored");
    assert!(!store.records().is_empty());
    // A put_if at a stale revision is refused at once.
    let stale = todos.put_now("a", [("n", 3)], Some(None));
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    // An invalid write is refused at once too.
    let refused = todos.put_now("", [("n", 3)], None);
    assert!(
        matches!(refused, Err(Error::InvalidWrite(_))),
        "{refused:?}"
    );

    store.set_failing(true);
    let (_, lost) = todos.put_now("c", [("n", 3)], None).expect("applied");
    assert!(!lost.same_as(&a), "a later persist");
    let err = w.block(lost).expect_err("the store failed");
    assert!(matches!(err, Error::Store(_)), "{err}");
    w.settle();
    assert!(
        todos.get("c").is_none(),
        "memory went back to what is stored"
    );
}

#[test]
fn a_ticket_after_a_failed_store_write_waits_for_its_own_persist() {
    let mut w = World::new();
    let store = MemoryStore::new();
    let db = w.open_with(store.clone(), false);
    let todos = db.collection("todos");
    store.set_failing(true);
    let (_, lost) = todos.put_now("a", [("n", 1)], None).expect("applied");
    let err = w.block(lost).expect_err("the store failed");
    assert!(matches!(err, Error::Store(_)), "{err}");
    w.settle();
    // The session rebuilt after the failure numbers its persists from the
    // start again, so its first persist has the failed one's number.
    store.set_failing(false);
    let (_, later) = todos.put_now("b", [("n", 2)], None).expect("applied");
    w.block(later).expect("stored after the store recovered");
    assert!(todos.get("b").is_some());
    assert!(!store.records().is_empty());
}

#[test]
fn read_list_sees_what_list_returns() {
    let mut w = World::new();
    let db = w.open_with(MemoryStore::new(), false);
    let todos = db.collection("todos");
    for id in ["a1", "a2", "b1", "a3"] {
        w.block(todos.put(id, [("id", id)])).expect("stored");
    }
    let options = ListOptions {
        prefix: Some("a".into()),
        after: Some("a1".into()),
        limit: Some(5),
    };
    let ids = todos.read_list(&options, |docs| {
        docs.map(|d| d.id().to_owned()).collect::<Vec<_>>()
    });
    assert_eq!(ids, ["a2", "a3"]);
    let listed: Vec<_> = todos.list(&options).into_iter().map(|d| d.id).collect();
    assert_eq!(listed, ids);
}

#[test]
fn conditional_writes_refuse_a_stale_revision() {
    let mut w = World::new();
    let db = w.open_with(MemoryStore::new(), false);
    let todos = db.collection("todos");
    let rev = w.block(todos.put("a", [("n", 1)])).expect("stored");
    w.block(todos.put("a", [("n", 2)])).expect("stored");
    let err = w
        .block(todos.put_if("a", [("n", 3)], Some(rev)))
        .expect_err("stale");
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    let current = todos.get("a").expect("exists").revision;
    w.block(todos.put_if("a", [("n", 3)], Some(current)))
        .expect("current revision");
    assert_eq!(todos.get("a").expect("exists").fields["n"], Value::from(3));
    let err = w
        .block(todos.put_if("new", [("n", 1)], Some(current)))
        .expect_err("absent");
    assert!(matches!(err, Error::Conflict { .. }));
}

#[test]
fn list_pages_in_id_order() {
    let mut w = World::new();
    let db = w.open_with(MemoryStore::new(), false);
    let todos = db.collection("todos");
    for id in ["b2", "a1", "b1", "c1", "b3"] {
        drop(todos.put(id, [("n", 1)]));
    }
    drop(todos.delete("b2"));
    let ids =
        |o: ListOptions| -> Vec<String> { todos.list(&o).into_iter().map(|d| d.id).collect() };
    assert_eq!(ids(ListOptions::default()), ["a1", "b1", "b3", "c1"]);
    let page = ListOptions {
        prefix: Some("b".into()),
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(ids(page.clone()), ["b1"]);
    assert_eq!(
        ids(ListOptions {
            after: Some("b1".into()),
            ..page
        }),
        ["b3"]
    );
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Todo {
    title: String,
    done: bool,
    tags: Vec<String>,
}

#[test]
fn typed_documents_round_trip() {
    let mut w = World::new();
    let db = w.open_with(MemoryStore::new(), false);
    let todos = db.typed_collection::<Todo>("todos");
    let todo = Todo {
        title: "milk".into(),
        done: false,
        tags: vec!["shop".into()],
    };
    w.block(todos.put("a", &todo)).expect("stored");
    assert_eq!(todos.get("a").expect("decodes"), Some(todo));
    // A document of another shape is a typed error, not a panic.
    drop(db.collection("todos").put("bad", [("title", 5)]));
    assert!(matches!(todos.get("bad"), Err(Error::Decode { .. })));
}

#[test]
fn transactions_become_durable_as_one_write() {
    let mut w = World::new();
    let store = GatedStore::default();
    let db = w.open_with(store.clone(), false);
    while store.release_one() {
        w.settle();
    }
    let tx = db.transaction(|tx| {
        for i in 0..10 {
            tx.put("todos", &format!("t{i}"), [("n", i)])?;
        }
        tx.delete("todos", "t3")?;
        Ok(())
    });
    w.settle();
    assert_eq!(store.waiting(), 1, "one store write");
    assert_eq!(
        db.collection("todos").list(&ListOptions::default()).len(),
        9
    );
    store.release_one();
    w.settle();
    assert!(tx.now_or_never().expect("done").is_ok());
}

#[test]
fn closing_ends_the_loop_subscriptions_and_later_writes() {
    let mut w = World::new();
    let db = w.open(&MemoryStore::new());
    let mut changes = db.subscribe();
    let mut status = db.status_changes();
    let write = db.collection("todos").put("a", [("n", 1)]);
    drop(db.close());
    w.settle();
    assert!(
        w.block(write).is_ok(),
        "a write made before close is stored"
    );
    let err = w
        .block(db.collection("todos").put("b", [("n", 1)]))
        .expect_err("closed");
    assert_eq!(err, Error::Closed);
    let rest: Vec<Change> = w.block(changes.by_ref().collect());
    assert_eq!(rest.len(), 1, "the change made before close, then the end");
    let _ = w.block(status.by_ref().collect::<Vec<_>>());
}

/// A token in the relay's format (unsigned: the in-process relay does not
/// check it) for room "room", expiring at `expires_at` (Unix seconds).
fn token_expiring_at(expires_at: u64) -> String {
    let mut claims = vec![4, b'r', b'o', b'o', b'm', 1];
    let mut n = expires_at;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            claims.push(byte);
            break;
        }
        claims.push(byte | 0x80);
    }
    claims.push(0); // no replica
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = String::new();
    for chunk in claims.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            text.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    format!("{text}.c2ln")
}

#[test]
fn a_token_source_is_asked_before_expiry_and_never_in_a_tight_loop() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut w = World::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    // Expires in two minutes; the source keeps handing back an expired one.
    let fresh = token_expiring_at(T0 / 1000 + 120);
    let stale = token_expiring_at(T0 / 1000 - 10);
    let source: sync_client::TokenSource = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        let token = stale.clone();
        async move { Ok(token) }.boxed_local()
    });
    w.seed += 1;
    let platform = Platform {
        transport: w.relay.transport(w.timer()),
        store: MemoryStore::new(),
        timer: w.timer(),
        seed: w.seed,
    };
    let options =
        Options::with_relay(RelayOptions::new("mem://relay", "room", fresh).token_source(source));
    let (_db, host) = w.pool.run_until(open(platform, options)).expect("opens");
    w.pool.spawner().spawn_local(host).expect("spawn");
    w.advance(30_000);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "not yet: expiry is 90 s away"
    );
    w.advance(35_000);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a minute before expiry");
    // The source returned an expired token: asked again, but at most every 10 s.
    w.advance(60_000);
    let asked = calls.load(Ordering::SeqCst);
    assert!((6..=8).contains(&asked), "asked {asked} times");
}

/// A copied store (a copied data directory, a restored backup) that knows
/// it is a copy goes on under a new replica id, and nothing is lost or
/// revived: the write it held unsent reaches the relay from both, the
/// original's later rename of it wins, and each side's new writes arrive.
#[test]
fn a_copied_store_continues_as_a_new_replica() {
    let mut w = World::new();
    let store = MemoryStore::new();
    let original = w.open(&store);
    let todos = original.collection("todos");
    w.block(todos.put("a", [("title", "synced")]))
        .expect("durable");
    w.settle();
    original.disconnect();
    w.block(todos.put("b", [("title", "unsent at copy time")]))
        .expect("durable");
    let original_id = original.replica_id();

    let copy_store = store.copy();
    let copy = w.open(&copy_store);
    assert_ne!(copy.replica_id(), original_id, "the copy has its own id");
    w.settle();
    // What the copy stored says so too: reopening keeps the new id.
    let copy_id = copy.replica_id();
    drop(copy);
    w.settle();
    let copy = w.open(&copy_store);
    assert_eq!(copy.replica_id(), copy_id);

    w.block(
        copy.collection("todos")
            .put("c", [("title", "from the copy")]),
    )
    .expect("durable");
    w.advance(1);
    w.block(todos.put("b", [("title", "renamed later")]))
        .expect("durable");
    original.connect().expect("connects");
    w.advance(1_000);
    w.block(original.flush()).expect("flushed");
    w.block(copy.flush()).expect("flushed");
    w.advance(1_000);

    for db in [&original, &copy] {
        assert_eq!(title(db, "a"), Some(Value::from("synced")));
        assert_eq!(title(db, "b"), Some(Value::from("renamed later")));
        assert_eq!(title(db, "c"), Some(Value::from("from the copy")));
    }
}

/// A copy the store cannot detect is caught by the relay, which holds more
/// of the replica than the copy does: the copy then goes on as a new
/// replica by itself and keeps syncing.
#[test]
fn a_store_behind_the_relay_continues_as_a_new_replica() {
    let mut w = World::new();
    let store = MemoryStore::new();
    let original = w.open(&store);
    let todos = original.collection("todos");
    w.block(todos.put("a", [("title", "before the backup")]))
        .expect("durable");
    w.block(original.flush()).expect("flushed");
    let backup = store.records();
    w.block(todos.put("b", [("title", "after the backup")]))
        .expect("durable");
    w.block(original.flush()).expect("flushed");
    let original_id = original.replica_id();
    drop(todos);
    drop(original);
    w.settle();

    // The device is restored from the backup by means the store cannot see.
    let restored = w.open(&MemoryStore::from_records(backup));
    w.advance(1_000);
    assert_ne!(restored.replica_id(), original_id);
    assert_eq!(title(&restored, "b"), Some(Value::from("after the backup")));
    w.block(
        restored
            .collection("todos")
            .put("c", [("title", "after restore")]),
    )
    .expect("durable");
    w.block(restored.flush())
        .expect("the relay takes the new replica's writes");

    let reopened = w.open(&store);
    w.advance(1_000);
    assert_eq!(title(&reopened, "c"), Some(Value::from("after restore")));
}

/// A write the test answers when it likes, in any order.
type OpenWrite = Option<(PersistBatch, oneshot::Sender<Result<(), StoreError>>)>;

/// A store that lets the loop keep `limit` writes in flight and answers
/// each one only when the test says so, in any order the test picks. An
/// `Ok` answer applies the batch to the inner store first.
#[derive(Clone)]
struct PipelinedStore {
    inner: MemoryStore,
    limit: usize,
    writes: Rc<RefCell<Vec<OpenWrite>>>,
}

impl PipelinedStore {
    fn new(limit: usize) -> PipelinedStore {
        PipelinedStore {
            inner: MemoryStore::new(),
            limit,
            writes: Rc::default(),
        }
    }

    /// Writes issued so far, answered or not.
    fn issued(&self) -> usize {
        self.writes.borrow().len()
    }

    /// Writes issued and not answered yet.
    fn in_flight(&self) -> usize {
        self.writes.borrow().iter().flatten().count()
    }

    /// Answers write number `n` (0-based, in issue order).
    fn answer(&self, n: usize, ok: bool) {
        let (batch, done) = self.writes.borrow_mut()[n].take().expect("open write");
        let result = if ok {
            futures::executor::block_on(self.inner.write(batch)).expect("memory");
            Ok(())
        } else {
            Err(StoreError::new(
                sync_client::platform::StoreErrorKind::Full,
                "simulated write failure",
            ))
        };
        let _ = done.send(result);
    }

    /// Answers every open write `Ok`, oldest first.
    fn answer_all(&self) {
        for n in 0..self.issued() {
            if self.writes.borrow()[n].is_some() {
                self.answer(n, true);
            }
        }
    }
}

impl ClientStore for PipelinedStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.writes.borrow_mut().push(Some((batch, tx)));
        async move {
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::new(
                    sync_client::platform::StoreErrorKind::Closed,
                    "gone",
                ))
            })
        }
        .boxed_local()
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        self.inner.read_all()
    }

    fn max_writes_in_flight(&self) -> usize {
        self.limit
    }
}

/// Opens a local database on `store` and stores what opening writes.
fn open_pipelined(w: &mut World, store: &PipelinedStore) -> Database {
    let db = w.open_with(store.clone(), false);
    while store.in_flight() > 0 {
        store.answer_all();
        w.settle();
    }
    db
}

#[test]
fn writes_pipeline_up_to_the_stores_limit_and_count_durable_in_issue_order() {
    let mut w = World::new();
    let store = PipelinedStore::new(2);
    let db = open_pipelined(&mut w, &store);
    let todos = db.collection("todos");
    let first = store.issued();

    let a = todos.put("a", [("n", 1)]);
    w.settle();
    let b = todos.put("b", [("n", 2)]);
    w.settle();
    assert_eq!(store.in_flight(), 2, "b is issued while a is in flight");
    let mut c = todos.put("c", [("n", 3)]);
    w.settle();
    assert_eq!(
        store.in_flight(),
        2,
        "c waits: the store takes two at a time"
    );

    store.answer(first, true);
    w.settle();
    assert!(a.now_or_never().expect("a done").is_ok());
    assert_eq!(store.in_flight(), 2, "c is issued once a is answered");

    // The store answers c before b: c is durable only once b is too.
    let mut b = b;
    store.answer(first + 2, true);
    w.settle();
    assert!((&mut b).now_or_never().is_none(), "b is not answered yet");
    assert!((&mut c).now_or_never().is_none(), "c waits for b");
    store.answer(first + 1, true);
    w.settle();
    assert!(b.now_or_never().expect("b done").is_ok());
    assert!(c.now_or_never().expect("c done").is_ok());
}

#[test]
fn a_failed_write_fails_the_writes_in_flight_behind_it_and_their_late_answers_count_for_nothing() {
    let mut w = World::new();
    let store = PipelinedStore::new(2);
    let db = open_pipelined(&mut w, &store);
    let todos = db.collection("todos");
    let kept = todos.put("kept", [("n", 0)]);
    w.settle();
    store.answer_all();
    w.settle();
    assert!(kept.now_or_never().expect("kept done").is_ok());
    let first = store.issued();

    let a = todos.put("a", [("n", 1)]);
    w.settle();
    let b = todos.put("b", [("n", 2)]);
    w.settle();
    assert_eq!(store.in_flight(), 2, "a and b are both in flight");

    // a fails while b is in flight: b depended on it and fails with it.
    store.answer(first, false);
    w.settle();
    let err = w.block(a).expect_err("a failed");
    assert!(matches!(err, Error::Store(_)), "{err}");
    let err = w.block(b).expect_err("b failed with a");
    assert!(matches!(err, Error::Store(_)), "{err}");
    assert!(todos.get("a").is_none() && todos.get("b").is_none());
    assert!(todos.get("kept").is_some(), "rebuilt from the store");

    // The rebuilt database writes again: c and d each in a write of their
    // own. Then b's write is answered late, and `Ok` (a store breaking its
    // contract): it must count for nothing in the rebuilt database.
    let c = todos.put("c", [("n", 3)]);
    w.settle();
    let mut d = todos.put("d", [("n", 4)]);
    w.settle();
    // A write still counted in flight from before the failure would hold
    // a place (and, never answered, stall the loop): both go out.
    assert_eq!(store.issued(), first + 4, "c and d were issued");
    store.answer(first + 1, true);
    w.settle();
    store.answer(first + 2, true);
    w.settle();
    assert!(w.block(c).is_ok());
    assert!(
        (&mut d).now_or_never().is_none(),
        "d's write is not answered"
    );
    store.answer(first + 3, false);
    w.settle();
    assert!(w.block(d).is_err(), "d's write failed");
}

/// Room "room" holds 100 documents `d000`… (`n` = their number), written
/// by another client and compacted: a client joining now gets one snapshot.
fn compacted_room_of_100_documents(w: &mut World) -> Database {
    let source = w.open(&MemoryStore::new());
    source
        .transaction(|tx| {
            for n in 0..100 {
                tx.put("docs", &format!("d{n:03}"), [("n", n)])?;
            }
            Ok(())
        })
        .now_or_never();
    w.advance(10);
    assert_eq!(w.relay.head("room"), 100);
    w.relay.compact("room", w.clock_now());
    source
}

/// Opens `store` without a relay, in slices of `slice_docs`, releasing
/// each yield the loop makes while it opens: the database, its loop, and
/// the number of yields opening took (checking they come one at a time).
fn open_counting_yields(
    w: &World,
    store: &MemoryStore,
    slice_docs: usize,
) -> (Database, HostLoop, usize) {
    let yields = GatedYields {
        timer: ManualTimer(w.clock.clone()),
        held: Arc::default(),
    };
    let mut options = Options::local();
    options.slice_docs = Some(slice_docs);
    let platform = Platform {
        transport: w.relay.transport(w.timer()),
        store: store.clone(),
        timer: Arc::new(yields.clone()),
        seed: 7,
    };
    let mut opening = open(platform, options).boxed_local();
    let mut yielded = 0;
    loop {
        if let Some(result) = (&mut opening).now_or_never() {
            let (db, host) = result.expect("opens");
            return (db, host, yielded);
        }
        assert_eq!(yields.waiting(), 1, "one yield at a time");
        yielded += 1;
        yields.release_one();
    }
}

/// A timer whose yields end only when the test says: the test sees each
/// slice of a long piece of work and can act between two slices.
#[derive(Clone)]
struct GatedYields {
    timer: ManualTimer,
    held: Arc<std::sync::Mutex<VecDeque<oneshot::Sender<()>>>>,
}

impl GatedYields {
    fn release_one(&self) -> bool {
        let next = self.held.lock().unwrap().pop_front();
        next.is_some_and(|done| done.send(()).is_ok())
    }

    fn waiting(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Timer for GatedYields {
    fn now(&self) -> Timestamp {
        self.timer.now()
    }

    fn sleep_until(&self, at: Timestamp) -> LocalBoxFuture<'static, ()> {
        self.timer.sleep_until(at)
    }

    fn yield_now(&self) -> LocalBoxFuture<'static, ()> {
        let (tx, rx) = oneshot::channel();
        self.held.lock().unwrap().push_back(tx);
        async move {
            let _ = rx.await;
        }
        .boxed_local()
    }
}

#[test]
fn a_large_snapshot_is_decoded_and_applied_in_slices_and_a_write_made_meanwhile_is_kept() {
    let mut w = World::new();
    // A room of 100 documents, compacted: a new client gets one snapshot.
    let source = compacted_room_of_100_documents(&mut w);

    let yields = GatedYields {
        timer: ManualTimer(w.clock.clone()),
        held: Arc::default(),
    };
    let store = MemoryStore::new();
    let mut options = Options::with_relay(RelayOptions::new("mem://relay", "room", "token"));
    options.slice_docs = Some(10);
    let platform = Platform {
        transport: w.relay.transport(w.timer()),
        store: store.clone(),
        timer: Arc::new(yields.clone()),
        seed: 99,
    };
    let (db, host) = w.block(open(platform, options)).expect("opens");
    let mut changes = db.collection("docs").subscribe();
    w.pool.spawner().spawn_local(host).expect("spawn");
    w.settle();

    // The first slice was decoded with the snapshot's arrival; the loop
    // now waits for the platform before each further one.
    assert_eq!(yields.waiting(), 1, "the loop yields before the next slice");
    let read = || {
        db.collection("docs")
            .get("d099")
            .map(|d| d.fields["n"].clone())
    };
    assert_eq!(read(), None, "nothing of the snapshot before it is decoded");
    let mut decoded = 1;
    while read().is_none() {
        assert!(yields.release_one(), "decoding goes on");
        w.settle();
        decoded += 1;
    }
    assert!(decoded >= 10, "decoded 10 documents at a time: {decoded}");
    assert_eq!(
        read(),
        Some(Value::from(99)),
        "reads see the snapshot's state once it is decoded"
    );
    let status = db.status();
    assert_eq!(status.cursor, 0, "the cursor waits for the last slice");

    // A local write between two slices.
    let write = db.collection("docs").put("d050", [("local", true)]);
    w.settle();
    // Each turn of the loop announces at most one slice of documents
    // (plus the local write's own change).
    fn announced(changes: &mut sync_client::Subscription) -> usize {
        let mut n = 0;
        while let Some(Some(change)) = changes.next().now_or_never() {
            n += usize::from(matches!(change, Change::Document { .. }));
        }
        n
    }
    let mut announced_each = vec![announced(&mut changes)];
    while yields.release_one() {
        w.settle();
        announced_each.push(announced(&mut changes));
    }
    assert!(write.now_or_never().expect("resolved").is_ok(), "durable");
    let total: usize = announced_each.iter().sum();
    assert!(total >= 100, "every document announced: {announced_each:?}");
    assert!(
        announced_each.len() >= 9 && announced_each.iter().all(|&n| n <= 10 + 1),
        "announced a slice at a time: {announced_each:?}"
    );
    w.advance(10);
    assert!(
        db.status().cursor >= 100,
        "cursor stored after the last slice"
    );

    // The write survived the apply: in memory, in the store, at the relay.
    let doc = db.collection("docs").get("d050").expect("there");
    assert_eq!(doc.fields["local"], Value::from(true));
    assert_eq!(doc.fields["n"], Value::from(50));
    assert_eq!(w.relay.head("room"), 101, "the write reached the relay");
    w.block(db.close());
    let reopened = w.open_with(store.clone(), false);
    assert_eq!(
        reopened
            .collection("docs")
            .list(&ListOptions::default())
            .len(),
        100
    );
    let doc = reopened.collection("docs").get("d050").expect("stored");
    assert_eq!(doc.fields["local"], Value::from(true));
    assert_eq!(doc.fields["n"], Value::from(50));
    w.advance(10);
    let source_doc = source.collection("docs").get("d050").expect("there");
    assert_eq!(
        source_doc.fields.get("local"),
        Some(&Value::from(true)),
        "synced to the other database"
    );
}

#[test]
fn opening_a_large_database_yields_between_slices_of_records() {
    let mut w = World::new();
    let store = MemoryStore::new();
    let db = w.open_with(store.clone(), false);
    db.transaction(|tx| {
        for n in 0..100 {
            tx.put("docs", &format!("d{n:03}"), [("n", n)])?;
        }
        Ok(())
    })
    .now_or_never();
    w.settle();
    w.block(db.close());

    let (db, host, yielded) = open_counting_yields(&w, &store, 25);
    // 100 documents, their 100 unsent operations and a few records more,
    // in slices of 25: a yield between each two.
    let records = w.block(store.read_all()).expect("reads").len();
    assert!(records > 200);
    assert_eq!(
        yielded,
        (records - 1) / 25,
        "a yield between each two slices"
    );
    w.pool.spawner().spawn_local(host).expect("spawn");
    w.settle();
    assert_eq!(
        db.collection("docs").list(&ListOptions::default()).len(),
        100
    );
}

#[test]
fn reopening_decodes_the_checkpoint_in_slices() {
    let mut w = World::new();
    // A new client of a compacted room stores its snapshot as its checkpoint.
    let _source = compacted_room_of_100_documents(&mut w);
    let store = MemoryStore::new();
    let synced = w.open(&store);
    w.advance(10);
    assert_eq!(synced.status().cursor, 100, "synced");
    w.block(synced.close());
    let records = w.block(store.read_all()).expect("reads");
    assert_eq!(records[0].0, b"B", "the checkpoint, first");
    assert!(records.len() < 10, "the documents are in the checkpoint");

    let (db, host, yielded) = open_counting_yields(&w, &store, 10);
    // 100 documents in slices of 10: a yield after each but the last.
    assert!(
        yielded >= 9,
        "the checkpoint decoded in slices: {yielded} yields"
    );
    w.pool.spawner().spawn_local(host).expect("spawn");
    w.settle();
    assert_eq!(
        db.collection("docs").list(&ListOptions::default()).len(),
        100
    );
    assert_eq!(
        db.collection("docs")
            .get("d042")
            .map(|d| d.fields["n"].clone()),
        Some(Value::from(42))
    );
}

/// A [`PipelinedStore`] that also keeps each write's `on_durable` for the
/// test to call, as a store that commits on a thread of its own does.
#[derive(Clone)]
struct NotifyingStore {
    pipelined: PipelinedStore,
    notifies: Rc<RefCell<Vec<Option<OnDurable>>>>,
}

impl NotifyingStore {
    /// Calls write number `n`'s `on_durable`, as the store's own thread would.
    fn notify(&self, n: usize) {
        let on_durable = self.notifies.borrow_mut()[n]
            .take()
            .expect("not called yet");
        on_durable.call();
    }
}

impl ClientStore for NotifyingStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        self.notifies.borrow_mut().push(None);
        self.pipelined.write(batch)
    }

    fn write_notify(
        &self,
        batch: PersistBatch,
        on_durable: OnDurable,
    ) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        self.notifies.borrow_mut().push(Some(on_durable));
        self.pipelined.write(batch)
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        self.pipelined.read_all()
    }

    fn max_writes_in_flight(&self) -> usize {
        self.pipelined.limit
    }
}

#[test]
fn a_store_that_knows_a_write_is_durable_answers_its_callers_without_the_loop() {
    let mut w = World::new();
    let store = NotifyingStore {
        pipelined: PipelinedStore::new(2),
        notifies: Rc::default(),
    };
    let db = w.open_with(store.clone(), false);
    while store.pipelined.in_flight() > 0 {
        store.pipelined.answer_all();
        w.settle();
    }
    let todos = db.collection("todos");
    let first = store.pipelined.issued();

    let mut a = todos.put("a", [("n", 1)]);
    w.settle();
    let mut b = todos.put("b", [("n", 2)]);
    w.settle();
    let mut c = todos.put("c", [("n", 3)]);
    w.settle();
    assert_eq!(store.pipelined.issued(), first + 2, "c waits for a place");

    // The store learns a and b are durable and says so; the loop does not
    // run (no `settle`), yet their callers have their answers. c, not
    // written yet, is not answered.
    store.notify(first);
    store.notify(first + 1);
    assert!((&mut a).now_or_never().expect("a answered").is_ok());
    assert!((&mut b).now_or_never().expect("b answered").is_ok());
    assert!((&mut c).now_or_never().is_none(), "c is not written yet");

    // The writes resolve; the loop goes on, and c is issued and fails
    // without being notified: its caller hears the store's failure from
    // the loop, not that the database closed.
    store.pipelined.answer(first, true);
    store.pipelined.answer(first + 1, true);
    w.settle();
    assert_eq!(store.pipelined.issued(), first + 3, "c is issued");
    store.pipelined.answer(first + 2, false);
    w.settle();
    let err = w.block(c).expect_err("c failed");
    assert!(matches!(err, Error::Store(_)), "{err}");
}

#[test]
fn a_loop_that_ends_unfinished_answers_everyone_waiting_on_it() {
    // A platform may drop the loop's task (a cancelled task, a panic
    // unwinding its thread): whoever waits on the loop must hear of it
    // rather than wait forever.
    let w = World::new();
    let platform = Platform {
        transport: w.relay.transport(w.timer()),
        store: MemoryStore::new(),
        timer: w.timer(),
        seed: 7,
    };
    let (db, host) = futures::executor::block_on(open(platform, Options::local())).expect("opens");
    let todos = db.collection("todos");
    let mut changes = db.subscribe();
    let write = todos.put("a", [("title", "milk")]);
    drop(host);
    assert_eq!(
        write.now_or_never().map(|r| r.err()),
        Some(Some(Error::Closed))
    );
    assert_eq!(db.close().now_or_never(), Some(()));
    assert!(matches!(
        todos.put("b", [("title", "eggs")]).now_or_never(),
        Some(Err(Error::Closed))
    ));
    let mut ended = false;
    while let Some(next) = changes.next().now_or_never() {
        if next.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the subscription ends with the loop");
}

/// Closing while a checkpoint is being encoded in slices finishes and
/// stores it first: the document records it supersedes are gone from the
/// store, so reopening decodes one checkpoint rather than every record.
#[test]
fn close_stores_the_checkpoint_being_encoded() {
    let mut w = World::new();
    let store = MemoryStore::new();
    w.seed += 1;
    let platform = Platform {
        transport: w.relay.transport(w.timer()),
        store: store.clone(),
        timer: w.timer(),
        seed: w.seed,
    };
    let mut options = Options::local();
    // A slice a document: the encoding outlasts the close by far.
    options.slice_docs = Some(1);
    let (db, host) = w.pool.run_until(open(platform, options)).expect("opens");
    w.pool.spawner().spawn_local(host).expect("spawn");
    let docs = db.collection("docs");
    // A transaction of the whole state is a checkpoint at once.
    let all = db.transaction(|tx| {
        for i in 0..4000 {
            tx.put("docs", &format!("d{i}"), [("n", 0)])?;
        }
        Ok(())
    });
    assert!(w.block(all).is_ok());
    // 1024 records since make the next one due (ReplicaConfig's minimum):
    // the last put's batch starts a sliced encoding, then the database closes.
    for i in 0..1023 {
        assert!(w.block(docs.put(&format!("d{i}"), [("n", 1)])).is_ok());
    }
    let last = docs.put("d1023", [("n", 1)]);
    let closed = db.close();
    assert!(w.block(last).is_ok());
    w.block(closed);
    let records = w.block(store.read_all()).expect("reads");
    let documents = records
        .iter()
        .filter(|(key, _)| {
            matches!(
                sync_core::StoreKey::from_bytes(key),
                Ok(sync_core::StoreKey::Document { .. })
            )
        })
        .count();
    assert_eq!(documents, 0, "the checkpoint stands for every record");
}

/// A reconnecting database behind the relay by 2,500 operations gets them
/// as three `Deliver`s at once (the relay's batches hold 1,000): the loop
/// takes all three together and confirms them with one `Applied` (the
/// session then encodes the ten documents they touch once, not once per
/// frame: sync-core's durability_contract tests that part).
#[test]
fn deliveries_that_arrive_together_are_stored_once_and_confirmed_once() {
    let mut w = World::new();
    let a = w.open(&MemoryStore::new());
    let b = w.open(&MemoryStore::new());
    b.disconnect();
    w.settle();
    let tx = a.transaction(|tx| {
        for i in 0..2_500 {
            tx.put(
                "todos",
                &format!("d{}", i % 10),
                [(format!("f{}", i / 10), i)],
            )?;
        }
        Ok(())
    });
    w.block(tx).expect("stored");
    w.settle();
    assert_eq!(w.relay.head("room"), 2_500);

    let before = w.relay.frames_received();
    b.connect().expect("connects");
    w.settle();
    assert_eq!(b.status().cursor, 2_500);
    assert_eq!(
        w.relay.frames_received() - before,
        2,
        "a Hello, then one Applied for the three frames"
    );
    assert_eq!(
        b.collection("todos")
            .get("d9")
            .expect("synced")
            .fields
            .len(),
        250
    );
}
