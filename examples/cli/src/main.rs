//! `concord`: inspect and drive a Concord database from a shell.
//!
//! ```text
//! concord --data DIR [--relay URL --room ROOM --token TOKEN] put COLLECTION ID JSON_OBJECT
//! concord --data DIR [...] get COLLECTION ID
//! concord --data DIR [...] list COLLECTION
//! concord --data DIR [...] delete COLLECTION ID
//! concord --data DIR --relay URL --room ROOM --token TOKEN sync
//! concord --data DIR [...] watch [COLLECTION]
//! concord --data DIR [...] status
//! ```
//!
//! Exit codes: 0 done; 1 the document does not exist; 2 bad input or an
//! error (the message names the cause); 3 the relay did not acknowledge in
//! time (the write is kept locally and syncs next time).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::json;
use sync_ffi::{Change, Connection, Database, Error, ListOptions, Options, RelayOptions, Value};

/// Inspect and drive a Concord database.
#[derive(Parser, Debug)]
#[command(name = "concord", version, about)]
struct Cli {
    /// The database directory (created if needed).
    #[arg(long, env = "CONCORD_DATA")]
    data: PathBuf,
    /// The relay's sync URL, e.g. ws://127.0.0.1:8787/v1/sync.
    #[arg(long, env = "CONCORD_RELAY")]
    relay: Option<String>,
    /// The room to sync with.
    #[arg(long, env = "CONCORD_ROOM")]
    room: Option<String>,
    /// An access token for the room.
    #[arg(long, env = "CONCORD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long to wait for the relay, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes the fields of a JSON object to a document (other fields are kept).
    Put {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The fields, as a JSON object.
        json: String,
    },
    /// Prints a document's fields as one JSON object.
    Get {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Prints one JSON line per document: {"id", "fields", "rev"}.
    List {
        /// The collection.
        collection: String,
    },
    /// Deletes a document.
    Delete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Pushes everything pending and pulls until caught up.
    Sync,
    /// Prints each change as a JSON line until interrupted.
    Watch {
        /// Only this collection.
        collection: Option<String>,
    },
    /// Prints the replica id, pending writes, cursor, lag and connection.
    Status,
}

/// A failure: what to print and the exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(2, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("concord: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let relay = match (&cli.relay, &cli.room, &cli.token) {
        (Some(url), Some(room), Some(token)) => Some(RelayOptions::new(url, room, token)),
        (None, None, None) | (None, _, _) => None,
        (Some(_), _, _) => {
            return Err(Failure::new(
                2,
                "--relay needs --room and --token (or CONCORD_ROOM and CONCORD_TOKEN)",
            ));
        }
    };
    let needs_relay = matches!(cli.command, Command::Sync | Command::Watch { .. });
    if needs_relay && relay.is_none() {
        return Err(Failure::new(
            2,
            "this command needs --relay, --room and --token",
        ));
    }
    std::fs::create_dir_all(&cli.data).map_err(|e| {
        Failure::new(
            2,
            format!(
                "cannot create the data directory {}: {e}",
                cli.data.display()
            ),
        )
    })?;
    let options = match relay {
        Some(relay) => Options::with_relay(relay),
        None => Options::local(),
    };
    let syncing = options.relay.is_some();
    let db = sync_ffi::open(cli.data.join("concord.db"), options)?;
    let timeout = Duration::from_secs(cli.timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(2, format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let result = command(&db, cli.command, syncing, timeout).await;
        // Everything applied (remote changes included) is stored before exit.
        db.close().await;
        result
    })
}

async fn command(
    db: &Database,
    command: Command,
    syncing: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    match command {
        Command::Put {
            collection,
            id,
            json,
        } => {
            let fields = parse_fields(&json)?;
            db.collection(&collection).put(&id, fields).await?;
            if syncing {
                acknowledged(db, timeout).await?;
            }
        }
        Command::Get { collection, id } => {
            if syncing {
                caught_up(db, timeout).await?;
            }
            let doc = db
                .collection(&collection)
                .get(&id)
                .ok_or_else(|| Failure::new(1, format!("{collection}/{id} does not exist")))?;
            println!("{}", fields_json(&doc.fields)?);
        }
        Command::List { collection } => {
            if syncing {
                caught_up(db, timeout).await?;
            }
            for doc in db.collection(&collection).list(&ListOptions::default()) {
                let line = json!({
                    "id": doc.id,
                    "fields": fields_json(&doc.fields)?,
                    "rev": doc.revision.to_string(),
                });
                println!("{line}");
            }
        }
        Command::Delete { collection, id } => {
            db.collection(&collection).delete(&id).await?;
            if syncing {
                acknowledged(db, timeout).await?;
            }
        }
        Command::Sync => {
            acknowledged(db, timeout).await?;
            caught_up(db, timeout).await?;
        }
        Command::Watch { collection } => watch(db, collection, timeout).await?,
        Command::Status => {
            if syncing {
                // Give the relay a moment to answer, so `connected` means something.
                let _ = tokio::time::timeout(timeout, online(db)).await;
            }
            let status = db.status();
            let line = json!({
                "replica": db.replica_id().to_string(),
                "pending": status.pending_writes,
                "cursor": status.cursor,
                "lag": status.lag,
                "connected": status.connection == Connection::Online,
                "last_error": status.last_error,
            });
            println!("{line}");
        }
    }
    Ok(())
}

fn parse_fields(text: &str) -> Result<Vec<(String, Value)>, Failure> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Failure::new(2, format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(map) = json else {
        return Err(Failure::new(
            2,
            "the fields must be a JSON object, e.g. '{\"title\":\"milk\"}'",
        ));
    };
    map.into_iter()
        .map(|(name, value)| {
            let value = Value::from_json(&value)
                .map_err(|e| Failure::new(2, format!("field {name:?}: {e}")))?;
            Ok((name, value))
        })
        .collect()
}

fn fields_json(fields: &sync_ffi::Fields) -> Result<serde_json::Value, Failure> {
    let mut map = serde_json::Map::new();
    for (name, value) in fields {
        let json = value
            .to_json()
            .map_err(|e| Failure::new(2, format!("field {name:?} has no JSON form: {e}")))?;
        map.insert(name.clone(), json);
    }
    Ok(serde_json::Value::Object(map))
}

/// Waits until the relay acknowledged every local write.
async fn acknowledged(db: &Database, timeout: Duration) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, db.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(not_in_time(db, timeout)),
    }
}

/// Waits until joined, every local write acknowledged, and every room
/// operation the relay had at join time applied here.
async fn caught_up(db: &Database, timeout: Duration) -> Result<(), Failure> {
    let wait = async {
        let mut statuses = db.status_changes();
        while let Some(status) = statuses.next().await {
            if status.connection == Connection::Online
                && status.lag == 0
                && status.pending_writes == 0
            {
                return Ok(());
            }
            if let (Connection::Offline, Some(error)) = (status.connection, &status.last_error) {
                return Err(Failure::new(2, format!("cannot sync: {error}")));
            }
        }
        Err(Failure::new(2, "the database closed"))
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result,
        Err(_) => Err(not_in_time(db, timeout)),
    }
}

async fn online(db: &Database) {
    let mut statuses = db.status_changes();
    while let Some(status) = statuses.next().await {
        if status.connection == Connection::Online || status.connection == Connection::Offline {
            return;
        }
    }
}

fn not_in_time(db: &Database, timeout: Duration) -> Failure {
    let status = db.status();
    let cause = status
        .last_error
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default();
    Failure::new(
        3,
        format!(
            "the relay did not confirm within {} s{cause}; {} write(s) are kept locally and sync next time",
            timeout.as_secs(),
            status.pending_writes
        ),
    )
}

async fn watch(
    db: &Database,
    collection: Option<String>,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut changes = match &collection {
        Some(c) => db.collection(c).subscribe(),
        None => db.subscribe(),
    };
    caught_up(db, timeout).await?;
    let mut statuses = db.status_changes();
    loop {
        tokio::select! {
            change = changes.next() => {
                let Some(change) = change else { return Ok(()) };
                print_change(db, &change)?;
            }
            status = statuses.next() => {
                let Some(status) = status else { return Ok(()) };
                if let (Connection::Offline, Some(error)) = (status.connection, &status.last_error) {
                    return Err(Failure::new(2, format!("syncing stopped: {error}")));
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn print_change(db: &Database, change: &Change) -> Result<(), Failure> {
    let line = match change {
        Change::Document {
            collection,
            id,
            origin,
        } => {
            let fields = match db.collection(collection).get(id) {
                Some(doc) => fields_json(&doc.fields)?,
                None => serde_json::Value::Null,
            };
            json!({
                "collection": collection,
                "id": id,
                "origin": format!("{origin:?}").to_lowercase(),
                "fields": fields,
            })
        }
        Change::Collection { collection, origin } => json!({
            "collection": collection,
            "origin": format!("{origin:?}").to_lowercase(),
        }),
        Change::Lagged => json!({ "lagged": true }),
        _ => return Ok(()),
    };
    println!("{line}");
    Ok(())
}
