package dev.concord

import dev.concord.ffi.ConcordException
import java.io.File
import java.nio.file.Files
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** Hang guard for waits on the network; never a speed assertion. */
private const val GUARD_MS = 60_000L

class ConcordTest {
    private lateinit var relay: TestRelay
    private lateinit var dir: File
    private val open = mutableListOf<ConcordDatabase>()

    @BeforeEach
    fun start() {
        relay = TestRelay()
        dir = Files.createTempDirectory("concord-kotlin").toFile()
    }

    @AfterEach
    fun stop() {
        open.forEach { runCatching { it.close() } }
        relay.close()
        dir.deleteRecursively()
    }

    private suspend fun db(name: String, relay: Relay?, tokenProvider: (() -> String)? = null) =
        Concord.open(File(dir, "$name.db").path, relay, tokenProvider = tokenProvider).also { open += it }

    /** Waits until document [id] of [collection] satisfies [predicate], by its changes. */
    private suspend fun awaitDocument(
        collection: ConcordCollection,
        id: String,
        predicate: (Document?) -> Boolean,
    ): Document? = withTimeout(GUARD_MS) {
        collection.subscribeDocument(id).use { sub ->
            if (predicate(collection[id])) return@withTimeout collection[id]
            sub.changes.first { predicate(collection[id]) }
            collection[id]
        }
    }

    @Test
    fun twoDatabasesConverge(): Unit = runBlocking {
        val a = db("a", relay.relay("converge"))
        val b = db("b", relay.relay("converge"))
        a.collection("todos").put("milk", mapOf("title" to "Buy milk", "done" to false))
        withTimeout(GUARD_MS) { a.flush() }
        // b writes once it has a's write, so its stamp is later and its
        // "done" wins (writes that never saw each other, made in the same
        // millisecond, are concurrent: the replica ids break the tie).
        awaitDocument(b.collection("todos"), "milk") { it != null }
        b.collection("todos").put("milk", mapOf("done" to true))
        b.collection("todos").put("eggs", mapOf("title" to "Eggs", "count" to 12))
        withTimeout(GUARD_MS) {
            a.flush()
            b.flush()
        }
        // Each side ends with both writes to "milk" merged per field.
        for (db in listOf(a, b)) {
            val todos = db.collection("todos")
            val milk = awaitDocument(todos, "milk") { it?.fields?.size == 2 }!!
            assertEquals("Buy milk", milk.fields["title"])
            assertEquals(true, milk.fields["done"])
            val eggs = awaitDocument(todos, "eggs") { it != null }!!
            assertEquals(12L, eggs.fields["count"])
        }
        assertEquals(a.collection("todos").list(), b.collection("todos").list())
    }

    @Test
    fun offlineWritesSyncAfterReconnect(): Unit = runBlocking {
        val a = db("a", relay.relay("offline", connect = false))
        val b = db("b", relay.relay("offline"))
        val notes = a.collection("notes")
        notes.put("n1", mapOf("text" to "written offline"))
        notes.put("n2", mapOf("text" to "also offline"))
        assertEquals(Connection.Offline, a.status().connection)
        assertEquals(2L, a.status().pendingWrites)
        a.connect()
        withTimeout(GUARD_MS) { a.flush() }
        assertEquals(0L, a.status().pendingWrites)
        val n2 = awaitDocument(b.collection("notes"), "n2") { it != null }!!
        assertEquals("also offline", n2.fields["text"])
        assertEquals("written offline", b.collection("notes")["n1"]!!.fields["text"])
    }

    @Test
    fun aFlowCollectsARemoteChange(): Unit = runBlocking {
        val a = db("a", relay.relay("flow"))
        val b = db("b", relay.relay("flow"))
        b.collection("chat").subscribe().use { sub ->
            a.collection("chat").put("m1", mapOf("text" to "hello"))
            val change = withTimeout(GUARD_MS) { sub.changes.first() }
            assertEquals(Change.DocumentChanged("chat", "m1", Origin.REMOTE), change)
        }
        assertEquals("hello", b.collection("chat")["m1"]!!.fields["text"])
        // Status arrives as a flow too, starting with the current one.
        val online = withTimeout(GUARD_MS) { b.statusFlow().first { it.connection == Connection.Online } }
        assertNull(online.lastError)
    }

    @Test
    fun aPutIfConflictIsATypedException(): Unit = runBlocking {
        val a = db("a", null)
        val todos = a.collection("todos")
        val first = todos.put("milk", mapOf("title" to "Buy milk"))
        val second = todos.putIf("milk", mapOf("done" to true), expected = first)
        assertNotEquals(first, second)
        val e = assertThrows<ConflictException> {
            runBlocking { todos.putIf("milk", mapOf("done" to false), expected = first) }
        }
        assertTrue(e.message!!.contains("todos/milk"), e.message)
        assertEquals(true, todos["milk"]!!.fields["done"])
        // Creating only if absent conflicts too; so does the same inside a transaction,
        // which then changes nothing.
        assertThrows<ConflictException> { runBlocking { todos.putIf("milk", mapOf("x" to 1), expected = null) } }
        assertThrows<ConcordException.Conflict> {
            runBlocking {
                a.transaction {
                    put("todos", "bread", mapOf("title" to "Bread"))
                    putIf("todos", "milk", mapOf("done" to false), expected = first)
                }
            }
        }
        assertNull(todos["bread"])
        // A malformed revision is its own error, not a crash.
        assertThrows<ConcordException.InvalidArgument> {
            runBlocking { todos.putIf("milk", mapOf("x" to 1), expected = "nonsense") }
        }
    }

    @Test
    fun valuesRoundTripAsKotlinTypes(): Unit = runBlocking {
        val a = db("a", null)
        val things = a.collection("things")
        val fields = mapOf(
            "null" to null,
            "int" to 42L,
            "float" to 1.5,
            "text" to "héllo",
            "list" to listOf(1L, "two", listOf(3.0)),
            "map" to mapOf("nested" to mapOf("deep" to true)),
        )
        things.put("t", fields + ("bytes" to byteArrayOf(0, 1, 2, -1)))
        val got = things["t"]!!.fields
        assertEquals(fields, got - "bytes")
        assertArrayEquals(byteArrayOf(0, 1, 2, -1), got["bytes"] as ByteArray)
        things.unset("t", "int", "float")
        assertEquals(setOf("null", "text", "list", "map", "bytes"), things["t"]!!.fields.keys)
        things.delete("t")
        assertNull(things["t"])
        assertThrows<IllegalArgumentException> { runBlocking { things.put("x", mapOf("bad" to Any())) } }
        // Paging: ids in order, after the last of the previous page.
        for (i in 1..5) things.put("p$i", mapOf("i" to i))
        val page1 = things.list(prefix = "p", limit = 2).map { it.id }
        val page2 = things.list(prefix = "p", after = page1.last(), limit = 2).map { it.id }
        assertEquals(listOf("p1", "p2"), page1)
        assertEquals(listOf("p3", "p4"), page2)
    }

    @Test
    fun closeAndReopenKeepsEverything(): Unit = runBlocking {
        val path = File(dir, "kept.db").path
        val first = Concord.open(path, relay.relay("reopen", connect = false))
        val replica = first.replicaId
        first.collection("todos").put("milk", mapOf("title" to "Buy milk"))
        first.transaction {
            put("todos", "eggs", mapOf("title" to "Eggs"))
            put("done", "bread", mapOf("title" to "Bread"))
        }
        val closedHandle = first.collection("todos")
        first.close()
        assertThrows<ClosedException> { runBlocking { closedHandle.put("late", mapOf("x" to 1)) } }
        // Reopened online: same replica, same documents, and the writes made
        // offline before the close still reach the other database.
        val again = db("kept", relay.relay("reopen"))
        assertEquals(replica, again.replicaId)
        assertEquals(listOf("eggs", "milk"), again.collection("todos").list().map { it.id })
        assertEquals("Bread", again.collection("done")["bread"]!!.fields["title"])
        withTimeout(GUARD_MS) { again.flush() }
        val other = db("other", relay.relay("reopen"))
        assertEquals("Bread", awaitDocument(other.collection("done"), "bread") { it != null }!!.fields["title"])
    }

    @Test
    fun aSecondOpenOfTheSameFileIsAStoreError(): Unit = runBlocking {
        db("locked", null)
        val e = assertThrows<StoreException> { runBlocking { db("locked", null) } }
        assertTrue(e.message!!.contains("locked"), e.message)
    }

    @Test
    fun aRefusedTokenIsRefreshedThroughTheProvider(): Unit = runBlocking {
        val fresh = relay.token("refresh")
        val asked = AtomicInteger()
        val a = db("a", Relay(relay.url, "refresh", "not-a-token")) { asked.incrementAndGet(); fresh }
        a.collection("todos").put("milk", mapOf("title" to "Buy milk"))
        // (flush would fail fast while syncing is stopped between the refusal and the refresh.)
        withTimeout(GUARD_MS) {
            a.statusFlow().first { it.connection == Connection.Online && it.pendingWrites == 0L }
        }
        assertTrue(asked.get() >= 1)
    }

    @Test
    fun aThrowingTokenProviderIsContained(): Unit = runBlocking {
        val a = db("a", Relay(relay.url, "contained", "not-a-token")) { throw IllegalStateException("backend down") }
        val stopped = withTimeout(GUARD_MS) {
            a.statusFlow().first { it.lastError?.contains("backend down") == true }
        }
        assertNotEquals(Connection.Online, stopped.connection)
        // The database keeps working locally, and a good token resumes syncing.
        a.collection("todos").put("milk", mapOf("title" to "Buy milk"))
        a.setToken(relay.token("contained"))
        withTimeout(GUARD_MS) {
            a.statusFlow().first { it.connection == Connection.Online && it.pendingWrites == 0L }
        }
    }

    @Test
    fun aBlockingTokenProviderDoesNotStallTheDatabase(): Unit = runBlocking {
        val release = CountDownLatch(1)
        val entered = CountDownLatch(1)
        try {
            val a = db("a", Relay(relay.url, "blocked", "not-a-token")) {
                entered.countDown()
                release.await()
                "unused"
            }
            // The provider is now blocked on an SDK thread...
            withTimeout(GUARD_MS) { while (!entered.await(0, TimeUnit.MILLISECONDS)) delay(10) }
            // ...and the database still writes, reads, reports status and closes.
            a.collection("todos").put("milk", mapOf("title" to "Buy milk"))
            assertEquals("Buy milk", a.collection("todos")["milk"]!!.fields["title"])
            assertEquals(1L, a.status().pendingWrites)
            a.close()
        } finally {
            release.countDown()
        }
    }

    @Test
    fun closingASubscriptionEndsAFlowWaitingOnIt(): Unit = runBlocking {
        val a = db("a", null)
        val sub = a.collection("c").subscribe()
        val first = CompletableDeferred<Change>()
        val collector = async(Dispatchers.Default) { sub.changes.collect { first.complete(it) } }
        a.collection("c").put("x", mapOf("n" to 1))
        withTimeout(GUARD_MS) { first.await() }
        // The collector now waits for a next change; closing must end it.
        sub.close()
        withTimeout(GUARD_MS) { collector.await() }
    }
}
