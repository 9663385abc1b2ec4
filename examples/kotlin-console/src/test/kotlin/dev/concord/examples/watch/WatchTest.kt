package dev.concord.examples.watch

import dev.concord.Concord
import dev.concord.Relay
import java.io.File
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import dev.concord.Connection
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** Hang guard for waits on the network or the program; never a speed assertion. */
private const val GUARD_S = 60L

/** A real `concord-relay` (the release build) on 127.0.0.1, at a port the system picks. */
private class RelayProcess : AutoCloseable {
    private val binary = File(System.getProperty("concord.relay") ?: error("concord.relay is not set"))
    val dataDir: File = Files.createTempDirectory("concord-relay").toFile()
    private val process: Process
    val url: String

    init {
        require(binary.canExecute()) { "$binary is missing: run `cargo xtask bindings`" }
        process = ProcessBuilder(binary.path, "--listen", "127.0.0.1:0", "--data", dataDir.path)
            .redirectError(ProcessBuilder.Redirect.DISCARD)
            .also { pb -> pb.environment().keys.removeIf { it == "RUST_LOG" || it.startsWith("CONCORD_") } }
            .start()
        val first = Lines(process).next("concord-relay listening on ")
        url = "ws://${first.removePrefix("concord-relay listening on ").trim()}/v1/sync"
    }

    /** A token for [room], minted by the relay's own `token` command. */
    fun token(room: String): String {
        val minting = ProcessBuilder(binary.path, "token", "--room", room, "--ttl", "1h", "--data", dataDir.path)
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .start()
        val token = minting.inputStream.bufferedReader().readText().trim()
        check(minting.waitFor() == 0) { "concord-relay token failed" }
        return token
    }

    override fun close() {
        process.destroy()
        process.waitFor(10, TimeUnit.SECONDS)
        process.destroyForcibly()
        dataDir.deleteRecursively()
    }
}

/** A process's stdout read on a thread, so a test waits for a line with a hang guard only. */
private class Lines(process: Process) {
    private val queue = LinkedBlockingQueue<Any>()
    val seen = mutableListOf<String>()

    init {
        Thread {
            process.inputStream.bufferedReader().forEachLine { queue.put(it) }
            queue.put(Unit)
        }.apply { isDaemon = true }.start()
    }

    /** The next line containing [text]; fails if the process ends or stays silent first. */
    fun next(text: String): String {
        while (true) {
            val line = queue.poll(GUARD_S, TimeUnit.SECONDS) ?: error("no line with `$text` within $GUARD_S s; saw $seen")
            if (line !is String) error("the process ended before printing `$text`; saw $seen")
            seen += line
            if (text in line) return line
        }
    }
}

class WatchTest {
    private val relay = RelayProcess()
    private val dir: File = Files.createTempDirectory("concord-watch").toFile()

    @AfterEach
    fun cleanUp() {
        relay.close()
        dir.deleteRecursively()
    }

    /** Starts concord-watch in a JVM of its own, configured through the environment like the CLI. */
    private fun startWatch(token: String): Process {
        val java = File(System.getProperty("java.home"), "bin/java").path
        val pb = ProcessBuilder(
            java, "-cp", System.getProperty("java.class.path"), "dev.concord.examples.watch.MainKt",
            "--data", File(dir, "watch.db").path,
        ).redirectError(ProcessBuilder.Redirect.INHERIT)
        pb.environment() += mapOf("CONCORD_RELAY" to relay.url, "CONCORD_ROOM" to "demo", "CONCORD_TOKEN" to token)
        return pb.start()
    }

    @Test
    fun `prints the list then each change`() = runBlocking {
        // A todo as the web demo writes it (collection "todos"; title, done, order).
        Concord.open(File(dir, "browser.db").path, Relay(relay.url, "demo", relay.token("demo"))).use { browser ->
            val todos = browser.collection("todos")
            todos.put("t1", mapOf("title" to "Buy milk", "done" to false, "order" to 1.0))
            browser.flush()

            val watch = startWatch(relay.token("demo"))
            try {
                val out = Lines(watch)
                out.next("1 todos:")
                assertEquals("  [ ] Buy milk  (t1)", out.next("Buy milk"))
                todos.put("t2", mapOf("title" to "Walk the dog", "done" to false, "order" to 2.0))
                assertEquals("* [ ] Walk the dog  (t2)", out.next("Walk the dog"))
                todos.put("t1", mapOf("done" to true))
                assertEquals("* [x] Buy milk  (t1)", out.next("Buy milk"))
                todos.delete("t2")
                assertEquals("- deleted (t2)", out.next("deleted"))
            } finally {
                // SIGTERM runs the same shutdown hook as Ctrl-C: the database closes.
                watch.toHandle().destroy()
                assertTrue(watch.waitFor(GUARD_S, TimeUnit.SECONDS), "concord-watch did not stop")
            }
        }
    }

    @Test
    fun `the Kotlin quick start runs and syncs`() = runBlocking {
        // The README's Quickstart.kt, compiled into this module's tests, run as its own program.
        val java = File(System.getProperty("java.home"), "bin/java").path
        val pb = ProcessBuilder(java, "-cp", System.getProperty("java.class.path"), "QuickstartKt")
            .directory(dir)
            .redirectErrorStream(true)
        pb.environment() += mapOf("CONCORD_RELAY" to relay.url, "CONCORD_TOKEN" to relay.token("demo"))
        val quickstart = pb.start()
        val out = Lines(quickstart)
        // The list line: "milk" and its fields (in whatever order the map has).
        val milk = out.next("milk {")
        assertTrue("title=Buy milk" in milk && "done=true" in milk, milk)
        assertTrue(quickstart.waitFor(GUARD_S, TimeUnit.SECONDS), "the quick start did not finish")
        assertEquals(0, quickstart.exitValue(), "the quick start failed: ${out.seen}")

        // What it wrote reached the room: another replica reads it from the relay.
        Concord.open(File(dir, "other.db").path, Relay(relay.url, "demo", relay.token("demo"))).use { other ->
            withTimeout(GUARD_S * 1000) {
                other.statusFlow().first { it.connection == Connection.Online && it.lag == 0L }
            }
            assertEquals(true, other.collection("todos").getField("milk", "done"))
        }
    }

    @Test
    fun `a refused token is an error`() {
        val watch = startWatch("not-a-token")
        assertTrue(watch.waitFor(GUARD_S, TimeUnit.SECONDS), "concord-watch did not stop")
        assertEquals(2, watch.exitValue())
    }

    @Test
    fun `settings come from flags or the environment`() {
        val env = mapOf("CONCORD_RELAY" to "ws://r", "CONCORD_ROOM" to "demo", "CONCORD_TOKEN" to "t")
        val settings = parseSettings(arrayOf("--room=other", "--data", "x.db"), env::get)
        assertEquals(Settings("ws://r", "other", "t", "x.db", 10), settings)
        val missing = assertThrows(UsageException::class.java) { parseSettings(arrayOf(), emptyMap<String, String>()::get) }
        assertEquals("missing --relay (or CONCORD_RELAY)", missing.message)
        assertThrows(UsageException::class.java) { parseSettings(arrayOf("--timeout", "0"), env::get) }
        assertThrows(UsageException::class.java) { parseSettings(arrayOf("--verbose"), env::get) }
    }
}
