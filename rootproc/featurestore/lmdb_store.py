"""The embedded feature store: user and candidate records in LMDB on this node.

One LMDB environment (a directory) with three named databases: ``meta``
(format, record layouts, schema fingerprint), ``user`` and ``candidate``
(int64 id -> record, see `_trim.records.layout`). LMDB readers are lock-free and
share pages through the OS cache, so any number of root processes on a node
can read one store while a loader writes to it (MVCC: readers see the last
committed chunk).

A load writes a ``loading`` marker first, records one transaction per chunk
(appended when the ids come sorted, not synced per chunk: a thread starts
each chunk's write-back to disk while the next is made, and `commit` waits
for the last), and the layouts last (`commit`): a directory whose first
load did not finish has no layouts, and roots refuse it.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

import lmdb
import numpy as np
import orjson

from _trim.records.layout import SOURCES, RecordLayout
from rootproc.featurestore.base import FORMAT, FeatureStore, check_layouts, loading_marker, unfinished_message

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


class LmdbStore(FeatureStore):
    """A feature store directory. Roots open it read-only (the default)."""

    backend = "lmdb"
    reads_in_place = True

    def __init__(self, path, *, readonly: bool = True, map_size: int = DEFAULT_MAP_SIZE):
        self.path = self.address = os.fspath(path)
        self.readonly = readonly
        self._pending: tuple | None = None          # a load's (schema, layouts): see create
        self._last: dict[str, bytes | None] = {}    # a load's largest key per source
        self._flusher: _Flusher | None = None       # a load's background write-back
        if readonly and not os.path.exists(os.path.join(self.path, "data.mdb")):
            raise ValueError(f"feature store {self.path}: no LMDB database there "
                             "(create one with `trimmer store synth` or `trimmer store load`)")
        try:
            # A loader flushes once, in commit, instead of at every chunk's commit.
            self.env = lmdb.open(self.path, readonly=readonly, lock=True, max_dbs=4,
                                 map_size=map_size, subdir=True, create=not readonly,
                                 max_readers=1024, sync=readonly)
        except lmdb.Error as exc:
            raise ValueError(f"feature store {self.path}: cannot open: {exc}") from exc
        try:
            self._meta = self.env.open_db(b"meta", create=not readonly)
            self._dbs = {s: self.env.open_db(s.encode(), create=not readonly) for s in SOURCES}
        except lmdb.NotFoundError:
            self.env.close()
            raise ValueError(f"feature store {self.path}: not a feature store "
                             "(no meta/user/candidate databases)") from None
        self.layouts: dict[str, RecordLayout] = {}
        with self.env.begin(db=self._meta) as txn:
            fmt = txn.get(b"format")
            if fmt is not None and int(fmt) != FORMAT:
                self.env.close()
                raise ValueError(f"feature store {self.path}: format {int(fmt)}, "
                                 f"this build reads {FORMAT}")
            for source in SOURCES:
                raw = txn.get(f"layout.{source}".encode())
                if raw is not None:
                    self.layouts[source] = RecordLayout.from_dict(json.loads(raw))
            marker = txn.get(b"loading")
        self.loading = orjson.loads(marker) if marker else None
        if readonly and set(self.layouts) != set(SOURCES):
            self.env.close()
            raise ValueError(unfinished_message(self.path, self.loading))

    @classmethod
    def create(cls, path, schema, *, map_size: int = DEFAULT_MAP_SIZE) -> LmdbStore:
        """Open ``path`` for a load of ``schema``'s records. An existing store
        keeps its records only if its layouts equal the schema's."""
        os.makedirs(path, exist_ok=True)
        store = cls(path, readonly=False, map_size=map_size)
        try:
            wanted = check_layouts(store.path, store.layouts, schema, store.count)
        except ValueError:
            store.close()
            raise
        store._pending = (schema, wanted)
        with store.env.begin(db=store._meta, write=True) as txn:
            txn.put(b"loading", orjson.dumps(loading_marker(schema)))
        store._last = {s: store._last_key(s) for s in SOURCES}
        store.layouts = wanted
        store._flusher = _Flusher(os.path.join(store.path, "data.mdb"))
        return store

    # -- reading --------------------------------------------------------------

    def get_many(self, wanted: Mapping[str, Sequence[int]],
                 timeout_s: float | None = None) -> dict[str, list]:
        with self.env.begin() as txn:
            return {source: [txn.get(k, db=self._dbs[source]) for k in encode_keys(ids)]
                    for source, ids in wanted.items()}

    @contextlib.contextmanager
    def reading(self, wanted: Mapping[str, Sequence[int]],
                timeout_s: float | None = None) -> Iterator[dict[str, list]]:
        """The records as buffers into LMDB's memory map, no copy: valid until
        the block ends (their read transaction with it)."""
        with self.env.begin(buffers=True) as txn:
            get = txn.get
            yield {source: [get(k, None, self._dbs[source]) for k in encode_keys(ids)]
                   for source, ids in wanted.items()}

    def count(self, source: str) -> int:
        with self.env.begin(db=self._dbs[source]) as txn:
            return txn.stat(self._dbs[source])["entries"]

    def id_range(self, source: str) -> tuple[int, int] | None:
        with self.env.begin(db=self._dbs[source]) as txn:
            cur = txn.cursor()
            if not cur.first():
                return None
            lo = decode_key(cur.key())
            cur.last()
            return lo, decode_key(cur.key())

    def _last_key(self, source: str) -> bytes | None:
        with self.env.begin(db=self._dbs[source]) as txn:
            cur = txn.cursor()
            return bytes(cur.key()) if cur.last() else None

    def describe(self) -> dict:
        with self.env.begin(db=self._meta) as txn:
            fp = txn.get(b"schema_fingerprint")
        return {"schema_fingerprint": fp.decode() if fp else None}

    # -- writing --------------------------------------------------------------

    def put_many(self, source: str, ids, records: Iterable) -> int:
        if self.readonly:
            raise ValueError(f"feature store {self.path} is open read-only")
        keys = encode_keys(ids)
        items = list(zip(keys, records))
        if not items:
            return 0
        last = self._last.get(source)
        # Appending skips the B-tree search; it needs ids past every key there.
        append = (last is None or keys[0] > last) and all(a < b for a, b in zip(keys, keys[1:]))
        # One put per record, not putmulti: py-lmdb lets go of the GIL in put,
        # so the next chunk is made while this one is copied in.
        with self.env.begin(db=self._dbs[source], write=True) as txn:
            put = txn.put
            for key, record in items:
                put(key, record, append=append)
        consumed = len(items)
        self._last[source] = max(keys[-1], last) if last is not None else max(keys)
        if self._flusher is not None:
            self._flusher.kick()
        return consumed

    def commit(self) -> None:
        if self._pending is None:
            raise ValueError(f"feature store {self.path}: not open for a load (create_feature_store)")
        schema, wanted = self._pending
        if self._flusher is not None:
            self._flusher.stop()
        self.env.sync(True)   # the records are on disk before the layouts say they are there
        with self.env.begin(db=self._meta, write=True) as txn:
            txn.put(b"format", str(FORMAT).encode())
            txn.put(b"schema_fingerprint", schema.fingerprint.encode())
            for s in SOURCES:
                txn.put(f"layout.{s}".encode(), json.dumps(wanted[s].to_dict()).encode())
            txn.delete(b"loading")
        self.env.sync(True)
        self.loading = None

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
        self.env.close()


class _Flusher:
    """Writes a load's committed chunks back to disk while the next is made, so
    that the sync before the layouts are written finds little left to do:
    the disk's time overlaps the CPU's instead of following it."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lmdb-flush", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError:
                return   # commit's own sync reports the problem

    def stop(self) -> None:
        if self._fd < 0:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        os.close(self._fd)
        self._fd = -1


__all__ = ["DEFAULT_MAP_SIZE", "LmdbStore", "decode_key", "encode_keys"]
