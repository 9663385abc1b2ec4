//! Throughput measurements, not run by default:
//!
//! ```sh
//! cargo test --release -p relay-server --test throughput -- --ignored --nocapture
//! ```
//!
//! Every acknowledged operation is fsynced (`synchronous=FULL`); group
//! commit is what lets many sessions share one fsync.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Relay, metric_value, tempdir};

const LIMIT: Duration = Duration::from_secs(120);

fn report(relay: &Relay, what: &str, ops: usize, took: Duration) {
    let metrics = relay.metrics();
    let commits = metric_value(&metrics, "concord_store_commits_total");
    let requests = metric_value(&metrics, "concord_store_commit_requests_total");
    let commit_secs = metric_value(&metrics, "concord_store_commit_seconds_sum");
    let acks = metric_value(&metrics, "concord_ack_latency_seconds_count");
    let ack_secs = metric_value(&metrics, "concord_ack_latency_seconds_sum");
    eprintln!(
        "{what}: {ops} ops in {took:.2?} = {:.0} ops/s; {commits} commits ({:.1} room requests and {:.1} ops per fsync, {:.2} ms per commit); mean ack latency {:.2} ms",
        ops as f64 / took.as_secs_f64(),
        requests / commits.max(1.0),
        ops as f64 / commits.max(1.0),
        1000.0 * commit_secs / commits.max(1.0),
        1000.0 * ack_secs / acks.max(1.0),
    );
}

/// Many sessions, each writing one operation at a time and waiting for its
/// acknowledgement: the worst case for fsync, the best case for group commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --release"]
async fn many_sessions_writing_one_op_at_a_time() {
    for (sessions, rooms) in [(1, 1), (64, 1), (64, 16)] {
        let dir = tempdir();
        let relay = Relay::start(dir.path(), &[]);
        let per_session = 2000 / sessions.max(1) + 50;
        let tokens: Vec<String> = (0..rooms)
            .map(|r| relay.token(&format!("room{r}"), "rw", "1h", None))
            .collect();
        let started = Instant::now();
        let tasks: Vec<_> = (0..sessions)
            .map(|i| {
                let room = i % rooms;
                let token = tokens[room].clone();
                let url = relay.url();
                tokio::spawn(async move {
                    let mut c = Client::new(i as u64 + 1, &format!("room{room}"), &token, &url);
                    c.start();
                    c.run_until(LIMIT, Client::is_live).await.unwrap();
                    for n in 0..per_session {
                        c.put("docs", &format!("{i}-{n}"), "n", n as i64);
                        c.run_until(LIMIT, |c| c.pending() == 0).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let took = started.elapsed();
        report(
            &relay,
            &format!("{sessions} sessions in {rooms} rooms, one op per push, waiting for each ack"),
            sessions * per_session,
            took,
        );
    }
}

/// One session uploading a large backlog in full batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --release"]
async fn one_session_uploading_a_backlog() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--ops-burst", "1000000"]);
    let token = relay.token("r", "rw", "1h", None);
    let mut c = Client::new(1, "r", &token, &relay.url());
    let ops = 50_000;
    for n in 0..ops {
        c.put("docs", &format!("d{n}"), "n", n as i64);
    }
    let started = Instant::now();
    c.start();
    c.run_until(LIMIT, |c| c.is_live() && c.pending() == 0)
        .await
        .unwrap();
    report(
        &relay,
        "one session, 50,000-op backlog",
        ops,
        started.elapsed(),
    );
}
