"""Fixtures: a real concord-relay on 127.0.0.1 (built by `cargo xtask
bindings`), a temporary directory, and the `concord` package, from the
source tree (after `cargo xtask bindings`) or, with CONCORD_TEST_INSTALLED=1,
as installed from the wheel."""

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

if os.environ.get("CONCORD_TEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))

#: Hang guard for waits on the network; never a speed assertion.
GUARD_S = 60


class Relay:
    def __init__(self):
        self.binary = os.environ.get("CONCORD_RELAY") or os.path.join(ROOT, "target", "release", "concord-relay")
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"{self.binary} is missing: run `cargo xtask bindings`")
        self.data = tempfile.mkdtemp(prefix="concord-relay-")
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        self.process = subprocess.Popen(
            [self.binary, "--listen", "127.0.0.1:0", "--data", self.data],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in self.process.stdout], daemon=True).start()
        while True:
            line = lines.get(timeout=GUARD_S)
            if line.startswith("concord-relay listening on "):
                self.url = f"ws://{line.split()[-1].strip()}/v1/sync"
                break

    @property
    def key_path(self):
        return os.path.join(self.data, "concord-relay.key")

    def token(self, room, rights="rw", ttl="1h"):
        out = subprocess.run(
            [self.binary, "token", "--room", room, "--rights", rights, "--ttl", ttl, "--data", self.data],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def relay(self, room, connect=True):
        import concord

        return concord.Relay(self.url, room, self.token(room), connect)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def relay():
    r = Relay()
    yield r
    r.stop()


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


@pytest.fixture
def opened():
    """Opens databases and closes whatever a test left open."""
    import concord

    dbs = []

    def open_(*args, **kwargs):
        db = concord.open(*args, **kwargs)
        dbs.append(db)
        return db

    yield open_
    for db in dbs:
        db.close()
