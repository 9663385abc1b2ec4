"""The Kotlin suite's scenarios, in Python, against a real relay."""

import threading

import pytest

import concord
from conftest import GUARD_S


def wait_for(stream, predicate):
    """The first item of `stream` that satisfies `predicate` (hang-guarded)."""
    deadline = threading.Event()
    timer = threading.Timer(GUARD_S, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            item = stream.next(timeout=0.2)
            if item is not None and predicate(item):
                return item
            if item is None and stream._inner.is_ended():
                raise AssertionError("the stream ended")
        raise AssertionError("hang guard: nothing matched")
    finally:
        timer.cancel()


def await_document(collection, id, predicate):
    with collection.subscribe_document(id) as changes:
        if predicate(collection.get(id)):
            return collection.get(id)
        wait_for(changes, lambda _: predicate(collection.get(id)))
        return collection.get(id)


def await_synced(db):
    with db.status_changes() as statuses:
        return wait_for(statuses, lambda s: s.connection == "online" and s.pending_writes == 0)


def test_two_databases_converge(relay, tmp, opened):
    a = opened(str(tmp / "a.db"), relay=relay.relay("converge"))
    b = opened(str(tmp / "b.db"), relay=relay.relay("converge"))
    a.collection("todos").put("milk", {"title": "Buy milk", "done": False})
    a.flush()
    # b writes once it has a's write, so its stamp is later and its "done"
    # wins. (Writes made without seeing each other in the same millisecond
    # are concurrent: the replica ids break the tie, either way.)
    await_document(b.collection("todos"), "milk", lambda d: d is not None)
    b.collection("todos").put("milk", {"done": True})
    b.collection("todos").put("eggs", {"title": "Eggs", "count": 12})
    a.flush()
    b.flush()
    for db in (a, b):
        todos = db.collection("todos")
        milk = await_document(todos, "milk", lambda d: d is not None and len(d.fields) == 2)
        assert milk.fields == {"title": "Buy milk", "done": True}
        assert await_document(todos, "eggs", lambda d: d is not None).fields["count"] == 12
    assert a.collection("todos").list() == b.collection("todos").list()


def test_offline_writes_sync_after_reconnect(relay, tmp, opened):
    a = opened(str(tmp / "a.db"), relay=relay.relay("offline", connect=False))
    b = opened(str(tmp / "b.db"), relay=relay.relay("offline"))
    notes = a.collection("notes")
    notes.put("n1", {"text": "written offline"})
    notes.put("n2", {"text": "also offline"})
    status = a.status()
    assert status.connection == "offline" and status.pending_writes == 2
    a.connect()
    a.flush()
    assert a.status().pending_writes == 0
    assert await_document(b.collection("notes"), "n2", lambda d: d is not None).fields["text"] == "also offline"
    assert b.collection("notes")["n1"].fields["text"] == "written offline"


def test_an_iterator_collects_a_remote_change(relay, tmp, opened):
    a = opened(str(tmp / "a.db"), relay=relay.relay("iter"))
    b = opened(str(tmp / "b.db"), relay=relay.relay("iter"))
    with b.collection("chat").subscribe() as changes:
        a.collection("chat").put("m1", {"text": "hello"})
        change = wait_for(changes, lambda c: True)
    assert change == concord.Change("document", "chat", "m1", "remote")
    assert b.collection("chat")["m1"].fields["text"] == "hello"
    # A closed subscription ends its iteration.
    sub = b.subscribe()
    sub.close()
    assert list(sub) == []


def test_a_put_if_conflict_is_an_exception_class(tmp, opened):
    db = opened(str(tmp / "a.db"))
    todos = db.collection("todos")
    first = todos.put("milk", {"title": "Buy milk"})
    second = todos.put_if("milk", {"done": True}, expected=first)
    assert first != second
    with pytest.raises(concord.Conflict) as e:
        todos.put_if("milk", {"done": False}, expected=first)
    assert "todos/milk" in str(e.value)
    assert isinstance(e.value, concord.ConcordError)
    assert todos["milk"].fields["done"] is True
    with pytest.raises(concord.Conflict):
        todos.put_if("milk", {"x": 1}, expected=None)
    # Inside a transaction it refuses the whole transaction.
    with pytest.raises(concord.Conflict):
        with db.transaction() as tx:
            tx.put("todos", "bread", {"title": "Bread"})
            tx.put_if("todos", "milk", {"done": False}, expected=first)
    assert todos.get("bread") is None
    with pytest.raises(concord.InvalidArgument):
        todos.put_if("milk", {"x": 1}, expected="nonsense")


def test_values_round_trip_as_python_types(tmp, opened):
    db = opened(str(tmp / "a.db"))
    things = db.collection("things")
    fields = {
        "null": None,
        "int": 42,
        "big": -(2**63),
        "float": 1.5,
        "text": "héllo",
        "bytes": b"\x00\x01\xff",
        "list": [1, "two", [3.0]],
        "map": {"nested": {"deep": True}},
    }
    things.put("t", fields)
    got = things["t"].fields
    assert got == fields
    # 1 == 1.0 in Python: check the types too, integers must stay integers.
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in fields.items()}
    assert [type(v) for v in got["list"]] == [int, str, list]
    assert isinstance(things.get_field("t", "float"), float)
    things.unset("t", "int", "float")
    assert set(things["t"].fields) == {"null", "big", "text", "bytes", "list", "map"}
    things.delete("t")
    assert "t" not in things
    with pytest.raises(TypeError):
        things.put("x", {"bad": object()})
    with pytest.raises(TypeError):
        things.put("x", {"bad": {1: "int key"}})
    with pytest.raises(OverflowError):
        things.put("x", {"huge": 2**64})
    for i in range(1, 6):
        things.put(f"p{i}", {"i": i})
    page1 = [d.id for d in things.list(prefix="p", limit=2)]
    page2 = [d.id for d in things.list(prefix="p", after=page1[-1], limit=2)]
    assert (page1, page2) == (["p1", "p2"], ["p3", "p4"])
    assert [d.id for d in things] == ["p1", "p2", "p3", "p4", "p5"]


def test_close_and_reopen_keeps_everything(relay, tmp, opened):
    path = str(tmp / "kept.db")
    with concord.open(path, relay=relay.relay("reopen", connect=False)) as first:
        replica = first.replica_id
        first.collection("todos").put("milk", {"title": "Buy milk"})
        with first.transaction() as tx:
            tx.put("todos", "eggs", {"title": "Eggs"})
            tx.put("done", "bread", {"title": "Bread"})
        stale = first.collection("todos")
    with pytest.raises(concord.Closed):
        stale.put("late", {"x": 1})
    again = opened(path, relay=relay.relay("reopen"))
    assert again.replica_id == replica
    assert [d.id for d in again.collection("todos").list()] == ["eggs", "milk"]
    assert again.collection("done")["bread"].fields["title"] == "Bread"
    again.flush()
    other = opened(str(tmp / "other.db"), relay=relay.relay("reopen"))
    assert await_document(other.collection("done"), "bread", lambda d: d is not None).fields["title"] == "Bread"


def test_a_second_open_of_the_same_file_is_a_store_error(tmp, opened):
    opened(str(tmp / "locked.db"))
    with pytest.raises(concord.StoreError, match="locked"):
        concord.open(str(tmp / "locked.db"))


def test_a_refused_token_is_refreshed_through_the_provider(relay, tmp, opened):
    fresh = relay.token("refresh")
    asked = []
    db = opened(
        str(tmp / "a.db"),
        relay=concord.Relay(relay.url, "refresh", "not-a-token"),
        token_provider=lambda: asked.append(1) or fresh,
    )
    db.collection("todos").put("milk", {"title": "Buy milk"})
    await_synced(db)
    assert asked


def test_a_raising_token_provider_is_contained(relay, tmp, opened):
    def broken():
        raise RuntimeError("backend down")

    db = opened(str(tmp / "a.db"), relay=concord.Relay(relay.url, "contained", "not-a-token"), token_provider=broken)
    with db.status_changes() as statuses:
        stopped = wait_for(statuses, lambda s: s.last_error is not None and "backend down" in s.last_error)
    assert stopped.connection != "online"
    db.collection("todos").put("milk", {"title": "Buy milk"})
    db.set_token(relay.token("contained"))
    await_synced(db)
