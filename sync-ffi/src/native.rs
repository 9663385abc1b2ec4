//! The native database: SQLite on disk, WebSockets through tokio, and a
//! thread of its own per database that runs the shared host loop, so
//! callers need no async runtime.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sync_client::{Database, Error, HostLoop, Options, Pending, Platform};

use crate::sqlite::SqliteStore;
use crate::timer::TokioTimer;
use crate::ws::{WsOptions, WsTransport};

/// Opens (creating if needed) the database stored in the file at `path`,
/// syncing as `options` say. Blocks until it is loaded.
///
/// The database runs on a thread of its own; every handle (clones of the
/// returned [`Database`]) may be used from any thread. A second open of
/// the same file, in this process or another, fails with a store error of
/// kind `Locked` until the first is closed.
pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Database, Error> {
    open_with(path, options, WsOptions::default())
}

/// Like [`open`], with WebSocket settings (extra root certificates for a
/// self-hosted relay, timeouts, message size).
pub fn open_with(
    path: impl AsRef<Path>,
    options: Options,
    ws: WsOptions,
) -> Result<Database, Error> {
    let store = SqliteStore::open(path.as_ref())?;
    let transport =
        WsTransport::new(ws).map_err(|e| Error::Load(format!("WebSocket settings: {e}")))?;
    let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
    let name = format!("concord-db-{}", path.as_ref().display());
    std::thread::Builder::new()
        .name(name.chars().take(60).collect())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ =
                        opened_tx.send(Err(Error::Load(format!("cannot start a runtime: {e}"))));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let platform = Platform {
                    transport,
                    store,
                    timer: Arc::new(TokioTimer::new()),
                    seed: fresh_seed(),
                };
                let host: HostLoop = match sync_client::open(platform, options).await {
                    Ok((db, host)) => {
                        if opened_tx.send(Ok(db)).is_err() {
                            return;
                        }
                        host
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                host.await;
            });
        })
        .map_err(|e| Error::Load(format!("cannot start the database thread: {e}")))?;
    opened_rx
        .recv()
        .unwrap_or_else(|_| Err(Error::Load("the database thread stopped".into())))
}

/// Waiting for a write on the calling thread.
pub trait Wait {
    /// What the write resolves to.
    type Output;

    /// Blocks until the write is durable (or failed). Do not call it from
    /// inside an async runtime's worker; `.await` the write there.
    fn wait(self) -> Self::Output;
}

impl<T: Unpin> Wait for Pending<T> {
    type Output = Result<T, Error>;

    fn wait(self) -> Result<T, Error> {
        futures::executor::block_on(self)
    }
}

/// 64 fresh random bits: the OS-seeded keys of std's hasher, over the
/// time, the process and a counter (no two calls in a process agree).
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    RandomState::new().hash_one((
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
    ))
}
