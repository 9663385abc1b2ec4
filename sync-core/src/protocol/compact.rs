//! The compact operation batch of protocol version 3: the `ops` of `Push`
//! and `Deliver`, written with per-batch name tables, stamps as deltas
//! against the previous operation, and runs of one replica's consecutive
//! sequence numbers. Values keep their version-2 encoding.
//!
//! `docs/PROTOCOL.md` section 7.1 specifies the layout byte by byte:
//!
//! ```text
//! batch = op_count:varint  collections:table  docs:table  fields:table  run*
//! table = count:varint  (shared:varint  suffix_len:varint  suffix)*
//! run   = replica:u64  first_seq:u64  len:varint  op*len
//! op    = flags:u8  [hlc_delta:i64]  [collection:varint]  [doc:varint]
//!         [field_count:varint]  (field:varint  value:Option<Value>)*
//! ```
//!
//! Decoding allocates only what the bytes present justify: every count is
//! checked against the bytes left before anything is reserved, every table
//! index against its table, and the names the operations carry (copied
//! out of the tables) against the receiver's frame limit, so a small frame
//! cannot expand into a large allocation.

use std::collections::HashMap;

use super::{FrameError, push_varint};
use crate::hlc::Hlc;
use crate::op::{Change, Op, OpId};
use crate::snapshot::columnar::{unzigzag, zigzag};
use crate::stamp::ReplicaId;
use crate::value::Value;

/// Flag bits of an operation's first byte.
const KIND_MASK: u8 = 0x03;
/// The HLC is written as a delta; otherwise it is the previous one plus 1.
const HLC_EXPLICIT: u8 = 0x04;
/// The collection index is written; otherwise it is the previous op's.
const COLLECTION_EXPLICIT: u8 = 0x08;
/// The document index is written; otherwise it is the next document not
/// yet introduced.
const DOC_EXPLICIT: u8 = 0x10;
/// A `Put` of exactly one field (its field count is not written).
const ONE_FIELD: u8 = 0x20;
/// Bits no version-3 encoder sets.
const RESERVED: u8 = 0xc0;

const PUT: u8 = 0;
const DELETE: u8 = 1;
const CREATE_COLLECTION: u8 = 2;
const DROP_COLLECTION: u8 = 3;

/// What each decoded operation costs against the receiver's frame limit,
/// on top of the bytes of the names it carries: a batch of tiny entries
/// must not decode into millions of operations.
pub(crate) const DECODED_OP_COST: usize = 32;

/// What one name-table entry costs against the frame limit on top of its
/// bytes: the `String` that holds it.
pub(crate) const TABLE_ENTRY_COST: usize = std::mem::size_of::<String>();

/// A table of names in order of first use, for the encoder.
#[derive(Default)]
struct Names<'a> {
    index: HashMap<&'a str, u64>,
    order: Vec<&'a str>,
}

impl<'a> Names<'a> {
    fn index_of(&mut self, name: &'a str) -> u64 {
        let next = self.order.len() as u64;
        *self.index.entry(name).or_insert_with(|| {
            self.order.push(name);
            next
        })
    }

    /// Front-coded: each name as the length of the prefix it shares with
    /// the name before it, then the rest.
    fn write(&self, out: &mut Vec<u8>) {
        push_varint(out, self.order.len() as u64);
        let mut previous: &[u8] = &[];
        for name in &self.order {
            let name = name.as_bytes();
            let shared = name
                .iter()
                .zip(previous)
                .take_while(|(a, b)| a == b)
                .count();
            let suffix = &name[shared..];
            push_varint(out, shared as u64);
            push_varint(out, suffix.len() as u64);
            out.extend_from_slice(suffix);
            previous = name;
        }
    }
}

/// Appends `ops` as a version-3 batch.
pub(crate) fn encode_batch(out: &mut Vec<u8>, ops: &[Op]) {
    let mut collections = Names::default();
    let mut docs = Names::default();
    let mut fields = Names::default();
    // Index every name first: the tables precede the operations.
    let refs: Vec<(u64, Option<u64>, Vec<u64>)> = ops
        .iter()
        .map(|op| match &op.change {
            Change::Put {
                collection,
                id,
                fields: entries,
            } => (
                collections.index_of(collection),
                Some(docs.index_of(id)),
                entries.iter().map(|(n, _)| fields.index_of(n)).collect(),
            ),
            Change::Delete { collection, id } => (
                collections.index_of(collection),
                Some(docs.index_of(id)),
                Vec::new(),
            ),
            Change::CreateCollection { collection } | Change::DropCollection { collection } => {
                (collections.index_of(collection), None, Vec::new())
            }
        })
        .collect();
    push_varint(out, ops.len() as u64);
    collections.write(out);
    docs.write(out);
    fields.write(out);

    let mut previous_hlc = 0u64;
    let mut previous_collection = 0u64;
    let mut next_new_doc = 0u64;
    let mut i = 0;
    while i < ops.len() {
        let first = ops[i].id;
        let len = ops[i..]
            .iter()
            .zip(0u64..)
            .take_while(|(op, k)| {
                op.id.replica == first.replica && first.seq.checked_add(*k) == Some(op.id.seq)
            })
            .count();
        push_varint(out, first.replica.0);
        push_varint(out, first.seq);
        push_varint(out, len as u64);
        for (op, (collection, doc, field_refs)) in ops[i..i + len].iter().zip(&refs[i..i + len]) {
            let hlc = op.hlc.as_u64();
            let (kind, field_values): (u8, &[(String, Option<Value>)]) = match &op.change {
                Change::Put { fields, .. } => (PUT, fields),
                Change::Delete { .. } => (DELETE, &[]),
                Change::CreateCollection { .. } => (CREATE_COLLECTION, &[]),
                Change::DropCollection { .. } => (DROP_COLLECTION, &[]),
            };
            let mut flags = kind;
            if hlc != previous_hlc.wrapping_add(1) {
                flags |= HLC_EXPLICIT;
            }
            if *collection != previous_collection {
                flags |= COLLECTION_EXPLICIT;
            }
            let doc_explicit = doc.is_some_and(|d| d != next_new_doc);
            if doc_explicit {
                flags |= DOC_EXPLICIT;
            }
            if kind == PUT && field_values.len() == 1 {
                flags |= ONE_FIELD;
            }
            out.push(flags);
            if flags & HLC_EXPLICIT != 0 {
                push_varint(out, zigzag(hlc.wrapping_sub(previous_hlc) as i64));
            }
            if flags & COLLECTION_EXPLICIT != 0 {
                push_varint(out, *collection);
            }
            match doc {
                Some(d) if doc_explicit => push_varint(out, *d),
                Some(_) => next_new_doc += 1,
                None => {}
            }
            if kind == PUT {
                if flags & ONE_FIELD == 0 {
                    push_varint(out, field_values.len() as u64);
                }
                for (field, (_, value)) in field_refs.iter().zip(field_values) {
                    push_varint(out, *field);
                    // Values are written as in version 2; their encoding
                    // cannot fail (postcard only fails on unknown lengths).
                    let taken = std::mem::take(out);
                    *out = postcard::to_extend(value, taken).unwrap_or_default();
                }
            }
            previous_hlc = hlc;
            previous_collection = *collection;
        }
        i += len;
    }
}

fn malformed(what: impl Into<String>) -> FrameError {
    FrameError::Malformed(what.into())
}

/// A reader over a batch's bytes that refuses, never panics.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A varint of at most 64 bits, in at most 10 bytes (the 10th at most 1).
    fn varint(&mut self, what: &str) -> Result<u64, FrameError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.bytes.split_first() else {
                return Err(malformed(format!("{what}: truncated varint")));
            };
            self.bytes = rest;
            if i == 9 && b > 1 {
                return Err(malformed(format!("{what}: varint overflows 64 bits")));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(format!("{what}: varint longer than 10 bytes")))
    }

    /// A count of items each taking at least one byte: checked against
    /// the bytes left, so it can size an allocation.
    fn count(&mut self, what: &str) -> Result<usize, FrameError> {
        let n = self.varint(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.bytes.len() => Ok(n),
            _ => Err(malformed(format!(
                "{what} {n} exceeds the {} bytes left",
                self.bytes.len()
            ))),
        }
    }

    fn byte(&mut self, what: &str) -> Result<u8, FrameError> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| malformed(format!("{what}: truncated")))?;
        self.bytes = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FrameError> {
        if n > self.bytes.len() {
            return Err(malformed(format!("{what}: truncated")));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    /// Reads a name table, charging each name it builds (its bytes and its
    /// `String`) to `budget`: front coding lets a few bytes repeat a long
    /// name, so the frame's size alone does not bound the table.
    fn table(&mut self, what: &str, budget: &mut usize) -> Result<Vec<String>, FrameError> {
        // Each entry takes at least two bytes (its two lengths).
        let n = self.count(what)?;
        let mut names: Vec<String> = Vec::with_capacity((n / 2).min(*budget / TABLE_ENTRY_COST));
        for _ in 0..n {
            let shared = self.varint(what)?;
            let suffix_len = self.count(what)?;
            let suffix = self.take(suffix_len, what)?;
            let previous = names.last().map_or(&[][..], |p| p.as_bytes());
            let prefix = usize::try_from(shared)
                .ok()
                .and_then(|s| previous.get(..s))
                .ok_or_else(|| {
                    malformed(format!(
                        "{what}: shares {shared} bytes with a name of {}",
                        previous.len()
                    ))
                })?;
            let len = prefix.len() + suffix.len();
            *budget = len
                .checked_add(TABLE_ENTRY_COST)
                .and_then(|cost| budget.checked_sub(cost))
                .ok_or_else(|| malformed(format!("{what}: the names exceed the frame limit")))?;
            let mut name = Vec::with_capacity(len);
            name.extend_from_slice(prefix);
            name.extend_from_slice(suffix);
            let name = String::from_utf8(name)
                .map_err(|_| malformed(format!("{what}: a name is not UTF-8")))?;
            names.push(name);
        }
        Ok(names)
    }
}

/// Looks a name up by index, charging its bytes to `budget`.
fn name<'t>(
    table: &'t [String],
    index: u64,
    what: &str,
    budget: &mut usize,
) -> Result<&'t str, FrameError> {
    let name = usize::try_from(index)
        .ok()
        .and_then(|i| table.get(i))
        .ok_or_else(|| {
            malformed(format!(
                "{what} index {index} outside a table of {}",
                table.len()
            ))
        })?;
    *budget = budget
        .checked_sub(name.len())
        .ok_or_else(|| malformed("the batch's names exceed the frame limit"))?;
    Ok(name)
}

/// Decodes a version-3 batch from the start of `bytes`; returns the
/// operations and the bytes after the batch. `max_len` is the receiver's
/// frame limit, which bounds what the batch may expand to.
pub(crate) fn decode_batch(bytes: &[u8], max_len: usize) -> Result<(Vec<Op>, &[u8]), FrameError> {
    let mut r = Reader { bytes };
    let op_count = r.count("operation count")?;
    let mut budget = max_len;
    let collections = r.table("collection table", &mut budget)?;
    let docs = r.table("document table", &mut budget)?;
    let fields = r.table("field table", &mut budget)?;
    let mut ops = Vec::with_capacity(op_count.min(budget / DECODED_OP_COST));
    let mut previous_hlc = 0u64;
    let mut previous_collection = 0u64;
    let mut next_new_doc = 0u64;
    while ops.len() < op_count {
        let replica = ReplicaId(r.varint("run replica")?);
        let first_seq = r.varint("run first sequence number")?;
        let len = r.varint("run length")?;
        let left = (op_count - ops.len()) as u64;
        if len == 0 || len > left {
            return Err(malformed(format!(
                "run of {len} operations where 1 to {left} remain"
            )));
        }
        for k in 0..len {
            let seq = first_seq
                .checked_add(k)
                .ok_or_else(|| malformed("run sequence numbers overflow"))?;
            budget = budget
                .checked_sub(DECODED_OP_COST)
                .ok_or_else(|| malformed("the batch's operations exceed the frame limit"))?;
            let flags = r.byte("operation flags")?;
            let kind = flags & KIND_MASK;
            if flags & RESERVED != 0
                || (kind != PUT && flags & ONE_FIELD != 0)
                || (kind >= CREATE_COLLECTION && flags & DOC_EXPLICIT != 0)
            {
                return Err(malformed(format!("operation flags {flags:#04x}")));
            }
            let hlc = if flags & HLC_EXPLICIT != 0 {
                let delta = unzigzag(r.varint("HLC delta")?);
                previous_hlc.wrapping_add(delta as u64)
            } else {
                previous_hlc.wrapping_add(1)
            };
            let collection_index = if flags & COLLECTION_EXPLICIT != 0 {
                r.varint("collection index")?
            } else {
                previous_collection
            };
            let collection =
                name(&collections, collection_index, "collection", &mut budget)?.to_owned();
            let mut doc = || -> Result<String, FrameError> {
                let index = if flags & DOC_EXPLICIT != 0 {
                    r.varint("document index")?
                } else {
                    next_new_doc += 1;
                    next_new_doc - 1
                };
                Ok(name(&docs, index, "document", &mut budget)?.to_owned())
            };
            let change = match kind {
                PUT => {
                    let id = doc()?;
                    let n = if flags & ONE_FIELD != 0 {
                        1
                    } else {
                        r.count("field count")?
                    };
                    let mut entries = Vec::with_capacity(n.min(budget / DECODED_OP_COST));
                    for _ in 0..n {
                        let index = r.varint("field index")?;
                        let field = name(&fields, index, "field", &mut budget)?.to_owned();
                        let (value, rest) = postcard::take_from_bytes::<Option<Value>>(r.bytes)
                            .map_err(|e| malformed(format!("field value: {e}")))?;
                        r.bytes = rest;
                        entries.push((field, value));
                    }
                    Change::Put {
                        collection,
                        id,
                        fields: entries,
                    }
                }
                DELETE => Change::Delete {
                    id: doc()?,
                    collection,
                },
                CREATE_COLLECTION => Change::CreateCollection { collection },
                _ => Change::DropCollection { collection },
            };
            ops.push(Op {
                id: OpId { replica, seq },
                hlc: Hlc::from_u64(hlc),
                change,
            });
            previous_hlc = hlc;
            previous_collection = collection_index;
        }
    }
    Ok((ops, r.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(replica: u64, seq: u64, hlc: u64, doc: &str, field: &str, v: i64) -> Op {
        Op {
            id: OpId {
                replica: ReplicaId(replica),
                seq,
            },
            hlc: Hlc::from_u64(hlc),
            change: Change::Put {
                collection: "c".into(),
                id: doc.into(),
                fields: vec![(field.into(), Some(Value::Int(v)))],
            },
        }
    }

    #[test]
    fn round_trips_runs_and_shared_names() {
        let ops = vec![
            put(1, 5, 100, "doc1", "a", 1),
            put(1, 6, 101, "doc2", "a", 2),
            put(2, 1, 50, "doc1", "b", 3),
            put(1, 7, 102, "doc10", "a", 4),
        ];
        let mut out = Vec::new();
        encode_batch(&mut out, &ops);
        let (back, rest) = decode_batch(&out, usize::MAX).expect("decodes");
        assert_eq!(back, ops);
        assert!(rest.is_empty());
    }

    #[test]
    fn the_frame_limit_bounds_what_a_batch_expands_to() {
        let ops: Vec<Op> = (1..=100)
            .map(|s| put(1, s, s, &"x".repeat(200), "f", 0))
            .collect();
        let mut out = Vec::new();
        encode_batch(&mut out, &ops);
        assert!(out.len() < 1000, "one copy of the long name: {}", out.len());
        // The three tables ("c", the 200-byte id, "f"), then every
        // operation and the names it copies out.
        let tables = 3 * TABLE_ENTRY_COST + 202;
        let limit = tables + 100 * (DECODED_OP_COST + 202);
        assert!(decode_batch(&out, limit).is_ok());
        assert!(decode_batch(&out, limit - 1).is_err());
    }

    #[test]
    fn a_name_table_cannot_expand_past_the_frame_limit() {
        // No operation at all, and a document table of 5,000 entries each
        // repeating the 1,000-byte name before it: 5 MB of names from a
        // frame of about 16 KB.
        let mut out = vec![0, 0];
        let (entries, len) = (5_000u64, 1_000u64);
        push_varint(&mut out, entries);
        push_varint(&mut out, 0);
        push_varint(&mut out, len);
        out.extend(std::iter::repeat_n(b'x', len as usize));
        for _ in 1..entries {
            push_varint(&mut out, len);
            push_varint(&mut out, 0);
        }
        out.push(0);
        assert!(out.len() < 17_000);
        let refused = decode_batch(&out, 64 * 1024).expect_err("5 MB of names from 16 KB");
        assert!(
            refused.to_string().contains("exceed the frame limit"),
            "{refused}"
        );
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let ops = vec![put(1, 1, 7, "d", "f", 1), put(1, 2, 9, "e", "f", 2)];
        let mut out = Vec::new();
        encode_batch(&mut out, &ops);
        for cut in 0..out.len() {
            assert!(decode_batch(&out[..cut], usize::MAX).is_err(), "cut {cut}");
        }
        // A claimed count far beyond the bytes present is refused before allocating.
        assert!(decode_batch(&[0xff, 0xff, 0xff, 0xff, 0x0f], usize::MAX).is_err());
    }
}
