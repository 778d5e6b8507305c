"""The stage policy (signatures/configstore/stages.py) is the same over any
config store: one sequence of deploy, deploy-models, promote and rollback
reads the same on a directory store and on a store kept in a few dicts,
which implements nothing but the storage interface."""
import copy
import dataclasses
import threading
import time

import pytest

from _trim.errors import StoreError
from signatures.bundle import Bundle
from signatures.configstore import ConfigStore, Stages, open_config_store
from signatures.configstore.members import MemberStatus
from signatures.configstore.names import check_stage
from signatures.configstore.stage_state import empty_record
from tests.signatures.test_store import B1, B2


class MemoryStore(ConfigStore):
    """One process's store: records in dicts, each change under one lock. A
    record here cannot be lost or corrupt, so the audit log recovers nothing."""

    def __init__(self):
        self.address = "memory"
        self.records: dict[str, dict] = {}
        self.bundles: dict[str, Bundle] = {}
        self.beats: dict[str, dict[tuple[str, str], MemberStatus]] = {}
        self.log: list[dict] = []
        self.lock = threading.Lock()

    def read_stage(self, stage):
        return copy.deepcopy(self.records.get(check_stage(stage), empty_record()))

    def recovered(self, stage):
        return None

    def bundle(self, bundle_id):
        return self.bundles[bundle_id]

    def schema(self, fingerprint):
        return None

    def heartbeat(self, stage, record):
        self.beats.setdefault(check_stage(stage), {})[(record.role, record.name)] = \
            dataclasses.replace(record, stage=stage, time=time.time())

    def members(self, stage):
        return [m for _, m in sorted(self.beats.get(check_stage(stage), {}).items())]

    def log_entries(self):
        return list(self.log)

    def _write_bundle(self, bundle):
        self.bundles[bundle.id] = bundle

    def _atomically(self, change):
        with self.lock:
            c = change()
            generation = int(c.old["generation"]) + 1
            self.records[c.stage] = {**copy.deepcopy(c.new), "generation": generation}
            self.log.append({"stage": c.stage, "generation": generation, **c.event})
            return generation, c.result


@pytest.fixture(params=["directory", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return open_config_store(tmp_path / "store")


def test_deploy_promote_rollback_on_any_store(store):
    stages = Stages(store)
    with pytest.raises(StoreError, match="config before models"):
        stages.deploy_models("canary", ["ctr@2"])
    assert stages.deploy(B1, "canary") == 1
    assert stages.deploy(B2, "canary") == 2
    assert stages.deploy_models("canary", ["ctr@2"]) == ["ctr@2"]
    assert stages.promote("canary", "production") == 1
    assert store.active("production")[1].id == B2.id
    assert store.active_models("production") == ["ctr@2"]
    r = stages.rollback("canary", wait_s=0)
    assert (r.generation, r.bundle, r.models, r.uncovered) == (5, B1.id, [], [])
    assert store.history("canary") == [] and store.generation("canary") == 5
    assert [e["action"] for e in store.log_entries()] == [
        "deploy", "deploy", "deploy-models", "promote", "rollback-models", "rollback"]


def test_status_and_the_roots_gate_on_any_store(store):
    stages = Stages(store)
    stages.deploy(B1, "canary")
    stages.deploy(B2, "canary")
    store.heartbeat("canary", MemberStatus("root", "root-0", generation=1, bundle=B1.id))
    with pytest.raises(StoreError, match=r"1 live root\(s\) on canary did not install"):
        stages.deploy_models("canary", ["ctr@2"], wait_s=0)
    store.heartbeat("canary", MemberStatus("root", "root-0", generation=2, bundle=B2.id))
    assert stages.deploy_models("canary", ["ctr@2"], wait_s=0) == ["ctr@2"]
    status = stages.status()
    assert (status["canary"]["generation"], status["canary"]["bundle"]) == (3, B2.id)
    assert [m["name"] for m in status["canary"]["members"]] == ["root-0"]
    assert status["production"]["bundle"] is None
