//! One test per merge and replica rule, with hand-built operations and
//! replicas: per-field last-writer-wins and its tie break, document and
//! collection tombstones, unset, conditional writes and revisions, version
//! vector deduplication, drift refusal, invalid operations, the outbox,
//! events, persistence and restore — and the store conformance suite run
//! against `MemoryStore`.

use std::collections::BTreeMap;

use sync_core::Timestamp;
use sync_core::store::conformance::Harness;
use sync_core::store::{MemoryStore, Store};
use sync_core::version::SeqSet;
use sync_core::{
    Applied, ApplyError, Change, ClockError, Event, Hlc, InvalidOp, Op, OpId, Origin, Replica,
    ReplicaConfig, ReplicaId, RestoreError, Snapshot, State, StoreKey, Value, VersionVector, Write,
    WriteError,
};

// ---- helpers ----

/// A host wall clock in milliseconds, far ahead of the hand-made stamps.
const NOW: u64 = 1_700_000_000_000;

const ALICE: ReplicaId = ReplicaId(1);
const BOB: ReplicaId = ReplicaId(2);

fn replica(id: u64) -> Replica {
    Replica::new(ReplicaId(id), ReplicaConfig::default())
}

/// A reader replica, not among the writers of hand-made operations.
fn reader() -> Replica {
    replica(100)
}

fn hlc(wall: u64, counter: u16) -> Hlc {
    Hlc::new(wall, counter).expect("in range")
}

fn op(replica: u64, seq: u64, wall: u64, change: Change) -> Op {
    Op {
        id: OpId {
            replica: ReplicaId(replica),
            seq,
        },
        hlc: hlc(wall, 0),
        change,
    }
}

/// A put of `c/d`; a `None` value removes the field.
fn put(fields: &[(&str, Option<Value>)]) -> Change {
    Change::Put {
        collection: "c".into(),
        id: "d".into(),
        fields: fields
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
    }
}

fn set(name: &str, value: impl Into<Value>) -> (&str, Option<Value>) {
    (name, Some(value.into()))
}

fn delete() -> Change {
    Change::Delete {
        collection: "c".into(),
        id: "d".into(),
    }
}

fn create() -> Change {
    Change::CreateCollection {
        collection: "c".into(),
    }
}

fn drop_c() -> Change {
    Change::DropCollection {
        collection: "c".into(),
    }
}

/// Applies operations in order; each must be accepted as new.
fn apply(replica: &mut Replica, ops: &[&Op]) {
    for op in ops {
        assert_eq!(
            replica.apply(at(NOW), op),
            Ok(Applied::New),
            "applying {op:?}"
        );
    }
}

/// Applies `ops` to fresh readers in the given order and in reverse, checks
/// both agree, and returns one of them.
fn both_orders(ops: &[&Op]) -> Replica {
    let mut forward = reader();
    apply(&mut forward, ops);
    let mut backward = reader();
    let reversed: Vec<&Op> = ops.iter().rev().copied().collect();
    apply(&mut backward, &reversed);
    assert_eq!(forward.state(), backward.state(), "order changed the state");
    assert_eq!(forward.get("c", "d"), backward.get("c", "d"));
    forward
}

/// The live fields of `c/d`, or `None` when it does not exist.
fn fields(replica: &Replica) -> Option<BTreeMap<String, Value>> {
    replica.get("c", "d").map(|doc| doc.fields)
}

fn map(entries: &[(&str, Value)]) -> Option<BTreeMap<String, Value>> {
    Some(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

/// Sends every outbox operation of `from` to `to`.
fn sync(from: &Replica, to: &mut Replica, now: u64) {
    for op in from.outbox() {
        to.apply(at(now), &op).expect("valid operation");
    }
}

fn drain_events(replica: &mut Replica) -> Vec<Event> {
    std::iter::from_fn(|| replica.poll_event()).collect()
}

/// Writes the pending persist batch, if any, to `store`.
fn persist(replica: &mut Replica, store: &mut MemoryStore) {
    if let Some(batch) = replica.take_persist() {
        let Ok(()) = store.write(&batch);
    }
}

fn restore(store: &MemoryStore) -> Replica {
    let Ok(records) = store.read_all();
    Replica::restore(ReplicaConfig::default(), records)
        .expect("records restore")
        .expect("store not empty")
}

fn snapshot_of(replica: &Replica) -> Snapshot {
    Snapshot::decode(&replica.encode_snapshot()).expect("own snapshot decodes")
}

/// Everything observable about a replica: state, version, clock, next
/// sequence number and outbox.
type Observable = (State, VersionVector, Hlc, u64, Vec<Op>);

/// What a replica looks like, to check that a refused call changed nothing.
fn observable(replica: &Replica) -> Observable {
    (
        replica.state().clone(),
        replica.version().clone(),
        replica.clock(),
        replica.next_seq(),
        replica.outbox().collect::<Vec<_>>(),
    )
}

// ---- per-field last-writer-wins ----

#[test]
fn concurrent_edits_of_different_fields_both_survive() {
    let a = op(1, 1, 10, put(&[set("title", "milk")]));
    let b = op(2, 1, 10, put(&[set("done", true)]));
    let r = both_orders(&[&a, &b]);
    assert_eq!(
        fields(&r),
        map(&[("title", "milk".into()), ("done", true.into())])
    );
}

#[test]
fn same_field_higher_stamp_wins() {
    let older = op(2, 1, 10, put(&[set("title", "old")]));
    let newer = op(1, 1, 11, put(&[set("title", "new")]));
    let r = both_orders(&[&older, &newer]);
    assert_eq!(fields(&r), map(&[("title", "new".into())]));
    // The revision carries the highest stamp.
    assert_eq!(
        r.revision("c", "d").map(|rev| rev.stamp),
        Some(newer.stamp())
    );
}

#[test]
fn equal_clock_readings_break_ties_on_replica_id() {
    let low = op(1, 1, 10, put(&[set("title", "from 1")]));
    let high = op(2, 1, 10, put(&[set("title", "from 2")]));
    let r = both_orders(&[&low, &high]);
    assert_eq!(fields(&r), map(&[("title", "from 2".into())]));
}

#[test]
fn a_put_keeps_fields_it_does_not_name() {
    let first = op(1, 1, 10, put(&[set("a", 1), set("b", 1)]));
    let second = op(2, 1, 11, put(&[set("b", 2)]));
    let r = both_orders(&[&first, &second]);
    assert_eq!(fields(&r), map(&[("a", 1.into()), ("b", 2.into())]));
}

// ---- document delete ----

#[test]
fn write_stamped_after_delete_brings_back_only_later_fields() {
    let before = op(1, 1, 10, put(&[set("a", 1), set("b", 1)]));
    let del = op(2, 1, 11, delete());
    let after = op(1, 2, 12, put(&[set("b", 2)]));
    let r = both_orders(&[&before, &del, &after]);
    assert_eq!(fields(&r), map(&[("b", 2.into())]));
}

#[test]
fn write_stamped_before_delete_arriving_after_it_is_ignored() {
    let del = op(2, 1, 11, delete());
    let stale = op(1, 1, 10, put(&[set("a", 1)]));
    let mut r = reader();
    apply(&mut r, &[&del]);
    let before = r.state().clone();
    drain_events(&mut r);
    apply(&mut r, &[&stale]);
    assert_eq!(fields(&r), None);
    assert_eq!(r.state(), &before, "a covered write changed the state");
    assert!(
        drain_events(&mut r).is_empty(),
        "a covered write raised events"
    );
}

#[test]
fn write_stamped_equal_to_delete_is_covered() {
    // "Fields stamped at or before it are gone": the same stamp is covered.
    let stamp_hlc = hlc(10, 0);
    let del = Op {
        id: OpId {
            replica: BOB,
            seq: 1,
        },
        hlc: stamp_hlc,
        change: delete(),
    };
    let same = Op {
        id: OpId {
            replica: BOB,
            seq: 2,
        },
        hlc: stamp_hlc,
        change: put(&[set("a", 1)]),
    };
    // Not something a real replica produces (its stamps are unique), but
    // the rule must still hold whichever arrives first.
    let mut one = reader();
    apply(&mut one, &[&del, &same]);
    let mut two = reader();
    apply(&mut two, &[&same, &del]);
    assert_eq!(fields(&one), None);
    assert_eq!(fields(&two), None);
    assert_eq!(one.state(), two.state());
}

#[test]
fn delete_between_writes_removes_only_earlier_fields() {
    let early = op(1, 1, 10, put(&[set("a", 1)]));
    let late = op(1, 2, 12, put(&[set("b", 1)]));
    let del = op(2, 1, 11, delete());
    let r = both_orders(&[&early, &late, &del]);
    assert_eq!(fields(&r), map(&[("b", 1.into())]));
}

// ---- collections ----

#[test]
fn drop_removes_documents_written_before_it() {
    let write = op(1, 1, 10, put(&[set("a", 1)]));
    let dropped = op(2, 1, 11, drop_c());
    let r = both_orders(&[&write, &dropped]);
    assert_eq!(fields(&r), None);
    assert!(r.list("c").is_empty());
    assert_eq!(r.state().collections().count(), 0);
}

#[test]
fn write_after_drop_brings_the_collection_back_with_only_later_writes() {
    let before = op(1, 1, 10, put(&[set("a", 1)]));
    let other_doc = Op {
        change: Change::Put {
            collection: "c".into(),
            id: "other".into(),
            fields: vec![("x".into(), Some(1.into()))],
        },
        ..op(1, 2, 10, create())
    };
    let dropped = op(2, 1, 11, drop_c());
    let after = op(1, 3, 12, put(&[set("b", 2)]));
    let r = both_orders(&[&before, &other_doc, &dropped, &after]);
    assert_eq!(fields(&r), map(&[("b", 2.into())]));
    assert_eq!(r.get("c", "other"), None);
    assert_eq!(r.state().collections().collect::<Vec<_>>(), vec!["c"]);
}

#[test]
fn write_before_drop_arriving_after_it_is_ignored() {
    let dropped = op(2, 1, 11, drop_c());
    let stale = op(1, 1, 10, put(&[set("a", 1)]));
    let mut r = reader();
    apply(&mut r, &[&dropped]);
    let before = r.state().clone();
    apply(&mut r, &[&stale]);
    assert_eq!(r.state(), &before);
    assert_eq!(fields(&r), None);
}

#[test]
fn create_after_drop_recreates_and_create_before_drop_is_gone() {
    let early_create = op(1, 1, 10, create());
    let dropped = op(2, 1, 11, drop_c());
    let r = both_orders(&[&early_create, &dropped]);
    assert_eq!(r.state().collections().count(), 0);

    let late_create = op(1, 2, 12, create());
    let r = both_orders(&[&early_create, &dropped, &late_create]);
    assert_eq!(r.state().collections().collect::<Vec<_>>(), vec!["c"]);
    assert!(r.list("c").is_empty());
}

#[test]
fn document_delete_after_a_drop_survives_the_drop() {
    // The delete at 12 must still cover a put at 11 that the drop at 10 does not.
    let dropped = op(2, 1, 10, drop_c());
    let del = op(2, 2, 12, delete());
    let between = op(1, 1, 11, put(&[set("a", 1)]));
    let after = op(1, 2, 13, put(&[set("b", 1)]));
    let r = both_orders(&[&dropped, &del, &between, &after]);
    assert_eq!(fields(&r), map(&[("b", 1.into())]));
}

// ---- unset ----

#[test]
fn unset_removes_a_field_and_keeps_the_others() {
    let write = op(1, 1, 10, put(&[set("a", 1), set("b", 1)]));
    let unset = op(2, 1, 11, put(&[("a", None)]));
    let r = both_orders(&[&write, &unset]);
    assert_eq!(fields(&r), map(&[("b", 1.into())]));
}

#[test]
fn unset_loses_to_a_later_write_of_the_field() {
    let unset = op(2, 1, 11, put(&[("a", None)]));
    let rewrite = op(1, 1, 12, put(&[set("a", 2)]));
    let r = both_orders(&[&unset, &rewrite]);
    assert_eq!(fields(&r), map(&[("a", 2.into())]));
}

#[test]
fn local_unset_removes_the_field() {
    let mut r = replica(1);
    r.put(at(NOW), "c", "d", [("a", 1), ("b", 2)]).unwrap();
    let rev = r.unset(at(NOW), "c", "d", ["a"]).unwrap();
    assert_eq!(fields(&r), map(&[("b", 2.into())]));
    assert_eq!(r.revision("c", "d"), Some(rev));
}

// ---- conditional writes and revisions ----

#[test]
fn put_if_with_a_stale_revision_fails_and_changes_nothing() {
    let mut r = replica(1);
    let stale = r.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    let current = r.put(at(NOW + 1), "c", "d", [("a", 2)]).unwrap();
    drain_events(&mut r);
    let before = observable(&r);
    let err = r.put_if(at(NOW + 2), "c", "d", [("a", 3)], Some(stale));
    assert_eq!(
        err,
        Err(WriteError::RevisionMismatch {
            collection: "c".into(),
            id: "d".into(),
            expected: Some(stale),
            actual: Some(current),
        })
    );
    assert_eq!(observable(&r), before);
    assert!(drain_events(&mut r).is_empty());
}

#[test]
fn put_if_with_the_current_revision_succeeds() {
    let mut r = replica(1);
    let current = r.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    let next = r
        .put_if(at(NOW), "c", "d", [("a", 2)], Some(current))
        .unwrap();
    assert_ne!(next, current);
    assert_eq!(fields(&r), map(&[("a", 2.into())]));
    assert_eq!(r.revision("c", "d"), Some(next));
}

#[test]
fn put_if_none_creates_only_if_absent() {
    let mut r = replica(1);
    r.put_if(at(NOW), "c", "d", [("a", 1)], None).unwrap();
    let existing = r.revision("c", "d");
    assert!(matches!(
        r.put_if(at(NOW), "c", "d", [("a", 2)], None),
        Err(WriteError::RevisionMismatch { expected: None, actual, .. }) if actual == existing
    ));
    // After a delete it is absent again.
    r.delete(at(NOW), "c", "d").unwrap();
    assert_eq!(r.revision("c", "d"), None);
    r.put_if(at(NOW), "c", "d", [("a", 3)], None).unwrap();
    assert_eq!(fields(&r), map(&[("a", 3.into())]));
}

#[test]
fn late_older_write_that_adds_a_field_changes_the_revision() {
    // Bob writes first by the clock, but his write reaches Alice late.
    let mut alice = replica(1);
    let mut bob = replica(2);
    bob.put(at(NOW), "c", "d", [("done", true)]).unwrap();
    let read = alice
        .put(at(NOW + 5_000), "c", "d", [("title", "milk")])
        .unwrap();
    sync(&bob, &mut alice, NOW + 5_000);
    let after = alice.revision("c", "d").expect("exists");
    // The highest stamp did not move, but the document changed.
    assert_eq!(after.stamp, read.stamp);
    assert_ne!(after, read, "the revision must see the late field");
    assert!(matches!(
        alice.put_if(
            at(NOW + 5_001),
            "c",
            "d",
            [("title", "oat milk")],
            Some(read)
        ),
        Err(WriteError::RevisionMismatch { .. })
    ));
    alice
        .put_if(
            at(NOW + 5_001),
            "c",
            "d",
            [("title", "oat milk")],
            Some(after),
        )
        .unwrap();
}

#[test]
fn late_older_delete_that_prunes_a_field_changes_the_revision() {
    let early = op(1, 1, 10, put(&[set("a", 1)]));
    let late = op(1, 2, 12, put(&[set("b", 1)]));
    let del = op(2, 1, 11, delete());
    let mut r = reader();
    apply(&mut r, &[&early, &late]);
    let read = r.revision("c", "d");
    apply(&mut r, &[&del]);
    assert_ne!(r.revision("c", "d"), read);
}

#[test]
fn revisions_are_equal_on_replicas_holding_the_same_writes() {
    let mut alice = replica(1);
    let mut bob = replica(2);
    alice.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    bob.put(at(NOW), "c", "d", [("b", 1)]).unwrap();
    bob.unset(at(NOW + 1), "c", "d", ["zzz"]).unwrap();
    sync(&alice, &mut bob, NOW + 2);
    sync(&bob, &mut alice, NOW + 2);
    let rev = alice.revision("c", "d");
    assert!(rev.is_some());
    assert_eq!(rev, bob.revision("c", "d"));
    // And they survive a round trip through text.
    let text = rev.unwrap().to_string();
    assert_eq!(text.parse().ok(), rev);
}

#[test]
fn a_losing_write_does_not_change_the_revision() {
    let newer = op(1, 1, 12, put(&[set("a", 2)]));
    let older = op(2, 1, 11, put(&[set("a", 1)]));
    let mut r = reader();
    apply(&mut r, &[&newer]);
    let read = r.revision("c", "d");
    apply(&mut r, &[&older]);
    assert_eq!(r.revision("c", "d"), read);
}

// ---- version vector ----

#[test]
fn applying_the_same_operation_twice_is_a_duplicate() {
    let write = op(1, 1, 10, put(&[set("a", 1)]));
    let mut r = reader();
    assert_eq!(r.apply(at(NOW), &write), Ok(Applied::New));
    drain_events(&mut r);
    let before = observable(&r);
    assert_eq!(r.apply(at(NOW), &write), Ok(Applied::Duplicate));
    assert_eq!(observable(&r), before);
    assert!(drain_events(&mut r).is_empty());
}

#[test]
fn out_of_order_sequence_numbers_are_tracked_exactly() {
    let third = op(1, 3, 12, put(&[set("a", 3)]));
    let first = op(1, 1, 10, put(&[set("a", 1)]));
    let mut r = reader();
    apply(&mut r, &[&third, &first]);
    let id = |seq| OpId {
        replica: ALICE,
        seq,
    };
    assert!(r.version().contains(id(1)));
    assert!(!r.version().contains(id(2)));
    assert!(r.version().contains(id(3)));
    assert_eq!(r.version().highest(ALICE), 3);
    let second = op(1, 2, 11, put(&[set("a", 2)]));
    assert_eq!(r.apply(at(NOW), &second), Ok(Applied::New));
    assert_eq!(r.apply(at(NOW), &third), Ok(Applied::Duplicate));
    assert_eq!(fields(&r), map(&[("a", 3.into())]));
}

// ---- drift ----

#[test]
fn operation_beyond_the_drift_bound_is_refused_and_changes_nothing() {
    let config = ReplicaConfig::default().with_max_drift_ms(1_000);
    let mut r = Replica::new(ReplicaId(100), config);
    r.put(at(10_000), "c", "other", [("x", 1)]).unwrap();
    let _ = r.take_persist();
    drain_events(&mut r);
    let before = observable(&r);

    let far = op(1, 1, 11_001, put(&[set("a", 1)]));
    assert!(matches!(
        r.apply(at(10_000), &far),
        Err(ApplyError::Clock(ClockError::DriftExceeded {
            ahead_ms: 1_001,
            max_drift_ms: 1_000,
            ..
        }))
    ));
    assert_eq!(observable(&r), before);
    assert!(drain_events(&mut r).is_empty());
    assert!(
        r.take_persist().is_none(),
        "a refused op left something to persist"
    );
    // Refused, not recorded: it is accepted once the wall clock catches up.
    assert_eq!(r.apply(at(10_001), &far), Ok(Applied::New));

    // Exactly at the bound is fine.
    let edge = op(2, 1, 11_000, put(&[set("b", 1)]));
    assert_eq!(r.apply(at(10_000), &edge), Ok(Applied::New));
}

#[test]
fn local_writes_after_a_remote_op_from_the_future_order_after_it() {
    let mut r = replica(1);
    let ahead = op(2, 1, 50_000, put(&[set("a", "remote")]));
    r.apply(at(20_000), &ahead).unwrap();
    // The local wall clock is behind the remote stamp, yet the local write wins.
    r.put(at(20_000), "c", "d", [("a", "local")]).unwrap();
    assert_eq!(fields(&r), map(&[("a", "local".into())]));
    assert!(r.clock() > ahead.hlc);
}

// ---- invalid operations ----

/// Applies an invalid remote operation and checks it is refused as
/// invalid, naming the operation, without any effect.
fn assert_refused(change: Change) -> InvalidOp {
    let mut r = reader();
    apply(&mut r, &[&op(1, 1, 10, put(&[set("a", 1)]))]);
    let _ = r.take_persist();
    drain_events(&mut r);
    let before = observable(&r);
    let bad = op(2, 1, 11, change);
    let reason = match r.apply(at(NOW), &bad) {
        Err(ApplyError::Invalid { op, reason }) => {
            assert_eq!(op, bad.id);
            reason
        }
        other => panic!("invalid op {bad:?} gave {other:?}"),
    };
    assert_eq!(observable(&r), before);
    assert!(drain_events(&mut r).is_empty());
    assert!(r.take_persist().is_none());
    reason
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Int(1), |v, _| Value::List(vec![v]))
}

#[test]
fn remote_op_with_an_empty_collection_name_is_refused() {
    let reason = assert_refused(Change::Put {
        collection: String::new(),
        id: "d".into(),
        fields: vec![],
    });
    assert!(matches!(reason, InvalidOp::EmptyName(_)));
    assert!(matches!(
        assert_refused(Change::DropCollection {
            collection: String::new()
        }),
        InvalidOp::EmptyName(_)
    ));
    assert!(matches!(
        assert_refused(Change::Delete {
            collection: "c".into(),
            id: String::new()
        }),
        InvalidOp::EmptyName(_)
    ));
}

#[test]
fn remote_op_naming_a_field_twice_is_refused() {
    let reason = assert_refused(put(&[set("a", 1), set("b", 1), ("a", None)]));
    assert_eq!(reason, InvalidOp::DuplicateField("a".into()));
}

#[test]
fn remote_op_with_a_value_nested_too_deep_is_refused() {
    let reason = assert_refused(put(&[(
        "a",
        Some(nested(sync_core::value::MAX_VALUE_DEPTH + 1)),
    )]));
    assert_eq!(reason, InvalidOp::ValueTooDeep("a".into()));
    // The limit itself is fine.
    let mut r = reader();
    let ok = op(
        1,
        1,
        10,
        put(&[("a", Some(nested(sync_core::value::MAX_VALUE_DEPTH)))]),
    );
    assert_eq!(r.apply(at(NOW), &ok), Ok(Applied::New));
}

#[test]
fn remote_op_with_sequence_zero_or_long_names_is_refused() {
    let mut r = reader();
    let zero = op(1, 0, 10, put(&[set("a", 1)]));
    assert!(matches!(
        r.apply(at(NOW), &zero),
        Err(ApplyError::Invalid {
            reason: InvalidOp::ZeroSequence,
            ..
        })
    ));
    let long = "x".repeat(sync_core::limits::MAX_FIELD_NAME_LEN + 1);
    assert!(matches!(
        assert_refused(put(&[(long.as_str(), None)])),
        InvalidOp::NameTooLong { .. }
    ));
}

fn invalid<T: std::fmt::Debug>(result: Result<T, WriteError>) {
    assert!(
        matches!(result, Err(WriteError::Invalid(_))),
        "expected an invalid-write error, got {result:?}"
    );
}

#[test]
fn invalid_local_writes_are_refused_and_change_nothing() {
    let mut r = replica(1);
    r.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    let _ = r.take_persist();
    drain_events(&mut r);
    let before = observable(&r);
    invalid(r.put(at(NOW), "", "d", [("a", 1)]));
    invalid(r.put(at(NOW), "c", "", [("a", 1)]));
    invalid(r.put(at(NOW), "c", "d", [("", 1)]));
    invalid(r.put(
        at(NOW),
        "c",
        "d",
        [("a", nested(sync_core::value::MAX_VALUE_DEPTH + 1))],
    ));
    invalid(r.put_if(at(NOW), "", "d", [("a", 1)], None));
    invalid(r.unset(at(NOW), "c", "d", [""]));
    invalid(r.delete(at(NOW), "c", ""));
    invalid(r.create_collection(at(NOW), ""));
    invalid(r.drop_collection(
        at(NOW),
        &"c".repeat(sync_core::limits::MAX_COLLECTION_NAME_LEN + 1),
    ));
    assert_eq!(observable(&r), before);
    assert!(drain_events(&mut r).is_empty());
    assert!(r.take_persist().is_none());
}

#[test]
fn local_puts_over_the_size_or_field_count_limit_are_refused() {
    use sync_core::limits::{MAX_FIELDS_PER_PUT, MAX_OP_BYTES};
    let mut r = replica(1);
    let reason = |result: Result<_, WriteError>| match result {
        Err(WriteError::Invalid(reason)) => reason,
        other => panic!("expected an invalid-write error, got {other:?}"),
    };
    let huge = Value::from("x".repeat(MAX_OP_BYTES));
    assert!(matches!(
        reason(r.put(at(NOW), "c", "d", [("a", huge)])),
        InvalidOp::TooLarge(_)
    ));
    // Over the limit only by the names of many fields, each small.
    let names: Vec<String> = (0..MAX_OP_BYTES / 200)
        .map(|i| format!("{i:0>200}"))
        .collect();
    let many = names.iter().map(|n| (n.as_str(), Value::Null));
    assert!(matches!(
        reason(r.put(at(NOW), "c", "d", many)),
        InvalidOp::TooLarge(_)
    ));
    let too_many = (0..=MAX_FIELDS_PER_PUT).map(|i| (format!("f{i}"), Value::Null));
    assert_eq!(
        reason(r.put(at(NOW), "c", "d", too_many)),
        InvalidOp::TooManyFields(MAX_FIELDS_PER_PUT + 1)
    );
    assert!(r.document("c", "d").is_none());
    assert_eq!(r.outbox().len(), 0);
}

#[test]
fn a_local_write_naming_a_field_twice_keeps_the_last_value() {
    let mut r = replica(1);
    r.put(at(NOW), "c", "d", [("a", 1), ("a", 2)]).unwrap();
    assert_eq!(fields(&r), map(&[("a", 2.into())]));
    // And the queued operation is valid for other replicas.
    let mut other = reader();
    sync(&r, &mut other, NOW);
    assert_eq!(fields(&other), map(&[("a", 2.into())]));
}

// ---- outbox ----

#[test]
fn local_writes_queue_in_the_outbox_and_acknowledge_drops_them() {
    let mut r = replica(1);
    r.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    r.delete(at(NOW), "c", "e").unwrap();
    r.create_collection(at(NOW), "k").unwrap();
    r.apply(at(NOW), &op(2, 1, 10, put(&[set("b", 1)])))
        .unwrap();
    let seqs = |r: &Replica| r.outbox().map(|op| op.id.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&r),
        vec![1, 2, 3],
        "remote ops do not enter the outbox"
    );
    assert!(r.outbox().all(|op| op.id.replica == ALICE));
    assert_eq!(r.next_seq(), 4);

    assert_eq!(r.acknowledge(0), 0);
    assert_eq!(r.acknowledge(2), 2);
    assert_eq!(seqs(&r), vec![3]);
    assert_eq!(r.acknowledge(2), 0, "acknowledging again drops nothing");
    assert_eq!(r.acknowledge(99), 1);
    assert_eq!(r.outbox().len(), 0);
    // Acknowledging does not touch the state or the sequence.
    assert_eq!(fields(&r), map(&[("a", 1.into()), ("b", 1.into())]));
    assert_eq!(r.next_seq(), 4);
}

#[test]
fn outbox_operations_carry_increasing_stamps() {
    let mut r = replica(1);
    r.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    r.put(at(NOW - 10), "c", "d", [("a", 2)]).unwrap(); // the wall clock went back
    r.put(at(NOW), "c", "d", [("a", 3)]).unwrap();
    let hlcs: Vec<Hlc> = r.outbox().map(|op| op.hlc).collect();
    assert!(hlcs.windows(2).all(|w| w[0] < w[1]), "{hlcs:?}");
    assert_eq!(fields(&r), map(&[("a", 3.into())]));
}

// ---- events ----

fn doc_changed(collection: &str, id: &str, origin: Origin) -> Event {
    Event::DocumentChanged {
        collection: collection.into(),
        id: id.into(),
        origin,
    }
}

fn coll_changed(collection: &str, origin: Origin) -> Event {
    Event::CollectionChanged {
        collection: collection.into(),
        origin,
    }
}

#[test]
fn local_changes_raise_local_events() {
    let mut r = replica(1);
    drain_events(&mut r);
    r.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    assert_eq!(
        drain_events(&mut r),
        vec![doc_changed("c", "d", Origin::Local)]
    );
    r.delete(at(NOW), "c", "d").unwrap();
    assert_eq!(
        drain_events(&mut r),
        vec![doc_changed("c", "d", Origin::Local)]
    );
    r.create_collection(at(NOW), "k").unwrap();
    assert_eq!(drain_events(&mut r), vec![coll_changed("k", Origin::Local)]);
    r.put(at(NOW), "k", "x", [("a", 1)]).unwrap();
    drain_events(&mut r);
    r.drop_collection(at(NOW), "k").unwrap();
    let events = drain_events(&mut r);
    assert!(
        events.contains(&doc_changed("k", "x", Origin::Local)),
        "{events:?}"
    );
    assert!(
        events.contains(&coll_changed("k", Origin::Local)),
        "{events:?}"
    );
}

#[test]
fn remote_changes_raise_remote_events_and_lost_writes_none() {
    let mut r = reader();
    apply(&mut r, &[&op(1, 1, 12, put(&[set("a", 1)]))]);
    assert_eq!(
        drain_events(&mut r),
        vec![doc_changed("c", "d", Origin::Remote)]
    );
    apply(&mut r, &[&op(2, 1, 11, put(&[set("a", 0)]))]);
    assert!(
        drain_events(&mut r).is_empty(),
        "a losing write changed nothing"
    );
    apply(&mut r, &[&op(2, 2, 13, drop_c())]);
    let events = drain_events(&mut r);
    assert!(
        events.contains(&doc_changed("c", "d", Origin::Remote)),
        "{events:?}"
    );
    assert!(
        events.contains(&coll_changed("c", Origin::Remote)),
        "{events:?}"
    );
}

#[test]
fn snapshot_merge_raises_remote_events_for_documents_it_changes() {
    let mut source = replica(1);
    source.put(at(NOW), "c", "new", [("a", 1)]).unwrap();
    let mut r = reader();
    drain_events(&mut r);
    r.merge_snapshot(at(NOW), &snapshot_of(&source)).unwrap();
    assert_eq!(
        drain_events(&mut r),
        vec![doc_changed("c", "new", Origin::Remote)]
    );
}

/// A snapshot whose collection drop prunes documents the receiver holds must
/// announce those documents, as applying the drop operation does.
#[test]
fn snapshot_drop_announces_the_documents_it_removes() {
    let mut alice = replica(1);
    let mut bob = replica(2);
    alice.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    sync(&alice, &mut bob, NOW);
    alice.drop_collection(at(NOW + 1), "c").unwrap();
    drain_events(&mut bob);
    bob.merge_snapshot(at(NOW + 1), &snapshot_of(&alice))
        .unwrap();
    assert_eq!(fields(&bob), None);
    let events = drain_events(&mut bob);
    assert!(
        events.contains(&doc_changed("c", "d", Origin::Remote)),
        "{events:?}"
    );
}

// ---- persistence ----

#[test]
fn replica_restores_exactly_after_writes_and_acknowledgements() {
    let mut store = MemoryStore::new();
    let mut r = replica(1);
    persist(&mut r, &mut store);
    r.put(
        at(NOW),
        "c",
        "d",
        [("a", Value::from(1)), ("b", "x".into())],
    )
    .unwrap();
    persist(&mut r, &mut store);
    r.put(at(NOW + 1), "c", "e", [("a", 2)]).unwrap();
    r.unset(at(NOW + 2), "c", "d", ["b"]).unwrap();
    persist(&mut r, &mut store);
    r.apply(at(NOW), &op(2, 1, 10, put(&[set("z", true)])))
        .unwrap();
    r.delete(at(NOW + 3), "c", "e").unwrap();
    r.acknowledge(2);
    persist(&mut r, &mut store);
    r.create_collection(at(NOW + 4), "k").unwrap();
    r.put(at(NOW + 5), "k", "x", [("a", 1)]).unwrap();
    r.drop_collection(at(NOW + 6), "k").unwrap();
    r.acknowledge(5);
    persist(&mut r, &mut store);

    let restored = restore(&store);
    assert_eq!(observable(&restored), observable(&r));
    assert_eq!(restored.id(), r.id());
    assert_eq!(restored.list("c"), r.list("c"));
    assert_eq!(
        restored.outbox().map(|op| op.id.seq).collect::<Vec<_>>(),
        vec![6, 7]
    );
    // Nothing is left to persist right after a restore.
    let mut restored = restored;
    assert!(restored.take_persist().is_none());
}

#[test]
fn restore_from_an_empty_store_is_none() {
    assert!(matches!(
        Replica::restore(ReplicaConfig::default(), Vec::new()),
        Ok(None)
    ));
    // Records of other layers alone do not make a replica either.
    let extension = vec![(
        StoreKey::Extension("session".into()).to_bytes(),
        b"x".to_vec(),
    )];
    assert!(matches!(
        Replica::restore(ReplicaConfig::default(), extension),
        Ok(None)
    ));
}

/// The records of a small persisted replica.
fn stored_records() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut store = MemoryStore::new();
    let mut r = replica(1);
    r.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    r.create_collection(at(NOW), "c").unwrap();
    persist(&mut r, &mut store);
    let Ok(records) = store.read_all();
    records
}

fn restore_records(records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Option<Replica>, RestoreError> {
    Replica::restore(ReplicaConfig::default(), records)
}

#[test]
fn restore_with_a_corrupt_record_is_an_error() {
    let records = stored_records();
    assert!(restore_records(records.clone()).unwrap().is_some());
    for i in 0..records.len() {
        // Truncated value.
        let mut bad = records.clone();
        let half = bad[i].1.len() / 2;
        bad[i].1.truncate(half);
        assert!(
            matches!(restore_records(bad), Err(RestoreError::Record(_))),
            "record {i}"
        );
        // Unknown record version.
        let mut bad = records.clone();
        bad[i].1[0] = 99;
        assert!(
            matches!(restore_records(bad), Err(RestoreError::Record(_))),
            "record {i}"
        );
        // Trailing bytes.
        let mut bad = records.clone();
        bad[i].1.push(0);
        assert!(
            matches!(restore_records(bad), Err(RestoreError::Record(_))),
            "record {i}"
        );
        // Empty value.
        let mut bad = records.clone();
        bad[i].1.clear();
        assert!(
            matches!(restore_records(bad), Err(RestoreError::Record(_))),
            "record {i}"
        );
    }
    // A key this version never writes.
    let mut bad = records.clone();
    bad.push((b"Q".to_vec(), vec![1]));
    assert!(matches!(restore_records(bad), Err(RestoreError::Record(_))));
}

#[test]
fn restore_without_meta_or_with_a_mismatched_outbox_is_an_error() {
    let records = stored_records();
    let meta = StoreKey::Meta.to_bytes();
    let no_meta: Vec<_> = records
        .iter()
        .filter(|(k, _)| *k != meta)
        .cloned()
        .collect();
    assert!(matches!(
        restore_records(no_meta),
        Err(RestoreError::MissingMeta)
    ));

    // Outbox record 1 stored under the key of operation 2.
    let outbox1 = StoreKey::Outbox(1).to_bytes();
    let moved: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            let k = if *k == outbox1 {
                StoreKey::Outbox(2).to_bytes()
            } else {
                k.clone()
            };
            (k, v.clone())
        })
        .collect();
    assert!(matches!(
        restore_records(moved),
        Err(RestoreError::Inconsistent(_))
    ));
}

/// A collection drop learned from a snapshot must reach the store: the
/// documents it removed must not come back after a restart.
#[test]
fn documents_removed_by_a_snapshot_drop_stay_removed_after_restore() {
    let mut alice = replica(1);
    let mut bob = replica(2);
    let mut bob_store = MemoryStore::new();
    alice.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    sync(&alice, &mut bob, NOW);
    persist(&mut bob, &mut bob_store);
    alice.drop_collection(at(NOW + 1), "c").unwrap();
    bob.merge_snapshot(at(NOW + 1), &snapshot_of(&alice))
        .unwrap();
    persist(&mut bob, &mut bob_store);
    assert_eq!(fields(&bob), None);

    let restored = restore(&bob_store);
    assert_eq!(fields(&restored), None, "the dropped document came back");
    assert_eq!(restored.state(), bob.state());
}

/// A replica restored from an older backup gets its own later operations
/// back from other replicas, then writes again. Its outbox is no longer
/// numbered without gaps, and must still persist and restore exactly.
#[test]
fn outbox_with_a_gap_persists_and_restores() {
    let mut store = MemoryStore::new();
    let mut alice = replica(1);
    let mut relay = reader();
    alice.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    persist(&mut alice, &mut store);
    let mut backup = store.clone();
    alice.put(at(NOW + 1), "c", "d", [("a", 2)]).unwrap();
    alice.put(at(NOW + 2), "c", "d", [("a", 3)]).unwrap();
    sync(&alice, &mut relay, NOW + 2);

    let mut old = restore(&backup);
    assert_eq!(old.next_seq(), 2);
    for seq in [2, 3] {
        let own = alice.outbox().find(|op| op.id.seq == seq).unwrap();
        assert_eq!(old.apply(at(NOW + 3), &own), Ok(Applied::New));
    }
    assert_eq!(old.next_seq(), 4, "own operations are never renumbered");
    old.put(at(NOW + 3), "c", "d", [("a", 4)]).unwrap();
    old.put(at(NOW + 4), "c", "e", [("a", 5)]).unwrap();
    let outbox: Vec<u64> = old.outbox().map(|op| op.id.seq).collect();
    assert_eq!(outbox, vec![1, 4, 5]);
    persist(&mut old, &mut backup);

    let again = restore(&backup);
    assert_eq!(
        again.outbox().collect::<Vec<_>>(),
        old.outbox().collect::<Vec<_>>(),
        "unacknowledged operations were lost from the store"
    );
}

/// Own operations that come back inside a snapshot must not be numbered
/// again, or other replicas would drop the new writes as duplicates.
#[test]
fn own_operations_in_a_merged_snapshot_are_never_renumbered() {
    let mut store = MemoryStore::new();
    let mut alice = replica(1);
    let mut relay = reader();
    alice.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    persist(&mut alice, &mut store);
    alice.put(at(NOW + 1), "c", "d", [("a", 2)]).unwrap();
    alice.put(at(NOW + 2), "c", "d", [("a", 3)]).unwrap();
    sync(&alice, &mut relay, NOW + 2);

    // Alice's device is restored from the backup taken after her first write.
    let mut old = restore(&store);
    old.merge_snapshot(at(NOW + 3), &snapshot_of(&relay))
        .unwrap();
    assert_eq!(fields(&old), map(&[("a", 3.into())]));
    old.put(at(NOW + 3), "c", "d", [("a", 4)]).unwrap();
    let new_op = old.outbox().next_back().unwrap();
    assert!(
        new_op.id.seq > 3,
        "sequence number {} reused",
        new_op.id.seq
    );
    assert_eq!(relay.apply(at(NOW + 3), &new_op), Ok(Applied::New));
    assert_eq!(fields(&relay), map(&[("a", 4.into())]));
}

/// The snapshot's `max_hlc` is only a summary: stamps inside a snapshot
/// that run further ahead than the drift bound are refused like operations.
#[test]
fn snapshot_with_stamps_beyond_the_drift_bound_is_refused() {
    let mut ahead = replica(1);
    ahead
        .put(at(NOW + 3_600_000), "c", "d", [("a", "from the future")])
        .unwrap();
    let honest = snapshot_of(&ahead);
    let understated = Snapshot::encode(&honest.state, &honest.version, Hlc::ZERO, Hlc::ZERO);
    let understated = Snapshot::decode(&understated).expect("well-formed");

    for snapshot in [&honest, &understated] {
        let mut r = replica(2);
        r.put(at(NOW), "c", "d", [("a", "now")]).unwrap();
        drain_events(&mut r);
        let before = observable(&r);
        assert!(
            matches!(
                r.merge_snapshot(at(NOW), snapshot),
                Err(ApplyError::Clock(ClockError::DriftExceeded { .. }))
            ),
            "max_hlc {}",
            snapshot.max_hlc
        );
        assert_eq!(observable(&r), before);
        assert!(drain_events(&mut r).is_empty());
    }
}

/// The same holds when a snapshot replaces the state (a client catching up
/// after the relay compacted past its cursor).
#[test]
fn own_operations_in_a_reset_snapshot_are_never_renumbered() {
    let mut store = MemoryStore::new();
    let mut alice = replica(1);
    let mut relay = reader();
    alice.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    persist(&mut alice, &mut store);
    alice.put(at(NOW + 1), "c", "d", [("a", 2)]).unwrap();
    alice.put(at(NOW + 2), "c", "d", [("a", 3)]).unwrap();
    sync(&alice, &mut relay, NOW + 2);

    let mut old = restore(&store);
    old.reset_to_snapshot(at(NOW + 3), snapshot_of(&relay))
        .unwrap();
    assert_eq!(fields(&old), map(&[("a", 3.into())]));
    old.put(at(NOW + 3), "c", "d", [("a", 4)]).unwrap();
    let new_op = old.outbox().next_back().unwrap();
    assert!(
        new_op.id.seq > 3,
        "sequence number {} reused",
        new_op.id.seq
    );
    assert_eq!(relay.apply(at(NOW + 3), &new_op), Ok(Applied::New));
}

/// Replacing the state with a snapshot checks its stamps against the drift
/// bound too, not only the `max_hlc` it claims.
#[test]
fn reset_to_a_snapshot_with_stamps_beyond_the_drift_bound_is_refused() {
    let mut ahead = replica(1);
    ahead
        .put(at(NOW + 3_600_000), "c", "d", [("a", "from the future")])
        .unwrap();
    let honest = snapshot_of(&ahead);
    let understated = Snapshot::encode(&honest.state, &honest.version, Hlc::ZERO, Hlc::ZERO);
    let understated = Snapshot::decode(&understated).expect("well-formed");
    let mut r = replica(2);
    r.put(at(NOW), "c", "d", [("a", "now")]).unwrap();
    let before = observable(&r);
    assert!(matches!(
        r.reset_to_snapshot(at(NOW), understated.clone()),
        Err(ApplyError::Clock(ClockError::DriftExceeded { .. }))
    ));
    assert_eq!(observable(&r), before);
}

/// A peer can send an operation with any sequence number, including the
/// largest; that must not overflow.
#[test]
fn own_operation_with_the_largest_sequence_number_is_handled() {
    let mut r = replica(1);
    let last = op(1, u64::MAX, 10, put(&[set("a", 1)]));
    assert_eq!(r.apply(at(NOW), &last), Ok(Applied::New));
    assert_eq!(r.apply(at(NOW), &last), Ok(Applied::Duplicate));
    assert_eq!(fields(&r), map(&[("a", 1.into())]));
}

/// Sequence numbers are the peer's to choose: the version vector must cope
/// with the end of the range, arriving by operation or inside a snapshot.
#[test]
fn version_vectors_at_the_end_of_the_sequence_range_do_not_overflow() {
    let mut seqs = SeqSet::default();
    seqs.insert_through(u64::MAX - 1);
    assert!(seqs.insert(u64::MAX));
    assert_eq!((seqs.contiguous(), seqs.highest()), (u64::MAX, u64::MAX));
    assert!(!seqs.insert(u64::MAX));

    let mut seqs = SeqSet::default();
    assert!(seqs.insert(u64::MAX));
    seqs.insert_through(u64::MAX);
    assert!(seqs.contains(7) && seqs.contains(u64::MAX));

    // A snapshot whose version vector holds all of replica 2's numbers.
    let mut bytes = vec![1, 2]; // one replica, id 2
    bytes.extend_from_slice(&[0xff; 9]);
    bytes.extend_from_slice(&[0x01, 0]); // contiguous u64::MAX, nothing ahead
    let version: VersionVector = postcard::from_bytes(&bytes).expect("a version vector");
    let snapshot = Snapshot::encode(&State::new(), &version, Hlc::ZERO, Hlc::ZERO);
    let snapshot = Snapshot::decode(&snapshot).expect("decodes");
    let mut r = reader();
    r.apply(at(NOW), &op(2, 3, 10, put(&[set("a", 1)])))
        .unwrap();
    r.merge_snapshot(at(NOW), &snapshot).unwrap();
    assert!(r.version().contains(OpId {
        replica: BOB,
        seq: 5
    }));
    assert_eq!(
        r.apply(at(NOW), &op(2, 9, 10, delete())),
        Ok(Applied::Duplicate)
    );
}

// ---- the store conformance suite, against the in-memory store ----

/// Opens in-memory stores; reopening keeps the records (a clone).
struct Memory;

impl Harness for Memory {
    type Store = MemoryStore;
    fn open_fresh(&mut self) -> MemoryStore {
        MemoryStore::new()
    }
    fn reopen(&mut self, store: MemoryStore) -> MemoryStore {
        store.clone()
    }
}

mod memory_store_conformance {
    use super::Memory;
    sync_core::store_conformance_tests!(Memory);
}

#[test]
fn persist_batches_never_name_a_key_twice() {
    let mut r = replica(1);
    r.put(at(NOW), "c", "d", [("a", 1)]).unwrap();
    r.put(at(NOW), "c", "d", [("b", 1)]).unwrap();
    r.drop_collection(at(NOW), "c").unwrap();
    r.acknowledge(1);
    let batch = r.take_persist().expect("something to persist");
    let mut keys: Vec<&StoreKey> = batch.writes.iter().filter_map(Write::key).collect();
    let all = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all, "{batch:?}");
}

/// The host clock reading `ms` milliseconds after the epoch.
fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}
