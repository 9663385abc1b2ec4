//! Counters, gauges and fixed-bucket histograms kept in atomics, rendered
//! as Prometheus text for `GET /metrics`.
//!
//! No metrics library: a handful of atomics covers what the relay reports,
//! and the exposition format is a few lines of text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sync_core::protocol::{self, ErrorCode, MessageKind};

/// Every metric the relay exposes.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// WebSocket connections open now.
    pub(crate) connections_open: Gauge,
    /// WebSocket connections accepted since start.
    pub(crate) connections_total: AtomicU64,
    /// Sessions joined to a room now.
    pub(crate) sessions_joined: Gauge,
    /// Rooms loaded in memory now.
    pub(crate) rooms_loaded: Gauge,
    /// Operations received in pushes.
    pub(crate) ops_in: AtomicU64,
    /// Operations appended to room logs (durably).
    pub(crate) ops_stored: AtomicU64,
    /// Operations delivered: sent in `Deliver` frames to clients that did
    /// not hold them (not a client's own riding along in version 3).
    pub(crate) ops_out: AtomicU64,
    /// Binary frames received.
    pub(crate) frames_in: AtomicU64,
    /// Frames sent.
    pub(crate) frames_out: AtomicU64,
    /// Bytes of frames received.
    pub(crate) bytes_in: AtomicU64,
    /// Bytes of frames sent.
    pub(crate) bytes_out: AtomicU64,
    /// SQLite transactions committed by the writer (one fsync each).
    pub(crate) commits: AtomicU64,
    /// Room persist requests made durable (several per commit under load).
    pub(crate) commit_requests: AtomicU64,
    /// Promised follow-up requests the writer stopped waiting for.
    pub(crate) follow_ups_missed: AtomicU64,
    /// Compactions installed.
    pub(crate) compactions: AtomicU64,
    /// Compactions that failed.
    pub(crate) compaction_failures: AtomicU64,
    /// Time from receiving a push to sending its acknowledgement.
    pub(crate) ack_latency: Histogram,
    /// Time of one group commit (write + fsync).
    pub(crate) commit_latency: Histogram,
    /// Time from a room seeing its commit complete to queueing each
    /// `Deliver` that commit released (the frame's place in the fan-out).
    pub(crate) fanout_latency: Histogram,
    /// Time from queueing a `Deliver` to its session to the socket write
    /// returning (the writer task's wake-up, then the write).
    pub(crate) send_latency: Histogram,
    /// Refused handshakes, by reason.
    auth_refused: Labeled,
    /// Errors, by kind: error frames the relay sent (by `ErrorCode`) and
    /// failures of its own (handshake timeouts, storage, room loading).
    errors: Labeled,
}

impl Metrics {
    /// Counts a refused handshake.
    pub(crate) fn auth_refused(&self, reason: &'static str) {
        self.auth_refused.inc(reason);
    }

    /// Counts an error of some kind.
    pub(crate) fn error(&self, kind: &'static str) {
        self.errors.inc(kind);
    }

    /// Counts a frame about to be written to a socket.
    pub(crate) fn frame_out(&self, frame: &[u8]) {
        self.frames_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        // Operations delivered are counted by the room as it builds the
        // frames (`Room::take_ops_delivered`): a version-3 `Deliver` also
        // carries the receiver's own operations, which its count includes.
        if protocol::peek_kind(frame) == Some(MessageKind::Error) {
            if let Ok(sync_core::protocol::Message::Error { code, .. }) =
                sync_core::protocol::decode(frame, usize::MAX)
            {
                self.error(error_code_name(code));
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "concord_connections",
            "WebSocket connections open.",
            self.connections_open.get(),
        );
        counter(
            &mut out,
            "concord_connections_accepted_total",
            "WebSocket connections accepted since start.",
            load(&self.connections_total),
        );
        gauge(
            &mut out,
            "concord_sessions",
            "Sessions joined to a room.",
            self.sessions_joined.get(),
        );
        gauge(
            &mut out,
            "concord_rooms",
            "Rooms loaded in memory.",
            self.rooms_loaded.get(),
        );
        counter(
            &mut out,
            "concord_ops_in_total",
            "Operations received in pushes.",
            load(&self.ops_in),
        );
        counter(
            &mut out,
            "concord_ops_stored_total",
            "Operations appended durably to room logs.",
            load(&self.ops_stored),
        );
        counter(
            &mut out,
            "concord_ops_out_total",
            "Operations delivered to clients that did not hold them (a client's own operations riding along in a version-3 Deliver are not counted).",
            load(&self.ops_out),
        );
        counter(
            &mut out,
            "concord_frames_in_total",
            "Binary frames received.",
            load(&self.frames_in),
        );
        counter(
            &mut out,
            "concord_frames_out_total",
            "Frames sent.",
            load(&self.frames_out),
        );
        counter(
            &mut out,
            "concord_bytes_in_total",
            "Bytes of frames received.",
            load(&self.bytes_in),
        );
        counter(
            &mut out,
            "concord_bytes_out_total",
            "Bytes of frames sent.",
            load(&self.bytes_out),
        );
        counter(
            &mut out,
            "concord_store_commits_total",
            "SQLite transactions committed (one fsync each).",
            load(&self.commits),
        );
        counter(
            &mut out,
            "concord_store_commit_requests_total",
            "Room persist requests made durable; divided by commits it gives the group-commit factor.",
            load(&self.commit_requests),
        );
        counter(
            &mut out,
            "concord_store_follow_ups_missed_total",
            "Follow-up requests rooms promised that the writer gave up waiting for (they joined a later group).",
            load(&self.follow_ups_missed),
        );
        counter(
            &mut out,
            "concord_compactions_total",
            "Room compactions installed.",
            load(&self.compactions),
        );
        counter(
            &mut out,
            "concord_compaction_failures_total",
            "Room compactions that failed.",
            load(&self.compaction_failures),
        );
        self.ack_latency.render(
            &mut out,
            "concord_ack_latency_seconds",
            "Time from receiving a push to sending its acknowledgement (includes the fsync).",
        );
        self.commit_latency.render(
            &mut out,
            "concord_store_commit_seconds",
            "Time of one group commit: write and fsync.",
        );
        self.fanout_latency.render(
            &mut out,
            "concord_fanout_seconds",
            "Time from a room seeing its commit complete to queueing each Deliver it released.",
        );
        self.send_latency.render(
            &mut out,
            "concord_send_seconds",
            "Time from queueing a Deliver to a session to its socket write returning.",
        );
        self.auth_refused.render(
            &mut out,
            "concord_auth_refused_total",
            "Handshakes refused, by reason.",
            "reason",
        );
        self.errors.render(
            &mut out,
            "concord_errors_total",
            "Errors by kind: error frames sent (by protocol error code) and relay failures.",
            "kind",
        );
        out
    }
}

/// A gauge that goes up and down.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes one.
    pub(crate) fn dec(&self) {
        // Saturating, so a bookkeeping slip can never wrap to 2^64.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// The current value.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters with one label, for rare events.
#[derive(Debug, Default)]
struct Labeled(Mutex<BTreeMap<&'static str, u64>>);

impl Labeled {
    fn inc(&self, label: &'static str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(label).or_insert(0) += 1;
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        if let Ok(map) = self.0.lock() {
            for (value, count) in map.iter() {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
            }
        }
    }
}

/// Upper bounds of the latency buckets, in seconds: fine below 10 ms,
/// where the parts of a delivery's latency are read apart.
const BUCKETS: [f64; 21] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram with fixed buckets.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub(crate) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            if let Some(c) = self.counts.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Number of observations.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// A stable label for an error code.
pub(crate) fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Malformed => "Malformed",
        ErrorCode::UnsupportedVersion => "UnsupportedVersion",
        ErrorCode::Unauthorized => "Unauthorized",
        ErrorCode::Forbidden => "Forbidden",
        ErrorCode::ReadOnly => "ReadOnly",
        ErrorCode::ClockAhead => "ClockAhead",
        ErrorCode::Stale => "Stale",
        ErrorCode::InvalidOp => "InvalidOp",
        ErrorCode::BatchTooLarge => "BatchTooLarge",
        ErrorCode::FrameTooLarge => "FrameTooLarge",
        ErrorCode::RateLimited => "RateLimited",
        ErrorCode::TooManyConnections => "TooManyConnections",
        ErrorCode::SlowConsumer => "SlowConsumer",
        ErrorCode::IdleTimeout => "IdleTimeout",
        ErrorCode::Superseded => "Superseded",
        ErrorCode::GoingAway => "GoingAway",
        ErrorCode::Internal => "Internal",
        ErrorCode::InvalidRoom => "InvalidRoom",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = Metrics::default();
        m.ack_latency.observe(Duration::from_micros(300));
        m.ack_latency.observe(Duration::from_millis(3));
        m.error("Malformed");
        let text = m.render();
        assert!(text.contains("concord_ack_latency_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("concord_ack_latency_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("concord_ack_latency_seconds_count 2"));
        assert!(text.contains("concord_errors_total{kind=\"Malformed\"} 1"));
    }
}
