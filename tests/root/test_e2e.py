"""Client -> root -> 2 leaves hosting 3 models, with real processes and sockets."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.support.procs import free_tcp_port

from .conftest import leaves_running, spawn_root
from .world import CANDIDATE_IDS, GAP_MODEL, MODELS, SCHEMA, USER_IDS, assert_scores_match, message_nbytes

pytestmark = pytest.mark.slow

ALL_FEATURES = [f["name"] for f in SCHEMA["features"]]


@pytest.fixture(scope="module")
def leaves(world, tmp_path_factory):
    with leaves_running(tmp_path_factory, world, ("ipc", "tcp")) as endpoints:
        yield endpoints


def request_ids(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    return int(rng.choice(USER_IDS)), rng.choice(CANDIDATE_IDS, size=n, replace=False)


def union_layout_names() -> list[str]:
    """The root's batch columns with trimming on: the union the bundle reads, schema order."""
    used = set().union(*MODELS.values())
    return [n for n in ALL_FEATURES if n in used]


def check_scores(world, res, user, cands, models=tuple(MODELS)):
    assert not res.errors, res.errors
    return assert_scores_match(world, res, user, cands, models)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_trimmed_scores_and_exact_bytes(world, leaves, process_runner, transport):
    spawn_root(process_runner, world, leaves[transport], transport=transport)
    root = process_runner.procs[-1]
    with ScoringClient(root.endpoint) as client:
        for seed in range(3):
            user, cands = request_ids(seed)
            res = client.score(user, cands)  # default: every current model of the bundle
            assert sorted(res.scores) == sorted(MODELS)
            feats = check_scores(world, res, user, cands)
            for r in res.results:
                names = [n for n in ALL_FEATURES if n in MODELS[r["model"]]]
                assert r["trimmed"] is True
                assert r["bytes_sent"] == message_nbytes(names, len(cands), feats), r["model"]
                assert r["leaf"] == ("leaf-1" if r["model"] == "div@2" else "leaf-0")
            assert set(res.timing_us) >= {"fetch", "preprocess", "trim", "leaves", "total"}
        # A subset of models, by name without version.
        user, cands = request_ids(9)
        res = client.score(user, cands, models=["div", "ctr@3"])
        assert sorted(res.scores) == ["ctr@3", "div@2"]
        check_scores(world, res, user, cands, models=["ctr@3", "div@2"])


def scrape(port: int) -> dict:
    """Prometheus samples as {(name, frozenset(labels)): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_bytes_and_the_untrimmed_counterfactual(world, leaves, process_runner):
    port = free_tcp_port()
    root = spawn_root(process_runner, world, leaves["ipc"], metrics_port=port)
    sent, untrimmed = {}, 0
    with ScoringClient(root.endpoint) as client:
        for seed in range(4):
            user, cands = request_ids(seed)
            res = client.score(user, cands)
            feats = check_scores(world, res, user, cands)
            # The counterfactual is what `--trim off` sends: every schema
            # feature (test_trim_off_sends_every_feature), not the union the
            # config reads (pin_unused is in no model, yet trim off sends it).
            everything = message_nbytes(ALL_FEATURES, len(cands), feats)
            assert everything > message_nbytes(union_layout_names(), len(cands), feats)
            for r in res.results:
                sent[r["model"]] = sent.get(r["model"], 0) + r["bytes_sent"]
            untrimmed += everything
        res = client.score(4242, cands, models=[GAP_MODEL[0]])
    m = scrape(port)
    leaf_of = {"ctr@3": "leaf-0", "eng@1": "leaf-0", "div@2": "leaf-1"}
    for key, total in sent.items():
        labels = frozenset({"leaf": leaf_of[key], "model": key}.items())
        assert m[("trimmer_root_sent_bytes_total", labels)] == total
        assert m[("trimmer_root_untrimmed_bytes_total", labels)] == untrimmed
    assert m[("trimmer_root_trim_gaps_total", frozenset({"model": GAP_MODEL[0]}.items()))] == 1
    assert m[("trimmer_root_missing_entities_total", frozenset({"source": "user"}.items()))] == 1
    assert m[("trimmer_root_requests_total", frozenset({"outcome": "ok"}.items()))] == 5
    assert m[("trimmer_root_latency_seconds_count", frozenset({"stage": "total"}.items()))] == 5
    # LMDB is read in place, every request (no cache in front: rootproc/featurestore/cache.py).
    assert m[("trimmer_root_store_reads_total",
              frozenset({"source": "candidate"}.items()))] == sum(len(request_ids(s)[1])
                                                                  for s in range(4)) + len(cands)
    assert m[("trimmer_root_cache_lookups_total",
              frozenset({"source": "candidate", "result": "hit"}.items()))] == 0


def test_trim_off_sends_every_feature(world, leaves, process_runner):
    spawn_root(process_runner, world, leaves["ipc"], trim="off")
    with ScoringClient(process_runner.procs[-1].endpoint) as client:
        user, cands = request_ids(3)
        res = client.score(user, cands)
        feats = check_scores(world, res, user, cands)
        full = message_nbytes(ALL_FEATURES, len(cands), feats)
        assert all(r["bytes_sent"] == full and r["trimmed"] is False for r in res.results)


def test_lz4_gives_the_same_scores(world, leaves, process_runner):
    spawn_root(process_runner, world, leaves["tcp"], transport="tcp", compression="lz4")
    with ScoringClient(process_runner.procs[-1].endpoint) as client:
        user, cands = request_ids(4, n=200)
        res = client.score(user, cands)
        feats = check_scores(world, res, user, cands)
        for r in res.results:
            names = [n for n in ALL_FEATURES if n in MODELS[r["model"]]]
            assert r["bytes_sent"] == message_nbytes(names, len(cands), feats)
            assert 0 < r["wire_bytes"] < r["bytes_sent"]  # sparse counters, small ints: compressible


def test_unknown_version_fails_open_and_missing_ids_get_defaults(world, leaves, process_runner):
    spawn_root(process_runner, world, leaves["ipc"],
               ready=lambda p: all(link["healthy"] for link in p["leaves"])
               and any(GAP_MODEL[0] in link["models"] for link in p["leaves"]))
    with ScoringClient(process_runner.procs[-1].endpoint) as client:
        user, cands = request_ids(5)
        cands = np.concatenate([cands, [987654321]])   # not in the store
        res = client.score(4242, cands, models=[GAP_MODEL[0], "eng@1"])  # user not in the store
        feats = check_scores(world, res, 4242, cands, models=[GAP_MODEL[0], "eng@1"])
        by_model = {r["model"]: r for r in res.results}
        # ctr@4 is not in the bundle: the whole schema goes, and eng@1 rides on that batch.
        assert by_model[GAP_MODEL[0]]["trimmed"] is False
        assert by_model[GAP_MODEL[0]]["bytes_sent"] == message_nbytes(ALL_FEATURES, len(cands), feats)
        eng = [n for n in ALL_FEATURES if n in MODELS["eng@1"]]
        assert by_model["eng@1"]["bytes_sent"] == message_nbytes(eng, len(cands), feats)
        unknown = client.score(int(USER_IDS[0]), cands, models=["nope@1"])
        assert unknown.ok and unknown.errors["nope@1"]["kind"] == "unknown_model"


def test_missing_configured_to_fail(world, leaves, process_runner):
    spawn_root(process_runner, world, leaves["ipc"], missing="fail")
    with ScoringClient(process_runner.procs[-1].endpoint) as client:
        res = client.score(4242, CANDIDATE_IDS[:5])
        assert not res.ok and res.error["kind"] == "bad_request" and "4242" in res.error["message"]
        user, cands = request_ids(6)
        check_scores(world, client.score(user, cands), user, cands)


def test_two_roots_share_the_store_and_spread_requests(world, leaves, process_runner):
    a = spawn_root(process_runner, world, leaves["ipc"], name="root-a")
    b = spawn_root(process_runner, world, leaves["ipc"], name="root-b", transport="tcp")
    with ScoringClient([a.endpoint, b.endpoint]) as client:
        seen = set()
        ids = [client.submit(*request_ids(s)) for s in range(20)]
        for _ in ids:
            res = client.receive(10_000)
            assert res is not None and res.ok and not res.errors
            seen.add(res.root)
        assert seen == {"root-a", "root-b"}
    # The load generator and the health command, as a program would run them.
    out = subprocess.run([sys.executable, "-m", "signatures.cli", "score", "--endpoint", a.endpoint,
                          "--endpoint", b.endpoint, "--requests", "60", "--concurrency", "6",
                          "--candidates", "32", "--users", "110", "--candidate-ids", "1300",
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] == 60 and not report["errors"] and report["bytes_sent"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    health = subprocess.run([sys.executable, "-m", "signatures.cli", "health", a.endpoint,
                             "--require-leaves"], capture_output=True, text=True, timeout=30)
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["role"] == "root"


def test_active_config_from_a_staged_config_store(world, leaves, process_runner, tmp_path):
    import time

    from signatures.configstore import Stages, open_config_store
    from tests.support.procs import ping
    configs = str(tmp_path / "configs")
    # A fleet started before its first deploy: the root waits, not ready, and says so.
    stopped = spawn_root(process_runner, world, leaves["ipc"], name="root-stopped", bundle=None,
                         config_store=configs, stage="canary", ready=None)
    root = spawn_root(process_runner, world, leaves["ipc"], bundle=None, config_store=configs,
                      stage="canary", ready=None)
    deadline = time.monotonic() + 30
    while "waiting for one" not in root.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "no active config" in root.log() and "waiting for one" in root.log(), root.log()
    time.sleep(1.0)
    assert root.returncode is None and ping(root.endpoint, timeout=0.5) is None  # not ready
    stopped.signal()                      # a stop while it waits ends it cleanly
    assert stopped.wait(30) == 0, stopped.log()
    Stages(open_config_store(configs)).deploy(world["bundle_obj"], "canary")
    root.wait_ready(30, ready=lambda p: bool(p.get("leaves")) and
                    all(link["healthy"] for link in p["leaves"]))
    with ScoringClient(root.endpoint) as client:
        assert client.ping()["config"] == world["bundle_obj"].id
        user, cands = request_ids(8)
        check_scores(world, client.score(user, cands), user, cands)


def test_trimmer_score_exits_1_and_says_so_in_words_when_model_results_fail(
        world, leaves, process_runner):
    """Exit 0 only when every request was answered with every model scored;
    the report is text, not Python reprs."""
    root = spawn_root(process_runner, world, leaves["ipc"], name="root-score")
    base = [sys.executable, "-m", "signatures.cli", "score", "--endpoint", root.endpoint,
            "--requests", "6", "--concurrency", "3", "--candidates", "8", "--users", "110",
            "--candidate-ids", "1300", "--no-progress"]
    out = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out
    assert "6/6 requests answered" in out.stdout and "failed" not in out.stdout, out.stdout
    for models in (["nosuch@9"], ["ctr@3", "nosuch@9"]):   # every model failed; one of two
        out = subprocess.run(base + ["--models", *models], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 1, out
        assert "{" not in out.stdout and "'" not in out.stdout, out.stdout
        assert "model results: " in out.stdout and "6 failed" in out.stdout, out.stdout
    out = subprocess.run(base + ["--models", "nosuch@9", "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1, out
    report = json.loads(out.stdout)
    assert report["model_results"] == {"ok": 0, "failed": 6}, report
    assert sum(report["model_errors"].values()) == 6
