"""Memory per request is bounded (issue 24): a request whose estimated root
memory (records + batch + one message per model) is over
``max_request_memory_nbytes`` is refused `too_large` before anything is
fetched, naming the estimate and the limit; requests in flight that would
together pass ``max_memory_nbytes`` get `overloaded`, and the root serves
again once they are answered. Each refusal is counted and logged."""
from __future__ import annotations

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.support.procs import free_tcp_port

from .conftest import leaves_running, spawn_root
from .test_liveness import metric
from .world import CANDIDATE_IDS, MODELS, USER_IDS, assert_scores_match

pytestmark = pytest.mark.slow

USER = int(USER_IDS[0])
LARGE = CANDIDATE_IDS[:300]
SMALL = CANDIDATE_IDS[:8]


@pytest.fixture(scope="module")
def leaves(world, tmp_path_factory):
    with leaves_running(tmp_path_factory, world) as endpoints:
        yield endpoints["ipc"]


def estimate_of_large(world, leaves, process_runner) -> int:
    """The root's own estimate for a LARGE request, as its refusal names it."""
    root = spawn_root(process_runner, world, leaves, name="root-probe",
                      max_request_memory_nbytes=1000)
    with ScoringClient(root.endpoint) as client:
        res = client.score(USER, LARGE)
    root.stop()
    assert not res.ok and res.error["kind"] == "too_large", res.error
    return int(res.error["nbytes"])


def test_a_request_over_its_memory_limit_is_refused_naming_it(world, leaves, process_runner):
    port = free_tcp_port()
    limit = 60_000
    root = spawn_root(process_runner, world, leaves, max_request_memory_nbytes=limit,
                      metrics_port=port)
    with ScoringClient(root.endpoint) as client:
        for _ in range(2):
            res = client.score(USER, LARGE)
            assert not res.ok and res.error["kind"] == "too_large", res.error
            assert res.error["limit"] == limit and res.error["nbytes"] > limit
            assert "max_request_memory_nbytes" in res.error["message"]
            assert str(res.error["nbytes"]) in res.error["message"]
            # The root keeps serving, and a request within the limit is scored.
            small = client.score(USER, SMALL)
            assert_scores_match(world, small, USER, SMALL, MODELS)
    assert metric(port, "trimmer_root_memory_refused_total", reason="request_limit") == 2
    assert metric(port, "trimmer_root_memory_in_flight_bytes") == 0
    log = root.log(200_000)
    assert "request refused too_large (request_limit)" in log
    assert "internal" not in log


def test_requests_over_the_roots_memory_get_overloaded_then_it_serves_again(
        world, leaves, process_runner):
    estimate = estimate_of_large(world, leaves, process_runner)
    port = free_tcp_port()
    limit = estimate * 3 // 2    # room for one LARGE request in flight, not two
    root = spawn_root(process_runner, world, leaves, max_memory_nbytes=limit, metrics_port=port)
    rng = np.random.default_rng(3)
    with ScoringClient(root.endpoint) as client:
        ids = [client.submit(USER, rng.permutation(LARGE)) for _ in range(20)]
        got = {}
        while len(got) < len(ids):
            r = client.receive(15_000)
            assert r is not None, f"{len(ids) - len(got)} request(s) got no reply"
            assert r.id not in got, "two replies to one request"
            got[r.id] = r
        kinds = [("ok" if r.ok and not r.errors else r.error["kind"]) for r in got.values()]
        assert "overloaded" in kinds and "ok" in kinds, kinds
        assert set(kinds) <= {"ok", "overloaded"}, kinds
        refused = next(r for r in got.values() if not r.ok)
        assert refused.error["limit"] == limit and refused.error["nbytes"] == estimate
        assert "max_memory_nbytes" in refused.error["message"]
        # Answered requests give their memory back: one at a time, every one is served.
        for _ in range(5):
            res = client.score(USER, LARGE)
            assert_scores_match(world, res, USER, LARGE, MODELS)
    assert metric(port, "trimmer_root_memory_refused_total", reason="root_limit") == kinds.count(
        "overloaded")
    assert metric(port, "trimmer_root_memory_in_flight_bytes") == 0
    assert "request refused overloaded (root_limit)" in root.log(200_000)


@pytest.mark.parametrize("n", [0, 1, 7, 300, 2048])
def test_the_estimate_bounds_the_messages_it_stands_for(world, n):
    """`Linear` (the admission estimate, ragged values left out) is never
    below the batch's or a message's real size, and over it by at most the
    padding (7 bytes a column)."""
    import _trim
    from _trim.batch import Batch
    from rootproc.memory import Linear
    from signatures.schema import FeatureSchema

    layout = FeatureSchema.load(world["schema"]).layout()
    batch = Batch(layout, n)
    for names in [layout.names, *MODELS.values()]:
        plan = _trim.compile_plan(layout, names)
        real = _trim.encoded_nbytes(plan, batch)
        bound = Linear.of(layout, plan.columns, plan.table_nbytes).at(n)
        assert real <= bound <= real + 7 * len(plan.columns), (names, n)
    full = Linear.of(layout, range(len(layout)), layout.table_nbytes()).at(n)
    assert batch.nbytes <= full <= batch.nbytes + 7 * len(layout)
