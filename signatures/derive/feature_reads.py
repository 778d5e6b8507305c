"""What a model reads of each feature, derived from its graph (_trim/reads.py).

Every use of a feature's input tensor in the graph (TorchScript, inlined, or
``torch.export``'s ATen graph) is followed through the ops that keep a known
part of it: a slice of the one per-row dimension with constant bounds
(``x[:, a:b:s]``, ``x[..., a:b]``, ``narrow``), a constant position
(``x[:, 5]``), a constant index tensor (``x[:, [0, 3, 7]]``,
``index_select``: a literal, a lifted constant, or a buffer the graph only
ever uses as an index), a cast to bfloat16 or float16, the whole-row
slice ``x[:, ...]`` that indexing inserts, and what keeps the values
(``clone``, ``contiguous``, ``detach``, a move, a cast to the dtype the
value already has). Where a value leaves those ops
(passed to anything else, returned from a branch, viewed, reshaped, sliced
on the row dimension), that value's positions are read at its dtype. The
read is the union of those positions, narrowed only if every read is of the
same narrower cast. Reading shape metadata (``x.shape[0]``, ``x.dim()``)
reads no values. A read site whose key is one of several (a loop over a
constant list of names) reads each of them as the site's uses say, each at
its own width. Anything not provable (a bound that is not a constant, a key
not resolved to constants, ``features.get``, the features dict passed
whole) reads the feature whole. Ragged features are always read whole.

The leaf must then hand the model a tensor of the declared shape and dtype
whose read positions hold the read values (rounded through the cast, which
widening back to the declared dtype keeps exact) and whose other positions
hold anything: `garbled` builds such an input, and the model's output on it
is bit-identical to its output on the original.

This module holds what both graphs share; `script_reads` and `export_reads`
turn each kind of graph's ops into `Op`s.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from _trim.reads import NARROWER_FLOATS, FeatureRead

MAX_DEPTH = 64
NOT_CONSTANT = object()


@dataclass(frozen=True)
class _State:
    """A value derived from a feature: the feature positions its position
    dimension holds (None: all, in order), that dimension (None: selected
    away, or the feature has none), its rank, the narrowing cast it went
    through (None: none), and the feature's own dtype."""

    pos: tuple | None
    pdim: int | None
    rank: int
    dtype: str | None
    source: str


@dataclass(frozen=True)
class Op:
    """One use of a value, in terms both graph kinds share. ``kind``:
    neutral (reads no values), alias, cast (``dtype``), slice (``start``,
    ``end``, ``step``), narrow (``start``, ``length``), select (``index``),
    take (``indices``: constant, ``wrap``: negative ones count from the end)."""

    kind: str
    out: object = None
    dim: object = 0
    start: object = None
    end: object = None
    step: object = 1
    length: object = None
    index: object = None
    indices: tuple | None = None
    wrap: bool = True
    dtype: str | None = None


class _Reads:
    def __init__(self):
        self.positions: set[int] = set()
        self.all = False
        self.dtypes: set[str | None] = set()

    def read(self, st: _State) -> None:
        if st.pos is None:
            self.all = True
        else:
            self.positions.update(st.pos)
        self.dtypes.add(st.dtype)

    def result(self, feature) -> FeatureRead | None:
        ranges = None
        if not self.all and self.positions:
            ranges = FeatureRead.from_positions(self.positions).ranges
            if ranges == ((0, feature.shape[0]),):
                ranges = None
        dtype = next(iter(self.dtypes)) if len(self.dtypes) == 1 else None
        if dtype is not None and feature.dtype not in NARROWER_FLOATS[dtype]:
            dtype = None
        return FeatureRead(ranges, dtype) if ranges is not None or dtype is not None else None


def _step(op: Op, st: _State, width: int):
    """The state of ``op.out``, or None when ``op`` reads ``st``'s value."""
    if op.kind == "alias":
        return st
    if op.kind == "cast":
        if op.dtype == (st.dtype or st.source):   # to its own dtype: the same values
            return st
        narrows = st.dtype is None and st.source in NARROWER_FLOATS.get(op.dtype or "", ())
        return replace(st, dtype=op.dtype) if narrows else None
    dim = op.dim
    if not isinstance(dim, int) or not -st.rank <= dim < st.rank:
        return None
    dim %= st.rank
    if dim == 0 and op.kind == "slice":   # rows: only the whole-row slice keeps everything
        full = op.start in (None, 0) and op.step == 1 and (
            op.end is None or (isinstance(op.end, int) and op.end >= 2 ** 62))
        return st if full else None
    if st.pdim is None or dim != st.pdim:
        return None
    current = st.pos if st.pos is not None else tuple(range(width))
    n = len(current)
    pdim: int | None = st.pdim
    rank = st.rank
    if op.kind == "slice":
        start, end, step = op.start, op.end, op.step
        if not (start is None or isinstance(start, int)) or not (
                end is None or isinstance(end, int)) or not isinstance(step, int) or step < 1:
            return None
        picked: list[int] = list(range(n))[start:end:step]
    elif op.kind == "narrow":
        if not isinstance(op.start, int) or not isinstance(op.length, int):
            return None
        start = op.start + n if op.start < 0 else op.start
        if not (0 <= start and 0 <= op.length and start + op.length <= n):
            return None
        picked = list(range(start, start + op.length))
    elif op.kind == "select":
        if not isinstance(op.index, int) or not -n <= op.index < n:
            return None
        picked, pdim, rank = [op.index % n], None, rank - 1
    elif op.kind == "take" and op.indices is not None:
        if not all((-n if op.wrap else 0) <= i < n for i in op.indices):
            return None
        picked = [i % n for i in op.indices]
    else:
        return None
    return _State(tuple(current[i] for i in picked), pdim, rank, st.dtype, st.source)


def _walk(uses, value, st: _State, width: int, reads: _Reads, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        reads.read(st)
        return
    for op in uses(value):
        if op is not None and op.kind == "neutral":
            continue
        nxt = None if op is None else _step(op, st, width)
        if nxt is None:
            reads.read(st)
        else:
            _walk(uses, op.out, nxt, width, reads, depth + 1)


def _start(feature) -> _State:
    vector = len(feature.shape) == 1
    return _State(None, 1 if vector else None, 1 + len(feature.shape), None, feature.dtype)


def derive_read(feature, values, uses) -> FeatureRead | None:
    """What is read of ``feature`` through ``values`` (its input's value at
    each place the graph takes it), where ``uses(value)`` is an `Op` (None:
    any other use) for each use of a value in the graph."""
    if feature.ragged or not values:
        return None
    reads = _Reads()
    width = feature.shape[0] if len(feature.shape) == 1 else 0
    for value in values:
        _walk(uses, value, _start(feature), width, reads)
    return reads.result(feature)


# -- the property a read must have ----------------------------------------------

def garbled(inputs: dict, reads: dict[str, FeatureRead], fill: float = float("nan")) -> dict:
    """``inputs`` as a leaf may hand them to the model: each read feature's
    unread positions set to ``fill`` (-7777 in an integer feature) and its
    read ones rounded through its cast."""
    out = dict(inputs)
    for name, read in reads.items():
        x = inputs[name].clone()
        if read.dtype is not None:
            x = x.to(getattr(torch, read.dtype)).to(x.dtype)
        if read.ranges is not None:
            keep = torch.zeros(x.shape[-1], dtype=torch.bool)
            for start, stop in read.ranges:
                keep[start:stop] = True
            x[..., ~keep] = fill if x.is_floating_point() else -7777
        out[name] = x
    return out


__all__ = ["NOT_CONSTANT", "Op", "derive_read", "garbled"]
