"""A leaf peer that breaks the protocol: the root keeps serving and every
client request still gets its one reply.

The protocol is public (a leaf may be written in another language), so the
root must survive whatever a leaf sends. The misbehaving leaf is a ROUTER
socket served by a thread of this test process; leaf-0 is a real leaf and
the root a real process.
"""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import orjson
import pytest
import zmq

from rootproc.client.scoring_client import ScoringClient

from .conftest import spawn_root
from .world import CANDIDATE_IDS, GAP_MODEL, USER_IDS

pytestmark = pytest.mark.slow

CANDS = CANDIDATE_IDS[:16]
USER = int(USER_IDS[0])
DEEP = 300  # deeper than a JSON encoder will nest (orjson: 254)


def nested(depth: int):
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


class BadLeaf:
    """Serves div@2 as "leaf-1": pongs with ``pong_fields``, score replies from
    ``answer(header)`` (a list of frames); runs until `close`."""

    def __init__(self, endpoint: str, pong_fields: dict, answer):
        self.endpoint, self.pong_fields, self.answer = endpoint, pong_fields, answer
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.scored = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, head, *_ = self.sock.recv_multipart()
            header = orjson.loads(head)
            if header["type"] == "ping":
                pong = {"v": 1, "type": "pong", "id": header["id"], "ok": True, "role": "leaf",
                        "name": "leaf-1", "pid": os.getpid(),
                        "models": [{"model": "div@2", "ready": True}], **self.pong_fields}
                self.sock.send_multipart([ident, orjson.dumps(pong)])
            else:
                self.scored += 1
                self.sock.send_multipart([ident] + self.answer(header))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        if self.endpoint.startswith("ipc://") and os.path.exists(self.endpoint[6:]):
            os.unlink(self.endpoint[6:])


def scores(header: dict) -> list:
    return [orjson.dumps({"v": 1, "type": "scores", "id": header["id"], "ok": True,
                          "model": header["model"], "rows": header["rows"]}),
            np.full(header["rows"], 0.5, dtype="<f4").tobytes()]


@pytest.fixture(scope="module")
def leaf0(world, tmp_path_factory):
    from tests.support.procs import ProcessRunner
    runner = ProcessRunner(tmp_path_factory.mktemp("leaf0"))
    try:
        runner.leaf(world["repo"], models=["ctr@3", "eng@1", GAP_MODEL[0]], name="leaf-0",
                    args=["--max-wait-ms", "0"])
        yield runner.procs[-1].endpoint
    finally:
        runner.close()


@pytest.fixture
def bad_leaf(process_runner):
    leaves = []

    def start(pong_fields=None, answer=scores):
        leaves.append(BadLeaf(process_runner.endpoint("leaf-1"), pong_fields or {}, answer))
        return leaves[-1]
    try:
        yield start
    finally:
        for leaf in leaves:
            leaf.close()


def score_all(root, **kw):
    with ScoringClient(root.endpoint) as client:
        res = client.score(USER, CANDS, models=["ctr@3", "eng@1", "div@2"], timeout_ms=10_000, **kw)
    assert res.ok, res.error
    return res


def test_pong_with_malformed_fields(world, leaf0, bad_leaf, process_runner):
    # A pid that is not a number (checked against live processes for shm
    # slots) and a signature hash that is not a string (compared with the config's).
    leaf1 = bad_leaf({"pid": "leaf-one", "models": [
        {"model": "div@2", "ready": True, "signature_hash": 5}]})
    root = spawn_root(process_runner, world, {"leaf-0": leaf0, "leaf-1": leaf1.endpoint},
                      shm={"enabled": True, "slot_bytes": 1 << 16, "slots": 4},
                      leaves=[{"name": "leaf-0", "endpoints": [leaf0]},
                              {"name": "leaf-1", "endpoints": [leaf1.endpoint],
                               "transport": "shm"}])
    for _ in range(3):
        res = score_all(root)
        assert not res.errors and sorted(res.scores) == ["ctr@3", "div@2", "eng@1"], res.errors
        time.sleep(0.2)  # let health ticks (every 100 ms), which check the pid, go by
    assert root.returncode is None


def test_reply_with_an_unusable_id(world, leaf0, bad_leaf, process_runner):
    def answer(header):
        frames = scores(header)
        frames[0] = orjson.dumps({**orjson.loads(frames[0]), "id": [header["id"]]})
        return frames
    leaf1 = bad_leaf(answer=answer)
    root = spawn_root(process_runner, world, {"leaf-0": leaf0, "leaf-1": leaf1.endpoint})
    res = score_all(root, deadline_ms=300)
    assert res.errors["div@2"]["kind"] == "deadline", res.errors
    assert sorted(res.scores) == ["ctr@3", "eng@1"]
    leaf1.answer = scores
    res = score_all(root)
    assert not res.errors and len(res.scores) == 3, res.errors
    assert root.returncode is None


def test_error_reply_that_cannot_be_forwarded(world, leaf0, bad_leaf, process_runner):
    def answer(header):
        # The stdlib encoder nests deeper than orjson, which the root uses.
        return [json.dumps({"v": 1, "type": "error", "id": header["id"], "ok": False,
                            "error": {"kind": "model_error", "message": "boom",
                                      "detail": nested(DEEP)}}).encode()]
    leaf1 = bad_leaf(answer=answer)
    root = spawn_root(process_runner, world, {"leaf-0": leaf0, "leaf-1": leaf1.endpoint})
    res = score_all(root)
    # Its kind and words pass; the detail nested past what a reply can carry does not.
    assert res.errors["div@2"] == {"kind": "model_error", "message": "boom"}, res.errors
    assert sorted(res.scores) == ["ctr@3", "eng@1"]
    leaf1.answer = scores
    res = score_all(root)
    assert not res.errors and len(res.scores) == 3, res.errors
    assert root.returncode is None
