"""One inference thread per model version: load, warm up, batch, score, reply.

Requests arrive on a queue from the I/O thread; replies go back to it over an
inproc PUSH socket (zmq sockets belong to one thread, and only the I/O thread
may touch the ROUTER). The forward pass releases the GIL, so the I/O thread
keeps receiving while a model runs. The model table (leafproc/table.py)
starts and stops workers; nothing else does.

Each worker sets its own intra-op thread budget (`apply_thread_budget`) when
its thread starts: torch's CPU thread count is OpenMP's, which is a
per-thread setting, so ``--threads`` applied on the main thread alone leaves
every model thread a team of one thread per core, whose idle members spin
after each parallel op (measured: the same ``mv`` 2.04 ms of CPU in a model
thread against 0.32 ms on the main thread; bench/RESULTS.md).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zmq

import _trim
from _trim.errors import Refused, TrimmerError
from _trim.transport import protocol as P
from _trim.transport.frames import send_frames
from leafproc.defaults import MAX_ERROR_CHARS, REPLY_LINGER_MS, WARMUP_ROWS
from leafproc.input_check import SignatureCheck, synthetic_message
from leafproc.metrics import LeafMetrics
from leafproc.tensors import ModelOutputError, Part, builder_for, merge_key, to_scores, written_inputs
from signatures.repository import artifacts
from signatures.repository.module_info import ModuleInfo

log = logging.getLogger("leafproc")

STOP = object()


def apply_thread_budget(threads: int) -> int:
    """Give the calling thread's torch ops ``threads`` threads (its own OpenMP
    team size; see the module docstring); the count torch now reports."""
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


@dataclass(eq=False)
class Request:
    token: bytes          # the I/O thread's handle for the reply envelope
    id: object
    rows: int
    compression: str
    raw_nbytes: int | None    # LZ4: the batch's size once decompressed
    payload: Any          # zmq.Frame (or any buffer) holding the batch
    t_recv: float         # time.perf_counter() at receipt
    pinned: bool = False  # payload lies in page-locked memory (a registered shm slot)
    deadline: float | None = None  # time.perf_counter() past which the root no longer waits
    in_shm: bool = False  # payload is a segment a peer named, not bytes it sent


class ModelWorker(threading.Thread):
    def __init__(self, path: str, info: ModuleInfo, *, ctx: zmq.Context, reply_endpoint: str,
                 device: torch.device, metrics: LeafMetrics, max_batch_rows: int,
                 max_wait_s: float, max_message_bytes: int, staged: bool | None = None,
                 threads: int | None = None):
        super().__init__(name=f"model-{info.key}", daemon=True)
        # None: the budget of the thread making the worker (the leaf's main
        # thread, where --threads is applied).
        self.threads = threads or torch.get_num_threads()
        self.intra_op_threads: int | None = None   # as torch reports it on this worker's thread
        self.key = info.key
        self.info = info
        self.inputs = list(info.inputs)
        self.groups = tuple(info.groups)   # its grouped columns (a TorchRec model's), if any
        self.check = SignatureCheck(self.inputs, self.groups)
        # Only these can keep two requests out of one forward pass (see merge_key).
        self.shared_lists = [s for s in self.inputs if s.ragged and s.per_request]
        self.path = path
        self.device = device
        self.metrics = metrics
        self.series = metrics.for_model(info.key)
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_s
        self.max_message_bytes = max_message_bytes
        self.builder = builder_for(device, staged)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.ready = False
        self.error: str | None = None
        self._ctx = ctx
        self._reply_endpoint = reply_endpoint
        self._push: zmq.Socket | None = None   # made on the worker's own thread
        self.model: Any = None   # the loaded module; None until loaded, and once unloaded
        # Inputs the model writes to in place (found at warm-up): it gets its
        # own copy of any it would otherwise read from a root's read-only slot.
        self.writes_inputs: list[str] = []

    # -- called from the I/O thread -------------------------------------------

    def submit(self, req: Request) -> None:
        self.queue.put(req)

    def stop(self) -> None:
        self.queue.put(STOP)

    def queued(self) -> int:
        return self.queue.qsize()

    def describe(self) -> dict:
        d = {"model": self.key, "signature_hash": self.info.signature_hash, "ready": self.ready}
        if self.error:
            d["error"] = self.error
        return d

    # -- the thread -------------------------------------------------------------

    def run(self) -> None:
        self.intra_op_threads = apply_thread_budget(self.threads)
        push = self._push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        push.connect(self._reply_endpoint)
        try:
            try:
                self._load()
                self.ready = True
                self.series.ready.set(1)
                log.info("model %s (%s) ready on %s", self.key, self.info.artifact.describe(),
                         self.device)
            except Refused as exc:   # a kind or build this leaf cannot load: no traceback
                self.error = f"cannot load: {exc}"
                log.error("model %s %s", self.key, self.error)
            except Exception as exc:
                self.error = f"failed to load or warm up: {_short(exc)}"
                log.exception("model %s %s", self.key, self.error)
            self._loop()
        finally:
            push.close()

    def _load(self) -> None:
        # A kind this leaf cannot load (an AOTInductor package for another
        # device or torch release) is refused here, with what would load.
        with artifacts.loading(self.info.artifact):   # torch's lazy imports, one thread at a time
            self.model = artifacts.load(self.path, self.info.artifact, self.device)
            # Warm-up runs the real path (decode, check, build, forward) so that the
            # first request pays no lazy initialisation or JIT profiling cost.
            # The first pass also finds the inputs the model writes to in place.
            for first in (True, False):
                msg = synthetic_message(self.inputs, WARMUP_ROWS)   # fresh: a write changed it
                decoded = _trim.decode(msg)
                self.check(decoded, WARMUP_ROWS)
                part = Part(decoded, np.frombuffer(msg, dtype=np.uint8), WARMUP_ROWS)
                features = self.builder.build([part], self.inputs)
                if first:
                    self.writes_inputs = written_inputs(self.model, features, WARMUP_ROWS)
                    continue
                with torch.inference_mode():
                    to_scores(self.model(features), WARMUP_ROWS)
            if self.writes_inputs:
                log.warning("model %s writes to its inputs %s in place: they are copied out of "
                            "shared-memory slots before each forward (a cost; clone them in the "
                            "model instead)", self.key, ", ".join(self.writes_inputs))

    def _loop(self) -> None:
        carry = None
        while True:
            first = carry if carry is not None else self.queue.get()
            carry = None
            if first is STOP:
                return
            # Checked at pickup: a backlog the root gave up on drains at the
            # cost of one reply each instead of a forward pass each.
            if self._expired(first):
                continue
            window, rows = [first], first.rows
            if self.max_wait_s > 0:
                deadline = first.t_recv + self.max_wait_s
                while rows < self.max_batch_rows:
                    timeout = deadline - time.perf_counter()
                    try:
                        nxt = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is not STOP and self._expired(nxt):
                        continue
                    if nxt is STOP or rows + nxt.rows > self.max_batch_rows:
                        carry = nxt
                        break
                    window.append(nxt)
                    rows += nxt.rows
                # Checked again where the leaf starts on them: a deadline may
                # have passed while the window waited to fill.
                window = [req for req in window if not self._expired(req)]
                if not window:
                    continue
            try:
                self._serve(window)
            except Exception as exc:  # a bug here must not kill the thread or drop replies
                log.exception("model %s: internal error serving %d requests", self.key, len(window))
                for req in window:
                    self._error(req, P.INTERNAL, f"internal error: {_short(exc)}")

    def _serve(self, window: list[Request]) -> None:
        if not self.ready:
            for req in window:
                self._error(req, P.UNAVAILABLE, f"model {self.key} is not available: {self.error}")
            return
        groups: dict[tuple, list] = {}
        for req in window:
            t0 = time.perf_counter()
            queue_s = t0 - req.t_recv
            try:
                part = self._prepare(req)
            except TrimmerError as exc:  # refused, with a reason the root can act on
                refusal = P.as_protocol_error(exc)
                self._error(req, refusal.kind, str(refusal), **refusal.details)
                continue
            decode_s = time.perf_counter() - t0
            self.series.queue_seconds.observe(queue_s)
            if part.rows == 0:
                self._reply(req, np.empty(0, np.float32), 0, queue_s, decode_s, 0.0)
                continue
            key = merge_key(part.decoded, self.shared_lists) if len(window) > 1 else ()
            groups.setdefault(key, []).append(
                (req, part, queue_s, decode_s))
        for group in groups.values():
            self._forward(group)

    def _prepare(self, req: Request) -> Part:
        buf = req.payload.buffer if isinstance(req.payload, zmq.Frame) else req.payload
        if req.compression == P.COMPRESSION_LZ4:
            buf = P.decompress(buf, req.raw_nbytes or 0, self.max_message_bytes, writable=True)
        try:
            decoded = _trim.decode(buf)
        except ValueError as exc:
            if req.in_shm:  # the decoder quotes what it read: never echo a segment's bytes
                log.warning("model %s: shared-memory batch does not decode: %s", self.key, exc)
                raise P.ProtocolError(P.DECODE_ERROR, "shared-memory batch does not decode (the "
                                                      "leaf's log says why)") from None
            raise P.ProtocolError(P.DECODE_ERROR, f"batch frame does not decode: {exc}") from None
        self.check(decoded, req.rows)
        return Part(decoded, np.frombuffer(buf, dtype=np.uint8, count=decoded.nbytes), decoded.n_rows,
                    req.pinned)

    def _forward(self, group: list) -> None:
        parts = [g[1] for g in group]
        rows = sum(p.rows for p in parts)
        t0 = time.perf_counter()
        try:
            features = self.builder.build(parts, self.inputs, private=bool(self.writes_inputs),
                                          groups=self.groups)
        except Exception as exc:
            log.exception("model %s: building tensors failed", self.key)
            for req, *_ in group:
                self._error(req, P.INTERNAL, f"building tensors failed: {_short(exc)}")
            return
        t1 = time.perf_counter()
        try:
            with torch.inference_mode():
                scores = to_scores(self.model(features), rows)
        except Exception as exc:
            if len(group) > 1:
                # One bad request must not fail the requests it was merged with.
                for g in group:
                    self._forward([g])
                return
            detail = str(exc) if isinstance(exc, ModelOutputError) else _short(exc)
            req = group[0][0]
            log.warning("model %s raised on request %r: %s", self.key, req.id, detail)
            self._error(req, P.MODEL_ERROR, f"model {self.key} failed: {detail}")
            return
        t2 = time.perf_counter()
        build_s, infer_s = t1 - t0, t2 - t1
        self.series.infer_seconds.observe(infer_s)
        self.series.batch_rows.observe(rows)
        self.series.batch_requests.observe(len(group))
        start = 0
        for req, part, queue_s, decode_s in group:
            self._reply(req, scores[start:start + part.rows], rows, queue_s,
                        decode_s + build_s, infer_s)
            start += part.rows

    def _expired(self, req: Request) -> bool:
        """Answer ``req`` with ``deadline`` when its root has stopped waiting."""
        if req.deadline is None:
            return False
        late_s = time.perf_counter() - req.deadline
        if late_s < 0:
            return False
        self.series.expired.inc()
        self._error(req, P.DEADLINE, f"the root's deadline passed {late_s * 1000:.1f} ms before "
                                     f"model {self.key} could start on the request (queued "
                                     f"{(late_s + req.deadline - req.t_recv) * 1000:.1f} ms)")
        return True

    # -- replies ----------------------------------------------------------------

    def _reply(self, req: Request, scores: np.ndarray, batch_rows: int,
               queue_s: float, decode_s: float, infer_s: float) -> None:
        self.series.rows.inc(len(scores))
        self.series.decode_seconds.observe(decode_s)
        header = P.pack_header({
            "type": "scores", "id": req.id, "ok": True, "model": self.key, "rows": len(scores),
            "timing_us": {"queue": int(queue_s * 1e6), "decode": int(decode_s * 1e6),
                          "infer": int(infer_s * 1e6)},
            "batch_rows": batch_rows})
        send_frames(self._replies(), [req.token, header,
                                      scores.astype(P.SCORES_DTYPE, copy=False).tobytes()])

    def _error(self, req: Request, kind: str, message: str, **details) -> None:
        self.metrics.errors.labels(kind).inc()
        send_frames(self._replies(), [req.token, P.error_header(req.id, kind, message, **details)])

    def _replies(self) -> zmq.Socket:
        assert self._push is not None, "replies are sent from the worker's thread, after run()"
        return self._push


def _short(exc: BaseException) -> str:
    """An exception as one readable line; TorchScript errors carry the
    interpreter's traceback, whose last line is the actual message."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        text = lines[-1]
    return text[:MAX_ERROR_CHARS]
