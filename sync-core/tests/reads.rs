//! The borrowed read API (`document`, `get_field`, `documents` with
//! `prefix` and `after`) reads exactly what the copying one (`get`, `list`)
//! returns, after any history of puts, unsets, deletes, drops and snapshot
//! merges over the tests' tiny universe.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may read clocks and the environment

mod common;

use common::{COLLECTIONS, DOC_IDS, FIELDS, applied, ops, snapshot_of};
use proptest::prelude::*;
use sync_core::Timestamp;
use sync_core::{Document, Replica, Value, ValueRef};

fn config() -> ProptestConfig {
    common::proptest_config(256)
}

/// Prefixes and page starts around the universe's ids (`d0`, `d1`, `d2`).
const PREFIXES: [&str; 6] = ["", "d", "d1", "d2x", "c", "e"];
const AFTERS: [Option<&str>; 7] = [
    None,
    Some(""),
    Some("d"),
    Some("d0"),
    Some("d1"),
    Some("d15"),
    Some("z"),
];

/// Checks every borrowed read of `replica` against the copying reads.
fn check_reads(replica: &Replica) -> Result<(), TestCaseError> {
    for collection in COLLECTIONS {
        let listed = replica.list(collection);
        let viewed: Vec<Document> = replica
            .documents(collection)
            .map(|doc| doc.to_document())
            .collect();
        prop_assert_eq!(&viewed, &listed, "documents() of {}", collection);
        for prefix in PREFIXES {
            for after in AFTERS {
                let mut page = replica.documents(collection).prefix(prefix);
                if let Some(after) = after {
                    page = page.after(after);
                }
                let ids: Vec<&str> = page.map(|doc| doc.id()).collect();
                let expected: Vec<&str> = listed
                    .iter()
                    .map(|doc| doc.id.as_str())
                    .filter(|id| id.starts_with(prefix) && after.is_none_or(|a| *id > a))
                    .collect();
                prop_assert_eq!(ids, expected, "prefix {:?} after {:?}", prefix, after);
            }
        }
        for id in DOC_IDS {
            let copied = replica.get(collection, id);
            let view = replica.document(collection, id);
            prop_assert_eq!(view.map(|v| v.to_document()), copied.clone());
            prop_assert_eq!(view.map(|v| v.revision()), replica.revision(collection, id));
            if let Some(view) = view {
                prop_assert_eq!(view.id(), id);
                // Each name once, with the value `get` has.
                let mut names: Vec<&str> = view.fields().map(|(name, _)| name).collect();
                names.sort_unstable();
                names.dedup();
                prop_assert_eq!(names.len(), view.fields().count());
            }
            for field in FIELDS.iter().copied().chain(["absent"]) {
                let expected = copied.as_ref().and_then(|doc| doc.fields.get(field));
                let got = replica.get_field(collection, id, field);
                let owned = got.map(ValueRef::to_value);
                prop_assert_eq!(owned.as_ref(), expected);
                prop_assert_eq!(view.and_then(|v| v.get(field)), got);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Operations applied in order, and again in reverse (names interned in
    /// another order), then joined with a snapshot of the first.
    #[test]
    fn borrowed_reads_equal_copied_reads(ops in ops(40)) {
        let forward = applied(&ops);
        check_reads(&forward)?;
        let mut backward = applied(ops.iter().rev());
        check_reads(&backward)?;
        backward
            .merge_snapshot(Timestamp::from_unix_ms(common::LATE_NOW), &snapshot_of(&forward))
            .expect("merge");
        check_reads(&backward)?;
    }
}

/// Values of every kind come back borrowed as they were written, and
/// compare with `Value`s both ways.
#[test]
fn every_kind_of_value_reads_back_borrowed() {
    let mut map = std::collections::BTreeMap::new();
    map.insert("k".to_owned(), Value::Float(-0.0));
    let values = [
        ("null", Value::Null),
        ("bool", Value::Bool(true)),
        ("int", Value::Int(-3)),
        ("float", Value::Float(f64::NAN)),
        ("string", Value::from("héllo")),
        ("bytes", Value::Bytes(vec![0, 255])),
        ("list", Value::List(vec![Value::Int(1), "x".into()])),
        ("map", Value::Map(map)),
    ];
    let mut replica = common::reader();
    replica
        .put(
            Timestamp::from_unix_ms(common::LATE_NOW),
            "c",
            "d",
            values.iter().cloned(),
        )
        .expect("put");
    for (name, value) in &values {
        let got = replica.get_field("c", "d", name).expect("present");
        assert_eq!(got, *value, "{name}");
        assert_eq!(*value, got, "{name}");
        assert_eq!(got.to_value(), *value, "{name}");
        assert_eq!(ValueRef::from(value), got, "{name}");
    }
    let doc = replica.document("c", "d").expect("exists");
    assert_eq!(doc.get("int").and_then(ValueRef::as_i64), Some(-3));
    assert_eq!(doc.get("int").and_then(ValueRef::as_f64), Some(-3.0));
    assert_eq!(doc.get("string").and_then(ValueRef::as_str), Some("héllo"));
    assert_eq!(
        doc.get("bytes").and_then(ValueRef::as_bytes),
        Some(&[0, 255][..])
    );
    assert_eq!(doc.get("bool").and_then(ValueRef::as_bool), Some(true));
    assert!(doc.get("null").is_some_and(ValueRef::is_null));
    assert_eq!(
        doc.get("list").and_then(ValueRef::as_list).map(<[_]>::len),
        Some(2)
    );
    assert!(doc.get("map").and_then(ValueRef::as_map).is_some());
    assert_ne!(ValueRef::Float(0.0), ValueRef::Float(-0.0));
}

/// Unset fields, deleted documents and dropped collections are not read.
#[test]
fn removed_data_is_not_read() {
    let mut replica = common::reader();
    let now = common::LATE_NOW;
    replica
        .put(Timestamp::from_unix_ms(now), "c", "a", [("x", 1), ("y", 2)])
        .expect("put");
    replica
        .put(Timestamp::from_unix_ms(now), "c", "b", [("x", 3)])
        .expect("put");
    replica
        .unset(Timestamp::from_unix_ms(now + 1), "c", "a", ["y"])
        .expect("unset");
    replica
        .delete(Timestamp::from_unix_ms(now + 1), "c", "b")
        .expect("delete");
    assert_eq!(replica.get_field("c", "a", "y"), None);
    assert_eq!(replica.get_field("c", "b", "x"), None);
    assert!(replica.document("c", "b").is_none());
    let ids: Vec<&str> = replica.documents("c").map(|d| d.id()).collect();
    assert_eq!(ids, ["a"]);
    let fields: Vec<(&str, ValueRef<'_>)> = replica
        .document("c", "a")
        .expect("exists")
        .fields()
        .collect();
    assert_eq!(fields, [("x", ValueRef::Int(1))]);
    replica
        .drop_collection(Timestamp::from_unix_ms(now + 2), "c")
        .expect("drop");
    assert_eq!(replica.documents("c").count(), 0);
    assert_eq!(
        replica.documents("nothing").prefix("a").after("b").count(),
        0
    );
}
