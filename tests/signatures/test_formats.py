"""trimmer export --format export|aoti: the signature read off the torch.export
graph (the same as TorchScript's for the same reads), what the exporter
refuses and why, .pt2 sources, retries, and the AOTInductor package the
session compiles once (tests/support/formats.py).

Scores of an exported program or package must match the TorchScript
module's within |a - b| <= SCORE_ATOL + SCORE_RTOL * |b| (1e-5 + 1e-4 x)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from signatures.derive.exporter import SCORE_ATOL, SCORE_RTOL, ExportError, export, synthetic_inputs
from signatures.repository import artifacts
from signatures.repository.module_info import Artifact, ModelRepository
from signatures.schema import FeatureSchema

from . import models

SRC = "tests.signatures.models:"
CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(artifacts.unsupported("export") is not None,
                                reason=str(artifacts.unsupported("export")))


def load(repo, info):
    path, _ = ModelRepository(repo).load(info.model, info.version)
    return artifacts.load(path, info.artifact, CPU)


def assert_same_scores(a, b, schema, names, rows=(1, 2, 7, 64)):
    for n in rows:
        x = synthetic_inputs(schema, names, n, seed=n)
        with torch.inference_mode():
            torch.testing.assert_close(b(x), a(x), rtol=SCORE_RTOL, atol=SCORE_ATOL)


@pytest.mark.parametrize("cls", ["Direct", "WithGet", "Helpers", "Submodules", "AttributeLoop",
                                 "Ragged", "StrAttributeTowers"])
def test_export_reads_what_torchscript_reads_one_signature(tmp_path, schema, cls):
    torch.manual_seed(0)   # the same weights in both (towers have Linear layers)
    ts = export(SRC + cls, tmp_path, "m", schema, version="1")
    torch.manual_seed(0)
    # the same model as another version: publish refuses a different signature
    ep = export(SRC + cls, tmp_path, "m", schema, version="2", fmt="export")
    assert ep.signature_hash == ts.signature_hash and ep.input_names == ts.input_names
    assert ep.artifact == Artifact("export", program_sha256=ep.artifact.program_sha256)
    assert len(ep.artifact.program_sha256) == 64 and ep.provenance["export_s"] >= 0
    assert sorted(os.listdir(tmp_path / "m/2")) == ["model.pt2", "module_info.json"]
    # any row count, empty lists, per-request columns as stride-0 views
    assert_same_scores(load(tmp_path, ts), load(tmp_path, ep), schema, ts.input_names)


def test_export_derives_keys_torchscript_cannot(tmp_path, schema):
    # features.keys() loops refuse in TorchScript; the exported graph names what it read
    ep = export(SRC + "Computed", tmp_path, "c", schema, fmt="export")
    assert ep.input_names == ["pin_age_days", "pin_ctr_7d"] and ep.provenance["derived"] == "graph"
    ts = export(SRC + "Computed", tmp_path, "c", schema, features=["pin_ctr_7d", "pin_age_days"])
    assert ts.signature_hash == ep.signature_hash


def test_untraceable_model_gets_the_exporters_error_where_and_the_hint(tmp_path, schema):
    with pytest.raises(ExportError) as e:
        export(SRC + "Branchy", tmp_path, "b", schema, fmt="export")
    msg = str(e.value)
    assert "torch.export cannot trace the model" in msg and "data-dependent" in msg
    assert "models.py:" in msg and "if bool((s > 100).any()):" in msg
    assert "--format torchscript" in msg
    assert ModelRepository(tmp_path).models() == []
    assert export(SRC + "Branchy", tmp_path, "b", schema).artifact.kind == "torchscript"


def test_misread_and_unknown_features_are_named(tmp_path, schema_dict):
    schema = FeatureSchema.from_dict(schema_dict)
    with pytest.raises(ExportError, match=r"'pin_tags' is ragged: the model must read "
                                          r"pin_tags.values.*\n  at .*models.py:\d+"):
        export(SRC + "RaggedByName", tmp_path, "r", schema, fmt="export")
    schema_dict["features"] = [f for f in schema_dict["features"] if f["name"] != "pin_age_days"]
    with pytest.raises(ExportError, match=r"the model reads 'pin_age_days' but the feature "
                                          r"schema has no such feature\n  at .*models.py"):
        export(SRC + "Direct", tmp_path, "d", FeatureSchema.from_dict(schema_dict), fmt="export")


def test_graph_that_depends_on_the_dicts_keys_is_refused(tmp_path, schema):
    with pytest.raises(ExportError, match=r"graph changes with the keys the features dict "
                                          r"holds.*it reads 'pin_age_days'"):
        export(SRC + "KeyDependent", tmp_path, "k", schema, fmt="export")


def test_explicit_list_must_be_what_the_graph_reads(tmp_path, schema):
    with pytest.raises(ExportError, match="'pin_quality' is in the explicit feature list but "
                                          "the graph never reads it"):
        export(SRC + "Direct", tmp_path, "d", schema, fmt="export",
               features=["pin_ctr_7d", "pin_age_days", "pin_quality"])
    info = export(SRC + "Direct", tmp_path, "d", schema, fmt="export",
                  features=["pin_ctr_7d", "pin_age_days"])
    assert info.provenance["derived"] == "explicit list"


def test_retry_of_the_same_program_is_a_noop_another_is_refused(tmp_path, schema):
    a = export(SRC + "Direct", tmp_path, "d", schema, version="1", fmt="export")
    assert export(SRC + "Direct", tmp_path, "d", schema, version="1", fmt="export") == a
    with pytest.raises(ExportError, match="d@1 already exists with different bytes"):
        export(SRC + "WithIn", tmp_path, "d", schema, version="1", fmt="export")


def save_program(path, module, example, dynamic=True):
    shapes = ({k: {0: torch.export.Dim.DYNAMIC} for k in example},) if dynamic else None
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=shapes), str(path))


def test_pt2_program_as_source(tmp_path, schema):
    x = {k: v for k, v in synthetic_inputs(schema, ["pin_age_days", "pin_ctr_7d"], 4).items()}
    save_program(tmp_path / "direct.pt2", models.Direct(), x)
    ep = export(str(tmp_path / "direct.pt2"), tmp_path / "repo", "d", schema)  # default: export
    assert ep.artifact.kind == "export" and ep.input_names == ["pin_age_days", "pin_ctr_7d"]
    ts = export(SRC + "Direct", tmp_path / "repo", "d", schema)
    assert ts.signature_hash == ep.signature_hash
    assert_same_scores(load(tmp_path / "repo", ts), load(tmp_path / "repo", ep), schema,
                       ep.input_names)
    # a program that takes an input it never reads would make the leaf send it
    x["pin_quality"] = torch.zeros(4)
    save_program(tmp_path / "extra.pt2", models.Direct(), x)
    with pytest.raises(ExportError, match="the program takes pin_quality but its graph never "
                                          "reads them"):
        export(str(tmp_path / "extra.pt2"), tmp_path / "repo", "e", schema)
    save_program(tmp_path / "static.pt2", models.Direct(), x, dynamic=False)
    with pytest.raises(ExportError, match=r"Guard failed(.|\n)*Dim.DYNAMIC on dimension 0 of "
                                          r"every input"):
        export(str(tmp_path / "static.pt2"), tmp_path / "repo", "s", schema)
    with pytest.raises(ExportError, match="cannot become TorchScript"):
        export(str(tmp_path / "direct.pt2"), tmp_path / "repo", "d2", schema, fmt="torchscript")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="not a loadable torch.export program"):
        export(str(tmp_path / "junk.pt2"), tmp_path / "repo", "j", schema)


def test_format_and_device_refusals(tmp_path, schema):
    f = tmp_path / "m.pt"
    torch.jit.script(models.Direct()).save(str(f))
    with pytest.raises(ExportError, match="a TorchScript model cannot be exported as export"):
        export(str(f), tmp_path / "repo", "m", schema, fmt="export")
    with pytest.raises(ExportError, match="--device is for --format aoti"):
        export(SRC + "Direct", tmp_path / "repo", "m", schema, fmt="export", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ExportError, match="--device cuda compiles for a GPU and this machine "
                                              "has no CUDA device"):
            export(SRC + "Direct", tmp_path / "repo", "m", schema, fmt="aoti", device="cuda")
    assert ModelRepository(tmp_path / "repo").models() == []


def test_cli_format(tmp_path, schema_path):
    cmd = [sys.executable, "-m", "signatures.cli", "export", SRC + "Direct", "--repo",
           str(tmp_path / "repo"), "--model", "ctr", "--schema", str(schema_path)]
    r = subprocess.run(cmd + ["--format", "export"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "exported ctr@1 as exported program (traced in" in r.stdout and "2 features" in r.stdout
    r = subprocess.run(cmd + ["--format", "export", "--device", "cpu"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "--device is for --format aoti" in r.stderr


# -- the session's AOTInductor package ------------------------------------------------

def test_aoti_package_records_device_and_torch_and_scores_like_torchscript(format_repo):
    aoti, ts = format_repo.require("aoti"), format_repo.require("torchscript")
    assert aoti.artifact.kind == "aoti" and aoti.artifact.device == "cpu"
    assert aoti.artifact.torch == torch.__version__ and aoti.provenance["compile_s"] > 0
    assert aoti.signature_hash == ts.signature_hash == format_repo.require("export").signature_hash
    run = {f: artifacts.load(format_repo.path(f), format_repo.infos[f].artifact, CPU)
           for f in format_repo.built}
    for fmt in format_repo.built:
        assert_same_scores(run["torchscript"], run[fmt], format_repo.schema, ts.input_names)


def test_aoti_package_is_not_a_source(format_repo, tmp_path):
    with pytest.raises(ExportError, match="an AOTInductor package holds compiled code"):
        export(format_repo.path("aoti"), tmp_path, "x", format_repo.schema)


def test_package_for_another_device_or_torch_is_refused(format_repo, tmp_path):
    path = tmp_path / "model.pt2"
    shutil.copy(format_repo.path("aoti"), path)
    built = format_repo.require("aoti").artifact
    with pytest.raises(artifacts.Refused, match="compiled for cuda and this leaf runs on cpu"):
        artifacts.load(str(path), Artifact("aoti", "cuda", built.torch), CPU)
    with pytest.raises(artifacts.Refused, match=r"compiled with torch 2.1.0\+cu121 and this leaf runs "
                                                r"torch .*recompile it"):
        artifacts.load(str(path), Artifact("aoti", "cpu", "2.1.0+cu121"), CPU)
    # the wheel's local tag (+cpu, +cu126) names a build, not a release
    release = artifacts.torch_release()
    assert artifacts.load(str(path), Artifact("aoti", "cpu", release + "+other"), CPU) is not None


def test_a_model_writing_to_its_inputs_is_refused_for_export(tmp_path, schema):
    """A compiled package writes straight into the leaf's input memory, which
    can be a root's read-only slot; TorchScript's writes the leaf can see
    (tests/leaf/test_input_writes.py), so it remains the way to ship one."""
    with pytest.raises(ExportError, match=r"writes to its input pin_ctr_7d in place.*clone"):
        export(SRC + "WritesInput", tmp_path, "w", schema, fmt="export")
    assert ModelRepository(tmp_path).models() == []
    assert export(SRC + "WritesInput", tmp_path, "w", schema).artifact.kind == "torchscript"
