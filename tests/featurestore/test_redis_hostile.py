"""Real roots on a Redis that is corrupted, flooded, trickled or emptied under load
(issue 25): every request gets exactly one reply within its deadline plus
SLACK_S, none is `internal`, every fault is logged and counted, and the
root's memory after the fault is within a bound of before."""
from __future__ import annotations

import numpy as np
import pytest
import redis

from rootproc.client.scoring_client import ScoringClient
from tests.featurestore.test_root_redis import (
    DEADLINE_MS,
    drive,
    leaves,  # noqa: F401  (the module's leaves)
    load_redis,
    metrics,
    summary,
)
from tests.featurestore.trickle_proxy import TrickleProxy
from tests.root.conftest import spawn_root
from tests.root.world import CANDIDATE_IDS, USER_IDS
from tests.support.procs import free_tcp_port

pytestmark = pytest.mark.slow

SLACK_S = 0.25
REDIS = {"timeout_ms": 100, "connect_timeout_ms": 50, "backoff_ms": 50, "backoff_max_ms": 400}
CACHED = {"size": 10_000, "ttl_s": 0.2, "stale_if_error_s": 0}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def check(name, entries, kinds_allowed, deadline_ms=DEADLINE_MS):
    kinds = {kind for *_, kind, _ in entries}
    assert kinds <= kinds_allowed, (name, kinds)
    late = [(round(lat * 1000), kind) for _, lat, kind, _ in entries
            if lat > deadline_ms / 1000 + SLACK_S]
    assert not late, (name, late)


def two_roots(world, leaves, process_runner, url, **extra):  # noqa: F811
    port_a, port_b = free_tcp_port(), free_tcp_port()
    redis_cfg = {**REDIS, **extra.pop("redis", {})}
    a = spawn_root(process_runner, world, leaves, name="root-uncached", feature_store=url,
                   cache={"size": 0}, redis=redis_cfg, metrics_port=port_a,
                   deadline_ms=DEADLINE_MS, **extra)
    b = spawn_root(process_runner, world, leaves, name="root-cached", feature_store=url,
                   cache=CACHED, redis=redis_cfg, metrics_port=port_b,
                   deadline_ms=DEADLINE_MS, **extra)
    return {"uncached": (a, port_a), "cached": (b, port_b)}


def warm(roots):
    with ScoringClient(roots["cached"][0].endpoint) as c:
        for user in USER_IDS:
            assert c.score(int(user), CANDIDATE_IDS).ok


def bad_records(port) -> dict:
    return {k: v for k, v in metrics(port).items() if k.startswith("trimmer_root_store_bad_records")}


CORRUPT = {   # candidate id -> a value no candidate record can be
    1000: b"", 1001: b"\x01", 1003: b"\xff" * 4096, 1004: bytes(range(256)) * 3,
}


def test_undecodable_values_are_missing_never_internal(world, leaves, redis_server,  # noqa: F811
                                                       process_runner, capsys):
    url = redis_server.url("corrupt")
    load_redis(world, url)
    r = redis.Redis(port=redis_server.port)
    good = r.get(b"corrupt:c:1002")
    user = r.get(b"corrupt:u:%d" % USER_IDS[0])
    values = dict(CORRUPT)
    values[1002] = good[:-1]                 # one byte short
    values[1005] = good + b"\x00"            # one byte long
    values[1006] = good + good               # doubled
    values[1007] = user                      # a user's record under a candidate key
    roots = two_roots(world, leaves, process_runner, url)
    warm(roots)
    before = {name: rss_mb(proc.pid) for name, (proc, _) in roots.items()}
    clients = {name: ScoringClient(proc.endpoint) for name, (proc, _) in roots.items()}
    try:
        def corrupt():
            for cid, value in values.items():
                r.set(b"corrupt:c:%d" % cid, value)
            r.set(b"corrupt:u:%d" % USER_IDS[1], b"\x00" * 3)
        log = drive(clients, [(0.5, None), (2.5, corrupt)])
        # Every request naming a corrupt candidate: still scored (counted missing).
        with ScoringClient(roots["uncached"][0].endpoint) as c:
            res = c.score(int(USER_IDS[1]), np.array(sorted(values), dtype=np.int64))
            assert res.ok and not res.errors, (res.error, res.errors)
    finally:
        for c in clients.values():
            c.close()
    r.close()
    figures = {name: summary(entries) for name, entries in log.items()}
    with capsys.disabled():
        print(f"\ncorrupt values under load: {figures}, rss MB before {before}, after "
              f"{ {n: rss_mb(p.pid) for n, (p, _) in roots.items()} }")
    for name, (proc, port) in roots.items():
        check(name, log[name], {"ok"})
        text = proc.log(200_000)
        assert "Traceback" not in text and "internal" not in text, text[-3000:]
        for cid in values:
            assert text.count(f"corrupt:c:{cid}") == 1, (cid, text[-3000:])
        assert text.count(f"corrupt:u:{USER_IDS[1]}") == 1
        seen = bad_records(port)
        assert seen.get('trimmer_root_store_bad_records_total{reason="corrupt",source="candidate"}',
                        0) >= len(values) - 1, seen
        assert rss_mb(proc.pid) < before[name] + 30
        assert proc.returncode is None


def put_huge(r, key: bytes, mib: int) -> None:
    staging = key + b":staging"
    r.delete(staging)
    chunk = b"\x00" * (1 << 20)
    for _ in range(mib):
        r.append(staging, chunk)
    r.rename(staging, key)


def test_a_value_over_the_size_limit_is_refused_unread(world, leaves, redis_server,  # noqa: F811
                                                       process_runner, capsys):
    url = redis_server.url("huge")
    load_redis(world, url)
    r = redis.Redis(port=redis_server.port)
    roots = two_roots(world, leaves, process_runner, url, redis={"max_value_bytes": 1 << 16})
    warm(roots)
    before = {name: rss_mb(proc.pid) for name, (proc, _) in roots.items()}
    clients = {name: ScoringClient(proc.endpoint) for name, (proc, _) in roots.items()}
    try:
        # Built a MiB at a time under another key, then renamed into place at once:
        # one 64 MiB SET blocks Redis itself for a third of a second or more, which
        # would make requests late whatever the root did.
        log = drive(clients, [(0.5, None), (3.0, lambda: put_huge(r, b"huge:c:1010", 64)),
                              (1.0, lambda: r.delete(b"huge:c:1010"))])
    finally:
        for c in clients.values():
            c.close()
    r.close()
    after = {name: rss_mb(proc.pid) for name, (proc, _) in roots.items()}
    figures = {name: summary(entries) for name, entries in log.items()}
    with capsys.disabled():
        print(f"\n64 MiB value under load: {figures}, rss MB before {before}, after {after}")
    for name, (proc, port) in roots.items():
        # Writing and deleting 64 MiB keeps single-threaded Redis busy: on a
        # loaded machine past a root's 100 ms budget now and then, and those
        # requests are store_unavailable, as any Redis that slow. Rare, then:
        # what the value itself does is asserted below (counted, never read).
        check(name, log[name], {"ok", "store_unavailable"})
        ok = sum(1 for *_, kind, _ in log[name] if kind == "ok")
        assert ok >= 0.9 * len(log[name]), (name, figures[name])
        assert "Traceback" not in proc.log(200_000)
        assert proc.log(200_000).count("huge:c:1010") == 1
        seen = bad_records(port)
        assert seen.get('trimmer_root_store_bad_records_total{reason="too_large",source="candidate"}',
                        0) >= 1, seen
        # Never read whole: the 64 MiB never reached the root.
        assert after[name] < before[name] + 16, (before, after)


@pytest.mark.parametrize("threads", [1, 3])
def test_a_trickling_redis_costs_each_request_its_budget_only(world, leaves, redis_server,  # noqa: F811
                                                              process_runner, threads, capsys):
    url = redis_server.url("trickle")
    load_redis(world, url)
    proxy = TrickleProxy(redis_server.port).start()
    try:
        proxied = f"redis://127.0.0.1:{proxy.port}/0?namespace=trickle"
        roots = two_roots(world, leaves, process_runner, proxied, threads=threads)
        warm(roots)
        clients = {name: ScoringClient(proc.endpoint) for name, (proc, _) in roots.items()}
        try:
            log = drive(clients, [(0.5, None), (4.0, lambda: proxy.trickle(64, 0.02)),
                                  (2.5, proxy.flow)])
        finally:
            for c in clients.values():
                c.close()
    finally:
        proxy.close()
    figures = {name: summary(entries) for name, entries in log.items()}
    with capsys.disabled():
        print(f"\ntrickling Redis, threads={threads}: {figures}")
    for name, (proc, port) in roots.items():
        check(name, log[name], {"ok", "store_unavailable"})
        during = [kind for *_, kind, phase in log[name] if phase == 1]
        if name == "uncached":
            assert "store_unavailable" in during
            seen = metrics(port)
            assert sum(v for k, v in seen.items()
                       if k.startswith("trimmer_root_store_errors_total")) >= 1, seen
        entries = log[name]
        last = [kind for t0, _, kind, _ in entries if t0 > entries[-1][0] - 1.0]
        assert last and set(last) == {"ok"}, (name, last)
        assert proc.returncode is None


@pytest.mark.parametrize("loss", ["flushall", "restart-empty"])
def test_a_flushed_store_is_loud_until_loaded_again(world, leaves, redis_server,  # noqa: F811
                                                    process_runner, loss, capsys):
    url = redis_server.url("flushed")
    load_redis(world, url)
    r = redis.Redis(port=redis_server.port)
    roots = two_roots(world, leaves, process_runner, url)
    warm(roots)
    clients = {name: ScoringClient(proc.endpoint) for name, (proc, _) in roots.items()}

    def lose():
        if loss == "flushall":
            r.flushall()
        else:               # nothing saved: the server comes back empty
            redis_server.kill()
            redis_server.start()
    try:
        log = drive(clients, [(0.5, None), (2.0, lose), (3.0, lambda: load_redis(world, url))])
    finally:
        for c in clients.values():
            c.close()
    r.close()
    figures = {name: summary(entries) for name, entries in log.items()}
    with capsys.disabled():
        print(f"\n{loss} under load, then a reload: {figures}")
    for name, (proc, port) in roots.items():
        check(name, log[name], {"ok", "store_unavailable"})
        during = [kind for t0, _, kind, phase in log[name] if phase == 1]
        # Nothing scored from defaults once the data is gone (after the cache's 0.2 s TTL).
        late_in_phase = [kind for t0, _, kind, phase in log[name]
                         if phase == 1 and t0 > log[name][0][0] + 0.5 + 0.6]
        assert late_in_phase and set(late_in_phase) == {"store_unavailable"}, (name, during)
        entries = log[name]
        last = [kind for t0, _, kind, _ in entries if t0 > entries[-1][0] - 1.0]
        assert last and set(last) == {"ok"}, (name, last)
        text = proc.log(200_000)
        assert "its data is gone" in text, text[-3000:]
        seen = metrics(port)
        assert seen.get('trimmer_root_store_errors_total{reason="dataset_lost"}', 0) >= 1, seen
        assert proc.returncode is None


def test_each_reply_says_how_many_entities_were_missing_and_a_mostly_empty_answer_fails(
        world, leaves, redis_server, process_runner, capsys):  # noqa: F811
    url = redis_server.url("partial")
    load_redis(world, url)
    r = redis.Redis(port=redis_server.port)
    lenient = spawn_root(process_runner, world, leaves, name="root-lenient", feature_store=url,
                         cache={"size": 0}, redis=REDIS, deadline_ms=DEADLINE_MS)
    strict = spawn_root(process_runner, world, leaves, name="root-strict", feature_store=url,
                        cache={"size": 0}, redis=REDIS, deadline_ms=DEADLINE_MS,
                        missing_max_share=0.5)
    gone = CANDIDATE_IDS[:240]                 # 80 % of the candidates lost, the metadata kept
    r.delete(*[b"partial:c:%d" % c for c in gone])
    r.close()
    few = np.concatenate([CANDIDATE_IDS[:3], CANDIDATE_IDS[-7:]])    # 3 of 11 entities missing
    most = np.concatenate([CANDIDATE_IDS[:30], CANDIDATE_IDS[-2:]])  # 30 of 33
    with ScoringClient(lenient.endpoint) as a, ScoringClient(strict.endpoint) as b:
        whole = a.score(int(USER_IDS[0]), CANDIDATE_IDS[-10:])
        assert whole.ok and whole.missing == 0
        for client in (a, b):
            res = client.score(int(USER_IDS[0]), few)
            assert res.ok and not res.errors and res.missing == 3, (res.error, res.missing)
        res = a.score(int(USER_IDS[0]), most)
        assert res.ok and res.missing == 30
        res = b.score(int(USER_IDS[0]), most)
        assert not res.ok and res.error["kind"] == "store_unavailable", res.error
        assert res.error["missing"] == 30 and "30 of the request's 33" in res.error["message"]
    assert "Traceback" not in strict.log(100_000)
