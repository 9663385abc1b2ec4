//! The native Database through its public API, on SQLite files in a temp
//! dir: durable put latency, durable puts per second with 1 and 8 writer
//! threads, 100k puts issued together, a 100k-document transaction, reopening it, and, when a release
//! `concord-relay` is built (`cargo build --release -p relay-server`),
//! end-to-end latency through the relay and an initial sync.
//!
//! `cargo bench -p sync-ffi --bench database` prints one line per figure;
//! `-- NAME...` runs only the figures whose name contains a NAME (`latency`,
//! `writers-1`, `writers-8` (`writers`: both), `together`,
//! `transaction-reopen`, `e2e`, `initial-sync`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sync_ffi::{Change, Connection, Database, Options, RelayOptions, Value, Wait};

fn open_local(path: &Path) -> Database {
    sync_ffi::open(path, Options::local()).expect("opens")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn durable_put_latency(dir: &Path) {
    let db = open_local(&dir.join("latency.db"));
    let todos = db.collection("todos");
    let mut times = Vec::new();
    for i in 0..2_000 {
        let started = Instant::now();
        todos
            .put(&format!("t{i}"), [("title", Value::from("buy milk"))])
            .wait()
            .expect("durable");
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "durable put, one writer waiting on each: p50 {} p99 {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99))
    );
    futures::executor::block_on(db.close());
}

/// Puts issued all at once without waiting on each (an import, a UI
/// applying a batch of edits one by one), until every one is durable.
fn puts_issued_together(dir: &Path, count: usize) {
    let db = open_local(&dir.join(format!("together-{count}.db")));
    let todos = db.collection("todos");
    let started = Instant::now();
    let pending: Vec<_> = (0..count)
        .map(|i| todos.put(&format!("t{i}"), [("n", Value::from(i as i64))]))
        .collect();
    for write in pending {
        write.wait().expect("durable");
    }
    println!(
        "{count} puts issued together, until all are durable: {}",
        ms(started.elapsed())
    );
    futures::executor::block_on(db.close());
}

fn durable_puts_per_second(dir: &Path, writers: usize) {
    let db = open_local(&dir.join(format!("throughput-{writers}.db")));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (db, stop, done) = (db.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let todos = db.collection("todos");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    todos
                        .put(&format!("w{w}-{i}"), [("n", Value::from(i as i64))])
                        .wait()
                        .expect("durable");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
    }
    let rate = done.load(Ordering::Relaxed) as f64 / window.as_secs_f64();
    println!("durable puts/s, {writers} writer thread(s) each waiting on its put: {rate:.0}");
    futures::executor::block_on(db.close());
}

fn big_transaction_and_reopen(dir: &Path) {
    let path = dir.join("big.db");
    let db = open_local(&path);
    let started = Instant::now();
    db.transaction(|tx| {
        for d in 0..100_000 {
            let id = format!("doc{d:06}");
            tx.put(
                "docs",
                &id,
                (0..10).map(|f| (format!("f{f}"), Value::from(d as i64 * 10 + f))),
            )?;
        }
        Ok(())
    })
    .wait()
    .expect("durable");
    println!(
        "transaction of 100k docs x 10 fields, until durable: {}",
        ms(started.elapsed())
    );
    futures::executor::block_on(db.close());
    let started = Instant::now();
    let db = open_local(&path);
    let doc = db.collection("docs").get("doc099999").expect("there");
    assert_eq!(doc.fields.len(), 10);
    println!(
        "reopen of that database, ready to read: {}",
        ms(started.elapsed())
    );
    futures::executor::block_on(db.close());
}

/// A release relay on an OS-picked port, if one is built.
struct Relay {
    child: Child,
    url: String,
    data: PathBuf,
    bin: PathBuf,
}

impl Relay {
    fn start(dir: &Path) -> Option<Relay> {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/release/concord-relay")
            .canonicalize()
            .ok()?;
        let data = dir.join("relay");
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let addr = lines.find_map(|l| {
            l.ok()?
                .strip_prefix("concord-relay listening on ")
                .map(str::to_owned)
        })?;
        std::thread::spawn(move || for _ in lines {});
        Some(Relay {
            child,
            url: format!("ws://{}/v1/sync", addr.trim()),
            data,
            bin,
        })
    }

    fn token(&self, room: &str) -> String {
        let out = Command::new(&self.bin)
            .args([
                "token", "--room", room, "--rights", "rw", "--ttl", "1h", "--data",
            ])
            .arg(&self.data)
            .output()
            .expect("token");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_online(db: &Database) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.status().connection != Connection::Online {
        assert!(Instant::now() < deadline, "not online: {:?}", db.status());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn end_to_end(dir: &Path, relay: &Relay) {
    const WRITES: usize = 3_000;
    let token = relay.token("e2e");
    let open = |name: &str| {
        let options = Options::with_relay(RelayOptions::new(&relay.url, "e2e", &token));
        sync_ffi::open(dir.join(name), options).expect("opens")
    };
    let (a, b) = (open("e2e-a.db"), open("e2e-b.db"));
    wait_online(&a);
    wait_online(&b);
    let mut changes = b.collection("pings").subscribe();
    // When each put was made on A (index = its number).
    let sent_at = Arc::new(std::sync::Mutex::new(vec![None::<Instant>; WRITES]));
    // Where the time goes: when each put became durable on A, seen by a
    // thread of its own so the writer keeps its pace (A sends a put only
    // once it is durable: persist-before-send).
    let (durable_tx, durable_rx) = std::sync::mpsc::channel::<(usize, sync_ffi::Pending<_>)>();
    let durable = std::thread::spawn(move || {
        let mut at = vec![None::<Instant>; WRITES];
        for (i, write) in durable_rx {
            write.wait().expect("durable on A");
            at[i] = Some(Instant::now());
        }
        at
    });
    let writer = {
        let (a, sent_at) = (a.clone(), sent_at.clone());
        std::thread::spawn(move || {
            let pings = a.collection("pings");
            let start = Instant::now();
            for i in 0..WRITES {
                // 1,000 writes per second.
                let due = start + Duration::from_millis(i as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                sent_at.lock().expect("lock")[i] = Some(Instant::now());
                let write = pings.put(&format!("p{i}"), [("n", Value::from(i as i64))]);
                durable_tx.send((i, write)).expect("durable thread");
            }
        })
    };
    // When B's change event for each put arrived.
    let mut seen_at = vec![None::<Instant>; WRITES];
    let mut seen = 0;
    futures::executor::block_on(async {
        while seen < WRITES {
            let Some(Change::Document { id, .. }) = changes.next().await else {
                continue;
            };
            let now = Instant::now();
            let i: Option<usize> = id.strip_prefix('p').and_then(|n| n.parse().ok());
            if let Some(slot) = i.and_then(|i| seen_at.get_mut(i))
                && slot.is_none()
            {
                *slot = Some(now);
                seen += 1;
            }
        }
    });
    writer.join().expect("writer");
    let durable_at = durable.join().expect("durable thread");
    let sent_at = sent_at.lock().expect("lock").clone();
    let mut total = Vec::with_capacity(WRITES);
    let mut to_durable = Vec::with_capacity(WRITES);
    let mut after_durable = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let (Some(sent), Some(durable), Some(seen)) = (sent_at[i], durable_at[i], seen_at[i])
        else {
            continue;
        };
        total.push(seen - sent);
        to_durable.push(durable - sent);
        // B may see a put before A's caller wakes (both follow A's commit).
        after_durable.push(seen.saturating_duration_since(durable));
    }
    let line = |label: &str, mut times: Vec<Duration>| {
        times.sort();
        println!(
            "{label}: p50 {} p99 {} max {}",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(percentile(&times, 1.0))
        );
    };
    line(
        "put on A -> change event on B through the relay, 1,000 writes/s",
        total,
    );
    line("  of which put on A -> durable on A", to_durable);
    line(
        "  and durable on A -> change event on B (A's send, the relay's commit, B)",
        after_durable,
    );
    futures::executor::block_on(a.close());
    futures::executor::block_on(b.close());
}

fn initial_sync(dir: &Path, relay: &Relay) {
    let token = relay.token("initial");
    let open = |name: &str| {
        let options = Options::with_relay(RelayOptions::new(&relay.url, "initial", &token));
        sync_ffi::open(dir.join(name), options).expect("opens")
    };
    let source = open("initial-source.db");
    source
        .transaction(|tx| {
            for d in 0..100_000 {
                tx.put(
                    "docs",
                    &format!("doc{d:06}"),
                    (0..10).map(|f| (format!("f{f}"), Value::from(d as i64 * 10 + f))),
                )?;
            }
            Ok(())
        })
        .wait()
        .expect("durable");
    futures::executor::block_on(source.flush()).expect("uploaded");
    futures::executor::block_on(source.close());

    let started = Instant::now();
    let fresh = open("initial-fresh.db");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = fresh.status();
        if s.connection == Connection::Online && s.lag == 0 && s.cursor >= 100_000 {
            break;
        }
        assert!(Instant::now() < deadline, "initial sync stuck: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Stored, not only applied: close waits for the store.
    futures::executor::block_on(fresh.close());
    println!(
        "initial sync of 100k docs x 10 fields into an empty database, stored: {}",
        ms(started.elapsed())
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `cargo bench -p sync-ffi --bench database -- NAME...` runs only the
    // figures whose name contains one of the NAMEs (for profiling one).
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |figure: &str| names.is_empty() || names.iter().any(|n| figure.contains(n));
    let dir = tempfile::tempdir().expect("temp dir");
    if wanted("latency") {
        durable_put_latency(dir.path());
    }
    for writers in [1, 8] {
        if wanted(&format!("writers-{writers}")) {
            durable_puts_per_second(dir.path(), writers);
        }
    }
    if wanted("together") {
        puts_issued_together(dir.path(), 100_000);
    }
    if wanted("transaction-reopen") {
        big_transaction_and_reopen(dir.path());
    }
    if !wanted("e2e") && !wanted("initial-sync") {
        return;
    }
    match Relay::start(dir.path()) {
        Some(relay) => {
            if wanted("e2e") {
                end_to_end(dir.path(), &relay);
            }
            if wanted("initial-sync") {
                initial_sync(dir.path(), &relay);
            }
        }
        None => println!(
            "(no release concord-relay built: skipping the relay figures; run `cargo build --release -p relay-server`)"
        ),
    }
}
