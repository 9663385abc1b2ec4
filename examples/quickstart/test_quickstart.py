"""The README's Python quick start, run as a user would (its own process,
settings in the environment) against a real relay, in the demo's room."""

import os
import subprocess
import sys

import concord

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py")


def test_the_quick_start_runs_and_syncs(relay, tmp_path, guard_s):
    env = dict(os.environ, CONCORD_RELAY=relay.url, CONCORD_TOKEN=relay.token("demo"))
    run = subprocess.run(
        [sys.executable, SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=guard_s
    )
    assert run.returncode == 0, run.stderr
    # The list line: "milk" and its fields (in whatever order the map has).
    milk = [line for line in run.stdout.splitlines() if line.startswith("milk {")]
    assert len(milk) == 1 and "'title': 'Buy milk'" in milk[0] and "'done': True" in milk[0], run.stdout

    # What it wrote reached the room: another replica reads it from the relay.
    with concord.open(str(tmp_path / "other.db"), relay=relay.relay("demo")) as other:
        with other.status_changes() as statuses:
            status = statuses.next(timeout=guard_s)
            while status is not None and not (status.connection == "online" and status.lag == 0):
                status = statuses.next(timeout=guard_s)
            assert status is not None, "the other replica did not catch up with the relay"
        assert other.collection("todos").get("milk").fields["done"] is True
