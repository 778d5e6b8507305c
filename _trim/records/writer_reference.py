"""The reference record writer: numpy over a chunk's records (``TRIMMER_IMPL=reference``).

It is the definition of what the compiled writer (`_trim.records._writer`,
selected by default) writes, and has its interface: a `RecordWriter` knows
where each part of one layout's records goes and what fills it (float32
runs of synthetic values, drawn id lists, given columns and lists), its
`Chunk` is written by rows and then joined into records, and `pack` lays out
records from their fixed parts and ragged fields. Both give the same records,
bit for bit (tests/trim/test_load.py).

The synthetic values are a pure function of a row's key and a column's key:
murmur3's finalizer (`mix`) spreads them, `uniform` maps a pair to U[0, 1),
and a profile's parameters (rootproc/featurestore/synth.py chooses them per
field) map that to a value (`draw_values`, `dense_values`) or to an id (`draw_ids`).
"""
from __future__ import annotations

import numpy as np

BLOCK_NBYTES = 1 << 19     # rows of a run computed at a time: sized for the CPU's cache
LIST_COUNT_MAX = 0xFFFFFFFF   # a ragged length is a uint32 in the fixed part
_M1, _M2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)
_U24 = np.float32(1 / (1 << 24))


def mix(h: np.ndarray, tmp: np.ndarray | None = None, rounds: int = 3) -> np.ndarray:
    """murmur3's 32-bit finalizer, in place on a uint32 array; ``rounds=2``
    stops before its last xor-shift (enough for a value's bits: `uniform`)."""
    tmp = np.empty_like(h) if tmp is None else tmp
    for shift, mult in ((16, _M1), (13, _M2), (16, None))[:rounds]:
        np.right_shift(h, shift, out=tmp)
        h ^= tmp
        if mult is not None:
            h *= mult
    return h


def uniform(rows: np.ndarray, cols: np.ndarray, h: np.ndarray, out: np.ndarray) -> np.ndarray:
    """U[0, 1) for every (row key, column key) pair, into ``out`` (float32 or float64).

    Both keys are already mixed, so one multiply spreads their xor into the
    top 24 bits kept (each value exact in float32)."""
    np.bitwise_xor(rows[:, None], cols[None, :], out=h)
    h *= _M1
    h >>= 8
    return np.multiply(h, _U24, out=out)


def draw_values(u: np.ndarray, p: dict, cold: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """A profile's mapping, in place on ``u`` (its rows' ``cold`` is 0 or 1);
    ``p`` holds per-column arrays (or scalars) p0, a, b, c, q and default.

    With w = (u - p0) / (1 - p0), the heavy core w / (1 - w) is (u - p0) / (1 - u),
    and ``a * u + b * heavy + c`` (in steps of q) is either profile's value."""
    missing = np.less(u, p["p0"] + cold, out=np.empty(u.shape, dtype=np.bool_))
    heavy = np.subtract(u, p["p0"], out=tmp[1])
    heavy /= np.subtract(1.001, u, out=tmp[0])   # the tail stops at ~1000 x scale
    heavy *= p["b"]
    u *= p["a"]
    u += heavy
    u += p["c"]
    np.rint(u, out=u)
    u *= p["q"]
    np.copyto(u, p["default"], where=missing)
    return u


def dense_values(u: np.ndarray, p: dict, cold: np.ndarray) -> np.ndarray:
    """Embeddings: uniform in [-scale, scale) at float16 precision (a float32
    with the low 13 bits of its mantissa cleared); cold rows all zeros."""
    u -= 0.5
    u *= p["scale_q2"]
    u.view(np.uint32)[...] &= np.uint32(0xFFFFE000)
    u *= 1 - cold
    return u


def draw_ids(u: np.ndarray, vocab: int, hashed: bool, key: int, dtype) -> np.ndarray:
    """Zipf-like ranks over a vocabulary of ``vocab``; hashed fields' spread
    over 40 bits (ids as a feature log has them), others small ints."""
    rank = np.minimum(vocab - 1, np.floor(u / (1.00001 - u))).astype(np.uint64)
    if hashed:
        rank = (rank * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)) & np.uint64((1 << 40) - 1)
    return rank.astype(dtype)


def list_offsets(keys: np.ndarray, cold: np.ndarray, length_key: int, empty: float,
                 max_len: int) -> np.ndarray:
    """Offsets (n + 1) of a list field's rows: a share ``empty`` of them
    empty, the others' lengths heavy-tailed up to ``max_len``; cold rows empty."""
    u = uniform(keys, np.array([length_key], dtype=np.uint32), np.empty((len(keys), 1), np.uint32),
                np.empty((len(keys), 1), np.float64))[:, 0]
    w = np.maximum(u - empty, 0) / (1 - empty)
    lengths = np.where(cold > 0, 0, np.minimum(max_len, np.ceil(6 * w / (1.00001 - w))))
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum(lengths.astype(np.int64), out=offsets[1:])
    return offsets


def element_uniforms(keys: np.ndarray, offsets: np.ndarray, element_keys: np.ndarray) -> np.ndarray:
    """U[0, 1) (float64, one column) for each element of each row's list:
    its row's key plus the key of its position in the list."""
    rows = np.repeat(np.arange(len(keys)), np.diff(offsets))
    position = np.arange(int(offsets[-1]), dtype=np.int64) - offsets[:-1][rows]
    h = keys[rows] + element_keys[position]
    return uniform(h, np.zeros(1, np.uint32), np.empty((len(h), 1), np.uint32),
                   np.empty((len(h), 1), np.float64))


class RecordWriter:
    """Where each part of one layout's records comes from, as the compiled
    `RecordWriter` takes it (_trim/records/_writer.pyx): ``size``, the fixed
    part's bytes; ``runs``, ``(offset, column keys, params, dense)`` per run
    of float32 columns; ``lists``, per ragged field in layout order, ``(name,
    count offset, item size)`` for given values or ``(name, count offset,
    item size, as bool, length key, empty fraction, element keys, vocabulary,
    hashed, field key)`` for ids drawn here; ``columns``, ``(offset, nbytes)``
    of given fixed-part columns."""

    def __init__(self, size: int, runs, lists, columns):
        if size < 0 or size % 8:
            raise ValueError(f"RecordWriter: a fixed part of {size} bytes (a multiple of 8)")
        self.size = size
        self.runs = [(at, np.ascontiguousarray(cols, dtype=np.uint32), params, dense)
                     for at, cols, params, dense in runs]
        self.lists = [tuple(spec) for spec in lists]
        self.columns = list(columns)

    def chunk(self, n: int, keys, cold, given_lists, given_columns) -> Chunk:
        """A chunk of ``n`` records: ``keys`` (uint32) and ``cold`` (float32, 1
        for a cold row) for runs and drawn lists; ``given_lists``, (values,
        offsets (n + 1)) per given list in order; ``given_columns``, per
        column an (n, ...) array of its bytes."""
        return Chunk(self, n, keys, cold, given_lists, given_columns)


class Chunk:
    """Records of one chunk: `write` rows ``lo:hi`` of the float32 runs (any
    thread, any order), `result` once every row is written."""

    def __init__(self, w: RecordWriter, n: int, keys, cold, given_lists, given_columns):
        if n < 0:
            raise ValueError("a negative number of records")
        if len(given_columns) != len(w.columns):
            raise ValueError(f"{len(given_columns)} columns given for {len(w.columns)}")
        self.w, self.n, self.keys, self.cold = w, n, keys, cold
        self.fixed = np.zeros((n, w.size), dtype=np.uint8)   # zeros: what no one writes
        for (at, nbytes), col in zip(w.columns, given_columns):
            self.fixed[:, at:at + nbytes] = np.ascontiguousarray(col).view(np.uint8).reshape(n, -1)
        given = iter(given_lists)
        self.lists = []
        for spec in w.lists:
            name, at, itemsize = spec[:3]
            if len(spec) == 3:
                values, offsets = next(given)
                self.lists.append((name, np.ascontiguousarray(values), offsets, itemsize, at))
                continue
            to_bool, length_key, empty, element_keys, vocab, hashed, field_key = spec[3:]
            element_keys = np.ascontiguousarray(element_keys, dtype=np.uint32)
            offsets = list_offsets(keys, cold, length_key, empty, len(element_keys))
            u = element_uniforms(keys, offsets, element_keys)[:, 0]
            dtype = np.bool_ if to_bool else np.dtype(f"<u{itemsize}")
            self.lists.append((name, draw_ids(u, vocab, hashed, field_key, dtype), offsets, itemsize, at))

    def write(self, lo: int, hi: int) -> None:
        """Rows ``lo:hi`` of every float32 run, a cache-sized block at a time."""
        if not 0 <= lo <= hi <= self.n:
            raise ValueError(f"rows {lo}:{hi} of {self.n}")
        keys, cold = self.keys, self.cold
        for at, cols, params, dense in self.w.runs:
            out = self.fixed[:, at:at + 4 * len(cols)].view(np.float32)
            block = max(1, BLOCK_NBYTES // (4 * len(cols)))
            h = np.empty((block, len(cols)), dtype=np.uint32)
            tmp = np.empty((2, block, len(cols)), dtype=np.float32)
            for r in range(lo, hi, block):
                m = min(block, hi - r)
                u = uniform(keys[r:r + m], cols, h[:m], out[r:r + m])
                if dense:
                    dense_values(u, params, cold[r:r + m, None])
                else:
                    draw_values(u, params, cold[r:r + m, None], tmp[:, :m])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(buffer uint8, record offsets int64 (n + 1))."""
        if not self.lists:   # the fixed parts are the records (of 0 bytes, maybe)
            return self.fixed.reshape(-1), np.arange(self.n + 1, dtype=np.int64) * self.w.size
        return pack(self.fixed, self.w.size, self.lists)


def pack(fixed, size: int, ragged) -> tuple[np.ndarray, np.ndarray]:
    """Records from their fixed parts and ragged fields, as the compiled
    `pack` takes them: ``fixed`` is n x ``size`` bytes (its ragged counts are
    written here, in the records); ``ragged`` lists, per ragged field,
    ``(name, values, offsets int64, element size, count's offset in the
    fixed part)``. The values are placed with one scatter per field.
    Returns (buffer uint8, record offsets int64 (n + 1))."""
    src = np.ascontiguousarray(fixed).view(np.uint8).reshape(-1)
    if size <= 0 or src.shape[0] % size:
        raise ValueError("pack: fixed parts are not a whole number of records")
    n = src.shape[0] // size
    ragged = [(name, np.asarray(values), np.asarray(offsets, dtype=np.int64), itemsize, at)
              for name, values, offsets, itemsize, at in ragged]
    rows = src.reshape(n, size).copy()
    counts = np.empty((n, len(ragged)), dtype=np.int64)
    for k, (name, values, offsets, _, at) in enumerate(ragged):
        counts[:, k] = np.diff(offsets)
        if len(values) < offsets[-1] or (counts[:, k] < 0).any():
            raise ValueError(f"{name}: offsets do not fit its {len(values)} values")
        if n and counts[:, k].max() > LIST_COUNT_MAX:
            raise ValueError(f"{name}: a list longer than 2**32 - 1")
        rows[:, at:at + 4] = counts[:, k].astype("<u4").view(np.uint8).reshape(n, 4)
    sizes = np.array([itemsize for _, _, _, itemsize, _ in ragged], dtype=np.int64)
    seg_nbytes = (counts * sizes + 7) & ~7
    record_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(size + seg_nbytes.sum(axis=1), out=record_offsets[1:])
    buf = np.zeros(int(record_offsets[-1]), dtype=np.uint8)   # zeros: the segments' padding
    out, data = buf.data, rows.reshape(-1).data
    for i, start in enumerate(record_offsets[:-1].tolist()):
        out[start:start + size] = data[i * size:(i + 1) * size]
    seg_start = record_offsets[:-1, None] + size + np.cumsum(seg_nbytes, axis=1) - seg_nbytes
    for k, (_, values, value_offsets, _, _) in enumerate(ragged):
        total = int(counts[:, k].sum())
        if not total:
            continue
        # Every segment starts on 8 bytes, so on a whole element of its field.
        first = seg_start[:, k] // sizes[k] - value_offsets[:-1]
        at = np.repeat(first, counts[:, k]) + np.arange(int(value_offsets[0]),
                                                        int(value_offsets[0]) + total)
        buf.view(values.dtype)[at] = values[value_offsets[0]:value_offsets[0] + total]
    return buf, record_offsets


__all__ = ["BLOCK_NBYTES", "Chunk", "RecordWriter", "dense_values", "draw_ids", "draw_values",
           "element_uniforms", "list_offsets", "mix", "pack", "uniform"]
