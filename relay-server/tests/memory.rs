#![cfg(target_os = "linux")]
//! Idle sessions give back what a large delivery needed: sessions that
//! pulled a 264 KB backlog and then went idle must cost the relay about
//! what sessions that never pulled anything cost, measured as the relay
//! process's resident memory over real sockets.
//!
//! The relay runs with glibc's `MALLOC_MMAP_THRESHOLD_` fixed at 64 KiB, so
//! every allocation of 64 KiB or more is its own mapping, returned to the
//! system when freed: resident memory then shows exactly the large buffers
//! still held, not what the allocator keeps cached (without the setting,
//! glibc raises its threshold after the first large free and serves later
//! ones from its heap, which may or may not shrink back).

mod common;

use std::time::Duration;

use common::{Relay, Ws, hello_frame, raw_connect, tempdir};
use futures_util::{SinkExt as _, StreamExt as _};
use sync_core::protocol::{self, Message};
use sync_core::{Change, Clock, Op, OpId, ReplicaId, Timestamp, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Sessions in each group.
const SESSIONS: u64 = 40;
/// Operations in the backlog, each about 1 KiB.
const OPS: u64 = 256;
const LIMIT: Duration = Duration::from_secs(30);

/// The relay's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("relay status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Reads frames, confirming each delivery, until the session's cursor
/// reaches `head` (and at least the `Welcome` arrived). Returns the largest
/// message received.
async fn read_to(ws: &mut Ws, head: u64) -> usize {
    let mut cursor = None;
    let mut largest = 0;
    while cursor.is_none_or(|c| c < head) {
        let next = tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("read");
        let WsMessage::Binary(frame) = next else {
            continue;
        };
        largest = largest.max(frame.len());
        match protocol::decode(&frame, usize::MAX).expect("decodes") {
            Message::Welcome(welcome) => {
                cursor = Some(cursor.unwrap_or(welcome.cursor).max(welcome.cursor))
            }
            Message::Deliver { cursor: c, .. } => {
                cursor = Some(c);
                let applied = protocol::encode(&Message::Applied {
                    cursor: c,
                    frames: 1,
                });
                ws.send(WsMessage::Binary(applied.into())).await.unwrap();
            }
            Message::Error { code, message } => panic!("relay error {code:?}: {message}"),
            _ => {}
        }
    }
    largest
}

/// Connects `SESSIONS` sessions to `room` (replicas from `first`) and
/// reads each up to `head`; returns them (kept open) and the largest
/// message any received.
async fn join_group(url: &str, room: &str, first: u64, head: u64) -> (Vec<Ws>, usize) {
    let mut sessions = Vec::new();
    let mut largest = 0;
    for replica in first..first + SESSIONS {
        let mut ws = raw_connect(url).await;
        ws.send(WsMessage::Binary(hello_frame(replica, room, "").into()))
            .await
            .unwrap();
        largest = largest.max(read_to(&mut ws, head).await);
        sessions.push(ws);
    }
    (sessions, largest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_pulled_a_large_backlog_give_the_buffer_back() {
    let dir = tempdir();
    let threshold = std::ffi::OsString::from("65536");
    let relay = Relay::start_with_env(
        dir.path(),
        "127.0.0.1:0",
        &["--allow-anonymous"],
        &[("MALLOC_MMAP_THRESHOLD_", threshold.as_os_str())],
    );
    let url = relay.url();

    // A writer puts OPS documents of about 1 KiB into room "big".
    let mut writer = raw_connect(&url).await;
    writer
        .send(WsMessage::Binary(hello_frame(1, "big", "").into()))
        .await
        .unwrap();
    read_to(&mut writer, 0).await;
    let mut clock = Clock::new(sync_core::hlc::DEFAULT_MAX_DRIFT_MS);
    let now = Timestamp::from_unix_ms(common::now_ms());
    let ops: Vec<Op> = (1..=OPS)
        .map(|seq| Op {
            id: OpId {
                replica: ReplicaId(1),
                seq,
            },
            hlc: clock.tick(now).expect("clock"),
            change: Change::Put {
                collection: "docs".into(),
                id: format!("{seq:0>1000}"),
                fields: vec![("n".into(), Some(Value::Int(seq as i64)))],
            },
        })
        .collect();
    for chunk in ops.chunks(64) {
        let push = protocol::encode(&Message::Push {
            ops: chunk.to_vec(),
        });
        writer.send(WsMessage::Binary(push.into())).await.unwrap();
    }
    let mut acked = 0;
    while acked < OPS {
        let next = tokio::time::timeout(LIMIT, writer.next())
            .await
            .expect("ack in time")
            .expect("open")
            .expect("read");
        if let WsMessage::Binary(frame) = next {
            if let Ok(Message::Ack { through_seq, .. }) = protocol::decode(&frame, usize::MAX) {
                acked = through_seq;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib(relay.pid());

    // Group 1: sessions in an empty room (what an idle session costs).
    let (_idle, _) = join_group(&url, "empty", 1_000, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss_kib(relay.pid());

    // Group 2: sessions that pull the whole backlog, then idle.
    let (_pulled, largest) = join_group(&url, "big", 2_000, OPS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss2 = rss_kib(relay.pid());

    let idle = rss1.saturating_sub(rss0) as f64 / SESSIONS as f64;
    let pulled = rss2.saturating_sub(rss1) as f64 / SESSIONS as f64;
    eprintln!(
        "relay RSS {rss0} / {rss1} / {rss2} KiB: {idle:.1} KiB per idle session, \
         {pulled:.1} KiB per session after pulling a {largest}-byte message"
    );
    assert!(
        largest > 256 * 1024,
        "the backlog must arrive as one large message ({largest} bytes)"
    );
    // Before the fix each such session kept the whole message's size in
    // its write buffer (about 330 KiB here).
    assert!(
        pulled < idle + 64.0,
        "a session that pulled {largest} bytes keeps {pulled:.1} KiB, an idle one {idle:.1} KiB"
    );
}
