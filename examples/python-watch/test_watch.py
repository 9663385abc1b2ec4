"""watch.py against a real relay: it prints the room's todos, then each
change another replica makes, and stops cleanly on Ctrl-C (SIGINT)."""

import os
import shutil
import signal
import subprocess
import sys

import concord

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watch.py")


# Ctrl-C in a terminal reaches a foreground program whose SIGINT is at its
# default; a suite started as a background job (`cmd &` in a script) has it
# ignored, and Python then keeps ignoring it, so watch.py would never hear
# the test's SIGINT. The child is started through an exec that restores the
# default first, as a terminal would have it.
WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
)


def start_watch(relay_url, room, token, data):
    env = dict(os.environ, CONCORD_RELAY=relay_url, CONCORD_ROOM=room, CONCORD_TOKEN=token)
    return subprocess.Popen(
        # faulthandler: a hung child prints its Python stacks on SIGABRT.
        [sys.executable, "-c", WITH_DEFAULT_SIGINT, "-X", "faulthandler", SCRIPT, "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def interrupt(watch, guard_s):
    """Ctrl-C, then the exit code; a child still running after the hang
    guard fails the test with its native and Python stacks, so a hang
    seen once can be diagnosed from the test's output alone."""
    watch.send_signal(signal.SIGINT)
    try:
        return watch.wait(timeout=guard_s)
    except subprocess.TimeoutExpired:
        native = "(gdb not installed)"
        if shutil.which("gdb"):
            native = subprocess.run(
                ["gdb", "-p", str(watch.pid), "-batch", "-ex", "thread apply all bt"],
                capture_output=True, text=True, timeout=guard_s,
            ).stdout
        watch.send_signal(signal.SIGABRT)
        watch.wait(timeout=guard_s)
        stderr = watch.stderr.read()
        raise AssertionError(
            f"watch.py still ran {guard_s} s after SIGINT\n--- native stacks ---\n{native}\n--- stderr ---\n{stderr}"
        ) from None


def test_prints_the_list_then_each_change(relay, tmp_path, stdout_lines, guard_s):
    # A todo as the web demo writes it (collection "todos"; title, done, order).
    with concord.open(str(tmp_path / "browser.db"), relay=relay.relay("demo")) as writer:
        todos = writer.collection("todos")
        todos.put("t1", {"title": "Buy milk", "done": False, "order": 1.0})
        writer.flush()

        watch = start_watch(relay.url, "demo", relay.token("demo"), tmp_path / "watch.db")
        try:
            out = stdout_lines(watch)
            out.wait_for("1 todos:")
            assert out.wait_for("Buy milk") == "  [ ] Buy milk  (t1)"

            todos.put("t2", {"title": "Walk the dog", "done": False, "order": 2.0})
            assert out.wait_for("Walk the dog") == "* [ ] Walk the dog  (t2)"
            todos.put("t1", {"done": True})
            assert out.wait_for("Buy milk") == "* [x] Buy milk  (t1)"
            todos.delete("t2")
            assert out.wait_for("deleted") == "- deleted (t2)"
        finally:
            code = interrupt(watch, guard_s)
    assert code == 0, watch.stderr.read()


def test_a_refused_token_is_an_error(relay, tmp_path, guard_s):
    watch = start_watch(relay.url, "demo", "not-a-token", tmp_path / "watch.db")
    try:
        code = watch.wait(timeout=guard_s)
    finally:
        watch.kill()
    assert code == 2
    assert "error:" in watch.stderr.read()


def test_missing_settings_are_named(guard_s):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    run = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=env, timeout=guard_s)
    assert run.returncode == 2
    assert "--relay (or CONCORD_RELAY)" in run.stderr
