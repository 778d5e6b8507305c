"""The root's bookkeeping of runs of slots (`ShmChannel`), without a leaf: a
held request owns its run, its reply or its dead leaf frees all of it, and
the counts operators see are slots."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

import _trim
from _trim import Batch, ColumnSpec, Layout, compile_plan
from rootproc.leaves.shm import ShmChannel
from rootproc.settings import ShmSettings


class Counts:
    def __init__(self):
        self.by_reason: dict[str, int] = {}

    def labels(self, reason):
        counts = self

        class Inc:
            def inc(self, n=1):
                counts.by_reason[reason] = counts.by_reason.get(reason, 0) + n
        return Inc()


def batch_of(rows: int):
    layout = Layout([ColumnSpec("a", "float32", (16,))])
    batch = Batch.from_arrays(layout, {"a": np.ones((rows, 16), "f4")}, rows)
    plan = compile_plan(layout, ["a"])
    return plan, batch, _trim.encoded_nbytes(plan, batch)


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_runs_are_held_by_request_freed_by_reply_or_reclaimed_from_a_dead_leaf():
    counts = Counts()
    ch = ShmChannel("runs", ShmSettings(True, 1024, 16, 0.0), counts)
    leaf = sleeper()
    try:
        plan, batch, nbytes = batch_of(40)          # 40 x 64 bytes + headers: 3 slots
        count = ch.ring.slots_for(nbytes)
        assert count == 3
        ch.check_leaf(leaf.pid)
        a = ch.place("a", plan, batch, nbytes, what="m@1")
        b = ch.place("b", plan, batch, nbytes, what="m@1")
        assert a and b and a["offset"] % 1024 == 0 and a["nbytes"] == nbytes
        assert ch.held_slots == 2 * count
        assert ch.replied("b") == count and ch.held_slots == count
        assert ch.replied("b") == 0                # a second reply frees nothing
        assert ch.check_leaf(leaf.pid) == 0        # alive: "a" stays held
        leaf.kill()
        leaf.wait()
        assert ch.check_leaf(leaf.pid) == count    # its whole run comes back, counted in slots
        assert ch.held_slots == 0 and ch.ring.free_slots == 16
        leaf = sleeper()
        ch.check_leaf(leaf.pid)
        runs = [ch.place(f"r{i}", plan, batch, nbytes, what="m@1") for i in range(5)]
        assert all(runs) and ch.held_slots == 15
        assert ch.place("full", plan, batch, nbytes, what="m@1") is None   # 1 slot left
        assert counts.by_reason == {"no_slot": 1}
        for i in (3, 1, 0, 4, 2):                   # out of order
            assert ch.replied(f"r{i}") == count
        assert ch.held_slots == 0 and ch.ring.acquire(count=16) == 0   # one extent again
        big_plan, big_batch, big = batch_of(400)   # over the 16 KiB ring
        assert big > ch.ring.nbytes
        assert ch.place("big", big_plan, big_batch, big, what="m@1") is None
        assert counts.by_reason == {"no_slot": 1, "too_large": 1}
    finally:
        leaf.kill()
        leaf.wait()
        ch.close()
