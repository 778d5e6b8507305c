"""A leaf following one stage of the staged config store: which versions to
serve, read on a thread of its own.

Which versions a leaf serves (`versions_for`): the stage's model versions
(``deploy-models``) that the stage's active bundle places on this leaf's
name (its ``current`` + ``pending``). A version the bundle places on no leaf
(forced out before its config, or left on the stage by a rollback) goes to
the leaves that host another version of the same model, so that the roots
fail open for it rather than nobody serving it. A leaf the bundle does not
name, or a stage without a bundle, serves every version on the stage.

`ModelFollower` is the leaf's `StageFollower`
(signatures/configstore/follower.py: the thread, the wait for the stage to
change, a state it cannot use, the heartbeat): it follows the store and reads
the repository (hashing a model file can take a while), so the I/O loop never
waits on either. A store that cannot be reached changes nothing: the leaf
serves what it serves and looks again once the store answers. A version the
repository cannot deliver (a directory's file missing or failing its hash; an
object store down, a download broken or failing its hash:
signatures/repository/objects.py) is logged and counted in
``trimmer_leaf_repository_errors_total`` by kind, shown failed in pongs and
heartbeats, and tried again after 1 s, the wait doubling up to
``repo_retry_max_s``; once read, the target is handed over again and the
version loads. Meanwhile the versions already serving keep serving. Where
members are ephemeral (ZooKeeper) the leaf's node is how roots find it: it
publishes the endpoints roots reach it at (`advertised`), and its node goes
when the leaf stops (at once) or dies (at the session timeout). A stage it
cannot use (its record lost, unreadable or corrupt: the store says which,
signatures/configstore/stage_state.py) is logged once, counted in
``trimmer_leaf_config_errors_total`` and shown in the leaf's heartbeat; the
leaf keeps serving what it served. It owns two single-slot handoffs and
nothing the loop uses: each new `Target` goes to the loop through ``updates``,
which installs it in its model table (leafproc/table.py: how a change is
carried out without dropping a request), and the loop hands back, through
``records``, the heartbeat record this thread writes to the store every
`HEARTBEAT_S`.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import socket
import time

from _trim.transport.model_key import ModelKey
from leafproc.defaults import REPO_RETRY_FIRST_S, REPO_RETRY_MAX_S, STOP_JOIN_S
from leafproc.metrics import RolloutMetrics
from leafproc.table import Target
from signatures.configstore.follower import StageFollower
from signatures.configstore.members import FOLLOW_POLL_S, FOLLOW_RECHECK_S, HEARTBEAT_S, MemberStatus
from signatures.repository.module_info import ModelRepository
from signatures.repository.objects import fetch_kind


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


class ModelFollower(StageFollower[Target]):
    """The leaf's follower: for each new state of the stage, the versions it
    serves and their files, for the loop to install (``updates``)."""

    log = logging.getLogger("leafproc")
    kind = "model follower"
    ran = "this leaf served"

    def __init__(self, *, store_path: str, stage: str, name: str, repo: ModelRepository,
                 rollout: RolloutMetrics, poll_s: float = FOLLOW_POLL_S,
                 heartbeat_s: float = HEARTBEAT_S, settings=None, advertise=(),
                 recheck_s: float = FOLLOW_RECHECK_S, curve_key: str | None = None,
                 retry_max_s: float = REPO_RETRY_MAX_S):
        super().__init__(store_path, stage, who=f"leaf {name}", errors=rollout.config_errors,
                         record=MemberStatus("leaf", name), poll_s=poll_s, recheck_s=recheck_s,
                         heartbeat_s=heartbeat_s, settings=settings, join_s=STOP_JOIN_S)
        self.name = name
        self.repo = repo
        self.rollout = rollout
        self.advertise = tuple(advertise)
        self.curve_key = curve_key   # published: roots that find this leaf connect with CURVE
        self.retry_max_s = retry_max_s
        self._files: dict = {}   # key -> (path, info) | error, kept across polls
        self._retry: dict[str, tuple[int, float]] = {}   # key -> (failures, when to try again)
        self._target: Target | None = None   # the last one handed over

    def start(self) -> ModelFollower:
        """Read the store once (errors raise: a leaf cannot start on an
        unreadable store), then keep following in the background."""
        self.poll(raise_errors=True)
        return super().start()

    def on_stage(self, generation: int, state: dict, bundle) -> Target:
        keys = versions_for(self.name, bundle, state.get("models", []))
        files = {}
        for key in keys:
            if not isinstance(self._files.get(key), tuple):  # new, or failed before: (re)read
                self._read(key, time.monotonic())
            files[key] = self._files[key]
        for key in [k for k in self._files if k not in keys]:
            del self._files[key]
            self._retry.pop(key, None)
        self._target = Target(tuple(keys), files, generation, state.get("bundle"))
        return self._target

    def _read(self, key: str, now: float) -> bool:
        """Read (download) ``key`` into ``_files``; a failure is counted, logged and
        tried again later (`after_look`), the wait doubling. True when it was read."""
        mk = ModelKey(key)
        try:
            self._files[key] = self.repo.load(mk.name, mk.version)
        except Exception as exc:  # missing, unreachable, or a file that fails its checks
            kind = fetch_kind(exc)
            failures = self._retry.get(key, (0, 0.0))[0] + 1
            wait = min(REPO_RETRY_FIRST_S * 2 ** (failures - 1), self.retry_max_s)
            self._retry[key] = (failures, now + wait)
            self._files[key] = f"cannot read from {self.repo.root} ({kind}): {exc}"
            self.rollout.repository_errors.labels(key, kind).inc()
            self.log.warning("leaf %s: model %s: repository error (%s): %s; trying again in "
                             "%.1fs (failure %d); versions already serving keep serving",
                             self.name, key, kind, exc, wait, failures)
            return False
        if self._retry.pop(key, None) is not None:
            self.log.info("leaf %s: model %s read from %s after its earlier failures",
                          self.name, key, self.repo.root)
        return True

    def after_look(self) -> None:
        """Try again the versions of the last target whose time has come; hand
        the target over again once one of them could be read."""
        target = self._target
        if target is None or not self._retry:
            return
        now = time.monotonic()
        read = [key for key in target.keys
                if key in self._retry and self._retry[key][1] <= now and self._read(key, now)]
        if read and target is self._target:
            self._target = Target(target.keys, {k: self._files[k] for k in target.keys},
                                  target.generation, target.bundle)
            self.updates.put(self._target)

    def describe_problem(self, error: str) -> str:
        return f"cannot read stage {self.stage} of {self.store.address}: {error}; serving what it served"

    def heartbeat_record(self, record: MemberStatus) -> MemberStatus:
        return dataclasses.replace(super().heartbeat_record(record),
                                   endpoints=advertised(record.endpoints, self.advertise),
                                   curve_key=self.curve_key)


__all__ = ["ModelFollower", "advertised", "versions_for"]
