//! Replicas converge: three to five replicas make random local writes
//! through the public API (put, put_if, unset, delete, create, drop), each
//! with its own advancing wall clock, and exchange operations over a lossy,
//! reordering, duplicating network — directly from outboxes, through a relay
//! log with acknowledgements, by merging snapshots and by replacing their
//! state with a snapshot. Along the way they restart
//! from their persisted records (which must give back exactly the same
//! replica), and some are restored from an older backup and catch up on
//! their own later operations (by operations or by a snapshot) before
//! writing again. After a final full exchange every replica holds the same
//! state and version vector, equal to a reference replica that applied the
//! union of all operations.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{COLLECTIONS, DOC_IDS, FIELDS, assert_same_replica, collection, doc_id, reader};
use proptest::prelude::*;
use proptest::sample::Index;
use sync_core::Timestamp;
use sync_core::store::{MemoryStore, Store};
use sync_core::{
    Applied, Document, Event, Op, Origin, Replica, ReplicaConfig, ReplicaId, Snapshot, Value,
    WriteError,
};

fn config() -> ProptestConfig {
    common::proptest_config(384)
}

/// A local write through the public API.
#[derive(Clone, Debug)]
enum LocalWrite {
    Put(Vec<(String, Value)>),
    /// `put_if` with the document's current revision: must succeed.
    PutIfCurrent(Vec<(String, Value)>),
    /// `put_if` with the revision of another document (maybe `None`): must
    /// succeed exactly when it happens to be the current one.
    PutIfOther(Vec<(String, Value)>, String, String),
    Unset(Vec<String>),
    Delete,
    Create,
    Drop,
}

/// Something that happens in the simulated network.
#[derive(Clone, Debug)]
enum Action {
    /// A replica writes after its wall clock moved `dt` ms (maybe 0).
    Write {
        node: Index,
        dt: u64,
        collection: String,
        id: String,
        write: LocalWrite,
    },
    /// One operation from a sender's outbox reaches a receiver (others are
    /// lost, delayed or sent again later).
    Deliver { from: Index, to: Index, op: Index },
    /// A replica pushes the first `count` outbox operations to the relay,
    /// which acknowledges them.
    Push { node: Index, count: Index },
    /// A replica receives one entry of the relay log.
    Pull { node: Index, entry: Index },
    /// A replica merges another's snapshot.
    Snapshot { from: Index, to: Index },
    /// A replica replaces its state with another's snapshot (as after the
    /// relay compacted past its cursor); what it loses comes back later.
    Reset { from: Index, to: Index },
    /// A replica restarts from its store.
    Restart { node: Index },
    /// A replica's store is copied aside.
    Backup { node: Index },
    /// A replica is restored from its last backup (if any), then catches up
    /// on its own operations made since, as a relay would send them before
    /// it writes again.
    RestoreBackup { node: Index, catch_up: CatchUp },
}

/// How a replica restored from a backup gets its own later operations back.
#[derive(Clone, Copy, Debug)]
enum CatchUp {
    /// As operations.
    Ops,
    /// By merging a snapshot holding every operation made so far.
    Merge,
    /// By replacing its state with such a snapshot.
    Reset,
}

fn set_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec(
        (prop::sample::select(&FIELDS[..]), common::value()),
        0..=FIELDS.len(),
    )
    .prop_map(|fields| {
        // Naming a field twice is allowed locally (the last value wins).
        fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
    })
}

fn local_write() -> impl Strategy<Value = LocalWrite> {
    prop_oneof![
        4 => set_fields().prop_map(LocalWrite::Put),
        2 => set_fields().prop_map(LocalWrite::PutIfCurrent),
        2 => (set_fields(), collection(), doc_id())
            .prop_map(|(f, c, i)| LocalWrite::PutIfOther(f, c, i)),
        1 => prop::sample::subsequence(&FIELDS[..], 1..=2)
            .prop_map(|names| LocalWrite::Unset(names.into_iter().map(str::to_owned).collect())),
        2 => Just(LocalWrite::Delete),
        1 => Just(LocalWrite::Create),
        1 => Just(LocalWrite::Drop),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (any::<Index>(), 0u64..3, collection(), doc_id(), local_write()).prop_map(
            |(node, dt, collection, id, write)| Action::Write { node, dt, collection, id, write }
        ),
        5 => any::<(Index, Index, Index)>()
            .prop_map(|(from, to, op)| Action::Deliver { from, to, op }),
        2 => any::<(Index, Index)>().prop_map(|(node, count)| Action::Push { node, count }),
        4 => any::<(Index, Index)>().prop_map(|(node, entry)| Action::Pull { node, entry }),
        1 => any::<(Index, Index)>().prop_map(|(from, to)| Action::Snapshot { from, to }),
        1 => any::<(Index, Index)>().prop_map(|(from, to)| Action::Reset { from, to }),
        1 => any::<Index>().prop_map(|node| Action::Restart { node }),
        1 => any::<Index>().prop_map(|node| Action::Backup { node }),
        1 => (
            any::<Index>(),
            prop_oneof![Just(CatchUp::Ops), Just(CatchUp::Merge), Just(CatchUp::Reset)],
        )
            .prop_map(|(node, catch_up)| Action::RestoreBackup { node, catch_up }),
    ]
}

/// One replica with its wall clock, its store, maybe a backup of it, and
/// the documents that events announced during the current action.
struct Node {
    replica: Replica,
    now: u64,
    store: MemoryStore,
    backup: Option<MemoryStore>,
    announced: BTreeSet<(String, String)>,
}

impl Node {
    /// Writes the pending persist batch and checks the pending events.
    fn settle(&mut self, expect_origin: Origin) {
        if let Some(batch) = self.replica.take_persist() {
            let Ok(()) = self.store.write(&batch);
        }
        while let Some(event) = self.replica.poll_event() {
            let origin = match &event {
                Event::DocumentChanged {
                    origin,
                    collection,
                    id,
                } => {
                    self.announced.insert((collection.clone(), id.clone()));
                    *origin
                }
                Event::CollectionChanged { origin, .. } => *origin,
                other => panic!("unexpected event {other:?}"),
            };
            assert_eq!(
                origin, expect_origin,
                "event {event:?} has the wrong origin"
            );
        }
    }
}

/// The simulated world: replicas, the relay's log, and every operation
/// ever made (a replica restored from a backup forgets some of its own).
struct World {
    nodes: Vec<Node>,
    relay: Vec<Op>,
    made: Vec<Op>,
}

impl World {
    fn new(count: usize, start_offsets: &[u64]) -> World {
        let nodes = (0..count)
            .map(|i| {
                let mut node = Node {
                    replica: Replica::new(ReplicaId(i as u64 + 1), ReplicaConfig::default()),
                    now: 1_000 + start_offsets[i % start_offsets.len()],
                    store: MemoryStore::new(),
                    backup: None,
                    announced: BTreeSet::new(),
                };
                node.settle(Origin::Local);
                node
            })
            .collect();
        World {
            nodes,
            relay: Vec::new(),
            made: Vec::new(),
        }
    }

    /// Runs one action, then checks that every document whose contents
    /// changed on some replica was announced there by an event.
    fn run(&mut self, action: &Action) {
        let before: Vec<_> = self.nodes.iter().map(|n| documents(&n.replica)).collect();
        for node in &mut self.nodes {
            node.announced.clear();
        }
        self.step(action);
        if matches!(action, Action::RestoreBackup { .. }) {
            return; // the host swapped the replica; nothing to announce
        }
        for (node, before) in self.nodes.iter().zip(before) {
            for (key, doc) in documents(&node.replica) {
                let old = before.get(&key).cloned().flatten();
                let changed =
                    old.map(|d| (d.fields, d.revision)) != doc.map(|d| (d.fields, d.revision));
                assert!(
                    !changed || node.announced.contains(&key),
                    "{key:?} changed on replica {} without an event after {action:?}",
                    node.replica.id()
                );
            }
        }
    }

    fn step(&mut self, action: &Action) {
        match action {
            Action::Write {
                node,
                dt,
                collection,
                id,
                write,
            } => {
                let node = node.get_mut(&mut self.nodes);
                node.now += dt;
                let seq = node.replica.next_seq();
                write_locally(node, collection, id, write);
                if node.replica.next_seq() != seq {
                    let op = node.replica.outbox().next_back().expect("queued");
                    assert_eq!(op.id.seq, seq, "a local write took an unexpected number");
                    self.made.push(op);
                }
                node.settle(Origin::Local);
            }
            Action::Deliver { from, to, op } => {
                let outbox: Vec<Op> = from.get(&self.nodes).replica.outbox().collect();
                if outbox.is_empty() {
                    return;
                }
                let op = op.get(&outbox);
                receive(to.get_mut(&mut self.nodes), op);
            }
            Action::Push { node, count } => {
                let node = node.get_mut(&mut self.nodes);
                let outbox: Vec<Op> = node.replica.outbox().collect();
                if outbox.is_empty() {
                    return;
                }
                let pushed = &outbox[..=count.index(outbox.len())];
                self.relay.extend(pushed.iter().cloned());
                let through = pushed.last().map_or(0, |op| op.id.seq);
                assert_eq!(node.replica.acknowledge(through), pushed.len());
                node.settle(Origin::Local);
            }
            Action::Pull { node, entry } => {
                if self.relay.is_empty() {
                    return;
                }
                let op = entry.get(&self.relay).clone();
                receive(node.get_mut(&mut self.nodes), &op);
            }
            Action::Snapshot { from, to } => {
                let bytes = from.get(&self.nodes).replica.encode_snapshot();
                let snapshot = Snapshot::decode(&bytes).expect("own snapshot decodes");
                let to = to.get_mut(&mut self.nodes);
                to.replica
                    .merge_snapshot(Timestamp::from_unix_ms(to.now), &snapshot)
                    .expect("snapshot within drift");
                to.settle(Origin::Remote);
            }
            Action::Reset { from, to } => {
                let bytes = from.get(&self.nodes).replica.encode_snapshot();
                let snapshot = Snapshot::decode(&bytes).expect("own snapshot decodes");
                let to = to.get_mut(&mut self.nodes);
                to.replica
                    .reset_to_snapshot(Timestamp::from_unix_ms(to.now), snapshot.clone())
                    .expect("snapshot within drift");
                to.settle(Origin::Remote);
            }
            Action::Restart { node } => restart(node.get_mut(&mut self.nodes)),
            Action::Backup { node } => {
                let node = node.get_mut(&mut self.nodes);
                node.backup = Some(node.store.clone());
            }
            Action::RestoreBackup { node, catch_up } => {
                let node = node.get_mut(&mut self.nodes);
                restore_backup(node, &self.made, *catch_up);
            }
        }
    }

    /// Everyone pushes everything, then everyone receives the whole relay
    /// log and every operation ever made, each in a different order.
    fn final_exchange(&mut self) {
        for node in &mut self.nodes {
            let outbox: Vec<Op> = node.replica.outbox().collect();
            self.relay.extend(outbox);
        }
        let everything: Vec<Op> = self.relay.iter().chain(&self.made).cloned().collect();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let len = everything.len();
            for k in 0..len {
                // A different rotation, and every other node backwards.
                let at = (k + i * 7) % len;
                let at = if i % 2 == 1 { len - 1 - at } else { at };
                receive(node, &everything[at]);
            }
        }
    }
}

/// Every document of the universe as the replica shows it.
fn documents(replica: &Replica) -> BTreeMap<(String, String), Option<Document>> {
    let mut out = BTreeMap::new();
    for collection in COLLECTIONS {
        for id in DOC_IDS {
            let key = (collection.to_owned(), id.to_owned());
            out.insert(key, replica.get(collection, id));
        }
    }
    out
}

/// A remote operation arrives; it is never refused in this world.
fn receive(node: &mut Node, op: &Op) {
    let known = node.replica.version().contains(op.id);
    let result = node.replica.apply(Timestamp::from_unix_ms(node.now), op);
    let expected = if known {
        Applied::Duplicate
    } else {
        Applied::New
    };
    assert_eq!(result, Ok(expected), "applying {op:?}");
    node.settle(Origin::Remote);
}

/// Performs a local write and checks what the writer sees right after it:
/// a local write always wins on its own replica.
fn write_locally(node: &mut Node, collection: &str, id: &str, write: &LocalWrite) {
    let replica = &mut node.replica;
    let now = node.now;
    let check_put = |replica: &Replica, fields: &[(String, Value)], rev| {
        let doc = replica
            .get(collection, id)
            .expect("written document exists");
        assert_eq!(Some(doc.revision), rev);
        for (name, _) in fields {
            let last = fields.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v);
            assert_eq!(doc.fields.get(name), last, "field {name} after a local put");
        }
    };
    match write {
        LocalWrite::Put(fields) => {
            let rev = replica.put(Timestamp::from_unix_ms(now), collection, id, fields.clone());
            check_put(replica, fields, rev.ok());
        }
        LocalWrite::PutIfCurrent(fields) => {
            let current = replica.revision(collection, id);
            let rev = replica.put_if(
                Timestamp::from_unix_ms(now),
                collection,
                id,
                fields.clone(),
                current,
            );
            check_put(replica, fields, rev.ok());
        }
        LocalWrite::PutIfOther(fields, other_collection, other_id) => {
            let given = replica.revision(other_collection, other_id);
            let current = replica.revision(collection, id);
            let before = replica.state().clone();
            match replica.put_if(
                Timestamp::from_unix_ms(now),
                collection,
                id,
                fields.clone(),
                given,
            ) {
                Ok(rev) => {
                    assert_eq!(given, current, "put_if succeeded on a stale revision");
                    check_put(replica, fields, Some(rev));
                }
                Err(WriteError::RevisionMismatch {
                    expected, actual, ..
                }) => {
                    assert_ne!(given, current, "put_if failed on the current revision");
                    assert_eq!((expected, actual), (given, current));
                    assert_eq!(replica.state(), &before, "a refused write changed state");
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        LocalWrite::Unset(names) => {
            let rev = replica.unset(
                Timestamp::from_unix_ms(now),
                collection,
                id,
                names.iter().cloned(),
            );
            let doc = replica
                .get(collection, id)
                .expect("unset leaves the document");
            assert_eq!(rev.ok(), Some(doc.revision));
            for name in names {
                assert!(!doc.fields.contains_key(name), "{name} still set");
            }
        }
        LocalWrite::Delete => {
            replica
                .delete(Timestamp::from_unix_ms(now), collection, id)
                .expect("delete");
            assert_eq!(replica.get(collection, id), None);
        }
        LocalWrite::Create => {
            replica
                .create_collection(Timestamp::from_unix_ms(now), collection)
                .expect("create");
            assert!(replica.state().collections().any(|c| c == collection));
        }
        LocalWrite::Drop => {
            replica
                .drop_collection(Timestamp::from_unix_ms(now), collection)
                .expect("drop");
            assert!(replica.list(collection).is_empty());
            assert!(!replica.state().collections().any(|c| c == collection));
        }
    }
}

/// Restarts a replica from its store; it must come back exactly as it was.
fn restart(node: &mut Node) {
    let records = match node.store.read_all() {
        Ok(records) => records,
        Err(e) => match e {},
    };
    let restored = Replica::restore(ReplicaConfig::default(), records)
        .expect("stored records restore")
        .expect("the store is not empty");
    let old = &node.replica;
    assert_same_replica(old, &restored, "restarted");
    assert_eq!(old.id(), restored.id());
    assert_eq!(old.next_seq(), restored.next_seq());
    assert_eq!(old.clock(), restored.clock());
    assert!(
        old.outbox().eq(restored.outbox()),
        "restored outbox differs"
    );
    node.replica = restored;
}

/// Restores a replica from its backup, then hands it back its own
/// operations made since: as operations (its own in `made`), or as a
/// snapshot of a relay that holds every operation made.
fn restore_backup(node: &mut Node, made: &[Op], catch_up: CatchUp) {
    let Some(backup) = node.backup.clone() else {
        return;
    };
    let id = node.replica.id();
    let Ok(records) = backup.read_all();
    node.replica = Replica::restore(ReplicaConfig::default(), records)
        .expect("backup restores")
        .expect("backup is not empty");
    node.store = backup;
    let relay_snapshot = || {
        let mut relay = reader();
        common::apply_all(&mut relay, made);
        Snapshot::decode(&relay.encode_snapshot()).expect("decodes")
    };
    match catch_up {
        CatchUp::Ops => {
            for op in made.iter().filter(|op| op.id.replica == id) {
                receive(node, op);
            }
        }
        CatchUp::Merge => {
            node.replica
                .merge_snapshot(Timestamp::from_unix_ms(node.now), &relay_snapshot())
                .expect("stamps are within drift");
            node.settle(Origin::Remote);
        }
        CatchUp::Reset => {
            node.replica
                .reset_to_snapshot(Timestamp::from_unix_ms(node.now), relay_snapshot())
                .expect("stamps are within drift");
            node.settle(Origin::Remote);
        }
    }
    assert_eq!(
        node.replica.next_seq(),
        node.replica.version().highest(id) + 1,
        "a restored replica would reuse its own sequence numbers"
    );
    // What it now holds survives a restart, gaps in its outbox included.
    restart(node);
}

fn scenario() -> impl Strategy<Value = (usize, Vec<u64>, Vec<Action>)> {
    (
        3usize..=5,
        prop::collection::vec(0u64..4, 5),
        prop::collection::vec(action(), 0..80),
    )
}

proptest! {
    #![proptest_config(config())]

    /// After any history and a final full exchange, every replica and the
    /// reference hold the same state and version vector.
    #[test]
    fn replicas_converge((count, offsets, actions) in scenario()) {
        let mut world = World::new(count, &offsets);
        for action in &actions {
            world.run(action);
        }
        world.final_exchange();

        let mut reference = reader();
        common::apply_all(&mut reference, &world.made);
        for (i, node) in world.nodes.iter().enumerate() {
            assert_same_replica(&node.replica, &reference, &format!("replica {i} vs reference"));
        }
        // The reference saw every operation each replica made.
        for node in &world.nodes {
            let id = node.replica.id();
            prop_assert_eq!(
                reference.version().highest(id),
                node.replica.next_seq() - 1,
                "reference lacks operations of {}", id
            );
        }
        // Each replica still restarts into the same replica.
        for node in &mut world.nodes {
            restart(node);
        }
    }
}
