"""Real roots and leaves over the tests/root world, started with the signal
dispositions each test means (tests/support/signals.py)."""
from __future__ import annotations

import os
import sys

from tests.root.conftest import leaves_healthy
from tests.root.world import root_config, write_root_config

# The world and its two leaves, as the shared-memory tests have them.
from tests.shm.conftest import leaves, world  # noqa: F401
from tests.support.procs import ProcessRunner
from tests.support.signals import STOP_SIGNALS, with_dispositions


def start_root(runner: ProcessRunner, world_data: dict, leaf_endpoints: dict, *, name: str = "root",
               ignored=STOP_SIGNALS, ready: bool = True, **overrides):
    """A `python -m rootproc` with shared-memory rings to its leaves, started
    with ``ignored`` ignored (by default every stop signal)."""
    bind = runner.endpoint(name)
    shm = {"enabled": True, "slot_bytes": 1 << 20, "slots": 4}
    cfg = root_config(world_data, leaf_endpoints, bind, name=name, shm=shm, **overrides)
    path = write_root_config(os.path.join(runner.tmp_path, f"{name}.json"), cfg)
    proc = runner.spawn(name, with_dispositions([sys.executable, "-m", "rootproc", "--config", path],
                                                ignored),
                        endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
    if ready:
        proc.wait_ready(30, ready=leaves_healthy)
    return proc


def start_leaf(runner: ProcessRunner, world_data: dict, *, name: str = "leaf", ignored=STOP_SIGNALS,
               ready: bool = True):
    """A `python -m leafproc` serving ctr@3, started with ``ignored`` ignored."""
    bind = runner.endpoint(name)
    argv = [sys.executable, "-m", "leafproc", "--repo", os.fspath(world_data["repo"]), "--bind", bind,
            "--name", name, "--threads", "1", "--model", "ctr@3"]
    proc = runner.spawn(name, with_dispositions(argv, ignored), endpoint=bind,
                        ipc_paths=[bind[len("ipc://"):]])
    if ready:
        proc.wait_ready(60)
    return proc
