// The idiomatic Kotlin layer over the uniffi-generated `dev.concord.ffi`
// package: suspend functions, data classes, Flow, Closeable. Every call
// goes straight to the Rust SDK; nothing here re-implements its logic.
package dev.concord

import dev.concord.ffi.ConcordException
import dev.concord.ffi.TokenException
import dev.concord.ffi.TokenProvider
import dev.concord.ffi.OpenOptions
import dev.concord.ffi.RelayConfig
import dev.concord.ffi.WriteOp
import dev.concord.ffi.openDatabase
import java.io.Closeable
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.emitAll
import kotlinx.coroutines.flow.flow
import kotlinx.coroutines.withContext
import dev.concord.ffi.Change as FfiChange
import dev.concord.ffi.Collection as FfiCollection
import dev.concord.ffi.Connection as FfiConnection
import dev.concord.ffi.Database as FfiDatabase
import dev.concord.ffi.Document as FfiDocument
import dev.concord.ffi.Origin as FfiOrigin
import dev.concord.ffi.Status as FfiStatus
import dev.concord.ffi.StatusStream as FfiStatusStream
import dev.concord.ffi.Subscription as FfiSubscription

/** A `put_if` found the document at another revision: read it again and retry. */
typealias ConflictException = ConcordException.Conflict

/** The database was closed. */
typealias ClosedException = ConcordException.Closed

/** The local store failed (for example: the file is open in another process). */
typealias StoreException = ConcordException.Store

/** Where and how a database syncs. */
data class Relay(
    /** The relay's sync endpoint, for example `ws://127.0.0.1:8787/v1/sync`. */
    val url: String,
    /** The room: every database in the room converges. */
    val room: String,
    /** The access token the app's backend issued for the room. */
    val token: String,
    /** Start syncing as soon as the database opens (else call [ConcordDatabase.connect]). */
    val connect: Boolean = true,
)

/** A document: its id, its fields (Kotlin values, see [Concord]) and its revision. */
data class Document(val id: String, val fields: Map<String, Any?>, val revision: String)

/** Where a change came from. */
enum class Origin { LOCAL, REMOTE }

/** Something changed in the database. */
sealed interface Change {
    /** A document was written or deleted. */
    data class DocumentChanged(val collection: String, val id: String, val origin: Origin) : Change

    /** A collection was created or dropped. */
    data class CollectionChanged(val collection: String, val origin: Origin) : Change

    /** The reader fell far behind and missed changes: re-read what it shows. */
    data object Lagged : Change
}

/** The state of the link to the relay. */
sealed interface Connection {
    /** Not syncing: no relay, disconnected, or stopped (see [Status.lastError]). */
    data object Offline : Connection

    /** Opening a connection or joining the room. */
    data object Connecting : Connection

    /** Joined: writes go out and changes come in as they happen. */
    data object Online : Connection

    /** The link dropped; the next attempt is at [retryAtMs] (Unix ms). */
    data class Reconnecting(val retryAtMs: Long) : Connection
}

/** A summary of syncing, for status displays. */
data class Status(
    val connection: Connection,
    /** Local writes the relay has not acknowledged yet. */
    val pendingWrites: Long,
    /** The room offset applied and stored here. */
    val cursor: Long,
    /** Room operations not applied here yet, as last known. */
    val lag: Long,
    /** Whether the token only allows reading. */
    val readOnly: Boolean,
    /** The last problem: a dropped link, a refused token, a store failure. */
    val lastError: String?,
)

/**
 * Opens Concord databases. Field values are plain Kotlin: `null`, `Boolean`,
 * `Long` (and `Int`), `Double` (and `Float`), `String`, `ByteArray`,
 * `List<Any?>` and `Map<String, Any?>`; reads give back `Long` and `Double`.
 */
object Concord {
    /**
     * Opens (creating if needed) the database in the SQLite file at [path],
     * syncing through [relay] if given. [tokenProvider] fetches a fresh
     * token when the current one expires or is refused; it runs on a thread
     * of the SDK's own and may block (up to 30 s); throwing leaves the
     * database offline with the error in [Status.lastError].
     */
    suspend fun open(
        path: String,
        relay: Relay? = null,
        agent: String? = null,
        tokenProvider: (() -> String)? = null,
    ): ConcordDatabase = withContext(Dispatchers.IO) { openBlocking(path, relay, agent, tokenProvider) }

    /** [open], blocking the calling thread until the database is loaded. */
    fun openBlocking(
        path: String,
        relay: Relay? = null,
        agent: String? = null,
        tokenProvider: (() -> String)? = null,
    ): ConcordDatabase {
        val options = OpenOptions(
            relay = relay?.let { RelayConfig(it.url, it.room, it.token, it.connect) },
            agent = agent,
        )
        val provider = tokenProvider?.let { fetch ->
            object : TokenProvider {
                override fun fetchToken(): String =
                    try {
                        fetch()
                    } catch (e: TokenException) {
                        throw e
                    } catch (e: Exception) {
                        throw TokenException.Unavailable(e.toString())
                    }
            }
        }
        return ConcordDatabase(openDatabase(path, options, provider))
    }
}

/**
 * A local-first database: reads answer from memory at once, writes apply at
 * once and their suspend functions return once durable, and it syncs with
 * its relay room whenever it can. Thread-safe. [close] it when done.
 */
class ConcordDatabase internal constructor(private val db: FfiDatabase) : Closeable {
    /** This database's replica id (16 hex digits). */
    val replicaId: String get() = db.replicaId()

    /** The collection [name] (created on first write). */
    fun collection(name: String): ConcordCollection = ConcordCollection(db.collection(name))

    /**
     * Many writes as one, across collections: all applied, or none if one is
     * refused (a [Transaction.putIf] conflict throws [ConflictException]).
     * Returns once durable.
     */
    suspend fun transaction(build: Transaction.() -> Unit) {
        val ops = Transaction().apply(build).ops
        db.transaction(ops)
    }

    /** Returns once the relay acknowledged every local write made so far. */
    suspend fun flush() = db.flush()

    /** Every change, local or remote; close the subscription when done. */
    fun subscribe(): ChangeSubscription = ChangeSubscription(db.subscribe())

    /** Every change, local or remote, as a cold flow (subscribes when collected). */
    fun changes(): Flow<Change> = flow { subscribe().use { emitAll(it.changes) } }

    /** Where syncing stands now. */
    fun status(): Status = db.status().toKotlin()

    /** The current status, then every change of it. */
    fun statusFlow(): Flow<Status> = flow {
        val stream: FfiStatusStream = db.statusChanges()
        try {
            while (true) emit((stream.next() ?: break).toKotlin())
        } finally {
            stream.cancel()
            stream.destroy()
        }
    }

    /** Starts syncing (again). Throws [ConcordException.NoRelay] without a relay. */
    fun connect() = db.connect()

    /** Stops syncing; everything keeps working locally. */
    fun disconnect() = db.disconnect()

    /** Replaces the access token (restarting syncing if it stopped on a refused token). */
    fun setToken(token: String) = db.setToken(token)

    /** Closes the database, returning once everything applied is stored. */
    suspend fun closeAndWait() {
        db.shutdown()
        db.destroy()
    }

    /** Closes the database, blocking until everything applied is stored. */
    override fun close() {
        db.shutdownBlocking()
        db.destroy()
    }
}

/** The writes of one [ConcordDatabase.transaction]. */
class Transaction internal constructor() {
    internal val ops = mutableListOf<WriteOp>()

    /** Writes fields of document [id] in [collection]. */
    fun put(collection: String, id: String, fields: Map<String, Any?>) {
        ops += WriteOp.Put(collection, id, toFfiFields(fields))
    }

    /** Writes fields if the document is at [expected] (`null`: if it does not exist). */
    fun putIf(collection: String, id: String, fields: Map<String, Any?>, expected: String?) {
        ops += WriteOp.PutIf(collection, id, toFfiFields(fields), expected)
    }

    /** Removes fields of a document. */
    fun unset(collection: String, id: String, names: List<String>) {
        ops += WriteOp.Unset(collection, id, names)
    }

    /** Deletes a document. */
    fun delete(collection: String, id: String) {
        ops += WriteOp.Delete(collection, id)
    }
}

/** A collection of documents, each a map of fields to values. */
class ConcordCollection internal constructor(private val inner: FfiCollection) {
    /** The collection's name. */
    val name: String get() = inner.name()

    /**
     * Writes fields of document [id], creating it if needed; fields not named
     * keep their values. Returns the new revision once the write is durable.
     */
    suspend fun put(id: String, fields: Map<String, Any?>): String = inner.put(id, toFfiFields(fields))

    /**
     * Like [put], but only if the document is still at revision [expected]
     * (`null`: only if it does not exist); else throws [ConflictException].
     */
    suspend fun putIf(id: String, fields: Map<String, Any?>, expected: String?): String =
        inner.putIf(id, toFfiFields(fields), expected)

    /** Removes fields of document [id]; returns the new revision. */
    suspend fun unset(id: String, vararg names: String): String = inner.unset(id, names.toList())

    /** Deletes document [id]. */
    suspend fun delete(id: String) = inner.delete(id)

    /** Document [id], if it exists. */
    operator fun get(id: String): Document? = inner.get(id)?.toKotlin()

    /** One field of document [id], if it has it. */
    fun getField(id: String, field: String): Any? = inner.getField(id, field)?.let(::fromFfi)

    /** Documents in id order: ids starting with [prefix], after [after], at most [limit]. */
    fun list(prefix: String? = null, after: String? = null, limit: Int? = null): List<Document> =
        inner.list(prefix, after, limit?.toUInt()).map { it.toKotlin() }

    /** Changes to this collection; close the subscription when done. */
    fun subscribe(): ChangeSubscription = ChangeSubscription(inner.subscribe())

    /** Changes to document [id]; close the subscription when done. */
    fun subscribeDocument(id: String): ChangeSubscription = ChangeSubscription(inner.subscribeDocument(id))

    /** Changes to this collection as a cold flow (subscribes when collected). */
    fun changes(): Flow<Change> = flow { subscribe().use { emitAll(it.changes) } }
}

/**
 * A live subscription: changes queue from the moment it is made, so nothing
 * between subscribing and collecting is missed. Collect [changes] once.
 */
class ChangeSubscription internal constructor(private val sub: FfiSubscription) : Closeable {
    /** The changes, in order; completes when the database or this subscription closes. */
    val changes: Flow<Change> = flow {
        while (true) emit((sub.next() ?: break).toKotlin())
    }

    /**
     * Stops the subscription; a collecting flow completes. (The native
     * handle is freed when this object is collected, so a collector still
     * running elsewhere never calls into a freed handle.)
     */
    override fun close() {
        sub.cancel()
    }
}

internal fun toFfiFields(fields: Map<String, Any?>): Map<String, dev.concord.ffi.Value> =
    fields.mapValues { (_, v) -> toFfi(v) }

/** A Kotlin value as a stored value; anything else is an [IllegalArgumentException]. */
fun toFfi(value: Any?): dev.concord.ffi.Value = when (value) {
    null -> dev.concord.ffi.Value.NullValue
    is Boolean -> dev.concord.ffi.Value.BoolValue(value)
    is Long -> dev.concord.ffi.Value.IntValue(value)
    is Int -> dev.concord.ffi.Value.IntValue(value.toLong())
    is Short -> dev.concord.ffi.Value.IntValue(value.toLong())
    is Byte -> dev.concord.ffi.Value.IntValue(value.toLong())
    is Double -> dev.concord.ffi.Value.FloatValue(value)
    is Float -> dev.concord.ffi.Value.FloatValue(value.toDouble())
    is String -> dev.concord.ffi.Value.StringValue(value)
    is ByteArray -> dev.concord.ffi.Value.BytesValue(value)
    is List<*> -> dev.concord.ffi.Value.ListValue(value.map(::toFfi))
    is Map<*, *> -> dev.concord.ffi.Value.MapValue(
        value.entries.associate { (k, v) ->
            require(k is String) { "map keys must be strings, not ${k?.let { it::class.simpleName }}" }
            k to toFfi(v)
        },
    )
    else -> throw IllegalArgumentException("cannot store a ${value::class.qualifiedName}")
}

/** A stored value as a Kotlin value. */
fun fromFfi(value: dev.concord.ffi.Value): Any? = when (value) {
    is dev.concord.ffi.Value.NullValue -> null
    is dev.concord.ffi.Value.BoolValue -> value.value
    is dev.concord.ffi.Value.IntValue -> value.value
    is dev.concord.ffi.Value.FloatValue -> value.value
    is dev.concord.ffi.Value.StringValue -> value.value
    is dev.concord.ffi.Value.BytesValue -> value.value
    is dev.concord.ffi.Value.ListValue -> value.items.map(::fromFfi)
    is dev.concord.ffi.Value.MapValue -> value.entries.mapValues { (_, v) -> fromFfi(v) }
}

internal fun FfiDocument.toKotlin() = Document(id, fields.mapValues { (_, v) -> fromFfi(v) }, revision)

internal fun FfiOrigin.toKotlin() = when (this) {
    FfiOrigin.LOCAL -> Origin.LOCAL
    FfiOrigin.REMOTE -> Origin.REMOTE
}

internal fun FfiChange.toKotlin(): Change = when (this) {
    is FfiChange.Document -> Change.DocumentChanged(collection, id, origin.toKotlin())
    is FfiChange.Collection -> Change.CollectionChanged(collection, origin.toKotlin())
    is FfiChange.Lagged -> Change.Lagged
}

internal fun FfiStatus.toKotlin() = Status(
    connection = when (val c = connection) {
        is FfiConnection.Offline -> Connection.Offline
        is FfiConnection.Connecting -> Connection.Connecting
        is FfiConnection.Online -> Connection.Online
        is FfiConnection.Reconnecting -> Connection.Reconnecting(c.retryAtMs.toLong())
    },
    pendingWrites = pendingWrites.toLong(),
    cursor = cursor.toLong(),
    lag = lag.toLong(),
    readOnly = readOnly,
    lastError = lastError,
)
