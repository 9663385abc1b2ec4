//! The tests' client: a real `sync_client::Database` syncing through the
//! relay on the SDK's own host loop, with sync-ffi's WebSocket transport
//! and tokio timer and sync-client's in-memory store. Nothing here speaks
//! the protocol: the transport is wrapped only to *observe* what crosses
//! it (connections opened, `Error` frames and close codes received, closes
//! sent) and, for the few tests that need it, to stop reading for a while
//! (a slow consumer) or to advertise fewer snapshot formats in `Hello`.
//!
//! Each client's loop runs on a thread of its own (a current-thread tokio
//! runtime with a `LocalSet`, the way `sync_ffi::open` runs a database).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::stream::LocalBoxStream;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt as _};
use sync_client::platform::{Incoming, Link, LinkSender, Transport, TransportError};
use sync_client::{
    Connection, Database, Document, ListOptions, Options, Platform, RelayOptions, ReplicaId,
    Status, Value,
};
use sync_core::protocol::{self, ErrorCode, Message};
use sync_ffi::{TokioTimer, WsOptions, WsTransport};

/// What the wrapped transport saw, shared with the test.
#[derive(Debug, Default)]
pub struct Probe {
    log: Mutex<ProbeLog>,
    /// While set, nothing more is read from the connection: the relay's
    /// frames wait in the socket, as with a client too busy to read.
    paused: AtomicBool,
    reader: AtomicWaker,
    /// Snapshot formats to advertise in `Hello` instead of the client's own.
    snapshot_formats: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Default)]
struct ProbeLog {
    connects: usize,
    /// Close codes received (`None`: the connection ended without one).
    closes: Vec<Option<u16>>,
    /// Codes of the `Error` frames received.
    errors: Vec<ErrorCode>,
    /// Close codes the client sent.
    sent_closes: Vec<u16>,
}

impl Probe {
    fn log(&self) -> std::sync::MutexGuard<'_, ProbeLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// sync-ffi's WebSocket transport, observed by a [`Probe`].
struct ObservedTransport {
    inner: WsTransport,
    probe: Arc<Probe>,
}

impl Transport for ObservedTransport {
    fn connect(&self, url: &str) -> LocalBoxFuture<'static, Result<Link, TransportError>> {
        let connecting = self.inner.connect(url);
        let probe = self.probe.clone();
        Box::pin(async move {
            probe.log().connects += 1;
            let link = connecting.await?;
            Ok(Link {
                sender: Box::new(ObservedSender {
                    inner: link.sender,
                    probe: probe.clone(),
                    first: true,
                }),
                incoming: ObservedIncoming {
                    inner: Some(link.incoming),
                    probe,
                }
                .boxed_local(),
            })
        })
    }
}

struct ObservedSender {
    inner: Box<dyn LinkSender>,
    probe: Arc<Probe>,
    first: bool,
}

impl LinkSender for ObservedSender {
    fn send(&mut self, mut frame: Vec<u8>) -> LocalBoxFuture<'_, Result<(), TransportError>> {
        if std::mem::take(&mut self.first)
            && let Some(formats) = &self.probe.snapshot_formats
            && let Ok(Message::Hello(mut hello)) = protocol::decode(&frame, usize::MAX)
        {
            hello.snapshot_formats = formats.clone();
            frame = protocol::encode(&Message::Hello(hello));
        }
        self.inner.send(frame)
    }

    fn close(&mut self, code: u16, reason: String) -> LocalBoxFuture<'_, ()> {
        self.probe.log().sent_closes.push(code);
        self.inner.close(code, reason)
    }
}

struct ObservedIncoming {
    /// `None` once dropped.
    inner: Option<LocalBoxStream<'static, Incoming>>,
    probe: Arc<Probe>,
}

impl ObservedIncoming {
    fn observe(probe: &Probe, item: &Incoming) {
        match item {
            Incoming::Frame(frame) => {
                if let Some((_, code, _)) = protocol::decode_any_error(frame) {
                    probe.log().errors.push(code);
                }
            }
            Incoming::Closed { code, .. } => probe.log().closes.push(*code),
        }
    }
}

/// The loop drops a connection as soon as it closes it itself (after an
/// `Error` frame from the relay, say). The relay's last frames and its
/// close code still arrive: keep reading them for a moment, for the tests
/// that check what the relay said.
impl Drop for ObservedIncoming {
    fn drop(&mut self) {
        let (Some(mut inner), probe) = (self.inner.take(), self.probe.clone()) else {
            return;
        };
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(item) = inner.next().await {
                    ObservedIncoming::observe(&probe, &item);
                }
            })
            .await;
        });
    }
}

impl Stream for ObservedIncoming {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        if self.probe.paused.load(Ordering::SeqCst) {
            self.probe.reader.register(cx.waker());
            if self.probe.paused.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let next = inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(item)) = &next {
            ObservedIncoming::observe(&self.probe, item);
        }
        next
    }
}

/// Runs `job` on a thread of its own with a current-thread tokio runtime
/// and a `LocalSet`, the way `sync_ffi::open` runs a database: each
/// client's loop is isolated from the others' (a busy one cannot starve
/// the rest) and from the test's own runtime. The thread ends with the
/// loop, once the database is dropped.
fn spawn_host(name: String, job: impl FnOnce() -> LocalBoxFuture<'static, ()> + Send + 'static) {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, job());
        })
        .expect("client thread");
}

/// A client replica syncing through the relay: a `sync_client::Database`.
pub struct Client {
    pub db: Database,
    probe: Arc<Probe>,
    label: u64,
    /// Local operations written (each helper write is one operation).
    written: u64,
}

impl Client {
    /// A new, empty database for `room`, not connected yet ([`Client::start`]).
    /// `label` only names it in failures: the SDK picks the replica id.
    pub fn new(label: u64, room: &str, token: &str, url: &str) -> Client {
        Client::open(label, room, token, url, None)
    }

    /// Like [`Client::new`], advertising only `formats` as the snapshot
    /// formats it reads.
    pub fn reading_snapshot_formats(
        label: u64,
        room: &str,
        token: &str,
        url: &str,
        formats: Vec<u8>,
    ) -> Client {
        Client::open(label, room, token, url, Some(formats))
    }

    fn open(label: u64, room: &str, token: &str, url: &str, formats: Option<Vec<u8>>) -> Client {
        static SEED: AtomicU64 = AtomicU64::new(0);
        let probe = Arc::new(Probe {
            snapshot_formats: formats,
            ..Probe::default()
        });
        let mut options = Options::with_relay(RelayOptions::new(url, room, token).start_offline());
        options.agent = Some("relay-server-tests".into());
        let seed = super::now_ms()
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(
                SEED.fetch_add(1, Ordering::Relaxed)
                    .wrapping_mul(0xd1b5_4a32_d192_ed03),
            )
            ^ u64::from(std::process::id());
        let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
        let job_probe = probe.clone();
        spawn_host(format!("test-client-{label}"), move || {
            Box::pin(async move {
                let transport =
                    WsTransport::new(WsOptions::default().native_roots(false)).expect("transport");
                let platform = Platform {
                    transport: ObservedTransport {
                        inner: transport,
                        probe: job_probe,
                    },
                    store: sync_client::memory::MemoryStore::new(),
                    timer: Arc::new(TokioTimer::new()),
                    seed,
                };
                match sync_client::open(platform, options).await {
                    Ok((db, host)) => {
                        let _ = opened_tx.send(Ok(db));
                        host.await;
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
                }
            })
        });
        let db = opened_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("opened in time")
            .expect("open");
        Client {
            db,
            probe,
            label,
            written: 0,
        }
    }

    /// The replica id the SDK picked.
    pub fn replica(&self) -> ReplicaId {
        self.db.replica_id()
    }

    /// Starts syncing.
    pub fn start(&mut self) {
        self.db.connect().expect("a relay is configured");
    }

    /// Stops syncing and waits until the link is down.
    pub async fn stop(&mut self) {
        self.db.disconnect();
        self.run_until(Duration::from_secs(10), |c| {
            c.status().connection == Connection::Offline
        })
        .await
        .expect("offline");
    }

    /// Replaces the token.
    pub fn set_token(&self, token: &str) {
        self.db.set_token(token);
    }

    /// Writes a document with one field (one operation). The write applies
    /// at once; the in-memory store makes it durable on the loop.
    pub fn put(&mut self, collection: &str, id: &str, field: &str, value: i64) {
        let _durable = self
            .db
            .collection(collection)
            .put(id, [(field, Value::from(value))]);
        self.written += 1;
    }

    /// Deletes a document (one operation).
    pub fn delete(&mut self, collection: &str, id: &str) {
        let _durable = self.db.collection(collection).delete(id);
        self.written += 1;
    }

    pub fn status(&self) -> Status {
        self.db.status()
    }

    pub fn get(&self, collection: &str, id: &str) -> Option<Document> {
        self.db.collection(collection).get(id)
    }

    /// Every live document of `collection`, in id order.
    pub fn docs(&self, collection: &str) -> Vec<Document> {
        self.db.collection(collection).list(&ListOptions::default())
    }

    pub fn doc_count(&self, collection: &str) -> usize {
        self.docs(collection).len()
    }

    pub fn is_live(&self) -> bool {
        self.status().connection == Connection::Online
    }

    pub fn pending(&self) -> usize {
        self.status().pending_writes
    }

    /// How many of this client's own operations the relay acknowledged:
    /// the relay acknowledges in order, so all but those still pending.
    pub fn acked(&self) -> u64 {
        self.written - self.pending() as u64
    }

    /// How many documents `{prefix}0`, `{prefix}1`, ... this replica holds
    /// without a gap from 0.
    pub fn held_from(&self, collection: &str, prefix: &str) -> u64 {
        let collection = self.db.collection(collection);
        (0..)
            .take_while(|i| collection.get(&format!("{prefix}{i}")).is_some())
            .count() as u64
    }

    /// Connections opened so far.
    pub fn connects(&self) -> usize {
        self.probe.log().connects
    }

    /// Close codes received from the relay (`None`: closed without one).
    pub fn closes(&self) -> Vec<Option<u16>> {
        self.probe.log().closes.clone()
    }

    /// Codes of the `Error` frames received from the relay.
    pub fn errors(&self) -> Vec<ErrorCode> {
        self.probe.log().errors.clone()
    }

    /// Close codes this client sent (it closes when the relay broke the
    /// protocol, among others).
    pub fn sent_closes(&self) -> Vec<u16> {
        self.probe.log().sent_closes.clone()
    }

    /// Stops (`true`) or resumes reading from the connection.
    pub fn pause_reading(&self, paused: bool) {
        self.probe.paused.store(paused, Ordering::SeqCst);
        self.probe.reader.wake();
    }

    /// Waits until `done` holds, or fails after `limit`. The client syncs
    /// on its own meanwhile; this only watches.
    pub async fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Client) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut changes = self.db.status_changes();
        loop {
            if done(self) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let log = self.probe.log().clone();
                return Err(format!(
                    "client {} ({}) not done after {limit:?}: status {:?}, {log:?}",
                    self.label,
                    self.replica(),
                    self.status(),
                ));
            }
            // Status changes wake us at once; documents arriving and the
            // probe's records are checked every few milliseconds.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(5)), changes.next()).await;
        }
    }

    /// Lets the client run for a while regardless.
    pub async fn run_for(&mut self, time: Duration) {
        tokio::time::sleep(time).await;
    }

    /// Waits until every local write is acknowledged and the replica holds
    /// `docs` documents in `collection`.
    pub async fn sync_to(
        &mut self,
        collection: &str,
        docs: usize,
        limit: Duration,
    ) -> Result<(), String> {
        let collection = collection.to_owned();
        self.run_until(limit, move |c| {
            c.is_live() && c.pending() == 0 && c.doc_count(&collection) == docs
        })
        .await
    }
}
