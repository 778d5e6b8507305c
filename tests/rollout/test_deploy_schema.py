"""`deploy` and `deploy-models` check a bundle against the feature schema the
stage's roots run (each root publishes it to the store and names its
fingerprint in its heartbeat) and refuse one that needs features it lacks."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from _trim.errors import StoreError
from signatures.configstore import open_config_store
from tests.root.world import SCHEMA
from tests.support.models import write_model

from .conftest import seed_store, spawn_leaf, spawn_root, wait_for
from .test_stage_loss import trimmer

pytestmark = pytest.mark.slow

EXTRA = {"name": "pin_fresh", "dtype": "float32", "source": "candidate", "raw": "ctr_7d"}


def other_schema_bundle(world, tmp_path):
    """A bundle built against a schema with one more feature, read by ctr@9."""
    from signatures.bundle import build
    from signatures.repository.module_info import ModelRepository, TensorSpec
    from signatures.schema import FeatureSchema

    path = tmp_path / "schema-2.json"
    path.write_text(json.dumps({**SCHEMA, "features": SCHEMA["features"] + [EXTRA]}))
    schema = FeatureSchema.load(path)
    repo = tmp_path / "repo"
    shutil.copytree(world["repo"], repo)
    specs = [TensorSpec.from_feature(schema[n]) for n in ("pin_fresh", "pin_quality")]
    write_model(repo, "ctr", "9", specs)
    placement = {"leaves": {"leaf-0": {"current": ["ctr@3", "eng@1"], "pending": ["ctr@9"]}}}
    bundle = build(ModelRepository(repo), schema, placement)
    bundle_path = tmp_path / "b3.json"
    bundle.save(bundle_path)
    return bundle, str(bundle_path)


def test_deploy_refuses_features_the_roots_schema_lacks(world, process_runner, tmp_path):
    store_path = str(tmp_path / "configs")
    seed_store(world, store_path, stages=("production",))
    leaf = spawn_leaf(process_runner, world, store_path, "production")
    root = spawn_root(process_runner, world, store_path, "production", leaf.endpoint)
    store = open_config_store(store_path)
    wait_for("the root's heartbeat naming its schema",
             lambda: any(m.role == "root" and m.schema for m in store.members("production")))
    bundle, bundle_path = other_schema_bundle(world, tmp_path)

    out = trimmer("deploy", bundle_path, "--stage", "production", "--config-store", store_path)
    assert out.returncode == 1, out
    for text in ("pin_fresh", "ctr@9", "root-production"):
        assert text in out.stderr, out.stderr
    assert store.state("production")["bundle"] == world["b1"].id

    # Forced (logged), it lands; the root refuses it, and the models it alone
    # carries are refused in turn.
    out = trimmer("deploy", bundle_path, "--stage", "production", "--force",
                  "--config-store", store_path)
    assert out.returncode == 0, out
    entry = store.log_entries()[-1]
    assert entry["forced"] is True and entry["schema_missing"] == {"ctr@9": ["pin_fresh"]}, entry
    out = trimmer("deploy-models", "ctr@9", "--stage", "production", "--config-store", store_path)
    assert out.returncode == 1, out
    assert "pin_fresh" in out.stderr and "root-production" in out.stderr, out.stderr
    assert "ctr@9" not in store.state("production")["models"]
    # Versions whose features every root has still go on.
    out = trimmer("deploy-models", "ctr@3", "--stage", "production", "--config-store", store_path)
    assert out.returncode == 0, out
    assert root.returncode is None and leaf.returncode is None


def test_no_root_on_the_stage_means_nothing_to_check_against(world, tmp_path):
    store_path = str(tmp_path / "configs")
    seed_store(world, store_path, stages=("production",))
    _, bundle_path = other_schema_bundle(world, tmp_path)
    out = trimmer("deploy", bundle_path, "--stage", "production", "--config-store", store_path)
    assert out.returncode == 0, out
    assert os.path.exists(os.path.join(store_path, "stages", "production.json"))


def disagreeing_bundle(world, tmp_path):
    """A bundle built against a schema where pin_quality is float64 (ctr@3
    reads it), not the roots' float32: the same names, another dtype."""
    from signatures.bundle import build
    from signatures.repository.module_info import ModelRepository, TensorSpec
    from signatures.schema import FeatureSchema

    features = [{**f, "dtype": "float64"} if f["name"] == "pin_quality" else f
                for f in SCHEMA["features"]]
    path = tmp_path / "schema-f64.json"
    path.write_text(json.dumps({**SCHEMA, "features": features}))
    schema = FeatureSchema.load(path)
    repo = tmp_path / "repo-f64"
    shutil.copytree(world["repo"], repo)
    shutil.rmtree(repo / "ctr" / "3")
    write_model(repo, "ctr", "3", [TensorSpec.from_feature(schema[s.name])
                                   for s in world["inputs"]["ctr@3"]])
    return build(ModelRepository(repo), schema,
                 {"leaves": {"leaf-0": {"current": ["ctr@3", "eng@1"]}}})


def test_a_bundle_whose_schema_disagrees_with_the_roots_is_refused_and_shown(
        world, process_runner, tmp_path):
    from signatures.cli.stages import format_status
    from signatures.configstore import Stages

    from .conftest import Load, check_replies, root_pong, scrape
    store_path = str(tmp_path / "configs")
    store = seed_store(world, store_path, stages=("production",))
    leaf = spawn_leaf(process_runner, world, store_path, "production")
    root = spawn_root(process_runner, world, store_path, "production", leaf.endpoint,
                      metrics=True)
    bad = disagreeing_bundle(world, tmp_path)
    assert bad.schema_fingerprint != world["b1"].schema_fingerprint
    load = Load(root.endpoint)
    load.start()
    try:
        # deploy refuses it (the root published its schema); forced, it lands.
        wait_for("the root's heartbeat naming its schema",
                 lambda: any(m.role == "root" and m.schema for m in store.members("production")))
        with pytest.raises(StoreError, match=r"disagrees.*root-production.*ctr@3"):
            Stages(store).deploy(bad, "production")
        assert store.state("production")["bundle"] == world["b1"].id
        Stages(store).deploy(bad, "production", force=True)
        assert store.log_entries()[-1]["schema_mismatch"] == ["ctr@3"]
        mismatch = ("trimmer_root_config_schema_mismatches_total", frozenset())
        wait_for("the refusal counted",
                 lambda: scrape(root.metrics_port).get(mismatch, 0) >= 1, timeout=20)
        assert scrape(root.metrics_port)[("trimmer_root_config_errors_total", frozenset())] >= 1
        assert root_pong(root)["config"] == world["b1"].id     # the last good one serves
        log = root.log(20000)
        assert "SCHEMA MISMATCH" in log and "ctr@3" in log and bad.id in log, log[-3000:]
        wait_for("the refusal in trimmer status", lambda: "SCHEMA MISMATCH" in format_status(
            Stages(store).status()), timeout=10)
        n = load.count()
        wait_for("traffic goes on", lambda: load.count() >= n + 10)
    finally:
        load.stop()
    check_replies(world, load, live=("ctr@3", "eng@1"))
    assert root.returncode is None


def test_a_root_started_on_a_disagreeing_bundle_file_exits_2(world, tmp_path):
    import subprocess
    import sys

    from tests.root.world import root_config, write_root_config
    bad = disagreeing_bundle(world, tmp_path)
    bundle_path = str(tmp_path / "bad.json")
    bad.save(bundle_path)
    cfg = root_config(world, {"leaf-0": "ipc:///nonexistent/leaf"},
                      f"ipc://{tmp_path}/root.sock", bundle=bundle_path)
    path = write_root_config(str(tmp_path / "root.json"), cfg)
    out = subprocess.run([sys.executable, "-m", "rootproc", "--config", path],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "SCHEMA MISMATCH" in out.stderr and "ctr@3" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
