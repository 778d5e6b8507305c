"""Model signatures (``module_info.json``) and the model repository.

Repository layout: ``<repo>/<model>/<version>/{model.pt | model.pt2, module_info.json}``.
The signature hash covers inputs and outputs only, so every version of one
model shares it whatever its artifact kind; a different hash means a
different model (a fork).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from _trim import DTYPE_CODES, ColumnSpec, Layout
from _trim.errors import InvalidInput, NotFound
from _trim.groups import Group
from _trim.reads import FeatureRead
from _trim.transport.model_key import NAME_PATTERN
from signatures.runtime.files import atomic_write, read_json

FORMAT = 1
INFO_NAME = "module_info.json"
MODEL_NAME = "model.pt"   # a TorchScript artifact's file
# The artifact kinds and the file each is stored in. The name follows from
# the kind, never from the file: module_info.json cannot point a leaf at
# another path.
ARTIFACT_FILES = {"torchscript": MODEL_NAME, "export": "model.pt2", "aoti": "model.pt2"}
AOTI_DEVICES = ("cpu", "cuda")
# Names become directory names and `model@version` keys.
NAME_RE = re.compile(rf"^{NAME_PATTERN}\Z")


def check_name(what: str, value) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidInput(f"{what} {value!r} must be 1-128 characters of letters, digits, "
                         "'_', '-', '.', starting with a letter or digit")
    return value


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One input (or output) of a model."""

    name: str
    dtype: str
    shape: tuple = ()
    kind: str = "dense"
    per_request: bool = False
    # Less than the whole feature, when the model's graph reads less (_trim/reads.py).
    read: FeatureRead | None = None

    @property
    def ragged(self) -> bool:
        return self.kind == "ragged"

    def column_spec(self) -> ColumnSpec:
        return ColumnSpec(self.name, self.dtype, self.shape, self.ragged, self.per_request)

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
             "kind": self.kind, "per_request": self.per_request}
        # Absent when whole, so the hashes of signatures without reads never change.
        if self.read is not None:
            d["read"] = self.read.to_dict()
        return d

    def output_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d, where: str) -> TensorSpec:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
            raise InvalidInput(f"{where}: each entry needs a non-empty 'name', got {d!r}")
        name = d["name"]
        dtype = d.get("dtype")
        if dtype not in DTYPE_CODES:
            raise InvalidInput(f"{where}: {name!r} has unsupported dtype {dtype!r}")
        shape = d.get("shape", [])
        if not isinstance(shape, list) or len(shape) > 1 or any(
                not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in shape):
            raise InvalidInput(f"{where}: {name!r} has bad shape {shape!r}")
        kind = d.get("kind", "dense")
        if kind not in ("dense", "ragged") or (kind == "ragged" and shape):
            raise InvalidInput(f"{where}: {name!r} has bad kind {kind!r} for shape {shape!r}")
        read = None
        if "read" in d:
            read = FeatureRead.from_dict(d["read"], f"{where}: {name!r}")
            read.check(name, dtype, tuple(shape), kind == "ragged", where)
        return cls(name, dtype, tuple(shape), kind, bool(d.get("per_request", False)), read)

    @classmethod
    def from_feature(cls, feature) -> TensorSpec:
        return cls(feature.name, feature.dtype, tuple(feature.shape), feature.kind,
                   feature.per_request)


DEFAULT_OUTPUTS = (TensorSpec("score", "float32", ()),)


RUNTIMES = (None, "torchrec")


@dataclass(frozen=True)
class Artifact:
    """What ``model.pt``/``model.pt2`` holds, and what a leaf needs to load it.

    ``torchscript``: a TorchScript file; ``export``: a ``torch.export``
    ExportedProgram (``torch.export.save``); ``aoti``: an AOTInductor package
    compiled for ``device`` by torch ``torch``, which only that device type
    and that torch release load. ``program_sha256`` identifies the program
    (the traced one of the last two; a TorchScript module's weights, attribute
    values and graph), since no file is byte-reproducible across processes,
    so a retried export of the same program is recognised.
    """

    kind: str = "torchscript"
    device: str | None = None
    torch: str | None = None
    program_sha256: str = ""
    # A library the artifact's code runs on, imported (and its version pair
    # checked) before the file is opened: "torchrec" (signatures/repository/torchrec_runtime.py).
    runtime: str | None = None

    @property
    def file(self) -> str:
        return ARTIFACT_FILES[self.kind]

    def describe(self) -> str:
        if self.kind == "aoti":
            return f"AOTInductor package for {self.device} (torch {self.torch})"
        return {"torchscript": "TorchScript", "export": "exported program"}[self.kind]

    def to_dict(self) -> dict:
        d: dict = {"kind": self.kind}
        if self.kind == "aoti":
            d.update(device=self.device, torch=self.torch)
        if self.program_sha256:
            d["program_sha256"] = self.program_sha256
        if self.runtime:
            d["runtime"] = self.runtime
        return d

    @classmethod
    def from_dict(cls, d, where: str) -> Artifact:
        if not isinstance(d, dict):
            raise InvalidInput(f"{where}: 'artifact' must be an object, got {d!r}")
        kind = d.get("kind")
        if kind not in ARTIFACT_FILES:
            raise InvalidInput(f"{where}: artifact kind {kind!r} is not one of "
                               f"{', '.join(ARTIFACT_FILES)}")
        device, version = d.get("device"), d.get("torch")
        if kind == "aoti":
            if device not in AOTI_DEVICES:
                raise InvalidInput(f"{where}: an aoti artifact needs a device, one of "
                                   f"{', '.join(AOTI_DEVICES)}; got {device!r}")
            if not isinstance(version, str) or not version:
                raise InvalidInput(f"{where}: an aoti artifact needs the torch version it was "
                                   f"built with; got {version!r}")
        elif device is not None or version is not None:
            raise InvalidInput(f"{where}: only an aoti artifact has a device and a torch "
                               "version")
        sha = d.get("program_sha256", "")
        if not isinstance(sha, str):
            raise InvalidInput(f"{where}: program_sha256 must be a string")
        runtime = d.get("runtime")
        if runtime not in RUNTIMES:
            raise InvalidInput(f"{where}: artifact runtime {runtime!r} is not one of "
                               f"{', '.join(str(r) for r in RUNTIMES if r)} (or absent)")
        return cls(kind, device, version, sha, runtime)


@dataclass
class ModuleInfo:
    model: str
    version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec] = field(default_factory=lambda: list(DEFAULT_OUTPUTS))
    artifact_sha256: str = ""
    provenance: dict = field(default_factory=dict)
    signature_hash: str = ""
    artifact: Artifact = field(default_factory=Artifact)
    # Inputs sent together as grouped columns (a TorchRec model's KJT and dense
    # tensor, _trim/groups.py): how this version's features travel, not which
    # it reads, so not in the signature hash (which a root recomputes from its
    # schema, and every version of a model shares); written only when some.
    groups: list[Group] = field(default_factory=list)

    def __post_init__(self):
        check_name("model name", self.model)
        check_name("model version", self.version)
        self.inputs = sorted(self.inputs, key=lambda s: s.name)
        names = [s.name for s in self.inputs]
        if len(set(names)) != len(names):
            raise InvalidInput(f"{self.key}: duplicate input names")
        if not self.signature_hash:
            self.signature_hash = self.compute_hash()

    @property
    def key(self) -> str:
        return f"{self.model}@{self.version}"

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def input(self, name: str) -> TensorSpec:
        for s in self.inputs:
            if s.name == name:
                return s
        raise KeyError(name)

    def layout(self) -> Layout:
        """The batch layout this model expects (inputs in name order)."""
        return Layout(s.column_spec() for s in self.inputs)

    def compute_hash(self) -> str:
        return signature_hash(self.inputs, self.outputs)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "model": self.model, "version": self.version,
                "inputs": [s.to_dict() for s in self.inputs],
                "outputs": [s.output_dict() for s in self.outputs],
                "signature_hash": self.signature_hash,
                "artifact": self.artifact.to_dict(),
                "artifact_sha256": self.artifact_sha256,
                "provenance": self.provenance,
                **({"groups": [g.to_dict() for g in self.groups]} if self.groups else {})}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False).encode() + b"\n"

    def write(self, version_dir) -> str:
        path = os.path.join(os.fspath(version_dir), INFO_NAME)
        atomic_write(path, self.to_json())
        return path

    @classmethod
    def from_dict(cls, d, where: str = INFO_NAME) -> ModuleInfo:
        if not isinstance(d, dict):
            raise InvalidInput(f"{where}: expected an object")
        if d.get("format") != FORMAT:
            raise InvalidInput(f"{where}: format must be {FORMAT}, got {d.get('format')!r}")
        for key in ("model", "version", "inputs", "outputs", "signature_hash"):
            if key not in d:
                raise InvalidInput(f"{where}: missing {key!r}")
        if not isinstance(d["inputs"], list) or not isinstance(d["outputs"], list):
            raise InvalidInput(f"{where}: 'inputs' and 'outputs' must be lists")
        inputs = [TensorSpec.from_dict(x, f"{where}: inputs") for x in d["inputs"]]
        outputs = [TensorSpec.from_dict(x, f"{where}: outputs") for x in d["outputs"]]
        # Written before there were other kinds: a TorchScript model.pt.
        artifact = Artifact.from_dict(d["artifact"], where) if "artifact" in d else Artifact()
        groups = d.get("groups", [])
        if not isinstance(groups, list):
            raise InvalidInput(f"{where}: 'groups' must be a list")
        info = cls(model=d["model"], version=str(d["version"]), inputs=inputs, outputs=outputs,
                   artifact_sha256=d.get("artifact_sha256", ""),
                   provenance=d.get("provenance") or {}, signature_hash="", artifact=artifact,
                   groups=[Group.from_dict(g, f"{where}: groups") for g in groups])
        names = set(info.input_names)
        for g in info.groups:
            if not set(g.members) <= names:
                raise InvalidInput(f"{where}: group {g.name} lists features that are not inputs")
        if info.signature_hash != d["signature_hash"]:
            raise InvalidInput(f"{where}: signature_hash {d['signature_hash'][:12]}... does not "
                             f"match its inputs/outputs ({info.signature_hash[:12]}...): "
                             "the file was edited by hand or corrupted")
        return info

    @classmethod
    def load(cls, version_dir) -> ModuleInfo:
        path = os.path.join(os.fspath(version_dir), INFO_NAME)
        return cls.from_dict(read_json(path), where=path)


def signature_hash(inputs, outputs) -> str:
    body = {"inputs": [s.to_dict() for s in sorted(inputs, key=lambda s: s.name)],
            "outputs": [s.output_dict() for s in outputs]}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def version_sort_key(version: str):
    """Numeric versions in numeric order, others after them by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class ModelRepository:
    """A directory of model versions; read side. Writing (with immutability
    checks) is `signatures.repository.publish`. An object-store repository
    (`signatures.repository.objects.ObjectRepository`) reads the same way."""

    remote = False   # True: on object storage, read through a local cache

    def __init__(self, root):
        self.root = os.fspath(root)

    def models(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(m for m in os.listdir(self.root)
                      if NAME_RE.match(m) and os.path.isdir(os.path.join(self.root, m)))

    def versions(self, model: str) -> list[str]:
        d = os.path.join(self.root, model)
        if not NAME_RE.match(model) or not os.path.isdir(d):
            return []
        return sorted((v for v in os.listdir(d)
                       if NAME_RE.match(v) and os.path.isfile(os.path.join(d, v, INFO_NAME))),
                      key=version_sort_key)

    def version_dir(self, model: str, version: str) -> str:
        check_name("model name", model)
        check_name("model version", version)
        return os.path.join(self.root, model, version)

    def has(self, model: str, version: str) -> bool:
        return os.path.isfile(os.path.join(self.version_dir(model, version), INFO_NAME))

    def info(self, model: str, version: str) -> ModuleInfo:
        """The signature alone (no artifact check): cheap, for bundles and reports."""
        if not self.has(model, version):
            raise NotFound(f"{model}@{version}: not in model repository {self.root}")
        return ModuleInfo.load(self.version_dir(model, version))

    def load(self, model: str, version: str, verify: bool = True) -> tuple[str, ModuleInfo]:
        """(path to the artifact, ModuleInfo); with ``verify`` the artifact's
        sha256 must match the signature's record of it."""
        info = self.info(model, version)
        path = os.path.join(self.version_dir(model, version), info.artifact.file)
        if not os.path.isfile(path):
            raise InvalidInput(f"{info.key}: {path} is missing")
        if verify and info.artifact_sha256 and sha256_file(path) != info.artifact_sha256:
            raise InvalidInput(f"{info.key}: {path} does not match the artifact_sha256 in its "
                             "module_info.json (modified after export)")
        return path, info

    def read_artifact(self, model: str, version: str) -> bytes:
        """The artifact's bytes, unverified (a retried export compares programs)."""
        info = self.info(model, version)
        with open(os.path.join(self.version_dir(model, version), info.artifact.file), "rb") as f:
            return f.read()

    def artifact_sha256(self, model: str, version: str) -> str:
        """The sha256 of the artifact as stored (hashed here: a file can be edited)."""
        info = self.info(model, version)
        return sha256_file(os.path.join(self.version_dir(model, version), info.artifact.file))

    def iter_versions(self) -> Iterator[tuple[str, str]]:
        """Every (model, version) in the repository, models by name, versions in order."""
        for model in self.models():
            for version in self.versions(model):
                yield model, version

    def __repr__(self) -> str:
        return f"ModelRepository({self.root!r})"


__all__ = ["AOTI_DEVICES", "ARTIFACT_FILES", "FORMAT", "INFO_NAME", "MODEL_NAME", "Artifact",
           "ModelRepository", "ModuleInfo", "TensorSpec",
           "atomic_write", "canonical_json", "check_name", "sha256_file", "signature_hash"]
