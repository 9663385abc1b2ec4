//! Test harness: the real `concord-relay` binary on a loopback port with a
//! temporary data directory, a client that is the SDK's own `Database`
//! ([`client`]), raw WebSocket helpers for tests that need to speak the
//! protocol by hand (malformed input, misbehaving peers), and a tiny HTTP GET.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use sync_core::ReplicaId;
use sync_core::protocol::{self, ErrorCode, Hello, Message};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use test_support::RelayProcess;
pub use test_support::http_get;

mod client;
#[allow(unused_imports)]
pub use client::Client;

pub type Ws = WebSocketStream<MaybeTlsStream<TokioTcp>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_concord-relay");

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running relay process: the shared [`RelayProcess`] started from this
/// package's own `concord-relay`, with the relay-specific checks on top.
pub struct Relay(RelayProcess);

impl Deref for Relay {
    type Target = RelayProcess;
    fn deref(&self) -> &RelayProcess {
        &self.0
    }
}

impl DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut RelayProcess {
        &mut self.0
    }
}

impl Relay {
    /// Starts the binary on an OS-picked loopback port.
    pub fn start(data: &Path, args: &[&str]) -> Relay {
        Relay::start_at(data, "127.0.0.1:0", args)
    }

    /// Starts the binary listening on `listen`.
    pub fn start_at(data: &Path, listen: &str, args: &[&str]) -> Relay {
        Relay::start_with_env(data, listen, args, &[])
    }

    /// Starts the binary listening on `listen` with extra environment
    /// variables (set after the test's own `CONCORD_*` ones are removed).
    /// `restart` does not repeat them.
    pub fn start_with_env(
        data: &Path,
        listen: &str,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Relay {
        Relay(RelayProcess::start_with_env(
            Path::new(BIN),
            data,
            listen,
            args,
            env,
        ))
    }

    /// The same binary, data and settings again, on the same port.
    pub fn restart(&mut self) -> Relay {
        Relay(self.0.restart())
    }

    /// Mints a token with the CLI, from the data dir's key.
    pub fn token(&self, room: &str, rights: &str, ttl: &str, replica: Option<u64>) -> String {
        mint_token(&self.data, room, rights, ttl, replica)
    }

    /// `GET /v1/rooms/{room}/stats` as JSON.
    pub fn stats(&self, room: &str, admin: &str) -> serde_json::Value {
        let (status, body) =
            http_get(self.addr, &format!("/v1/rooms/{room}/stats"), Some(admin)).expect("stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }

    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics", None).expect("metrics").1
    }

    /// The value of an unlabeled metric.
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics(), name)
    }
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Mints a token from the key in `data`, pinned to `replica` if given.
pub fn mint_token(
    data: &Path,
    room: &str,
    rights: &str,
    ttl: &str,
    replica: Option<u64>,
) -> String {
    let replica = replica.map(|r| ReplicaId(r).to_string());
    let extra: Vec<&str> = match &replica {
        Some(id) => vec!["--replica", id],
        None => Vec::new(),
    };
    test_support::mint_token(Path::new(BIN), data, room, rights, ttl, &extra)
}

// ---- raw WebSocket helpers ----

pub async fn raw_connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws
}

pub fn hello_frame(replica: u64, room: &str, token: &str) -> Vec<u8> {
    protocol::encode(&Message::Hello(Hello {
        replica: ReplicaId(replica),
        room: room.into(),
        token: token.as_bytes().to_vec(),
        cursor: 0,
        own_seq: 0,
        settled_seq: 0,
        agent: "raw-test".into(),
        versions: vec![sync_core::protocol::PROTOCOL_VERSION],
        snapshot_formats: vec![1, 2, 3],
    }))
}

/// What the relay said before closing: the `Error` codes received, and the
/// close code (`None`: closed without a close frame).
#[derive(Debug, Default)]
pub struct Ending {
    pub errors: Vec<ErrorCode>,
    /// The version byte of every binary frame received.
    pub versions: Vec<u8>,
    pub messages: Vec<Message>,
    pub close: Option<u16>,
    pub closed: bool,
}

/// Reads until the relay closes (or `limit` passes).
pub async fn read_until_close(ws: &mut Ws, limit: Duration) -> Ending {
    let mut ending = Ending::default();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return ending,
            Ok(Some(Ok(WsMessage::Binary(frame)))) => {
                ending.versions.extend(frame.first());
                if let Ok(message) = protocol::decode(&frame, usize::MAX) {
                    if let Message::Error { code, .. } = &message {
                        ending.errors.push(*code);
                    }
                    ending.messages.push(message);
                } else if let Some((_, code, _)) = protocol::decode_any_error(&frame) {
                    // A refusal written in another protocol version.
                    ending.errors.push(code);
                }
            }
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                ending.close = frame.map(|f| u16::from(f.code));
                ending.closed = true;
                return ending;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => {
                ending.closed = true;
                return ending;
            }
        }
    }
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("concord-relay-test")
        .tempdir()
        .expect("tempdir")
}
