import Concord

/// Run it beside `cargo xtask demo`, with the demo's relay URL and a token for room "demo".
func quickstart(relayURL: String, token: String) async throws {
    let relay = Relay(url: relayURL, room: "demo", token: token)
    let db = try ConcordDatabase.open(path: "quickstart.db", relay: relay)
    let todos = db.collection("todos") // the collection the web demo shows
    let changes = todos.changes() // local and remote changes, as an AsyncStream

    // A write applies at once; put returns once it is durable here.
    try await todos.put("milk", ["title": "Buy milk", "done": false, "order": 1.0])
    let rev = todos.get("milk")!.revision
    try await todos.putIf("milk", ["done": true], expected: rev) // optimistic concurrency

    try await db.flush() // until the relay acknowledged every write
    for doc in todos.list() {
        print(doc.id, doc.fields)
    }
    for await change in changes.prefix(1) {
        print(change, db.status()) // connection, pending writes, lag, last error
    }
    await db.close()
}
