//! Tokens: wrong key, expired, other room, other replica and garbage are
//! refused before joining, with typed errors and close codes; a read-only
//! token cannot push; refusals are logged and counted; anonymous access
//! needs its flag.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, Client, Relay, hello_frame, raw_connect, read_until_close, tempdir};
use futures_util::SinkExt as _;
use sync_core::Timestamp;
use sync_core::protocol::{self, ErrorCode, Message};
use sync_core::{Op, OpId, ReplicaId};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const LIMIT: Duration = Duration::from_secs(20);

/// Presents `token` for `room` as `replica`; returns the errors and close code.
async fn attempt(
    relay: &Relay,
    replica: u64,
    room: &str,
    token: &str,
) -> (Vec<ErrorCode>, Option<u16>) {
    let mut ws = raw_connect(&relay.url()).await;
    ws.send(WsMessage::Binary(hello_frame(replica, room, token).into()))
        .await
        .unwrap();
    let ending = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert!(
        !ending
            .messages
            .iter()
            .any(|m| matches!(m, Message::Welcome(_))),
        "a refused session must not be welcomed: {:?}",
        ending.messages
    );
    (ending.errors, ending.close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_joining() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &[]);
    // A key the relay does not know.
    let other = tempdir();
    let status = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(status.status.success());
    let wrong_key = common::mint_token(other.path(), "r", "rw", "1h", None);
    let expired = relay.token("r", "rw", "0s", None);
    let other_room = relay.token("elsewhere", "rw", "1h", None);
    let pinned = relay.token("r", "rw", "1h", Some(5));
    let good = relay.token("r", "rw", "1h", None);

    let cases: [(&str, u64, &str, ErrorCode, u16); 6] = [
        ("wrong key", 1, &wrong_key, ErrorCode::Unauthorized, 4002),
        ("expired", 1, &expired, ErrorCode::Unauthorized, 4002),
        ("other room", 1, &other_room, ErrorCode::Forbidden, 4003),
        ("other replica", 6, &pinned, ErrorCode::Forbidden, 4003),
        ("garbage", 1, "not.a-token", ErrorCode::Unauthorized, 4002),
        ("missing", 1, "", ErrorCode::Unauthorized, 4002),
    ];
    for (what, replica, token, code, close) in cases {
        let (errors, got_close) = attempt(&relay, replica, "r", token).await;
        assert_eq!(errors, vec![code], "{what}");
        assert_eq!(got_close, Some(close), "{what}");
    }
    // A token pinned to a client's own replica works. (The SDK picks the
    // replica id, so the token is minted once it is known.)
    let mut ok = Client::new(5, "r", "", &relay.url());
    ok.set_token(&relay.token("r", "rw", "1h", Some(ok.replica().0)));
    ok.start();
    ok.run_until(LIMIT, Client::is_live).await.unwrap();

    // An SDK client with a bad token gets the typed error and stops
    // reconnecting (retrying cannot help).
    let mut refused = Client::new(7, "r", &other_room, &relay.url());
    refused.start();
    refused
        .run_until(LIMIT, |c| {
            c.status().connection == sync_client::Connection::Offline
        })
        .await
        .unwrap();
    assert_eq!(refused.errors(), vec![ErrorCode::Forbidden]);
    assert_eq!(refused.connects(), 1);
    // ... and says why.
    let why = refused.status().last_error.unwrap_or_default();
    assert!(!why.is_empty(), "{:?}", refused.status());

    // The room the token names is untouched by refused sessions, and the
    // other room was never created.
    let mut good_client = Client::new(8, "r", &good, &relay.url());
    good_client.start();
    good_client.put("docs", "x", "n", 1);
    good_client.sync_to("docs", 1, LIMIT).await.unwrap();

    let log = relay.log_text();
    for reason in ["expired", "signature", "elsewhere", "replica"] {
        assert!(
            log.lines()
                .any(|l| l.contains("session refused") && l.contains(reason)),
            "refusal for {reason} not logged:\n{log}"
        );
    }
    let metrics = relay.metrics();
    for reason in [
        "bad_signature",
        "expired",
        "wrong_room",
        "wrong_replica",
        "malformed",
        "missing",
    ] {
        assert!(
            metrics.contains(&format!(
                "concord_auth_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_tokens_cannot_push() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &[]);
    let read = relay.token("r", "r", "1h", None);
    let write = relay.token("r", "rw", "1h", None);
    let mut writer = Client::new(1, "r", &write, &relay.url());
    let mut reader = Client::new(2, "r", &read, &relay.url());
    writer.start();
    reader.start();
    writer.put("docs", "w", "n", 1);
    reader.put("docs", "r", "n", 2);
    // The reader receives the writer's operation; its own is never stored.
    let (rw, rr) = tokio::join!(
        writer.run_until(LIMIT, |c| c.pending() == 0 && c.is_live()),
        reader.run_until(LIMIT, |c| c.is_live()
            && c.status().read_only
            && c.get("docs", "w").is_some())
    );
    rw.unwrap();
    rr.unwrap();
    reader.run_for(Duration::from_millis(300)).await;
    writer.run_for(Duration::from_millis(300)).await;
    assert_eq!(
        reader.pending(),
        1,
        "the read-only client's op stays unacknowledged"
    );
    assert!(writer.get("docs", "r").is_none());

    // A raw read-only session pushing gets a typed rejection.
    let mut ws = raw_connect(&relay.url()).await;
    ws.send(WsMessage::Binary(hello_frame(3, "r", &read).into()))
        .await
        .unwrap();
    let mut replica = sync_core::Replica::new(ReplicaId(3), Default::default());
    replica
        .put(
            Timestamp::from_unix_ms(common::now_ms()),
            "docs",
            "raw",
            [("n", 1)],
        )
        .unwrap();
    let ops: Vec<Op> = replica.outbox().collect();
    assert_eq!(
        ops[0].id,
        OpId {
            replica: ReplicaId(3),
            seq: 1
        }
    );
    ws.send(WsMessage::Binary(
        protocol::encode(&Message::Push { ops }).into(),
    ))
    .await
    .unwrap();
    let ending = read_until_close(&mut ws, Duration::from_millis(1500)).await;
    assert!(
        ending.messages.iter().any(|m| matches!(
            m,
            Message::Rejected {
                code: ErrorCode::ReadOnly,
                ..
            }
        )),
        "{:?}",
        ending.messages
    );
    let stats_head = relay.metric("concord_ops_stored_total");
    assert_eq!(stats_head, 1.0, "only the writer's op is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_access_needs_its_flag_and_warns() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &[]);
    let (errors, close) = attempt(&relay, 1, "r", "").await;
    assert_eq!((errors, close), (vec![ErrorCode::Unauthorized], Some(4002)));
    drop(relay);

    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--allow-anonymous"]);
    assert!(relay.log_text().contains("anonymous access is ON"));
    let mut a = Client::new(1, "open", "", &relay.url());
    let mut b = Client::new(2, "open", "whatever", &relay.url());
    a.start();
    b.start();
    a.put("docs", "a", "n", 1);
    let (ra, rb) = tokio::join!(a.sync_to("docs", 1, LIMIT), b.sync_to("docs", 1, LIMIT));
    ra.unwrap();
    rb.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_public_keys_replace_the_generated_one() {
    let keys = tempdir();
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(keys.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--public-key", &public]);
    assert!(
        !dir.path().join("concord-relay.key").exists(),
        "no key is generated when one is configured"
    );
    let token = common::mint_token(keys.path(), "r", "rw", "1h", None);
    let mut client = Client::new(1, "r", &token, &relay.url());
    client.start();
    client.put("docs", "a", "n", 1);
    client.sync_to("docs", 1, LIMIT).await.unwrap();
}
