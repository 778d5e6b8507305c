"""A score request from its checked header to its models' messages on their way.

`Scorer.score` starts the request's CPU work, none of it waiting, in three
steps: `start` (on the serving loop: check the header, resolve the models,
choose the preprocessor), `compute` (on a worker thread,
rootproc/workers.py: fetch the records, fill the missing ones, build the
batch) and the sending (back on the loop: each model's trimmed share handed
to the router, rootproc/router.py, one model at a time, `send_some`). The
loop builds no large batch (with ``threads`` 1 small ones, up to
INLINE_BUILD_NBYTES between two rounds of sending: cheaper than the
handover), and it sends models for at most SEND_SLICE_S (plus the one model
it is encoding) before it reads its sockets again, so that one large request
holds it for one model's message at most (docs/operations.md, ``threads``).
The router answers the client: the scorer tells it each model's fate and
never writes the request itself.

The scorer also holds what the loop last installed: the compiled config
(preprocessors, trim plans) and, for the heartbeat, how many requests each
version was sent untrimmed.
"""
from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import _trim
from _trim.transport.protocol import BAD_REQUEST, DEADLINE, STORE_UNAVAILABLE, ProtocolError
from rootproc.config_plans import ConfigPlans
from rootproc.defaults import INLINE_BUILD_NBYTES, MISSING_IDS_SHOWN, SEND_SLICE_S
from rootproc.intake import ScoreRequest, parse_score, resolve_models, unknown_model_error
from rootproc.job import Job
from rootproc.leaves.agreement import Agreement, replacement, served_versions
from rootproc.leaves.encoding import ModelBatch
from rootproc.memory import MemoryBudget
from rootproc.open_request import OpenRequest
from rootproc.reply import wire_error
from rootproc.request_trace import RequestTrace
from rootproc.rollout.installed import PreparedConfig
from rootproc.workers import BatchWorkers

if TYPE_CHECKING:
    from signatures.runtime.tracing import Tracing


class Scorer:
    def __init__(self, cfg, store, cached, metrics, pool, router, prepared: PreparedConfig,
                 budget: MemoryBudget):
        self.cfg = cfg
        self.budget = budget
        self.store = store
        self.cached = cached
        self.metrics = metrics
        self.pool = pool
        self.router = router
        self.agreement = Agreement(cfg.name)
        self.gap_counts: dict[str, int] = {}   # version -> requests sent untrimmed for it
        self.tracing: Tracing | None = None   # when tracing is on (set by the app)
        self.install(prepared)
        # At least one worker whatever ``threads`` says: the loop builds no large batch.
        self.workers = BatchWorkers(max(1, cfg.threads - 1), self.compute, cfg.name)
        # With one thread, a small request is built on the loop: handing it to
        # the worker would cost more than it holds the loop (docs/operations.md).
        self.inline_nbytes = INLINE_BUILD_NBYTES if cfg.threads == 1 else -1
        self.inline_left = self.inline_nbytes   # of it, until the loop's next `send_some`
        self.sending: deque[Job] = deque()   # built, their models being sent by the loop
        self.deferred: deque[Job] = deque()  # small, to build on the loop's next turn

    @property
    def pending(self) -> int:
        """Requests taken in and not yet parked with the router."""
        return self.workers.pending + len(self.sending) + len(self.deferred)

    @property
    def loop_has_work(self) -> bool:
        """Requests the loop itself has yet to build or send: it polls without waiting."""
        return bool(self.sending or self.deferred)

    def close(self) -> None:
        self.workers.close()

    def install(self, prepared: PreparedConfig) -> None:
        """Serve ``prepared`` from the next request on."""
        self.prepared = prepared
        self.active = prepared.active
        self.plans = ConfigPlans(prepared)

    def score(self, envelope, header: dict, body) -> None:
        """Send a score request's models to their leaves (now, or once a worker
        has built its batch); ProtocolError when it cannot be served at all."""
        job = self.start(envelope, header, body)
        if job is None:
            return
        if job.build_nbytes > self.inline_nbytes:
            self.workers.submit(job)   # too large to build on the loop at all
            return
        if job.build_nbytes > self.inline_left:
            # The loop built its share since it last read its sockets: on its next
            # turn. Handing it to the worker instead costs more than it saves here
            # (the loop and the worker take turns at the GIL: +3 ms a request at
            # the demo's scale, docs/operations.md).
            self.deferred.append(job)
            return
        self.inline_left -= job.build_nbytes
        try:   # small, and the loop has not built its share since it last sent: built here
            self.compute(job)
            self.begin_send(job)
        except BaseException:
            self.budget.release(job.reserved)
            job.reserved = 0
            raise
        self.sending.append(job)

    def build_deferred(self, fail) -> None:
        """Build the deferred requests the loop's share allows, oldest first (the
        loop thread, after reading its sockets); at least one, so each turn moves."""
        while self.deferred and self.deferred[0].build_nbytes <= self.inline_left:
            job = self.deferred.popleft()
            self.inline_left -= job.build_nbytes
            try:
                self.compute(job)
                self.begin_send(job)
            except Exception as exc:
                job.error = exc
                self._failed(job, fail)
                continue
            self.sending.append(job)

    def collect(self, fail) -> None:
        """Take the jobs the workers handed back: queued for sending
        (`send_some`); ``fail(envelope, rid, ProtocolError)`` answers one that
        failed."""
        for job in self.workers.finished():
            if job.error is None:
                try:
                    self.begin_send(job)
                    self.sending.append(job)
                    continue
                except Exception as exc:
                    job.error = exc
            self._failed(job, fail)

    def _failed(self, job: Job, fail) -> None:
        self.budget.release(job.reserved)
        job.reserved = 0
        rid = job.req.rid
        assert job.error is not None
        if job.trace is not None:
            job.trace.failed(getattr(job.error, "kind", "internal"))
        fail(job.envelope, rid, wire_error(job.error, f"request {rid!r}"))

    def send_some(self, fail, slice_s: float = SEND_SLICE_S) -> None:
        """Send the queued requests' models, oldest request first, one model
        at a time, until none is left or ``slice_s`` has passed: the loop
        then reads its sockets and comes back (poll timeout 0 while any is left)."""
        self.inline_left = self.inline_nbytes
        self.build_deferred(fail)
        t_end = time.perf_counter() + slice_s
        while self.sending:
            job = self.sending[0]
            try:
                if self.send_next(job):
                    self.sending.popleft()
            except Exception as exc:   # a bug: the request still gets its one reply
                self.sending.popleft()
                job.error = exc
                if job.request is not None and not job.request.done:
                    self.router.park(job.request)   # answered with what it has by its deadline
                else:
                    self._failed(job, fail)
            if time.perf_counter() >= t_end:
                return

    def start(self, envelope, header: dict, body) -> Job | None:
        """The request's job, or None when it was answered without leaves."""
        t0, arrived = time.perf_counter(), time.monotonic()
        req = parse_score(header, body, self.cfg)
        wanted = resolve_models(self.active, self.pool, req.models, arrived)
        keys = [key for key, known in wanted if known]
        # The deadline counts from arrival: fetching and building spend it too.
        deadline = arrived + req.deadline_ms / 1000
        if not keys or len(req.candidates) == 0:
            request = self.router.open(req.rid, envelope, len(req.candidates), deadline, t0)
            self.answer_without_leaves(request, wanted)
            return None
        pre, gaps = self.choose_preprocessor(keys, arrived)
        job = Job(envelope, req, wanted, pre, gaps, t0, deadline)
        if self.tracing is not None:
            job.trace = RequestTrace(self.tracing, header, t0, req.rid, len(req.candidates))
        if pre is self.prepared.pre_used and not self.prepared.untrimmed.same:
            job.counterfactual = self.prepared.untrimmed
        self.admit(job, keys)
        return job

    def admit(self, job: Job, keys) -> None:
        """Reserve the request's estimated memory: its records, its batch and
        each model's message (rootproc/memory.py); too_large or overloaded,
        before anything is fetched, when it cannot have it."""
        n, layout = len(job.req.candidates), job.pre.layout
        records = (self.store.layout("user").fixed_nbytes
                   + n * self.store.layout("candidate").fixed_nbytes)
        batch = self.plans.linear(layout, None).at(n)
        messages = sum(self.plans.linear(layout, self.plan_key(k, job.gaps)).at(n) for k in keys)
        job.records_nbytes = records
        job.build_nbytes = records + batch
        job.reserved = self.budget.admit(
            job.req.rid, records + batch + messages,
            f"records {records} + batch {batch} + {len(keys)} model message(s) {messages}")

    def answer_without_leaves(self, request: OpenRequest, wanted) -> None:
        """A request no leaf needs to see: no candidates (each known model's
        scores are empty) or no model anyone knows. Nothing is fetched."""
        for name, known in wanted:
            # Nothing is sent: no feature the version does not read goes anywhere.
            idx = self.router.add_model(request, name, bool(known) and self.cfg.trim == "on")
            if known:
                self.router.scored(request, idx, b"")
            else:
                self.router.fail(request, idx, unknown_model_error(name))
        t = time.perf_counter()
        # Nothing fetched: the time it took is preprocessing's, not the fetch's.
        self.router.park(request, self.timing(request.t_start, request.t_start, t, t), t)

    def compute(self, job: Job) -> None:
        """The request's batch (any thread)."""
        if job.trace is not None:
            job.trace.t_compute = time.perf_counter()
        if time.monotonic() >= job.deadline:
            raise ProtocolError(DEADLINE, "the root could not start on the request within its "
                                          "deadline (it is overloaded)")
        with self.fetch(job.req, job.t0) as (users, candidates, job.missing):
            job.t_fetch = time.perf_counter()
            job.batch = job.pre.build(users, candidates)
            if job.counterfactual is not None:
                job.ragged_counts = job.counterfactual.counts(users, candidates)
        job.t_pre = time.perf_counter()

    def begin_send(self, job: Job) -> None:
        """The router opens the request whose batch is built (the loop thread)."""
        batch = job.batch
        # What `--trim off` would send: every schema feature (a batch of them
        # all is its own every-column message).
        job.untrimmed = (batch.nbytes if job.counterfactual is None
                         else job.counterfactual.nbytes(batch, job.ragged_counts))
        # Ragged values are known now: the request's own bytes, checked again.
        # Each model's size is computed once: its ModelBatch carries it.
        job.nbytes = {k: _trim.encoded_nbytes(self.plans.plan_for(batch.layout, self.plan_key(k, job.gaps)),
                                              batch)
                      for k, known in job.wanted if known}
        built = job.records_nbytes + batch.nbytes + sum(job.nbytes.values())
        self.budget.check_built(job.req.rid, built)
        if built > job.reserved:
            self.budget.take(built - job.reserved)
            job.reserved = built
        job.request = self.router.open(job.req.rid, job.envelope, len(job.req.candidates),
                                       job.deadline, job.t0)
        job.request.reserved, job.reserved = job.reserved, 0   # the router's from now on
        job.request.missing = job.missing
        if job.trace is not None:
            job.trace.built(job.t0, job.t_fetch, job.t_pre, job.untrimmed)
            job.request.trace = job.trace

    def send_next(self, job: Job) -> bool:
        """The job's next model to the router (the loop thread); once every
        model is on its way, the request is parked: True."""
        request = job.request
        assert request is not None
        if job.next_model < len(job.wanted):
            key, known = job.wanted[job.next_model]
            job.next_model += 1
            now = time.monotonic()
            if known and not self.pool.candidates(key, now):
                key = self.in_place_of(job, key, now)
            self.send_model(request, key, known, key in job.gaps, job.batch, job.untrimmed,
                            now, job.deadline, job.nbytes.get(key, -1))
            if job.next_model < len(job.wanted):
                return False
        t_sent = time.perf_counter()
        job.batch = None   # what a resend needs, the router keeps
        if job.trace is not None:
            job.trace.parked(t_sent)
        self.router.park(request, self.timing(job.t0, job.t_fetch, job.t_pre, t_sent), t_sent)
        return True

    def in_place_of(self, job: Job, key: str, now: float) -> str:
        """``key``'s `replacement` (no replica serves ``key``) if the batch carries its reads."""
        other = replacement(self.active, key, job.req.models, served_versions(self.pool, now),
                            [k for k, _ in job.wanted])
        if other is None or self.cfg.trim == "off":
            return other or key   # untrimmed: the batch carries every feature
        if self.agreement.gap_reason(self.active, other, self.pool.candidates(other, now)):
            return key   # it would need every feature, and the batch may be trimmed
        layout, batch, request = job.batch.layout, job.batch, job.request
        job.nbytes[other] = _trim.encoded_nbytes(self.plans.plan_for(layout, other), batch)
        grow = job.nbytes[other] - job.nbytes.get(key, 0)
        if grow > 0 and request is not None:   # its message joins the request's reservation
            self.budget.take(grow)
            request.reserved += grow
        return other

    # -- the steps ----------------------------------------------------------------

    @contextlib.contextmanager
    def fetch(self, req: ScoreRequest, t0: float) -> Iterator[tuple[list, list, int]]:
        """The user's and the candidates' raw records, missing ones filled, in
        one store round trip for what the cache lacks, valid inside the
        ``with`` block (LMDB's are buffers into its memory map). The store
        gets at most half of what is left of the deadline: a store that does
        not answer costs the request a prompt ``store_unavailable``, never
        its deadline. Also yields how many entities the store lacked; over
        ``missing_max_share`` of them, ``store_unavailable``."""
        cand_ids = req.candidates.tolist()
        left_s = req.deadline_ms / 1000 - (time.perf_counter() - t0)
        with self.cached.reading({"user": [req.user], "candidate": cand_ids},
                                 max(0.0, left_s) / 2) as got:
            users, candidates = got["user"], got["candidate"]
            missing = (self.fill_missing("user", [req.user], users)
                       + self.fill_missing("candidate", cand_ids, candidates))
            if missing > self.cfg.missing_max_share * (1 + len(cand_ids)):
                raise ProtocolError(STORE_UNAVAILABLE, f"{missing} of the request's "
                                    f"{1 + len(cand_ids)} entities are not in the feature store "
                                    f"(over missing_max_share {self.cfg.missing_max_share:g})",
                                    missing=missing)
            yield users, candidates, missing

    def fill_missing(self, source: str, ids, records) -> int:
        """Default records for ids the store lacks (how many), or a ``bad_request``
        naming them when the config says ``missing: fail``."""
        if all(records):   # one C-level scan, the usual case (None is falsy, a record is not)
            return 0
        missing = [k for k, r in enumerate(records) if r is None]
        self.metrics.missing.labels(source).inc(len(missing))
        if self.cfg.missing == "fail":
            shown = [ids[k] for k in missing[:MISSING_IDS_SHOWN]]
            raise ProtocolError(BAD_REQUEST, f"{len(missing)} {source} id(s) not in the feature "
                                             f"store: {', '.join(map(str, shown))}"
                                             f"{' ...' if len(missing) > MISSING_IDS_SHOWN else ''}",
                                missing=shown, source=source,
                                **({"missing_omitted": len(missing) - len(shown)}
                                   if len(missing) > len(shown) else {}))
        default = self.store.layout(source).default_record
        for k in missing:
            records[k] = default
        return len(missing)

    def choose_preprocessor(self, keys, now: float):
        """(preprocessor, trim gaps): the union of the features the config's
        models read, or every feature (fail open) when trimming is off or a
        model lacks a signature or disagrees with a leaf it may go to, because
        a batch missing a feature the leaf's model reads fails every request."""
        gaps = [k for k in keys
                if self.agreement.gap_reason(self.active, k, self.pool.candidates(k, now))]
        full = gaps or self.cfg.trim == "off"
        return (self.prepared.pre_full if full else self.prepared.pre_used), gaps

    def send_model(self, request: OpenRequest, key: str, known: bool, gap: bool, batch,
                   untrimmed: int, now: float, deadline: float, nbytes: int = -1) -> None:
        """One model's trimmed share of ``batch`` to the router (the request's
        models go in the order it named them); a model that fails here, that
        nobody knows, or whose request's deadline passed before its turn, gets
        its error as its result."""
        if not known:
            self.router.fail(request, self.router.add_model(request, key, False),
                             unknown_model_error(key))
            return
        if gap:
            self.metrics.trim_gaps.labels(key).inc()
            self.gap_counts[key] = self.gap_counts.get(key, 0) + 1
        trimmed = self.cfg.trim == "on" and not gap
        idx = self.router.add_model(request, key, trimmed)
        if now >= deadline:
            self.router.fail(request, idx, {"kind": DEADLINE, "message": "the request's "
                             "deadline passed before the root sent this model (it is overloaded)"})
            return
        span = traceparent = None
        if request.trace is not None:
            span, traceparent = request.trace.send(key)
        try:
            plan = self.plans.plan_for(batch.layout, key if trimmed else None)
            fine = self.plans.fine_plan_for(batch.layout, key) if trimmed and self.cfg.sub_feature \
                else None
            grouped = self.plans.grouped_plan_for(batch.layout, key) if trimmed else None
            self.router.send(request, idx, ModelBatch(key, plan, batch, untrimmed, fine, nbytes,
                                                      traceparent, grouped), now)
        except Exception as exc:
            # Other models may already be in flight, and the router gives
            # the request its one reply: the failure stays this model's result.
            self.router.fail(request, idx, wire_error(
                exc, f"request {request.rid!r}, {key}").to_error())
        if span is not None:
            request.trace.sent(span, request.results[idx])

    def timing(self, t0: float, t_fetch: float, t_pre: float, t_sent: float) -> dict[str, float]:
        """Seconds per step before the leaves (stage -> seconds), observed."""
        timing = {"fetch": t_fetch - t0, "preprocess": t_pre - t_fetch, "trim": t_sent - t_pre}
        for stage, seconds in timing.items():
            self.metrics.latency.labels(stage).observe(seconds)
        return timing

    def plan_key(self, key: str, gaps) -> str | None:
        """Whose columns ``key``'s message carries: its own, or None (every one)."""
        return key if self.cfg.trim == "on" and key not in gaps else None


__all__ = ["Scorer"]
