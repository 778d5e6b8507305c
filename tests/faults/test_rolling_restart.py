"""Rolling restarts: a leaf drained under load ends its drain, the root routes
around it (from its pong, and from its `shutting_down` replies), and the
process that comes back earns traffic with its own pong."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.root.world import root_config, write_root_config
from tests.support.procs import ping

from .conftest import REQUESTS, FakeLeaf, Load, check_replies, wait_for

pytestmark = pytest.mark.slow

DRAIN_S = 5.0   # each leaf's drain timeout: the test allows it no longer


def spawn_root(runner, world, leaves: list[dict], name: str = "root"):
    bind = runner.endpoint(name)
    cfg = root_config(world, {}, bind, name=name, leaves=leaves)
    path = write_root_config(os.path.join(runner.tmp_path, f"{name}.json"), cfg)
    return runner.spawn(name, [sys.executable, "-m", "rootproc", "--config", path],
                        endpoint=bind, ipc_paths=[bind[len("ipc://"):]])


def link_serving(root, endpoint: str, pid: int | None = None):
    """The root's pong shows the link to ``endpoint`` healthy, routing ctr@3 and
    eng@1 (to the process ``pid``)."""
    def check():
        pong = ping(root.endpoint, timeout=1.0) or {}
        for link in pong.get("leaves", []):
            if link["endpoint"] == endpoint and link["healthy"] and not link.get("draining") \
                    and {"ctr@3", "eng@1"} <= set(link["models"]) \
                    and (pid is None or link["pid"] == pid):
                return True
        return False
    return check


def test_rolling_restart_of_two_replicas_under_load(world, process_runner):
    endpoints = [process_runner.endpoint(f"leaf-0{r}") for r in "ab"]

    def start(i: int):
        return process_runner.leaf(world["repo"], models=["ctr@3", "eng@1"], name=f"leaf-0{'ab'[i]}",
                                   bind=endpoints[i],
                                   args=["--name", "leaf-0", "--max-wait-ms", "0",
                                         "--drain-timeout-s", str(DRAIN_S)])

    replicas = [start(0), start(1)]
    root = spawn_root(process_runner, world, [{"name": "leaf-0", "endpoints": endpoints}])
    for ep in endpoints:
        wait_for(f"the root routing to {ep}", link_serving(root, ep), timeout=30)
    load = Load(root.endpoint)
    load.start()
    try:
        wait_for("load", lambda: len(load.replies) >= 50)
        drains = []
        for i in (0, 1):
            old = replicas[i]
            t0 = time.monotonic()
            old.signal(signal.SIGTERM)
            try:
                rc = old.wait(DRAIN_S + 1.0)
            except subprocess.TimeoutExpired:
                pytest.fail(f"replica {i} still draining {DRAIN_S + 1.0:.0f} s after SIGTERM, "
                            f"under load:\n{old.log()}")
            drains.append(time.monotonic() - t0)
            assert rc == 0, old.log()
            before = len(load.replies)
            wait_for("load on the other replica", lambda n=before: len(load.replies) >= n + 30)
            replicas[i] = start(i)
            wait_for(f"the root routing to the new replica {i}",
                     link_serving(root, endpoints[i], replicas[i].pid), timeout=30)
            before = len(load.replies)
            wait_for("load on both replicas", lambda n=before: len(load.replies) >= n + 50)
    finally:
        load.stop()
    figures = load.tally(f"rolling restart (drains took {', '.join(f'{d:.2f}' for d in drains)} s)")
    assert figures["failed"] == 0 and figures["lost"] == 0
    check_replies(world, load, live=("ctr@3", "eng@1"))


def leaf_hashes(endpoint: str) -> dict:
    pong = ping(endpoint, timeout=5.0)
    return {m["model"]: m["signature_hash"] for m in pong["models"]}


def test_a_draining_pong_takes_the_replica_out_of_rotation(world, process_runner):
    """A replica that says it is draining gets no new request, even when it is
    the first choice: its pong is enough, before any `shutting_down` reply."""
    real = process_runner.leaf(world["repo"], models=["ctr@3", "eng@1"], name="leaf-0",
                               args=["--max-wait-ms", "0"])
    fake_ep = process_runner.endpoint("fake")
    fake = FakeLeaf(fake_ep, leaf_hashes(real.endpoint)).start()
    try:
        # The fake is listed first: with nothing outstanding it is the first choice.
        root = spawn_root(process_runner, world,
                          [{"name": "leaf-0", "endpoints": [fake_ep, real.endpoint]}])
        for ep in (fake_ep, real.endpoint):
            wait_for(f"the root routing to {ep}", link_serving(root, ep), timeout=30)
        user, cands = REQUESTS[0]
        with ScoringClient(root.endpoint) as client:
            for _ in range(10):   # the fake answers `overloaded`: resent to the real leaf
                res = client.score(user, cands, models=["ctr@3"])
                assert res.ok and not res.errors, res.errors
            assert len(fake.scores) == 10, "the fake leaf was not the first choice"
            fake.draining = True
            t = time.monotonic()
            wait_for("three draining pongs", lambda: fake.pongs_since(t, draining=True) >= 3)
            t = time.monotonic()
            for _ in range(20):
                res = client.score(user, cands, models=["ctr@3"])
                assert res.ok and not res.errors, res.errors
        assert fake.scores_since(t) == 0, "a replica whose pong says draining still got requests"
    finally:
        fake.stop()


def test_a_new_process_behind_an_endpoint_earns_routing_with_its_own_pong(world, process_runner):
    """kill -9, and another process binds the endpoint: until its own pong lists
    ready versions it gets no request, whatever the dead process's pongs said."""
    leaf = process_runner.leaf(world["repo"], models=["ctr@3", "eng@1"], name="leaf-0",
                               args=["--max-wait-ms", "0"])
    hashes = leaf_hashes(leaf.endpoint)
    root = spawn_root(process_runner, world, [{"name": "leaf-0", "endpoints": [leaf.endpoint]}])
    wait_for("the root routing to the leaf", link_serving(root, leaf.endpoint), timeout=30)
    leaf.signal(signal.SIGKILL)
    leaf.wait()
    os.unlink(leaf.endpoint[len("ipc://"):])
    # A process that has bound the endpoint but does not answer yet (still starting).
    fake = FakeLeaf(leaf.endpoint, hashes, pid=leaf.pid + 1, answer_pings=False).start()
    user, cands = REQUESTS[1]
    kinds = []
    try:
        with ScoringClient(root.endpoint) as client:
            t_end = time.monotonic() + 3.0   # reconnects back off to 1 s: several happen
            while time.monotonic() < t_end:
                res = client.score(user, cands, models=["ctr@3"], deadline_ms=300)
                kinds.append(res.errors.get("ctr@3", {}).get("kind") if res.ok else res.error["kind"])
                time.sleep(0.02)
            assert not fake.scores, (f"{len(fake.scores)} request(s) routed to a process that "
                                     "never answered a ping")
            assert set(kinds) == {"unavailable"}, kinds
            fake.answer_pings = True    # its pong lists ctr@3 ready: now it earns traffic
            wait_for("a request routed to the new process",
                     lambda: client.score(user, cands, models=["ctr@3"], deadline_ms=300)
                     and fake.scores, timeout=10)
    finally:
        fake.stop()
    print(f"\nnew process: {len(kinds)} requests before its pong, all unavailable; "
          f"{len(fake.scores)} after")
