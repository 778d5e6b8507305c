"""The staged config store: which bundle and which model versions each stage runs.

`ConfigStore(address)` opens the backend its address names:

- a directory path: `signatures/configstore/directory.py`, the embedded default (one
  node, tests, the demo);
- ``zk://HOST:PORT[,HOST:PORT...]/CHROOT``: `signatures/configstore/zookeeper/store.py`, a
  ZooKeeper ensemble, for a fleet.

Both hold the same things (stages, content-addressed bundles, the feature
schemas roots publish, the audit log, members' records) and give the same
guarantees: every change of a stage is one atomic step, made against the
record it read, so concurrent writers serialise and never lose an update; a
writer killed at any moment leaves the previous state active and readable;
``generation`` grows by one with every change of a stage.

This class is the interface and the policy both backends share: what
`deploy`, `deploy-models`, `promote` and `rollback` check and write. A
backend supplies the reads, `_atomically` (run a change against what it
read, commit it with its audit entry in one step) and membership.

A stage record that is lost, unreadable or corrupt is an error for every
reader (signatures/configstore/stage_state.py), never an empty stage: followers keep
serving what they had. `deploy`, `rollback` and `promote` replace such a
record, starting from what the audit log says it held, with a generation
past any a member has reported, and the audit entry says what they replaced.
`deploy` and `deploy-models` also check the bundle's features against the
schemas the stage's roots run (signatures/configstore/root_schemas.py); `deploy-models`
waits for every live root of the stage to run a config carrying the
versions (config before models, fleet-wide: signatures/configstore/gating.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from _trim.errors import StoreError
from _trim.transport.model_key import ModelKey
from signatures.bundle import Bundle
from signatures.configstore import gating, root_schemas
from signatures.configstore.changes import Change, Changes, audit_fields
from signatures.configstore.members import STALE_S, MemberStatus
from signatures.configstore.stage_state import HISTORY_LIMIT, StageProblem, empty_record

STAGES = ("canary", "production")
ZK_SCHEME = "zk://"
log = logging.getLogger("trimmer.store")


class ConfigStoreUnavailable(StoreError):
    """The store cannot be reached (a ZooKeeper ensemble down or partitioned
    away); the message names it. Nothing was changed."""


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise StoreError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return stage


def check_member_names(record: MemberStatus) -> None:
    for what, v in (("role", record.role), ("name", record.name)):
        if not v or "/" in v or v.startswith(".") or "@" in v:
            raise StoreError(f"heartbeat {what} {v!r} must be a plain name")


class ConfigStore:
    """The interface; ``ConfigStore(address)`` gives the backend's instance."""

    # Where members' records are ephemeral (they vanish with their process):
    # roots then link to the leaves they find registered (rootproc/rollout/follower.py),
    # and a member may call `heartbeat` as often as it likes (only changes
    # are written).
    ephemeral_members = False

    def __new__(cls, address=None, *args, **kwargs):
        if cls is ConfigStore:
            if is_zookeeper(address):
                from signatures.configstore.zookeeper.store import ZooKeeperStore
                cls = ZooKeeperStore
            else:
                from signatures.configstore.directory import DirectoryStore
                cls = DirectoryStore
        return super().__new__(cls)

    address: str

    # -- the backend -------------------------------------------------------------------

    def read_stage(self, stage: str) -> dict | StageProblem:
        """The stage's record, or what is wrong with it."""
        raise NotImplementedError

    def recovered(self, stage: str) -> dict | None:
        """What the audit log says the stage's record held; None if it says nothing."""
        raise NotImplementedError

    def stage_stamp(self, stage: str):
        """A token that changes whenever the stage's record is replaced; None
        while the stage has no record."""
        raise NotImplementedError

    def bundle(self, bundle_id: str) -> Bundle:
        raise NotImplementedError

    def schema(self, fingerprint: str):
        """A feature schema a root published (`publish_schema`), or None."""
        raise NotImplementedError

    def publish_schema(self, schema) -> None:
        """Put the feature schema a root runs into the store (once per
        fingerprint), for `deploy` to check bundles against."""
        raise NotImplementedError

    def heartbeat(self, stage: str, record: MemberStatus) -> None:
        """Record that ``record``'s member (e.g. root root-0) is alive on
        ``stage``, and what it runs."""
        raise NotImplementedError

    def members(self, stage: str) -> list[MemberStatus]:
        """The members' last records on ``stage``, by role and name."""
        raise NotImplementedError

    def log_entries(self) -> list[dict]:
        """The audit log, oldest first."""
        raise NotImplementedError

    def changes(self, stage: str, poll_s: float) -> Changes:
        """What a follower of ``stage`` waits on (see `Changes`)."""
        return Changes(poll_s)

    def close(self) -> None:
        """Let go of connections; a member's records go with it where they are ephemeral."""

    def member_watch(self, stage: str, wake: Callable[[], None]):
        """The leaves registered on ``stage``, kept current (`ephemeral_members` only)."""
        raise NotImplementedError

    def reconnected_at(self) -> float:
        """Monotonic time this process last reconnected to the store (0: never lost it)."""
        return 0.0

    def _write_bundle(self, bundle: Bundle) -> None:
        raise NotImplementedError

    def _atomically(self, change: Callable[[], Change]) -> tuple[int, object]:
        """Run ``change`` and commit what it returns, with its audit entry, in
        one step that fails if a stage it read changed meanwhile (then it is
        run again); (the new generation, its result)."""
        raise NotImplementedError

    def is_live(self, member: MemberStatus) -> bool:
        """Whether ``member`` is still there (its records are recent)."""
        return member.age_s() <= STALE_S

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading -----------------------------------------------------------------------

    def state(self, stage: str) -> dict:
        """The stage's record; the empty one for a stage never written.
        StoreError when it is lost, unreadable or corrupt."""
        record = self.read_stage(stage)
        if isinstance(record, StageProblem):
            raise record.error(stage)
        return record

    def generation(self, stage: str) -> int:
        """Grows with every change of the stage."""
        return int(self.state(stage)["generation"])

    def active(self, stage: str) -> tuple[int, Bundle | None]:
        st = self.state(stage)
        return int(st["generation"]), (self.bundle(st["bundle"]) if st["bundle"] else None)

    def active_models(self, stage: str) -> list[str]:
        return list(self.state(stage)["models"])

    def history(self, stage: str) -> list[str]:
        """Bundle ids this stage ran before its active one, oldest first."""
        return list(self.state(stage)["history"])

    def live_members(self, stage: str, role: str | None = None) -> list[MemberStatus]:
        return [m for m in self.members(stage)
                if (role is None or m.role == role) and self.is_live(m)]

    # -- the policy ----------------------------------------------------------------------

    def _state_to_replace(self, stage: str) -> tuple[dict, dict]:
        """(the record a change starts from, what the audit entry adds). A
        broken record is replaced: the change starts from what the audit log
        says it held, at the highest generation anyone has seen, so that
        followers take the new record as new."""
        record = self.read_stage(stage)
        if not isinstance(record, StageProblem):
            return record, {}
        base = self.recovered(stage) or empty_record()
        seen = [m.generation for m in self.members(stage) if m.generation is not None]
        base["generation"] = max([base["generation"], *seen])
        log.warning("%s: replaced the %s stage record (%s), starting from what the audit log "
                    "says: generation %d, config %s, models %s", stage, record.kind,
                    record.message, base["generation"], base["bundle"] or "(none)",
                    ", ".join(base["models"]) or "(none)")
        return base, {"replaced": record.kind, "replaced_error": record.message}

    def _check_roots(self, stage: str, models: dict, force: bool, what: str) -> dict:
        """Refuse (unless forced) model versions whose features a live root of
        ``stage`` lacks; what the audit entry adds."""
        problems = root_schemas.check_roots(self, stage, models)
        if not problems:
            return {}
        if not force:
            raise StoreError(f"{what} reads features the roots on {stage} do not compute: "
                             f"{root_schemas.describe(problems)}. Give the roots a feature "
                             "schema with them first (their `schema` setting, read at start), "
                             "or rebuild the bundle against theirs (--force: the roots refuse "
                             "the config)")
        log.warning("forced %s on %s: %s", what, stage, root_schemas.describe(problems))
        return {"forced": True, "schema_missing": root_schemas.union(problems)}

    def deploy(self, bundle: Bundle, stage: str, force: bool = False) -> int:
        """Make ``bundle`` the stage's root config; returns the new generation.

        Refused when a model version already on the stage is not in the bundle
        (its leaves would serve a model the roots cannot trim for), unless forced.
        """
        _check_stage(stage)
        checked = self._check_roots(stage, {k: m.features for k, m in bundle.models.items()},
                                    force, f"bundle {bundle.id}")
        # Content-addressed and never changed: written before the stage names it.
        self._write_bundle(bundle)

        def change() -> Change:
            old, replaced = self._state_to_replace(stage)
            uncovered = [k for k in old["models"] if k not in bundle.models]
            if uncovered and not force:
                raise StoreError(
                    f"bundle {bundle.id} does not carry {', '.join(uncovered)}, which "
                    f"{'is' if len(uncovered) == 1 else 'are'} on {stage}: take "
                    f"{'it' if len(uncovered) == 1 else 'them'} off first with "
                    f"`trimmer deploy-models --stage {stage} --replace ...` (or --force)")
            history = list(old["history"])
            if old["bundle"] and old["bundle"] != bundle.id:
                history.append(old["bundle"])
            new = {**old, "bundle": bundle.id, "history": history[-HISTORY_LIMIT:]}
            event = {"action": "deploy", "bundle": bundle.id, "previous": old["bundle"],
                     **replaced, **checked}
            if uncovered:
                event.update(forced=True, uncovered=uncovered)
                log.warning("forced deploy of %s to %s without %s", bundle.id, stage, uncovered)
            return Change(stage, old, new, event)
        return self._atomically(change)[0]

    def deploy_models(self, stage: str, keys, force: bool = False, replace: bool = False,
                      signatures: dict[str, str] | None = None,
                      wait_s: float = gating.WAIT_S) -> list[str]:
        """Put model versions on a stage (added to those there, or replacing
        them); returns the stage's model list.

        Config before models: every version must be in the stage's active
        bundle (with the same signature hash when ``signatures`` gives it),
        and every live root of the stage must run a config carrying it with
        that signature (waited for up to ``wait_s``); else refused, naming
        what is missing and the roots that lag. ``force`` overrides, and the
        override is logged with what it skipped.
        """
        _check_stage(stage)
        keys = list(dict.fromkeys(keys))
        for key in keys:
            ModelKey(key)
        state = self.state(stage)
        bundle = self.bundle(state["bundle"]) if state["bundle"] else None
        missing, mismatched = gating.not_carried(bundle, keys, signatures)
        if (missing or mismatched) and not force:
            raise StoreError(gating.refusal(stage, state["bundle"], missing, mismatched))
        carried = {k: bundle.models[k].features for k in keys
                   if bundle is not None and k in bundle.models}
        checked = self._check_roots(stage, carried, force, ", ".join(keys))
        wanted = gating.wanted_hashes(bundle, keys, signatures)
        lagging = gating.wait_for_roots(self, stage, wanted, 0 if force else wait_s)
        if lagging and not force:
            raise StoreError(gating.lagging_refusal(stage, keys, lagging, wait_s))

        def change() -> Change:
            old = self.state(stage)
            current = bundle if old["bundle"] == state["bundle"] else \
                (self.bundle(old["bundle"]) if old["bundle"] else None)
            if current is not bundle and not force:   # another deploy meanwhile
                if any(gating.not_carried(current, keys, signatures)):
                    raise StoreError(gating.refusal(stage, old["bundle"], *gating.not_carried(
                        current, keys, signatures)))
                if gating.wanted_hashes(current, keys, signatures) != wanted:
                    raise StoreError(f"the root config on {stage} changed while deploy-models "
                                     f"waited ({state['bundle']} -> {old['bundle']}), with other "
                                     "signatures: run it again")
            models = keys if replace else list(dict.fromkeys(list(old["models"]) + keys))
            new = {**old, "models": models}
            event = {"action": "deploy-models", "models": models, "added": keys,
                     "replace": replace, "bundle": old["bundle"], **checked}
            if missing or mismatched:
                event.update(forced=True, missing=missing, mismatched=mismatched)
                log.warning("forced deploy-models on %s: %s not carried by config %s",
                            stage, missing + mismatched, old["bundle"])
            if lagging:
                event.update(forced=True, lagging=gating.describe_lagging(lagging))
                log.warning("forced deploy-models on %s: did not wait for %s",
                            stage, gating.describe_lagging(lagging))
            return Change(stage, old, new, event, models)
        return self._atomically(change)[1]  # type: ignore[return-value]

    def promote(self, src: str, dst: str) -> int:
        """Copy ``src``'s active config and models to ``dst`` in one change."""
        _check_stage(src)
        _check_stage(dst)
        if src == dst:
            raise StoreError("promote needs two different stages")

        def change() -> Change:
            s = self.state(src)
            if not s["bundle"]:
                raise StoreError(f"{src} has no active config to promote")
            old, replaced = self._state_to_replace(dst)
            history = list(old["history"])
            if old["bundle"] and old["bundle"] != s["bundle"]:
                history.append(old["bundle"])
            new = {**old, "bundle": s["bundle"], "models": list(s["models"]),
                   "history": history[-HISTORY_LIMIT:]}
            return Change(dst, old, new, {"action": "promote", "from": src,
                                          "bundle": s["bundle"], "previous": old["bundle"],
                                          "models": list(s["models"]), **replaced})
        return self._atomically(change)[0]

    def rollback(self, stage: str) -> tuple[int, str, list[str]]:
        """Return the stage to its previous config: (generation, bundle id,
        model versions on the stage that the restored config does not carry)."""
        _check_stage(stage)

        def change() -> Change:
            old, replaced = self._state_to_replace(stage)
            if not old["history"]:
                raise StoreError(f"{stage} has no previous config to roll back to")
            history = list(old["history"])
            previous = history.pop()
            bundle = self.bundle(previous)
            uncovered = [k for k in old["models"] if k not in bundle.models]
            new = {**old, "bundle": previous, "history": history}
            return Change(stage, old, new, {"action": "rollback", "bundle": previous,
                                            "from": old["bundle"], "uncovered": uncovered,
                                            **replaced}, (previous, uncovered))
        gen, result = self._atomically(change)
        restored: str = result[0]  # type: ignore[index]
        left_out: list[str] = result[1]  # type: ignore[index]
        if left_out:
            log.warning("rollback of %s to %s: models %s are not in that config; roots "
                        "send them every feature", stage, restored, left_out)
        return gen, restored, left_out

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict:
        """Per stage: its record, what it means, its members. A broken record
        adds ``error`` and shows what the audit log says it held
        (``recovered``, also in the usual fields)."""
        out = {}
        for stage in STAGES:
            record = self.read_stage(stage)
            entry: dict = {}
            if isinstance(record, StageProblem):
                recovered = self.recovered(stage)
                entry = {"error": record.message, "problem": record.kind, "recovered": recovered}
                record = recovered or empty_record()
            try:
                bundle = self.bundle(record["bundle"]) if record["bundle"] else None
            except ValueError as exc:
                bundle = None
                entry.setdefault("error", f"config {record['bundle']}: {exc}")
            out[stage] = {
                "generation": record["generation"], "bundle": record["bundle"],
                "updated": record.get("updated"), "models": record["models"],
                "uncovered": [k for k in record["models"]
                              if bundle is None or k not in bundle.models],
                "history": record["history"],
                "members": [{**m.to_dict(), "age_s": m.age_s(), "live": self.is_live(m)}
                            for m in self.members(stage)],
                **entry}
        return out


def is_zookeeper(address) -> bool:
    return isinstance(address, str) and address.startswith(ZK_SCHEME)


__all__ = ["Change", "Changes", "ConfigStore", "ConfigStoreUnavailable", "STAGES", "StoreError",
           "ZK_SCHEME", "audit_fields", "check_member_names", "is_zookeeper"]
