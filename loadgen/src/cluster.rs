//! Several relay instances over one PostgreSQL: acknowledged operations per
//! second and cross-instance delivery latency with 1, 2 and 3 instances,
//! beside one relay on SQLite.
//!
//! PostgreSQL is Debian's server, installed if missing and started on a
//! loopback port with `fsync=on` by the relay's own test harness
//! (`relay-server/tests/common/postgres.rs`); a fresh database per row.
//!
//! Clients: one room, `WRITERS` lightweight clients spread round-robin
//! over the instances, plus the full client that measures latency, on the
//! last instance. Instance 0 is made the room's owner first (one session
//! joins there before the others), so with two or three instances the
//! observer's deliveries always cross instances: a writer's push goes to
//! its instance, is relayed to the owner, committed, and fanned out back
//! through the observer's instance.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[path = "../../relay-server/tests/common/postgres.rs"]
mod postgres_server;

use crate::Settings;
use crate::light::LightClient;
use crate::relay::Relay;
use crate::scenarios::{Phase, Shared, percentile, spawn_followers, stop, wait_live};

/// Writing sessions (each floods at up to 1,667 ops/s, ack-limited).
const WRITERS: usize = 24;
/// Paced phase: every session writes one operation per this many µs.
const PACED_INTERVAL_US: u64 = 20_000;

/// One row of the table.
struct Row {
    storage: String,
    acked_per_sec: f64,
    p50: f64,
    p99: f64,
    samples: usize,
    offered: f64,
    commits_per_sec: f64,
    cpu: f64,
}

/// Runs every configuration and prints the table.
pub(crate) async fn cluster(settings: &Settings) -> Result<(), String> {
    let mut rows = Vec::new();
    eprintln!("cluster: SQLite, one instance");
    rows.push(measure(settings, "SQLite, 1 instance", None, 1).await?);
    for instances in 1..=3 {
        eprintln!("cluster: PostgreSQL, {instances} instance(s)");
        let pg = tokio::task::spawn_blocking(postgres_server::Postgres::start_durable)
            .await
            .map_err(|e| format!("starting PostgreSQL: {e}"))?;
        let label = format!("PostgreSQL, {instances} instance(s)");
        rows.push(measure(settings, &label, Some(&pg.url()), instances).await?);
        tokio::task::spawn_blocking(move || drop(pg))
            .await
            .map_err(|e| e.to_string())?;
    }
    println!(
        "## Several instances over PostgreSQL: one room, {WRITERS} writers spread over the instances\n"
    );
    println!(
        "| storage | acknowledged ops/s (flood, {} s) | delivery p50 / p99 across instances (paced, {} ops/s asked) | offered | commits/s (flood) | CPU, all relays (flood) |",
        settings.window.as_secs(),
        (WRITERS + 1) as u64 * 1_000_000 / PACED_INTERVAL_US
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} / {:.2} ms ({} samples) | {:.0} ops/s | {:.0} | {:.0}% of one core |",
            r.storage,
            r.acked_per_sec,
            r.p50,
            r.p99,
            r.samples,
            r.offered,
            r.commits_per_sec,
            100.0 * r.cpu
        );
    }
    println!();
    Ok(())
}

fn sum(relays: &[Relay], metric: &str) -> f64 {
    relays.iter().map(|r| r.metric(metric)).sum()
}

async fn measure(
    settings: &Settings,
    label: &str,
    postgres: Option<&str>,
    instances: usize,
) -> Result<Row, String> {
    let mut relays = Vec::new();
    for _ in 0..instances {
        let args: Vec<&str> = match postgres {
            Some(url) => vec!["--postgres", url],
            None => vec![],
        };
        relays.push(Relay::start(&settings.relay, &args, &settings.relay_args)?);
    }
    let room = "cluster";
    // Instance 0 claims the room.
    let mut first = LightClient::connect(1_000_000, room, &relays[0].url()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first.live {
        if Instant::now() > deadline {
            return Err(format!("{label}: no session became live"));
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), first.read()).await;
    }
    // The observer (client 0) on the last instance, writers round-robin.
    let mut urls: Vec<String> = relays.iter().map(Relay::url).collect();
    urls.rotate_right(1);
    let (tx, rx) = watch::channel(Phase::Idle);
    let shared = Arc::new(Shared::default());
    let clients = WRITERS + 1;
    let handles = spawn_followers(&urls, room, clients, &rx, &shared);
    wait_live(&shared, clients, Duration::from_secs(60)).await?;

    let stored0 = sum(&relays, "concord_ops_stored_total");
    let commits0 = sum(&relays, "concord_store_commits_total");
    let cpu0: f64 = relays.iter().map(Relay::cpu_seconds).sum();
    let started = Instant::now();
    let _ = tx.send(Phase::Flood);
    tokio::time::sleep(settings.window).await;
    let took = started.elapsed().as_secs_f64();
    let acked = sum(&relays, "concord_ops_stored_total") - stored0;
    let commits = sum(&relays, "concord_store_commits_total") - commits0;
    let cpu: f64 = relays.iter().map(Relay::cpu_seconds).sum::<f64>() - cpu0;
    let _ = tx.send(Phase::Idle);
    // The observer must have applied the flood's backlog, or the paced
    // phase would measure that backlog (bounded wait).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let head = sum(&relays, "concord_ops_stored_total") as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.cursor.load(Ordering::Relaxed) < head && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let written0 = shared.written.load(Ordering::Relaxed);
    let paced = Instant::now();
    let _ = tx.send(Phase::Paced(PACED_INTERVAL_US));
    tokio::time::sleep(settings.window).await;
    let offered =
        (shared.written.load(Ordering::Relaxed) - written0) as f64 / paced.elapsed().as_secs_f64();
    let _ = tx.send(Phase::Idle);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = stop(&tx, handles).await;
    first.close().await;
    let mut samples = done.iter().find_map(|c| c.latencies()).unwrap_or_default();
    // Deliveries of the flood's last operations and the first second of
    // the paced phase are warm-up.
    let skip = samples.len() / settings.window.as_secs().max(1) as usize;
    samples.drain(..skip.min(samples.len()));
    samples.sort_unstable();
    Ok(Row {
        storage: label.to_owned(),
        acked_per_sec: acked / took,
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        samples: samples.len(),
        offered,
        commits_per_sec: commits / took,
        cpu: cpu / took,
    })
}
