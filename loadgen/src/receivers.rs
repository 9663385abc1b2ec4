//! Latency at every receiver: one room, `W` writers pacing one operation
//! each every `interval`, 100 receivers, push → delivery measured for every
//! operation at every receiver (`--only receivers`).
//!
//! All sessions are [`LightClient`]s, so the load generator's CPU goes to
//! the sockets and not to 100 replicas applying 10,000 ops/s each. A
//! receiver reads each `Deliver`'s header only and records the room offsets
//! it covers and when it read it; a writer records when each of its
//! operations was due (its tick, so a push held back by the push window
//! counts its wait). One receiver that writes nothing also decodes every
//! delivery to learn which operation each room offset holds (when every
//! receiver writes, an extra read-only session does this and is not
//! measured). Afterwards every (operation, receiver) pair is matched: a
//! receiver got the operations at the offsets its deliveries covered, except
//! its own (the relay does not echo them), and the count has to equal what
//! the header says: in protocol version 2 the offsets that are not the
//! receiver's own, in version 3 the whole range (its own operations ride
//! along in the one frame every receiver at that cursor shares) unless all
//! of it is its own. Each receiver's deliveries must also continue one from
//! the other's cursor, from 0.
//!
//! The writers' clocks and the receivers' are the same machine's wall
//! clock, so the latency is exact up to the scheduling of the reading task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::Settings;
use crate::client::now_us;
use crate::light::{LightClient, Record};
use crate::relay::{Relay, own_cpu_seconds};
use crate::scenarios::percentile;

/// Sessions that receive (and are measured).
const RECEIVERS: usize = 100;

/// The relay's histograms that split a delivery's latency into parts, in
/// the order an operation meets them.
const STAGES: [&str; 4] = [
    // Push read (and let through the rate limit) → its ack queued: the wait
    // for the commit under way, then its own commit.
    "concord_ack_latency_seconds",
    // One group commit (write + fsync), for reference.
    "concord_store_commit_seconds",
    // The room saw the commit complete → the Deliver queued to a session.
    "concord_fanout_seconds",
    // Deliver queued → its socket write returned.
    "concord_send_seconds",
];

/// One configuration of the scenario.
struct Case {
    writers: usize,
    /// Each writer's operations per second.
    rate: u64,
}

/// What a session task is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Go {
    Wait,
    Write,
    Drain,
    Stop,
}

/// Runs both cases: 10 writers × 1,000 ops/s and 100 writers × 100 ops/s.
pub(crate) async fn receivers(settings: &Settings) -> Result<(), String> {
    println!("## Latency at every receiver: one room, 100 receivers, 10,000 ops/s\n");
    println!(
        "| writers × ops/s | offered | deliveries expected / received | p50 / p99 / p999 / max | relay CPU, per delivery, per frame sent | load generator CPU, per delivery | relay commits/s, mean commit, frames sent/s | target p99 ≤ 5 ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut parts = Vec::new();
    let cases = match settings.writers {
        Some((writers, rate)) => vec![Case { writers, rate }],
        None => vec![
            Case {
                writers: 10,
                rate: 1_000,
            },
            Case {
                writers: 100,
                rate: 100,
            },
        ],
    };
    for case in cases {
        parts.push(run_case(settings, &case).await?);
    }
    println!();
    println!(
        "Where the time goes, p50 / p99 in ms (relay parts from its histograms, interpolated \
         within buckets; the remainder is the end-to-end p50 less the parts' p50s: the relay's \
         reader and the receiver's task waiting for a CPU):\n"
    );
    println!(
        "| writers × ops/s | end to end | generator: due → push written | relay: push read → ack (durable) | commit | relay: durable → Deliver queued | relay: queued → written | remainder at p50 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in parts {
        println!("{row}");
    }
    println!();
    Ok(())
}

/// The difference `after − before` of two readings of one histogram.
fn histogram_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let n0 = before
                .iter()
                .find(|&&(b, _)| b == le)
                .map_or(0.0, |&(_, n0)| n0);
            (le, n - n0)
        })
        .collect()
}

/// The `p` quantile (ms) of cumulative buckets, linear within its bucket
/// (as Prometheus' `histogram_quantile`); NaN if empty.
fn bucket_quantile(buckets: &[(f64, f64)], p: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = p * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return lower * 1000.0;
            }
            let within = if n > below {
                (rank - below) / (n - below)
            } else {
                1.0
            };
            return (lower + (le - lower) * within) * 1000.0;
        }
        (lower, below) = (le, n);
    }
    lower * 1000.0
}

/// Runs one case, prints its row and returns its row of the breakdown.
async fn run_case(settings: &Settings, case: &Case) -> Result<String, String> {
    eprintln!(
        "receivers: {} writers × {} ops/s, {RECEIVERS} receivers, {:?}",
        case.writers, case.rate, settings.window
    );
    let relay = Relay::start(&settings.relay, &[], &settings.relay_args)?;
    let url = relay.url();
    // Writers are the first `writers` receivers; the observer is the last
    // receiver if it writes nothing, else one more session.
    let sessions = if case.writers < RECEIVERS {
        RECEIVERS
    } else {
        RECEIVERS + 1
    };
    let observer = sessions - 1;
    let (go_tx, go_rx) = watch::channel(Go::Wait);
    let live = Arc::new(AtomicUsize::new(0));
    // The observer's cursor: the drain lasts until it has read every
    // operation the relay stored, or no receiver could be matched past it.
    let observed = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_micros(1_000_000 / case.rate);
    let handles: Vec<_> = (0..sessions)
        .map(|i| {
            let (url, go, live) = (url.clone(), go_rx.clone(), live.clone());
            let seen = (i == observer).then(|| observed.clone());
            let writer = i < case.writers;
            // Writers start spread evenly over one interval.
            let offset = interval * i as u32 / case.writers.max(1) as u32;
            tokio::spawn(async move {
                session(i, &url, writer, seen, interval, offset, go, &live).await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while live.load(Ordering::Relaxed) < sessions {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "only {} of {sessions} sessions live",
                live.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One second of warm-up, then the measured window: operations due in
    // it are the ones counted.
    let _ = go_tx.send(Go::Write);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (relay0, own0, out0, frames0) = (
        relay.cpu_seconds(),
        own_cpu_seconds(),
        relay.metric("concord_ops_out_total"),
        relay.metric("concord_frames_out_total"),
    );
    let (commits0, commit_secs0) = (
        relay.metric("concord_store_commits_total"),
        relay.metric("concord_store_commit_seconds_sum"),
    );
    let stages0: Vec<_> = STAGES.iter().map(|name| relay.histogram(name)).collect();
    let window_start = now_us();
    tokio::time::sleep(settings.window).await;
    let window_end = now_us();
    let stages: Vec<_> = STAGES
        .iter()
        .zip(&stages0)
        .map(|(name, before)| histogram_delta(before, &relay.histogram(name)))
        .collect();
    let secs = (window_end - window_start) as f64 / 1e6;
    let relay_cpu = relay.cpu_seconds() - relay0;
    let own_cpu = own_cpu_seconds() - own0;
    let relay_out = relay.metric("concord_ops_out_total") - out0;
    let frames_out = relay.metric("concord_frames_out_total") - frames0;
    let commits = relay.metric("concord_store_commits_total") - commits0;
    let commit_secs = relay.metric("concord_store_commit_seconds_sum") - commit_secs0;
    // Stop writing; give what is in flight 3 s to arrive.
    let _ = go_tx.send(Go::Drain);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // On a loaded machine deliveries can lag by seconds: wait (bounded) until
    // the observer holds the head, so every offset a receiver read is known.
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (observed.load(Ordering::Relaxed) as f64) < relay.metric("concord_ops_stored_total")
        && tokio::time::Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = go_tx.send(Go::Stop);
    let mut records = Vec::with_capacity(sessions);
    let mut lost = 0;
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(Ok(record))) => records.push(record),
            Ok(Ok(Err(e))) => {
                eprintln!("concord-loadgen: receivers: {e}");
                lost += 1;
            }
            _ => lost += 1,
        }
    }
    drop(relay);
    if lost > 0 {
        return Err(format!("{lost} sessions failed (see above)"));
    }
    let m = measure(&records, case.writers, observer, window_start, window_end)?;
    let (p50, p99, p999, max) = (
        percentile(&m.samples, 0.5),
        percentile(&m.samples, 0.99),
        percentile(&m.samples, 0.999),
        percentile(&m.samples, 1.0),
    );
    println!(
        "| {} × {} | {:.0} ops/s | {} / {} | {p50:.2} / {p99:.2} / {p999:.2} / {max:.1} ms | {:.0}% of a core, {:.2} µs, {:.1} µs | {:.0}% of a core, {:.2} µs | {:.0}/s, {:.2} ms, {:.0}/s | {} |",
        case.writers,
        case.rate,
        m.measured_ops as f64 / secs,
        m.expected,
        m.samples.len(),
        100.0 * relay_cpu / secs,
        1e6 * relay_cpu / relay_out.max(1.0),
        1e6 * relay_cpu / frames_out.max(1.0),
        100.0 * own_cpu / secs,
        1e6 * own_cpu / (m.samples.len() as f64).max(1.0),
        commits / secs,
        1000.0 * commit_secs / commits.max(1.0),
        frames_out / secs,
        if p99 <= 5.0 && m.samples.len() as u64 == m.expected {
            "PASS"
        } else {
            "MISS"
        }
    );
    let pair = |p50: f64, p99: f64| format!("{p50:.2} / {p99:.2}");
    let mut row = format!(
        "| {} × {} | {} | {} |",
        case.writers,
        case.rate,
        pair(p50, p99),
        pair(
            percentile(&m.push_lags, 0.5),
            percentile(&m.push_lags, 0.99)
        )
    );
    let mut remainder = p50 - percentile(&m.push_lags, 0.5);
    for (i, buckets) in stages.iter().enumerate() {
        let (q50, q99) = (
            bucket_quantile(buckets, 0.5),
            bucket_quantile(buckets, 0.99),
        );
        // The commit is inside "push read → ack", not a part of its own.
        if STAGES[i] != "concord_store_commit_seconds" {
            remainder -= q50;
        }
        row.push_str(&format!(" {} |", pair(q50, q99)));
    }
    row.push_str(&format!(" {remainder:.2} |"));
    Ok(row)
}

/// One session's life: connect, then follow `go`; returns what it recorded.
#[allow(clippy::too_many_arguments)]
async fn session(
    i: usize,
    url: &str,
    writer: bool,
    observer: Option<Arc<AtomicU64>>,
    interval: Duration,
    offset: Duration,
    mut go: watch::Receiver<Go>,
    live: &AtomicUsize,
) -> Result<Record, String> {
    let mut client = LightClient::connect(i as u64 + 1, "receivers", url).await?;
    client.record = Some(Record {
        offsets: observer.is_some().then(Vec::new),
        ..Record::default()
    });
    while !client.live {
        tokio::time::timeout(Duration::from_secs(30), client.read())
            .await
            .map_err(|_| format!("session {i}: no Welcome"))??;
        client.flush().await?;
    }
    live.fetch_add(1, Ordering::Relaxed);
    let mut state = *go.borrow_and_update();
    let mut ticker = tokio::time::interval(interval);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    // Operations due but not pushed yet (the push window was full): their
    // due times, pushed together once it opens, as a client's outbox does.
    let mut due: Vec<u64> = Vec::new();
    loop {
        let writing = writer && state == Go::Write;
        tokio::select! {
            biased;
            changed = go.changed() => {
                if changed.is_err() {
                    break;
                }
                state = *go.borrow_and_update();
                match state {
                    Go::Stop => break,
                    Go::Write => {
                        ticker = tokio::time::interval_at(
                            tokio::time::Instant::now() + offset,
                            interval,
                        );
                    }
                    Go::Wait | Go::Drain => {}
                }
            }
            read = client.read() => {
                read.map_err(|e| format!("session {i}: {e}"))?;
                if let Some(seen) = &observer {
                    seen.store(client.cursor(), Ordering::Relaxed);
                }
            }
            _ = ticker.tick(), if writing => due.push(now_us()),
            _ = heartbeat.tick() => client.ping(),
        }
        let mut pushed = 0;
        if !due.is_empty()
            && client.pushed - client.acked < sync_core::protocol::MAX_PUSH_WINDOW as u64
        {
            client.push_timed(&due);
            pushed = due.len();
            due.clear();
        }
        client
            .flush()
            .await
            .map_err(|e| format!("session {i}: {e}"))?;
        if pushed > 0 {
            if let Some(record) = &mut client.record {
                let flushed = now_us();
                let n = record.sent_us.len() - record.flushed_us.len();
                record.flushed_us.extend(std::iter::repeat_n(flushed, n));
            }
        }
    }
    let record = client.record.take().unwrap_or_default();
    client.close().await;
    Ok(record)
}

/// The matched figures of one run.
#[derive(Debug)]
struct Measured {
    /// Latency (µs) of every delivery of a measured operation, sorted.
    samples: Vec<u64>,
    /// (operation, receiver) pairs that should have been delivered.
    expected: u64,
    /// Operations due inside the window.
    measured_ops: u64,
    /// For each of them, due → the push holding it written (µs), sorted.
    push_lags: Vec<u64>,
}

/// Matches every receiver's deliveries against the writers' send times.
fn measure(
    records: &[Record],
    writers: usize,
    observer: usize,
    window_start: u64,
    window_end: u64,
) -> Result<Measured, String> {
    let map = records
        .get(observer)
        .and_then(|r| r.offsets.as_ref())
        .ok_or("no observer record")?;
    if records[observer].gaps > 0 {
        return Err(format!(
            "the observer saw {} deliveries not contiguous with the ones before",
            records[observer].gaps
        ));
    }
    let in_window = |t: u64| t >= window_start && t < window_end;
    let sent_at = |replica: u64, seq: u64| -> Option<u64> {
        let writer = usize::try_from(replica.checked_sub(1)?).ok()?;
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        records.get(writer)?.sent_us.get(i).copied()
    };
    let measured_ops: u64 = records[..writers]
        .iter()
        .map(|r| r.sent_us.iter().filter(|&&t| in_window(t)).count() as u64)
        .sum();
    // Every receiver but the writer gets each operation.
    let expected = measured_ops * (RECEIVERS as u64 - 1);
    let mut samples = Vec::with_capacity(expected as usize);
    let (mut mismatched, mut discontiguous) = (0u64, 0u64);
    for (r, record) in records.iter().take(RECEIVERS).enumerate() {
        let own = r as u64 + 1;
        // Every session joined an empty room, so its deliveries must tile
        // the offsets from 0: a frame that skips or repeats a range, or was
        // built for another cursor, breaks the chain.
        let mut last_cursor = 0;
        for a in &record.arrivals {
            if a.from != last_cursor {
                discontiguous += 1;
            }
            last_cursor = a.cursor;
            let mut others = 0;
            for offset in a.from + 1..=a.cursor {
                let Some(&(replica, seq)) = map.get(offset as usize - 1) else {
                    return Err(format!("offset {offset} unknown to the observer"));
                };
                if replica == own {
                    continue;
                }
                others += 1;
                let Some(sent) = sent_at(replica, seq) else {
                    return Err(format!("operation {replica}/{seq} was never sent"));
                };
                if in_window(sent) {
                    samples.push(a.at_us.saturating_sub(sent));
                }
            }
            // What the frame must hold (PROTOCOL.md, `Deliver`): version 2
            // leaves out the receiver's own operations (it pushed them, so
            // it holds them); version 3 carries the whole range so one frame
            // serves every receiver at that cursor, own operations riding
            // along, unless the range holds nothing but the receiver's own.
            let carried = if record.version == sync_core::protocol::COMPACT_VERSION {
                if others == 0 { 0 } else { a.cursor - a.from }
            } else {
                others
            };
            if carried != a.ops {
                mismatched += 1;
            }
        }
    }
    if mismatched > 0 || discontiguous > 0 {
        return Err(format!(
            "{mismatched} deliveries held a different number of operations than their offsets \
             call for, {discontiguous} did not continue from the cursor before"
        ));
    }
    samples.sort_unstable();
    let mut push_lags: Vec<u64> = records[..writers]
        .iter()
        .flat_map(|r| r.sent_us.iter().zip(&r.flushed_us))
        .filter(|&(&sent, _)| in_window(sent))
        .map(|(&sent, &flushed)| flushed.saturating_sub(sent))
        .collect();
    push_lags.sort_unstable();
    Ok(Measured {
        samples,
        expected,
        measured_ops,
        push_lags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::light::Arrival;
    use sync_core::protocol::{COMPACT_VERSION, PROTOCOL_VERSION};

    /// Two writers (replicas 1 and 2) each pushed one operation; the third
    /// session observed offsets 1 (replica 1) and 2 (replica 2).
    fn records(version: u8, writer_frames: [(u64, u64, u64); 2]) -> Vec<Record> {
        let arrival = |(from, cursor, ops)| Arrival {
            from,
            cursor,
            ops,
            at_us: 150,
        };
        let writer = |sent: u64, frame| Record {
            arrivals: vec![arrival(frame)],
            sent_us: vec![sent],
            version,
            ..Record::default()
        };
        vec![
            writer(100, writer_frames[0]),
            writer(110, writer_frames[1]),
            Record {
                arrivals: vec![arrival((0, 2, 2))],
                offsets: Some(vec![(1, 1), (2, 1)]),
                version,
                ..Record::default()
            },
        ]
    }

    #[test]
    fn own_operations_count_by_the_protocol_version() {
        // Version 2 leaves each writer's own operation out of its frame.
        let v2 = records(PROTOCOL_VERSION, [(0, 2, 1), (0, 2, 1)]);
        let m = measure(&v2, 2, 2, 0, 1_000).unwrap();
        assert_eq!(m.samples, vec![40, 40, 50, 50]);
        // Version 3 carries the whole range, own operation included.
        let v3 = records(COMPACT_VERSION, [(0, 2, 2), (0, 2, 2)]);
        assert_eq!(measure(&v3, 2, 2, 0, 1_000).unwrap().samples.len(), 4);
        // Either count read under the other version is a mismatch.
        let wrong = records(COMPACT_VERSION, [(0, 2, 1), (0, 2, 2)]);
        assert!(measure(&wrong, 2, 2, 0, 1_000).is_err());
        let wrong = records(PROTOCOL_VERSION, [(0, 2, 2), (0, 2, 1)]);
        assert!(measure(&wrong, 2, 2, 0, 1_000).is_err());
    }

    #[test]
    fn a_range_of_only_own_operations_is_empty_in_version_3() {
        let mut v3 = records(COMPACT_VERSION, [(0, 1, 0), (0, 2, 2)]);
        v3[0].arrivals.push(Arrival {
            from: 1,
            cursor: 2,
            ops: 1,
            at_us: 150,
        });
        assert!(measure(&v3, 2, 2, 0, 1_000).is_ok());
    }

    #[test]
    fn a_delivery_that_skips_or_repeats_offsets_fails() {
        let mut repeated = records(COMPACT_VERSION, [(0, 2, 2), (0, 2, 2)]);
        repeated[1].arrivals.push(Arrival {
            from: 1,
            cursor: 2,
            ops: 1,
            at_us: 160,
        });
        let err = measure(&repeated, 2, 2, 0, 1_000).unwrap_err();
        assert!(err.contains("1 did not continue"), "{err}");
    }

    #[test]
    fn bucket_quantiles_interpolate_within_the_window_s_buckets() {
        // Before the window: 10 observations at most 1 ms.
        let before = [
            (0.001, 10.0),
            (0.002, 10.0),
            (0.004, 10.0),
            (f64::INFINITY, 10.0),
        ];
        // In it: 50 more at most 1 ms, 40 in (1, 2] ms, 10 in (2, 4] ms.
        let after = [
            (0.001, 60.0),
            (0.002, 100.0),
            (0.004, 110.0),
            (f64::INFINITY, 110.0),
        ];
        let delta = histogram_delta(&before, &after);
        assert_eq!(
            delta,
            [
                (0.001, 50.0),
                (0.002, 90.0),
                (0.004, 100.0),
                (f64::INFINITY, 100.0)
            ]
        );
        // Rank 50 is the 1 ms bucket's last; rank 70 halfway through
        // (1, 2] ms; rank 99 nine tenths of the way through (2, 4] ms.
        assert!((bucket_quantile(&delta, 0.5) - 1.0).abs() < 1e-9);
        assert!((bucket_quantile(&delta, 0.7) - 1.5).abs() < 1e-9);
        assert!((bucket_quantile(&delta, 0.99) - 3.8).abs() < 1e-9);
        assert!(bucket_quantile(&[(f64::INFINITY, 0.0)], 0.5).is_nan());
    }
}
