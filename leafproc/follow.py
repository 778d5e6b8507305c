"""A leaf following one stage of the staged config store: model rollout without a restart.

Which versions a leaf serves (`versions_for`): the stage's model versions
(``deploy-models``) that the stage's active bundle places on this leaf's
name (its ``current`` + ``pending``). A version the bundle places on no leaf
(forced out before its config, or left on the stage by a rollback) goes to
the leaves that host another version of the same model, so that the roots
fail open for it rather than nobody serving it. A leaf the bundle does not
name, or a stage without a bundle, serves every version on the stage.

How a change is carried out, so that no request is dropped:

- a new version is loaded and warmed on its own worker thread, and only
  joins the dispatch table (and shows ``ready`` in pongs) once warm;
- a version that leaves the set is *retired* only after every new version
  of the same model has finished loading, and never when all of them failed
  (a model file that fails to load leaves the old version serving; the
  failure is in pongs, the log and ``trimmer_leaf_model_load_failures_total``);
- a retired version first stops showing ``ready`` in pongs, so roots stop
  routing to it, but still answers for ``retire_grace_s`` (requests a root
  sent before its next ping); then it leaves the dispatch table, its worker
  finishes what is queued and exits, and the model is dropped.

A thread polls the store and reads the repository (hashing a model file can
take a while); every change to the dispatch table happens in `tick`, on the
I/O thread, which alone hands requests to workers. That is what makes
"finish in-flight, then unload" exact: once a worker is out of the table and
told to stop, nothing can be queued behind its stop marker.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from _trim.transport.model_key import ModelKey
from signatures.members import FOLLOW_POLL_S, HEARTBEAT_S, MemberRecord
from signatures.module_info import ModelRepository
from signatures.store import ConfigStore

from .defaults import RETIRE_GRACE_S

log = logging.getLogger("leafproc")



def versions_for(leaf: str, bundle, stage_models) -> list[str]:
    """The versions ``leaf`` serves, in stage order (see the module docstring)."""
    stage_models = list(dict.fromkeys(stage_models))
    if bundle is None or leaf not in bundle.leaves:
        return stage_models
    mine = set(bundle.leaves[leaf].current) | set(bundle.leaves[leaf].pending)
    placed = set()
    for spec in bundle.leaves.values():
        placed |= set(spec.current) | set(spec.pending)
    my_names = {ModelKey(k).name for k in mine}
    return [k for k in stage_models
            if k in mine or (k not in placed and ModelKey(k).name in my_names)]


@dataclass(frozen=True)
class Target:
    """What the store says this leaf should serve, with its files already read."""

    generation: int
    bundle: str | None
    keys: tuple
    files: dict = field(default_factory=dict)   # key -> (model.pt path, ModuleInfo) | error str


class ModelFollower:
    def __init__(self, *, store_path: str, stage: str, name: str, repo: ModelRepository,
                 make_worker, metrics, endpoints=(), poll_s: float = FOLLOW_POLL_S,
                 heartbeat_s: float = HEARTBEAT_S, retire_grace_s: float = RETIRE_GRACE_S):
        self.store = ConfigStore(store_path)
        self.stage = stage
        self.name = name
        self.repo = repo
        self.make_worker = make_worker
        self.metrics = metrics
        self.endpoints = list(endpoints)
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.retire_grace_s = retire_grace_s
        r = metrics.registry
        self.load_failures = Counter("trimmer_leaf_model_load_failures", "model versions that "
                                     "failed to load or warm up", ["model"], registry=r)
        self.config_errors = Counter("trimmer_leaf_config_errors", "store states that could not "
                                     "be read (the leaf kept what it served)", registry=r)
        self.generation_gauge = Gauge("trimmer_leaf_config_generation",
                                      "store generation the leaf follows", registry=r)
        # Written by the polling thread, read by `tick`: one attribute, swapped whole.
        self._target: Target | None = None
        self._stamp = None
        self._files: dict = {}          # key -> (path, info) | error, cached across polls
        # Owned by the I/O thread (`tick`).
        self.server = None
        self.applied: Target | None = None
        self.loading: dict = {}         # key -> worker, loading or warming up
        self.failed: dict = {}          # key -> error message
        self.retiring: dict = {}        # key -> monotonic time it stopped showing ready
        self.reaping: list = []         # stopped workers finishing their queue
        self.last_error: str | None = None
        self._snapshot = MemberRecord("leaf", name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)

    # -- polling thread ----------------------------------------------------------------

    def start(self, server) -> "ModelFollower":
        """Read the store once (errors raise: a leaf cannot start on an
        unreadable store), then keep polling in the background."""
        self.server = server
        self.poll(raise_errors=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        for w in self.loading.values():
            w.stop()

    def workers(self) -> list:
        """Every worker thread this follower started that may still run."""
        return list(self.loading.values()) + list(self.reaping)

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:
                log.exception("leaf %s: model follower", self.name)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                self.beat()

    def poll(self, raise_errors: bool = False) -> None:
        stamp = self.store.stage_stamp(self.stage)
        if stamp == self._stamp and self._target is not None:
            return
        self._stamp = stamp
        try:
            state = self.store.state(self.stage)
            generation = int(state["generation"])
            if self._target is not None and generation == self._target.generation:
                self.last_error = None
                return
            bundle = self.store.bundle(state["bundle"]) if state.get("bundle") else None
            keys = versions_for(self.name, bundle, state.get("models", []))
        except Exception as exc:
            if raise_errors:
                raise
            self.config_errors.inc()
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("leaf %s: cannot read stage %s of %s: %s; serving what it served",
                      self.name, self.stage, self.store.path, self.last_error)
            return
        self.last_error = None
        files = {}
        for key in keys:
            if not isinstance(self._files.get(key), tuple):  # new, or failed before: (re)read
                try:
                    self._files[key] = self.repo.load(ModelKey(key).name, ModelKey(key).version)
                except Exception as exc:  # missing, or a file that fails its checks
                    self._files[key] = f"cannot read from {self.repo.root}: {exc}"
            files[key] = self._files[key]
        for key in [k for k in self._files if k not in keys]:
            del self._files[key]
        self._target = Target(generation, state.get("bundle"), tuple(keys), files)

    def beat(self) -> None:
        try:
            self.store.heartbeat(self.stage, self._snapshot)
        except Exception as exc:
            log.warning("leaf %s: heartbeat to %s failed: %s", self.name, self.store.path, exc)

    # -- I/O thread ----------------------------------------------------------------------

    def tick(self) -> None:
        target = self._target
        if target is not None and target is not self.applied:
            self._apply(target)
        self._progress(time.monotonic())

    def _apply(self, target: Target) -> None:
        self.applied = target
        self.generation_gauge.set(target.generation)
        wanted = set(target.keys)
        workers = self.server.workers
        for key in target.keys:
            if key in workers or key in self.loading:
                self.retiring.pop(key, None)  # wanted again before it left: keep serving
                continue
            self.failed.pop(key, None)
            found = target.files[key]
            if isinstance(found, str):
                self._fail(key, found)
                continue
            worker = self.make_worker(*found)
            worker.start()
            self.loading[key] = worker
            log.info("leaf %s: loading %s (stage %s generation %d)", self.name, key, self.stage,
                     target.generation)
        for key in [k for k in self.failed if k not in wanted]:
            del self.failed[key]
        self._publish()

    def _fail(self, key: str, error: str) -> None:
        self.failed[key] = error
        self.load_failures.labels(key).inc()
        log.error("leaf %s: model %s failed to load: %s; versions already serving keep serving",
                  self.name, key, error)

    def _progress(self, now: float) -> None:
        changed = False
        workers = self.server.workers
        for key, w in list(self.loading.items()):
            if w.ready:
                del self.loading[key]
                if self.applied is not None and key not in self.applied.keys:
                    w.stop()
                    self.reaping.append(w)
                else:
                    self.server.workers = {**workers, key: w}
                    workers = self.server.workers
                    log.info("leaf %s: %s ready, taking traffic", self.name, key)
                changed = True
            elif w.error or not w.is_alive():
                del self.loading[key]
                w.stop()
                self.reaping.append(w)
                self._fail(key, w.error or "worker exited while loading")
                changed = True
        if self.applied is not None:
            wanted = set(self.applied.keys)
            for key in workers:
                if key not in wanted and key not in self.retiring and self._may_retire(key, wanted):
                    self.retiring[key] = now
                    self.metrics.ready.labels(key).set(0)
                    log.info("leaf %s: retiring %s (still answering for %.1fs)", self.name, key,
                             self.retire_grace_s)
                    changed = True
        for key, since in list(self.retiring.items()):
            if now - since >= self.retire_grace_s:
                del self.retiring[key]
                w = workers.get(key)
                if w is not None:
                    self.server.workers = workers = {k: v for k, v in workers.items() if k != key}
                    w.stop()  # after every request already queued to it
                    self.reaping.append(w)
                changed = True
        for w in list(self.reaping):
            if not w.is_alive():
                self.reaping.remove(w)
                self.metrics.ready.labels(w.key).set(0)
                w.model = None
                log.info("leaf %s: %s unloaded", self.name, w.key)
        if changed:
            self._publish()

    def _may_retire(self, key: str, wanted: set) -> bool:
        """A version leaves only once its replacement serves: never while a new
        version of the same model is loading, nor when all of them failed."""
        name = ModelKey(key).name
        if any(ModelKey(k).name == name for k in self.loading):
            return False
        successors = [k for k in wanted if ModelKey(k).name == name]
        if not successors:
            return True
        return any(k in self.server.workers and k not in self.retiring for k in successors)

    def describe(self) -> list[dict]:
        """The pong's model list: serving, retiring, loading and failed versions."""
        out = []
        for key, w in self.server.workers.items():
            d = w.describe()
            if key in self.retiring:
                d.update(ready=False, state="retiring")
            out.append(d)
        for key, w in self.loading.items():
            out.append({"model": key, "signature_hash": w.info.signature_hash, "ready": False,
                        "state": "loading"})
        for key, error in self.failed.items():
            out.append({"model": key, "ready": False, "state": "failed", "error": error})
        return out

    def pong_fields(self) -> dict:
        a = self.applied
        return {"stage": self.stage, "generation": a.generation if a else None,
                "config": a.bundle if a else None}

    def _publish(self) -> None:
        a = self.applied
        workers = self.server.workers
        self._snapshot = MemberRecord(
            "leaf", self.name, generation=a.generation if a else None,
            bundle=a.bundle if a else None, endpoints=tuple(self.endpoints),
            models=tuple(sorted(k for k in workers if k not in self.retiring)),
            loading=tuple(sorted(self.loading)), retiring=tuple(sorted(self.retiring)),
            failed=tuple(sorted(self.failed.items())))


__all__ = ["ModelFollower", "Target", "versions_for"]
