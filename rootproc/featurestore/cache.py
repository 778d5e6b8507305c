"""An LRU cache with a TTL in front of the feature store, and what it does when the store is down.

Entries are raw records (bytes), or None for an id the store does not have:
remembering misses keeps a flood of unknown ids from reaching the store on
every request. The TTL bounds how stale a cached record can be after a reload.

The policy when the store does not answer (`CachedStore.fetch`): fresh
entries are served as always; a request that needs anything uncached is
retried from entries that expired at most ``stale_if_error_s`` ago, and is
served only if every one of its entities is found that way; otherwise it
fails with the store's error (``store_unavailable`` on the wire). Requests
are never scored with a mix of real and made-up features.

A store that reads in place (LMDB: records are buffers into its memory
map, shared through the page cache by every root on the node) is read
through with no cache: a lookup and a copy per entity would only add to a
read that copies nothing, and it cannot be down. The cache is for remote
stores (Redis), whose every read is a round trip and a copy.

The serving loop only bumps plain ints here; `RootMetrics.watch_cache`
exports them when scraped.
"""
from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

from _trim.errors import StoreUnavailable
from _trim.records.layout import SOURCES
from rootproc.defaults import LATENCY_BUCKETS

ABSENT = object()
log = logging.getLogger("rootproc")


class LRUCache:
    """``size`` entries at most (0 disables caching), each fresh for ``ttl_s``
    seconds (None or 0: forever) and kept ``keep_s`` longer for `stale`."""

    def __init__(self, size: int, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, keep_s: float = 0.0):
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.size = int(size)
        self.ttl_s = float(ttl_s) if ttl_s else None
        self.keep_s = float(keep_s)
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
        """The cached value while fresh, or `ABSENT`."""
        entry = self._data.get(key, ABSENT)
        if entry is ABSENT:
            self.misses += 1
            return ABSENT
        expires, value = entry
        if expires is not None and expires <= self.clock():
            if expires + self.keep_s <= self.clock():
                del self._data[key]
            self.expired += 1
            self.misses += 1
            return ABSENT
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def stale(self, key):
        """The cached value, fresh or expired less than ``keep_s`` ago, or `ABSENT`."""
        entry = self._data.get(key, ABSENT)
        if entry is ABSENT:
            return ABSENT
        expires, value = entry
        if expires is not None and expires + self.keep_s <= self.clock():
            return ABSENT
        return value

    def put(self, key, value) -> None:
        if not self.size:
            return
        expires = self.clock() + self.ttl_s if self.ttl_s else None
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


class RoundTrips:
    """Latencies of store round trips as histogram buckets (`LATENCY_BUCKETS`)."""

    def __init__(self):
        self.buckets = LATENCY_BUCKETS
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total_s += seconds


class CachedStore:
    """The store's reads with one LRU cache per source in front."""

    def __init__(self, store, size: int, ttl_s: float | None, stale_if_error_s: float = 0.0):
        self.store = store
        self.stale_if_error_s = float(stale_if_error_s)
        if getattr(store, "reads_in_place", False):
            size = 0   # see the module docstring
        self.caches = {s: LRUCache(size, ttl_s, keep_s=self.stale_if_error_s) for s in SOURCES}
        self.store_reads = {s: 0 for s in SOURCES}
        self.stale_served = {s: 0 for s in SOURCES}
        self.store_errors: dict[str, int] = {}
        self.round_trips = RoundTrips()
        self.down_since: float | None = None
        # Batch workers (rootproc/workers.py) read concurrently: the caches and
        # counters are touched under this lock, the store's reads outside it.
        self._lock = threading.Lock()

    def get(self, source: str, ids: Sequence[int]) -> list:
        return self.fetch({source: ids})[source]

    @contextlib.contextmanager
    def reading(self, wanted: Mapping[str, Sequence[int]],
                timeout_s: float | None = None) -> Iterator[dict]:
        """`fetch`'s records, valid inside the ``with`` block: a store that
        reads in place hands out buffers into its memory, uncopied."""
        if not getattr(self.store, "reads_in_place", False):
            yield self.fetch(wanted, timeout_s)
            return
        t0 = time.perf_counter()
        with self.store.reading(wanted, timeout_s) as got:
            with self._lock:
                self.round_trips.observe(time.perf_counter() - t0)
                for source, records in got.items():
                    self.store_reads[source] += len(records)
            yield got

    def fetch(self, wanted: Mapping[str, Sequence[int]], timeout_s: float | None = None) -> dict:
        """Records for each source's ids (None where the store has none), from
        the cache when fresh, the rest in one store round trip within
        ``timeout_s``; when the store fails, the policy in the module docstring."""
        out: dict[str, list] = {}
        todo: dict[str, list[int]] = {}
        with self._lock:
            for source, ids in wanted.items():
                cache = self.caches[source]
                if cache.size:
                    out[source] = [cache.get(i) for i in ids]
                    todo[source] = [k for k, v in enumerate(out[source]) if v is ABSENT]
                else:
                    out[source] = [ABSENT] * len(ids)
                    todo[source] = list(range(len(ids)))
        ask = {s: [wanted[s][k] for k in idx] for s, idx in todo.items() if idx}
        if not ask:
            return out
        t0 = time.perf_counter()
        try:
            fetched = self.store.get_many(ask, timeout_s)
        except StoreUnavailable as exc:
            with self._lock:
                self.round_trips.observe(time.perf_counter() - t0)
                self._failed(exc)
                return self._from_stale(wanted, out, todo, exc)
        with self._lock:
            return self._fetched(wanted, out, todo, fetched, t0)

    def _fetched(self, wanted, out: dict, todo: dict, fetched: dict, t0: float) -> dict:
        self.round_trips.observe(time.perf_counter() - t0)
        if self.down_since is not None:
            log.info("feature store %s: answering again after %.1f s", self.store.address,
                     time.monotonic() - self.down_since)
            self.down_since = None
        for source, records in fetched.items():
            cache, ids, rows = self.caches[source], wanted[source], out[source]
            self.store_reads[source] += len(records)
            for k, rec in zip(todo[source], records):
                rows[k] = rec
                cache.put(ids[k], rec)
        return out

    def _failed(self, exc: StoreUnavailable) -> None:
        reason = getattr(exc, "reason", "error")
        self.store_errors[reason] = self.store_errors.get(reason, 0) + 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("feature store %s: not answering (%s); requests whose entities are not "
                        "all cached get store_unavailable", self.store.address, exc)

    def _from_stale(self, wanted, out: dict, todo: dict, exc: StoreUnavailable) -> dict:
        uncached = 0
        for source, idx in todo.items():
            cache, ids, rows = self.caches[source], wanted[source], out[source]
            for k in idx:
                rows[k] = cache.stale(ids[k]) if self.stale_if_error_s and cache.size else ABSENT
                uncached += rows[k] is ABSENT
        if uncached:
            total = sum(len(ids) for ids in wanted.values())
            raise StoreUnavailable(f"{exc}; {uncached} of the request's {total} entities "
                                   "are not cached") from None
        for source, idx in todo.items():
            self.stale_served[source] += len(idx)
        return out


__all__ = ["ABSENT", "CachedStore", "LRUCache", "RoundTrips"]
