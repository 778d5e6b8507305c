"""`trimmer root` and `trimmer leaf` drain and exit 0 on SIGTERM and on
SIGINT, also when they started with every stop signal ignored (a background
job, nohup), and also when the signal lands while they are still starting:
each leaves no socket file and no shared-memory ring behind."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.signals import caught, shm_segments_of

from .conftest import start_leaf, start_root

pytestmark = pytest.mark.slow

SIGNALS = [signal.SIGTERM, signal.SIGINT]
IDS = ["SIGTERM", "SIGINT"]


def ipc_path(proc) -> str:
    return proc.endpoint[len("ipc://"):]


def wait_for(condition, proc, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.returncode is None, f"{proc.name} exited {proc.returncode}:\n{proc.log()}"
        assert time.monotonic() < deadline, f"{proc.name}: no {what} after {timeout} s:\n{proc.log()}"
        time.sleep(0.002)


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_a_root_that_started_ignoring_stop_signals_drains_on_one(sig, world, leaves, process_runner):
    root = start_root(process_runner, world, leaves, name=f"root-{sig.name}")
    rings = shm_segments_of({root.pid})
    assert rings and os.path.exists(ipc_path(root))
    assert caught(root.pid, sig)
    root.signal(sig)
    assert root.wait(30) == 0, root.log()
    assert "drained, exiting" in root.log()
    assert shm_segments_of({root.pid}) == set()
    assert not os.path.exists(ipc_path(root))


def test_a_root_stopped_while_it_starts_still_drains(world, leaves, process_runner):
    root = start_root(process_runner, world, leaves, name="root-starting", ready=False)
    wait_for(lambda: caught(root.pid, signal.SIGTERM), root, what="SIGTERM handler")
    # Not up yet: nothing bound, no ring made. The signal waits for the server.
    assert not os.path.exists(ipc_path(root)), root.log()
    root.signal(signal.SIGTERM)
    assert root.wait(30) == 0, root.log()
    assert "drained, exiting" in root.log()
    assert shm_segments_of({root.pid}) == set()
    assert not os.path.exists(ipc_path(root))


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_a_leaf_that_started_ignoring_stop_signals_drains_on_one(sig, world, process_runner):
    leaf = start_leaf(process_runner, world, name=f"leaf-{sig.name}")
    assert os.path.exists(ipc_path(leaf))
    assert caught(leaf.pid, sig)
    leaf.signal(sig)
    assert leaf.wait(30) == 0, leaf.log()
    assert "stopped" in leaf.log()
    assert not os.path.exists(ipc_path(leaf))


def test_a_leaf_stopped_while_it_starts_still_drains(world, process_runner):
    leaf = start_leaf(process_runner, world, name="leaf-starting", ready=False)
    wait_for(lambda: caught(leaf.pid, signal.SIGTERM), leaf, what="SIGTERM handler")
    assert not os.path.exists(ipc_path(leaf)), leaf.log()  # torch still loading
    leaf.signal(signal.SIGTERM)
    assert leaf.wait(60) == 0, leaf.log()
    assert "stopped" in leaf.log()
    assert not os.path.exists(ipc_path(leaf))
