"""Grouped columns through a real root and leaf: a leaf that says
``grouped_columns`` gets each TorchRec model's KJT and dense tensor as
grouped columns (over a socket and through shared memory) and scores them
bit for bit as the eager model; a leaf that does not (an older leaf) gets
the members as columns of their own, counted, and scores the same."""
import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from signatures.bundle import build
from signatures.derive.exporter import export
from signatures.repository.module_info import ModelRepository
from signatures.schema import FeatureSchema
from tests.root.conftest import spawn_root
from tests.root.test_sub_feature_e2e import metric
from tests.root.world import CANDIDATE_IDS, USER_IDS, expected_features
from tests.support.procs import ProcessRunner, free_tcp_port, ping
from tests.torchrec.models import eager_scores

pytestmark = pytest.mark.slow
KEYS = {"dlrm@1": ["user_recent_pins", "pin_topics"], "dcn@1": ["topics", "pins"]}


@pytest.fixture(scope="module")
def serving(world, tmp_path_factory):
    from tests.torchrec import models
    tmp = tmp_path_factory.mktemp("grouped")
    schema = FeatureSchema.load(world["schema"])
    repo = str(tmp / "repo")
    wrapped = {"dlrm": models.dlrm(), "dcn": models.dcn()}
    infos = {m: export(w, repo, m, schema, version="1") for m, w in wrapped.items()}
    bundle_path = str(tmp / "bundle.json")
    build(ModelRepository(repo), schema,
          {"leaves": {"leaf-0": {"current": list(KEYS)}}}).save(bundle_path)
    runner = ProcessRunner(tmp)
    try:
        new = runner.leaf(repo, models=list(KEYS), name="leaf-new", args=["--max-wait-ms", "0"])
        old = runner.leaf(repo, models=list(KEYS), name="leaf-old",
                          args=["--max-wait-ms", "0", "--no-grouped-columns"])
        roots = {}
        for name, leaf, transport in (("ipc", new, "socket"), ("shm", new, "shm"),
                                      ("old", old, "socket")):
            port = free_tcp_port()
            roots[name] = spawn_root(runner, world, {"leaf-0": leaf.endpoint}, bundle=bundle_path,
                                     name=f"root-{name}", metrics_port=port,
                                     leaves=[{"name": "leaf-0", "endpoints": [leaf.endpoint],
                                              "transport": transport}])
            roots[name].metrics_port = port
        yield {"roots": roots, "wrapped": wrapped, "infos": infos}
    finally:
        runner.close()


@pytest.mark.parametrize("root", ["ipc", "shm", "old"])
def test_grouped_and_per_feature_scores_are_the_eager_models_bit_for_bit(world, serving, root):
    proc = serving["roots"][root]
    rng = np.random.default_rng(len(root))
    with ScoringClient(proc.endpoint) as client:
        for n in (1, 37, 256):
            user = int(rng.choice(USER_IDS))
            cands = rng.choice(CANDIDATE_IDS, size=n, replace=False)
            res = client.score(user, cands, models=list(KEYS))
            assert set(res.scores) == set(KEYS), res.errors
            assert all(r["trimmed"] for r in res.results)
            if root == "shm":
                assert all(r.get("transport") == "shm" for r in res.results), res.results
            feats = expected_features(world["users"], world["cands"], user, cands)
            for key, keys in KEYS.items():
                want = eager_scores(serving["wrapped"][key.split("@")[0]], keys, feats, n)
                np.testing.assert_array_equal(res.scores[key], want, err_msg=f"{root} {key}")
    fail_open = metric(proc.metrics_port, "trimmer_root_grouped_fail_open_total")
    leaf_entry = ping(proc.endpoint)["leaves"][0]
    if root == "old":   # the members as columns of their own, each message counted
        assert sum(fail_open.values()) >= 3 * len(KEYS), fail_open
        assert "grouped_columns" not in leaf_entry
    else:
        assert sum(fail_open.values()) == 0, fail_open
        assert leaf_entry.get("grouped_columns") is True
