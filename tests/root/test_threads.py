"""A root with batch worker threads (``threads`` > 1): the same scores, one reply each, drains whole."""
from __future__ import annotations

import signal

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient

from .conftest import leaves_running, spawn_root
from .world import CANDIDATE_IDS, MODELS, USER_IDS, assert_scores_match

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def leaves(world, tmp_path_factory):
    with leaves_running(tmp_path_factory, world) as endpoints:
        yield endpoints["ipc"]


def test_requests_in_flight_on_workers_get_exact_scores_and_one_reply_each(world, leaves,
                                                                            process_runner):
    root = spawn_root(process_runner, world, leaves, threads=3, missing="fail")
    rng = np.random.default_rng(5)
    with ScoringClient(root.endpoint) as client:
        sent = {}
        for _ in range(40):   # all in flight at once: workers and the loop interleave them
            user, cands = int(rng.choice(USER_IDS)), rng.choice(CANDIDATE_IDS, 30, replace=False)
            sent[client.submit(user, cands)] = (user, cands)
        bad = client.submit(int(USER_IDS[0]), [int(CANDIDATE_IDS[0]), 999_999])
        got = {}
        while len(got) < len(sent) + 1:
            r = client.receive(15_000)
            assert r is not None, f"{len(sent) + 1 - len(got)} request(s) got no reply"
            assert r.id not in got, "two replies to one request"
            got[r.id] = r
        assert client.receive(300) is None
    # A request a worker refuses is answered by the loop, with what is wrong.
    assert not got[bad].ok and got[bad].error["kind"] == "bad_request"
    assert "999999" in got[bad].error["message"]
    for rid, (user, cands) in sent.items():
        assert_scores_match(world, got[rid], user, cands, MODELS)


def test_sigterm_drains_the_requests_workers_hold(world, leaves, process_runner):
    root = spawn_root(process_runner, world, leaves, threads=2)
    with ScoringClient(root.endpoint) as client:
        ids = [client.submit(int(USER_IDS[1]), CANDIDATE_IDS[:200]) for _ in range(30)]
        # Once one is answered the loop has read the others waiting with it
        # and handed them to the workers: the signal lands while they hold
        # them (sent at once, it could land before the loop read any, and
        # every request was rightly refused shutting_down).
        first = client.receive(15_000)
        assert first is not None and first.ok, first
        root.signal(signal.SIGTERM)
        got = {first.id: first}
        while len(got) < len(ids):
            r = client.receive(15_000)
            assert r is not None, "a request taken in got no reply"
            got[r.id] = r
    kinds = {("ok" if r.ok else r.error["kind"]) for r in got.values()}
    assert kinds <= {"ok", "shutting_down"} and "ok" in kinds
    assert root.wait(15) == 0
