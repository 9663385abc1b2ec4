//! An acknowledged operation survives `kill -9` of the relay; clients
//! resume from their cursors after the restart. Graceful shutdown closes
//! sessions with 1001 and loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Relay, http_get, tempdir};
use sync_client::Connection;
use sync_core::protocol::ErrorCode;

const LIMIT: Duration = Duration::from_secs(30);

/// How many of its own operations the relay acknowledged to `client`
/// (each write of these tests is one operation, acknowledged in order).
fn acked_through(client: &Client) -> u64 {
    client.acked()
}

/// How many of the writer's documents `{prefix}0`, `{prefix}1`, ...
/// (one per operation, written in that order) `reader` holds without a gap.
fn held_from(reader: &Client, prefix: &str) -> u64 {
    reader.held_from("docs", prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_op() {
    let dir = tempdir();
    let mut relay = Relay::start(dir.path(), &[]);
    let token = relay.token("r", "rw", "1h", None);
    let url = relay.url();
    let mut writer = Client::new(1, "r", &token, &url);
    let mut follower = Client::new(2, "r", &token, &url);
    writer.start();
    follower.start();
    follower.put("docs", "f", "n", 0);
    follower.sync_to("docs", 1, LIMIT).await.unwrap();

    // Write steadily; kill the relay while pushes are in flight.
    let mut written = 0;
    let started = Instant::now();
    while acked_through(&writer) < 600 {
        // A bounded backlog, so a slow machine means a slower run, not a
        // growing one.
        if writer.pending() < 400 {
            for _ in 0..25 {
                writer.put("docs", &format!("w{written}"), "n", written);
                written += 1;
            }
        }
        // The clients sync on their own threads; this only paces the writes.
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            started.elapsed() < LIMIT,
            "writes too slow: {written} written, {:?}",
            writer.status()
        );
    }
    for _ in 0..200 {
        writer.put("docs", &format!("w{written}"), "n", written);
        written += 1;
    }
    // Let the last writes reach the wire, then kill mid-stream.
    tokio::time::sleep(Duration::from_millis(2)).await;
    relay.kill9();
    // Acks already on the wire still count: read until the socket dies.
    writer
        .run_until(Duration::from_secs(5), |c| !c.is_live())
        .await
        .unwrap();
    follower
        .run_until(Duration::from_secs(5), |c| !c.is_live())
        .await
        .unwrap();
    let acked = acked_through(&writer);
    let follower_cursor = follower.status().cursor;
    assert!(acked >= 600 && acked < written as u64 + 1, "acked {acked}");
    eprintln!("killed with {written} written, {acked} acknowledged, follower at {follower_cursor}");

    let relay = relay.restart();
    // A fresh reader sees every acknowledged operation.
    let read = relay.token("r", "r", "1h", None);
    let mut verifier = Client::new(9, "r", &read, &relay.url());
    verifier.start();
    verifier
        .run_until(LIMIT, |c| {
            let status = c.status();
            status.connection == Connection::Online && status.lag == 0 && status.cursor > 0
        })
        .await
        .unwrap();
    let durable = held_from(&verifier, "w");
    assert!(
        durable >= acked,
        "the relay lost acknowledged operations: acked {acked}, stored {durable}"
    );

    // The clients reconnect by themselves and resume from their cursors.
    let total = written as usize + 1;
    let (rw, rf, rv) = tokio::join!(
        writer.sync_to("docs", total, LIMIT),
        follower.sync_to("docs", total, LIMIT),
        verifier.sync_to("docs", total, LIMIT)
    );
    rw.unwrap();
    rf.unwrap();
    rv.unwrap();
    assert_eq!(held_from(&verifier, "w"), written as u64);
    assert_eq!(follower.docs("docs"), writer.docs("docs"));
    // The follower resumed from its cursor, not from scratch.
    assert!(follower.status().cursor >= follower_cursor);
    assert!(follower_cursor > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_sessions_with_going_away() {
    let dir = tempdir();
    let mut relay = Relay::start(dir.path(), &[]);
    let token = relay.token("r", "rw", "1h", None);
    let mut a = Client::new(1, "r", &token, &relay.url());
    let mut b = Client::new(2, "r", &token, &relay.url());
    a.start();
    b.start();
    for i in 0..50 {
        a.put("docs", &format!("a{i}"), "n", i);
    }
    let (ra, rb) = tokio::join!(a.sync_to("docs", 50, LIMIT), b.sync_to("docs", 50, LIMIT));
    ra.unwrap();
    rb.unwrap();
    for i in 50..80 {
        a.put("docs", &format!("a{i}"), "n", i);
    }
    let addr = relay.addr;
    // Watch /healthz from another thread while the relay stops.
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match http_get(addr, "/healthz", None) {
                Some((status, _)) => {
                    if seen.last() != Some(&status) {
                        seen.push(status);
                    }
                    let _ = first_tx.send(());
                }
                None => break,
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    });
    first_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // A joined session that does not answer the close keeps the relay
    // draining for a moment (it waits for the close reply), so the 503 is
    // observable.
    let mut mute = common::raw_connect(&relay.url()).await;
    futures_util::SinkExt::send(
        &mut mute,
        tokio_tungstenite::tungstenite::Message::Binary(common::hello_frame(9, "r", &token).into()),
    )
    .await
    .unwrap();
    // The clients keep reading while the relay stops.
    let stopping = tokio::task::spawn_blocking(move || {
        let status = relay.signal("TERM");
        (relay, status)
    });
    let (ra, rb) = tokio::join!(
        a.run_until(Duration::from_secs(15), |c| !c.closes().is_empty()),
        b.run_until(Duration::from_secs(15), |c| !c.closes().is_empty())
    );
    let (mut relay, status) = stopping.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    let seen = watcher.join().unwrap();
    eprintln!("healthz during shutdown: {seen:?}");
    assert_eq!(seen.first(), Some(&200));
    assert!(seen.contains(&503), "{seen:?}");
    ra.unwrap();
    rb.unwrap();
    drop(mute);
    for client in [&a, &b] {
        assert_eq!(
            client.closes().first(),
            Some(&Some(1001)),
            "{:?}",
            client.closes()
        );
        assert!(client.errors().contains(&ErrorCode::GoingAway));
    }
    let log = relay.log_text();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    // Whatever was acknowledged before the shutdown is there after it.
    let acked = acked_through(&a);
    let relay = relay.restart();
    let mut c = Client::new(3, "r", &token, &relay.url());
    c.start();
    c.run_until(LIMIT, |c| held_from(c, "a") >= acked && c.is_live())
        .await
        .unwrap();
    let (ra, rc) = tokio::join!(a.sync_to("docs", 80, LIMIT), c.sync_to("docs", 80, LIMIT));
    ra.unwrap();
    rc.unwrap();
}
