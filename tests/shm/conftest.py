from __future__ import annotations

import os
import urllib.request

import pytest

from _trim.transport.shm import owner_pid
from tests.root.conftest import leaves_healthy, leaves_running, spawn_leaves, spawn_root  # noqa: F401
from tests.root.world import build_world
from tests.support.procs import STARTED_PIDS, free_tcp_port

SHM_DIR = "/dev/shm"


def trimmer_segments() -> set[str]:
    """The processes use the real /dev/shm, so the tests watch it."""
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith("trimmer-")}
    except FileNotFoundError:
        return set()


def our_segments() -> set[str]:
    """Segments of this test process and of the processes its runners started:
    another Feature Trimmer on the machine (a demo, another checkout) makes
    and removes segments of its own meanwhile."""
    ours = STARTED_PIDS | {os.getpid()}
    return {n for n in trimmer_segments() if owner_pid(n) in ours}


def segments_of(pid: int) -> set[str]:
    return {n for n in trimmer_segments() if n.startswith(f"trimmer-{pid}-")}


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(autouse=True)
def shm_left_as_found():
    before = our_segments()
    yield
    leaked = our_segments() - before
    assert not leaked, f"segments left in {SHM_DIR}: {sorted(leaked)}"


@pytest.fixture(scope="module")
def leaves(world, tmp_path_factory):
    with leaves_running(tmp_path_factory, world) as endpoints:
        yield endpoints["ipc"]


def metric(port: int, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            got = head[head.find("{") + 1:head.rfind("}")] if "{" in head else ""
            if all(part in got.split(",") for part in want.split(",") if part):
                total += float(value)
    return total


def shm_root(runner, world, leaves, *, port=None, shm=None, name="root", **overrides):
    cfg = {"enabled": True, "slot_bytes": 1 << 20, "slots": 8, "wait_ms": 1, **(shm or {})}
    return spawn_root(runner, world, leaves, name=name, shm=cfg,
                      metrics_port=port or free_tcp_port(), **overrides)
