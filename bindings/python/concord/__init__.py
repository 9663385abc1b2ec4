"""Concord for Python: a local-first database that syncs through a Concord relay.

    import concord

    with concord.open("todos.db", relay=concord.Relay(url, "todos", token)) as db:
        todos = db.collection("todos")
        todos.put("milk", {"title": "Buy milk", "done": False})   # returns once durable
        print(todos.get("milk").fields)
        with db.subscribe() as changes:
            for change in changes:       # blocks until the next change
                print(change)

Values are plain Python: None, bool, int, float, str, bytes, list and dict
(with str keys). Errors are subclasses of `ConcordError` (`Conflict`,
`Closed`, `StoreError`, ...). Every call goes to the Rust SDK through its
uniffi bindings; this module only adapts types.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

from ._native import concord_ffi as _ffi

__version__ = "0.1.0"

__all__ = [
    "open",
    "Relay",
    "Database",
    "Collection",
    "Transaction",
    "Document",
    "Change",
    "Status",
    "Subscription",
    "StatusStream",
    "ConcordError",
    "Conflict",
    "InvalidWrite",
    "StoreError",
    "LoadError",
    "EncodeError",
    "Rejected",
    "Offline",
    "ReadOnly",
    "NoRelay",
    "Closed",
    "InvalidArgument",
    "TokenUnavailable",
]

#: Every error the SDK raises; catch a subclass for one kind.
ConcordError = _ffi.ConcordError
#: A put_if found the document at another revision: read it again and retry.
Conflict = _ffi.ConcordError.Conflict
#: The write breaks the data model's rules (names, sizes, nesting).
InvalidWrite = _ffi.ConcordError.InvalidWrite
#: The local store failed (locked by another process, full, corrupt, IO).
StoreError = _ffi.ConcordError.Store
#: The stored database cannot be loaded.
LoadError = _ffi.ConcordError.Load
#: A value cannot be stored or read as asked.
EncodeError = _ffi.ConcordError.Encode
#: The relay refused local writes for good.
Rejected = _ffi.ConcordError.Rejected
#: Syncing stopped and will not resume by itself (for example a refused token).
Offline = _ffi.ConcordError.Offline
#: The token only allows reading.
ReadOnly = _ffi.ConcordError.ReadOnly
#: The database was opened without a relay.
NoRelay = _ffi.ConcordError.NoRelay
#: The database was closed.
Closed = _ffi.ConcordError.Closed
#: An argument is malformed (for example a revision string).
InvalidArgument = _ffi.ConcordError.InvalidArgument
#: Raise from a token provider when there is no token now.
TokenUnavailable = _ffi.TokenError.Unavailable

#: How long a blocking wait sleeps between checks (so Ctrl-C gets through).
_POLL_MS = 200


def _to_ffi(value: Any) -> "_ffi.Value":
    if value is None:
        return _ffi.Value.NULL_VALUE()
    if isinstance(value, bool):
        return _ffi.Value.BOOL_VALUE(value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise OverflowError(f"{value} does not fit in a signed 64-bit integer")
        return _ffi.Value.INT_VALUE(value)
    if isinstance(value, float):
        return _ffi.Value.FLOAT_VALUE(value)
    if isinstance(value, str):
        return _ffi.Value.STRING_VALUE(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _ffi.Value.BYTES_VALUE(bytes(value))
    if isinstance(value, (list, tuple)):
        return _ffi.Value.LIST_VALUE([_to_ffi(v) for v in value])
    if isinstance(value, dict):
        entries = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"map keys must be str, not {type(k).__name__}")
            entries[k] = _to_ffi(v)
        return _ffi.Value.MAP_VALUE(entries)
    raise TypeError(f"cannot store a {type(value).__name__}")


def _from_ffi(value: "_ffi.Value") -> Any:
    if value.is_null_value():
        return None
    if value.is_list_value():
        return [_from_ffi(v) for v in value.items]
    if value.is_map_value():
        return {k: _from_ffi(v) for k, v in value.entries.items()}
    return value.value


def _fields(fields: Dict[str, Any]) -> Dict[str, "_ffi.Value"]:
    if not isinstance(fields, dict):
        raise TypeError("fields must be a dict of field name to value")
    return {k: _to_ffi(v) for k, v in fields.items()}


@dataclass(frozen=True)
class Relay:
    """Where and how a database syncs."""

    #: The relay's sync endpoint, for example ``ws://127.0.0.1:8787/v1/sync``.
    url: str
    #: The room: every database in the room converges.
    room: str
    #: The access token the app's backend issued for the room.
    token: str
    #: Start syncing as soon as the database opens (else call ``connect``).
    connect: bool = True


@dataclass(frozen=True)
class Document:
    """A document: its id, its fields and its revision (for ``put_if``)."""

    id: str
    fields: Dict[str, Any]
    revision: str


@dataclass(frozen=True)
class Change:
    """Something changed: ``kind`` is "document", "collection" or "lagged"
    (the reader fell far behind and missed changes: re-read what it shows)."""

    kind: str
    collection: Optional[str] = None
    id: Optional[str] = None
    #: "local" or "remote".
    origin: Optional[str] = None


@dataclass(frozen=True)
class Status:
    """A summary of syncing, for status displays."""

    #: "offline", "connecting", "online" or "reconnecting".
    connection: str
    #: Local writes the relay has not acknowledged yet.
    pending_writes: int
    #: The room offset applied and stored here.
    cursor: int
    #: Room operations not applied here yet, as last known.
    lag: int
    #: Whether the token only allows reading.
    read_only: bool
    #: The last problem: a dropped link, a refused token, a store failure.
    last_error: Optional[str]
    #: When reconnecting: the next attempt (Unix ms).
    retry_at_ms: Optional[int] = None


def _document(doc: "_ffi.Document") -> Document:
    return Document(doc.id, {k: _from_ffi(v) for k, v in doc.fields.items()}, doc.revision)


def _origin(origin: "_ffi.Origin") -> str:
    return "remote" if origin == _ffi.Origin.REMOTE else "local"


def _change(change: "_ffi.Change") -> Change:
    if change.is_document():
        return Change("document", change.collection, change.id, _origin(change.origin))
    if change.is_collection():
        return Change("collection", change.collection, None, _origin(change.origin))
    return Change("lagged")


def _status(status: "_ffi.Status") -> Status:
    c = status.connection
    if c.is_reconnecting():
        name, retry = "reconnecting", c.retry_at_ms
    else:
        name, retry = ("online" if c.is_online() else "connecting" if c.is_connecting() else "offline"), None
    return Status(
        name,
        status.pending_writes,
        status.cursor,
        status.lag,
        status.read_only,
        status.last_error,
        retry,
    )


class _Provider(_ffi.TokenProvider):
    """A Python callable as the SDK's token provider. It runs on a thread
    of the SDK's own; anything it raises leaves the database offline with
    the message in ``status().last_error``."""

    def __init__(self, fetch: Callable[[], str]):
        self._fetch = fetch

    def fetch_token(self) -> str:
        try:
            token = self._fetch()
        except _ffi.TokenError:
            raise
        except BaseException as e:  # contained: never crosses as a crash
            raise _ffi.TokenError.Unavailable(f"{type(e).__name__}: {e}") from None
        if not isinstance(token, str):
            raise _ffi.TokenError.Unavailable(f"the token provider returned a {type(token).__name__}, not a str")
        return token


def open(
    path: str,
    relay: Optional[Relay] = None,
    agent: Optional[str] = None,
    token_provider: Optional[Callable[[], str]] = None,
) -> "Database":
    """Opens (creating if needed) the database in the SQLite file at `path`,
    syncing through `relay` if given. `token_provider()` returns a fresh
    token when the current one expires or is refused. Use it as a context
    manager, or call ``close()``."""
    config = None
    if relay is not None:
        config = _ffi.RelayConfig(url=relay.url, room=relay.room, token=relay.token, connect=relay.connect)
    options = _ffi.OpenOptions(relay=config, agent=agent)
    provider = _Provider(token_provider) if token_provider is not None else None
    return Database(_ffi.open_database(str(path), options, provider))


class Database:
    """A local-first database: reads answer from memory at once, writes
    apply at once and return once durable, and it syncs with its relay room
    whenever it can. Thread-safe."""

    def __init__(self, inner: "_ffi.Database"):
        self._db = inner

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def replica_id(self) -> str:
        """This database's replica id (16 hex digits)."""
        return self._db.replica_id()

    def collection(self, name: str) -> "Collection":
        """The collection `name` (created on first write)."""
        return Collection(self._db.collection(name))

    def transaction(self) -> "Transaction":
        """Many writes as one, committed when the ``with`` block ends without
        an exception: all applied, or none if one is refused."""
        return Transaction(self._db)

    def flush(self) -> None:
        """Returns once the relay acknowledged every local write made so far."""
        self._db.flush_blocking()

    def subscribe(self) -> "Subscription":
        """Every change, local or remote, from now on."""
        return Subscription(self._db.subscribe())

    def status(self) -> Status:
        """Where syncing stands now."""
        return _status(self._db.status())

    def status_changes(self) -> "StatusStream":
        """The current status, then every change of it."""
        return StatusStream(self._db.status_changes())

    def connect(self) -> None:
        """Starts syncing (again). Raises NoRelay without a relay."""
        self._db.connect()

    def disconnect(self) -> None:
        """Stops syncing; everything keeps working locally."""
        self._db.disconnect()

    def set_token(self, token: str) -> None:
        """Replaces the access token (restarting syncing if it stopped on a refused one)."""
        self._db.set_token(token)

    def close(self) -> None:
        """Closes the database, returning once everything applied is stored."""
        self._db.shutdown_blocking()


class Transaction:
    """The writes of ``Database.transaction()``, applied together on exit."""

    def __init__(self, db: "_ffi.Database"):
        self._db = db
        self._ops: List["_ffi.WriteOp"] = []

    def put(self, collection: str, id: str, fields: Dict[str, Any]) -> None:
        self._ops.append(_ffi.WriteOp.PUT(collection, id, _fields(fields)))

    def put_if(self, collection: str, id: str, fields: Dict[str, Any], expected: Optional[str]) -> None:
        self._ops.append(_ffi.WriteOp.PUT_IF(collection, id, _fields(fields), expected))

    def unset(self, collection: str, id: str, *names: str) -> None:
        self._ops.append(_ffi.WriteOp.UNSET(collection, id, list(names)))

    def delete(self, collection: str, id: str) -> None:
        self._ops.append(_ffi.WriteOp.DELETE(collection, id))

    def commit(self) -> None:
        """Applies the writes and returns once durable."""
        ops, self._ops = self._ops, []
        self._db.transaction_blocking(ops)

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()


class Collection:
    """A collection of documents, each a dict of fields."""

    def __init__(self, inner: "_ffi.Collection"):
        self._c = inner

    @property
    def name(self) -> str:
        return self._c.name()

    def put(self, id: str, fields: Dict[str, Any]) -> str:
        """Writes fields of document `id` (others keep their values);
        returns the new revision once durable."""
        return self._c.put_blocking(id, _fields(fields))

    def put_if(self, id: str, fields: Dict[str, Any], expected: Optional[str]) -> str:
        """Like put, only if the document is at revision `expected` (None:
        only if it does not exist); else raises Conflict."""
        return self._c.put_if_blocking(id, _fields(fields), expected)

    def unset(self, id: str, *names: str) -> str:
        """Removes fields of document `id`; returns the new revision."""
        return self._c.unset_blocking(id, list(names))

    def delete(self, id: str) -> None:
        """Deletes document `id`."""
        self._c.delete_blocking(id)

    def get(self, id: str) -> Optional[Document]:
        """Document `id`, or None."""
        doc = self._c.get(id)
        return None if doc is None else _document(doc)

    def __getitem__(self, id: str) -> Document:
        doc = self.get(id)
        if doc is None:
            raise KeyError(id)
        return doc

    def __contains__(self, id: str) -> bool:
        return self._c.get(id) is not None

    def get_field(self, id: str, field: str) -> Any:
        """One field of document `id` (None if absent)."""
        value = self._c.get_field(id, field)
        return None if value is None else _from_ffi(value)

    def list(self, prefix: Optional[str] = None, after: Optional[str] = None, limit: Optional[int] = None) -> List[Document]:
        """Documents in id order: ids starting with `prefix`, after id
        `after` (the last of the previous page), at most `limit`."""
        return [_document(d) for d in self._c.list(prefix, after, limit)]

    def __iter__(self) -> Iterator[Document]:
        """Every document, in id order, a page at a time."""
        after = None
        while True:
            page = self.list(after=after, limit=256)
            yield from page
            if len(page) < 256:
                return
            after = page[-1].id

    def subscribe(self) -> "Subscription":
        """Changes to this collection, from now on."""
        return Subscription(self._c.subscribe())

    def subscribe_document(self, id: str) -> "Subscription":
        """Changes to document `id`, from now on."""
        return Subscription(self._c.subscribe_document(id))


class _Pull:
    def __init__(self, inner, convert):
        self._inner = inner
        self._convert = convert

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            item = self._inner.wait_next(_POLL_MS)
            if item is not None:
                return self._convert(item)
            if self._inner.is_ended():
                raise StopIteration

    def next(self, timeout: Optional[float] = None):
        """The next item, or None after `timeout` seconds (None: wait) or at the end."""
        if timeout is None:
            try:
                return self.__next__()
            except StopIteration:
                return None
        item = self._inner.wait_next(max(0, int(timeout * 1000)))
        return None if item is None else self._convert(item)

    def close(self) -> None:
        """Stops; iteration ends."""
        self._inner.cancel()


class Subscription(_Pull):
    """Changes, in order, from the moment it was made. Iterate it (blocks for
    the next change; ends when the database or the subscription closes)."""

    def __init__(self, inner: "_ffi.Subscription"):
        super().__init__(inner, _change)


class StatusStream(_Pull):
    """The current status, then each change of it."""

    def __init__(self, inner: "_ffi.StatusStream"):
        super().__init__(inner, _status)
