"""Faults and attacks against real roots and leaves: the root tests' world,
continuous load that keeps its own tally, and a scripted leaf peer.

`Load` keeps a few requests in flight against one root and counts what an
operator would: requests sent, answered (ok, every model scored), failed
(any error, per request or per model) and lost (no reply at all). Tests
print the tally, so a run shows its figures (`pytest -s`).

`FakeLeaf` is a ROUTER socket in the test process that speaks the root ↔
leaf protocol as a script says: what its pongs list, whether it says it is
draining, whether it answers pings at all, and the error every score request
gets. It stands in for a leaf where a test needs one to behave in a way a
real leaf only does for an instant (a process still starting, a drain).
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import zmq

from rootproc.client import ScoringClient
from tests.root.world import (
    CANDIDATE_IDS,
    USER_IDS,
    build_world,
    direct,
    expected_features,
)

REQUESTS = [(int(USER_IDS[i]), CANDIDATE_IDS[19 * i: 19 * i + 24]) for i in range(4)]
MODELS = ("ctr@3", "eng@1")


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("faults-world"))
    w["expected"] = []
    for user, cands in REQUESTS:
        feats = expected_features(w["users"], w["cands"], user, cands)
        w["expected"].append({key: direct(w, key, feats, len(cands)) for key in MODELS})
    return w


def wait_for(what: str, check, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Load(threading.Thread):
    """Continuous scoring of ``models`` against one root, ``in_flight`` requests
    at a time, until `stop`."""

    def __init__(self, endpoint: str, models=MODELS, in_flight: int = 4, deadline_ms: int = 5000):
        super().__init__(daemon=True)
        self.endpoint, self.models, self.in_flight = endpoint, list(models), in_flight
        self.deadline_ms = deadline_ms
        self.sent = 0
        self.replies: list = []      # (monotonic time, request index, ScoreResult)
        self.lost = 0
        self._halt = threading.Event()

    def run(self) -> None:
        index = {}
        with ScoringClient(self.endpoint, timeout_ms=10_000) as client:
            while not self._halt.is_set() or client.in_flight:
                while not self._halt.is_set() and client.in_flight < self.in_flight:
                    user, cands = REQUESTS[self.sent % len(REQUESTS)]
                    rid = client.submit(user, cands, models=self.models,
                                        deadline_ms=self.deadline_ms)
                    index[rid] = self.sent % len(REQUESTS)
                    self.sent += 1
                res = client.receive(self.deadline_ms + 3000)
                if res is None:
                    self.lost += client.in_flight
                    return
                self.replies.append((time.monotonic(), index.pop(res.id), res))

    def stop(self) -> Load:
        self._halt.set()
        self.join(30)
        assert not self.is_alive(), "load thread did not finish"
        return self

    def failures(self) -> list:
        return [res for _, _, res in self.replies if not res.ok or res.errors]

    def tally(self, label: str) -> dict:
        failed = len(self.failures())
        figures = {"sent": self.sent, "answered": len(self.replies) - failed, "failed": failed,
                   "lost": self.lost}
        print(f"\n{label}: {figures}")
        return figures

    def check(self, world) -> None:
        """No failure, no lost request, every score what the model computes."""
        assert self.lost == 0, f"{self.lost} request(s) got no reply"
        bad = self.failures()
        assert not bad, [(r.error, r.errors) for r in bad[:5]]
        assert self.replies
        for _, idx, res in self.replies:
            for key in self.models:
                np.testing.assert_allclose(res.scores[key], world["expected"][idx][key],
                                           rtol=1e-5, atol=1e-4, err_msg=key)


class FakeLeaf(threading.Thread):
    """A scripted leaf peer on ``endpoint`` (see the module docstring)."""

    def __init__(self, endpoint: str, models: dict, *, pid: int | None = None,
                 answer_pings: bool = True, draining: bool = False, score_error: str = "overloaded"):
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.models = dict(models)          # model version -> signature hash
        self.pid = pid or os.getpid()
        self.answer_pings = answer_pings
        self.draining = draining
        self.score_error = score_error
        self.scores: list = []              # (monotonic time, header) of each score request
        self.pongs: list = []               # (monotonic time, draining) of each pong sent
        self._halt = threading.Event()
        self._ready = threading.Event()
        self._ctx = zmq.Context()

    def start(self) -> FakeLeaf:
        super().start()
        assert self._ready.wait(5), "fake leaf did not bind"
        return self

    def pongs_since(self, t: float, draining: bool | None = None) -> int:
        return sum(1 for at, d in list(self.pongs) if at >= t and (draining is None or d == draining))

    def scores_since(self, t: float) -> int:
        return sum(1 for at, _ in list(self.scores) if at >= t)

    def run(self) -> None:
        import orjson
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        self._ready.set()
        try:
            while not self._halt.is_set():
                if not sock.poll(20):
                    continue
                frames = sock.recv_multipart()
                # A DEALER's message is [routing id, header(, payload)].
                envelope, header = frames[:1], orjson.loads(frames[1])
                now = time.monotonic()
                if header.get("type") == "ping":
                    if not self.answer_pings:
                        continue
                    models = [{"model": k, "signature_hash": h, "ready": True}
                              for k, h in self.models.items()]
                    reply = {"v": 1, "type": "pong", "id": header.get("id"), "ok": True,
                             "role": "leaf", "name": "fake", "pid": self.pid, "device": "cpu",
                             "draining": self.draining, "models": models}
                    self.pongs.append((now, self.draining))
                elif header.get("type") == "score":
                    self.scores.append((now, header))
                    reply = {"v": 1, "type": "error", "id": header.get("id"), "ok": False,
                             "error": {"kind": self.score_error, "message": "fake leaf"}}
                else:
                    continue
                sock.send_multipart(envelope + [orjson.dumps(reply)])
        finally:
            sock.close(0)
            self._ctx.term()
            if self.endpoint.startswith("ipc://"):
                try:
                    os.unlink(self.endpoint[len("ipc://"):])
                except FileNotFoundError:
                    pass

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
