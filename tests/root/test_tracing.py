"""Tracing (signatures/runtime/tracing.py): one request followed from the
client's traceparent through a real root's stages to two real leaves' queue
and forward, every span in one trace with its parent links; a root and
leaves with tracing off write nothing and carry no traceparent."""
from __future__ import annotations

import json
import os
import time

import pytest

from rootproc.client.scoring_client import ScoringClient

from .conftest import spawn_root
from .world import CANDIDATE_IDS

pytest.importorskip("opentelemetry.sdk")
pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
ROOT_STAGES = {"intake", "fetch", "preprocess", "trim", "send", "leaves", "merge"}


def spans(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def hexid(value) -> str | None:
    return None if value is None else value.removeprefix("0x")


def wait_for_spans(paths: dict, want, timeout: float = 30.0) -> dict:
    """{process: its spans of TRACE_ID} once ``want(that)`` holds."""
    end = time.monotonic() + timeout
    while True:
        got = {who: [s for s in spans(p) if hexid(s["context"]["trace_id"]) == TRACE_ID]
               for who, p in paths.items()}
        if want(got):
            return got
        assert time.monotonic() < end, f"spans never came: {got}"
        time.sleep(0.1)


def test_one_request_is_one_trace_across_root_and_leaves(world, process_runner, tmp_path):
    files = {name: str(tmp_path / f"{name}.spans") for name in ("root", "leaf-0", "leaf-1")}
    hosted = {"leaf-0": ["ctr@3", "eng@1"], "leaf-1": ["div@2"]}
    endpoints = {}
    for name, models in hosted.items():
        leaf = process_runner.leaf(world["repo"], models=models, name=name, args=[
            "--max-wait-ms", "0", "--tracing-exporter", "file", "--tracing-file", files[name]])
        endpoints[name] = leaf.endpoint
    root = spawn_root(process_runner, world, endpoints,
                      tracing={"exporter": "file", "file": files["root"]})
    with ScoringClient(root.endpoint) as client:
        res = client.score(101, CANDIDATE_IDS[:20], models=["ctr@3", "div@2"], deadline_ms=5000,
                           traceparent=f"00-{TRACE_ID}-{CLIENT_SPAN}-01")
        assert res.ok and not res.errors, res.errors
        # Untraced requests start traces of their own, never this one.
        assert client.score(102, CANDIDATE_IDS[:5], deadline_ms=5000).ok

    def complete(got):
        return (ROOT_STAGES | {"trimmer.root.score"} <= {s["name"] for s in got["root"]}
                and all({"trimmer.leaf.score", "queue", "forward"}
                        <= {s["name"] for s in got[leaf]} for leaf in hosted))
    got = wait_for_spans(files, complete)
    root_spans = {s["name"]: s for s in got["root"] if s["name"] != "send"}
    request = root_spans["trimmer.root.score"]
    assert hexid(request["parent_id"]) == CLIENT_SPAN        # the client's span is its parent
    rid = hexid(request["context"]["span_id"])
    for stage in ROOT_STAGES - {"send"}:
        assert hexid(root_spans[stage]["parent_id"]) == rid, stage
    trim = hexid(root_spans["trim"]["context"]["span_id"])
    sends = {s["attributes"]["trimmer.model"]: s for s in got["root"] if s["name"] == "send"}
    assert sorted(sends) == ["ctr@3", "div@2"]
    for key, send in sends.items():
        assert hexid(send["parent_id"]) == trim
        leaf = send["attributes"]["trimmer.leaf"]
        assert leaf == ("leaf-1" if key == "div@2" else "leaf-0")
        (score,) = [s for s in got[leaf] if s["name"] == "trimmer.leaf.score"]
        # The leaf's span hangs under the root span that sent it its batch.
        assert hexid(score["parent_id"]) == hexid(send["context"]["span_id"])
        assert score["attributes"]["trimmer.model"] == key
        sid = hexid(score["context"]["span_id"])
        for stage in ("queue", "forward"):
            (span,) = [s for s in got[leaf] if s["name"] == stage]
            assert hexid(span["parent_id"]) == sid
    # One trace id across the three processes, nothing else in it.
    everything = [s for who in got.values() for s in who]
    assert {hexid(s["context"]["trace_id"]) for s in everything} == {TRACE_ID}
    other = [s for s in spans(files["root"]) if s["name"] == "trimmer.root.score"
             and hexid(s["context"]["trace_id"]) != TRACE_ID]
    assert other and all(s["parent_id"] is None for s in other)
