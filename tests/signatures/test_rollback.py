"""`trimmer rollback` restores what the stage served before, config and model
versions as one unit, in the safe order: at every step the stage's models
are carried by the config active at that step wherever that can be so, and
the report says what was done (signatures/configstore/rollback.py)."""
import subprocess
import sys

import pytest

from _trim.errors import StoreError
from signatures.configstore import Stages, open_config_store
from signatures.configstore.members import MemberStatus
from tests.signatures.test_store import B1, B2, B3, ROOT, make_bundle


@pytest.fixture(params=["dir", "zk"])
def store(request, tmp_path):
    """An empty directory store, or a ZooKeeper one (a chroot of the test server)."""
    address = str(tmp_path / "store") if request.param == "dir" else \
        request.getfixturevalue("zk_server").address()
    with open_config_store(address) as s:
        yield s


BX = make_bundle({"ctr@1": ["a", "b"], "ctr@2": ["a", "b"], "emb@1": ["c"]})


def rollback_steps(store) -> list[dict]:
    return [e for e in store.log_entries() if str(e.get("action", "")).startswith("rollback")]


def assert_each_step_carried(store, steps, allowed=()) -> None:
    """Every model on the stage at each step is in that step's config (but ``allowed``)."""
    for e in steps:
        bundle = store.bundle(e["bundle"])
        assert [k for k in e["models"] if k not in bundle.models and k not in allowed] == [], e


def test_rollback_after_a_replace_restores_the_earlier_models(store):
    stages = Stages(store)
    stages.deploy(B1, "canary")
    stages.deploy_models("canary", ["ctr@1"])
    stages.deploy(B2, "canary")
    stages.deploy_models("canary", ["ctr@2"], replace=True)
    stages.promote("canary", "production")
    assert store.active_models("canary") == ["ctr@2"]

    report = stages.rollback("canary", wait_s=0)
    st = store.state("canary")
    assert (st["bundle"], st["models"], st["history"]) == (B1.id, ["ctr@1"], [])
    assert report.bundle == B1.id and report.previous == B2.id
    assert report.models_before == ["ctr@2"] and report.models == ["ctr@1"]
    assert report.uncovered == [] and report.generation == st["generation"]
    # Models first while B2 (which carries ctr@1) is live, then the config.
    steps = rollback_steps(store)
    assert [(e["action"], e["bundle"], e["models"]) for e in steps] == [
        ("rollback-models", B2.id, ["ctr@1"]), ("rollback", B1.id, ["ctr@1"])]
    assert_each_step_carried(store, steps)
    assert any("ctr@1" in line for line in report.steps) and len(report.steps) == 2
    assert stages.status()["canary"]["uncovered"] == []
    # production was promoted from an empty stage: nothing to go back to.
    with pytest.raises(StoreError, match="production has no previous config"):
        stages.rollback("production", wait_s=0)


def test_rollback_in_both_directions_keeps_config_before_models(store):
    stages = Stages(store)
    stages.deploy(B1, "canary")
    stages.deploy_models("canary", ["ctr@1"])
    stages.deploy(B3, "canary", force=True)           # forced: B3 drops ctr@1
    stages.deploy_models("canary", ["ctr@2", "emb@1"], replace=True)
    report = stages.rollback("canary", wait_s=0)
    st = store.state("canary")
    assert (st["bundle"], st["models"]) == (B1.id, ["ctr@1"])
    steps = rollback_steps(store)
    # emb@1 (no version of it before) leaves while B3 is live; ctr@2 stays
    # until ctr@1 can come, which only B1 carries: after the config.
    assert [(e["action"], e["bundle"], e["models"]) for e in steps] == [
        ("rollback-models", B3.id, ["ctr@2"]), ("rollback", B1.id, ["ctr@2"]),
        ("rollback-models", B1.id, ["ctr@1"])]
    assert_each_step_carried(store, steps, allowed=["ctr@2"])
    assert len(report.steps) == 3 and report.uncovered == []


def test_rollback_to_a_config_with_the_same_models_is_one_change(store):
    stages = Stages(store)
    stages.deploy(B2, "canary")
    stages.deploy_models("canary", ["ctr@1"])
    stages.deploy(BX, "canary")
    gen = store.generation("canary")
    report = stages.rollback("canary", wait_s=0)
    assert report.generation == gen + 1 and report.models == ["ctr@1"]
    assert [e["action"] for e in rollback_steps(store)] == ["rollback"]


def test_rollback_waits_for_leaves_before_moving_the_config(store):
    stages = Stages(store)
    stages.deploy(B1, "canary")
    stages.deploy_models("canary", ["ctr@1"])
    stages.deploy(B2, "canary")
    stages.deploy_models("canary", ["ctr@2"], replace=True)
    gen = store.generation("canary")
    store.heartbeat("canary", MemberStatus("leaf", "leaf-0", generation=gen, bundle=B2.id,
                                           models=("ctr@2",)))
    with pytest.raises(StoreError, match=r"stopped before the config.*leaf-0.*generation") as e:
        stages.rollback("canary", wait_s=0.3)
    assert "trimmer rollback canary" in str(e.value)
    st = store.state("canary")     # the models step is done, the config not
    assert (st["bundle"], st["models"]) == (B2.id, ["ctr@1"])
    # The leaf has it now: run again, it finishes.
    store.heartbeat("canary", MemberStatus("leaf", "leaf-0", generation=gen + 1, bundle=B2.id,
                                           models=("ctr@1",)))
    report = stages.rollback("canary", wait_s=5)
    assert (report.bundle, report.models) == (B1.id, ["ctr@1"])
    assert store.state("canary")["history"] == []


def test_cli_says_what_the_rollback_did(tmp_path):
    path = str(tmp_path / "store")
    stages = Stages(open_config_store(path))
    stages.deploy(B1, "canary")
    stages.deploy_models("canary", ["ctr@1"])
    stages.deploy(B2, "canary")
    stages.deploy_models("canary", ["ctr@2"], replace=True)
    out = subprocess.run([sys.executable, "-m", "signatures.cli", "rollback", "canary",
                          "--config-store", path], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out
    assert f"canary: rolled back to config {B1.id} (from {B2.id})" in out.stdout, out.stdout
    assert "models: ctr@2 -> ctr@1" in out.stdout, out.stdout
    assert "1. models ctr@1" in out.stdout and "2. config" in out.stdout, out.stdout
