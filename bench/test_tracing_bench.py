"""What tracing costs the root (docs/operations.md, "Tracing").

A real root (`python -m rootproc`) over the tests/root world (its 13-feature
schema, three models on two real leaves, LMDB), sent REQUESTS requests one
at a time (CANDIDATES candidates, every model), tracing off and on (the
``file`` exporter, spans written by its batch thread). Measured: the root
process's CPU per request (user + system from /proc, every thread: the
exporter's included), and the client's round trip (pytest-benchmark's
rounds: one request each). Off is the default: the request path then only
tests ``trace is None``; on makes 9 root spans a request (and the leaves 4
each, not measured here: their CPU is theirs).

    .venv/bin/python -m pytest bench/test_tracing_bench.py --benchmark-only -s

``TRIMMER_BENCH_TRACING_BEFORE=DIR`` adds a case "before": the root run from
another checkout (its kernel built in place), e.g. the code before tracing.

Quick mode (`make test`): 30 requests; nothing asserted but that each is ok.
Full: reported, not asserted (a 2-core machine's neighbours move the CPU
figures by more than tracing does when off).
"""
from __future__ import annotations

import os
import sys

import pytest
from quick import knob

from rootproc.client.scoring_client import ScoringClient
from tests.root.conftest import leaves_healthy
from tests.root.world import CANDIDATE_IDS, build_world, root_config, write_root_config
from tests.support.procs import STARTED_PIDS, ManagedProcess, ProcessRunner

pytest.importorskip("opentelemetry.sdk")

REQUESTS = knob("TRIMMER_BENCH_TRACING_REQUESTS", 400, 30)
CANDIDATES = 100
BEFORE = os.environ.get("TRIMMER_BENCH_TRACING_BEFORE")
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S   # utime + stime


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("tracing-world"))
    runner = ProcessRunner(tmp_path_factory.mktemp("tracing-procs"))
    try:
        endpoints = {}
        for name, models in {"leaf-0": ["ctr@3", "eng@1"], "leaf-1": ["div@2"]}.items():
            endpoints[name] = runner.leaf(world["repo"], models=models, name=name,
                                          args=["--max-wait-ms", "0"]).endpoint
        yield world, runner, endpoints
    finally:
        runner.close()


@pytest.mark.parametrize("tracing", ["before", "off", "on"])
def test_root_cost_of_tracing(benchmark, fleet, tmp_path, tracing):
    world, runner, endpoints = fleet
    if tracing == "before" and not BEFORE:
        pytest.skip("TRIMMER_BENCH_TRACING_BEFORE names no checkout")
    name = f"root-tracing-{tracing}"
    bind = runner.endpoint(name)
    overrides = ({"tracing": {"exporter": "file", "file": str(tmp_path / "spans.jsonl")}}
                 if tracing == "on" else {})
    cfg = root_config(world, endpoints, bind, name=name, **overrides)
    path = write_root_config(tmp_path / f"{name}.json", cfg)
    argv = [sys.executable, "-m", "rootproc", "--config", path]
    if tracing == "before":   # `-m` imports from the working directory first
        root = ManagedProcess(name, argv, str(tmp_path / f"{name}.log"), bind,
                              [bind[len("ipc://"):]], {"PYTHONPATH": BEFORE}, cwd=BEFORE)
        runner.procs.append(root)
        STARTED_PIDS.add(root.pid)
    else:
        root = runner.spawn(name, argv, endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
    root.wait_ready(30, ready=leaves_healthy)
    cands = CANDIDATE_IDS[:CANDIDATES]
    try:
        with ScoringClient(root.endpoint) as client:
            calls = [0]

            def one():
                res = client.score(101, cands, deadline_ms=5000)
                assert res.ok and not res.errors, (res.error, res.errors)
                calls[0] += 1
            for _ in range(20):   # warm-up: plans, caches, the exporter's thread
                one()
            before, calls[0] = cpu_s(root.pid), 0
            # --benchmark-disable (quick mode) runs it once: the requests are counted.
            benchmark.pedantic(one, rounds=REQUESTS, iterations=1)
            used, n = cpu_s(root.pid) - before, calls[0]
    finally:
        root.signal()
        root.wait(30)
    per_request_us = used / n * 1e6
    benchmark.extra_info.update(tracing=tracing, requests=n, candidates=CANDIDATES,
                                root_cpu_us_per_request=round(per_request_us))
    print(f"\ntracing {tracing}: root CPU {per_request_us:.0f} us a request "
          f"({n} requests, {CANDIDATES} candidates, 3 models)")
    if tracing == "on":
        assert os.path.getsize(tmp_path / "spans.jsonl") > 0, "tracing on wrote no span"
