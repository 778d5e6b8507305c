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

from collections.abc import Iterable, Mapping

import numpy as np

from _trim import Batch, Ragged

from .records import RawField, RecordLayout, raw_dtype

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def hash_ids(ids: np.ndarray, buckets, out: np.ndarray) -> None:
    """Bucket ids into ``out`` (see the module docstring for the function);
    ``buckets`` may be an array broadcasting against ``ids``."""
    x = np.asarray(ids).astype(np.int64, copy=False).view(np.uint64)
    h = x ^ (x >> _S33)
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    np.remainder(h, np.asarray(buckets, dtype=np.uint64), out=h)
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
        grouped = self._group_scalars()
        self._steps = [(f, _elementwise(f.transform.get("op", "identity"), f.transform))
                       for f in self.features if f.source != "cross" and f.name not in grouped]
        self._cross = [f for f in self.features if f.source == "cross"]
        self._step_fields = {src: sorted({f.raw_name for f, _ in self._steps
                                          if f.source == src and f.name not in self.absent})
                             for src in ("user", "candidate")}

    def _group_scalars(self) -> set:
        """Batch dense scalar features by (source, raw dtype, dtype), so that
        hundreds of them take a handful of numpy calls instead of hundreds.

        A group gathers its raw fields out of the records' fixed parts as one
        (rows, K) matrix, applies each op to a contiguous run of features
        with per-feature parameters as column vectors, and scatters the
        (K, rows) result into the batch's columns with one indexed store.
        The arithmetic matches the per-feature path exactly: parameters are
        cast to the dtype a scalar parameter would be computed in.
        """
        self._groups = []
        by_key: dict = {}
        for f in self.features:
            if f.source == "cross" or f.ragged or f.shape or f.name in self.absent:
                continue
            op = f.transform.get("op", "identity")
            layout = self.record_layouts[f.source]
            raw = layout.fields[f.raw_name]
            raw_dt, dst_dt = np.dtype(raw.dtype), np.dtype(f.dtype)
            offset = layout.dtype.fields[f.raw_name][1]
            if offset % raw_dt.itemsize or raw.vector or raw.ragged:
                continue
            if op == "hash" and raw_dt.kind not in "iu":
                continue
            if op in ("log1p", "clip", "standardize") and (raw_dt.kind != "f" or dst_dt.kind != "f"):
                continue
            by_key.setdefault((f.source, raw_dt, dst_dt), []).append((f, op, offset // raw_dt.itemsize))
        order = {"identity": 0, "log1p": 1, "clip": 2, "standardize": 3, "hash": 4}
        grouped: set[str] = set()
        for (source, raw_dt, dst_dt), members in by_key.items():
            if len(members) < 2:
                continue
            members.sort(key=lambda m: order[m[1]])
            cols = np.array([m[2] for m in members], dtype=np.int64)
            columns = np.array([self.layout.index[m[0].name] for m in members], dtype=np.int64)
            segments = []
            start = 0
            while start < len(members):
                op = members[start][1]
                stop = start
                while stop < len(members) and members[stop][1] == op:
                    stop += 1
                feats = [m[0] for m in members[start:stop]]
                segments.append((slice(start, stop), _group_op(op, feats, raw_dt, dst_dt)))
                start = stop
            self._groups.append((source, raw_dt, dst_dt, cols, columns, segments))
            grouped.update(m[0].name for m in members)
        return grouped

    @property
    def absent_features(self) -> list[str]:
        """Features the store has no raw field for (always their default)."""
        return list(self.absent)

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
        rows = {"user": 1, "candidate": n}
        fixed, raw = {}, {}
        for source, records in (("user", user_records), ("candidate", candidate_records)):
            layout = self.record_layouts[source]
            decoded = layout.decode_fixed(records)
            fixed[source] = decoded[0]
            raw[source] = layout.decode_many(records, self._step_fields[source], decoded)
        ragged_counts = {}
        sources = {}
        for f, _ in self._steps:
            src = self._raw(f, raw[f.source], rows[f.source])
            sources[f.name] = src
            if f.ragged:
                ragged_counts[f.name] = len(src.values)
        batch = Batch(self.layout, n, ragged_counts)
        offsets = batch.table["data_offset"]
        for source, raw_dt, dst_dt, cols, columns, segments in self._groups:
            fx = fixed[source]
            matrix = fx.view(np.uint8).reshape(len(fx), -1).view(raw_dt)[:, cols].T
            out = np.empty(matrix.shape, dtype=dst_dt)
            for sl, fn in segments:
                fn(matrix[sl], out[sl])
            flat = batch.buffer.view(dst_dt)
            starts = offsets[columns].astype(np.int64) // dst_dt.itemsize
            flat[starts[:, None] + np.arange(rows[source])] = out
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


def _group_op(op: str, feats, raw_dt: np.dtype, dst_dt: np.dtype):
    """``fn(src (K, rows), dst (K, rows))`` for features sharing ``op``; each
    parameter becomes a (K, 1) column in the dtype numpy would compute a
    Python-scalar parameter in (the raw dtype; the feature's for ``std``)."""
    def col(key, dtype):
        return np.array([f.transform[key] for f in feats], dtype=dtype)[:, None]

    if op == "identity":
        def fn(src, dst):
            np.copyto(dst, src, casting="unsafe")
    elif op == "log1p":
        def fn(src, dst):
            np.log1p(src, out=dst, casting="unsafe")
    elif op == "clip":
        lo, hi = col("lo", raw_dt), col("hi", raw_dt)

        def fn(src, dst):
            np.clip(src, lo, hi, out=dst, casting="unsafe")
    elif op == "standardize":
        mean, std = col("mean", raw_dt), col("std", dst_dt)

        def fn(src, dst):
            np.subtract(src, mean, out=dst, casting="unsafe")
            dst /= std
    elif op == "hash":
        buckets = col("buckets", np.uint64)

        def fn(src, dst):
            hash_ids(src, buckets, dst)
    else:
        raise ValueError(f"unknown transform op {op!r}")
    return fn


__all__ = ["Preprocessor", "hash_ids"]
