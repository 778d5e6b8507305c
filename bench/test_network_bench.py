"""Trimming where it matters: a remote leaf behind a bandwidth-limited link.

The leaf runs in its own network namespace (``rootproc.demo.netns.RemoteHost``)
joined to this one by a veth pair that ``tc tbf`` limits to each rate in
``RATES``; a real root (``python -m rootproc``) in the default namespace
reaches it over tcp. The scenario is the demo's (``build_scenario``: four
models reading 15-60% of the schema, here all on the one remote leaf) at a
moderate scale, and the same closed-loop load (``rootproc.client.loadgen.run_load``)
goes through a fresh root per mode: every feature, trimmed, and each with
LZ4. Reported per case in ``extra_info``: req/s, p50/p90/p99 ms, MB/request
on the wire, root and leaf CPU ms/request, and the ceiling the link puts on
req/s (its measured bulk rate / MB per request).

Asserted: on the limited link (the first rate) trimmed throughput >= 1.5x
all-features throughput, measured in the same run. Physics sets it: trimming
cuts the bytes per request 2.7x here, and while the link is the bottleneck
throughput follows the bytes (measured: 2.7x at 200 Mbit/s, both modes at
their link ceiling); 1.5x leaves room for the CPU side of a busy 2-core
machine. At 1 Gbit/s trimmed meets the CPU ceiling too, so it is reported,
not asserted (see bench/RESULTS.md).

Needs root and ``ip netns``; skipped otherwise, saying why (in ``make test``
too: a CI runner without root skips it)::

    sudo .venv/bin/python -m pytest bench/test_network_bench.py --benchmark-only -s
    TRIMMER_BENCH_NET_RATES=100mbit,1gbit TRIMMER_BENCH_NET_REQUESTS=60 ...   # other rates / lengths

Quick mode (``TRIMMER_BENCH_QUICK=1``, `make test`; bench/quick.py): the
limited rate only, the schema at scale 0.1, 16 candidates, 8 requests per
mode: every request must be ok without model errors and trimming must cut
the bytes 1.5x (fixed by the scenario); the throughput ratio is reported,
not asserted (8 requests do not measure it).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
from quick import goals_asserted, knob

from rootproc.client.health import ping
from rootproc.client.loadgen import run_load
from rootproc.demo.netns import RemoteHost, unavailable_reason
from rootproc.demo.node import cpu_seconds
from rootproc.demo.scenario import build_scenario

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"remote-leaf bench: {REASON}")

RATES = knob("TRIMMER_BENCH_NET_RATES", "200mbit,1gbit", "200mbit").split(",")
SCALE = knob("TRIMMER_BENCH_NET_SCALE", 0.5, 0.1)
CANDIDATES = knob("TRIMMER_BENCH_NET_CANDIDATES", 64, 16)
REQUESTS = knob("TRIMMER_BENCH_NET_REQUESTS", 60, 8)
CONCURRENCY = knob("TRIMMER_BENCH_NET_CONCURRENCY", 4, 4)
MODES = {  # name -> (trim, compression); "all" first: the others compare to it
    "all": ("off", "none"), "trimmed": ("on", "none"),
    "all-lz4": ("off", "lz4"), "trimmed-lz4": ("on", "lz4")}
LIMITED = RATES[0]   # the rate the 1.5x assertion holds on
MIN_SPEEDUP = 1.5
LEAF_PORT = 5555
SINK_PORT = 5556
results: dict = {}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    base = tmp_path_factory.mktemp("netbench")
    return build_scenario(base / "scenario", leaves=1, users=500, candidates=4000, seed=0,
                          scale=SCALE, log=lambda msg: None)


@pytest.fixture(scope="module", params=RATES)
def remote_leaf(request, scenario):
    """(rate, leaf endpoint, leaf pid, link bytes/s) with the leaf in its namespace."""
    rate = request.param
    logs = scenario.run_dir / "logs"
    logs.mkdir(exist_ok=True)
    models = scenario.placement["leaf-0"]
    with RemoteHost(rate) as host:
        endpoint = host.endpoint(LEAF_PORT)
        argv = [sys.executable, "-m", "leafproc", "--name", "leaf-0", "--repo", str(scenario.repo),
                "--bind", endpoint, "--threads", "1", "--insecure"]   # a private namespace
        for key in models:
            argv += ["--model", key]
        leaf = host.spawn(argv, logs / f"leaf-{rate}.log")
        wait_for(endpoint, lambda pong: sum(m.get("ready", False) for m in pong.get("models", []))
                 >= len(models), leaf, logs / f"leaf-{rate}.log")
        link = link_bytes_per_s(host)
        yield rate, endpoint, leaf.pid, link


def wait_for(endpoint, ready, proc, log, timeout_s=60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{endpoint} exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        try:
            if ready(ping(endpoint, timeout_ms=300)):
                return
        except TimeoutError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{endpoint} not ready after {timeout_s} s:\n{Path(log).read_text()[-3000:]}")


def link_bytes_per_s(host: RemoteHost, nbytes: int = 32 << 20) -> float:
    """Bulk tcp rate root -> namespace: the ceiling any mode can reach."""
    sink = host.spawn([sys.executable, "-c", SINK.format(addr=host.address, port=SINK_PORT)],
                      os.devnull)
    try:
        for _ in range(100):  # bounded: the sink binds within a second
            try:
                conn = socket.create_connection((host.address, SINK_PORT), timeout=5)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the link probe's sink never listened")
        with conn:
            chunk = bytes(1 << 20)
            t0 = time.perf_counter()
            for _ in range(nbytes >> 20):
                conn.sendall(chunk)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(60)
            received = int(conn.recv(64) or 0)
            elapsed = time.perf_counter() - t0
        assert received == nbytes, (received, nbytes)
        return nbytes / elapsed
    finally:
        sink.wait(10)


SINK = """
import socket
s = socket.socket()
s.bind(("{addr}", {port}))
s.listen(1)
c, _ = s.accept()
n = 0
while (b := c.recv(1 << 20)):
    n += len(b)
c.sendall(str(n).encode())
c.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Root:
    """A real root process for one mode, in the default namespace."""

    def __init__(self, scenario, leaf_endpoint: str, name: str, trim: str, compression: str):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        config = {"name": name, "bind": [self.endpoint], "schema": str(scenario.schema_path),
                  "config_store": str(scenario.config_store), "stage": "production",
                  "feature_store": str(scenario.feature_store),
                  "leaves": [{"name": "leaf-0", "endpoints": [leaf_endpoint],
                              "models": scenario.placement["leaf-0"]}],
                  "trim": trim, "compression": compression, "deadline_ms": 30_000,
                  "max_candidates": max(2048, CANDIDATES), "metrics_port": None}
        path = scenario.run_dir / f"{name}.json"
        path.write_text(json.dumps(config))
        self.log = scenario.run_dir / "logs" / f"{name}.log"
        self.log.parent.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "rootproc", "--config", str(path)],
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(self.endpoint, lambda pong: pong.get("leaves")
                     and all(link.get("healthy") for link in pong["leaves"]), self.proc, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def load(endpoint: str, scenario, requests: int) -> Namespace:
    return Namespace(endpoint=[endpoint], requests=requests, concurrency=CONCURRENCY, rate=0.0,
                     candidates=CANDIDATES, feature_store=str(scenario.feature_store), users=0,
                     candidate_ids=0, models=None, deadline_ms=None, timeout_ms=60_000, seed=0)


@pytest.mark.parametrize("mode", list(MODES))
def test_remote_leaf(benchmark, scenario, remote_leaf, mode):
    rate, leaf_endpoint, leaf_pid, link = remote_leaf
    trim, compression = MODES[mode]
    root = Root(scenario, leaf_endpoint, f"root-{mode}-{rate}", trim, compression)
    stats = {}
    try:
        run_load(load(root.endpoint, scenario, 8))  # connections, caches, allocators
        cpu0 = cpu_seconds(root.proc.pid), cpu_seconds(leaf_pid)
        benchmark.group = f"remote leaf @ {rate}"
        benchmark.pedantic(lambda: stats.update(run_load(load(root.endpoint, scenario, REQUESTS))),
                           rounds=1, iterations=1)
        root_cpu, leaf_cpu = (cpu_seconds(p) - c for p, c in zip((root.proc.pid, leaf_pid), cpu0))
    finally:
        root.stop()
    ok = stats["ok"]
    assert ok == stats["requests"] == REQUESTS and not stats["errors"] and not stats["model_errors"], stats
    mb = stats["wire_bytes"] / ok / 1e6
    lat = stats["latency_ms"]
    row = {"rate": rate, "mode": mode, "req_per_s": stats["throughput_rps"], "p50_ms": lat["p50"],
           "p90_ms": lat["p90"], "p99_ms": lat["p99"], "mb_per_request": round(mb, 3),
           "root_cpu_ms": round(1000 * root_cpu / ok, 1), "leaf_cpu_ms": round(1000 * leaf_cpu / ok, 1),
           "link_mb_per_s": round(link / 1e6, 1), "link_ceiling_req_per_s": round(link / 1e6 / mb, 1)}
    benchmark.extra_info.update(row)
    results[rate, mode] = row
    print(f"\n{rate:>8} {mode:<12} {row['req_per_s']:6.1f} req/s "
          f"(link allows {row['link_ceiling_req_per_s']}), "
          f"p50/p90/p99 {lat['p50']:.0f}/{lat['p90']:.0f}/{lat['p99']:.0f} ms, {mb:.2f} MB/request, "
          f"CPU ms/request root {row['root_cpu_ms']} leaf {row['leaf_cpu_ms']}")

    base = results.get((rate, "all"))
    if mode == "trimmed" and rate == LIMITED and base is not None:
        speedup = row["req_per_s"] / base["req_per_s"]
        bytes_ratio = base["mb_per_request"] / row["mb_per_request"]
        benchmark.extra_info.update(speedup_vs_all=round(speedup, 2), bytes_ratio=round(bytes_ratio, 2))
        # The bytes ratio is fixed by the scenario; below 1.5x the premise changed, not the code.
        assert bytes_ratio >= MIN_SPEEDUP, f"trimming saves only {bytes_ratio:.2f}x the bytes here"
        print(f"trimmed: {speedup:.2f}x the throughput of all features, {bytes_ratio:.2f}x fewer bytes")
        if goals_asserted():
            assert speedup >= MIN_SPEEDUP, (
                f"at {rate} trimmed does {row['req_per_s']} req/s, {speedup:.2f}x all features "
                f"({base['req_per_s']} req/s); bytes ratio {bytes_ratio:.2f}x")
