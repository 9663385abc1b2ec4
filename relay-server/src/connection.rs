//! One WebSocket connection: handshake, authentication, joining its room,
//! then a reader feeding the room and a writer draining the bounded
//! outbound queue.
//!
//! The first binary frame must be a `Hello` within the handshake timeout.
//! Its protocol version, negotiation, room name and token are checked
//! before the session joins anything; a refusal is an `Error` frame and a
//! close code, and is logged. After joining, the reader forwards every
//! binary frame to the room task, which alone decides what the session
//! receives, holding back pushes the rate limit does not cover yet.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use sync_core::protocol::{self, CloseCode, ErrorCode, Hello, Message};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::metrics::Metrics;
use crate::peer::{Control, Kill, Outbound, Peer};
use crate::room_host::{JoinReply, RoomHandle, RoomMsg};
use crate::server::App;
use crate::upgrade::Socket;

/// Messages larger than this go out as fragments of this size. tungstenite
/// formats each frame whole into the connection's write buffer, which keeps
/// the largest capacity it ever needed for as long as the connection lasts:
/// without fragments, every session that once received a large delivery or
/// snapshot chunk kept that much memory while idle.
pub(crate) const FRAGMENT_BYTES: usize = 16 * 1024;

/// How long to keep reading (and discarding) after our close frame, so the
/// client reads our last frames before the socket closes.
const LINGER: Duration = Duration::from_secs(2);

/// Whether `name` is an acceptable room name: 1 to 256 bytes, no control
/// characters (`protocol::valid_room_name`).
pub(crate) fn valid_room_name(name: &str) -> bool {
    protocol::valid_room_name(name)
}

/// Serves one upgraded WebSocket until it closes.
pub(crate) async fn serve(socket: Socket, app: Arc<App>, addr: SocketAddr) {
    let metrics = app.metrics.clone();
    metrics.connections_open.inc();
    metrics
        .connections_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let config = &app.config;
    let (sink, stream) = socket.split();
    let (peer, queue) = Peer::new(config.outbound_queue_frames, config.outbound_queue_bytes);
    let (writer_done_tx, writer_done) = watch::channel(false);
    let writer = tokio::spawn(write_loop(
        sink,
        queue,
        peer.control(),
        metrics.clone(),
        config.write_timeout,
        writer_done_tx,
    ));
    let session = app
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut conn = Conn {
        session,
        addr,
        peer,
        app: app.clone(),
        stream,
        writer_done,
    };
    conn.run().await;
    let Conn {
        peer,
        mut stream,
        mut writer_done,
        ..
    } = conn;
    drop(peer);
    // Let the writer send what is queued (the room drops its handle on
    // Leave), then linger briefly so the client reads our close.
    let grace = app.config.write_timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, writer_done.wait_for(|done| *done)).await;
    writer.abort();
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
    metrics.connections_open.dec();
}

struct Conn {
    session: u64,
    addr: SocketAddr,
    peer: Peer,
    app: Arc<App>,
    stream: SplitStream<Socket>,
    writer_done: watch::Receiver<bool>,
}

impl Conn {
    async fn run(&mut self) {
        let config = self.app.config.clone();
        if self.app.metrics.connections_open.get() > config.max_connections as u64 {
            tracing::warn!(peer = %self.addr, limit = config.max_connections, "connection refused: too many connections");
            return self.peer.error_and_close(
                ErrorCode::TooManyConnections,
                format!(
                    "the relay has its limit of {} connections",
                    config.max_connections
                ),
            );
        }
        let Some(hello) = self.handshake(config.handshake_timeout).await else {
            return;
        };
        if !valid_room_name(&hello.room) {
            tracing::info!(peer = %self.addr, room = ?hello.room, "refused: invalid room name");
            return self.peer.error_and_close(
                ErrorCode::InvalidRoom,
                format!(
                    "room names are 1 to {} bytes without control characters",
                    sync_core::limits::MAX_ROOM_NAME_LEN
                ),
            );
        }
        if let Err(error) = protocol::negotiate(&hello) {
            tracing::info!(peer = %self.addr, room = ?hello.room, %error, "refused: nothing in common");
            return self
                .peer
                .error_and_close(error.error_code(), error.to_string());
        }
        let now_secs = crate::room_host::wall_clock().unix_ms() / 1000;
        let grant =
            match self
                .app
                .verifier
                .verify(&hello.token, &hello.room, hello.replica, now_secs)
            {
                Ok(grant) => grant,
                Err(error) => {
                    self.app.metrics.auth_refused(error.label());
                    tracing::warn!(
                        peer = %self.addr,
                        room = ?hello.room,
                        replica = %hello.replica,
                        agent = ?hello.agent,
                        %error,
                        "session refused"
                    );
                    return self.peer.error_and_close(error.code(), error.to_string());
                }
            };
        let room_name = hello.room.clone();
        tracing::info!(
            peer = %self.addr,
            session = self.session,
            room = ?room_name,
            replica = %hello.replica,
            read_only = grant.read_only,
            anonymous = grant.anonymous,
            "session authenticated"
        );
        let Some(room) = self.join(hello, grant.read_only).await else {
            return;
        };
        self.read_loop(&room).await;
        let _ = room
            .tx
            .send(RoomMsg::Leave {
                session: self.session,
            })
            .await;
        tracing::info!(peer = %self.addr, session = self.session, room = ?room_name, "session ended");
    }

    /// Waits for the `Hello`.
    async fn handshake(&mut self, timeout: Duration) -> Option<Hello> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut shutdown = self.app.shutdown.clone();
        let max = self.app.config.max_frame_bytes;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, self.stream.next()) => next,
                _ = shutdown.wait_for(|stop| *stop) => {
                    self.peer.error_and_close(ErrorCode::GoingAway, "the relay is shutting down; reconnect later".into());
                    return None;
                }
            };
            let message = match next {
                Err(_) => {
                    self.app.metrics.error("HandshakeTimeout");
                    tracing::info!(peer = %self.addr, "no Hello within the handshake timeout");
                    self.peer.close(
                        CloseCode::HandshakeTimeout,
                        format!("no Hello within {} s", timeout.as_secs_f32()),
                    );
                    return None;
                }
                Ok(None) => return None,
                Ok(Some(Err(error))) => {
                    self.read_error(error);
                    return None;
                }
                Ok(Some(Ok(message))) => message,
            };
            match message {
                WsMessage::Binary(bytes) => {
                    self.count_in(bytes.len());
                    let (code, reason) = match protocol::decode(&bytes, max) {
                        Ok(Message::Hello(hello)) => return Some(hello),
                        Ok(_) => (
                            ErrorCode::Malformed,
                            "the first message must be a Hello".to_owned(),
                        ),
                        Err(protocol::FrameError::UnsupportedVersion { found }) => {
                            // Answered in the client's own version, which
                            // lays `Error` out as every version does.
                            let reason = format!(
                                "this relay speaks protocol versions {:?}, not {found}; upgrade the client",
                                protocol::SUPPORTED_VERSIONS
                            );
                            tracing::info!(peer = %self.addr, version = found, "handshake refused: protocol version");
                            self.app.metrics.error("UnsupportedVersion");
                            let frame = protocol::encode_version_refusal(found, &reason);
                            if self.peer.send(frame).is_ok() {
                                self.peer.close(CloseCode::UnsupportedVersion, reason);
                            } else {
                                self.peer.kill(ErrorCode::UnsupportedVersion, reason);
                            }
                            return None;
                        }
                        Err(e) => (e.error_code(), e.to_string()),
                    };
                    tracing::info!(peer = %self.addr, code = ?code, %reason, "handshake refused");
                    self.peer.error_and_close(code, reason);
                    return None;
                }
                WsMessage::Text(_) => {
                    self.refuse_text();
                    return None;
                }
                WsMessage::Close(_) => return None,
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
            }
        }
    }

    /// Joins the room, looking it up again if its task was stopping.
    async fn join(&mut self, hello: Hello, read_only: bool) -> Option<RoomHandle> {
        for _ in 0..5 {
            let Some(room) = self.app.rooms().and_then(|rooms| rooms.get(&hello.room)) else {
                self.peer.error_and_close(
                    ErrorCode::GoingAway,
                    "the relay is shutting down; reconnect later".into(),
                );
                return None;
            };
            let (reply, answer) = oneshot::channel();
            let join = RoomMsg::Join {
                session: self.session,
                hello: Box::new(hello.clone()),
                read_only,
                peer: self.peer.clone(),
                reply,
            };
            if room.tx.send(join).await.is_err() {
                continue;
            }
            match answer.await {
                Ok(JoinReply::Joined) => return Some(room),
                Ok(JoinReply::Refused { code, message }) => {
                    tracing::warn!(peer = %self.addr, room = ?hello.room, code = ?code, %message, "join refused");
                    self.peer.error_and_close(code, message);
                    return None;
                }
                Ok(JoinReply::Retry) | Err(_) => {}
            }
        }
        self.peer.error_and_close(
            ErrorCode::Internal,
            "the room is restarting; reconnect".into(),
        );
        None
    }

    /// Forwards the session's frames to its room until either side ends.
    ///
    /// Pushes are rate-limited by backpressure: a push the token bucket
    /// cannot pay for yet is held (so its `Ack` waits) while other frames
    /// go on to the room. A client that keeps to the push window is only
    /// slowed down; one with more than [`protocol::MAX_PUSH_WINDOW`] pushes
    /// awaiting their answer ignores the protocol and is cut off.
    async fn read_loop(&mut self, room: &RoomHandle) {
        let config = self.app.config.clone();
        let max_push_ops = config.room.max_batch_ops;
        let control = self.peer.control();
        let mut bucket = TokenBucket::new(config.ops_per_second, config.ops_burst);
        // Pushes waiting for tokens, oldest first, with their operation count.
        let mut held: VecDeque<(Bytes, usize)> = VecDeque::new();
        loop {
            // Hand on the held pushes the bucket can pay for now.
            while let Some((_, ops)) = held.front() {
                if !bucket.take(*ops) {
                    break;
                }
                let Some((frame, _)) = held.pop_front() else {
                    break;
                };
                if !self.forward(room, frame, true).await {
                    return;
                }
            }
            let refill = held.front().map(|(_, ops)| bucket.wait_for(*ops));
            let next = tokio::select! {
                next = self.stream.next() => next,
                _ = self.writer_done.wait_for(|done| *done) => return,
                () = tokio::time::sleep(refill.unwrap_or_default()), if refill.is_some() => continue,
            };
            let message = match next {
                None => return,
                Some(Err(error)) => return self.read_error(error),
                Some(Ok(message)) => message,
            };
            match message {
                WsMessage::Binary(frame) => {
                    self.count_in(frame.len());
                    // A push is charged by the count in its header, not
                    // decoded twice: the room decodes every frame once and
                    // refuses a push whose operations do not match that
                    // count, so a false count never reaches the state. A
                    // count above the room's limit goes on uncharged, for
                    // the room to refuse at once.
                    let pushed = protocol::push_op_count(&frame)
                        .and_then(|ops| usize::try_from(ops).ok())
                        .filter(|&ops| ops > 0 && ops <= max_push_ops);
                    let Some(ops) = pushed else {
                        if !self.forward(room, frame, false).await {
                            return;
                        }
                        continue;
                    };
                    self.app
                        .metrics
                        .ops_in
                        .fetch_add(ops as u64, std::sync::atomic::Ordering::Relaxed);
                    let awaiting = held.len() + control.unanswered_pushes();
                    if awaiting >= protocol::MAX_PUSH_WINDOW {
                        tracing::warn!(
                            peer = %self.addr,
                            session = self.session,
                            awaiting,
                            "session ignores the push window while rate-limited; cut off"
                        );
                        return self.peer.error_and_close(
                            ErrorCode::RateLimited,
                            format!(
                                "more than {} pushes awaiting their answer; wait for acks \
                                 (limit {} operations per second, burst {})",
                                protocol::MAX_PUSH_WINDOW,
                                config.ops_per_second,
                                config.ops_burst
                            ),
                        );
                    }
                    if held.is_empty() && bucket.take(ops) {
                        if !self.forward(room, frame, true).await {
                            return;
                        }
                    } else {
                        held.push_back((frame, ops));
                    }
                }
                WsMessage::Text(_) => return self.refuse_text(),
                WsMessage::Close(_) => return,
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
            }
        }
    }

    /// Hands a frame to the room; `false` if the room is gone (the session
    /// is then closed).
    async fn forward(&self, room: &RoomHandle, frame: Bytes, push: bool) -> bool {
        if push {
            self.peer.control().pushed();
        }
        let msg = RoomMsg::Frame {
            session: self.session,
            frame,
            push,
            at: Instant::now(),
        };
        if room.tx.send(msg).await.is_err() {
            self.peer
                .error_and_close(ErrorCode::Internal, "the room stopped; reconnect".into());
            return false;
        }
        true
    }

    fn count_in(&self, len: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.app.metrics.frames_in.fetch_add(1, Relaxed);
        self.app.metrics.bytes_in.fetch_add(len as u64, Relaxed);
    }

    fn refuse_text(&self) {
        tracing::info!(peer = %self.addr, "text frame refused");
        self.peer.error_and_close(
            ErrorCode::Malformed,
            "text frames are not part of the protocol; send binary frames".into(),
        );
    }

    /// A read failed: an oversized frame is answered; anything else ends
    /// the connection quietly.
    fn read_error(&self, error: tungstenite::Error) {
        match &error {
            tungstenite::Error::Capacity(capacity) => {
                tracing::info!(peer = %self.addr, %capacity, "oversized frame refused");
                self.peer.error_and_close(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame exceeds the limit of {} bytes",
                        self.app.config.max_frame_bytes
                    ),
                );
            }
            tungstenite::Error::Protocol(problem) => {
                tracing::info!(peer = %self.addr, %problem, "WebSocket protocol error");
                self.app.metrics.error("WebSocketProtocol");
                self.peer
                    .close(CloseCode::ProtocolError, "WebSocket protocol error".into());
            }
            _ => tracing::debug!(peer = %self.addr, %error, "connection read failed"),
        }
    }
}

/// Writes queued frames until a close, a kill, or a stalled socket.
async fn write_loop(
    mut sink: SplitSink<Socket, WsMessage>,
    mut queue: mpsc::Receiver<Outbound>,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    write_timeout: Duration,
    done: watch::Sender<bool>,
) {
    // Whether a fragmented message is open: its first fragments are
    // written, its last is not. Only control frames (the close) may go out
    // until it ends (RFC 6455 section 5.4).
    let mut open = false;
    // One registration for a kill's wakeup, kept across frames: a fresh
    // `notified()` in each select registered and unregistered (a lock each
    // time) twice per frame, and every session writes one frame per commit.
    let mut woken = std::pin::pin!(control.wake.notified());
    loop {
        let next = tokio::select! {
            biased;
            () = woken.as_mut() => None,
            next = queue.recv() => Some(next),
        };
        let written = match next {
            None => {
                let Some(kill) = control.take_kill() else {
                    woken.set(control.wake.notified());
                    continue;
                };
                send_kill(&mut sink, kill, open, &metrics, write_timeout).await;
                break;
            }
            Some(Some(Outbound::Frame(frame, queued))) => {
                control.dequeued(frame.len());
                control.sending(&frame);
                metrics.frame_out(&frame);
                let flush = queue.is_empty();
                // A kill (the queue overflowed behind a stalled socket)
                // interrupts a write that is not making progress, possibly
                // between two fragments of its message.
                tokio::select! {
                    biased;
                    () = woken.as_mut() => {
                        if let Some(kill) = control.take_kill() {
                            send_kill(&mut sink, kill, open, &metrics, KILL_WRITE_TIMEOUT).await;
                        }
                        break;
                    }
                    written = write(&mut sink, frame, flush, write_timeout, &mut open) => {
                        if let Some(queued) = queued {
                            metrics.send_latency.observe(queued.elapsed());
                        }
                        written
                    }
                }
            }
            Some(Some(Outbound::Close { code, reason })) => {
                let _ = timed(write_timeout, sink.send(close_message(code, &reason))).await;
                break;
            }
            Some(None) => {
                let _ = timed(write_timeout, sink.close()).await;
                break;
            }
        };
        if !written {
            break;
        }
    }
    let _ = done.send(true);
}

/// How long a cut-off may take to write its error and close frames.
const KILL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes a frame, flushing if asked (once the queue is empty, so bursts
/// share syscalls). A frame larger than [`FRAGMENT_BYTES`] goes out as
/// fragments of that size, so the write buffer never grows past one
/// fragment plus what is gathered before a socket write. `open` is true
/// while the message's first fragment is written and its last is not, so
/// a caller that drops this future midway knows a message is open. `false`:
/// the socket failed or stalled (`limit` without progress).
async fn write(
    sink: &mut SplitSink<Socket, WsMessage>,
    frame: Bytes,
    flush: bool,
    limit: Duration,
    open: &mut bool,
) -> bool {
    let len = frame.len();
    if len <= FRAGMENT_BYTES {
        // One timer for the feed and the flush: a small frame is one
        // socket write, and every session writes one per commit.
        let written = timed(limit, async {
            sink.feed(WsMessage::Binary(frame)).await?;
            if flush {
                sink.flush().await?;
            }
            Ok::<(), tungstenite::Error>(())
        })
        .await;
        return matches!(written, Ok(Ok(())));
    }
    for start in (0..len).step_by(FRAGMENT_BYTES) {
        let end = (start + FRAGMENT_BYTES).min(len);
        let opcode = if start == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fragment = Frame::message(frame.slice(start..end), opcode, end == len);
        // tungstenite buffers a frame whole once `feed` takes it, so a
        // fragment is either entirely written or not at all.
        if !matches!(
            timed(limit, sink.feed(WsMessage::Frame(fragment))).await,
            Ok(Ok(()))
        ) {
            return false;
        }
        *open = end < len;
    }
    !flush || matches!(timed(limit, sink.flush()).await, Ok(Ok(())))
}

/// Sends a cut-off's error and close frames, briefly: the socket may be
/// the reason for the cut-off. While a fragmented message is `open`, a
/// binary frame would be a protocol violation (the client would report a
/// WebSocket protocol error, not our code), and the message cannot be
/// finished on a socket that stalled: only the close frame, a control
/// frame allowed between fragments, goes out, carrying the kill's code and
/// reason. The error still counts in the metrics.
async fn send_kill(
    sink: &mut SplitSink<Socket, WsMessage>,
    kill: Kill,
    open: bool,
    metrics: &Metrics,
    limit: Duration,
) {
    if let Some(error) = kill.error {
        if open {
            if let Ok(protocol::Message::Error { code, .. }) = protocol::decode(&error, usize::MAX)
            {
                metrics.error(crate::metrics::error_code_name(code));
            }
        } else {
            metrics.frame_out(&error);
            let _ = timed(limit, sink.feed(WsMessage::Binary(error.into()))).await;
        }
    }
    let _ = timed(limit, sink.send(close_message(kill.code, &kill.reason))).await;
}

/// `f`, given up after `limit`.
async fn timed<F: std::future::Future>(
    limit: Duration,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(limit, f).await
}

/// A close frame; the reason is cut to the 123 bytes a close frame allows.
fn close_message(code: u16, reason: &str) -> WsMessage {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.get(..end).unwrap_or_default().into(),
    }))
}

/// Pushed operations allowed per session: `rate` per second, up to `burst`
/// at once. A rate of 0 turns the limit off.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens if there are that many (a push larger than the
    /// bucket costs the whole bucket, so it is never held for ever).
    fn take(&mut self, n: usize) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.refill();
        let n = (n as f64).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// How long until [`TokenBucket::take`] of `n` tokens succeeds.
    fn wait_for(&mut self, n: usize) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        self.refill();
        let missing = (n as f64).min(self.burst) - self.tokens;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        // Round up to a whole millisecond so the wake-up finds enough.
        Duration::from_millis((missing / self.rate * 1000.0).ceil() as u64 + 1)
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut bucket = TokenBucket::new(10, 100);
        assert!(bucket.take(100));
        assert!(!bucket.take(5));
        let wait = bucket.wait_for(5);
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(502));
        // More than the bucket holds costs the whole bucket.
        assert!(bucket.wait_for(1_000) <= Duration::from_millis(10_002));
        let mut off = TokenBucket::new(0, 1);
        assert!(off.take(1_000_000));
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let WsMessage::Close(Some(frame)) = close_message(4000, &reason) else {
            panic!("not a close");
        };
        assert!(frame.reason.len() <= 123);
        assert!(valid_room_name("todos"));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("a\nb"));
        assert!(!valid_room_name(&"x".repeat(257)));
    }
}
