import json
import os
import subprocess
import sys

import pytest
import torch

from signatures.derive.exporter import ExportError, export, synthetic_inputs
from signatures.repository.module_info import ModelRepository

from . import models

SRC = "tests.signatures.models:"


def test_export_writes_version(tmp_path, schema):
    info = export(SRC + "Helpers", tmp_path, "ctr", schema)
    assert info.key == "ctr@1"
    assert info.input_names == ["pin_emb", "pin_quality", "user_emb"]
    assert info.input("user_emb").per_request and info.input("user_emb").shape == (8,)
    assert info.provenance["torch"] == torch.__version__
    path, loaded = ModelRepository(tmp_path).load("ctr", "1")
    assert loaded == info and os.path.getsize(path) > 0
    m = torch.jit.load(path)
    assert m(synthetic_inputs(schema, info.input_names, 3)).shape == (3,)


def test_export_from_torchscript_file_keeps_bytes(tmp_path, schema):
    f = tmp_path / "m.pt"
    torch.jit.script(models.Ragged()).save(str(f))
    info = export(str(f), tmp_path / "repo", "rag", schema, version="7")
    assert info.input("pin_tags").ragged and info.input("user_recent_pins").per_request
    assert (tmp_path / "repo/rag/7/model.pt").read_bytes() == f.read_bytes()


def test_callable_returning_scripted(tmp_path, schema):
    assert export(SRC + "make_direct_scripted", tmp_path, "d", schema).input_names == [
        "pin_age_days", "pin_ctr_7d"]


def test_same_bytes_again_is_a_noop_and_versions_increase(tmp_path, schema):
    a = export(SRC + "Direct", tmp_path, "ctr", schema, version="1")
    assert export(SRC + "Direct", tmp_path, "ctr", schema, version="1") == a
    assert export(SRC + "WithIn", tmp_path, "ctr", schema).version == "2"


def test_refuse_overwrite_with_different_bytes(tmp_path, schema):
    export(SRC + "Direct", tmp_path, "ctr", schema, version="1")
    with pytest.raises(ExportError, match=r"ctr@1 already exists with different bytes; a "
                                          r"version is immutable.*next free: 2"):
        export(SRC + "WithIn", tmp_path, "ctr", schema, version="1")


def test_refuse_new_signature_and_fork(tmp_path, schema):
    export(SRC + "Direct", tmp_path, "ctr", schema)
    with pytest.raises(ExportError) as e:
        export(SRC + "DirectPlus", tmp_path, "ctr", schema)
    msg = str(e.value)
    assert "ctr@2 reads different features than ctr@1" in msg
    assert "+ pin_quality" in msg and "--fork NEW_NAME" in msg
    info = export(SRC + "DirectPlus", tmp_path, "ctr", schema, fork="ctr_plus")
    assert info.key == "ctr_plus@1" and info.provenance["forked_from"] == "ctr"
    assert ModelRepository(tmp_path).versions("ctr") == ["1"]
    with pytest.raises(ExportError, match="--fork must name a new model"):
        export(SRC + "DirectPlus", tmp_path, "ctr", schema, fork="ctr")


def test_refuse_computed_key_unless_explicit(tmp_path, schema):
    with pytest.raises(ExportError) as e:
        export(SRC + "ComputedKey", tmp_path, "c", schema)
    assert "not a constant at" in str(e.value) and "models.py" in str(e.value)
    assert "--features" in str(e.value)
    with pytest.raises(ExportError, match="reads 'pin_lang'.*lacks it"):
        export(SRC + "ComputedKey", tmp_path, "c", schema, features=["pin_quality"])
    # explicit list: the dry run then fails because the model computes pin_<n> from data
    with pytest.raises(ExportError, match="dry run .* failed; the model raised"):
        export(SRC + "ComputedKey", tmp_path, "c", schema, features=["pin_lang", "pin_quality"])


def test_refuse_explicit_extra_when_graph_is_constant(tmp_path, schema):
    with pytest.raises(ExportError, match="'pin_quality' is in the explicit feature list but "
                                          "the graph never reads it"):
        export(SRC + "Direct", tmp_path, "c", schema,
               features=["pin_ctr_7d", "pin_age_days", "pin_quality"])


def test_explicit_list_accepted(tmp_path, schema):
    info = export(SRC + "Computed", tmp_path, "c", schema,
                  features=["pin_ctr_7d", "pin_age_days"])
    assert info.input_names == ["pin_age_days", "pin_ctr_7d"]
    assert info.provenance["derived"] == "explicit list"


def test_refuse_unknown_and_misread_features(tmp_path, schema_dict):
    from signatures.schema import FeatureSchema
    schema_dict["features"] = [f for f in schema_dict["features"] if f["name"] != "pin_age_days"]
    schema_dict["features"].append({"name": "pin_age_days", "dtype": "int64", "kind": "ragged",
                                    "source": "candidate"})
    schema = FeatureSchema.from_dict(schema_dict)
    with pytest.raises(ExportError, match=r"'pin_age_days' is ragged: the model must read "
                                          r"pin_age_days.values"):
        export(SRC + "Direct", tmp_path, "c", schema)
    schema_dict["features"] = [f for f in schema_dict["features"] if f["name"] != "pin_age_days"]
    with pytest.raises(ExportError, match=r"reads 'pin_age_days' \(at .*models.py.*\) but the "
                                          r"feature schema has no such feature"):
        export(SRC + "Direct", tmp_path, "c", FeatureSchema.from_dict(schema_dict))


def test_refuse_dry_run_failures(tmp_path, schema):
    with pytest.raises(ExportError, match=r"one float score per row, shape \[5\] or \[5, 1\]; "
                                          r"got torch.float32 of shape \[1\]"):
        export(SRC + "WrongRows", tmp_path, "w", schema)
    with pytest.raises(ExportError, match="model refuses this batch"):
        export(SRC + "Raises", tmp_path, "r", schema)
    assert ModelRepository(tmp_path).models() == []


def test_refuse_bad_sources(tmp_path, schema):
    with pytest.raises(ExportError, match="neither an existing TorchScript or .pt2 file"):
        export("nope.pt", tmp_path, "m", schema)
    with pytest.raises(ExportError, match="cannot import"):
        export("no_such_module_x:f", tmp_path, "m", schema)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="not a loadable TorchScript file"):
        export(str(tmp_path / "junk.pt"), tmp_path, "m", schema)
    with pytest.raises(ExportError, match="features: Dict"):
        export(SRC + "BadSignature", tmp_path, "m", schema)
    with pytest.raises(ValueError, match="model name"):
        export(SRC + "Direct", tmp_path, "../x", schema)


def test_synthetic_inputs_follow_convention(schema):
    x = synthetic_inputs(schema, ["user_emb", "pin_tags", "user_recent_pins", "pin_ctr_7d"], 4)
    assert x["user_emb"].shape == (4, 8) and x["user_emb"].stride(0) == 0
    assert x["pin_tags.offsets"].shape == (5,) and x["user_recent_pins.offsets"].shape == (2,)
    assert int(x["pin_tags.values"].numpy().max(initial=0)) < 1000
    assert x["pin_ctr_7d"].dtype == torch.float32


def test_cli(tmp_path, schema_path):
    cmd = [sys.executable, "-m", "signatures.cli", "export", SRC + "Direct", "--repo",
           str(tmp_path / "repo"), "--model", "ctr", "--schema", str(schema_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    assert "exported ctr@1 as TorchScript: 2 features" in r.stdout
    r = subprocess.run(cmd[:4] + [SRC + "DirectPlus"] + cmd[5:] + ["--version", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "immutable" in r.stderr
    data = json.loads((tmp_path / "repo/ctr/1/module_info.json").read_text())
    assert data["model"] == "ctr" and len(data["signature_hash"]) == 64


def test_a_retry_in_another_process_is_recognised_and_answers_the_existing_version(
        tmp_path, schema_path):
    """torch.jit.save output differs between processes (a random serialization
    id, class constants in hash order): a retry is recognised by the signature
    and the module's content, not the file's bytes."""
    repo = tmp_path / "repo"

    def run(source, *extra, seed):
        cmd = [sys.executable, "-m", "signatures.cli", "export", SRC + source, "--repo",
               str(repo), "--model", "tower", "--schema", str(schema_path), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd(),
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}, timeout=300)

    r = run("SeededTower", "--version", "1", seed=1)
    assert r.returncode == 0 and "exported tower@1" in r.stdout, r
    first = (repo / "tower/1/model.pt").read_bytes()
    r = run("SeededTower", "--version", "1", seed=2)       # the retry, as asked
    assert r.returncode == 0, r.stderr
    assert "tower@1 already exported" in r.stdout and "nothing written" in r.stdout, r.stdout
    r = run("SeededTower", seed=3)                         # the retry without --version
    assert r.returncode == 0 and "tower@1 already exported" in r.stdout, r
    assert ModelRepository(repo).versions("tower") == ["1"]
    assert (repo / "tower/1/model.pt").read_bytes() == first
    # Other weights are another version; under an existing one, refused.
    r = run("SeededTowerB", seed=4)
    assert r.returncode == 0 and "exported tower@2" in r.stdout, r
    r = run("SeededTowerB", "--version", "1", seed=5)
    assert r.returncode == 1 and "already exists with different bytes" in r.stderr, r
