#!/usr/bin/env python3
"""The cost of one put and one get through the Python binding, to compare
with the Rust API (docs/BENCHMARKS.md). After `cargo xtask bindings`:

    python3 bindings/python/bench.py
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import concord  # noqa: E402

PUTS = 300
GETS = 50_000

with tempfile.TemporaryDirectory() as tmp:
    with concord.open(os.path.join(tmp, "py.db")) as db:
        c = db.collection("bench")
        start = time.perf_counter_ns()
        for i in range(PUTS):
            c.put(f"d{i % 10}", {"title": "Buy milk", "done": False, "n": i})
        put_ns = (time.perf_counter_ns() - start) // PUTS
        start = time.perf_counter_ns()
        for _ in range(GETS):
            c.get("d3")
        get_ns = (time.perf_counter_ns() - start) // GETS
print(f"python: put {put_ns} ns/call, get {get_ns} ns/call")
