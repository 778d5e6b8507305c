"""TorchRec models (DLRM, DCN; TorchScript and torch.export) through a real
root and leaf: the root sends
each model its keys and dense columns only (trimmed), or every feature for a
version the bundle lacks (untrimmed), and the scores equal, bit for bit, the
TorchRec model called eagerly on a KeyedJaggedTensor and a dense tensor
built here from the request's features (no dynamic batching: --max-wait-ms 0)."""
import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from signatures.bundle import build
from signatures.derive.exporter import export
from signatures.repository.module_info import ModelRepository
from signatures.schema import FeatureSchema
from tests.root.conftest import spawn_root
from tests.root.world import CANDIDATE_IDS, USER_IDS, expected_features
from tests.support.procs import ProcessRunner
from tests.torchrec.models import eager_scores

pytestmark = pytest.mark.slow
KEYS = ["dlrm@1", "dcn@1", "dlrm@2", "dcn@2"]   # @1 TorchScript, @2 torch.export


def test_dlrm_and_dcn_score_through_root_and_leaf_as_called_directly(world, tmp_path):
    from tests.torchrec import models
    schema = FeatureSchema.load(world["schema"])
    repo = str(tmp_path / "repo")
    wrapped = {"dlrm": models.dlrm(), "dcn": models.dcn()}
    keys = {"dlrm": ["user_recent_pins", "pin_topics"], "dcn": ["topics", "pins"]}
    infos = {m: export(w, repo, m, schema, version="1") for m, w in wrapped.items()}
    # torch.export programs of the same models: dlrm@2 trimmed, dcn@2 hosted but not in
    # the bundle (untrimmed: the root sends it every feature).
    for m, w in wrapped.items():
        assert export(w, repo, m, schema, version="2", fmt="export").artifact.kind == "export"
    bundle = build(ModelRepository(repo), schema,
                   {"leaves": {"leaf-0": {"current": ["dlrm@1", "dcn@1", "dlrm@2"]}}})
    bundle_path = str(tmp_path / "bundle.json")
    bundle.save(bundle_path)
    runner = ProcessRunner(tmp_path)
    try:
        leaf = runner.leaf(repo, models=KEYS, name="leaf-0",
                           args=["--max-wait-ms", "0"])
        root = spawn_root(runner, world, {"leaf-0": leaf.endpoint}, bundle=bundle_path)
        rng = np.random.default_rng(11)
        with ScoringClient(root.endpoint) as client:
            for n in (1, 37, 256):
                user = int(rng.choice(USER_IDS))
                cands = rng.choice(CANDIDATE_IDS, size=n, replace=False)
                res = client.score(user, cands, models=KEYS)
                assert set(res.scores) == set(KEYS), res.errors
                trimmed = {r["model"]: r["trimmed"] for r in res.results}
                assert trimmed == {"dlrm@1": True, "dcn@1": True, "dlrm@2": True, "dcn@2": False}
                sent = {r["model"]: r["bytes_sent"] for r in res.results}
                assert sent["dcn@1"] < sent["dcn@2"]
                feats = expected_features(world["users"], world["cands"], user, cands)
                for key in KEYS:
                    m = key.split("@")[0]
                    want = eager_scores(wrapped[m], keys[m], feats, n)
                    np.testing.assert_array_equal(res.scores[key], want, err_msg=key)
        assert {s.name for s in infos["dcn"].inputs} == set(bundle.models["dcn@1"].features)
    finally:
        runner.close()
