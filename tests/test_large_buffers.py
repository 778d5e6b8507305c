"""The large-buffer pool (_trim/memory.py): reuse only what nothing refers to."""
from __future__ import annotations

import numpy as np
import pytest

from _trim import memory
from _trim.memory import POOLED_MIN_NBYTES, LargeBufferPool

BIG = POOLED_MIN_NBYTES


def test_a_buffer_is_reused_only_once_nothing_refers_to_it():
    pool = LargeBufferPool(8 * BIG)
    a = pool.empty(BIG)
    view = a[10:20]
    del a
    b = pool.empty(BIG)            # ``view`` keeps the first one handed out
    assert not np.shares_memory(b, view)
    first = id(view.base)
    del view
    c = pool.empty(BIG)
    assert id(c.base) == first and pool.reused == 1 and pool.fresh == 2
    del b, c


def test_small_buffers_are_not_pooled():
    pool = LargeBufferPool(8 * BIG)
    pool.empty(BIG - 1)
    assert pool.nbytes == 0


def test_no_buffer_much_larger_than_asked_is_handed_out():
    pool = LargeBufferPool(16 * BIG)
    big = pool.empty(4 * BIG)
    del big
    small = pool.empty(BIG)        # the free 4x buffer is more than twice too large
    assert small.base.nbytes < 4 * BIG
    del small


def test_the_pool_never_holds_more_than_its_size():
    pool = LargeBufferPool(3 * BIG)
    held = [pool.empty(BIG) for _ in range(5)]
    assert pool.nbytes <= 3 * BIG
    assert all(h.nbytes == BIG for h in held)
    del held
    # Free buffers of another size make room for the new one.
    again = pool.empty(int(1.5 * BIG) + 1)
    assert pool.nbytes <= 3 * BIG and again.nbytes == int(1.5 * BIG) + 1


def test_a_zmq_payload_stays_held_until_zmq_lets_go():
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        pool = LargeBufferPool(8 * BIG)
        payload = pool.empty(BIG)
        payload[:] = 7
        tracker = None
        push.connect(f"tcp://127.0.0.1:{port}")
        tracker = push.send(payload, copy=False, track=True)
        del payload
        got = pull.recv(copy=False)
        tracker.wait(10)
        assert bytes(got.buffer[:4]) == b"\x07" * 4
        again = pool.empty(BIG)
        assert pool.reused == 1   # zmq let go of the payload
        del again
        push.close()
        pull.close()
    finally:
        ctx.term()


def test_empty_uses_the_installed_pool():
    try:
        pool = memory.install_pool(4 * BIG)
        assert pool is not None
        a = memory.empty(BIG)
        assert pool.fresh == 1 and a.nbytes == BIG
        assert memory.install_pool(0) is None
        memory.empty(BIG)
        assert pool.fresh == 1
    finally:
        memory.install_pool(0)
