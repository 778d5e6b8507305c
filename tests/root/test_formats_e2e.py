"""One model exported as TorchScript, as a torch.export program and as an
AOTInductor package (tests/support/formats.py): through a real root and
leaf, the three versions share one signature, are trimmed to it, and score
alike, within SCORE_ATOL + SCORE_RTOL x |score| (1e-5 + 1e-4 x) of the
TorchScript version run directly on the features the root should build. A
fourth version, a package for CUDA, is refused by the CPU leaf at load: the
root sees it not ready and answers it with an error, the others unharmed."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from signatures.bundle import build
from signatures.derive.exporter import SCORE_ATOL, SCORE_RTOL
from signatures.repository.module_info import ModelRepository
from tests.support.models import direct_scores
from tests.support.procs import ProcessRunner

from .conftest import spawn_root
from .world import CANDIDATE_IDS, USER_IDS, expected_features

pytestmark = pytest.mark.slow


def refused_copy(src_dir, repo, model: str) -> str:
    """``src_dir``'s package as ``model``@1, its module_info saying it was built for CUDA."""
    target = os.path.join(repo, model, "1")
    shutil.copytree(src_dir, target)
    path = os.path.join(target, "module_info.json")
    with open(path) as f:
        d = json.load(f)
    d.update(model=model)
    d["artifact"]["device"] = "cuda"
    with open(path, "w") as f:
        json.dump(d, f)
    return f"{model}@1"


def test_three_formats_one_signature_same_scores_through_root_and_leaf(
        world, format_repo, tmp_path):
    format_repo.require("aoti")
    repo = str(tmp_path / "repo")
    shutil.copytree(format_repo.root, repo)
    keys = [format_repo.key(kind) for kind in ("torchscript", "export", "aoti")]
    aoti = format_repo.infos["aoti"]
    cuda = refused_copy(os.path.join(repo, aoti.model, aoti.version), repo, "gpu")
    placement = {"leaves": {"leaf-0": {"current": keys + [cuda]}}}
    bundle = build(ModelRepository(repo), format_repo.schema, placement)
    assert len({bundle.models[k].signature_hash for k in keys + [cuda]}) == 1
    assert all(bundle.models[k].features == bundle.models[keys[0]].features for k in keys)
    bundle_path = str(tmp_path / "bundle.json")
    bundle.save(bundle_path)

    runner = ProcessRunner(tmp_path)
    try:
        leaf = runner.leaf(repo, models=keys + [cuda], name="leaf-0", ready=False,
                           args=["--max-wait-ms", "0"])
        pong = leaf.wait_ready(60, ready=lambda p: sum(
            bool(m.get("ready") or m.get("error")) for m in p.get("models", [])) == 4)
        assert {m["model"] for m in pong["models"] if m["ready"]} == set(keys)
        root = spawn_root(runner, world, {"leaf-0": leaf.endpoint}, bundle=bundle_path)
        rng = np.random.default_rng(5)
        inputs = format_repo.infos["torchscript"].inputs
        with ScoringClient(root.endpoint) as client:
            for n in (1, 40, 300):
                user = int(rng.choice(USER_IDS))
                cands = rng.choice(CANDIDATE_IDS, size=n, replace=False)
                res = client.score(user, cands)
                assert set(res.scores) == set(keys), res.errors
                assert set(res.errors) == {cuda}, res.errors
                assert res.errors[cuda]["kind"] == "unavailable", res.errors
                assert all(r["trimmed"] for r in res.results if r["model"] in keys)
                feats = expected_features(world["users"], world["cands"], user, cands)
                want = direct_scores(format_repo.path("torchscript"), inputs,
                                     {s.name: feats[s.name] for s in inputs}, n)
                for key in keys:
                    np.testing.assert_allclose(res.scores[key], want, rtol=SCORE_RTOL,
                                               atol=SCORE_ATOL, err_msg=key)
    finally:
        runner.close()
