//! Values longer than one SQLite row may hold, stored across rows.
//!
//! SQLite refuses a value, and a row, longer than its length limit
//! (`SQLITE_LIMIT_LENGTH`, 1e9 bytes by default; an application linking
//! its own SQLite may lower it). A database's checkpoint is its whole state
//! in one record: past the limit, every checkpoint write would fail, for
//! good. So a value longer than [`max_row_value`] keeps its first part in
//! `records` and the rest, in pieces of that size, in `chunks` under the
//! same key, numbered from 1; a read appends them back. Binding a piece
//! instead of the whole value also keeps SQLite's copy of a bound value to
//! one piece, not a second copy of the state.
//!
//! Every other record never touches `chunks`: the writer remembers which
//! keys may have pieces ([`Chunks`]) and deletes a key's pieces only when
//! it may have some. A file holding pieces is marked with
//! [`CHUNKED_SCHEMA`], which older builds refuse to open instead of
//! reading a truncated value.

use std::collections::BTreeSet;

use rusqlite::limits::Limit;
use rusqlite::{Connection, params};
use sync_core::store::Record;

use super::{Row, Rows};

/// `PRAGMA user_version` of a file that may hold values across rows.
pub(super) const CHUNKED_SCHEMA: i64 = 2;

/// Largest piece, whatever the limit: SQLite copies each value it is
/// given, and a smaller piece keeps that copy small beside the state.
const MAX_PIECE: usize = 64 << 20;

/// A value's first part (or all of it).
const INSERT_RECORD: &str = "INSERT OR REPLACE INTO records (key, value) VALUES (?1, ?2)";

/// A record's removal (its pieces are removed beside it).
const DELETE_RECORD: &str = "DELETE FROM records WHERE key = ?1";

/// The removal of the records from one key to another, both included
/// (blobs compare by their bytes, as [`sync_core::store::Store`] orders keys).
const DELETE_RANGE: &str = "DELETE FROM records WHERE key >= ?1 AND key <= ?2";

/// The table of the pieces after a value's first one.
pub(super) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS chunks (
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (key, seq)
) STRICT, WITHOUT ROWID;";

/// Longest value stored in one row on `conn`: half its length limit (which
/// also bounds the whole row, key included), at most [`MAX_PIECE`].
fn max_row_value(conn: &Connection) -> usize {
    let limit = conn
        .limit(Limit::SQLITE_LIMIT_LENGTH)
        .unwrap_or(1_000_000_000);
    usize::try_from(limit / 2).unwrap_or(1).clamp(1, MAX_PIECE)
}

/// The writer's knowledge of which keys may have pieces in `chunks`.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    /// Every key with pieces, and perhaps more: a key is added when its
    /// pieces are written and removed only when the file is read again,
    /// so a rolled-back transaction never leaves pieces unaccounted for.
    keys: BTreeSet<Vec<u8>>,
}

impl Chunks {
    /// The keys with pieces in the file.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Chunks> {
        let mut stmt = conn.prepare_cached("SELECT DISTINCT key FROM chunks")?;
        let keys = stmt
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Chunks { keys })
    }

    /// Writes one batch's rows in order: each value under its key (across
    /// rows if it is too long for one), a key deleted, or a range of keys
    /// deleted. The statements are
    /// taken from the connection's cache once per batch, not once per row:
    /// a cache lookup and return (hashing the SQL text, resetting the
    /// statement) cost about 1,100 instructions, against about 8,000 for
    /// the row's own write (callgrind, one durable put of three rows).
    pub(super) fn write(&mut self, conn: &Connection, rows: &Rows) -> rusqlite::Result<()> {
        let piece = max_row_value(conn);
        let mut insert = None;
        let mut delete = None;
        for row in rows {
            let (key, value) = match row {
                Row::Put(key, value) => (key, value),
                Row::Delete(key) => {
                    self.delete_pieces(conn, key)?;
                    let delete = match &mut delete {
                        Some(delete) => delete,
                        None => delete.insert(conn.prepare_cached(DELETE_RECORD)?),
                    };
                    delete.execute(params![key])?;
                    continue;
                }
                Row::DeleteRange(first, last) => {
                    self.delete_range(conn, first, last)?;
                    continue;
                }
            };
            self.delete_pieces(conn, key)?;
            let insert = match &mut insert {
                Some(insert) => insert,
                None => insert.insert(conn.prepare_cached(INSERT_RECORD)?),
            };
            let (first, rest) = value.split_at(value.len().min(piece));
            insert.execute(params![key, first])?;
            if !rest.is_empty() {
                self.put_pieces(conn, key, rest, piece)?;
            }
        }
        Ok(())
    }

    /// Stores the rest of a value under `key`, in pieces of `piece` bytes.
    fn put_pieces(
        &mut self,
        conn: &Connection,
        key: &[u8],
        mut rest: &[u8],
        piece: usize,
    ) -> rusqlite::Result<()> {
        conn.pragma_update(None, "user_version", CHUNKED_SCHEMA)?;
        self.keys.insert(key.to_vec());
        let mut insert =
            conn.prepare_cached("INSERT INTO chunks (key, seq, value) VALUES (?1, ?2, ?3)")?;
        let mut seq: i64 = 0;
        while !rest.is_empty() {
            let (this, after) = rest.split_at(rest.len().min(piece));
            seq += 1;
            insert.execute(params![key, seq, this])?;
            rest = after;
        }
        Ok(())
    }

    /// Deletes the records from `first` to `last`, and the pieces of any
    /// of them that may have some.
    fn delete_range(&self, conn: &Connection, first: &[u8], last: &[u8]) -> rusqlite::Result<()> {
        // `BTreeSet::range` panics on a reversed range; SQLite's delete
        // then matches nothing.
        if first <= last {
            for key in self.keys.range(first.to_vec()..=last.to_vec()) {
                self.delete_pieces(conn, key)?;
            }
        }
        conn.prepare_cached(DELETE_RANGE)?
            .execute(params![first, last])?;
        Ok(())
    }

    fn delete_pieces(&self, conn: &Connection, key: &[u8]) -> rusqlite::Result<()> {
        if self.keys.contains(key) {
            conn.prepare_cached("DELETE FROM chunks WHERE key = ?1")?
                .execute(params![key])?;
        }
        Ok(())
    }

    /// Every record in key order, each value whole; learns again which keys
    /// have pieces.
    pub(super) fn read_all(&mut self, conn: &Connection) -> rusqlite::Result<Vec<Record>> {
        let mut records = conn
            .prepare_cached("SELECT key, value FROM records ORDER BY key")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<Vec<Record>>>()?;
        *self = Chunks::load(conn)?;
        if self.keys.is_empty() {
            return Ok(records);
        }
        // Each value grows once to its whole length, then takes its pieces.
        let mut lengths = conn.prepare_cached(
            "SELECT key, sum(length(value)) FROM chunks GROUP BY key ORDER BY key",
        )?;
        let mut rows = lengths.query([])?;
        while let Some(row) = rows.next()? {
            let key: Vec<u8> = row.get(0)?;
            let extra: i64 = row.get(1)?;
            if let Some(value) = find(&mut records, &key) {
                value.reserve_exact(usize::try_from(extra).unwrap_or(0));
            }
        }
        let mut pieces = conn.prepare_cached("SELECT key, value FROM chunks ORDER BY key, seq")?;
        let mut rows = pieces.query([])?;
        while let Some(row) = rows.next()? {
            let key = row.get_ref(0)?.as_blob()?;
            let piece = row.get_ref(1)?.as_blob()?;
            // Pieces without a first part (none are written) are ignored.
            if let Some(value) = find(&mut records, key) {
                value.extend_from_slice(piece);
            }
        }
        Ok(records)
    }
}

/// The value under `key` in `records`, sorted by key.
fn find<'a>(records: &'a mut [Record], key: &[u8]) -> Option<&'a mut Vec<u8>> {
    let at = records
        .binary_search_by(|(k, _)| k.as_slice().cmp(key))
        .ok()?;
    Some(&mut records[at].1)
}
