"""Busy is not dead: a replica leaves rotation for what its leaf does, not for
how late the root's own loop reads its pongs; and every change of rotation,
every `unavailable` the root produces, says why (log line and metric)."""
from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.support.procs import free_tcp_port, ping

from .conftest import leaves_healthy, spawn_leaves, spawn_root
from .world import CANDIDATE_IDS, USER_IDS

pytestmark = pytest.mark.slow

CANDS = CANDIDATE_IDS[:16]
USER = int(USER_IDS[0])
HEALTH_MS = 1000


def metric(port: int, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = [f'{k}="{v}"' for k, v in sorted(labels.items())]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            got = head[head.find("{") + 1:head.rfind("}")].split(",") if "{" in head else []
            if all(part in got for part in want):
                total += float(value)
    return total


def until(what: str, cond, timeout: float = 20.0) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def link(root, leaf: str) -> dict:
    pong = ping(root.endpoint, timeout=5) or {}
    return next((entry for entry in pong.get("leaves", ()) if entry["leaf"] == leaf), {})


def test_a_root_late_to_read_pongs_keeps_live_leaves_in_rotation(world, process_runner):
    """The root's loop held far past health_timeout_ms (here: the root stopped,
    as a long request or a GC pause would hold it) while its leaves stay alive:
    the request that was waiting is scored, never answered `unavailable`."""
    leaves = spawn_leaves(process_runner, world)["ipc"]
    root = spawn_root(process_runner, world, leaves, health_timeout_ms=HEALTH_MS)
    with ScoringClient(root.endpoint) as client:
        assert not client.score(USER, CANDS).errors
        for _ in range(3):
            os.kill(root.pid, signal.SIGSTOP)
            try:
                rid = client.submit(USER, CANDS, deadline_ms=5000)
                time.sleep(2.5 * HEALTH_MS / 1000)
            finally:
                os.kill(root.pid, signal.SIGCONT)
            res = client.receive(10_000)
            assert res is not None and res.id == rid
            assert res.ok and not res.errors, res.errors
    assert "out of rotation" not in root.log(200_000)


def test_a_stopped_leaf_leaves_rotation_and_says_why(world, process_runner):
    """A leaf that answers nothing (stopped) leaves rotation: logged once with
    the reason and counted; its model's `unavailable` is counted with why;
    it rejoins once it answers again, logged and counted too."""
    leaves = spawn_leaves(process_runner, world)["ipc"]
    port = free_tcp_port()
    root = spawn_root(process_runner, world, leaves, health_timeout_ms=HEALTH_MS,
                      metrics_port=port)
    leaf1 = next(p for p in process_runner.procs if p.name == "leaf-1")
    os.kill(leaf1.pid, signal.SIGSTOP)
    try:
        until("leaf-1 out of rotation", lambda: link(root, "leaf-1").get("healthy") is False)
        with ScoringClient(root.endpoint) as client:
            for _ in range(3):
                res = client.score(USER, CANDS, deadline_ms=3000)
                assert res.ok and res.errors["div@2"]["kind"] == "unavailable"
                assert sorted(res.scores) == ["ctr@3", "eng@1"]
    finally:
        os.kill(leaf1.pid, signal.SIGCONT)
    root.wait_ready(30, ready=leaves_healthy)
    until("its rejoining logged", lambda: any(
        "leaf-1" in line and "back in rotation" in line for line in root.log(200_000).splitlines()))
    log = root.log(200_000)
    left = [line for line in log.splitlines() if "leaf-1" in line and "out of rotation" in line]
    assert len(left) == 1, left
    assert "no pong for" in left[0]
    assert "unavailable" in log and "div@2" in log
    assert metric(port, "trimmer_root_leaf_rotation_exits_total", leaf="leaf-1",
                  reason="no_pong") == 1
    assert metric(port, "trimmer_root_leaf_rotation_entries_total", leaf="leaf-1") >= 2
    assert metric(port, "trimmer_root_model_failures_total", model="div@2", kind="unavailable",
                  reason="no_replica_in_rotation") == 3


def test_a_killed_leaf_leaves_rotation_for_its_lost_connection(world, process_runner):
    leaves = spawn_leaves(process_runner, world)["ipc"]
    port = free_tcp_port()
    root = spawn_root(process_runner, world, leaves, health_timeout_ms=HEALTH_MS,
                      metrics_port=port)
    leaf1 = next(p for p in process_runner.procs if p.name == "leaf-1")
    leaf1.signal(signal.SIGKILL)
    leaf1.wait()
    until("leaf-1 out of rotation", lambda: link(root, "leaf-1").get("healthy") is False)
    with ScoringClient(root.endpoint) as client:
        res = client.score(USER, CANDS, deadline_ms=3000)
        assert res.errors["div@2"]["kind"] == "unavailable"
    until("the exit counted", lambda: metric(port, "trimmer_root_leaf_rotation_exits_total",
                                             leaf="leaf-1", reason="connection_lost") == 1)
    assert any("leaf-1" in line and "out of rotation" in line and "connection lost" in line
               for line in root.log(200_000).splitlines())
