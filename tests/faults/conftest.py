"""Faults and attacks against real roots and leaves: the rollout tests'
world and continuous load (`Load` keeps a tally: sent, answered, failed,
lost), and a scripted leaf peer.

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

import zmq

from tests.rollout.conftest import REQUESTS, Load, check_replies, wait_for, world  # noqa: F401


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
