//! Persistence without IO: the replica describes each change as a batch of
//! key/value writes; a store applies the batch atomically.
//!
//! Keys are short byte strings (see [`StoreKey`]); values are versioned
//! postcard records. A replica can be rebuilt from the records alone
//! ([`crate::Replica::restore`]).

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use crate::hlc::Hlc;
use crate::op::{ChangeRef, OpRef};
use crate::protocol::{push_varint, put_varint};
use crate::quoted::Quoted;
use crate::stamp::{ReplicaId, Stamp};
use crate::state::{DocState, Names};
use crate::value::Value;
use crate::version::VersionVector;

/// Version byte that starts every stored record.
///
/// Versions 2 and 3 changed only document records (see [`DocRecordRef`]);
/// every other record reads the same at versions 1 to 3.
const RECORD_VERSION: u8 = 3;

/// The oldest record version this build still reads.
const OLDEST_RECORD_VERSION: u8 = 1;

/// What a stored record is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreKey {
    /// The replica's own bookkeeping: identity, clock, sequence, version.
    Meta,
    /// A collection's create and drop stamps.
    Collection(String),
    /// One document's merge state.
    Document {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// One local operation not yet acknowledged by the relay.
    Outbox(u64),
    /// A record owned by a layer above the replica (for example a sync session).
    Extension(String),
    /// The checkpoint: the whole state as one snapshot, which the stored
    /// document and collection records override.
    Checkpoint,
}

impl std::fmt::Display for StoreKey {
    /// Names the record in error messages, its names quoted as every
    /// message of the core quotes a name (`crate::quoted`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKey::Meta => f.write_str("the metadata record"),
            StoreKey::Collection(name) => write!(f, "collection {name}", name = Quoted(name)),
            StoreKey::Document { collection, id } => write!(
                f,
                "document {id} of {collection}",
                collection = Quoted(collection),
                id = Quoted(id)
            ),
            StoreKey::Outbox(seq) => write!(f, "outbox operation {seq}"),
            StoreKey::Extension(name) => write!(f, "extension record {name}", name = Quoted(name)),
            StoreKey::Checkpoint => f.write_str("the checkpoint"),
        }
    }
}

impl StoreKey {
    /// The key as stored: a tag byte, then the parts.
    ///
    /// `M` · `C` name · `D` len(collection) as u16 BE, collection, id ·
    /// `O` seq as u64 BE · `X` name · `B` (the checkpoint). Outbox keys
    /// sort by sequence; the checkpoint sorts before every collection and
    /// document record, so a store read in key order yields it first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            StoreKey::Meta => out.push(b'M'),
            StoreKey::Collection(name) => {
                out.push(b'C');
                out.extend_from_slice(name.as_bytes());
            }
            StoreKey::Document { collection, id } => {
                out.push(b'D');
                // Collection names are at most 255 bytes (limits), so u16 always fits.
                let len = u16::try_from(collection.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(collection.as_bytes());
                out.extend_from_slice(id.as_bytes());
            }
            StoreKey::Outbox(seq) => {
                out.push(b'O');
                out.extend_from_slice(&seq.to_be_bytes());
            }
            StoreKey::Extension(name) => {
                out.push(b'X');
                out.extend_from_slice(name.as_bytes());
            }
            StoreKey::Checkpoint => out.push(b'B'),
        }
        out
    }

    /// Parses a stored key.
    pub fn from_bytes(bytes: &[u8]) -> Result<StoreKey, RecordError> {
        let bad = || RecordError::BadKey(bytes.to_vec());
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad());
        let (&tag, rest) = bytes.split_first().ok_or_else(bad)?;
        Ok(match tag {
            b'M' if rest.is_empty() => StoreKey::Meta,
            b'B' if rest.is_empty() => StoreKey::Checkpoint,
            b'C' => StoreKey::Collection(text(rest)?),
            b'D' => {
                let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
                let len = usize::from(u16::from_be_bytes(*len));
                if rest.len() < len {
                    return Err(bad());
                }
                let (collection, id) = rest.split_at(len);
                StoreKey::Document {
                    collection: text(collection)?,
                    id: text(id)?,
                }
            }
            b'O' => StoreKey::Outbox(u64::from_be_bytes(rest.try_into().map_err(|_| bad())?)),
            b'X' => StoreKey::Extension(text(rest)?),
            _ => return Err(bad()),
        })
    }
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Stores `value` under `key`, replacing what was there.
    Put {
        /// The key.
        key: StoreKey,
        /// The encoded record.
        value: Vec<u8>,
    },
    /// Removes whatever is stored under `key` (nothing if absent).
    Delete {
        /// The key.
        key: StoreKey,
    },
    /// Removes every record whose key's bytes ([`StoreKey::to_bytes`]) sort
    /// from `first`'s to `last`'s, both included (nothing when `first`
    /// sorts after `last`): an acknowledgement of many operations removes
    /// their outbox records with one write, which a store applies as one
    /// range delete (SQLite `DELETE … WHERE key BETWEEN`, IndexedDB
    /// `delete(IDBKeyRange.bound(..))`) rather than one per record.
    DeleteRange {
        /// The lowest key removed.
        first: StoreKey,
        /// The highest key removed.
        last: StoreKey,
    },
}

impl Write {
    /// The one key this write touches; `None` for a range delete.
    pub fn key(&self) -> Option<&StoreKey> {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => Some(key),
            Write::DeleteRange { .. } => None,
        }
    }
}

/// Writes a store must apply atomically: all of them or none.
///
/// A store applies the writes in order: where two touch one key (a range
/// delete and a put in its range: after [`crate::Replica::fork`] the outbox
/// numbering restarts at 1, so a batch may remove old record 1 and store
/// new record 1), the later one decides what is stored. A store may apply
/// writes to different keys in any order, but never move a write across a
/// range delete that covers its key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistBatch {
    /// The writes.
    pub writes: Vec<Write>,
}

impl PersistBatch {
    /// Whether the batch has no writes.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Adds a write after the others, dropping an earlier write to the same
    /// one key (which the new write would override anyway). A range delete
    /// drops nothing and is never dropped: the writes around it keep their
    /// order relative to it.
    pub fn push(&mut self, write: Write) {
        if let Some(key) = write.key() {
            self.writes.retain(|w| w.key() != Some(key));
        }
        self.writes.push(write);
    }

    /// Adds every write of `other` after this batch's writes, each
    /// replacing an earlier one to the same key, as [`PersistBatch::push`]
    /// one by one would, in time linear in both batches.
    pub fn extend(&mut self, other: PersistBatch) {
        self.extend_all([other]);
    }

    /// Adds the writes of every batch of `others`, in order, as
    /// [`PersistBatch::extend`] with each would, in time linear in all the
    /// writes together: for a host merging the many batches queued during
    /// one store write into one transaction (extending with each in turn
    /// would index the growing batch again every time).
    pub fn extend_all(&mut self, others: impl IntoIterator<Item = PersistBatch>) {
        // Only writes to one key are indexed: dropping an earlier write to
        // a key that a later one writes again is right whatever lies between
        // them (a range delete included), as the later write decides.
        let mut index: std::collections::HashMap<StoreKey, usize> = self
            .writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| Some((w.key()?.clone(), i)))
            .collect();
        let mut replaced = vec![false; self.writes.len()];
        for other in others {
            for write in other.writes {
                if let Some(key) = write.key()
                    && let Some(earlier) = index.insert(key.clone(), self.writes.len())
                {
                    replaced[earlier] = true;
                }
                replaced.push(false);
                self.writes.push(write);
            }
        }
        if replaced.contains(&true) {
            let mut keep = replaced.into_iter().map(|r| !r);
            self.writes.retain(|_| keep.next().unwrap_or(true));
        }
    }
}

/// A stored record could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The key is not one this version writes.
    #[error("unrecognised store key {0:02x?}")]
    BadKey(Vec<u8>),
    /// The record starts with a format version this build does not know.
    #[error(
        "record under {key} has format version {found}; this build reads versions {OLDEST_RECORD_VERSION} to {RECORD_VERSION}"
    )]
    UnsupportedVersion {
        /// The key.
        key: StoreKey,
        /// The version byte found.
        found: u8,
    },
    /// The record's bytes do not decode.
    #[error("record under {key} is corrupt: {reason}")]
    Corrupt {
        /// The key.
        key: StoreKey,
        /// What the decoder said.
        reason: String,
    },
}

/// Version byte that starts the checkpoint record; the rest of the record
/// is a snapshot blob (any format [`crate::Snapshot::decode`] reads: one
/// encoded by the replica, or the bytes of a relay's snapshot as received).
///
/// The checkpoint holds documents and collections only: the metadata record
/// (identity, clock, version vector), the outbox and the session record are
/// stored as before and the checkpoint's own version vector is not read. A
/// checkpoint is written in one batch with the deletion of every document
/// record stored before it, so every document record in a store was written
/// after the store's checkpoint and overrides the checkpoint's copy of that
/// document; likewise each collection record overrides the checkpoint's
/// stamps for its collection. While a checkpoint is stored, a document that
/// no longer exists is stored as [`ABSENT_DOCUMENT`] rather than deleted, and
/// a collection without stamps as a record with neither stamp.
pub(crate) const CHECKPOINT_VERSION: u8 = 1;

/// The value of a document record saying the document does not exist (it
/// overrides the checkpoint's copy): a version byte no record ever has.
pub(crate) const ABSENT_DOCUMENT: &[u8] = &[0];

/// The checkpoint record's value for snapshot bytes, in their own buffer:
/// the state's snapshot can be most of the process's memory, and a copy
/// of it would double that for a moment. Growing the buffer by one byte
/// moves it at most (a large allocation is remapped, not copied).
pub(crate) fn encode_checkpoint(mut snapshot: Vec<u8>) -> Vec<u8> {
    snapshot.reserve_exact(1);
    snapshot.insert(0, CHECKPOINT_VERSION);
    snapshot
}

/// The snapshot bytes of a checkpoint record, after checking its version.
pub(crate) fn checkpoint_snapshot(value: &[u8]) -> Result<&[u8], RecordError> {
    match value.split_first() {
        Some((&CHECKPOINT_VERSION, snapshot)) => Ok(snapshot),
        Some((&found, _)) => Err(RecordError::UnsupportedVersion {
            key: StoreKey::Checkpoint,
            found,
        }),
        None => Err(RecordError::Corrupt {
            key: StoreKey::Checkpoint,
            reason: "empty record".into(),
        }),
    }
}

/// The replica's own bookkeeping record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    pub(crate) replica: ReplicaId,
    pub(crate) clock: Hlc,
    pub(crate) next_seq: u64,
    pub(crate) version: VersionVector,
}

/// [`MetaRecord`] as written, borrowing the version vector instead of copying it.
#[derive(Serialize)]
pub(crate) struct MetaRecordRef<'a> {
    pub(crate) replica: ReplicaId,
    pub(crate) clock: Hlc,
    pub(crate) next_seq: u64,
    pub(crate) version: &'a VersionVector,
}

/// A collection's own stamps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CollectionRecord {
    pub(crate) created: Option<Stamp>,
    pub(crate) dropped: Option<Stamp>,
}

/// A document's merge state as stored, serialised straight from the state.
///
/// `written` and `deleted` are whole stamps. Fields are `(name, stamp,
/// value)`, the stamp relative to `written` (version 3), as
/// `Option<(Option<ReplicaId>, i64)>`:
/// - `None`: the stamp equals `written`, as it does for every field of the
///   latest put;
/// - `Some((replica, before))`: the stamp of `replica` (`None`: `written`'s
///   replica) at the clock reading `written.hlc - before`, in wrapping
///   64-bit arithmetic so that any value decodes. Most fields were written
///   by the same replica a little earlier: about five bytes instead of
///   the twenty or so of a whole stamp (with a full-width replica id), and less to encode.
///
/// With no `written` stamp, the base is `Hlc::ZERO` of `ReplicaId(0)`.
/// Version 2 stored a whole `Option<Stamp>` per field (`None`: `written`),
/// version 1 a whole `Stamp`; both still decode.
#[derive(Serialize)]
pub(crate) struct DocRecordRef<'a> {
    written: Option<Stamp>,
    deleted: Option<Stamp>,
    fields: FieldsRef<'a>,
}

impl<'a> DocRecordRef<'a> {
    pub(crate) fn new(doc: &'a DocState, names: &'a Names) -> Self {
        DocRecordRef {
            written: doc.written,
            deleted: doc.deleted(),
            fields: FieldsRef { doc, names },
        }
    }
}

/// A document's fields with their names resolved, without collecting them.
struct FieldsRef<'a> {
    doc: &'a DocState,
    names: &'a Names,
}

impl Serialize for FieldsRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.doc.fields.len()))?;
        let base = self.doc.written.unwrap_or(NO_STAMP);
        for slot in &self.doc.fields {
            let stamp = slot.stamp(self.names);
            let name = self.names.name(slot.name);
            let value = slot.value.as_ref();
            if Some(stamp) == self.doc.written {
                // Any `None` is the same byte; this one is the cheaper to
                // pass around (a put of every field writes only these).
                seq.serialize_element(&(name, None::<()>, value))?;
            } else {
                seq.serialize_element(&(name, Some(relative(stamp, base)), value))?;
            }
        }
        seq.end()
    }
}

/// The base of relative field stamps in a document record without a
/// `written` stamp.
const NO_STAMP: Stamp = Stamp::new(Hlc::ZERO, ReplicaId(0));

/// A field's stamp in a version 3 document record: see [`DocRecordRef`].
type RelativeStamp = (Option<ReplicaId>, i64);

/// `stamp` relative to `base`.
fn relative(stamp: Stamp, base: Stamp) -> RelativeStamp {
    let replica = (stamp.replica != base.replica).then_some(stamp.replica);
    // Two's complement: the wrapping difference, read as signed, is small
    // either side of the base.
    let before = base.hlc.as_u64().wrapping_sub(stamp.hlc.as_u64()) as i64;
    (replica, before)
}

/// The stamp [`relative`] made `stamp` into.
fn absolute((replica, before): RelativeStamp, base: Stamp) -> Stamp {
    let hlc = Hlc::from_u64(base.hlc.as_u64().wrapping_sub(before as u64));
    Stamp::new(hlc, replica.unwrap_or(base.replica))
}

/// A document's merge state as read back, stamps still relative to `written`.
///
/// Field names borrow from the record's bytes: they are interned at once,
/// so a `String` for each would be allocated only to be dropped.
#[derive(Deserialize)]
pub(crate) struct DocRecord<'a> {
    pub(crate) written: Option<Stamp>,
    pub(crate) deleted: Option<Stamp>,
    /// `None`: the document's `written` stamp.
    #[serde(borrow)]
    pub(crate) fields: Vec<(&'a str, Option<Stamp>, Option<Value>)>,
}

/// A document record of version 3, as [`DocRecordRef`] writes it.
#[derive(Deserialize)]
struct DocRecordV3<'a> {
    written: Option<Stamp>,
    deleted: Option<Stamp>,
    #[serde(borrow)]
    fields: Vec<(&'a str, Option<RelativeStamp>, Option<Value>)>,
}

/// A document record of version 1, every field with its own stamp.
#[derive(Deserialize)]
struct DocRecordV1<'a> {
    written: Option<Stamp>,
    deleted: Option<Stamp>,
    #[serde(borrow)]
    fields: Vec<(&'a str, Stamp, Option<Value>)>,
}

/// Decodes a document record of any version this build reads.
pub(crate) fn decode_doc_record<'de>(
    key: &StoreKey,
    bytes: &'de [u8],
) -> Result<DocRecord<'de>, RecordError> {
    let (version, body) = split_version(key, bytes)?;
    if version == RECORD_VERSION {
        let v3: DocRecordV3<'de> = decode_body(key, body)?;
        let base = v3.written.unwrap_or(NO_STAMP);
        return Ok(DocRecord {
            written: v3.written,
            deleted: v3.deleted,
            fields: v3
                .fields
                .into_iter()
                .map(|(name, stamp, value)| (name, stamp.map(|s| absolute(s, base)), value))
                .collect(),
        });
    }
    if version == 2 {
        return decode_body(key, body);
    }
    let v1: DocRecordV1<'de> = decode_body(key, body)?;
    Ok(DocRecord {
        written: v1.written,
        deleted: v1.deleted,
        fields: v1
            .fields
            .into_iter()
            .map(|(name, stamp, value)| (name, Some(stamp), value))
            .collect(),
    })
}

/// Encodes a record: the version byte, then postcard.
pub(crate) fn encode_record<T: Serialize + ?Sized>(record: &T) -> Vec<u8> {
    encode_record_sized(record, 128)
}

/// Like [`encode_record`], into a buffer of `capacity` bytes to start with,
/// so a record of known rough size is not grown by reallocation.
pub(crate) fn encode_record_sized<T: Serialize + ?Sized>(record: &T, capacity: usize) -> Vec<u8> {
    encode_record_into(record, Vec::with_capacity(capacity))
}

/// Appends `record`, in postcard, to `out`; on failure leaves `out` as it
/// was and returns `false` (whatever `out` already held, such as the other
/// records of a transaction's run, is kept).
///
/// Through [`VecSink`] rather than `postcard::to_extend`: that one copies
/// every varint and string a byte at a time through `Extend`, a fifth of
/// the instructions of a durable put (which re-encodes its document).
fn append_postcard<T: Serialize + ?Sized>(record: &T, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let ok = postcard::serialize_with_flavor(record, VecSink(out)).is_ok();
    if !ok {
        out.truncate(start);
    }
    ok
}

/// A postcard output that appends whole slices to a vector.
struct VecSink<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecSink<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the outbox record of `op` to `out`: byte for byte what
/// [`encode_record`] writes for the [`crate::op::Op`] with the same parts.
///
/// Every local write encodes one, so it is written here directly: through
/// serde and postcard it cost about a quarter of a write, most of it a
/// `memcpy` call per varint and name. Lists and maps, which nest, still go
/// through postcard.
#[inline]
pub(crate) fn push_op_record<'a, F>(out: &mut Vec<u8>, op: &OpRef<'a, F>)
where
    F: Clone + IntoIterator<Item = (&'a str, Option<&'a Value>)>,
    F::IntoIter: ExactSizeIterator,
{
    // The variant indexes of `Change`, in declaration order.
    let (tag, collection, id) = match &op.change {
        ChangeRef::Put { collection, id, .. } => (0, collection, Some(id)),
        ChangeRef::Delete { collection, id } => (1, collection, Some(id)),
        ChangeRef::CreateCollection { collection } => (2, collection, None),
        ChangeRef::DropCollection { collection } => (3, collection, None),
    };
    // The fixed part, at most 1 + 3 × 10 + 1 bytes, copied in one piece.
    let mut head = [0; 32];
    head[0] = RECORD_VERSION;
    let mut at = put_varint(&mut head, 1, op.id.replica.0);
    at = put_varint(&mut head, at, op.id.seq);
    at = put_varint(&mut head, at, op.hlc.as_u64());
    head[at] = tag;
    let start = out.len();
    out.extend_from_slice(&head);
    out.truncate(start + at + 1);
    push_str(out, collection);
    if let Some(id) = id {
        push_str(out, id);
    }
    if let ChangeRef::Put { fields, .. } = &op.change {
        let fields = fields.clone().into_iter();
        push_varint(out, fields.len() as u64);
        for (name, value) in fields {
            push_str(out, name);
            match value {
                None => out.push(0),
                Some(value) => {
                    out.push(1);
                    push_value(out, value);
                }
            }
        }
    }
}

/// Appends `value` as postcard writes it: the variant index, then the
/// contents (an integer zigzagged, a float's bits little-endian).
fn push_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(0),
        Value::Bool(v) => out.extend_from_slice(&[1, u8::from(*v)]),
        Value::Int(v) => {
            out.push(2);
            push_varint(out, ((v << 1) ^ (v >> 63)) as u64);
        }
        Value::Float(v) => {
            out.push(3);
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        Value::String(v) => {
            out.push(4);
            push_str(out, v);
        }
        Value::Bytes(v) => {
            out.push(5);
            push_varint(out, v.len() as u64);
            out.extend_from_slice(v);
        }
        // Cannot fail for a vector; were it to, the record would lack its
        // value and be refused as corrupt on load, the run's others intact.
        Value::List(_) | Value::Map(_) => {
            append_postcard(value, out);
        }
    }
}

/// Appends `s` as postcard's string: its length, then its bytes.
fn push_str(out: &mut Vec<u8>, s: &str) {
    push_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Decodes a record written by [`encode_record`]. Document records have a
/// decoder of their own, [`decode_doc_record`].
pub(crate) fn decode_record<'de, T: Deserialize<'de>>(
    key: &StoreKey,
    bytes: &'de [u8],
) -> Result<T, RecordError> {
    let (_, body) = split_version(key, bytes)?;
    decode_body(key, body)
}

/// Checks the version byte; returns it and the body after it.
fn split_version<'de>(key: &StoreKey, bytes: &'de [u8]) -> Result<(u8, &'de [u8]), RecordError> {
    let (&version, body) = bytes.split_first().ok_or_else(|| RecordError::Corrupt {
        key: key.clone(),
        reason: "empty record".into(),
    })?;
    if !(OLDEST_RECORD_VERSION..=RECORD_VERSION).contains(&version) {
        return Err(RecordError::UnsupportedVersion {
            key: key.clone(),
            found: version,
        });
    }
    Ok((version, body))
}

fn decode_body<'de, T: Deserialize<'de>>(
    key: &StoreKey,
    body: &'de [u8],
) -> Result<T, RecordError> {
    let (record, rest) = postcard::take_from_bytes(body).map_err(|e| RecordError::Corrupt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(RecordError::Corrupt {
            key: key.clone(),
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(record)
}

/// Encodes a record as [`encode_record`] does, into `out` (cleared first),
/// so a caller encoding many records reuses one buffer.
pub(crate) fn encode_record_into<T: Serialize + ?Sized>(record: &T, mut out: Vec<u8>) -> Vec<u8> {
    out.clear();
    out.push(RECORD_VERSION);
    // Serialising into a Vec fails only for types postcard cannot express
    // (sequences of unknown length); ours never are. Were it to happen, the
    // empty record would be refused as corrupt on load rather than misread.
    if !append_postcard(record, &mut out) {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors name a record by its parts, each name quoted once.
    #[test]
    fn record_errors_name_the_record() {
        let corrupt = RecordError::Corrupt {
            key: StoreKey::Document {
                collection: "todos".into(),
                id: "t 1".into(),
            },
            reason: "short".into(),
        };
        assert_eq!(
            corrupt.to_string(),
            "record under document 't 1' of 'todos' is corrupt: short"
        );
        let newer = RecordError::UnsupportedVersion {
            key: StoreKey::Collection("todos".into()),
            found: 200,
        };
        assert!(
            newer
                .to_string()
                .starts_with("record under collection 'todos' has format version 200;"),
            "{newer}"
        );
    }

    #[test]
    fn records_are_encoded_as_postcard_encodes_them() {
        // Varints of every length, strings, bytes, options, floats, bools:
        // every path through the output (single bytes and slices).
        let record = (
            (u64::MAX, 300u32, -5i64, 0u8),
            "naïve".to_owned(),
            vec![1u8, 2, 3],
            (Some(1.5f64), None::<u8>, true),
            [ReplicaId(u64::MAX), ReplicaId(1)],
        );
        let want = postcard::to_extend(&record, vec![RECORD_VERSION]).expect("encodes");
        assert_eq!(encode_record(&record), want);
        assert_eq!(encode_record_into(&record, vec![9; 40]), want);
    }

    /// A value of every kind, nested a little.
    fn value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            ".{0,8}".prop_map(Value::String),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(2, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::List),
                prop::collection::btree_map(".{0,3}", inner, 0..3).prop_map(Value::Map),
            ]
        })
    }

    /// Any operation; names up to 200 bytes, so lengths take two varint bytes.
    fn op() -> impl proptest::strategy::Strategy<Value = crate::op::Op> {
        use crate::op::{Change, Op, OpId};
        use proptest::prelude::*;
        let name = || ".{0,3}|[a-z]{120,200}";
        let change = prop_oneof![
            (
                name(),
                name(),
                prop::collection::vec((name(), proptest::option::of(value())), 0..5)
            )
                .prop_map(|(collection, id, fields)| Change::Put {
                    collection,
                    id,
                    fields
                }),
            (name(), name()).prop_map(|(collection, id)| Change::Delete { collection, id }),
            name().prop_map(|collection| Change::CreateCollection { collection }),
            name().prop_map(|collection| Change::DropCollection { collection }),
        ];
        (any::<u64>(), any::<u64>(), any::<u64>(), change).prop_map(
            |(replica, seq, hlc, change)| Op {
                id: OpId {
                    replica: ReplicaId(replica),
                    seq,
                },
                hlc: Hlc::from_u64(hlc),
                change,
            },
        )
    }

    proptest::proptest! {
        /// The hand-written outbox record is the serde-derived encoding of
        /// the same operation, byte for byte, appended after what `out`
        /// held.
        #[test]
        fn op_records_are_the_operations_postcard_encoding(op in op(), before in 0..3usize) {
            let fields: Vec<(&str, Option<&Value>)>;
            let change = match &op.change {
                crate::op::Change::Put { collection, id, fields: all } => {
                    fields = all.iter().map(|(n, v)| (n.as_str(), v.as_ref())).collect();
                    ChangeRef::Put { collection, id, fields }
                }
                crate::op::Change::Delete { collection, id } => ChangeRef::Delete { collection, id },
                crate::op::Change::CreateCollection { collection } => {
                    ChangeRef::CreateCollection { collection }
                }
                crate::op::Change::DropCollection { collection } => {
                    ChangeRef::DropCollection { collection }
                }
            };
            let mut out = vec![7; before];
            push_op_record(&mut out, &OpRef { id: op.id, hlc: op.hlc, change });
            let mut want = vec![7; before];
            want.extend(postcard::to_extend(&op, vec![RECORD_VERSION]).expect("encodes"));
            proptest::prop_assert_eq!(out, want);
        }
    }

    #[test]
    fn extend_equals_pushing_one_by_one() {
        let put = |key: u64, value: u8| Write::Put {
            key: StoreKey::Outbox(key),
            value: vec![value],
        };
        let first = [put(1, 1), put(2, 1), put(3, 1)];
        let second = [
            put(2, 2),
            Write::Delete {
                key: StoreKey::Outbox(4),
            },
            put(1, 2),
            put(5, 2),
        ];
        let mut pushed = PersistBatch::default();
        for write in first.iter().chain(&second) {
            pushed.push(write.clone());
        }
        let mut extended = PersistBatch {
            writes: first.to_vec(),
        };
        extended.extend(PersistBatch {
            writes: second.to_vec(),
        });
        assert_eq!(extended, pushed);
        assert_eq!(extended.writes.len(), 5);

        // Many batches at once: the same as pushing every write in turn.
        let batches: Vec<PersistBatch> = [&first[..2], &first[2..], &second[..1], &second[1..]]
            .into_iter()
            .map(|writes| PersistBatch {
                writes: writes.to_vec(),
            })
            .collect();
        let mut merged = PersistBatch::default();
        merged.extend_all(batches);
        assert_eq!(merged, pushed);
    }

    /// A range delete keeps its place among the writes around it, and a
    /// later put of a key in its range stays after it.
    #[test]
    fn merging_keeps_range_deletes_in_order() {
        let put = |key: u64, value: u8| Write::Put {
            key: StoreKey::Outbox(key),
            value: vec![value],
        };
        let range = Write::DeleteRange {
            first: StoreKey::Outbox(1),
            last: StoreKey::Outbox(3),
        };
        let batches = [
            vec![put(1, 1), put(2, 1)],
            vec![range.clone(), put(1, 2)],
            vec![put(3, 2)],
        ];
        let expected = vec![put(2, 1), range, put(1, 2), put(3, 2)];
        let mut pushed = PersistBatch::default();
        for write in batches.iter().flatten() {
            pushed.push(write.clone());
        }
        assert_eq!(pushed.writes, expected);
        let mut merged = PersistBatch::default();
        merged.extend_all(batches.map(|writes| PersistBatch { writes }));
        assert_eq!(merged.writes, expected);
    }

    #[test]
    fn keys_round_trip() {
        for key in [
            StoreKey::Meta,
            StoreKey::Collection("todos".into()),
            StoreKey::Document {
                collection: "a".into(),
                id: "bc".into(),
            },
            StoreKey::Document {
                collection: "ab".into(),
                id: "c".into(),
            },
            StoreKey::Outbox(u64::MAX),
            StoreKey::Extension("session".into()),
            StoreKey::Checkpoint,
        ] {
            assert_eq!(StoreKey::from_bytes(&key.to_bytes()).unwrap(), key);
        }
        assert!(StoreKey::from_bytes(b"").is_err());
        assert!(StoreKey::from_bytes(b"D\x00\x09ab").is_err());
        assert!(StoreKey::from_bytes(b"O123").is_err());
    }

    #[test]
    fn outbox_keys_sort_by_sequence() {
        assert!(StoreKey::Outbox(2).to_bytes() < StoreKey::Outbox(256).to_bytes());
    }

    /// A relative stamp comes back as the stamp, whichever side of the base
    /// and however far; any relative stamp decodes (no overflow).
    #[test]
    fn relative_stamps_round_trip() {
        let stamp = |hlc, replica| Stamp::new(Hlc::from_u64(hlc), ReplicaId(replica));
        let bases = [NO_STAMP, stamp(1 << 40, 7), stamp(u64::MAX, u64::MAX)];
        for base in bases {
            for hlc in [0, 1, (1 << 40) - 5, (1 << 40) + 5, u64::MAX - 1, u64::MAX] {
                for replica in [0, 7, u64::MAX] {
                    let s = stamp(hlc, replica);
                    let rel = relative(s, base);
                    assert_eq!(rel.0.is_none(), replica == base.replica.0);
                    assert_eq!(absolute(rel, base), s);
                }
            }
        }
        // Five milliseconds earlier, same replica: five bytes, not twenty.
        let base = stamp(1_765_000_000_000 << 16, u64::MAX);
        let earlier = stamp((1_765_000_000_000 - 5) << 16, u64::MAX);
        let bytes = postcard::to_allocvec(&Some(relative(earlier, base))).unwrap();
        assert_eq!(bytes, [1, 0, 0x80, 0x80, 0x28]);
        for before in [i64::MIN, -1, i64::MAX] {
            absolute((None, before), base);
        }
    }

    /// Truncated or garbled document records are refused with a typed
    /// error, whatever their version.
    #[test]
    fn corrupt_document_records_are_refused() {
        let key = StoreKey::Meta;
        // written None, deleted None, one field "a": stamp 1 ms after
        // `written`'s base by replica 9, value None.
        let good = [3u8, 0, 0, 1, 1, b'a', 1, 1, 9, 0xff, 0xff, 0x07, 0];
        let record = decode_doc_record(&key, &good).unwrap();
        assert_eq!(
            record.fields[0].1,
            Some(Stamp::new(Hlc::from_u64(65_536), ReplicaId(9)))
        );
        for len in 0..good.len() {
            assert!(
                decode_doc_record(&key, &good[..len]).is_err(),
                "{len} bytes"
            );
        }
        let mut bad = good;
        bad[6] = 2; // not an Option tag
        assert!(matches!(
            decode_doc_record(&key, &bad),
            Err(RecordError::Corrupt { .. })
        ));
        let mut bad = good;
        bad[0] = 4;
        assert!(matches!(
            decode_doc_record(&key, &bad),
            Err(RecordError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn records_reject_wrong_version_and_trailing_bytes() {
        let key = StoreKey::Meta;
        let mut bytes = encode_record(&CollectionRecord {
            created: None,
            dropped: None,
        });
        assert!(decode_record::<CollectionRecord>(&key, &bytes).is_ok());
        bytes.push(0);
        assert!(matches!(
            decode_record::<CollectionRecord>(&key, &bytes),
            Err(RecordError::Corrupt { .. })
        ));
        bytes[0] = 9;
        assert!(matches!(
            decode_record::<CollectionRecord>(&key, &bytes),
            Err(RecordError::UnsupportedVersion { .. })
        ));
    }
}
