//! What an operator sees: health, metrics and admin-only stats; a corrupt
//! database file is a clear error and exit code 2 at start; a corrupt room
//! is refused with Internal while the other rooms keep working; the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, Client, Relay, http_get, metric_value, tempdir};
use sync_core::protocol::ErrorCode;

const LIMIT: Duration = Duration::from_secs(20);
const ADMIN: &str = "admin-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_admin_stats() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--admin-token", ADMIN]);
    assert_eq!(
        http_get(relay.addr, "/healthz", None),
        Some((200, "ok\n".into()))
    );
    let token = relay.token("r", "rw", "1h", None);
    let mut a = Client::new(1, "r", &token, &relay.url());
    let mut b = Client::new(2, "r", &token, &relay.url());
    a.start();
    b.start();
    for i in 0..20 {
        a.put("docs", &format!("d{i}"), "n", i);
    }
    let (ra, rb) = tokio::join!(a.sync_to("docs", 20, LIMIT), b.sync_to("docs", 20, LIMIT));
    ra.unwrap();
    rb.unwrap();
    b.run_until(LIMIT, |c| c.status().cursor == 20)
        .await
        .unwrap();
    // Let B's confirmation reach the relay.
    b.run_for(Duration::from_millis(200)).await;

    // Stats need the admin token.
    let path = "/v1/rooms/r/stats";
    assert_eq!(http_get(relay.addr, path, None).unwrap().0, 401);
    assert_eq!(http_get(relay.addr, path, Some("wrong")).unwrap().0, 401);
    let stats = relay.stats("r", ADMIN);
    assert_eq!(stats["head"], 20);
    assert_eq!(stats["log_len"], 20);
    let clients = stats["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let b_stats = clients
        .iter()
        .find(|c| c["replica"] == b.replica().to_string())
        .unwrap();
    assert_eq!(b_stats["cursor"], 20);
    assert_eq!(b_stats["lag_ops"], 0);

    let metrics = relay.metrics();
    assert_eq!(metric_value(&metrics, "concord_connections"), 2.0);
    assert_eq!(metric_value(&metrics, "concord_sessions"), 2.0);
    assert_eq!(metric_value(&metrics, "concord_rooms"), 1.0);
    assert_eq!(metric_value(&metrics, "concord_ops_in_total"), 20.0);
    assert_eq!(metric_value(&metrics, "concord_ops_stored_total"), 20.0);
    assert_eq!(metric_value(&metrics, "concord_ops_out_total"), 20.0);
    assert!(metric_value(&metrics, "concord_bytes_in_total") > 0.0);
    assert!(metric_value(&metrics, "concord_bytes_out_total") > 0.0);
    assert!(metric_value(&metrics, "concord_store_commits_total") >= 1.0);
    assert!(metric_value(&metrics, "concord_ack_latency_seconds_count") >= 1.0);
    assert!(metrics.contains("# TYPE concord_ack_latency_seconds histogram"));
    assert!(metrics.contains("concord_ack_latency_seconds_bucket{le=\"+Inf\"}"));
    // Every Deliver a commit released to B is timed when queued and again
    // when written: B has read them all, so both counts agree.
    let fanned_out = metric_value(&metrics, "concord_fanout_seconds_count");
    assert!(fanned_out >= 1.0, "{metrics}");
    assert_eq!(
        metric_value(&metrics, "concord_send_seconds_count"),
        fanned_out
    );

    // A room nothing was ever stored in, and nobody is in, is not found.
    let (status, body) = http_get(relay.addr, "/v1/rooms/never-used/stats", Some(ADMIN)).unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        http_get(relay.addr, "/v1/rooms/bad%07room/stats", Some(ADMIN))
            .unwrap()
            .0,
        400
    );
}

#[test]
fn a_corrupt_database_is_a_clear_error_at_start() {
    // Not a database at all.
    let dir = tempdir();
    std::fs::write(dir.path().join("relay.sqlite3"), vec![0x5a; 16384]).unwrap();
    let out = run_relay(dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a database"), "{stderr}");

    // A real database with damaged pages.
    let dir = tempdir();
    {
        let relay = Relay::start(dir.path(), &[]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let token = relay.token("r", "rw", "1h", None);
            let mut a = Client::new(1, "r", &token, &relay.url());
            a.start();
            for i in 0..400 {
                a.put("docs", &format!("d{i}"), "text", i);
            }
            a.sync_to("docs", 400, LIMIT).await.unwrap();
        });
        let mut relay = relay;
        assert!(relay.signal("TERM").success());
    }
    let db = dir.path().join("relay.sqlite3");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 4 * 4096, "database unexpectedly small");
    for b in &mut bytes[4096 + 8..3 * 4096] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let out = run_relay(dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("integrity check") || stderr.contains("malformed"),
        "{stderr}"
    );
}

/// Runs the relay on a free port, expecting it to exit by itself.
fn run_relay(data: &std::path::Path) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("relay did not exit on a corrupt database");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_room_is_refused_and_the_others_keep_working() {
    let dir = tempdir();
    let args = [
        "--compaction-min-ops",
        "5",
        "--keep-recent-ops",
        "0",
        "--max-log-ops",
        "5",
    ];
    let mut relay = Relay::start(dir.path(), &args);
    for room in ["good", "bad"] {
        let token = relay.token(room, "rw", "1h", None);
        let mut a = Client::new(1, room, &token, &relay.url());
        a.start();
        for i in 0..20 {
            a.put("docs", &format!("d{i}"), "n", i);
        }
        a.sync_to("docs", 20, LIMIT).await.unwrap();
        a.run_for(Duration::from_millis(300)).await;
    }
    assert!(relay.signal("TERM").success());
    // Flip a byte inside the bad room's snapshot: its checksum no longer matches.
    let conn = rusqlite::Connection::open(dir.path().join("relay.sqlite3")).unwrap();
    let snapshot: Vec<u8> = conn
        .query_row("SELECT bytes FROM snapshots WHERE room = 'bad'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut damaged = snapshot.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    conn.execute(
        "UPDATE snapshots SET bytes = ?1 WHERE room = 'bad'",
        [damaged],
    )
    .unwrap();
    drop(conn);

    let relay = relay.restart();
    let bad = relay.token("bad", "rw", "1h", None);
    let mut c = Client::new(2, "bad", &bad, &relay.url());
    c.start();
    c.run_until(LIMIT, |c| c.errors().contains(&ErrorCode::Internal))
        .await
        .unwrap();
    c.run_until(LIMIT, |c| c.closes().contains(&Some(4011)))
        .await
        .unwrap();
    assert!(relay.log_text().contains("room cannot be loaded"));
    assert!(relay.log_text().contains("checksum"));
    let good = relay.token("good", "rw", "1h", None);
    let mut d = Client::new(3, "good", &good, &relay.url());
    d.start();
    d.sync_to("docs", 20, LIMIT).await.unwrap();
    assert_eq!(http_get(relay.addr, "/healthz", None).unwrap().0, 200);
}

#[test]
fn cli_keygen_token_and_help() {
    let dir = tempdir();
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    // No overwrite without --force.
    let again = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let token = common::mint_token(dir.path(), "room-1", "r", "10m", Some(42));
    assert!(token.contains('.'));
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--data",
        "--config",
        "--public-key",
        "--allow-anonymous",
        "--admin-token",
        "--max-frame-bytes",
        "--max-connections",
        "--ops-per-second",
        "--idle-timeout",
        "--tombstone-grace",
        "CONCORD_LISTEN",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    // A bad setting is a clear error, exit code 2.
    let bad = Command::new(BIN)
        .args(["--max-frame-bytes", "12 parsecs"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    // Environment variables are read too.
    let bad = Command::new(BIN)
        .env("CONCORD_IDLE_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("soon"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_a_toml_file() {
    let dir = tempdir();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!("admin_token = \"{ADMIN}\"\nmax_connections_per_room = 1\n"),
    )
    .unwrap();
    let relay = Relay::start(dir.path(), &["--config", config.to_str().unwrap()]);
    // The admin token from the file is accepted (an unused room is 404, not 401).
    let (status, _) = http_get(relay.addr, "/v1/rooms/r/stats", Some(ADMIN)).unwrap();
    assert_eq!(status, 404);
    let token = relay.token("r", "rw", "1h", None);
    let mut a = Client::new(1, "r", &token, &relay.url());
    let mut b = Client::new(2, "r", &token, &relay.url());
    a.start();
    a.run_until(LIMIT, Client::is_live).await.unwrap();
    b.start();
    b.run_until(LIMIT, |c| {
        c.errors().contains(&ErrorCode::TooManyConnections)
    })
    .await
    .unwrap();
}
