package dev.concord

import java.io.File
import java.nio.file.Files
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.condition.EnabledIfSystemProperty

/**
 * The cost of one put and one get through the Kotlin binding, to compare
 * with the Rust API (docs/BENCHMARKS.md). Skipped unless asked for:
 * `mvn -f bindings/kotlin/pom.xml -B -q test -Dtest=CallCostBench -Dconcord.bench=true`
 */
class CallCostBench {
    @Test
    @EnabledIfSystemProperty(named = "concord.bench", matches = "true")
    fun putAndGet(): Unit = runBlocking {
        val dir = Files.createTempDirectory("concord-bench").toFile()
        try {
            Concord.open(File(dir, "kt.db").path).use { db ->
                val c = db.collection("bench")
                // Warm up the JIT on both paths first.
                repeat(50) { c.put("w$it", mapOf("n" to it)) }
                repeat(50_000) { c["w1"] }
                val puts = 300
                var start = System.nanoTime()
                for (i in 0 until puts) c.put("d${i % 10}", mapOf("title" to "Buy milk", "done" to false, "n" to i))
                val putNs = (System.nanoTime() - start) / puts
                val gets = 200_000
                start = System.nanoTime()
                for (i in 0 until gets) c["d3"]
                val getNs = (System.nanoTime() - start) / gets
                println("kotlin: put $putNs ns/call, get $getNs ns/call")
            }
        } finally {
            dir.deleteRecursively()
        }
    }
}
