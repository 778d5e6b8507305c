"""The config store as a directory: the embedded default (one node, tests, the demo).

::

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
and the immutable bundle it names. Followers poll the stage file's stamp (one
``stat``) several times a second. A member is live while its heartbeat file
is fresh (`signatures.configstore.members.STALE_S`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

# Siblings by their module path, never through the package: its __init__
# opens this backend, which would close a circle.
import signatures.configstore.root_schemas as root_schemas
from signatures.bundle import Bundle
from signatures.configstore.base import ConfigStore
from signatures.configstore.changes import Change, audit_fields
from signatures.configstore.changes import now as _now
from signatures.configstore.members import MemberStatus, check_member_names
from signatures.configstore.names import check_stage
from signatures.configstore.stage_state import (
    StageProblem,
    empty_record,
    lost,
    parse_record,
    replay,
    stage_entries,
)
from signatures.runtime.files import atomic_write, fsync_dir, locked


class DirectoryStore(ConfigStore):
    def __init__(self, path, settings=None, _before_commit: Callable[[], None] | None = None):
        self.path = self.address = os.fspath(path)
        # Test hook: runs after a stage's new state is written to its temp
        # file and before the rename that makes it visible.
        self._before_commit = _before_commit

    def __repr__(self) -> str:
        return f"DirectoryStore({self.path!r})"

    # -- reading (no lock) ------------------------------------------------------

    def _stage_path(self, stage: str) -> str:
        return os.path.join(self.path, "stages", f"{check_stage(stage)}.json")

    def read_stage(self, stage: str) -> dict | StageProblem:
        path = self._stage_path(stage)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            written = self.recovered(stage)
            if written is None:
                return empty_record()
            return lost(path, stage, written)
        except OSError as exc:
            return StageProblem("unreadable", f"{path}: cannot read the stage record: "
                                              f"{exc.strerror}")
        return parse_record(data, path)

    def recovered(self, stage: str) -> dict | None:
        try:
            with open(os.path.join(self.path, "log.jsonl"), "rb") as f:
                return replay(stage_entries(f, stage))
        except OSError:
            return None

    def stage_stamp(self, stage: str):
        """Every write renames a new file into place: one stat tells."""
        try:
            st = os.stat(self._stage_path(stage))
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def bundle(self, bundle_id: str) -> Bundle:
        return Bundle.load(os.path.join(self.path, "bundles", f"{bundle_id}.json"))

    def schema(self, fingerprint: str):
        return root_schemas.load(os.path.join(self.path, "schemas"), fingerprint)

    def log_entries(self) -> list[dict]:
        try:
            with open(os.path.join(self.path, "log.jsonl"), "rb") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    # -- writing (under the lock) ------------------------------------------------

    def _write_bundle(self, bundle: Bundle) -> None:
        d = os.path.join(self.path, "bundles")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{bundle.id}.json")
        if not os.path.exists(path):
            atomic_write(path, bundle.to_json())

    def publish_schema(self, schema) -> None:
        root_schemas.publish(os.path.join(self.path, "schemas"), schema)

    def _atomically(self, change: Callable[[], Change]) -> tuple[int, object]:
        os.makedirs(self.path, exist_ok=True)
        with locked(os.path.join(self.path, ".lock")):
            c = change()
            return self._commit(c.stage, c.old, c.new, c.event), c.result

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
        line = json.dumps({**audit_fields(), **event}) + "\n"
        # One O_APPEND write per event: lines from concurrent writers never interleave.
        fd = os.open(os.path.join(self.path, "log.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- membership ---------------------------------------------------------------

    def heartbeat(self, stage: str, record: MemberStatus) -> None:
        check_stage(stage)
        check_member_names(record)
        d = os.path.join(self.path, "members", stage)
        os.makedirs(d, exist_ok=True)
        stamped = dataclasses.replace(record, stage=stage, time=time.time())
        atomic_write(os.path.join(d, f"{record.role}-{record.name}.json"),
                     json.dumps(stamped.to_dict()).encode())

    def members(self, stage: str) -> list[MemberStatus]:
        d = os.path.join(self.path, "members", check_stage(stage))
        out = []
        for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if entry.startswith(".") or not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(d, entry), "rb") as f:
                    record = MemberStatus.from_dict(json.loads(f.read()))
            except (OSError, ValueError):
                continue  # removed between listdir and open
            if record is not None:
                out.append(record)
        return out


__all__ = ["DirectoryStore"]
