//! Snapshots: the whole merged state in one checksummed, versioned blob.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | content |
//! | --- | --- |
//! | 4 | magic `CNSN` |
//! | 1 | format version: 5 (columns with a timeline of stamps, written); 4 (columns) and 1 to 3 (row-wise) are read and written for older readers |
//! | 4 | payload length `n` |
//! | 4 | CRC-32 (IEEE) of the payload |
//! | n | payload: postcard-encoded body; in format 3, the body's length (4 bytes) and the body deflated; formats 4 and 5, see `snapshot_columnar.rs` |
//!
//! Format 4 stores the same content in columns: every field name, every
//! stamp's wall clock, counter and replica, every value by type, each in
//! its own run-length encoded column of differences (a few bits a field
//! where fields are alike), strings once each through a dictionary,
//! optionally deflated. Format 5, which [`Snapshot::encode`] and
//! [`Snapshot::encode_compressed`] write, is format 4 with the stamps
//! listed once each in time order and referred to by position. Formats 1
//! to 3, row-wise, are in `snapshot_rowwise.rs`, behind the
//! `legacy-snapshots` feature (on by default).
//!
//! Decoding checks the magic, version, length and checksum before it parses
//! anything, bounds every allocation by the bytes present (a compressed body
//! by its claimed length, which must be within the caller's limit and what
//! deflate can produce from the bytes present), and rebuilds a state that
//! satisfies the merge invariants or refuses it.

use std::collections::BTreeMap;

#[path = "snapshot_columnar.rs"]
pub(crate) mod columnar;
#[cfg(test)]
#[path = "snapshot_decoder_tests.rs"]
mod decoder_tests;
#[cfg(feature = "legacy-snapshots")]
#[path = "snapshot_rowwise.rs"]
mod rowwise;
use crate::hlc::Hlc;
use crate::op::InvalidOp;
use crate::quoted::Quoted;
use crate::stamp::{ReplicaId, Stamp};
use crate::state::{CollectionState, DocState, FieldSlot, Names, State};
use crate::version::VersionVector;

const MAGIC: &[u8; 4] = b"CNSN";
/// Snapshot format 2: the state document by document, field stamps stored
/// relative to the one before.
pub const SNAPSHOT_FORMAT: u8 = 2;
/// Snapshot format 3: format 2's body, deflated.
pub const COMPRESSED_SNAPSHOT_FORMAT: u8 = 3;
/// Snapshot format 4: the state in columns (names, stamps, replicas and
/// values each in their own run-length encoded column), plain or deflated.
pub const COLUMNAR_SNAPSHOT_FORMAT: u8 = 4;
/// Snapshot format 5, which [`Snapshot::encode`] and
/// [`Snapshot::encode_compressed`] write: format 4's columns, with every
/// distinct stamp listed once in time order and referred to by position.
pub const TIMELINE_SNAPSHOT_FORMAT: u8 = 5;
/// The oldest snapshot format version this build still reads (and writes,
/// with `Snapshot::encode_in_format`): format 1, field stamps stored in
/// full; format 4 in a build without the `legacy-snapshots` feature.
#[cfg(feature = "legacy-snapshots")]
pub const OLDEST_SNAPSHOT_FORMAT: u8 = FORMAT_1;
/// The oldest snapshot format version this build still reads (and writes,
/// with [`Snapshot::encode_in_format`]): format 4, since this build has no
/// `legacy-snapshots` feature (formats 1 to 3 left out).
#[cfg(not(feature = "legacy-snapshots"))]
pub const OLDEST_SNAPSHOT_FORMAT: u8 = COLUMNAR_SNAPSHOT_FORMAT;
#[cfg(feature = "legacy-snapshots")]
const FORMAT_1: u8 = 1;
/// The newest snapshot format version this build reads.
pub const NEWEST_SNAPSHOT_FORMAT: u8 = TIMELINE_SNAPSHOT_FORMAT;
/// Deflate level for compressed snapshots. Measured on a 100,000-field
/// state: level 2 is 7.5% smaller than level 1 for
/// about four times its (small) time; levels 3 to 6 gain under 0.5% more
/// at two to four times level 2's time.
const DEFLATE_LEVEL: u8 = 2;
/// Deflate cannot expand data by more than 1032:1; a compressed body that
/// claims more is refused before anything is inflated.
const MAX_DEFLATE_RATIO: usize = 1032;
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
        "snapshot format version {0} is not supported; this build reads versions {OLDEST_SNAPSHOT_FORMAT} to {NEWEST_SNAPSHOT_FORMAT}"
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
    /// A compressed body longer than the decoder's limit.
    #[error("snapshot body of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The body's length, as its header claims.
        size: u64,
        /// The limit it was decoded under.
        limit: u64,
    },
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
                let docs = coll.docs.values().map(doc_newest);
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
    /// and the horizon up to which its tombstones were collected, in
    /// snapshot format 5 (columns, not deflated).
    pub fn encode(
        state: &State,
        version: &VersionVector,
        max_hlc: Hlc,
        tombstone_horizon: Hlc,
    ) -> Vec<u8> {
        encode_columnar(
            columnar::Layout::Timeline,
            state,
            version,
            max_hlc,
            tombstone_horizon,
            columnar::frame_plain,
        )
    }

    /// Like [`Snapshot::encode`], with the columns deflated: smaller again,
    /// for a few times the encoding time. For snapshots that are stored or
    /// sent (a relay's compaction), not for ones used at once.
    pub fn encode_compressed(
        state: &State,
        version: &VersionVector,
        max_hlc: Hlc,
        tombstone_horizon: Hlc,
    ) -> Vec<u8> {
        encode_columnar(
            columnar::Layout::Timeline,
            state,
            version,
            max_hlc,
            tombstone_horizon,
            frame_deflated,
        )
    }

    /// Encodes in snapshot format `format`: 1 (field stamps in full), 2
    /// (stamps relative to the one before), 3 (format 2 deflated), 4
    /// (columns, deflated) or 5 (columns with a timeline, deflated). A relay
    /// writes the older ones for clients that read nothing newer.
    pub(crate) fn encode_in_format(
        format: u8,
        state: &State,
        version: &VersionVector,
        max_hlc: Hlc,
        tombstone_horizon: Hlc,
    ) -> Result<Vec<u8>, SnapshotError> {
        match format {
            #[cfg(feature = "legacy-snapshots")]
            FORMAT_1 => Ok(rowwise::encode_format_1(
                state,
                version,
                max_hlc,
                tombstone_horizon,
            )),
            #[cfg(feature = "legacy-snapshots")]
            SNAPSHOT_FORMAT => Ok(rowwise::encode_format_2(
                state,
                version,
                max_hlc,
                tombstone_horizon,
            )),
            #[cfg(feature = "legacy-snapshots")]
            COMPRESSED_SNAPSHOT_FORMAT => Ok(rowwise::encode_format_3(
                state,
                version,
                max_hlc,
                tombstone_horizon,
            )),
            COLUMNAR_SNAPSHOT_FORMAT => Ok(encode_columnar(
                columnar::Layout::Inline,
                state,
                version,
                max_hlc,
                tombstone_horizon,
                frame_deflated,
            )),
            TIMELINE_SNAPSHOT_FORMAT => Ok(Snapshot::encode_compressed(
                state,
                version,
                max_hlc,
                tombstone_horizon,
            )),
            other => Err(SnapshotError::UnsupportedVersion(other)),
        }
    }

    /// The format version of snapshot bytes, read from their header without
    /// checking anything else; `None` when they do not start like a snapshot.
    pub fn format_of(bytes: &[u8]) -> Option<u8> {
        match bytes.get(..5) {
            Some([m0, m1, m2, m3, format]) if [*m0, *m1, *m2, *m3] == *MAGIC => Some(*format),
            _ => None,
        }
    }

    /// Snapshot bytes re-encoded in snapshot format `format`, for a reader
    /// that does not read the format they are in. Bytes already in that
    /// format are returned as they are (verified all the same); anything
    /// else is decoded, verified and encoded again.
    pub fn transcode(bytes: &[u8], format: u8) -> Result<Vec<u8>, SnapshotError> {
        if !(OLDEST_SNAPSHOT_FORMAT..=NEWEST_SNAPSHOT_FORMAT).contains(&format) {
            return Err(SnapshotError::UnsupportedVersion(format));
        }
        let snapshot = Snapshot::decode(bytes)?;
        if Snapshot::format_of(bytes) == Some(format) {
            return Ok(bytes.to_vec());
        }
        Snapshot::encode_in_format(
            format,
            &snapshot.state,
            &snapshot.version,
            snapshot.max_hlc,
            snapshot.tombstone_horizon,
        )
    }

    /// The length of the snapshot's body before compression (what a
    /// compaction decodes and encodes again): for a compressed snapshot the
    /// length its payload announces, otherwise the bytes after the header;
    /// in formats 4 and 5, plus 4 bytes per field (their columns collapse
    /// runs, so their bytes alone understate the work). Reads only the
    /// header; bytes that are not a snapshot give their length.
    pub fn body_len(bytes: &[u8]) -> usize {
        if matches!(
            Snapshot::format_of(bytes),
            Some(COLUMNAR_SNAPSHOT_FORMAT | TIMELINE_SNAPSHOT_FORMAT)
        ) {
            let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
            return columnar::nominal_len(payload)
                .map_or(payload.len(), |n| usize::try_from(n).unwrap_or(usize::MAX));
        }
        let compressed = bytes.len() >= HEADER_LEN + 4
            && bytes.starts_with(MAGIC)
            && bytes[4] == COMPRESSED_SNAPSHOT_FORMAT;
        match bytes.get(HEADER_LEN..HEADER_LEN + 4) {
            Some(&[a, b, c, d]) if compressed => u32::from_le_bytes([a, b, c, d]) as usize,
            _ => bytes.len().saturating_sub(HEADER_LEN),
        }
    }

    /// Decodes and verifies snapshot bytes. A compressed body may inflate to
    /// up to 1032 times its size (4 GiB at most); for bytes from elsewhere,
    /// [`Snapshot::decode_with_limit`] bounds that.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        Snapshot::decode_with_limit(bytes, usize::MAX)
    }

    /// Decodes and verifies snapshot bytes whose body (inflated, if the
    /// snapshot is compressed; in formats 4 and 5 with 4 bytes more per field, as
    /// [`Snapshot::body_len`] counts it) is at most `max_body_bytes` long:
    /// a body claiming more is refused before anything is inflated or
    /// built, so the limit bounds what decoding allocates.
    pub fn decode_with_limit(
        bytes: &[u8],
        max_body_bytes: usize,
    ) -> Result<Snapshot, SnapshotError> {
        let (format, payload) = verified_payload(bytes)?;
        decode_verified(format, payload, max_body_bytes)
    }
}

/// Decodes a payload [`verified_payload`] returned, in one call.
fn decode_verified(
    format: u8,
    payload: &[u8],
    max_body_bytes: usize,
) -> Result<Snapshot, SnapshotError> {
    match format {
        #[cfg(feature = "legacy-snapshots")]
        FORMAT_1 => rowwise::decode_format_1(payload),
        #[cfg(feature = "legacy-snapshots")]
        SNAPSHOT_FORMAT => rowwise::decode_format_2(payload),
        #[cfg(feature = "legacy-snapshots")]
        COMPRESSED_SNAPSHOT_FORMAT => rowwise::decode_format_2(&inflate(payload, max_body_bytes)?),
        COLUMNAR_SNAPSHOT_FORMAT => {
            columnar::decode_payload(payload, columnar::Layout::Inline, max_body_bytes)
        }
        TIMELINE_SNAPSHOT_FORMAT => {
            columnar::decode_payload(payload, columnar::Layout::Timeline, max_body_bytes)
        }
        // `verified_payload` lets through only the formats this build reads.
        other => Err(SnapshotError::UnsupportedVersion(other)),
    }
}

/// The newest clock reading of a document: its fields', its `written`
/// and its `deleted`.
pub(crate) fn doc_newest(doc: &DocState) -> Hlc {
    let fields = doc.fields.iter().map(|slot| slot.hlc);
    let stamps = doc.written.into_iter().chain(doc.deleted());
    stamps
        .map(|stamp| stamp.hlc)
        .chain(fields)
        .max()
        .unwrap_or(Hlc::ZERO)
}

/// Snapshot bytes decoded a slice at a time, so that a host on a UI
/// thread can yield between slices: a snapshot of 100,000 documents is
/// most of a second of work in a browser.
///
/// Opening checks the header, checksum and size limit; then each
/// [`SnapshotDecoder::step`] inflates the next piece of a deflated body
/// ([`INFLATE_BYTES_PER_DOC`] bytes for each document of the step), or
/// reads the next documents, checked as [`Snapshot::decode_with_limit`]
/// checks them. Nothing is handed out before the last document is read and
/// the columns are checked to end where they should, so a snapshot found
/// corrupt in any slice yields only the error, as a decoding in one call
/// would. Formats 1 to 3 (row-wise) are decoded in one call when opened.
pub(crate) struct SnapshotDecoder {
    /// The bytes the snapshot is in (from `start`, as opened), given back
    /// by [`SnapshotDecoder::into_bytes`].
    blob: Vec<u8>,
    /// A deflated body, inflated.
    inflated: Option<Vec<u8>>,
    /// Where the body (plain), or the compressed payload, starts in `blob`.
    body_at: usize,
    stage: Stage,
    /// The decoded snapshot's [`Snapshot::newest_hlc`], once handed out.
    newest: Hlc,
}

/// Bytes of a deflated body inflated per document of a step: 4 MiB for a
/// step of 4,096 documents. Inflating is cheap next to decoding (a profile
/// of a reopen in Chromium: under 40 ms for a 15 MB body), and each step
/// costs the browser a yield of at least 4 ms.
const INFLATE_BYTES_PER_DOC: usize = 1024;

enum Stage {
    /// A deflated body being inflated, then decoded.
    Inflating {
        inflating: Box<Inflating>,
        layout: columnar::Layout,
        fields: u64,
    },
    /// Documents left to read.
    Columns(Box<columnar::BodyDecoder>),
    /// Decoded when opened.
    Whole(Box<Snapshot>),
    /// Handed out, or refused.
    Over,
}

impl std::fmt::Debug for SnapshotDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotDecoder")
            .field("bytes", &self.blob.len())
            .finish_non_exhaustive()
    }
}

impl SnapshotDecoder {
    /// Opens the snapshot in `blob[start..]`, whose body is at most
    /// `max_body_bytes` long as [`Snapshot::decode_with_limit`] counts it.
    pub(crate) fn new(
        blob: Vec<u8>,
        start: usize,
        max_body_bytes: usize,
    ) -> Result<SnapshotDecoder, SnapshotError> {
        let bytes = blob.get(start..).unwrap_or_default();
        let (format, payload) = verified_payload(bytes)?;
        let layout = match format {
            COLUMNAR_SNAPSHOT_FORMAT => columnar::Layout::Inline,
            TIMELINE_SNAPSHOT_FORMAT => columnar::Layout::Timeline,
            _ => {
                let whole = decode_verified(format, payload, max_body_bytes)?;
                return Ok(SnapshotDecoder {
                    blob,
                    inflated: None,
                    body_at: 0,
                    newest: whole.newest_hlc(),
                    stage: Stage::Whole(Box::new(whole)),
                });
            }
        };
        let (fields, opened) = columnar::open_payload(payload, max_body_bytes)?;
        // The payload ends where the blob does (no trailing bytes).
        let (body_at, stage) = match opened {
            columnar::OpenBody::Plain(body) => {
                let columns = columnar::BodyDecoder::new(body, layout, fields)?;
                (blob.len() - body.len(), Stage::Columns(Box::new(columns)))
            }
            columnar::OpenBody::Deflated(compressed) => {
                let inflating = Box::new(Inflating::new(compressed, max_body_bytes)?);
                let stage = Stage::Inflating {
                    inflating,
                    layout,
                    fields,
                };
                (blob.len() - compressed.len(), stage)
            }
        };
        Ok(SnapshotDecoder {
            blob,
            inflated: None,
            body_at,
            stage,
            newest: Hlc::ZERO,
        })
    }

    /// Inflates or decodes a slice: `max_docs` documents, or as many bytes
    /// of a deflated body as that many documents stand for (at least one
    /// either way). Returns the snapshot once every document is decoded
    /// and checked, `None` while work is left. After an error, or once the
    /// snapshot is handed out, there is nothing more to decode: every later
    /// call is an error.
    pub(crate) fn step(&mut self, max_docs: usize) -> Result<Option<Snapshot>, SnapshotError> {
        let from_blob = self.blob.get(self.body_at..).unwrap_or_default();
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Whole(snapshot) => Ok(Some(*snapshot)),
            Stage::Over => Err(SnapshotError::Malformed(
                "the snapshot was decoded already".into(),
            )),
            Stage::Inflating {
                mut inflating,
                layout,
                fields,
            } => {
                let bytes = max_docs.saturating_mul(INFLATE_BYTES_PER_DOC);
                if !inflating.step(from_blob, bytes)? {
                    self.stage = Stage::Inflating {
                        inflating,
                        layout,
                        fields,
                    };
                    return Ok(None);
                }
                let body = self.inflated.insert(inflating.into_body());
                let columns = columnar::BodyDecoder::new(body, layout, fields)?;
                // Documents too, in the step that ends the inflating: a
                // small snapshot is decoded in one step, as in one call.
                self.stage = Stage::Columns(Box::new(columns));
                self.step(max_docs)
            }
            Stage::Columns(mut columns) => {
                let body = self.inflated.as_deref().unwrap_or(from_blob);
                if columns.step(body, max_docs)? {
                    self.newest = columns.newest();
                    return Ok(Some(columns.into_snapshot()));
                }
                self.stage = Stage::Columns(columns);
                Ok(None)
            }
        }
    }

    /// [`Snapshot::newest_hlc`] of the snapshot [`SnapshotDecoder::step`]
    /// handed out, found while decoding rather than by walking the state
    /// again.
    pub(crate) fn newest(&self) -> Hlc {
        self.newest
    }

    /// The bytes the decoder was opened on.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.blob
    }
}

/// A format-4 (`Inline`) or format-5 (`Timeline`) blob, its columns
/// framed by `frame` (`columnar::frame_plain` or [`frame_deflated`]).
/// Generic rather than a runtime choice: the plain encoder's copy holds no
/// call to deflate, which the wasm client never uses and would otherwise
/// download (see docs/BENCHMARKS.md, the browser package's size).
fn encode_columnar(
    layout: columnar::Layout,
    state: &State,
    version: &VersionVector,
    max_hlc: Hlc,
    tombstone_horizon: Hlc,
    frame: impl FnOnce(&mut Vec<u8>, usize, &[u8]),
) -> Vec<u8> {
    let body = columnar::encode_body(layout, state, version, max_hlc, tombstone_horizon);
    seal_columnar(layout, state, &body, frame)
}

/// The blob of columns `body` (of `state`), framed by `frame`.
fn seal_columnar(
    layout: columnar::Layout,
    state: &State,
    body: &[u8],
    frame: impl FnOnce(&mut Vec<u8>, usize, &[u8]),
) -> Vec<u8> {
    let format = match layout {
        columnar::Layout::Inline => COLUMNAR_SNAPSHOT_FORMAT,
        columnar::Layout::Timeline => TIMELINE_SNAPSHOT_FORMAT,
    };
    let mut out = header(format, state.field_count() * 4);
    frame(&mut out, state.field_count(), body);
    seal(&mut out);
    out
}

/// [`Snapshot::encode`] a slice of documents at a time, for a host that
/// hands its thread back in between; the state must not change meanwhile
/// (see `columnar::BodyEncoder`).
pub(crate) struct SnapshotEncoder(columnar::BodyEncoder);

impl std::fmt::Debug for SnapshotEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotEncoder").finish_non_exhaustive()
    }
}

impl SnapshotEncoder {
    /// An encoder of `state`, before its first document.
    pub(crate) fn new(state: &State) -> Self {
        SnapshotEncoder(columnar::BodyEncoder::new(
            columnar::Layout::Timeline,
            state,
        ))
    }

    /// Encodes up to `max_docs` more documents of `state`; `true` once all are.
    pub(crate) fn step(&mut self, state: &State, max_docs: usize) -> bool {
        self.0.step(state, max_docs)
    }

    /// The blob, the bytes [`Snapshot::encode`] makes of the same arguments.
    pub(crate) fn finish(
        self,
        state: &State,
        version: &VersionVector,
        max_hlc: Hlc,
        tombstone_horizon: Hlc,
    ) -> Vec<u8> {
        let body = self.0.finish(state, version, max_hlc, tombstone_horizon);
        seal_columnar(
            columnar::Layout::Timeline,
            state,
            &body,
            columnar::frame_plain,
        )
    }
}

/// Frames columns deflated at [`DEFLATE_LEVEL`].
fn frame_deflated(out: &mut Vec<u8>, field_count: usize, body: &[u8]) {
    columnar::frame_deflated(out, field_count, body, DEFLATE_LEVEL);
}

/// A blob's header with room for a payload of about `payload` bytes; its
/// length and checksum are zero until [`seal`] fills them in.
fn header(format: u8, payload: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload);
    out.extend_from_slice(MAGIC);
    out.push(format);
    out.extend_from_slice(&[0; 8]);
    out
}

/// Fills in the header's payload length and checksum.
fn seal(out: &mut [u8]) {
    let payload_len = u32::try_from(out.len().saturating_sub(HEADER_LEN)).unwrap_or(u32::MAX);
    let crc = crate::crc32::hash(out.get(HEADER_LEN..).unwrap_or_default());
    if let Some(header) = out.get_mut(5..HEADER_LEN) {
        header[..4].copy_from_slice(&payload_len.to_le_bytes());
        header[4..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Inflates a compressed payload (the body's length, then the body
/// deflated) in one call; see [`Inflating`].
pub(crate) fn inflate(payload: &[u8], max_body_bytes: usize) -> Result<Vec<u8>, SnapshotError> {
    let mut inflating = Inflating::new(payload, max_body_bytes)?;
    inflating.step(payload, usize::MAX)?;
    Ok(inflating.body)
}

/// A compressed payload (the body's length as a `u32`, then the body
/// deflated) inflated a piece at a time, straight into a buffer of the
/// length it claims: that length is checked against the caller's limit,
/// and against what deflate can produce from the bytes present, before
/// anything is allocated. The body must end exactly where the deflated
/// bytes do.
pub(crate) struct Inflating {
    decompressor: Box<miniz_oxide::inflate::core::DecompressorOxide>,
    body: Vec<u8>,
    written: usize,
    consumed: usize,
}

impl Inflating {
    pub(crate) fn new(payload: &[u8], max_body_bytes: usize) -> Result<Inflating, SnapshotError> {
        let malformed = |what: String| SnapshotError::Malformed(what);
        let (len, deflated) = payload
            .split_first_chunk::<4>()
            .ok_or_else(|| malformed("compressed payload is shorter than its length".into()))?;
        let body_len = u32::from_le_bytes(*len) as usize;
        if body_len > max_body_bytes {
            return Err(SnapshotError::TooLarge {
                size: body_len as u64,
                limit: max_body_bytes as u64,
            });
        }
        if body_len > deflated.len().saturating_mul(MAX_DEFLATE_RATIO) {
            return Err(malformed(format!(
                "compressed body claims {body_len} bytes, more than {} deflated bytes can hold",
                deflated.len()
            )));
        }
        Ok(Inflating {
            decompressor: Box::default(),
            body: vec![0; body_len],
            written: 0,
            consumed: 0,
        })
    }

    /// Inflates up to `max_bytes` more of the body (at least one) from
    /// `payload`, the same bytes as given to [`Inflating::new`]. Returns
    /// whether the body is whole.
    pub(crate) fn step(&mut self, payload: &[u8], max_bytes: usize) -> Result<bool, SnapshotError> {
        use miniz_oxide::inflate::TINFLStatus;
        use miniz_oxide::inflate::core::{decompress, inflate_flags};

        let deflated = payload.get(4..).unwrap_or_default();
        let end = self
            .written
            .saturating_add(max_bytes.max(1))
            .min(self.body.len());
        // The whole body is one buffer: later pieces refer back into it.
        let (status, read, wrote) = decompress(
            &mut self.decompressor,
            deflated.get(self.consumed..).unwrap_or_default(),
            &mut self.body[..end],
            self.written,
            inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        );
        self.consumed += read;
        self.written += wrote;
        let whole = self.written == self.body.len();
        match status {
            TINFLStatus::Done if whole && self.consumed == deflated.len() => Ok(true),
            TINFLStatus::HasMoreOutput if !whole => Ok(false),
            _ => Err(SnapshotError::Malformed(format!(
                "compressed body does not inflate to exactly {} bytes from its {} deflated \
                 bytes (wrote {}, read {}, {status:?})",
                self.body.len(),
                deflated.len(),
                self.written,
                self.consumed,
            ))),
        }
    }

    /// The body, whole once [`Inflating::step`] said so.
    pub(crate) fn into_body(self) -> Vec<u8> {
        self.body
    }
}

/// Checks the header and checksum; returns the format version and the payload.
fn verified_payload(bytes: &[u8]) -> Result<(u8, &[u8]), SnapshotError> {
    let header = bytes.get(..HEADER_LEN).ok_or(SnapshotError::Truncated {
        have: bytes.len(),
        need: HEADER_LEN,
    })?;
    if &header[..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let format = header[4];
    if !(OLDEST_SNAPSHOT_FORMAT..=NEWEST_SNAPSHOT_FORMAT).contains(&format) {
        return Err(SnapshotError::UnsupportedVersion(format));
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
    let actual = crate::crc32::hash(payload);
    if actual != expected {
        return Err(SnapshotError::ChecksumMismatch { expected, actual });
    }
    Ok((format, payload))
}

/// Every replica that stamped something in the state, in order, for interning.
pub(crate) fn replica_table(state: &State) -> BTreeMap<ReplicaId, u32> {
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

/// A collection's own stamps: created, if present, after its drop.
pub(crate) fn check_collection_stamps(
    name: &str,
    coll: &CollectionState,
) -> Result<(), SnapshotError> {
    if coll.created.is_some() && coll.created <= coll.dropped {
        return Err(SnapshotError::Inconsistent(format!(
            "collection {name} created before its drop",
            name = Quoted(name)
        )));
    }
    Ok(())
}

/// Builds a decoded document and checks it against the tombstone rules
/// (section 8 of PROTOCOL.md): with `tombstone = max(dropped, deleted)`,
/// `written` and every field stamp after it, `deleted` after the drop,
/// every field at or before `written`, and `written` or `deleted` present.
pub(crate) fn checked_doc(
    id: &str,
    written: Option<Stamp>,
    deleted: Option<Stamp>,
    slots: Vec<FieldSlot>,
    dropped: Option<Stamp>,
    names: &Names,
) -> Result<DocState, SnapshotError> {
    let tombstone = dropped.max(deleted);
    let doc = DocState::new(written, deleted, slots, names);
    let covered = |s: &Stamp| tombstone.is_some_and(|t| *s <= t);
    if doc.written.as_ref().is_some_and(covered)
        || doc
            .deleted()
            .is_some_and(|d| dropped.is_some_and(|t| d <= t))
        || doc.fields.iter().any(|f| {
            let stamp = f.stamp(names);
            covered(&stamp) || Some(stamp) > doc.written
        })
        || (doc.written.is_none() && doc.deleted().is_none())
    {
        return Err(SnapshotError::Inconsistent(format!(
            "document {id} breaks the tombstone rules",
            id = Quoted(id)
        )));
    }
    Ok(doc)
}

pub(crate) fn check(result: Result<(), InvalidOp>) -> Result<(), SnapshotError> {
    result.map_err(|e| SnapshotError::Inconsistent(e.to_string()))
}
