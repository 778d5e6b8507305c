"""A fleet coordinated through ZooKeeper: the rollout tests' world (schema,
feature store, ctr@3/ctr@5/eng@1), bundles whose placement names leaf
groups without endpoints (roots find them in the membership), and roots
and leaves following a zk:// store."""
from __future__ import annotations

import os
import sys

import pytest

from tests.rollout.conftest import world  # noqa: F401  (the rollout tests' world)
from tests.root.world import root_config, write_root_config
from tests.support.procs import ping

SESSION_S = 2.0
# Two leaf groups hosting the same versions: a request's result names which served it.
GROUPS = ("leaf-b", "leaf-c")
PLACE_1 = {"leaves": {g: {"current": ["ctr@3", "eng@1"]} for g in GROUPS}}
PLACE_2 = {"leaves": {g: {"current": ["ctr@3", "ctr@5", "eng@1"]} for g in GROUPS}}


@pytest.fixture(scope="session")
def fleet_bundles(world):  # noqa: F811
    from signatures.bundle import build
    from signatures.repository.module_info import ModelRepository
    from signatures.schema import FeatureSchema
    repo, schema = ModelRepository(world["repo"]), FeatureSchema.load(world["schema"])
    return build(repo, schema, PLACE_1), build(repo, schema, PLACE_2)


def leaf_argv(world, name: str, address: str, stage: str, bind: str) -> list[str]:  # noqa: F811
    return [sys.executable, "-m", "leafproc", "--repo", world["repo"], "--name", name,
            "--bind", bind, "--threads", "1", "--max-wait-ms", "0", "--retire-grace-s", "1",
            "--config-store", address, "--stage", stage,
            "--zookeeper-session-timeout-s", str(SESSION_S)]


def root_file(world, path: str, name: str, address: str, stage: str, bind: str,  # noqa: F811
              **overrides) -> str:
    cfg = root_config(world, {}, bind, name=name, bundle=None, config_store=address, stage=stage,
                      zookeeper={"session_timeout_s": SESSION_S}, **overrides)
    return write_root_config(path, cfg)


def routes(pong: dict | None, endpoints) -> bool:
    """Whether a root's pong routes every one of ``endpoints`` (ponged, with models)."""
    if pong is None:
        return False
    links = {link["endpoint"]: link for link in pong.get("leaves", [])}
    return all(ep in links and links[ep]["healthy"] and links[ep]["models"]
               and not links[ep].get("retiring") for ep in endpoints)


def linked(root_endpoint: str) -> set:
    """Endpoints a root has a link to that is not retiring."""
    pong = ping(root_endpoint, timeout=2.0) or {}
    return {link["endpoint"] for link in pong.get("leaves", []) if not link.get("retiring")}


def seed(address: str, bundle, stages=("production",)) -> None:
    from signatures.configstore import Stages, open_config_store
    with open_config_store(address) as store:
        for stage in stages:
            Stages(store).deploy(bundle, stage)
            Stages(store).deploy_models(stage, ["ctr@3", "eng@1"])


def spawn_root(runner, world, address, stage, name="root-0", **overrides):  # noqa: F811
    """A root following ``stage`` of ``address``; ``overrides``: root settings."""
    bind = runner.endpoint(name)
    path = root_file(world, os.path.join(runner.tmp_path, f"{name}.json"), name, address, stage,
                     bind, **overrides)
    return runner.spawn(name, [sys.executable, "-m", "rootproc", "--config", path],
                        endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
