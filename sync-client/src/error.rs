//! The errors applications see.

use sync_core::protocol::CloseCode;
use sync_core::{Revision, WriteError};

use crate::platform::StoreError;

/// What went wrong, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A conditional write found the document at another revision: read it
    /// again, reapply the change and retry.
    #[error(
        "document {collection}/{id} changed since it was read (now at {}); read it again and retry",
        .actual.map_or_else(|| "absent".to_owned(), |r| r.to_string())
    )]
    Conflict {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The revision the write expected (`None`: that it did not exist).
        expected: Option<Revision>,
        /// The revision it has (`None`: it does not exist).
        actual: Option<Revision>,
    },
    /// The write breaks the data model's rules (names, sizes, nesting) or
    /// the clock cannot stamp it; nothing was changed.
    #[error("write refused: {0}")]
    InvalidWrite(WriteError),
    /// The local store failed. Writes not yet durable are lost from memory
    /// too: the database reloads what the store holds and stays usable if
    /// the store recovers; otherwise reopen it.
    #[error("the local store failed: {0}")]
    Store(#[from] StoreError),
    /// The stored data could not be loaded (corrupt, or written by a newer
    /// version of Concord).
    #[error("the stored database cannot be loaded: {0}")]
    Load(String),
    /// A document does not fit the type it was read as.
    #[error("document {collection}/{id} does not match the requested type: {message}")]
    Decode {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// What did not fit.
        message: String,
    },
    /// A value cannot be stored: only JSON-like values (null, bool, numbers,
    /// strings, bytes, lists, maps) and a document must be a map of fields.
    #[error("value cannot be stored: {0}")]
    Encode(String),
    /// The relay refused local writes for good (for example: older than
    /// the relay's history). Their effect was taken back out of the state.
    #[error("the relay refused {count} write(s): {message}")]
    Rejected {
        /// How many.
        count: usize,
        /// The relay's explanation.
        message: String,
    },
    /// Syncing stopped and will not resume by itself: a bad or expired
    /// token with no way to refresh it, a token for another room, or a
    /// relay that speaks another protocol version. Fix the cause, then
    /// `connect` again.
    #[error("syncing stopped ({code:?}): {message}")]
    Offline {
        /// The close code that ended it.
        code: CloseCode,
        /// Why.
        message: String,
    },
    /// The token only allows reading: local writes stay on this device
    /// until a token with write rights is set.
    #[error("the token only allows reading; local writes stay on this device")]
    ReadOnly,
    /// The database has no relay to sync with; pass one when opening it.
    #[error("no relay configured for this database")]
    NoRelay,
    /// The database was closed.
    #[error("the database is closed")]
    Closed,
}

impl From<WriteError> for Error {
    fn from(e: WriteError) -> Error {
        match e {
            WriteError::RevisionMismatch {
                collection,
                id,
                expected,
                actual,
            } => Error::Conflict {
                collection,
                id,
                expected,
                actual,
            },
            WriteError::StoreFailed { message } => Error::Store(StoreError::new(
                crate::platform::StoreErrorKind::Io,
                message,
            )),
            other => Error::InvalidWrite(other),
        }
    }
}
