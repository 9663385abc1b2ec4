//! One full client: the SDK's own `Database`, run by sync-client's host
//! loop over sync-ffi's WebSocket transport and tokio timer, with
//! sync-client's in-memory store. The load generator writes through the
//! public API and learns what arrived from a subscription, like an app.
//!
//! The loops of all clients run on a few host threads ([`Hosts`]), each a
//! current-thread tokio runtime with a `LocalSet` (the way `sync_ffi::open`
//! runs one database on its own thread): thousands of idle sessions would
//! not fit in a thread each.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use futures::future::LocalBoxFuture;
use sync_client::platform::{Link, Transport, TransportError};
use sync_client::{
    Change, Connection, Database, ListOptions, Options, Origin, Platform, RelayOptions, Status,
    Value,
};
use sync_ffi::{TokioTimer, WsOptions, WsTransport};

/// Wall clock in microseconds (write stamps for latency).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Work for a host thread: builds a future there (the SDK's loop and
/// platform are not `Send`) and runs it on the thread's `LocalSet`.
type Job = Box<dyn FnOnce() -> LocalBoxFuture<'static, ()> + Send>;

/// Threads that run the clients' host loops.
pub(crate) struct Hosts {
    threads: Vec<tokio::sync::mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Hosts {
    /// `n` host threads. They end when the `Hosts` is dropped and every
    /// loop on them has finished.
    pub(crate) fn new(n: usize) -> Result<Hosts, String> {
        let threads = (0..n.max(1))
            .map(|i| {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("client runtime: {e}"))?;
                std::thread::Builder::new()
                    .name(format!("loadgen-clients-{i}"))
                    .spawn(move || {
                        let local = tokio::task::LocalSet::new();
                        local.block_on(&runtime, async move {
                            while let Some(job) = rx.recv().await {
                                tokio::task::spawn_local(job());
                            }
                        });
                        // Let the loops of closed databases store their last writes.
                        runtime.block_on(local);
                    })
                    .map_err(|e| format!("client thread: {e}"))?;
                Ok(tx)
            })
            .collect::<Result<_, String>>()?;
        Ok(Hosts {
            threads,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `job` on the next host thread (round robin).
    fn spawn(&self, job: Job) -> Result<(), String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        self.threads[i]
            .send(job)
            .map_err(|_| "a client thread stopped".to_owned())
    }
}

/// The host threads of this process: two, like the machine's cores (the
/// relay under test competes for them too).
fn hosts() -> Result<&'static Hosts, String> {
    static HOSTS: OnceLock<Result<Hosts, String>> = OnceLock::new();
    HOSTS
        .get_or_init(|| Hosts::new(2))
        .as_ref()
        .map_err(Clone::clone)
}

/// sync-ffi's transport, counting the connections it opens.
struct Counted {
    inner: WsTransport,
    connects: Arc<AtomicU64>,
}

impl Transport for Counted {
    fn connect(&self, url: &str) -> LocalBoxFuture<'static, Result<Link, TransportError>> {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.inner.connect(url)
    }
}

/// A database syncing one room, and what it observed.
pub(crate) struct Client {
    db: Database,
    connects: Arc<AtomicU64>,
    /// Documents changed by remote operations (one per delivered write here).
    remote_changes: Arc<AtomicU64>,
    /// Push-to-delivery latencies in µs, when this client observes them:
    /// every remote write carries its writer's clock in field `t`.
    latencies: Option<Arc<Mutex<Vec<u64>>>>,
}

impl Client {
    /// A new database syncing `room` through `url` (anonymous access),
    /// connecting at once. With `latencies`, it records the delay from each
    /// remote write's stamp to its arrival here.
    pub(crate) async fn new(room: &str, url: &str, latencies: bool) -> Result<Client, String> {
        static SEED: AtomicU64 = AtomicU64::new(0);
        let connects = Arc::new(AtomicU64::new(0));
        let remote_changes = Arc::new(AtomicU64::new(0));
        let latencies = latencies.then(|| Arc::new(Mutex::new(Vec::new())));
        let mut options = Options::with_relay(RelayOptions::new(url, room, ""));
        options.agent = Some("concord-loadgen".into());
        let seed = now_us().wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ SEED
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0xd1b5_4a32_d192_ed03);
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let (counter, changes, samples) =
            (connects.clone(), remote_changes.clone(), latencies.clone());
        hosts()?.spawn(Box::new(move || {
            Box::pin(async move {
                let transport = match WsTransport::new(WsOptions::default().native_roots(false)) {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = opened_tx.send(Err(format!("transport: {e}")));
                        return;
                    }
                };
                let platform = Platform {
                    transport: Counted {
                        inner: transport,
                        connects: counter,
                    },
                    store: sync_client::memory::MemoryStore::new(),
                    timer: Arc::new(TokioTimer::new()),
                    seed,
                };
                match sync_client::open(platform, options).await {
                    Ok((db, host)) => {
                        // Observed on the loop's own thread, right after the
                        // loop applied the delivery.
                        tokio::task::spawn_local(observe(db.clone(), changes, samples));
                        let _ = opened_tx.send(Ok(db));
                        host.await;
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(format!("open: {e}")));
                    }
                }
            })
        }))?;
        let db = opened_rx
            .await
            .map_err(|_| "the client thread dropped the open".to_owned())??;
        Ok(Client {
            db,
            connects,
            remote_changes,
            latencies,
        })
    }

    /// Where syncing stands.
    pub(crate) fn status(&self) -> Status {
        self.db.status()
    }

    /// Whether the session is joined.
    pub(crate) fn is_live(&self) -> bool {
        self.status().connection == Connection::Online
    }

    /// Local writes not yet acknowledged.
    pub(crate) fn pending(&self) -> usize {
        self.status().pending_writes
    }

    /// Connections opened.
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Documents changed by remote writes so far.
    pub(crate) fn remote_changes(&self) -> u64 {
        self.remote_changes.load(Ordering::Relaxed)
    }

    /// The latencies recorded so far (µs), if this client records them.
    pub(crate) fn latencies(&self) -> Option<Vec<u64>> {
        self.latencies
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Documents in `collection`.
    pub(crate) fn doc_count(&self, collection: &str) -> usize {
        self.db
            .collection(collection)
            .list(&ListOptions::default())
            .len()
    }

    /// Writes one document: `fields` as integers. The write applies at
    /// once; the loop stores and pushes it.
    pub(crate) fn put(&self, collection: &str, id: &str, fields: &[(&str, i64)]) {
        let fields = fields.iter().map(|&(n, v)| (n, Value::Int(v)));
        // Dropping the durability future neither undoes nor cancels the write.
        let _stored = self.db.collection(collection).put(id, fields);
    }

    /// Writes many documents in one transaction (one store write), the way
    /// an app bulk-loads: `docs` are (id, integer fields).
    pub(crate) fn put_batch(&self, collection: &str, docs: &[(String, Vec<(&str, i64)>)]) {
        let written = self.db.transaction(|tx| {
            for (id, fields) in docs {
                tx.put(
                    collection,
                    id,
                    fields.iter().map(|&(n, v)| (n, Value::Int(v))),
                )?;
            }
            Ok(())
        });
        // Dropping the durability future neither undoes nor cancels the writes.
        drop(written);
    }

    /// Waits until `done` holds; `false` if `limit` passed first. The
    /// client syncs on its host thread meanwhile; this only watches (woken
    /// by status changes, and every 50 ms for anything else).
    pub(crate) async fn run_until(
        &self,
        limit: Duration,
        mut done: impl FnMut(&Client) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut changes = self.db.status_changes();
        loop {
            if done(self) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(wait, changes.next()).await;
        }
    }

    /// Closes the database: stops syncing (closing the socket) and lets the
    /// loop finish (bounded).
    pub(crate) async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.db.close()).await;
    }
}

/// Counts remote document changes and, with `samples`, records the delay
/// from each one's write stamp (field `t`) to now.
async fn observe(db: Database, changes: Arc<AtomicU64>, samples: Option<Arc<Mutex<Vec<u64>>>>) {
    let mut subscription = db.subscribe();
    while let Some(change) = subscription.next().await {
        let Change::Document {
            collection,
            id,
            origin: Origin::Remote,
        } = change
        else {
            continue;
        };
        changes.fetch_add(1, Ordering::Relaxed);
        if let Some(samples) = &samples {
            let sent = db.collection(collection).get_field(&id, "t");
            if let Some(Value::Int(sent)) = sent {
                let delay = now_us().saturating_sub(sent as u64);
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(delay);
            }
        }
    }
}
