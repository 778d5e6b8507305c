"""A root following a stage adds and retires leaf links as bundles name them,
without a restart and without failing a request (rootproc/leaves/replicas.py,
`LeafLinks.reconcile` in rootproc/leaves/links.py)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import sys
import time

import pytest

from _trim.transport.shm import PREFIX
from rootproc.client.scoring_client import ScoringClient
from signatures.bundle import build
from signatures.cli.stages import format_status
from signatures.configstore import Stages, open_config_store
from signatures.repository.module_info import ModelRepository
from signatures.schema import FeatureSchema
from tests.rollout.conftest import REQUESTS, Load, check_replies, root_pong, serving, wait_for
from tests.root.world import root_config, write_root_config
from tests.support.models import write_model
from tests.support.procs import ProcessRunner, processes_mentioning

pytestmark = pytest.mark.slow

STAGE = "canary"
BASE = {"leaf-0": {"current": ["ctr@3", "eng@1"]}}


def bundle(world, repo, leaves: dict):
    return build(ModelRepository(repo), FeatureSchema.load(world["schema"]), {"leaves": leaves})


def spawn_leaf(runner: ProcessRunner, repo, store_path, name, expect):
    leaf = runner.leaf(repo, name=name, ready=False,
                       args=["--config-store", store_path, "--stage", STAGE,
                             "--max-wait-ms", "0", "--retire-grace-s", "1"])
    leaf.wait_ready(60, ready=serving(*expect))
    return leaf


def spawn_root(runner: ProcessRunner, world, store_path, leaf0, **extra):
    """A root whose config file names leaf-0 only; shared memory on, so that
    added and retired links get and give back a ring."""
    bind = runner.endpoint("root")
    cfg = root_config(world, {"leaf-0": leaf0.endpoint}, bind, name="root-leafset", bundle=None,
                      config_store=store_path, stage=STAGE, shm={"enabled": True}, **extra)
    path = write_root_config(os.path.join(runner.tmp_path, "root.json"), cfg)
    proc = runner.spawn("root", [sys.executable, "-m", "rootproc", "--config", path],
                        endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
    proc.wait_ready(30, ready=lambda p: bool(p.get("leaves")) and
                    all(link["healthy"] for link in p["leaves"]))
    return proc


def links(root) -> dict:
    """leaf name -> its link entry in the root's pong."""
    return {link["leaf"]: link for link in root_pong(root)["leaves"]}


def rings(root, leaf: str) -> list[str]:
    return glob.glob(f"/dev/shm/{PREFIX}{root.pid}-{leaf.replace('-', '_')}-*")


def on_generation(root, gen):
    return lambda: root_pong(root)["generation"] >= gen


def test_leaf_added_then_retired_under_load(world, process_runner, tmp_path):
    repo = world["repo"]
    store_path = str(tmp_path / "configs")
    stages = Stages(open_config_store(store_path))
    stages.deploy(bundle(world, repo, BASE), STAGE)
    stages.deploy_models(STAGE, ["ctr@3", "eng@1"])
    leaf0 = spawn_leaf(process_runner, repo, store_path, "leaf-0", ("ctr@3", "eng@1"))
    root = spawn_root(process_runner, world, store_path, leaf0)
    assert set(links(root)) == {"leaf-0"}
    load = Load(root.endpoint)   # "ctr" resolves to the highest version a ready leaf serves
    load.start()
    try:
        # A second leaf, then a bundle placing ctr@5 on it (with its endpoint),
        # then the model: the root links to it and routes there once it is ready.
        leaf1 = process_runner.leaf(repo, name="leaf-1", ready=False,
                                    args=["--config-store", store_path, "--stage", STAGE,
                                          "--max-wait-ms", "0", "--retire-grace-s", "1"])
        leaf1.wait_ready(60, ready=lambda p: p.get("generation") is not None)
        grown = {**BASE, "leaf-1": {"endpoint": leaf1.endpoint, "current": ["ctr@5"]}}
        gen = stages.deploy(bundle(world, repo, grown), STAGE)
        wait_for("root linked to leaf-1", lambda: "leaf-1" in links(root), timeout=5)
        assert root_pong(root)["generation"] >= gen
        stages.deploy_models(STAGE, ["ctr@5"])
        t0 = time.monotonic()
        with ScoringClient(root.endpoint, timeout_ms=5000) as client:
            user, cands = REQUESTS[0]
            wait_for("ctr@5 scored on leaf-1", lambda: (res := client.score(
                user, cands, models=["ctr@5"])).ok and not res.errors, timeout=30, every=0.1)
        took = time.monotonic() - t0
        assert links(root)["leaf-1"]["healthy"] and "ctr@5" in links(root)["leaf-1"]["models"]
        wait_for("load on ctr@5", lambda: "ctr@5" in load.versions(since=time.monotonic() - 0.5))
        assert len(rings(root, "leaf-1")) == 1, "an added ipc link gets its shared-memory ring"
        wait_for("trimmer status lists the root's link to leaf-1",
                 lambda: f"leaf-1 {leaf1.endpoint}" in format_status(stages.status()), timeout=5)
        # Then a bundle without leaf-1 (ctr@5 moves to leaf-0) while requests
        # are in flight to leaf-1: it takes no new ones, answers what it has, closes.
        moved = {"leaf-0": {"current": ["ctr@3", "ctr@5", "eng@1"]}}
        gen = stages.deploy(bundle(world, repo, moved), STAGE)
        wait_for("root on the bundle without leaf-1", on_generation(root, gen), timeout=5)
        wait_for("leaf-1's link closed", lambda: "leaf-1" not in links(root), timeout=15)
        assert not rings(root, "leaf-1"), "a retired link gives its ring back"
        assert links(root)["leaf-0"]["healthy"]
        wait_for("traffic back on leaf-0 only", lambda: load.count() > 0 and all(
            r.get("leaf") == "leaf-0" for _, _, res in load.replies[-5:] for r in res.results),
            timeout=30)
        n = load.count()
        wait_for("more replies", lambda: load.count() >= n + 10)
    finally:
        load.stop()
    check_replies(world, load)
    assert took < 30
    assert "leaf-1" in root.log(100_000) and "retired link closed" in root.log(100_000)
    pid = root.pid
    process_runner.close()
    assert not glob.glob(os.path.join(process_runner.tmp_path, "*.ipc"))
    assert not glob.glob(f"/dev/shm/{PREFIX}{pid}-*")
    assert not processes_mentioning(store_path)


def test_retired_leaf_answers_its_requests_in_flight(world, process_runner, tmp_path):
    """A request a leaf holds when its link retires still gets its reply: the
    scores, or ``deadline`` when the leaf is slower than the request's
    deadline. The leaf is frozen (SIGSTOP) from before the requests until its
    link is retiring, so both are certainly in flight then, whatever the
    machine's load (a slow model instead could finish first on a loaded one)."""
    repo = str(tmp_path / "repo")
    shutil.copytree(world["repo"], repo)
    write_model(repo, "held", "1", world["inputs"]["ctr@3"])
    store_path = str(tmp_path / "configs")
    stages = Stages(open_config_store(store_path))
    base = bundle(world, repo, BASE)
    stages.deploy(base, STAGE)
    stages.deploy_models(STAGE, ["ctr@3", "eng@1"])
    leaf0 = spawn_leaf(process_runner, repo, store_path, "leaf-0", ("ctr@3", "eng@1"))
    root = spawn_root(process_runner, world, store_path, leaf0, max_deadline_ms=60_000)
    leaf1 = process_runner.leaf(repo, name="leaf-1", ready=False,
                                args=["--config-store", store_path, "--stage", STAGE,
                                      "--max-wait-ms", "0", "--retire-grace-s", "1"])
    leaf1.wait_ready(60, ready=lambda p: p.get("generation") is not None)
    grown = {**BASE, "leaf-1": {"endpoint": leaf1.endpoint, "current": ["held@1"]}}
    stages.deploy(bundle(world, repo, grown), STAGE)
    stages.deploy_models(STAGE, ["held@1"])
    wait_for("root routing held@1 to leaf-1", lambda: "held@1" in links(root).get(
        "leaf-1", {}).get("models", ()) and links(root)["leaf-1"]["healthy"], timeout=30)
    load = Load(root.endpoint)
    load.start()
    try:
        with ScoringClient(root.endpoint, timeout_ms=60_000) as client:
            user, cands = REQUESTS[1]
            leaf1.signal(signal.SIGSTOP)
            try:
                patient = client.submit(user, cands, models=["held@1"], deadline_ms=30_000)
                hasty = client.submit(user, cands, models=["held@1"], deadline_ms=300)
                wait_for("requests in flight on leaf-1",
                         lambda: links(root)["leaf-1"]["outstanding"] >= 1, timeout=30)
                # Forced: held@1 stays on the stage, outside the config, so only leaf-1 has it.
                gen = stages.deploy(base, STAGE, force=True)
                wait_for("root on the bundle without leaf-1", on_generation(root, gen),
                         timeout=30)
            finally:
                leaf1.signal(signal.SIGCONT)
            replies = {}
            while len(replies) < 2:
                res = client.receive(60_000)
                assert res is not None, "a request in flight on a retired link was dropped"
                replies[res.id] = res
        assert replies[patient].ok and not replies[patient].errors, replies[patient].errors
        assert replies[patient].results[0]["leaf"] == "leaf-1"
        hasty_res = replies[hasty]   # its scores, or deadline if the leaf was frozen past it
        assert hasty_res.ok and (not hasty_res.errors or
                                 hasty_res.results[0]["error"]["kind"] == "deadline"), \
            hasty_res.results
        wait_for("leaf-1's link closed", lambda: "leaf-1" not in links(root), timeout=30)
        assert not rings(root, "leaf-1")
        retiring = re.search(r"leaf leaf-1 \(\S+\): no config names it; retiring \((\d+) "
                             r"request", root.log(100_000))
        assert retiring and int(retiring.group(1)) >= 1, root.log()
        n = load.count()
        wait_for("more replies", lambda: load.count() >= n + 5)
    finally:
        load.stop()
    check_replies(world, load)
