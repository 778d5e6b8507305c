"""Losing or breaking a stage's record: the last good state keeps serving, the
followers say so (log, metric, heartbeat), `trimmer status` shows what it
can, and `deploy` / `rollback` write a new record, the audit log saying why."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from signatures.configstore import Stages, open_config_store
from tests.support.procs import REPO_ROOT, free_tcp_port, ping

from .conftest import (
    Load,
    check_replies,
    root_pong,
    scrape,
    seed_store,
    serving,
    spawn_root,
    wait_for,
)

pytestmark = pytest.mark.slow


def trimmer(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "signatures.cli", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def leaf_models(leaf) -> set:
    pong = ping(leaf.endpoint, timeout=1.0) or {}
    return {m["model"] for m in pong.get("models", []) if m.get("ready")}


def test_a_deleted_stage_file_takes_no_model_down(world, process_runner, tmp_path):
    store_path = str(tmp_path / "configs")
    store = seed_store(world, store_path, stages=("production",))
    leaf_port = free_tcp_port()
    leaf = process_runner.leaf(world["repo"], name="leaf-0-production", ready=False,
                               args=["--name", "leaf-0", "--config-store", store_path,
                                     "--stage", "production", "--max-wait-ms", "0",
                                     "--retire-grace-s", "0.2", "--metrics-port", str(leaf_port)])
    leaf.wait_ready(60, ready=serving("ctr@3", "eng@1"))
    root = spawn_root(process_runner, world, store_path, "production", leaf.endpoint, metrics=True)
    generation = root_pong(root)["generation"]
    load = Load(root.endpoint)
    load.start()
    try:
        wait_for("load", lambda: load.count() >= 20)
        os.remove(os.path.join(store_path, "stages", "production.json"))
        wait_for("the leaf counting the lost stage",
                 lambda: scrape(leaf_port).get(("trimmer_leaf_config_errors_total", frozenset()), 0) >= 1)
        wait_for("the root counting the lost stage",
                 lambda: scrape(root.metrics_port)[("trimmer_root_config_errors_total", frozenset())] >= 1)
        before = load.count()
        wait_for("a second of traffic past the retire grace", lambda: load.count() >= before + 100)
        assert leaf_models(leaf) == {"ctr@3", "eng@1"}
        assert root_pong(root)["generation"] == generation
        for proc in (leaf, root):
            assert "stage record" in proc.log(20000) and "missing" in proc.log(20000), proc.log()
        # status shows the loss and what the audit log says the stage ran; exit 1.
        out = trimmer("status", "--config-store", store_path)
        assert out.returncode == 1, out
        assert "production: LOST" in out.stdout, out.stdout
        assert world["b1"].id in out.stdout and "ctr@3, eng@1" in out.stdout, out.stdout
        assert "leaf leaf-0" in out.stdout and "root root-production" in out.stdout, out.stdout
        # deploy writes a new record: the stage's models recovered from the audit
        # log, the generation past every one the members have seen.
        path = str(tmp_path / "b1.json")
        world["b1"].save(path)
        out = trimmer("deploy", path, "--stage", "production", "--config-store", store_path)
        assert out.returncode == 0, out
        assert "replaced the missing" in out.stderr, out.stderr
        state = store.state("production")
        assert state["models"] == ["ctr@3", "eng@1"] and state["bundle"] == world["b1"].id
        assert state["generation"] == generation + 1
        last = store.log_entries()[-1]
        assert last["action"] == "deploy" and last["replaced"] == "missing", last
        wait_for("the root on the new generation",
                 lambda: root_pong(root)["generation"] == generation + 1)
        before = load.count()
        wait_for("traffic on the new record", lambda: load.count() >= before + 50)
        assert leaf_models(leaf) == {"ctr@3", "eng@1"}
    finally:
        load.stop()
    load.tally("stage file deleted under load")
    check_replies(world, load, live=("ctr@3", "eng@1"))


def corrupt(store_path: str, stage: str) -> None:
    with open(os.path.join(store_path, "stages", f"{stage}.json"), "wb") as f:
        f.write(b'{"generation": 4, "bundle": ')


def test_a_corrupt_stage_record_can_be_rolled_back_or_redeployed(world, tmp_path):
    store_path = str(tmp_path / "configs")
    store = seed_store(world, store_path)
    Stages(store).deploy(world["b2"], "production")
    Stages(store).deploy_models("production", ["ctr@5"])
    good = store.state("production")
    corrupt(store_path, "production")

    out = trimmer("status", "--config-store", store_path)
    assert out.returncode == 1, out
    assert "production: CORRUPT" in out.stdout, out.stdout
    # What the audit log says the stage ran, and the healthy stage as usual.
    assert f"generation {good['generation']}" in out.stdout and world["b2"].id in out.stdout
    assert "ctr@3, eng@1, ctr@5" in out.stdout, out.stdout
    assert f"canary: generation 2, config {world['b1'].id}" in out.stdout, out.stdout
    out = trimmer("status", "--json", "--config-store", store_path)
    status = json.loads(out.stdout)
    assert "corrupt stage record" in status["production"]["error"]
    assert status["production"]["recovered"]["bundle"] == world["b2"].id

    # deploy-models needs the record it adds to: refused, naming what replaces it.
    out = trimmer("deploy-models", "ctr@5", "--stage", "production", "--config-store", store_path)
    assert out.returncode == 1 and "corrupt stage record" in out.stderr, out
    assert "trimmer rollback" in out.stderr and "trimmer deploy" in out.stderr, out.stderr

    out = trimmer("rollback", "production", "--config-store", store_path)
    assert out.returncode == 0, out
    assert "replaced the corrupt" in out.stderr, out.stderr
    state = store.state("production")
    # What production ran with b1: ctr@5 leaves first, then b1 returns.
    assert state["bundle"] == world["b1"].id and state["history"] == []
    assert state["models"] == ["ctr@3", "eng@1"]
    assert state["generation"] == good["generation"] + 2
    first = store.log_entries()[-2]
    assert first["action"] == "rollback-models" and first["replaced"] == "corrupt", first
    assert "corrupt stage record" in first["replaced_error"]

    corrupt(store_path, "production")
    path = str(tmp_path / "b2.json")
    world["b2"].save(path)
    out = trimmer("deploy", path, "--stage", "production", "--config-store", store_path)
    assert out.returncode == 0, out
    state = store.state("production")
    assert state["bundle"] == world["b2"].id and state["history"] == [world["b1"].id]
    assert state["generation"] == good["generation"] + 3
    assert store.log_entries()[-1]["replaced"] == "corrupt"
    out = trimmer("status", "--config-store", store_path)
    assert out.returncode == 0 and "CORRUPT" not in out.stdout, out


def test_a_stage_never_written_is_empty_not_lost(tmp_path):
    store = open_config_store(tmp_path / "configs")
    assert store.state("canary") == {"generation": 0, "bundle": None, "history": [], "models": []}
    out = trimmer("status", "--config-store", str(tmp_path / "configs"))
    assert out.returncode == 0 and "canary: generation 0, config (none)" in out.stdout, out
