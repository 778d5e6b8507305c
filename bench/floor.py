"""The physical floor the root benchmarks measure against, in the same run."""
from __future__ import annotations

import time

import numpy as np


def memcpy_seconds(nbytes: int, repeats: int = 30) -> float:
    """The fastest of ``repeats`` copies of ``nbytes`` between two warm
    buffers (np.copyto: one memcpy): the least a CPU spends moving them."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros(nbytes, np.uint8)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return best
