//! 1,000 concurrent sessions connect, write and sync through one relay
//! (loopback only, bounded in time).

mod common;

use std::time::{Duration, Instant};

use common::{Client, Relay, tempdir};

const SESSIONS: usize = 1000;
const ROOMS: usize = 4;
const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_connect_and_sync() {
    // Each session is a socket here and one in the relay.
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    assert!(
        files >= SESSIONS as u64 + 100,
        "the open-file limit ({files}) is too low for {SESSIONS} sessions; raise `ulimit -Hn`"
    );
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--admin-token", "admin"]);
    let url = relay.url();
    let tokens: Vec<String> = (0..ROOMS)
        .map(|r| relay.token(&format!("room{r}"), "rw", "1h", None))
        .collect();
    let per_room = SESSIONS / ROOMS;
    let started = Instant::now();
    // Everyone connects first, then everyone writes.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(SESSIONS));
    let mut tasks = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let barrier = barrier.clone();
        let room = i % ROOMS;
        let token = tokens[room].clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(1000 + i as u64, &format!("room{room}"), &token, &url);
            client.start();
            client.run_until(LIMIT, Client::is_live).await?;
            let connected = started.elapsed();
            // The client keeps answering heartbeats on its own thread
            // while the others connect.
            barrier.wait().await;
            client.put("docs", &format!("c{i}"), "n", i as i64);
            client.sync_to("docs", per_room, LIMIT).await?;
            let state = client.docs("docs");
            Ok::<_, String>((connected, state, client))
        }));
    }
    let mut connect_times = Vec::new();
    let mut clients = Vec::new();
    let mut states = vec![None; ROOMS];
    for (i, task) in tasks.into_iter().enumerate() {
        let (connected, state, client) = tokio::time::timeout(LIMIT, task)
            .await
            .expect("in time")
            .expect("task")
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        connect_times.push(connected);
        clients.push(client);
        let room = i % ROOMS;
        match &states[room] {
            None => states[room] = Some(state),
            Some(first) => assert!(first == &state, "session {i} diverged"),
        }
    }
    let took = started.elapsed();
    connect_times.sort();
    eprintln!(
        "{SESSIONS} sessions in {ROOMS} rooms: all connected after {:?}, all synced after {took:?}",
        connect_times.last().unwrap()
    );
    let metrics = relay.metrics();
    let stored = common::metric_value(&metrics, "concord_ops_stored_total");
    let commits = common::metric_value(&metrics, "concord_store_commits_total");
    eprintln!(
        "ops stored {stored}, commits {commits}, ops out {}",
        common::metric_value(&metrics, "concord_ops_out_total")
    );
    assert_eq!(stored, SESSIONS as f64);
    assert_eq!(
        common::metric_value(&metrics, "concord_sessions"),
        SESSIONS as f64
    );
    drop(clients);
}
