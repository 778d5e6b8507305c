"""A request naming a model (``"ctr"``, no version) is resolved to a version
when the root reads it, and sent once its features are fetched. A version
that leaves rotation in between (a rollback retires it: the leaf's pongs stop
offering it) must not fail the request ``unavailable`` while another version
of the model is served: it is scored by that one (rule score.model-name).

Made certain, with no timing: the root's feature store (Redis) is paused
while the request's fetch waits in it; the version is retired and the root
sees it gone; then Redis resumes."""
from __future__ import annotations

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from signatures.configstore import Stages
from tests.featurestore.redis_server import RedisServer
from tests.featurestore.test_root_redis import load_redis
from tests.root.conftest import spawn_root

from .conftest import REQUESTS, root_pong, seed_store, serving, wait_for

pytestmark = pytest.mark.slow
LONG_MS = 60_000   # the request's deadline and the fetch's bound: the pause, not a timeout


def routed(root) -> set:
    return {k for link in root_pong(root).get("leaves", []) for k in link["models"]}


@pytest.mark.timeout(600)
def test_a_version_retired_while_its_request_fetches_is_replaced_by_the_served_one(
        world, process_runner, tmp_path):
    store_path = str(tmp_path / "configs")
    stages = Stages(seed_store(world, store_path, stages=("canary",)))
    stages.deploy(world["b2"], "canary")
    stages.deploy_models("canary", ["ctr@5"], wait_s=0)
    # A long grace: the leaf would still answer ctr@5, the root no longer sends it.
    leaf = process_runner.leaf(world["repo"], name="leaf-0-canary", ready=False, args=[
        "--name", "leaf-0", "--config-store", store_path, "--stage", "canary",
        "--max-wait-ms", "0", "--retire-grace-s", "600"])
    leaf.wait_ready(60, ready=serving("ctr@3", "ctr@5", "eng@1"))
    (tmp_path / "redis").mkdir()
    with RedisServer(tmp_path / "redis") as redis:
        url = redis.url("retire")
        load_redis(world, url)
        # threads 2: every batch is built on a worker, the loop reads pongs meanwhile.
        root = spawn_root(process_runner, world, {"leaf-0": leaf.endpoint}, bundle=None,
                          config_store=store_path, stage="canary", feature_store=url,
                          cache={"size": 0}, threads=2, redis={"timeout_ms": LONG_MS},
                          max_deadline_ms=LONG_MS,
                          ready=lambda p: "ctr@5" in {k for link in p.get("leaves", [])
                                                      for k in link["models"]})
        user, cands = REQUESTS[0]
        with ScoringClient(root.endpoint, timeout_ms=2 * LONG_MS) as client:
            redis.pause()
            try:
                client.submit(user, cands, models=["ctr"], deadline_ms=LONG_MS)
                wait_for("the request's fetch waiting in Redis", lambda: redis.unread_bytes() > 0,
                         timeout=60)
                # The rollback's first step: ctr@5 leaves the stage, ctr@3 serves on.
                stages.deploy_models("canary", ["ctr@3", "eng@1"], replace=True, wait_s=0)
                wait_for("the root routing no ctr@5", lambda: "ctr@5" not in routed(root),
                         timeout=60)
                assert "ctr@3" in routed(root)
            finally:
                redis.resume()
            res = client.receive(2 * LONG_MS)
    assert res is not None and res.ok, res
    assert not res.errors, res.errors
    assert [r["model"] for r in res.results] == ["ctr@3"], res.results
    np.testing.assert_allclose(res.scores["ctr@3"], world["expected"][0]["ctr@3"],
                               rtol=1e-5, atol=1e-4)
