"""`trimmer rollback`: a stage back to what it served before its active
config, config and model versions as one unit, in the safe order.

The stage record keeps, with each earlier config, the model versions the
stage ran when that config was replaced (``history_models``,
signatures/configstore/stage_state.py). Going from (config C, models M) back
to (config P, models N), the rule that holds on the way out holds on the
way back: a model version is on the stage only while the roots run a config
carrying it. So a rollback makes up to three changes, each one atomic with
its audit entry, skipping those that change nothing:

1. ``rollback-models``, C still active: the versions of N that C carries
   arrive and those of M that P does not carry leave (a version of M stays
   only while its model has no other version on the stage and N brings one
   that only P carries: it leaves in step 3). Then it waits, up to
   ``wait_s``, for every live leaf of the stage to have installed this
   generation and finished loading (a leaf retires a version only once the
   new one of the same model is warm), so traffic has a warm version the
   restored config carries before the config moves.
2. ``rollback``: P becomes the active config (the history pops). When step 3
   follows, it waits for every live root to run P.
3. ``rollback-models``, P active: the stage runs exactly N.

A step that cannot go on (a leaf or root that does not catch up within
``wait_s``, a version a leaf failed to load, the stage changed by someone
else meanwhile) stops the rollback with an error that says which steps are
done and how to finish; before step 2 `trimmer rollback` again picks up where
it stopped. ``force`` does not wait. A record written before it kept its
earlier models gives none: the config alone goes back, the models stay, and
the report says so.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import signatures.configstore.gating as gating
from _trim.errors import StoreError
from _trim.transport.model_key import ModelKey
from signatures.configstore.changes import Change
from signatures.configstore.names import check_stage
from signatures.configstore.stage_state import StageProblem, empty_record, popped

log = logging.getLogger("trimmer.store")


@dataclass
class Rollback:
    """What a rollback did."""

    stage: str
    generation: int               # the stage's generation after it
    bundle: str                   # the restored config
    previous: str | None          # the config it replaced
    models_before: list[str]
    models: list[str]             # the stage's model versions after it
    uncovered: list[str]          # of those, the ones the restored config does not carry
    models_known: bool = True     # False: the record did not say; models left as they were
    steps: list[str] = field(default_factory=list)   # what was done, in order


def _name(key: str) -> str:
    return ModelKey(key).name


def interim(now: list[str], target: list[str], current, restored) -> list[str]:
    """Step 1's model list (see the module doc), in ``target``'s order then ``now``'s."""
    step = {k for k in target if k in current.models} | {k for k in now if k in restored.models}
    names = {_name(k) for k in step}
    coming = {_name(k) for k in target}
    step |= {k for k in now if _name(k) not in names and _name(k) in coming}
    return [k for k in dict.fromkeys(target + now) if k in step]


def _wait(check, wait_s: float) -> dict[str, str]:
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        behind = check()
        if not behind or time.monotonic() >= deadline:
            return behind
        time.sleep(gating.POLL_S)


def leaves_behind(store, stage: str, generation: int, keys: list[str]) -> dict[str, str]:
    """live leaf -> why it does not serve the stage's ``generation`` yet."""
    out = {}
    for m in store.live_members(stage, "leaf"):
        label = f"leaf {gating.member_label(m)}"
        failed = {k: e for k, e in m.failed if k in keys}
        if failed:
            out[label] = "failed to load " + "; ".join(f"{k}: {e}" for k, e in failed.items())
        elif m.generation is None or m.generation < generation:
            out[label] = f"is on generation {m.generation} (not {generation} yet)"
        elif m.loading:
            out[label] = f"is still loading {', '.join(m.loading)}"
    return out


def roots_behind(store, stage: str, bundle_id: str) -> dict[str, str]:
    return {f"root {gating.member_label(m)}": f"runs config {m.bundle or '(none)'}"
            for m in store.live_members(stage, "root") if m.bundle != bundle_id}


def rollback(stages, stage: str, wait_s: float, force: bool) -> Rollback:
    """The rollback of ``stage`` by ``stages`` (a `Stages`); see the module doc."""
    check_stage(stage)
    store = stages.store
    wait_s = 0.0 if force else wait_s
    start = store.read_stage(stage)
    if isinstance(start, StageProblem):   # the first write replaces it (and says so)
        start = store.recovered(stage) or empty_record()
    if not start["history"]:
        raise StoreError(f"{stage} has no previous config to roll back to")
    previous, earlier, _ = popped(start)
    current = store.bundle(start["bundle"]) if start["bundle"] else None
    restored = store.bundle(previous)
    now = list(start["models"])
    known = earlier is not None
    target: list[str] = list(earlier) if earlier is not None else now
    out = Rollback(stage, start["generation"], previous, start["bundle"], now, target, [],
                   known)
    step1 = interim(now, target, current, restored) if current is not None else now

    def stopped(why: str, behind: dict[str, str]) -> StoreError:
        done = "; ".join(out.steps) or "nothing changed"
        return StoreError(
            f"rollback of {stage} {why}: {'; '.join(f'{k} {v}' for k, v in sorted(behind.items()))}"
            f" after {wait_s:g} s. Done so far: {done}. Their logs say why; " + (
                f"run `trimmer rollback {stage}` again to go on from here (--wait SECONDS to "
                "wait longer, --force not to wait)" if why.startswith("stopped before") else
                f"finish with `trimmer deploy-models --stage {stage} --replace "
                f"{' '.join(target)}` once they run it"))

    def write(action: str, bundle_id: str, models: list[str], expect: dict) -> int:
        def change() -> Change:
            old, replaced = stages._state_to_replace(stage)
            if (old["bundle"], list(old["models"]), old["history"]) != \
                    (expect["bundle"], expect["models"], expect["history"]):
                raise StoreError(f"{stage} changed while rollback ran (now config "
                                 f"{old['bundle']}, models {', '.join(old['models'])}); "
                                 f"done so far: {'; '.join(out.steps) or 'nothing'}. "
                                 "`trimmer status` shows where it is")
            new = {**old, "models": models}
            if action == "rollback":
                new.update(popped(old)[2], bundle=bundle_id)
            event = {"action": action, "bundle": bundle_id, "models": models,
                     "rollback_to": previous, "from": start["bundle"], **replaced}
            if force:
                event["forced"] = True
            return Change(stage, old, new, event)
        return store._atomically(change)[0]

    state = {"bundle": start["bundle"], "models": now, "history": start["history"]}
    if set(step1) != set(now):
        gen = write("rollback-models", start["bundle"], step1, state)
        out.steps.append(f"models {', '.join(step1) or '(none)'} (generation {gen}), "
                         f"config {start['bundle']} still active")
        state = {**state, "models": step1}
    models = state["models"]
    behind = _wait(lambda: leaves_behind(store, stage, store.generation(stage), models), wait_s)
    if behind and not force:
        raise stopped("stopped before the config", behind)
    gen = write("rollback", previous, models, state)
    out.steps.append(f"config {previous} (generation {gen})")
    state = {"bundle": previous, "models": models, "history": popped(state)[2]["history"]}
    if set(target) != set(models):
        behind = _wait(lambda: roots_behind(store, stage, previous), wait_s)
        if behind and not force:
            raise stopped(f"restored config {previous} but not yet the models", behind)
        gen = write("rollback-models", previous, target, state)
        out.steps.append(f"models {', '.join(target) or '(none)'} (generation {gen})")
        models = target
    out.generation, out.models = gen, list(models)
    out.uncovered = [k for k in models if k not in restored.models]
    if out.uncovered:
        log.warning("rollback of %s to %s: models %s are not in that config; roots "
                    "send them every feature", stage, previous, out.uncovered)
    if not known:
        log.warning("rollback of %s: the stage record does not say which models ran with %s "
                    "(written before it kept them); models left as they were", stage, previous)
    return out


__all__ = ["Rollback", "interim", "leaves_behind", "roots_behind", "rollback"]
