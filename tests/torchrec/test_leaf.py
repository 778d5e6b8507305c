"""TorchRec versions on a leaf. A leaf whose TorchRec pair is not one known to load together refuses the
TorchRec version at load, before opening its file: the version is not
ready, its pong entry and the leaf's log say what to install, and the
leaf's other versions serve. (The mismatch is made by a torchrec 1.9.0
distribution's metadata put first on the leaf's path.) A weighted model
warms up, scores like the eager model, and weights that do not line up with
their ids are answered with an error naming them."""
import os
import sys

import numpy as np

from signatures.derive.exporter import export
from tests.root.world import write_schema
from tests.support.models import encode_columns, random_columns, spec, write_model
from tests.support.procs import Client


def test_a_mismatched_pair_refuses_the_version_and_the_others_serve(tmp_path, process_runner):
    from tests.torchrec import models
    _, schema = write_schema(tmp_path)
    repo = tmp_path / "repo"
    export(models.dcn(), repo, "dcn", schema, version="1")
    _, plain = write_model(repo, "plain", "1", [spec("x")])
    fake = tmp_path / "fake" / "torchrec-1.9.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: torchrec\nVersion: 1.9.0\n")
    endpoint = process_runner.endpoint("leaf")
    argv = [sys.executable, "-m", "leafproc", "--repo", str(repo), "--bind", endpoint, "--name",
            "leaf", "--threads", "1", "--model", "dcn@1", "--model", "plain@1"]
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    leaf = process_runner.spawn("leaf", argv, endpoint=endpoint,
                                ipc_paths=[endpoint[len("ipc://"):]], env={"PYTHONPATH": path})
    pong = leaf.wait_ready(60, ready=lambda p: len(p.get("models", [])) == 2 and all(
        m.get("ready") or m.get("error") for m in p["models"]))
    state = {m["model"]: m for m in pong["models"]}
    assert state["plain@1"]["ready"]
    assert not state["dcn@1"]["ready"]
    error = state["dcn@1"]["error"]
    assert "torchrec 1.9.0" in error and "not a pair known to load together" in error, error
    assert "pip install 'feature-trimmer[torchrec]'" in error
    assert "not a pair known to load together" in leaf.log()
    inputs = list(plain.inputs)
    with Client(endpoint) as c:
        header, scores = c.score("plain@1", encode_columns(
            inputs, random_columns(inputs, 4, np.random.default_rng(0)), 4), 4)
        assert header["ok"] and len(scores) == 4
        header, _ = c.score("dcn@1", b"", 4)
        assert not header["ok"], header


def test_a_weighted_model_warms_up_and_scores_like_the_eager_model(tmp_path, process_runner):
    """The leaf's warm-up message gives every list one id, so a weight feature
    lines up with its ids; a real request's weights score as the eager model's."""
    import json

    import torch
    from torchrec import KeyedJaggedTensor

    from signatures.derive.torchrec_model import TorchRecInputs, TorchRecModel
    from signatures.schema import FeatureSchema
    from tests.root.world import SCHEMA
    from tests.torchrec import models
    d = json.loads(json.dumps(SCHEMA))
    d["features"].append({"name": "pin_topic_weights", "dtype": "float32", "kind": "ragged",
                          "source": "candidate"})
    schema = FeatureSchema.from_dict(d)
    wrapped = TorchRecModel(models.TwoCollections(weighted=True), TorchRecInputs(
        dense=("pin_quality",), weights={"pin_topics": "pin_topic_weights"}))
    info = export(wrapped, tmp_path / "repo", "weighted", schema, version="1")
    leaf = process_runner.leaf(tmp_path / "repo", models=["weighted@1"], name="weighted",
                               args=["--max-wait-ms", "0"])
    rng = np.random.default_rng(2)
    offsets = np.array([0, 2, 2, 5], np.int64)
    cols = {"pin_quality": rng.random(3).astype(np.float32),
            "pin_topics": (rng.integers(0, 512, 5).astype(np.int64), offsets),
            "pin_topic_weights": (rng.random(5).astype(np.float32), offsets)}
    inputs = list(info.inputs)
    with Client(leaf.endpoint) as c:
        header, scores = c.score("weighted@1", encode_columns(inputs, cols, 3), 3)
        assert header["ok"], header
    kjt = KeyedJaggedTensor(keys=["pin_topics"], values=torch.from_numpy(cols["pin_topics"][0]),
                            lengths=torch.from_numpy(np.diff(offsets)),
                            weights=torch.from_numpy(cols["pin_topic_weights"][0]))
    with torch.inference_mode():
        want = wrapped.model(torch.from_numpy(cols["pin_quality"])[:, None], kjt).reshape(-1)
    np.testing.assert_array_equal(scores, want.numpy())
    # Weights that do not line up with their ids: an error naming them, and the leaf serves on.
    bad = dict(cols, pin_topic_weights=(rng.random(4).astype(np.float32),
                                        np.array([0, 1, 2, 4], np.int64)))
    with Client(leaf.endpoint) as c:
        header, _ = c.score("weighted@1", encode_columns(inputs, bad, 3), 3)
        assert not header["ok"] and "4 values for the 5 ids of pin_topics" in str(header), header
        header, again = c.score("weighted@1", encode_columns(inputs, cols, 3), 3)
        assert header["ok"] and np.array_equal(again, scores)
