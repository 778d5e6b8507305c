"""The root's CPU per request against the memory floor (issue 15, goal 1).

The demo's scenario (its 1,518-feature schema, its four models reading
15-60 % of it, 256 candidates a request) served by a real root process
(`python -m rootproc`) from an LMDB store, its batches sent to two echo
peers (`echo_peer.py`: decode in place, answer at once), so that the root is
the only real work. Requests go one at a time (no queueing), after a
warm-up; the root's CPU is its process's user + system time (/proc: every
thread, zmq's I/O thread and the kernel's copies included) divided by the
requests.

The floor, measured in the same run: one ``memcpy`` (np.copyto between two
warm buffers, best of 30) of the bytes a request must move: the raw records
it reads (one user, 256 candidates), the batch it writes, and the messages
it writes (every model's trimmed share); also reported against a lower
floor without the batch (records + messages: what a root that wrote each
model's columns from the records straight into its messages would move),
the goal issue 24 sets (<= 2x) and this root does not meet yet
(bench/RESULTS.md). Asserted: root CPU per request <=
2x the floor with shared-memory links ("shm"); over sockets ("ipc") the
kernel copies each message once more into the socket, which the ratio
reports. Also reported: the root's own per-stage wall times (fetch,
preprocess, trim: its ``timing_us``), the bytes, and the same stages' CPU
measured in this process with the root's code (thread time), so that
"send" is the rest of the root's CPU.

Threads (goal 2): one root process's throughput at ``threads`` 1 and 3
(rootproc/workers.py: one batch worker and two; 2 also means one), closed
loop at concurrency 4 over shared memory, reported side by side
(``extra_info``); nothing is asserted, as on this 2-core machine the echo
peers and the client share the second core.

``TRIMMER_BENCH_ROOT_CHECKOUT=DIR`` runs the root from another checkout (its
kernel built in place), e.g. the code before this work, for its ratio.

    .venv/bin/python -m pytest bench/test_root_cpu_bench.py --benchmark-only -s

Quick mode (``TRIMMER_BENCH_QUICK=1``, `make test`; bench/quick.py): 5
warm-up and 10 measured requests (20 for each threads case). Every request
must still be ok, without model errors, and every model's batch trimmed; the
ratio to the floor is reported, not asserted (ten requests at the clock's
10 ms resolution do not measure it).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from floor import memcpy_seconds
from quick import goals_asserted, knob

import _trim
from rootproc.client.scoring_client import ScoringClient
from rootproc.demo.schema_gen import demo_schema, model_feature_sets
from rootproc.featurestore import cli as store_cli
from rootproc.featurestore import open_feature_store
from rootproc.featurestore.cache import CachedStore
from rootproc.preprocess.preprocessor import Preprocessor
from signatures.repository.module_info import DEFAULT_OUTPUTS, TensorSpec, signature_hash
from signatures.schema import FeatureSchema
from tests.support.procs import STARTED_PIDS, ManagedProcess, ProcessRunner

USERS, ITEMS, ROWS = 300, 4000, 256
WARMUP = knob("TRIMMER_BENCH_ROOT_WARMUP", 20, 5)
REQUESTS = knob("TRIMMER_BENCH_ROOT_REQUESTS", 120, 10)
SCALE = float(os.environ.get("TRIMMER_BENCH_ROOT_SCALE", 1.0))
CHECKOUT = os.environ.get("TRIMMER_BENCH_ROOT_CHECKOUT")
ECHO_PEER = str(Path(__file__).with_name("echo_peer.py"))
GOAL = 2.0
results: dict = {}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def requests(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(USERS)), rng.integers(ITEMS, size=ROWS).tolist()) for _ in range(n)]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    base = tmp_path_factory.mktemp("rootcpu")
    schema_path = base / "schema.json"
    schema_path.write_text(json.dumps(demo_schema(0, SCALE)))
    schema = FeatureSchema.load(schema_path)
    assert store_cli.main(["synth", "--feature-store", str(base / "store"), "--schema",
                           str(schema_path), "--users", str(USERS), "--candidates", str(ITEMS),
                           "--no-progress"]) == 0
    models = {f"{m}@1": dense + ragged for m, (dense, ragged) in model_feature_sets(schema).items()}
    keys = sorted(models)
    placement = {"leaf-0": keys[0::2], "leaf-1": keys[1::2]}
    # Each version's signature hash as signatures/ derives it (module_info.json: inputs and
    # outputs), in the bundle and in the peers' pongs: without it the root trims nothing.
    hashes = {k: signature_hash([TensorSpec.from_feature(schema[n]) for n in v], DEFAULT_OUTPUTS)
              for k, v in models.items()}
    content = {"models": {k: {"features": v, "signature_hash": hashes[k]}
                          for k, v in models.items()},
               "leaves": {leaf: {"current": ks} for leaf, ks in placement.items()}}
    bundle = {"format": 1, "id": "b-" + hashlib.sha256(json.dumps(content).encode()).hexdigest()[:12],
              "schema_fingerprint": schema.fingerprint, **content}
    (base / "bundle.json").write_text(json.dumps(bundle))
    runner = ProcessRunner(base)
    try:
        leaves = {}
        for leaf, ks in placement.items():
            ep = runner.endpoint(leaf)
            peer_models = ",".join(f"{k}={hashes[k]}" for k in ks)
            runner.spawn(leaf, [sys.executable, ECHO_PEER, ep, peer_models], endpoint=ep,
                         ipc_paths=[ep[len("ipc://"):]]).wait_ready(30)
            leaves[leaf] = ep
        yield {"base": base, "schema": schema, "models": models, "leaves": leaves,
               "runner": runner, "placement": placement}
    finally:
        runner.close()


def spawn_root(scene, transport: str, threads: int = 1):
    base, runner = scene["base"], scene["runner"]
    name = f"root-{transport}-{threads}"
    bind = runner.endpoint(name)
    cfg = {"name": name, "bind": [bind], "schema": str(base / "schema.json"),
           "bundle": str(base / "bundle.json"), "feature_store": str(base / "store"),
           "leaves": [{"name": leaf, "endpoints": [ep], "models": scene["placement"][leaf]}
                      for leaf, ep in scene["leaves"].items()],
           "trim": "on", "compression": "none", "deadline_ms": 10_000, "metrics_port": None,
           "ping_interval_ms": 500,
           "shm": {"enabled": transport == "shm", "slot_bytes": 8 << 20, "slots": 16}}
    if threads > 1:
        cfg["threads"] = threads
    path = base / f"{name}.json"
    path.write_text(json.dumps(cfg))
    argv = [sys.executable, "-m", "rootproc", "--config", str(path)]
    if CHECKOUT:   # run from there: `-m` imports from the working directory first
        proc = ManagedProcess(name, argv, str(base / f"{name}.log"), bind,
                              [bind[len("ipc://"):]], {"PYTHONPATH": CHECKOUT}, cwd=CHECKOUT)
        runner.procs.append(proc)
        STARTED_PIDS.add(proc.pid)
    else:
        proc = runner.spawn(name, argv, endpoint=bind, ipc_paths=[bind[len("ipc://"):]])

    def ready(pong):
        links = pong.get("leaves", [])
        return bool(links) and all(link.get("healthy") for link in links)

    proc.wait_ready(60, ready=ready)
    return proc


def in_process_stages(scene, reqs) -> dict:
    """fetch / preprocess / trim CPU (thread time, ms) with the root's own code."""
    schema, models = scene["schema"], scene["models"]
    store = open_feature_store(str(scene["base"] / "store"))
    cached = CachedStore(store, 0, None)
    union = sorted({n for names in models.values() for n in names})
    pre = Preprocessor(schema, union, store.layouts)
    plans = [_trim.compile_plan(pre.layout, names) for names in models.values()]
    slots = [np.zeros(8 << 20, np.uint8) for _ in plans]
    out: dict[str, list[float]] = {"fetch": [], "preprocess": [], "trim": []}
    raw, batch_nbytes = [], []
    try:
        for i, (user, cands) in enumerate(reqs):
            c0 = time.thread_time()
            with cached.reading({"user": [user], "candidate": cands}) as got:
                c1 = time.thread_time()
                batch = pre.build(got["user"], got["candidate"])
                c2 = time.thread_time()
                raw.append(sum(len(r) for r in got["candidate"]) + len(got["user"][0]))
            for plan, slot in zip(plans, slots):
                _trim.encode_into(plan, batch, slot)
            c3 = time.thread_time()
            batch_nbytes.append(batch.nbytes)
            if i >= WARMUP:
                out["fetch"].append(c1 - c0)
                out["preprocess"].append(c2 - c1)
                out["trim"].append(c3 - c2)
    finally:
        store.close()
    stages = {k: round(1000 * float(np.mean(v)), 3) for k, v in out.items()}
    return {"stages_cpu_ms": stages, "raw_nbytes": float(np.mean(raw)),
            "batch_nbytes": float(np.mean(batch_nbytes))}


@pytest.mark.parametrize("transport", ["ipc", "shm"])
def test_root_cpu_per_request_vs_memory_floor(benchmark, scene, transport):
    reqs = requests(WARMUP + REQUESTS, seed=3)
    local = in_process_stages(scene, reqs)
    root = spawn_root(scene, transport)
    timing: dict[str, list[int]] = {}
    sent: list[int] = []
    faults: list[int] = []

    def run() -> float:
        with ScoringClient(root.endpoint, timeout_ms=30_000) as client:
            for user, cands in reqs[:WARMUP]:
                assert client.score(user, cands).ok
            cpu0, faults0 = cpu_seconds(root.pid), minor_faults(root.pid)
            for user, cands in reqs[WARMUP:]:
                res = client.score(user, cands)
                assert res.ok and not res.errors, (res.error, res.errors)
                assert all(r["trimmed"] for r in res.results)
                sent.append(sum(r["bytes_sent"] for r in res.results))
                for stage, us in res.timing_us.items():
                    timing.setdefault(stage, []).append(us)
            faults.append(minor_faults(root.pid) - faults0)
            return cpu_seconds(root.pid) - cpu0

    benchmark.group = "root CPU per request (demo scenario, 256 candidates)"
    cpu = benchmark.pedantic(run, rounds=1, iterations=1)
    root.stop()
    cpu_ms = 1000 * cpu / REQUESTS
    moved = local["raw_nbytes"] + local["batch_nbytes"] + float(np.mean(sent))
    floor_ms = 1000 * memcpy_seconds(int(moved))
    ratio = cpu_ms / floor_ms
    # The lower floor (issue 24): what a root that wrote each model's columns
    # from the records straight into its messages would move, no batch between.
    lower_floor_ms = 1000 * memcpy_seconds(int(local["raw_nbytes"] + float(np.mean(sent))))
    stages = local["stages_cpu_ms"]
    info = {"root_cpu_ms_per_request": round(cpu_ms, 3), "floor_ms": round(floor_ms, 3),
            "ratio_to_floor": round(ratio, 2), "goal": GOAL,
            "lower_floor_ms": round(lower_floor_ms, 3),
            "ratio_to_lower_floor": round(cpu_ms / lower_floor_ms, 2),
            "mb_moved": {"raw_records": round(local["raw_nbytes"] / 1e6, 2),
                         "batch": round(local["batch_nbytes"] / 1e6, 2),
                         "messages": round(float(np.mean(sent)) / 1e6, 2)},
            "root_wall_ms": {k: round(float(np.mean(v)) / 1000, 3) for k, v in timing.items()
                             if k in ("fetch", "preprocess", "trim")},
            "in_process_cpu_ms": stages,
            "send_and_rest_cpu_ms": round(cpu_ms - sum(stages.values()), 3),
            "root_minor_faults_per_request": round(faults[0] / REQUESTS),
            "checkout": CHECKOUT or "this one", "load": os.getloadavg()[0]}
    benchmark.extra_info.update(info)
    results[transport] = info
    print(f"\n{transport}: {json.dumps(info)}")
    if transport == "shm" and not CHECKOUT and goals_asserted():
        assert ratio <= GOAL, f"root CPU {cpu_ms:.2f} ms/request is {ratio:.2f}x the floor"


threads_rps: dict = {}


@pytest.mark.parametrize("threads", [1, 3])
def test_root_throughput_by_threads(benchmark, scene, threads):
    from argparse import Namespace

    from rootproc.client.loadgen import run_load
    root = spawn_root(scene, "shm", threads)
    load = Namespace(endpoint=[root.endpoint], requests=REQUESTS * 2, concurrency=4, rate=0.0,
                     candidates=ROWS, feature_store=str(scene["base"] / "store"), users=0,
                     candidate_ids=0, models=None, deadline_ms=None, timeout_ms=30_000, seed=7)
    run_load(Namespace(**{**vars(load), "requests": WARMUP}))
    cpu0 = cpu_seconds(root.pid)
    stats = benchmark.pedantic(lambda: run_load(load), rounds=1, iterations=1)
    cpu = cpu_seconds(root.pid) - cpu0
    root.stop()
    assert stats["ok"] == load.requests, stats
    threads_rps[threads] = stats["throughput_rps"]
    benchmark.group = "root throughput by threads (shm, concurrency 4)"
    benchmark.extra_info.update(threads=threads, req_per_s=stats["throughput_rps"],
                                p50_ms=stats["latency_ms"]["p50"],
                                root_cpu_ms_per_request=round(1000 * cpu / stats["ok"], 3),
                                load=os.getloadavg()[0])
    if 1 in threads_rps and threads == 3:
        benchmark.extra_info["vs_one_worker"] = round(threads_rps[3] / threads_rps[1], 2)
    print(f"\nthreads={threads}: {stats['throughput_rps']} req/s, root CPU "
          f"{1000 * cpu / stats['ok']:.2f} ms/request, p50 {stats['latency_ms']['p50']} ms")
