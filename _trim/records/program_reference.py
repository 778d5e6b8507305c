"""The reference preprocessing: numpy calls over decoded records (``TRIMMER_IMPL=reference``).

It is the definition of what every transform computes (rootproc/preprocess/preprocessor.py
lists them) and the implementation the compiled record program
(`_trim.records._program`, selected by default) is checked against bit for bit. A
build decodes the records (`RecordLayout.decode_many`), then applies each
transform with numpy, writing into the batch's column views; dense scalar
features of one kind are grouped so that hundreds take a handful of calls.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from _trim import Batch, Ragged

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
GROUP_ORDER = {"identity": 0, "log1p": 1, "clip": 2, "standardize": 3, "hash": 4}


def hash_ids(ids: np.ndarray, buckets, out: np.ndarray) -> None:
    """Bucket ids into ``out``; ``buckets`` may be an array broadcasting against ``ids``."""
    x = np.asarray(ids).astype(np.int64, copy=False).view(np.uint64)
    h = x ^ (x >> _S33)
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    np.remainder(h, np.asarray(buckets, dtype=np.uint64), out=h)
    out[...] = h.view(np.int64)


def elementwise(op: str, params: Mapping):
    """A ``fn(src, dst)`` applying one feature's transform elementwise."""
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


def dot(a: np.ndarray, b: np.ndarray, dst: np.ndarray) -> None:
    """Per row, the dot product of two float vectors (one may be a single
    per-request row): the products in float64, summed in element order, then
    rounded once to ``dst``'s dtype; a NaN result is numpy's ``nan``. The order is
    fixed so that the result is the same on every CPU and BLAS, and the
    compiled program's."""
    a, b = a.astype(np.float64), b.astype(np.float64)   # (rows, width) each
    acc = np.zeros(max(len(a), len(b)) if len(dst) else 0, dtype=np.float64)
    if len(acc):
        for k in range(a.shape[1]):
            acc += a[:, k] * b[:, k]
        acc[np.isnan(acc)] = np.nan   # which NaN a sum of NaNs keeps differs between CPUs
    dst[...] = acc


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
            # One call per feature, with scalar bounds: numpy's clip keeps a
            # -0.0 in range with constant bounds but not with array bounds,
            # and the per-feature path (and the kernel) have constant ones.
            for k in range(len(src)):
                np.clip(src[k], lo[k, 0], hi[k, 0], out=dst[k], casting="unsafe")
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


class NumpyPreprocessing:
    """The numpy build of one `Preprocessor` (its resolved features and store layouts)."""

    def __init__(self, pre):
        self.pre = pre
        grouped = self._group_scalars()
        self.steps = [(f, elementwise(f.transform.get("op", "identity"), f.transform))
                      for f in pre.features if f.source != "cross" and f.name not in grouped]
        self.cross = [f for f in pre.features if f.source == "cross"]
        self.step_fields = {src: sorted({f.raw_name for f, _ in self.steps
                                         if f.source == src and f.name not in pre.absent})
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
        pre = self.pre
        self.groups = []
        by_key: dict = {}
        for f in pre.features:
            if f.source == "cross" or f.ragged or f.shape or f.name in pre.absent:
                continue
            op = f.transform.get("op", "identity")
            layout = pre.record_layouts[f.source]
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
        grouped: set[str] = set()
        for (source, raw_dt, dst_dt), members in by_key.items():
            if len(members) < 2:
                continue
            members.sort(key=lambda m: GROUP_ORDER[m[1]])
            cols = np.array([m[2] for m in members], dtype=np.int64)
            columns = np.array([pre.layout.index[m[0].name] for m in members], dtype=np.int64)
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
            self.groups.append((source, raw_dt, dst_dt, cols, columns, segments))
            grouped.update(m[0].name for m in members)
        return grouped

    def _raw(self, feature, fields: Mapping, rows: int):
        absent = self.pre.absent
        if feature.name in absent:
            default = absent[feature.name].default_value()
            if feature.ragged:
                return Ragged(np.tile(default, rows),
                              np.arange(rows + 1, dtype=np.int64) * len(default))
            return np.broadcast_to(default, (rows,) + default.shape)
        return fields[feature.raw_name]

    def build(self, user_records, candidate_records) -> Batch:
        pre = self.pre
        if len(user_records) != 1:
            raise ValueError(f"a batch has one user record, got {len(user_records)}")
        n = len(candidate_records)
        rows = {"user": 1, "candidate": n}
        fixed, raw = {}, {}
        for source, records in (("user", user_records), ("candidate", candidate_records)):
            layout = pre.record_layouts[source]
            decoded = layout.decode_fixed(records)
            fixed[source] = decoded[0]
            raw[source] = layout.decode_many(records, self.step_fields[source], decoded)
        ragged_counts = {}
        sources = {}
        for f, _ in self.steps:
            src = self._raw(f, raw[f.source], rows[f.source])
            sources[f.name] = src
            if f.ragged:
                ragged_counts[f.name] = len(src.values)
        batch = Batch(pre.layout, n, ragged_counts)
        offsets = batch.table["data_offset"]
        for source, raw_dt, dst_dt, cols, columns, segments in self.groups:
            fx = fixed[source]
            size = pre.record_layouts[source].fixed_nbytes
            matrix = fx.view(np.uint8).reshape(len(fx), size).view(raw_dt)[:, cols].T
            out = np.empty(matrix.shape, dtype=dst_dt)
            for sl, fn in segments:
                fn(matrix[sl], out[sl])
            flat = batch.buffer.view(dst_dt)
            starts = offsets[columns].astype(np.int64) // dst_dt.itemsize
            flat[starts[:, None] + np.arange(rows[source])] = out
        for f, fn in self.steps:
            src = sources[f.name]
            dst = batch.column(f.name)
            if f.ragged:
                dst.offsets[:] = src.offsets
                fn(src.values, dst.values)
            else:
                fn(src, dst)
        for f in self.cross:
            a, b = (batch.column(x) for x in f.inputs)
            dot(a, b, batch.column(f.name))
        return batch


__all__ = ["NumpyPreprocessing", "dot", "elementwise", "hash_ids"]
