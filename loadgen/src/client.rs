//! One client: sync-core's `Session` over a tokio-tungstenite socket, with
//! no sync logic of its own. It does what the session asks and counts what
//! it is told.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use sync_core::session::{Backoff, Input, LinkState, Output, Session, SessionConfig};
use sync_core::{Event, Origin, Replica, ReplicaConfig, ReplicaId, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The client's socket.
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Wall clock in milliseconds, as the session wants it.
pub(crate) fn now_ms() -> u64 {
    now_us() / 1000
}

/// Wall clock in microseconds (write stamps for latency).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The clients' WebSocket settings. tungstenite zero-fills its whole read
/// buffer before every socket read (128 KiB by default): with 100 clients
/// reading thousands of small frames a second that memset was a third of
/// the load generator's CPU. 8 KiB holds the frames of these scenarios.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// A session, its socket and counters.
pub(crate) struct Client {
    session: Session,
    url: String,
    ws: Option<Ws>,
    timeout: Option<u64>,
    /// Documents changed by remote operations (one per delivered write here).
    pub(crate) remote_changes: u64,
    /// Push-to-delivery latencies in µs, when this client observes them:
    /// every remote write carries its writer's clock in field `t`.
    pub(crate) latencies: Option<Vec<u64>>,
    /// Connections opened.
    pub(crate) connects: u64,
}

impl Client {
    /// A new replica `id` syncing `room` through `url` (anonymous access).
    pub(crate) fn new(id: u64, room: &str, url: &str) -> Client {
        let mut config = SessionConfig::new(room, Vec::new());
        config.agent = "concord-loadgen".into();
        config.backoff = Backoff {
            initial_ms: 100,
            max_ms: 2_000,
        };
        let replica = Replica::new(ReplicaId(id), ReplicaConfig::default());
        let seed = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ now_us();
        let mut session = Session::new(replica, config, seed);
        session.start(now_ms());
        Client {
            session,
            url: url.to_owned(),
            ws: None,
            timeout: None,
            remote_changes: 0,
            latencies: None,
            connects: 0,
        }
    }

    /// The session (for status and reads).
    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// Whether the session is joined.
    pub(crate) fn is_live(&self) -> bool {
        self.session.status().link == LinkState::Live
    }

    /// Local writes not yet acknowledged.
    pub(crate) fn pending(&self) -> usize {
        self.session.status().pending_ops
    }

    /// Writes one document: `fields` as integers.
    pub(crate) fn put(&mut self, collection: &str, id: &str, fields: &[(&str, i64)]) {
        let fields = fields.iter().map(|&(n, v)| (n, Value::Int(v)));
        // A refused local write would be a bug in the load, not the relay.
        if let Err(e) = self.session.put(now_ms(), collection, id, fields) {
            eprintln!("concord-loadgen: local write refused: {e}");
        }
    }

    /// Does what the session asks until nothing is left.
    async fn drain(&mut self) {
        while let Some(out) = self.session.poll() {
            match out {
                Output::Connect => {
                    self.connects += 1;
                    let connect = tokio_tungstenite::connect_async_with_config(
                        self.url.as_str(),
                        Some(ws_config()),
                        true, // TCP_NODELAY
                    );
                    match tokio::time::timeout(Duration::from_secs(10), connect).await {
                        Ok(Ok((ws, _))) => {
                            self.ws = Some(ws);
                            self.session.handle(now_ms(), Input::Connected);
                        }
                        _ => self
                            .session
                            .handle(now_ms(), Input::Disconnected { code: None }),
                    }
                }
                Output::Transmit(frame) => {
                    let failed = match self.ws.as_mut() {
                        Some(ws) => ws.send(WsMessage::Binary(frame.into())).await.is_err(),
                        None => false,
                    };
                    if failed {
                        self.ws = None;
                        self.session
                            .handle(now_ms(), Input::Disconnected { code: None });
                    }
                }
                Output::Close { .. } => {
                    if let Some(mut ws) = self.ws.take() {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
                    }
                }
                // Clients keep their state in memory only: the relay is what is measured.
                Output::Persist { id, .. } => self.session.handle(now_ms(), Input::Persisted(id)),
                Output::Event(event) => self.observe(event),
                Output::Timeout(at) => self.timeout = Some(at),
            }
        }
    }

    fn observe(&mut self, event: Event) {
        if let Event::DocumentChanged {
            collection,
            id,
            origin: Origin::Remote,
        } = event
        {
            self.remote_changes += 1;
            if let Some(samples) = self.latencies.as_mut() {
                // Read in place: copying the document for one field would
                // cost the load generator CPU the relay competes for.
                let sent = self
                    .session
                    .get_field(&collection, &id, "t")
                    .and_then(|t| t.as_i64())
                    .map(|t| t as u64);
                if let Some(sent) = sent {
                    samples.push(now_us().saturating_sub(sent));
                }
            }
        }
    }

    fn received(&mut self, msg: WsMessage) {
        match msg {
            WsMessage::Binary(frame) => self.session.handle(now_ms(), Input::Received(&frame)),
            WsMessage::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                self.ws = None;
                self.session.handle(now_ms(), Input::Disconnected { code });
            }
            _ => {}
        }
    }

    /// Drains, waits up to `max` (or the session's timer) for a frame,
    /// handles it and every frame already buffered behind it, drains again.
    pub(crate) async fn step(&mut self, max: Duration) {
        self.drain().await;
        let wait = self
            .timeout
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
            .unwrap_or(max)
            .min(max);
        let next = match self.ws.as_mut() {
            Some(ws) => tokio::time::timeout(wait, ws.next()).await.ok(),
            None => {
                tokio::time::sleep(wait).await;
                None
            }
        };
        match next {
            Some(Some(Ok(msg))) => {
                self.received(msg);
                // Up to 64 more frames that are already here, without waiting.
                for _ in 0..64 {
                    let Some(ws) = self.ws.as_mut() else { break };
                    match ws.next().now_or_never() {
                        Some(Some(Ok(msg))) => self.received(msg),
                        Some(Some(Err(_)) | None) => self.lost(),
                        None => break,
                    }
                }
            }
            Some(Some(Err(_)) | None) => self.lost(),
            None => {}
        }
        if self.timeout.is_some_and(|at| at <= now_ms()) {
            self.timeout = None;
            self.session.handle(now_ms(), Input::Timeout);
        }
        self.drain().await;
    }

    fn lost(&mut self) {
        self.ws = None;
        self.session
            .handle(now_ms(), Input::Disconnected { code: None });
    }

    /// Steps until `done` holds; `false` if `limit` passed first.
    pub(crate) async fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Client) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.step(Duration::from_millis(50)).await;
        }
    }

    /// Stops the session and closes the socket (bounded).
    pub(crate) async fn close(&mut self) {
        self.session.stop();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.drain()).await;
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
        }
    }
}
