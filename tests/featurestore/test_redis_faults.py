"""A Redis feature store that goes down, stalls or restarts, seen from a reader and its cache."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from _trim.errors import StoreUnavailable
from rootproc.featurestore import StoreDown, open_feature_store
from rootproc.featurestore import cli as store_cli
from rootproc.featurestore.cache import CachedStore
from rootproc.settings import RedisSettings
from tests.root.world import SCHEMA

SETTINGS = RedisSettings(timeout_ms=200, connect_timeout_ms=50, retries=1, backoff_ms=100,
                         backoff_max_ms=400)


@pytest.fixture
def loaded(redis_server, tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    url = redis_server.url("faults")
    assert store_cli.main(["synth", "--feature-store", url, "--schema", str(tmp_path / "schema.json"),
                           "--users", "20", "--candidates", "600", "--no-progress"]) == 0
    redis_server.save()     # a restart loads it back
    return redis_server, url


def timed(fn):
    t0 = time.monotonic()
    try:
        return fn(), None, time.monotonic() - t0
    except StoreUnavailable as exc:
        return None, exc, time.monotonic() - t0


def wanted(n=256):
    return {"user": [3], "candidate": list(range(n))}


def test_down_fails_fast_backs_off_and_reconnects_by_itself(loaded):
    server, url = loaded
    with open_feature_store(url, SETTINGS) as store:
        before = store.get_many(wanted())
        server.kill()
        _, exc, took = timed(lambda: store.get_many(wanted()))
        assert isinstance(exc, StoreDown) and exc.reason == "connection" and took < 0.1, (exc, took)
        assert "faults" in str(exc) and store.down
        _, exc, took = timed(lambda: store.get_many(wanted()))
        assert exc.reason == "backoff" and took < 0.01 and "next attempt in" in str(exc)
        time.sleep(0.15)
        _, exc, _ = timed(lambda: store.get_many(wanted()))
        assert exc.reason == "connection"               # tried again, still down: longer backoff
        server.start()
        deadline = time.monotonic() + 3
        while (got := timed(lambda: store.get_many(wanted())))[1] is not None:
            assert time.monotonic() < deadline, got[1]
            time.sleep(0.05)
        assert got[0] == before and not store.down


def test_a_restart_between_reads_costs_no_error(loaded):
    """The idle connection the server closed fails once; the retry on a new one answers."""
    server, url = loaded
    with open_feature_store(url, SETTINGS) as store:
        before = store.get_many(wanted())
        server.kill()
        server.start()
        assert store.get_many(wanted()) == before


def test_a_stalled_server_costs_one_bounded_wait(loaded):
    server, url = loaded
    with open_feature_store(url, SETTINGS) as store:
        store.get_many(wanted())
        server.pause()
        try:
            _, exc, took = timed(lambda: store.get_many(wanted(), timeout_s=0.05))
            assert exc.reason == "timeout" and 0.04 < took < 0.15, (exc, took)
            _, exc, took = timed(lambda: store.get_many(wanted(), timeout_s=0.05))
            assert exc.reason == "backoff" and took < 0.01
            time.sleep(0.12)
            _, exc, took = timed(lambda: store.get_many(wanted()))   # its own bound: 200 ms
            assert exc.reason == "timeout" and 0.15 < took < 0.3, (exc, took)
        finally:
            server.resume()
        time.sleep(SETTINGS.backoff_max_ms / 1000)
        assert store.get_many(wanted(4))["candidate"][3] is not None


def test_the_cache_serves_stale_entries_only_for_requests_it_can_answer_whole(loaded):
    server, url = loaded
    with open_feature_store(url, SETTINGS) as store:
        cached = CachedStore(store, size=1000, ttl_s=0.05, stale_if_error_s=60)
        fresh = cached.fetch(wanted(100))
        time.sleep(0.1)                           # every entry expired
        server.kill()
        assert cached.fetch(wanted(100)) == fresh
        assert cached.stale_served == {"user": 1, "candidate": 100}
        with pytest.raises(StoreUnavailable, match="1 of the request's 102 entities are not cached"):
            cached.fetch({"user": [3], "candidate": list(range(101))})
        assert cached.store_errors == {"connection": 1, "backoff": 1}
        assert cached.down_since is not None
        never = CachedStore(store, size=1000, ttl_s=0.05, stale_if_error_s=0)
        with pytest.raises(StoreUnavailable, match="101 of the request's 101 entities"):
            never.fetch({"user": [3], "candidate": list(range(100))})
        server.start()
        time.sleep(SETTINGS.backoff_max_ms / 1000)
        assert cached.fetch(wanted(100)) == fresh and cached.down_since is None
        trips = cached.round_trips
        assert sum(trips.counts) == 4 and trips.total_s > 0


def test_fresh_entries_need_no_store_at_all(loaded):
    server, url = loaded
    with open_feature_store(url, SETTINGS) as store:
        cached = CachedStore(store, size=1000, ttl_s=None)
        first = cached.fetch(wanted(50))
        server.kill()
        for _ in range(3):
            assert cached.fetch(wanted(50)) == first
        assert cached.store_errors == {} and sum(cached.round_trips.counts) == 1
        records = store.layout("candidate").decode_many(first["candidate"])
        assert np.isfinite(records["ctr_7d"]).all()
