"""The feature store's interface, which every backend serves.

A store holds one packed record per entity (`_trim.records.layout`) for each
source (``user``, ``candidate``), with metadata that makes it describe
itself: the format, each source's record layout, the fingerprint of the
schema it was written for, counts and id ranges. The backends (LMDB, Redis)
and the choice of one by address are the package's (rootproc/featurestore/__init__.py):
this module knows none of them.

Every backend writes the metadata last: a store whose first load has not
finished has no layouts, and a root refuses to start on it, naming the load
that did not finish. Readers get every source a request needs in one round
trip (`get_many`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence

from _trim.errors import StoreUnavailable
from _trim.records.layout import SOURCES, RecordLayout

FORMAT = 1
REDIS_SCHEMES = ("redis://", "rediss://")


class StoreDown(StoreUnavailable):
    """The store did not answer; ``reason`` is the metrics label (timeout,
    connection, error, backoff)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def is_redis_address(address) -> bool:
    return isinstance(address, str) and address.startswith(REDIS_SCHEMES)


def loading_marker(schema) -> dict:
    """What a load writes before its first record: who is loading, and for which schema."""
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "pid": os.getpid(),
            "schema_fingerprint": schema.fingerprint}


def unfinished_message(where: str, marker: dict | None) -> str:
    if marker:
        return (f"feature store {where}: its first load has not finished (started "
                f"{marker.get('started', '?')} by pid {marker.get('pid', '?')} on "
                f"{marker.get('host', '?')}); a half-loaded store is never served: "
                "wait for the load, or run it again")
    return (f"feature store {where}: has no record layouts (never loaded: "
            "`trimmer store synth` or `trimmer store load` writes them)")


class FeatureStore(ABC):
    """A feature store open for reading (roots) or for a load (`trimmer store`).

    A writer's records become servable when `commit` writes the metadata;
    used as a context manager, a writer commits on a clean exit only."""

    backend: str                          # "lmdb", "redis"
    address: str                          # as shown to people: never with a password
    layouts: dict[str, RecordLayout]
    readonly: bool
    loading: dict | None                  # the marker of a load not finished, if any
    # Records read in place (buffers into the store's own memory, valid inside
    # `reading`) rather than copied out: no cache in front is faster.
    reads_in_place = False

    def layout(self, source: str) -> RecordLayout:
        return self.layouts[source]

    @abstractmethod
    def get_many(self, wanted: Mapping[str, Sequence[int]],
                 timeout_s: float | None = None) -> dict[str, list]:
        """Records for each source's ids, in order (None where the store has no
        such id), in one round trip; `StoreUnavailable` when the store does not
        answer within ``timeout_s`` (a remote store's bound; LMDB has none)."""

    def get(self, source: str, ids: Sequence[int]) -> list:
        return self.get_many({source: ids})[source]

    @contextlib.contextmanager
    def reading(self, wanted: Mapping[str, Sequence[int]],
                timeout_s: float | None = None) -> Iterator[dict[str, list]]:
        """`get_many`'s records, valid (only) inside the ``with`` block: a
        store that `reads_in_place` hands out buffers into its own memory."""
        yield self.get_many(wanted, timeout_s)

    @abstractmethod
    def count(self, source: str) -> int: ...

    @abstractmethod
    def id_range(self, source: str) -> tuple[int, int] | None:
        """(smallest id, largest id), or None when empty."""

    @abstractmethod
    def describe(self) -> dict:
        """What `info` adds for this backend (the schema fingerprint, ...)."""

    def info(self) -> dict:
        """What `trimmer store info` prints."""
        out = {"address": self.address, "backend": self.backend, "format": FORMAT,
               **self.describe()}
        if self.loading:
            out["loading"] = self.loading
        for s in SOURCES:
            out[s] = {"count": self.count(s), "id_range": self.id_range(s),
                      "fields": len(self.layouts[s].fields) if s in self.layouts else 0}
        return out

    @abstractmethod
    def put_many(self, source: str, ids, records: Iterable) -> int:
        """Write ``records`` (bytes-like) under ``ids``; the number written."""

    @abstractmethod
    def commit(self) -> None:
        """Write the metadata, last: the records written so far become the store."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            if exc_type is None and not self.readonly:
                self.commit()
        finally:
            self.close()


def check_layouts(where: str, have: Mapping[str, RecordLayout], schema, has_records) -> dict:
    """The schema's record layouts, once a store's own (``have``) agree with
    them or it has no records of that source: otherwise loading into it would
    mix two record formats."""
    wanted = {s: RecordLayout.from_schema(schema, s) for s in SOURCES}
    for s in SOURCES:
        old = have.get(s)
        if old is not None and old.to_dict() != wanted[s].to_dict() and has_records(s):
            raise ValueError(f"feature store {where}: its {s} records were written for a "
                             "different schema; load into a new "
                             + ("namespace" if is_redis_address(where) else "directory"))
    return wanted


__all__ = ["FORMAT", "FeatureStore", "StoreDown", "check_layouts", "is_redis_address",
           "loading_marker", "unfinished_message"]
