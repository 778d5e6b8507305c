"""Who runs what: the record each root and leaf publishes about itself.

A member (a root or a leaf process following a stage) writes a
`MemberStatus` to the config store every `HEARTBEAT_S`; ``trimmer status``
reads them back. The record is built on the process's serving thread from
state it owns, and handed whole to the thread that writes it, so it is
frozen. Records read back are foreign input (any version, any language):
`MemberStatus.from_dict` keeps the fields of the right type and drops the rest
(`member_record` reads one from the bytes a backend holds).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass, field

from _trim.errors import StoreError

ROLES = ("root", "leaf")
# Members beat this often; `trimmer status` calls one silent for STALE_S stale.
HEARTBEAT_S = 2.0
STALE_S = 5 * HEARTBEAT_S
# How often followers look at their stage for a change (a directory store),
# and, where the store says when it changed (ZooKeeper's watches), how often
# they look all the same, in case a watch was lost.
FOLLOW_POLL_S = 0.2
FOLLOW_RECHECK_S = 30.0


@dataclass(frozen=True)
class LinkStatus:
    """One of a root's leaf links."""

    leaf: str
    endpoint: str
    healthy: bool = False
    transport: str = "socket"
    retiring: bool = False
    draining: bool = False   # the leaf process said it is shutting down


@dataclass(frozen=True)
class MemberStatus:
    role: str                                  # "root" or "leaf"
    name: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    generation: int | None = None              # store generation of what it installed
    bundle: str | None = None                  # the bundle id it runs
    endpoints: tuple[str, ...] = ()
    # leaves
    curve_key: str | None = None               # Z85 public key its tcp endpoints require
    models: tuple[str, ...] = ()               # versions serving (ready)
    loading: tuple[str, ...] = ()
    retiring: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()   # (version, error)
    # roots
    schema: str | None = None                  # fingerprint of the feature schema it runs
    trim_gaps: tuple[tuple[str, str], ...] = ()        # (version, reason)
    trim_gap_counts: tuple[tuple[str, int], ...] = ()  # (version, requests sent untrimmed)
    config_errors: int = 0                     # both: store states it could not use
    last_error: str | None = None
    leaves: tuple[LinkStatus, ...] = ()
    # set when written and read
    time: float = 0.0                          # wall clock of the beat
    stage: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("failed", "trim_gaps", "trim_gap_counts"):
            d[key] = dict(d[key])
        d["leaves"] = [{k: v for k, v in link.items() if k not in ("retiring", "draining") or v}
                       for link in d["leaves"]]
        return d

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.time)

    @classmethod
    def from_dict(cls, d: dict) -> MemberStatus | None:
        """A record read back; None when it lacks a role and a name."""
        if not isinstance(d, dict):
            return None
        role, name = d.get("role"), d.get("name")
        if not (isinstance(role, str) and isinstance(name, str)):
            return None
        kw: dict = {"role": role, "name": name}
        for key, kind in (("pid", int), ("host", str), ("generation", int), ("bundle", str),
                          ("schema", str), ("config_errors", int), ("last_error", str), ("curve_key", str),
                          ("time", (int, float)), ("stage", str)):
            value = d.get(key)
            if isinstance(value, kind) and not isinstance(value, bool):
                kw[key] = value
        for key in ("endpoints", "models", "loading", "retiring"):
            value = d.get(key)
            if isinstance(value, list):
                kw[key] = tuple(v for v in value if isinstance(v, str))
        for key, kind in (("failed", str), ("trim_gaps", str), ("trim_gap_counts", int)):
            value = d.get(key)
            if isinstance(value, dict):
                kw[key] = tuple(sorted((k, v) for k, v in value.items()
                                       if isinstance(v, kind) and not isinstance(v, bool)))
        links = d.get("leaves")
        if isinstance(links, list):
            kw["leaves"] = tuple(_link(link) for link in links if _link(link) is not None)
        return cls(**kw)


def member_record(data: bytes) -> MemberStatus | None:
    """The record a backend holds as JSON; None when it is not one."""
    try:
        return MemberStatus.from_dict(json.loads(data))
    except ValueError:
        return None


def check_member_names(record: MemberStatus) -> None:
    """Refuse a role or name that cannot name a file or node of its own."""
    for what, v in (("role", record.role), ("name", record.name)):
        if not v or "/" in v or v.startswith(".") or "@" in v:
            raise StoreError(f"heartbeat {what} {v!r} must be a plain name")


def _link(d) -> LinkStatus | None:
    if not isinstance(d, dict) or not isinstance(d.get("leaf"), str) \
            or not isinstance(d.get("endpoint"), str):
        return None
    return LinkStatus(d["leaf"], d["endpoint"], d.get("healthy") is True,
                      d["transport"] if isinstance(d.get("transport"), str) else "socket",
                      d.get("retiring") is True, d.get("draining") is True)


__all__ = ["FOLLOW_POLL_S", "FOLLOW_RECHECK_S", "HEARTBEAT_S", "LinkStatus", "MemberStatus", "ROLES",
           "STALE_S", "check_member_names", "member_record"]
