from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import pytest

from tests.support.procs import ProcessRunner

from .world import GAP_MODEL, build_world, root_config, write_root_config


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def leaves_healthy(pong: dict) -> bool:
    return bool(pong.get("leaves")) and all(link["healthy"] for link in pong["leaves"])


def spawn_root(runner: ProcessRunner, world: dict, leaf_endpoints: dict, *, transport="ipc",
               name="root", ready=leaves_healthy, **overrides):
    """A `python -m rootproc` process with a config file written for it."""
    bind = runner.endpoint(name, transport)
    cfg = root_config(world, leaf_endpoints, bind, name=name, **overrides)
    path = write_root_config(os.path.join(runner.tmp_path, f"{name}.json"), cfg)
    ipc = [bind[len("ipc://"):]] if bind.startswith("ipc://") else []
    proc = runner.spawn(name, [sys.executable, "-m", "rootproc", "--config", path],
                        endpoint=bind, ipc_paths=ipc)
    if ready is not None:
        proc.wait_ready(30, ready=ready)
    return proc


@contextlib.contextmanager
def leaves_running(tmp_path_factory, world: dict, transports=("ipc",)) -> Iterator[dict]:
    """`spawn_leaves` in a runner of their own, stopped on exit (a module's leaves)."""
    runner = ProcessRunner(tmp_path_factory.mktemp("leaves"))
    try:
        yield spawn_leaves(runner, world, transports)
    finally:
        runner.close()


def spawn_leaves(runner: ProcessRunner, world: dict, transports=("ipc",)) -> dict:
    """leaf-0 (ctr@3, eng@1 and the bundle-less ctr@4) and leaf-1 (div@2), each
    bound once per transport; returns {transport: {leaf name: endpoint}}."""
    hosted = {"leaf-0": ["ctr@3", "eng@1", GAP_MODEL[0]], "leaf-1": ["div@2"]}
    out = {t: {} for t in transports}
    for name, models in hosted.items():
        eps = {t: runner.endpoint(name, t) for t in transports}
        extra = []
        for t in transports[1:]:
            extra += ["--bind", eps[t]]
        runner.leaf(world["repo"], models=models, name=name, bind=eps[transports[0]],
                    args=extra + ["--max-wait-ms", "0"])
        for t in transports:
            out[t][name] = eps[t]
        proc = runner.procs[-1]
        proc.ipc_paths += [eps[t][len("ipc://"):] for t in transports[1:] if t == "ipc"]
    return out
