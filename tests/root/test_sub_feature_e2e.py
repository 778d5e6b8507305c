"""Sub-feature trimming through a real root and leaf (issue 29): models that
read a slice of a feature, or cast it to bfloat16/float16 on entry, score
bit for bit what they score on the whole features, in TorchScript and
torch.export, over ipc, tcp and shared memory, for random requests over
values holding every float edge case; the messages carry only the read
bytes; a leaf that does not say it takes sub-feature columns gets whole
features, counted."""
from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rootproc.client.scoring_client import ScoringClient
from signatures.repository import artifacts
from signatures.repository.module_info import ModelRepository
from tests.support.procs import ProcessRunner, free_tcp_port, ping

from .conftest import spawn_root
from .sub_feature_world import CANDIDATE_IDS, USER_IDS, build, features

TRANSPORTS = ("ipc", "tcp", "shm")


@pytest.fixture(scope="module")
def sf_world(tmp_path_factory):
    return build(tmp_path_factory.mktemp("sf_world"))


@pytest.fixture(scope="module")
def serving(sf_world, tmp_path_factory):
    """One leaf bound on ipc and tcp; a root per transport (shm over the ipc
    endpoint); and a leaf that does not say it takes sub-feature columns,
    with its own root."""
    runner = ProcessRunner(tmp_path_factory.mktemp("sf_procs"))
    try:
        ipc, tcp = runner.endpoint("leaf-0", "ipc"), runner.endpoint("leaf-0", "tcp")
        runner.leaf(sf_world["repo"], name="leaf-0", bind=ipc,
                    args=["--bind", tcp, "--max-wait-ms", "0"])
        old = runner.leaf(sf_world["repo"], name="leaf-old", transport="ipc",
                          args=["--max-wait-ms", "0", "--no-sub-feature-columns"])
        roots = {}
        for transport, endpoint in (("ipc", ipc), ("tcp", tcp), ("shm", ipc)):
            leaf = {"name": "leaf-0", "endpoints": [endpoint],
                    "transport": "shm" if transport == "shm" else "socket"}
            roots[transport] = spawn_root(runner, sf_world, {"leaf-0": endpoint},
                                          name=f"root-{transport}", leaves=[leaf])
        port = free_tcp_port()
        roots["old"] = spawn_root(runner, sf_world, {"leaf-0": old.endpoint}, name="root-old",
                                  metrics_port=port)
        roots["old"].metrics_port = port
        yield roots
    finally:
        runner.close()


_models: dict = {}


def direct(world: dict, key: str, feats: dict, rows: int) -> np.ndarray:
    """``key`` run in this process on the whole features."""
    if key not in _models:
        model, version = key.split("@")
        path, info = ModelRepository(world["repo"]).load(model, version)
        _models[key] = (artifacts.load(path, info.artifact, torch.device("cpu")), info.input_names)
    model, names = _models[key]
    batch = {}
    for name in names:
        value = feats[name]
        t = torch.from_numpy(np.ascontiguousarray(value))
        batch[name] = t.expand((rows,) + tuple(t.shape[1:])) if name == "u" else t
    with torch.inference_mode():
        out = model(batch)
    return out.detach().to(torch.float32).numpy().reshape(rows)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(transport=st.sampled_from(TRANSPORTS), user=st.sampled_from(USER_IDS.tolist()),
       cands=st.lists(st.sampled_from(CANDIDATE_IDS.tolist()), min_size=1, max_size=60))
def test_scores_with_sub_feature_trimming_are_the_untrimmed_scores_bit_for_bit(
        sf_world, serving, transport, user, cands):
    feats = features(sf_world["users"], sf_world["cands"], user, cands)
    with ScoringClient(serving[transport].endpoint) as client:
        res = client.score(user, cands, models=sf_world["keys"])
    assert res.ok and not res.errors, (res.error, res.errors)
    for key in sf_world["keys"]:
        expect = direct(sf_world, key, feats, len(cands))
        assert same_bits(res.scores[key], expect), (key, res.scores[key], expect)


def result_of(res, key: str) -> dict:
    return next(r for r in res.results if r["model"] == key)


def test_messages_carry_the_read_bytes_only(sf_world, serving):
    cands = CANDIDATE_IDS[:100].tolist()
    with ScoringClient(serving["ipc"].endpoint) as client:
        res = client.score(int(USER_IDS[0]), cands, models=sf_world["keys"])
    assert res.ok, res.error
    n = len(cands)
    # mat reads emb[:, :64] (and ctr whole): 64 float32 per row and 8 bytes of ranges.
    mat = result_of(res, "mat@1")["bytes_sent"]
    payload = n * 64 * 4 + 8 + n * 4
    assert payload <= mat <= payload * 1.05 + 256, mat
    # bf reads dense (12) as bfloat16 and u[2:5] as bfloat16, once per request.
    bf = result_of(res, "bf@2")["bytes_sent"]
    payload = n * 12 * 2 + 8 + 3 * 2
    assert payload <= bf <= payload * 1.05 + 256, bf
    half = result_of(res, "half@1")["bytes_sent"]
    payload = n * 6 * 2 + 16
    assert payload <= half <= payload * 1.05 + 256, half


def metric(port: int, name: str) -> dict:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name):].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def test_a_leaf_that_does_not_take_sub_feature_columns_gets_whole_features_counted(
        sf_world, serving):
    cands = CANDIDATE_IDS[:50].tolist()
    user = int(USER_IDS[1])
    with ScoringClient(serving["old"].endpoint) as client:
        res = client.score(user, cands, models=sf_world["keys"])
    assert res.ok and not res.errors, (res.error, res.errors)
    feats = features(sf_world["users"], sf_world["cands"], user, cands)
    for key in sf_world["keys"]:
        assert same_bits(res.scores[key], direct(sf_world, key, feats, len(cands))), key
    # Whole features: emb is 256 float32 a row.
    assert result_of(res, "mat@1")["bytes_sent"] >= len(cands) * 256 * 4
    fail_open = metric(serving["old"].metrics_port, "trimmer_root_sub_feature_fail_open_total")
    assert sum(fail_open.values()) >= len(sf_world["keys"]), fail_open
    saved = metric(serving["old"].metrics_port, "trimmer_root_sub_feature_saved_bytes_total")
    assert sum(saved.values()) == 0, saved
    # The roots' pongs say which of their leaves take sub-feature columns.
    assert "sub_feature_columns" not in ping(serving["old"].endpoint)["leaves"][0]
    assert ping(serving["ipc"].endpoint)["leaves"][0]["sub_feature_columns"] is True
