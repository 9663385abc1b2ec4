import os

import concord

relay = concord.Relay(os.environ["CONCORD_RELAY"], "demo", os.environ["CONCORD_TOKEN"])
with concord.open("quickstart.db", relay=relay) as db:
    todos = db.collection("todos")  # the collection the web demo shows
    changes = todos.subscribe()  # local and remote changes, from now on

    # A write applies at once and returns once it is durable here.
    todos.put("milk", {"title": "Buy milk", "done": False, "order": 1.0})
    rev = todos.get("milk").revision
    todos.put_if("milk", {"done": True}, rev)  # optimistic concurrency

    db.flush()  # until the relay acknowledged every write
    for todo in todos:
        print(todo.id, todo.fields)
    print(changes.next(), db.status())  # connection, pending writes, lag, last error
