"""Synthetic feature-store data for a schema, deterministic from a seed.

Shaped like production data, because trimming and compression results depend
on it: counters are sparse (most are zero) with a long tail, embeddings are
dense unit-ish vectors, id lists vary in length from empty to long, ages and
scores spill past the clip range. Ids are ``0 .. N-1``.

Each (source, field, chunk) draws from its own generator seeded by
``(seed, source, crc32(field name), chunk index)``: the same seed (and
chunk size) gives the same store, and adding a field to the schema does not
change the other fields' values.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from _trim import Ragged

from .records import RawField, RecordLayout

CHUNK = 8192
SOURCE_IDS = {"user": 1, "candidate": 2}


def _ops_by_field(schema, source: str) -> dict[str, dict]:
    ops: dict[str, dict] = {}
    for f in schema.features.values():
        if f.source == source:
            ops.setdefault(f.raw_name, f.transform)
    return ops


def _scalar(rng, f: RawField, transform: dict, n: int) -> np.ndarray:
    op = transform.get("op", "identity")
    dt = np.dtype(f.dtype)
    shape = (n,) + f.shape
    if dt == np.bool_:
        return rng.random(shape) < 0.3
    if op == "hash":
        # Popular ids repeat: a Zipf draw over a large id space.
        return (rng.zipf(1.3, shape) * 7919 % (1 << 40)).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, 0), min(info.max, 1000), shape, endpoint=True).astype(dt)
    if op == "log1p":
        nonzero = rng.random(shape) < 0.3
        return np.where(nonzero, np.floor(rng.lognormal(1.5, 1.3, shape)), 0).astype(dt)
    if op == "clip":
        lo, hi = float(transform["lo"]), float(transform["hi"])
        span = (hi - lo) or 1.0
        return (lo - 0.05 * span + rng.exponential(span / 3, shape)).astype(dt)
    if op == "standardize":
        return rng.normal(transform["mean"], transform["std"], shape).astype(dt)
    if f.vector:
        return (rng.standard_normal(shape) / np.sqrt(f.width)).astype(dt)
    return rng.random(shape).astype(dt)


def _ragged(rng, f: RawField, transform: dict, n: int) -> Ragged:
    # A fifth of lists are empty, the rest geometric with a long tail, capped.
    lengths = np.where(rng.random(n) < 0.2, 0, np.minimum(rng.geometric(1 / 12, n), 200))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = RawField(f.name, f.dtype)
    values = _scalar(rng, flat, transform, int(offsets[-1]))
    return Ragged(values, offsets)


def synth_chunks(schema, layout: RecordLayout, count: int, seed: int,
                 chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """(ids, records) chunks for ``count`` entities of ``layout.source``."""
    ops = _ops_by_field(schema, layout.source)
    for c, start in enumerate(range(0, count, chunk)):
        n = min(chunk, count - start)
        columns = {}
        for f in layout.fields.values():
            rng = np.random.default_rng([seed, SOURCE_IDS[layout.source],
                                         zlib.crc32(f.name.encode()), c])
            transform = ops.get(f.name, {"op": "identity"})
            columns[f.name] = (_ragged if f.ragged else _scalar)(rng, f, transform, n)
        yield np.arange(start, start + n, dtype=np.int64), layout.encode_many(n, columns)


__all__ = ["synth_chunks"]
