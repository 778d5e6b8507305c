"""Dynamic batching of TorchRec models: requests a leaf merges into one
forward (same user list, back to back within --max-wait-ms) score like the
eager TorchRec model called on each request alone, within the exporter's
tolerance (SCORE_ATOL + SCORE_RTOL x |score|: a merged forward runs the MLPs
on more rows, which may sum floats in another order), for TorchScript and
torch.export artifacts; the TorchScript ones get grouped columns (their
KJT rebuilt key-major for the merged forward), the exported ones per-feature
columns."""
import numpy as np
import pytest

from signatures.derive.exporter import SCORE_ATOL, SCORE_RTOL, export
from signatures.schema import FeatureSchema
from tests.root.world import write_schema
from tests.support.models import encode_columns, random_columns
from tests.support.procs import Client
from tests.torchrec.models import eager_scores

pytestmark = pytest.mark.slow
KEYS = {"dlrm": ["user_recent_pins", "pin_topics"], "dcn": ["topics", "pins"]}


def test_merged_requests_score_like_each_alone(tmp_path, process_runner):
    from tests.torchrec import models
    _, schema = write_schema(tmp_path)
    assert isinstance(schema, FeatureSchema)
    repo = str(tmp_path / "repo")
    wrapped = {"dlrm": models.dlrm(), "dcn": models.dcn()}
    infos = {}
    for m, w in wrapped.items():
        for version, fmt in (("1", "torchscript"), ("2", "export")):
            info = export(w, repo, m, schema, version=version, fmt=fmt)
            infos[info.key] = info
    leaf = process_runner.leaf(repo, models=list(infos), name="batching",
                               args=["--max-wait-ms", "50"])
    rng = np.random.default_rng(4)
    user = (rng.integers(0, 1000, 5).astype(np.int64), np.array([0, 5], np.int64))
    sent, replies = {}, {}
    with Client(leaf.endpoint) as c:
        for key, info in infos.items():
            inputs = list(info.inputs)
            for _ in range(4):   # back to back: the worker takes them in one window
                cols = random_columns(inputs, 8, rng) | {"user_recent_pins": user}
                msg = (grouped_message(info, cols, 8) if info.groups
                       else encode_columns(inputs, cols, 8))
                rid = c.send({"type": "score", "model": key, "rows": 8, "compression": "none"},
                             msg)
                sent[rid] = (key, cols)
        for _ in sent:
            header, frames = c.recv(timeout=60)
            replies[header["id"]] = (header, frames)
    merged = dict.fromkeys(infos, 0)
    for rid, (key, cols) in sent.items():
        header, frames = replies[rid]
        assert header["ok"] and header["model"] == key, header
        merged[key] = max(merged[key], header["batch_rows"])
        m = key.split("@")[0]
        np.testing.assert_allclose(np.frombuffer(frames[0], "<f4"),
                                   eager_scores(wrapped[m], KEYS[m], cols, 8),
                                   rtol=SCORE_RTOL, atol=SCORE_ATOL, err_msg=key)
    assert all(rows > 8 for rows in merged.values()), merged   # merged, every model and format
    assert sum(bool(info.groups) for info in infos.values()) == 2   # the TorchScript ones


def grouped_message(info, cols: dict, rows: int):
    import _trim
    from _trim import Batch, Ragged
    layout = info.layout()
    batch = Batch.from_arrays(layout, {k: Ragged(*v) if isinstance(v, tuple) else v
                                       for k, v in cols.items()}, rows)
    return _trim.encode(_trim.compile_plan(layout, info.input_names, None, info.groups), batch)
