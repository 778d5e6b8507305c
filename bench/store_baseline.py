"""The bulk load as it was before issue 17, kept as the load benchmark's baseline.

Per field and chunk of 8,192 records: a numpy generator draws the values
(uniform floats mostly), then the records are encoded with one Python
bytes object per record and ragged field, and written one LMDB transaction
per chunk, each flushed to disk. Only `bench/test_store_bench.py` uses it.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator

import lmdb
import numpy as np

from _trim import Ragged
from _trim.records.layout import LEN_PREFIX, RawField, RecordLayout
from rootproc.featurestore.lmdb_store import encode_keys

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
        yield np.arange(start, start + n, dtype=np.int64), encode_many(layout, n, columns)


def encode_many(layout: RecordLayout, n: int, columns) -> list[bytes]:
    """The records, one at a time: each ragged field's list of each record
    padded and joined in Python."""
    fixed = np.zeros(n, dtype=layout.dtype)
    for f in layout.fields.values():
        if not f.ragged:
            fixed[f.name] = np.asarray(columns[f.name], dtype=f.dtype).reshape((n,) + f.shape)
    tails: list[list[bytes]] = [[] for _ in range(n)]
    for f in layout.ragged:
        values, offsets = columns[f.name].values, columns[f.name].offsets
        lists = [values[offsets[i]:offsets[i + 1]] for i in range(n)]
        fixed[LEN_PREFIX + f.name] = [len(v) for v in lists]
        for i, v in enumerate(lists):
            data = np.ascontiguousarray(v, dtype=f.dtype).tobytes()
            tails[i].append(data + bytes(-len(data) % 8))
    raw = fixed.tobytes()
    size = layout.fixed_nbytes
    return [raw[i * size:(i + 1) * size] + b"".join(tails[i]) for i in range(n)]


def load(path: str, schema, counts: dict, seed: int = 0) -> None:
    """``counts`` (source -> records) into a new LMDB directory, as before."""
    env = lmdb.open(path, max_dbs=4, map_size=1 << 36)
    for source, count in counts.items():
        layout = RecordLayout.from_schema(schema, source)
        db = env.open_db(source.encode())
        for ids, records in synth_chunks(schema, layout, count, seed):
            with env.begin(db=db, write=True) as txn:
                txn.cursor().putmulti(list(zip(encode_keys(ids), records)), dupdata=False)
    env.close()


__all__ = ["load"]
