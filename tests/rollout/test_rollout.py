"""Roots and leaves following a config store's stages under continuous load."""
from __future__ import annotations

import os
import time

import pytest

from signatures.configstore import Stages, open_config_store
from tests.support.procs import ping

from .conftest import (
    Load,
    check_replies,
    root_pong,
    scrape,
    seed_store,
    serving,
    spawn_leaf,
    spawn_root,
    wait_for,
)

pytestmark = pytest.mark.slow


def leaf_serves(leaf, *keys):
    return lambda: (pong := ping(leaf.endpoint, timeout=1.0)) is not None and serving(*keys)(pong)


def leaf_models(leaf) -> set:
    pong = ping(leaf.endpoint, timeout=1.0) or {}
    return {m["model"] for m in pong.get("models", [])}


def on_generation(root, gen):
    return lambda: root_pong(root)["generation"] >= gen


def settles_on(load: Load, versions: set, n: int = 10):
    """Wait until the last ``n`` replies all used exactly ``versions``."""
    def check():
        recent = load.replies[-n:]
        return len(recent) == n and {r["model"] for _, _, res in recent
                                     for r in res.results} == versions
    wait_for(f"traffic on {sorted(versions)}", check, timeout=20)


def traffic_after(load: Load, n: int = 10):
    """Wait until ``n`` more replies have arrived."""
    target = load.count() + n
    wait_for(f"{n} more replies", lambda: load.count() >= target)


def test_seed_pipeline_config_models_promote_rollback(world, process_runner, tmp_path):
    store_path = str(tmp_path / "configs")
    store = seed_store(world, store_path)
    stages = Stages(store)
    leaf_c = spawn_leaf(process_runner, world, store_path, "canary")
    leaf_p = spawn_leaf(process_runner, world, store_path, "production")
    root_c = spawn_root(process_runner, world, store_path, "canary", leaf_c.endpoint)
    root_p = spawn_root(process_runner, world, store_path, "production", leaf_p.endpoint)
    load_c, load_p = Load(root_c.endpoint), Load(root_p.endpoint)
    load_c.start()
    load_p.start()
    try:
        traffic_after(load_c)
        # 1. Root config first: it carries ctr@5 before any leaf has it.
        gen = stages.deploy(world["b2"], "canary")
        wait_for("canary root on b2", on_generation(root_c, gen))
        assert root_pong(root_c)["config"] == world["b2"].id
        traffic_after(load_c)
        # 2. Then the model: loaded and warmed before traffic moves to it.
        stages.deploy_models("canary", ["ctr@5"])
        wait_for("canary leaf serving ctr@5", leaf_serves(leaf_c, "ctr@5"), timeout=30)
        settles_on(load_c, {"ctr@5", "eng@1"})
        assert "ctr@5" not in load_p.versions()  # production untouched so far
        # 3. Promote config and models to production in one change.
        gen = stages.promote("canary", "production")
        wait_for("production root on b2", on_generation(root_p, gen))
        wait_for("production leaf serving ctr@5", leaf_serves(leaf_p, "ctr@5"), timeout=30)
        settles_on(load_p, {"ctr@5", "eng@1"})
        # 4. Roll production back: b1 and the models production had with it.
        report = stages.rollback("production", wait_s=60)
        assert report.bundle == world["b1"].id and report.uncovered == []
        assert report.models == ["ctr@3", "eng@1"]
        wait_for("production root back on b1", on_generation(root_p, report.generation))
        settles_on(load_p, {"ctr@3", "eng@1"})
    finally:
        load_c.stop()
        load_p.stop()
    check_replies(world, load_c)
    check_replies(world, load_p)
    # Every reply was trimmed: each version it used was in the root's config.
    assert all(r["trimmed"] for load in (load_c, load_p) for _, _, res in load.replies
               for r in res.results)
    # Heartbeats: both roles on both stages, on the stage's generation.
    def on_latest():
        status = Stages(open_config_store(store_path)).status()
        return all({(m["role"], m.get("generation")) for m in status[s]["members"]} ==
                   {("root", status[s]["generation"]), ("leaf", status[s]["generation"])}
                   for s in ("canary", "production"))
    wait_for("heartbeats on the latest generation", on_latest, timeout=10)


def test_models_before_config_fail_open_then_trim(world, process_runner, tmp_path):
    store_path = str(tmp_path / "configs")
    store = seed_store(world, store_path, stages=("canary",))
    stages = Stages(store)
    leaf = spawn_leaf(process_runner, world, store_path, "canary")
    root = spawn_root(process_runner, world, store_path, "canary", leaf.endpoint, metrics=True)
    load = Load(root.endpoint)
    load.start()
    gap_load = None
    try:
        traffic_after(load)
        # The wrong order, forced: ctr@5 on the stage before any config carries it.
        stages.deploy_models("canary", ["ctr@5"], force=True)
        wait_for("leaf serving ctr@5", leaf_serves(leaf, "ctr@5"), timeout=30)
        wait_for("root sees ctr@5", lambda: any(
            "ctr@5" in link["models"] for link in root_pong(root)["leaves"]))
        gap_load = Load(root.endpoint, models=("ctr@5", "eng"))
        gap_load.start()
        traffic_after(gap_load, 10)
        gaps = scrape(root.metrics_port)[("trimmer_root_trim_gaps_total",
                                         frozenset({"model": "ctr@5"}.items()))]
        assert gaps >= 10
        # The root reports the gap in its heartbeat, `trimmer status` shows it.
        wait_for("gap in heartbeat", lambda: any(
            "ctr@5" in dict(m.trim_gaps) for m in store.members("canary")), timeout=10)
        from signatures.cli.stages import format_status
        assert "trim gap: ctr@5" in format_status(stages.status())
        # Then the config arrives: trimming resumes.
        gen = stages.deploy(world["b2"], "canary")
        wait_for("root on b2", on_generation(root, gen))
        t_config = time.monotonic()
        wait_for("trimming resumed", lambda: len(gap_load.replies) > 10 and all(
            r["trimmed"] for _, _, res in gap_load.replies[-10:] for r in res.results))
    finally:
        load.stop()
        if gap_load is not None:
            gap_load.stop()
    check_replies(world, load)
    check_replies(world, gap_load)
    ctr5 = [(t, r["trimmed"]) for t, _, res in gap_load.replies for r in res.results
            if r["model"] == "ctr@5"]
    assert any(not trimmed for t, trimmed in ctr5 if t < t_config)
    # Once trimming resumed it stayed on.
    first = next(i for i, (t, trimmed) in enumerate(ctr5) if t >= t_config and trimmed)
    assert all(trimmed for _, trimmed in ctr5[first:])


def test_corrupt_config_is_ignored(world, process_runner, tmp_path):
    store_path = str(tmp_path / "configs")
    store = seed_store(world, store_path, stages=("production",))
    stages = Stages(store)
    leaf = spawn_leaf(process_runner, world, store_path, "production")
    root = spawn_root(process_runner, world, store_path, "production", leaf.endpoint, metrics=True)
    errors = ("trimmer_root_config_errors_total", frozenset())
    load = Load(root.endpoint)
    load.start()
    try:
        traffic_after(load)
        good_gen = root_pong(root)["generation"]
        # Garbage in the stage file.
        stage_file = os.path.join(store_path, "stages", "production.json")
        with open(stage_file, "rb") as f:
            good = f.read()
        with open(stage_file, "wb") as f:
            f.write(b"\x00\xffnot json{{")
        wait_for("config error counted", lambda: scrape(root.metrics_port)[errors] >= 1)
        traffic_after(load)
        with open(stage_file, "wb") as f:
            f.write(good)
        # A new generation whose bundle file is garbage (written before the deploy,
        # which never rewrites a bundle it already has).
        bundle_file = os.path.join(store_path, "bundles", f"{world['b2'].id}.json")
        with open(bundle_file, "wb") as f:
            f.write(b"garbage")
        bad_gen = stages.deploy(world["b2"], "production")
        wait_for("second config error", lambda: scrape(root.metrics_port)[errors] >= 2)
        traffic_after(load)
        pong = root_pong(root)
        assert pong["config"] == world["b1"].id and pong["generation"] == good_gen < bad_gen
        assert leaf_models(leaf) == {"ctr@3", "eng@1"}
        assert root.returncode is None and leaf.returncode is None
        assert "ignoring the new production config" in root.log(20000)
    finally:
        load.stop()
    check_replies(world, load, live=("ctr@3", "eng@1"))


def test_model_that_fails_to_load_leaves_the_old_version_serving(world, process_runner, tmp_path):
    from signatures.repository.module_info import ModuleInfo, sha256_file
    # ctr@7: a model.pt that is not TorchScript, with a module_info that matches it.
    version_dir = os.path.join(world["repo"], "ctr", "7")
    os.makedirs(version_dir, exist_ok=True)
    with open(os.path.join(version_dir, "model.pt"), "wb") as f:
        f.write(b"not a torchscript archive")
    ModuleInfo(model="ctr", version="7", inputs=list(world["inputs"]["ctr@3"]),
               artifact_sha256=sha256_file(os.path.join(version_dir, "model.pt")),
               provenance={"source": "test"}).write(version_dir)
    store_path = str(tmp_path / "configs")
    store = seed_store(world, store_path, stages=("canary",))
    stages = Stages(store)
    leaf = spawn_leaf(process_runner, world, store_path, "canary")
    root = spawn_root(process_runner, world, store_path, "canary", leaf.endpoint)
    load = Load(root.endpoint)
    load.start()
    try:
        traffic_after(load)
        stages.deploy_models("canary", ["ctr@7", "eng@1"], replace=True, force=True)
        failed = wait_for("ctr@7 reported failed", lambda: [
            m for m in (ping(leaf.endpoint) or {}).get("models", [])
            if m["model"] == "ctr@7" and m.get("state") == "failed"], timeout=30)
        assert failed[0]["ready"] is False and failed[0]["error"]
        time.sleep(1.5)  # past the retire grace: ctr@3 must still be there
        assert serving("ctr@3", "eng@1")(ping(leaf.endpoint))
        traffic_after(load)
        wait_for("failure in heartbeat", lambda: any(
            "ctr@7" in dict(m.failed) for m in store.members("canary")), timeout=10)
        assert "failed to load" in leaf.log(20000)
    finally:
        load.stop()
    check_replies(world, load, live=("ctr@3", "eng@1"))


def test_rollback_after_a_replace_restores_config_and_models_under_load(world, process_runner,
                                                                         tmp_path):
    """The issue-26 sequence: a new version replaces the old one, then a
    rollback: config and models go back as one unit, in the safe order,
    with no failed and no untrimmed request."""
    store_path = str(tmp_path / "configs")
    store = seed_store(world, store_path, stages=("production",))
    stages = Stages(store)
    leaf = spawn_leaf(process_runner, world, store_path, "production")
    root = spawn_root(process_runner, world, store_path, "production", leaf.endpoint)
    load = Load(root.endpoint)
    load.start()
    try:
        traffic_after(load)
        gen = stages.deploy(world["b2"], "production")
        wait_for("root on b2", on_generation(root, gen))
        stages.deploy_models("production", ["ctr@5", "eng@1"], replace=True, wait_s=30)
        wait_for("leaf serving only ctr@5", lambda: leaf_models(leaf) == {"ctr@5", "eng@1"},
                 timeout=30)
        settles_on(load, {"ctr@5", "eng@1"})
        report = stages.rollback("production", wait_s=60)
        assert (report.bundle, report.previous) == (world["b1"].id, world["b2"].id)
        assert report.models_before == ["ctr@5", "eng@1"]
        assert report.models == ["ctr@3", "eng@1"] and report.uncovered == []
        state = store.state("production")
        assert (state["bundle"], state["models"]) == (world["b1"].id, ["ctr@3", "eng@1"])
        wait_for("root back on b1", on_generation(root, report.generation))
        settles_on(load, {"ctr@3", "eng@1"})
        wait_for("leaf serving only ctr@3", lambda: leaf_models(leaf) == {"ctr@3", "eng@1"},
                 timeout=30)
        traffic_after(load)
    finally:
        load.stop()
    check_replies(world, load)
    untrimmed = [(r["model"], t) for t, _, res in load.replies for r in res.results
                 if not r["trimmed"]]
    assert untrimmed == []
    from signatures.cli.stages import format_status
    assert "NOT IN CONFIG" not in format_status(stages.status())
    # The leaf's start line says what it serves: nothing yet, following its stage.
    assert "serving nothing yet: following stage production" in leaf.log(200_000)
    assert "serving  (device" not in leaf.log(200_000)
