//! Operations: the unit of change a replica makes, logs and sends.

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::limits;
use crate::quoted::Quoted;
use crate::stamp::{ReplicaId, Stamp};
use crate::value::{MAX_VALUE_DEPTH, Value};

/// Names one operation: the replica that made it and its sequence number there.
///
/// Each replica numbers its operations 1, 2, 3, … without gaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId {
    /// The replica that made the operation.
    pub replica: ReplicaId,
    /// Its position in that replica's own sequence, starting at 1.
    pub seq: u64,
}

/// One operation: who, when, and what changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Who made it and its sequence number.
    pub id: OpId,
    /// When it was made; with `id.replica` it forms the operation's [`Stamp`].
    pub hlc: Hlc,
    /// What it changes.
    pub change: Change,
}

impl Op {
    /// The stamp every part of this operation carries.
    pub fn stamp(&self) -> Stamp {
        Stamp::new(self.hlc, self.id.replica)
    }

    /// The collection the operation touches.
    pub fn collection(&self) -> &str {
        match &self.change {
            Change::Put { collection, .. }
            | Change::Delete { collection, .. }
            | Change::CreateCollection { collection }
            | Change::DropCollection { collection } => collection,
        }
    }

    /// An upper bound on the operation's encoded size in bytes; batch limits
    /// are enforced with it on both sides.
    pub fn encoded_len_bound(&self) -> usize {
        match &self.change {
            Change::Put {
                collection,
                id,
                fields,
            } => put_len_bound(
                collection,
                id,
                fields.iter().map(|(n, v)| (n.as_str(), v.as_ref())),
            ),
            Change::Delete { collection, id } => OP_HEADER_BOUND + 20 + collection.len() + id.len(),
            Change::CreateCollection { collection } | Change::DropCollection { collection } => {
                OP_HEADER_BOUND + 10 + collection.len()
            }
        }
    }

    /// Checks the operation against the data model's limits.
    ///
    /// Local writes are checked before they are stamped; remote operations
    /// are checked before they touch any state.
    pub fn validate(&self) -> Result<(), InvalidOp> {
        if self.id.seq == 0 {
            return Err(InvalidOp::ZeroSequence);
        }
        self.change.validate()?;
        let size = self.encoded_len_bound();
        if size > limits::MAX_OP_BYTES {
            return Err(InvalidOp::TooLarge(size));
        }
        Ok(())
    }
}

/// The change an operation makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Writes fields of one document, creating it if needed. `None` removes a field.
    Put {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// Field names with their new values; each name appears once.
        fields: Vec<(String, Option<Value>)>,
    },
    /// Deletes a document: every field stamped at or before this operation is gone.
    Delete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Creates a collection (writes into a collection create it implicitly too).
    CreateCollection {
        /// The collection.
        collection: String,
    },
    /// Drops a collection and everything in it stamped at or before this operation.
    DropCollection {
        /// The collection.
        collection: String,
    },
}

impl Change {
    /// Checks names, sizes and nesting against [`crate::limits`].
    pub fn validate(&self) -> Result<(), InvalidOp> {
        match self {
            Change::Put {
                collection,
                id,
                fields,
            } => {
                check_collection(collection)?;
                check_doc_id(id)?;
                if fields.len() > limits::MAX_FIELDS_PER_PUT {
                    return Err(InvalidOp::TooManyFields(fields.len()));
                }
                // Comparing every pair is cheapest for the usual handful of
                // fields (most pairs differ in length, which `==` checks
                // first), but quadratic: 8.4 million comparisons at the field
                // limit, which a peer controls. Large puts sort instead.
                let sorted_repeat = (fields.len() > PAIRWISE_MAX)
                    .then(|| first_repeat_sorted(fields))
                    .flatten();
                for (index, (name, value)) in fields.iter().enumerate() {
                    check_field_name(name)?;
                    let repeated = if fields.len() > PAIRWISE_MAX {
                        sorted_repeat == Some(index)
                    } else {
                        fields[..index].iter().any(|(earlier, _)| earlier == name)
                    };
                    if repeated {
                        return Err(InvalidOp::DuplicateField(name.clone()));
                    }
                    if value.as_ref().is_some_and(|v| v.depth() > MAX_VALUE_DEPTH) {
                        return Err(InvalidOp::ValueTooDeep(name.clone()));
                    }
                }
                Ok(())
            }
            Change::Delete { collection, id } => {
                check_collection(collection)?;
                check_doc_id(id)
            }
            Change::CreateCollection { collection } | Change::DropCollection { collection } => {
                check_collection(collection)
            }
        }
    }
}

/// OpId and Hlc: three varints of at most 10 bytes, plus the change tag.
const OP_HEADER_BOUND: usize = 32;

/// [`Op::encoded_len_bound`] of a put of `fields` to `collection`/`id`.
pub(crate) fn put_len_bound<'a>(
    collection: &str,
    id: &str,
    fields: impl Iterator<Item = (&'a str, Option<&'a Value>)>,
) -> usize {
    OP_HEADER_BOUND
        + 20
        + collection.len()
        + id.len()
        + fields.map(|(n, v)| field_len_bound(n, v)).sum::<usize>()
}

/// One field's part of [`put_len_bound`].
#[inline]
fn field_len_bound(name: &str, value: Option<&Value>) -> usize {
    11 + name.len() + value.map_or(0, Value::encoded_len_bound)
}

/// What [`Op::validate`] checks of a put whose field names are known to be
/// distinct (a local write that dropped repeats), on borrowed parts.
#[inline]
pub(crate) fn check_distinct_put<'a>(
    collection: &str,
    id: &str,
    fields: impl ExactSizeIterator<Item = (&'a str, Option<&'a Value>)>,
) -> Result<(), InvalidOp> {
    check_collection(collection)?;
    check_doc_id(id)?;
    let count = fields.len();
    if count > limits::MAX_FIELDS_PER_PUT {
        return Err(InvalidOp::TooManyFields(count));
    }
    // One pass (every local write makes it): the size is `put_len_bound`'s,
    // summed on the way, and checked after the names as `Op::validate` does.
    let mut size = put_len_bound(collection, id, std::iter::empty());
    for (name, value) in fields {
        check_field_name(name)?;
        // Only a list or map nests: no call for the scalars most fields hold.
        if let Some(v @ (Value::List(_) | Value::Map(_))) = value
            && v.depth() > MAX_VALUE_DEPTH
        {
            return Err(InvalidOp::ValueTooDeep(name.to_owned()));
        }
        size += field_len_bound(name, value);
    }
    if size > limits::MAX_OP_BYTES {
        return Err(InvalidOp::TooLarge(size));
    }
    Ok(())
}

/// An operation borrowing its parts. `persist::push_op_record` encodes it
/// byte for byte as the [`Op`] with the same parts; decoded, it accepts
/// exactly the bytes [`Op`] accepts (the same field order and variant
/// order), without allocating its strings: a store's outbox records are
/// checked with it on open.
#[derive(Deserialize)]
pub(crate) struct OpRef<'a, F> {
    pub(crate) id: OpId,
    pub(crate) hlc: Hlc,
    #[serde(borrow)]
    pub(crate) change: ChangeRef<'a, F>,
}

/// [`Change`], borrowed; `F` is written (and read) as a put's
/// `Vec<(String, Option<Value>)>` is.
#[derive(Deserialize)]
pub(crate) enum ChangeRef<'a, F> {
    Put {
        collection: &'a str,
        id: &'a str,
        fields: F,
    },
    Delete {
        collection: &'a str,
        id: &'a str,
    },
    CreateCollection {
        collection: &'a str,
    },
    DropCollection {
        collection: &'a str,
    },
}

/// Up to this many fields, a put's names are checked for repeats pairwise.
const PAIRWISE_MAX: usize = 32;

/// Index of the first field whose name an earlier field already has, found
/// by sorting: O(n log n) where the pairwise check is O(n²).
fn first_repeat_sorted(fields: &[(String, Option<Value>)]) -> Option<usize> {
    // Sorted by name, then index: in each run of equal names, the second
    // entry is the first repeat of that name.
    let mut names: Vec<(&str, usize)> = fields
        .iter()
        .enumerate()
        .map(|(index, (name, _))| (name.as_str(), index))
        .collect();
    names.sort_unstable();
    names
        .windows(2)
        .filter(|pair| pair[0].0 == pair[1].0)
        .map(|pair| pair[1].1)
        .min()
}

/// Checks a collection name against the limits.
pub(crate) fn check_collection(name: &str) -> Result<(), InvalidOp> {
    check_name(name, limits::MAX_COLLECTION_NAME_LEN, NameKind::Collection)
}

/// Checks a document id against the limits.
pub(crate) fn check_doc_id(id: &str) -> Result<(), InvalidOp> {
    check_name(id, limits::MAX_DOC_ID_LEN, NameKind::DocumentId)
}

/// Checks a field name against the limits.
pub(crate) fn check_field_name(name: &str) -> Result<(), InvalidOp> {
    check_name(name, limits::MAX_FIELD_NAME_LEN, NameKind::Field)
}

#[inline]
fn check_name(name: &str, max: usize, kind: NameKind) -> Result<(), InvalidOp> {
    if name.is_empty() {
        return Err(InvalidOp::EmptyName(kind));
    }
    if name.len() > max {
        return Err(InvalidOp::NameTooLong {
            kind,
            len: name.len(),
            max,
        });
    }
    Ok(())
}

/// Which kind of name a validation error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameKind {
    /// A collection name.
    Collection,
    /// A document id.
    DocumentId,
    /// A field name.
    Field,
}

impl core::fmt::Display for NameKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NameKind::Collection => "collection name",
            NameKind::DocumentId => "document id",
            NameKind::Field => "field name",
        })
    }
}

/// An operation breaks the data model's rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOp {
    /// A name or id is empty.
    #[error("{0} must not be empty")]
    EmptyName(NameKind),
    /// A name or id is longer than allowed.
    #[error("{kind} is {len} bytes long; the limit is {max} bytes")]
    NameTooLong {
        /// Which name.
        kind: NameKind,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// One put names the same field twice.
    #[error("field {} appears more than once in one write", Quoted(.0))]
    DuplicateField(String),
    /// One put writes more fields than allowed.
    #[error("one write sets {0} fields; the limit is {max}", max = limits::MAX_FIELDS_PER_PUT)]
    TooManyFields(usize),
    /// A value nests lists and maps too deeply.
    #[error("value of field {} nests lists and maps deeper than {MAX_VALUE_DEPTH} levels", Quoted(.0))]
    ValueTooDeep(String),
    /// The operation is larger than one operation may be.
    #[error("operation of up to {0} bytes exceeds the limit of {max} bytes per write", max = limits::MAX_OP_BYTES)]
    TooLarge(usize),
    /// Sequence numbers start at 1.
    #[error("operation sequence numbers start at 1")]
    ZeroSequence,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A peer's field name with a line break does not break the line of a
    /// log that prints the error.
    #[test]
    fn errors_escape_control_characters_in_names() {
        let error = InvalidOp::DuplicateField("a\nINFO forged".into());
        assert_eq!(
            error.to_string(),
            "field 'a\\u{a}INFO forged' appears more than once in one write"
        );
        let key = crate::persist::StoreKey::Document {
            collection: "todos\r".into(),
            id: "t\n1".into(),
        };
        assert_eq!(key.to_string(), "document 't\\u{a}1' of 'todos\\u{d}'");
    }

    proptest! {
        /// The sorting duplicate check finds exactly the field the pairwise
        /// one finds.
        #[test]
        fn first_repeat_matches_pairwise(names in prop::collection::vec("[ab]{0,3}", 0..80)) {
            let fields: Vec<(String, Option<Value>)> =
                names.into_iter().map(|n| (n, None)).collect();
            let pairwise = (0..fields.len())
                .find(|&i| fields[..i].iter().any(|(earlier, _)| *earlier == fields[i].0));
            prop_assert_eq!(first_repeat_sorted(&fields), pairwise);
        }
    }
}
