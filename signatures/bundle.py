"""Bundles: which leaf hosts which model versions, and what each version reads.

A bundle is the root's trim config. Its ``models`` map is the allowlist
model version -> required features, for current AND pending versions, so a
config can reach the roots before the model versions it anticipates reach the
leaves ("config before models").

A version whose signature declares reads (`_trim/reads.py`: positions of a
vector feature, a narrowing cast) has them under ``reads`` (feature -> read),
only then, so that bundles without reads keep their ids. A root that
predates reads ignores the key and sends those features whole (fail open);
one that knows them sends each read to the leaves that say they take it
(docs/signatures.md, "Sub-feature reads").
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field

from _trim.errors import InvalidInput, NotFound
from _trim.groups import Group
from _trim.reads import FeatureRead
from _trim.transport.model_key import ModelKey
from signatures.repository.module_info import (
    DEFAULT_OUTPUTS,
    ModelRepository,
    TensorSpec,
    canonical_json,
    signature_hash,
)
from signatures.runtime.files import atomic_write, read_json
from signatures.schema import FeatureSchema

FORMAT = 1


@dataclass(frozen=True)
class BundleModel:
    model: str
    version: str
    signature_hash: str
    features: tuple[str, ...]
    pending: bool = False
    # Feature -> what the version reads of it, for features it reads less of than whole.
    reads: tuple[tuple[str, FeatureRead], ...] = ()
    # Its inputs sent as grouped columns (a TorchRec model's), absent when none.
    groups: tuple[Group, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.model}@{self.version}"

    def read_map(self) -> dict[str, FeatureRead]:
        return dict(self.reads)

    def to_dict(self) -> dict:
        d = {"model": self.model, "version": self.version,
             "signature_hash": self.signature_hash, "features": list(self.features),
             "pending": self.pending}
        if self.reads:
            d["reads"] = {name: read.to_dict() for name, read in self.reads}
        if self.groups:
            d["groups"] = [g.to_dict() for g in self.groups]
        return d


@dataclass(frozen=True)
class BundleLeaf:
    name: str
    current: tuple[str, ...]
    pending: tuple[str, ...]
    features: tuple[str, ...]
    endpoint: str | None = None

    def to_dict(self) -> dict:
        d: dict[str, object] = {"current": list(self.current), "pending": list(self.pending),
                                "features": list(self.features)}
        if self.endpoint is not None:
            d["endpoint"] = self.endpoint
        return d


@dataclass
class Bundle:
    id: str
    models: dict[str, BundleModel]
    leaves: dict[str, BundleLeaf]
    schema_fingerprint: str = ""
    created: str = ""
    extra: dict = field(default_factory=dict)

    # -- queries --------------------------------------------------------------

    def features_for(self, key: str) -> list[str] | None:
        """Features the model version reads; None when the bundle does not know it
        (the root then fails open: it sends every feature, and counts it)."""
        m = self.models.get(key)
        return None if m is None else list(m.features)

    def all_features(self) -> list[str]:
        """The union over every model version: what the root must compute."""
        seen: dict[str, None] = {}
        for m in self.models.values():
            seen.update(dict.fromkeys(m.features))
        return list(seen)

    # -- (de)serialisation ------------------------------------------------------

    def content(self) -> dict:
        """Everything the id covers (not the creation time)."""
        return {"format": FORMAT, "schema_fingerprint": self.schema_fingerprint,
                "models": {k: self.models[k].to_dict() for k in sorted(self.models)},
                "leaves": {k: self.leaves[k].to_dict() for k in sorted(self.leaves)}}

    def to_dict(self) -> dict:
        d = self.content()
        return {"format": FORMAT, "id": self.id, "created": self.created, **d, **self.extra}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode() + b"\n"

    def save(self, path) -> None:
        atomic_write(path, self.to_json())

    @staticmethod
    def content_id(content: dict) -> str:
        return "b-" + hashlib.sha256(canonical_json(content)).hexdigest()[:12]

    @classmethod
    def load(cls, path) -> Bundle:
        return cls.from_dict(read_json(path, "bundle"), where=f"bundle {os.fspath(path)}")

    @classmethod
    def from_dict(cls, d, where: str = "bundle") -> Bundle:
        problems: list[str] = []
        if not isinstance(d, dict):
            raise InvalidInput(f"{where}: expected an object")
        if d.get("format") != FORMAT:
            problems.append(f"format must be {FORMAT}, got {d.get('format')!r}")
        if not isinstance(d.get("id"), str) or not d["id"].startswith("b-"):
            problems.append(f"'id' must be a string b-<hex>, got {d.get('id')!r}")
        models: dict[str, BundleModel] = {}
        raw_models = d.get("models")
        if not isinstance(raw_models, dict):
            problems.append("'models' must be an object")
            raw_models = {}
        for key, m in raw_models.items():
            try:
                mk = ModelKey(key)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            feats = m.get("features") if isinstance(m, dict) else None
            if not isinstance(feats, list) or not all(isinstance(f, str) and f for f in feats):
                problems.append(f"models[{key!r}].features must be a list of feature names")
                continue
            if len(set(feats)) != len(feats):
                problems.append(f"models[{key!r}].features lists a feature twice")
                continue
            try:
                reads = _parse_reads(m.get("reads", {}), feats, f"models[{key!r}].reads")
                groups = _parse_groups(m.get("groups", []), feats, f"models[{key!r}].groups")
            except InvalidInput as exc:
                problems.append(str(exc))
                continue
            models[key] = BundleModel(mk.name, mk.version, str(m.get("signature_hash", "")),
                                      tuple(feats), bool(m.get("pending", False)), reads, groups)
        leaves: dict[str, BundleLeaf] = {}
        raw_leaves = d.get("leaves", {})
        if not isinstance(raw_leaves, dict):
            problems.append("'leaves' must be an object")
            raw_leaves = {}
        for name, leaf in raw_leaves.items():
            if not isinstance(leaf, dict):
                problems.append(f"leaves[{name!r}] must be an object")
                continue
            lists = {}
            for part in ("current", "pending", "features"):
                v = leaf.get(part, [])
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    problems.append(f"leaves[{name!r}].{part} must be a list of strings")
                    v = []
                lists[part] = tuple(v)
            for key in lists["current"] + lists["pending"]:
                if key not in raw_models:
                    problems.append(f"leaves[{name!r}] hosts {key} which is not in 'models'")
            leaves[name] = BundleLeaf(name, lists["current"], lists["pending"],
                                      lists["features"], leaf.get("endpoint"))
        if problems:
            raise InvalidInput(f"{where}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
        known = {"format", "id", "created", "schema_fingerprint", "models", "leaves"}
        return cls(id=d["id"], models=models, leaves=leaves,
                   schema_fingerprint=str(d.get("schema_fingerprint", "")),
                   created=str(d.get("created", "")),
                   extra={k: v for k, v in d.items() if k not in known})


def load_placement(path) -> dict:
    return read_json(path, "placement")


def build(repo: ModelRepository, schema: FeatureSchema, placement: dict) -> Bundle:
    """A bundle for ``placement``; ValueError listing every problem found."""
    problems: list[str] = []
    leaves_in = placement.get("leaves") if isinstance(placement, dict) else None
    if not isinstance(leaves_in, dict) or not leaves_in:
        raise InvalidInput("placement: 'leaves' must be a non-empty object of leaf name -> "
                         "{endpoint, current, pending}")
    current_keys: set[str] = set()
    wanted: dict[str, None] = {}
    for leaf, spec in leaves_in.items():
        for part in ("current", "pending"):
            keys = spec.get(part, []) if isinstance(spec, dict) else None
            if not isinstance(keys, list):
                problems.append(f"placement leaf {leaf!r}: {part!r} must be a list")
                continue
            for key in keys:
                wanted[key] = None
                if part == "current":
                    current_keys.add(key)
    models: dict[str, BundleModel] = {}
    for key in wanted:
        try:
            mk = ModelKey(key)
            info = repo.info(mk.name, mk.version)
        except (NotFound, ValueError) as exc:
            problems.append(str(exc))
            continue
        for spec in info.inputs:
            f = schema.features.get(spec.name)
            if f is None:
                problems.append(f"{key} reads {spec.name!r}, which the feature schema lacks")
                continue
            have = (f.dtype, tuple(f.shape), f.kind, f.per_request)
            need = (spec.dtype, tuple(spec.shape), spec.kind, spec.per_request)
            if have != need:
                problems.append(f"{key} reads {spec.name!r} as {_describe(need)} but the schema "
                                f"produces {_describe(have)}")
        names = set(info.input_names)
        ordered = tuple(n for n in schema.names if n in names)
        read_of = {spec.name: spec.read for spec in info.inputs if spec.read is not None}
        models[key] = BundleModel(mk.name, mk.version, info.signature_hash, ordered,
                                  pending=key not in current_keys,
                                  reads=tuple((n, read_of[n]) for n in ordered if n in read_of),
                                  groups=tuple(info.groups))
    if problems:
        raise InvalidInput(f"cannot build the bundle: {len(problems)} problem(s):\n  - "
                         + "\n  - ".join(problems))
    leaves: dict[str, BundleLeaf] = {}
    for leaf, spec in leaves_in.items():
        cur, pend = tuple(spec.get("current", [])), tuple(spec.get("pending", []))
        union: set[str] = set()
        for key in cur + pend:
            union.update(models[key].features)
        leaves[leaf] = BundleLeaf(leaf, cur, pend, tuple(n for n in schema.names if n in union),
                                  spec.get("endpoint"))
    bundle = Bundle(id="", models=models, leaves=leaves, schema_fingerprint=schema.fingerprint,
                    created=datetime.datetime.now(datetime.timezone.utc)
                    .strftime("%Y-%m-%dT%H:%M:%SZ"))
    bundle.id = Bundle.content_id(bundle.content())
    return bundle


def _parse_reads(raw, features, where: str) -> tuple[tuple[str, FeatureRead], ...]:
    """A model's ``reads`` (feature -> read) in the order of its features;
    InvalidInput naming what is wrong."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object of feature -> read")
    unknown = sorted(set(raw) - set(features))
    if unknown:
        raise InvalidInput(f"{where} names features the version does not read: "
                           f"{', '.join(map(str, unknown))}")
    out = []
    for name in features:
        if name in raw:
            read = FeatureRead.from_dict(raw[name], f"{where}[{name!r}]")
            if read.whole:
                raise InvalidInput(f"{where}[{name!r}] is empty; omit it")
            out.append((name, read))
    return tuple(out)


def _parse_groups(raw, features, where: str) -> tuple[Group, ...]:
    """A model's ``groups`` (grouped columns); InvalidInput naming what is wrong."""
    if not isinstance(raw, list):
        raise InvalidInput(f"{where} must be a list of groups")
    groups = tuple(Group.from_dict(g, f"{where}[{i}]") for i, g in enumerate(raw))
    for g in groups:
        if not set(g.members) <= set(features):
            raise InvalidInput(f"{where}: group {g.name} lists features the version does not read")
    return groups


def _describe(t) -> str:
    dtype, shape, kind, per_request = t
    return (f"{kind} {dtype}{list(shape) if shape else ''} "
            f"{'per request' if per_request else 'per candidate'}")


def schema_hash(schema: FeatureSchema, features) -> str:
    """The signature hash a model version reading ``features`` (and scoring one
    float32 per row) has under ``schema``. A bundle's version with another
    hash was built against a schema that disagrees with ``schema`` on one of
    them (a dtype, a shape, a kind): a root running ``schema`` would send
    tensors its leaves refuse (``signature_mismatch``)."""
    return signature_hash([TensorSpec.from_feature(schema[n]) for n in features],
                          DEFAULT_OUTPUTS)


__all__ = ["Bundle", "BundleLeaf", "BundleModel", "build", "load_placement", "schema_hash"]
