"""An LRU cache with a TTL in front of the feature store.

Entries are raw records (bytes), or None for an id the store does not have:
remembering misses keeps a flood of unknown ids from reaching LMDB on every
request. The TTL bounds how stale a cached record can be after a reload.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

ABSENT = object()


class LRUCache:
    """``size`` entries at most (0 disables caching), each valid for ``ttl_s``
    seconds (None or 0: forever)."""

    def __init__(self, size: int, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.size = int(size)
        self.ttl_s = float(ttl_s) if ttl_s else None
        self.clock = clock
        self._data: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def get(self, key):
        """The cached value, or `ABSENT` (use `lookup` for many keys)."""
        entry = self._data.get(key, ABSENT)
        if entry is ABSENT:
            self.misses += 1
            return ABSENT
        expires, value = entry
        if expires is not None and expires <= self.clock():
            del self._data[key]
            self.expired += 1
            self.misses += 1
            return ABSENT
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key, value) -> None:
        if not self.size:
            return
        expires = self.clock() + self.ttl_s if self.ttl_s else None
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


class CachedStore:
    """The store's `get` with one LRU cache per source."""

    def __init__(self, store, size: int, ttl_s: float | None):
        self.store = store
        self.caches = {s: LRUCache(size, ttl_s) for s in ("user", "candidate")}
        self.store_reads = {"user": 0, "candidate": 0}

    def get(self, source: str, ids: Sequence[int]) -> list:
        """Records for ``ids`` (None where missing), from the cache when fresh."""
        cache = self.caches[source]
        if not cache.size:
            self.store_reads[source] += len(ids)
            return self.store.get(source, ids)
        out = [cache.get(i) for i in ids]
        todo = [k for k, v in enumerate(out) if v is ABSENT]
        if todo:
            fetched = self.store.get(source, [ids[k] for k in todo])
            self.store_reads[source] += len(todo)
            for k, rec in zip(todo, fetched):
                out[k] = rec
                cache.put(ids[k], rec)
        return out


__all__ = ["LRUCache", "CachedStore", "ABSENT"]
