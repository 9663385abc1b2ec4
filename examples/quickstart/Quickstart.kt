import dev.concord.Concord
import dev.concord.Relay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking

fun main(): Unit = runBlocking {
    val relay = Relay(System.getenv("CONCORD_RELAY"), "demo", System.getenv("CONCORD_TOKEN"))
    Concord.open("quickstart.db", relay).use { db ->
        val todos = db.collection("todos") // the collection the web demo shows
        val changes = todos.subscribe() // local and remote changes, as a Flow

        // A write applies at once; put returns once it is durable here.
        todos.put("milk", mapOf("title" to "Buy milk", "done" to false, "order" to 1.0))
        val rev = todos["milk"]!!.revision
        todos.putIf("milk", mapOf("done" to true), rev) // optimistic concurrency

        db.flush() // until the relay acknowledged every write
        todos.list().forEach { println("${it.id} ${it.fields}") }
        println("${changes.changes.first()} ${db.status()}") // connection, pending writes, lag
        changes.close()
    }
}
