//! Clients converge through the real relay binary: live, after being
//! offline (resuming from their cursor), and after compaction (from a
//! snapshot).

mod common;

use std::time::Duration;

use common::{Client, Relay, tempdir};

const LIMIT: Duration = Duration::from_secs(20);
const ADMIN: &str = "test-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--admin-token", ADMIN]);
    let token = relay.token("todos", "rw", "1h", None);
    let mut a = Client::new(1, "todos", &token, &relay.url());
    let mut b = Client::new(2, "todos", &token, &relay.url());
    a.start();
    b.start();
    for i in 0..10 {
        a.put("items", &format!("a{i}"), "n", i);
        b.put("items", &format!("b{i}"), "n", i);
    }
    // Concurrent edits of different fields of one document both survive.
    a.put("items", "shared", "x", 1);
    b.put("items", "shared", "y", 2);
    let (ra, rb) = tokio::join!(a.sync_to("items", 21, LIMIT), b.sync_to("items", 21, LIMIT));
    ra.unwrap();
    rb.unwrap();
    // Each has the other's writes; states are equal.
    let (ra, rb) = tokio::join!(
        a.run_until(LIMIT, |c| c.status().lag == 0),
        b.run_until(LIMIT, |c| c.status().lag == 0)
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(a.docs("items"), b.docs("items"));
    let shared = a.get("items", "shared").unwrap();
    assert_eq!(shared.fields.len(), 2);
    let stats = relay.stats("todos", ADMIN);
    assert_eq!(stats["head"], 22);
    assert_eq!(stats["clients"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_client_catches_up_from_its_cursor() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--admin-token", ADMIN]);
    let token = relay.token("r", "rw", "1h", None);
    let mut a = Client::new(1, "r", &token, &relay.url());
    let mut c = Client::new(3, "r", &token, &relay.url());
    a.start();
    c.start();
    a.put("docs", "first", "n", 1);
    let (ra, rc) = tokio::join!(a.sync_to("docs", 1, LIMIT), c.sync_to("docs", 1, LIMIT));
    ra.unwrap();
    rc.unwrap();
    c.run_until(LIMIT, |c| c.status().cursor == 1)
        .await
        .unwrap();
    // C goes offline (and writes offline); A writes meanwhile.
    c.stop().await;
    c.put("docs", "offline", "n", 2);
    for i in 0..30 {
        a.put("docs", &format!("a{i}"), "n", i);
    }
    a.sync_to("docs", 31, LIMIT).await.unwrap();
    let stats = relay.stats("r", ADMIN);
    assert_eq!(stats["head"], 31);
    assert_eq!(stats["compacted_through"], 0, "no compaction with defaults");
    // C comes back and resumes from cursor 1: the log, not a snapshot.
    c.start();
    c.sync_to("docs", 32, LIMIT).await.unwrap();
    a.sync_to("docs", 32, LIMIT).await.unwrap();
    assert_eq!(c.docs("docs"), a.docs("docs"));
    // Resumed from its cursor: the 31 operations after it, not a snapshot.
    // C holds all 32 documents as soon as A's 30 arrive; the frame that
    // moves its cursor past its own operation may come a moment later.
    c.run_until(LIMIT, |c| c.status().cursor == 32)
        .await
        .unwrap();
    assert_eq!(relay.stats("r", ADMIN)["compacted_through"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_client_catches_up_from_a_snapshot_after_compaction() {
    catch_up_from_a_snapshot(None).await;
}

/// A client that reads only snapshot format 1 is sent the relay's stored
/// format-4 snapshot re-encoded in format 1, and catches up the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_only_snapshot_format_1_catches_up() {
    catch_up_from_a_snapshot(Some(vec![1])).await;
}

async fn catch_up_from_a_snapshot(snapshot_formats: Option<Vec<u8>>) {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &[
            "--admin-token",
            ADMIN,
            "--compaction-min-ops",
            "5",
            "--keep-recent-ops",
            "0",
            "--max-log-ops",
            "10",
        ],
    );
    let token = relay.token("r", "rw", "1h", None);
    let mut a = Client::new(1, "r", &token, &relay.url());
    let mut c = match snapshot_formats {
        None => Client::new(3, "r", &token, &relay.url()),
        Some(formats) => Client::reading_snapshot_formats(3, "r", &token, &relay.url(), formats),
    };
    c.start();
    c.run_until(LIMIT, Client::is_live).await.unwrap();
    c.stop().await;
    a.start();
    for i in 0..60 {
        a.put("docs", &format!("a{i}"), "n", i);
    }
    a.put("docs", "a0", "m", 7);
    a.delete("docs", "a1");
    a.sync_to("docs", 59, LIMIT).await.unwrap();
    a.run_until(LIMIT, |c| c.status().lag == 0).await.unwrap();
    // Compaction runs in the background; wait until it covers C's cursor.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let stats = relay.stats("r", ADMIN);
        if stats["compacted_through"].as_u64().unwrap() >= 50 {
            assert!(stats["compactions"].as_u64().unwrap() >= 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction: {stats}"
        );
        a.run_for(Duration::from_millis(50)).await;
    }
    c.start();
    c.sync_to("docs", 59, LIMIT).await.unwrap();
    assert_eq!(c.docs("docs"), a.docs("docs"));
    assert!(c.get("docs", "a1").is_none());
    // A client that refuses what the relay sent closes the connection
    // itself with a protocol error (and says why in its status); only its
    // own normal close (going offline) is allowed.
    assert!(
        c.sent_closes().iter().all(|&code| code == 1000),
        "the client refused nothing: {:?}, {:?}",
        c.sent_closes(),
        c.status().last_error
    );
    assert!(relay.metric("concord_compactions_total") >= 1.0);
}

/// Frames far larger than the relay's 1 KiB socket read buffer (pushes and
/// deliveries of up to 1 MiB: operations of about 1 KiB) arrive whole both
/// ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_much_larger_than_the_read_buffer_arrive_whole() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--admin-token", ADMIN]);
    let token = relay.token("big", "rw", "1h", None);
    let mut a = Client::new(1, "big", &token, &relay.url());
    let mut b = Client::new(2, "big", &token, &relay.url());
    a.start();
    b.start();
    const DOCS: usize = 2_500;
    for i in 0..DOCS {
        // A 1,000-byte id makes each operation about 1 KiB. The number
        // comes first: protocol version 3 writes each id as the bytes it
        // shares with the one before plus the rest, so ids that differ only
        // at their end would shrink the frames to a few bytes an operation.
        let id = format!("{i}{}", "x".repeat(1000 - i.to_string().len()));
        a.put("big", &id, "n", i as i64);
    }
    let (ra, rb) = tokio::join!(
        a.sync_to("big", DOCS, Duration::from_secs(60)),
        b.sync_to("big", DOCS, Duration::from_secs(60))
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(a.docs("big"), b.docs("big"));
    let stats = relay.stats("big", ADMIN);
    assert_eq!(stats["head"], DOCS as u64);
    // Every operation went through the relay's reader, in pushes of up to
    // 1,000 operations or 1 MiB (the client's batch bounds).
    assert!(relay.metric("concord_ops_in_total") >= DOCS as f64);
    assert!(relay.metric("concord_bytes_in_total") > (DOCS * 1000) as f64);
}
