"""The leaf's I/O loop: one ROUTER socket, many requests in flight.

The main thread owns the ROUTER. It parses each request's small JSON header,
answers pings itself, and hands score requests to the worker thread that the
model table (leafproc/table.py) names for the model, together with a token;
workers send replies, prefixed by the token, to an inproc PULL socket that
this loop forwards to the ROUTER. Every received request is recorded in
``inflight`` until its reply has been forwarded, so that draining on SIGTERM
knows what is still owed. Between requests the loop lets the table change:
a following leaf's newest target comes in through ``targets``, and the
heartbeat record of what the table then serves goes out through ``records``.

Draining (SIGTERM): pongs say ``"draining": true`` and every new score
request is answered `shutting_down`, which roots take as "send it to another
replica, and no more here". The leaf exits once nothing is in flight and
QUIET_S has passed since the drain began; the requests it refuses meanwhile
do not extend that, so a peer that keeps sending cannot hold it open. Past
``drain_timeout_s`` what is still running is answered `shutting_down`.

The server owns its sockets (ROUTER, PULL, the CURVE handler of the ROUTER's
tcp endpoints) and the shared-memory inbox; the table and its workers are
the caller's to close (leafproc/app.py).
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

import zmq

from _trim.errors import TrimmerError
from _trim.transport import protocol as P
from _trim.transport import sockets
from _trim.transport.curve import ServerKeys
from _trim.transport.envelope import id_problem, split_envelope, usable_id
from _trim.transport.frames import MAX_MESSAGE_FRAMES, Cut, recv_waiting, send_frames
from leafproc.defaults import DRAIN_BATCH, MAX_QUEUE, POLL_MS, QUIET_S, READINESS_S, ROUTER_LINGER_MS
from leafproc.inbox import ShmInbox, peer_uid
from leafproc.metrics import LeafMetrics
from leafproc.table import ModelTable, Target
from leafproc.worker import Request
from signatures.configstore.members import MemberStatus
from signatures.runtime.handoff import Handoff
from signatures.runtime.probes import Probes

if TYPE_CHECKING:
    from signatures.runtime.tracing import Tracing

log = logging.getLogger("leafproc")


class LeafServer:
    def __init__(self, *, name: str, binds: list[str], table: ModelTable, ctx: zmq.Context,
                 reply_endpoint: str, metrics: LeafMetrics, max_message_bytes: int,
                 drain_timeout_s: float, device: str, curve_keys: ServerKeys | None = None,
                 max_queue: int = MAX_QUEUE, targets: Handoff[Target] | None = None,
                 records: Handoff[MemberStatus] | None = None, probes: Probes | None = None,
                 sub_feature_columns: bool = True, grouped_columns: bool = True):
        self.name = name
        self.probes = probes if probes is not None else Probes()
        self._next_readiness = 0.0
        self.sub_feature_columns = sub_feature_columns
        self.grouped_columns = grouped_columns
        self.binds = binds
        self.table = table
        self.targets = targets
        self.records = records
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        # Requests waiting per model version; past it new ones are shed at once
        # (`overloaded`): a backlog deeper than the deadline only produces late answers.
        self.max_queue = max_queue
        self.drain_timeout_s = drain_timeout_s
        self.device = device
        self.inflight: dict[bytes, tuple[list, object]] = {}
        # Tracing (signatures/runtime/tracing.py), when on: token -> (parent, received, model).
        self.tracing: Tracing | None = None
        self.traces: dict[bytes, tuple] = {}
        self._tokens = itertools.count()
        self._stop = threading.Event()
        self._draining_since: float | None = None
        self._refused_draining = 0
        self.inbox = ShmInbox(max_message_bytes, device)
        self.bound: list[str] = []
        self.security = None
        self.router = ctx.socket(zmq.ROUTER)
        self.pull = ctx.socket(zmq.PULL)
        try:
            self.router.setsockopt(zmq.LINGER, ROUTER_LINGER_MS)
            # Frames above the limit make libzmq drop the connection before the
            # message is buffered (the settings keep it at least a header's limit).
            self.router.setsockopt(zmq.MAXMSGSIZE, max(max_message_bytes, P.MAX_HEADER_NBYTES))
            # A ROUTER silently drops replies to a peer over its send HWM: never lose one.
            self.router.setsockopt(zmq.SNDHWM, 0)
            self.pull.setsockopt(zmq.LINGER, 0)
            self.pull.bind(reply_endpoint)
            # With `curve_keys`, tcp endpoints require CURVE and ipc ones stay plain.
            self.bound, self.security = sockets.bind_all(ctx, self.router, binds, curve_keys,
                                                       f"leaf {name}")
        except BaseException:
            self.close()
            raise

    def request_stop(self, *_):
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- loop -------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped and drained; 0."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        while True:
            events = dict(poller.poll(POLL_MS))
            self._check_stop()
            self._probe()
            if self.pull in events:
                self._forward_replies()
            if self.router in events:
                self._receive()
            self._update_table()
            if self._draining_since is not None and self._drained():
                return 0

    def _update_table(self) -> None:
        target = self.targets.take() if self.targets is not None else None
        if self.table.update(time.monotonic(), target) and self.records is not None:
            self.records.put(self.table.record(self.bound))

    def _probe(self) -> None:
        """Say the loop turned; every READINESS_S, whether the leaf is ready."""
        now = time.monotonic()
        self.probes.beat(now)
        if now >= self._next_readiness:
            self._next_readiness = now + READINESS_S
            if self._draining_since is not None:
                self.probes.set_ready(False, f"leaf {self.name} is draining")
            else:
                self.probes.set_ready(*self.table.readiness())

    def _check_stop(self) -> None:
        if self._stop.is_set() and self._draining_since is None:
            self._draining_since = time.monotonic()
            self._next_readiness = 0.0
            log.info("leaf %s draining: %d requests in flight", self.name, len(self.inflight))

    def _drained(self) -> bool:
        now, since = time.monotonic(), self._draining_since
        assert since is not None, "called once draining"
        if not self.inflight:
            if now - since < QUIET_S:
                return False
            log.info("leaf %s drained in %.2fs; %d request(s) answered shutting_down meanwhile",
                     self.name, now - since, self._refused_draining)
            return True
        if now - since > self.drain_timeout_s:
            log.error("leaf %s: %d requests still running after %.1fs drain; answering "
                      "them shutting_down", self.name, len(self.inflight), self.drain_timeout_s)
            for token in list(self.inflight):
                envelope, rid = self.inflight.pop(token)
                self.traces.pop(token, None)
                self.inbox.release(token)
                self._send(envelope, [P.error_header(rid, P.SHUTTING_DOWN,
                                                     "leaf stopped before the model answered")],
                           P.SHUTTING_DOWN)
            return True
        return False

    def close(self) -> None:
        """Close the sockets (after the table's workers stopped: they may still
        be answering) and the shared-memory inbox; remove the ipc files."""
        self.metrics.in_flight.set(0)
        for sock in (self.router, self.pull):
            sock.close()
        if self.security is not None:  # after the router: it stops the ZAP handler
            self.security.close()
            self.security = None
        self.inbox.close()
        sockets.remove_ipc_files(self.bound)

    # -- replies from workers -----------------------------------------------------

    def _forward_replies(self) -> None:
        for _ in range(DRAIN_BATCH):
            frames = recv_waiting(self.pull)
            if frames is None:
                return
            entry = self.inflight.pop(frames[0].bytes, None)
            self.inbox.release(frames[0].bytes)
            if entry is None:  # already answered by a forced drain
                continue
            send_frames(self.router, entry[0] + frames[1:])
            if self.tracing is not None and frames[0].bytes in self.traces:
                self._trace(self.traces.pop(frames[0].bytes), frames[1])
            self.metrics.in_flight.set(len(self.inflight))

    def _trace(self, trace: tuple, reply_header) -> None:
        """A request's spans, once its reply went: ``trimmer.leaf.score`` (a child
        of the root's send span), and in it ``queue``, ``decode`` and
        ``forward`` (the model's), from the times the reply reports."""
        parent, t_recv, key = trace
        end = time.perf_counter()
        try:
            header = P.load_header(reply_header.buffer)
        except P.ProtocolError:
            header = {}
        timing = header.get("timing_us") or {}
        tr = self.tracing
        assert tr is not None
        span = tr.span("trimmer.leaf.score", t_recv, None, parent, kind="server", **{
            "trimmer.model": key, "trimmer.leaf": self.name, "trimmer.rows": header.get("rows"),
            "trimmer.batch_rows": header.get("batch_rows"),
            "trimmer.error": (header.get("error") or {}).get("kind")})
        ctx, t = tr.child_of(span), t_recv
        for stage, name in (("queue", "queue"), ("decode", "decode"), ("infer", "forward")):
            if stage in timing:
                tr.span(name, t, t + timing[stage] / 1e6, ctx)
                t += timing[stage] / 1e6
        tr.end(span, end)

    def _send(self, envelope: list, frames: list, error_kind: str | None = None) -> None:
        if error_kind:
            self.metrics.errors.labels(error_kind).inc()
        send_frames(self.router, envelope + frames)

    # -- requests -------------------------------------------------------------------

    def _receive(self) -> None:
        for _ in range(DRAIN_BATCH):
            # Frames past the limits are read and dropped (rule `envelope.frames-limit`):
            # a batch and a header, with room for an envelope, in all.
            frames = recv_waiting(self.router, MAX_MESSAGE_FRAMES,
                                  self.max_message_bytes + 2 * P.MAX_HEADER_NBYTES)
            if frames is None:
                return
            t_recv = time.perf_counter()
            envelope, body = split_envelope(frames)
            envelope = [f.bytes for f in envelope]
            self.metrics.received_bytes.inc(sum(len(f) for f in body))
            rid = None
            try:
                if not body:
                    raise P.ProtocolError(P.BAD_REQUEST, "empty message")
                header = P.load_header(body[0].buffer)
                rid = usable_id(header)   # echoed whatever else is wrong
                problem = id_problem(header, required=header.get("type") == "score")
                if problem is not None:
                    raise P.ProtocolError(P.BAD_REQUEST, problem)
                if isinstance(frames, Cut):
                    raise P.ProtocolError(
                        P.BAD_REQUEST if frames.reason == "frames" else P.TOO_LARGE,
                        f"{frames.describe(len(envelope))}; a request has at most 2 frames "
                        "(header, batch)", frames=frames.n_frames - len(envelope),
                        nbytes=frames.nbytes, limit=frames.limit)
                kind = P.check_header(header)["type"]
                if kind == "ping":
                    self._send(envelope, [self._pong(rid)])
                elif kind == "score":
                    self._score(envelope, rid, header, body, t_recv)
                else:
                    raise P.ProtocolError(P.BAD_REQUEST, f"unknown request type {P.quote(kind)}; "
                                                         "a leaf serves 'score' and 'ping'")
            except TrimmerError as exc:  # refused, with a reason the sender can act on
                refusal = P.as_protocol_error(exc)
                self._send(envelope, [P.error_header(rid, refusal.kind, str(refusal),
                                                     **refusal.details)], refusal.kind)
            except Exception as exc:  # a bug: answer anyway; raising here would stop the leaf
                log.exception("leaf %s: internal error on request %r", self.name, rid)
                self._send(envelope, [P.error_header(rid, P.INTERNAL, f"internal error: "
                                                     f"{type(exc).__name__}: {exc}")], P.INTERNAL)

    def _score(self, envelope, rid, header, body, t_recv) -> None:
        self._check_stop()  # the signal may have landed while this batch was being read
        if self._draining_since is not None:
            self._refused_draining += 1
            raise P.ProtocolError(P.SHUTTING_DOWN, f"leaf {self.name} is shutting down; send it "
                                                   "to another replica")
        key = P.field(header, "model", str)
        worker = self.table.worker(key)
        if worker is None:
            raise P.ProtocolError(P.UNKNOWN_MODEL, f"leaf {self.name} does not serve "
                                                   f"{P.quote(key)}", models=self.table.keys())
        worker.series.requests.inc()
        rows = P.field(header, "rows", int, check=lambda n: 0 <= n < 2**32)
        compression = P.field(header, "compression", str, default=P.COMPRESSION_NONE,
                              check=lambda c: c in (P.COMPRESSION_NONE, P.COMPRESSION_LZ4))
        raw_nbytes = (P.field(header, "raw_nbytes", int, check=lambda n: n >= 0)
                      if compression == P.COMPRESSION_LZ4 else None)
        # Remaining time the root gives the request; absent (older roots): no deadline.
        deadline_ms = P.field(header, "deadline_ms", (int, float), default=None,
                              check=lambda d: d >= 0)
        queued = worker.queued()
        if queued >= self.max_queue:
            raise P.ProtocolError(P.OVERLOADED, f"leaf {self.name}: {queued} requests already "
                                                f"queued for {key} (limit {self.max_queue})",
                                  queued=queued)
        if raw_nbytes is not None:
            if raw_nbytes > self.max_message_bytes:
                raise P.ProtocolError(P.TOO_LARGE, f"raw_nbytes {raw_nbytes} is above this "
                                                   f"leaf's limit of {self.max_message_bytes}")
        pinned, in_shm = False, "shm" in header
        if in_shm:  # the batch lies in the root's shared-memory slot
            payload, pinned = self.inbox.resolve(header, body, compression, peer_uid(body[0]))
        else:
            if len(body) != 2:
                raise P.ProtocolError(P.BAD_REQUEST, f"a score request has 2 frames (header, "
                                                     f"batch), got {len(body)}")
            payload = body[1]   # no larger than max_message_bytes: the socket saw to it
        token = next(self._tokens).to_bytes(8, "little")
        self.inflight[token] = (envelope, rid)
        if self.tracing is not None:
            self.traces[token] = (self.tracing.parent(header.get("traceparent")), t_recv, key)
        if in_shm:
            self.inbox.hold(token, header)
        self.metrics.in_flight.set(len(self.inflight))
        deadline = None if deadline_ms is None else t_recv + deadline_ms / 1000.0
        worker.submit(Request(token, rid, rows, compression, raw_nbytes, payload, t_recv,
                              pinned=pinned, deadline=deadline, in_shm=in_shm))

    def _pong(self, rid) -> bytes:
        return P.pack_header({
            "type": "pong", "id": rid, "ok": True, "role": "leaf", "name": self.name,
            "pid": os.getpid(), "device": self.device,
            "draining": self._draining_since is not None,
            # The largest batch message it takes (frame, decompressed or shm): roots
            # send nothing larger, answering `too_large` themselves.
            "max_message_bytes": self.max_message_bytes,
            # It decodes sliced and narrowed columns (rule pong.sub-feature-columns).
            **({"sub_feature_columns": True} if self.sub_feature_columns else {}),
            **({"grouped_columns": True} if self.grouped_columns else {}),   # pong.grouped-columns
            "models": self.table.describe(), **self.table.pong_fields()})
