"""The fleet feature store: the same records in Redis, read by any number of roots.

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?namespace=NAME]
    rediss://...   the same over TLS (the server's certificate is verified)

Keys, under the namespace (default ``features``), so that two stores share a
server safely::

    NAME:u:ID, NAME:c:ID   one packed record per user / candidate (decimal id)
    NAME:meta              format, layouts, schema fingerprint, counts, id ranges:
                           written last by a load; a store without it is never served
    NAME:loading           who is loading, while a load runs
    NAME:generation        the dataset's generation: a token the first load writes,
                           kept by later loads into it; a load into an emptied
                           server writes a new one

A root reads a request's user and candidates with one ``MGET``, pipelined
with ``EXISTS NAME:meta`` and ``GET NAME:generation`` (one round trip): a root whose store lost its
data (FLUSHALL, a restart without its data) answers ``store_unavailable``
(reason ``dataset_lost``), logged once, until it is loaded again; a store
loaded again with the same layouts is served from then on, one with other
layouts stays ``store_unavailable`` (``dataset_replaced``). A value over
``redis.max_value_bytes`` is never read past the limit (the connection is
dropped; ``STRLEN`` finds the key, which is then left out of reads for
`LARGE_KEEP_S`), and one that is no record of its source is refused
(rootproc/featurestore/checks.py): that entity counts as missing.

Every read has a time budget (at most ``redis.timeout_ms``, and at most half of what is
left of the request's deadline), connects and reads never wait past it however the bytes arrive, and
after a failure the store is left alone for a backoff (doubling, capped)
during which reads fail at once: a root whose Redis is down answers
``store_unavailable`` promptly instead of stalling its loop on sockets. The
first read after the backoff reconnects.

The password comes from the URL or, when the URL has none, from the
environment variable ``redis.password_env`` names (TRIMMER_REDIS_PASSWORD);
it never appears in `address`, messages or logs.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from _trim.records.layout import SOURCES, RecordLayout
from rootproc.featurestore.base import (
    FORMAT,
    FeatureStore,
    StoreDown,
    check_layouts,
    loading_marker,
    unfinished_message,
)
from rootproc.featurestore.checks import BadRecords, corrupt_records
from rootproc.featurestore.redis_address import parse_address
from rootproc.featurestore.resp import OVERHEAD_NBYTES, ValueTooLarge, read_replies
from rootproc.settings import LOADER_REDIS, RedisSettings

log = logging.getLogger("rootproc")
SOURCE_TAGS = {"user": "u", "candidate": "c"}
# A load's writes go in commands of about this size, so that roots reading
# the same server wait behind one at most (Redis runs one command at a time).
WRITE_COMMAND_NBYTES = 2 << 20
LARGE_KEEP_S = 10.0       # how long a key found over max_value_bytes is left out of reads
LARGE_KEYS = 10_000       # at most this many such keys remembered


class RedisStore(FeatureStore):
    """A namespace of a Redis server, open for reading (roots) or for a load."""

    backend = "redis"

    def __init__(self, address: str, settings: RedisSettings | None = None, *,
                 readonly: bool = True):
        where = parse_address(address)
        self.settings = settings or (RedisSettings() if readonly else LOADER_REDIS)
        self.address = where["shown"]
        self.namespace = where["namespace"]
        self.readonly = readonly
        self._pending: tuple | None = None           # a load's (schema, layouts): see create
        self._recount = False
        self._added = {s: 0 for s in SOURCES}        # ids a load wrote that were not there
        self._range: dict[str, list[int]] = {}       # a load's id ranges, with the store's
        self._prefix = {s: f"{self.namespace}:{t}:".encode() for s, t in SOURCE_TAGS.items()}
        self._meta_key = f"{self.namespace}:meta"
        self._loading_key = f"{self.namespace}:loading"
        self._gen_key = f"{self.namespace}:generation"
        self.bad = BadRecords(self.address)
        self.lost: str | None = None     # why the store's data is gone, while it is
        self._large: dict[bytes, tuple[float, int]] = {}   # key -> (until, its length)
        password = where["password"] or os.environ.get(self.settings.password_env) or None
        kwargs = {"host": where["host"], "port": where["port"], "db": where["db"],
                  "username": where["username"], "password": password,
                  "socket_timeout": self.settings.timeout_ms / 1000,
                  "socket_connect_timeout": self.settings.connect_timeout_ms / 1000,
                  "socket_keepalive": True, "retry": Retry(NoBackoff(), 0)}
        connection_class: type = redis.Connection
        if where["tls"]:
            connection_class = redis.SSLConnection
            kwargs.update(ssl_cert_reqs="required", ssl_ca_certs=self.settings.tls_ca_file)
        self._connect = lambda: connection_class(**kwargs)
        self._idle: list = []
        self._lock = threading.Lock()
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self.last_error: str | None = None
        try:
            meta, marker, self.generation = self._call(
                [("GET", self._meta_key), ("GET", self._loading_key), ("GET", self._gen_key)],
                time.monotonic() + self.settings.timeout_ms / 1000)
        except StoreDown as exc:
            self.close()
            hint = " (is the server up, and the address right?)" if exc.reason != "error" else ""
            raise ValueError(f"{exc}{hint}") from None
        self.loading = orjson.loads(marker) if marker else None
        self.meta = orjson.loads(meta) if meta else None
        if self.meta is not None and self.meta.get("format") != FORMAT:
            self.close()
            raise ValueError(f"feature store {self.address}: format {self.meta.get('format')}, "
                             f"this build reads {FORMAT}")
        self.layouts: dict[str, RecordLayout] = {
            s: RecordLayout.from_dict(d) for s, d in (self.meta or {}).get("layouts", {}).items()}
        if readonly and set(self.layouts) != set(SOURCES):
            self.close()
            raise ValueError(unfinished_message(self.address, self.loading))

    @classmethod
    def create(cls, address: str, schema, settings: RedisSettings | None = None) -> RedisStore:
        """``address``'s namespace open for a load of ``schema``'s records."""
        store = cls(address, settings, readonly=False)
        counts = (store.meta or {}).get("counts", {})
        try:
            wanted = check_layouts(store.address, store.layouts, schema,
                                   lambda s: counts.get(s, 0) > 0)
        except ValueError:
            store.close()
            raise
        # Records an unfinished first load left are in no count: count them when done.
        store._recount = store.meta is None and store.loading is not None
        store._pending = (schema, wanted)
        store._range = {s: list(r) for s, r in (store.meta or {}).get("id_ranges", {}).items() if r}
        store._call([("SET", store._loading_key, orjson.dumps(loading_marker(schema)))])
        store.layouts = wanted
        return store

    # -- the connection ---------------------------------------------------------

    def _call(self, commands: list[tuple], deadline: float | None = None,
              max_bytes: int | None = None, max_pending: int | None = None) -> list:
        """The replies to ``commands``, sent in one round trip (a pipeline),
        within ``deadline`` (time.monotonic); StoreDown when that fails."""
        now = time.monotonic()
        if now < self._retry_at:
            raise StoreDown(f"feature store {self.address}: not answering ({self.last_error}); "
                            f"next attempt in {(self._retry_at - now) * 1000:.0f} ms", "backoff")
        if deadline is None:
            deadline = now + self.settings.timeout_ms / 1000
        failure: tuple[str, str] | None = None   # (what happened, reason)
        for _ in range(1 + self.settings.retries):
            left = deadline - time.monotonic()
            if left <= 0:
                failure = failure or ("no time left to ask it", "timeout")
                break
            try:
                replies = self._send(commands, left, max_bytes, max_pending)
            except (redis.TimeoutError, TimeoutError) as exc:
                failure = (f"no answer within {left * 1000:.0f} ms ({exc})", "timeout")
                break   # a stalled server: asking again would only wait again
            except (redis.ConnectionError, OSError) as exc:
                # A connection the server closed (a restart) fails once: try a new one.
                failure = (str(exc), "connection")
                continue
            except redis.RedisError as exc:
                failure = (str(exc), "error")
                break
            self._backoff_s = 0.0
            return replies
        assert failure is not None
        self._backoff_s = min(self.settings.backoff_max_ms / 1000,
                              max(self.settings.backoff_ms / 1000, 2 * self._backoff_s))
        self._retry_at = time.monotonic() + self._backoff_s
        self.last_error = failure[0]
        raise StoreDown(f"feature store {self.address}: {failure[0]}", failure[1])

    def _send(self, commands: list[tuple], left: float, max_bytes: int | None,
              max_pending: int | None) -> list:
        with self._lock:
            conn = self._idle.pop() if self._idle else self._connect()
        ok = False
        try:
            conn.socket_connect_timeout = min(self.settings.connect_timeout_ms / 1000, left)
            end = time.monotonic() + left
            if conn._sock is None:
                conn.connect()
            conn.send_packed_command(conn.pack_commands(commands))
            replies = read_replies(conn, len(commands), end, max_bytes, max_pending)
            ok = True
            return replies
        finally:
            if not ok:
                conn.disconnect()   # a reply may be half read: never reuse the socket
            with self._lock:
                if len(self._idle) < self.settings.pool_size:
                    self._idle.append(conn)

    @property
    def down(self) -> bool:
        """Failed recently: reads fail at once until the backoff passes."""
        return time.monotonic() < self._retry_at

    # -- reading ----------------------------------------------------------------

    def _keys(self, source: str, ids) -> list[bytes]:
        prefix = self._prefix[source]
        return [b"%b%d" % (prefix, i) for i in np.asarray(ids, dtype=np.int64).tolist()]

    def get_many(self, wanted: Mapping[str, Sequence[int]],
                 timeout_s: float | None = None) -> dict[str, list]:
        keys: list[bytes] = []
        spans = []
        for source, ids in wanted.items():
            source_keys = self._keys(source, ids)
            spans.append((source, len(keys), len(keys) + len(source_keys)))
            keys += source_keys
        if not keys:
            return {source: [] for source in wanted}
        budget = self.settings.timeout_ms / 1000
        if timeout_s is not None:
            budget = min(budget, timeout_s)
        deadline = time.monotonic() + budget
        limit = self.settings.max_value_bytes
        exists, generation, values, large = self._read(keys, deadline)
        if not exists:
            self._gone(f"its metadata key {self._meta_key} is gone")
        if generation != self.generation:
            self._replaced(generation, deadline)
        elif self.lost is not None:
            log.warning("feature store %s: its data is back (same generation); serving it",
                        self.address)
            self.lost = None
        out = {}
        for source, a, b in spans:
            out[source] = records = values[a:b]
            for k in range(a, b):
                if k in large:
                    self.bad.refuse(source, keys[k], "too_large", f"{large[k]} bytes, over "
                                    f"redis.max_value_bytes ({limit}): not read")
            for k, why in corrupt_records(self.layouts[source], records):
                self.bad.refuse(source, keys[a + k], "corrupt", why)
                records[k] = None
        return out

    def _read(self, keys: list[bytes], deadline: float) -> tuple[int, object, list, dict]:
        """(whether the metadata key exists, the generation, each key's value
        or None, {index: length} of those over ``redis.max_value_bytes``), in
        one round trip unless a value over the limit turns up unannounced."""
        limit = self.settings.max_value_bytes
        now = time.monotonic()
        with self._lock:
            large = {k: self._large[key][1] for k, key in enumerate(keys)
                     if key in self._large and self._large[key][0] > now}
        for _ in range(3):
            ask = [key for k, key in enumerate(keys) if k not in large]
            commands: list[tuple] = [("EXISTS", self._meta_key), ("GET", self._gen_key)]
            if ask:
                commands.append(("MGET", *ask))
            try:
                exists, generation, *got = self._call(
                    commands, deadline, (limit + OVERHEAD_NBYTES) * (len(ask) + 2) + 1024,
                    limit + OVERHEAD_NBYTES)
            except ValueTooLarge:
                lengths = self._call([("STRLEN", key) for key in keys], deadline)
                until = time.monotonic() + LARGE_KEEP_S
                with self._lock:
                    if len(self._large) >= LARGE_KEYS:
                        self._large.clear()
                    for k, n in enumerate(lengths):
                        if n > limit:
                            large[k] = n
                            self._large[keys[k]] = (until, n)
                continue
            fetched = iter(got[0] if got else [])
            values = [None if k in large else next(fetched) for k in range(len(keys))]
            return exists, generation, values, large
        raise StoreDown(f"feature store {self.address}: values over redis.max_value_bytes keep "
                        "appearing under the request's keys", "error")

    def _gone(self, why: str) -> None:
        """Raise ``dataset_lost``: the store's data is gone (logged when first seen)."""
        if self.lost is None:
            log.error("feature store %s: its data is gone (%s: FLUSHALL, a restart without its "
                      "data, or a delete); answering store_unavailable until it is loaded again",
                      self.address, why)
        self.lost = why
        raise StoreDown(f"feature store {self.address}: its data is gone ({why}); "
                        "store_unavailable until it is loaded again", "dataset_lost")

    def _replaced(self, generation, deadline: float) -> None:
        """The store was loaded anew (another generation): served from now on
        when its layouts are this root's, else ``dataset_replaced``."""
        (meta,) = self._call([("GET", self._meta_key)], deadline)
        if meta is None:
            self._gone(f"its metadata key {self._meta_key} is gone")
        meta = orjson.loads(meta)
        mine = {s: layout.to_dict() for s, layout in self.layouts.items()}
        if meta.get("format") != FORMAT or meta.get("layouts") != mine:
            if self.lost != "replaced":
                log.error("feature store %s: replaced by a load with other record layouts "
                          "(generation %s); answering store_unavailable: restart the root with "
                          "the schema it was loaded for", self.address, generation)
            self.lost = "replaced"
            raise StoreDown(f"feature store {self.address}: replaced by a load with other "
                            "record layouts; restart the root with its schema", "dataset_replaced")
        log.warning("feature store %s: loaded anew (generation %s, was %s) with the same "
                    "layouts; serving it", self.address, generation, self.generation)
        self.meta, self.generation, self.lost = meta, generation, None

    def count(self, source: str) -> int:
        return int((self.meta or {}).get("counts", {}).get(source, 0))

    def id_range(self, source: str) -> tuple[int, int] | None:
        r = (self.meta or {}).get("id_ranges", {}).get(source)
        return (int(r[0]), int(r[1])) if r else None

    def describe(self) -> dict:
        meta = self.meta or {}
        return {"schema_fingerprint": meta.get("schema_fingerprint"), "committed": meta.get("committed")}

    # -- writing ----------------------------------------------------------------

    def put_many(self, source: str, ids, records: Iterable) -> int:
        if self.readonly:
            raise ValueError(f"feature store {self.address} is open read-only")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        records = list(records)
        if len(ids) != len(records):
            raise ValueError(f"{len(ids)} ids for {len(records)} records")
        if not len(ids):
            return 0
        # The last record of an id given twice wins, as in LMDB; counted once.
        last = dict(zip(ids.tolist(), range(len(ids))))
        keys = self._keys(source, list(last))
        values = [records[k] for k in last.values()]
        commands, start, nbytes = [], 0, 0
        for k, value in enumerate(values):
            nbytes += len(value)
            if nbytes >= WRITE_COMMAND_NBYTES or k == len(values) - 1:
                chunk = keys[start:k + 1]
                commands.append(("EXISTS", *chunk))
                commands.append(("MSET", *[x for pair in zip(chunk, values[start:k + 1]) for x in pair]))
                start, nbytes = k + 1, 0
        replies = self._call(commands)
        self._added[source] += len(keys) - sum(int(r) for r in replies[0::2])
        lo, hi = int(ids.min()), int(ids.max())
        have = self._range.get(source) or [lo, hi]
        self._range[source] = [min(have[0], lo), max(have[1], hi)]
        return len(ids)

    def commit(self) -> None:
        if self._pending is None:
            raise ValueError(f"feature store {self.address}: not open for a load (create_feature_store)")
        schema, wanted = self._pending
        old = self.meta or {}
        # A load into a loaded store (same layouts: `create` checked) adds to its counts.
        counts = {s: int(old.get("counts", {}).get(s, 0)) + self._added[s] for s in SOURCES}
        if self._recount:
            for s in SOURCES:
                counts[s], self._range[s] = self._scan(s)
        self.meta = {"format": FORMAT, "schema_fingerprint": schema.fingerprint,
                     "layouts": {s: wanted[s].to_dict() for s in SOURCES}, "counts": counts,
                     "id_ranges": {s: self._range.get(s) or None for s in SOURCES},
                     "committed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        # A first load (into an empty or emptied server) starts a new generation.
        generation = self.generation if old and self.generation else uuid.uuid4().hex.encode()
        self._call([("SET", self._meta_key, orjson.dumps(self.meta)),
                    ("SET", self._gen_key, generation), ("DEL", self._loading_key)])
        self.generation = generation
        self.loading = None

    def _scan(self, source: str) -> tuple[int, list[int]]:
        """(count, [lowest, highest] id) of ``source``'s keys, by SCAN (a pass
        over the database)."""
        cursor, total, bounds = b"0", 0, []   # type: tuple[bytes, int, list[int]]
        prefix = self._prefix[source]
        while True:
            ((cursor, keys),) = self._call([("SCAN", cursor, "MATCH", prefix + b"*", "COUNT", 10_000)])
            ids = [int(k[len(prefix):]) for k in keys] + bounds
            total += len(keys)
            bounds = [min(ids), max(ids)] if ids else []
            if int(cursor) == 0:
                return total, bounds

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()


__all__ = ["RedisStore", "parse_address"]
