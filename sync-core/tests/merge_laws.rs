//! The merge is a join: applying operations is idempotent and commutative,
//! merging snapshots is associative (and commutative and idempotent), and
//! merging a snapshot of a replica is the same as applying its operations.
//!
//! Operations are random Put (with set and unset fields), Delete,
//! CreateCollection and DropCollection over a tiny universe — two
//! collections, three documents, three fields, three writers, clock readings
//! in four milliseconds — so that writes, tombstones and equal clock readings
//! collide all the time. States are compared with `==` and through every read
//! (`get`, `list`, revisions, counts).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use common::{
    applied, apply_all, assert_same_replica, assert_same_state, joined, merge, ops, reader,
    snapshot_of,
};
use proptest::prelude::*;
use proptest::sample::Index;
use sync_core::Timestamp;
use sync_core::{Applied, Op};

/// Enough cases to hit the interesting collisions, few enough to stay fast.
fn config() -> ProptestConfig {
    common::proptest_config(256)
}

/// Operations and a permutation of them.
fn ops_and_shuffle(max: usize) -> impl Strategy<Value = (Vec<Op>, Vec<Op>)> {
    ops(max).prop_flat_map(|ops| (Just(ops.clone()), Just(ops).prop_shuffle()))
}

/// `ops` with copies of some of them inserted at random places.
fn with_duplicates(ops: &[Op], copies: &[(Index, Index)]) -> Vec<Op> {
    let mut out = ops.to_vec();
    if ops.is_empty() {
        return out;
    }
    for (which, at) in copies {
        let op = which.get(ops).clone();
        let at = at.index(out.len() + 1);
        out.insert(at, op);
    }
    out
}

/// Splits operations into three overlapping sets: each operation goes to the
/// sets whose bit is set in its mask (a mask of 0 puts it nowhere).
fn split3(ops: &[Op], masks: &[u8]) -> [Vec<Op>; 3] {
    let mut sets = [Vec::new(), Vec::new(), Vec::new()];
    for (op, mask) in ops.iter().zip(masks.iter().cycle()) {
        for (bit, set) in sets.iter_mut().enumerate() {
            if mask & (1 << bit) != 0 {
                set.push(op.clone());
            }
        }
    }
    sets
}

proptest! {
    #![proptest_config(config())]

    /// Applying a sequence a second time changes nothing, and every second
    /// application reports a duplicate.
    #[test]
    fn applying_twice_equals_applying_once(ops in ops(16)) {
        let once = applied(&ops);
        let mut twice = applied(&ops);
        for op in &ops {
            prop_assert_eq!(twice.apply(Timestamp::from_unix_ms(common::LATE_NOW), op), Ok(Applied::Duplicate));
        }
        assert_same_replica(&once, &twice, "applied twice");
    }

    /// Duplicates delivered anywhere in the sequence change nothing.
    #[test]
    fn duplicates_anywhere_change_nothing(
        ops in ops(16),
        copies in prop::collection::vec(any::<(Index, Index)>(), 0..16),
    ) {
        let once = applied(&ops);
        let noisy = applied(&with_duplicates(&ops, &copies));
        assert_same_replica(&once, &noisy, "with duplicates");
    }

    /// Any delivery order gives the same state and version.
    #[test]
    fn apply_order_does_not_matter((ops, shuffled) in ops_and_shuffle(16)) {
        let in_order = applied(&ops);
        let reordered = applied(&shuffled);
        assert_same_replica(&in_order, &reordered, "reordered");
    }

    /// Reversing the delivery order (the permutation furthest from the
    /// original) gives the same state.
    #[test]
    fn reversed_order_gives_same_state(ops in ops(16)) {
        let forward = applied(&ops);
        let backward = applied(ops.iter().rev());
        assert_same_replica(&forward, &backward, "reversed");
    }

    /// Merging snapshots associates: (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c), and both
    /// equal applying the union of the operations.
    #[test]
    fn snapshot_merge_is_associative(
        ops in ops(18),
        masks in prop::collection::vec(0u8..8, 1..18),
    ) {
        let [a, b, c] = split3(&ops, &masks);
        let (a, b, c) = (applied(&a), applied(&b), applied(&c));
        let (sa, sb, sc) = (snapshot_of(&a), snapshot_of(&b), snapshot_of(&c));

        let ab = snapshot_of(&joined(&[&sa, &sb]));
        let left = joined(&[&ab, &sc]);
        let bc = snapshot_of(&joined(&[&sb, &sc]));
        let right = joined(&[&sa, &bc]);
        assert_same_replica(&left, &right, "(a⊔b)⊔c vs a⊔(b⊔c)");

        // Only the operations that went to some set are in the union.
        let union: Vec<&Op> = ops
            .iter()
            .zip(masks.iter().cycle())
            .filter(|(_, mask)| **mask != 0)
            .map(|(op, _)| op)
            .collect();
        assert_same_replica(&left, &applied(union), "joined vs union applied");
    }

    /// Merging snapshots commutes and is idempotent.
    #[test]
    fn snapshot_merge_commutes_and_is_idempotent(
        ops in ops(16),
        masks in prop::collection::vec(0u8..4, 1..16),
    ) {
        let [a, b, _] = split3(&ops, &masks);
        let (sa, sb) = (snapshot_of(&applied(&a)), snapshot_of(&applied(&b)));
        let ab = joined(&[&sa, &sb]);
        let ba = joined(&[&sb, &sa]);
        assert_same_replica(&ab, &ba, "a⊔b vs b⊔a");
        let aab = joined(&[&sa, &sa, &sb, &sb]);
        assert_same_replica(&ab, &aab, "a⊔a⊔b⊔b vs a⊔b");
        // A replica merging its own snapshot does not change.
        let mut again = joined(&[&sa, &sb]);
        merge(&mut again, &snapshot_of(&ab));
        assert_same_replica(&ab, &again, "x⊔x vs x");
    }

    /// A fresh replica that merges a snapshot of a replica which applied a
    /// set S holds exactly what applying S gives.
    #[test]
    fn snapshot_of_applied_ops_equals_applying_them(ops in ops(16)) {
        let direct = applied(&ops);
        let mut via_snapshot = reader();
        merge(&mut via_snapshot, &snapshot_of(&direct));
        assert_same_replica(&direct, &via_snapshot, "snapshot vs ops");
    }

    /// A replica holding T that merges a snapshot of S holds what applying
    /// S ∪ T gives, whichever order and overlap S and T have.
    #[test]
    fn snapshot_merge_into_existing_state_equals_applying_union(
        (ops, shuffled) in ops_and_shuffle(18),
        masks in prop::collection::vec(0u8..4, 1..18),
    ) {
        let [s, t, _] = split3(&ops, &masks);
        let mut mixed = applied(&t);
        merge(&mut mixed, &snapshot_of(&applied(&s)));
        let mut direct = reader();
        // The union, in an unrelated order.
        let in_union = |op: &&Op| s.contains(op) || t.contains(op);
        apply_all(&mut direct, shuffled.iter().filter(in_union));
        assert_same_replica(&mixed, &direct, "T ⊔ snapshot(S) vs S ∪ T applied");

        // And operations applied after the snapshot still land the same way.
        let mut after = applied(&t);
        merge(&mut after, &snapshot_of(&applied(&s)));
        apply_all(&mut after, &ops);
        assert_same_state(&after, &applied(&ops), "snapshot then all ops");
    }
}
