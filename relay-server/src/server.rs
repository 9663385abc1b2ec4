//! Wiring: keys, listener, storage, rooms and HTTP, and the order in which
//! they start and stop.
//!
//! Start: bind (print the address), serve HTTP while `/healthz` says 503,
//! open and check the database, then become ready. Stop (SIGINT/SIGTERM):
//! report 503 and refuse new sessions, let every room finish its in-flight
//! writes and close its sessions with GoingAway (1001), close the listener,
//! then stop the storage writer, all bounded by the shutdown timeout.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ed25519_dalek::VerifyingKey;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{self, KeyError, Verifier};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pg_store::PgStore;
use crate::room_host::Rooms;
use crate::storage::{Backend as _, Storage};
use crate::store::Store;

/// Exit code for bad settings, unreadable keys and a corrupt database.
pub(crate) const EXIT_CONFIG: u8 = 2;

/// Where the relay is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// Opening and checking storage.
    Starting,
    /// Serving.
    Ready,
    /// Draining.
    ShuttingDown,
}

/// Everything the HTTP handlers and connections share.
#[derive(Debug)]
pub(crate) struct App {
    /// Settings.
    pub(crate) config: Arc<Config>,
    /// Token checks.
    pub(crate) verifier: Verifier,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Session ids.
    pub(crate) next_session: AtomicU64,
    /// Becomes `true` when shutdown starts.
    pub(crate) shutdown: watch::Receiver<bool>,
    rooms: OnceLock<Arc<Rooms>>,
    health: AtomicU8,
}

impl App {
    /// The room registry, once storage is open.
    pub(crate) fn rooms(&self) -> Option<&Arc<Rooms>> {
        self.rooms.get()
    }

    /// Where the relay is in its life.
    pub(crate) fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            0 => Health::Starting,
            1 => Health::Ready,
            _ => Health::ShuttingDown,
        }
    }

    fn set_health(&self, health: Health) {
        let value = match health {
            Health::Starting => 0,
            Health::Ready => 1,
            Health::ShuttingDown => 2,
        };
        self.health.store(value, Ordering::Release);
    }
}

/// The public keys tokens are checked against: the configured ones, else
/// the data directory's key pair, created on first start.
pub(crate) fn token_keys(config: &Config) -> Result<Vec<VerifyingKey>, KeyError> {
    if !config.public_keys.is_empty() {
        return config
            .public_keys
            .iter()
            .map(|k| auth::parse_public_key(k))
            .collect();
    }
    let dir = &config.data;
    let public = dir.join(auth::PUBLIC_KEY_FILE);
    let secret = dir.join(auth::SECRET_KEY_FILE);
    if public.exists() {
        return Ok(vec![auth::read_public_key(&public)?]);
    }
    if secret.exists() {
        return Ok(vec![auth::read_secret_key(&secret)?.verifying_key()]);
    }
    let key = auth::generate()?;
    let (secret, public) = auth::write_key_pair(dir, &key, false)?;
    tracing::info!(secret = %secret.display(), public = %public.display(), "created the token signing key pair");
    // Stderr: the first line on stdout is always the listening address.
    eprintln!(
        "concord-relay: no token key was configured, so a new key pair was created:\n\
         \x20 secret key: {}  (keep it private: it mints tokens)\n\
         \x20 public key: {}\n\
         Mint a development token with:\n\
         \x20 concord-relay token --data {} --room ROOM --rights rw --ttl 1h\n\
         In production, sign tokens in your app's backend and pass only the public key\n\
         (--public-key / CONCORD_PUBLIC_KEYS).",
        secret.display(),
        public.display(),
        shell_path(dir),
    );
    Ok(vec![key.verifying_key()])
}

fn shell_path(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Runs the relay until a signal stops it; room tasks run on `room_tasks`.
pub(crate) async fn run(config: Config, room_tasks: tokio::runtime::Handle) -> ExitCode {
    let config = Arc::new(config);
    let keys = match token_keys(&config) {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("error: token keys: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    raise_file_limit(config.max_connections);
    if config.allow_anonymous {
        tracing::warn!(
            "anonymous access is ON: clients without a valid token can read and write any room. \
             Use this for local development only"
        );
    }
    let listener = match TcpListener::bind(&config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One line scripts and tests can parse.
    println!("concord-relay listening on {addr}");
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let app = Arc::new(App {
        config: config.clone(),
        verifier: Verifier::new(keys, config.allow_anonymous),
        metrics: metrics.clone(),
        next_session: AtomicU64::new(1),
        shutdown: shutdown.clone(),
        rooms: OnceLock::new(),
        health: AtomicU8::new(0),
    });
    let router = crate::http::router(app.clone());
    // The listener stays open while the relay drains, so /healthz can say
    // 503 to load balancers; new WebSocket sessions are refused meanwhile.
    let (stop_http_tx, stop_http) = watch::channel(false);
    let http = tokio::spawn(accept_loop(
        listener,
        router,
        stop_http,
        config.max_connections,
        config.handshake_timeout,
        metrics.clone(),
    ));

    let started = Instant::now();
    let opened = open_storage(&config, addr, metrics.clone()).await;
    let store = match opened {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            tracing::error!(error = %e, "cannot open storage");
            let _ = stop_http_tx.send(true);
            let _ = http.await;
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rooms = Rooms::new(store.clone(), metrics.clone(), config.clone(), room_tasks);
    let _ = app.rooms.set(rooms.clone());
    app.set_health(Health::Ready);
    tracing::info!(
        %addr,
        storage = if config.postgres.is_some() { "postgres" } else { "sqlite" },
        took_ms = started.elapsed().as_millis() as u64,
        "relay ready: WebSocket at ws://{addr}/v1/sync, health at /healthz, metrics at /metrics"
    );

    let signal = wait_for_signal().await;
    tracing::info!(
        signal,
        "shutting down: finishing in-flight writes, closing sessions"
    );
    app.set_health(Health::ShuttingDown);
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout_at(deadline, rooms.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("rooms did not stop within the shutdown timeout");
    }
    // Let connections send their close frames.
    while metrics.connections_open.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = stop_http_tx.send(true);
    let _ = tokio::time::timeout_at(deadline, http).await;
    if tokio::time::timeout_at(deadline + std::time::Duration::from_secs(5), store.close())
        .await
        .is_err()
    {
        tracing::warn!("storage did not close in time");
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Opens the configured storage: PostgreSQL with `--postgres`, else SQLite
/// in the data directory.
async fn open_storage(
    config: &Config,
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<Storage, String> {
    let Some(url) = &config.postgres else {
        let dir = config.data.clone();
        return match tokio::task::spawn_blocking(move || Store::open(&dir, metrics)).await {
            Ok(Ok(store)) => Ok(Storage::Sqlite(store)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("opening storage failed: {e}")),
        };
    };
    let address = match &config.advertise {
        Some(address) => address.clone(),
        None if addr.ip().is_unspecified() => {
            return Err(format!(
                "with --postgres, other instances must reach this one: listening on {addr}, \
                 set --advertise ws://HOST:{}/v1/sync",
                addr.port()
            ));
        }
        None => format!("ws://{addr}/v1/sync"),
    };
    PgStore::open(url, address, config.lease_ttl, metrics)
        .await
        .map(Storage::Postgres)
        .map_err(|e| format!("PostgreSQL: {e}"))
}

/// Accepts TCP connections and serves HTTP/1.1 (with upgrades) on each.
///
/// Hand-rolled rather than `axum::serve` for two bounds: connections that
/// have not (yet) become WebSockets are limited to `limit` at once (more are
/// dropped at accept), and a client must send its request headers within
/// `header_timeout`, so idle or trickling connections cannot pile up.
async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    limit: usize,
    header_timeout: std::time::Duration,
    metrics: Arc<Metrics>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.error("HttpConnectionLimit");
            tracing::debug!(peer = %addr, "too many pending HTTP connections; dropped");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr));
                tower_service::Service::call(&mut router.clone(), request)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
}

/// Returns once `stop` says `true` (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Every connection is a file descriptor: raise the soft limit to the hard
/// one, and say so if that is still below what the settings allow.
fn raise_file_limit(max_connections: usize) {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + 64 => tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is below max_connections; raise it (ulimit -n, LimitNOFILE)"
        ),
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

/// Waits for SIGINT or SIGTERM; returns its name.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
