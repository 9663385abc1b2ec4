//! Snapshot formats 4 and 5: the state in columns.
//!
//! Formats 1 to 3 write the state document by document, each field a tuple
//! of name, stamp and value. Format 4 keeps the same content but writes
//! each kind of number in its own column: every field name index, then
//! every stamp's clock reading, then every stamp's replica, then every
//! value by type. Neighbours in a column are alike (a document's fields are
//! named in ascending order, written at nearby times by one replica, and
//! often hold similar numbers), so each column stores differences from the
//! value before and collapses runs of equal entries into a count. Repeated
//! strings are stored once and referred to by index. Document ids share
//! their prefix with the id before them.
//!
//! Format 5 changes only how stamps are stored. Format 4 writes each stamp
//! as the difference from the stamp before it in document order, and stamps
//! written at different times (a field per write, documents interleaved)
//! make those differences irregular. Format 5 first lists every distinct
//! stamp once, in time order (the *timeline*, where neighbours are a tick
//! apart and runs collapse), and then refers to each stamp by its position
//! on the timeline, again as a difference from the reference before: fields
//! written one write apart, document after document, become a run.
//!
//! Decoding is bounded like format 3's: the payload states its field count
//! up front, the caller's limit is checked against it (and against the
//! inflated length) before anything is allocated, every column is checked
//! to end exactly where its length says, and the state goes through the
//! same checks as the other formats. PROTOCOL.md section 8 describes the
//! layout byte by byte.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::ops::Bound;

use crate::hlc::{Hlc, MAX_WALL_MS};
use crate::op::{check_collection, check_doc_id, check_field_name};
use crate::protocol::push_varint;
use crate::quoted::Quoted;
use crate::snapshot::{
    Snapshot, SnapshotError, check, check_collection_stamps, checked_doc, doc_newest, inflate,
};
use crate::stamp::{ReplicaId, Stamp};
use crate::state::{CollectionState, DocState, FieldSlot, State};
use crate::value::{StoredValue, Value};
use crate::version::VersionVector;

/// The payload's first byte: how the columns that follow are stored.
const PLAIN: u8 = 0;
/// The columns deflated, after their inflated length (`u32`), as format 3.
const DEFLATED: u8 = 1;

/// How many columns a format-4 body has, in this order; a format-5 body
/// has one more, [`STAMP_REFS`].
const COLUMNS_4: usize = 13;
/// Columns of a format-5 body.
const COLUMNS: usize = 14;
const DOC_IDS: usize = 0;
const DOC_FLAGS: usize = 1;
const DOC_FIELDS: usize = 2;
const FIELD_NAMES: usize = 3;
const FIELD_STAMPS: usize = 4;
const STAMP_WALL: usize = 5;
const STAMP_COUNTER: usize = 6;
const STAMP_REPLICA: usize = 7;
const VALUE_TAGS: usize = 8;
const INTS: usize = 9;
const FLOATS: usize = 10;
const STRINGS: usize = 11;
const OTHER_VALUES: usize = 12;
/// Format 5: per stamp, its timeline position relative to the one before.
const STAMP_REFS: usize = 13;

/// Which of the two columnar layouts a payload is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Format 4: stamps in place, in columns 5 to 7.
    Inline,
    /// Format 5: columns 5 to 7 hold the timeline, column 13 refers to it.
    Timeline,
}

impl Layout {
    fn columns(self) -> usize {
        match self {
            Layout::Inline => COLUMNS_4,
            Layout::Timeline => COLUMNS,
        }
    }
}

/// `DOC_FLAGS` bits.
const HAS_WRITTEN: u64 = 1;
const HAS_DELETED: u64 = 2;

/// `FIELD_STAMPS` entries.
const STAMP_IS_WRITTEN: u64 = 0;
const STAMP_EXPLICIT: u64 = 1;

/// `VALUE_TAGS` entries.
const TAG_REMOVED: u64 = 0;
const TAG_NULL: u64 = 1;
const TAG_FALSE: u64 = 2;
const TAG_TRUE: u64 = 3;
const TAG_INT: u64 = 4;
const TAG_FLOAT: u64 = 5;
const TAG_STRING: u64 = 6;
const TAG_BYTES: u64 = 7;
const TAG_LIST: u64 = 8;
const TAG_MAP: u64 = 9;

/// What a field counts for against a decoder's limit on top of the body's
/// bytes: RLE lets a few bytes stand for many fields, and each field the
/// decoder builds costs memory, so the limit bounds the fields too.
pub(crate) const NOMINAL_FIELD_BYTES: usize = 4;

// ---- primitives ------------------------------------------------------------

/// Maps a signed integer to an unsigned one with small magnitudes small
/// (0, -1, 1, -2, … → 0, 1, 2, 3, …), so deltas of either sign stay short
/// as varints. Shared with the version-3 wire encoding.
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    push_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn malformed(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(what.into())
}

/// Reads a body front to back; every read checks the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, SnapshotError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some((&b, rest)) = self.bytes.split_first() else {
                return Err(malformed("a number runs past the end of its column"));
            };
            self.bytes = rest;
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(malformed("a number does not fit in 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a number does not fit in 64 bits"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], SnapshotError> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > self.bytes.len() {
            return Err(malformed(format!(
                "{n} bytes claimed, {} left",
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let len = self.varint()?;
        let bytes = self.take(len)?;
        core::str::from_utf8(bytes).map_err(|_| malformed("a string is not UTF-8"))
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    fn end(&self, what: &str) -> Result<(), SnapshotError> {
        left_over(self.bytes.len(), what)
    }
}

/// Refuses `n` bytes left unread at the end of `what`.
fn left_over(n: usize, what: &str) -> Result<(), SnapshotError> {
    if n == 0 {
        Ok(())
    } else {
        Err(malformed(format!("{n} bytes left over in {what}")))
    }
}

/// Run-length encoder of `u64`s. A run header is a zigzag varint `n`: `n > 0`
/// is `n` copies of the one varint that follows, `n < 0` is `-n` varints
/// that follow as they are, 0 never occurs.
#[derive(Default)]
struct Rle {
    out: Vec<u8>,
    literals: Vec<u64>,
    value: u64,
    count: u64,
}

impl Rle {
    fn push(&mut self, value: u64) {
        if self.count > 0 && value == self.value {
            self.count += 1;
            return;
        }
        self.settle();
        self.value = value;
        self.count = 1;
    }

    /// Moves the run in progress out: a single value joins the literals,
    /// a longer run is written (after the literals before it).
    fn settle(&mut self) {
        match self.count {
            0 => {}
            1 => self.literals.push(self.value),
            n => {
                self.flush_literals();
                push_varint(&mut self.out, zigzag(n as i64));
                push_varint(&mut self.out, self.value);
            }
        }
        self.count = 0;
    }

    fn flush_literals(&mut self) {
        if self.literals.is_empty() {
            return;
        }
        push_varint(&mut self.out, zigzag(-(self.literals.len() as i64)));
        for &v in &self.literals {
            push_varint(&mut self.out, v);
        }
        self.literals.clear();
    }

    fn finish(mut self) -> Vec<u8> {
        self.settle();
        self.flush_literals();
        self.out
    }
}

/// Where a column is in the body: the next byte to read and the column's
/// end. Positions rather than a slice, so a decoder can keep its place in
/// every column between slices without borrowing the body; each read
/// borrows the body for just that read.
#[derive(Clone, Copy, Debug, Default)]
struct Column {
    at: usize,
    end: usize,
}

impl Column {
    /// Runs `read` on what is left of the column and moves past what it took.
    fn read<'b, T>(
        &mut self,
        body: &'b [u8],
        read: impl FnOnce(&mut Reader<'b>) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let mut reader = Reader {
            bytes: body.get(self.at..self.end).unwrap_or_default(),
        };
        let out = read(&mut reader);
        self.at = self.end - reader.bytes.len();
        out
    }

    fn varint(&mut self, body: &[u8]) -> Result<u64, SnapshotError> {
        self.read(body, Reader::varint)
    }

    /// Bytes not read yet.
    fn left(&self) -> usize {
        self.end - self.at
    }

    fn end(&self, what: &str) -> Result<(), SnapshotError> {
        left_over(self.left(), what)
    }
}

/// Reads what [`Rle`] wrote. Lazy: a run claiming billions of entries costs
/// nothing until they are read, and the caller reads only as many as the
/// body's counts allow.
#[derive(Debug, Default)]
struct RleColumn {
    column: Column,
    value: u64,
    /// Copies of `value` still to hand out.
    repeat: u64,
    /// Literal varints still to read.
    literal: u64,
}

impl RleColumn {
    fn new(column: Column) -> Self {
        RleColumn {
            column,
            ..RleColumn::default()
        }
    }

    fn next(&mut self, body: &[u8]) -> Result<u64, SnapshotError> {
        if self.repeat > 0 {
            self.repeat -= 1;
            return Ok(self.value);
        }
        if self.literal > 0 {
            self.literal -= 1;
            return self.column.varint(body);
        }
        let header = unzigzag(self.column.varint(body)?);
        if header > 0 {
            self.value = self.column.varint(body)?;
            self.repeat = header as u64 - 1;
            Ok(self.value)
        } else if header < 0 {
            self.literal = header.unsigned_abs() - 1;
            self.column.varint(body)
        } else {
            Err(malformed("a run of length 0"))
        }
    }

    fn end(&self, what: &str) -> Result<(), SnapshotError> {
        if self.repeat > 0 || self.literal > 0 {
            return Err(malformed(format!("{what} holds more entries than used")));
        }
        self.column.end(what)
    }
}

// ---- encoding ----------------------------------------------------------------

/// The columns being written, and the running values they are relative to.
#[derive(Default)]
struct Columns {
    doc_ids: Vec<u8>,
    doc_flags: Rle,
    doc_fields: Rle,
    field_names: Rle,
    field_stamps: Rle,
    wall: Rle,
    counter: Rle,
    replica: Rle,
    tags: Rle,
    ints: Rle,
    floats: Vec<u8>,
    strings: Vec<u8>,
    other: Vec<u8>,
    last_wall: i64,
    last_counter: i64,
    last_int: i64,
    /// Format 5: every stamp used, in reading order, as (clock reading,
    /// replica index); they go to the columns once the body is walked.
    uses: Option<Vec<(u64, u32)>>,
}

impl Columns {
    fn stamp(&mut self, stamp: Stamp, replica: u32) {
        match &mut self.uses {
            Some(uses) => uses.push((stamp.hlc.as_u64(), replica)),
            None => self.timeline_stamp(stamp.hlc, replica),
        }
    }

    /// Writes a stamp to columns 5 to 7.
    fn timeline_stamp(&mut self, hlc: Hlc, replica: u32) {
        let (wall, counter) = (hlc.wall_ms() as i64, i64::from(hlc.counter()));
        self.wall.push(zigzag(wall - self.last_wall));
        self.counter.push(zigzag(counter - self.last_counter));
        self.replica.push(u64::from(replica));
        (self.last_wall, self.last_counter) = (wall, counter);
    }

    /// Format 5: writes the distinct stamps used, ascending, to columns 5
    /// to 7, and each use's position among them to the reference column.
    /// Returns the reference column and the timeline's length.
    fn timeline(&mut self, uses: &[(u64, u32)]) -> (Vec<u8>, u64) {
        let mut position = vec![0u32; uses.len()];
        let mut len: u64 = 0;
        let mut last = None;
        for at in stamp_order(uses) {
            let stamp = uses[at as usize];
            if last != Some(stamp) {
                self.timeline_stamp(Hlc::from_u64(stamp.0), stamp.1);
                last = Some(stamp);
                len += 1;
            }
            // Fits: there are no more distinct stamps than uses.
            position[at as usize] = (len - 1) as u32;
        }
        let mut refs = Rle::default();
        let mut previous: i64 = 0;
        for at in position {
            refs.push(zigzag(i64::from(at) - previous));
            previous = i64::from(at);
        }
        (refs.finish(), len)
    }
}

/// The indices of `uses` (clock reading, replica index) in ascending order
/// of stamp: clock reading, then replica (the replica table is ascending,
/// so an index orders as its id does).
///
/// A least-significant-digit radix sort over only the bits that differ
/// (clock readings relative to the smallest, then the replica index): a
/// state's stamps span a few hours of milliseconds at most, so two or three
/// passes of 11 bits, about a third of a comparison sort's time on 100,000
/// stamps. Uses already in order (a state written document by document)
/// cost one pass to check; stamps too far apart for one 64-bit key are
/// sorted by replica, then by clock reading (the passes are stable, so
/// equal readings keep the replica order): more passes, and no comparison
/// sort, whose code the wasm package would carry for this rare case.
/// Indices are `u32`: a state holds fewer fields than that by far (a
/// snapshot's payload is at most 4 GiB).
fn stamp_order(uses: &[(u64, u32)]) -> Vec<u32> {
    let order: Vec<u32> = (0..uses.len() as u32).collect();
    if uses.windows(2).all(|w| w[0] <= w[1]) {
        return order;
    }
    let (min, max) = uses
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), u| (lo.min(u.0), hi.max(u.0)));
    let replica_bits = 32 - uses.iter().map(|u| u.1).max().unwrap_or(0).leading_zeros();
    let clock_bits = 64 - (max - min).leading_zeros();
    let mut items: Vec<(u64, u32)>;
    if clock_bits + replica_bits <= 64 {
        items = uses
            .iter()
            .zip(order)
            .map(|(&(hlc, replica), at)| (((hlc - min) << replica_bits) | u64::from(replica), at))
            .collect();
        radix_sort(&mut items, clock_bits + replica_bits);
    } else {
        items = uses
            .iter()
            .zip(order)
            .map(|(&(_, replica), at)| (u64::from(replica), at))
            .collect();
        radix_sort(&mut items, replica_bits);
        for item in &mut items {
            item.0 = uses[item.1 as usize].0 - min;
        }
        radix_sort(&mut items, clock_bits);
    }
    items.into_iter().map(|(_, at)| at).collect()
}

/// Sorts `items` stably by the low `bits` bits of their keys, 11 bits a
/// pass.
fn radix_sort(items: &mut Vec<(u64, u32)>, bits: u32) {
    const DIGIT: u32 = 11;
    const MASK: u64 = (1 << DIGIT) - 1;
    let mut spare = items.clone();
    let mut counts = vec![0usize; 1 << DIGIT];
    let mut shift = 0;
    while shift < bits {
        counts.fill(0);
        for &(key, _) in items.iter() {
            counts[((key >> shift) & MASK) as usize] += 1;
        }
        let mut total = 0;
        for count in &mut counts {
            (*count, total) = (total, total + *count);
        }
        for &item in items.iter() {
            let digit = ((item.0 >> shift) & MASK) as usize;
            spare[counts[digit]] = item;
            counts[digit] += 1;
        }
        std::mem::swap(items, &mut spare);
        shift += DIGIT;
    }
}

/// Appends a plain payload (without the blob header) to `out`: the
/// `PLAIN` byte, the field count and `body` from [`encode_body`].
pub(crate) fn frame_plain(out: &mut Vec<u8>, field_count: usize, body: &[u8]) {
    out.push(PLAIN);
    push_varint(out, field_count as u64);
    out.extend_from_slice(body);
}

/// Appends a deflated payload (without the blob header) to `out`: `body`
/// from [`encode_body`] deflated at `level`, or plain if its length does
/// not fit the `u32` that announces it. A function of its own, called only
/// by the encoders that compress, so that a build which never compresses
/// (the wasm client writes its checkpoints plain) links no deflate code.
pub(crate) fn frame_deflated(out: &mut Vec<u8>, field_count: usize, body: &[u8], level: u8) {
    let Ok(len) = u32::try_from(body.len()) else {
        return frame_plain(out, field_count, body);
    };
    out.push(DEFLATED);
    push_varint(out, field_count as u64);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(body, level));
}

/// The columns of `state` as a format-4 or format-5 body, before the
/// framing ([`frame_plain`] or [`frame_deflated`]) that makes it a payload.
pub(crate) fn encode_body(
    layout: Layout,
    state: &State,
    version: &VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
) -> Vec<u8> {
    let mut encoder = BodyEncoder::new(layout, state);
    while !encoder.step(state, usize::MAX) {}
    encoder.finish(state, version, max_hlc, tombstone_horizon)
}

/// [`encode_body`] a slice of documents at a time, so that a host can hand
/// its thread back between slices (a checkpoint of 100,000 documents is
/// several hundred milliseconds of a browser's main thread in one piece).
/// It borrows nothing between calls: every call takes the state again, and
/// the caller must not change it meanwhile (the checkpoint policy drops an
/// encoder whose state changed, see `replica/checkpoint.rs`). The bytes are
/// those of [`encode_body`] on the same state.
pub(crate) struct BodyEncoder {
    layout: Layout,
    replicas: BTreeMap<ReplicaId, u32>,
    /// The state's own replica indices, mapped to the table's.
    by_slot: Vec<u32>,
    c: Columns,
    dictionary: Dictionary,
    /// Where the next slice starts: a collection's position, and the last
    /// document written of it (`None`: none yet).
    next: (usize, Option<String>),
}

impl BodyEncoder {
    /// An encoder of `state`, before its first document.
    pub(crate) fn new(layout: Layout, state: &State) -> Self {
        // Sized once for every string value: grown from empty, a table of a
        // million distinct strings was rehashed about twenty times, half of a
        // checkpoint's encoding time in a browser (a profile of the initial
        // sync in bindings/npm/bench/main-thread.mjs).
        let strings = state
            .collections
            .values()
            .flat_map(|coll| coll.docs.values())
            .flat_map(|doc| doc.fields.iter())
            .filter(|slot| matches!(slot.value, Some(StoredValue::String(_))))
            .count();
        BodyEncoder {
            layout,
            replicas: crate::snapshot::replica_table(state),
            by_slot: Vec::new(),
            c: Columns {
                uses: (layout == Layout::Timeline).then(|| Vec::with_capacity(state.field_count())),
                ..Columns::default()
            },
            dictionary: Dictionary::with_capacity(strings),
            next: (0, None),
        }
    }

    /// Writes up to `max_docs` more documents; `true` once every one is written.
    pub(crate) fn step(&mut self, state: &State, max_docs: usize) -> bool {
        let mut budget = max_docs;
        // By position: the state is the one the encoding began with.
        while let Some(coll) = state.collections.values().nth(self.next.0) {
            let after = self.next.1.take();
            let from = match &after {
                Some(id) => Bound::Excluded(id.as_str()),
                None => Bound::Unbounded,
            };
            let docs = coll.docs.range((from, Bound::Unbounded));
            let mut last: Option<&str> = after.as_deref();
            for (id, doc) in docs {
                if budget == 0 {
                    self.next.1 = last.map(str::to_owned);
                    return false;
                }
                budget -= 1;
                self.document(state, last.unwrap_or(""), id, doc);
                last = Some(id);
            }
            self.next.0 += 1;
        }
        true
    }

    /// Writes document `id`, which follows `previous_id` in its collection.
    fn document(&mut self, state: &State, previous_id: &str, id: &str, doc: &DocState) {
        let c = &mut self.c;
        let replicas = &self.replicas;
        let index = |r: ReplicaId| replicas.get(&r).copied().unwrap_or(u32::MAX);
        let shared = common_prefix(previous_id, id);
        push_varint(&mut c.doc_ids, shared as u64);
        push_str(&mut c.doc_ids, &id[shared..]);
        let deleted = doc.deleted();
        let flags = u64::from(doc.written.is_some()) * HAS_WRITTEN
            + u64::from(deleted.is_some()) * HAS_DELETED;
        c.doc_flags.push(flags);
        c.doc_fields.push(doc.fields.len() as u64);
        for s in doc.written.into_iter().chain(deleted) {
            c.stamp(s, index(s.replica));
        }
        let mut last_name: i64 = -1;
        for slot in &doc.fields {
            c.field_names
                .push((i64::from(slot.name) - last_name) as u64);
            last_name = i64::from(slot.name);
            let stamp = slot.stamp(&state.names);
            if Some(stamp) == doc.written {
                c.field_stamps.push(STAMP_IS_WRITTEN);
            } else {
                c.field_stamps.push(STAMP_EXPLICIT);
                let at = slot.replica as usize;
                if at >= self.by_slot.len() {
                    self.by_slot.resize(at + 1, u32::MAX);
                }
                if self.by_slot[at] == u32::MAX {
                    self.by_slot[at] = index(stamp.replica);
                }
                c.stamp(stamp, self.by_slot[at]);
            }
            encode_value(c, &mut self.dictionary, slot.value.as_ref());
        }
    }

    /// The body: the head (version, names, replicas, collections) and the
    /// columns written.
    pub(crate) fn finish(
        self,
        state: &State,
        version: &VersionVector,
        max_hlc: Hlc,
        tombstone_horizon: Hlc,
    ) -> Vec<u8> {
        let BodyEncoder {
            layout,
            replicas,
            mut c,
            ..
        } = self;
        // Serialising into a Vec cannot fail for these types.
        let mut head = postcard::to_extend(version, Vec::with_capacity(256)).unwrap_or_default();
        push_varint(&mut head, max_hlc.as_u64());
        push_varint(&mut head, tombstone_horizon.as_u64());
        push_varint(&mut head, state.names.len() as u64);
        for i in 0..state.names.len() {
            push_str(&mut head, state.names.name(i as u32));
        }
        push_varint(&mut head, replicas.len() as u64);
        for replica in replicas.keys() {
            push_varint(&mut head, replica.0);
        }
        let index = |r: ReplicaId| replicas.get(&r).copied().unwrap_or(u32::MAX);
        let opt_stamp = |head: &mut Vec<u8>, s: Option<Stamp>| match s {
            None => head.push(0),
            Some(s) => {
                head.push(1);
                push_varint(head, s.hlc.as_u64());
                push_varint(head, u64::from(index(s.replica)));
            }
        };
        push_varint(&mut head, state.collections.len() as u64);
        for (name, coll) in &state.collections {
            push_str(&mut head, name);
            opt_stamp(&mut head, coll.created);
            opt_stamp(&mut head, coll.dropped);
            push_varint(&mut head, coll.docs.len() as u64);
        }

        let (refs, timeline_len) = match c.uses.take() {
            Some(uses) => c.timeline(&uses),
            None => (Vec::new(), 0),
        };
        let columns: [Vec<u8>; COLUMNS] = [
            c.doc_ids,
            c.doc_flags.finish(),
            c.doc_fields.finish(),
            c.field_names.finish(),
            c.field_stamps.finish(),
            c.wall.finish(),
            c.counter.finish(),
            c.replica.finish(),
            c.tags.finish(),
            c.ints.finish(),
            c.floats,
            c.strings,
            c.other,
            refs,
        ];
        let columns = &columns[..layout.columns()];
        let mut body = head;
        if layout == Layout::Timeline {
            push_varint(&mut body, timeline_len);
        }
        for column in columns {
            push_varint(&mut body, column.len() as u64);
        }
        for column in columns {
            body.extend_from_slice(column);
        }
        body
    }
}

/// The hash of the dictionary's strings, and of its table.
type Hashing = BuildHasherDefault<crate::revision::IdHasher>;

/// The string values written so far, numbered from 1 in the order first
/// written: a repeat is written as its number. Keyed by a hash of the
/// string, the bytes compared against the copy already in the strings
/// column, so that it borrows nothing from the state between slices.
struct Dictionary {
    /// Hash of a string → its number (the first string with that hash).
    /// Unkeyed (the core draws no randomness): strings a peer chose to
    /// collide are only written whole, each time.
    by_hash: HashMap<u64, u64, Hashing>,
    /// Where each string's bytes are in the strings column, by number - 1.
    spans: Vec<(usize, usize)>,
}

impl Dictionary {
    fn with_capacity(strings: usize) -> Self {
        Dictionary {
            by_hash: HashMap::with_capacity_and_hasher(strings, Default::default()),
            spans: Vec::with_capacity(strings),
        }
    }

    /// Writes `s` to `column`: the number of an earlier copy, or 0 and the
    /// string (which takes the next number). A string whose hash an earlier,
    /// different one took is written whole each time (a 64-bit hash: rare
    /// enough not to keep a second table for).
    fn write(&mut self, column: &mut Vec<u8>, s: &str) {
        let hash = Hashing::default().hash_one(s);
        let next = self.spans.len() as u64 + 1;
        let seen = match self.by_hash.get(&hash) {
            Some(&number) => {
                let (at, len) = self.spans[(number - 1) as usize];
                (&column[at..at + len] == s.as_bytes()).then_some(number)
            }
            None => {
                self.by_hash.insert(hash, next);
                None
            }
        };
        match seen {
            Some(number) => push_varint(column, number),
            None => {
                push_varint(column, 0);
                push_str(column, s);
                self.spans.push((column.len() - s.len(), s.len()));
            }
        }
    }
}

/// Length in bytes of the longest common prefix that ends on a character
/// boundary of both.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a
        .as_bytes()
        .iter()
        .zip(b.as_bytes())
        .take_while(|(x, y)| x == y)
        .count();
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

fn encode_value(c: &mut Columns, dictionary: &mut Dictionary, value: Option<&StoredValue>) {
    let tag = match value {
        None => TAG_REMOVED,
        Some(StoredValue::Null) => TAG_NULL,
        Some(StoredValue::Bool(false)) => TAG_FALSE,
        Some(StoredValue::Bool(true)) => TAG_TRUE,
        Some(StoredValue::Int(v)) => {
            c.ints.push(zigzag(v.wrapping_sub(c.last_int)));
            c.last_int = *v;
            TAG_INT
        }
        Some(StoredValue::Float(v)) => {
            c.floats.extend_from_slice(&v.to_bits().to_le_bytes());
            TAG_FLOAT
        }
        Some(StoredValue::String(s)) => {
            dictionary.write(&mut c.strings, s);
            TAG_STRING
        }
        Some(other @ (StoredValue::Bytes(_) | StoredValue::List(_) | StoredValue::Map(_))) => {
            // Rare and nested: stored whole, as every other format stores values.
            let column = std::mem::take(&mut c.other);
            c.other = postcard::to_extend(other, column).unwrap_or_default();
            match other {
                StoredValue::Bytes(_) => TAG_BYTES,
                StoredValue::List(_) => TAG_LIST,
                _ => TAG_MAP,
            }
        }
    };
    c.tags.push(tag);
}

// ---- decoding ----------------------------------------------------------------

/// The payload's storage mode, field count and the rest.
fn payload_head(payload: &[u8]) -> Result<(u8, u64, &[u8]), SnapshotError> {
    let mut r = Reader { bytes: payload };
    let mode = r.u8()?;
    let fields = r.varint()?;
    Ok((mode, fields, r.bytes))
}

/// The body's decoded length as a limit counts it: its bytes (inflated)
/// plus [`NOMINAL_FIELD_BYTES`] per field it claims, read from the
/// payload's head without decoding anything else.
pub(crate) fn nominal_len(payload: &[u8]) -> Option<u64> {
    let (mode, fields, rest) = payload_head(payload).ok()?;
    let body = match mode {
        DEFLATED => u64::from(u32::from_le_bytes(*rest.first_chunk::<4>()?)),
        _ => rest.len() as u64,
    };
    Some(body.saturating_add(fields.saturating_mul(NOMINAL_FIELD_BYTES as u64)))
}

/// A format-4 or format-5 payload's body: as it is, or deflated (the
/// compressed payload [`crate::snapshot::Inflating`] reads).
pub(crate) enum OpenBody<'a> {
    /// The body as it is in the payload.
    Plain(&'a [u8]),
    /// The body's length, then the body deflated.
    Deflated(&'a [u8]),
}

/// Checks a format-4 or format-5 payload's claimed size against `limit`
/// (its body, inflated, with [`NOMINAL_FIELD_BYTES`] per field it claims)
/// before anything is inflated or allocated; returns the field count it
/// claims and its body.
pub(crate) fn open_payload(
    payload: &[u8],
    limit: usize,
) -> Result<(u64, OpenBody<'_>), SnapshotError> {
    let (mode, fields, rest) = payload_head(payload)?;
    let nominal = nominal_len(payload).unwrap_or(u64::MAX);
    if nominal > limit as u64 {
        return Err(SnapshotError::TooLarge {
            size: nominal,
            limit: limit as u64,
        });
    }
    match mode {
        PLAIN => Ok((fields, OpenBody::Plain(rest))),
        DEFLATED => Ok((fields, OpenBody::Deflated(rest))),
        other => Err(malformed(format!("unknown column storage {other}"))),
    }
}

/// Decodes a format-4 or format-5 payload in one call, under `limit` as
/// [`open_payload`] checks it.
pub(crate) fn decode_payload(
    payload: &[u8],
    layout: Layout,
    limit: usize,
) -> Result<Snapshot, SnapshotError> {
    let (fields, body) = open_payload(payload, limit)?;
    let inflated;
    let body = match body {
        OpenBody::Plain(body) => body,
        OpenBody::Deflated(deflated) => {
            inflated = inflate(deflated, limit)?;
            inflated.as_slice()
        }
    };
    let mut decoder = BodyDecoder::new(body, layout, fields)?;
    decoder.step(body, usize::MAX)?;
    Ok(decoder.into_snapshot())
}

/// A collection listed in the body's head, its documents not read yet.
#[derive(Debug)]
struct Listed {
    name: String,
    created: Option<Stamp>,
    dropped: Option<Stamp>,
    docs: u64,
}

/// The collection whose documents are being read.
#[derive(Debug)]
struct Reading {
    name: String,
    coll: CollectionState,
    /// Documents still to read.
    left: u64,
    /// The documents read, in order: the tree is built from them in one
    /// pass once the last is read (linear from sorted keys).
    built: Vec<(String, DocState)>,
}

/// A format-4 or format-5 body decoded a slice of documents at a time.
///
/// [`BodyDecoder::new`] reads the head (names, replicas, collections and
/// format 5's timeline) and finds the columns; each [`BodyDecoder::step`]
/// reads the next documents, every column keeping its place between steps.
/// The checks are those of a decoding in one call, in the same order, so
/// slices change when an error is found but never whether. The decoder
/// holds positions into the body rather than the body, so its owner must
/// pass the same body to every call.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    version: VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
    /// The state built so far: names interned, collections read.
    state: State,
    replicas: Vec<ReplicaId>,
    name_count: u64,
    field_total: u64,
    fields_left: u64,
    /// Collections not started yet, in order.
    listed: VecDeque<Listed>,
    reading: Option<Reading>,
    /// The id read last: the next shares a prefix with it.
    id: String,
    /// The newest clock reading of the documents and collections read.
    newest: Hlc,
    doc_ids: Column,
    doc_flags: RleColumn,
    doc_fields: RleColumn,
    names: RleColumn,
    field_stamps: RleColumn,
    stamps: StampReader,
    values: ValueReader,
}

impl BodyDecoder {
    /// Reads the head of `body` and finds its columns.
    pub(crate) fn new(
        body: &[u8],
        layout: Layout,
        field_total: u64,
    ) -> Result<BodyDecoder, SnapshotError> {
        let inconsistent = SnapshotError::Inconsistent;
        let (version, rest): (VersionVector, _) =
            postcard::take_from_bytes(body).map_err(|e| malformed(e.to_string()))?;
        let mut r = Reader { bytes: rest };
        let max_hlc = Hlc::from_u64(r.varint()?);
        let tombstone_horizon = Hlc::from_u64(r.varint()?);

        let mut state = State::new();
        let name_count = r.varint()?;
        for _ in 0..name_count {
            let name = r.str()?;
            check(check_field_name(name))?;
            if state.names.lookup(name).is_some() {
                return Err(inconsistent(format!(
                    "field name {name} listed twice",
                    name = Quoted(name)
                )));
            }
            state.names.intern(name);
        }
        let replica_count = r.varint()?;
        // Each replica takes at least a byte: the count is bounded by the bytes.
        let mut replicas = Vec::with_capacity(replica_count.min(r.bytes.len() as u64) as usize);
        for _ in 0..replica_count {
            replicas.push(ReplicaId(r.varint()?));
        }
        if replicas.windows(2).any(|w| w[0] >= w[1]) {
            return Err(inconsistent("replicas out of order".into()));
        }
        let opt_stamp = |r: &mut Reader<'_>| -> Result<Option<Stamp>, SnapshotError> {
            match r.u8()? {
                0 => Ok(None),
                1 => {
                    let hlc = Hlc::from_u64(r.varint()?);
                    Ok(Some(Stamp::new(hlc, replica_at(&replicas, r.varint()?)?)))
                }
                other => Err(malformed(format!("option tag {other}"))),
            }
        };
        let collection_count = r.varint()?;
        let mut listed: VecDeque<Listed> =
            VecDeque::with_capacity(collection_count.min(r.bytes.len() as u64) as usize);
        for _ in 0..collection_count {
            let name = r.str()?;
            check(check_collection(name))?;
            if listed.back().is_some_and(|p| p.name.as_str() >= name) {
                return Err(inconsistent(format!(
                    "collection {name} out of order",
                    name = Quoted(name)
                )));
            }
            let created = opt_stamp(&mut r)?;
            let dropped = opt_stamp(&mut r)?;
            listed.push_back(Listed {
                name: name.to_owned(),
                created,
                dropped,
                docs: r.varint()?,
            });
        }
        let timeline_len = match layout {
            Layout::Inline => 0,
            Layout::Timeline => r.varint()?,
        };
        let mut lengths = [0u64; COLUMNS];
        for len in &mut lengths[..layout.columns()] {
            *len = r.varint()?;
        }
        let mut columns = [Column::default(); COLUMNS];
        for (column, len) in columns.iter_mut().zip(lengths) {
            let at = body.len() - r.bytes.len();
            let end = at + r.take(len)?.len();
            *column = Column { at, end };
        }
        r.end("the body")?;

        let mut stamps = StampReader {
            wall: RleColumn::new(columns[STAMP_WALL]),
            counter: RleColumn::new(columns[STAMP_COUNTER]),
            replica: RleColumn::new(columns[STAMP_REPLICA]),
            last_wall: 0,
            last_counter: 0,
            timeline: None,
        };
        if layout == Layout::Timeline {
            // A stamp is used by a field or as a document's `written` or
            // `deleted`; a document takes at least two bytes of the id column.
            // So a timeline longer than this cannot be all used, and the bound
            // keeps a forged length from allocating more than the limit allows.
            let most = field_total.saturating_add(lengths[DOC_IDS]);
            if timeline_len > most {
                return Err(inconsistent(format!(
                    "a timeline of {timeline_len} stamps for at most {most} uses"
                )));
            }
            let mut timeline: Vec<Stamp> = Vec::with_capacity(timeline_len as usize);
            for _ in 0..timeline_len {
                let stamp = stamps.read(body, &replicas)?;
                if timeline.last().is_some_and(|last| *last >= stamp) {
                    return Err(inconsistent("timeline stamps out of order".into()));
                }
                timeline.push(stamp);
            }
            stamps.wall.end("the clock column")?;
            stamps.counter.end("the counter column")?;
            stamps.replica.end("the replica column")?;
            stamps.timeline = Some(Timeline {
                stamps: timeline,
                refs: RleColumn::new(columns[STAMP_REFS]),
                last: 0,
            });
        }
        Ok(BodyDecoder {
            version,
            max_hlc,
            tombstone_horizon,
            state,
            replicas,
            name_count,
            field_total,
            fields_left: field_total,
            listed,
            reading: None,
            id: String::new(),
            newest: Hlc::ZERO,
            doc_ids: columns[DOC_IDS],
            doc_flags: RleColumn::new(columns[DOC_FLAGS]),
            doc_fields: RleColumn::new(columns[DOC_FIELDS]),
            names: RleColumn::new(columns[FIELD_NAMES]),
            field_stamps: RleColumn::new(columns[FIELD_STAMPS]),
            stamps,
            values: ValueReader {
                tags: RleColumn::new(columns[VALUE_TAGS]),
                ints: RleColumn::new(columns[INTS]),
                floats: columns[FLOATS],
                strings: columns[STRINGS],
                other: columns[OTHER_VALUES],
                dictionary: Vec::new(),
                last_int: 0,
            },
        })
    }

    /// Reads up to `max_docs` more documents (at least one, if any are
    /// left) of the body given to [`BodyDecoder::new`]. Returns whether the
    /// body is read to its end and checked: then
    /// [`BodyDecoder::into_snapshot`] holds all of it.
    pub(crate) fn step(&mut self, body: &[u8], max_docs: usize) -> Result<bool, SnapshotError> {
        let mut budget = max_docs.max(1);
        loop {
            let mut reading = match self.reading.take() {
                Some(reading) => reading,
                None => {
                    let Some(next) = self.listed.pop_front() else {
                        self.check_ends()?;
                        return Ok(true);
                    };
                    self.start_collection(next)?
                }
            };
            while reading.left > 0 && budget > 0 {
                let doc = self.read_document(body, &reading)?;
                reading.built.push(doc);
                reading.left -= 1;
                budget -= 1;
            }
            if reading.left == 0 {
                let mut coll = reading.coll;
                coll.docs = reading.built.into_iter().collect();
                self.state.collections.insert(reading.name, coll);
            } else {
                self.reading = Some(reading);
            }
            if budget == 0 {
                return Ok(false);
            }
        }
    }

    /// [`Snapshot::newest_hlc`] of the decoded snapshot, once
    /// [`BodyDecoder::step`] said it is complete.
    pub(crate) fn newest(&self) -> Hlc {
        self.newest.max(self.max_hlc)
    }

    /// The decoded snapshot; complete once [`BodyDecoder::step`] said so.
    pub(crate) fn into_snapshot(self) -> Snapshot {
        Snapshot {
            version: self.version,
            max_hlc: self.max_hlc,
            tombstone_horizon: self.tombstone_horizon,
            state: self.state,
        }
    }

    fn start_collection(&mut self, listed: Listed) -> Result<Reading, SnapshotError> {
        let coll = CollectionState {
            created: listed.created,
            dropped: listed.dropped,
            docs: Default::default(),
        };
        check_collection_stamps(&listed.name, &coll)?;
        for stamp in coll.created.iter().chain(&coll.dropped) {
            self.newest = self.newest.max(stamp.hlc);
        }
        self.id.clear();
        // Every document takes at least two bytes of the id column.
        let built = Vec::with_capacity(listed.docs.min(self.doc_ids.left() as u64) as usize);
        Ok(Reading {
            name: listed.name,
            coll,
            left: listed.docs,
            built,
        })
    }

    /// Reads the next document of the collection being read.
    fn read_document(
        &mut self,
        body: &[u8],
        reading: &Reading,
    ) -> Result<(String, DocState), SnapshotError> {
        let inconsistent = SnapshotError::Inconsistent;
        let shared = self.doc_ids.varint(body)?;
        let suffix = self.doc_ids.read(body, Reader::str)?;
        let id = &mut self.id;
        let shared = usize::try_from(shared)
            .ok()
            .filter(|&n| n <= id.len() && id.is_char_boundary(n))
            .ok_or_else(|| malformed("a document id shares more than the one before"))?;
        let previous = std::mem::take(id);
        id.reserve(shared + suffix.len());
        id.push_str(&previous[..shared]);
        id.push_str(suffix);
        check(check_doc_id(id))?;
        if reading
            .built
            .last()
            .is_some_and(|(p, _)| p.as_str() >= id.as_str())
        {
            return Err(inconsistent(format!(
                "document {id} out of order",
                id = Quoted(id)
            )));
        }
        let flags = self.doc_flags.next(body)?;
        if flags > HAS_WRITTEN | HAS_DELETED {
            return Err(malformed(format!("document flags {flags}")));
        }
        let replicas = &self.replicas;
        let stamps = &mut self.stamps;
        let written = (flags & HAS_WRITTEN != 0)
            .then(|| stamps.next(body, replicas))
            .transpose()?;
        let deleted = (flags & HAS_DELETED != 0)
            .then(|| stamps.next(body, replicas))
            .transpose()?;
        let count = self.doc_fields.next(body)?;
        // Names are listed once and fields are in ascending name order,
        // so a document has at most as many fields as there are names.
        if count > self.name_count || count > self.fields_left {
            return Err(inconsistent(format!(
                "document {id} claims {count} fields",
                id = Quoted(id)
            )));
        }
        self.fields_left -= count;
        let mut slots: Vec<FieldSlot> = Vec::with_capacity(count as usize);
        let mut last_name: i64 = -1;
        for _ in 0..count {
            let step = self.names.next(body)?;
            let field = i64::try_from(step)
                .ok()
                .and_then(|s| last_name.checked_add(s))
                .filter(|&n| n > last_name && (n as u64) < self.name_count)
                .ok_or_else(|| {
                    inconsistent(format!(
                        "fields of document {id} out of order or range",
                        id = Quoted(id)
                    ))
                })?;
            last_name = field;
            let stamp = match self.field_stamps.next(body)? {
                STAMP_IS_WRITTEN => written.ok_or_else(|| {
                    inconsistent(format!(
                        "document {id}: a field of an unwritten document has no stamp",
                        id = Quoted(id)
                    ))
                })?,
                STAMP_EXPLICIT => stamps.next(body, replicas)?,
                other => return Err(malformed(format!("field stamp kind {other}"))),
            };
            let value = self.values.next(body)?;
            slots.push(FieldSlot {
                value,
                hlc: stamp.hlc,
                replica: self.state.names.intern_replica(stamp.replica),
                name: field as u32,
            });
        }
        let doc = checked_doc(
            id,
            written,
            deleted,
            slots,
            reading.coll.dropped,
            &self.state.names,
        )?;
        self.newest = self.newest.max(doc_newest(&doc));
        Ok((id.clone(), doc))
    }

    /// Checks, once every document is read, that the body held exactly
    /// what its counts claim.
    fn check_ends(&self) -> Result<(), SnapshotError> {
        if self.fields_left != 0 {
            return Err(SnapshotError::Inconsistent(format!(
                "the body claims {} fields and holds {}",
                self.field_total,
                self.field_total - self.fields_left
            )));
        }
        self.doc_ids.end("the document id column")?;
        self.doc_flags.end("the document flag column")?;
        self.doc_fields.end("the field count column")?;
        self.names.end("the field name column")?;
        self.field_stamps.end("the field stamp column")?;
        let stamps = &self.stamps;
        match &stamps.timeline {
            Some(timeline) => timeline.refs.end("the stamp reference column")?,
            None => {
                stamps.wall.end("the clock column")?;
                stamps.counter.end("the counter column")?;
                stamps.replica.end("the replica column")?;
            }
        }
        let values = &self.values;
        values.tags.end("the value tag column")?;
        values.ints.end("the integer column")?;
        values.floats.end("the float column")?;
        values.strings.end("the string column")?;
        if values.other.left() != 0 {
            return Err(malformed("bytes left over in the nested value column"));
        }
        Ok(())
    }
}

/// The replica at `index` of the body's replica table.
fn replica_at(replicas: &[ReplicaId], index: u64) -> Result<ReplicaId, SnapshotError> {
    replicas
        .get(usize::try_from(index).unwrap_or(usize::MAX))
        .copied()
        .ok_or_else(|| SnapshotError::Inconsistent(format!("replica index {index} out of range")))
}

#[derive(Debug)]
struct StampReader {
    wall: RleColumn,
    counter: RleColumn,
    replica: RleColumn,
    last_wall: u64,
    last_counter: u64,
    /// Format 5: the stamps, read up front; each use refers to one.
    timeline: Option<Timeline>,
}

/// Format 5's decoded timeline and its reference column.
#[derive(Debug)]
struct Timeline {
    stamps: Vec<Stamp>,
    refs: RleColumn,
    last: u64,
}

impl StampReader {
    /// The next stamp a document or field uses.
    fn next(&mut self, body: &[u8], replicas: &[ReplicaId]) -> Result<Stamp, SnapshotError> {
        let Some(timeline) = &mut self.timeline else {
            return self.read(body, replicas);
        };
        let at = timeline
            .last
            .checked_add_signed(unzigzag(timeline.refs.next(body)?))
            .filter(|&at| at < timeline.stamps.len() as u64)
            .ok_or_else(|| malformed("a stamp reference outside the timeline"))?;
        timeline.last = at;
        Ok(timeline.stamps[at as usize])
    }

    /// The next stamp of columns 5 to 7.
    fn read(&mut self, body: &[u8], replicas: &[ReplicaId]) -> Result<Stamp, SnapshotError> {
        let step = |last: u64, code: u64, max: u64| {
            last.checked_add_signed(unzigzag(code))
                .filter(|&v| v <= max)
        };
        let wall = step(self.last_wall, self.wall.next(body)?, MAX_WALL_MS)
            .ok_or_else(|| malformed("a clock reading out of range"))?;
        let counter = step(
            self.last_counter,
            self.counter.next(body)?,
            u64::from(u16::MAX),
        )
        .ok_or_else(|| malformed("a clock counter out of range"))?;
        (self.last_wall, self.last_counter) = (wall, counter);
        let hlc = Hlc::new(wall, counter as u16).ok_or_else(|| malformed("a clock reading"))?;
        Ok(Stamp::new(
            hlc,
            replica_at(replicas, self.replica.next(body)?)?,
        ))
    }
}

#[derive(Debug)]
struct ValueReader {
    tags: RleColumn,
    ints: RleColumn,
    floats: Column,
    strings: Column,
    other: Column,
    /// Where each string of the dictionary is in the body (checked UTF-8
    /// when first read).
    dictionary: Vec<(usize, usize)>,
    last_int: i64,
}

impl ValueReader {
    fn next(&mut self, body: &[u8]) -> Result<Option<StoredValue>, SnapshotError> {
        Ok(Some(match self.tags.next(body)? {
            TAG_REMOVED => return Ok(None),
            TAG_NULL => StoredValue::Null,
            TAG_FALSE => StoredValue::Bool(false),
            TAG_TRUE => StoredValue::Bool(true),
            TAG_INT => {
                self.last_int = self.last_int.wrapping_add(unzigzag(self.ints.next(body)?));
                StoredValue::Int(self.last_int)
            }
            TAG_FLOAT => {
                let bytes = self.floats.read(body, |r| r.take(8))?;
                let bits = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
                StoredValue::Float(f64::from_bits(bits))
            }
            TAG_STRING => {
                let s = match self.strings.varint(body)? {
                    0 => {
                        let s = self.strings.read(body, Reader::str)?;
                        // Where `s` starts: the string ends where the column now is.
                        self.dictionary
                            .push((self.strings.at - s.len(), self.strings.at));
                        s
                    }
                    k => self
                        .dictionary
                        .get(usize::try_from(k - 1).unwrap_or(usize::MAX))
                        .and_then(|&(start, end)| body.get(start..end))
                        .and_then(|bytes| core::str::from_utf8(bytes).ok())
                        .ok_or_else(|| malformed(format!("string {k} is not in the dictionary")))?,
                };
                StoredValue::String(Box::from(s))
            }
            tag @ (TAG_BYTES | TAG_LIST | TAG_MAP) => {
                let value: Value = self.other.read(body, |r| {
                    let (value, rest) = postcard::take_from_bytes(r.bytes)
                        .map_err(|e| malformed(format!("nested value: {e}")))?;
                    r.bytes = rest;
                    Ok(value)
                })?;
                let expected = match value {
                    Value::Bytes(_) => TAG_BYTES,
                    Value::List(_) => TAG_LIST,
                    Value::Map(_) => TAG_MAP,
                    _ => TAG_REMOVED,
                };
                if expected != tag {
                    return Err(malformed("a nested value of another type than its tag"));
                }
                StoredValue::from(value)
            }
            other => return Err(malformed(format!("value tag {other}"))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::hash::BuildHasher;

    use super::{DEFLATED, PLAIN, stamp_order};
    use crate::hlc::Hlc;
    use crate::snapshot::{COLUMNAR_SNAPSHOT_FORMAT, Snapshot};
    use crate::state::State;
    use crate::version::VersionVector;

    proptest! {
        /// A checkpoint encoded a few documents at a time (resuming in the
        /// middle of a collection, across collections, with strings seen in
        /// an earlier slice) decodes to the state it was encoded from, and
        /// is the blob encoded in one piece.
        #[test]
        fn a_state_encoded_in_slices_decodes_to_itself(
            writes in prop::collection::vec((0..3u8, 0..12u8, 0..3u8, 0..4u8, any::<bool>()), 1..80),
            slice in 1..5usize,
        ) {
            let mut replica = crate::Replica::new(crate::ReplicaId(7), crate::ReplicaConfig::default());
            let now = crate::Timestamp::from_unix_ms(1_700_000_000_000);
            for (c, d, f, v, delete) in writes {
                let (c, d) = (format!("c{c}"), format!("doc{d}"));
                if delete {
                    let _ = replica.delete(now, &c, &d);
                } else {
                    replica.put(now, &c, &d, [(format!("f{f}"), format!("value {v}"))]).unwrap();
                }
            }
            let state = replica.state();
            let version = replica.version();
            let mut encoder = crate::snapshot::SnapshotEncoder::new(state);
            // Tombstones are documents to encode too.
            let docs: usize = state.collections.values().map(|c| c.docs.len()).sum();
            let mut slices = 0;
            while !encoder.step(state, slice) {
                slices += 1;
                prop_assert!(slices <= docs, "no progress");
            }
            let sliced = encoder.finish(state, version, Hlc::ZERO, Hlc::ZERO);
            let decoded = Snapshot::decode(&sliced).unwrap();
            prop_assert_eq!(&decoded.state, state);
            prop_assert_eq!(sliced, Snapshot::encode(state, version, Hlc::ZERO, Hlc::ZERO));
        }
    }

    /// A string whose hash an earlier, different one took is written
    /// whole each time, taking a number each time; the first keeps its own.
    #[test]
    fn strings_whose_hashes_collide_keep_their_own_numbers() {
        let mut dictionary = super::Dictionary::with_capacity(0);
        let mut column = Vec::new();
        dictionary.write(&mut column, "a");
        let hash_b = super::Hashing::default().hash_one("b");
        // "b" now hashes like "a" did.
        dictionary.by_hash.insert(hash_b, 1);
        dictionary.write(&mut column, "b");
        dictionary.write(&mut column, "b");
        dictionary.write(&mut column, "a");
        // 0 + "a" (new, 1), 0 + "b" (2), 0 + "b" (3), then 1.
        assert_eq!(column, [0, 1, b'a', 0, 1, b'b', 0, 1, b'b', 1]);
    }

    /// The plain encoder (the one a client's checkpoints use) frames its
    /// columns plain and the compressing ones deflate theirs: each framing
    /// reaches the encoders meant to use it, and the bytes decode.
    #[test]
    fn only_the_compressing_encoders_deflate() {
        let (state, version) = (State::new(), VersionVector::new());
        let horizon = Hlc::ZERO;
        let plain = Snapshot::encode(&state, &version, Hlc::ZERO, horizon);
        let compressed = Snapshot::encode_compressed(&state, &version, Hlc::ZERO, horizon);
        let format_4 = Snapshot::encode_in_format(
            COLUMNAR_SNAPSHOT_FORMAT,
            &state,
            &version,
            Hlc::ZERO,
            horizon,
        )
        .expect("format 4 is written");
        // The payload's first byte, after the 13-byte blob header.
        assert_eq!(plain[13], PLAIN);
        assert_eq!(compressed[13], DEFLATED);
        assert_eq!(format_4[13], DEFLATED);
        for bytes in [plain, compressed, format_4] {
            assert_eq!(
                Snapshot::decode(&bytes).expect("decodes"),
                Snapshot::empty()
            );
        }
    }

    proptest! {
        /// The radix sort orders stamps as comparing (clock reading,
        /// replica) does: clock readings close together (one key), far
        /// apart (replica, then clock reading), and with many replicas.
        #[test]
        fn stamp_order_sorts_like_comparison(
            base in any::<u64>(),
            uses in prop::collection::vec((0u64..1 << 30, 0u32..5), 0..300),
            spread in prop::sample::select(vec![1u64, 1 << 16, 1 << 40]),
            replicas in prop::sample::select(vec![1u32, 3, 1 << 20]),
        ) {
            let uses: Vec<(u64, u32)> = uses
                .into_iter()
                // Wrapping: the widest spread covers all of u64.
                .map(|(hlc, r)| (base.wrapping_add(hlc.wrapping_mul(spread)), r * replicas))
                .collect();
            let sorted: Vec<(u64, u32)> =
                stamp_order(&uses).into_iter().map(|at| uses[at as usize]).collect();
            let mut expected = uses.clone();
            expected.sort_unstable();
            prop_assert_eq!(sorted, expected);
        }
    }
}
