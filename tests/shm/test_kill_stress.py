"""kill -9 of the root or a leaf on a shared-memory link, then restart: scores
stay right, the successor removes the dead root's ring, /dev/shm ends as found."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.root.world import CANDIDATE_IDS, USER_IDS

from .conftest import segments_of, shm_root

pytestmark = pytest.mark.slow

CYCLES = 50
LEAF_EVERY = 5   # a leaf restart costs seconds (torch import), a root one much less


def score(endpoint: str, user, cands, timeout_s: float = 20.0):
    """Scores of ctr@3, retrying while the restarted side reconnects."""
    deadline = time.monotonic() + timeout_s
    with ScoringClient(endpoint) as client:
        while True:
            res = client.score(user, cands, models=["ctr@3"], deadline_ms=2000)
            if res.ok and not res.errors:
                return res
            assert time.monotonic() < deadline, res.errors or res.error
            time.sleep(0.05)


# A hang is caught by this bound; how fast 50 restarts go on a shared machine is no verdict.
@pytest.mark.timeout(600)
def test_kill_9_either_side_and_restart(world, process_runner):
    leaf_ep = process_runner.endpoint("leaf-0")
    leaf_args = dict(models=["ctr@3"], name="leaf-0", bind=leaf_ep, args=["--max-wait-ms", "0"])
    leaf = process_runner.leaf(world["repo"], **leaf_args)
    shm = {"slots": 4, "slot_bytes": 1 << 16}
    root = shm_root(process_runner, world, {"leaf-0": leaf_ep}, shm=shm, ping_interval_ms=50,
                    health_timeout_ms=500)
    user, cands = int(USER_IDS[0]), CANDIDATE_IDS[:32]
    reference = score(root.endpoint, user, cands)
    assert reference.results[0]["transport"] == "shm"
    dead_roots = []
    for cycle in range(CYCLES):
        if cycle % LEAF_EVERY == LEAF_EVERY - 1:
            leaf.signal(signal.SIGKILL)
            leaf.wait()
            leaf = process_runner.leaf(world["repo"], **leaf_args)
        else:
            root.signal(signal.SIGKILL)
            root.wait()
            dead_roots.append(root.pid)
            root = shm_root(process_runner, world, {"leaf-0": leaf_ep}, shm=shm,
                            ping_interval_ms=50, health_timeout_ms=500, name=f"root-{cycle}")
            # The new root removed the ring its predecessor could not.
            assert not segments_of(dead_roots[-1])
        res = score(root.endpoint, user, cands)
        assert res.results[0]["transport"] == "shm", res.results
        np.testing.assert_array_equal(res.scores["ctr@3"], reference.scores["ctr@3"])
    assert root.stop() == 0
    assert not segments_of(root.pid)
    assert all(not segments_of(pid) for pid in dead_roots)


def test_slots_of_a_killed_leaf_are_reclaimed(world, process_runner):
    from tests.support.procs import free_tcp_port

    from .conftest import metric
    leaf_ep = process_runner.endpoint("leaf-0")
    leaf_args = dict(models=["ctr@3"], name="leaf-0", bind=leaf_ep, args=["--max-wait-ms", "0"])
    leaf = process_runner.leaf(world["repo"], **leaf_args)
    port = free_tcp_port()
    root = shm_root(process_runner, world, {"leaf-0": leaf_ep}, port=port,
                    shm={"slots": 1, "wait_ms": 0}, ping_interval_ms=50)
    user, cands = int(USER_IDS[1]), CANDIDATE_IDS[:16]
    score(root.endpoint, user, cands)
    leaf.signal(signal.SIGSTOP)
    with ScoringClient(root.endpoint) as client:
        res = client.score(user, cands, models=["ctr@3"], deadline_ms=100)
    assert res.results[0]["error"]["kind"] == "deadline"
    assert metric(port, "trimmer_root_shm_slots_held") == 1
    leaf.signal(signal.SIGKILL)
    leaf.wait()
    leaf = process_runner.leaf(world["repo"], **leaf_args)
    res = score(root.endpoint, user, cands)
    assert res.results[0]["transport"] == "shm"
    assert metric(port, "trimmer_root_shm_reclaimed_total") == 1
