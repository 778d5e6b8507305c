"""A preprocessor's features compiled into the steps of `_trim.records._program.RecordProgram`.

Everything numpy would decide per call is decided here, once per config, by
asking numpy: the dtype each transform computes in (``ufunc.resolve_dtypes``
with the same operands the reference path passes), the inner loop it runs
there (the first of ``ufunc.types`` for those dtypes, as numpy picks), each
parameter converted to that dtype, and, for a feature the store has no raw
field for, its transformed default (computed by the reference path itself).
The compiled program then only moves bytes and calls those loops.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy._core import umath

from _trim import DTYPE_CODES
from _trim.records.layout import SOURCES as RECORD_SOURCES
from _trim.records.layout import RecordLayout
from _trim.records.program_reference import elementwise

_CLIP: Any = umath.clip   # type: ignore[attr-defined]  # the ufunc; not in numpy's stubs
SOURCE_INDEX = {s: i for i, s in enumerate(RECORD_SOURCES)}
# The program's dtype codes: the wire's, and the integer types a store's raw
# field may have besides (features sharing an int8 and a uint8 field widen it
# to int16). _trim/records/_program_cast.h has the same table.
RAW_CODES = {**DTYPE_CODES, "int16": 9, "uint16": 10, "uint32": 11, "uint64": 12}


def _loop(ufunc, dtypes) -> tuple:
    """(ufunc, loop index, nargs) of the loop numpy runs on ``dtypes``."""
    signature = "".join(np.dtype(d).char for d in dtypes[:ufunc.nin]) + "->" + \
        "".join(np.dtype(d).char for d in dtypes[ufunc.nin:])
    for i, types in enumerate(ufunc.types):
        if types == signature or _same(types, signature):
            return ufunc, i, ufunc.nargs
    raise ValueError(f"numpy has no {ufunc.__name__} loop {signature}")


def _same(a: str, b: str) -> bool:
    """Loop signatures equal up to aliases (int64 is both 'l' and 'q' on Linux)."""
    if len(a) != len(b):
        return False
    return all(x == y or (x not in "->" and y not in "->" and np.dtype(x) == np.dtype(y))
               for x, y in zip(a, b))


def _bits(dtype: np.dtype, value, feature) -> bytes:
    try:
        return np.array(dtype.type(value), dtype=dtype).tobytes()
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"feature {feature.name!r}: parameter {value!r} does not fit the "
                         f"{dtype} its transform computes in: {exc}") from None


def _transform(feature, raw_dt: np.dtype) -> dict:
    """The op fields of a step reading ``raw_dt`` into ``feature``'s dtype."""
    op = feature.transform.get("op", "identity")
    dst = np.dtype(feature.dtype)
    t = feature.transform
    if op == "identity":
        return {"op": "none", "loop_code": DTYPE_CODES[dst.name]}
    if op == "hash":
        return {"op": "hash", "loop_code": DTYPE_CODES["int64"], "buckets": int(t["buckets"])}
    if op == "log1p":
        loop = np.log1p.resolve_dtypes((raw_dt, dst), casting="unsafe")
        return {"op": "unary", "loop_code": _code(loop[0], feature),
                "loop": _loop(np.log1p, loop[:2])}
    if op == "clip":
        loop = _CLIP.resolve_dtypes((raw_dt, type(t["lo"]), type(t["hi"]), dst), casting="unsafe")
        L = loop[0]
        return {"op": "clip", "loop_code": _code(L, feature), "loop": _loop(_CLIP, (L,) * 4),
                "p1": _bits(L, t["lo"], feature), "p2": _bits(L, t["hi"], feature)}
    if op == "standardize":
        loop = np.subtract.resolve_dtypes((raw_dt, type(t["mean"]), dst), casting="unsafe")
        L = loop[0]
        return {"op": "standardize", "loop_code": _code(L, feature),
                "loop": _loop(np.subtract, (L,) * 3), "p1": _bits(L, t["mean"], feature),
                "divide": _loop(np.true_divide, (dst,) * 3), "p2": _bits(dst, t["std"], feature)}
    raise ValueError(f"feature {feature.name!r}: unknown transform op {op!r}")


def _code(dtype: np.dtype, feature) -> int:
    name = np.dtype(dtype).name
    if name not in RAW_CODES:
        raise ValueError(f"feature {feature.name!r}: reads or computes in {name}, "
                         "which the record program does not carry")
    return RAW_CODES[name]


def _const(feature, default: np.ndarray) -> bytes:
    """One row (or the list) of an absent feature: its default through its
    transform, as the reference path computes it."""
    fn = elementwise(feature.transform.get("op", "identity"), feature.transform)
    if feature.ragged:
        out = np.empty(len(default), dtype=feature.dtype)
        fn(default, out)
    else:
        out = np.empty((1,) + tuple(feature.shape), dtype=feature.dtype)
        fn(np.broadcast_to(default, out.shape), out)
    return out.tobytes()


def sources(record_layouts: Mapping[str, RecordLayout]) -> list:
    """Each source's (fixed part size, [(count offset, element size)] per ragged field)."""
    out = []
    for s in RECORD_SOURCES:
        layout = record_layouts[s]
        placed = layout.dtype.fields or {}
        ragged = [(placed["__len__" + f.name][1], np.dtype(f.dtype).itemsize) for f in layout.ragged]
        out.append((layout.fixed_nbytes, ragged))
    return out


def steps(pre) -> list[dict]:
    """The program's steps for a `Preprocessor`: fixed-part reads in record
    order (each source's records are read through once, front to back),
    then ragged fields and defaults, then the cross features, which read
    columns the others wrote."""
    dense, rest, cross = [], [], []
    for f in pre.features:
        column = pre.layout.index[f.name]
        if f.source == "cross":
            a, b = f.inputs
            cross.append({"kind": "dot", "column": column,
                          "inputs": (pre.layout.index[a], pre.layout.index[b])})
            continue
        source = SOURCE_INDEX[f.source]
        if f.name in pre.absent:
            rest.append({"kind": "const_ragged" if f.ragged else "const", "column": column,
                         "source": source,
                         "const": _const(f, pre.absent[f.name].default_value())})
            continue
        layout = pre.record_layouts[f.source]
        raw = layout.fields[f.raw_name]
        raw_dt = np.dtype(raw.dtype)
        step = {"column": column, "source": source, "raw_code": _code(raw_dt, f),
                **_transform(f, raw_dt)}
        if f.ragged:
            step.update(kind="ragged", ragged=[x.name for x in layout.ragged].index(raw.name))
            rest.append(step)
        else:
            step.update(kind="dense", raw_offset=layout.dtype.fields[raw.name][1])
            dense.append(step)
    dense.sort(key=lambda s: (s["source"], s["raw_offset"]))
    return dense + rest + cross


__all__ = ["sources", "steps"]
