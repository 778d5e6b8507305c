"""Build a request's batch from raw records: compute only what is used.

A `Preprocessor` is compiled once per (schema, feature set): it resolves
every feature to a small step (read which raw field, apply which transform,
write which column) so that building a batch is one pass of numpy calls that
write straight into the batch's column views, no intermediate arrays per
feature beyond what a transform itself needs.

Transforms (the schema's ``transform.op``):

- ``identity``: the raw value, cast to the feature's dtype.
- ``log1p``: ``log(1 + x)`` (NaN below -1, as numpy).
- ``clip``: ``min(max(x, lo), hi)``.
- ``standardize``: ``(x - mean) / std``, in the feature's dtype.
- ``hash``: an id (scalar, or each element of a ragged list) to a bucket in
  ``[0, buckets)``: murmur3's 64-bit finaliser of the id's two's-complement
  bits, modulo ``buckets``. Deterministic across processes and hosts.
- ``dot`` (cross): per candidate, the dot product of two float vectors (a
  per-request user vector is reused for every candidate).

A record without a raw field, or a store written before a field existed,
gives the feature's ``default`` (0 / an empty list when none is set).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from _trim import Batch, Ragged

from .records import RawField, RecordLayout, raw_dtype

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def hash_ids(ids: np.ndarray, buckets: int, out: np.ndarray) -> None:
    """Bucket ids into ``out`` (see the module docstring for the function)."""
    x = np.asarray(ids).astype(np.int64, copy=False).view(np.uint64)
    h = x ^ (x >> _S33)
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    np.remainder(h, np.uint64(buckets), out=h)
    out[...] = h.view(np.int64)


def _elementwise(op: str, params: Mapping):
    """A ``fn(src, dst)`` applying a float transform elementwise."""
    if op == "identity":
        def fn(src, dst):
            dst[...] = src
    elif op == "log1p":
        def fn(src, dst):
            np.log1p(src, out=dst, casting="unsafe")
    elif op == "clip":
        lo, hi = params["lo"], params["hi"]

        def fn(src, dst):
            np.clip(src, lo, hi, out=dst, casting="unsafe")
    elif op == "standardize":
        mean, std = params["mean"], params["std"]

        def fn(src, dst):
            np.subtract(src, mean, out=dst, casting="unsafe")
            dst /= dst.dtype.type(std)
    elif op == "hash":
        buckets = int(params["buckets"])

        def fn(src, dst):
            hash_ids(src, buckets, dst)
    else:
        raise ValueError(f"unknown transform op {op!r}")
    return fn


def _dot(a: np.ndarray, b: np.ndarray, dst: np.ndarray) -> None:
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    if len(a) == len(b):
        value = np.einsum("ij,ij->i", a, b)
    elif len(a) == 1:
        value = b @ a[0]
    else:
        value = a @ b[0]
    dst[...] = value


class Preprocessor:
    """Computes the features ``names`` (plus the cross inputs they need).

    ``record_layouts`` are the feature store's layouts (source ->
    `RecordLayout`); a raw field they lack is filled from the feature's
    default. A field whose shape differs from the schema's is an error here,
    at startup, not per request.
    """

    def __init__(self, schema, names: Iterable[str] | None,
                 record_layouts: Mapping[str, RecordLayout]):
        self.schema = schema
        self.names = schema.names if names is None else schema.closure(names)
        self.layout = schema.layout(self.names)
        self.features = [schema[n] for n in self.names]
        self.record_layouts = record_layouts
        self.raw_fields: dict[str, list[str]] = {"user": [], "candidate": []}
        self.absent: dict[str, RawField] = {}
        problems = []
        for f in self.features:
            if f.source == "cross":
                continue
            raw = f.raw_name
            want = RawField(raw, raw_dtype(f), f.shape[0] if f.shape else 1, bool(f.shape),
                            f.ragged, f.default)
            have = record_layouts[f.source].fields.get(raw)
            if have is None:
                self.absent[f.name] = want
            elif (have.width, have.vector, have.ragged) != (want.width, want.vector, want.ragged):
                problems.append(f"feature {f.name!r} reads {f.source}.{raw} as "
                                f"{want.shape}{' ragged' if want.ragged else ''}, the store holds "
                                f"{have.shape}{' ragged' if have.ragged else ''}")
            elif raw not in self.raw_fields[f.source]:
                self.raw_fields[f.source].append(raw)
        if problems:
            raise ValueError("feature store does not match the schema:\n  - " + "\n  - ".join(problems))
        self._steps = [(f, _elementwise(f.transform.get("op", "identity"), f.transform))
                       for f in self.features if f.source != "cross"]
        self._cross = [f for f in self.features if f.source == "cross"]

    @property
    def absent_features(self) -> list[str]:
        """Features the store has no raw field for (always their default)."""
        return list(self.absent)

    def decode(self, source: str, records) -> dict:
        """Raw fields this preprocessor reads, from a list of records."""
        return self.record_layouts[source].decode_many(records, self.raw_fields[source])

    def _raw(self, feature, fields: Mapping, rows: int):
        if feature.name in self.absent:
            default = self.absent[feature.name].default_value()
            if feature.ragged:
                return Ragged(np.tile(default, rows),
                              np.arange(rows + 1, dtype=np.int64) * len(default))
            return np.broadcast_to(default, (rows,) + default.shape)
        return fields[feature.raw_name]

    def build(self, user_records, candidate_records) -> Batch:
        """The batch for one user record and a list of candidate records."""
        n = len(candidate_records)
        raw = {"user": self.decode("user", user_records),
               "candidate": self.decode("candidate", candidate_records)}
        rows = {"user": 1, "candidate": n}
        ragged_counts = {}
        sources = {}
        for f, _ in self._steps:
            src = self._raw(f, raw[f.source], rows[f.source])
            sources[f.name] = src
            if f.ragged:
                ragged_counts[f.name] = len(src.values)
        batch = Batch(self.layout, n, ragged_counts)
        for f, fn in self._steps:
            src = sources[f.name]
            dst = batch.column(f.name)
            if f.ragged:
                dst.offsets[:] = src.offsets
                fn(src.values, dst.values)
            else:
                fn(src, dst)
        for f in self._cross:
            a, b = (batch.column(x) for x in f.inputs)
            _dot(a, b, batch.column(f.name))
        return batch


__all__ = ["Preprocessor", "hash_ids"]
