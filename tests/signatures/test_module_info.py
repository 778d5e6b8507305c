import json

import pytest

from signatures.repository.module_info import ModelRepository, ModuleInfo, TensorSpec


def _info(version="1", inputs=None):
    inputs = inputs or [TensorSpec("b", "float32", (4,)), TensorSpec("a", "int64", (), "ragged", True)]
    return ModuleInfo("ctr", version, inputs, artifact_sha256="", provenance={"torch": "x"})


def test_hash_covers_inputs_outputs_only():
    a, b = _info("1"), _info("2")
    assert a.signature_hash == b.signature_hash == a.compute_hash()
    assert a.input_names == ["a", "b"]
    assert a.key == "ctr@1"
    c = _info("3", [TensorSpec("b", "float32", (4,))])
    assert c.signature_hash != a.signature_hash
    # input order never matters
    d = _info("4", list(reversed(a.inputs)))
    assert d.signature_hash == a.signature_hash


def test_roundtrip_and_tamper(tmp_path):
    info = _info()
    info.write(tmp_path)
    back = ModuleInfo.load(tmp_path)
    assert back == info
    assert back.input("a").ragged and back.input("a").per_request
    assert back.layout().names == ["a", "b"]
    d = json.loads((tmp_path / "module_info.json").read_text())
    d["inputs"][0]["dtype"] = "int32"
    (tmp_path / "module_info.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="does not match its inputs"):
        ModuleInfo.load(tmp_path)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        ModuleInfo.load(tmp_path)
    (tmp_path / "module_info.json").write_text("{]")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModuleInfo.load(tmp_path)
    with pytest.raises(ValueError, match="missing 'inputs'"):
        ModuleInfo.from_dict({"format": 1, "model": "m", "version": "1", "outputs": [],
                              "signature_hash": ""})
    with pytest.raises(ValueError, match="model name"):
        ModuleInfo("../etc", "1", [])


def test_repository(tmp_path):
    repo = ModelRepository(tmp_path)
    assert repo.models() == [] and list(repo.iter_versions()) == []
    for v in ["10", "2", "1"]:
        d = tmp_path / "ctr" / v
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"weights" + v.encode())
        from signatures.repository.module_info import sha256_file
        info = _info(v)
        info.artifact_sha256 = sha256_file(d / "model.pt")
        info.write(d)
    (tmp_path / "ctr" / "junk").mkdir()
    assert repo.versions("ctr") == ["1", "2", "10"]
    assert list(repo.iter_versions()) == [("ctr", "1"), ("ctr", "2"), ("ctr", "10")]
    path, info = repo.load("ctr", "2")
    assert path.endswith("ctr/2/model.pt") and info.version == "2"
    (tmp_path / "ctr" / "2" / "model.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="modified after export"):
        repo.load("ctr", "2")
    with pytest.raises(KeyError, match="ctr@9"):
        repo.load("ctr", "9")


def test_artifact_kind_device_torch_roundtrip_outside_the_hash(tmp_path):
    from signatures.repository.module_info import Artifact
    plain = _info()
    aoti = ModuleInfo("ctr", "2", plain.inputs, artifact=Artifact("aoti", "cuda", "2.11.0+cu126",
                                                                   "ab" * 32))
    assert aoti.signature_hash == plain.signature_hash  # the format is no part of the signature
    aoti.write(tmp_path)
    d = json.loads((tmp_path / "module_info.json").read_text())
    assert d["artifact"] == {"kind": "aoti", "device": "cuda", "torch": "2.11.0+cu126",
                             "program_sha256": "ab" * 32}
    assert ModuleInfo.load(tmp_path) == aoti and aoti.artifact.file == "model.pt2"
    del d["artifact"]   # written before other kinds existed: TorchScript in model.pt
    assert ModuleInfo.from_dict(d).artifact == Artifact() and Artifact().file == "model.pt"


@pytest.mark.parametrize("artifact, problem", [
    ({"kind": "onnx"}, "artifact kind 'onnx' is not one of torchscript, export, aoti"),
    ({"kind": "aoti", "torch": "2.11.0"}, "an aoti artifact needs a device"),
    ({"kind": "aoti", "device": "tpu", "torch": "2.11.0"}, "an aoti artifact needs a device"),
    ({"kind": "aoti", "device": "cpu"}, "needs the torch version it was built with"),
    ({"kind": "export", "device": "cpu"}, "only an aoti artifact has a device"),
    ("model.pt", "'artifact' must be an object"),
])
def test_bad_artifact(artifact, problem):
    d = _info().to_dict()
    d["artifact"] = artifact
    with pytest.raises(ValueError, match=problem):
        ModuleInfo.from_dict(d)


def test_repository_loads_the_kinds_file(tmp_path):
    from signatures.repository.module_info import Artifact, sha256_file
    d = tmp_path / "ctr" / "1"
    d.mkdir(parents=True)
    (d / "model.pt2").write_bytes(b"program")
    info = ModuleInfo("ctr", "1", _info().inputs, artifact=Artifact("export"),
                      artifact_sha256=sha256_file(d / "model.pt2"))
    info.write(d)
    path, loaded = ModelRepository(tmp_path).load("ctr", "1")
    assert path == str(d / "model.pt2") and loaded.artifact.kind == "export"
    (d / "model.pt2").unlink()
    (d / "model.pt").write_bytes(b"program")   # the other kind's file is never read instead
    with pytest.raises(ValueError, match="model.pt2 is missing"):
        ModelRepository(tmp_path).load("ctr", "1")
