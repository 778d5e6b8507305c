"""The feature schema: every feature the root can produce.

A JSON (or TOML) file owned by the root. Loading validates the whole file and
reports every problem in one ValueError, so an author fixes them in one pass
instead of one per run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from _trim import DTYPE_CODES, ColumnSpec, Layout
from _trim.errors import InvalidInput

FORMAT = 1
SOURCES = ("user", "candidate", "cross")
KINDS = ("dense", "ragged")
FLOAT_DTYPES = ("float32", "float16", "float64")
INT_DTYPES = ("int64", "int32", "int8", "uint8")
# Ragged features reach a model as two dict entries with these suffixes, so a
# feature name may not end with one of them.
RAGGED_SUFFIXES = (".values", ".offsets")

# op -> (required params, optional params)
TRANSFORMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "identity": ((), ()),
    "log1p": ((), ()),
    "clip": (("lo", "hi"), ()),
    "standardize": (("mean", "std"), ()),
    "hash": (("buckets",), ()),
    "dot": (("inputs",), ()),
}
FEATURE_KEYS = {"name", "dtype", "shape", "kind", "source", "raw", "transform", "default",
                "description"}


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str
    shape: tuple = ()
    ragged: bool = False
    source: str = "candidate"
    raw: str | None = None
    transform: dict = field(default_factory=lambda: {"op": "identity"}, compare=False, hash=False)
    default: object = None

    @property
    def per_request(self) -> bool:
        """User features are one row per request, broadcast to the candidates."""
        return self.source == "user"

    @property
    def kind(self) -> str:
        return "ragged" if self.ragged else "dense"

    @property
    def raw_name(self) -> str | None:
        """The record field this feature is computed from (None for cross)."""
        if self.source == "cross":
            return None
        return self.raw or self.name

    @property
    def inputs(self) -> tuple[str, ...]:
        """Features a cross feature is computed from (empty otherwise)."""
        return tuple(self.transform.get("inputs", ())) if self.source == "cross" else ()

    def column_spec(self) -> ColumnSpec:
        return ColumnSpec(self.name, self.dtype, self.shape, self.ragged, self.per_request)

    def to_dict(self) -> dict:
        d: dict[str, object] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
             "kind": self.kind, "source": self.source, "transform": dict(self.transform)}
        if self.raw is not None:
            d["raw"] = self.raw
        if self.default is not None:
            d["default"] = self.default
        return d


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class FeatureSchema:
    """An ordered, validated set of features (``features``: name -> Feature)."""

    def __init__(self, features: Iterable[Feature], path: str | None = None):
        self.features: dict[str, Feature] = {f.name: f for f in features}
        self.path = path
        canonical = json.dumps([f.to_dict() for f in self.features.values()],
                               sort_keys=True, separators=(",", ":"))
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:32]

    # -- loading --------------------------------------------------------------

    @classmethod
    def load(cls, path) -> FeatureSchema:
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise InvalidInput(f"feature schema {path}: cannot read: {exc.strerror}") from exc
        try:
            if path.endswith(".toml"):
                import tomllib
                data = tomllib.loads(raw.decode())
            else:
                data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"feature schema {path}: not valid "
                             f"{'TOML' if path.endswith('.toml') else 'JSON'}: {exc}") from exc
        return cls.from_dict(data, path=path)

    @classmethod
    def from_dict(cls, data, path: str | None = None) -> FeatureSchema:
        where = f"feature schema {path}" if path else "feature schema"
        problems: list[str] = []
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{where}: expected an object with 'format' and 'features'")
        if data.get("format") != FORMAT:
            problems.append(f"format must be {FORMAT}, got {data.get('format')!r}")
        items = data.get("features")
        if not isinstance(items, list) or not items:
            problems.append("'features' must be a non-empty list")
            items = []
        features: list[Feature] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            feat = _parse_feature(i, item, problems)
            if feat is None:
                continue
            if feat.name in seen:
                problems.append(f"feature {feat.name!r} (#{i}): duplicate name "
                                f"(first defined at #{seen[feat.name]})")
                continue
            seen[feat.name] = i
            features.append(feat)
        by_name = {f.name: f for f in features}
        for feat in features:
            if feat.source == "cross":
                _check_cross(feat, by_name, problems)
        if problems:
            raise InvalidInput(f"{where}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
        return cls(features, path=path)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "features": [f.to_dict() for f in self.features.values()]}

    # -- queries --------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.features

    def __getitem__(self, name: str) -> Feature:
        return self.features[name]

    def __len__(self) -> int:
        return len(self.features)

    @property
    def names(self) -> list[str]:
        return list(self.features)

    def check_names(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self.features]
        if unknown:
            raise InvalidInput(f"features not in the schema: {', '.join(unknown)}")

    def layout(self, names: Iterable[str] | None = None) -> Layout:
        """The batch layout of ``names`` (all features if None), in schema order."""
        if names is None:
            return Layout(f.column_spec() for f in self.features.values())
        wanted = set(names)
        self.check_names(wanted)
        return Layout(f.column_spec() for f in self.features.values() if f.name in wanted)

    def closure(self, names: Iterable[str]) -> list[str]:
        """``names`` plus the cross inputs they are computed from, in schema order:
        what the root must compute to produce ``names``."""
        wanted = set(names)
        self.check_names(wanted)
        stack = list(wanted)
        while stack:
            for dep in self.features[stack.pop()].inputs:
                if dep not in wanted:
                    wanted.add(dep)
                    stack.append(dep)
        return [n for n in self.features if n in wanted]

    def __repr__(self) -> str:
        return f"FeatureSchema({len(self.features)} features, {self.fingerprint[:8]})"


def _parse_feature(i: int, item, problems: list[str]) -> Feature | None:
    if not isinstance(item, Mapping):
        problems.append(f"feature #{i}: expected an object, got {type(item).__name__}")
        return None
    name = item.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"feature #{i}: 'name' must be a non-empty string, got {name!r}")
        return None
    at = f"feature {name!r}"
    n_before = len(problems)
    if name.endswith(RAGGED_SUFFIXES) or "@" in name:
        problems.append(f"{at}: name may not contain '@' or end with .values/.offsets "
                        "(reserved for ragged inputs)")
    unknown = sorted(set(item) - FEATURE_KEYS)
    if unknown:
        problems.append(f"{at}: unknown keys {', '.join(unknown)}")
    dtype = item.get("dtype")
    if dtype not in DTYPE_CODES:
        problems.append(f"{at}: dtype {dtype!r} not one of {', '.join(DTYPE_CODES)}")
    kind = item.get("kind", "dense")
    if kind not in KINDS:
        problems.append(f"{at}: kind {kind!r} not one of {', '.join(KINDS)}")
    shape = item.get("shape", [])
    if (not isinstance(shape, list) or len(shape) > 1
            or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape)):
        problems.append(f"{at}: shape must be [] or [width] with width >= 1, got {shape!r}")
        shape = []
    if kind == "ragged" and shape:
        problems.append(f"{at}: a ragged feature holds scalars, its shape must be []")
    source = item.get("source")
    if source not in SOURCES:
        problems.append(f"{at}: source {source!r} not one of {', '.join(SOURCES)}")
    raw = item.get("raw")
    if raw is not None and (not isinstance(raw, str) or not raw):
        problems.append(f"{at}: 'raw' must be a non-empty string")
    if raw is not None and source == "cross":
        problems.append(f"{at}: a cross feature is computed from other features, it has no 'raw'")
    transform = item.get("transform", {"op": "identity"})
    _check_transform(at, transform, dtype, kind, shape, source, problems)
    default = item.get("default")
    _check_default(at, default, kind, shape, problems)
    if len(problems) > n_before:
        return None
    assert isinstance(dtype, str) and isinstance(source, str)   # else a problem was recorded
    return Feature(name=name, dtype=dtype, shape=tuple(shape), ragged=(kind == "ragged"),
                   source=source, raw=raw, transform=dict(transform), default=default)


def _check_transform(at, transform, dtype, kind, shape, source, problems) -> None:
    if not isinstance(transform, Mapping) or transform.get("op") not in TRANSFORMS:
        op = transform.get("op") if isinstance(transform, Mapping) else transform
        problems.append(f"{at}: transform.op {op!r} not one of {', '.join(TRANSFORMS)}")
        return
    op = transform["op"]
    required, optional = TRANSFORMS[op]
    missing = [k for k in required if k not in transform]
    extra = sorted(set(transform) - {"op", *required, *optional})
    if missing:
        problems.append(f"{at}: transform {op} needs {', '.join(missing)}")
    if extra:
        problems.append(f"{at}: transform {op} does not take {', '.join(extra)}")
    if missing:
        return
    if op in ("log1p", "standardize", "clip") and dtype not in FLOAT_DTYPES:
        problems.append(f"{at}: transform {op} produces floats, dtype must be one of "
                        f"{', '.join(FLOAT_DTYPES)}")
    if op == "clip":
        lo, hi = transform["lo"], transform["hi"]
        if not (_is_number(lo) and _is_number(hi)) or lo > hi:
            problems.append(f"{at}: clip needs numbers lo <= hi, got lo={lo!r} hi={hi!r}")
    elif op == "standardize":
        mean, std = transform["mean"], transform["std"]
        if not (_is_number(mean) and _is_number(std)) or std <= 0:
            problems.append(f"{at}: standardize needs a number mean and std > 0, "
                            f"got mean={mean!r} std={std!r}")
    elif op == "hash":
        buckets = transform["buckets"]
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
            problems.append(f"{at}: hash buckets must be an integer >= 1, got {buckets!r}")
        if dtype not in ("int64", "int32"):
            problems.append(f"{at}: hash produces int64/int32 bucket ids, dtype is {dtype!r}")
        if shape:
            problems.append(f"{at}: hash applies to scalar or ragged ids, shape must be []")
    if (op == "dot") != (source == "cross"):
        problems.append(f"{at}: transform dot is for cross features, and cross features use dot")


def _check_default(at, default, kind, shape, problems) -> None:
    if default is None:
        return
    if kind == "ragged" or shape:
        ok = isinstance(default, list) and all(_is_number(v) or isinstance(v, bool) for v in default)
        if ok and shape and len(default) not in (1, shape[0]):
            ok = False
        if not ok and not (shape and (_is_number(default) or isinstance(default, bool))):
            problems.append(f"{at}: default must be a list of numbers"
                            f"{f' of length {shape[0]} (or a number)' if shape else ''}, "
                            f"got {default!r}")
    elif not (_is_number(default) or isinstance(default, bool)):
        problems.append(f"{at}: default must be a number, got {default!r}")


def _check_cross(feat: Feature, by_name: dict, problems: list[str]) -> None:
    at = f"feature {feat.name!r}"
    inputs = feat.transform.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 2 or not all(isinstance(x, str) for x in inputs):
        problems.append(f"{at}: dot inputs must be a list of two feature names, got {inputs!r}")
        return
    if feat.dtype not in FLOAT_DTYPES or feat.shape or feat.ragged:
        problems.append(f"{at}: dot produces a float scalar; dtype must be float, shape [], dense")
    widths = []
    for dep in inputs:
        src = by_name.get(dep)
        if src is None:
            problems.append(f"{at}: dot input {dep!r} is not in the schema")
        elif src.source == "cross" or src.ragged or not src.shape or src.dtype not in FLOAT_DTYPES:
            problems.append(f"{at}: dot input {dep!r} must be a dense float vector "
                            "from user or candidate")
        else:
            widths.append(src.shape[0])
    if len(widths) == 2 and widths[0] != widths[1]:
        problems.append(f"{at}: dot inputs have different widths {widths[0]} and {widths[1]}")


__all__ = ["FORMAT", "Feature", "FeatureSchema", "RAGGED_SUFFIXES"]
