// The idiomatic Swift layer over uniffi's generated ConcordFFI module:
// async functions, AsyncStream, Codable-friendly values. Every call goes to
// the Rust SDK; nothing here re-implements its logic.
import ConcordFFI
import Foundation

/// Errors the SDK throws (`ConcordError.Conflict`, `.Closed`, `.Store`, ...).
public typealias ConcordError = ConcordFFI.ConcordError
/// Where syncing stands: `status.connection`, `pendingWrites`, `lastError`, ...
public typealias Status = ConcordFFI.Status
/// The state of the link to the relay.
public typealias Connection = ConcordFFI.Connection
/// Something changed: a document, a collection, or `.lagged`.
public typealias Change = ConcordFFI.Change
/// Local or remote.
public typealias Origin = ConcordFFI.Origin
/// Thrown by a token provider when it has no token now.
public typealias TokenError = ConcordFFI.TokenError

/// A stored value: JSON-like, plus bytes; integers and floats stay distinct.
/// `Codable` (as the JSON it resembles; bytes as base64) and buildable from literals.
public enum ConcordValue: Equatable, Hashable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case bytes(Data)
    case list([ConcordValue])
    case map([String: ConcordValue])

    init(_ ffi: Value) {
        switch ffi {
        case .nullValue: self = .null
        case let .boolValue(value): self = .bool(value)
        case let .intValue(value): self = .int(value)
        case let .floatValue(value): self = .double(value)
        case let .stringValue(value): self = .string(value)
        case let .bytesValue(value): self = .bytes(value)
        case let .listValue(items): self = .list(items.map(ConcordValue.init))
        case let .mapValue(entries): self = .map(entries.mapValues(ConcordValue.init))
        }
    }

    var ffi: Value {
        switch self {
        case .null: return .nullValue
        case let .bool(value): return .boolValue(value: value)
        case let .int(value): return .intValue(value: value)
        case let .double(value): return .floatValue(value: value)
        case let .string(value): return .stringValue(value: value)
        case let .bytes(value): return .bytesValue(value: value)
        case let .list(items): return .listValue(items: items.map(\.ffi))
        case let .map(entries): return .mapValue(entries: entries.mapValues(\.ffi))
        }
    }
}

extension ConcordValue: Codable {
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let v = try? c.decode(Bool.self) { self = .bool(v) }
        else if let v = try? c.decode(Int64.self) { self = .int(v) }
        else if let v = try? c.decode(Double.self) { self = .double(v) }
        else if let v = try? c.decode(String.self) { self = .string(v) }
        else if let v = try? c.decode([ConcordValue].self) { self = .list(v) }
        else { self = .map(try c.decode([String: ConcordValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case let .bool(v): try c.encode(v)
        case let .int(v): try c.encode(v)
        case let .double(v): try c.encode(v)
        case let .string(v): try c.encode(v)
        case let .bytes(v): try c.encode(v)
        case let .list(v): try c.encode(v)
        case let .map(v): try c.encode(v)
        }
    }
}

extension ConcordValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral
{
    public init(nilLiteral _: ()) { self = .null }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: ConcordValue...) { self = .list(elements) }
    public init(dictionaryLiteral elements: (String, ConcordValue)...) {
        self = .map(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

/// A document: its id, fields and revision (for `putIf`).
public struct Document: Equatable, Sendable {
    public let id: String
    public let fields: [String: ConcordValue]
    public let revision: String

    init(_ ffi: ConcordFFI.Document) {
        id = ffi.id
        fields = ffi.fields.mapValues(ConcordValue.init)
        revision = ffi.revision
    }

    /// The fields decoded as `T` (through their JSON form).
    public func decode<T: Decodable>(_: T.Type = T.self) throws -> T {
        try JSONDecoder().decode(T.self, from: JSONEncoder().encode(fields))
    }
}

/// Where and how a database syncs.
public struct Relay: Sendable {
    public var url: String
    public var room: String
    public var token: String
    /// Start syncing when the database opens (else call `connect()`).
    public var connect: Bool

    public init(url: String, room: String, token: String, connect: Bool = true) {
        self.url = url
        self.room = room
        self.token = token
        self.connect = connect
    }
}

private final class Provider: TokenProvider, @unchecked Sendable {
    let fetch: @Sendable () throws -> String
    init(_ fetch: @escaping @Sendable () throws -> String) { self.fetch = fetch }

    func fetchToken() throws -> String {
        do { return try fetch() }
        catch let error as TokenError { throw error }
        catch { throw TokenError.Unavailable(reason: "\(error)") }
    }
}

private func fields(_ values: [String: ConcordValue]) -> [String: Value] { values.mapValues(\.ffi) }

private func fields<T: Encodable>(of value: T) throws -> [String: Value] {
    let json = try JSONEncoder().encode(value)
    let tree = try JSONDecoder().decode(ConcordValue.self, from: json)
    guard case let .map(entries) = tree else {
        throw ConcordError.Encode(message: "a document must encode to a map of fields")
    }
    return fields(entries)
}

/// Streams a pulled subscription; made eagerly, so nothing is missed
/// between creating the stream and iterating it.
private func stream<T>(_ next: @escaping @Sendable () async -> T?, close: @escaping @Sendable () -> Void) -> AsyncStream<T> {
    AsyncStream { continuation in
        let task = Task {
            while let item = await next() { continuation.yield(item) }
            continuation.finish()
        }
        continuation.onTermination = { _ in
            close()
            task.cancel()
        }
    }
}

/// A local-first database: reads answer from memory at once, writes apply
/// at once and their async functions return once durable, and it syncs
/// with its relay room whenever it can.
public final class ConcordDatabase: @unchecked Sendable {
    let db: ConcordFFI.Database

    /// Opens (creating if needed) the database in the SQLite file at `path`.
    /// `tokenProvider` runs on a thread of the SDK's own when the token
    /// expires or is refused; a throwing one leaves the database offline
    /// with the error in `status().lastError`.
    public static func open(
        path: String, relay: Relay? = nil, agent: String? = nil,
        tokenProvider: (@Sendable () throws -> String)? = nil
    ) throws -> ConcordDatabase {
        let config = relay.map { RelayConfig(url: $0.url, room: $0.room, token: $0.token, connect: $0.connect) }
        let db = try openDatabase(
            path: path, options: OpenOptions(relay: config, agent: agent),
            tokenProvider: tokenProvider.map { Provider($0) })
        return ConcordDatabase(db: db)
    }

    init(db: ConcordFFI.Database) { self.db = db }

    /// This database's replica id (16 hex digits).
    public var replicaId: String { db.replicaId() }

    /// The collection `name` (created on first write).
    public func collection(_ name: String) -> ConcordCollection { ConcordCollection(db.collection(name: name)) }

    /// Many writes as one: all applied, or none if one is refused.
    public func transaction(_ build: (inout [WriteOp]) throws -> Void) async throws {
        var ops: [WriteOp] = []
        try build(&ops)
        try await db.transaction(ops: ops)
    }

    /// Returns once the relay acknowledged every local write made so far.
    public func flush() async throws { try await db.flush() }

    /// Every change, local or remote, from now on.
    public func changes() -> AsyncStream<Change> {
        let sub = db.subscribe()
        return stream({ await sub.next() }, close: { sub.cancel() })
    }

    /// Where syncing stands now.
    public func status() -> Status { db.status() }

    /// The current status, then each change of it.
    public func statusUpdates() -> AsyncStream<Status> {
        let s = db.statusChanges()
        return stream({ await s.next() }, close: { s.cancel() })
    }

    public func connect() throws { try db.connect() }
    public func disconnect() { db.disconnect() }
    public func setToken(_ token: String) { db.setToken(token: token) }

    /// Closes the database, returning once everything applied is stored.
    public func close() async { await db.shutdown() }
}

extension WriteOp {
    /// A put in a transaction.
    public static func put(_ collection: String, _ id: String, _ values: [String: ConcordValue]) -> WriteOp {
        .put(collection: collection, id: id, fields: fields(values))
    }

    /// A conditional put in a transaction.
    public static func putIf(_ collection: String, _ id: String, _ values: [String: ConcordValue], expected: String?) -> WriteOp {
        .putIf(collection: collection, id: id, fields: fields(values), expected: expected)
    }
}

/// A collection of documents.
public final class ConcordCollection: @unchecked Sendable {
    let inner: ConcordFFI.Collection
    init(_ inner: ConcordFFI.Collection) { self.inner = inner }

    public var name: String { inner.name() }

    /// Writes fields of document `id`; returns the new revision once durable.
    @discardableResult
    public func put(_ id: String, _ values: [String: ConcordValue]) async throws -> String {
        try await inner.put(id: id, fields: fields(values))
    }

    /// Writes every field of an `Encodable` value.
    @discardableResult
    public func put<T: Encodable>(_ id: String, encoding value: T) async throws -> String {
        try await inner.put(id: id, fields: fields(of: value))
    }

    /// Like `put`, only if the document is at `expected` (nil: absent); else throws `.Conflict`.
    @discardableResult
    public func putIf(_ id: String, _ values: [String: ConcordValue], expected: String?) async throws -> String {
        try await inner.putIf(id: id, fields: fields(values), expected: expected)
    }

    @discardableResult
    public func unset(_ id: String, _ names: [String]) async throws -> String {
        try await inner.unset(id: id, names: names)
    }

    public func delete(_ id: String) async throws { try await inner.delete(id: id) }

    /// Document `id`, if it exists.
    public func get(_ id: String) -> Document? { inner.get(id: id).map(Document.init) }

    /// Document `id` decoded as `T`, if it exists.
    public func get<T: Decodable>(_ id: String, as _: T.Type) throws -> T? { try get(id)?.decode(T.self) }

    /// Documents in id order, filtered and paged.
    public func list(prefix: String? = nil, after: String? = nil, limit: UInt32? = nil) -> [Document] {
        inner.list(prefix: prefix, after: after, limit: limit).map(Document.init)
    }

    /// Changes to this collection, from now on.
    public func changes() -> AsyncStream<Change> {
        let sub = inner.subscribe()
        return stream({ await sub.next() }, close: { sub.cancel() })
    }

    /// Changes to document `id`, from now on.
    public func changes(of id: String) -> AsyncStream<Change> {
        let sub = inner.subscribeDocument(id: id)
        return stream({ await sub.next() }, close: { sub.cancel() })
    }
}
