"""The synchronous client after a request it gave up on: the late reply is
dropped, and the next `score` gets its own reply (it used to spin on the late
one, set aside and handed back to itself, until its own timeout, and so on
for every call after: one timeout spoiled the client). Replies to requests
`submit`ted and not yet received are kept for `receive`."""
from __future__ import annotations

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient

from .conftest import leaves_running, spawn_root
from .world import CANDIDATE_IDS, MODELS, USER_IDS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def leaves(world, tmp_path_factory):
    with leaves_running(tmp_path_factory, world, ("ipc",)) as endpoints:
        yield endpoints


def ids(seed: int):
    rng = np.random.default_rng(seed)
    return int(rng.choice(USER_IDS)), rng.choice(CANDIDATE_IDS, size=16, replace=False)


def test_a_late_reply_does_not_spoil_the_next_score(world, leaves, process_runner):
    root = spawn_root(process_runner, world, leaves["ipc"])
    with ScoringClient(root.endpoint) as client:
        user, cands = ids(1)
        with pytest.raises(TimeoutError):
            client.score(user, cands, timeout_ms=0)        # given up on before it is answered
        assert client.socket.poll(30_000)                  # its reply has arrived, unread
        for seed in (2, 3):
            user, cands = ids(seed)
            res = client.score(user, cands, timeout_ms=30_000)
            assert res.ok and sorted(res.scores) == sorted(MODELS), res.error
        assert client.in_flight == 0


def test_submitted_replies_wait_for_receive(world, leaves, process_runner):
    root = spawn_root(process_runner, world, leaves["ipc"])
    with ScoringClient(root.endpoint) as client:
        first = client.submit(*ids(4))
        res = client.score(*ids(5), timeout_ms=30_000)
        assert res.ok and res.id != first
        kept = client.receive(30_000)
        assert kept is not None and kept.id == first and kept.ok
        assert client.in_flight == 0
