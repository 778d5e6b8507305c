"""No request holds the root's serving loop (issue 24): while one large
request's records are fetched, its batch built and its models encoded, the
loop still answers pings (and reads its leaves' replies and pongs), with
the default ``threads`` (1).

The scene: the demo's schema, a synthetic LMDB store, every feature sent to
each of many models (``trim: off``), two echo peers (bench/echo_peer.py:
decode, answer at once) as the leaves, so that the root's CPU is the work.
One request of 2048 candidates takes the root hundreds of milliseconds;
pings sent meanwhile, from another client, must not wait for it: the
longest a ping waits is asserted against the request's own time in the
root (its ``timing_us``), measured in the same run, never against a clock
constant.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from rootproc.demo.schema_gen import demo_schema, model_feature_sets
from rootproc.featurestore import cli as store_cli
from signatures.schema import FeatureSchema
from tests.support.procs import Client, ProcessRunner

pytestmark = pytest.mark.slow

ECHO_PEER = str(Path(__file__).resolve().parents[2] / "bench" / "echo_peer.py")
USERS, ITEMS, ROWS, MODELS = 10, 2048, 2048, 12


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    base = tmp_path_factory.mktemp("loopheld")
    schema_path = base / "schema.json"
    schema_path.write_text(json.dumps(demo_schema(0, 1.0)))
    schema = FeatureSchema.load(schema_path)
    assert store_cli.main(["synth", "--feature-store", str(base / "store"), "--schema",
                           str(schema_path), "--users", str(USERS), "--candidates", str(ITEMS),
                           "--no-progress"]) == 0
    models = {f"{m}@1": dense + ragged
              for m, (dense, ragged) in model_feature_sets(schema, models=MODELS).items()}
    keys = sorted(models)
    placement = {"leaf-0": keys[0::2], "leaf-1": keys[1::2]}
    bundle = {"format": 1, "id": "b-loopheld", "schema_fingerprint": schema.fingerprint,
              "models": {k: {"features": v} for k, v in models.items()},
              "leaves": {leaf: {"current": ks} for leaf, ks in placement.items()}}
    (base / "bundle.json").write_text(json.dumps(bundle))
    runner = ProcessRunner(base)
    try:
        leaves = {}
        for leaf, ks in placement.items():
            ep = runner.endpoint(leaf)
            runner.spawn(leaf, [sys.executable, ECHO_PEER, ep, ",".join(ks)], endpoint=ep,
                         ipc_paths=[ep[len("ipc://"):]]).wait_ready(30)
            leaves[leaf] = ep
        yield {"base": base, "leaves": leaves, "runner": runner, "placement": placement}
    finally:
        runner.close()


def spawn_root(scene, name: str, **overrides):
    base, runner = scene["base"], scene["runner"]
    bind = runner.endpoint(name)
    cfg = {"name": name, "bind": [bind], "schema": str(base / "schema.json"),
           "bundle": str(base / "bundle.json"), "feature_store": str(base / "store"),
           "leaves": [{"name": leaf, "endpoints": [ep], "models": scene["placement"][leaf]}
                      for leaf, ep in scene["leaves"].items()],
           "trim": "off", "deadline_ms": 60_000, "max_deadline_ms": 60_000,
           "metrics_port": None, "ping_interval_ms": 200, **overrides}
    path = base / f"{name}.json"
    path.write_text(json.dumps(cfg))
    proc = runner.spawn(name, [sys.executable, "-m", "rootproc", "--config", str(path)],
                        endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
    proc.wait_ready(60, ready=lambda pong: bool(pong.get("leaves")) and all(
        link.get("healthy") for link in pong["leaves"]))
    return proc


def large_request_with_pings(root) -> tuple[object, list[float]]:
    """One large request, and the wait of every ping sent while it was in the
    root (each sent 5 ms after the previous one is answered)."""
    cands = np.arange(ROWS, dtype=np.int64)
    waits: list[float] = []
    with ScoringClient(root.endpoint, timeout_ms=60_000) as client, Client(root.endpoint) as pinger:
        assert client.score(1, cands[:8]).ok   # warm: the trim plans compiled
        rid = client.submit(2, cands)
        time.sleep(0.02)   # the root reads it first
        while True:
            t0 = time.monotonic()
            header, _ = pinger.request({"type": "ping"}, timeout=60)
            assert header["type"] == "pong"
            waits.append(time.monotonic() - t0)
            res = client.receive(5)
            if res is not None:
                assert res.id == rid
                return res, waits


def test_a_large_request_does_not_hold_the_loop_from_pings(scene):
    root = spawn_root(scene, "root-loop")
    res, waits = large_request_with_pings(root)
    assert res.ok and not res.errors, (res.error, res.errors)
    in_root_s = sum(res.timing_us[k] for k in ("fetch", "preprocess", "trim")) / 1e6
    assert in_root_s >= 0.15, f"the request took the root only {in_root_s:.3f} s: not large"
    waits.sort()
    median = waits[len(waits) // 2]
    print(f"ping waits: median {median:.3f} s, max {waits[-1]:.3f} s of {len(waits)} pings; "
          f"request in root {in_root_s:.3f} s")
    # Held for one model's message at a time, not for the whole request: a
    # held loop answers one ping, after the request. The median, not the
    # maximum, so that one scheduling stall on a loaded machine is not a verdict.
    assert len(waits) >= 3 and median < in_root_s / 4, (
        f"pings waited {waits} s while the request took the root {in_root_s:.3f} s")
