"""The stage policy: what `deploy`, `deploy-models`, `promote` and `rollback`
check and write, and what `trimmer status` reports, over any config store
(signatures/configstore/base.py).

`Stages(store)` computes each change as a `Change` from what it read, and the
store's `_atomically` commits it with its audit entry in one step, against
the record it read: the backend decides how, the policy what.

A stage record that is lost, unreadable or corrupt is an error for every
reader (signatures/configstore/stage_state.py). `deploy`, `rollback` and
`promote` replace such a record, starting from what the audit log says it
held, with a generation past any a member has reported, and the audit entry
says what they replaced. `deploy` and `deploy-models` also check the bundle's
features against the schemas the stage's roots run
(signatures/configstore/root_schemas.py); `deploy-models` waits for every
live root of the stage to run a config carrying the versions (config before
models, fleet-wide: signatures/configstore/gating.py).
"""
from __future__ import annotations

import logging

# Siblings by their module path, never through the package: its __init__
# imports this module (and the backends), which would close a circle.
import signatures.configstore.gating as gating
import signatures.configstore.rollback as rollbacks
import signatures.configstore.root_schemas as root_schemas
from _trim.errors import StoreError
from _trim.transport.model_key import ModelKey
from signatures.bundle import Bundle
from signatures.configstore.base import ConfigStore
from signatures.configstore.changes import Change
from signatures.configstore.names import STAGES, check_stage
from signatures.configstore.stage_state import StageProblem, empty_record, pushed

log = logging.getLogger("trimmer.store")


class Stages:
    """The policy over ``store``: each method one checked change of a stage."""

    def __init__(self, store: ConfigStore):
        self.store = store

    def __repr__(self) -> str:
        return f"Stages({self.store!r})"

    # -- what a change starts from and checks --------------------------------------------

    def _state_to_replace(self, stage: str) -> tuple[dict, dict]:
        """(the record a change starts from, what the audit entry adds). A
        broken record is replaced: the change starts from what the audit log
        says it held, at the highest generation anyone has seen, so that
        followers take the new record as new."""
        record = self.store.read_stage(stage)
        seen = [m.generation for m in self.store.members(stage) if m.generation is not None]
        if not isinstance(record, StageProblem):
            # A record whose generation went backwards (restored or forged by
            # hand): the change goes past the highest anyone has seen, so that
            # followers, which refuse a generation going back, take it as new.
            logged = (self.store.recovered(stage) or empty_record())["generation"]
            highest = max([logged, *seen])
            if highest > record["generation"]:
                log.warning("%s: the stage record's generation went backwards (%d; the audit log "
                            "or a member has %d): the change starts past it", stage,
                            record["generation"], highest)
                record["generation"] = highest
                return record, {"generation_was_behind": True}
            return record, {}
        base = self.store.recovered(stage) or empty_record()
        base["generation"] = max([base["generation"], *seen])
        log.warning("%s: replaced the %s stage record (%s), starting from what the audit log "
                    "says: generation %d, config %s, models %s", stage, record.kind,
                    record.message, base["generation"], base["bundle"] or "(none)",
                    ", ".join(base["models"]) or "(none)")
        return base, {"replaced": record.kind, "replaced_error": record.message}

    def _check_roots(self, stage: str, models: dict, force: bool, what: str) -> dict:
        """Refuse (unless forced) model versions whose features a live root of
        ``stage`` lacks; what the audit entry adds."""
        problems = root_schemas.check_roots(self.store, stage, models)
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

    def _check_disagreements(self, stage: str, bundle: Bundle, force: bool) -> dict:
        """Refuse (unless forced) a bundle built against a schema that
        disagrees with a live root's on what its versions read; what the
        audit entry adds."""
        bad = root_schemas.disagreements(self.store, stage, bundle)
        if not bad:
            return {}
        said = "; ".join(f"root {root}: {', '.join(keys)}" for root, keys in sorted(bad.items()))
        if not force:
            raise StoreError(f"bundle {bundle.id} was built against a feature schema "
                             f"({bundle.schema_fingerprint[:12]}) that disagrees with the roots' "
                             f"on {stage} about a feature (a dtype, shape or kind) these versions "
                             f"read: {said}. The roots would refuse it (SCHEMA MISMATCH): "
                             "rebuild it against their schema (`trimmer bundle build --schema`) "
                             "(--force: the roots refuse the config)")
        log.warning("forced deploy of %s on %s: its schema disagrees with %s", bundle.id, stage,
                    said)
        return {"forced": True,
                "schema_mismatch": sorted({k for keys in bad.values() for k in keys})}

    # -- the changes ---------------------------------------------------------------------

    def deploy(self, bundle: Bundle, stage: str, force: bool = False) -> int:
        """Make ``bundle`` the stage's root config; returns the new generation.

        Refused when a model version already on the stage is not in the bundle
        (its leaves would serve a model the roots cannot trim for), unless forced.
        """
        check_stage(stage)
        checked = self._check_roots(stage, {k: m.features for k, m in bundle.models.items()},
                                    force, f"bundle {bundle.id}")
        checked.update(self._check_disagreements(stage, bundle, force))
        # Content-addressed and never changed: written before the stage names it.
        self.store._write_bundle(bundle)

        def change() -> Change:
            old, replaced = self._state_to_replace(stage)
            uncovered = [k for k in old["models"] if k not in bundle.models]
            if uncovered and not force:
                raise StoreError(
                    f"bundle {bundle.id} does not carry {', '.join(uncovered)}, which "
                    f"{'is' if len(uncovered) == 1 else 'are'} on {stage}: take "
                    f"{'it' if len(uncovered) == 1 else 'them'} off first with "
                    f"`trimmer deploy-models --stage {stage} --replace ...` (or --force)")
            new = {**old, **(pushed(old) if old["bundle"] != bundle.id else {}),
                   "bundle": bundle.id}
            event = {"action": "deploy", "bundle": bundle.id, "previous": old["bundle"],
                     **replaced, **checked}
            if uncovered:
                event.update(forced=True, uncovered=uncovered)
                log.warning("forced deploy of %s to %s without %s", bundle.id, stage, uncovered)
            return Change(stage, old, new, event)
        return self.store._atomically(change)[0]

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
        check_stage(stage)
        keys = list(dict.fromkeys(keys))
        for key in keys:
            ModelKey(key)
        state = self.store.state(stage)
        bundle = self.store.bundle(state["bundle"]) if state["bundle"] else None
        missing, mismatched = gating.not_carried(bundle, keys, signatures)
        if (missing or mismatched) and not force:
            raise StoreError(gating.refusal(stage, state["bundle"], missing, mismatched))
        carried = {k: bundle.models[k].features for k in keys
                   if bundle is not None and k in bundle.models}
        checked = self._check_roots(stage, carried, force, ", ".join(keys))
        wanted = gating.wanted_hashes(bundle, keys, signatures)
        lagging = gating.wait_for_roots(self.store, stage, wanted, 0 if force else wait_s)
        if lagging and not force:
            raise StoreError(gating.lagging_refusal(stage, keys, lagging, wait_s))

        def change() -> Change:
            old = self.store.state(stage)
            current = bundle if old["bundle"] == state["bundle"] else \
                (self.store.bundle(old["bundle"]) if old["bundle"] else None)
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
        return self.store._atomically(change)[1]  # type: ignore[return-value]

    def promote(self, src: str, dst: str) -> int:
        """Copy ``src``'s active config and models to ``dst`` in one change."""
        check_stage(src)
        check_stage(dst)
        if src == dst:
            raise StoreError("promote needs two different stages")

        def change() -> Change:
            s = self.store.state(src)
            if not s["bundle"]:
                raise StoreError(f"{src} has no active config to promote")
            old, replaced = self._state_to_replace(dst)
            new = {**old, **(pushed(old) if old["bundle"] != s["bundle"] else {}),
                   "bundle": s["bundle"], "models": list(s["models"])}
            return Change(dst, old, new, {"action": "promote", "from": src,
                                          "bundle": s["bundle"], "previous": old["bundle"],
                                          "models": list(s["models"]), **replaced})
        return self.store._atomically(change)[0]

    def rollback(self, stage: str, wait_s: float = gating.WAIT_S,
                 force: bool = False) -> rollbacks.Rollback:
        """Return the stage to what it served before its active config: that
        config and the model versions the stage ran with it, as one unit, in
        the safe order (signatures/configstore/rollback.py); what was done."""
        return rollbacks.rollback(self, stage, wait_s, force)

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict:
        """Per stage: its record, what it means, its members. A broken record
        adds ``error`` and shows what the audit log says it held
        (``recovered``, also in the usual fields)."""
        out = {}
        for stage in STAGES:
            record = self.store.read_stage(stage)
            entry: dict = {}
            if isinstance(record, StageProblem):
                recovered = self.store.recovered(stage)
                entry = {"error": record.message, "problem": record.kind, "recovered": recovered}
                record = recovered or empty_record()
            try:
                bundle = self.store.bundle(record["bundle"]) if record["bundle"] else None
            except ValueError as exc:
                bundle = None
                entry.setdefault("error", f"config {record['bundle']}: {exc}")
            out[stage] = {
                "generation": record["generation"], "bundle": record["bundle"],
                "updated": record.get("updated"), "models": record["models"],
                "uncovered": [k for k in record["models"]
                              if bundle is None or k not in bundle.models],
                "history": record["history"],
                "members": [{**m.to_dict(), "age_s": m.age_s(), "live": self.store.is_live(m),
                             "ephemeral": self.store.ephemeral_members}
                            for m in self.store.members(stage)],
                **entry}
        return out


__all__ = ["Stages"]
