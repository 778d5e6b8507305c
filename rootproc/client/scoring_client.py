"""Scoring client: send score requests to one or more roots.

    client = ScoringClient(["ipc:///run/trimmer/root-0.sock", "tcp://node:5550"])
    result = client.score(user=42, candidates=np.arange(256), models=["ctr@3"])
    result.scores["ctr@3"]      # float32 array, candidate order
    result.errors               # model -> {"kind": ..., "message": ...}

One DEALER socket connected to every root endpoint: zmq spreads requests
across the roots it is connected to, and replies are matched by request id,
so many requests can be in flight at once (`submit` / `receive`). Speaks
the protocol of docs/protocol.md and nothing else: a client in another
language does the same.

Roots whose tcp binds require CURVE take ``curve_server_public_key`` (the
root's ``NAME.key`` file, or its Z85 string) and ``curve_client_secret_key``
(this client's ``NAME.key_secret``; without it, a throwaway pair that only a
root allowing any key accepts). ipc endpoints stay plain. A handshake that
fails looks like silence; the client's timeout error then says why.

With one endpoint, a request the connection dropped before its reply (the
root stopped in the middle of it), or one submitted while the connection is
down, is answered `unavailable` by the client itself: every request gets
one reply (docs/protocol.md, rule ``client.connection-lost``). The asyncio
client (`async_client.AsyncScoringClient`) does the same.
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from _trim.transport.protocol import CANDIDATES_DTYPE, SCORES_DTYPE, pack_header, unpack_header

# Re-exported: the CLIs and tools take them from here.
from rootproc.client.connection import (  # noqa: F401
    HandshakeLog,
    add_curve_arguments,
    connect_dealer,
    curve_keys,
)

DEFAULT_TIMEOUT_MS = 5000
LATE_IDS_KEPT = 100_000   # ids answered by the client itself, whose late replies are dropped
# Why the client answered a request `unavailable` itself (after the endpoint).
NOT_SENT = ("is not connected (its connection dropped and no new one is up): the request "
            "was not sent")
LOST = ("closed the connection before answering (the root stopped or restarted): retry, "
        "here or on another root")


@dataclass
class ScoreResult:
    """A root's answer to one score request."""

    id: str
    ok: bool                                     # False: the whole request failed (see `error`)
    n: int = 0
    scores: dict = field(default_factory=dict)   # model -> float32 scores
    errors: dict = field(default_factory=dict)   # model -> error object
    results: list = field(default_factory=list)  # the reply's per-model entries
    timing_us: dict = field(default_factory=dict)
    error: dict | None = None
    latency_s: float = 0.0                       # client-side round trip
    root: str | None = None                      # name of the root that answered
    missing: int = 0                             # entities scored from default values

    @property
    def bytes_sent(self) -> dict:
        """model -> batch bytes the root sent to the leaf for it."""
        return {r["model"]: r.get("bytes_sent", 0) for r in self.results}

    def raise_for_error(self) -> ScoreResult:
        if not self.ok:
            raise ScoringError(self.error or {"kind": "internal", "message": "no error object"})
        if self.errors:
            model, err = next(iter(self.errors.items()))
            raise ScoringError({**err, "model": model})
        return self


class ScoringError(RuntimeError):
    def __init__(self, error: dict):
        super().__init__(f"{error.get('kind')}: {error.get('message')}")
        self.kind = error.get("kind")
        self.error = error


def build_request(rid: str, user: int, candidates, models=None, deadline_ms=None,
                  traceparent: str | None = None) -> list:
    """A score request's frames; ``traceparent``: the caller's W3C trace
    context, which a root with tracing on makes its spans children of."""
    header = {"type": "score", "id": rid, "user": int(user)}
    if models is not None:
        header["models"] = list(models)
    if deadline_ms is not None:
        header["deadline_ms"] = deadline_ms
    if traceparent is not None:
        header["traceparent"] = traceparent
    ids = np.ascontiguousarray(candidates, dtype=CANDIDATES_DTYPE)
    return [pack_header(header), ids]


def parse_reply(frames, latency_s: float = 0.0) -> ScoreResult:
    header = unpack_header(frames[0])
    rid = str(header.get("id"))
    if header["type"] == "error" or not header.get("ok", False):
        return ScoreResult(rid, False, error=header.get("error") or {"kind": "internal"},
                           latency_s=latency_s)
    if header["type"] != "scores":
        return ScoreResult(rid, False, error={"kind": "internal",
                                              "message": f"unexpected reply {header['type']!r}"})
    res = ScoreResult(rid, True, n=header.get("n", 0), results=header.get("results", []),
                      timing_us=header.get("timing_us", {}), latency_s=latency_s,
                      root=header.get("root"), missing=header.get("missing", 0))
    for r in res.results:
        if r.get("ok"):
            res.scores[r["model"]] = np.frombuffer(frames[r["frame"]], dtype=SCORES_DTYPE)
        else:
            res.errors[r["model"]] = r.get("error", {})
    return res


def answered_here(rid: str, endpoint: str, why: str, sent: float | None) -> ScoreResult:
    """The client's own `unavailable` reply to ``rid`` (rule `client.connection-lost`)."""
    return ScoreResult(rid, False, error={"kind": "unavailable", "message": f"{endpoint} {why}",
                                          "from": "client"},
                       latency_s=0.0 if sent is None else time.perf_counter() - sent)


class RequestIds:
    def __init__(self):
        self._prefix = f"{os.getpid():x}-{id(self) & 0xFFFFFF:x}-"
        self._count = itertools.count()

    def next(self) -> str:
        return self._prefix + format(next(self._count), "x")


class ScoringClient:
    """Synchronous client over one DEALER connected to every endpoint."""

    def __init__(self, endpoints, *, ctx: zmq.Context | None = None,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS, curve_server_public_key=None,
                 curve_client_secret_key=None):
        self.ctx = ctx or zmq.Context.instance()
        keys = curve_keys(curve_server_public_key, curve_client_secret_key)
        self.endpoints, self.socket, self.handshakes = connect_dealer(self.ctx, endpoints, keys,
                                                                      watch=True)
        self.timeout_ms = timeout_ms
        self._ids = RequestIds()
        self._sent: dict[str, float] = {}
        self._early: dict[str, ScoreResult] = {}
        # Requests this client answered itself (`unavailable`): a late reply
        # to one (sent again by zmq to the next process behind the endpoint)
        # is dropped, never a second reply.
        self._answered_here: dict[str, None] = {}

    def submit(self, user: int, candidates, models=None, deadline_ms=None,
               traceparent: str | None = None) -> str:
        """Send a request without waiting; returns its id (see `receive`).
        With one endpoint whose connection dropped and is not back, nothing
        is sent: its reply is `unavailable` at once (rule
        `client.connection-lost`)."""
        rid = self._ids.next()
        self._sent[rid] = time.perf_counter()
        self.handshakes.read()
        if self.handshakes.down:
            self._unavailable(rid, NOT_SENT)
            return rid
        self.socket.send_multipart(build_request(rid, user, candidates, models, deadline_ms,
                                                 traceparent), copy=False)
        return rid

    def _unavailable(self, rid: str, why: str) -> None:
        """Request ``rid``'s one reply, from the client itself."""
        sent = self._sent.pop(rid, None)
        self._early[rid] = answered_here(rid, self.endpoints[0], why, sent)
        self._answered_here[rid] = None
        while len(self._answered_here) > LATE_IDS_KEPT:
            del self._answered_here[next(iter(self._answered_here))]

    def _connection_lost(self) -> None:
        """The connection dropped after every reply it carried was read: the
        requests still waiting were lost with it (the root that read them
        can no longer answer), each answered `unavailable`."""
        self.handshakes.dropped = 0
        for rid in list(self._sent):
            self._unavailable(rid, LOST)

    def _recv_waiting(self) -> tuple[ScoreResult, bool] | None:
        """A reply waiting on the socket, without waiting, and whether a
        request of ours awaited it (False: one given up on, or no request of
        ours); late replies to requests answered here are dropped."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
            t = time.perf_counter()
            res = parse_reply([f.buffer for f in frames])
            sent = self._sent.pop(res.id, None)
            if sent is None and res.id in self._answered_here:
                del self._answered_here[res.id]
                continue
            if sent is not None:
                res.latency_s = t - sent
            return res, sent is not None

    def _wait_reply(self, timeout: int) -> tuple[ScoreResult, bool] | None:
        """The next reply from the socket within ``timeout`` ms (see
        `_recv_waiting`); None when none came, or once the connection's loss
        left the client's own replies in ``_early``."""
        end = time.monotonic() + timeout / 1000
        poller = None
        while True:
            got = self._recv_waiting()
            if got is not None:
                return got
            # A drop is acted on once the socket is read to its end: libzmq
            # queues a connection's last replies before it reports the drop.
            if self.handshakes.dropped:
                self._connection_lost()
                return None
            self.handshakes.read()
            if self.handshakes.dropped:
                continue
            left = int((end - time.monotonic()) * 1000)
            if left <= 0:
                return None
            if poller is None:
                poller = zmq.Poller()
                poller.register(self.socket, zmq.POLLIN)
                if self.handshakes.monitor is not None:
                    poller.register(self.handshakes.monitor, zmq.POLLIN)
            poller.poll(left)

    @property
    def in_flight(self) -> int:
        return len(self._sent)

    @property
    def watched(self) -> tuple:
        """Sockets besides `socket` whose readiness means `receive` has work
        (the connection's events), for a caller's own poller."""
        return () if self.handshakes.monitor is None else (self.handshakes.monitor,)

    @property
    def answered_here(self) -> bool:
        """Replies the client made itself wait for `receive` (no socket wakes for them)."""
        return bool(self._early)

    def receive(self, timeout_ms: int | None = None) -> ScoreResult | None:
        """The next reply to arrive (any request), or None after ``timeout_ms``."""
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        end = time.monotonic() + timeout / 1000
        while True:
            if self._early:
                return self._early.pop(next(iter(self._early)))
            got = self._wait_reply(max(0, int((end - time.monotonic()) * 1000)))
            if got is not None:
                return got[0]
            if not self._early and time.monotonic() >= end:
                return None

    def score(self, user: int, candidates, models=None, deadline_ms=None,
              timeout_ms: int | None = None, traceparent: str | None = None) -> ScoreResult:
        """Score and wait. TimeoutError if no reply within ``timeout_ms``
        (default: the deadline plus a second, or the client's timeout); its
        reply, should it come later, is dropped. Replies to requests
        `submit`ted meanwhile are kept for `receive`."""
        rid = self.submit(user, candidates, models, deadline_ms, traceparent)
        if timeout_ms is None:
            timeout_ms = deadline_ms + 1000 if deadline_ms else self.timeout_ms
        end = time.monotonic() + timeout_ms / 1000
        while True:
            if rid in self._early:
                return self._early.pop(rid)
            left = int((end - time.monotonic()) * 1000)
            got = self._wait_reply(left) if left > 0 else None
            if got is None:
                if rid in self._early or time.monotonic() < end:
                    continue
                self._sent.pop(rid, None)
                raise TimeoutError(f"no reply to request {rid} within {timeout_ms} ms "
                                   f"from {', '.join(self.endpoints)}{self.handshakes.hint()}")
            res, awaited = got
            if res.id == rid:
                return res
            if awaited:
                self._early[res.id] = res

    def ping(self, timeout_ms: int = 1000) -> dict:
        """A root's pong (its name, config, leaves' health)."""
        rid = self._ids.next()
        self.socket.send_multipart([pack_header({"type": "ping", "id": rid})])
        end = time.monotonic() + timeout_ms / 1000
        while (left := int((end - time.monotonic()) * 1000)) > 0:
            if not self.socket.poll(left):
                break
            frames = self.socket.recv_multipart()
            header = unpack_header(frames[0])
            if header.get("id") == rid:
                return header
            rid_of = str(header.get("id"))
            if header["type"] != "pong" and self._sent.pop(rid_of, None) is not None:
                self._early[rid_of] = parse_reply(frames)
        raise TimeoutError(f"no pong within {timeout_ms} ms from {', '.join(self.endpoints)}"
                           f"{self.handshakes.hint()}")

    def close(self) -> None:
        self.handshakes.close(self.socket)
        self.socket.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["ScoringClient", "ScoreResult", "ScoringError",
           "answered_here", "build_request", "parse_reply", "curve_keys", "add_curve_arguments"]
