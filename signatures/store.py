"""The staged config store: which bundle and which model versions each stage runs.

A directory::

    .lock                         flock held by writers (never by readers)
    bundles/<id>.json             bundles, content-addressed, written once
    schemas/<fingerprint>.json    the feature schemas roots run, published by them
    stages/<stage>.json           {"generation", "bundle", "history", "models", ...}
    members/<stage>/<role>-<name>.json   heartbeats: who runs which generation
    log.jsonl                     audit log of every change (forced ones marked)

Every change is one atomic replace of one stage file (tmp + fsync + rename),
made under the lock after re-reading the file, so a writer killed at any
point leaves the previous state active and readable, and concurrent writers
serialise instead of losing updates. Readers take no lock: they read one file
and the immutable bundle it names. ``generation`` grows by one with every
change of a stage, so pollers compare one integer.

A stage record that is lost, unreadable or corrupt is an error for every
reader (signatures/stage_records.py), never an empty stage: followers keep
serving what they had. `deploy`, `rollback` and `promote` replace such a
record, starting from what the audit log says it held, with a generation
past any a member has reported, and the audit entry says what they replaced.
`deploy` and `deploy-models` also check the bundle's features against the
schemas the stage's roots run (signatures/root_schemas.py).
"""
from __future__ import annotations

import dataclasses
import datetime
import getpass
import json
import logging
import os
import time
from collections.abc import Callable

from _trim.errors import StoreError
from _trim.transport.model_key import ModelKey

from . import root_schemas
from .bundle import Bundle
from .fsutil import atomic_write, fsync_dir, locked
from .members import MemberRecord
from .stage_records import (
    HISTORY_LIMIT,
    StageProblem,
    empty_record,
    parse_record,
    replay,
    stage_entries,
)

STAGES = ("canary", "production")
log = logging.getLogger("trimmer.store")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise StoreError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return stage


class ConfigStore:
    def __init__(self, path, _before_commit: Callable[[], None] | None = None):
        self.path = os.fspath(path)
        # Test hook: runs after a stage's new state is written to its temp
        # file and before the rename that makes it visible.
        self._before_commit = _before_commit

    # -- reading (no lock) ------------------------------------------------------

    def _stage_path(self, stage: str) -> str:
        return os.path.join(self.path, "stages", f"{_check_stage(stage)}.json")

    def state(self, stage: str) -> dict:
        """The stage's record; the empty one for a stage never written.
        StoreError when it is lost, unreadable or corrupt."""
        record = self.read_stage(stage)
        if isinstance(record, StageProblem):
            raise record.error(stage)
        return record

    def read_stage(self, stage: str) -> dict | StageProblem:
        """The stage's record, or what is wrong with it."""
        path = self._stage_path(stage)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            written = self.recovered(stage)
            if written is None:
                return empty_record()
            return StageProblem("missing", f"{path}: stage record missing, although the audit "
                                           f"log has {stage} at generation "
                                           f"{written['generation']}")
        except OSError as exc:
            return StageProblem("unreadable", f"{path}: cannot read the stage record: "
                                              f"{exc.strerror}")
        return parse_record(data, path)

    def recovered(self, stage: str) -> dict | None:
        """What the audit log says the stage's record held; None if it says nothing."""
        try:
            with open(os.path.join(self.path, "log.jsonl"), "rb") as f:
                return replay(stage_entries(f, stage))
        except OSError:
            return None

    def generation(self, stage: str) -> int:
        """Grows with every change of the stage: cheap enough to poll each second."""
        return int(self.state(stage)["generation"])

    def stage_stamp(self, stage: str):
        """A token that changes whenever the stage's record is replaced (every
        write renames a new file into place): one stat, so followers can poll
        it several times a second. None while the stage has no record."""
        try:
            st = os.stat(self._stage_path(stage))
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def bundle(self, bundle_id: str) -> Bundle:
        return Bundle.load(os.path.join(self.path, "bundles", f"{bundle_id}.json"))

    def schema(self, fingerprint: str):
        """A feature schema a root published (`publish_schema`), or None."""
        return root_schemas.load(os.path.join(self.path, "schemas"), fingerprint)

    def active(self, stage: str) -> tuple[int, Bundle | None]:
        st = self.state(stage)
        return int(st["generation"]), (self.bundle(st["bundle"]) if st["bundle"] else None)

    def active_models(self, stage: str) -> list[str]:
        return list(self.state(stage)["models"])

    def history(self, stage: str) -> list[str]:
        """Bundle ids this stage ran before its active one, oldest first."""
        return list(self.state(stage)["history"])

    # -- writing (under the lock) ------------------------------------------------

    def _write_bundle(self, bundle: Bundle) -> None:
        d = os.path.join(self.path, "bundles")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{bundle.id}.json")
        if not os.path.exists(path):
            atomic_write(path, bundle.to_json())

    def _commit(self, stage: str, old: dict, new: dict, event: dict) -> int:
        new["generation"] = int(old["generation"]) + 1
        new["updated"] = _now()
        path = self._stage_path(stage)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = json.dumps(new, indent=1).encode() + b"\n"
        if self._before_commit is None:
            atomic_write(path, data)
        else:
            tmp = f"{path}.tmp.{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._before_commit()
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(path))
        self._log({"stage": stage, "generation": new["generation"], **event})
        return new["generation"]

    def _log(self, event: dict) -> None:
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry in some containers
            user = str(os.getuid())
        line = json.dumps({"time": _now(), "user": user, "pid": os.getpid(), **event}) + "\n"
        # One O_APPEND write per event: lines from concurrent writers never interleave.
        fd = os.open(os.path.join(self.path, "log.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _lock(self):
        os.makedirs(self.path, exist_ok=True)
        return locked(os.path.join(self.path, ".lock"))

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

    def publish_schema(self, schema) -> None:
        """Put the feature schema a root runs into the store (once per
        fingerprint), for `deploy` to check bundles against."""
        root_schemas.publish(os.path.join(self.path, "schemas"), schema)

    def deploy(self, bundle: Bundle, stage: str, force: bool = False) -> int:
        """Make ``bundle`` the stage's root config; returns the new generation.

        Refused when a model version already on the stage is not in the bundle
        (its leaves would serve a model the roots cannot trim for), unless forced.
        """
        _check_stage(stage)
        with self._lock():
            old, replaced = self._state_to_replace(stage)
            checked = self._check_roots(stage, {k: m.features for k, m in bundle.models.items()},
                                        force, f"bundle {bundle.id}")
            self._write_bundle(bundle)
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
            return self._commit(stage, old, new, event)

    def deploy_models(self, stage: str, keys, force: bool = False, replace: bool = False,
                      signatures: dict[str, str] | None = None) -> list[str]:
        """Put model versions on a stage (added to those there, or replacing
        them); returns the stage's model list.

        Config before models: every version must be in the stage's active
        bundle (with the same signature hash when ``signatures`` gives it),
        else refused naming the missing versions. ``force`` overrides, and
        the override is logged.
        """
        _check_stage(stage)
        keys = list(dict.fromkeys(keys))
        for key in keys:
            ModelKey(key)
        with self._lock():
            old = self.state(stage)
            bundle = self.bundle(old["bundle"]) if old["bundle"] else None
            missing, mismatched = [], []
            for key in keys:
                if bundle is None or key not in bundle.models:
                    missing.append(key)
                elif signatures and key in signatures and \
                        signatures[key] != bundle.models[key].signature_hash:
                    mismatched.append(key)
            if (missing or mismatched) and not force:
                parts = []
                if missing:
                    parts.append(f"the active root config on {stage} "
                                 f"({old['bundle'] or 'none'}) does not carry "
                                 f"{', '.join(missing)}")
                if mismatched:
                    parts.append(f"the active root config on {stage} has a different "
                                 f"signature for {', '.join(mismatched)}")
                raise StoreError("config before models: " + "; ".join(parts) +
                                 f". Deploy a bundle with "
                                 f"{'it' if len(missing + mismatched) == 1 else 'them'} "
                                 f"to {stage} first (`trimmer deploy BUNDLE --stage {stage}`), "
                                 "or use --force in an emergency (logged)")
            carried = {k: bundle.models[k].features for k in keys
                       if bundle is not None and k in bundle.models}
            checked = self._check_roots(stage, carried, force, ", ".join(keys))
            models = keys if replace else list(dict.fromkeys(list(old["models"]) + keys))
            new = {**old, "models": models}
            event = {"action": "deploy-models", "models": models, "added": keys,
                     "replace": replace, "bundle": old["bundle"], **checked}
            if missing or mismatched:
                event.update(forced=True, missing=missing, mismatched=mismatched)
                log.warning("forced deploy-models on %s: %s not carried by config %s",
                            stage, missing + mismatched, old["bundle"])
            self._commit(stage, old, new, event)
            return models

    def promote(self, src: str, dst: str) -> int:
        """Copy ``src``'s active config and models to ``dst`` in one change."""
        _check_stage(src)
        _check_stage(dst)
        if src == dst:
            raise StoreError("promote needs two different stages")
        with self._lock():
            s = self.state(src)
            if not s["bundle"]:
                raise StoreError(f"{src} has no active config to promote")
            old, replaced = self._state_to_replace(dst)
            history = list(old["history"])
            if old["bundle"] and old["bundle"] != s["bundle"]:
                history.append(old["bundle"])
            new = {**old, "bundle": s["bundle"], "models": list(s["models"]),
                   "history": history[-HISTORY_LIMIT:]}
            return self._commit(dst, old, new, {"action": "promote", "from": src,
                                                "bundle": s["bundle"], "previous": old["bundle"],
                                                "models": list(s["models"]), **replaced})

    def rollback(self, stage: str) -> tuple[int, str, list[str]]:
        """Return the stage to its previous config: (generation, bundle id,
        model versions on the stage that the restored config does not carry)."""
        _check_stage(stage)
        with self._lock():
            old, replaced = self._state_to_replace(stage)
            if not old["history"]:
                raise StoreError(f"{stage} has no previous config to roll back to")
            history = list(old["history"])
            previous = history.pop()
            bundle = self.bundle(previous)
            uncovered = [k for k in old["models"] if k not in bundle.models]
            new = {**old, "bundle": previous, "history": history}
            gen = self._commit(stage, old, new, {"action": "rollback", "bundle": previous,
                                                 "from": old["bundle"], "uncovered": uncovered,
                                                 **replaced})
            if uncovered:
                log.warning("rollback of %s to %s: models %s are not in that config; roots "
                            "send them every feature", stage, previous, uncovered)
            return gen, previous, uncovered

    # -- membership ---------------------------------------------------------------

    def heartbeat(self, stage: str, record: MemberRecord) -> None:
        """Record that ``record``'s member (e.g. root root-0) is alive on
        ``stage``, and what it runs."""
        _check_stage(stage)
        for what, v in (("role", record.role), ("name", record.name)):
            if not v or "/" in v or v.startswith("."):
                raise StoreError(f"heartbeat {what} {v!r} must be a plain name")
        d = os.path.join(self.path, "members", stage)
        os.makedirs(d, exist_ok=True)
        stamped = dataclasses.replace(record, stage=stage, time=time.time())
        atomic_write(os.path.join(d, f"{record.role}-{record.name}.json"),
                     json.dumps(stamped.to_dict()).encode())

    def members(self, stage: str) -> list[MemberRecord]:
        """The members' last records on ``stage``, by role and name."""
        d = os.path.join(self.path, "members", _check_stage(stage))
        out = []
        for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if entry.startswith(".") or not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(d, entry), "rb") as f:
                    record = MemberRecord.from_dict(json.loads(f.read()))
            except (OSError, ValueError):
                continue  # removed between listdir and open
            if record is not None:
                out.append(record)
        return out

    def log_entries(self) -> list[dict]:
        try:
            with open(os.path.join(self.path, "log.jsonl"), "rb") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

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
                "members": [{**m.to_dict(), "age_s": m.age_s()} for m in self.members(stage)],
                **entry}
        return out


__all__ = ["ConfigStore", "STAGES", "StoreError"]
