"""Synthetic feature-store data for a schema, deterministic from a seed, shaped like production's.

Trimming and compression results depend on the values, so they are drawn
the way production features look rather than as random floats:

    counters (log1p)       50-95 % zeros, the rest whole numbers with a heavy tail
    clipped (clip lo..hi)  5-30 % missing, steps of 1/100 of the range, ~10 % beyond
                           ``hi`` and a few below ``lo``
    standardized           2-10 % missing, symmetric around the mean, steps of std/100
    other float scalars    half are rates (30-80 % zeros, steps of 1/1000, long tail),
                           half dense scores (steps of 1/256)
    small vectors (< 32)   half histogram-like (20-60 % zero elements, steps of 1/64),
                           half small dense embeddings (steps of 1/1024 of their range)
    embeddings (>= 32)     dense, at float16 precision (as often stored)
    ids (hash) and ints    low-cardinality: a few to a few thousand distinct ids per
                           field, Zipf-like popularity; ints are sparse counts
    id lists (ragged)      20-50 % empty, lengths heavy-tailed (cap 200), Zipf-like ids
    cold entities          8 % of ids are new: every field its default, every list empty

A missing value is the field's default (0 unless the schema names one).

Every value is a pure function of (seed, source, field, element, entity id):
a counter-based hash (murmur3's finalizer) of them is mapped through the
field's profile. So the same seed gives the same store whatever the chunking,
and adding a field changes no other field's values. This module is the
policy: which profile each field gets (`Profile`) and its parameters; the
record writer (`_trim.records.record_writer`) draws the float32 fields and
id lists straight into a chunk's records, with numpy here giving it the
rarer fields. Its numpy reference (_trim/records/writer_reference.py, with
``TRIMMER_IMPL=reference``) defines the draws, and the compiled writer
(_trim/records/_writer.pyx, the default) gives the same bytes, each written once.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

from _trim.records import record_writer
from _trim.records.layout import LEN_PREFIX, PackedRecords, RawField, RecordLayout
from _trim.records.writer_reference import (
    draw_ids,
    draw_values,
    element_uniforms,
    list_offsets,
    mix,
    uniform,
)

CHUNK_NBYTES = 1 << 23    # records made per chunk (one store write each): under
                          # malloc's mmap threshold (_trim/memory.py), so their pages are reused
THREADS = min(4, os.cpu_count() or 1)
COLD = 0.08
EMBEDDING_WIDTH = 32
MAX_LIST = 200


def _key(*parts: int) -> np.uint32:
    h = np.array([0x9E3779B9], dtype=np.uint32)
    for p in parts:
        h ^= np.uint32(p & 0xFFFFFFFF)
        mix(h)
    return h[0]


def row_keys(seed: int, source: str, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64).view(np.uint64)
    h = (ids & np.uint64(0xFFFFFFFF)).astype(np.uint32) ^ _key(seed, zlib.crc32(source.encode()))
    mix(h)
    h ^= (ids >> np.uint64(32)).astype(np.uint32)
    return mix(h)


class Profile:
    """How a field's uniforms become values: with probability ``p0`` the
    default, else ``loc + scale * core(w)`` rounded to steps of ``q``, where
    core is heavy-tailed (w / (1 - w)) or, with ``sym``, uniform in [-1, 1)."""

    def __init__(self, f: RawField, transform: dict, seed: int, source: str):
        rng = np.random.default_rng([seed, zlib.crc32(f"{source}:{f.name}".encode())])
        op = transform.get("op", "identity")
        self.key = _key(seed, zlib.crc32(f"{source}:{f.name}".encode()))
        self.default = f.default_value().astype(np.float64).ravel()
        self.sym, self.loc, self.vocab, self.hashed = False, 0.0, 0, op == "hash"
        self.dense = f.vector and f.width >= EMBEDDING_WIDTH and op == "identity"
        if op == "hash" or np.dtype(f.dtype).kind in "iub":
            self.p0, self.scale, self.q = rng.uniform(0.02, 0.3), rng.uniform(0.5, 4.0), 1.0
            self.vocab = int(rng.choice([8, 64, 1000, 5000])) if self.hashed or f.ragged else 0
        elif op == "log1p":
            self.p0, self.scale, self.q = rng.uniform(0.5, 0.95), rng.uniform(0.5, 20.0), 1.0
        elif op == "clip":
            lo, hi = float(transform["lo"]), float(transform["hi"])
            span = (hi - lo) or 1.0
            self.p0, self.sym, self.q = rng.uniform(0.05, 0.3), True, span / 100
            self.loc, self.scale = lo + 0.55 * span, 0.57 * span   # lo - 2 % .. hi + 12 %
        elif op == "standardize":
            self.p0, self.sym, self.q = rng.uniform(0.02, 0.1), True, float(transform["std"]) / 100
            self.loc, self.scale = float(transform["mean"]), 1.7 * float(transform["std"])
        elif self.dense:
            self.p0, self.sym, self.scale, self.q = 0.0, True, rng.uniform(0.05, 0.3), 1.0
        elif f.vector and rng.random() < 0.5:   # a histogram, or shares of something
            self.p0, self.scale, self.q = rng.uniform(0.2, 0.6), rng.uniform(0.5, 5.0), 1 / 64
        elif f.vector:                          # a small dense embedding
            self.p0, self.sym, self.scale = 0.0, True, rng.uniform(0.1, 1.0)
            self.q = self.scale / 1024
        elif rng.random() < 0.5:
            self.p0, self.scale, self.q = rng.uniform(0.3, 0.8), rng.uniform(0.001, 0.05), 1e-3
        else:
            self.p0, self.sym, self.q = rng.uniform(0.0, 0.1), True, 1 / 256
            self.loc, self.scale = rng.uniform(-1, 1), rng.uniform(0.5, 2.0)

    def columns(self, width: int) -> np.ndarray:
        """One hash key per element of the field."""
        h = np.arange(width, dtype=np.uint32) * np.uint32(0x27D4EB2F) + self.key
        return mix(h)


def _params(profiles: list[Profile], widths: list[int], dtype=np.float32,
            missing: bool = True) -> dict:
    """Per-column arrays of the profiles' parameters, each field's over its width."""
    rep = lambda attr: np.repeat([float(getattr(p, attr)) for p in profiles], widths)  # noqa: E731
    p0 = rep("p0") if missing else np.zeros(sum(widths))
    q, sym, scale, loc = rep("q"), rep("sym"), rep("scale"), rep("loc")
    # sym: loc + scale * (2w - 1); else loc + scale * heavy (see writer_reference.draw_values), in steps of q.
    a = sym * 2 * scale / (1 - p0) / q
    out = {"p0": p0, "a": a, "b": (1 - sym) * scale / q, "c": (loc - sym * scale) / q - a * p0,
           "scale_q2": 2 * scale / q, "q": q,
           "default": np.concatenate([np.resize(p.default, w) for p, w in zip(profiles, widths)])}
    return {k: v.astype(dtype) for k, v in out.items()}


def _empty_fraction(p: Profile) -> float:
    """The share of a list field's rows with an empty list: 20-50 %, per field."""
    return 0.2 + 0.3 * float((p.key >> 8) / (1 << 24))


def _length_key(p: Profile) -> int:
    """The column key of a list field's lengths."""
    return int((p.columns(1) ^ np.uint32(0x5EED))[0])


class Synthesizer:
    """Records for one source of a layout: `chunks` yields (ids, records)."""

    def __init__(self, schema, layout: RecordLayout, seed: int, impl: str | None = None):
        ops: dict[str, dict] = {}
        for feat in schema.features.values():
            if feat.source == layout.source:
                ops.setdefault(feat.raw_name, feat.transform)
        self.layout, self.seed, self.source = layout, seed, layout.source
        self.profiles = {f.name: Profile(f, ops.get(f.name, {}), seed, self.source)
                         for f in layout.fields.values()}
        # Float32 fields next to each other in the record, of one kind (dense
        # or not), are computed together: a run of columns of the fixed part.
        self.runs: list[tuple[int, np.ndarray, dict, bool]] = []
        self.others: list[RawField] = []
        placed = layout.dtype.fields or {}
        group: list[RawField] = []
        for f in sorted((f for f in layout.fields.values() if not f.ragged),
                        key=lambda f: placed[f.name][1]):
            if np.dtype(f.dtype) != np.float32:
                self.others.append(f)
                continue
            if group and (self.profiles[group[0].name].dense != self.profiles[f.name].dense
                          or placed[f.name][1] != placed[group[-1].name][1] + 4 * group[-1].width):
                self._add_run(group)
                group = []
            group.append(f)
        if group:
            self._add_run(group)
        self.writer = self._writer(record_writer(impl))

    def _add_run(self, fields: list[RawField]) -> None:
        profiles = [self.profiles[f.name] for f in fields]
        widths = [f.width for f in fields]
        cols = np.concatenate([p.columns(w) for p, w in zip(profiles, widths)])
        start = self.layout.dtype.fields[fields[0].name][1]
        self.runs.append((start, cols, _params(profiles, widths), profiles[0].dense))

    def chunks(self, count: int, start: int = 0) -> Iterator[tuple[np.ndarray, PackedRecords]]:
        rows = max(1, min(count, CHUNK_NBYTES // max(1, self.layout.fixed_nbytes)))
        with ThreadPoolExecutor(THREADS, thread_name_prefix="synth") as pool:
            for lo in range(start, start + count, rows):
                ids = np.arange(lo, min(lo + rows, start + count), dtype=np.int64)
                yield ids, self.records(ids, pool)

    def _drawn(self, f: RawField) -> bool:
        """Whether the record writer draws ``f``'s lists itself: id lists of
        an integer or bool dtype, the usual kind; others come from `_ragged`."""
        return bool(self.profiles[f.name].vocab) and np.dtype(f.dtype).kind in "iub"

    def _writer(self, impl: ModuleType):
        """``impl``'s `RecordWriter` for this layout: the float32 runs and id
        lists drawn in place, other fields given by numpy per chunk."""
        placed: Any = self.layout.dtype.fields
        lists: list[tuple] = []
        for f in self.layout.ragged:
            at, itemsize = placed[LEN_PREFIX + f.name][1], np.dtype(f.dtype).itemsize
            if not self._drawn(f):
                lists.append((f.name, at, itemsize))
                continue
            p = self.profiles[f.name]
            lists.append((f.name, at, itemsize, np.dtype(f.dtype) == np.bool_, _length_key(p),
                          _empty_fraction(p), p.columns(MAX_LIST), p.vocab, p.hashed, int(p.key)))
        columns = [(placed[f.name][1], np.dtype(f.dtype).itemsize * f.width) for f in self.others]
        return impl.RecordWriter(self.layout.fixed_nbytes, self.runs, lists, columns)

    def records(self, ids: np.ndarray, pool: ThreadPoolExecutor | None = None) -> PackedRecords:
        if pool is None:
            with ThreadPoolExecutor(THREADS, thread_name_prefix="synth") as own:
                return self.records(ids, own)
        keys = row_keys(self.seed, self.source, ids)
        cold = (mix(keys ^ np.uint32(0xC01D)) < np.uint32(COLD * 2**32)).astype(np.float32)
        chunk = self.writer.chunk(
            len(ids), keys, cold,
            [self._ragged(f, keys, cold) for f in self.layout.ragged if not self._drawn(f)],
            [self._other(f, keys, cold).reshape(len(ids), f.width) for f in self.others])
        # Both implementations let go of the GIL: slices of rows on every core.
        bounds = np.linspace(0, len(ids), THREADS + 1).astype(int).tolist()
        for done in [pool.submit(chunk.write, lo, hi)
                     for lo, hi in zip(bounds, bounds[1:]) if hi > lo]:
            done.result()
        return PackedRecords(*chunk.result())

    def _other(self, f: RawField, keys: np.ndarray, cold: np.ndarray) -> np.ndarray:
        """A dense field that is not float32, drawn per field."""
        p, dt = self.profiles[f.name], np.dtype(f.dtype)
        cols = p.columns(f.width)
        u = uniform(keys, cols, np.empty((len(keys), len(cols)), dtype=np.uint32),
                    np.empty((len(keys), len(cols)), dtype=np.float64))
        if p.vocab:
            drawn = draw_ids(u, p.vocab, p.hashed, int(p.key), np.int64)
            return np.where(cold[:, None] > 0, p.default[0], drawn).astype(dt)
        out = draw_values(u, _params([p], [len(cols)], np.float64), cold[:, None].astype(np.float64),
                     np.empty((2,) + u.shape))
        if dt == np.bool_:
            return out > 0
        if dt.kind in "iu":
            info = np.iinfo(dt)
            return np.clip(out, max(info.min, -(1 << 62)), min(info.max, 1 << 62)).astype(dt)
        return out.astype(dt)

    def _ragged(self, f: RawField, keys: np.ndarray, cold: np.ndarray) -> tuple:
        """(values, offsets) of a list field the writer is given: a length
        per row, then one hash per element, as the writer draws id lists."""
        p = self.profiles[f.name]
        offsets = list_offsets(keys, cold, _length_key(p), _empty_fraction(p), MAX_LIST)
        u = element_uniforms(keys, offsets, p.columns(MAX_LIST))
        dt = np.dtype(f.dtype)
        if p.vocab:
            return draw_ids(u[:, 0], p.vocab, p.hashed, int(p.key), dt), offsets
        params = _params([p], [1], np.float64, missing=False)   # an element is there or not
        return draw_values(u, params, np.zeros((len(u), 1)), np.empty((2,) + u.shape))[:, 0].astype(dt), \
            offsets


def synth_chunks(schema, layout: RecordLayout, count: int, seed: int
                 ) -> Iterator[tuple[np.ndarray, PackedRecords]]:
    """(ids, records) chunks for ids ``0 .. count-1`` of ``layout.source``."""
    return Synthesizer(schema, layout, seed).chunks(count)


__all__ = ["Synthesizer", "synth_chunks"]
