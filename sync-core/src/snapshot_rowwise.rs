//! Snapshot formats 1 to 3, row-wise: the state collection by collection
//! and document by document, field names and replica ids interned in
//! tables. A field stamped like its document's latest write (the common
//! case) stores no stamp; any other field stamp is stored as a difference
//! from the stamp before it in its document (format 2; format 1 stored
//! such stamps in full). Format 3 is format 2 with the body deflated.
//!
//! Nothing writes these formats any more except a relay re-encoding a
//! snapshot for a client that reads nothing newer, so they sit behind the
//! `legacy-snapshots` feature (on by default): the browser package, whose
//! client lists only formats 4 and 5 in its `Hello`, leaves them out.

use std::collections::BTreeMap;

use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Serialize, Serializer};

use super::{
    COMPRESSED_SNAPSHOT_FORMAT, DEFLATE_LEVEL, FORMAT_1, SNAPSHOT_FORMAT, Snapshot, SnapshotError,
    check, check_collection_stamps, checked_doc, header, replica_table, seal,
};
use crate::delta_stamp::{DeltaCursor, DeltaStamp};
use crate::hlc::Hlc;
use crate::op::{check_collection, check_doc_id, check_field_name};
use crate::quoted::Quoted;
use crate::stamp::{ReplicaId, Stamp};
use crate::state::{CollectionState, DocState, FieldSlot, Names, State};
use crate::value::Value;
use crate::version::VersionVector;

/// A format-1 blob: field stamps stored in full.
pub(super) fn encode_format_1(
    state: &State,
    version: &VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
) -> Vec<u8> {
    let out = header(FORMAT_1, state.field_count() * 24);
    let replicas = replica_table(state);
    let body = BodyRef {
        version,
        max_hlc,
        tombstone_horizon,
        state,
        replicas: &replicas,
        full_stamps: true,
    };
    let mut out = postcard::to_extend(&body, out).unwrap_or_default();
    seal(&mut out);
    out
}

/// Decodes a format-1 payload.
pub(super) fn decode_format_1(payload: &[u8]) -> Result<Snapshot, SnapshotError> {
    decode_body::<Option<PackedStamp>>(payload)
}

/// Decodes a format-2 payload, or a format-3 payload once inflated.
pub(super) fn decode_format_2(payload: &[u8]) -> Result<Snapshot, SnapshotError> {
    decode_body::<FieldStamp>(payload)
}

/// A format-2 blob.
pub(super) fn encode_format_2(
    state: &State,
    version: &VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
) -> Vec<u8> {
    let out = header(SNAPSHOT_FORMAT, state.field_count() * 24);
    let mut out = encode_body(out, state, version, max_hlc, tombstone_horizon);
    seal(&mut out);
    out
}

/// A format-3 blob: format 2's body, deflated.
pub(super) fn encode_format_3(
    state: &State,
    version: &VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
) -> Vec<u8> {
    let body = encode_body(
        Vec::with_capacity(state.field_count() * 24),
        state,
        version,
        max_hlc,
        tombstone_horizon,
    );
    let Ok(body_len) = u32::try_from(body.len()) else {
        // The length field cannot hold it: fall back to the plain format,
        // whose own limit is the header's payload length.
        return encode_format_2(state, version, max_hlc, tombstone_horizon);
    };
    let deflated = miniz_oxide::deflate::compress_to_vec(&body, DEFLATE_LEVEL);
    let mut out = header(COMPRESSED_SNAPSHOT_FORMAT, 4 + deflated.len());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&deflated);
    seal(&mut out);
    out
}

/// Appends the postcard-encoded body of a snapshot to `out`.
fn encode_body(
    out: Vec<u8>,
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
        full_stamps: false,
    };
    // Serialising into a Vec cannot fail for these types (all lengths known).
    postcard::to_extend(&body, out).unwrap_or_default()
}

/// Parses a body whose field stamps are encoded as `S`, and checks it.
fn decode_body<S>(payload: &[u8]) -> Result<Snapshot, SnapshotError>
where
    S: FieldStampCode + for<'de> Deserialize<'de>,
{
    let (body, rest): (Body<S>, _) =
        postcard::take_from_bytes(payload).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SnapshotError::Malformed(format!(
            "{} bytes after the body",
            rest.len()
        )));
    }
    body.into_snapshot()
}

// ---- encoding: borrowed views serialised straight from the state ----

struct BodyRef<'a> {
    version: &'a VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
    state: &'a State,
    replicas: &'a BTreeMap<ReplicaId, u32>,
    /// Format 1: field stamps stored in full, not as deltas.
    full_stamps: bool,
}

impl Serialize for BodyRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ctx = Ctx {
            replicas: self.replicas,
            names: &self.state.names,
            full_stamps: self.full_stamps,
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
    full_stamps: bool,
}

impl Ctx<'_> {
    fn replica_index(&self, replica: ReplicaId) -> u32 {
        self.replicas.get(&replica).copied().unwrap_or(u32::MAX)
    }
    fn stamp(&self, s: Stamp) -> PackedStamp {
        PackedStamp(s.hlc.as_u64(), self.replica_index(s.replica))
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
        t.serialize_element(&FieldsRef { ctx, doc: self.doc })?;
        t.end()
    }
}

/// A document's fields, each stamp encoded against the one before it.
struct FieldsRef<'a> {
    ctx: Ctx<'a>,
    doc: &'a DocState,
}
impl Serialize for FieldsRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.doc.fields.len()))?;
        if self.ctx.full_stamps {
            // Format 1: `None` for the document's `written` stamp, else in full.
            for f in &self.doc.fields {
                let stamp = f.stamp(self.ctx.names);
                let code = (Some(stamp) != self.doc.written).then(|| self.ctx.stamp(stamp));
                seq.serialize_element(&(f.name, code, f.value.as_ref()))?;
            }
            return seq.end();
        }
        let mut cursor = DeltaCursor::new(self.doc.written);
        for f in &self.doc.fields {
            let stamp = f.stamp(self.ctx.names);
            let stamp = cursor.encode(stamp, |replica| self.ctx.replica_index(replica));
            seq.serialize_element(&(f.name, stamp, f.value.as_ref()))?;
        }
        seq.end()
    }
}

/// A stamp with its replica interned: (hlc, replica index).
#[derive(Clone, Copy, Serialize, Deserialize)]
struct PackedStamp(u64, u32);

/// How format 2 stores a field's stamp: relative to the stamp before it
/// (see [`crate::delta_stamp`]), another replica as an index into the table.
type FieldStamp = DeltaStamp<u32>;

/// Turns a field's encoded stamp back into a stamp, in document order.
trait FieldStampCode: Copy {
    fn resolve(
        self,
        cursor: &mut DeltaCursor,
        written: Option<Stamp>,
        replicas: &[ReplicaId],
    ) -> Result<Stamp, String>;
}

fn replica_at(replicas: &[ReplicaId], index: u32) -> Result<ReplicaId, String> {
    replicas
        .get(index as usize)
        .copied()
        .ok_or_else(|| format!("replica index {index} out of range"))
}

/// Format 1: `None` for the document's `written` stamp, else the full stamp.
impl FieldStampCode for Option<PackedStamp> {
    fn resolve(
        self,
        _: &mut DeltaCursor,
        written: Option<Stamp>,
        replicas: &[ReplicaId],
    ) -> Result<Stamp, String> {
        match self {
            None => written.ok_or_else(|| "a field of an unwritten document has no stamp".into()),
            Some(PackedStamp(hlc, index)) => {
                Ok(Stamp::new(Hlc::from_u64(hlc), replica_at(replicas, index)?))
            }
        }
    }
}

impl FieldStampCode for FieldStamp {
    fn resolve(
        self,
        cursor: &mut DeltaCursor,
        _: Option<Stamp>,
        replicas: &[ReplicaId],
    ) -> Result<Stamp, String> {
        cursor.decode(self, |index| replica_at(replicas, index))
    }
}

// ---- decoding: owned mirror of the same layout ----

/// The body of a snapshot whose field stamps are encoded as `S`.
#[derive(Deserialize)]
struct Body<S> {
    version: VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
    names: Vec<String>,
    replicas: Vec<ReplicaId>,
    collections: Vec<CollectionBody<S>>,
}

#[derive(Deserialize)]
struct CollectionBody<S>(
    String,
    Option<PackedStamp>,
    Option<PackedStamp>,
    Vec<DocBody<S>>,
);

#[derive(Deserialize)]
struct DocBody<S>(
    String,
    Option<PackedStamp>,
    Option<PackedStamp>,
    /// Fields: name index, stamp, value (`None`: removed).
    Vec<(u32, S, Option<Value>)>,
);

impl<S: FieldStampCode> Body<S> {
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
                return Err(inconsistent(format!(
                    "field name {name} listed twice",
                    name = Quoted(name)
                )));
            }
            state.names.intern(name);
        }
        let name_count = self.names.len();

        let mut previous_collection: Option<String> = None;
        for CollectionBody(name, created, dropped, docs) in self.collections {
            check(check_collection(&name))?;
            if previous_collection.as_ref().is_some_and(|p| *p >= name) {
                return Err(inconsistent(format!(
                    "collection {name} out of order",
                    name = Quoted(&name)
                )));
            }
            let mut coll = CollectionState {
                created: opt(created)?,
                dropped: opt(dropped)?,
                docs: Default::default(),
            };
            check_collection_stamps(&name, &coll)?;
            // Documents arrive sorted: collect them and build the map in one
            // pass, which packs its nodes full instead of splitting them.
            let mut built: Vec<(String, DocState)> = Vec::with_capacity(docs.len());
            for DocBody(id, written, deleted, fields) in docs {
                check(check_doc_id(&id))?;
                if built.last().is_some_and(|(p, _)| *p >= id) {
                    return Err(inconsistent(format!(
                        "document {id} out of order",
                        id = Quoted(&id)
                    )));
                }
                let written = opt(written)?;
                let deleted = opt(deleted)?;
                let mut slots: Vec<FieldSlot> = Vec::with_capacity(fields.len());
                let mut cursor = DeltaCursor::new(written);
                for (field, code, value) in fields {
                    if field as usize >= name_count {
                        return Err(inconsistent(format!("field index {field} out of range")));
                    }
                    if slots.last().is_some_and(|f| f.name >= field) {
                        return Err(inconsistent(format!(
                            "fields of document {id} out of order",
                            id = Quoted(&id)
                        )));
                    }
                    let field_stamp =
                        code.resolve(&mut cursor, written, &replicas).map_err(|e| {
                            inconsistent(format!("document {id}: {e}", id = Quoted(&id)))
                        })?;
                    slots.push(FieldSlot::new(field, field_stamp, value, &mut state.names));
                }
                let doc = checked_doc(&id, written, deleted, slots, coll.dropped, &state.names)?;
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
