"""Client requests waiting for their leaves, and the one reply each gets.

Each model of a request goes to a leaf as its own message, under a message
id the root chooses; `PendingRequests` maps those ids back to the request
and the result they fill, and keeps the requests' deadlines in a heap so
that the poll loop answers a request whose leaves are slow or gone.
Whichever comes first, the last leaf reply or the deadline, `finish` merges
the results into the request's single ``scores`` reply; a leaf reply that
arrives after that is dropped.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import orjson

from _trim.transport.protocol import DEADLINE, INTERNAL, OVERLOADED, pack_header


@dataclass
class Pending:
    """A client request waiting for its leaves."""

    rid: str
    envelope: list
    n: int
    results: list
    deadline: float
    t_start: float
    timing: dict
    waiting: dict = field(default_factory=dict)   # leaf message id -> result index
    frames: dict = field(default_factory=dict)    # result index -> scores frame
    # result index -> what `FanOut.retry` needs to send it to another replica
    retry: dict = field(default_factory=dict)
    t_sent: float = 0.0
    parked: bool = False
    done: bool = False


class PendingRequests:
    def __init__(self, root_name: str, metrics, reply):
        self.root_name = root_name
        self.metrics = metrics
        self.reply = reply   # reply(envelope, frames): to the client
        self.inflight: dict = {}   # message id -> (Pending, result index, LeafLink, t_sent)
        self.deadlines: list = []
        self.count = 0   # parked requests, the ones a drain waits for
        self._seq = 0
        # resend(pending, idx, refused_link) -> bool: sends the result to another
        # replica after an `overloaded` reply (set by `FanOut`).
        self.resend = None

    def sent(self, pending: Pending, idx: int, mid: str, link) -> None:
        """Message ``mid`` carrying result ``idx`` of ``pending`` left on ``link``."""
        link.outstanding += 1
        self.inflight[mid] = (pending, idx, link, time.perf_counter())
        pending.waiting[mid] = idx

    def park(self, pending: Pending) -> None:
        """Wait for the leaves (or the deadline); finish now when nothing went out."""
        if not pending.waiting:
            self.finish(pending)
            return
        pending.parked = True
        self.count += 1
        self.metrics.in_flight.set(self.count)
        self._seq += 1
        heapq.heappush(self.deadlines, (pending.deadline, self._seq, pending))
        # An answered request stays in the heap until its deadline: drop those
        # once they outnumber the waiting ones, or under steady traffic the
        # heap holds rate x deadline entries (amortised O(1) per request).
        if len(self.deadlines) > 2 * self.count + 64:
            self.deadlines = [e for e in self.deadlines if not e[2].done]
            heapq.heapify(self.deadlines)

    def next_deadline(self) -> float | None:
        return self.deadlines[0][0] if self.deadlines else None

    def on_reply(self, link, header: dict, frames) -> None:
        """A leaf's scores or error reply to one of our messages."""
        entry = self.inflight.pop(header.get("id"), None)
        if entry is None:
            return  # answered after its request's deadline
        pending, idx, _, t_sent = entry
        link.outstanding -= 1
        self.metrics.latency.labels("leaf").observe(time.perf_counter() - t_sent)
        del pending.waiting[header["id"]]
        result = pending.results[idx]
        if header.get("ok") and header["type"] == "scores":
            if len(frames) == 2 and len(frames[1]) == 4 * pending.n:
                result["ok"] = True
                pending.frames[idx] = frames[1]
            else:
                result["error"] = {"kind": INTERNAL, "message": f"leaf {link.name} returned "
                                   f"{len(frames[1]) if len(frames) > 1 else 0} score bytes for "
                                   f"{pending.n} candidates"}
        else:
            error = forwardable_error(header.get("error"), link.name)
            if (error["kind"] == OVERLOADED and self.resend is not None
                    and self.resend(pending, idx, link)):
                return   # the other replica's reply (or the deadline) fills the result
            result["error"] = error
        # Unparked: the request is still sending its other models (a reply read
        # while waiting for a shm slot) and is finished by `park`.
        if not pending.waiting and pending.parked:
            self.finish(pending)

    def expire(self, now: float) -> None:
        """Answer every request whose deadline has passed with what it has."""
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, pending = heapq.heappop(self.deadlines)
            if pending.done:
                continue
            for mid, idx in pending.waiting.items():
                entry = self.inflight.pop(mid, None)
                if entry is not None:
                    entry[2].outstanding -= 1
                result = pending.results[idx]
                result["error"] = {"kind": DEADLINE, "message": f"leaf {result.get('leaf')} did "
                                   f"not answer within the deadline"}
            pending.waiting.clear()
            self.finish(pending)

    def finish(self, pending: Pending) -> None:
        """Send the request's one reply: every model's scores frame or error."""
        if pending.done:
            return
        pending.done = True
        if pending.parked:
            self.count -= 1
            self.metrics.in_flight.set(self.count)
        t_end = time.perf_counter()
        frames, results = [], []
        for idx, result in enumerate(pending.results):
            if result["ok"]:
                frames.append(pending.frames[idx])
                result["frame"] = len(frames)
                result.pop("error", None)
                self.metrics.model_results.labels(result["model"], "ok").inc()
            else:
                # Only a root bug leaves a result with neither scores nor an error.
                kind = result.setdefault("error", {"kind": INTERNAL, "message": "no result "
                                                   "recorded (a root bug: see its log)"})["kind"]
                self.metrics.errors.labels(kind).inc()
                self.metrics.model_results.labels(result["model"], kind).inc()
            results.append(result)
        timing = {k: int(v * 1e6) for k, v in pending.timing.items()}
        timing["leaves"] = int((t_end - pending.t_sent) * 1e6)
        timing["total"] = int((t_end - pending.t_start) * 1e6)
        self.metrics.latency.labels("total").observe(t_end - pending.t_start)
        self.metrics.requests.labels("ok").inc()
        header = pack_header({"type": "scores", "id": pending.rid, "ok": True, "n": pending.n,
                              "results": results, "timing_us": timing, "root": self.root_name})
        self.reply(pending.envelope, [header] + frames)
        pending.frames.clear()   # the heap may hold the request until its deadline
        pending.retry.clear()


def forwardable_error(err, leaf: str) -> dict:
    """A leaf's error as the client gets it, or the root's own ``internal``
    error when it is malformed or would not encode where it goes: the client's
    reply nests it three levels deep, and orjson refuses deep nesting."""
    if (isinstance(err, dict) and isinstance(err.get("kind"), str)
            and isinstance(err.get("message", ""), str)):
        try:
            orjson.dumps([[[err]]])
            return err
        except TypeError:
            pass
    return {"kind": INTERNAL, "message": f"leaf {leaf} sent a malformed reply"}


__all__ = ["Pending", "PendingRequests", "forwardable_error"]
