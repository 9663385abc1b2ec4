//! Test and benchmark scaffolding shared by Concord's crates: the real
//! `concord-relay` binary run as a child process on a loopback port, with
//! its data directory, log, token minting and a small HTTP GET.
//!
//! Tests that need a relay start the binary the users run rather than an
//! in-process copy, so what they check is what ships. Every helper panics
//! with the relay's log when the relay misbehaves: these are test helpers,
//! and a clear panic is the test failure.
//!
//! ```no_run
//! use std::path::Path;
//! use test_support::RelayProcess;
//!
//! let relay = RelayProcess::start(
//!     Path::new("target/debug/concord-relay"),
//!     Path::new("/tmp/relay-data"),
//!     "127.0.0.1:0",
//!     &[],
//! );
//! let token = relay.token("team", "rw", "1h");
//! println!("{} {token}", relay.url());
//! ```

#[cfg(unix)]
pub mod power_cut;

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a relay may take to report its address and become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `concord-relay`, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    /// The file its stderr (the log) goes to.
    pub log: PathBuf,
}

impl RelayProcess {
    /// Starts `bin` listening on `listen` (`127.0.0.1:0`: a port the OS
    /// picks) with `data` as its data directory and extra `args`, and waits
    /// until it answers `/healthz`.
    pub fn start(bin: &Path, data: &Path, listen: &str, args: &[&str]) -> RelayProcess {
        RelayProcess::start_with_env(bin, data, listen, args, &[])
    }

    /// Like [`RelayProcess::start`], with extra environment variables. The
    /// caller's own `CONCORD_*` variables are removed first (except
    /// `CONCORD_LOG`), so a developer's shell cannot change a test.
    /// [`RelayProcess::restart`] does not repeat `env`.
    pub fn start_with_env(
        bin: &Path,
        data: &Path,
        listen: &str,
        args: &[&str],
        env: &[(&str, &OsStr)],
    ) -> RelayProcess {
        std::fs::create_dir_all(data).expect("relay data dir");
        let log = data.join(format!("relay-{}.log", unix_ms()));
        let log_file = std::fs::File::create(&log).expect("relay log file");
        let mut command = Command::new(bin);
        command
            .args(["--listen", listen, "--data"])
            .arg(data)
            .args(args)
            .env_remove("RUST_LOG")
            .env("CONCORD_LOG", "info,concord_relay=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CONCORD_") && key != "CONCORD_LOG" {
                command.env_remove(&*key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let addr = match read_listening_line(&mut child) {
            Ok(addr) => addr,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{why}; relay log:\n{}", read_log(&log));
            }
        };
        let relay = RelayProcess {
            child: Some(child),
            bin: bin.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            addr,
            data: data.to_owned(),
            log,
        };
        relay.wait_ready();
        relay
    }

    /// The same binary, data and arguments again, on the same port (after
    /// this one was killed or stopped).
    pub fn restart(&mut self) -> RelayProcess {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        RelayProcess::start(&self.bin, &self.data, &self.addr.to_string(), &args)
    }

    /// The sync endpoint, `ws://ADDR/v1/sync`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: no chance to clean up, like a power cut for the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (a name such as `TERM`) with `kill(1)` and waits, up to
    /// 20 s, for the process to exit.
    pub fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("the relay is running");
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the relay") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the relay did not exit after SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Mints a token for `room` with `rights` (`r` or `rw`) valid for `ttl`
    /// (`1h`, `30s`) from this relay's key, as `concord-relay token` does.
    pub fn token(&self, room: &str, rights: &str, ttl: &str) -> String {
        mint_token(&self.bin, &self.data, room, rights, ttl, &[])
    }

    /// Polls `/healthz` until it answers 200.
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(self.addr, "/healthz", None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the relay never became ready; log:\n{}", self.log_text());
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `BIN token --room ROOM --rights RIGHTS --ttl TTL --data DATA EXTRA…`
/// and returns the token it prints.
pub fn mint_token(
    bin: &Path,
    data: &Path,
    room: &str,
    rights: &str,
    ttl: &str,
    extra: &[&str],
) -> String {
    let out = Command::new(bin)
        .args([
            "token", "--room", room, "--rights", rights, "--ttl", ttl, "--data",
        ])
        .arg(data)
        .args(extra)
        .output()
        .expect("running concord-relay token");
    assert!(
        out.status.success(),
        "concord-relay token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("the token is UTF-8")
        .trim()
        .to_owned()
}

/// A blocking HTTP/1.1 GET with an optional bearer token: `(status, body)`,
/// or `None` when the connection or the response fails.
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

/// The payload of a chunked body (chunk extensions and trailers ignored).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits for the relay's first stdout line, `concord-relay listening on
/// ADDR` (docs/RELAY.md promises it comes first, even on a first start
/// that creates a key), and keeps draining stdout so the relay never
/// blocks on a full pipe.
fn read_listening_line(child: &mut Child) -> Result<SocketAddr, String> {
    let stdout = child
        .stdout
        .take()
        .ok_or("the relay's stdout is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| "the relay did not report its address".to_owned())?;
    let addr = first
        .strip_prefix("concord-relay listening on ")
        .ok_or_else(|| format!("the relay's first stdout line is {first:?}"))?;
    addr.trim()
        .parse()
        .map_err(|e| format!("the relay reported address {addr:?}: {e}"))
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(dechunk("zz\r\n"), "");
    }
}
