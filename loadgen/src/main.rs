//! `concord-loadgen`: a load generator for `concord-relay`.
//!
//! It starts a fresh relay (the binary named by `--relay`) on `127.0.0.1`
//! with a temporary data directory for each scenario, drives clients against
//! it over real WebSockets on loopback — the SDK's `Database` on
//! sync-client's host loop ([`client`]), and protocol-only writers that
//! offer load without a replica ([`light`]) — and prints
//! Markdown tables. Every scenario is bounded in sessions and in time, and
//! the relay is killed (its data removed) when the scenario ends.
//!
//! ```sh
//! cargo build --release -p relay-server -p loadgen
//! target/release/concord-loadgen --relay target/release/concord-relay [--only fanout|receivers|scale|cluster|initial|durability|synced] [--seconds 10] [--sessions 10000] [--relay-arg FLAG]... [--writers WxR]
//! ```
//!
//! `--writers 1x100` runs the receivers scenario's room with that load only
//! (W writers of R ops/s each), light enough to count the relay's
//! instructions per frame under callgrind.
//!
//! Each `--relay-arg` passes one more argument to every relay started, after
//! the scenario's own (so `--relay-arg --compaction-min-ops --relay-arg 100000`
//! overrides a default). With `LOADGEN_TRACE=1` the fan-out scenario also
//! prints its latency in 20 slices of the paced phase (to see queues build).
//!
//! `cargo xtask bench` runs it after the other benchmarks.

mod client;
mod cluster;
mod light;
mod receivers;
mod relay;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Command-line settings.
pub(crate) struct Settings {
    /// The relay binary to start.
    pub(crate) relay: PathBuf,
    /// Run only this scenario.
    pub(crate) only: Option<String>,
    /// Length of each measured window.
    pub(crate) window: Duration,
    /// Sessions for the scale scenario.
    pub(crate) idle_sessions: usize,
    /// Extra flags for every relay started (`--relay-arg`, repeatable).
    pub(crate) relay_args: Vec<String>,
    /// The receivers scenario's one case instead of its two
    /// (`--writers W×R`: W writers of R ops/s each), e.g. a load light
    /// enough for a relay under callgrind.
    pub(crate) writers: Option<(usize, u64)>,
}

/// Usage text.
const USAGE: &str = "usage: concord-loadgen --relay PATH [--only fanout|receivers|scale|cluster|initial|durability|synced] [--seconds N] [--sessions N] [--relay-arg FLAG]... [--wire 2|3] [--writers WxR]";

fn parse() -> Result<Settings, String> {
    let mut relay = None;
    let mut only = None;
    let mut window = Duration::from_secs(10);
    let mut idle_sessions = 10_000;
    let mut relay_args = Vec::new();
    let mut writers = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--relay" => relay = Some(PathBuf::from(value()?)),
            "--only" => only = Some(value()?),
            "--seconds" => {
                let s: u64 = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
                window = Duration::from_secs(s.clamp(1, 120));
            }
            "--sessions" => {
                let n: usize = value()?.parse().map_err(|e| format!("--sessions: {e}"))?;
                idle_sessions = n.clamp(1, 20_000);
            }
            "--relay-arg" => relay_args.push(value()?),
            "--writers" => writers = Some(parse_writers(&value()?)?),
            "--wire" => {
                let v: u8 = value()?.parse().map_err(|e| format!("--wire: {e}"))?;
                light::set_newest_version(v)?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Settings {
        relay: relay.ok_or(USAGE)?,
        only,
        window,
        idle_sessions,
        relay_args,
        writers,
    })
}

/// `W×R` or `WxR`: W writers (1 to 100) of R operations per second each (1 to 1,000).
fn parse_writers(text: &str) -> Result<(usize, u64), String> {
    let bad = || format!("--writers: expected WxR (e.g. 1x100), got {text:?}");
    let (w, r) = text.split_once(['x', '×']).ok_or_else(bad)?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    let r: u64 = r.trim().parse().map_err(|_| bad())?;
    if !(1..=100).contains(&w) || !(1..=1_000).contains(&r) {
        return Err(bad());
    }
    Ok((w, r))
}

fn main() -> ExitCode {
    let settings = match parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scenarios::run(&settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises this process's open-file limit to its hard limit (one socket per
/// session).
fn raise_fd_limit() {
    #[cfg(unix)]
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_writers;

    #[test]
    fn writers_parse_within_bounds() {
        assert_eq!(parse_writers("1x100"), Ok((1, 100)));
        assert_eq!(parse_writers("10×1000"), Ok((10, 1_000)));
        for bad in ["", "1", "0x10", "101x1", "1x0", "1x1001", "ax1"] {
            assert!(parse_writers(bad).is_err(), "{bad}");
        }
    }
}
