"""A request answered long before its deadline must not hold memory until then.

Clients choose deadlines up to ``max_deadline_ms``; a root that kept each
answered request (its scores frames, its results) until its deadline would
grow by rate x deadline x reply size under steady traffic.
"""
from __future__ import annotations

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient

from .conftest import spawn_leaves, spawn_root
from .world import CANDIDATE_IDS, USER_IDS

pytestmark = pytest.mark.slow

N_CANDIDATES = 2048   # 3 models x 8 KiB of scores per reply
REQUESTS = 500        # ~12 MiB of scores, were they kept


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def run(client: ScoringClient, deadline_ms: int, window: int = 16) -> None:
    cands = np.resize(CANDIDATE_IDS, N_CANDIDATES)
    done = 0
    for _ in range(REQUESTS):
        client.submit(int(USER_IDS[0]), cands, deadline_ms=deadline_ms)
        while client.in_flight >= window:
            assert client.receive(10_000) is not None
            done += 1
    while client.in_flight:
        res = client.receive(10_000)
        assert res is not None and res.ok and not res.errors, res and res.errors
        done += 1
    assert done == REQUESTS


def test_answered_requests_are_not_kept_until_their_deadline(world, process_runner):
    leaves = spawn_leaves(process_runner, world)["ipc"]
    root = spawn_root(process_runner, world, leaves, max_deadline_ms=10_000)
    with ScoringClient(root.endpoint) as client:
        run(client, deadline_ms=5000)   # warm up: buffers, caches, allocator arenas
        before = rss_bytes(root.pid)
        run(client, deadline_ms=10_000)
        grown = rss_bytes(root.pid) - before
    assert grown < 4 << 20, f"root grew by {grown / 2**20:.1f} MiB over {REQUESTS} answered requests"
