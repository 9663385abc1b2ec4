// concord-watch: prints the todos of a Concord room live, the list once
// caught up with the relay, then one line per change, until Ctrl-C.
//
// It reads the same collection and fields as the browser demo in
// examples/web-todo (collection "todos"; fields "title", "done", "order").
package dev.concord.examples.watch

import dev.concord.Change
import dev.concord.Concord
import dev.concord.ConcordCollection
import dev.concord.ConcordDatabase
import dev.concord.Connection
import dev.concord.Document
import dev.concord.Relay
import dev.concord.ffi.ConcordException
import kotlin.system.exitProcess
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeoutOrNull

private const val COLLECTION = "todos"

private const val USAGE = """usage: concord-watch [--relay URL] [--room ROOM] [--token TOKEN] [--data FILE] [--timeout SECONDS]

Prints the todos of a Concord room live. Each flag falls back to an environment
variable, as with the `concord` CLI: CONCORD_RELAY, CONCORD_ROOM, CONCORD_TOKEN,
CONCORD_DATA (the local database file; default concord-watch-kotlin.db)."""

/** The settings, from flags or the environment. */
internal data class Settings(
    val relay: String,
    val room: String,
    val token: String,
    val data: String,
    val timeoutSeconds: Long,
)

/** Bad command-line input, with the message to print. */
internal class UsageException(message: String) : Exception(message)

/** Parses `--name value` / `--name=value` flags; [env] supplies the fallbacks. */
internal fun parseSettings(args: Array<String>, env: (String) -> String?): Settings {
    val flags = mutableMapOf<String, String>()
    var i = 0
    while (i < args.size) {
        val arg = args[i]
        val (name, inline) = arg.split("=", limit = 2).let { it[0] to it.getOrNull(1) }
        if (name !in setOf("--relay", "--room", "--token", "--data", "--timeout")) {
            throw UsageException("unknown argument `$arg`")
        }
        flags[name] = inline ?: args.getOrNull(++i) ?: throw UsageException("$name needs a value")
        i++
    }
    fun setting(name: String): String =
        flags["--$name"] ?: env("CONCORD_${name.uppercase()}")?.takeIf { it.isNotEmpty() }
            ?: throw UsageException("missing --$name (or CONCORD_${name.uppercase()})")
    val timeout = flags["--timeout"] ?: "10"
    return Settings(
        relay = setting("relay"),
        room = setting("room"),
        token = setting("token"),
        data = flags["--data"] ?: env("CONCORD_DATA") ?: "concord-watch-kotlin.db",
        timeoutSeconds = timeout.toLongOrNull()?.takeIf { it > 0 }
            ?: throw UsageException("--timeout must be a positive number of seconds, got `$timeout`"),
    )
}

/** One todo as a line: its checkbox, title and id. */
internal fun line(doc: Document): String {
    val done = if (doc.fields["done"] == true) "x" else " "
    return "[$done] ${doc.fields["title"] ?: ""}  (${doc.id})"
}

/** Prints the list and remembers what each line showed, in [shown]. */
private fun printList(todos: ConcordCollection, shown: MutableMap<String, String>) {
    // The demo's order: the "order" field, then the id.
    val docs = todos.list().sortedWith(
        compareBy<Document> { (it.fields["order"] as? Number)?.toDouble() ?: 0.0 }.thenBy { it.id },
    )
    shown.clear()
    println("${docs.size} todos:")
    docs.forEach {
        shown[it.id] = line(it)
        println("  ${line(it)}")
    }
}

/**
 * Prints a changed todo unless it still reads as [shown] last had it (a
 * change that arrived while catching up is already in the list).
 */
private fun printChange(todos: ConcordCollection, id: String, shown: MutableMap<String, String>) {
    val now = todos[id]?.let(::line)
    if (now == shown[id]) return
    if (now == null) {
        shown.remove(id)
        println("- deleted ($id)")
    } else {
        shown[id] = now
        println("* $now")
    }
}

/** Waits until the relay sent everything (or the timeout passes); returns the error that stopped syncing. */
private suspend fun caughtUp(db: ConcordDatabase, timeoutSeconds: Long): String? {
    val status = withTimeoutOrNull(timeoutSeconds * 1000) {
        db.statusFlow().first {
            (it.connection == Connection.Online && it.lag == 0L && it.pendingWrites == 0L) ||
                (it.connection == Connection.Offline && it.lastError != null)
        }
    }
    if (status == null) println("(not caught up with the relay after $timeoutSeconds s; showing what is stored here)")
    return status?.takeIf { it.connection == Connection.Offline }?.lastError
}

private fun watch(settings: Settings): Int = runBlocking {
    val db = Concord.open(settings.data, Relay(settings.relay, settings.room, settings.token), agent = "kotlin-watch")
    // Ctrl-C: close the database (everything applied is stored), which ends the subscription.
    Runtime.getRuntime().addShutdownHook(Thread { runCatching { db.close() } })
    val todos = db.collection(COLLECTION)
    // Subscribe before reading, so nothing between the two is missed.
    val changes = todos.subscribe()
    caughtUp(db, settings.timeoutSeconds)?.let {
        System.err.println("error: cannot sync: $it")
        return@runBlocking 2
    }
    val shown = mutableMapOf<String, String>()
    printList(todos, shown)
    val stopped = launch(Dispatchers.Default) {
        val status = db.statusFlow().first { it.connection == Connection.Offline && it.lastError != null }
        System.err.println("error: syncing stopped: ${status.lastError}")
        exitProcess(2)
    }
    changes.changes.collect { change ->
        when (change) {
            is Change.Lagged -> printList(todos, shown)
            is Change.DocumentChanged -> printChange(todos, change.id, shown)
            is Change.CollectionChanged -> {}
        }
    }
    stopped.cancel()
    0
}

fun main(args: Array<String>) {
    val settings = try {
        parseSettings(args) { System.getenv(it) }
    } catch (e: UsageException) {
        System.err.println("error: ${e.message}\n\n$USAGE")
        exitProcess(2)
    }
    val code = try {
        watch(settings)
    } catch (e: ConcordException) {
        System.err.println("error: ${e.message}")
        2
    }
    exitProcess(code)
}
