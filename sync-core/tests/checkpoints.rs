//! Checkpoints (`replica/checkpoint.rs`): any interleaving of writes,
//! checkpoints (forced or by the policy, whole or encoded in slices),
//! snapshot resets (whole or sliced), persists and crashes restores the
//! state the persisted writes made.
//!
//! The oracle uses no checkpoint code: it is a copy of the replica's
//! in-memory state taken each time a batch is written. A crash drops the
//! batch not yet written and reopens the store; the reopened replica must
//! hold exactly the oracle's state (and version), whatever order the
//! store's records are read in.

use proptest::prelude::*;
use sync_core::store::{MemoryStore, Record, Store};
use sync_core::{
    Replica, ReplicaConfig, ReplicaId, Snapshot, State, StoreKey, Timestamp, VersionVector,
};

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8, u8, i64),
    Unset(u8, u8, u8),
    Delete(u8, u8),
    Drop(u8),
    Create(u8),
    /// Many documents at once: a transaction.
    Many(u8, u8),
    /// A write on the peer whose snapshots the replica resets to.
    PeerPut(u8, u8, i64),
    Checkpoint,
    Reset,
    /// A reset applied `n` documents a slice, each slice persisted; a
    /// crash after `crash_after` slices if that comes first.
    SlicedReset(u8, u8),
    Persist,
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..3u8, 0..8u8, 0..3u8, any::<i64>()).prop_map(|(c, d, f, v)| Step::Put(c, d, f, v)),
        1 => (0..3u8, 0..8u8, 0..3u8).prop_map(|(c, d, f)| Step::Unset(c, d, f)),
        2 => (0..3u8, 0..8u8).prop_map(|(c, d)| Step::Delete(c, d)),
        1 => (0..3u8).prop_map(Step::Drop),
        1 => (0..3u8).prop_map(Step::Create),
        1 => (0..3u8, 1..30u8).prop_map(|(c, n)| Step::Many(c, n)),
        2 => (0..3u8, 0..8u8, any::<i64>()).prop_map(|(c, d, v)| Step::PeerPut(c, d, v)),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Reset),
        1 => (1..4u8, 0..6u8).prop_map(|(n, k)| Step::SlicedReset(n, k)),
        4 => Just(Step::Persist),
        2 => Just(Step::Crash),
    ]
}

const COLLECTIONS: [&str; 3] = ["a", "bb", "c"];

fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_ms(1_700_000_000_000 + ms)
}

/// The replica under test, its store, and the oracle: the state and
/// version of the last batch written.
struct World {
    config: ReplicaConfig,
    replica: Replica,
    store: MemoryStore,
    durable: (State, VersionVector),
    peer: Replica,
    now: u64,
}

impl World {
    fn new(min_records: usize, sliced: bool) -> World {
        let config = ReplicaConfig::default()
            .with_checkpoint_min_records(min_records)
            .with_sliced_checkpoints(sliced);
        World {
            config,
            replica: Replica::new(ReplicaId(1), config),
            store: MemoryStore::new(),
            durable: (State::new(), VersionVector::new()),
            peer: Replica::new(ReplicaId(2), ReplicaConfig::default()),
            now: 0,
        }
    }

    fn tick(&mut self) -> Timestamp {
        self.now += 1;
        at(self.now)
    }

    fn persist(&mut self) {
        self.persist_claiming(None);
    }

    /// Writes the batch; the oracle's version is `claimed` (mid-reset, the
    /// stored version is the one from before it) or the replica's.
    fn persist_claiming(&mut self, claimed: Option<&VersionVector>) {
        if let Some(batch) = self.replica.take_persist() {
            self.store.write(&batch).unwrap();
        }
        let version = claimed.unwrap_or(self.replica.version()).clone();
        self.durable = (self.replica.state().clone(), version);
    }

    fn records(&self) -> Vec<Record> {
        self.store.read_all().unwrap()
    }

    /// Drops what is not written, reopens, and checks against the oracle.
    fn crash(&mut self) -> Result<(), TestCaseError> {
        let _lost = self.replica.take_persist();
        let records = self.records();
        let mut reversed = records.clone();
        reversed.reverse();
        let restored = Replica::restore(self.config, records).unwrap();
        let Some(restored) = restored else {
            prop_assert_eq!(self.durable.0.document_count(), 0);
            self.replica = Replica::new(ReplicaId(1), self.config);
            return Ok(());
        };
        prop_assert_eq!(restored.state(), &self.durable.0);
        prop_assert_eq!(restored.version(), &self.durable.1);
        let out_of_order = Replica::restore(self.config, reversed).unwrap().unwrap();
        prop_assert_eq!(out_of_order.state(), &self.durable.0);
        self.replica = restored;
        Ok(())
    }

    fn snapshot(&self) -> (Snapshot, Vec<u8>) {
        let bytes = self.peer.encode_snapshot();
        (Snapshot::decode(&bytes).unwrap(), bytes)
    }

    fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let now = self.tick();
        let coll = |c: &u8| COLLECTIONS[usize::from(*c)];
        let id = |d: &u8| format!("doc{d}");
        let field = |f: &u8| format!("f{f}");
        match step {
            Step::Put(c, d, f, v) => {
                self.replica
                    .put(now, coll(c), &id(d), [(field(f), *v)])
                    .unwrap();
            }
            Step::Unset(c, d, f) => {
                let _ = self.replica.unset(now, coll(c), &id(d), [field(f)]);
            }
            Step::Delete(c, d) => self.replica.delete(now, coll(c), &id(d)).unwrap(),
            Step::Drop(c) => self.replica.drop_collection(now, coll(c)).unwrap(),
            Step::Create(c) => self.replica.create_collection(now, coll(c)).unwrap(),
            Step::Many(c, n) => {
                let (c, n) = (coll(c), *n);
                self.replica
                    .transaction(now, |tx| {
                        for k in 0..n {
                            tx.put(c, &format!("many{k}"), [("k", i64::from(k))])?;
                        }
                        Ok::<_, sync_core::WriteError>(())
                    })
                    .unwrap();
            }
            Step::PeerPut(c, d, v) => {
                self.peer.put(now, coll(c), &id(d), [("p", *v)]).unwrap();
            }
            Step::Checkpoint => self.replica.checkpoint(),
            Step::Reset => {
                let (snapshot, _) = self.snapshot();
                self.replica.reset_to_snapshot(now, snapshot).unwrap();
            }
            Step::SlicedReset(slice, crash_after) => {
                let (snapshot, _) = self.snapshot();
                let before = self.replica.version().clone();
                self.replica.start_reset(now, snapshot).unwrap();
                let mut slices = 0;
                while self.replica.continue_reset(usize::from(*slice)) {
                    self.persist_claiming(Some(&before));
                    slices += 1;
                    if slices == *crash_after {
                        return self.crash();
                    }
                }
                self.persist();
            }
            Step::Persist => self.persist(),
            Step::Crash => self.crash()?,
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_interleaving_restores_what_was_persisted(
        steps in prop::collection::vec(step(), 1..60),
        min_records in prop_oneof![Just(1usize), Just(3), Just(8), Just(usize::MAX)],
        slice in prop_oneof![Just(None), (1..4usize).prop_map(Some)],
    ) {
        let mut world = World::new(min_records, slice.is_some());
        for step in &steps {
            world.run(step)?;
            // As a session's host does between everything else: a slice
            // of the checkpoint being encoded, if one is.
            if let Some(slice) = slice {
                world.replica.checkpoint_step(slice);
            }
        }
        world.persist();
        world.crash()?;
        // The end state again, with the records the store holds: only
        // documents stored since the last checkpoint have their own.
        let documents = world
            .records()
            .iter()
            .filter(|(key, _)| matches!(StoreKey::from_bytes(key), Ok(StoreKey::Document { .. })))
            .count();
        prop_assert_eq!(documents, world.replica.records_since_checkpoint());
    }
}

/// Writes and persists only, a slice of a checkpoint encoded between any
/// two: the interleavings of the proptest above that a sliced checkpoint
/// must survive, often enough to be found in few cases.
fn write_or_persist() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..2u8, 0..8u8, 0..3u8, any::<i64>()).prop_map(|(c, d, f, v)| Step::Put(c, d, f, v)),
        2 => (0..2u8, 0..8u8).prop_map(|(c, d)| Step::Delete(c, d)),
        5 => Just(Step::Persist),
        1 => Just(Step::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn writes_between_the_slices_of_a_checkpoint_restore_what_was_persisted(
        steps in prop::collection::vec(write_or_persist(), 1..80),
        min_records in 2..6usize,
        slice in 1..4usize,
    ) {
        let mut world = World::new(min_records, true);
        for step in &steps {
            world.run(step)?;
            world.replica.checkpoint_step(slice);
        }
        world.persist();
        world.crash()?;
    }
}

/// A store written with records only (as by the release before
/// checkpoints: no checkpoint record, one record per document, deleted
/// documents' records deleted) opens, and its first write after that turns
/// it into a checkpoint with the deletion of every record.
#[test]
fn a_store_of_records_only_opens_and_moves_to_a_checkpoint() {
    let records_only = ReplicaConfig::default().with_checkpoint_min_records(usize::MAX);
    let mut old = Replica::new(ReplicaId(5), records_only);
    let mut store = MemoryStore::new();
    for n in 0..3000u32 {
        old.put(at(u64::from(n)), "todos", &format!("t{n:05}"), [("n", n)])
            .unwrap();
        if n % 500 == 0 {
            store.write(&old.take_persist().unwrap()).unwrap();
        }
    }
    old.delete(at(5000), "todos", "t00007").unwrap();
    old.put(at(5001), "gone", "g", [("n", 1)]).unwrap();
    old.drop_collection(at(5002), "gone").unwrap();
    old.put(at(5003), "gone", "after", [("n", 1)]).unwrap();
    store.write(&old.take_persist().unwrap()).unwrap();
    let keys: Vec<StoreKey> = store
        .read_all()
        .unwrap()
        .iter()
        .map(|(key, _)| StoreKey::from_bytes(key).unwrap())
        .collect();
    assert!(!keys.contains(&StoreKey::Checkpoint));

    let mut reopened = Replica::restore(ReplicaConfig::default(), store.read_all().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(reopened.state(), old.state());
    assert_eq!(reopened.version(), old.version());
    let stored = reopened.records_since_checkpoint();
    assert!(stored > 1024, "{stored} records");

    reopened
        .put(at(6000), "todos", "one-more", [("n", 2)])
        .unwrap();
    store.write(&reopened.take_persist().unwrap()).unwrap();
    let records = store.read_all().unwrap();
    let keys: Vec<StoreKey> = records
        .iter()
        .map(|(key, _)| StoreKey::from_bytes(key).unwrap())
        .collect();
    assert!(keys.contains(&StoreKey::Checkpoint));
    assert!(
        !keys
            .iter()
            .any(|key| matches!(key, StoreKey::Document { .. })),
        "every document record was folded into the checkpoint"
    );
    let again = Replica::restore(ReplicaConfig::default(), records)
        .unwrap()
        .unwrap();
    assert_eq!(again.state(), reopened.state());
    assert_eq!(again.version(), reopened.version());
}

/// In a store without a checkpoint, a document that leaves the state has
/// its record deleted and no longer counts as stored since the checkpoint,
/// also past the 1,024 ids per collection after which the replica keeps
/// them in order rather than hashed.
#[test]
fn records_of_dropped_documents_leave_the_count() {
    let records_only = ReplicaConfig::default().with_checkpoint_min_records(usize::MAX);
    let mut r = Replica::new(ReplicaId(3), records_only);
    let mut store = MemoryStore::new();
    for n in 0..1500u32 {
        r.put(at(u64::from(n)), "todos", &format!("t{n:05}"), [("n", n)])
            .unwrap();
    }
    r.put(at(1600), "other", "kept", [("n", 1)]).unwrap();
    store.write(&r.take_persist().unwrap()).unwrap();
    assert_eq!(r.records_since_checkpoint(), 1501);

    r.drop_collection(at(1700), "todos").unwrap();
    store.write(&r.take_persist().unwrap()).unwrap();
    // The store's own keys are the oracle.
    let documents = store
        .read_all()
        .unwrap()
        .iter()
        .filter(|(key, _)| matches!(StoreKey::from_bytes(key), Ok(StoreKey::Document { .. })))
        .count();
    assert_eq!(documents, 1);
    assert_eq!(r.records_since_checkpoint(), documents);
}

/// A checkpoint of another version, or one whose snapshot is damaged, is
/// refused with a typed error naming the checkpoint.
#[test]
fn a_bad_checkpoint_is_refused() {
    let mut r = Replica::new(ReplicaId(1), ReplicaConfig::default());
    r.put(at(0), "a", "x", [("v", 1)]).unwrap();
    r.checkpoint();
    let mut store = MemoryStore::new();
    store.write(&r.take_persist().unwrap()).unwrap();
    let records = store.read_all().unwrap();
    let key = StoreKey::Checkpoint.to_bytes();
    let damaged = |edit: &dyn Fn(&mut Vec<u8>)| {
        let records: Vec<Record> = records
            .iter()
            .cloned()
            .map(|(k, mut v)| {
                if k == key {
                    edit(&mut v);
                }
                (k, v)
            })
            .collect();
        Replica::restore(ReplicaConfig::default(), records)
            .unwrap_err()
            .to_string()
    };
    let version = damaged(&|v| v[0] = 9);
    assert!(
        version.contains("checkpoint") && version.contains("version 9"),
        "{version}"
    );
    let corrupt = damaged(&|v| {
        let last = v.len() - 1;
        v[last] ^= 0xff;
    });
    assert!(
        corrupt.contains("checkpoint") && corrupt.contains("corrupt"),
        "{corrupt}"
    );
}

/// A checkpoint encoded in slices holds the state of the moment it began:
/// a document written between two slices keeps the newer record written
/// for it (the encoding is dropped; its checkpoint would delete that
/// record), and the next checkpoint, encoded whole, holds the new value.
#[test]
fn a_document_written_during_a_sliced_checkpoint_keeps_its_newer_record() {
    let config = ReplicaConfig::default()
        .with_checkpoint_min_records(4)
        .with_sliced_checkpoints(true);
    let mut replica = Replica::new(ReplicaId(1), config);
    let mut store = MemoryStore::new();
    let mut now = 0;
    let mut tick = || {
        now += 1;
        at(now)
    };
    let mut put = |replica: &mut Replica, d: u8, v: i64| {
        replica
            .put(tick(), "a", &format!("doc{d}"), [("v", v)])
            .unwrap();
    };
    // A transaction of the whole state is a checkpoint at once, whole.
    for d in 0..8 {
        put(&mut replica, d, 0);
    }
    store.write(&replica.take_persist().unwrap()).unwrap();
    assert!(!replica.is_checkpointing());
    assert_eq!(replica.records_since_checkpoint(), 0);
    // Three records, then a fourth batch of one makes a checkpoint due:
    // the batch is a record, the encoding begins.
    for d in 0..3 {
        put(&mut replica, d, 1);
        store.write(&replica.take_persist().unwrap()).unwrap();
    }
    put(&mut replica, 3, 1);
    store.write(&replica.take_persist().unwrap()).unwrap();
    assert!(replica.is_checkpointing());
    assert!(
        replica.checkpoint_step(2),
        "doc0 and doc1 encoded, more to go"
    );
    put(&mut replica, 0, 2);
    store.write(&replica.take_persist().unwrap()).unwrap();
    while replica.checkpoint_step(2) {}
    while let Some(batch) = replica.take_persist() {
        store.write(&batch).unwrap();
    }
    let reopened = Replica::restore(config, store.read_all().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(reopened.state(), replica.state());
    // Left alone, the next one completes in slices and stands for every record.
    for d in 4..8 {
        put(&mut replica, d, 3);
        store.write(&replica.take_persist().unwrap()).unwrap();
    }
    assert!(replica.is_checkpointing());
    while replica.checkpoint_step(3) {}
    store.write(&replica.take_persist().unwrap()).unwrap();
    assert_eq!(replica.records_since_checkpoint(), 0);
    let reopened = Replica::restore(config, store.read_all().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(reopened.state(), replica.state());
}
