"""A stage's record in the config store: reading it, saying why it cannot be
used, and what the audit log says it held.

A record is ``{"generation", "bundle", "history", "history_models", "models",
...}``: ``history`` the bundles the stage ran before its active one, oldest
first, and ``history_models`` (aligned with it from the end; records written
before it existed lack it) the model versions the stage ran when each was
replaced, which `trimmer rollback` restores with it. A stage
never written has none and reads as the empty record. A record that is
missing although the audit log shows the stage was written (lost: deleted,
a restore that left it out), that cannot be read, or that is not a stage
record (corrupt) is a `StageProblem`: never "generation 0, no models",
which would unload every model of the stage.

`replay` rebuilds a stage's record from the audit log, the log every change
appends to: `trimmer status` shows it for a broken record, and `deploy`,
`rollback` and `promote` start from it when they replace one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from _trim.errors import StoreError

HISTORY_LIMIT = 50
# What each kind of problem is called in `trimmer status`.
HEADINGS = {"missing": "LOST", "corrupt": "CORRUPT", "unreadable": "UNREADABLE"}


def empty_record() -> dict:
    return {"generation": 0, "bundle": None, "history": [], "models": []}


def pushed(record: dict) -> dict:
    """The history fields once ``record``'s active bundle, with its models,
    becomes an earlier one (nothing to add without a bundle)."""
    history, models = list(record["history"]), earlier_models(record)
    if record["bundle"]:
        history.append(record["bundle"])
        models.append(list(record["models"]))
    return {"history": history[-HISTORY_LIMIT:], "history_models": models[-HISTORY_LIMIT:]}


def earlier_models(record: dict) -> list:
    """``history_models`` aligned with ``history``: None where the record
    does not say (written before it kept them)."""
    history, models = record["history"], list(record.get("history_models") or [])
    models = models[-len(history):] if history else []
    return [None] * (len(history) - len(models)) + models


def popped(record: dict) -> tuple[str, list[str] | None, dict]:
    """(the latest earlier bundle, the models the stage ran with it or None,
    the history fields without it)."""
    models = earlier_models(record)
    return record["history"][-1], models[-1], {"history": list(record["history"][:-1]),
                                               "history_models": models[:-1]}


@dataclass(frozen=True)
class StageProblem:
    """Why a stage's record cannot be used."""

    kind: str        # "missing", "corrupt" or "unreadable"
    message: str

    def error(self, stage: str) -> StoreError:
        return StoreError(f"{self.message}; `trimmer status` shows what the audit log says "
                          f"{stage} ran, and `trimmer rollback {stage}` or `trimmer deploy "
                          f"BUNDLE --stage {stage}` writes a new record from it")


def lost(where: str, stage: str, written: dict) -> StageProblem:
    """A record missing although the audit log says ``written`` was there."""
    return StageProblem("missing", f"{where}: stage record missing, although the audit log "
                                   f"has {stage} at generation {written['generation']}")


def parse_record(data: bytes, path: str) -> dict | StageProblem:
    """A stage record from a file's bytes, or the problem with them."""
    try:
        record = json.loads(data)
    except ValueError as exc:
        return StageProblem("corrupt", f"{path}: corrupt stage record: {exc}")
    problems = []
    if not isinstance(record, dict):
        return StageProblem("corrupt", f"{path}: corrupt stage record: not an object")
    gen = record.get("generation")
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
        problems.append("'generation' must be a non-negative integer")
    if not (record.get("bundle") is None or isinstance(record.get("bundle"), str)):
        problems.append("'bundle' must be a bundle id or null")
    for key in ("history", "models"):
        value = record.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{key!r} must be a list of strings")
    value = record.get("history_models", [])
    if not isinstance(value, list) or not all(
            v is None or (isinstance(v, list) and all(isinstance(k, str) for k in v))
            for v in value):
        problems.append("'history_models' must be a list of lists of strings")
    if problems:
        return StageProblem("corrupt", f"{path}: corrupt stage record: {'; '.join(problems)}")
    return record


def stage_entries(log_lines, stage: str) -> list[dict]:
    """The audit log's entries about ``stage``, oldest first; lines that do
    not parse (a torn write) are skipped."""
    out = []
    for line in log_lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("stage") == stage \
                and isinstance(entry.get("generation"), int):
            out.append(entry)
    return out


def replay(entries: list[dict]) -> dict | None:
    """The record a stage's audit entries leave (`stage_entries`); None when
    there are none."""
    if not entries:
        return None
    record = empty_record()
    for e in entries:
        action, bundle = e.get("action"), e.get("bundle")
        if action in ("deploy", "promote") and isinstance(bundle, str):
            if record["bundle"] and record["bundle"] != bundle:
                record.update(pushed(record))
            record["bundle"] = bundle
        elif action == "rollback" and isinstance(bundle, str):
            if record["history"] and record["history"][-1] == bundle:
                record.update(popped(record)[2])
            record["bundle"] = bundle
        if action in ("deploy-models", "promote", "rollback", "rollback-models") and \
                isinstance(e.get("models"), list):
            record["models"] = [m for m in e["models"] if isinstance(m, str)]
        record["generation"] = e["generation"]
        if isinstance(e.get("time"), str):
            record["updated"] = e["time"]
    return record


__all__ = ["HEADINGS", "HISTORY_LIMIT", "StageProblem", "earlier_models", "empty_record", "lost",
           "parse_record", "popped", "pushed", "replay", "stage_entries"]
