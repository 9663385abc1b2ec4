//! Test harness: the real `concord-relay` binary on a loopback port with a
//! temporary data directory, a client that is the SDK's own `Database`
//! ([`client`]), raw WebSocket helpers for tests that need to speak the
//! protocol by hand (malformed input, misbehaving peers), and a tiny HTTP GET.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use sync_core::ReplicaId;
use sync_core::protocol::{self, ErrorCode, Hello, Message};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// A running relay process.
pub struct Relay {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
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
        let log = data.join(format!("relay-{}.log", now_ms()));
        std::fs::create_dir_all(data).expect("data dir");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(BIN);
        command
            .args(["--listen", listen, "--data"])
            .arg(data)
            .args(args)
            .env_remove("RUST_LOG")
            .env("CONCORD_LOG", "info,concord_relay=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for (key, _) in std::env::vars() {
            if key.starts_with("CONCORD_") && key != "CONCORD_LOG" {
                command.env_remove(key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn concord-relay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut earlier_lines = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("concord-relay listening on ") {
                        // docs/RELAY.md: it is always the first line on
                        // stdout, even on a first start that creates a key.
                        assert!(
                            earlier_lines.is_empty(),
                            "stdout lines before the listening line: {earlier_lines:?}"
                        );
                        break addr.trim().parse().expect("address");
                    }
                    earlier_lines.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "relay did not report its address; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        let relay = Relay {
            child: Some(child),
            addr,
            data: data.to_owned(),
            log,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        relay.wait_ready();
        relay
    }

    /// The same binary, data and settings again, on the same port.
    pub fn restart(&mut self) -> Relay {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Relay::start_at(&self.data, &self.addr.to_string(), &args)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(self.addr, "/healthz", None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("relay never became ready; log:\n{}", self.log_text());
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal with `kill(1)` and waits (bounded) for the exit.
    pub fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("relay did not exit after SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn mint_token(
    data: &Path,
    room: &str,
    rights: &str,
    ttl: &str,
    replica: Option<u64>,
) -> String {
    let mut command = Command::new(BIN);
    command
        .args([
            "token", "--room", room, "--rights", rights, "--ttl", ttl, "--data",
        ])
        .arg(data);
    if let Some(replica) = replica {
        command.args(["--replica", &ReplicaId(replica).to_string()]);
    }
    let out = command.output().expect("token command");
    assert!(
        out.status.success(),
        "token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// A blocking HTTP/1.1 GET; `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    // Chunked bodies: good enough to strip the chunk-size lines.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
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
