"""The root process: serve scoring requests by fanning trimmed batches out to leaves.

One thread runs a zmq poll loop over the client ROUTER socket and one DEALER
per leaf replica. A request is fetched, preprocessed, trimmed and sent
inline (all CPU work, no waiting), then parked until its leaves answer or its
deadline passes; the loop never blocks on a leaf, so a slow or dead leaf
costs only its own models' results. Scale out with more root processes on
the node: they share the LMDB store and the leaves.
"""
from __future__ import annotations

import heapq
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import zmq

import _trim
from _trim.protocol import (BAD_REQUEST, COMPRESSION_LZ4, DEADLINE, INTERNAL, SHUTTING_DOWN,
                            TOO_LARGE, UNAVAILABLE, UNKNOWN_MODEL, ProtocolError,
                            candidates_from_frame, compress, error_header, field as hfield,
                            pack_header, unpack_header)
from signatures.schema import FeatureSchema

from .active import ActiveConfig, PreparedConfig, load_active_config, prepare_config
from .agreement import Agreement, default_models, resolve, served_versions
from .cache import CachedStore
from .config import LeafConfig, RootConfig
from .follow import ConfigFollower
from .leaves import LeafLink, LeafPool
from .metrics import RootMetrics
from .shm_link import ShmLinks
from .store import FeatureStore
from _trim.shm import reap_stale_segments

log = logging.getLogger("rootproc")

MAX_ID_CHARS = 128
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# How long replies may take to leave after a drain before the socket closes.
DRAIN_LINGER_MS = 2000


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
    t_sent: float = 0.0
    parked: bool = False
    done: bool = False


class RootServer:
    def __init__(self, cfg: RootConfig, ctx: zmq.Context | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.schema = FeatureSchema.load(cfg.schema)
        self.store = FeatureStore(cfg.store)
        self.cached = CachedStore(self.store, cfg.cache_size, cfg.cache_ttl_s)
        self.metrics = RootMetrics(cfg.name)
        self.metrics.watch_cache(self.cached)
        self.ctx = ctx or zmq.Context.instance()
        self.apply_config(load_active_config(cfg))
        # Without leaves in the root config, the bundle's placement endpoints.
        leaves = cfg.leaves or tuple(LeafConfig(name, (ep,)) for name, ep in
                                     sorted(self.active.endpoints.items()))
        self.pool = LeafPool(self.ctx, leaves, self.active.placement, cfg.compression,
                             cfg.health_timeout_ms / 1000)
        reap_stale_segments()
        try:
            self.shm = ShmLinks(self.pool.links, cfg.shm, {l.name: l.transport for l in leaves},
                                self.metrics.registry)
        except BaseException:
            self.pool.close()
            raise
        self.frontend = self.ctx.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.LINGER, DRAIN_LINGER_MS)
        self.frontend.setsockopt(zmq.RCVHWM, 100_000)
        self.frontend.setsockopt(zmq.SNDHWM, 100_000)
        for ep in cfg.bind:
            self.frontend.bind(ep)
        self.endpoints = [self.frontend.getsockopt(zmq.LAST_ENDPOINT).decode()] if len(cfg.bind) == 1 \
            else list(cfg.bind)
        self.poller = zmq.Poller()
        self.poller.register(self.frontend, zmq.POLLIN)
        for link in self.pool.links:
            self.poller.register(link.socket, zmq.POLLIN)
        self.inflight: dict[str, tuple[Pending, int, LeafLink, float]] = {}
        self.deadlines: list = []
        self.pending_count = 0
        self._seq = 0
        self.draining = False
        self.stopped = False
        self.metrics.info.labels(self.name, self.active.id, cfg.trim, cfg.compression).set(1)
        self.agreement = Agreement(self.name)
        self.gap_counts: dict[str, int] = {}   # version -> requests sent untrimmed for it
        # With a staged config store, follow its stage (see rootproc/follow.py).
        self.follower = (ConfigFollower(self, cfg.config_store, cfg.stage).start()
                         if cfg.config_store else None)

    # -- config -----------------------------------------------------------------

    def apply_config(self, active: ActiveConfig) -> None:
        """Compile what a config implies (preprocessors, trim plans) and install it."""
        prepared = prepare_config(self.schema, self.store.layouts, self.cfg.trim, active)
        if prepared.pre_full.absent_features:
            log.warning("feature store has no raw field for %s: they take their defaults",
                        ", ".join(prepared.pre_full.absent_features))
        self.install_config(prepared)

    def install_config(self, prepared: PreparedConfig) -> None:
        """Swap in a compiled config, between two requests, in one step."""
        self.prepared = prepared
        self.active = prepared.active
        self.pre_full, self.pre_used = prepared.pre_full, prepared.pre_used
        self.plans: dict = dict(prepared.plans)

    def plan_for(self, layout, key: str | None):
        """The trim plan of ``key`` (None: every column) on ``layout``, compiled once."""
        cache_key = (layout.fingerprint, key)
        plan = self.plans.get(cache_key)
        if plan is None:
            names = layout.names if key is None else self.active.features_for(key)
            plan = _trim.compile_plan(layout, names)
            self.plans[cache_key] = plan
        return plan

    # -- the loop -------------------------------------------------------------------

    def request_stop(self, *_):
        if not self.draining:
            log.info("%s: draining %d request(s) in flight", self.name, self.pending_count)
        self.draining = True

    def run(self, install_signals: bool = True) -> None:
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        interval = self.cfg.ping_interval_ms / 1000
        next_ping = 0.0
        try:
            while not (self.draining and self.pending_count == 0):
                now = time.monotonic()
                if now >= next_ping:
                    self.pool.ping_all()
                    self.update_health(now)
                    next_ping = now + interval
                wake = next_ping
                if self.deadlines:
                    wake = min(wake, self.deadlines[0][0])
                timeout_ms = max(0, min(100, int((wake - now) * 1000) + 1))
                for sock, _ in self.poller.poll(timeout_ms):
                    if sock is self.frontend:
                        self.drain_socket(sock, self.on_client)
                    else:
                        link = self.pool.by_socket[sock]
                        self.drain_socket(sock, lambda frames, l=link: self.on_leaf(l, frames))
                self.expire(time.monotonic())
                if self.follower is not None:
                    self.follower.tick()
        finally:
            self.close()

    @staticmethod
    def drain_socket(sock, handler, limit: int = 256) -> None:
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handler(frames)

    def update_health(self, now: float) -> None:
        self.shm.check_leaves()
        for link in self.pool.links:
            up = link.healthy(now, self.pool.health_timeout_s)
            self.metrics.leaf_up.labels(link.name, link.endpoint).set(1 if up else 0)
            self.metrics.leaf_outstanding.labels(link.name, link.endpoint).set(link.outstanding)

    def close(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.follower is not None:
            self.follower.stop()
        self.frontend.close(linger=DRAIN_LINGER_MS)
        self.pool.close()
        self.shm.close()
        self.store.close()
        # libzmq leaves ipc socket files behind; a stale one only confuses operators.
        for ep in self.endpoints:
            if ep.startswith("ipc://") and not ep.startswith("ipc://@"):
                try:
                    os.unlink(ep[len("ipc://"):])
                except OSError:
                    pass

    # -- client side ------------------------------------------------------------------

    def on_client(self, frames) -> None:
        # A REQ client puts an empty delimiter after its identity; a DEALER does not.
        split = 2 if len(frames) > 1 and len(frames[1]) == 0 else 1
        envelope, body = frames[:split], frames[split:]
        rid = None
        try:
            if not body:
                raise ProtocolError(BAD_REQUEST, "request has no header frame")
            header = unpack_header(body[0].buffer)
            raw_id = header.get("id")
            if isinstance(raw_id, str) and len(raw_id) <= MAX_ID_CHARS:
                rid = raw_id
            kind = header["type"]
            if kind == "ping":
                self.reply(envelope, [self.pong(rid)])
                return
            if kind != "score":
                raise ProtocolError(BAD_REQUEST, f"unknown request type {kind!r} "
                                                 "(expected 'score' or 'ping')")
            if self.draining:
                raise ProtocolError(SHUTTING_DOWN, f"root {self.name} is shutting down; retry "
                                                   "on another root")
            self.score(envelope, header, body)
        except ProtocolError as exc:
            self.fail(envelope, rid, exc.kind, str(exc), exc.details)
        except Exception as exc:  # a bug: answer anyway, keep serving
            log.error("request %r: internal error\n%s", rid, traceback.format_exc())
            self.fail(envelope, rid, INTERNAL, f"internal error: {type(exc).__name__}: {exc}", {})

    def fail(self, envelope, rid, kind: str, message: str, details: dict) -> None:
        self.metrics.requests.labels("error").inc()
        self.metrics.errors.labels(kind).inc()
        self.reply(envelope, [error_header(rid, kind, message, **details)])

    def reply(self, envelope, frames) -> None:
        try:
            self.frontend.send_multipart(list(envelope) + list(frames), copy=False,
                                         flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("client reply dropped: the client's queue is full")

    def pong(self, rid) -> bytes:
        return pack_header({"type": "pong", "id": rid, "ok": True, "role": "root",
                            "name": self.name, "pid": os.getpid(), "config": self.active.id,
                            "generation": self.active.generation, "trim": self.cfg.trim,
                            "compression": self.cfg.compression,
                            "models": self.active.default_models,
                            "leaves": self.pool.status(time.monotonic())})

    def resolve_models(self, requested) -> list[str]:
        served = served_versions(self.pool, time.monotonic())
        if requested is None:
            keys = default_models(self.active, served)
            if not keys:
                raise ProtocolError(UNKNOWN_MODEL, "the active config has no model to score with")
            return keys
        hosted = self.pool.hosted()
        keys, unknown = [], []
        for name in requested:
            if "@" in name:
                key = name if (name in self.active.models or name in hosted) else None
            else:
                key = resolve(self.active, name, served)
            if key is None:
                unknown.append(name)
            elif key not in keys:
                keys.append(key)
        if unknown:
            raise ProtocolError(UNKNOWN_MODEL, f"no such model version served: {', '.join(unknown)}",
                                unknown=unknown)
        return keys

    def score(self, envelope, header: dict, body) -> None:
        t0 = time.perf_counter()
        cfg = self.cfg
        rid = hfield(header, "id", str, check=lambda s: 0 < len(s) <= MAX_ID_CHARS)
        user = hfield(header, "user", int, check=lambda u: INT64_MIN <= u <= INT64_MAX)
        requested = hfield(header, "models", list, default=None,
                           check=lambda m: all(isinstance(x, str) and x for x in m))
        deadline_ms = hfield(header, "deadline_ms", (int, float), default=cfg.deadline_ms,
                             check=lambda d: d > 0)
        deadline_ms = min(deadline_ms, cfg.max_deadline_ms)
        if len(body) != 2:
            raise ProtocolError(BAD_REQUEST, f"score request has {len(body)} frames, expected 2 "
                                             "(header, candidate ids)")
        size = sum(len(f) for f in body)
        if size > cfg.max_request_nbytes:
            raise ProtocolError(TOO_LARGE, f"request is {size} bytes, limit {cfg.max_request_nbytes}")
        candidates = candidates_from_frame(body[1].buffer, cfg.max_candidates)
        keys = self.resolve_models(requested)
        n = len(candidates)

        # Fetch.
        cand_ids = candidates.tolist()
        user_recs = self.cached.get("user", [user])
        cand_recs = self.cached.get("candidate", cand_ids)
        self.fill_missing("user", [user], user_recs)
        self.fill_missing("candidate", cand_ids, cand_recs)
        t_fetch = time.perf_counter()

        # Preprocess: the union the config uses, or everything when a model is
        # outside the config or disagrees with its leaf (fail open), or trimming is off.
        now = time.monotonic()
        gaps = [k for k in keys
                if self.agreement.gap_reason(self.active, k, self.pool.candidates(k, now))]
        pre = self.pre_full if (gaps or cfg.trim == "off") else self.pre_used
        batch = pre.build(user_recs, cand_recs)
        t_pre = time.perf_counter()

        now = time.monotonic()
        pending = Pending(rid, envelope, n, [], now + deadline_ms / 1000, t0, {})
        all_plan = self.plan_for(batch.layout, None)
        untrimmed = _trim.encoded_nbytes(all_plan, batch)
        for idx, key in enumerate(keys):
            gap = key in gaps
            if gap:
                self.metrics.trim_gaps.labels(key).inc()
                self.gap_counts[key] = self.gap_counts.get(key, 0) + 1
            trimmed = cfg.trim == "on" and not gap
            plan = self.plan_for(batch.layout, key if trimmed else None)
            result = {"model": key, "ok": False, "trimmed": trimmed}
            pending.results.append(result)
            if n == 0:
                result.update(ok=True, leaf=None, bytes_sent=0)
                pending.frames[idx] = b""
                continue
            try:
                self.send_to_leaf(pending, idx, key, plan, batch, untrimmed, now)
            except Exception as exc:
                # Other models may already be in flight: this request's one reply
                # comes from `finish`, so a failure here stays this model's result.
                log.error("request %r, %s: internal error\n%s", rid, key, traceback.format_exc())
                result["error"] = {"kind": INTERNAL, "message": f"internal error: "
                                   f"{type(exc).__name__}: {exc}"}
        t_trim = time.perf_counter()
        pending.timing = {"fetch": t_fetch - t0, "preprocess": t_pre - t_fetch, "trim": t_trim - t_pre}
        pending.t_sent = t_trim
        m = self.metrics.latency
        m.labels("fetch").observe(t_fetch - t0)
        m.labels("preprocess").observe(t_pre - t_fetch)
        m.labels("trim").observe(t_trim - t_pre)
        if not pending.waiting:
            self.finish(pending)
            return
        pending.parked = True
        self.pending_count += 1
        self.metrics.in_flight.set(self.pending_count)
        self._seq += 1
        heapq.heappush(self.deadlines, (pending.deadline, self._seq, pending))

    def fill_missing(self, source: str, ids, records) -> None:
        missing = [k for k, r in enumerate(records) if r is None]
        if not missing:
            return
        self.metrics.missing.labels(source).inc(len(missing))
        if self.cfg.missing == "fail":
            shown = [ids[k] for k in missing[:20]]
            raise ProtocolError(BAD_REQUEST, f"{len(missing)} {source} id(s) not in the feature "
                                             f"store: {', '.join(map(str, shown))}"
                                             f"{' ...' if len(missing) > 20 else ''}",
                                missing=shown, source=source)
        default = self.store.layout(source).default_record
        for k in missing:
            records[k] = default

    def send_to_leaf(self, pending: Pending, idx: int, key: str, plan, batch, untrimmed: int,
                     now: float) -> None:
        result = pending.results[idx]
        links = self.pool.candidates(key, now)
        if not links:
            result["error"] = {"kind": UNAVAILABLE, "message": f"no leaf hosts {key}"}
            return
        nbytes = _trim.encoded_nbytes(plan, batch)
        buf = None
        for link in links:
            self._seq += 1
            mid = f"{self._seq:x}"
            head = {"type": "score", "id": mid, "model": key, "rows": pending.n,
                    "compression": link.compression}
            channel = self.shm.channel(link)
            desc = None
            if channel is not None:
                desc = channel.place(mid, plan, batch, nbytes, lambda t, l=link: self.pump(l, t))
            if desc is not None:
                head.update(compression="none", shm=desc)
                frames, payload = [pack_header(head)], b""
            else:
                if buf is None:
                    # A fresh buffer per message: zmq owns it until sent (copy=False).
                    buf = np.empty(nbytes, dtype=np.uint8)
                    _trim.encode_into(plan, batch, buf)
                payload = buf
                if link.compression == COMPRESSION_LZ4:
                    payload = compress(buf)
                    head["raw_nbytes"] = nbytes
                frames = [pack_header(head), payload]
            if not link.send(frames):
                if desc is not None:
                    channel.unsent(mid)
            else:
                if desc is not None:
                    self.shm.sent(link)
                    result["transport"] = "shm"
                link.outstanding += 1
                self.inflight[mid] = (pending, idx, link, time.perf_counter())
                pending.waiting[mid] = idx
                result.update(leaf=link.name, bytes_sent=nbytes)
                wire = len(payload)  # 0 through shared memory: no payload on the socket
                self.metrics.bytes_sent.labels(link.name, key).inc(nbytes)
                self.metrics.bytes_untrimmed.labels(link.name, key).inc(untrimmed)
                self.metrics.wire_bytes.labels(link.name, key).inc(wire)
                if wire != nbytes and desc is None:
                    result["wire_bytes"] = wire
                return
        result["error"] = {"kind": UNAVAILABLE, "message": f"no leaf replica of {key} is connected "
                           f"(tried {', '.join(l.endpoint for l in links)})"}

    def pump(self, link: LeafLink, timeout_s: float) -> None:
        """Read ``link``'s replies for up to ``timeout_s``: waiting for a shm slot."""
        if link.socket.poll(max(1, int(timeout_s * 1000))):
            self.drain_socket(link.socket, lambda frames: self.on_leaf(link, frames))

    # -- leaf side ----------------------------------------------------------------

    def on_leaf(self, link: LeafLink, frames) -> None:
        try:
            header = unpack_header(frames[0].buffer)
        except ProtocolError as exc:
            log.warning("leaf %s (%s) sent an unreadable reply: %s", link.name, link.endpoint, exc)
            return
        if header["type"] == "pong":
            link.on_pong(header, time.monotonic())
            return
        self.shm.replied(link, header.get("id"))  # even after the deadline: the slot is free
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
            err = header.get("error")
            if not isinstance(err, dict) or not isinstance(err.get("kind"), str):
                err = {"kind": INTERNAL, "message": f"leaf {link.name} sent a malformed reply"}
            result["error"] = err
        # Unparked: `score` is still sending its other models (a reply read
        # while waiting for a slot) and finishes the request itself.
        if not pending.waiting and pending.parked:
            self.finish(pending)

    def expire(self, now: float) -> None:
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
        if pending.done:
            return
        pending.done = True
        if pending.parked:
            self.pending_count -= 1
            self.metrics.in_flight.set(self.pending_count)
        t_end = time.perf_counter()
        frames, results = [], []
        for idx, result in enumerate(pending.results):
            if result["ok"]:
                frames.append(pending.frames[idx])
                result["frame"] = len(frames)
                result.pop("error", None)
                self.metrics.model_results.labels(result["model"], "ok").inc()
            else:
                kind = result["error"]["kind"]
                self.metrics.errors.labels(kind).inc()
                self.metrics.model_results.labels(result["model"], kind).inc()
            results.append(result)
        timing = {k: int(v * 1e6) for k, v in pending.timing.items()}
        timing["leaves"] = int((t_end - pending.t_sent) * 1e6)
        timing["total"] = int((t_end - pending.t_start) * 1e6)
        self.metrics.latency.labels("total").observe(t_end - pending.t_start)
        self.metrics.requests.labels("ok").inc()
        header = pack_header({"type": "scores", "id": pending.rid, "ok": True, "n": pending.n,
                              "results": results, "timing_us": timing, "root": self.name})
        self.reply(pending.envelope, [header] + frames)
