//! A throwaway PostgreSQL server for tests: Debian's `postgresql` package
//! (installed with apt-get when missing, once, under a file lock), a fresh
//! data directory, loopback on a port the test picked, stopped on drop.
//! Run as root, the server runs as the `postgres` user.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of it"
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// A running (or stopped) test server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    fsync: bool,
}

fn sh(command: &mut Command) -> std::process::Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// The newest installed server's bin directory, installing it if needed.
fn server_bin() -> PathBuf {
    let find = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(bin) = find() {
        return bin;
    }
    let out = sh(Command::new("flock").args([
        "/tmp/concord-postgres-install.lock",
        "sh",
        "-c",
        "ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
         (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql)",
    ]));
    assert!(
        out.status.success(),
        "installing PostgreSQL failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    find().expect("PostgreSQL installed but initdb not found under /usr/lib/postgresql")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("picking a port")
        .port()
}

impl Postgres {
    /// Installs if needed, initialises a data directory, starts the server
    /// with `fsync=off` (tests kill processes, not machines).
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// [`Postgres::start`] with PostgreSQL's default `fsync=on`, as a
    /// production server runs (for benchmarks).
    pub fn start_durable() -> Postgres {
        Postgres::start_with(true)
    }

    fn start_with(fsync: bool) -> Postgres {
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let as_postgres = sh(Command::new("id").arg("-u")).stdout.trim_ascii() == b"0";
        if as_postgres {
            let out = sh(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path()));
            assert!(out.status.success(), "chown failed");
        }
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
            as_postgres,
            fsync,
        };
        let data = pg.data();
        let out = sh(pg
            .tool("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_again();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// The connection URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) server again on the same port.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=200",
            self.port,
            self.dir.path().display(),
            if self.fsync { "on" } else { "off" }
        );
        let out = sh(self
            .tool("pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("log"))
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "start"]));
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stops the server (`fast`: connections are cut, commits kept).
    pub fn stop(&self) {
        let out = sh(self
            .tool("pg_ctl")
            .args(["-w", "-t", "60", "-m", "fast", "-D"])
            .arg(self.data())
            .arg("stop"));
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs one SQL statement with psql and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = sh(Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .args(["-c", sql]));
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .args(["-w", "-t", "30", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}
