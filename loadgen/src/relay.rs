//! A fresh `concord-relay` process on a loopback port with a temporary data
//! directory, plus what the load generator reads from it: `/metrics`, and
//! RSS and CPU time from `/proc`.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use test_support::http_get;

/// A running relay; killed and its data directory removed on drop.
pub(crate) struct Relay {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    data: PathBuf,
}

impl Relay {
    /// Starts `bin` on `127.0.0.1:0` with anonymous access, `args` (the
    /// scenario's) and `extra` (the user's, last, so they win), and waits
    /// (at most 30 s) until `/healthz` answers 200.
    pub(crate) fn start(bin: &Path, args: &[&str], extra: &[String]) -> Result<Relay, String> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let data =
            std::env::temp_dir().join(format!("concord-loadgen-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&data).map_err(|e| format!("data dir: {e}"))?;
        let log = std::fs::File::create(data.join("relay.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new(bin);
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--allow-anonymous",
                "--log",
                "warn",
            ])
            .arg("--data")
            .arg(&data)
            .args(args)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (key, _) in std::env::vars() {
            if key.starts_with("CONCORD_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("concord-relay listening on ") {
                        break addr.trim().parse().map_err(|e| format!("address: {e}"))?;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(data.join("relay.log")).unwrap_or_default();
                    let _ = std::fs::remove_dir_all(&data);
                    return Err(format!("relay did not report its address; log:\n{log}"));
                }
            }
        };
        let relay = Relay { child, addr, data };
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(relay.addr, "/healthz", None) {
                return Ok(relay);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("relay never became ready".into())
    }

    /// The WebSocket URL.
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    /// The value of an unlabeled metric (0 if absent).
    pub(crate) fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.addr, "/metrics", None).map_or(String::new(), |(_, body)| body);
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The cumulative buckets (upper bound in seconds, count) of a
    /// histogram, `+Inf` last (empty if absent).
    pub(crate) fn histogram(&self, name: &str) -> Vec<(f64, f64)> {
        let text = http_get(self.addr, "/metrics", None).map_or(String::new(), |(_, body)| body);
        let prefix = format!("{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect()
    }

    /// Resident set size in KiB (`VmRSS` in `/proc/PID/status`).
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU time in seconds (`/proc/PID/stat`, at 100 ticks/s,
    /// Linux's `USER_HZ` on every common architecture).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&self.child.id().to_string())
    }
}

/// CPU seconds used by this process (the load generator).
pub(crate) fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// User + system CPU seconds of `/proc/PID`.
fn cpu_seconds_of(pid: &str) -> f64 {
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        ticks as f64 / 100.0
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
