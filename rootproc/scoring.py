"""A score request from its checked header to its models' messages on their way.

`Scorer.score` is the request's CPU work, none of it waiting, in three
steps: `start` (check the header, resolve the models, choose the
preprocessor), `compute` (fetch the records, fill the missing ones, build
the batch) and `finish` (hand each model's trimmed share to the router,
rootproc/router.py, record the timing). With one thread (``threads``) all
three run inline on the serving loop; with more, `compute` runs on a worker
(rootproc/workers.py) while the loop serves other requests, and `collect`
finishes what the workers hand back. The router answers the client: the
scorer tells it each model's fate and never writes the request itself.

The scorer also holds what the loop last installed: the compiled config
(preprocessors, trim plans) and, for the heartbeat, how many requests each
version was sent untrimmed.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import _trim
from _trim.transport.protocol import BAD_REQUEST, DEADLINE, ProtocolError
from rootproc.defaults import MISSING_IDS_SHOWN
from rootproc.intake import ScoreRequest, parse_score, resolve_models, unknown_model_error
from rootproc.leaves.agreement import Agreement
from rootproc.leaves.encoding import ModelBatch
from rootproc.open_request import OpenRequest
from rootproc.reply import wire_error
from rootproc.rollout.installed import PreparedConfig
from rootproc.workers import BatchWorkers

if TYPE_CHECKING:
    from rootproc.preprocess.preprocessor import Preprocessor


@dataclass(eq=False)
class Job:
    """One score request between `Scorer.start` and `Scorer.finish`."""

    envelope: list
    req: ScoreRequest
    wanted: list            # (model, known) in the order the request named them
    pre: Preprocessor       # the one chosen for it
    gaps: list
    t0: float               # time.perf_counter() on arrival
    deadline: float         # time.monotonic()
    batch: object = None
    t_fetch: float = 0.0
    t_pre: float = 0.0
    error: BaseException | None = None


class Scorer:
    def __init__(self, cfg, store, cached, metrics, pool, router, prepared: PreparedConfig):
        self.cfg = cfg
        self.store = store
        self.cached = cached
        self.metrics = metrics
        self.pool = pool
        self.router = router
        self.agreement = Agreement(cfg.name)
        self.gap_counts: dict[str, int] = {}   # version -> requests sent untrimmed for it
        self.install(prepared)
        self.workers = (BatchWorkers(cfg.threads - 1, self.compute, cfg.name)
                        if cfg.threads > 1 else None)

    @property
    def pending(self) -> int:
        """Requests a worker has not handed back yet."""
        return 0 if self.workers is None else self.workers.pending

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()

    def install(self, prepared: PreparedConfig) -> None:
        """Serve ``prepared`` from the next request on."""
        self.prepared = prepared
        self.active = prepared.active
        self.plans: dict = dict(prepared.plans)   # grows: plans compiled on first use

    def score(self, envelope, header: dict, body) -> None:
        """Send a score request's models to their leaves (now, or once a worker
        has built its batch); ProtocolError when it cannot be served at all."""
        job = self.start(envelope, header, body)
        if job is None:
            return
        if self.workers is not None:
            self.workers.submit(job)
            return
        self.compute(job)
        self.finish(job)

    def collect(self, fail) -> None:
        """Finish the jobs the workers handed back; ``fail(envelope, rid,
        ProtocolError)`` answers one that failed."""
        assert self.workers is not None
        for job in self.workers.finished():
            if job.error is None:
                try:
                    self.finish(job)
                    continue
                except Exception as exc:
                    job.error = exc
            rid = job.req.rid
            fail(job.envelope, rid, wire_error(job.error, f"request {rid!r}"))

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
        return Job(envelope, req, wanted, pre, gaps, t0, deadline)

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
        if time.monotonic() >= job.deadline:
            raise ProtocolError(DEADLINE, "the root could not start on the request within its "
                                          "deadline (it is overloaded)")
        with self.fetch(job.req, job.t0) as (users, candidates):
            job.t_fetch = time.perf_counter()
            job.batch = job.pre.build(users, candidates)
        job.t_pre = time.perf_counter()

    def finish(self, job: Job) -> None:
        """The request's models to the router (the loop thread)."""
        now = time.monotonic()
        request = self.router.open(job.req.rid, job.envelope, len(job.req.candidates),
                                   job.deadline, job.t0)
        self.send_models(request, job.wanted, job.gaps, job.batch, now)
        t_sent = time.perf_counter()
        self.router.park(request, self.timing(job.t0, job.t_fetch, job.t_pre, t_sent), t_sent)

    # -- the steps ----------------------------------------------------------------

    @contextlib.contextmanager
    def fetch(self, req: ScoreRequest, t0: float) -> Iterator[tuple[list, list]]:
        """The user's and the candidates' raw records, missing ones filled, in
        one store round trip for what the cache lacks, valid inside the
        ``with`` block (LMDB's are buffers into its memory map). The store
        gets at most half of what is left of the deadline: a store that does
        not answer costs the request a prompt ``store_unavailable``, never
        its deadline."""
        cand_ids = req.candidates.tolist()
        left_s = req.deadline_ms / 1000 - (time.perf_counter() - t0)
        with self.cached.reading({"user": [req.user], "candidate": cand_ids},
                                 max(0.0, left_s) / 2) as got:
            users, candidates = got["user"], got["candidate"]
            self.fill_missing("user", [req.user], users)
            self.fill_missing("candidate", cand_ids, candidates)
            yield users, candidates

    def fill_missing(self, source: str, ids, records) -> None:
        """Default records for ids the store lacks, or a ``bad_request`` naming
        them when the config says ``missing: fail``."""
        if all(records):   # one C-level scan, the usual case (None is falsy, a record is not)
            return
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

    def choose_preprocessor(self, keys, now: float):
        """(preprocessor, trim gaps): the union of the features the config's
        models read, or every feature (fail open) when trimming is off or a
        model lacks a signature or disagrees with a leaf it may go to, because
        a batch missing a feature the leaf's model reads fails every request."""
        gaps = [k for k in keys
                if self.agreement.gap_reason(self.active, k, self.pool.candidates(k, now))]
        full = gaps or self.cfg.trim == "off"
        return (self.prepared.pre_full if full else self.prepared.pre_used), gaps

    def send_models(self, request: OpenRequest, wanted, gaps, batch, now: float) -> None:
        """Each model's trimmed share of ``batch`` to the router, in the order
        the request named them; a model that fails here, or that nobody knows,
        gets its error as its result."""
        untrimmed = _trim.encoded_nbytes(self.plan_for(batch.layout, None), batch)
        for key, known in wanted:
            if not known:
                self.router.fail(request, self.router.add_model(request, key, False),
                                 unknown_model_error(key))
                continue
            gap = key in gaps
            if gap:
                self.metrics.trim_gaps.labels(key).inc()
                self.gap_counts[key] = self.gap_counts.get(key, 0) + 1
            trimmed = self.cfg.trim == "on" and not gap
            idx = self.router.add_model(request, key, trimmed)
            try:
                plan = self.plan_for(batch.layout, key if trimmed else None)
                self.router.send(request, idx, ModelBatch(key, plan, batch, untrimmed), now)
            except Exception as exc:
                # Other models may already be in flight, and the router gives
                # the request its one reply: the failure stays this model's result.
                self.router.fail(request, idx, wire_error(
                    exc, f"request {request.rid!r}, {key}").to_error())

    def timing(self, t0: float, t_fetch: float, t_pre: float, t_sent: float) -> dict[str, float]:
        """Seconds per step before the leaves (stage -> seconds), observed."""
        timing = {"fetch": t_fetch - t0, "preprocess": t_pre - t_fetch, "trim": t_sent - t_pre}
        for stage, seconds in timing.items():
            self.metrics.latency.labels(stage).observe(seconds)
        return timing

    def plan_for(self, layout, key: str | None):
        """The trim plan of ``key`` (None: every column) on ``layout``, compiled once."""
        cache_key = (layout.fingerprint, key)
        plan = self.plans.get(cache_key)
        if plan is None:
            names = layout.names if key is None else self.active.features_for(key)
            plan = _trim.compile_plan(layout, names)
            self.plans[cache_key] = plan
        return plan


__all__ = ["Scorer"]
