import json
import subprocess
import sys

import numpy as np
import pytest

from _trim import Batch, compile_plan, encode
from signatures.bundle import Bundle, build
from signatures.derive.exporter import export
from signatures.repository.module_info import ModelRepository
from signatures.savings import SizeModel, diff, format_diff, report

SRC = "tests.signatures.models:"


@pytest.fixture
def repo(tmp_path, schema):
    root = tmp_path / "repo"
    export(SRC + "Direct", root, "ctr", schema, version="1")
    export(SRC + "Direct", root, "ctr", schema, version="2")  # same bytes, same signature
    export(SRC + "Helpers", root, "emb", schema, version="1")
    export(SRC + "Ragged", root, "rag", schema, version="1")
    return ModelRepository(root)


PLACEMENT = {"leaves": {
    "leaf-0": {"endpoint": "ipc:///tmp/l0", "current": ["ctr@1"], "pending": ["ctr@2"]},
    "leaf-1": {"endpoint": "ipc:///tmp/l1", "current": ["emb@1", "rag@1"], "pending": []}}}


def test_build(repo, schema, tmp_path):
    b = build(repo, schema, PLACEMENT)
    assert b.models["ctr@1"].features == ("pin_ctr_7d", "pin_age_days")
    assert b.models["ctr@2"].pending and not b.models["ctr@1"].pending
    assert b.features_for("emb@1") == ["user_emb", "pin_quality", "pin_emb"]
    assert b.features_for("nope@1") is None
    assert b.leaves["leaf-1"].features == ("user_emb", "pin_quality", "user_recent_pins",
                                           "pin_tags", "pin_emb")
    assert b.leaves["leaf-0"].endpoint == "ipc:///tmp/l0"
    assert b.id.startswith("b-") and len(b.id) == 14
    b.save(tmp_path / "b.json")
    back = Bundle.load(tmp_path / "b.json")
    assert back.to_dict() == b.to_dict()
    # the id covers content, not the creation time
    assert build(repo, schema, PLACEMENT).id == b.id


def test_build_reports_all_problems(repo, schema_dict, schema):
    from signatures.schema import FeatureSchema
    for f in schema_dict["features"]:
        if f["name"] == "pin_ctr_7d":
            f["dtype"] = "float64"
        if f["name"] == "user_emb":
            f["source"] = "candidate"
    schema_dict["features"] = [f for f in schema_dict["features"] if f["name"] != "pin_tags"]
    changed = FeatureSchema.from_dict(schema_dict)
    placement = {"leaves": {"l": {"current": ["ctr@1", "emb@1", "rag@1", "gone@3", "bad"]}}}
    with pytest.raises(ValueError) as e:
        build(repo, changed, placement)
    msg = str(e.value)
    assert "6 problem(s)" in msg  # rag@1 also reads user_emb
    assert ("ctr@1 reads 'pin_ctr_7d' as dense float32 per candidate but the schema produces "
            "dense float64 per candidate") in msg
    assert "emb@1 reads 'user_emb' as dense float32[8] per request" in msg
    assert "rag@1 reads 'pin_tags', which the feature schema lacks" in msg
    assert "gone@3: not in model repository" in msg
    assert "'bad' is not of the form NAME@VERSION" in msg
    with pytest.raises(ValueError, match="'leaves' must be a non-empty object"):
        build(repo, schema, {})


def test_bundle_validation():
    with pytest.raises(ValueError) as e:
        Bundle.from_dict({"format": 1, "id": "x", "models": {"a@1": {"features": [1]}},
                          "leaves": {"l": {"current": ["b@1"]}}})
    msg = str(e.value)
    assert "'id' must be" in msg and "a@1" in msg and "hosts b@1 which is not in 'models'" in msg


def test_sizes_match_real_encoding(repo, schema):
    sizes = SizeModel(schema, rows=7, avg_list_len=3)
    names = ["user_emb", "pin_tags", "pin_ctr_7d"]
    layout = schema.layout()
    rng = np.random.default_rng(0)
    arrays = {}
    for c in layout:
        rows = 1 if c.per_request else 7
        if c.ragged:
            arrays[c.name] = (np.zeros(rows * 3, c.dtype), np.arange(rows + 1) * 3)
        else:
            arrays[c.name] = rng.random((rows,) + c.shape).astype(c.dtype)
    batch = Batch.from_arrays(layout, arrays, 7)
    assert sizes.message_nbytes(names) == len(encode(compile_plan(layout, names), batch))
    cost = sizes.cost(names)
    assert cost.total == cost.per_request + round(cost.per_candidate * 7)


def test_report_and_diff(repo, schema, tmp_path):
    b = build(repo, schema, PLACEMENT)
    rows = report(b, schema, rows=64)
    by = {(r.kind, r.name): r for r in rows}
    assert by[("model", "ctr@1")].saving > 0.8
    assert by[("leaf", "leaf-1")].trimmed.total < by[("leaf", "leaf-1")].all.total
    placement = json.loads(json.dumps(PLACEMENT))
    placement["leaves"]["leaf-0"] = {"current": ["ctr@2"], "pending": []}
    placement["leaves"]["leaf-1"]["current"] = ["emb@1"]
    b2 = build(repo, schema, placement)
    d = {x.key: x for x in diff(b, b2, schema)}
    assert d["model:rag@1"].status == "removed" and d["model:rag@1"].bytes_delta < 0
    assert d["leaf:leaf-1"].removed == ("user_recent_pins", "pin_tags")
    assert d["model:ctr@2"].status == "same"
    text = format_diff(list(d.values()), b, b2, 256)
    assert "removed  model:rag@1" in text and "- pin_tags" in text


def test_cli_bundle_report_diff(repo, schema_path, tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(PLACEMENT))
    run = lambda *a: subprocess.run([sys.executable, "-m", "signatures.cli", *a],
                                    capture_output=True, text=True)
    r = run("bundle", "build", "--repo", repo.root, "--schema", str(schema_path),
            "--placement", str(tmp_path / "p.json"), "-o", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    assert "4 model versions (1 pending), 2 leaves" in r.stdout
    r = run("report", str(tmp_path / "b.json"), "--schema", str(schema_path), "--rows", "32",
            "--plot", str(tmp_path / "r.png"))
    assert r.returncode == 0, r.stderr
    assert "model ctr@1" in r.stdout and "leaf  leaf-1" in r.stdout
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    r = run("diff", str(tmp_path / "b.json"), str(tmp_path / "b.json"))
    assert r.returncode == 0 and "no differences" in r.stdout
    r = run("report", str(tmp_path / "missing.json"), "--schema", str(schema_path))
    assert r.returncode == 1 and "cannot read" in r.stderr
