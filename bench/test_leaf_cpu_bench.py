"""A leaf's CPU per batch, driven directly with pre-encoded batches (issue 15, goal 4).

One leaf process (``--threads 1``, no dynamic batching) serves three models:
the demo's ``ctr`` (227 features) and ``hide`` (910 features), exported
from the demo's own scorer over its schema, and ``wide``, one
(256 x 4096) float32 input through a (4096 x 64) layer, the large-tensor
case where torch's intra-op threads work. This process sends each model's
trimmed batches (built by the root's preprocessing from a synthesised store)
one at a time and reads the leaf's CPU (user + system, every thread) from
/proc. Before the fix a model thread ran its ops on an OpenMP team sized to
the machine whose idle threads spin after each parallel op; the figure is
then per batch for each model. Reported, not asserted (the unit test,
tests/leaf/test_threads.py, checks the behaviour):

    .venv/bin/python -m pytest bench/test_leaf_cpu_bench.py --benchmark-only -s

``TRIMMER_BENCH_LEAF_CHECKOUT=DIR`` runs the leaf from another checkout
(e.g. the code before the fix) for comparison.

Quick mode (``TRIMMER_BENCH_QUICK=1``, `make test`; bench/quick.py): 2
warm-up and 3 measured batches per model, each answered ok with a score per
row; the CPU figure is printed as at full length.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from quick import knob

import _trim
from rootproc.demo.models import SubsetScorer
from rootproc.demo.schema_gen import demo_schema, model_feature_sets
from rootproc.featurestore import cli as store_cli
from rootproc.featurestore import open_feature_store
from rootproc.preprocess.preprocessor import Preprocessor
from signatures.derive.exporter import export
from signatures.schema import FeatureSchema
from tests.support.models import spec, write_model
from tests.support.procs import STARTED_PIDS, Client, ManagedProcess, ProcessRunner

ROWS = 256
BATCHES = knob("TRIMMER_BENCH_LEAF_BATCHES", 80, 3)
WARMUP = knob("TRIMMER_BENCH_LEAF_WARMUP", 10, 2)
CHECKOUT = os.environ.get("TRIMMER_BENCH_LEAF_CHECKOUT")
WIDE = 4096


class Wide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(WIDE, 64) / WIDE ** 0.5, requires_grad=False)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid((features["x"] @ self.w).sum(dim=1))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def leaf(tmp_path_factory):
    base = tmp_path_factory.mktemp("leafcpu")
    (base / "schema.json").write_text(json.dumps(demo_schema(0, 1.0)))
    schema = FeatureSchema.load(base / "schema.json")
    sets = model_feature_sets(schema)
    repo = base / "models"
    batches = {}
    assert store_cli.main(["synth", "--feature-store", str(base / "store"), "--schema",
                           str(base / "schema.json"), "--users", "20", "--candidates", "1000",
                           "--no-progress"]) == 0
    store = open_feature_store(str(base / "store"))
    pre = Preprocessor(schema, None, store.layouts)
    rng = np.random.default_rng(0)
    for i, model in enumerate(("ctr", "hide")):
        dense, ragged = sets[model]
        info = export(SubsetScorer(dense, ragged, i), repo, model, schema, version="1")
        plan = _trim.compile_plan(pre.layout, info.input_names)
        out = []
        for _ in range(8):
            got = store.get_many({"user": [int(rng.integers(20))],
                                  "candidate": rng.integers(1000, size=ROWS).tolist()})
            out.append(_trim.encode(plan, pre.build(got["user"], got["candidate"])))
        batches[info.key] = out
    store.close()
    write_model(repo, "wide", "1", [spec("x", shape=(WIDE,))], module=Wide())
    layout = _trim.Layout([_trim.ColumnSpec("x", "float32", (WIDE,))])
    wide = _trim.Batch.from_arrays(layout, {"x": rng.random((ROWS, WIDE), dtype=np.float32)}, ROWS)
    batches["wide@1"] = [_trim.encode(_trim.compile_plan(layout, ["x"]), wide)]
    runner = ProcessRunner(base)
    endpoint = runner.endpoint("leaf")
    argv = [sys.executable, "-m", "leafproc", "--repo", str(repo), "--bind", endpoint, "--name",
            "leaf", "--threads", "1", "--max-wait-ms", "0", "--metrics-port", "0"]
    for key in batches:
        argv += ["--model", key]
    try:
        if CHECKOUT:
            proc = ManagedProcess("leaf", argv, str(base / "leaf.log"), endpoint,
                                  [endpoint[len("ipc://"):]], {"PYTHONPATH": CHECKOUT}, cwd=CHECKOUT)
            runner.procs.append(proc)
            STARTED_PIDS.add(proc.pid)
        else:
            proc = runner.spawn("leaf", argv, endpoint=endpoint, ipc_paths=[endpoint[len("ipc://"):]])
        proc.wait_ready(120)
        yield proc, batches
    finally:
        runner.close()


@pytest.mark.parametrize("model", ["ctr@1", "hide@1", "wide@1"])
def test_leaf_cpu_per_batch(benchmark, leaf, model):
    proc, batches = leaf
    msgs = batches[model]
    with Client(proc.endpoint) as client:
        def one(k):
            header, scores = client.score(model, msgs[k % len(msgs)], ROWS, timeout=30)
            assert header.get("ok"), header
            assert scores is not None and len(scores) == ROWS

        for k in range(WARMUP):
            one(k)

        def run() -> float:
            c0 = cpu_seconds(proc.pid)
            for k in range(BATCHES):
                one(k)
            return cpu_seconds(proc.pid) - c0

        benchmark.group = "leaf CPU per batch (--threads 1, one at a time)"
        cpu = benchmark.pedantic(run, rounds=1, iterations=1)
    ms = 1000 * cpu / BATCHES
    benchmark.extra_info.update(leaf_cpu_ms_per_batch=round(ms, 3),
                                checkout=CHECKOUT or "this one", load=os.getloadavg()[0])
    print(f"\n{model}: leaf CPU {ms:.2f} ms per batch ({CHECKOUT or 'this checkout'})")
