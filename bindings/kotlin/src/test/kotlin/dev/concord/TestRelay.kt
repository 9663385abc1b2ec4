package dev.concord

import java.io.BufferedReader
import java.io.Closeable
import java.io.File
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/**
 * A real `concord-relay` (built by `cargo xtask bindings`) on 127.0.0.1 at a
 * port the system picks, with its own data directory and signing key.
 */
class TestRelay : Closeable {
    private val binary = File(
        System.getProperty("concord.relay") ?: error("the concord.relay system property is not set"),
    )
    val dataDir: File = Files.createTempDirectory("concord-relay").toFile()
    private val process: Process
    val url: String

    init {
        require(binary.canExecute()) { "$binary is missing: run `cargo xtask bindings`" }
        process = ProcessBuilder(binary.path, "--listen", "127.0.0.1:0", "--data", dataDir.path)
            .redirectError(ProcessBuilder.Redirect.DISCARD)
            .also { it.environment().remove("RUST_LOG") }
            .start()
        val lines = LinkedBlockingQueue<String>()
        Thread {
            process.inputStream.bufferedReader().use { reader: BufferedReader ->
                reader.lineSequence().forEach { lines.put(it) }
            }
        }.apply { isDaemon = true }.start()
        var addr: String? = null
        while (addr == null) {
            // Hang guard only: the relay prints its address at once.
            val line = lines.poll(30, TimeUnit.SECONDS) ?: error("the relay did not report its address")
            addr = line.removePrefix("concord-relay listening on ").takeIf { it != line }?.trim()
        }
        url = "ws://$addr/v1/sync"
    }

    /** A token for [room], minted by the relay's own `token` command. */
    fun token(room: String, rights: String = "rw", ttl: String = "1h"): String {
        val minting = ProcessBuilder(
            binary.path, "token", "--room", room, "--rights", rights, "--ttl", ttl, "--data", dataDir.path,
        ).redirectError(ProcessBuilder.Redirect.INHERIT).start()
        val token = minting.inputStream.bufferedReader().readText().trim()
        check(minting.waitFor() == 0) { "concord-relay token failed" }
        return token
    }

    fun relay(room: String, connect: Boolean = true) = Relay(url, room, token(room), connect)

    override fun close() {
        process.destroy()
        process.waitFor(10, TimeUnit.SECONDS)
        process.destroyForcibly()
        dataDir.deleteRecursively()
    }
}
