"""The conformance suite's machinery: a case table, its runner and a scripted leaf.

A `Case` is one rule of docs/protocol.md put to a real process: the frames
sent (after the routing identity) and the documented reply, written as a
pattern (`match`). Every case runs on a fresh DEALER socket, so a second
reply to the same request would be seen (`run`). `FakeLeaf` is a leaf
written from the protocol alone, in this process, whose pongs and replies a
case scripts: it is how the root's treatment of leaf messages is checked.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lz4.block
import numpy as np
import orjson
import zmq

from _trim.transport.protocol import ERROR_KINDS, MAX_HEADER_NBYTES

# -- patterns ----------------------------------------------------------------------------


class _Absent:
    def __repr__(self):
        return "ABSENT"


ABSENT = _Absent()   # the key must not be there


@dataclass(frozen=True)
class Re:
    """A string matching ``pattern`` (re.search)."""

    pattern: str


@dataclass(frozen=True)
class Pred:
    """Any value for which ``fn`` is true; ``what`` says what that means."""

    fn: Callable
    what: str


ANY = Pred(lambda v: True, "anything")
NULL_ID = None


def match(actual, pattern, path: str = "reply") -> None:
    """AssertionError naming the first place where ``actual`` differs from
    ``pattern``: a dict pattern names the keys that must be there (others may
    be), a list one every entry, a scalar is compared with its type (1 is
    not true, nor 1.0)."""
    if isinstance(pattern, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, want in pattern.items():
            if want is ABSENT:
                assert key not in actual, f"{path}.{key}: expected absent, got {actual[key]!r}"
            else:
                assert key in actual, f"{path}.{key}: missing in {actual!r}"
                match(actual[key], want, f"{path}.{key}")
    elif isinstance(pattern, list):
        assert isinstance(actual, list) and len(actual) == len(pattern), \
            f"{path}: expected {len(pattern)} entries, got {actual!r}"
        for i, (a, p) in enumerate(zip(actual, pattern)):
            match(a, p, f"{path}[{i}]")
    elif isinstance(pattern, Re):
        assert isinstance(actual, str) and re.search(pattern.pattern, actual), \
            f"{path}: {actual!r} does not match {pattern.pattern!r}"
    elif isinstance(pattern, Pred):
        assert pattern.fn(actual), f"{path}: {actual!r} is not {pattern.what}"
    else:
        assert type(actual) is type(pattern) and actual == pattern, \
            f"{path}: expected {pattern!r}, got {actual!r}"


def error(kind: str, message=None, rid=NULL_ID, **details) -> dict:
    """The documented error reply: ``rid`` is the id it must echo."""
    err = {"kind": kind, "message": Re(message) if message else Pred(bool, "a message"), **details}
    return {"v": 1, "type": "error", "id": rid, "ok": False, "error": err}


# -- cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One rule of docs/protocol.md checked against a real process.

    ``send(ctx)`` gives the frames after the routing identity (a list is
    sent as it is); ``reply`` is the documented reply header, None when the
    rule is that there is no reply at all. ``frames`` checks the frames after
    the header (a count, or ``fn(ctx, header, frames)``); ``setup(ctx)`` runs
    first, ``check(ctx, header, frames)`` after the reply matched."""

    rule: str
    name: str
    send: object
    reply: dict | None
    frames: object = None
    setup: Callable | None = None
    check: Callable | None = None
    timeout: float = 15.0

    def __str__(self) -> str:
        return f"{self.rule}: {self.name}"


def case_id(case: Case) -> str:
    return f"{case.rule}:{case.name}"


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def run(case: Case, endpoint: str, context) -> tuple[dict | None, list[bytes]]:
    """Send ``case``'s frames to ``endpoint`` and check its one reply."""
    if case.setup is not None:
        case.setup(context)
    frames = case.send(context) if callable(case.send) else case.send
    sock = dealer(zmq.Context.instance(), endpoint)
    try:
        sock.send_multipart(frames, copy=False)
        if case.reply is None:
            assert not sock.poll(int(case.timeout * 1000)), "a reply came where none is documented"
            return None, []
        assert sock.poll(int(case.timeout * 1000)), f"no reply within {case.timeout} s"
        got = sock.recv_multipart()
        if frames and len(frames[0]) == 0:   # a REQ-style delimiter comes back first
            assert got[0] == b"", f"the delimiter frame did not come back: {got[:1]!r}"
            got = got[1:]
        assert len(got[0]) <= MAX_HEADER_NBYTES, f"reply header is {len(got[0])} bytes"
        header = orjson.loads(got[0])
        check_envelope(header)
        match(header, case.reply)
        if isinstance(case.frames, int):
            assert len(got) - 1 == case.frames, f"{len(got) - 1} frames after the header"
        elif case.frames is not None:
            case.frames(context, header, got[1:])
        if case.check is not None:
            case.check(context, header, got[1:])
        # Exactly one reply: nothing else for this request, even a little later.
        assert not sock.poll(50), f"a second message: {sock.recv_multipart()[:1]!r}"
        return header, got[1:]
    finally:
        sock.close(0)


def check_envelope(header: dict) -> None:
    """What every reply is (docs/protocol.md, section 2)."""
    match(header, {"v": 1, "type": Pred(lambda t: isinstance(t, str), "a string")})
    errors = []
    if header["type"] == "error":
        errors.append(header["error"])
    for result in header.get("results", []):
        if not result.get("ok"):
            errors.append(result["error"])
    for err in errors:
        match(err, {"kind": Pred(lambda k: k in ERROR_KINDS, "a documented kind"),
                    "message": Pred(lambda m: isinstance(m, str), "a string")})
        assert err["kind"] != "internal", f"client input yielded internal: {err}"


# -- a scripted leaf ---------------------------------------------------------------------


@dataclass
class Replica:
    """One endpoint of the fake leaf. ``pong(header)`` and ``answer(header,
    frames)`` give the frames to send back (None: stay silent)."""

    endpoint: str
    pong: Callable
    answer: Callable
    received: list = field(default_factory=list)   # (header, frames) of score requests
    pongs: int = 0                                 # pongs sent


class FakeLeaf:
    """A leaf named ``name`` serving ``key`` on each of ``endpoints``: pongs
    and score replies are scripted per replica; by default it answers what
    docs/protocol.md says a leaf answers, scoring row i with the batch's
    ``score_column`` value."""

    def __init__(self, name: str, key: str, signature_hash: str, endpoints, score_column: str):
        self.name, self.key, self.hash, self.score_column = name, key, signature_hash, score_column
        ctx = zmq.Context.instance()
        self.replicas: list[Replica] = []
        self.sockets: list[zmq.Socket] = []
        for ep in endpoints:
            sock = ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ep)
            self.sockets.append(sock)
            self.replicas.append(Replica(ep, self.pong, self.scores))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fake-{name}", daemon=True)
        self._thread.start()

    # -- what a well-behaved leaf says ---------------------------------------------------

    def pong(self, header: dict, **fields) -> list:
        pong = {"v": 1, "type": "pong", "id": header.get("id"), "ok": True, "role": "leaf",
                "name": self.name, "pid": os.getpid(), "draining": False,
                "models": [{"model": self.key, "signature_hash": self.hash, "ready": True}]}
        pong.update(fields)
        return [orjson.dumps(pong)]

    def batch(self, header: dict, frames: list) -> bytes:
        """The batch message a score request carries, decompressed."""
        if header.get("compression") == "lz4":
            return lz4.block.decompress(frames[0], uncompressed_size=header["raw_nbytes"])
        return frames[0]

    def scores(self, header: dict, frames: list, values=None) -> list:
        import _trim
        if values is None:
            decoded = _trim.decode(self.batch(header, frames))
            values = np.asarray(decoded[self.score_column], dtype="<f4")
        return [orjson.dumps({"v": 1, "type": "scores", "id": header["id"], "ok": True,
                              "model": header["model"], "rows": header["rows"],
                              "timing_us": {"queue": 0, "decode": 0, "infer": 0},
                              "batch_rows": header["rows"]}),
                np.asarray(values, dtype="<f4").tobytes()]

    @staticmethod
    def error(header: dict, kind: str, message: str = "scripted", **details) -> list:
        # The stdlib encoder nests deeper than orjson: a leaf may send what the root cannot.
        return [json.dumps({"v": 1, "type": "error", "id": header["id"], "ok": False,
                            "error": {"kind": kind, "message": message, **details}}).encode()]

    # -- scripting -----------------------------------------------------------------------

    def script(self, pong=None, answer=None, replicas=None) -> None:
        """Give the chosen replicas (default: all) these behaviours; None keeps the default."""
        with self._lock:
            for i, r in enumerate(self.replicas):
                if replicas is None or i in replicas:
                    r.pong = pong or self.pong
                    r.answer = answer or self.scores

    def reset(self) -> None:
        with self._lock:
            for r in self.replicas:
                r.pong, r.answer = self.pong, self.scores
                r.received.clear()

    def heard(self, n: int = 2, timeout: float = 10.0) -> None:
        """Wait until every replica has sent ``n`` more pongs: the root has
        read at least one of them since whatever was scripted before."""
        with self._lock:
            start = [r.pongs for r in self.replicas]

        def done():
            with self._lock:
                return all(r.pongs >= s + n for r, s in zip(self.replicas, start))
        until(f"{n} pongs from every replica", done, timeout)

    def received(self) -> list:
        with self._lock:
            return [m for r in self.replicas for m in r.received]

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(20):
                replica = self.replicas[self.sockets.index(sock)]
                ident, head, *rest = sock.recv_multipart()
                header = orjson.loads(head)
                with self._lock:
                    if header.get("type") == "ping":
                        out = replica.pong(header)
                    else:
                        replica.received.append((header, rest))
                        out = replica.answer(header, rest)
                if out is not None:
                    sock.send_multipart([ident] + out)
                    if header.get("type") == "ping":
                        with self._lock:
                            replica.pongs += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock, r in zip(self.sockets, self.replicas):
            sock.close(0)
            if r.endpoint.startswith("ipc://") and os.path.exists(r.endpoint[6:]):
                os.unlink(r.endpoint[6:])


def until(what: str, check: Callable[[], bool], timeout: float = 10.0, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# Rules checked by a test function rather than a case table: rule -> tests.
COVERS: dict[str, list[str]] = {}


def covers(*rules: str):
    """Mark a test as the check of ``rules`` (for tests/conformance/test_rules.py)."""
    def mark(fn):
        for rule in rules:
            COVERS.setdefault(rule, []).append(f"{fn.__module__}::{fn.__name__}")
        return fn
    return mark


def fuzz_cases(what: str, make: Callable, n: int = 60) -> list[Case]:
    """``n`` cases of the no-internal rule: ``make(seed)`` gives what to send,
    and any error but `internal` (which `run` refuses), or scores, is a reply."""
    answered = {"v": 1, "type": Pred(lambda t: t in ("error", "scores"), "error or scores")}
    return [Case("envelope.no-internal", f"{what} {seed}", make(seed), answered)
            for seed in range(n)]
