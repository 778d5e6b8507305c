"""The root's request path from a built batch to the client's one reply.

`Router` owns every client request from `open` to its reply, as one state
machine run on the serving loop's thread: which leaf message carries which
model's result, the requests' deadlines, resends after an ``overloaded`` or
``shutting_down`` reply, and each request's single reply, which it sends
itself through the client socket's send side (rootproc/frontend.py
`ClientReplies`). The scorer (rootproc/scoring.py) only says what happened
to each model (`add_model`, then `send`, `scored` or `fail`) and `park`s
the request once every model is on its way; it never writes a result.

Each model of a request goes to a leaf replica as its own message, under a
message id the root chooses. Replicas are tried best first (`LeafPool.
candidates`); when none takes the message the model's result is
``unavailable`` at once rather than a ``deadline`` later. Only replicas
whose pongs' ``max_message_bytes`` the message fits are tried; when it fits
none, the model's result is ``too_large`` at once and nothing is sent
(rootproc/leaves/limits.py). A replica whose
queue for the model is full answers ``overloaded``, one that is draining
``shutting_down`` (and takes no new request from then on); when the model
has another replica and time remains, its batch goes there instead, once
per replica (only models with several replicas keep their batch for that). A
request is answered when every model has its result, or at its deadline with
what it has, the rest ``deadline``; a leaf reply after that is dropped.

Sending through shared memory may wait for a free slot, and only the link's
replies free slots, so that wait reads them (`_read`). Reading a reply only
records: the model's result, the slot's release, and, when the reply asks
for a resend or completes a request, an entry in a queue. `_settle` works
those queues, and runs only from the router's entry points (`park`,
`on_leaf`), after any send has returned: handling a reply never re-enters a
send.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import logging
import time
from collections import deque

from _trim.transport.frames import MAX_MESSAGE_FRAMES, Cut, recv_waiting
from _trim.transport.protocol import (
    DEADLINE,
    LEAF_ERROR,
    OVERLOADED,
    SHUTTING_DOWN,
    TOO_LARGE,
    UNAVAILABLE,
    ProtocolError,
    check_header,
    load_header,
    quote,
)
from rootproc.defaults import DRAIN_BATCH
from rootproc.leaves.encoding import Encoder, LeafMessage, ModelBatch
from rootproc.leaves.limits import SizeGate
from rootproc.open_request import Flight, OpenRequest
from rootproc.reply import read_leaf_reply

log = logging.getLogger("rootproc")

# Leaf errors that say "not here, not now": the batch goes to another replica
# when the model has one and time remains.
RESENT = (OVERLOADED, SHUTTING_DOWN)
# A model error the root produces is logged at most this often per (model, kind, reason),
# with a count of those not logged since; every one is counted in model_failures_total.
FAILURE_LOG_S = 10.0


class Router:
    def __init__(self, pool, shm, metrics, replies, budget=None):
        self.pool = pool
        self.budget = budget     # rootproc/memory.py: what an answered request gives back
        self.shm = shm
        self.metrics = metrics
        self.replies = replies   # the client socket's send side (rootproc/frontend.py)
        self.sizes = SizeGate(metrics.too_large)   # never a message larger than a leaf takes
        self.inflight: dict[str, Flight] = {}
        self.count = 0       # parked requests: the ones a drain waits for
        self.reply_cap = 0   # bytes one leaf message may hold in all (0: none; set by the server)
        self._deadlines: list = []
        self._heap_seq = itertools.count()
        self._mid_seq = itertools.count(1)
        self._resends: deque = deque()   # (request, result index, the link that refused it)
        self._answerable: list[OpenRequest] = []
        self._logged: dict[tuple, list] = {}   # (model, kind, reason) -> [logged at, not logged since]

    # -- requests -------------------------------------------------------------------

    def open(self, rid: str, envelope, n: int, deadline: float, t_start: float) -> OpenRequest:
        """A request the router holds from now until its one reply: its models
        are added, sent (or failed) in turn, then it is parked."""
        return OpenRequest(rid, envelope, n, deadline, t_start)

    def add_model(self, request: OpenRequest, key: str, trimmed: bool) -> int:
        """The index of ``request``'s next result, model ``key``'s (the reply
        lists them in the order they were added)."""
        return request.add_result(key, trimmed)

    def scored(self, request: OpenRequest, idx: int, frame) -> None:
        """Result ``idx`` has its scores without a leaf (no candidates: empty)."""
        request.results[idx]["ok"] = True
        request.frames[idx] = frame

    def fail(self, request: OpenRequest, idx: int, error: dict) -> None:
        """Result ``idx`` fails with ``error`` (a reply's error object); the
        request's other models go on."""
        self._failed(request.results[idx], error["kind"], error["kind"], error["message"], error)

    def _failed(self, result: dict, kind: str, reason: str, message: str,
                error: dict | None = None) -> None:
        """The root fails ``result`` itself: the error (``error``, or one of
        ``kind`` and ``message``), counted and logged (rate-limited) with ``reason``."""
        result["error"] = error if error is not None else {"kind": kind, "message": message}
        model = result["model"]
        self.metrics.model_failures.labels(model, kind, reason).inc()
        now = time.monotonic()
        entry = self._logged.setdefault((model, kind, reason), [float("-inf"), 0])
        if now - entry[0] < FAILURE_LOG_S:
            entry[1] += 1
            return
        more = f" ({entry[1]} more like it in the last {now - entry[0]:.0f} s)" if entry[1] else ""
        entry[0], entry[1] = now, 0
        log.warning("model %s: result %s (%s): %s%s", model, kind, reason, message, more)

    def send(self, request: OpenRequest, idx: int, model: ModelBatch, now: float) -> None:
        """Send result ``idx`` of ``request`` to the best replica that takes it,
        or set its error."""
        result = request.results[idx]
        links = self.pool.candidates(model.key, now)
        if not links:
            self._failed(result, UNAVAILABLE, "no_replica_in_rotation", f"no leaf replica serves "
                         f"{model.key} now (none is up, ready and not shutting down; the root's "
                         f"log says why each left rotation)")
            return
        fitting = self.sizes.fitting(links, model.nbytes)
        if not fitting:
            error = self.sizes.too_large(model.key, model.nbytes, links)
            self._failed(result, TOO_LARGE, "over_leaf_limit", error["message"], error)
            return
        links = fitting
        if len(links) > 1:
            request.resendable[idx] = (model, set())
        if not self._send_to_first(request, idx, model, links, shm=True):
            self._failed(result, UNAVAILABLE, "not_connected", f"no leaf replica of {model.key} "
                         f"is connected (tried {', '.join(link.endpoint for link in links)})")

    def park(self, request: OpenRequest, timing: dict[str, float] | None = None,
             t_sent: float | None = None) -> None:
        """Every model of ``request`` is sent (at ``t_sent``, perf_counter, the
        steps before taking ``timing``, stage -> seconds): wait for the leaves
        (or the deadline); answer now when nothing is awaited."""
        if timing is not None:
            request.timing = timing
        if t_sent is not None:
            request.t_sent = t_sent
        if request.complete:
            self._answer(request)
        else:
            request.parked = True
            self.count += 1
            self.metrics.in_flight.set(self.count)
            heapq.heappush(self._deadlines, (request.deadline, next(self._heap_seq), request))
            # An answered request stays in the heap until its deadline: drop those
            # once they outnumber the waiting ones, or under steady traffic the
            # heap holds rate x deadline entries (amortised O(1) per request).
            if len(self._deadlines) > 2 * self.count + 64:
                self._deadlines = [e for e in self._deadlines if not e[2].done]
                heapq.heapify(self._deadlines)
        self._settle()

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> None:
        """Answer every request whose deadline has passed with what it has."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, request = heapq.heappop(self._deadlines)
            if request.done:
                continue
            for mid, idx in request.waiting.items():
                flight = self.inflight.pop(mid, None)
                if flight is not None:
                    flight.link.outstanding -= 1
                result = request.results[idx]
                self._failed(result, DEADLINE, "leaf_did_not_answer", f"leaf {result.get('leaf')} "
                             f"did not answer within the deadline")
            request.waiting.clear()
            for idx, error in request.resend_queued.items():
                request.results[idx]["error"] = error
            request.resend_queued.clear()
            self._answer(request)

    # -- leaf side ------------------------------------------------------------------

    def on_leaf(self, link, frames) -> None:
        """A message from ``link``, read by the loop."""
        self._read(link, frames)
        self._settle()

    def _read(self, link, frames) -> None:
        """Record one message from ``link``. Sends nothing: it may run inside a
        send's wait for a slot."""
        if isinstance(frames, Cut):   # what it kept is handled: the wrong frames fail its model
            log.warning("leaf %s (%s) sent a %s (rule envelope.frames-limit)", link.name,
                        link.endpoint, frames.describe())
        try:
            header = load_header(frames[0].buffer)
        except ProtocolError as exc:
            self._dropped(link, f"an unreadable reply: {exc}")
            return
        try:
            mid = header.get("id")
            if header.get("type") == "pong":
                try:
                    link.on_pong(check_header(header), time.monotonic())
                except ProtocolError as exc:
                    link.ignored()
                    log.warning("leaf %s (%s): pong ignored: %s", link.name, link.endpoint, exc)
                return
            if not isinstance(mid, str):
                self._dropped(link, f"a {quote(header.get('type'))} reply without a usable id")
                return
            link.heard(time.monotonic())   # a reply to a request: a sign of life
            self.shm.replied(link, mid)  # even after the deadline: the slot is free
            self._record(link, mid, header, frames)
        except Exception:  # a bug must not stop the loop; the deadline answers the request
            log.exception("leaf %s (%s): reply not handled", link.name, link.endpoint)

    def _dropped(self, link, what: str) -> None:
        """A leaf message that names no request: nothing to fail at once."""
        link.ignored()
        self.metrics.leaf_replies_dropped.labels(link.name).inc()
        log.warning("leaf %s (%s) sent %s: dropped", link.name, link.endpoint, what)

    def _record(self, link, mid: str, header: dict, frames) -> None:
        flight = self.inflight.pop(mid, None)
        if flight is None:
            return  # answered after its request's deadline
        request, idx = flight.request, flight.idx
        link.outstanding -= 1
        self.metrics.latency.labels("leaf").observe(time.perf_counter() - flight.t_sent)
        del request.waiting[mid]
        frame, error, nonfinite = read_leaf_reply(header, frames, request.n, link.name)
        if error is not None and error["kind"] == SHUTTING_DOWN:
            link.draining = True   # as its pong will say: no new request goes there
        if error is None:
            request.results[idx]["ok"] = True
            request.frames[idx] = frame
            if nonfinite:
                request.results[idx]["nonfinite"] = nonfinite
                self.metrics.nonfinite_scores.labels(request.results[idx]["model"]).inc(nonfinite)
        elif error["kind"] in RESENT and idx in request.resendable:
            request.resend_queued[idx] = error
            self._resends.append((request, idx, link))
            return
        elif error["kind"] == LEAF_ERROR:   # the root's verdict on the reply: say why
            self._failed(request.results[idx], LEAF_ERROR, "bad_leaf_reply", error["message"], error)
        else:
            request.results[idx]["error"] = error
        # An unparked request is still sending its other models (this reply was
        # read while waiting for a slot); `park` answers it.
        if request.complete and request.parked:
            self._answerable.append(request)

    def link_dropped(self, link) -> None:
        """``link``'s connection dropped. Once the replies it carried are read
        (libzmq queues them before it reports the drop), the messages still
        awaited on it will never be answered, by that process or the next one
        behind the endpoint: each is resent to another replica, or its model
        fails ``unavailable`` now, not at the deadline (rule
        `leaf-reply.connection-lost`). Its shared-memory slots come back as a
        dead leaf's do (the process may still be reading them)."""
        while (frames := recv_waiting(link.socket, MAX_MESSAGE_FRAMES, self.reply_cap)) is not None:
            self._read(link, frames)
        for mid in [mid for mid, f in self.inflight.items() if f.link is link]:
            request, idx = self.inflight.pop(mid)[:2]
            link.outstanding -= 1
            request.waiting.pop(mid, None)
            error = {"kind": UNAVAILABLE, "message": f"leaf {link.name} ({link.endpoint}): "
                     "its connection dropped before it answered"}
            if idx in request.resendable and not request.done:
                request.resend_queued[idx] = error
                self._resends.append((request, idx, link))
                continue
            self._failed(request.results[idx], UNAVAILABLE, "connection_lost", error["message"])
            if request.complete and request.parked:
                self._answerable.append(request)
        self._settle()

    # -- the queues ---------------------------------------------------------------

    def _settle(self) -> None:
        """Carry out what the replies read so far asked for: resends, then answers."""
        while self._resends or self._answerable:
            while self._resends:
                request, idx, refused = self._resends.popleft()
                error = request.resend_queued.pop(idx, None)
                if error is None or request.done:
                    continue   # answered at its deadline meanwhile
                if not self._resend(request, idx, refused):
                    request.results[idx]["error"] = error
                    if request.complete and request.parked:
                        self._answerable.append(request)
            answerable, self._answerable = self._answerable, []
            for request in answerable:
                self._answer(request)

    def _resend(self, request: OpenRequest, idx: int, refused) -> bool:
        """Send result ``idx`` to a replica other than ``refused`` and any tried
        before; False when there is none or no time left (the leaf's error stands)."""
        model, tried = request.resendable[idx]
        now = time.monotonic()
        if now >= request.deadline:
            return False
        tried.add(refused)
        links = [link for link in self.pool.candidates(model.key, now) if link not in tried]
        links = self.sizes.fitting(links, model.nbytes)
        # Over the socket, as resends were when they ran inside a reply's
        # handling. From `_settle` a slot wait would be safe too; using the
        # ring for them is a change of behaviour, left for its own commit.
        if not links or not self._send_to_first(request, idx, model, links, shm=False):
            return False
        self.metrics.leaf_retries.labels(refused.name, model.key).inc()
        return True

    def _answer(self, request: OpenRequest) -> None:
        """Send the request's one reply."""
        if request.done:
            return
        request.done = True
        if request.parked:
            self.count -= 1
            self.metrics.in_flight.set(self.count)
        if request.trace is None:
            self.replies.scores(request)
        else:
            t_merge = time.perf_counter()
            self.replies.scores(request)
            ok = sum(1 for r in request.results if r.get("ok"))
            request.trace.answered(request.t_sent, t_merge, ok, len(request.results) - ok)
        if self.budget is not None and request.reserved:
            self.budget.release(request.reserved)
            request.reserved = 0
        # The heap may hold the request until its deadline: keep no batch or scores alive.
        request.frames.clear()
        request.resendable.clear()

    # -- sending --------------------------------------------------------------------

    def _send_to_first(self, request: OpenRequest, idx: int, model: ModelBatch, links,
                       shm: bool) -> bool:
        """Send result ``idx`` to the first of ``links`` that takes it."""
        encoder = Encoder(model)
        for link in links:
            mid = f"{next(self._mid_seq):x}"
            # Whole milliseconds, rounded down: the leaf counts from receipt, later than now.
            left_ms = max(0, int((request.deadline - time.monotonic()) * 1000))
            channel = self.shm.channel(link) if shm else None
            msg = encoder.message(link, mid, request.n, left_ms, channel,
                                  functools.partial(self._read_while_waiting, link))
            if not link.send(msg.frames):
                msg.unsent()
                continue
            self._sent(request, idx, model, link, msg)
            return True
        return False

    def _sent(self, request: OpenRequest, idx: int, model: ModelBatch, link,
              msg: LeafMessage) -> None:
        result = request.results[idx]
        link.outstanding += 1
        self.inflight[msg.mid] = Flight(request, idx, link, time.perf_counter())
        request.waiting[msg.mid] = idx
        if msg.in_shm:
            self.shm.sent(link)
            result["transport"] = "shm"
        else:
            result.pop("transport", None)   # a resend may follow a shm send
        result.update(leaf=link.name, bytes_sent=msg.nbytes)
        self.metrics.bytes_sent.labels(link.name, model.key).inc(msg.nbytes)
        self.metrics.bytes_untrimmed.labels(link.name, model.key).inc(model.untrimmed)
        self.metrics.wire_bytes.labels(link.name, model.key).inc(msg.wire_nbytes)
        if msg.fine:
            self.metrics.sub_feature_saved.labels(link.name, model.key).inc(
                model.nbytes - msg.nbytes)
        elif model.fine is not None:
            self.metrics.sub_feature_fail_open.labels(link.name, model.key).inc()
        if model.grouped is not None and not msg.grouped:
            self.metrics.grouped_fail_open.labels(link.name, model.key).inc()
        if msg.wire_nbytes != msg.nbytes and not msg.in_shm:
            result["wire_bytes"] = msg.wire_nbytes
        else:
            result.pop("wire_bytes", None)

    def _read_while_waiting(self, link, timeout_s: float) -> None:
        """Read ``link``'s messages for up to ``timeout_s``, while a send waits
        for one of its slots."""
        if link.socket.poll(max(1, int(timeout_s * 1000))):
            for _ in range(DRAIN_BATCH):
                frames = recv_waiting(link.socket, MAX_MESSAGE_FRAMES, self.reply_cap)
                if frames is None:
                    return
                self._read(link, frames)


__all__ = ["Router"]
