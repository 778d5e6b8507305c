"""One score request's spans at the root, when tracing is on
(signatures/runtime/tracing.py; off, no request has one and nothing here runs).

The request's span (``trimmer.root.score``, a child of the client's
``traceparent``) holds one span per stage, made from the times the request
path keeps anyway: ``intake`` (header checks, model resolution, admission),
``fetch`` (the feature store, through the cache; from when a worker took the
request), ``preprocess`` (the batch), ``trim`` (each model's share encoded
and handed to a link, one ``send`` span per model, whose context goes to the
leaf in the message's ``traceparent``), ``leaves`` (waiting for the replies)
and ``merge`` (the one reply built and sent).
"""
from __future__ import annotations

import time


class RequestTrace:
    __slots__ = ("tracing", "request", "context", "trim", "t_intake", "t_compute")

    def __init__(self, tracing, header: dict, t0: float, rid: str, n: int):
        self.tracing = tracing
        self.request = tracing.span("trimmer.root.score", t0,
                                    parent=tracing.parent(header.get("traceparent")),
                                    kind="server", **{"trimmer.request_id": rid,
                                                      "trimmer.candidates": n})
        self.context = tracing.child_of(self.request)
        self.trim = None
        self.t_intake = time.perf_counter()
        self.t_compute = None

    def built(self, t0: float, t_fetch: float, t_pre: float, untrimmed: int) -> None:
        """The batch is built: intake, fetch and preprocess are over; trim begins."""
        tr, ctx = self.tracing, self.context
        tr.span("intake", t0, self.t_intake, ctx)
        tr.span("fetch", self.t_compute or self.t_intake, t_fetch, ctx)
        tr.span("preprocess", t_fetch, t_pre, ctx, **{"trimmer.untrimmed_bytes": untrimmed})
        self.trim = tr.span("trim", t_pre, None, ctx)

    def send(self, key: str):
        """A model's ``send`` span, begun; (span, traceparent for its leaf message)."""
        parent = self.tracing.child_of(self.trim) if self.trim is not None else self.context
        span = self.tracing.span("send", time.perf_counter(), None, parent,
                                 kind="client", **{"trimmer.model": key})
        return span, self.tracing.traceparent(span)

    def sent(self, span, result: dict) -> None:
        self.tracing.end(span, time.perf_counter(), **{
            "trimmer.leaf": result.get("leaf"), "trimmer.bytes_sent": result.get("bytes_sent"),
            "trimmer.error": (result.get("error") or {}).get("kind")})

    def parked(self, t_sent: float) -> None:
        if self.trim is not None:
            self.tracing.end(self.trim, t_sent)
            self.trim = None

    def answered(self, t_sent: float, t_merge: float, ok: int, failed: int) -> None:
        """The reply went: the wait for the leaves, the merge, and the request's span end."""
        end = time.perf_counter()
        if t_sent:
            self.tracing.span("leaves", t_sent, t_merge, self.context)
        self.tracing.span("merge", t_merge, end, self.context)
        self.tracing.end(self.request, end, **{"trimmer.models_ok": ok,
                                               "trimmer.models_failed": failed})

    def failed(self, kind: str | None) -> None:
        """The request was answered with an error before its models were sent."""
        self.parked(time.perf_counter())
        self.tracing.end(self.request, time.perf_counter(), **{"trimmer.error": kind})


__all__ = ["RequestTrace"]
