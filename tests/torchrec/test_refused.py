"""A leaf whose TorchRec pair is not one known to load together refuses the
TorchRec version at load, before opening its file: the version is not
ready, its pong entry and the leaf's log say what to install, and the
leaf's other versions serve. (The mismatch is made by a torchrec 1.9.0
distribution's metadata put first on the leaf's path.)"""
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
