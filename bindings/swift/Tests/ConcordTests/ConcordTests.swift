// The Kotlin suite's scenarios in Swift, against a real concord-relay on
// the host's loopback (the chroot shares the host's network).
import Concord
import Foundation
import XCTest

/// Hang guard for waits on the network; never a speed assertion.
let guardSeconds: UInt64 = 60

struct HangGuard: Error {}

/// Runs `body`, failing if it has not finished within the hang guard.
func guarded<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(nanoseconds: guardSeconds * 1_000_000_000)
            throw HangGuard()
        }
        let first = try await group.next()!
        group.cancelAll()
        return first
    }
}

/// A real concord-relay (staged at /pkg/bin by `cargo xtask swift-test`).
final class TestRelay {
    let binary: String
    let data: URL
    let process = Process()
    var url = ""

    init() throws {
        binary = ProcessInfo.processInfo.environment["CONCORD_RELAY"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("bin/concord-relay").path
        data = FileManager.default.temporaryDirectory.appendingPathComponent("relay-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--listen", "127.0.0.1:0", "--data", data.path]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var buffer = Data()
        while true {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { throw HangGuard() }
            buffer.append(chunk)
            let text = String(decoding: buffer, as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("concord-relay listening on ") }) {
                url = "ws://\(line.dropFirst("concord-relay listening on ".count).trimmingCharacters(in: .whitespaces))/v1/sync"
                break
            }
        }
    }

    func token(_ room: String) throws -> String {
        let minting = Process()
        minting.executableURL = URL(fileURLWithPath: binary)
        minting.arguments = ["token", "--room", room, "--rights", "rw", "--ttl", "1h", "--data", data.path]
        let out = Pipe()
        minting.standardOutput = out
        try minting.run()
        let token = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        minting.waitUntilExit()
        return token.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func relay(_ room: String, connect: Bool = true) throws -> Relay {
        Relay(url: url, room: room, token: try token(room), connect: connect)
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: data)
    }
}

/// Waits, by its changes, until document `id` satisfies `predicate`.
func awaitDocument(_ c: ConcordCollection, _ id: String, _ predicate: @escaping @Sendable (Document?) -> Bool) async throws -> Document? {
    let changes = c.changes(of: id)
    if predicate(c.get(id)) { return c.get(id) }
    return try await guarded {
        for await _ in changes where predicate(c.get(id)) { return c.get(id) }
        return nil
    }
}

func awaitStatus(_ db: ConcordDatabase, _ predicate: @escaping @Sendable (Status) -> Bool) async throws -> Status? {
    let updates = db.statusUpdates()
    return try await guarded {
        for await s in updates where predicate(s) { return s }
        return nil
    }
}

func isSynced(_ s: Status) -> Bool {
    if case .online = s.connection { return s.pendingWrites == 0 }
    return false
}

final class ConcordTests: XCTestCase {
    var relay: TestRelay!
    var dir: URL!
    var opened: [ConcordDatabase] = []

    override func setUpWithError() throws {
        relay = try TestRelay()
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("concord-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() async throws {
        for db in opened { await db.close() }
        relay.stop()
        try? FileManager.default.removeItem(at: dir)
    }

    func open(_ name: String, _ relay: Relay?, tokenProvider: (@Sendable () throws -> String)? = nil) throws -> ConcordDatabase {
        let db = try ConcordDatabase.open(path: dir.appendingPathComponent("\(name).db").path, relay: relay, tokenProvider: tokenProvider)
        opened.append(db)
        return db
    }

    func testTwoDatabasesConverge() async throws {
        let a = try open("a", relay.relay("converge"))
        let b = try open("b", relay.relay("converge"))
        try await a.collection("todos").put("milk", ["title": "Buy milk", "done": false])
        try await guarded { try await a.flush() }
        // b writes once it has a's write, so its stamp is later and its
        // "done" wins (writes that never saw each other, made in the same
        // millisecond, are concurrent: the replica ids break the tie).
        _ = try await awaitDocument(b.collection("todos"), "milk") { $0 != nil }
        try await b.collection("todos").put("milk", ["done": true])
        try await b.collection("todos").put("eggs", ["title": "Eggs", "count": 12])
        try await guarded { try await a.flush(); try await b.flush() }
        for db in [a, b] {
            let todos = db.collection("todos")
            let milk = try await awaitDocument(todos, "milk") { $0?.fields.count == 2 }
            XCTAssertEqual(milk?.fields, ["title": "Buy milk", "done": true])
            let eggs = try await awaitDocument(todos, "eggs") { $0 != nil }
            XCTAssertEqual(eggs?.fields["count"], .int(12))
        }
        XCTAssertEqual(a.collection("todos").list(), b.collection("todos").list())
    }

    func testOfflineWritesSyncAfterReconnect() async throws {
        let a = try open("a", relay.relay("offline", connect: false))
        let b = try open("b", relay.relay("offline"))
        try await a.collection("notes").put("n1", ["text": "written offline"])
        try await a.collection("notes").put("n2", ["text": "also offline"])
        XCTAssertEqual(a.status().connection, .offline)
        XCTAssertEqual(a.status().pendingWrites, 2)
        try a.connect()
        try await guarded { try await a.flush() }
        XCTAssertEqual(a.status().pendingWrites, 0)
        let n2 = try await awaitDocument(b.collection("notes"), "n2") { $0 != nil }
        XCTAssertEqual(n2?.fields["text"], "also offline")
        XCTAssertEqual(b.collection("notes").get("n1")?.fields["text"], "written offline")
    }

    func testAnAsyncStreamDeliversARemoteChange() async throws {
        let a = try open("a", relay.relay("stream"))
        let b = try open("b", relay.relay("stream"))
        let changes = b.collection("chat").changes()
        try await a.collection("chat").put("m1", ["text": "hello"])
        let change = try await guarded { () -> Change? in
            for await change in changes { return change }
            return nil
        }
        XCTAssertEqual(change, .document(collection: "chat", id: "m1", origin: .remote))
        XCTAssertEqual(b.collection("chat").get("m1")?.fields["text"], "hello")
    }

    func testAPutIfConflictIsATypedError() async throws {
        let a = try open("a", nil)
        let todos = a.collection("todos")
        let first = try await todos.put("milk", ["title": "Buy milk"])
        let second = try await todos.putIf("milk", ["done": true], expected: first)
        XCTAssertNotEqual(first, second)
        do {
            try await todos.putIf("milk", ["done": false], expected: first)
            XCTFail("a stale revision must conflict")
        } catch let ConcordError.Conflict(message) {
            XCTAssertTrue(message.contains("todos/milk"), message)
        }
        XCTAssertEqual(todos.get("milk")?.fields["done"], true)
        do {
            try await a.transaction { ops in
                ops.append(.put("todos", "bread", ["title": "Bread"]))
                ops.append(.putIf("todos", "milk", ["done": false], expected: first))
            }
            XCTFail("the transaction must conflict")
        } catch ConcordError.Conflict {}
        XCTAssertNil(todos.get("bread"))
    }

    func testValuesAreCodable() async throws {
        struct Todo: Codable, Equatable { var title: String; var done: Bool; var tags: [String]; var weight: Double }
        let a = try open("a", nil)
        let todos = a.collection("todos")
        let todo = Todo(title: "Buy milk", done: false, tags: ["shop"], weight: 1.5)
        try await todos.put("milk", encoding: todo)
        XCTAssertEqual(try todos.get("milk", as: Todo.self), todo)
        try await todos.put("raw", ["bytes": .bytes(Data([0, 1, 255])), "nested": ["deep": [1, 2.5, nil]]])
        XCTAssertEqual(todos.get("raw")?.fields["bytes"], .bytes(Data([0, 1, 255])))
        XCTAssertEqual(todos.get("raw")?.fields["nested"], ["deep": [1, 2.5, nil]])
        try await todos.unset("milk", ["tags"])
        XCTAssertNil(todos.get("milk")?.fields["tags"])
        try await todos.delete("raw")
        XCTAssertNil(todos.get("raw"))
    }

    func testCloseAndReopenKeepsEverything() async throws {
        let path = dir.appendingPathComponent("kept.db").path
        let first = try ConcordDatabase.open(path: path, relay: relay.relay("reopen", connect: false))
        let replica = first.replicaId
        try await first.collection("todos").put("milk", ["title": "Buy milk"])
        try await first.transaction { ops in ops.append(.put("done", "bread", ["title": "Bread"])) }
        let stale = first.collection("todos")
        await first.close()
        do {
            try await stale.put("late", ["x": 1])
            XCTFail("a closed database must refuse writes")
        } catch ConcordError.Closed {}
        let again = try open("kept", relay.relay("reopen"))
        XCTAssertEqual(again.replicaId, replica)
        XCTAssertEqual(again.collection("todos").get("milk")?.fields["title"], "Buy milk")
        try await guarded { try await again.flush() }
        let other = try open("other", relay.relay("reopen"))
        let bread = try await awaitDocument(other.collection("done"), "bread") { $0 != nil }
        XCTAssertEqual(bread?.fields["title"], "Bread")
    }

    func testAThrowingTokenProviderIsContainedAndSetTokenResumes() async throws {
        struct Down: Error {}
        let a = try open("a", Relay(url: relay.url, room: "contained", token: "not-a-token")) { throw Down() }
        let stopped = try await awaitStatus(a) { $0.lastError?.contains("Down") == true }
        XCTAssertNotNil(stopped)
        try await a.collection("todos").put("milk", ["title": "Buy milk"])
        a.setToken(try relay.token("contained"))
        let synced = try await awaitStatus(a, isSynced)
        XCTAssertNotNil(synced)
    }
}
