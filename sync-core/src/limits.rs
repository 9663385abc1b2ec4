//! Limits of the data model, shared by local validation and remote checks.

/// Longest collection name, in UTF-8 bytes.
pub const MAX_COLLECTION_NAME_LEN: usize = 255;
/// Longest document id, in UTF-8 bytes.
pub const MAX_DOC_ID_LEN: usize = 1024;
/// Longest field name, in UTF-8 bytes.
pub const MAX_FIELD_NAME_LEN: usize = 255;
/// Largest encoded size of one operation (512 KiB). A relay's batch limit
/// must be at least this, so any valid write can always be pushed.
pub const MAX_OP_BYTES: usize = 512 * 1024;
/// Longest room name, in UTF-8 bytes.
pub const MAX_ROOM_NAME_LEN: usize = 256;
/// Most fields one put may write.
pub const MAX_FIELDS_PER_PUT: usize = 4096;
