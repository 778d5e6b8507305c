"""One node for the whole suite: a real root, a real leaf, a scripted leaf.

    leaf-0  `python -m leafproc` serving ctr@3, eng@1 and ctr@4 (a version the
            bundle lacks), bound on ipc (the root's shared-memory link) and tcp
    leaf-1  `FakeLeaf`, two replicas serving div@2 over LZ4 socket links; each
            case may script its pongs and replies
    root    `python -m rootproc` over the world of tests/root/world.py

The processes are started once for the package and shared by every case;
a case that scripts leaf-1 resets it afterwards (`fake` fixture).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import pytest

from tests.root.world import GAP_MODEL, build_world, root_config, write_root_config
from tests.support.procs import ManagedProcess, ProcessRunner, ping

from .harness import FakeLeaf, until

PING_MS = 100
HEALTH_MS = 1000
DEADLINE_MS = 3000
MAX_MESSAGE_BYTES = 1 << 20


@dataclass
class Node:
    world: dict
    root: ManagedProcess
    leaf0: ManagedProcess
    leaf0_tcp: str
    fake: FakeLeaf
    cfg: dict

    def routes(self, leaf: str) -> set:
        """The versions the root routes to ``leaf`` now (union over its links)."""
        pong = ping(self.root.endpoint, timeout=5) or {}
        return {m for link in pong.get("leaves", []) if link["leaf"] == leaf and link["healthy"]
                and not link.get("draining") for m in link["models"]}


def bundle_hash(world: dict, key: str) -> str:
    with open(world["bundle"]) as f:
        return json.load(f)["models"][key]["signature_hash"]


@pytest.fixture(scope="package")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="package")
def node(world, tmp_path_factory):
    runner = ProcessRunner(tmp_path_factory.mktemp("node"))
    fake = None
    try:
        leaf0_ipc, leaf0_tcp = runner.endpoint("leaf-0"), runner.endpoint("leaf-0", "tcp")
        runner.leaf(world["repo"], models=["ctr@3", "eng@1", GAP_MODEL[0]], name="leaf-0",
                    bind=leaf0_ipc, args=["--bind", leaf0_tcp, "--max-wait-ms", "0",
                                          "--max-message-bytes", str(MAX_MESSAGE_BYTES)])
        leaf0 = runner.procs[-1]
        fake = FakeLeaf("leaf-1", "div@2", bundle_hash(world, "div@2"),
                        [runner.endpoint("leaf-1a"), runner.endpoint("leaf-1b")], "pin_ctr_raw")
        bind = runner.endpoint("root")
        cfg = root_config(world, {}, bind, name="root-c", deadline_ms=DEADLINE_MS,
                          ping_interval_ms=PING_MS, health_timeout_ms=HEALTH_MS,
                          shm={"enabled": True, "slot_bytes": 1 << 20, "slots": 8},
                          leaves=[{"name": "leaf-0", "endpoints": [leaf0_ipc], "transport": "shm"},
                                  {"name": "leaf-1", "endpoints": [r.endpoint for r in fake.replicas],
                                   "transport": "socket", "compression": "lz4"}])
        path = write_root_config(os.path.join(runner.tmp_path, "root.json"), cfg)
        root = runner.spawn("root", [sys.executable, "-m", "rootproc", "--config", path],
                            endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
        n = Node(world, root, leaf0, leaf0_tcp, fake, cfg)
        root.wait_ready(60, ready=lambda pong: len(pong.get("leaves", [])) == 3 and all(
            link["healthy"] and link["models"] for link in pong["leaves"]))
        yield n
    finally:
        if fake is not None:
            fake.close()
        runner.close()


@pytest.fixture
def fake(node):
    """leaf-1, scripted by the test and put back as it was afterwards: the root
    routes div@2 to both replicas again before the next test."""
    node.fake.reset()
    try:
        yield node.fake
    finally:
        node.fake.reset()
        settle(node)


def settle(node: Node) -> None:
    """Wait until the root has heard leaf-1's ordinary pongs again and routes
    div@2 to both replicas."""
    node.fake.heard()
    def both():
        pong = ping(node.root.endpoint, timeout=5) or {}
        links = [link for link in pong.get("leaves", []) if link["leaf"] == "leaf-1"]
        return len(links) == 2 and all(link["healthy"] and link["models"] == ["div@2"]
                                       and not link.get("draining") for link in links)
    until("leaf-1's replicas back in rotation", both)
