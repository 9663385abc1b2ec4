//! `concord-relay`: the self-hosted Concord relay.
//!
//! Sockets, storage, auth, HTTP and limits around `sync_core::room::Room`;
//! no sync logic of its own. Modules, one job each:
//!
//! - [`config`]: settings from defaults, a TOML file, `CONCORD_*` variables and flags.
//! - [`auth`]: Ed25519-signed tokens: claims, minting, verification, key files.
//! - [`storage`]: the one storage interface ([`storage::Backend`]) and its two backends:
//! - [`store`]: SQLite (WAL, `synchronous=FULL`) with a group-committing writer thread.
//! - [`pg_store`]: PostgreSQL shared by several instances: room leases with fencing tokens.
//! - [`forward`]: sessions of a room another instance owns, relayed to the owner.
//! - [`write_queue`]: the rooms' queue to that writer, and the handshake that lets a room's
//!   next write join the next group.
//! - [`room_host`]: one task per room driving `Room`, releasing frames only after durability.
//! - [`peer`]: a connection's bounded outbound queue.
//! - [`connection`]: WebSocket handshake, token check, reader and writer.
//! - [`http`]: `/healthz`, `/metrics`, `/v1/rooms/{room}/stats`, the WebSocket route.
//! - [`metrics`]: atomics and histograms rendered as Prometheus text.
//! - [`server`]: start-up and graceful shutdown.
//!
//! `docs/RELAY.md` is the operator's guide.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod auth;
mod config;
mod connection;
mod forward;
mod http;
mod metrics;
mod peer;
mod pg_store;
mod room_host;
mod server;
mod storage;
#[cfg(test)]
mod storage_conformance;
mod store;
mod upgrade;
mod write_queue;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sync_core::ReplicaId;

use crate::auth::{Claims, Rights};
use crate::config::{Config, Dur, ServeOptions};

/// The self-hosted Concord relay: WebSocket sync, SQLite storage, signed
/// tokens, limits and metrics on one port.
///
/// With no arguments it serves on 127.0.0.1:8787 and stores into
/// ./concord-data. Every setting can also come from a TOML file (--config)
/// or a CONCORD_* environment variable; flags win over variables, variables
/// over the file, the file over the defaults.
#[derive(Debug, Parser)]
#[command(
    name = "concord-relay",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: ServeOptions,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing would only obscure clap's derive"
)]
enum Command {
    /// Run the relay (the default when no command is given).
    Serve(ServeOptions),
    /// Write a new token signing key pair (concord-relay.key, concord-relay.pub).
    Keygen {
        /// Directory to write the key pair into.
        #[arg(long, value_name = "DIR", default_value = "./concord-data")]
        out: PathBuf,
        /// Replace an existing key pair (tokens signed by the old key stop working).
        #[arg(long)]
        force: bool,
    },
    /// Mint an access token for one room (for development and scripts).
    Token {
        /// The room the token opens.
        #[arg(long)]
        room: String,
        /// What the token allows: `r` (read) or `rw` (read and write).
        #[arg(long, default_value = "rw", value_parser = parse_rights)]
        rights: Rights,
        /// How long the token is valid, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: Dur,
        /// Only this replica may use the token (16 hex digits, as printed by clients).
        #[arg(long, value_name = "HEX")]
        replica: Option<String>,
        /// Secret key file [default: DATA/concord-relay.key].
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Data directory whose key to use when --key is not given.
        #[arg(
            long,
            value_name = "DIR",
            env = "CONCORD_DATA",
            default_value = "./concord-data"
        )]
        data: PathBuf,
    },
}

fn parse_rights(s: &str) -> Result<Rights, String> {
    match s.to_ascii_lowercase().as_str() {
        "r" | "read" | "ro" | "read-only" => Ok(Rights::Read),
        "rw" | "read-write" | "write" => Ok(Rights::ReadWrite),
        other => Err(format!("`{other}` is not a right; use `r` or `rw`")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(options)) => serve(options),
        Some(Command::Keygen { out, force }) => keygen(&out, force),
        Some(Command::Token {
            room,
            rights,
            ttl,
            replica,
            key,
            data,
        }) => token(room, rights, ttl.0, replica, key, data),
    }
}

fn serve(options: ServeOptions) -> ExitCode {
    let config = match Config::resolve(options) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(server::EXIT_CONFIG);
        }
    };
    init_tracing(&config.log);
    // Room tasks get a runtime of their own. On the sockets' runtime a room
    // woken by its finished commit (from the storage thread, so through
    // tokio's global queue) waited behind the reader and writer tasks queued
    // per worker, and the storage writer waits for that room before its next
    // group commit. Here an idle worker thread takes it at once.
    let (runtime, room_runtime) = match (runtime("concord-relay"), runtime("concord-room")) {
        (Ok(runtime), Ok(room_runtime)) => (runtime, room_runtime),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(server::run(config, room_runtime.handle().clone()));
    runtime.shutdown_timeout(Duration::from_secs(2));
    room_runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

/// A multi-threaded runtime whose threads carry `name`.
fn runtime(name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()
}

fn init_tracing(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn keygen(out: &std::path::Path, force: bool) -> ExitCode {
    let written = auth::generate().and_then(|key| {
        let paths = auth::write_key_pair(out, &key, force)?;
        Ok((key, paths))
    });
    match written {
        Ok((key, (secret, public))) => {
            println!("secret key: {}", secret.display());
            println!("public key: {}", public.display());
            println!("{}", auth::public_key_text(&key.verifying_key()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(server::EXIT_CONFIG)
        }
    }
}

fn token(
    room: String,
    rights: Rights,
    ttl: Duration,
    replica: Option<String>,
    key: Option<PathBuf>,
    data: PathBuf,
) -> ExitCode {
    if !connection::valid_room_name(&room) {
        eprintln!("error: room names are 1 to 256 bytes without control characters");
        return ExitCode::from(server::EXIT_CONFIG);
    }
    let replica = match replica.map(|r| r.parse::<ReplicaId>()) {
        None => None,
        Some(Ok(id)) => Some(id.0),
        Some(Err(e)) => {
            eprintln!("error: --replica must be hexadecimal: {e}");
            return ExitCode::from(server::EXIT_CONFIG);
        }
    };
    let path = key.unwrap_or_else(|| data.join(auth::SECRET_KEY_FILE));
    let signing = match auth::read_secret_key(&path) {
        Ok(key) => key,
        Err(e) => {
            eprintln!(
                "error: {e}\n(create a key with `concord-relay keygen`, or start the relay once)"
            );
            return ExitCode::from(server::EXIT_CONFIG);
        }
    };
    let expires_at = (room_host::wall_clock().unix_ms() / 1000).saturating_add(ttl.as_secs());
    let claims = Claims {
        room,
        rights,
        expires_at,
        replica,
    };
    match auth::mint(&signing, &claims) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot encode the token: {e}");
            ExitCode::FAILURE
        }
    }
}
