"""A model thread's torch ops run on the leaf's thread budget, not on every core.

torch's intra-op thread count is OpenMP's, set per thread: ``--threads``
applied on the main thread alone left each model thread a team sized to the
machine, whose idle threads spin after every parallel op. The worker applies
the budget on its own thread (leafproc/worker.py).
"""
from __future__ import annotations

import os
import threading
import time
import uuid

import numpy as np
import pytest
import torch
import zmq

from leafproc.metrics import LeafMetrics
from leafproc.worker import ModelWorker, apply_thread_budget
from tests.support.models import spec, write_model


def test_a_model_thread_runs_on_the_budget_it_was_given(tmp_path):
    path, info = write_model(tmp_path, "m", "1", [spec("x")])
    ctx = zmq.Context()
    endpoint = f"inproc://replies-{uuid.uuid4().hex}"
    pull = ctx.socket(zmq.PULL)
    pull.bind(endpoint)
    main_before = torch.get_num_threads()
    workers = [ModelWorker(path, info, ctx=ctx, reply_endpoint=endpoint, device=torch.device("cpu"),
                           metrics=LeafMetrics(), max_batch_rows=256, max_wait_s=0,
                           max_message_bytes=1 << 20, threads=threads) for threads in (1, 2)]
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 30
        while not all(w.ready for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(w.ready for w in workers), [w.error for w in workers]
        assert [w.intra_op_threads for w in workers] == [1, 2]
        assert torch.get_num_threads() == main_before   # the main thread's is its own
    finally:
        for w in workers:
            w.stop()
            w.join(10)
        pull.close(linger=0)
        ctx.term()


def forward_cpu_ms(fn, rounds: int) -> float:
    """Median process CPU (every thread: a spinning OpenMP team included) per call."""
    samples = []
    for _ in range(rounds):
        c0 = time.process_time()
        fn()
        samples.append(time.process_time() - c0)
    return 1000 * float(np.median(samples))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no team to spin")
def test_a_forward_costs_the_same_cpu_on_a_model_thread_as_on_the_main_thread():
    """Same process, same budget (one thread): a matrix-vector product per call,
    the shape of a leaf's dense layers. With the budget only on the main thread,
    a model thread's call cost 6x the main thread's CPU here."""
    weight = torch.randn(2048, 2048)
    vec = torch.randn(2048)

    def forward():
        for _ in range(20):
            torch.mv(weight, vec)
        time.sleep(0.002)   # a leaf between batches: where a team spins

    main_budget = torch.get_num_threads()
    apply_thread_budget(1)
    try:
        main = forward_cpu_ms(forward, 30)
        got = {}

        def model_thread():
            apply_thread_budget(1)
            got["ms"] = forward_cpu_ms(forward, 30)

        t = threading.Thread(target=model_thread)
        t.start()
        t.join()
    finally:
        torch.set_num_threads(main_budget)
    assert got["ms"] <= 1.5 * main + 0.5, (got["ms"], main)
