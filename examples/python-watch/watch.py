#!/usr/bin/env python3
"""Prints the todos of a Concord room live: the list once caught up with the
relay, then one line per change, until Ctrl-C.

It reads the same collection and fields as the browser demo in
examples/web-todo (collection "todos"; fields "title", "done", "order"), so
run it beside `cargo xtask demo`:

    python watch.py --relay ws://127.0.0.1:8787/v1/sync --room demo --token TOKEN

Each flag falls back to an environment variable, as with the `concord` CLI:
CONCORD_RELAY, CONCORD_ROOM, CONCORD_TOKEN and CONCORD_DATA (the local
database file; by default concord-watch.db in the current folder).
"""

import argparse
import os
import sys
import time

import concord

COLLECTION = "todos"


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(description="Print the todos of a Concord room live.")
    p.add_argument("--relay", default=env("CONCORD_RELAY"), help="the relay's sync URL (CONCORD_RELAY)")
    p.add_argument("--room", default=env("CONCORD_ROOM"), help="the room (CONCORD_ROOM)")
    p.add_argument("--token", default=env("CONCORD_TOKEN"), help="a token for the room (CONCORD_TOKEN)")
    p.add_argument("--data", default=env("CONCORD_DATA", "concord-watch.db"), help="the local database file (CONCORD_DATA)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the relay before printing")
    args = p.parse_args(argv)
    missing = [name for name in ("relay", "room", "token") if not getattr(args, name)]
    if missing:
        p.error("missing " + ", ".join(f"--{m} (or CONCORD_{m.upper()})" for m in missing))
    return args


def line(doc):
    """One todo as a line: its checkbox, title and id."""
    done = "x" if doc.fields.get("done") else " "
    return f"[{done}] {doc.fields.get('title', '')}  ({doc.id})"


def print_list(todos, shown):
    """Prints the list and remembers what each line showed, in `shown`."""
    # The demo's order: the "order" field, then the id.
    docs = sorted(todos, key=lambda d: (d.fields.get("order", 0), d.id))
    shown.clear()
    print(f"{len(docs)} todos:", flush=True)
    for doc in docs:
        shown[doc.id] = line(doc)
        print("  " + line(doc), flush=True)


def print_change(todos, id, shown):
    """Prints a changed todo unless it still reads as `shown` last had it
    (a change that arrived while catching up is already in the list)."""
    doc = todos.get(id)
    now = None if doc is None else line(doc)
    if now == shown.get(id):
        return
    if now is None:
        shown.pop(id, None)
        print(f"- deleted ({id})", flush=True)
    else:
        shown[id] = now
        print(f"* {now}", flush=True)


def caught_up(db, timeout):
    """Waits until the relay sent everything (or `timeout` passes); returns
    the error that stopped syncing, if one did."""
    deadline = time.monotonic() + timeout
    with db.status_changes() as statuses:
        while (left := deadline - time.monotonic()) > 0:
            s = statuses.next(timeout=left)
            if s is None:
                continue
            if s.connection == "online" and s.lag == 0 and s.pending_writes == 0:
                return None
            if s.connection == "offline" and s.last_error:
                return s.last_error
    print(f"(not caught up with the relay after {timeout:g} s; showing what is stored here)", flush=True)
    return None


def watch(args):
    relay = concord.Relay(args.relay, args.room, args.token)
    with concord.open(args.data, relay=relay, agent="python-watch") as db:
        todos = db.collection(COLLECTION)
        # Subscribe before reading, so nothing between the two is missed.
        with todos.subscribe() as changes:
            error = caught_up(db, args.timeout)
            if error:
                print(f"error: cannot sync: {error}", file=sys.stderr)
                return 2
            shown = {}
            print_list(todos, shown)
            while True:
                change = changes.next(timeout=1.0)
                if change is None:
                    status = db.status()
                    if status.connection == "offline" and status.last_error:
                        print(f"error: syncing stopped: {status.last_error}", file=sys.stderr)
                        return 2
                    continue
                if change.kind == "lagged":
                    print_list(todos, shown)
                elif change.kind == "document":
                    print_change(todos, change.id, shown)


def main(argv=None):
    args = parse_args(argv)
    try:
        return watch(args)
    except KeyboardInterrupt:
        return 0
    except concord.ConcordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
