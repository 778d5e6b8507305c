"""A client request while the root's router (rootproc/router.py) holds it:
from `Router.open` to its one reply, and each leaf message it waits for.

Only the router writes these; the scorer (rootproc/scoring.py) tells the
router what happened to each model and reads no more than the request's id.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rootproc.leaves.replicas import LeafLink


@dataclass
class OpenRequest:
    """A client request being sent to its leaves, or waiting for them."""

    rid: str
    envelope: list
    n: int                  # candidates: the rows of every model's batch
    deadline: float         # time.monotonic()
    t_start: float          # time.perf_counter() on arrival
    results: list = field(default_factory=list)      # one dict per model, as the reply says it
    frames: dict = field(default_factory=dict)       # result index -> scores frame
    waiting: dict = field(default_factory=dict)      # leaf message id -> result index
    # result index -> (ModelBatch, replicas tried): what a resend needs
    resendable: dict = field(default_factory=dict)
    # result index -> the ``overloaded`` error it keeps unless the queued resend goes out
    resend_queued: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)        # stage -> seconds, before the leaves
    t_sent: float = 0.0
    missing: int = 0        # entities the store lacked (scored from default values)
    reserved: int = 0       # bytes of the root's memory budget, released with its reply
    parked: bool = False    # every model sent (or failed): answered once all results are in
    done: bool = False      # answered
    trace: Any = None       # its RequestTrace (rootproc/request_trace.py) when tracing is on

    def add_result(self, key: str, trimmed: bool) -> int:
        self.results.append({"model": key, "ok": False, "trimmed": trimmed})
        return len(self.results) - 1

    @property
    def complete(self) -> bool:
        return not self.waiting and not self.resend_queued


class Flight(NamedTuple):
    """A leaf message the root waits for."""

    request: OpenRequest
    idx: int            # the result it fills
    link: LeafLink
    t_sent: float       # time.perf_counter()


__all__ = ["Flight", "OpenRequest"]
