//! Multi-document transactions: a transaction equals the same writes made
//! one by one (state, revisions, events, outbox, stored records), lands in
//! one persist batch, announces each document and collection it changed once, and is
//! all-or-nothing when a write is refused or the
//! closure fails.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use common::{COLLECTIONS, DOC_IDS, FIELDS, value};
use proptest::prelude::*;
use sync_core::Timestamp;
use sync_core::session::{Output, Session, SessionConfig};
use sync_core::store::{MemoryStore, Store};
use sync_core::{
    Event, Replica, ReplicaConfig, ReplicaId, Transaction, Value, ValueRef, WriteError,
};

fn config() -> ProptestConfig {
    common::proptest_config(256)
}

/// One local write, through `Replica`'s API or `Transaction`'s.
#[derive(Clone, Debug)]
enum Write {
    Put(String, String, Vec<(String, Value)>),
    Unset(String, String, Vec<String>),
    Delete(String, String),
    Create(String),
    Drop(String),
}

/// Names of the universe, and sometimes an empty (invalid) one.
fn name(names: &'static [&'static str], invalid: f64) -> impl Strategy<Value = String> {
    (prop::sample::select(names), prop::bool::weighted(invalid)).prop_map(|(name, bad)| {
        if bad { String::new() } else { name.to_owned() }
    })
}

fn write(invalid: f64) -> impl Strategy<Value = Write> {
    let fields = prop::collection::vec((name(&FIELDS, invalid), value()), 1..4);
    prop_oneof![
        6 => (name(&COLLECTIONS, invalid), name(&DOC_IDS, invalid), fields)
            .prop_map(|(c, d, f)| Write::Put(c, d, f)),
        2 => (name(&COLLECTIONS, invalid), name(&DOC_IDS, invalid),
              prop::collection::vec(name(&FIELDS, invalid), 1..3))
            .prop_map(|(c, d, f)| Write::Unset(c, d, f)),
        2 => (name(&COLLECTIONS, invalid), name(&DOC_IDS, invalid))
            .prop_map(|(c, d)| Write::Delete(c, d)),
        1 => name(&COLLECTIONS, invalid).prop_map(Write::Create),
        1 => name(&COLLECTIONS, invalid).prop_map(Write::Drop),
    ]
}

fn one_by_one(replica: &mut Replica, now: u64, write: &Write) -> Result<(), WriteError> {
    match write.clone() {
        Write::Put(c, d, f) => replica
            .put(Timestamp::from_unix_ms(now), &c, &d, f)
            .map(drop),
        Write::Unset(c, d, f) => replica
            .unset(Timestamp::from_unix_ms(now), &c, &d, f)
            .map(drop),
        Write::Delete(c, d) => replica.delete(Timestamp::from_unix_ms(now), &c, &d),
        Write::Create(c) => replica.create_collection(Timestamp::from_unix_ms(now), &c),
        Write::Drop(c) => replica.drop_collection(Timestamp::from_unix_ms(now), &c),
    }
}

fn in_transaction(tx: &mut Transaction<'_>, write: &Write) -> Result<(), WriteError> {
    match write.clone() {
        Write::Put(c, d, f) => tx.put(&c, &d, f),
        Write::Unset(c, d, f) => tx.unset(&c, &d, f),
        Write::Delete(c, d) => tx.delete(&c, &d),
        Write::Create(c) => tx.create_collection(&c),
        Write::Drop(c) => tx.drop_collection(&c),
    }
}

fn events(replica: &mut Replica) -> Vec<Event> {
    std::iter::from_fn(|| replica.poll_event()).collect()
}

/// Everything observable about a replica, and its store's records.
fn observe(replica: &mut Replica, store: &mut MemoryStore) -> impl PartialEq + std::fmt::Debug {
    if let Some(batch) = replica.take_persist() {
        store.write(&batch).expect("write");
    }
    let revisions: Vec<_> = COLLECTIONS
        .iter()
        .flat_map(|c| DOC_IDS.iter().map(move |d| (*c, *d)))
        .map(|(c, d)| replica.revision(c, d))
        .collect();
    (
        replica.state().clone(),
        revisions,
        replica.outbox().collect::<Vec<_>>(),
        replica.next_seq(),
        replica.clock(),
        events(replica),
        store.read_all().expect("read"),
    )
}

/// A replica that already holds some writes, drained of events, and of
/// its persist batch if `persisted`.
fn prepared(before: &[Write], persisted: bool) -> (Replica, MemoryStore) {
    let mut replica = Replica::new(ReplicaId(7), ReplicaConfig::default());
    let mut store = MemoryStore::new();
    for (i, write) in before.iter().enumerate() {
        let _ = one_by_one(&mut replica, 1_000 + i as u64, write);
    }
    if persisted {
        store
            .write(&replica.take_persist().expect("meta at least"))
            .expect("write");
    }
    events(&mut replica);
    (replica, store)
}

proptest! {
    #![proptest_config(config())]

    /// Valid writes in one transaction leave the replica and its stored
    /// records exactly as the same writes made one by one at the same time,
    /// and announce the same documents once each; the transaction's changes come in one persist batch.
    #[test]
    fn transaction_equals_writes_one_by_one(
        before in prop::collection::vec(write(0.0), 0..8),
        persisted in any::<bool>(),
        writes in prop::collection::vec(write(0.0), 0..12),
    ) {
        let now = 2_000;
        let (mut serial, mut serial_store) = prepared(&before, persisted);
        for write in &writes {
            one_by_one(&mut serial, now, write).expect("valid write");
        }
        let (mut batched, mut batched_store) = prepared(&before, persisted);
        batched
            .transaction(Timestamp::from_unix_ms(now), |tx| {
                for write in &writes {
                    in_transaction(tx, write)?;
                }
                prop_assert_eq!(tx.len(), writes.len());
                Ok::<_, TestCaseError>(())
            })?;
        let batch = batched.take_persist();
        prop_assert_eq!(batch.is_some(), !writes.is_empty() || !persisted);
        if let Some(batch) = batch {
            batched_store.write(&batch).expect("write");
        }
        prop_assert!(batched.take_persist().is_none(), "one batch for the transaction");
        // Made one by one, a document changed twice is announced twice; a
        // transaction announces it once, where it first changed.
        let mut expected_events = Vec::new();
        for event in events(&mut serial) {
            if !expected_events.contains(&event) {
                expected_events.push(event);
            }
        }
        prop_assert_eq!(events(&mut batched), expected_events);
        prop_assert_eq!(
            observe(&mut batched, &mut batched_store),
            observe(&mut serial, &mut serial_store)
        );
    }

    /// A transaction with a refused write anywhere in it changes nothing:
    /// not the state, the clock, the sequence, the outbox, the events nor
    /// the next persist batch.
    #[test]
    fn a_refused_write_leaves_the_replica_unchanged(
        before in prop::collection::vec(write(0.0), 0..8),
        writes in prop::collection::vec(write(0.2), 1..12),
    ) {
        let now = 2_000;
        let invalid = writes.iter().any(|w| {
            let mut probe = prepared(&before, true).0;
            one_by_one(&mut probe, now, w).is_err()
        });
        prop_assume!(invalid);
        let (mut replica, mut store) = prepared(&before, true);
        let (mut untouched, mut untouched_store) = prepared(&before, true);
        let result = replica.transaction(Timestamp::from_unix_ms(now), |tx| {
            for write in &writes {
                in_transaction(tx, write)?;
            }
            Ok::<_, WriteError>(())
        });
        prop_assert!(matches!(result, Err(WriteError::Invalid(_))), "{:?}", result);
        prop_assert!(replica.take_persist().is_none());
        prop_assert_eq!(
            observe(&mut replica, &mut store),
            observe(&mut untouched, &mut untouched_store)
        );
    }
}

/// An error of the closure's own, after writes, abandons them all.
#[test]
fn the_closures_own_error_abandons_the_transaction() {
    #[derive(Debug, PartialEq)]
    enum AppError {
        Write(WriteError),
        Cancelled,
    }
    impl From<WriteError> for AppError {
        fn from(e: WriteError) -> Self {
            AppError::Write(e)
        }
    }
    let mut replica = Replica::new(ReplicaId(7), ReplicaConfig::default());
    replica.take_persist();
    let result = replica.transaction(Timestamp::from_unix_ms(1_000), |tx| {
        tx.put("c", "a", [("x", 1)])?;
        tx.delete("c", "b")?;
        Err::<(), _>(AppError::Cancelled)
    });
    assert_eq!(result, Err(AppError::Cancelled));
    assert!(replica.take_persist().is_none());
    assert_eq!(replica.outbox().len(), 0);
    assert_eq!(replica.next_seq(), 1);
    assert!(replica.poll_event().is_none());
    assert_eq!(replica.documents("c").count(), 0);
}

/// A transaction of one collection drop announces every document it
/// removed, as `Replica::drop_collection` does, also those written since
/// the last persist batch (dirty already).
#[test]
fn a_lone_collection_drop_announces_every_document_it_removed() {
    let changed = |events: Vec<Event>| {
        events
            .into_iter()
            .filter_map(|event| match event {
                Event::DocumentChanged { id, .. } => Some(id),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut replica = Replica::new(ReplicaId(7), ReplicaConfig::default());
    replica
        .put(Timestamp::from_unix_ms(1_000), "c", "a", [("x", 1)])
        .expect("put");
    replica.take_persist();
    replica
        .put(Timestamp::from_unix_ms(1_000), "c", "b", [("x", 1)])
        .expect("put");
    events(&mut replica);
    replica
        .transaction(Timestamp::from_unix_ms(1_001), |tx| tx.drop_collection("c"))
        .expect("drop");
    let mut ids = changed(events(&mut replica));
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
}

/// Conditions and reads inside a transaction see the state before it; a
/// failed condition can be passed on (abandoning everything) or ignored.
#[test]
fn conditions_see_the_state_before_the_transaction() {
    let mut replica = Replica::new(ReplicaId(7), ReplicaConfig::default());
    let rev = replica
        .put(Timestamp::from_unix_ms(1_000), "c", "a", [("x", 1)])
        .expect("put");
    let out = replica.transaction(Timestamp::from_unix_ms(1_001), |tx| {
        tx.put("c", "a", [("x", 2)])?;
        // Still the revision from before the transaction.
        assert_eq!(tx.state().revision("c", "a"), Some(rev));
        assert_eq!(tx.state().get_field("c", "a", "x"), Some(ValueRef::Int(1)));
        tx.put_if("c", "a", [("y", 3)], Some(rev))?;
        let stale = tx.put_if("c", "b", [("y", 4)], Some(rev));
        assert!(matches!(stale, Err(WriteError::RevisionMismatch { .. })));
        Ok::<_, WriteError>(tx.len())
    });
    assert_eq!(out, Ok(2));
    let doc = replica.document("c", "a").expect("exists").to_document();
    assert_eq!(doc.fields["x"], Value::Int(2));
    assert_eq!(doc.fields["y"], Value::Int(3));
    assert!(replica.document("c", "b").is_none());

    let before = replica.state().clone();
    let failed = replica.transaction(Timestamp::from_unix_ms(1_002), |tx| {
        tx.put("c", "z", [("x", 1)])?;
        tx.put_if("c", "a", [("x", 9)], Some(rev))?;
        Ok::<_, WriteError>(())
    });
    assert!(matches!(failed, Err(WriteError::RevisionMismatch { .. })));
    assert!(replica.state() == &before);
}

/// A session persists a transaction in one batch.
#[test]
fn a_session_persists_a_transaction_once() {
    let replica = Replica::new(ReplicaId(7), ReplicaConfig::default());
    let mut session = Session::new(replica, SessionConfig::new("room", "token"), 1);
    while session.poll().is_some() {}
    session
        .transaction(Timestamp::from_unix_ms(1_000), |tx| {
            for d in 0..50 {
                tx.put("c", &format!("d{d}"), [("x", d)])?;
            }
            tx.delete("c", "d3")
        })
        .expect("transaction");
    let outputs: Vec<Output> = std::iter::from_fn(|| session.poll()).collect();
    let persists: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Persist { batch, .. } => Some(batch),
            _ => None,
        })
        .collect();
    assert_eq!(persists.len(), 1, "{outputs:?}");
    // Meta, sync state, 50 documents and 51 outbox records.
    assert_eq!(persists[0].writes.len(), 2 + 50 + 51);
    assert_eq!(session.status().pending_ops, 51);
    assert_eq!(session.documents("c").count(), 49);
}
