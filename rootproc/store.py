"""The embedded feature store: user and candidate records in LMDB.

One LMDB environment (a directory) with three named databases: ``meta``
(format, record layouts, counts), ``user`` and ``candidate`` (int64 id ->
record, see `rootproc.records`). LMDB readers are lock-free and share pages
through the OS cache, so any number of root processes on a node can read one
store while a loader writes to it (MVCC: readers see the last committed load).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import lmdb
import numpy as np

from .records import SOURCES, RecordLayout

FORMAT = 1
# Virtual address space, not disk: LMDB grows the file as it is written.
DEFAULT_MAP_SIZE = 1 << 36
_SIGN = np.uint64(1 << 63)


def encode_keys(ids) -> list[bytes]:
    """Big-endian with the sign bit flipped, so that keys sort like the ids
    and a sorted bulk load can append."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    raw = (arr.view(np.uint64) ^ _SIGN).astype(">u8").tobytes()
    return [raw[i:i + 8] for i in range(0, len(raw), 8)]


def decode_key(key: bytes) -> int:
    return int((np.frombuffer(key, dtype=">u8")[0] ^ _SIGN).astype(np.uint64).view(np.int64))


class FeatureStore:
    """A feature store directory. Roots open it read-only (the default)."""

    def __init__(self, path, *, readonly: bool = True, map_size: int = DEFAULT_MAP_SIZE):
        self.path = os.fspath(path)
        self.readonly = readonly
        if readonly and not os.path.exists(os.path.join(self.path, "data.mdb")):
            raise ValueError(f"feature store {self.path}: no LMDB database there "
                             "(create one with `trimmer store synth` or `trimmer store load`)")
        try:
            self.env = lmdb.open(self.path, readonly=readonly, lock=True, max_dbs=4,
                                 map_size=map_size, subdir=True, create=not readonly,
                                 max_readers=1024)
        except lmdb.Error as exc:
            raise ValueError(f"feature store {self.path}: cannot open: {exc}") from exc
        if readonly:
            try:
                self._meta = self.env.open_db(b"meta", create=False)
                self._dbs = {s: self.env.open_db(s.encode(), create=False) for s in SOURCES}
            except lmdb.NotFoundError:
                self.env.close()
                raise ValueError(f"feature store {self.path}: not a feature store "
                                 "(no meta/user/candidate databases)") from None
        else:
            self._meta = self.env.open_db(b"meta")
            self._dbs = {s: self.env.open_db(s.encode()) for s in SOURCES}
        self.layouts: dict[str, RecordLayout] = {}
        with self.env.begin(db=self._meta) as txn:
            fmt = txn.get(b"format")
            if fmt is not None and int(fmt) != FORMAT:
                raise ValueError(f"feature store {self.path}: format {int(fmt)}, "
                                 f"this build reads {FORMAT}")
            for source in SOURCES:
                raw = txn.get(f"layout.{source}".encode())
                if raw is not None:
                    self.layouts[source] = RecordLayout.from_dict(json.loads(raw))
        if readonly and set(self.layouts) != set(SOURCES):
            raise ValueError(f"feature store {self.path}: has no record layouts (never loaded)")

    @classmethod
    def create(cls, path, schema, *, map_size: int = DEFAULT_MAP_SIZE) -> FeatureStore:
        """Open ``path`` for writing, recording the schema's record layouts.

        An existing store keeps its records only if its layouts equal the
        schema's; otherwise loading into it would mix two record formats.
        """
        os.makedirs(path, exist_ok=True)
        store = cls(path, readonly=False, map_size=map_size)
        wanted = {s: RecordLayout.from_schema(schema, s) for s in SOURCES}
        for s in SOURCES:
            have = store.layouts.get(s)
            if have is not None and have.to_dict() != wanted[s].to_dict() and store.count(s):
                store.close()
                raise ValueError(f"feature store {path}: its {s} records were written for a "
                                 "different schema; load into a new directory")
        with store.env.begin(db=store._meta, write=True) as txn:
            txn.put(b"format", str(FORMAT).encode())
            txn.put(b"schema_fingerprint", schema.fingerprint.encode())
            for s in SOURCES:
                txn.put(f"layout.{s}".encode(), json.dumps(wanted[s].to_dict()).encode())
        store.layouts = wanted
        return store

    # -- reading --------------------------------------------------------------

    def layout(self, source: str) -> RecordLayout:
        return self.layouts[source]

    def get(self, source: str, ids: Sequence[int]) -> list:
        """Records for ``ids`` in order; None where the store has no such id."""
        keys = encode_keys(ids)
        with self.env.begin(db=self._dbs[source]) as txn:
            get = txn.get
            return [get(k) for k in keys]

    def count(self, source: str) -> int:
        with self.env.begin(db=self._dbs[source]) as txn:
            return txn.stat(self._dbs[source])["entries"]

    def id_range(self, source: str) -> tuple[int, int] | None:
        """(smallest id, largest id), or None when empty."""
        with self.env.begin(db=self._dbs[source]) as txn:
            cur = txn.cursor()
            if not cur.first():
                return None
            lo = decode_key(cur.key())
            cur.last()
            return lo, decode_key(cur.key())

    def info(self) -> dict:
        with self.env.begin(db=self._meta) as txn:
            fp = txn.get(b"schema_fingerprint")
        out = {"path": self.path, "format": FORMAT,
               "schema_fingerprint": fp.decode() if fp else None}
        for s in SOURCES:
            out[s] = {"count": self.count(s), "id_range": self.id_range(s),
                      "fields": len(self.layouts[s].fields) if s in self.layouts else 0}
        return out

    # -- writing --------------------------------------------------------------

    def put_many(self, source: str, ids, records: Iterable[bytes]) -> int:
        if self.readonly:
            raise ValueError(f"feature store {self.path} is open read-only")
        items = list(zip(encode_keys(ids), records))
        with self.env.begin(db=self._dbs[source], write=True) as txn:
            cur = txn.cursor()
            consumed, added = cur.putmulti(items, dupdata=False, overwrite=True)
        return consumed

    def close(self) -> None:
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["FeatureStore", "encode_keys", "decode_key", "DEFAULT_MAP_SIZE"]
