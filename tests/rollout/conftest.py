"""A small staged world: the root tests' schema, feature store and models, a
second ctr version (ctr@5: same inputs, so the same signature, different
scores), bundles, a config store, and processes that follow its stages."""
from __future__ import annotations

import os
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.root.world import (
    CANDIDATE_IDS,
    USER_IDS,
    build_world,
    expected_features,
    root_config,
    write_root_config,
)
from tests.support.models import direct_scores, write_model
from tests.support.procs import ProcessRunner, free_tcp_port, ping

# ctr@5 reads what ctr@3 reads; the scorer weighs its inputs in another order.
CTR5_ORDER = ["pin_quality", "pin_ctr_7d", "user_emb", "user_recent_pins"]
PLACE_1 = {"leaves": {"leaf-0": {"current": ["ctr@3", "eng@1"]}}}
PLACE_2 = {"leaves": {"leaf-0": {"current": ["ctr@3", "ctr@5", "eng@1"]}}}
REQUESTS = [(int(USER_IDS[i]), CANDIDATE_IDS[17 * i: 17 * i + 24]) for i in range(4)]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    from signatures.bundle import build
    from signatures.repository.module_info import ModelRepository, TensorSpec
    from signatures.schema import FeatureSchema

    w = build_world(tmp_path_factory.mktemp("rollout-world"))
    schema = FeatureSchema.load(w["schema"])
    specs = [TensorSpec.from_feature(schema[n]) for n in CTR5_ORDER]
    w["model_paths"]["ctr@5"], _ = write_model(w["repo"], "ctr", "5", specs)
    w["inputs"]["ctr@5"] = specs
    repo = ModelRepository(w["repo"])
    w["b1"] = build(repo, schema, PLACE_1)
    w["b2"] = build(repo, schema, PLACE_2)
    # Expected scores per request and model version, from the models run here.
    w["expected"] = []
    for user, cands in REQUESTS:
        feats = expected_features(w["users"], w["cands"], user, cands)
        w["expected"].append({
            key: direct_scores(w["model_paths"][key], w["inputs"][key],
                               {s.name: feats[s.name] for s in w["inputs"][key]}, len(cands))
            for key in ("ctr@3", "ctr@5", "eng@1")})
    return w


def seed_store(world, path, stages=("canary", "production")):
    from signatures.configstore import Stages, open_config_store
    store = open_config_store(path)
    for stage in stages:
        Stages(store).deploy(world["b1"], stage)
        Stages(store).deploy_models(stage, ["ctr@3", "eng@1"])
    return store


def serving(*keys):
    def ready(pong):
        have = {m["model"] for m in pong.get("models", []) if m.get("ready")}
        return set(keys) <= have
    return ready


def spawn_leaf(runner: ProcessRunner, world, store_path, stage, expect=("ctr@3", "eng@1"),
               name="leaf-0"):
    leaf = runner.leaf(world["repo"], name=f"{name}-{stage}", ready=False,
                       args=["--name", name, "--config-store", store_path, "--stage", stage,
                             "--max-wait-ms", "0", "--retire-grace-s", "1"])
    leaf.wait_ready(60, ready=serving(*expect))
    return leaf


def spawn_root(runner: ProcessRunner, world, store_path, stage, leaf_endpoint, metrics=False):
    name = f"root-{stage}"
    bind = runner.endpoint(name)
    port = free_tcp_port() if metrics else None
    cfg = root_config(world, {"leaf-0": leaf_endpoint}, bind, name=name, bundle=None,
                      config_store=store_path, stage=stage, metrics_port=port)
    path = write_root_config(os.path.join(runner.tmp_path, f"{name}.json"), cfg)
    proc = runner.spawn(name, [sys.executable, "-m", "rootproc", "--config", path],
                        endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
    proc.wait_ready(30, ready=lambda p: bool(p.get("leaves")) and
                    all(link["healthy"] for link in p["leaves"]))
    proc.metrics_port = port
    return proc


def wait_for(what: str, check, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def root_pong(root) -> dict:
    pong = ping(root.endpoint, timeout=2.0)
    assert pong is not None, root.log()
    return pong


def scrape(port: int) -> dict:
    """Prometheus samples as {(name, frozenset(labels)): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


class Load(threading.Thread):
    """Continuous scoring against one root, a few requests in flight; every
    reply is kept with the time it arrived."""

    def __init__(self, endpoint: str, models=("ctr", "eng"), in_flight: int = 3):
        super().__init__(daemon=True)
        self.endpoint, self.models, self.in_flight = endpoint, list(models), in_flight
        self.sent = 0
        self.replies: list = []      # (monotonic time, request index, ScoreResult)
        self.lost = 0
        self._halt = threading.Event()

    def run(self) -> None:
        sent = {}
        with ScoringClient(self.endpoint, timeout_ms=10_000) as client:
            i = 0
            while not self._halt.is_set() or client.in_flight:
                while not self._halt.is_set() and client.in_flight < self.in_flight:
                    user, cands = REQUESTS[i % len(REQUESTS)]
                    sent[client.submit(user, cands, models=self.models, deadline_ms=5000)] = \
                        i % len(REQUESTS)
                    i += 1
                    self.sent = i
                res = client.receive(8000)
                if res is None:
                    self.lost += client.in_flight
                    return
                self.replies.append((time.monotonic(), sent.pop(res.id), res))

    def stop(self) -> Load:
        self._halt.set()
        self.join(30)
        assert not self.is_alive(), "load thread did not finish"
        return self

    def count(self) -> int:
        return len(self.replies)

    def failures(self) -> list:
        return [r for _, _, r in self.replies if not r.ok or r.errors]

    def tally(self, label: str) -> dict:
        """Requests sent, answered (every model scored), failed, lost; printed
        so that a run shows its figures (``pytest -s``)."""
        failed = len(self.failures())
        figures = {"sent": self.sent, "answered": self.count() - failed, "failed": failed,
                   "lost": self.lost}
        print(f"\n{label}: {figures}")
        return figures

    def versions(self, since: float = 0.0) -> set:
        return {r["model"] for t, _, res in self.replies if t >= since for r in res.results}


def check_replies(world, load: Load, live=("ctr@3", "ctr@5", "eng@1")) -> None:
    """No failure, no lost request, and every score from a live version,
    equal to what that version computes."""
    assert load.lost == 0
    bad = load.failures()
    assert not bad, [(r.error, r.errors) for r in bad[:5]]
    assert load.replies
    for _, idx, res in load.replies:
        for r in res.results:
            assert r["model"] in live, r
            np.testing.assert_allclose(res.scores[r["model"]], world["expected"][idx][r["model"]],
                                       rtol=1e-5, atol=1e-4, err_msg=r["model"])
