//! An in-memory platform: a store, a manual clock, a driver that runs a
//! database's loop on the current thread and, with the `memory-relay`
//! feature, a relay in the same process.
//!
//! For tests, examples, and apps that want a database without a disk. The
//! in-process relay runs the same `Room` state machine as `concord-relay`,
//! with no tokens and no sockets; it is a feature of its own because it
//! compiles the relay's half of the core into the app.

#[cfg(feature = "memory-relay")]
mod relay;

#[cfg(feature = "memory-relay")]
pub use relay::{MemoryRelay, MemoryTransport};

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{Either, LocalBoxFuture, select};
use sync_core::store::{Record, Store};
use sync_core::{PersistBatch, Timestamp};

use crate::changes::lock;
use crate::database::{Database, Options};
use crate::error::Error;
use crate::host::{HostLoop, Platform, open};
use crate::platform::{
    ClientStore, Link, StoreError, StoreErrorKind, Timer, Transport, TransportError,
};

/// A store in memory. Clones share the same records, so opening a clone
/// is "reopening" the database. Writes can be made to fail, for tests.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<sync_core::store::MemoryStore>>,
    failing: Arc<AtomicBool>,
    copied: Arc<AtomicBool>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Makes every write fail (`true`) or succeed again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Every stored record, in key order.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.records).read_all().unwrap_or_default()
    }

    /// A store holding `records`, as if restored from a backup by means
    /// the store cannot notice: it does not report itself as
    /// [`copied`](ClientStore::copied).
    pub fn from_records(records: Vec<Record>) -> MemoryStore {
        let mut inner = sync_core::store::MemoryStore::new();
        let mut batch = PersistBatch::default();
        for (key, value) in records {
            if let Ok(key) = sync_core::StoreKey::from_bytes(&key) {
                batch.push(sync_core::Write::Put { key, value });
            }
        }
        inner.write_owned(batch);
        MemoryStore {
            records: Arc::new(Mutex::new(inner)),
            ..MemoryStore::default()
        }
    }

    /// An independent copy of the records as they are now, like a copied
    /// data directory: it reports itself as
    /// [`copied`](ClientStore::copied) until its first successful write.
    pub fn copy(&self) -> MemoryStore {
        let copy = MemoryStore::from_records(self.records());
        copy.copied.store(true, Ordering::SeqCst);
        copy
    }
}

impl ClientStore for MemoryStore {
    fn write(&self, batch: PersistBatch) -> LocalBoxFuture<'static, Result<(), StoreError>> {
        let result = if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::new(
                StoreErrorKind::Full,
                "simulated write failure",
            ))
        } else {
            // The batch is ours: its values move into the map, uncopied.
            lock(&self.records).write_owned(batch);
            Ok(())
        };
        if result.is_ok() {
            self.copied.store(false, Ordering::SeqCst);
        }
        futures::future::ready(result).boxed_local()
    }

    fn read_all(&self) -> LocalBoxFuture<'static, Result<Vec<Record>, StoreError>> {
        let result = lock(&self.records)
            .read_all()
            .map_err(|e| StoreError::new(StoreErrorKind::Io, e.to_string()));
        futures::future::ready(result).boxed_local()
    }

    fn copied(&self) -> bool {
        self.copied.load(Ordering::SeqCst)
    }
}

/// A clock that moves only when told to; sleeps end when it passes them.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
    sleepers: Mutex<Vec<(u64, Waker)>>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicU64::new(start.unix_ms()),
            sleepers: Mutex::new(Vec::new()),
        })
    }

    /// Moves the clock forward by `by` (whole milliseconds), waking the
    /// sleeps that end.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let now = self.now.fetch_add(ms, Ordering::SeqCst).saturating_add(ms);
        let mut sleepers = lock(&self.sleepers);
        sleepers.retain(|(at, waker)| {
            if *at <= now {
                waker.wake_by_ref();
                false
            } else {
                true
            }
        });
    }

    /// The earliest time a sleep waits for, if any.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        lock(&self.sleepers)
            .iter()
            .map(|(at, _)| *at)
            .min()
            .map(Timestamp::from_unix_ms)
    }
}

struct Sleep {
    clock: Arc<ManualClock>,
    at: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now.load(Ordering::SeqCst) >= self.at {
            return Poll::Ready(());
        }
        lock(&self.clock.sleepers).push((self.at, cx.waker().clone()));
        Poll::Pending
    }
}

/// A [`Timer`] reading a [`ManualClock`].
#[derive(Clone, Debug)]
pub struct ManualTimer(pub Arc<ManualClock>);

impl Timer for ManualTimer {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_ms(self.0.now.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, at: Timestamp) -> LocalBoxFuture<'static, ()> {
        Sleep {
            clock: self.0.clone(),
            at: at.unix_ms(),
        }
        .boxed_local()
    }
}

/// A transport that never connects, for local-only databases.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTransport;

impl Transport for NoTransport {
    fn connect(&self, _url: &str) -> LocalBoxFuture<'static, Result<Link, TransportError>> {
        futures::future::ready(Err(TransportError::new("this database has no transport")))
            .boxed_local()
    }
}

/// Runs a database's [`HostLoop`] on the current thread while the caller
/// waits for something.
pub struct Driver {
    host: Option<HostLoop>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl Driver {
    /// Drives `host`.
    pub fn new(host: HostLoop) -> Driver {
        Driver { host: Some(host) }
    }

    /// Runs the loop until `fut` completes, and returns its output.
    pub async fn run_until<F: Future + Unpin>(&mut self, fut: F) -> F::Output {
        let Some(host) = self.host.as_mut() else {
            return fut.await;
        };
        match select(host, fut).await {
            Either::Left(((), fut)) => {
                self.host = None;
                fut.await
            }
            Either::Right((output, _)) => output,
        }
    }

    /// Polls the loop once, letting it do what it can without waiting.
    pub fn poll_once(&mut self) -> bool {
        let Some(host) = self.host.as_mut() else {
            return true;
        };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if host.as_mut().poll(&mut cx).is_ready() {
            self.host = None;
        }
        self.host.is_none()
    }

    /// Whether the loop has ended (the database was closed).
    pub fn finished(&self) -> bool {
        self.host.is_none()
    }
}

/// Opens a local-only database in `store`, with a clock at a fixed time.
pub async fn open_local(
    store: MemoryStore,
    options: Options,
) -> Result<(Database, HostLoop), Error> {
    let clock = ManualClock::new(Timestamp::from_unix_ms(1_700_000_000_000));
    open(
        Platform {
            transport: NoTransport,
            store,
            timer: Arc::new(ManualTimer(clock)),
            seed: 0x00c0_ffee,
        },
        options,
    )
    .await
}
