"""Binary records of raw feature fields, one per user or candidate.

A record is what the feature store holds for one entity id. Decoding is the
hot path (256 candidates x ~1000 fields per request), so a record is laid out
for numpy rather than for generality::

    fixed part   every dense field, then one uint32 length per ragged field,
                 packed as a numpy structured dtype (fields sorted by item size
                 so that each one is naturally aligned), padded to 8 bytes
    tail         each ragged field's values, field after field, each padded
                 with zeros to a multiple of 8 bytes

A batch of records then decodes with one ``b"".join`` and one
``np.frombuffer``: each dense field is a strided view, no per-record Python.
The padding keeps every ragged segment aligned in the joined tails, so
ragged fields are gathered by element (one index per value, not per byte).
The record layout is stored in the store's metadata, so a store describes
itself and a root can read it with a newer schema (fields the store lacks
take their defaults).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from _trim import Ragged
from _trim.records import record_writer

SOURCES = ("user", "candidate")
LEN_DTYPE = np.dtype("<u4")
LEN_PREFIX = "__len__"


@dataclass(frozen=True)
class RawField:
    """One raw field of a record: a dense scalar or vector, or a ragged list."""

    name: str
    dtype: str
    width: int = 1
    vector: bool = False
    ragged: bool = False
    default: object = None

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "width": self.width,
                "vector": self.vector, "ragged": self.ragged, "default": self.default}

    @classmethod
    def from_dict(cls, d: Mapping) -> RawField:
        return cls(str(d["name"]), str(np.dtype(d["dtype"]).name), int(d.get("width", 1)),
                   bool(d.get("vector", False)), bool(d.get("ragged", False)), d.get("default"))

    @property
    def shape(self) -> tuple:
        return (self.width,) if self.vector else ()

    def default_value(self) -> np.ndarray:
        """The value a record without this field has: `default`, else 0 / an empty list."""
        dt = np.dtype(self.dtype)
        if self.ragged:
            return np.asarray(self.default if self.default is not None else [], dtype=dt).ravel()
        value = 0 if self.default is None else self.default
        return np.broadcast_to(np.asarray(value, dtype=dt), self.shape).copy()


def raw_dtype(feature) -> str:
    """Raw fields hold what the transform reads: ids for hash, else the feature's dtype."""
    if feature.transform.get("op") == "hash":
        return "int64"
    return feature.dtype


def fields_from_schema(schema, source: str) -> list[RawField]:
    """The raw fields that ``source``'s features are computed from.

    Two features may read the same raw field (say ``ctr_7d`` through log1p
    and through clip); they must agree on its shape, and its dtype is the
    wider of theirs.
    """
    fields: dict[str, RawField] = {}
    for feat in schema.features.values():
        if feat.source != source:
            continue
        name = feat.raw_name
        new = RawField(name, raw_dtype(feat), feat.shape[0] if feat.shape else 1,
                       bool(feat.shape), feat.ragged, feat.default)
        old = fields.get(name)
        if old is None:
            fields[name] = new
            continue
        if (old.width, old.vector, old.ragged) != (new.width, new.vector, new.ragged):
            raise ValueError(f"raw field {source}.{name!r} is read by features of different "
                             f"shapes ({old.shape}{' ragged' if old.ragged else ''} vs "
                             f"{new.shape}{' ragged' if new.ragged else ''})")
        wider = np.result_type(old.dtype, new.dtype).name
        fields[name] = RawField(name, wider, old.width, old.vector, old.ragged, old.default)
    return list(fields.values())


class PackedRecords(Sequence):
    """``n`` records in one buffer: record ``i`` is ``buffer[offsets[i]:offsets[i+1]]``,
    handed out as memoryviews (the stores copy them once, where they write)."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray):
        self.buffer = buffer
        self.offsets = offsets
        self._view = memoryview(buffer.data)
        self._bounds = offsets.tolist()

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self._view[self._bounds[i]:self._bounds[i + 1]]

    def __iter__(self):
        view, bounds = self._view, self._bounds
        return (view[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1))

    @property
    def nbytes(self) -> int:
        return self._bounds[-1] - self._bounds[0]


class RecordLayout:
    """The binary layout of one source's records (see the module docstring)."""

    def __init__(self, source: str, fields: Iterable[RawField]):
        if source not in SOURCES:
            raise ValueError(f"record source must be one of {SOURCES}, got {source!r}")
        self.source = source
        self.fields: dict[str, RawField] = {}
        for f in fields:
            if f.name in self.fields:
                raise ValueError(f"duplicate raw field {source}.{f.name!r}")
            self.fields[f.name] = f
        dense = [f for f in self.fields.values() if not f.ragged]
        self.ragged = [f for f in self.fields.values() if f.ragged]
        entries = [(f.name, np.dtype(f.dtype), f.shape) for f in dense]
        entries += [(LEN_PREFIX + f.name, LEN_DTYPE, ()) for f in self.ragged]
        # Largest items first: with the total padded to 8, every field is aligned.
        entries.sort(key=lambda e: -e[1].itemsize)
        packed = np.dtype([(n, dt, shape) for n, dt, shape in entries]) if entries else np.dtype([])
        self.fixed_nbytes = (packed.itemsize + 7) & ~7
        placed: Any = packed.fields or {}
        spec: Any = {"names": list(placed), "formats": [placed[n][0] for n in placed],
                     "offsets": [placed[n][1] for n in placed], "itemsize": self.fixed_nbytes}
        self.dtype = np.dtype(spec)
        self.default_record = self.encode({})

    def to_dict(self) -> dict:
        return {"source": self.source, "fields": [f.to_dict() for f in self.fields.values()]}

    @classmethod
    def from_dict(cls, d: Mapping) -> RecordLayout:
        return cls(d["source"], [RawField.from_dict(f) for f in d["fields"]])

    @classmethod
    def from_schema(cls, schema, source: str) -> RecordLayout:
        return cls(source, fields_from_schema(schema, source))

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    # -- encoding -------------------------------------------------------------

    def encode(self, values: Mapping) -> bytes:
        """One record; fields absent from ``values`` take their defaults."""
        return bytes(self.pack_many(1, {k: [v] for k, v in values.items()})[0])

    def encode_many(self, n: int, columns: Mapping) -> list[bytes]:
        """`pack_many`'s records, each its own bytes object."""
        return [bytes(r) for r in self.pack_many(n, columns)]

    def pack_many(self, n: int, columns: Mapping) -> PackedRecords:
        """``n`` records from columns: for a dense field an array of n rows (or a
        list of per-record values); for a ragged field a list of n sequences or
        a `Ragged` (values, offsets) pair. Unknown column names are an error."""
        unknown = sorted(set(columns) - set(self.fields))
        if unknown:
            raise ValueError(f"no {self.source} raw field named {', '.join(unknown)} "
                             f"(fields: {', '.join(self.fields) or 'none'})")
        fixed = np.zeros(n, dtype=self.dtype)
        for f in self.fields.values():
            if f.ragged:
                continue
            if f.name in columns:
                arr = np.asarray(columns[f.name], dtype=f.dtype)
                try:
                    fixed[f.name] = arr.reshape((n,) + f.shape) if arr.size == n * f.width else arr
                except ValueError as exc:
                    raise ValueError(f"{self.source}.{f.name}: expected {n} rows of shape "
                                     f"{f.shape}, got an array of shape {arr.shape}") from exc
            else:
                fixed[f.name] = f.default_value()
        return self.pack(fixed, {f.name: self._ragged_column(f, n, columns.get(f.name))
                                 for f in self.ragged})

    def _ragged_column(self, f: RawField, n: int, data) -> tuple[np.ndarray, np.ndarray]:
        """(values, offsets) of a ragged field's column as `pack_many` takes it."""
        if data is None:
            default = f.default_value()
            return np.tile(default, n), np.arange(n + 1, dtype=np.int64) * len(default)
        if isinstance(data, Ragged) or (isinstance(data, tuple) and len(data) == 2
                                        and isinstance(data[1], np.ndarray)):
            values, offsets = np.asarray(data[0], dtype=f.dtype), np.asarray(data[1], dtype=np.int64)
            if len(offsets) != n + 1:
                raise ValueError(f"{self.source}.{f.name}: {len(offsets)} offsets for {n} rows")
            return values, offsets
        if len(data) != n:
            raise ValueError(f"{self.source}.{f.name}: {len(data)} lists for {n} rows")
        lists = [np.asarray(v, dtype=f.dtype).ravel() for v in data]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(v) for v in lists], out=offsets[1:])
        values = np.concatenate(lists) if lists else np.zeros(0, dtype=f.dtype)
        return values, offsets

    def pack(self, fixed: np.ndarray, ragged: Mapping[str, tuple[np.ndarray, np.ndarray]],
             impl: str | None = None) -> PackedRecords:
        """Records from their fixed parts (an array of `dtype`; the ragged
        lengths are written into the records) and each ragged field's (values,
        offsets), in bulk: one buffer, written by the record writer
        (`_trim.records.record_writer`: compiled, or numpy with
        ``TRIMMER_IMPL=reference``). Without ragged fields the records are
        the fixed parts themselves."""
        n = len(fixed)
        if not self.ragged:
            return PackedRecords(fixed.view(np.uint8).reshape(-1),
                                 np.arange(n + 1, dtype=np.int64) * self.fixed_nbytes)
        placed: Any = self.dtype.fields
        buf, offsets = record_writer(impl).pack(fixed, self.fixed_nbytes, [
            (f"{self.source}.{f.name}", np.asarray(ragged[f.name][0], dtype=f.dtype),
             ragged[f.name][1], np.dtype(f.dtype).itemsize, placed[LEN_PREFIX + f.name][1])
            for f in self.ragged])
        return PackedRecords(buf, offsets)

    # -- decoding -------------------------------------------------------------

    def decode_fixed(self, records: Sequence):
        """``(fixed, tails, tail_nbytes)``: the fixed parts of ``records`` as
        one contiguous structured array, and (when the layout has ragged
        fields) their tails joined into one uint8 array with each tail's size."""
        n = len(records)
        size = self.fixed_nbytes
        if not self.ragged:
            joined = b"".join(records)
            if len(joined) != n * size:
                raise ValueError(f"corrupt {self.source} record: expected {size} bytes each")
            # count: a layout without fields has 0-byte records
            return np.frombuffer(joined, dtype=self.dtype, count=n), None, None
        views = [memoryview(r) for r in records]
        joined = b"".join([v[:size] for v in views])
        if len(joined) != n * size:
            raise ValueError(f"corrupt {self.source} record: shorter than its fixed part")
        tails = np.frombuffer(b"".join([v[size:] for v in views]), dtype=np.uint8)
        tail_nbytes = np.fromiter((v.nbytes - size for v in views), dtype=np.int64, count=n)
        return np.frombuffer(joined, dtype=self.dtype, count=n), tails, tail_nbytes

    def decode_many(self, records: Sequence, names: Iterable[str] | None = None,
                    decoded=None) -> dict:
        """Fields of many records: ``name -> (n,) / (n, width) array`` for dense
        fields (read-only views on one joined buffer), ``name -> Ragged`` for
        ragged ones. ``names`` restricts the fields returned; ``decoded`` is
        `decode_fixed`'s result when the caller already has it."""
        fixed, tails, tail_nbytes = decoded if decoded is not None else self.decode_fixed(records)
        n = len(fixed)
        wanted = list(self.fields) if names is None else [x for x in names if x in self.fields]
        out = {}
        for name in wanted:
            if not self.fields[name].ragged:
                out[name] = fixed[name]
        index = {f.name: k for k, f in enumerate(self.ragged)}
        ks = [index[name] for name in wanted if name in index]
        if not ks:
            return out
        counts = np.stack([fixed[LEN_PREFIX + f.name].astype(np.int64) for f in self.ragged], axis=1)
        sizes = np.array([np.dtype(f.dtype).itemsize for f in self.ragged], dtype=np.int64)
        seg_nbytes = (counts * sizes + 7) & ~7
        if bool((seg_nbytes.sum(axis=1) != tail_nbytes).any()):
            raise ValueError(f"corrupt {self.source} record: ragged lengths disagree with its size")
        tail_start = np.cumsum(tail_nbytes) - tail_nbytes
        seg_start = tail_start[:, None] + np.cumsum(seg_nbytes, axis=1) - seg_nbytes
        # One gather per item size for every wanted field, by element: segments
        # are 8-aligned, so a segment's start is a whole number of elements.
        by_size: dict[int, list[int]] = {}
        for k in ks:
            by_size.setdefault(int(sizes[k]), []).append(k)
        for size, group in by_size.items():
            elems = tails.view(f"u{size}")
            starts = (seg_start[:, group] // size).T.ravel()
            lengths = counts[:, group].T.ravel()
            before = np.cumsum(lengths) - lengths
            total = int(lengths.sum())
            gathered = elems[np.repeat(starts - before, lengths) + np.arange(total, dtype=np.int64)]
            pos = 0
            for k, count in zip(group, counts[:, group].sum(axis=0).tolist()):
                f = self.ragged[k]
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(counts[:, k], out=offsets[1:])
                out[f.name] = Ragged(gathered[pos:pos + count].view(f.dtype), offsets)
                pos += count
        return out


__all__ = ["PackedRecords", "RawField", "RecordLayout", "fields_from_schema", "SOURCES"]
