//! A lightweight writer: the real protocol over a real socket, without a
//! replica.
//!
//! Every other client of the load generator (and of the relay's tests) is
//! the SDK's own `Database` on sync-client's host loop ([`crate::client`]).
//! This one deliberately is not, and drives no `Session`: a full client
//! applies every operation the room delivers, so 100 of them on the relay's
//! own 2 cores would measure the load generator, not the relay. It is a
//! load source that speaks the wire protocol, not a second client: it has
//! no state to sync, never reconnects, and is used only to offer load to
//! the relay alongside one full client that measures. This client does what the relay can observe of a client, and
//! nothing more: `Hello` with its replica id, `Push` frames holding real
//! encoded operations (stamped by a real HLC), `Applied` confirming every
//! `Deliver` (so the relay's send window and cursors behave as with a real
//! client), `Pong` for `Ping`, and a `Ping` when otherwise silent. It reads
//! each delivery's header only (`protocol::deliver_header`), never its
//! operations, and confirms every frame that arrived together in one
//! `Applied`, written with the pushes due in one flush.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use sync_core::Timestamp;
use sync_core::protocol::{self, Hello, Message, MessageKind};
use sync_core::{Change, Clock, Op, OpId, ReplicaId, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::now_us;

/// Wall clock in milliseconds, for the HLC.
fn now_ms() -> u64 {
    now_us() / 1000
}

/// The light clients' WebSocket settings. tungstenite zero-fills its whole
/// read buffer before every socket read (128 KiB by default): with 100
/// clients reading thousands of small frames a second that memset was a
/// third of the load generator's CPU. 8 KiB holds the frames of these
/// scenarios.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames handled per wakeup before the `Applied` for them goes out.
const READ_BATCH: usize = 256;

/// A connected lightweight writer.
pub(crate) struct LightClient {
    ws: Ws,
    replica: ReplicaId,
    clock: Clock,
    /// Last sequence number written (and pushed).
    pub(crate) pushed: u64,
    /// Highest sequence number acknowledged.
    pub(crate) acked: u64,
    /// Cursor of the last frame received.
    cursor: u64,
    /// Whether the `Welcome` arrived.
    pub(crate) live: bool,
    /// Frames queued for the next flush.
    out: Vec<Vec<u8>>,
    /// The protocol version agreed in `Welcome` (`Hello` is always 2).
    version: u8,
    /// What the every-receiver scenario records, when it asked
    /// ([`LightClient::record`]).
    pub(crate) record: Option<Record>,
}

/// The newest protocol version light clients offer: every version this
/// build speaks by default, as the SDK's clients do; `--wire 2` keeps them
/// on version 2 (spliced deliveries) for comparisons.
static NEWEST_VERSION: AtomicU8 = AtomicU8::new(protocol::COMPACT_VERSION);

/// Sets the newest protocol version light clients offer (`--wire`).
pub(crate) fn set_newest_version(version: u8) -> Result<(), String> {
    if !protocol::SUPPORTED_VERSIONS.contains(&version) {
        return Err(format!(
            "--wire: this build speaks {:?}",
            protocol::SUPPORTED_VERSIONS
        ));
    }
    NEWEST_VERSION.store(version, Ordering::Relaxed);
    Ok(())
}

/// One `Deliver` as a receiver saw it: the room offsets it covers
/// (`from`, `cursor`], how many operations it held, and when it was read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrival {
    pub(crate) from: u64,
    pub(crate) cursor: u64,
    pub(crate) ops: u64,
    /// Wall clock (µs) when this client read the frame.
    pub(crate) at_us: u64,
}

/// What a client records for [`crate::receivers`]: cheap enough that 100
/// receivers at 10,000 ops/s do not make the load generator the bottleneck.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Every `Deliver` read, by its header only.
    pub(crate) arrivals: Vec<Arrival>,
    /// Send time (µs) of each operation this client pushed, by sequence
    /// number − 1.
    pub(crate) sent_us: Vec<u64>,
    /// When the push carrying each of those operations was written to the
    /// socket (µs), by sequence number − 1: the load generator's own share
    /// of the latency, before the relay sees the operation.
    pub(crate) flushed_us: Vec<u64>,
    /// Set on one receiver that writes nothing (the observer): it decodes
    /// every `Deliver` to learn which operation (replica, sequence number)
    /// each room offset holds, by offset − 1. Every other receiver reads
    /// headers only and is matched against this map afterwards.
    pub(crate) offsets: Option<Vec<(u64, u64)>>,
    /// Deliveries whose operation count did not match their offsets
    /// (observer only; must stay 0).
    pub(crate) gaps: u64,
    /// The protocol version agreed in `Welcome`: it decides which
    /// operations a `Deliver` carries (see [`crate::receivers`]).
    pub(crate) version: u8,
}

impl LightClient {
    /// Connects (with `TCP_NODELAY`) and sends `Hello` for replica `id` in
    /// `room`; the session is live once [`LightClient::read`] sees `Welcome`.
    pub(crate) async fn connect(id: u64, room: &str, url: &str) -> Result<LightClient, String> {
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = LightClient {
            ws,
            replica: ReplicaId(id),
            clock: Clock::new(sync_core::hlc::DEFAULT_MAX_DRIFT_MS),
            pushed: 0,
            acked: 0,
            cursor: 0,
            live: false,
            out: Vec::new(),
            version: protocol::PROTOCOL_VERSION,
            record: None,
        };
        let newest = NEWEST_VERSION.load(Ordering::Relaxed);
        client.out.push(protocol::encode(&Message::Hello(Hello {
            replica: client.replica,
            room: room.to_owned(),
            token: Vec::new(),
            cursor: 0,
            own_seq: 0,
            settled_seq: 0,
            agent: "concord-loadgen light".into(),
            versions: protocol::SUPPORTED_VERSIONS
                .iter()
                .copied()
                .filter(|&v| v <= newest)
                .collect(),
            // Every format this build reads, so the relay sends its stored
            // snapshot as it is instead of re-encoding it.
            snapshot_formats: (sync_core::snapshot::OLDEST_SNAPSHOT_FORMAT
                ..=sync_core::snapshot::NEWEST_SNAPSHOT_FORMAT)
                .collect(),
        })));
        client.flush().await?;
        Ok(client)
    }

    /// Queues a push of `count` puts of document `doc` in `collection`,
    /// each setting integer field `field` to `value`.
    pub(crate) fn push(
        &mut self,
        count: usize,
        collection: &str,
        doc: &str,
        field: &str,
        value: i64,
    ) {
        let now = now_ms();
        let ops = (0..count)
            .filter_map(|_| {
                let hlc = self.clock.tick(Timestamp::from_unix_ms(now)).ok()?;
                self.pushed += 1;
                Some(Op {
                    id: OpId {
                        replica: self.replica,
                        seq: self.pushed,
                    },
                    hlc,
                    change: Change::Put {
                        collection: collection.to_owned(),
                        id: doc.to_owned(),
                        fields: vec![(field.to_owned(), Some(Value::Int(value)))],
                    },
                })
            })
            .collect();
        self.out
            .push(protocol::encode_in(self.version, &Message::Push { ops }));
    }

    /// Queues one push of one operation per entry of `sent_us` (the time
    /// each was due, µs), each putting integer field `t` = that time into
    /// its own document of collection `lat`, and records the times by
    /// sequence number.
    pub(crate) fn push_timed(&mut self, sent_us: &[u64]) {
        let now = now_ms();
        let mut ops = Vec::with_capacity(sent_us.len());
        for &t in sent_us {
            let Ok(hlc) = self.clock.tick(Timestamp::from_unix_ms(now)) else {
                continue;
            };
            self.pushed += 1;
            if let Some(record) = &mut self.record {
                record.sent_us.push(t);
            }
            ops.push(Op {
                id: OpId {
                    replica: self.replica,
                    seq: self.pushed,
                },
                hlc,
                change: Change::Put {
                    collection: "lat".to_owned(),
                    id: format!("d{}", self.pushed % 64),
                    fields: vec![("t".to_owned(), Some(Value::Int(t as i64)))],
                },
            });
        }
        self.out
            .push(protocol::encode_in(self.version, &Message::Push { ops }));
    }

    /// Cursor of the last frame received.
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Queues a `Ping` (keeps an otherwise silent session alive). Nothing
    /// before `Welcome`: until then the protocol version is not agreed, and a
    /// frame in the version `Hello` used is malformed on a version-3
    /// connection (a heartbeat's first tick comes at once, often before it).
    pub(crate) fn ping(&mut self) {
        if !self.live {
            return;
        }
        self.out.push(protocol::encode_in(
            self.version,
            &Message::Ping { nonce: self.pushed },
        ));
    }

    /// Waits for the next frame, handles it and every frame already
    /// buffered behind it, and queues one `Applied` for the deliveries.
    /// `Err` once the connection is gone.
    pub(crate) async fn read(&mut self) -> Result<(), String> {
        let first = self.ws.next().await;
        let mut delivered: u32 = 0;
        self.handle(first, &mut delivered)?;
        for _ in 1..READ_BATCH {
            match self.ws.next().now_or_never() {
                Some(next) => self.handle(next, &mut delivered)?,
                None => break,
            }
        }
        if delivered > 0 {
            self.out.push(protocol::encode_in(
                self.version,
                &Message::Applied {
                    cursor: self.cursor,
                    frames: delivered,
                },
            ));
        }
        Ok(())
    }

    fn handle(
        &mut self,
        next: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
        delivered: &mut u32,
    ) -> Result<(), String> {
        let frame = match next {
            Some(Ok(WsMessage::Binary(frame))) => frame,
            Some(Ok(WsMessage::Close(close))) => return Err(format!("closed: {close:?}")),
            Some(Ok(_)) => return Ok(()),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection ended".into()),
        };
        match protocol::peek_kind(&frame) {
            Some(MessageKind::Deliver) => {
                let header = protocol::deliver_header(&frame).ok_or("Deliver with a bad header")?;
                if let Some(record) = &mut self.record {
                    record.arrivals.push(Arrival {
                        from: header.from,
                        cursor: header.cursor,
                        ops: header.op_count,
                        at_us: now_us(),
                    });
                    if let Some(offsets) = &mut record.offsets {
                        let Ok(Message::Deliver { from, cursor, ops }) =
                            protocol::decode(&frame, usize::MAX)
                        else {
                            return Err("undecodable Deliver".into());
                        };
                        // The observer writes nothing, so it receives every
                        // offset: `ops[k]` is at offset `from + 1 + k`.
                        if offsets.len() as u64 != from || cursor - from != ops.len() as u64 {
                            record.gaps += 1;
                        }
                        offsets.resize(from as usize, (0, 0));
                        offsets.extend(ops.iter().map(|op| (op.id.replica.0, op.id.seq)));
                    }
                }
                self.cursor = header.cursor;
                *delivered += 1;
            }
            // Small and rare: decoded in full.
            _ => match protocol::decode(&frame, usize::MAX).map_err(|e| e.to_string())? {
                Message::Welcome(welcome) => {
                    self.cursor = welcome.cursor;
                    self.version = welcome.version;
                    self.live = true;
                    if let Some(record) = &mut self.record {
                        record.version = welcome.version;
                    }
                }
                Message::Ack { through_seq, .. } => self.acked = self.acked.max(through_seq),
                Message::Ping { nonce } => self
                    .out
                    .push(protocol::encode_in(self.version, &Message::Pong { nonce })),
                Message::SnapshotChunk { cursor, .. } => {
                    self.cursor = cursor;
                    *delivered += 1;
                }
                Message::Error { code, message } => {
                    return Err(format!("relay error {code:?}: {message}"));
                }
                Message::Rejected { code, message, .. } => {
                    return Err(format!("push rejected ({code:?}): {message}"));
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// Writes every queued frame with one flush. `Err` if the socket failed.
    pub(crate) async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        for frame in self.out.drain(..) {
            self.ws
                .feed(WsMessage::Binary(frame.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        self.ws.flush().await.map_err(|e| e.to_string())
    }

    /// Closes the socket (bounded).
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.ws.close(None)).await;
    }
}
