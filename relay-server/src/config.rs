//! Settings: built-in defaults, overridden by an optional TOML file, then by
//! `CONCORD_*` environment variables, then by command-line flags.
//!
//! One struct, [`ServeOptions`], is both the clap argument set (flags and
//! their environment variables) and the TOML file's shape, so the three
//! sources can never disagree on names. [`Config::resolve`] layers them and
//! checks the result.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use sync_core::room::{CompactionPolicy, RoomConfig};

/// Settings of `concord-relay serve`. Every one is optional here; the
/// defaults apply last.
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) struct ServeOptions {
    /// Address to listen on (WebSockets and HTTP on one port). Use port 0 to
    /// let the system pick; the bound address is printed on stdout.
    /// [default: 127.0.0.1:8787]
    #[arg(long, env = "CONCORD_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<String>,

    /// Directory for the SQLite database and the generated key pair.
    /// [default: ./concord-data]
    #[arg(long, env = "CONCORD_DATA", value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,

    /// Store rooms in this PostgreSQL database instead of the data
    /// directory's SQLite file, shared with other relay instances
    /// (`postgres://user:password@host:port/db`). Each room is served by one
    /// instance at a time; see docs/RELAY.md, "Several instances".
    #[arg(long, env = "CONCORD_POSTGRES", value_name = "URL")]
    pub(crate) postgres: Option<String>,

    /// With --postgres: the WebSocket URL at which the other instances reach
    /// this one (`ws://10.0.0.5:8787/v1/sync`). [default: ws://LISTEN/v1/sync,
    /// which needs a concrete listen address]
    #[arg(long, env = "CONCORD_ADVERTISE", value_name = "URL")]
    pub(crate) advertise: Option<String>,

    /// With --postgres: how long an instance's claim on a room lasts without
    /// renewal (renewed every third of it). A dead instance's rooms move to
    /// others within about this long. [default: 5s]
    #[arg(long, env = "CONCORD_LEASE_TTL", value_name = "DURATION")]
    pub(crate) lease_ttl: Option<Dur>,

    /// TOML file with any of these settings (keys are the flag names with
    /// `_` for `-`). Flags and environment variables override it.
    #[arg(long, env = "CONCORD_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,

    /// Public key(s) that sign client tokens (base64url, 32 bytes), comma
    /// separated or repeated; several keys allow rotation. Without any, the
    /// relay uses (and on first start creates) the key pair in its data dir.
    #[arg(
        long = "public-key",
        env = "CONCORD_PUBLIC_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        // base64url keys start with `-` one time in 64.
        allow_hyphen_values = true
    )]
    pub(crate) public_keys: Option<Vec<String>>,

    /// Let clients without a valid token read and write any room. For local
    /// development only; logs a warning at start.
    #[arg(long, env = "CONCORD_ALLOW_ANONYMOUS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) allow_anonymous: Option<bool>,

    /// Bearer token for the admin endpoints (`/v1/rooms/{room}/stats`).
    /// Without it those endpoints answer 401.
    #[arg(
        long,
        env = "CONCORD_ADMIN_TOKEN",
        value_name = "TOKEN",
        allow_hyphen_values = true
    )]
    pub(crate) admin_token: Option<String>,

    /// Log filter, e.g. `info` or `relay_server=debug` (RUST_LOG syntax).
    /// [default: info]
    #[arg(long, env = "CONCORD_LOG", value_name = "FILTER")]
    pub(crate) log: Option<String>,

    /// Largest WebSocket message accepted, e.g. `4MiB`. Larger frames are
    /// refused with FrameTooLarge and close 4007. [default: 4MiB]
    #[arg(long, env = "CONCORD_MAX_FRAME_BYTES", value_name = "SIZE")]
    pub(crate) max_frame_bytes: Option<Size>,

    /// Most WebSocket connections at once; more are refused with
    /// TooManyConnections and close 4009. [default: 10000]
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,

    /// Most sessions in one room at once. [default: 2000]
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS_PER_ROOM", value_name = "N")]
    pub(crate) max_connections_per_room: Option<usize>,

    /// Sustained operations per second one session may push; beyond the
    /// burst its pushes wait (and so do their acks). [default: 2000]
    #[arg(long, env = "CONCORD_OPS_PER_SECOND", value_name = "N")]
    pub(crate) ops_per_second: Option<u32>,

    /// Operations a session may push at once before the rate applies
    /// (token bucket size): enough for a client's offline backlog to go
    /// up at the relay's own pace, about half a second of its CPU.
    /// [default: 100000]
    #[arg(long, env = "CONCORD_OPS_BURST", value_name = "N")]
    pub(crate) ops_burst: Option<u32>,

    /// Time a new connection has to send its Hello; then close 4004.
    /// [default: 10s]
    #[arg(long, env = "CONCORD_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub(crate) handshake_timeout: Option<Dur>,

    /// Sessions silent this long are closed (IdleTimeout, 4006).
    /// [default: 60s]
    #[arg(long, env = "CONCORD_IDLE_TIMEOUT", value_name = "DURATION")]
    pub(crate) idle_timeout: Option<Dur>,

    /// Heartbeat interval announced to clients. [default: 15s]
    #[arg(long, env = "CONCORD_HEARTBEAT", value_name = "DURATION")]
    pub(crate) heartbeat: Option<Dur>,

    /// Frames sent to a session before it must confirm them. [default: 8]
    #[arg(long, env = "CONCORD_SEND_WINDOW", value_name = "N")]
    pub(crate) send_window: Option<usize>,

    /// A session that leaves its send window full this long is cut off
    /// (SlowConsumer, 4005); it resumes from its cursor. [default: 30s]
    #[arg(long, env = "CONCORD_SLOW_CONSUMER_TIMEOUT", value_name = "DURATION")]
    pub(crate) slow_consumer_timeout: Option<Dur>,

    /// Frames queued for one session's socket; a full queue cuts the
    /// session off as a slow consumer. [default: 64]
    #[arg(long, env = "CONCORD_OUTBOUND_QUEUE_FRAMES", value_name = "N")]
    pub(crate) outbound_queue_frames: Option<usize>,

    /// Bytes queued for one session's socket, at most. [default: 16MiB]
    #[arg(long, env = "CONCORD_OUTBOUND_QUEUE_BYTES", value_name = "SIZE")]
    pub(crate) outbound_queue_bytes: Option<Size>,

    /// A socket write that makes no progress this long drops the
    /// connection. [default: 20s]
    #[arg(long, env = "CONCORD_WRITE_TIMEOUT", value_name = "DURATION")]
    pub(crate) write_timeout: Option<Dur>,

    /// Most operations per push and per delivery. [default: 1000]
    #[arg(long, env = "CONCORD_MAX_BATCH_OPS", value_name = "N")]
    pub(crate) max_batch_ops: Option<usize>,

    /// Most bytes of operations per push and per delivery. [default: 1MiB]
    #[arg(long, env = "CONCORD_MAX_BATCH_BYTES", value_name = "SIZE")]
    pub(crate) max_batch_bytes: Option<Size>,

    /// Retention: never compact fewer log entries than this at once.
    /// [default: 1000]
    #[arg(long, env = "CONCORD_COMPACTION_MIN_OPS", value_name = "N")]
    pub(crate) compaction_min_ops: Option<u64>,

    /// Retention: keep at least this many recent log entries, so briefly
    /// offline clients resume from the log, not a snapshot. [default: 10000]
    #[arg(long, env = "CONCORD_KEEP_RECENT_OPS", value_name = "N")]
    pub(crate) keep_recent_ops: Option<u64>,

    /// Retention: once a room has a snapshot, compact only when the log
    /// entries to fold hold at least this percentage of the snapshot's bytes,
    /// so a busy room does not rewrite its snapshot many times a second; 0
    /// compacts whenever `compaction_min_ops` allows. [default: 100]
    #[arg(
        long,
        env = "CONCORD_COMPACTION_MIN_FOLD_PERCENT",
        value_name = "PERCENT"
    )]
    pub(crate) compaction_min_fold_percent: Option<u64>,

    /// Retention: compact log entries beyond this many even if a connected
    /// client still needs them. [default: 1000000]
    #[arg(long, env = "CONCORD_MAX_LOG_OPS", value_name = "N")]
    pub(crate) max_log_ops: Option<u64>,

    /// Retention: deletes older than this are collected at compaction, and
    /// operations older than that are refused as stale. [default: 30d]
    #[arg(long, env = "CONCORD_TOMBSTONE_GRACE", value_name = "DURATION")]
    pub(crate) tombstone_grace: Option<Dur>,

    /// Operations stamped further ahead of the relay's clock are refused for
    /// now (ClockAhead). [default: 60s]
    #[arg(long, env = "CONCORD_MAX_DRIFT", value_name = "DURATION")]
    pub(crate) max_drift: Option<Dur>,

    /// Rooms without sessions for this long are unloaded from memory.
    /// [default: 60s]
    #[arg(long, env = "CONCORD_ROOM_UNLOAD_AFTER", value_name = "DURATION")]
    pub(crate) room_unload_after: Option<Dur>,

    /// On SIGINT/SIGTERM, wait at most this long for writes to finish and
    /// sessions to close. [default: 10s]
    #[arg(long, env = "CONCORD_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub(crate) shutdown_timeout: Option<Dur>,
}

/// Fills every `None` of `$a` from `$b`.
macro_rules! fill {
    ($a:ident, $b:ident; $($field:ident),* $(,)?) => {
        $( if $a.$field.is_none() { $a.$field = $b.$field; } )*
    };
}

impl ServeOptions {
    /// These options, with gaps filled from `lower`.
    fn over(mut self, lower: ServeOptions) -> ServeOptions {
        let s = &mut self;
        let l = lower;
        fill!(s, l; listen, data, postgres, advertise, lease_ttl, config, public_keys, allow_anonymous, admin_token, log,
            max_frame_bytes, max_connections, max_connections_per_room, ops_per_second,
            ops_burst, handshake_timeout, idle_timeout, heartbeat, send_window,
            slow_consumer_timeout, outbound_queue_frames, outbound_queue_bytes, write_timeout,
            max_batch_ops, max_batch_bytes, compaction_min_ops, compaction_min_fold_percent,
            keep_recent_ops, max_log_ops,
            tombstone_grace, max_drift, room_unload_after, shutdown_timeout);
        self
    }
}

/// Resolved settings of a running relay.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Address to listen on.
    pub(crate) listen: String,
    /// Data directory.
    pub(crate) data: PathBuf,
    /// Shared PostgreSQL storage, if any.
    pub(crate) postgres: Option<String>,
    /// This instance's URL for the others (PostgreSQL only).
    pub(crate) advertise: Option<String>,
    /// Lifetime of a room lease (PostgreSQL only).
    pub(crate) lease_ttl: Duration,
    /// Configured token public keys (base64url); empty: use the data dir's.
    pub(crate) public_keys: Vec<String>,
    /// Anonymous access allowed.
    pub(crate) allow_anonymous: bool,
    /// Bearer token of the admin endpoints.
    pub(crate) admin_token: Option<String>,
    /// Log filter.
    pub(crate) log: String,
    /// Largest frame.
    pub(crate) max_frame_bytes: usize,
    /// Most connections in all.
    pub(crate) max_connections: usize,
    /// Most sessions per room.
    pub(crate) max_connections_per_room: usize,
    /// Sustained pushed operations per second per session.
    pub(crate) ops_per_second: u32,
    /// Token bucket size.
    pub(crate) ops_burst: u32,
    /// Time to send `Hello`.
    pub(crate) handshake_timeout: Duration,
    /// Frames queued per session.
    pub(crate) outbound_queue_frames: usize,
    /// Bytes queued per session.
    pub(crate) outbound_queue_bytes: usize,
    /// Stalled socket write limit.
    pub(crate) write_timeout: Duration,
    /// Idle rooms are unloaded after this.
    pub(crate) room_unload_after: Duration,
    /// Bound on graceful shutdown.
    pub(crate) shutdown_timeout: Duration,
    /// Settings of every room.
    pub(crate) room: RoomConfig,
}

/// Settings could not be resolved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file does not parse.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Layers flags and environment (`cli`, already merged by clap), the
    /// TOML file they name, and the defaults.
    pub(crate) fn resolve(cli: ServeOptions) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => ServeOptions::default(),
        };
        let o = cli.over(file);
        let defaults = RoomConfig::default();
        let d = |v: Option<Dur>, secs: u64| v.map_or(Duration::from_secs(secs), |d| d.0);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let max_frame_bytes = o.max_frame_bytes.map_or(4 * 1024 * 1024, |s| s.0);
        let max_batch_bytes = o.max_batch_bytes.map_or(1024 * 1024, |s| s.0);
        let max_batch_ops = o.max_batch_ops.unwrap_or(defaults.max_batch_ops);
        let send_window = o.send_window.unwrap_or(defaults.send_window);
        let outbound_queue_frames = o.outbound_queue_frames.unwrap_or(64);
        let outbound_queue_bytes = o.outbound_queue_bytes.map_or(16 * 1024 * 1024, |s| s.0);
        if max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(format!(
                "max_frame_bytes = {max_frame_bytes} is below the 1 KiB minimum"
            )));
        }
        if max_batch_bytes.saturating_mul(2).saturating_add(64 * 1024) > max_frame_bytes {
            return Err(ConfigError::Invalid(format!(
                "max_batch_bytes = {max_batch_bytes} needs max_frame_bytes of at least \
                 2 × max_batch_bytes + 64 KiB (a push's frame may exceed its payload); \
                 max_frame_bytes is {max_frame_bytes}"
            )));
        }
        if max_batch_ops == 0 || send_window == 0 || outbound_queue_frames == 0 {
            return Err(ConfigError::Invalid(
                "max_batch_ops, send_window and outbound_queue_frames must be at least 1".into(),
            ));
        }
        if outbound_queue_frames < send_window + 8 {
            return Err(ConfigError::Invalid(format!(
                "outbound_queue_frames = {outbound_queue_frames} must exceed send_window \
                 ({send_window}) by at least 8, or healthy sessions would be cut off"
            )));
        }
        let ops_burst = o.ops_burst.unwrap_or(100_000);
        if (ops_burst as usize) < max_batch_ops {
            return Err(ConfigError::Invalid(format!(
                "ops_burst = {ops_burst} is below max_batch_ops ({max_batch_ops}): \
                 a full push would always be over the rate limit"
            )));
        }
        if outbound_queue_bytes < max_frame_bytes {
            return Err(ConfigError::Invalid(format!(
                "outbound_queue_bytes = {outbound_queue_bytes} must be at least \
                 max_frame_bytes ({max_frame_bytes})"
            )));
        }
        if room_heartbeat(&o).saturating_mul(2) > d(o.idle_timeout, 60) {
            return Err(ConfigError::Invalid(format!(
                "heartbeat ({:?}) must be at most half the idle timeout ({:?}), or clients \
                 that only ping would be cut off as idle",
                room_heartbeat(&o),
                d(o.idle_timeout, 60)
            )));
        }
        let lease_ttl = d(o.lease_ttl, 5);
        if lease_ttl < Duration::from_millis(300) {
            return Err(ConfigError::Invalid(format!(
                "lease_ttl = {lease_ttl:?} is below the 300ms minimum"
            )));
        }
        let room = RoomConfig::default()
            .with_max_drift_ms(ms(d(o.max_drift, 60)))
            .with_max_batch_ops(max_batch_ops)
            .with_max_batch_bytes(max_batch_bytes)
            .with_send_window(send_window)
            .with_snapshot_chunk_bytes(defaults.snapshot_chunk_bytes.min(max_frame_bytes / 4))
            .with_heartbeat_ms(ms(d(o.heartbeat, 15)))
            .with_idle_timeout_ms(ms(d(o.idle_timeout, 60)))
            .with_slow_consumer_ms(ms(d(o.slow_consumer_timeout, 30)))
            .with_max_frame_bytes(max_frame_bytes)
            .with_compaction(
                CompactionPolicy::default()
                    .with_min_ops(o.compaction_min_ops.unwrap_or(defaults.compaction.min_ops))
                    .with_keep_recent_ops(
                        o.keep_recent_ops
                            .unwrap_or(defaults.compaction.keep_recent_ops),
                    )
                    .with_max_log_ops(o.max_log_ops.unwrap_or(defaults.compaction.max_log_ops))
                    .with_tombstone_grace_ms(
                        o.tombstone_grace
                            .map_or(defaults.compaction.tombstone_grace_ms, |g| ms(g.0)),
                    )
                    .with_min_fold_percent(
                        o.compaction_min_fold_percent
                            .unwrap_or(defaults.compaction.min_fold_percent),
                    ),
            );
        Ok(Config {
            listen: o.listen.unwrap_or_else(|| "127.0.0.1:8787".into()),
            data: o.data.unwrap_or_else(|| PathBuf::from("./concord-data")),
            postgres: o.postgres.filter(|u| !u.is_empty()),
            advertise: o.advertise.filter(|u| !u.is_empty()),
            lease_ttl,
            public_keys: o.public_keys.unwrap_or_default(),
            allow_anonymous: o.allow_anonymous.unwrap_or(false),
            admin_token: o.admin_token.filter(|t| !t.is_empty()),
            log: o.log.unwrap_or_else(|| "info".into()),
            max_frame_bytes,
            max_connections: o.max_connections.unwrap_or(10_000),
            max_connections_per_room: o.max_connections_per_room.unwrap_or(2_000),
            ops_per_second: o.ops_per_second.unwrap_or(2_000),
            ops_burst,
            handshake_timeout: d(o.handshake_timeout, 10),
            outbound_queue_frames,
            outbound_queue_bytes,
            write_timeout: d(o.write_timeout, 20),
            room_unload_after: d(o.room_unload_after, 60),
            shutdown_timeout: d(o.shutdown_timeout, 10),
            room,
        })
    }
}

/// The interval clients will actually ping at: sync-core's session never
/// pings more often than once a second, whatever the relay announces.
fn room_heartbeat(o: &ServeOptions) -> Duration {
    o.heartbeat
        .map_or(Duration::from_secs(15), |d| d.0)
        .max(Duration::from_secs(1))
}

fn read_file(path: &Path) -> Result<ServeOptions, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A duration written `500ms`, `10s`, `5m`, `1h`, `30d`, or a bare number of
/// seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (try 500ms, 10s, 5m, 1h, 30d)"))?;
        let ms = match unit.trim() {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1000),
            "m" | "min" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{s}` (use ms, s, m, h or d)"
                ));
            }
        };
        ms.filter(|&ms| ms <= MAX_DURATION_MS)
            .map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration `{s}` is too large (at most 100 years)"))
    }
}

/// Longest duration accepted (100 years), so deadlines never overflow.
const MAX_DURATION_MS: u64 = 100 * 365 * 86_400_000;

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(secs) => secs.to_string().parse().map_err(serde::de::Error::custom),
            NumOrStr::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A size in bytes written `65536`, `64KiB`, `4MiB` or `1GiB` (also `KB`,
/// `MB`, `GB` as powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) usize);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: usize = number
            .parse()
            .map_err(|_| format!("`{s}` is not a size (try 65536, 64KiB, 4MiB)"))?;
        let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "kb" => 1000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => return Err(format!("unknown size unit `{other}` in `{s}`")),
        };
        n.checked_mul(factor)
            .map(Size)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => usize::try_from(n)
                .map(Size)
                .map_err(serde::de::Error::custom),
            NumOrStr::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!("1h".parse::<Dur>(), Ok(Dur(Duration::from_secs(3600))));
        assert_eq!("250ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(250))));
        assert_eq!("7".parse::<Dur>(), Ok(Dur(Duration::from_secs(7))));
        assert!("1 fortnight".parse::<Dur>().is_err());
        assert!("".parse::<Dur>().is_err());
        assert!("99999999d".parse::<Dur>().is_err());
        assert_eq!("4MiB".parse::<Size>(), Ok(Size(4 << 20)));
        assert_eq!("100".parse::<Size>(), Ok(Size(100)));
        assert!("4 parsecs".parse::<Size>().is_err());
    }

    #[test]
    fn layers_flags_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nmax_connections = 5\nidle_timeout = \"2m\"\nmax_frame_bytes = \"8MiB\"\ncompaction_min_fold_percent = 250\n",
        )
        .unwrap();
        let cli = ServeOptions {
            config: Some(path),
            max_connections: Some(7),
            ..ServeOptions::default()
        };
        let config = Config::resolve(cli).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000");
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.room.idle_timeout_ms, 120_000);
        assert_eq!(config.max_frame_bytes, 8 << 20);
        assert_eq!(config.room.compaction.min_fold_percent, 250);
        assert_eq!(config.data, PathBuf::from("./concord-data"));
    }

    /// Shared storage comes from the file like any setting; a lease
    /// shorter than the minimum is refused.
    #[test]
    fn postgres_settings_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "postgres = \"postgres://u@db/concord\"\nadvertise = \"ws://10.0.0.5:8787/v1/sync\"\nlease_ttl = \"3s\"\n",
        )
        .unwrap();
        let config = Config::resolve(ServeOptions {
            config: Some(path),
            ..ServeOptions::default()
        })
        .unwrap();
        assert_eq!(config.postgres.as_deref(), Some("postgres://u@db/concord"));
        assert_eq!(
            config.advertise.as_deref(),
            Some("ws://10.0.0.5:8787/v1/sync")
        );
        assert_eq!(config.lease_ttl, Duration::from_secs(3));
        assert!(
            Config::resolve(ServeOptions {
                lease_ttl: Some(Dur(Duration::from_millis(100))),
                ..ServeOptions::default()
            })
            .is_err()
        );
        assert_eq!(
            Config::resolve(ServeOptions::default()).unwrap().lease_ttl,
            Duration::from_secs(5)
        );
    }

    /// A base64url key or a token may start with `-`; it is still a value.
    #[test]
    fn values_may_start_with_a_hyphen() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeOptions,
        }
        let key = "-JbBqKz3Zr0yR5f1y8s7u6v5w4x3y2z1a0b9c8d7e6f";
        let cli = <Cli as clap::Parser>::try_parse_from([
            "concord-relay",
            "--public-key",
            key,
            "--admin-token",
            "-secret",
        ])
        .unwrap();
        assert_eq!(cli.serve.public_keys, Some(vec![key.to_owned()]));
        assert_eq!(cli.serve.admin_token.as_deref(), Some("-secret"));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "max_conections = 5\n").unwrap();
        let cli = ServeOptions {
            config: Some(path),
            ..ServeOptions::default()
        };
        let err = Config::resolve(cli).unwrap_err().to_string();
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn inconsistent_limits_are_refused() {
        let cli = ServeOptions {
            max_frame_bytes: Some(Size(1 << 20)),
            ..ServeOptions::default()
        };
        assert!(Config::resolve(cli).is_err());
    }
}
