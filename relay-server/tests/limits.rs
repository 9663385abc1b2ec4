//! Misbehaving clients get an error and a close while every other session
//! carries on: garbage, text frames, wrong versions, truncated handshakes,
//! oversized frames, ignoring the push window, reading too slowly, too many
//! connections.

mod common;

use std::io::Write as _;

use std::time::Duration;
use tokio_tungstenite::MaybeTlsStream;

use common::{Client, Relay, Ws, hello_frame, raw_connect, read_until_close, tempdir};
use futures_util::{SinkExt as _, StreamExt as _};
use sync_core::protocol::{self, ErrorCode, Message};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const LIMIT: Duration = Duration::from_secs(20);

/// A raw client (replica 9) joined to room "r" over a socket with a 4 KiB
/// receive buffer; it reads only when the test does, so the relay's
/// deliveries back up in the socket.
async fn join_with_a_tiny_receive_buffer(relay: &Relay, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(relay.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(relay.url(), MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    ws.send(WsMessage::Binary(hello_frame(9, "r", token).into()))
        .await
        .unwrap();
    ws
}

/// An `Applied` frame claiming everything: keeps the relay's delivery
/// window open without reading anything.
fn applied_everything() -> Vec<u8> {
    protocol::encode(&Message::Applied {
        cursor: u64::MAX,
        frames: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_are_refused_while_others_carry_on() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &[
            "--handshake-timeout",
            "1s",
            "--max-frame-bytes",
            "128KiB",
            "--max-batch-bytes",
            "16KiB",
        ],
    );
    let token = relay.token("r", "rw", "1h", None);
    let mut a = Client::new(1, "r", &token, &relay.url());
    let mut b = Client::new(2, "r", &token, &relay.url());
    a.start();
    b.start();
    a.put("docs", "before", "n", 0);
    let (ra, rb) = tokio::join!(a.sync_to("docs", 1, LIMIT), b.sync_to("docs", 1, LIMIT));
    ra.unwrap();
    rb.unwrap();

    let url = relay.url();
    let mut garbage_then_hello = hello_frame(9, "r", &token);
    garbage_then_hello.truncate(garbage_then_hello.len() / 2);
    let cases: Vec<(&str, WsMessage, Vec<ErrorCode>, Option<u16>)> = vec![
        (
            "garbage",
            WsMessage::Binary(
                vec![protocol::PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0x07, 3, 3].into(),
            ),
            vec![ErrorCode::Malformed],
            Some(4000),
        ),
        (
            "empty",
            WsMessage::Binary(Vec::new().into()),
            vec![ErrorCode::Malformed],
            Some(4000),
        ),
        (
            "text",
            WsMessage::Text("{\"hello\": true}".into()),
            vec![ErrorCode::Malformed],
            Some(4000),
        ),
        (
            "wrong version",
            WsMessage::Binary({
                let mut frame = hello_frame(9, "r", &token);
                frame[0] = 99;
                frame.into()
            }),
            vec![ErrorCode::UnsupportedVersion],
            Some(4001),
        ),
        (
            // A client of protocol version 1 (no negotiation) is answered
            // in version 1, which it reads, and told not to retry.
            "version 1 hello",
            WsMessage::Binary({
                let mut frame = hello_frame(9, "r", &token);
                frame[0] = 1;
                frame.into()
            }),
            vec![ErrorCode::UnsupportedVersion],
            Some(4001),
        ),
        (
            "no snapshot format in common",
            WsMessage::Binary({
                let Ok(Message::Hello(mut hello)) =
                    protocol::decode(&hello_frame(9, "r", &token), usize::MAX)
                else {
                    unreachable!("a hello")
                };
                hello.snapshot_formats = vec![7];
                protocol::encode(&Message::Hello(hello)).into()
            }),
            vec![ErrorCode::UnsupportedVersion],
            Some(4001),
        ),
        (
            // A room name the relay refuses, for good: its own code, after
            // which clients stop reconnecting.
            "room name with a control character",
            WsMessage::Binary(hello_frame(9, "a\u{7}b", &token).into()),
            vec![ErrorCode::InvalidRoom],
            Some(4012),
        ),
        (
            "room name of 257 bytes",
            WsMessage::Binary(hello_frame(9, &"r".repeat(257), &token).into()),
            vec![ErrorCode::InvalidRoom],
            Some(4012),
        ),
        (
            "truncated hello",
            WsMessage::Binary(garbage_then_hello.into()),
            vec![ErrorCode::Malformed],
            Some(4000),
        ),
        (
            "not a hello first",
            WsMessage::Binary(protocol::encode(&Message::Ping { nonce: 1 }).into()),
            vec![ErrorCode::Malformed],
            Some(4000),
        ),
        (
            "oversized",
            WsMessage::Binary(vec![1u8; 200 * 1024].into()),
            vec![ErrorCode::FrameTooLarge],
            Some(4007),
        ),
    ];
    for (what, message, errors, close) in cases {
        let mut ws = raw_connect(&url).await;
        let _ = ws.send(message).await;
        let ending = read_until_close(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(ending.errors, errors, "{what}");
        assert_eq!(ending.close, close, "{what}");
        if what == "version 1 hello" {
            assert_eq!(ending.versions, vec![1], "answered in the client's version");
        }
        // Others carry on in between (syncing on their own threads).
        a.put("docs", what, "n", 1);
    }

    // Garbage after a valid handshake: the room closes the session.
    let mut ws = raw_connect(&url).await;
    ws.send(WsMessage::Binary(hello_frame(9, "r", &token).into()))
        .await
        .unwrap();
    ws.send(WsMessage::Binary(
        vec![protocol::PROTOCOL_VERSION, 0x7f, 0x7f].into(),
    ))
    .await
    .unwrap();
    let ending = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(ending.errors, vec![ErrorCode::Malformed]);
    assert_eq!(ending.close, Some(4000));

    // An oversized frame after joining.
    let mut ws = raw_connect(&url).await;
    ws.send(WsMessage::Binary(hello_frame(10, "r", &token).into()))
        .await
        .unwrap();
    let _ = ws
        .send(WsMessage::Binary(vec![1u8; 300 * 1024].into()))
        .await;
    let ending = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(ending.errors, vec![ErrorCode::FrameTooLarge]);
    assert_eq!(ending.close, Some(4007));

    // A connection that never says Hello is closed after the handshake timeout.
    let started = std::time::Instant::now();
    let mut silent = raw_connect(&url).await;
    let ending = read_until_close(&mut silent, Duration::from_secs(5)).await;
    assert_eq!(ending.close, Some(4004));
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A connection that stops halfway through a WebSocket frame, and one
    // that is not even HTTP.
    let mut half = std::net::TcpStream::connect(relay.addr).unwrap();
    half.write_all(
        b"GET /v1/sync HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x82\xfe",
    )
    .unwrap();
    let mut junk = std::net::TcpStream::connect(relay.addr).unwrap();
    junk.write_all(&[0u8; 4096]).unwrap();
    // A request whose headers never finish is dropped after the timeout.
    let mut slow = std::net::TcpStream::connect(relay.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let read = std::io::Read::read_to_end(&mut slow, &mut sink);
    assert!(read.is_ok(), "not closed by the header timeout: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // Everybody else is fine.
    a.put("docs", "after", "n", 2);
    let (ra, rb) = tokio::join!(a.sync_to("docs", 13, LIMIT), b.sync_to("docs", 13, LIMIT));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(a.closes(), Vec::<Option<u16>>::new());
    assert_eq!(b.closes(), Vec::<Option<u16>>::new());
    assert_eq!((a.connects(), b.connects()), (1, 1), "never reconnected");
    assert_eq!(
        common::http_get(relay.addr, "/healthz", None).unwrap().0,
        200
    );
    let metrics = relay.metrics();
    for kind in [
        "Malformed",
        "FrameTooLarge",
        "UnsupportedVersion",
        "HandshakeTimeout",
    ] {
        assert!(
            metrics.contains(&format!("concord_errors_total{{kind=\"{kind}\"}}")),
            "{kind}:\n{metrics}"
        );
    }
    drop(half);
    drop(junk);
}

/// A writer that keeps to the push window is slowed down to the rate limit
/// (its acks wait for tokens), never cut off; nothing is lost, and other
/// sessions carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_over_the_rate_is_slowed_by_backpressure_not_cut_off() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &[
            "--ops-per-second",
            "400",
            "--ops-burst",
            "400",
            "--max-batch-ops",
            "100",
        ],
    );
    let token = relay.token("r", "rw", "1h", None);
    let mut fast = Client::new(1, "r", &token, &relay.url());
    let mut other = Client::new(2, "r", &token, &relay.url());
    fast.start();
    other.start();
    fast.run_until(LIMIT, Client::is_live).await.unwrap();
    let started = std::time::Instant::now();
    for i in 0..1_600 {
        fast.put("docs", &format!("d{i}"), "n", i);
    }
    let (rf, ro) = tokio::join!(
        fast.sync_to("docs", 1_600, Duration::from_secs(40)),
        other.sync_to("docs", 1_600, Duration::from_secs(40))
    );
    rf.unwrap();
    ro.unwrap();
    fast.run_until(LIMIT, |c| c.pending() == 0).await.unwrap();
    // 1,200 operations beyond the burst at 400 per second.
    assert!(
        started.elapsed() >= Duration::from_millis(2_500),
        "throttled: {:?}",
        started.elapsed()
    );
    assert!(
        fast.closes().is_empty(),
        "never cut off: {:?}",
        fast.closes()
    );
    assert!(fast.errors().is_empty(), "{:?}", fast.errors());
    assert!(other.closes().is_empty(), "{:?}", other.closes());
}

/// A client that ignores the push window while it is being throttled is
/// cut off with `RateLimited` (4008).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_the_push_window_is_cut_off() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &[
            "--ops-per-second",
            "1",
            "--ops-burst",
            "1",
            "--max-batch-ops",
            "1",
        ],
    );
    let token = relay.token("r", "rw", "1h", None);
    let mut ws = raw_connect(&relay.url()).await;
    ws.send(WsMessage::Binary(hello_frame(9, "r", &token).into()))
        .await
        .unwrap();
    let now = common::now_ms();
    for seq in 1..=3 * protocol::MAX_PUSH_WINDOW as u64 {
        let op = sync_core::Op {
            id: sync_core::OpId {
                replica: sync_core::ReplicaId(9),
                seq,
            },
            hlc: sync_core::Hlc::new(now, seq as u16).unwrap(),
            change: sync_core::Change::CreateCollection {
                collection: format!("c{seq}"),
            },
        };
        let push = protocol::encode(&Message::Push { ops: vec![op] });
        if ws.send(WsMessage::Binary(push.into())).await.is_err() {
            break;
        }
    }
    let ending = read_until_close(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(ending.errors, vec![ErrorCode::RateLimited]);
    assert_eq!(ending.close, Some(4008));
    let acks = ending
        .messages
        .iter()
        .filter(|m| matches!(m, Message::Ack { .. }))
        .count();
    assert!(acks < protocol::MAX_PUSH_WINDOW, "{acks} acks");
}

/// The rate limit charges a push by the operation count in its header
/// without decoding it; a push whose header understates (or overstates)
/// its operations must then be refused by the room, never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_header_miscounts_its_operations_is_refused() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &[
            "--ops-per-second",
            "1",
            "--ops-burst",
            "100",
            "--max-batch-ops",
            "100",
            "--admin-token",
            "admin",
        ],
    );
    let token = relay.token("r", "rw", "1h", None);
    let now = common::now_ms();
    let ops: Vec<_> = (1..=50u64)
        .map(|seq| sync_core::Op {
            id: sync_core::OpId {
                replica: sync_core::ReplicaId(9),
                seq,
            },
            hlc: sync_core::Hlc::new(now, seq as u16).unwrap(),
            change: sync_core::Change::CreateCollection {
                collection: format!("c{seq}"),
            },
        })
        .collect();
    for claimed in [1u8, 51] {
        let mut push = protocol::encode(&Message::Push { ops: ops.clone() });
        // Version byte, tag, then the count: one byte below 128.
        assert_eq!(push[2], 50);
        push[2] = claimed;
        let mut ws = raw_connect(&relay.url()).await;
        ws.send(WsMessage::Binary(hello_frame(9, "r", &token).into()))
            .await
            .unwrap();
        ws.send(WsMessage::Binary(push.into())).await.unwrap();
        let ending = read_until_close(&mut ws, Duration::from_secs(10)).await;
        assert_eq!(
            ending.errors,
            vec![ErrorCode::Malformed],
            "claimed {claimed}"
        );
        assert!(
            !ending
                .messages
                .iter()
                .any(|m| matches!(m, Message::Ack { .. })),
            "claimed {claimed}: {:?}",
            ending.messages
        );
    }
    // Nothing of either push reached the room's log (a session keeps the
    // room loaded while its stats are read).
    let mut reader = raw_connect(&relay.url()).await;
    reader
        .send(WsMessage::Binary(hello_frame(2, "r", &token).into()))
        .await
        .unwrap();
    let welcome = reader.next().await.unwrap().unwrap().into_data();
    assert!(matches!(
        protocol::decode(&welcome, usize::MAX),
        Ok(Message::Welcome(_))
    ));
    assert_eq!(relay.stats("r", "admin")["head"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_and_resumes() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &[
            "--send-window",
            "2",
            "--max-batch-ops",
            "10",
            "--slow-consumer-timeout",
            "1s",
        ],
    );
    let token = relay.token("r", "rw", "1h", None);
    let mut writer = Client::new(1, "r", &token, &relay.url());
    let mut slow = Client::new(2, "r", &token, &relay.url());
    writer.start();
    slow.start();
    slow.run_until(LIMIT, Client::is_live).await.unwrap();
    // The slow client stops reading while the writer writes a lot.
    slow.pause_reading(true);
    for i in 0..200 {
        writer.put("docs", &format!("d{i}"), "n", i);
    }
    writer.sync_to("docs", 200, LIMIT).await.unwrap();
    writer.run_for(Duration::from_millis(1500)).await;
    // It reads again: it was cut off as a slow consumer, and it resumes
    // from its cursor.
    slow.pause_reading(false);
    slow.run_until(LIMIT, |c| c.closes().contains(&Some(4005)))
        .await
        .unwrap();
    assert!(slow.errors().contains(&ErrorCode::SlowConsumer));
    slow.sync_to("docs", 200, LIMIT).await.unwrap();
    assert_eq!(slow.docs("docs"), writer.docs("docs"));
    assert!(writer.closes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_confirms_without_reading_hits_the_outbound_bound() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &[
            "--outbound-queue-frames",
            "16",
            "--outbound-queue-bytes",
            "1MiB",
            "--max-frame-bytes",
            "1MiB",
            "--max-batch-bytes",
            "256KiB",
            "--write-timeout",
            "30s",
        ],
    );
    let token = relay.token("r", "rw", "1h", None);
    // A raw client with a tiny receive buffer joins and then only sends
    // `Applied` frames claiming everything, never reading: the room keeps
    // sending, the socket backs up, and the bounded queue cuts it off.
    let mut ws = join_with_a_tiny_receive_buffer(&relay, &token).await;
    let mut writer = Client::new(1, "r", &token, &relay.url());
    writer.start();
    let value = "x".repeat(2000);
    let applied = applied_everything();
    let mut cut_off = false;
    let started = std::time::Instant::now();
    'outer: for round in 0..200 {
        for i in 0..50 {
            let id = format!("d{round}-{i}");
            let _durable = writer
                .db
                .collection("docs")
                .put(&id, [("v", value.as_str())]);
        }
        writer.run_until(LIMIT, |c| c.pending() == 0).await.unwrap();
        for _ in 0..20 {
            if ws
                .send(WsMessage::Binary(applied.clone().into()))
                .await
                .is_err()
            {
                cut_off = true;
                break 'outer;
            }
        }
        if relay
            .metrics()
            .contains("concord_errors_total{kind=\"SlowConsumer\"}")
        {
            cut_off = true;
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    assert!(cut_off, "the non-reading client was never cut off");
    // The writer was not affected.
    assert!(writer.closes().is_empty());
    assert!(relay.log_text().contains("slow consumer"));
    // Reading now shows the cut-off (once the buffered frames are through).
    let ending = read_until_close(&mut ws, Duration::from_secs(10)).await;
    assert!(ending.closed);
    if ending.close.is_some() {
        assert_eq!(ending.close, Some(4005));
    }
    let _ = ws.next().await;
}

/// A cut-off that lands while the relay is halfway through a fragmented
/// message must not write a data frame inside it (RFC 6455 forbids that,
/// and the client would see a WebSocket protocol error instead of the
/// relay's close code): the client reads the fragments so far, then the
/// close frame with the slow-consumer code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_in_the_middle_of_a_fragmented_message_closes_with_its_code() {
    let dir = tempdir();
    // Deliveries of up to 3 MiB: 192 fragments of 16 KiB each, far more
    // than a stalled socket holds, so the writer stalls inside one.
    let relay = Relay::start(
        dir.path(),
        &[
            "--outbound-queue-frames",
            "16",
            "--outbound-queue-bytes",
            "8MiB",
            "--max-frame-bytes",
            "8MiB",
            "--max-batch-bytes",
            "3MiB",
            "--write-timeout",
            "30s",
        ],
    );
    let token = relay.token("r", "rw", "1h", None);
    // A raw client with a tiny receive buffer that keeps its window open
    // with `Applied` frames but reads nothing until the relay cuts it off.
    let mut ws = join_with_a_tiny_receive_buffer(&relay, &token).await;
    // The relay writes the close for at most a second after a cut-off, so
    // the client must start reading promptly: a thread watches the metric
    // the cut-off counts (just before its close is written).
    let (cut_tx, mut cut_rx) = tokio::sync::oneshot::channel();
    let addr = relay.addr;
    let watcher = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            let text = common::http_get(addr, "/metrics", None).map(|r| r.1);
            if text.is_some_and(|t| t.contains("concord_errors_total{kind=\"SlowConsumer\"}")) {
                let _ = cut_tx.send(());
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let mut writer = Client::new(1, "r", &token, &relay.url());
    writer.start();
    let value = "x".repeat(400 * 1024);
    let applied = applied_everything();
    let mut cut_off = false;
    'rounds: for round in 0..40 {
        for i in 0..8 {
            let id = format!("d{round}-{i}");
            let _durable = writer
                .db
                .collection("docs")
                .put(&id, [("v", value.as_str())]);
        }
        let synced = tokio::select! {
            synced = writer.run_until(LIMIT, |c| c.pending() == 0) => synced,
            _ = &mut cut_rx => { cut_off = true; break 'rounds; }
        };
        synced.unwrap();
        for _ in 0..8 {
            if ws
                .send(WsMessage::Binary(applied.clone().into()))
                .await
                .is_err()
            {
                break 'rounds;
            }
        }
    }
    if !cut_off {
        cut_off = tokio::time::timeout(LIMIT, cut_rx).await.is_ok();
    }
    assert!(cut_off, "the non-reading client was never cut off");
    let ending = read_until_close(&mut ws, Duration::from_secs(10)).await;
    // The fragments before the cut-off form no message, and nothing was
    // written inside them: the next thing the client reads is the close.
    assert_eq!(
        ending.close,
        Some(4005),
        "closed: {}, errors {:?}, {} messages before",
        ending.closed,
        ending.errors,
        ending.messages.len()
    );
    assert!(relay.log_text().contains("slow consumer"));
    assert!(writer.closes().is_empty());
    let _ = watcher.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_are_enforced() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &["--max-connections", "3", "--max-connections-per-room", "2"],
    );
    let token = relay.token("r", "rw", "1h", None);
    let mut a = Client::new(1, "r", &token, &relay.url());
    let mut b = Client::new(2, "r", &token, &relay.url());
    a.start();
    b.start();
    let (ra, rb) = tokio::join!(
        a.run_until(LIMIT, Client::is_live),
        b.run_until(LIMIT, Client::is_live)
    );
    ra.unwrap();
    rb.unwrap();
    // Third in the room: refused by the per-room limit.
    let mut ws = raw_connect(&relay.url()).await;
    ws.send(WsMessage::Binary(hello_frame(3, "r", &token).into()))
        .await
        .unwrap();
    let ending = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(ending.errors, vec![ErrorCode::TooManyConnections]);
    assert_eq!(ending.close, Some(4009));
    // Connections in all: two open, a third is fine, a fourth is refused.
    let other = relay.token("s", "rw", "1h", None);
    let mut third = raw_connect(&relay.url()).await;
    third
        .send(WsMessage::Binary(hello_frame(4, "s", &other).into()))
        .await
        .unwrap();
    let mut fourth = raw_connect(&relay.url()).await;
    let ending = read_until_close(&mut fourth, Duration::from_secs(5)).await;
    assert_eq!(ending.errors, vec![ErrorCode::TooManyConnections]);
    assert_eq!(ending.close, Some(4009));
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sessions_hit_the_idle_timeout_and_replicas_supersede() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &["--idle-timeout", "2s", "--heartbeat", "500ms"],
    );
    let token = relay.token("r", "rw", "1h", None);
    let mut ws = raw_connect(&relay.url()).await;
    ws.send(WsMessage::Binary(hello_frame(5, "r", &token).into()))
        .await
        .unwrap();
    let ending = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert!(matches!(ending.messages.first(), Some(Message::Welcome(_))));
    assert_eq!(ending.errors, vec![ErrorCode::IdleTimeout]);
    assert_eq!(ending.close, Some(4006));
    // An SDK client pings in time and stays.
    let mut client = Client::new(6, "r", &token, &relay.url());
    client.start();
    client.run_until(LIMIT, Client::is_live).await.unwrap();
    client.run_for(Duration::from_millis(4500)).await;
    assert!(client.closes().is_empty(), "{:?}", client.closes());
    assert_eq!(client.connects(), 1);
    // The same replica joining again supersedes the older session.
    let mut first = raw_connect(&relay.url()).await;
    first
        .send(WsMessage::Binary(hello_frame(7, "r", &token).into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = raw_connect(&relay.url()).await;
    second
        .send(WsMessage::Binary(hello_frame(7, "r", &token).into()))
        .await
        .unwrap();
    let ending = read_until_close(&mut first, Duration::from_secs(5)).await;
    assert_eq!(ending.errors, vec![ErrorCode::Superseded]);
    assert_eq!(ending.close, Some(4010));
    let _ = second.next().await;
}
