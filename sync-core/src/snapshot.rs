//! Snapshots: the whole merged state in one checksummed, versioned blob.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | content |
//! | --- | --- |
//! | 4 | magic `CNSN` |
//! | 1 | format version, currently 1 |
//! | 4 | payload length `n` |
//! | 4 | CRC-32 (IEEE) of the payload |
//! | n | payload: postcard-encoded body |
//!
//! The body interns field names and replica ids in tables, so a field costs
//! two small integers of naming instead of two strings, and a field stamped
//! like its document's latest write (the common case) stores no stamp. Decoding checks the
//! magic, version, length and checksum before it parses anything, bounds every
//! allocation by the bytes present, and rebuilds a state that satisfies the
//! merge invariants or refuses it.

use std::collections::BTreeMap;

use serde::ser::SerializeTuple;
use serde::{Deserialize, Serialize, Serializer};

use crate::hlc::Hlc;
use crate::op::{InvalidOp, check_collection, check_doc_id, check_field_name};
use crate::stamp::{ReplicaId, Stamp};
use crate::state::{CollectionState, DocState, FieldSlot, Names, State};
use crate::value::Value;
use crate::version::VersionVector;

const MAGIC: &[u8; 4] = b"CNSN";
/// Current snapshot format version.
pub const SNAPSHOT_FORMAT: u8 = 1;
const HEADER_LEN: usize = 13;

/// A decoded snapshot: a merged state and the operations folded into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Which operations the state includes.
    pub version: VersionVector,
    /// The highest clock reading of any operation in the state.
    pub max_hlc: Hlc,
    /// Tombstones stamped at or before this were collected from the state,
    /// so operations this old can no longer be merged correctly.
    pub tombstone_horizon: Hlc,
    /// The merged state.
    pub state: State,
}

/// Why snapshot bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Fewer bytes than the header, or than the header announces.
    #[error("snapshot is truncated: {have} bytes, {need} needed")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header requires.
        need: usize,
    },
    /// The bytes do not start with the snapshot magic.
    #[error("not a Concord snapshot (bad magic bytes)")]
    BadMagic,
    /// A format this build cannot read.
    #[error(
        "snapshot format version {0} is not supported; this build reads version {SNAPSHOT_FORMAT}"
    )]
    UnsupportedVersion(u8),
    /// More bytes than the header announces.
    #[error("snapshot has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The payload does not match its checksum.
    #[error(
        "snapshot checksum mismatch: header says {expected:08x}, payload hashes to {actual:08x}"
    )]
    ChecksumMismatch {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the payload.
        actual: u32,
    },
    /// The payload passed its checksum but does not decode.
    #[error("snapshot payload is malformed: {0}")]
    Malformed(String),
    /// The payload decodes but breaks the data model's invariants.
    #[error("snapshot content is inconsistent: {0}")]
    Inconsistent(String),
}

impl Snapshot {
    /// The newest clock reading in the snapshot: `max_hlc`, or a newer stamp
    /// if the state holds one (`max_hlc` is only the sender's claim).
    pub fn newest_hlc(&self) -> Hlc {
        let state = &self.state;
        state
            .collections
            .values()
            .flat_map(|coll| {
                let docs = coll.docs.values().flat_map(|doc| {
                    let fields = doc.fields.iter().map(|slot| slot.hlc);
                    let stamps = doc.written.into_iter().chain(doc.deleted());
                    stamps.map(|stamp| stamp.hlc).chain(fields)
                });
                let stamps = coll.created.into_iter().chain(coll.dropped);
                stamps.map(|stamp| stamp.hlc).chain(docs)
            })
            .max()
            .unwrap_or(Hlc::ZERO)
            .max(self.max_hlc)
    }

    /// A snapshot of nothing: no state, no operations.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: VersionVector::new(),
            max_hlc: Hlc::ZERO,
            tombstone_horizon: Hlc::ZERO,
            state: State::new(),
        }
    }

    /// Encodes a state with its version summary, its highest clock reading
    /// and the horizon up to which its tombstones were collected.
    pub fn encode(
        state: &State,
        version: &VersionVector,
        max_hlc: Hlc,
        tombstone_horizon: Hlc,
    ) -> Vec<u8> {
        let replicas = replica_table(state);
        let body = BodyRef {
            version,
            max_hlc,
            tombstone_horizon,
            state,
            replicas: &replicas,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + state.field_count() * 24);
        out.extend_from_slice(MAGIC);
        out.push(SNAPSHOT_FORMAT);
        out.extend_from_slice(&[0; 8]);
        // Serialising into a Vec cannot fail for these types (all lengths known).
        let mut out = postcard::to_extend(&body, out).unwrap_or_default();
        let payload_len = u32::try_from(out.len().saturating_sub(HEADER_LEN)).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(out.get(HEADER_LEN..).unwrap_or_default());
        if let Some(header) = out.get_mut(5..HEADER_LEN) {
            header[..4].copy_from_slice(&payload_len.to_le_bytes());
            header[4..].copy_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Decodes and verifies snapshot bytes.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let payload = verified_payload(bytes)?;
        let (body, rest): (Body, _) = postcard::take_from_bytes(payload)
            .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SnapshotError::Malformed(format!(
                "{} bytes after the body",
                rest.len()
            )));
        }
        body.into_snapshot()
    }
}

/// Checks the header and checksum; returns the payload.
fn verified_payload(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    let header = bytes.get(..HEADER_LEN).ok_or(SnapshotError::Truncated {
        have: bytes.len(),
        need: HEADER_LEN,
    })?;
    if &header[..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if header[4] != SNAPSHOT_FORMAT {
        return Err(SnapshotError::UnsupportedVersion(header[4]));
    }
    let le = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (len, expected) = (le(5) as usize, le(9));
    let need = HEADER_LEN.saturating_add(len);
    let payload = bytes
        .get(HEADER_LEN..need)
        .ok_or(SnapshotError::Truncated {
            have: bytes.len(),
            need,
        })?;
    if bytes.len() > need {
        return Err(SnapshotError::TrailingBytes(bytes.len() - need));
    }
    let actual = crc32fast::hash(payload);
    if actual != expected {
        return Err(SnapshotError::ChecksumMismatch { expected, actual });
    }
    Ok(payload)
}

/// Every replica that stamped something in the state, in order, for interning.
fn replica_table(state: &State) -> BTreeMap<ReplicaId, u32> {
    let mut seen = BTreeMap::new();
    let mut note = |s: &Option<Stamp>| {
        if let Some(s) = s {
            seen.entry(s.replica).or_insert(0);
        }
    };
    for coll in state.collections.values() {
        note(&coll.created);
        note(&coll.dropped);
        for doc in coll.docs.values() {
            note(&doc.written);
            note(&doc.deleted());
            let mut last = None;
            for slot in &doc.fields {
                // Most fields of a document share one writer: skip repeats cheaply.
                if last != Some(slot.replica) {
                    last = Some(slot.replica);
                    note(&Some(slot.stamp(&state.names)));
                }
            }
        }
    }
    for (index, slot) in seen.values_mut().enumerate() {
        *slot = u32::try_from(index).unwrap_or(u32::MAX);
    }
    seen
}

// ---- encoding: borrowed views serialised straight from the state ----

struct BodyRef<'a> {
    version: &'a VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
    state: &'a State,
    replicas: &'a BTreeMap<ReplicaId, u32>,
}

impl Serialize for BodyRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ctx = Ctx {
            replicas: self.replicas,
            names: &self.state.names,
        };
        let names = (0..self.state.names.len()).map(|i| self.state.names.name(i as u32));
        let mut t = s.serialize_tuple(6)?;
        t.serialize_element(self.version)?;
        t.serialize_element(&self.max_hlc)?;
        t.serialize_element(&self.tombstone_horizon)?;
        t.serialize_element(&Seq(names))?;
        t.serialize_element(&Seq(self.replicas.keys()))?;
        t.serialize_element(&Seq(self
            .state
            .collections
            .iter()
            .map(|(name, c)| CollRef { ctx, name, coll: c })))?;
        t.end()
    }
}

#[derive(Clone, Copy)]
struct Ctx<'a> {
    replicas: &'a BTreeMap<ReplicaId, u32>,
    names: &'a Names,
}

impl Ctx<'_> {
    fn stamp(&self, s: Stamp) -> PackedStamp {
        PackedStamp(
            s.hlc.as_u64(),
            self.replicas.get(&s.replica).copied().unwrap_or(u32::MAX),
        )
    }
    fn opt(&self, s: Option<Stamp>) -> Option<PackedStamp> {
        s.map(|s| self.stamp(s))
    }
}

/// Serialises an iterator as a sequence without collecting it.
struct Seq<I>(I);
impl<I> Serialize for Seq<I>
where
    I: Iterator + Clone,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

struct CollRef<'a> {
    ctx: Ctx<'a>,
    name: &'a str,
    coll: &'a CollectionState,
}
impl Serialize for CollRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ctx = self.ctx;
        let mut t = s.serialize_tuple(4)?;
        t.serialize_element(self.name)?;
        t.serialize_element(&ctx.opt(self.coll.created))?;
        t.serialize_element(&ctx.opt(self.coll.dropped))?;
        t.serialize_element(&Seq(self.coll.docs.iter().map(|(id, doc)| DocRef {
            ctx,
            id,
            doc,
        })))?;
        t.end()
    }
}

struct DocRef<'a> {
    ctx: Ctx<'a>,
    id: &'a str,
    doc: &'a DocState,
}
impl Serialize for DocRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ctx = self.ctx;
        let mut t = s.serialize_tuple(4)?;
        t.serialize_element(self.id)?;
        t.serialize_element(&ctx.opt(self.doc.written))?;
        t.serialize_element(&ctx.opt(self.doc.deleted()))?;
        let fields = self
            .doc
            .fields
            .iter()
            // Most fields carry their document's latest stamp: write it once.
            .map(|f| {
                let stamp = f.stamp(ctx.names);
                let stamp = (Some(stamp) != self.doc.written).then(|| ctx.stamp(stamp));
                (f.name, stamp, f.value.as_ref())
            });
        t.serialize_element(&Seq(fields))?;
        t.end()
    }
}

/// A stamp with its replica interned: (hlc, replica index).
#[derive(Clone, Copy, Serialize, Deserialize)]
struct PackedStamp(u64, u32);

// ---- decoding: owned mirror of the same layout ----

#[derive(Deserialize)]
struct Body {
    version: VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
    names: Vec<String>,
    replicas: Vec<ReplicaId>,
    collections: Vec<CollectionBody>,
}

#[derive(Deserialize)]
struct CollectionBody(
    String,
    Option<PackedStamp>,
    Option<PackedStamp>,
    Vec<DocBody>,
);

#[derive(Deserialize)]
struct DocBody(
    String,
    Option<PackedStamp>,
    Option<PackedStamp>,
    /// Fields: name index, stamp (`None`: the document's `written` stamp), value.
    Vec<(u32, Option<PackedStamp>, Option<Value>)>,
);

impl Body {
    fn into_snapshot(self) -> Result<Snapshot, SnapshotError> {
        let inconsistent = |what: String| SnapshotError::Inconsistent(what);
        let replicas = self.replicas;
        let stamp = |p: PackedStamp| -> Result<Stamp, SnapshotError> {
            let replica = replicas
                .get(p.1 as usize)
                .ok_or_else(|| inconsistent(format!("replica index {} out of range", p.1)))?;
            Ok(Stamp::new(Hlc::from_u64(p.0), *replica))
        };
        let opt = |p: Option<PackedStamp>| p.map(stamp).transpose();

        let mut state = State::new();
        for name in &self.names {
            check(check_field_name(name))?;
            if state.names.lookup(name).is_some() {
                return Err(inconsistent(format!("field name {name:?} listed twice")));
            }
            state.names.intern(name);
        }
        let name_count = self.names.len();

        let mut previous_collection: Option<String> = None;
        for CollectionBody(name, created, dropped, docs) in self.collections {
            check(check_collection(&name))?;
            if previous_collection.as_ref().is_some_and(|p| *p >= name) {
                return Err(inconsistent(format!("collection {name:?} out of order")));
            }
            let mut coll = CollectionState {
                created: opt(created)?,
                dropped: opt(dropped)?,
                docs: BTreeMap::new(),
            };
            if coll.created.is_some() && coll.created <= coll.dropped {
                return Err(inconsistent(format!(
                    "collection {name:?} created before its drop"
                )));
            }
            // Documents arrive sorted: collect them and build the map in one
            // pass, which packs its nodes full instead of splitting them.
            let mut built: Vec<(String, DocState)> = Vec::with_capacity(docs.len());
            for DocBody(id, written, deleted, fields) in docs {
                check(check_doc_id(&id))?;
                if built.last().is_some_and(|(p, _)| *p >= id) {
                    return Err(inconsistent(format!("document {id:?} out of order")));
                }
                let tombstone = coll.dropped.max(opt(deleted)?);
                let written = opt(written)?;
                let deleted = opt(deleted)?;
                let mut slots: Vec<FieldSlot> = Vec::with_capacity(fields.len());
                for (field, packed, value) in fields {
                    if field as usize >= name_count {
                        return Err(inconsistent(format!("field index {field} out of range")));
                    }
                    if slots.last().is_some_and(|f| f.name >= field) {
                        return Err(inconsistent(format!(
                            "fields of document {id:?} out of order"
                        )));
                    }
                    let field_stamp = match packed {
                        Some(packed) => stamp(packed)?,
                        None => written.ok_or_else(|| {
                            inconsistent(format!("field of unwritten document {id:?} has no stamp"))
                        })?,
                    };
                    slots.push(FieldSlot::new(field, field_stamp, value, &mut state.names));
                }
                let doc = DocState::new(written, deleted, slots, &state.names);
                let covered = |s: &Stamp| tombstone.is_some_and(|t| *s <= t);
                if doc.written.as_ref().is_some_and(covered)
                    || doc
                        .deleted()
                        .is_some_and(|d| coll.dropped.is_some_and(|t| d <= t))
                    || doc.fields.iter().any(|f| {
                        let stamp = f.stamp(&state.names);
                        covered(&stamp) || Some(stamp) > doc.written
                    })
                    || (doc.written.is_none() && doc.deleted().is_none())
                {
                    return Err(inconsistent(format!(
                        "document {id:?} breaks the tombstone rules"
                    )));
                }
                built.push((id, doc));
            }
            coll.docs = built.into_iter().collect();
            previous_collection = Some(name.clone());
            state.collections.insert(name, coll);
        }
        Ok(Snapshot {
            version: self.version,
            max_hlc: self.max_hlc,
            tombstone_horizon: self.tombstone_horizon,
            state,
        })
    }
}

fn check(result: Result<(), InvalidOp>) -> Result<(), SnapshotError> {
    result.map_err(|e| SnapshotError::Inconsistent(e.to_string()))
}
