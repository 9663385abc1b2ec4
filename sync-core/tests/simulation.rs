//! Deterministic simulation of one room and several clients over a hostile
//! network, in virtual time, driven by a seed, checked against an oracle
//! that shares no code with what it checks.
//!
//! Every seed runs a chaos phase, then a healing phase with a reliable
//! network, then a fresh replica joins. The hosts are as loose as the
//! contract allows: they act on every output the core releases at once,
//! and their stores (client and room) complete writes later in virtual time,
//! in order, or fail them (the host then rebuilds the machine from its
//! store). Frames are lost, duplicated, delayed and reordered; partitions
//! come and go; clients and the room crash between issuing a write and its
//! completion (a random prefix of the writes in flight survives, as with a
//! power cut), the room sometimes right after handling a push; clocks are
//! skewed within and beyond the drift bound; compaction runs at random
//! moments, one seed in four with tombstone collection after a few seconds.
//!
//! The oracle ([`Model`]) is a plain last-writer-wins map over every write
//! the clients issued that reached their store, minus the refusals it
//! allows: only of operations stamped at or before a tombstone horizon the
//! room had handed out. Along the way the hosts check that the relay only
//! acknowledges writes the client has stored, and that refusals and
//! compaction horizons stay within what the rules allow. At the end every replica, and a fresh one,
//! must show exactly the model's state, and every acknowledged write must be
//! in it unless a later stamp overwrote it.
//!
//! `SIM_SEEDS=N` sets how many seeds run (default 2000) on `SIM_THREADS`
//! threads (default 2); `SIM_SEED=S` replays one, and `SIM_TRACE=1` prints
//! its timeline. With `--features buggify`, `fault_switches_are_caught`
//! turns on each of the core's fault switches and requires a failure.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sync_core::Timestamp;
use sync_core::protocol::{self, Message};
use sync_core::room::{
    CompactionJob, CompactionPolicy, Room, RoomConfig, RoomInput, RoomOutput, RoomPersist,
};
use sync_core::session::{Backoff, Input, LinkState, Output, Session, SessionConfig};
use sync_core::store::{MemoryStore, Store};
use sync_core::{
    Change, Event, Hlc, Op, PersistBatch, PersistId, Replica, ReplicaConfig, ReplicaId, Stamp,
    Value, WriteError,
};

const START: u64 = 1_700_000_000_000;
const MAX_DRIFT: u64 = 60_000;

/// SplitMix64, so the test owns its randomness and replays from a seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---- the oracle ----

/// What applications can see: collections, their documents, their fields.
type Visible = Vec<(String, Vec<(String, BTreeMap<String, Value>)>)>;

/// Last-writer-wins, written from the design brief's rules and nothing
/// else: a field keeps its highest-stamped write; a document's delete and
/// its collection's drop are tombstones that hide every write stamped at or
/// before them; a document exists while a put is stamped after its
/// tombstone; a collection exists while created after its last drop or
/// while it holds a document.
#[derive(Default)]
struct Model {
    fields: BTreeMap<(String, String, String), (Stamp, Option<Value>)>,
    written: BTreeMap<(String, String), Stamp>,
    deleted: BTreeMap<(String, String), Stamp>,
    created: BTreeMap<String, Stamp>,
    dropped: BTreeMap<String, Stamp>,
}

fn raise<K: Ord>(map: &mut BTreeMap<K, Stamp>, key: K, stamp: Stamp) {
    let slot = map.entry(key).or_insert(stamp);
    *slot = (*slot).max(stamp);
}

impl Model {
    fn apply(&mut self, op: &Op) {
        let stamp = Stamp::new(op.hlc, op.id.replica);
        match &op.change {
            Change::Put {
                collection,
                id,
                fields,
            } => {
                raise(&mut self.written, (collection.clone(), id.clone()), stamp);
                for (name, value) in fields {
                    let key = (collection.clone(), id.clone(), name.clone());
                    if self.fields.get(&key).is_none_or(|(s, _)| *s < stamp) {
                        self.fields.insert(key, (stamp, value.clone()));
                    }
                }
            }
            Change::Delete { collection, id } => {
                raise(&mut self.deleted, (collection.clone(), id.clone()), stamp)
            }
            Change::CreateCollection { collection } => {
                raise(&mut self.created, collection.clone(), stamp)
            }
            Change::DropCollection { collection } => {
                raise(&mut self.dropped, collection.clone(), stamp)
            }
        }
    }

    fn tombstone(&self, collection: &str, id: &str) -> Option<Stamp> {
        let deleted = self.deleted.get(&(collection.into(), id.into())).copied();
        deleted.max(self.dropped.get(collection).copied())
    }

    /// The field as the model has it: `(stamp of its winning write, value
    /// if it is visible)`.
    fn field(&self, collection: &str, id: &str, name: &str) -> Option<(Stamp, Option<Value>)> {
        let (stamp, value) = self
            .fields
            .get(&(collection.into(), id.into(), name.into()))?
            .clone();
        let live = Some(stamp) > self.tombstone(collection, id);
        Some((stamp, value.filter(|_| live)))
    }

    fn visible(&self) -> Visible {
        let names: BTreeSet<&String> = self
            .created
            .keys()
            .chain(self.written.keys().map(|(c, _)| c))
            .collect();
        let mut out = Vec::new();
        for coll in names {
            let mut docs = Vec::new();
            for ((c, id), written) in &self.written {
                if c != coll || Some(*written) <= self.tombstone(c, id) {
                    continue;
                }
                let mut fields = BTreeMap::new();
                for ((fc, fid, name), _) in
                    self.fields.range((c.clone(), id.clone(), String::new())..)
                {
                    if fc != c || fid != id {
                        break;
                    }
                    if let Some((_, Some(value))) = self.field(c, id, name) {
                        fields.insert(name.clone(), value);
                    }
                }
                docs.push((id.clone(), fields));
            }
            let created = self.created.get(coll).copied();
            let exists =
                created.is_some() && created > self.dropped.get(coll).copied() || !docs.is_empty();
            if exists {
                out.push((coll.clone(), docs));
            }
        }
        out
    }
}

/// Everything an application can read from a replica.
fn visible(r: &Replica) -> Visible {
    r.state()
        .collections()
        .map(|c| {
            let docs = r.list(c).into_iter().map(|d| (d.id, d.fields)).collect();
            (c.to_owned(), docs)
        })
        .collect()
}

/// Where two visible states differ.
fn diff(got: &Visible, want: &Visible) -> String {
    let got: BTreeMap<_, _> = got.iter().cloned().collect();
    let want: BTreeMap<_, _> = want.iter().cloned().collect();
    let names: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let mut out = String::new();
    for name in names {
        let (a, b) = (got.get(name), want.get(name));
        if a != b {
            out += &format!("collection {name}:\n  replica {a:?}\n  model   {b:?}\n");
        }
    }
    out
}

// ---- the hosts ----

/// What became of a write a client issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    /// Its batch is with the store, not yet durable.
    Pending,
    Durable,
    /// Its batch failed, or a crash lost it before it was durable.
    Lost,
}

struct Write {
    client: usize,
    op: Op,
    stored: Stored,
    acked: bool,
    refused: bool,
}

/// Counts of what a run did, so a run that exercised nothing fails.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    seeds: u64,
    writes_issued: u64,
    writes_acked: u64,
    writes_lost_before_durable: u64,
    writes_refused_store_failed: u64,
    client_crashes: u64,
    client_crashes_with_unstored_writes: u64,
    client_crashes_with_unacked_writes: u64,
    room_crashes: u64,
    room_crashes_with_unstored_persists: u64,
    room_crashes_with_acks_in_flight: u64,
    client_persists_failed: u64,
    room_persists_failed: u64,
    snapshots_installed: u64,
    delivers_received_together: u64,
    resyncs: u64,
    refusals: u64,
    compactions: u64,
    fresh_replicas: u64,
}

impl Coverage {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("seeds", self.seeds),
            ("writes issued", self.writes_issued),
            ("writes acknowledged", self.writes_acked),
            (
                "writes lost before durable",
                self.writes_lost_before_durable,
            ),
            (
                "writes refused: store failed",
                self.writes_refused_store_failed,
            ),
            ("client crashes", self.client_crashes),
            (
                "client crashes with unstored writes",
                self.client_crashes_with_unstored_writes,
            ),
            (
                "client crashes with unacked writes",
                self.client_crashes_with_unacked_writes,
            ),
            ("room crashes", self.room_crashes),
            (
                "room crashes with unstored persists",
                self.room_crashes_with_unstored_persists,
            ),
            (
                "room crashes with acks in flight",
                self.room_crashes_with_acks_in_flight,
            ),
            ("client persists failed", self.client_persists_failed),
            ("room persists failed", self.room_persists_failed),
            ("snapshots installed", self.snapshots_installed),
            (
                "delivers received together",
                self.delivers_received_together,
            ),
            ("resyncs", self.resyncs),
            ("refusals", self.refusals),
            ("compactions", self.compactions),
            ("fresh replicas joined", self.fresh_replicas),
        ]
    }

    fn add(&mut self, o: &Coverage) {
        macro_rules! sum { ($($f:ident),*) => { $(self.$f += o.$f;)* } }
        sum!(
            seeds,
            writes_issued,
            writes_acked,
            writes_lost_before_durable,
            writes_refused_store_failed,
            client_crashes,
            client_crashes_with_unstored_writes,
            client_crashes_with_unacked_writes,
            room_crashes,
            room_crashes_with_unstored_persists,
            room_crashes_with_acks_in_flight,
            client_persists_failed,
            room_persists_failed,
            snapshots_installed,
            delivers_received_together,
            resyncs,
            refusals,
            compactions,
            fresh_replicas
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Room,
}

#[derive(Debug)]
enum Payload {
    Frame(Vec<u8>),
    /// The sender closed the connection after everything before it.
    Fin(Option<u16>),
}

#[derive(Debug)]
struct Packet {
    conn: u64,
    to: Side,
    at: u64,
    payload: Payload,
}

/// Per-connection FIFO links with latency, plus the faults.
#[derive(Default)]
struct Network {
    packets: Vec<Packet>,
    /// conn -> client index, and whether the room has joined it.
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Abrupt breaks to report: (at, conn).
    breaks: Vec<(u64, u64)>,
}

struct Conn {
    client: usize,
    joined: bool,
    /// A frame was lost: like TCP, nothing after it arrives; the break is
    /// reported to both ends a little later.
    dead: bool,
    last_at: [u64; 2],
}

struct Faults {
    loss: u64,
    dup: u64,
    reorder: u64,
    latency: u64,
}

impl Network {
    fn send(
        &mut self,
        rng: &mut Rng,
        faults: Option<&Faults>,
        now: u64,
        conn: u64,
        to: Side,
        payload: Payload,
    ) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.dead) else {
            return;
        };
        let dir = (to == Side::Room) as usize;
        let latency = faults.map_or(1 + rng.below(5), |f| 1 + rng.below(f.latency));
        let at = c.last_at[dir].max(now + latency);
        c.last_at[dir] = at;
        if let (Some(f), Payload::Frame(frame)) = (faults, &payload) {
            if rng.chance(f.loss) {
                c.dead = true;
                self.packets.retain(|p| p.conn != conn);
                self.breaks.push((now + rng.below(100), conn));
                return;
            }
            if rng.chance(f.dup) {
                self.packets.push(Packet {
                    conn,
                    to,
                    at,
                    payload: Payload::Frame(frame.clone()),
                });
            }
            if rng.chance(f.reorder) {
                // Swap with the latest packet queued the same way on this connection.
                if let Some(prev) = self
                    .packets
                    .iter_mut()
                    .rev()
                    .find(|p| p.conn == conn && p.to == to)
                {
                    let earlier = prev.at;
                    prev.at = at;
                    self.packets.push(Packet {
                        conn,
                        to,
                        at: earlier,
                        payload,
                    });
                    return;
                }
            }
        }
        self.packets.push(Packet {
            conn,
            to,
            at,
            payload,
        });
    }

    fn next_at(&self) -> Option<u64> {
        self.packets
            .iter()
            .map(|p| p.at)
            .chain(self.breaks.iter().map(|b| b.0))
            .min()
    }
}

/// A batch the client's store is writing; durable at `at`.
struct StoreWrite {
    id: PersistId,
    batch: PersistBatch,
    at: u64,
    /// Indices into `Sim::writes` of the writes it carries.
    writes: Vec<usize>,
}

struct ClientHost {
    replica: ReplicaId,
    session: Option<Session>,
    store: MemoryStore,
    /// Batches handed to the store, completing in order.
    writing: VecDeque<StoreWrite>,
    /// Writes by the persist that will carry them, until it is handed out.
    awaiting: BTreeMap<PersistId, Vec<usize>>,
    conn: Option<u64>,
    timeout: Option<u64>,
    skew: i64,
    partitioned_until: u64,
    crashed_until: Option<u64>,
    /// The store failed: the host rebuilds the session from it then.
    rebuild_at: Option<u64>,
    /// A connection attempt failing later (while partitioned).
    connect_fails_at: Option<u64>,
}

impl ClientHost {
    fn local(&self, now: u64) -> u64 {
        now.saturating_add_signed(self.skew)
    }
}

#[derive(Default)]
struct RoomStore {
    snapshot: Option<(u64, Vec<u8>)>,
    entries: BTreeMap<u64, Vec<u8>>,
}

impl RoomStore {
    fn write(&mut self, batch: &RoomPersist) {
        for (offset, bytes) in &batch.append {
            self.entries.insert(*offset, bytes.to_vec());
        }
        if let Some((through, bytes)) = &batch.snapshot {
            self.snapshot = Some((*through, bytes.to_vec()));
        }
        if let Some(through) = batch.truncate_through {
            self.entries.retain(|o, _| *o > through);
        }
    }
}

struct RoomHost {
    room: Room,
    store: RoomStore,
    /// Persists handed out, not yet durable: the next group commit writes them.
    pending: VecDeque<(PersistId, RoomPersist)>,
    commit_at: Option<u64>,
    timeout: Option<u64>,
    jobs: Vec<(u64, CompactionJob)>,
    config: RoomConfig,
}

/// Store behaviour of one seed (kept through healing; only failures stop).
struct Storage {
    /// Longest a client write takes, ms.
    client_latency: u64,
    /// Longest a room group commit waits, ms.
    room_latency: u64,
    client_fail: u64,
    room_fail: u64,
    /// Chance of a room crash right after it handled a push with a persist outstanding.
    crash_after_push: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    net: Network,
    clients: Vec<ClientHost>,
    room: RoomHost,
    faults: Option<Faults>,
    storage: Storage,
    /// Every write any client issued, whatever became of it.
    writes: Vec<Write>,
    /// The highest tombstone horizon the room handed out in a compaction job.
    horizon: Hlc,
    trace: bool,
    log: Vec<String>,
    cov: Coverage,
    /// The first rule seen broken.
    failure: Option<String>,
}

fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new("room", b"token".to_vec());
    config.heartbeat_ms = 2_000;
    config.dead_after_ms = 6_000;
    config.handshake_timeout_ms = 3_000;
    config.backoff = Backoff {
        initial_ms: 100,
        max_ms: 2_000,
    };
    config.max_batch_ops = 7;
    config.push_window = 2;
    // Small, so snapshots and batches are applied over several slices.
    config.apply_slice_docs = 3;
    config
}

fn replica_config() -> ReplicaConfig {
    ReplicaConfig::default().with_max_drift_ms(MAX_DRIFT)
}

fn new_client(replica: ReplicaId, skew: i64, seed: u64) -> ClientHost {
    ClientHost {
        replica,
        session: Some(Session::new(
            Replica::new(replica, replica_config()),
            session_config(),
            seed,
        )),
        store: MemoryStore::new(),
        writing: VecDeque::new(),
        awaiting: BTreeMap::new(),
        conn: None,
        timeout: None,
        skew,
        partitioned_until: 0,
        crashed_until: None,
        rebuild_at: None,
        connect_fails_at: None,
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let n = 2 + rng.below(4) as usize;
        // One seed in four collects tombstones after a few seconds, so clients
        // partitioned for longer push stale operations that the room refuses.
        let gc = rng.below(4) == 0;
        let clients = (0..n)
            .map(|i| {
                // Most clocks are close; some are beyond the drift bound either way.
                let skew = match rng.below(10) {
                    0 if !gc => 90_000,
                    1 if !gc => -90_000,
                    _ => rng.below(4_000) as i64 - 2_000,
                };
                new_client(ReplicaId(100 + i as u64), skew, rng.next())
            })
            .collect();
        let config = RoomConfig::default()
            .with_max_drift_ms(MAX_DRIFT)
            .with_max_batch_ops(5)
            .with_send_window(1 + rng.below(3) as usize)
            .with_snapshot_chunk_bytes(64 + rng.below(512) as usize)
            .with_heartbeat_ms(2_000)
            .with_idle_timeout_ms(8_000)
            .with_slow_consumer_ms(5_000)
            .with_compaction(
                CompactionPolicy::default()
                    .with_min_ops(1 + rng.below(10))
                    .with_keep_recent_ops(rng.below(20))
                    .with_max_log_ops(30 + rng.below(50))
                    .with_min_fold_percent(if seed % 2 == 1 { 0 } else { 100 })
                    .with_tombstone_grace_ms(if gc {
                        3_000 + rng.below(7_000)
                    } else {
                        365 * 24 * 3600 * 1000
                    }),
            );
        let faults = Faults {
            loss: rng.below(30),
            dup: rng.below(30),
            reorder: rng.below(30),
            latency: 2 + rng.below(200),
        };
        let storage = Storage {
            client_latency: *rng.pick(&[0, 5, 40, 150, 400]),
            room_latency: *rng.pick(&[0, 10, 60, 200]),
            client_fail: if rng.chance(500) {
                1 + rng.below(15)
            } else {
                0
            },
            room_fail: if rng.chance(500) {
                1 + rng.below(10)
            } else {
                0
            },
            crash_after_push: rng.below(40),
        };
        let mut sim = Sim {
            seed,
            rng,
            now: START,
            net: Network::default(),
            clients,
            room: RoomHost {
                room: Room::new(config),
                store: RoomStore::default(),
                pending: VecDeque::new(),
                commit_at: None,
                timeout: None,
                jobs: Vec::new(),
                config,
            },
            faults: Some(faults),
            storage,
            writes: Vec::new(),
            horizon: Hlc::ZERO,
            trace: std::env::var("SIM_TRACE").is_ok(),
            log: Vec::new(),
            cov: Coverage {
                seeds: 1,
                ..Coverage::default()
            },
            failure: None,
        };
        for i in 0..sim.clients.len() {
            let now = sim.clients[i].local(sim.now);
            if let Some(s) = sim.clients[i].session.as_mut() {
                s.start(Timestamp::from_unix_ms(now));
            }
            sim.drain_client(i);
        }
        sim
    }

    fn note(&mut self, what: String) {
        self.log.push(format!("{:>8} {what}", self.now - START));
    }

    /// Records a broken rule (the first one is reported).
    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.note(format!("FAILED: {what}"));
            self.failure = Some(format!("seed {}: {what}\n{}", self.seed, self.describe()));
        }
    }

    // ---- client side ----

    fn drain_client(&mut self, i: usize) {
        loop {
            let Some(session) = self.clients[i].session.as_mut() else {
                return;
            };
            let Some(out) = session.poll() else {
                if !session.is_applying() {
                    return;
                }
                // As a host does between two turns of its loop: the next
                // slice of received work, whose outputs are then polled.
                let now = self.clients[i].local(self.now);
                if let Some(session) = self.clients[i].session.as_mut() {
                    session.apply_slice(Timestamp::from_unix_ms(now));
                }
                continue;
            };
            match out {
                Output::Connect => {
                    let c = &mut self.clients[i];
                    if self.now < c.partitioned_until {
                        c.connect_fails_at = Some(self.now + 1 + self.rng.below(300));
                    } else {
                        let conn = self.net.next_conn;
                        self.net.next_conn += 1;
                        self.net.conns.insert(
                            conn,
                            Conn {
                                client: i,
                                joined: false,
                                dead: false,
                                last_at: [self.now; 2],
                            },
                        );
                        self.clients[i].conn = Some(conn);
                        let now = self.clients[i].local(self.now);
                        if let Some(s) = self.clients[i].session.as_mut() {
                            s.handle(Timestamp::from_unix_ms(now), Input::Connected);
                        }
                    }
                }
                Output::Transmit(frame) => {
                    if let Some(conn) = self.clients[i].conn {
                        let faults = self.faults.as_ref();
                        self.net.send(
                            &mut self.rng,
                            faults,
                            self.now,
                            conn,
                            Side::Room,
                            Payload::Frame(frame),
                        );
                    }
                }
                Output::Close { code, .. } => {
                    if let Some(conn) = self.clients[i].conn.take() {
                        self.net.send(
                            &mut self.rng,
                            None,
                            self.now,
                            conn,
                            Side::Room,
                            Payload::Fin(Some(code.as_u16())),
                        );
                    }
                }
                Output::Persist { id, batch } => {
                    // The store completes writes in order, some time later.
                    let latency = self.rng.below(self.storage.client_latency + 1);
                    let c = &mut self.clients[i];
                    let at = c.writing.back().map_or(0, |w| w.at).max(self.now + latency);
                    let writes = c.awaiting.remove(&id).unwrap_or_default();
                    c.writing.push_back(StoreWrite {
                        id,
                        batch,
                        at,
                        writes,
                    });
                }
                Output::Event(Event::OpsRejected { seqs, .. }) => {
                    self.note(format!("client {i}: ops {seqs:?} refused"));
                    for seq in seqs {
                        self.refusal(i, seq, true);
                    }
                }
                Output::Event(event) => {
                    if let Event::Disconnected { reason, .. } = &event {
                        if reason.contains("resync") {
                            self.cov.resyncs += 1;
                        }
                    }
                    if self.trace {
                        self.note(format!("client {i}: {event:?}"));
                    }
                }
                Output::Timeout(at) => {
                    let skew = self.clients[i].skew;
                    self.clients[i].timeout = Some(at.unix_ms().saturating_add_signed(-skew));
                }
            }
        }
    }

    /// The relay refused one of client `i`'s writes: allowed only for an
    /// operation stamped at or before a horizon the room handed out. `event`:
    /// the client reported it to the app (else: the relay's frame said so).
    fn refusal(&mut self, i: usize, seq: u64, event: bool) {
        let found = self
            .writes
            .iter()
            .rposition(|w| w.client == i && w.op.id.seq == seq && w.stored != Stored::Lost);
        let Some(w) = found else {
            return self.fail(format!("client {i}: refusal of seq {seq}, never stored"));
        };
        let hlc = self.writes[w].op.hlc;
        if hlc > self.horizon {
            let horizon = self.horizon;
            return self.fail(format!(
                "client {i}: op {seq} stamped {hlc:?} refused, but the room's horizon is {horizon:?}"
            ));
        }
        if event && !self.writes[w].refused {
            self.cov.refusals += 1;
            self.writes[w].refused = true;
        }
    }

    /// The relay settled client `i`'s operations through `through` (stored
    /// or refused): it must have had each of them, so the client must have
    /// stored each. A settled write never refused is acknowledged.
    fn acknowledged(&mut self, i: usize, through: u64) {
        for w in 0..self.writes.len() {
            let write = &self.writes[w];
            if write.client != i
                || write.op.id.seq > through
                || write.stored == Stored::Lost
                || write.acked
            {
                continue;
            }
            if write.stored != Stored::Durable {
                let seq = write.op.id.seq;
                return self.fail(format!(
                    "client {i}: the relay acknowledged op {seq} before the client stored it"
                ));
            }
            self.writes[w].acked = true;
        }
    }

    fn client_input(&mut self, i: usize, input: Input<'_>) {
        let now = self.clients[i].local(self.now);
        if let Some(s) = self.clients[i].session.as_mut() {
            s.handle(Timestamp::from_unix_ms(now), input);
        }
        self.drain_client(i);
    }

    /// The client's store finishes its oldest write: durable, or failed.
    fn complete_client_write(&mut self, i: usize) {
        let Some(w) = self.clients[i].writing.pop_front() else {
            return;
        };
        if self.faults.is_some() && self.rng.chance(self.storage.client_fail) {
            self.note(format!("client {i}: persist {:?} fails", w.id));
            self.cov.client_persists_failed += 1;
            // Later batches depended on it: the host drops them too.
            let mut lost = w.writes;
            for later in self.clients[i].writing.drain(..) {
                lost.extend(later.writes);
            }
            self.lose(lost);
            self.client_input(
                i,
                Input::PersistFailed {
                    id: w.id,
                    error: "disk full",
                },
            );
            // The session refuses writes until the host rebuilds it.
            self.clients[i].rebuild_at = Some(self.now + self.rng.below(1_000));
            return;
        }
        self.clients[i]
            .store
            .write(&w.batch)
            .expect("memory store writes");
        for &x in &w.writes {
            self.writes[x].stored = Stored::Durable;
        }
        self.client_input(i, Input::Persisted(w.id));
    }

    fn lose(&mut self, lost: Vec<usize>) {
        for x in lost {
            self.writes[x].stored = Stored::Lost;
            self.cov.writes_lost_before_durable += 1;
        }
    }

    fn random_write(&mut self, i: usize) {
        let now = self.clients[i].local(self.now);
        let collections = ["todos", "notes"];
        let ids = ["a", "b", "c"];
        let fields = ["title", "done", "n"];
        let coll = *self.rng.pick(&collections);
        let id = *self.rng.pick(&ids);
        let field = *self.rng.pick(&fields);
        let value = match self.rng.below(4) {
            0 => Value::Int(self.rng.below(100) as i64),
            1 => Value::Bool(self.rng.chance(500)),
            2 => Value::from(format!("s{}", self.rng.below(10))),
            _ => Value::Null,
        };
        let kind = self.rng.below(100);
        let Some(session) = self.clients[i].session.as_mut() else {
            return;
        };
        let before = session.replica().next_seq();
        let result = match kind {
            0..=59 => session
                .put(Timestamp::from_unix_ms(now), coll, id, [(field, value)])
                .map(|_| ()),
            60..=69 => {
                let rev = session.replica().revision(coll, id);
                session
                    .put_if(
                        Timestamp::from_unix_ms(now),
                        coll,
                        id,
                        [(field, value)],
                        rev,
                    )
                    .map(|_| ())
            }
            70..=79 => session
                .unset(Timestamp::from_unix_ms(now), coll, id, [field])
                .map(|_| ()),
            80..=91 => session.delete(Timestamp::from_unix_ms(now), coll, id),
            92..=95 => session.create_collection(Timestamp::from_unix_ms(now), coll),
            _ => session.drop_collection(Timestamp::from_unix_ms(now), coll),
        };
        if let Err(WriteError::StoreFailed { .. }) = result {
            self.cov.writes_refused_store_failed += 1;
        }
        if session.replica().next_seq() > before {
            let op = session
                .replica()
                .outbox()
                .next_back()
                .expect("a local write queues its op");
            let persist = session.latest_persist().expect("a local write persists");
            let w = self.writes.len();
            self.writes.push(Write {
                client: i,
                op,
                stored: Stored::Pending,
                acked: false,
                refused: false,
            });
            self.cov.writes_issued += 1;
            self.clients[i].awaiting.entry(persist).or_default().push(w);
        }
        self.drain_client(i);
    }

    fn crash_client(&mut self, i: usize) {
        self.note(format!("client {i} crashes"));
        self.cov.client_crashes += 1;
        if self.clients[i]
            .session
            .as_ref()
            .is_some_and(|s| s.replica().outbox().len() > 0)
        {
            self.cov.client_crashes_with_unacked_writes += 1;
        }
        // A power cut: the store kept some prefix of the writes in flight.
        let writing: Vec<StoreWrite> = self.clients[i].writing.drain(..).collect();
        if writing.iter().any(|w| !w.writes.is_empty()) {
            self.cov.client_crashes_with_unstored_writes += 1;
        }
        let kept = self.rng.below(writing.len() as u64 + 1) as usize;
        let mut lost = Vec::new();
        for (k, w) in writing.into_iter().enumerate() {
            if k < kept {
                self.clients[i]
                    .store
                    .write(&w.batch)
                    .expect("memory store writes");
                for x in w.writes {
                    self.writes[x].stored = Stored::Durable;
                }
            } else {
                lost.extend(w.writes);
            }
        }
        // Writes whose persist was not even handed out are gone too.
        let awaiting = std::mem::take(&mut self.clients[i].awaiting);
        lost.extend(awaiting.into_values().flatten());
        self.lose(lost);
        let c = &mut self.clients[i];
        c.session = None;
        c.timeout = None;
        c.connect_fails_at = None;
        c.rebuild_at = None;
        c.crashed_until = Some(self.now + 100 + self.rng.below(3_000));
        if let Some(conn) = c.conn.take() {
            self.net.breaks.push((self.now + self.rng.below(50), conn));
        }
    }

    /// Rebuilds the session from what its store holds (after a crash or a
    /// failed write), as the contract says.
    fn restart_client(&mut self, i: usize) {
        self.note(format!("client {i} restarts from its store"));
        // Whatever was in flight on a failed session is given up.
        let writing: Vec<StoreWrite> = self.clients[i].writing.drain(..).collect();
        let mut lost: Vec<usize> = writing.into_iter().flat_map(|w| w.writes).collect();
        let awaiting = std::mem::take(&mut self.clients[i].awaiting);
        lost.extend(awaiting.into_values().flatten());
        self.lose(lost);
        let c = &mut self.clients[i];
        c.crashed_until = None;
        c.rebuild_at = None;
        c.timeout = None;
        c.connect_fails_at = None;
        if let Some(conn) = c.conn.take() {
            self.net.breaks.push((self.now + self.rng.below(50), conn));
        }
        let records = c.store.read_all().expect("memory store");
        let seed = self.rng.next();
        let session = match Session::restore(replica_config(), session_config(), seed, records) {
            Ok(Some(session)) => session,
            Ok(None) => Session::new(
                Replica::new(c.replica, replica_config()),
                session_config(),
                seed,
            ),
            Err(e) => return self.fail(format!("client {i} cannot restore: {e}")),
        };
        assert_eq!(session.replica().id(), c.replica);
        c.session = Some(session);
        let now = c.local(self.now);
        if let Some(s) = c.session.as_mut() {
            s.start(Timestamp::from_unix_ms(now));
        }
        self.drain_client(i);
    }

    // ---- room side ----

    fn drain_room(&mut self) {
        while let Some(out) = self.room.room.poll() {
            match out {
                RoomOutput::Timeout(at) => self.room.timeout = Some(at.unix_ms()),
                RoomOutput::Compact(job) => {
                    self.compaction_started(&job);
                    let at = self.now + self.rng.below(500);
                    self.room.jobs.push((at, job));
                }
                RoomOutput::Persist { id, batch } => {
                    // Group commit: durable a little later. The room holds
                    // back whatever depends on it; this host does not.
                    self.room.pending.push_back((id, batch));
                    if self.room.commit_at.is_none() {
                        let latency = self.rng.below(self.storage.room_latency + 1);
                        self.room.commit_at = Some(self.now + latency);
                    }
                }
                RoomOutput::Transmit {
                    connection: session,
                    frame,
                } => {
                    let faults = self.faults.as_ref();
                    self.net.send(
                        &mut self.rng,
                        faults,
                        self.now,
                        session,
                        Side::Client,
                        Payload::Frame(frame.to_vec()),
                    );
                }
                RoomOutput::Close {
                    connection: session,
                    code,
                    ..
                } => {
                    self.net.send(
                        &mut self.rng,
                        None,
                        self.now,
                        session,
                        Side::Client,
                        Payload::Fin(Some(code.as_u16())),
                    );
                    if let Some(c) = self.net.conns.get_mut(&session) {
                        c.joined = false;
                    }
                }
            }
        }
    }

    /// The room handed out a compaction job: from now on it refuses
    /// operations stamped at or before the job's horizon, which may not be
    /// later than the grace period allows.
    fn compaction_started(&mut self, job: &CompactionJob) {
        self.cov.compactions += 1;
        let grace = self.room.config.compaction.tombstone_grace_ms;
        let limit = Hlc::new(self.now.saturating_sub(grace), u16::MAX).unwrap_or(Hlc::ZERO);
        let horizon = job.tombstone_horizon();
        if horizon > limit {
            return self.fail(format!(
                "compaction horizon {horizon:?} is later than the grace period allows ({limit:?})"
            ));
        }
        self.horizon = self.horizon.max(horizon);
    }

    fn commit_room(&mut self) {
        self.room.commit_at = None;
        while let Some((id, batch)) = self.room.pending.pop_front() {
            if self.faults.is_some() && self.rng.chance(self.storage.room_fail) {
                self.note(format!("room persist {id:?} fails"));
                self.cov.room_persists_failed += 1;
                // Later batches depended on it: the host drops them.
                self.room.pending.clear();
                self.room_input(RoomInput::PersistFailed(id));
                // The room closed its sessions; the host reloads it from storage.
                return self.reload_room();
            }
            self.room.store.write(&batch);
            self.room
                .room
                .handle(Timestamp::from_unix_ms(self.now), RoomInput::Persisted(id));
        }
        self.drain_room();
    }

    fn room_input(&mut self, input: RoomInput<'_>) {
        self.room
            .room
            .handle(Timestamp::from_unix_ms(self.now), input);
        self.drain_room();
    }

    fn crash_room(&mut self) {
        self.cov.room_crashes += 1;
        let pending = self.room.pending.len();
        if pending > 0 {
            self.cov.room_crashes_with_unstored_persists += 1;
        }
        let acks_in_flight = self.net.packets.iter().any(|p| {
            p.to == Side::Client
                && matches!(&p.payload, Payload::Frame(f)
                    if matches!(protocol::decode(f, usize::MAX), Ok(Message::Ack { .. })))
        });
        if acks_in_flight {
            self.cov.room_crashes_with_acks_in_flight += 1;
        }
        // A power cut: a prefix of the batches not yet durable survives.
        let kept = self.rng.below(pending as u64 + 1) as usize;
        self.note(format!(
            "room crashes with {pending} persists not yet durable, {kept} kept"
        ));
        for (_, batch) in self.room.pending.drain(..).take(kept) {
            self.room.store.write(&batch);
        }
        self.reload_room();
    }

    /// The room comes back from what its store holds; every connection breaks.
    fn reload_room(&mut self) {
        let store = &self.room.store;
        let entries = store.entries.iter().map(|(o, b)| (*o, b.clone())).collect();
        match Room::restore(self.room.config, store.snapshot.clone(), entries) {
            Ok(room) => self.room.room = room,
            Err(e) => return self.fail(format!("room cannot restore: {e}")),
        }
        self.room.pending.clear();
        self.room.commit_at = None;
        self.room.timeout = None;
        self.room.jobs.clear();
        let conns: Vec<u64> = self.net.conns.keys().copied().collect();
        for conn in conns {
            self.net.breaks.push((self.now + self.rng.below(50), conn));
            if let Some(c) = self.net.conns.get_mut(&conn) {
                c.joined = false;
            }
        }
        self.net.packets.retain(|p| p.to == Side::Client);
    }

    // ---- the network ----

    fn deliver(&mut self, packet: Packet) {
        let Some(conn) = self.net.conns.get(&packet.conn) else {
            return;
        };
        let (client, joined) = (conn.client, conn.joined);
        match (packet.to, packet.payload) {
            (Side::Client, Payload::Frame(frame)) => {
                if self.clients[client].conn != Some(packet.conn) {
                    return;
                }
                let message = protocol::decode(&frame, usize::MAX);
                if self.trace {
                    let summary = match &message {
                        Ok(Message::Deliver { from, cursor, ops }) => {
                            format!(
                                "Deliver {from}..{cursor} {:?}",
                                ops.iter()
                                    .map(|o| (o.id.replica.0, o.id.seq))
                                    .collect::<Vec<_>>()
                            )
                        }
                        Ok(Message::SnapshotChunk {
                            cursor,
                            offset,
                            total_len,
                            ..
                        }) => format!("Chunk c{cursor} {offset}/{total_len}"),
                        Ok(m) => format!("{m:?}").chars().take(120).collect(),
                        Err(e) => format!("{e}"),
                    };
                    self.note(format!(
                        "to client {client} conn {}: {summary}",
                        packet.conn
                    ));
                }
                let link = self.clients[client]
                    .session
                    .as_ref()
                    .map(|s| s.status().link);
                let link = link.unwrap_or(LinkState::Offline);
                let settled = match message {
                    Ok(Message::Ack {
                        through_seq,
                        refused,
                    }) if link == LinkState::Live => {
                        for (seq, _) in refused {
                            self.refusal(client, seq, false);
                        }
                        Some(through_seq)
                    }
                    Ok(Message::Welcome(welcome)) if link == LinkState::Handshaking => {
                        for seq in welcome.refused {
                            self.refusal(client, seq, false);
                        }
                        Some(welcome.accepted_seq)
                    }
                    Ok(Message::SnapshotChunk {
                        offset,
                        total_len,
                        bytes,
                        ..
                    }) if link == LinkState::Live && offset + bytes.len() as u64 == total_len => {
                        self.cov.snapshots_installed += 1;
                        None
                    }
                    _ => None,
                };
                if let Some(through) = settled {
                    self.acknowledged(client, through);
                }
                if link == LinkState::Live
                    && protocol::peek_kind(&frame) == Some(protocol::MessageKind::Deliver)
                    && self.rng.chance(500)
                {
                    // As a host does with what its link has ready at once:
                    // the `Deliver`s already due on this connection go in
                    // with this one, as one `ReceivedMany`.
                    let frames = self.due_delivers(packet.conn, frame);
                    if frames.len() > 1 {
                        self.cov.delivers_received_together += 1;
                    }
                    return self.client_input(client, Input::ReceivedMany(&frames));
                }
                self.client_input(client, Input::Received(&frame));
            }
            (Side::Client, Payload::Fin(code)) => {
                self.net.conns.remove(&packet.conn);
                if self.clients[client].conn == Some(packet.conn) {
                    self.clients[client].conn = None;
                    self.client_input(client, Input::Disconnected { code });
                }
            }
            (Side::Room, Payload::Frame(frame)) => {
                if self.trace {
                    let summary = match protocol::decode(&frame, usize::MAX) {
                        Ok(Message::Push { ops }) => format!(
                            "Push {:?}",
                            ops.iter().map(|o| o.id.seq).collect::<Vec<_>>()
                        ),
                        Ok(Message::Hello(h)) => format!(
                            "Hello cursor {} own {} settled {}",
                            h.cursor, h.own_seq, h.settled_seq
                        ),
                        Ok(m) => format!("{m:?}").chars().take(80).collect(),
                        Err(e) => format!("{e}"),
                    };
                    self.note(format!(
                        "from client {client} conn {}: {summary}",
                        packet.conn
                    ));
                }
                if joined {
                    self.room_input(RoomInput::Frame {
                        connection: packet.conn,
                        frame: &frame,
                    });
                    // A crash right after a push, with its persist maybe not
                    // durable and its ack maybe on the way.
                    if self.faults.is_some()
                        && !self.room.pending.is_empty()
                        && self.rng.chance(self.storage.crash_after_push)
                    {
                        self.crash_room();
                    }
                } else {
                    // The relay host's handshake: the first frame must be a Hello.
                    match protocol::decode(&frame, protocol::DEFAULT_MAX_FRAME_BYTES) {
                        Ok(Message::Hello(hello)) => {
                            if let Some(c) = self.net.conns.get_mut(&packet.conn) {
                                c.joined = true;
                            }
                            self.room_input(RoomInput::Join {
                                connection: packet.conn,
                                hello,
                                read_only: false,
                            });
                        }
                        _ => self.break_conn(packet.conn),
                    }
                }
            }
            (Side::Room, Payload::Fin(_)) => {
                self.net.conns.remove(&packet.conn);
                if joined {
                    self.room_input(RoomInput::Leave {
                        connection: packet.conn,
                    });
                }
            }
        }
    }

    /// Both ends learn the connection is gone; nothing more crosses it.
    fn break_conn(&mut self, conn: u64) {
        let Some(c) = self.net.conns.remove(&conn) else {
            return;
        };
        self.net.packets.retain(|p| p.conn != conn);
        if c.joined {
            self.room_input(RoomInput::Leave { connection: conn });
        }
        if self.clients[c.client].conn == Some(conn) {
            self.clients[c.client].conn = None;
            self.client_input(c.client, Input::Disconnected { code: None });
        }
    }

    // ---- the clock ----

    fn next_event(&self) -> u64 {
        let mut next = self.net.next_at().unwrap_or(u64::MAX);
        for c in &self.clients {
            let store = c.writing.front().map(|w| w.at);
            for t in [
                c.timeout,
                c.crashed_until,
                c.rebuild_at,
                c.connect_fails_at,
                store,
            ]
            .into_iter()
            .flatten()
            {
                next = next.min(t);
            }
        }
        for t in [self.room.timeout, self.room.commit_at]
            .into_iter()
            .flatten()
        {
            next = next.min(t);
        }
        for (at, _) in &self.room.jobs {
            next = next.min(*at);
        }
        next
    }

    /// Runs everything due at or before `until`.
    fn run_until(&mut self, until: u64) {
        while self.failure.is_none() {
            let next = self.next_event();
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            self.fire_due();
        }
    }

    /// `first` and, after it in arrival order, every `Deliver` frame due
    /// on `conn` up to its first other packet (taken off the network).
    fn due_delivers(&mut self, conn: u64, first: Vec<u8>) -> Vec<Vec<u8>> {
        let now = self.now;
        let mut due: Vec<usize> = (0..self.net.packets.len())
            .filter(|&i| {
                let p = &self.net.packets[i];
                p.conn == conn && p.to == Side::Client && p.at <= now
            })
            .collect();
        due.sort_by_key(|&i| self.net.packets[i].at);
        let taken: Vec<usize> = due
            .into_iter()
            .take_while(|&i| {
                matches!(&self.net.packets[i].payload, Payload::Frame(f)
                    if protocol::peek_kind(f) == Some(protocol::MessageKind::Deliver))
            })
            .collect();
        let mut frames = vec![first];
        frames.extend(
            taken
                .iter()
                .filter_map(|&i| match &self.net.packets[i].payload {
                    Payload::Frame(f) => Some(f.clone()),
                    Payload::Fin(_) => None,
                }),
        );
        let mut index = 0;
        self.net.packets.retain(|_| {
            index += 1;
            !taken.contains(&(index - 1))
        });
        frames
    }

    fn fire_due(&mut self) {
        let now = self.now;
        if let Some(index) = self.net.breaks.iter().position(|b| b.0 <= now) {
            let (_, conn) = self.net.breaks.swap_remove(index);
            return self.break_conn(conn);
        }
        if let Some(index) = self
            .net
            .packets
            .iter()
            .enumerate()
            .filter(|(_, p)| p.at <= now)
            .min_by_key(|(_, p)| p.at)
            .map(|(i, _)| i)
        {
            let packet = self.net.packets.remove(index);
            return self.deliver(packet);
        }
        if self.room.commit_at.is_some_and(|t| t <= now) {
            return self.commit_room();
        }
        if let Some(index) = self.room.jobs.iter().position(|(at, _)| *at <= now) {
            let (_, job) = self.room.jobs.swap_remove(index);
            return match job.run() {
                Ok(done) => self.room_input(RoomInput::Compacted(done)),
                Err(e) => self.fail(format!("compaction failed: {e}")),
            };
        }
        if self.room.timeout.is_some_and(|t| t <= now) {
            self.room.timeout = None;
            return self.room_input(RoomInput::Timeout);
        }
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            if c.writing.front().is_some_and(|w| w.at <= now) {
                return self.complete_client_write(i);
            }
            if c.crashed_until.is_some_and(|t| t <= now) || c.rebuild_at.is_some_and(|t| t <= now) {
                return self.restart_client(i);
            }
            if c.connect_fails_at.is_some_and(|t| t <= now) {
                self.clients[i].connect_fails_at = None;
                return self.client_input(i, Input::Disconnected { code: None });
            }
            if c.timeout.is_some_and(|t| t <= now) {
                self.clients[i].timeout = None;
                return self.client_input(i, Input::Timeout);
            }
        }
    }

    // ---- the scenario ----

    fn chaos(&mut self, duration: u64) {
        let end = self.now + duration;
        while self.now < end && self.failure.is_none() {
            let step = 1 + self.rng.below(400);
            let until = (self.now + step).min(end);
            self.run_until(until);
            let i = self.rng.below(self.clients.len() as u64) as usize;
            match self.rng.below(1000) {
                0..=699 => self.random_write(i),
                700..=709 => self.crash_client(i),
                710..=714 => self.crash_room(),
                715..=724 => {
                    let until = self.now + self.rng.below(8_000);
                    self.note(format!("client {i} partitioned until {}", until - START));
                    self.clients[i].partitioned_until = until;
                    if let Some(conn) = self.clients[i].conn {
                        self.net.breaks.push((self.now + self.rng.below(100), conn));
                    }
                }
                725..=734 => {
                    if let Some(job) = self
                        .room
                        .room
                        .compact_now(Timestamp::from_unix_ms(self.now))
                    {
                        self.note(format!("forced compaction through {}", job.through()));
                        self.compaction_started(&job);
                        let at = self.now + self.rng.below(300);
                        self.room.jobs.push((at, job));
                    }
                }
                _ => {}
            }
        }
    }

    fn heal(&mut self) {
        self.note("healing".into());
        self.faults = None;
        for i in 0..self.clients.len() {
            self.clients[i].partitioned_until = 0;
            if self.clients[i].crashed_until.is_some() || self.clients[i].rebuild_at.is_some() {
                self.restart_client(i);
            }
        }
        // Enough virtual time for backoff, clock skew beyond the drift bound
        // (90 s against 60 s) and compaction to all resolve.
        let deadline = self.now + 10 * 60_000;
        while self.now < deadline && self.failure.is_none() {
            self.run_until(self.now + 1_000);
            if self.settled() {
                return;
            }
        }
        self.fail("did not settle within ten virtual minutes".into());
    }

    fn settled(&self) -> bool {
        let head = self.room.room.head();
        self.room.pending.is_empty()
            && self.clients.iter().all(|c| {
                c.writing.is_empty()
                    && c.session.as_ref().is_some_and(|s| {
                        let status = s.status();
                        status.link == LinkState::Live
                            && status.pending_ops == 0
                            && status.cursor == head
                    })
            })
    }

    /// A replica that never wrote joins with an empty store and must catch
    /// up to exactly the same state (through the snapshot and the log).
    fn join_fresh(&mut self) {
        let i = self.clients.len();
        self.note(format!("fresh client {i} joins"));
        self.cov.fresh_replicas += 1;
        let seed = self.rng.next();
        self.clients
            .push(new_client(ReplicaId(100 + i as u64), 0, seed));
        let now = self.now;
        if let Some(s) = self.clients[i].session.as_mut() {
            s.start(Timestamp::from_unix_ms(now));
        }
        self.drain_client(i);
        self.heal();
    }

    fn describe(&self) -> String {
        let mut out = format!(
            "room head {} stats {:?}\n",
            self.room.room.head(),
            self.room.room.stats(Timestamp::from_unix_ms(self.now))
        );
        for (i, c) in self.clients.iter().enumerate() {
            out += &format!(
                "client {i} skew {} status {:?}\n",
                c.skew,
                c.session.as_ref().map(|s| s.status())
            );
        }
        let keep = if self.trace { usize::MAX } else { 40 };
        let tail: Vec<&String> = self.log.iter().rev().take(keep).collect();
        for line in tail.into_iter().rev() {
            out += line;
            out += "\n";
        }
        out
    }

    /// The oracle: the model over every stored, unrefused write.
    fn check(&mut self) {
        self.cov.writes_acked = self.writes.iter().filter(|w| w.acked && !w.refused).count() as u64;
        let mut model = Model::default();
        for w in &self.writes {
            if w.stored == Stored::Pending {
                let (i, seq) = (w.client, w.op.id.seq);
                return self.fail(format!("client {i}: op {seq} never settled in its store"));
            }
            if w.stored == Stored::Durable && !w.refused {
                model.apply(&w.op);
            }
        }
        let want = model.visible();
        for i in 0..self.clients.len() {
            let Some(session) = self.clients[i].session.as_ref() else {
                return self.fail(format!("client {i} is down at the end"));
            };
            let replica = session.replica();
            // Every acknowledged write is there, unless a later stamp overwrote it.
            for w in &self.writes {
                let Change::Put {
                    collection,
                    id,
                    fields,
                } = &w.op.change
                else {
                    continue;
                };
                if !w.acked || w.refused {
                    continue;
                }
                for (name, value) in fields {
                    let Some((stamp, now)) = model.field(collection, id, name) else {
                        continue;
                    };
                    let mine = Stamp::new(w.op.hlc, w.op.id.replica);
                    let shown = replica
                        .get(collection, id)
                        .and_then(|d| d.fields.get(name).cloned());
                    if stamp == mine && (now.is_some() || value.is_none()) && shown != now {
                        let (c, seq) = (w.client, w.op.id.seq);
                        return self.fail(format!(
                            "client {i} lost acknowledged write {seq} of client {c}: \
                             {collection}/{id}.{name} shows {shown:?}, not {now:?}"
                        ));
                    }
                }
            }
            let got = visible(replica);
            if got != want {
                let d = diff(&got, &want);
                return self.fail(format!("client {i} differs from the model\n{d}"));
            }
        }
        for w in &self.writes {
            if w.stored == Stored::Durable
                && !w.refused
                && !self.room.room.accepted().contains(w.op.id)
            {
                let id = w.op.id;
                return self.fail(format!("the room lost operation {id:?}"));
            }
        }
    }
}

/// Runs one seed: chaos, healing, the oracle, a fresh replica, the oracle.
fn run_seed(seed: u64) -> Result<Coverage, String> {
    let mut sim = Sim::new(seed);
    let duration = 20_000 + sim.rng.below(40_000);
    sim.chaos(duration);
    sim.heal();
    sim.check();
    if sim.failure.is_none() {
        sim.join_fresh();
        sim.check();
    }
    if sim.failure.is_none() && sim.cov.writes_acked == 0 {
        sim.fail("the run acknowledged no write".into());
    }
    match sim.failure {
        Some(failure) => Err(failure),
        None => Ok(sim.cov),
    }
}

/// Runs `seeds` on `SIM_THREADS` threads (default 2). `setup` runs on each
/// thread before each seed. Stops taking new seeds at the first failure;
/// returns the coverage and every failure found, lowest seed first.
fn run_seeds(
    seeds: std::ops::Range<u64>,
    setup: &(dyn Fn() + Sync),
) -> (Coverage, Vec<(u64, String)>) {
    let threads: usize = std::env::var("SIM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let next = AtomicU64::new(seeds.start);
    let stop = AtomicBool::new(false);
    let total = Mutex::new(Coverage::default());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= seeds.end || stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        setup();
                        run_seed(seed)
                    }))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Err(format!("seed {seed}: panicked: {what}"))
                    });
                    match result {
                        Ok(cov) => total.lock().expect("not poisoned").add(&cov),
                        Err(failure) => {
                            stop.store(true, Ordering::SeqCst);
                            failures.lock().expect("not poisoned").push((seed, failure));
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("not poisoned");
    failures.sort_by_key(|(seed, _)| *seed);
    (total.into_inner().expect("not poisoned"), failures)
}

fn seed_count(default: u64) -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn simulated_rooms_converge() {
    #[cfg(feature = "buggify")]
    sync_core::buggify::set(&[]);
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed = seed.parse().expect("SIM_SEED is a number");
        let cov = run_seed(seed).unwrap_or_else(|failure| panic!("{failure}"));
        eprintln!("{cov:?}");
        return;
    }
    let seeds = seed_count(2000);
    let started = std::time::Instant::now();
    let (cov, failures) = run_seeds(0..seeds, &|| {
        #[cfg(feature = "buggify")]
        sync_core::buggify::set(&[]);
    });
    if let Some((seed, failure)) = failures.first() {
        panic!("simulation failed; replay with SIM_SEED={seed}\n{failure}");
    }
    eprintln!("{seeds} seeds in {:.1?}:", started.elapsed());
    for (name, count) in cov.fields() {
        eprintln!("  {name:<40} {count}");
    }
    // Every kind of trouble the simulation exists for happened somewhere.
    if seeds >= 500 {
        for (name, count) in cov.fields() {
            assert!(count > 0, "over {seeds} seeds, no {name}: coverage lost");
        }
    }
}

/// Each fault switch breaks one rule of the core; the simulation must
/// notice each within a bounded number of seeds (and, in the test above,
/// pass every seed with all of them off).
#[cfg(feature = "buggify")]
#[test]
fn fault_switches_are_caught() {
    use sync_core::buggify::{self, Switch};
    // Fixed, not SIM_SEEDS: each switch needs its own seeds to be caught.
    let limit = 200;
    let mut report = Vec::new();
    for switch in Switch::ALL {
        let (_, failures) = run_seeds(0..limit, &|| buggify::set(&[switch]));
        buggify::set(&[]);
        let Some((seed, failure)) = failures.first() else {
            panic!("{switch:?}: the simulation passed {limit} seeds with the rule broken");
        };
        let first_line = failure.lines().next().unwrap_or_default().to_owned();
        report.push(format!("{switch:?}: caught at seed {seed}: {first_line}"));
    }
    for line in report {
        eprintln!("{line}");
    }
}
