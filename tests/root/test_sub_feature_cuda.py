"""Sub-feature trimming into a CUDA leaf (issue 29): the leaf widens and
places the read columns on the device after its one host-to-device copy,
and every model scores bit for bit what it scores on the whole features
on that device, over ipc and shared memory (pinned slots)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rootproc.client.scoring_client import ScoringClient
from signatures.repository import artifacts
from signatures.repository.module_info import ModelRepository
from tests.support.procs import ProcessRunner

from .conftest import spawn_root
from .sub_feature_world import CANDIDATE_IDS, USER_IDS, build, features

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def cuda_serving(tmp_path_factory):
    world = build(tmp_path_factory.mktemp("sf_cuda_world"))
    runner = ProcessRunner(tmp_path_factory.mktemp("sf_cuda_procs"))
    try:
        leaf = runner.leaf(world["repo"], name="leaf-0", transport="ipc",
                           args=["--device", "cuda", "--max-wait-ms", "0"])
        roots = {t: spawn_root(runner, world, {"leaf-0": leaf.endpoint}, name=f"root-{t}",
                               leaves=[{"name": "leaf-0", "endpoints": [leaf.endpoint],
                                        "transport": "shm" if t == "shm" else "socket"}])
                 for t in ("ipc", "shm")}
        yield world, roots
    finally:
        runner.close()


def on_device(world: dict, key: str, feats: dict, rows: int) -> np.ndarray:
    model, version = key.split("@")
    path, info = ModelRepository(world["repo"]).load(model, version)
    module = artifacts.load(path, info.artifact, CUDA)
    batch = {}
    for name in info.input_names:
        t = torch.from_numpy(np.ascontiguousarray(feats[name])).to(CUDA)
        batch[name] = t.expand((rows,) + tuple(t.shape[1:])) if name == "u" else t
    with torch.inference_mode():
        return module(batch).detach().to(torch.float32).cpu().numpy().reshape(rows)


@pytest.mark.parametrize("transport", ["ipc", "shm"])
def test_cuda_leaf_scores_sub_feature_columns_bit_for_bit(cuda_serving, transport):
    world, roots = cuda_serving
    rng = np.random.default_rng(7)
    for _ in range(4):
        user = int(rng.choice(USER_IDS))
        cands = rng.choice(CANDIDATE_IDS, int(rng.integers(1, 200))).tolist()
        feats = features(world["users"], world["cands"], user, cands)
        with ScoringClient(roots[transport].endpoint) as client:
            res = client.score(user, cands, models=world["keys"])
        assert res.ok and not res.errors, (res.error, res.errors)
        for key in world["keys"]:
            sent = next(r for r in res.results if r["model"] == key)
            assert (sent.get("transport") == "shm") == (transport == "shm"), sent
            expect = on_device(world, key, feats, len(cands))
            assert np.array_equal(res.scores[key].view(np.uint32), expect.view(np.uint32)), (
                key, res.scores[key], expect)
