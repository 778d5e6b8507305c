"""The same model exported in every format into one repository, once per
test session (`format_repo` fixture): an AOTInductor compile takes tens of
seconds on this machine, so every test of the formats shares one package.

    fmt@1  TorchScript              model.pt
    fmt@2  torch.export program     model.pt2
    fmt@3  AOTInductor package      model.pt2, compiled for the CPU

All three have one signature (the formats read the same features). A format
this torch cannot build is left out, with the reason, and the tests that
need it skip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from signatures.derive.exporter import FORMATS, export
from signatures.repository import artifacts
from signatures.repository.module_info import ModelRepository, ModuleInfo
from signatures.schema import FeatureSchema

MODEL = "fmt"
SOURCE = "tests.support.format_models:FormatRanker"
VERSIONS = {"torchscript": "1", "export": "2", "aoti": "3"}


@dataclass
class FormatRepo:
    root: str
    schema_path: str
    schema: FeatureSchema
    infos: dict[str, ModuleInfo] = field(default_factory=dict)   # format -> its version
    missing: dict[str, str] = field(default_factory=dict)        # format -> why it was not built

    def require(self, fmt: str) -> ModuleInfo:
        if fmt in self.missing:
            pytest.skip(self.missing[fmt])
        return self.infos[fmt]

    def key(self, fmt: str) -> str:
        return self.require(fmt).key

    def path(self, fmt: str) -> str:
        info = self.require(fmt)
        return ModelRepository(self.root).load(info.model, info.version)[0]

    @property
    def built(self) -> list[str]:
        return [f for f in FORMATS if f in self.infos]


def build_format_repo(base) -> FormatRepo:
    from tests.root.world import write_schema
    base = os.fspath(base)
    schema_path, schema = write_schema(base)
    repo = FormatRepo(os.path.join(base, "repo"), schema_path, schema)
    for fmt in FORMATS:
        reason = artifacts.unsupported(fmt)
        if reason:
            repo.missing[fmt] = reason
            continue
        repo.infos[fmt] = export(SOURCE, repo.root, MODEL, schema, version=VERSIONS[fmt], fmt=fmt)
    return repo
