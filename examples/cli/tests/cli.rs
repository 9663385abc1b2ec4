//! The `concord` binary, driven the way people and scripts drive it, against
//! the real `concord-relay` binary on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use test_support::RelayProcess;

const CONCORD: &str = env!("CARGO_BIN_EXE_concord");
const ROOM: &str = "cli";

/// The relay binary next to this package's binary, built if missing.
fn relay_bin() -> PathBuf {
    let dir = Path::new(CONCORD).parent().expect("target dir");
    let bin = dir.join(format!("concord-relay{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--locked",
                "-p",
                "relay-server",
                "--bin",
                "concord-relay",
            ])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building concord-relay failed");
    }
    bin
}

/// The relay on an OS-picked loopback port.
fn start_relay(data: &Path) -> RelayProcess {
    start_relay_at(data, "127.0.0.1:0")
}

fn start_relay_at(data: &Path, listen: &str) -> RelayProcess {
    RelayProcess::start(&relay_bin(), data, listen, &[])
}

/// `concord --data DIR [relay flags] ARGS...`
fn concord(data: &Path, relay: Option<(&str, &str)>, args: &[&str]) -> Output {
    let mut command = Command::new(CONCORD);
    command.arg("--data").arg(data);
    if let Some((url, token)) = relay {
        command.args(["--relay", url, "--room", ROOM, "--token", token]);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("CONCORD_") {
            command.env_remove(key);
        }
    }
    command.args(args).output().expect("concord runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn local_put_get_list_delete() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("a");
    ok(concord(
        &data,
        None,
        &["put", "todos", "a", r#"{"title":"milk","n":2}"#],
    ));
    ok(concord(
        &data,
        None,
        &["put", "todos", "a", r#"{"done":true}"#],
    ));
    let doc = json(&ok(concord(&data, None, &["get", "todos", "a"])));
    assert_eq!(
        doc,
        serde_json::json!({"title": "milk", "n": 2, "done": true})
    );

    ok(concord(
        &data,
        None,
        &["put", "todos", "b", r#"{"title":"eggs"}"#],
    ));
    let lines: Vec<serde_json::Value> = ok(concord(&data, None, &["list", "todos"]))
        .lines()
        .map(json)
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[1]["fields"], serde_json::json!({"title": "eggs"}));
    assert!(lines[0]["rev"].as_str().is_some_and(|r| !r.is_empty()));

    ok(concord(&data, None, &["delete", "todos", "a"]));
    let absent = concord(&data, None, &["get", "todos", "a"]);
    assert_eq!(absent.status.code(), Some(1));
    assert!(stderr(&absent).contains("todos/a does not exist"));
}

#[test]
fn bad_input_is_named_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("a");
    ok(concord(
        &data,
        None,
        &["put", "todos", "a", r#"{"title":"milk"}"#],
    ));
    let bad = concord(&data, None, &["put", "todos", "a", "{not json"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("invalid JSON"), "{}", stderr(&bad));
    let not_object = concord(&data, None, &["put", "todos", "a", "[1,2]"]);
    assert_eq!(not_object.status.code(), Some(2));
    assert!(stderr(&not_object).contains("JSON object"));
    let doc = json(&ok(concord(&data, None, &["get", "todos", "a"])));
    assert_eq!(doc["title"], "milk");
    let half = concord(&data, Some(("ws://127.0.0.1:1/v1/sync", "t")), &["sync"]);
    assert_eq!(half.status.code(), Some(3), "{}", stderr(&half));
}

#[test]
fn two_data_dirs_sync_through_the_relay() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(&dir.path().join("relay"));
    let token = relay.token(ROOM, "rw", "1h");
    let url = relay.url();
    let via = Some((url.as_str(), token.as_str()));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));

    ok(concord(
        &a,
        via,
        &["put", "todos", "t1", r#"{"title":"milk"}"#],
    ));
    ok(concord(&b, via, &["sync"]));
    let doc = json(&ok(concord(&b, None, &["get", "todos", "t1"])));
    assert_eq!(doc, serde_json::json!({"title": "milk"}));
    // `get` with a relay catches up first.
    ok(concord(
        &b,
        via,
        &["put", "todos", "t1", r#"{"done":true}"#],
    ));
    let doc = json(&ok(concord(&a, via, &["get", "todos", "t1"])));
    assert_eq!(doc, serde_json::json!({"title": "milk", "done": true}));

    ok(concord(&a, via, &["delete", "todos", "t1"]));
    let gone = concord(&b, via, &["get", "todos", "t1"]);
    assert_eq!(gone.status.code(), Some(1), "{}", stderr(&gone));

    let status = json(&ok(concord(&b, via, &["status"])));
    assert_eq!(status["pending"], 0);
    assert_eq!(status["connected"], true);
    assert!(status["cursor"].as_u64().is_some_and(|c| c >= 3));
    assert_eq!(status["lag"], 0);
    assert!(status["replica"].as_str().is_some());
}

#[test]
fn a_write_without_a_relay_is_kept_and_synced_later() {
    let dir = tempfile::tempdir().expect("tmp");
    // Reserve a port, then leave it closed: nothing listens yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("ws://127.0.0.1:{port}/v1/sync");
    let relay_data = dir.path().join("relay");
    // Mint a token from a relay started once to create the key, then stop it.
    let token = {
        let relay = start_relay(&relay_data);
        relay.token(ROOM, "rw", "1h")
    };
    let a = dir.path().join("a");
    let late = concord(
        &a,
        Some((&url, &token)),
        &["--timeout", "2", "put", "todos", "x", r#"{"n":1}"#],
    );
    assert_eq!(late.status.code(), Some(3), "{}", stderr(&late));
    assert!(stderr(&late).contains("kept locally"), "{}", stderr(&late));
    let status = json(&ok(concord(&a, None, &["status"])));
    assert_eq!(status["pending"], 1);

    let relay = start_relay_at(&relay_data, &format!("127.0.0.1:{port}"));
    ok(concord(&a, Some((&relay.url(), &token)), &["sync"]));
    let b = dir.path().join("b");
    let doc = json(&ok(concord(
        &b,
        Some((&relay.url(), &token)),
        &["get", "todos", "x"],
    )));
    assert_eq!(doc["n"], 1);
}

#[test]
fn a_refused_token_and_a_locked_data_dir_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(&dir.path().join("relay"));
    let a = dir.path().join("a");
    let refused = concord(
        &a,
        Some((&relay.url(), "not-a-token")),
        &["put", "todos", "x", r#"{"n":1}"#],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).to_lowercase().contains("unauthorized"),
        "{}",
        stderr(&refused)
    );
    // The write stays local.
    assert_eq!(json(&ok(concord(&a, None, &["get", "todos", "x"])))["n"], 1);

    // Another holder of the database (here: this test process) locks it.
    let held = sync_ffi::open(a.join("concord.db"), sync_ffi::Options::local()).expect("opens");
    let locked = concord(&a, None, &["get", "todos", "x"]);
    assert_eq!(locked.status.code(), Some(2));
    assert!(
        stderr(&locked).contains("already open"),
        "{}",
        stderr(&locked)
    );
    futures::executor::block_on(held.close());
    assert_eq!(json(&ok(concord(&a, None, &["get", "todos", "x"])))["n"], 1);
}

#[test]
fn watch_prints_remote_changes_as_json_lines() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(&dir.path().join("relay"));
    let token = relay.token(ROOM, "rw", "1h");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut watch = Command::new(CONCORD)
        .arg("--data")
        .arg(&b)
        .args([
            "--relay",
            &relay.url(),
            "--room",
            ROOM,
            "--token",
            &token,
            // Generous: under load the watch's first catch-up can take
            // longer than the default 10 s, and then it exits.
            "--timeout",
            "60",
            "watch",
            "todos",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    ok(concord(
        &a,
        Some((&relay.url(), &token)),
        &["put", "todos", "w", r#"{"title":"seen"}"#],
    ));
    let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = watch.kill();
        let out = watch.wait_with_output().expect("watch output");
        panic!(
            "watch printed nothing in 60 s; it exited with {:?}: {}",
            out.status,
            stderr(&out)
        );
    };
    let change = json(&line);
    assert_eq!(change["collection"], "todos");
    assert_eq!(change["id"], "w");
    assert_eq!(change["origin"], "remote");
    assert_eq!(change["fields"]["title"], "seen");
    let _ = watch.kill();
    let _ = watch.wait();
}
