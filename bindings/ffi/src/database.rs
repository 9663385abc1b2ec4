//! The database and its collections.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::ConcordError;
use crate::stream::{Status, StatusStream, Subscription};
use crate::token::{TokenProvider, token_source};
use crate::value::{Document, Value, to_fields};

/// Where and how a database syncs.
#[derive(Clone, Debug, uniffi::Record)]
pub struct RelayConfig {
    /// The relay's sync endpoint, for example `ws://127.0.0.1:8787/v1/sync`.
    pub url: String,
    /// The room: every database in the room converges.
    pub room: String,
    /// The access token the app's backend issued for the room.
    pub token: String,
    /// Start syncing as soon as the database opens (else call `connect`).
    #[uniffi(default = true)]
    pub connect: bool,
}

/// How to open a database.
#[derive(Clone, Debug, uniffi::Record)]
pub struct OpenOptions {
    /// The relay to sync with; none keeps the database local only.
    #[uniffi(default = None)]
    pub relay: Option<RelayConfig>,
    /// Names the client in the relay's logs.
    #[uniffi(default = None)]
    pub agent: Option<String>,
}

/// Opens (creating if needed) the database in the SQLite file at `path`.
/// Blocks until it is loaded. `token_provider` refreshes the relay token
/// when it expires or is refused. A second open of the same file fails with
/// `ConcordError::Store` until the first is closed.
#[uniffi::export]
pub fn open_database(
    path: String,
    options: OpenOptions,
    token_provider: Option<Arc<dyn TokenProvider>>,
) -> Result<Arc<Database>, ConcordError> {
    let mut native = sync_ffi::Options::local();
    if let Some(relay) = options.relay {
        let mut relay_options = sync_ffi::RelayOptions::new(relay.url, relay.room, relay.token);
        if !relay.connect {
            relay_options = relay_options.start_offline();
        }
        if let Some(provider) = token_provider {
            relay_options = relay_options.token_source(token_source(provider));
        }
        native = sync_ffi::Options::with_relay(relay_options);
    }
    native.agent = options.agent;
    let db = sync_ffi::open(path, native)?;
    Ok(Arc::new(Database { db }))
}

/// One write of a [`Database::transaction`].
#[derive(Clone, Debug, uniffi::Enum)]
pub enum WriteOp {
    /// Writes fields of a document (see [`Collection::put`]).
    Put {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The fields to write.
        fields: HashMap<String, Value>,
    },
    /// Writes fields if the document is at `expected` before the
    /// transaction (`None`: if it does not exist).
    PutIf {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The fields to write.
        fields: HashMap<String, Value>,
        /// The revision the document must have.
        expected: Option<String>,
    },
    /// Removes fields of a document.
    Unset {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The fields to remove.
        names: Vec<String>,
    },
    /// Deletes a document.
    Delete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
}

/// A write in the Rust API's terms, revisions already parsed.
enum Op {
    Put(
        String,
        String,
        HashMap<String, Value>,
        Option<Option<sync_ffi::Revision>>,
    ),
    Unset(String, String, Vec<String>),
    Delete(String, String),
}

fn revision(text: Option<String>) -> Result<Option<sync_ffi::Revision>, ConcordError> {
    text.map(|t| {
        t.parse()
            .map_err(|_| ConcordError::InvalidArgument(format!("not a revision: {t:?}")))
    })
    .transpose()
}

/// A local-first database that syncs with a relay room whenever it can.
/// Reads answer from memory at once; writes apply at once and resolve when
/// durable. Thread-safe. `close` it when done (collecting it closes it too).
#[derive(uniffi::Object)]
pub struct Database {
    db: sync_ffi::Database,
}

#[uniffi::export]
impl Database {
    /// This database's replica id (16 hex digits), random, made at creation.
    pub fn replica_id(&self) -> String {
        self.db.replica_id().to_string()
    }

    /// The collection `name` (created on first write).
    pub fn collection(&self, name: String) -> Arc<Collection> {
        Arc::new(Collection {
            inner: self.db.collection(name),
        })
    }

    /// Many writes as one, across collections: all applied or, if one is
    /// refused (a `PutIf` conflict), none. Resolves once durable.
    pub async fn transaction(&self, ops: Vec<WriteOp>) -> Result<(), ConcordError> {
        let pending = self.start_transaction(ops)?;
        Ok(pending.await?)
    }

    /// [`Database::transaction`], blocking until durable.
    pub fn transaction_blocking(&self, ops: Vec<WriteOp>) -> Result<(), ConcordError> {
        let pending = self.start_transaction(ops)?;
        Ok(futures::executor::block_on(pending)?)
    }

    /// Resolves once the relay acknowledged every local write made so far.
    pub async fn flush(&self) -> Result<(), ConcordError> {
        Ok(self.db.flush().await?)
    }

    /// [`Database::flush`], blocking.
    pub fn flush_blocking(&self) -> Result<(), ConcordError> {
        Ok(futures::executor::block_on(self.db.flush())?)
    }

    /// Every change, local or remote.
    pub fn subscribe(&self) -> Arc<Subscription> {
        Arc::new(Subscription::new(self.db.subscribe()))
    }

    /// Where syncing stands now.
    pub fn status(&self) -> Status {
        self.db.status().into()
    }

    /// The current status, then every change of it.
    pub fn status_changes(&self) -> Arc<StatusStream> {
        Arc::new(StatusStream::new(self.db.status_changes()))
    }

    /// Starts syncing (again); fails with `NoRelay` if opened without one.
    pub fn connect(&self) -> Result<(), ConcordError> {
        Ok(self.db.connect()?)
    }

    /// Stops syncing; everything keeps working locally.
    pub fn disconnect(&self) {
        self.db.disconnect();
    }

    /// Replaces the access token (restarting syncing if it stopped on a refused token).
    pub fn set_token(&self, token: String) {
        self.db.set_token(token);
    }

    /// Closes the database: finishes the writes made, ends subscriptions,
    /// releases the file. Resolves once everything applied is stored.
    /// (Not `close`: Kotlin's `AutoCloseable.close` frees the handle.)
    pub async fn shutdown(&self) {
        self.db.close().await;
    }

    /// [`Database::shutdown`], blocking.
    pub fn shutdown_blocking(&self) {
        futures::executor::block_on(self.db.close());
    }
}

impl Database {
    fn start_transaction(&self, ops: Vec<WriteOp>) -> Result<sync_ffi::Pending<()>, ConcordError> {
        let ops = ops
            .into_iter()
            .map(|op| {
                Ok(match op {
                    WriteOp::Put {
                        collection,
                        id,
                        fields,
                    } => Op::Put(collection, id, fields, None),
                    WriteOp::PutIf {
                        collection,
                        id,
                        fields,
                        expected,
                    } => Op::Put(collection, id, fields, Some(revision(expected)?)),
                    WriteOp::Unset {
                        collection,
                        id,
                        names,
                    } => Op::Unset(collection, id, names),
                    WriteOp::Delete { collection, id } => Op::Delete(collection, id),
                })
            })
            .collect::<Result<Vec<Op>, ConcordError>>()?;
        Ok(self.db.transaction(move |tx| {
            for op in ops {
                match op {
                    Op::Put(c, id, fields, None) => tx.put(&c, &id, to_fields(fields))?,
                    Op::Put(c, id, fields, Some(expected)) => {
                        tx.put_if(&c, &id, to_fields(fields), expected)?
                    }
                    Op::Unset(c, id, names) => tx.unset(&c, &id, names)?,
                    Op::Delete(c, id) => tx.delete(&c, &id)?,
                }
            }
            Ok(())
        }))
    }
}

/// A collection of documents, each a map of fields to values.
#[derive(uniffi::Object)]
pub struct Collection {
    inner: sync_ffi::Collection,
}

#[uniffi::export]
impl Collection {
    /// The collection's name.
    pub fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// Writes fields of document `id`, creating it if needed; fields not
    /// named keep their values. Visible to reads at once; resolves with the
    /// new revision once durable.
    pub async fn put(
        &self,
        id: String,
        fields: HashMap<String, Value>,
    ) -> Result<String, ConcordError> {
        let pending = self.inner.put(&id, to_fields(fields));
        Ok(pending.await?.to_string())
    }

    /// [`Collection::put`], blocking until durable.
    pub fn put_blocking(
        &self,
        id: String,
        fields: HashMap<String, Value>,
    ) -> Result<String, ConcordError> {
        let pending = self.inner.put(&id, to_fields(fields));
        Ok(futures::executor::block_on(pending)?.to_string())
    }

    /// Like `put`, but only if the document is still at revision `expected`
    /// (`None`: only if it does not exist); otherwise fails with `Conflict`
    /// and changes nothing.
    pub async fn put_if(
        &self,
        id: String,
        fields: HashMap<String, Value>,
        expected: Option<String>,
    ) -> Result<String, ConcordError> {
        let expected = revision(expected)?;
        let pending = self.inner.put_if(&id, to_fields(fields), expected);
        Ok(pending.await?.to_string())
    }

    /// [`Collection::put_if`], blocking until durable.
    pub fn put_if_blocking(
        &self,
        id: String,
        fields: HashMap<String, Value>,
        expected: Option<String>,
    ) -> Result<String, ConcordError> {
        let expected = revision(expected)?;
        let pending = self.inner.put_if(&id, to_fields(fields), expected);
        Ok(futures::executor::block_on(pending)?.to_string())
    }

    /// Removes fields of document `id`; resolves with the new revision.
    pub async fn unset(&self, id: String, names: Vec<String>) -> Result<String, ConcordError> {
        let pending = self.inner.unset(&id, names);
        Ok(pending.await?.to_string())
    }

    /// [`Collection::unset`], blocking until durable.
    pub fn unset_blocking(&self, id: String, names: Vec<String>) -> Result<String, ConcordError> {
        let pending = self.inner.unset(&id, names);
        Ok(futures::executor::block_on(pending)?.to_string())
    }

    /// Deletes document `id`; a later write brings it back with only the
    /// fields written after the delete.
    pub async fn delete(&self, id: String) -> Result<(), ConcordError> {
        Ok(self.inner.delete(&id).await?)
    }

    /// [`Collection::delete`], blocking until durable.
    pub fn delete_blocking(&self, id: String) -> Result<(), ConcordError> {
        Ok(futures::executor::block_on(self.inner.delete(&id))?)
    }

    /// Document `id`, if it exists.
    pub fn get(&self, id: String) -> Option<Document> {
        self.inner.get(&id).map(Into::into)
    }

    /// One field of document `id`, if it has it.
    pub fn get_field(&self, id: String, field: String) -> Option<Value> {
        self.inner.get_field(&id, &field).map(Into::into)
    }

    /// Documents in id order: only ids starting with `prefix`, after id
    /// `after` (the last id of the previous page), at most `limit`.
    pub fn list(
        &self,
        prefix: Option<String>,
        after: Option<String>,
        limit: Option<u32>,
    ) -> Vec<Document> {
        let options = sync_ffi::ListOptions {
            prefix,
            after,
            limit: limit.map(|l| l as usize),
        };
        self.inner
            .list(&options)
            .into_iter()
            .map(Into::into)
            .collect()
    }

    /// Changes to this collection's documents, local or remote.
    pub fn subscribe(&self) -> Arc<Subscription> {
        Arc::new(Subscription::new(self.inner.subscribe()))
    }

    /// Changes to document `id`, local or remote.
    pub fn subscribe_document(&self, id: String) -> Arc<Subscription> {
        Arc::new(Subscription::new(self.inner.subscribe_document(&id)))
    }
}
