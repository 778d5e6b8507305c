"""A leaf following one stage of the staged config store: which versions to
serve, read on a thread of its own.

Which versions a leaf serves (`versions_for`): the stage's model versions
(``deploy-models``) that the stage's active bundle places on this leaf's
name (its ``current`` + ``pending``). A version the bundle places on no leaf
(forced out before its config, or left on the stage by a rollback) goes to
the leaves that host another version of the same model, so that the roots
fail open for it rather than nobody serving it. A leaf the bundle does not
name, or a stage without a bundle, serves every version on the stage.

`ModelFollower` follows the store (a directory: polled several times a
second; ZooKeeper: a watch on the stage's node, and a look after every
reconnection that compares generations) and reads the repository (hashing
a model file can take a while), so the I/O loop never waits on either. A
store that cannot be reached changes nothing: the leaf serves what it
serves and looks again once the store answers. Where members are ephemeral
(ZooKeeper) the leaf's node is how roots find it: it publishes the
endpoints roots reach it at (`advertised`), and its node goes when the
leaf stops (at once) or dies (at the session timeout). A stage it
cannot use (its record lost, unreadable or corrupt: the store says which,
signatures/configstore/stage_state.py) is logged once, counted in
``trimmer_leaf_config_errors_total`` and shown in the leaf's heartbeat; the
leaf keeps serving what it served. It owns two
single-slot handoffs and nothing the loop uses: each new `Target` goes to the
loop through ``targets``, which installs it in its model table
(leafproc/table.py: how a change is carried out without dropping a request),
and the loop hands back, through ``records``, the heartbeat record this
thread writes to the store.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import socket
import threading
import time

from _trim.errors import StoreError
from _trim.transport.model_key import ModelKey
from leafproc.defaults import STOP_JOIN_S
from leafproc.metrics import RolloutMetrics
from leafproc.table import Target
from signatures.configstore import ConfigStoreUnavailable, open_config_store
from signatures.configstore.members import FOLLOW_POLL_S, FOLLOW_RECHECK_S, HEARTBEAT_S, MemberStatus
from signatures.repository.module_info import ModelRepository
from signatures.runtime.handoff import Handoff

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


WILDCARDS = ("0.0.0.0", "*", "[::]", "::")


@functools.lru_cache(maxsize=1)
def host_name() -> str:
    """This host's name as others resolve it (asked once: it may query DNS)."""
    return socket.getfqdn()


def advertised(endpoints, advertise=()) -> tuple[str, ...]:
    """The endpoints published for roots: ``advertise`` when given, else the
    bound ones with a wildcard address replaced by this host's name."""
    if advertise:
        return tuple(advertise)
    out = []
    for ep in endpoints:
        scheme, sep, rest = ep.partition("://")
        host, colon, port = rest.rpartition(":")
        if scheme == "tcp" and colon and host in WILDCARDS:
            ep = f"tcp://{host_name()}:{port}"
        out.append(ep)
    return tuple(out)


class ModelFollower:
    def __init__(self, *, store_path: str, stage: str, name: str, repo: ModelRepository,
                 rollout: RolloutMetrics, poll_s: float = FOLLOW_POLL_S,
                 heartbeat_s: float = HEARTBEAT_S, settings=None, advertise=(),
                 recheck_s: float = FOLLOW_RECHECK_S, curve_key: str | None = None):
        self.store = open_config_store(store_path, settings=settings)
        self.stage = stage
        self.name = name
        self.repo = repo
        self.rollout = rollout
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.advertise = tuple(advertise)
        self.curve_key = curve_key   # published: roots that find this leaf connect with CURVE
        self.changes = self.store.changes(
            stage, recheck_s if self.store.ephemeral_members else poll_s)
        self.targets: Handoff[Target] = Handoff()          # to the loop
        self.records: Handoff[MemberStatus] = Handoff()    # from the loop
        # The rest is this thread's own.
        self._latest: Target | None = None   # the last target handed over
        self._stamp = _UNKNOWN
        self._files: dict = {}   # key -> (path, info) | error, kept across polls
        self._record = MemberStatus("leaf", name)
        self.error_count = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)

    def start(self) -> ModelFollower:
        """Read the store once (errors raise: a leaf cannot start on an
        unreadable store), then keep polling in the background."""
        self.poll(raise_errors=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.changes.close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=STOP_JOIN_S)
        self.store.close()   # a ZooKeeper member node goes at once

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            changed = self.changes.wait(self.poll_s)
            if self._stop.is_set():
                break
            if changed:
                try:
                    self.poll()
                except Exception:
                    log.exception("leaf %s: model follower", self.name)
            now = time.monotonic()
            # A store of ephemeral members writes only changes (and what a
            # new session lost): told at once, roots link to the leaf sooner.
            if now >= next_beat or self.store.ephemeral_members:
                next_beat = now + self.heartbeat_s
                self.beat()

    def poll(self, raise_errors: bool = False) -> None:
        try:
            stamp = self.store.stage_stamp(self.stage)
        except ConfigStoreUnavailable:
            if raise_errors:
                raise
            self._stamp = _UNKNOWN   # read it all again once the store answers
            return
        if stamp == self._stamp and self._latest is not None:
            return
        self._stamp = stamp
        try:
            state = self.store.state(self.stage)
            generation = int(state["generation"])
            if self._latest is not None and generation == self._latest.generation:
                self.last_error = None
                return
            served = self._latest.generation if self._latest is not None else None
            if generation == 0 and served:
                raise StoreError(f"stage {self.stage} reads as never written, but this leaf "
                                 f"served its generation {served}: the stage record is missing")
            bundle = self.store.bundle(state["bundle"]) if state.get("bundle") else None
            keys = versions_for(self.name, bundle, state.get("models", []))
        except ConfigStoreUnavailable:
            if raise_errors:
                raise
            self._stamp = _UNKNOWN
            return
        except Exception as exc:
            if raise_errors:
                raise
            self.rollout.config_errors.inc()
            self.error_count += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("leaf %s: cannot read stage %s of %s: %s; serving what it served",
                      self.name, self.stage, self.store.address, self.last_error)
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
        self._latest = Target(tuple(keys), files, generation, state.get("bundle"))
        self.targets.put(self._latest)

    def beat(self) -> None:
        record = self.records.take()
        if record is not None:
            self._record = record
        try:
            self.store.heartbeat(self.stage, dataclasses.replace(
                self._record, config_errors=self.error_count, last_error=self.last_error,
                endpoints=advertised(self._record.endpoints, self.advertise),
                curve_key=self.curve_key))
        except ConfigStoreUnavailable:
            pass   # said once by the store; written again once it answers
        except Exception as exc:
            log.warning("leaf %s: heartbeat to %s failed: %s", self.name, self.store.address, exc)


_UNKNOWN = object()   # the stage's stamp could not be read


__all__ = ["ModelFollower", "advertised", "versions_for"]
