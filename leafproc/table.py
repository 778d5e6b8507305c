"""The leaf's dispatch table and the state machine that changes it: which
model versions take requests, and how a version joins and leaves.

The I/O loop (leafproc/server.py) owns the table: it asks it for the worker
of a request's model and for the pong's model list, and between requests it
hands it the newest `Target` and lets it move versions along (`update`). No
other thread reads or writes it. That is what makes "finish in flight, then
unload" exact: once a worker is out of the table and told to stop, nothing
can be queued behind its stop marker.

Following a stage (leafproc/follower.py says which versions), a change is
carried out so that no request is dropped:

- a new version is loaded and warmed on its own worker thread, and only
  joins the table (and shows ``ready`` in pongs) once warm;
- a version that leaves the set is *retired* only after every new version
  of the same model has finished loading, and never when all of them failed
  (a model file that fails to load leaves the old version serving; the
  failure is in pongs, the log and ``trimmer_leaf_model_load_failures_total``);
- a retired version first stops showing ``ready`` in pongs, so roots stop
  routing to it, but still answers for ``retire_grace_s`` (requests a root
  sent before its next ping); then it leaves the table, its worker finishes
  what is queued and exits, and the model is dropped.

A leaf serving a fixed list (``--model``) installs one target at start and
never another. Its versions take requests at once, queued behind their
warm-up, since no root is told to wait for them; one that fails to load
stays, answering ``unavailable``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from _trim.transport.model_key import ModelKey
from leafproc.defaults import RETIRE_GRACE_S, STOP_JOIN_S
from leafproc.metrics import LeafMetrics, RolloutMetrics
from leafproc.worker import ModelWorker
from signatures.configstore.members import MemberStatus
from signatures.repository.module_info import ModuleInfo

log = logging.getLogger("leafproc")


@dataclass(frozen=True)
class Target:
    """The versions the leaf should serve, with their files already read:
    ``files[key]`` is (model.pt path, ModuleInfo), or why it could not be read.
    It crosses from the follower thread to the loop, so it is made whole and
    never changed: frozen, its containers read-only."""

    keys: tuple[str, ...]
    files: Mapping[str, tuple[str, ModuleInfo] | str]
    generation: int | None = None   # the store's; None for a fixed list
    bundle: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    @classmethod
    def fixed(cls, loaded) -> Target:
        """A fixed list, from (model.pt path, ModuleInfo) pairs."""
        files = {info.key: (path, info) for path, info in loaded}
        return cls(tuple(files), files)


class ModelTable:
    def __init__(self, *, name: str, make_worker: Callable[[str, ModuleInfo], ModelWorker],
                 metrics: LeafMetrics, rollout: RolloutMetrics, stage: str | None = None,
                 retire_grace_s: float = RETIRE_GRACE_S):
        self.name = name
        self.stage = stage   # the stage followed; None: a fixed list
        self.make_worker = make_worker
        self.metrics = metrics
        self.rollout = rollout
        self.retire_grace_s = retire_grace_s
        self.target: Target | None = None
        self._serving: dict[str, ModelWorker] = {}
        self._loading: dict[str, ModelWorker] = {}   # loading or warming up
        self._failed: dict[str, str] = {}            # key -> why it does not serve
        self._retiring: dict[str, float] = {}        # key -> monotonic time it stopped showing ready
        self._reaping: list[ModelWorker] = []        # stopped, finishing their queue
        # Nothing waits on time or on a worker: the loop's turns skip `_progress`.
        self._settled = True

    # -- asked by the server -----------------------------------------------------------

    def worker(self, key: str) -> ModelWorker | None:
        return self._serving.get(key)

    def keys(self) -> list[str]:
        """The versions that take requests (an ``unknown_model`` reply lists them)."""
        return sorted(self._serving)

    def describe(self) -> list[dict]:
        """The pong's model list: serving, retiring, loading and failed versions."""
        out = []
        for key, w in self._serving.items():
            d = w.describe()
            if key in self._retiring:
                d.update(ready=False, state="retiring")
            out.append(d)
        for key, w in self._loading.items():
            out.append({"model": key, "signature_hash": w.info.signature_hash, "ready": False,
                        "state": "loading"})
        for key, error in self._failed.items():
            out.append({"model": key, "ready": False, "state": "failed", "error": error})
        return out

    def readiness(self) -> tuple[bool, str]:
        """Ready (/readyz): every version of the target loaded and warmed up,
        none failed; else which are not and why."""
        t = self.target
        if t is None:
            return False, (f"no models from stage {self.stage} yet" if self.stage is not None
                           else "no models installed yet")
        problems = [f"{key} failed: {error}" for key, error in sorted(self._failed.items())]
        for key in t.keys:
            w = self._serving.get(key)
            if key in self._loading or (w is not None and not w.ready):
                problems.append(f"{key} loading")
            elif w is None and key not in self._failed:
                problems.append(f"{key} not loaded")
        if problems:
            return False, "; ".join(problems)
        what = ", ".join(t.keys) or "no model"
        return True, f"serving {what}" + (f" (stage {self.stage}, generation {t.generation})"
                                          if self.stage is not None else "")

    def pong_fields(self) -> dict:
        """What a following leaf's pong says about the stage; nothing for a fixed list."""
        if self.stage is None:
            return {}
        t = self.target
        return {"stage": self.stage, "generation": t.generation if t else None,
                "config": t.bundle if t else None}

    def record(self, endpoints) -> MemberStatus:
        """The heartbeat record of what the table serves."""
        t = self.target
        return MemberStatus(
            "leaf", self.name, generation=t.generation if t else None,
            bundle=t.bundle if t else None, endpoints=tuple(endpoints),
            models=tuple(sorted(k for k in self._serving if k not in self._retiring)),
            loading=tuple(sorted(self._loading)), retiring=tuple(sorted(self._retiring)),
            failed=tuple(sorted(self._failed.items())))

    # -- changes, between requests -------------------------------------------------------

    def update(self, now: float, target: Target | None = None) -> bool:
        """Install ``target`` when given, then move versions along; True when
        what pongs and heartbeats show has changed."""
        changed = False
        if target is not None and target is not self.target:
            self._install(target)
            changed = True
        if self.target is None or self._settled:
            return changed
        return self._progress(now, self.target) or changed

    def _install(self, target: Target) -> None:
        self.target = target
        self._settled = False
        if target.generation is not None:
            self.rollout.generation.set(target.generation)
        for key in target.keys:
            if key in self._serving or key in self._loading:
                self._retiring.pop(key, None)  # wanted again before it left: keep serving
                continue
            self._failed.pop(key, None)
            found = target.files[key]
            if isinstance(found, str):
                self._fail(key, found)
                continue
            worker = self.make_worker(*found)
            worker.start()
            if self.stage is None:
                self._serving[key] = worker
                continue
            self._loading[key] = worker
            log.info("leaf %s: loading %s (stage %s generation %d)", self.name, key, self.stage,
                     target.generation)
        wanted = set(target.keys)
        for key in [k for k in self._failed if k not in wanted]:
            del self._failed[key]

    def _fail(self, key: str, error: str) -> None:
        self._failed[key] = error
        self.rollout.load_failures.labels(key).inc()
        log.error("leaf %s: model %s failed to load: %s; versions already serving keep serving",
                  self.name, key, error)

    def _progress(self, now: float, target: Target) -> bool:
        changed = False
        wanted = set(target.keys)
        for key, w in list(self._loading.items()):
            if w.ready:
                del self._loading[key]
                if key not in wanted:  # taken back while it warmed up
                    self._reap(w)
                else:
                    self._serving[key] = w
                    log.info("leaf %s: %s ready, taking traffic", self.name, key)
                changed = True
            elif w.error or not w.is_alive():
                del self._loading[key]
                self._reap(w)
                self._fail(key, w.error or "worker exited while loading")
                changed = True
        for key in self._serving:
            if key not in wanted and key not in self._retiring and self._may_retire(key, wanted):
                self._retiring[key] = now
                self.metrics.ready.labels(key).set(0)
                log.info("leaf %s: retiring %s (still answering for %.1fs)", self.name, key,
                         self.retire_grace_s)
                changed = True
        for key, since in list(self._retiring.items()):
            if now - since >= self.retire_grace_s:
                del self._retiring[key]
                retired = self._serving.pop(key, None)
                if retired is not None:
                    self._reap(retired)  # its stop marker queues behind every request sent to it
                changed = True
        for w in list(self._reaping):
            if not w.is_alive():
                self._reaping.remove(w)
                self.metrics.ready.labels(w.key).set(0)
                w.model = None
                log.info("leaf %s: %s unloaded", self.name, w.key)
        # A version kept past its target (every successor failed) is checked on
        # every turn, as is anything waiting on a worker or the clock.
        self._settled = not (self._loading or self._retiring or self._reaping) \
            and wanted.issuperset(self._serving)
        return changed

    def _may_retire(self, key: str, wanted: set) -> bool:
        """A version leaves only once its replacement serves: never while a new
        version of the same model is loading, nor when all of them failed."""
        name = ModelKey(key).name
        if any(ModelKey(k).name == name for k in self._loading):
            return False
        successors = [k for k in wanted if ModelKey(k).name == name]
        if not successors:
            return True
        return any(k in self._serving and k not in self._retiring for k in successors)

    def _reap(self, worker: ModelWorker) -> None:
        worker.stop()
        self._reaping.append(worker)

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every worker; those serving get a while to answer what is queued."""
        for w in [*self._loading.values(), *self._serving.values()]:
            w.stop()
        for w in self._serving.values():
            w.join(timeout=STOP_JOIN_S)

    def running(self) -> bool:
        """Whether a worker thread this table started still runs."""
        return any(w.is_alive() for w in
                   [*self._serving.values(), *self._loading.values(), *self._reaping])


__all__ = ["ModelTable", "Target"]
