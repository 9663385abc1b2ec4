"""Fixtures for the examples' Python tests (examples/python-watch,
examples/quickstart): the Python binding's own real-relay fixture, reused
from bindings/python/tests/conftest.py rather than written twice."""

import importlib.util
import os
import queue
import subprocess
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_spec = importlib.util.spec_from_file_location(
    "concord_binding_fixtures", os.path.join(ROOT, "bindings", "python", "tests", "conftest.py")
)
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

#: Hang guard for waits on the network or a child process; never a speed assertion.
GUARD_S = _fixtures.GUARD_S


@pytest.fixture
def relay():
    r = _fixtures.Relay()
    yield r
    r.stop()


class Lines:
    """A child process's stdout, read on a thread, so a test can wait for
    a line with a hang guard instead of blocking forever."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.seen = []
        self._queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str) -> str:
        """The first line (from here on) containing `text`; fails if the
        process ends or stays silent for GUARD_S seconds first."""
        while True:
            try:
                line = self._queue.get(timeout=GUARD_S)
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {GUARD_S} s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"the process ended before printing {text!r}; saw {self.seen}")
            self.seen.append(line)
            if text in line:
                return line


@pytest.fixture
def stdout_lines():
    """Wraps a started process: `stdout_lines(process).wait_for(text)`."""
    return Lines


@pytest.fixture
def guard_s():
    """The hang guard, in seconds."""
    return GUARD_S
