//! The native client (`sync-ffi`: SQLite, tokio-tungstenite, the shared
//! host loop) against the real `concord-relay` binary over loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Relay, tempdir};
use futures::{FutureExt, StreamExt};
use sync_ffi::{
    Change, Connection, Database, Error, Options, Origin, RelayOptions, TokenSource, Value, Wait,
};

const ROOM: &str = "native";

fn open(dir: &Path, name: &str, relay: &Relay, token: &str) -> Database {
    let options = Options::with_relay(RelayOptions::new(relay.url(), ROOM, token));
    sync_ffi::open(dir.join(name), options).expect("opens")
}

/// Polls `check` until it holds or `within` passes.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("not within {within:?}: {what}");
}

fn field(db: &Database, id: &str, name: &str) -> Option<Value> {
    db.collection("todos")
        .get(id)
        .and_then(|d| d.fields.get(name).cloned())
}

fn flush(db: &Database) -> Result<(), Error> {
    futures::executor::block_on(async {
        let flush = db.flush().fuse();
        let timeout = futures_timer(Duration::from_secs(20)).fuse();
        futures::pin_mut!(flush, timeout);
        futures::select! {
            r = flush => r,
            () = timeout => panic!("flush did not finish in 20 s: {:?}", db.status()),
        }
    })
}

/// A timer future without a runtime: a thread sleeps, then completes it.
fn futures_timer(after: Duration) -> impl std::future::Future<Output = ()> {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let _ = tx.send(());
    });
    rx.map(|_| ())
}

#[test]
fn two_native_databases_converge_through_the_relay() {
    let dir = tempdir();
    let relay = Relay::start(&dir.path().join("relay"), &[]);
    let token = relay.token(ROOM, "rw", "1h", None);
    let a = open(dir.path(), "a.db", &relay, &token);
    let b = open(dir.path(), "b.db", &relay, &token);
    let mut changes = b.collection("todos").subscribe();

    a.collection("todos")
        .put("milk", [("title", "Buy milk")])
        .wait()
        .expect("durable");
    flush(&a).expect("acknowledged");
    eventually(Duration::from_secs(10), "b sees a's write", || {
        field(&b, "milk", "title") == Some(Value::from("Buy milk"))
    });
    let change = futures::executor::block_on(changes.next()).expect("a change");
    assert_eq!(
        change,
        Change::Document {
            collection: "todos".into(),
            id: "milk".into(),
            origin: Origin::Remote
        }
    );

    // Different fields edited concurrently both survive.
    let w1 = a
        .collection("todos")
        .put("milk", [("title", "Buy oat milk")]);
    let w2 = b.collection("todos").put("milk", [("done", true)]);
    w1.wait().expect("durable");
    w2.wait().expect("durable");
    flush(&a).expect("acknowledged");
    flush(&b).expect("acknowledged");
    eventually(Duration::from_secs(10), "both fields on both", || {
        [&a, &b].iter().all(|db| {
            field(db, "milk", "title") == Some(Value::from("Buy oat milk"))
                && field(db, "milk", "done") == Some(Value::from(true))
        })
    });
}

#[test]
fn writes_made_while_the_relay_is_down_sync_when_it_is_back() {
    let dir = tempdir();
    let mut relay = Relay::start(&dir.path().join("relay"), &[]);
    let token = relay.token(ROOM, "rw", "1h", None);
    let a = open(dir.path(), "a.db", &relay, &token);
    eventually(Duration::from_secs(10), "a online", || {
        a.status().connection == Connection::Online
    });
    relay.kill9();
    for i in 0..20 {
        a.collection("todos")
            .put(&format!("t{i}"), [("n", i)])
            .wait()
            .expect("durable locally");
    }
    assert_eq!(a.status().pending_writes, 20);
    let mut relay = relay.restart();
    flush(&a).expect("acknowledged once the relay is back");
    let b = open(dir.path(), "b.db", &relay, &token);
    eventually(Duration::from_secs(10), "b has the offline writes", || {
        b.collection("todos").list(&Default::default()).len() == 20
    });
    relay.kill9();
}

#[test]
fn a_relay_killed_mid_stream_loses_nothing_acknowledged() {
    let dir = tempdir();
    let mut relay = Relay::start(&dir.path().join("relay"), &[]);
    let token = relay.token(ROOM, "rw", "1h", None);
    let a = open(dir.path(), "a.db", &relay, &token);
    let todos = a.collection("todos");
    for round in 0..3 {
        for i in 0..200 {
            drop(todos.put(&format!("r{round}-{i}"), [("n", i)]));
        }
        std::thread::sleep(Duration::from_millis(50));
        relay.kill9();
        relay = relay.restart();
    }
    flush(&a).expect("everything acknowledged in the end");
    let b = open(dir.path(), "b.db", &relay, &token);
    eventually(Duration::from_secs(20), "b has all 600", || {
        b.collection("todos").list(&Default::default()).len() == 600
    });
}

/// Child mode: writes one document, says so, then waits to be killed.
#[test]
fn child_writes_then_waits_to_be_killed() {
    let Ok(path) = std::env::var("CONCORD_TEST_CHILD_DB") else {
        return;
    };
    let db = sync_ffi::open(&path, Options::local()).expect("opens");
    db.collection("todos")
        .put("survivor", [("title", "written before SIGKILL")])
        .wait()
        .expect("durable");
    println!("durable");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_write_survives_sigkill_right_after_it_returned_and_then_syncs() {
    let dir = tempdir();
    let path = dir.path().join("killed.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_writes_then_waits_to_be_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CONCORD_TEST_CHILD_DB", &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let said_durable = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("durable"));
    assert!(said_durable, "the child wrote");
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let relay = Relay::start(&dir.path().join("relay"), &[]);
    let token = relay.token(ROOM, "rw", "1h", None);
    let reopened = open(dir.path(), "killed.db", &relay, &token);
    assert_eq!(
        field(&reopened, "survivor", "title"),
        Some(Value::from("written before SIGKILL"))
    );
    flush(&reopened).expect("the relay gets it");
    let other = open(dir.path(), "other.db", &relay, &token);
    eventually(
        Duration::from_secs(10),
        "the other database sees it",
        || field(&other, "survivor", "title").is_some(),
    );
}

#[test]
fn an_expired_token_is_refreshed_through_the_token_source() {
    let dir = tempdir();
    let relay = Relay::start(&dir.path().join("relay"), &[]);
    let expired = relay.token(ROOM, "rw", "1s", None);
    std::thread::sleep(Duration::from_millis(2_100));
    let data = relay.data.clone();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let source: TokenSource = Arc::new(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let token = common::mint_token(&data, ROOM, "rw", "1h", None);
        async move { Ok(token) }.boxed_local()
    });
    let options =
        Options::with_relay(RelayOptions::new(relay.url(), ROOM, expired).token_source(source));
    let a = sync_ffi::open(dir.path().join("a.db"), options).expect("opens");
    a.collection("todos")
        .put("x", [("n", 1)])
        .wait()
        .expect("durable");
    flush(&a).expect("acknowledged with the refreshed token");
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(a.status().connection, Connection::Online);
}

#[test]
fn an_expired_token_without_a_source_stops_syncing_with_a_clear_error() {
    let dir = tempdir();
    let relay = Relay::start(&dir.path().join("relay"), &[]);
    let expired = relay.token(ROOM, "rw", "1s", None);
    std::thread::sleep(Duration::from_millis(2_100));
    let a = open(dir.path(), "a.db", &relay, &expired);
    a.collection("todos")
        .put("x", [("n", 1)])
        .wait()
        .expect("durable locally");
    let err = flush(&a).expect_err("cannot sync");
    assert!(matches!(err, Error::Offline { .. }), "{err}");
    assert_eq!(a.status().connection, Connection::Offline);
    // A new token resumes syncing.
    a.set_token(relay.token(ROOM, "rw", "1h", None));
    flush(&a).expect("acknowledged after set_token");
}

#[test]
fn a_read_only_token_gets_a_typed_error_on_write_back() {
    let dir = tempdir();
    let relay = Relay::start(&dir.path().join("relay"), &[]);
    let rw = relay.token(ROOM, "rw", "1h", None);
    let ro = relay.token(ROOM, "r", "1h", None);
    let writer = open(dir.path(), "w.db", &relay, &rw);
    writer
        .collection("todos")
        .put("shared", [("n", 1)])
        .wait()
        .expect("durable");
    flush(&writer).expect("acknowledged");

    let reader = open(dir.path(), "r.db", &relay, &ro);
    eventually(Duration::from_secs(10), "the reader receives", || {
        field(&reader, "shared", "n").is_some()
    });
    reader
        .collection("todos")
        .put("mine", [("n", 2)])
        .wait()
        .expect("durable locally");
    let err = flush(&reader).expect_err("read only");
    assert!(matches!(err, Error::ReadOnly), "{err}");
    assert!(reader.status().read_only);
}

#[test]
fn garbage_from_a_fake_server_never_panics_the_client() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        // Answer the upgrade, then send binary frames of noise.
        for stream in listener.incoming().take(3) {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 2048];
            let n = stream.read(&mut request).unwrap_or(0);
            let text = String::from_utf8_lossy(&request[..n]);
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or("")
                .trim()
                .to_owned();
            let accept = tungstenite_accept(&key);
            let _ = write!(
                stream,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            let mut seed = 0x1234_5678_u64;
            for _ in 0..50 {
                let len = 1 + (seed % 200) as usize;
                let mut frame = vec![0x82, len as u8 & 0x7f];
                if len >= 126 {
                    frame[1] = 126;
                    frame.extend_from_slice(&(len as u16).to_be_bytes());
                }
                for _ in 0..len {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    frame.push((seed >> 33) as u8);
                }
                if stream.write_all(&frame).is_err() {
                    break;
                }
            }
        }
    });
    let dir = tempdir();
    let options = Options::with_relay(RelayOptions::new(
        format!("ws://{addr}/v1/sync"),
        ROOM,
        "not.a-token",
    ));
    let db = sync_ffi::open(dir.path().join("a.db"), options).expect("opens");
    db.collection("todos")
        .put("still", [("works", true)])
        .wait()
        .expect("local writes keep working");
    eventually(
        Duration::from_secs(10),
        "the client reports the bad peer",
        || db.status().last_error.is_some(),
    );
    assert_eq!(field(&db, "still", "works"), Some(Value::from(true)));
    drop(db);
    drop(server);
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2), via tungstenite.
fn tungstenite_accept(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}
