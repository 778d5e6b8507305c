"""The config store on a ZooKeeper ensemble: the fleet backend.

Under the address's chroot (one per cluster)::

    stages/<stage>               the stage's record, as the directory store's file
    bundles/<id>                 bundles, content-addressed, written once (blobs: zookeeper/ensemble.py)
    schemas/<fingerprint>        the feature schemas roots run, published by them
    log/e-<sequence>             the audit log: one node per change
    members/<stage>/<role>-<name>@<host>-<pid>   ephemeral: one per live process
    chunks/<sha256>/<n>          the parts of a blob too large for one node

Every change is one multi-op transaction: the stage's new record, set
against the node version the change read (or created, where it read none),
a ``check`` of every other stage it read (``promote`` reads its source), and
the audit entry, created in the same step. Two writers that read the same
version cannot both commit; the loser reads again and re-runs its checks, so
concurrent `deploy`/`promote`/`rollback` from different machines serialise
and never lose an update. A stage node missing although the log has entries
for it is *lost*, one that does not parse is *corrupt*, one this credential
may not read is *unreadable* (signatures/configstore/stage_state.py), as in a directory.

Followers are told of a change by a watch on the stage node (`Watched`), not
by polling; after a disconnection they are woken to compare generations,
which catches up whatever the watch missed. Members are ephemeral nodes:
a process that dies leaves the fleet when its session times out
(``zookeeper.session_timeout_s``), one that stops cleanly at once. A member
writes its node when its record changes; the session is its heartbeat.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable

from kazoo.client import KazooState
from kazoo.exceptions import (
    BadVersionError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
)

# Siblings by their module path, never through the package: its __init__
# opens this backend, which would close a circle.
import signatures.configstore.root_schemas as root_schemas
from _trim.errors import InvalidInput, StoreError
from signatures.bundle import Bundle
from signatures.configstore.base import ConfigStore
from signatures.configstore.changes import Change, Changes, audit_fields
from signatures.configstore.changes import now as _now
from signatures.configstore.members import MemberStatus, check_member_names, member_record
from signatures.configstore.names import STAGES, check_stage
from signatures.configstore.stage_state import (
    StageProblem,
    empty_record,
    lost,
    parse_record,
    replay,
    stage_entries,
)
from signatures.configstore.zookeeper.ensemble import NODE_BYTES, Ensemble
from signatures.configstore.zookeeper.settings import ZooKeeperSettings

CONFLICT_RETRIES = 50
BUNDLE_CACHE = 16
log = logging.getLogger("trimmer.store")


class ZooKeeperStore(ConfigStore):
    ephemeral_members = True

    def __init__(self, address: str, settings: ZooKeeperSettings | None = None,
                 _before_commit: Callable[[], None] | None = None):
        self.address = address
        # Test hook: runs after the change is computed, before its transaction is sent.
        self._before_commit = _before_commit
        self.zk = Ensemble(address, settings)
        self.path = self.address
        self._reads: dict | None = None       # stage -> node version read, inside a change
        self._bundles: dict[str, Bundle] = {}
        self._written: dict[str, dict] = {}   # member node -> record last written this session
        self._session = None
        self._tree_made = False
        self.zk.on_state.append(self._state_changed)

    def __repr__(self) -> str:
        return f"ZooKeeperStore({self.address!r})"

    def close(self) -> None:
        self.zk.close()

    def _state_changed(self, state) -> None:
        if state == KazooState.LOST:
            self._written.clear()   # the session's ephemeral nodes are gone with it

    def _stage_node(self, stage: str) -> str:
        return self.zk.path("stages", check_stage(stage))

    # -- reading -------------------------------------------------------------------------

    def read_stage(self, stage: str) -> dict | StageProblem:
        node = self._stage_node(stage)
        where = f"{self.address}/stages/{stage}"
        try:
            got = self.zk.get(node, f"read stage {stage}")
        except StoreError as exc:
            if not isinstance(exc.__cause__, NoAuthError):
                raise   # unreachable: not a problem of the record
            return StageProblem("unreadable", f"{where}: cannot read the stage record: {exc}")
        if got is None:
            if self._reads is not None:
                self._reads[stage] = None
            written = self.recovered(stage)
            if written is None:
                return empty_record()
            return lost(where, stage, written)
        data, stat = got
        if self._reads is not None:
            self._reads[stage] = stat.version
        return parse_record(data, where)

    def _log_data(self) -> list[bytes]:
        names = self.zk.children(self.zk.path("log"), "read the audit log") or []
        got = self.zk.get_many([self.zk.path("log", n) for n in names], "read the audit log")
        return [g[0] for g in got if g is not None]

    def recovered(self, stage: str) -> dict | None:
        return replay(stage_entries(self._log_data(), stage))

    def log_entries(self) -> list[dict]:
        out = []
        for data in self._log_data():
            try:
                out.append(json.loads(data))
            except ValueError:
                continue
        return out

    def stage_stamp(self, stage: str):
        got = self.zk.call(f"look at stage {stage}",
                           lambda zk: zk.exists_async(self._stage_node(stage)))
        return None if got is None else (got.czxid, got.mzxid)

    def bundle(self, bundle_id: str) -> Bundle:
        if bundle_id in self._bundles:
            return self._bundles[bundle_id]
        what = f"bundle {bundle_id} in {self.address}"
        data = self.zk.get_blob(self.zk.path("bundles", bundle_id), what)
        if data is None:
            raise InvalidInput(f"{what}: not there")
        try:
            bundle = Bundle.from_dict(json.loads(data), where=what)
        except ValueError as exc:
            raise InvalidInput(f"{what}: {exc}") from exc
        if len(self._bundles) >= BUNDLE_CACHE:
            self._bundles.pop(next(iter(self._bundles)))
        self._bundles[bundle_id] = bundle
        return bundle

    def schema(self, fingerprint: str):
        where = f"schema {fingerprint} in {self.address}"
        try:
            data = self.zk.get_blob(self.zk.path("schemas", fingerprint), where)
        except InvalidInput:
            return None
        return None if data is None else root_schemas.from_bytes(data, fingerprint, where)

    # -- writing -------------------------------------------------------------------------

    def _make_tree(self) -> None:
        if not self._tree_made:
            self.zk.ensure(*(self.zk.path(p) for p in ("stages", "bundles", "schemas", "log")),
                           *(self.zk.path("members", s) for s in STAGES))
            self._tree_made = True

    def insecure_nodes(self) -> list[str]:
        """The store's own nodes (its tree and stage records) anyone who
        reaches the ensemble may change: written without a credential."""
        return self.zk.open_nodes(
            [self.zk.chroot or "/"]
            + [self.zk.path(p) for p in ("stages", "bundles", "schemas", "log", "members")]
            + [self.zk.path("stages", s) for s in STAGES]
            + [self.zk.path("members", s) for s in STAGES])

    def _write_bundle(self, bundle: Bundle) -> None:
        self._make_tree()
        self.zk.put_blob(self.zk.path("bundles", bundle.id), bundle.to_json(),
                         f"bundle {bundle.id}")

    def publish_schema(self, schema) -> None:
        self.zk.put_blob(self.zk.path("schemas", schema.fingerprint),
                         root_schemas.to_bytes(schema), f"schema {schema.fingerprint}")

    def _atomically(self, change: Callable[[], Change]) -> tuple[int, object]:
        self._make_tree()
        for _ in range(CONFLICT_RETRIES):
            self._reads = {}
            try:
                c = change()
                reads = self._reads
            finally:
                self._reads = None
            if c.stage not in reads:
                raise AssertionError(f"a change of {c.stage} that did not read it")
            gen = int(c.old["generation"]) + 1
            record = json.dumps({**c.new, "generation": gen, "updated": _now()},
                                indent=1).encode() + b"\n"
            entry = json.dumps({**audit_fields(), "stage": c.stage, "generation": gen,
                                **c.event}).encode()
            for what, data in (("stage record", record), ("audit entry", entry)):
                if len(data) > NODE_BYTES:
                    raise StoreError(f"{c.stage}: the new {what} would be {len(data)} bytes, "
                                     f"over a ZooKeeper node's {NODE_BYTES}")
            if self._commit(c.stage, reads, record, entry):
                return gen, c.result
            log.info("%s: another writer changed the stage first; reading it again", c.stage)
            time.sleep(0.01)
        raise StoreError(f"{c.stage}: gave up after {CONFLICT_RETRIES} attempts, each beaten "
                         "by another writer")

    def _commit(self, stage: str, reads: dict, record: bytes, entry: bytes) -> bool:
        """One transaction; False when a stage read changed meanwhile."""
        def transaction(zk):
            t = zk.transaction()
            for other, version in reads.items():
                if other != stage and version is not None:
                    t.check(self._stage_node(other), version)
            if reads[stage] is None:
                t.create(self._stage_node(stage), record)
            else:
                t.set_data(self._stage_node(stage), record, version=reads[stage])
            t.create(self.zk.path("log", "e-"), entry, sequence=True)
            if self._before_commit is not None:
                self._before_commit()
            return t.commit_async()
        results = self.zk.call(f"change stage {stage}", transaction)
        errors = [r for r in results if isinstance(r, Exception)
                  and not isinstance(r, RolledBackError)]
        if not errors:
            return True
        if isinstance(errors[0], (BadVersionError, NodeExistsError, NoNodeError)):
            return False
        if isinstance(errors[0], NoAuthError):
            raise StoreError(f"{self.zk.describe()}: change stage {stage}: not allowed (the "
                             f"credential in ${self.zk.settings.auth_env} "
                             f"{'is not a writer' if self.zk.user else 'is unset'})")
        raise StoreError(f"{self.zk.describe()}: change stage {stage}: "
                         f"{type(errors[0]).__name__} {errors[0]}")

    # -- membership ---------------------------------------------------------------------

    @staticmethod
    def member_node(record: MemberStatus) -> str:
        return f"{record.role}-{record.name}@{record.host}-{record.pid}"

    def heartbeat(self, stage: str, record: MemberStatus) -> None:
        """Write the member's ephemeral node when its record changed (the
        session, not the writes, keeps it alive)."""
        check_stage(stage)
        check_member_names(record)
        node = self.zk.path("members", stage, self.member_node(record))
        body = {**dataclasses.replace(record, stage=stage).to_dict(), "time": None}
        session = self.zk.session
        if session != self._session:
            self._written.clear()
            self._session = session
        if self._written.get(node) == body:
            return
        data = json.dumps({**body, "time": time.time()}).encode()
        if len(data) > NODE_BYTES:
            raise StoreError(f"member record of {record.role} {record.name} is {len(data)} "
                             f"bytes, over a ZooKeeper node's {NODE_BYTES}")
        what = f"register {record.role} {record.name}"
        if node in self._written:
            try:
                self.zk.call(what, lambda zk: zk.set_async(node, data))
            except NoNodeError:
                self._written.pop(node, None)
        if node not in self._written:
            self._register(node, data, what)
        self._written[node] = body

    def _register(self, node: str, data: bytes, what: str) -> None:
        if self.zk.create(node, data, what, ephemeral=True):
            return
        # Left by an earlier session of this very process (same host and
        # pid): replaced, since that session ends without us.
        got = self.zk.call(what, lambda zk: zk.exists_async(node))
        if got is not None and got.ephemeralOwner != self.zk.session:
            try:
                self.zk.call(what, lambda zk: zk.delete_async(node, version=got.version))
            except (NoNodeError, BadVersionError):
                pass
        if not self.zk.create(node, data, what, ephemeral=True):
            self.zk.call(what, lambda zk: zk.set_async(node, data))

    def members(self, stage: str) -> list[MemberStatus]:
        directory = self.zk.path("members", check_stage(stage))
        names = self.zk.children(directory, f"read the members of {stage}") or []
        got = self.zk.get_many([f"{directory}/{n}" for n in names], f"read the members of {stage}")
        return [r for r in (member_record(g[0]) for g in got if g is not None) if r is not None]

    def reconnected_at(self) -> float:
        return self.zk.reconnected_at

    def is_live(self, member: MemberStatus) -> bool:
        return True   # its node exists: its session, and so its process, is alive

    # -- watching ------------------------------------------------------------------------

    def changes(self, stage: str, poll_s: float) -> Changes:
        from signatures.configstore.zookeeper.watch import Watched
        return Watched(self.zk, self._stage_node(stage), poll_s)

    def member_watch(self, stage: str, wake: Callable[[], None]):
        from signatures.configstore.zookeeper.watch import MemberWatch
        return MemberWatch(self.zk, self.zk.path("members", check_stage(stage)), wake)


__all__ = ["ZooKeeperStore"]
