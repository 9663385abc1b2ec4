//! The packed encoding: writes and documents cross the JavaScript ↔ wasm
//! boundary as one byte string each, instead of one wasm-bindgen call per
//! field, property and value. The TypeScript layer's `src/packed.ts` is the
//! other half (it turns JavaScript values into this encoding and back, and
//! refuses the values that cannot be stored).
//!
//! ```text
//! varint   unsigned LEB128, at most 32 bits
//! string   varint byte length, UTF-8
//! value    tag byte, then:
//!          0 null | 1 false | 2 true
//!          3 number: f64 LE; a safe integer is stored as Int, else Float
//!          4 int: i64 LE (a bigint to wasm; an Int beyond ±2^53 from it)
//!          5 string | 6 bytes: varint length, raw
//!          7 list: varint count, values | 8 map: varint count, (string, value)
//! fields   varint count, (string name, value)
//! op       kind byte, string collection, string id, then
//!          0 put: fields | 1 putIf: expected (0, or 1 and a string), fields
//!          2 unset: varint count, strings | 3 delete: nothing
//! ops      varint count, ops
//! document string id, string revision, fields
//! ```
//!
//! Reading refuses truncated or malformed input with a message (never a
//! panic): the bytes come from JavaScript.

use std::collections::BTreeMap;

use sync_core::{DocumentRef, Revision, Value, ValueRef};

use crate::convert::number_value;

/// Nesting deeper than this below a field is refused (sync-core refuses
/// less deep nesting anyway); it bounds the reader's recursion.
const MAX_DEPTH: usize = 64;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const NUMBER: u8 = 3;
const INT: u8 = 4;
const STRING: u8 = 5;
const BYTES: u8 = 6;
const LIST: u8 = 7;
const MAP: u8 = 8;

/// A document's fields as a write names them.
pub(crate) type Fields = Vec<(String, Value)>;

/// One write of a transaction (or a single put). The collection and
/// document names borrow the packed bytes: sync-client takes them by
/// reference, so owning them cost two allocations per write for nothing.
#[derive(Debug, PartialEq)]
pub(crate) enum Op<'a> {
    /// `put`, or `putIf` when `expected` is set (its inner `None`: absent).
    Put {
        collection: &'a str,
        id: &'a str,
        fields: Fields,
        expected: Option<Option<String>>,
    },
    /// Removes the named fields.
    Unset {
        collection: &'a str,
        id: &'a str,
        names: Vec<String>,
    },
    /// Deletes the document.
    Delete { collection: &'a str, id: &'a str },
}

/// A cursor over packed bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err("packed input ends early".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<usize, String> {
        let mut value: u64 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(value)
                    .map(|v| v as usize)
                    .map_err(|_| "packed length out of range".into());
            }
        }
        Err("packed length out of range".into())
    }

    /// A count of items each taking at least one byte, so a count larger
    /// than what is left is refused before anything is allocated for it.
    fn count(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        if n > self.bytes.len() {
            return Err("packed count exceeds the input".into());
        }
        Ok(n)
    }

    fn eight(&mut self) -> Result<[u8; 8], String> {
        let mut out = [0; 8];
        out.copy_from_slice(self.take(8)?);
        Ok(out)
    }

    fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_owned)
    }

    /// A string borrowed from the input.
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.varint()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| "packed string is not UTF-8".into())
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("a value is nested too deeply".into());
        }
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            NUMBER => number_value(f64::from_le_bytes(self.eight()?)),
            INT => Value::Int(i64::from_le_bytes(self.eight()?)),
            STRING => Value::String(self.string()?),
            BYTES => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            LIST => {
                let n = self.count()?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(self.value(depth + 1)?);
                }
                Value::List(list)
            }
            MAP => {
                let n = self.count()?;
                let mut map = BTreeMap::new();
                for _ in 0..n {
                    let key = self.string()?;
                    map.insert(key, self.value(depth + 1)?);
                }
                Value::Map(map)
            }
            tag => return Err(format!("unknown packed value tag {tag}")),
        })
    }

    fn fields(&mut self) -> Result<Fields, String> {
        let n = self.count()?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string()?;
            fields.push((name, self.value(0)?));
        }
        Ok(fields)
    }

    fn op(&mut self) -> Result<Op<'a>, String> {
        let kind = self.byte()?;
        let collection = self.str()?;
        let id = self.str()?;
        Ok(match kind {
            0 => Op::Put {
                collection,
                id,
                fields: self.fields()?,
                expected: None,
            },
            1 => {
                let expected = match self.byte()? {
                    0 => None,
                    1 => Some(self.string()?),
                    other => return Err(format!("unknown packed revision tag {other}")),
                };
                Op::Put {
                    collection,
                    id,
                    fields: self.fields()?,
                    expected: Some(expected),
                }
            }
            2 => {
                let n = self.count()?;
                let names = (0..n).map(|_| self.string()).collect::<Result<_, _>>()?;
                Op::Unset {
                    collection,
                    id,
                    names,
                }
            }
            3 => Op::Delete { collection, id },
            other => return Err(format!("unknown packed operation {other}")),
        })
    }

    fn end(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err("packed input has bytes left over".into())
        }
    }
}

/// One packed op.
pub(crate) fn read_op(bytes: &[u8]) -> Result<Op<'_>, String> {
    let mut reader = Reader { bytes };
    let op = reader.op()?;
    reader.end()?;
    Ok(op)
}

/// Packed ops, read one at a time as a transaction applies them (no list
/// of them all first); the last is followed by an error if bytes are left
/// over.
pub(crate) fn read_ops(bytes: &[u8]) -> Result<Ops<'_>, String> {
    let mut reader = Reader { bytes };
    let left = reader.count()?;
    if left == 0 {
        reader.end()?;
    }
    Ok(Ops { reader, left })
}

/// The ops of a transaction, in order (see [`read_ops`]).
pub(crate) struct Ops<'a> {
    reader: Reader<'a>,
    /// Ops not read yet; then 0 once the end was checked, and the
    /// iterator is done.
    left: usize,
}

impl<'a> Iterator for Ops<'a> {
    type Item = Result<Op<'a>, String>;

    fn next(&mut self) -> Option<Result<Op<'a>, String>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let op = self.reader.op();
        if op.is_err() {
            self.left = 0;
        } else if self.left == 0 {
            if let Err(e) = self.reader.end() {
                return Some(Err(e));
            }
        }
        Some(op)
    }
}

/// The length of a revision's text (`Revision::to_text`).
pub(crate) const REVISION_LEN: usize = Revision::TEXT_LEN;

/// Appends `revision`'s text (what `Display` prints, without `fmt`).
pub(crate) fn revision_text(out: &mut Vec<u8>, revision: &Revision) {
    out.extend_from_slice(&revision.to_text());
}

/// Appends packed values and documents to a buffer.
#[derive(Default)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    /// The bytes written.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }

    fn varint(&mut self, n: usize) {
        // Lengths in wasm32 memory fit 32 bits.
        let mut n = n as u32;
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    fn string(&mut self, s: &str) {
        self.varint(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Ints a JavaScript number holds exactly travel as numbers, the rest
    /// as 64-bit integers (bigints there).
    fn int(&mut self, i: i64) {
        if crate::convert::is_safe_integer(i as f64) {
            self.0.push(NUMBER);
            self.0.extend_from_slice(&(i as f64).to_le_bytes());
        } else {
            self.0.push(INT);
            self.0.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn value(&mut self, value: ValueRef<'_>) {
        match value {
            ValueRef::Null => self.0.push(NULL),
            ValueRef::Bool(b) => self.0.push(if b { TRUE } else { FALSE }),
            ValueRef::Int(i) => self.int(i),
            ValueRef::Float(f) => {
                self.0.push(NUMBER);
                self.0.extend_from_slice(&f.to_le_bytes());
            }
            ValueRef::String(s) => {
                self.0.push(STRING);
                self.string(s);
            }
            ValueRef::Bytes(b) => {
                self.0.push(BYTES);
                self.varint(b.len());
                self.0.extend_from_slice(b);
            }
            ValueRef::List(items) => {
                self.0.push(LIST);
                self.varint(items.len());
                for item in items {
                    self.value(item.into());
                }
            }
            ValueRef::Map(map) => {
                self.0.push(MAP);
                self.varint(map.len());
                for (key, item) in map {
                    self.string(key);
                    self.value(item.into());
                }
            }
        }
    }

    /// A document: id, revision, fields in name order (as every replica
    /// lists them, whatever order it first saw the names in).
    pub(crate) fn document(&mut self, doc: &DocumentRef<'_>) {
        self.string(doc.id());
        self.varint(REVISION_LEN);
        revision_text(&mut self.0, &doc.revision());
        let mut fields: Vec<_> = doc.fields().collect();
        fields.sort_unstable_by_key(|(name, _)| *name);
        self.varint(fields.len());
        for (name, value) in fields {
            self.string(name);
            self.value(value);
        }
    }

    /// A count of the items that follow.
    pub(crate) fn count(&mut self, n: usize) {
        self.varint(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-packed bytes, written out here rather than by `Writer`, so the
    /// reader is checked against the format, not against itself.
    fn put_bytes() -> Vec<u8> {
        let mut b = vec![0, 1, b'c', 2, b'i', b'd', 6];
        b.extend([1, b'n', NULL]);
        b.extend([1, b't', TRUE]);
        b.extend([1, b'i', NUMBER]);
        b.extend(42f64.to_le_bytes());
        b.extend([1, b'f', NUMBER]);
        b.extend(0.5f64.to_le_bytes());
        b.extend([1, b'b', INT]);
        b.extend((1i64 << 60).to_le_bytes());
        b.extend([
            1, b'x', MAP, 2, 1, b'l', LIST, 2, STRING, 2, 0xc3, 0xa9, BYTES, 1, 255,
        ]);
        b.extend([1, b'a', FALSE]);
        b
    }

    #[test]
    fn reads_a_put_of_every_kind_of_value() {
        let bytes = put_bytes();
        let op = read_op(&bytes).unwrap();
        let map = BTreeMap::from([
            (
                "l".to_owned(),
                Value::List(vec![Value::String("é".into()), Value::Bytes(vec![255])]),
            ),
            ("a".to_owned(), Value::Bool(false)),
        ]);
        assert_eq!(
            op,
            Op::Put {
                collection: "c",
                id: "id",
                fields: vec![
                    ("n".into(), Value::Null),
                    ("t".into(), Value::Bool(true)),
                    ("i".into(), Value::Int(42)),
                    ("f".into(), Value::Float(0.5)),
                    ("b".into(), Value::Int(1 << 60)),
                    ("x".into(), Value::Map(map)),
                ],
                expected: None,
            }
        );
    }

    #[test]
    fn reads_each_kind_of_op() {
        let mut b = vec![4];
        b.extend([1, 1, b'c', 1, b'a', 1, 2, b'r', b'1', 0]);
        b.extend([1, 1, b'c', 1, b'b', 0, 1, 1, b'v', NULL]);
        b.extend([2, 1, b'c', 1, b'a', 2, 1, b'x', 1, b'y']);
        b.extend([3, 1, b'c', 1, b'a']);
        let ops: Vec<Op<'_>> = read_ops(&b).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            ops,
            vec![
                Op::Put {
                    collection: "c",
                    id: "a",
                    fields: vec![],
                    expected: Some(Some("r1".into())),
                },
                Op::Put {
                    collection: "c",
                    id: "b",
                    fields: vec![("v".into(), Value::Null)],
                    expected: Some(None),
                },
                Op::Unset {
                    collection: "c",
                    id: "a",
                    names: vec!["x".into(), "y".into()],
                },
                Op::Delete {
                    collection: "c",
                    id: "a",
                },
            ]
        );
    }

    #[test]
    fn refuses_malformed_input_without_panicking() {
        let good = put_bytes();
        // Every truncation, and every single-byte corruption, is an error
        // or a different value: never a panic.
        for end in 0..good.len() {
            assert!(read_op(&good[..end]).is_err(), "truncated at {end}");
        }
        for at in 0..good.len() {
            for byte in [0, 9, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = byte;
                let _ = read_op(&bad);
            }
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(read_op(&extra).is_err());
        // A huge count is refused before anything is allocated for it.
        assert!(read_ops(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(read_op(&[0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(read_op(&[0, 0, 0, 1, 0, 9]).is_err(), "unknown tag");
        assert!(read_op(&[0, 1, 0xff, 0, 0]).is_err(), "not UTF-8");
        assert!(read_op(&[7, 0, 0]).is_err(), "unknown op");
    }

    #[test]
    fn ops_read_one_at_a_time_end_with_an_error_for_bytes_left_over() {
        let delete = [3, 1, b'c', 1, b'a'];
        let mut two = vec![2];
        two.extend(delete);
        two.extend(delete);
        assert_eq!(read_ops(&two).unwrap().filter(Result::is_ok).count(), 2);
        two.push(9);
        let read: Vec<_> = read_ops(&two).unwrap().collect();
        assert_eq!(read.len(), 2);
        assert!(read[0].is_ok());
        assert!(read[1].as_ref().unwrap_err().contains("left over"));
        // After a malformed op, nothing more is read.
        let mut bad = vec![2, 7];
        bad.extend(delete);
        let read: Vec<_> = read_ops(&bad).unwrap().collect();
        assert_eq!(read.len(), 1);
        assert!(read[0].is_err());
        assert!(read_ops(&[0]).unwrap().next().is_none());
        assert!(read_ops(&[0, 9]).is_err(), "no ops, then bytes left over");
    }

    #[test]
    fn refuses_values_nested_too_deeply() {
        let mut b = vec![0, 0, 0, 1, 1, b'v'];
        b.extend(std::iter::repeat_n([LIST, 1], MAX_DEPTH + 1).flatten());
        b.push(NULL);
        assert!(read_op(&b).unwrap_err().contains("nested"));
        let mut ok = vec![0, 0, 0, 1, 1, b'v'];
        ok.extend(std::iter::repeat_n([LIST, 1], MAX_DEPTH).flatten());
        ok.push(NULL);
        assert!(read_op(&ok).is_ok());
    }

    #[test]
    fn writes_ints_beyond_2_pow_53_as_int64() {
        let mut w = Writer::default();
        w.value(ValueRef::Int(1 << 53));
        w.value(ValueRef::Int((1 << 53) - 1));
        w.value(ValueRef::Float(2.0));
        let mut expected = vec![INT];
        expected.extend((1i64 << 53).to_le_bytes());
        expected.push(NUMBER);
        expected.extend(9_007_199_254_740_991f64.to_le_bytes());
        expected.push(NUMBER);
        expected.extend(2f64.to_le_bytes());
        assert_eq!(w.finish(), expected);
    }
}
