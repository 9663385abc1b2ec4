//! Several `concord-relay` instances over one real PostgreSQL (Debian's
//! server, installed if missing and started on a loopback port by
//! `common/postgres.rs`), with the native client (`sync_ffi::open`).
//!
//! Clients reach the instances through a small TCP balancer (the stand-in
//! for a load balancer): each client prefers one instance and falls over to
//! the next live one when a connection to it fails, as a load balancer with
//! health checks would.

mod common;
#[path = "common/postgres.rs"]
mod postgres_server;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Relay, http_get, tempdir};
use futures::FutureExt;
use postgres_server::Postgres;
use sync_ffi::{Database, Error, Options, RelayOptions, Wait};

const ROOM: &str = "cluster";

/// A TCP balancer: every accepted connection goes to the first backend, in
/// this balancer's order, that accepts a TCP connection.
struct Balancer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Balancer {
    fn new(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                let backend = backends
                    .iter()
                    .find_map(|b| TcpStream::connect_timeout(b, Duration::from_millis(500)).ok());
                let Some(backend) = backend else {
                    continue;
                };
                pipe(client, backend);
            }
        });
        Balancer { addr, stop }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways; when either side ends, both are shut down.
fn pipe(a: TcpStream, b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    for (mut from, mut to) in [
        (a.try_clone().expect("clone"), b.try_clone().expect("clone")),
        (b, a),
    ] {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    }
}

/// Three (or `n`) instances on one database, sharing one token key.
fn start_cluster(dir: &Path, pg: &Postgres, n: usize, extra: &[&str]) -> Vec<Relay> {
    let url = pg.url();
    let mut args = vec!["--postgres", url.as_str(), "--lease-ttl", "2s"];
    args.extend_from_slice(extra);
    let first = Relay::start(&dir.join("relay0"), &args);
    let key = std::fs::read_to_string(dir.join("relay0").join("concord-relay.pub"))
        .expect("public key")
        .trim()
        .to_owned();
    let mut keyed = args.clone();
    keyed.extend_from_slice(&["--public-key", key.as_str()]);
    let mut relays = vec![first];
    for i in 1..n {
        relays.push(Relay::start(&dir.join(format!("relay{i}")), &keyed));
    }
    relays
}

/// A balancer per client: client `i` prefers instance `i`.
fn balancers(relays: &[Relay], clients: usize) -> Vec<Balancer> {
    (0..clients)
        .map(|i| {
            let n = relays.len();
            Balancer::new((0..n).map(|k| relays[(i + k) % n].addr).collect())
        })
        .collect()
}

fn open(dir: &Path, name: &str, url: &str, token: &str) -> Database {
    let options = Options::with_relay(RelayOptions::new(url, ROOM, token));
    sync_ffi::open(dir.join(name), options).expect("opens")
}

fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within {within:?}: {what}");
}

/// Waits until everything written is acknowledged (hang guard: 120 s).
fn flush(db: &Database) -> Result<(), Error> {
    futures::executor::block_on(async {
        let flush = db.flush().fuse();
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(120));
            let _ = tx.send(());
        });
        let timeout = rx.map(|_| ()).fuse();
        futures::pin_mut!(flush, timeout);
        futures::select! {
            r = flush => r,
            () = timeout => panic!("flush did not finish in 120 s: {:?}", db.status()),
        }
    })
}

fn count(db: &Database) -> usize {
    db.collection("todos").list(&Default::default()).len()
}

/// `writes` puts by client `c`, numbered from `from`, locally durable.
fn write(db: &Database, c: usize, from: usize, writes: usize, pause: Duration) {
    for n in from..from + writes {
        db.collection("todos")
            .put(&format!("c{c}-{n}"), [("n", n as i64)])
            .wait()
            .expect("durable locally");
        std::thread::sleep(pause);
    }
}

/// The room's log in PostgreSQL: (entries, lowest offset, highest offset,
/// snapshot's last offset).
fn log_shape(pg: &Postgres) -> (u64, u64, u64, u64) {
    let row = pg.psql(&format!(
        "SELECT count(*), coalesce(min(log_offset), 0), coalesce(max(log_offset), 0), \
         coalesce((SELECT through FROM concord_snapshots WHERE room = '{ROOM}'), 0) \
         FROM concord_entries WHERE room = '{ROOM}'"
    ));
    let v: Vec<u64> = row.split('|').map(|s| s.parse().expect("number")).collect();
    (v[0], v[1], v[2], v[3])
}

/// The room's lease's fence: how many times it was claimed.
fn fence(pg: &Postgres) -> u64 {
    pg.psql(&format!(
        "SELECT fence FROM concord_leases WHERE room = '{ROOM}'"
    ))
    .parse()
    .expect("fence")
}

/// Which instance holds the room's lease now.
fn owner(pg: &Postgres, relays: &[Relay]) -> usize {
    let address = pg.psql(&format!(
        "SELECT address FROM concord_leases WHERE room = '{ROOM}' AND expires_at > now()"
    ));
    relays
        .iter()
        .position(|r| r.url() == address)
        .unwrap_or_else(|| panic!("no instance owns the room (lease: {address:?})"))
}

#[test]
fn three_instances_converge_and_a_killed_owner_loses_nothing_acknowledged() {
    let dir = tempdir();
    let pg = Postgres::start();
    let mut relays = start_cluster(dir.path(), &pg, 3, &["--admin-token", "admin"]);
    let token = relays[0].token(ROOM, "rw", "1h", None);
    let lbs = balancers(&relays, 3);
    let dbs: Vec<Database> = (0..3)
        .map(|i| open(dir.path(), &format!("c{i}.db"), &lbs[i].url(), &token))
        .collect();

    // Clients of one room on three instances converge.
    for (c, db) in dbs.iter().enumerate() {
        write(db, c, 0, 30, Duration::ZERO);
    }
    for db in &dbs {
        flush(db).expect("acknowledged");
    }
    eventually(Duration::from_secs(60), "90 documents everywhere", || {
        dbs.iter().all(|db| count(db) == 90)
    });
    // One instance claimed the room, once; the other two relayed their
    // sessions to it rather than serving the room themselves.
    assert_eq!(fence(&pg), 1);
    // The admin endpoint answers on every instance, owner or not.
    for relay in &relays {
        assert_eq!(relay.stats(ROOM, "admin")["head"], 90);
    }

    // Kill -9 the owner while every client writes.
    let victim = owner(&pg, &relays);
    std::thread::scope(|s| {
        for (c, db) in dbs.iter().enumerate() {
            s.spawn(move || write(db, c, 30, 60, Duration::from_millis(5)));
        }
        std::thread::sleep(Duration::from_millis(150));
        relays[victim].kill9();
    });
    for db in &dbs {
        flush(db).expect("acknowledged after failover");
    }
    eventually(Duration::from_secs(90), "270 documents everywhere", || {
        dbs.iter().all(|db| count(db) == 270)
    });
    let new_owner = owner(&pg, &relays);
    assert_ne!(new_owner, victim);
    // Every operation once (dedup held across the failover), offsets from
    // 1 without a gap.
    assert_eq!(log_shape(&pg), (270, 1, 270, 0));
}

#[test]
fn relays_recover_by_themselves_when_postgres_restarts_under_load() {
    let dir = tempdir();
    let pg = Postgres::start();
    let relays = start_cluster(dir.path(), &pg, 2, &[]);
    let token = relays[0].token(ROOM, "rw", "1h", None);
    let lbs = balancers(&relays, 2);
    let dbs: Vec<Database> = (0..2)
        .map(|i| open(dir.path(), &format!("c{i}.db"), &lbs[i].url(), &token))
        .collect();
    write(&dbs[0], 0, 0, 5, Duration::ZERO);
    flush(&dbs[0]).expect("acknowledged");
    std::thread::scope(|s| {
        for (c, db) in dbs.iter().enumerate() {
            s.spawn(move || write(db, c, 100, 80, Duration::from_millis(10)));
        }
        std::thread::sleep(Duration::from_millis(200));
        pg.stop();
        std::thread::sleep(Duration::from_secs(1));
        pg.start_again();
    });
    for db in &dbs {
        flush(db).expect("acknowledged after the restart");
    }
    eventually(Duration::from_secs(90), "165 documents everywhere", || {
        dbs.iter().all(|db| count(db) == 165)
    });
    for relay in &relays {
        assert_eq!(
            http_get(relay.addr, "/healthz", None).map(|r| r.0),
            Some(200),
            "an instance did not survive the restart"
        );
    }
    assert_eq!(log_shape(&pg), (165, 1, 165, 0));
}

#[test]
fn a_paused_owner_is_fenced_and_compaction_stays_with_one_instance() {
    let dir = tempdir();
    let pg = Postgres::start();
    // Compact at every 10 operations, keeping nothing: snapshots change
    // all the time, so a stale owner would have compactions to install.
    let compaction = [
        "--compaction-min-ops",
        "10",
        "--keep-recent-ops",
        "0",
        "--compaction-min-fold-percent",
        "0",
    ];
    let relays = start_cluster(dir.path(), &pg, 2, &compaction);
    let token = relays[0].token(ROOM, "rw", "1h", None);
    let lbs = balancers(&relays, 2);
    let dbs: Vec<Database> = (0..2)
        .map(|i| open(dir.path(), &format!("c{i}.db"), &lbs[i].url(), &token))
        .collect();
    for (c, db) in dbs.iter().enumerate() {
        write(db, c, 0, 40, Duration::ZERO);
        flush(db).expect("acknowledged");
    }
    let paused = owner(&pg, &relays);
    let other = 1 - paused;
    signal(&relays[paused], "STOP");
    // The other instance takes the room over once the lease expires; its
    // client's writes go on there.
    write(&dbs[other], other, 40, 40, Duration::from_millis(5));
    flush(&dbs[other]).expect("acknowledged by the new owner");
    assert_eq!(owner(&pg, &relays), other);
    // The forwarding instance noticed the silent owner itself, rather
    // than its client waiting out its own dead-link timeout.
    let silent = relays[other].metrics();
    assert!(
        silent.contains("concord_errors_total{kind=\"OwnerSilent\"}"),
        "{silent}"
    );
    signal(&relays[paused], "CONT");
    // The resumed instance finds its lease gone; its client reconnects.
    write(&dbs[paused], paused, 40, 40, Duration::from_millis(5));
    for db in &dbs {
        flush(db).expect("acknowledged");
    }
    eventually(Duration::from_secs(90), "160 documents everywhere", || {
        dbs.iter().all(|db| count(db) == 160)
    });
    let (entries, low, high, through) = log_shape(&pg);
    assert!(through > 0, "no compaction happened");
    // Whatever is left of the log continues the snapshot without a gap.
    if entries > 0 {
        assert_eq!(low, through + 1);
        assert_eq!(high - low + 1, entries);
    }
    assert_eq!(owner(&pg, &relays), other);
}

fn signal(relay: &Relay, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), relay.pid().to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success());
}
