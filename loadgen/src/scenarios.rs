//! The scenarios: fan-out, scale, initial sync, durability. Each starts its
//! own relay, is bounded in time, and prints its rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::Settings;
use crate::client::{Client, now_us};
use crate::light::LightClient;
use crate::relay::{Relay, own_cpu_seconds};

/// What the fan-out and durability clients are asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Keep the session alive, write nothing.
    Idle,
    /// Write as fast as the relay takes it (pushes of 50, at most
    /// `MAX_PUSH_WINDOW` of them unacknowledged, 400 operations;
    /// lightweight clients also stay under the relay's default per-session
    /// rate limit of 2,000 ops/s, which would otherwise cut them off).
    Flood,
    /// Write one operation every `interval` µs, stamped for latency.
    Paced(u64),
    /// Write one operation, wait for its acknowledgement, repeat.
    AckEach,
    /// Close and finish.
    Stop,
}

/// Runs the scenarios `settings` selects.
pub(crate) async fn run(settings: &Settings) -> Result<(), String> {
    let want = |name: &str| settings.only.as_deref().is_none_or(|o| o == name);
    println!("# concord-loadgen (loopback, release relay, fresh data dir per scenario)\n");
    if want("fanout") {
        fanout(settings).await?;
    }
    if want("receivers") {
        crate::receivers::receivers(settings).await?;
    }
    if want("scale") {
        scale(settings).await?;
    }
    // Opt-in: not part of the default run.
    if settings.only.as_deref() == Some("synced") {
        synced(settings).await?;
    }
    if want("cluster") {
        crate::cluster::cluster(settings).await?;
    }
    if want("initial") {
        initial(settings).await?;
    }
    if want("durability") {
        durability(settings).await?;
    }
    Ok(())
}

/// Per-client counters the scenario reads.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) live: AtomicUsize,
    pub(crate) written: AtomicU64,
    /// Lightweight clients whose connection failed (they do not reconnect).
    lost: AtomicUsize,
    /// The full client's stored cursor (room offset it has applied).
    pub(crate) cursor: AtomicU64,
}

/// A follower task; the full client (client 0) hands itself back.
pub(crate) type Follower = tokio::task::JoinHandle<Option<Client>>;

/// Spawns `n` clients in `room` that follow the phase channel. Client 0 is
/// a full client (the SDK's `Database`) and collects latencies; the other
/// `n - 1` are [`LightClient`]s (the real protocol, no replica), so the
/// load generator's CPU goes to offering load rather than to 99 replicas
/// applying every delivery.
pub(crate) fn spawn_followers(
    urls: &[String],
    room: &str,
    n: usize,
    phase: &watch::Receiver<Phase>,
    shared: &Arc<Shared>,
) -> Vec<Follower> {
    (0..n)
        .map(|i| {
            if i > 0 {
                let url = urls[i % urls.len()].clone();
                let room = room.to_owned();
                let (phase, shared) = (phase.clone(), shared.clone());
                return tokio::spawn(async move {
                    light_follower(i, n, &url, &room, phase, &shared).await;
                    None
                });
            }
            let (room, url) = (room.to_owned(), urls[0].clone());
            let mut phase = phase.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let client = match Client::new(&room, &url, true).await {
                    Ok(client) => client,
                    Err(e) => {
                        eprintln!("concord-loadgen: full client: {e}");
                        return None;
                    }
                };
                let mut was_live = false;
                let mut n: u64 = 0;
                let mut next_write = Instant::now();
                loop {
                    let now_phase = *phase.borrow_and_update();
                    shared
                        .cursor
                        .store(client.status().cursor, Ordering::Relaxed);
                    if client.is_live() != was_live {
                        was_live = !was_live;
                        if was_live {
                            shared.live.fetch_add(1, Ordering::Relaxed);
                        } else {
                            shared.live.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    let mut wait = Duration::from_millis(5);
                    match now_phase {
                        Phase::Stop => break,
                        Phase::Idle => {}
                        Phase::Flood => {
                            if client.is_live() && client.pending() < 500 {
                                for _ in 0..50 {
                                    let doc = format!("c{i}-{}", n % 64);
                                    client.put("flood", &doc, &[("n", n as i64)]);
                                    n += 1;
                                }
                                shared.written.fetch_add(50, Ordering::Relaxed);
                            }
                            wait = Duration::from_millis(1);
                        }
                        Phase::Paced(interval) => {
                            let now = Instant::now();
                            if now >= next_write {
                                let doc = format!("c{i}-{}", n % 64);
                                client.put("lat", &doc, &[("t", now_us() as i64)]);
                                n += 1;
                                shared.written.fetch_add(1, Ordering::Relaxed);
                                next_write += Duration::from_micros(interval);
                                if next_write < now {
                                    next_write = now + Duration::from_micros(interval);
                                }
                            } else {
                                next_write = next_write.max(now);
                            }
                            wait = next_write.saturating_duration_since(Instant::now());
                        }
                        Phase::AckEach => {
                            if client.is_live() && client.pending() == 0 {
                                let doc = format!("c{i}-{}", n % 64);
                                client.put("durable", &doc, &[("n", n as i64)]);
                                n += 1;
                                shared.written.fetch_add(1, Ordering::Relaxed);
                            }
                            wait = Duration::from_millis(1);
                        }
                    }
                    // The client syncs on its host thread; this task only
                    // writes and watches.
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = phase.changed() => {}
                    }
                }
                client.close().await;
                Some(client)
            })
        })
        .collect()
}

/// How often a lightweight client pushes 50 operations in the flood.
const FLOOD_EVERY: Duration = Duration::from_millis(30);
/// Operations a flooding lightweight client leaves unacknowledged at most:
/// its pushes of 50 stay within the protocol's push window.
const FLOOD_UNACKED: u64 = 50 * sync_core::protocol::MAX_PUSH_WINDOW as u64;

/// Lightweight client `i` of `n` following the phase channel until `Stop`
/// (or until its connection fails: it is counted in `shared.lost`).
async fn light_follower(
    i: usize,
    n: usize,
    url: &str,
    room: &str,
    mut phase: watch::Receiver<Phase>,
    shared: &Shared,
) {
    let mut client = match LightClient::connect(i as u64 + 1, room, url).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("concord-loadgen: light client {i}: {e}");
            shared.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut current = *phase.borrow_and_update();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    // The relay closes sessions silent for its idle timeout (60 s).
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut was_live = false;
    let mut n_written: u64 = 0;
    let failed = loop {
        if client.live && !was_live {
            was_live = true;
            shared.live.fetch_add(1, Ordering::Relaxed);
        }
        let ack_each = current == Phase::AckEach && client.live && client.acked == client.pushed;
        if ack_each {
            let doc = format!("c{i}-{}", n_written % 64);
            client.push(1, "durable", &doc, "n", n_written as i64);
            n_written += 1;
            shared.written.fetch_add(1, Ordering::Relaxed);
        }
        let writing = client.live && matches!(current, Phase::Flood | Phase::Paced(_));
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() {
                    break None;
                }
                current = *phase.borrow_and_update();
                match current {
                    Phase::Stop => break None,
                    // Writers start spread evenly over one interval, as
                    // independent clients would, not in lockstep. Late
                    // ticks fire at once (tokio's default `Burst`), so the
                    // offered load stays at the target on average.
                    Phase::Paced(interval) => {
                        let offset = interval * i as u64 / n as u64;
                        ticker = tokio::time::interval_at(
                            tokio::time::Instant::now() + Duration::from_micros(offset),
                            Duration::from_micros(interval),
                        );
                    }
                    // 50 operations every 30 ms: 1,667 ops/s per client.
                    _ => ticker = tokio::time::interval(FLOOD_EVERY),
                }
            }
            read = client.read() => {
                if let Err(e) = read {
                    break Some(e);
                }
            }
            _ = ticker.tick(), if writing => match current {
                // Within the protocol's push window, as a real client
                // stays: a tick that finds it full is skipped (the offered
                // load then falls short, and the table says so).
                Phase::Paced(_)
                    if client.pushed - client.acked
                        < sync_core::protocol::MAX_PUSH_WINDOW as u64 =>
                {
                    let doc = format!("c{i}-{}", n_written % 64);
                    client.push(1, "lat", &doc, "t", now_us() as i64);
                    n_written += 1;
                    shared.written.fetch_add(1, Ordering::Relaxed);
                }
                Phase::Flood if client.pushed - client.acked < FLOOD_UNACKED => {
                    let doc = format!("c{i}-{}", n_written % 64);
                    client.push(50, "flood", &doc, "n", n_written as i64);
                    n_written += 50;
                    shared.written.fetch_add(50, Ordering::Relaxed);
                }
                _ => {}
            },
            _ = heartbeat.tick() => client.ping(),
        }
        if let Err(e) = client.flush().await {
            break Some(e);
        }
    };
    if let Some(e) = failed {
        eprintln!("concord-loadgen: light client {i} lost: {e}");
        shared.lost.fetch_add(1, Ordering::Relaxed);
    }
    if was_live {
        shared.live.fetch_sub(1, Ordering::Relaxed);
    }
    client.close().await;
}

/// Waits until `shared.live` reaches `n` (bounded).
/// Handshakes the many-session scenarios keep under way at once.
const HANDSHAKES_AT_ONCE: usize = 200;

/// Connects client `i` to `room`, holding a permit of `gate` (which bounds
/// the handshakes under way) until it is live or gives up, and counts it in
/// `shared.live` if it made it.
async fn connect_counted(
    i: usize,
    room: &str,
    url: &str,
    gate: Arc<Semaphore>,
    shared: &Shared,
) -> Option<Client> {
    let permit = gate.acquire_owned().await.ok();
    let client = Client::new(room, url, false).await;
    let live = match &client {
        Ok(client) => {
            client
                .run_until(Duration::from_secs(60), Client::is_live)
                .await
        }
        Err(e) => {
            eprintln!("concord-loadgen: client {i}: {e}");
            false
        }
    };
    drop(permit);
    if live {
        shared.live.fetch_add(1, Ordering::Relaxed);
    }
    client.ok()
}

/// Keeps a live client idle (heartbeats only) until the phase is `Stop`,
/// then closes it.
async fn idle_until_stopped(client: Option<Client>, phase: &mut watch::Receiver<Phase>) {
    // The client answers heartbeats on its host thread meanwhile.
    let _ = phase.wait_for(|p| *p == Phase::Stop).await;
    if let Some(client) = client {
        client.close().await;
    }
}

pub(crate) async fn wait_live(shared: &Shared, n: usize, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while shared.live.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} sessions live after {limit:?}",
                shared.live.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Stops followers and collects them (bounded).
pub(crate) async fn stop(tx: &watch::Sender<Phase>, handles: Vec<Follower>) -> Vec<Client> {
    let _ = tx.send(Phase::Stop);
    let mut clients = Vec::new();
    for h in handles {
        if let Ok(Ok(Some(c))) = tokio::time::timeout(Duration::from_secs(10), h).await {
            clients.push(c);
        }
    }
    clients
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// The relay's storage and acknowledgement counters, to report what a
/// phase cost in commits.
#[derive(Clone, Copy, Debug, Default)]
struct StoreFigures {
    commits: f64,
    requests: f64,
    commit_secs: f64,
    ack_secs: f64,
    acks: f64,
    /// Follow-up requests the relay's writer gave up waiting for (0 for a
    /// relay without the handshake).
    missed: f64,
}

impl StoreFigures {
    fn read(relay: &Relay) -> StoreFigures {
        StoreFigures {
            commits: relay.metric("concord_store_commits_total"),
            requests: relay.metric("concord_store_commit_requests_total"),
            commit_secs: relay.metric("concord_store_commit_seconds_sum"),
            ack_secs: relay.metric("concord_ack_latency_seconds_sum"),
            acks: relay.metric("concord_ack_latency_seconds_count"),
            missed: relay.metric("concord_store_follow_ups_missed_total"),
        }
    }

    /// The difference from an earlier reading.
    fn since(&self, before: &StoreFigures) -> StoreFigures {
        StoreFigures {
            commits: self.commits - before.commits,
            requests: self.requests - before.requests,
            commit_secs: self.commit_secs - before.commit_secs,
            ack_secs: self.ack_secs - before.ack_secs,
            acks: self.acks - before.acks,
            missed: self.missed - before.missed,
        }
    }
}

/// Fan-out: 100 clients in one room, each writing.
async fn fanout(settings: &Settings) -> Result<(), String> {
    const CLIENTS: usize = 100;
    eprintln!("fanout: starting relay and {CLIENTS} clients");
    let relay = Relay::start(&settings.relay, &[], &settings.relay_args)?;
    let (tx, rx) = watch::channel(Phase::Idle);
    let shared = Arc::new(Shared::default());
    let handles = spawn_followers(&[relay.url()], "fanout", CLIENTS, &rx, &shared);
    wait_live(&shared, CLIENTS, Duration::from_secs(30)).await?;

    // Throughput: everyone writes as fast as the relay takes it.
    eprintln!("fanout: flood for {:?}", settings.window);
    let out0 = relay.metric("concord_ops_out_total");
    let in0 = relay.metric("concord_ops_stored_total");
    let cpu0 = relay.cpu_seconds();
    let own0 = own_cpu_seconds();
    let started = Instant::now();
    let _ = tx.send(Phase::Flood);
    tokio::time::sleep(settings.window).await;
    let took = started.elapsed().as_secs_f64();
    let out = relay.metric("concord_ops_out_total") - out0;
    let stored = relay.metric("concord_ops_stored_total") - in0;
    let cpu = relay.cpu_seconds() - cpu0;
    let own = own_cpu_seconds() - own0;
    let _ = tx.send(Phase::Idle);
    // The full client must have applied the flood's backlog, or the paced
    // phase would measure that backlog instead of the relay.
    let head = relay.metric("concord_ops_stored_total") as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.cursor.load(Ordering::Relaxed) < head && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = started.elapsed().as_secs_f64() - took;
    eprintln!("fanout: full client caught up {caught_up:.1} s after the flood");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Latency at a fixed offered load: 100 clients × 100 ops/s.
    eprintln!("fanout: 10,000 ops/s for {:?}", settings.window);
    let written0 = shared.written.load(Ordering::Relaxed);
    let (pcpu0, pown0) = (relay.cpu_seconds(), own_cpu_seconds());
    let store0 = StoreFigures::read(&relay);
    let paced_start = Instant::now();
    let _ = tx.send(Phase::Paced(10_000));
    tokio::time::sleep(settings.window).await;
    let store = StoreFigures::read(&relay).since(&store0);
    let offered = (shared.written.load(Ordering::Relaxed) - written0) as f64
        / paced_start.elapsed().as_secs_f64();
    let paced_secs = paced_start.elapsed().as_secs_f64();
    let (pcpu, pown) = (
        (relay.cpu_seconds() - pcpu0) / paced_secs,
        (own_cpu_seconds() - pown0) / paced_secs,
    );
    let _ = tx.send(Phase::Idle);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let clients = stop(&tx, handles).await;
    let mut samples = clients
        .iter()
        .find_map(Client::latencies)
        .unwrap_or_default();
    // The first second warms up (connections' windows, allocations).
    let skip = samples.len() / settings.window.as_secs().max(1) as usize;
    samples.drain(..skip.min(samples.len()));
    if std::env::var_os("LOADGEN_TRACE").is_some() {
        for (k, chunk) in samples.chunks(samples.len().max(20) / 20).enumerate() {
            let mut c = chunk.to_vec();
            c.sort_unstable();
            eprintln!(
                "chunk {k}: p50 {:.1} ms max {:.1} ms",
                percentile(&c, 0.5),
                percentile(&c, 1.0)
            );
        }
    }
    samples.sort_unstable();
    let (p50, p99, max) = (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );
    let reconnects: u64 = clients.iter().map(|c| c.connects().saturating_sub(1)).sum();

    let rate = out / took;
    println!("## Fan-out: {CLIENTS} clients in one room, each writing\n");
    println!("| measure | result | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| operations delivered per second (flood, {:.0} s) | {rate:.0} /s | ≥ 500,000 /s: {} |",
        took,
        verdict(rate >= 500_000.0)
    );
    println!(
        "| operations stored per second (flood) | {:.0} /s | |",
        stored / took
    );
    println!(
        "| relay CPU during flood | {:.0}% of one core | |",
        100.0 * cpu / took
    );
    println!(
        "| load generator CPU during flood (1 full session + 99 light clients) | {:.0}% of one core | |",
        100.0 * own / took
    );
    println!(
        "| relay deliveries per relay CPU-second (flood) | {:.0} | |",
        out / cpu.max(0.01)
    );
    println!("| offered load reached (paced phase) | {offered:.0} ops/s | 10,000 ops/s |");
    println!(
        "| CPU in paced phase: relay / load generator | {:.0}% / {:.0}% of one core | |",
        100.0 * pcpu,
        100.0 * pown
    );
    println!(
        "| relay in paced phase: commits/s, room requests per commit, mean commit, mean ack latency, follow-ups missed | {:.0}/s, {:.2}, {:.2} ms, {:.2} ms, {:.0} | |",
        store.commits / paced_secs,
        store.requests / store.commits.max(1.0),
        1000.0 * store.commit_secs / store.commits.max(1.0),
        1000.0 * store.ack_secs / store.acks.max(1.0),
        store.missed,
    );
    println!(
        "| push-to-delivery latency p50 / p99 / max ({} samples at client 1) | {p50:.2} / {p99:.2} / {max:.1} ms | p99 ≤ 5 ms: {} |",
        samples.len(),
        verdict(p99 <= 5.0)
    );
    println!(
        "| reconnects of the full client / light clients lost | {reconnects} / {} | |\n",
        shared.lost.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Scale: many mostly idle sessions over 1,000 rooms.
async fn scale(settings: &Settings) -> Result<(), String> {
    let n = settings.idle_sessions;
    let rooms = 1_000.min(n);
    eprintln!("scale: {n} sessions over {rooms} rooms");
    let relay = Relay::start(
        &settings.relay,
        &["--max-connections", "20000"],
        &settings.relay_args,
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = relay.rss_kib();
    let (tx, rx) = watch::channel(Phase::Idle);
    let shared = Arc::new(Shared::default());
    let gate = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let url = relay.url();
            let room = format!("room{}", i % rooms);
            let mut phase = rx.clone();
            let shared = shared.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let client = connect_counted(i, &room, &url, gate, &shared).await;
                idle_until_stopped(client, &mut phase).await;
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.live.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected = shared.live.load(Ordering::Relaxed);
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss1 = relay.rss_kib();
    let cpu0 = relay.cpu_seconds();
    let idle_start = Instant::now();
    tokio::time::sleep(settings.window).await;
    let idle_cpu = (relay.cpu_seconds() - cpu0) / idle_start.elapsed().as_secs_f64();
    let sessions_metric = relay.metric("concord_sessions");
    let _ = tx.send(Phase::Stop);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
    let per_session = (rss1.saturating_sub(rss0)) as f64 / connected.max(1) as f64;
    println!("## Scale: {n} mostly idle sessions over {rooms} rooms\n");
    println!("| measure | result | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| sessions live (relay's `concord_sessions`) | {connected} ({sessions_metric:.0}) in {:.1} s | {n} |",
        connect_time.as_secs_f64()
    );
    println!("| relay RSS before / after | {rss0} KiB / {rss1} KiB | |");
    println!(
        "| relay RSS per session | {per_session:.1} KiB | ≤ 20 KiB: {} |",
        verdict(per_session <= 20.0 && connected == n)
    );
    println!(
        "| relay CPU while idle ({:.0} s, heartbeats only) | {:.1}% of one core | |\n",
        settings.window.as_secs_f64(),
        100.0 * idle_cpu
    );
    Ok(())
}

/// Initial sync of a 100,000 × 10 room, from the log and from a snapshot.
async fn initial(settings: &Settings) -> Result<(), String> {
    const DOCS: usize = 100_000;
    println!("## Initial sync: a new client pulls 100,000 documents × 10 fields\n");
    println!("| case | writer upload | new client to caught-up | target |");
    println!("| --- | ---: | ---: | --- |");
    let log_only: &[&str] = &[
        "--ops-per-second",
        "0",
        "--keep-recent-ops",
        "1000000",
        "--max-log-ops",
        "2000000",
    ];
    let compacting: &[&str] = &["--ops-per-second", "0"];
    for (case, args, compact) in [
        ("from the log (no compaction)", log_only, false),
        ("after compaction (snapshot + tail)", compacting, true),
    ] {
        eprintln!("initial: {case}");
        let relay = Relay::start(&settings.relay, args, &settings.relay_args)?;
        let writer = Client::new("big", &relay.url(), false).await?;
        let fields: Vec<String> = (0..10).map(|f| format!("f{f}")).collect();
        // Written in transactions of 1,000 documents, as an app bulk-loads.
        let docs: Vec<(String, Vec<(&str, i64)>)> = (0..DOCS)
            .map(|d| {
                let values = fields
                    .iter()
                    .enumerate()
                    .map(|(f, name)| (name.as_str(), (d * 10 + f) as i64))
                    .collect();
                (format!("doc{d:06}"), values)
            })
            .collect();
        for chunk in docs.chunks(1_000) {
            writer.put_batch("docs", chunk);
        }
        let started = Instant::now();
        if !writer
            .run_until(Duration::from_secs(120), |c| {
                c.is_live() && c.pending() == 0
            })
            .await
        {
            return Err(format!("{case}: writer did not finish uploading in 120 s"));
        }
        let upload = started.elapsed();
        // The room's head: every operation the relay stored (one room).
        let head = relay.metric("concord_ops_stored_total") as u64;
        writer.close().await;
        if compact {
            let deadline = Instant::now() + Duration::from_secs(60);
            while relay.metric("concord_compactions_total") < 1.0 {
                if Instant::now() > deadline {
                    return Err("no compaction within 60 s".into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let compactions = relay.metric("concord_compactions_total");
        let started = Instant::now();
        let reader = Client::new("big", &relay.url(), false).await?;
        let caught_up = reader
            .run_until(Duration::from_secs(60), |c| {
                c.is_live() && c.status().cursor >= head
            })
            .await;
        let took = started.elapsed();
        let docs = reader.doc_count("docs");
        reader.close().await;
        let took_s = took.as_secs_f64();
        println!(
            "| {case}, {compactions:.0} compaction(s) | {:.2} s ({:.0} ops/s) | {} | ≤ 2 s: {} |",
            upload.as_secs_f64(),
            DOCS as f64 / upload.as_secs_f64(),
            if caught_up && docs == DOCS {
                format!("{took_s:.2} s")
            } else {
                format!("not caught up after {took_s:.1} s ({docs} docs)")
            },
            verdict(caught_up && docs == DOCS && took_s <= 2.0)
        );
    }
    println!();
    Ok(())
}

/// Durability: acknowledged ops/s with fsync before every ack, one room.
async fn durability(settings: &Settings) -> Result<(), String> {
    println!("## Durability: fsync before ack, one room, each session waits for its ack\n");
    println!(
        "| sessions | acknowledged ops/s | ops per fsync | room requests per fsync | mean commit | mean ack latency |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for sessions in [1, 10, 100] {
        eprintln!("durability: {sessions} sessions");
        let relay = Relay::start(&settings.relay, &[], &settings.relay_args)?;
        let (tx, rx) = watch::channel(Phase::Idle);
        let shared = Arc::new(Shared::default());
        let handles = spawn_followers(&[relay.url()], "durable", sessions, &rx, &shared);
        wait_live(&shared, sessions, Duration::from_secs(30)).await?;
        let m = |name: &str| relay.metric(name);
        let before = [
            m("concord_ops_stored_total"),
            m("concord_store_commits_total"),
            m("concord_store_commit_requests_total"),
            m("concord_store_commit_seconds_sum"),
            m("concord_ack_latency_seconds_sum"),
            m("concord_ack_latency_seconds_count"),
        ];
        let started = Instant::now();
        let _ = tx.send(Phase::AckEach);
        tokio::time::sleep(settings.window).await;
        let took = started.elapsed().as_secs_f64();
        let after = [
            m("concord_ops_stored_total"),
            m("concord_store_commits_total"),
            m("concord_store_commit_requests_total"),
            m("concord_store_commit_seconds_sum"),
            m("concord_ack_latency_seconds_sum"),
            m("concord_ack_latency_seconds_count"),
        ];
        stop(&tx, handles).await;
        let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        println!(
            "| {sessions} | {:.0} | {:.1} | {:.1} | {:.2} ms | {:.2} ms |",
            d[0] / took,
            d[0] / d[1].max(1.0),
            d[2] / d[1].max(1.0),
            1000.0 * d[3] / d[1].max(1.0),
            1000.0 * d[4] / d[5].max(1.0),
        );
    }
    println!();
    Ok(())
}

/// Idle sessions after each pulled a backlog: 1,000 sessions over 100
/// rooms; one writer per room pushes 256 operations of about 1 KiB, every
/// session receives them, then all idle. Shows what a session keeps after
/// it was active (opt-in: `--only synced`).
async fn synced(settings: &Settings) -> Result<(), String> {
    const SESSIONS: usize = 1_000;
    const ROOMS: usize = 100;
    const OPS: usize = 256;
    eprintln!("synced: {SESSIONS} sessions over {ROOMS} rooms, {OPS} ops of ~1 KiB per room");
    let relay = Relay::start(&settings.relay, &[], &settings.relay_args)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = relay.rss_kib();
    let (tx, rx) = watch::channel(Phase::Idle);
    let shared = Arc::new(Shared::default());
    let synced = Arc::new(AtomicUsize::new(0));
    let (go_tx, go) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
    let handles: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let url = relay.url();
            let room = format!("room{}", i % ROOMS);
            let mut phase = rx.clone();
            let mut go = go.clone();
            let (shared, synced, gate) = (shared.clone(), synced.clone(), gate.clone());
            tokio::spawn(async move {
                let client = connect_counted(i, &room, &url, gate, &shared).await;
                // Stay live until every session is (the client answers
                // heartbeats on its host thread), then write and pull.
                let _ = tokio::time::timeout(Duration::from_secs(120), go.wait_for(|go| *go)).await;
                let mut done = false;
                if let Some(client) = &client {
                    if i < ROOMS {
                        for d in 0..OPS {
                            // A 1,000-byte id makes each operation about 1 KiB.
                            client.put("docs", &format!("{d:0>1000}"), &[("n", d as i64)]);
                        }
                    }
                    done = client
                        .run_until(Duration::from_secs(60), |c| {
                            // Counting documents copies them: only once
                            // the changes say they may all be here.
                            c.pending() == 0
                                && (i < ROOMS || c.remote_changes() >= OPS as u64)
                                && c.doc_count("docs") == OPS
                        })
                        .await;
                }
                if done {
                    synced.fetch_add(1, Ordering::Relaxed);
                }
                idle_until_stopped(client, &mut phase).await;
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.live.load(Ordering::Relaxed) < SESSIONS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss1 = relay.rss_kib();
    let _ = go_tx.send(true);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    while synced.load(Ordering::Relaxed) < SESSIONS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss2 = relay.rss_kib();
    let _ = tx.send(Phase::Stop);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
    let per = |kib: u64| kib.saturating_sub(rss0) as f64 / SESSIONS as f64;
    println!(
        "## Synced, then idle: {SESSIONS} sessions over {ROOMS} rooms, {OPS} ops of ~1 KiB per room\n"
    );
    println!("| measure | result |");
    println!("| --- | ---: |");
    println!(
        "| sessions live / synced | {} / {} (sync took {:.1} s) |",
        shared.live.load(Ordering::Relaxed),
        synced.load(Ordering::Relaxed),
        took.as_secs_f64()
    );
    println!("| relay RSS before / idle / after the sync | {rss0} / {rss1} / {rss2} KiB |");
    println!(
        "| relay RSS per session: idle / after the sync | {:.1} / {:.1} KiB |\n",
        per(rss1),
        per(rss2)
    );
    Ok(())
}
