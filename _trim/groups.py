"""Grouped columns: several features of one model in one column, laid out
as the model takes them (docs/protocol.md, "Grouped columns").

- A **jagged** group (``RAGGED | GROUPED``) is a TorchRec KeyedJaggedTensor's
  ids (or weights), key-major: one int64 offsets array over every (member,
  row) list, global, then every member's values back to back. Per-row
  members come first (``rows`` lists each), then the ``per_request`` last
  members (one list each, sent once).
- A **dense** group (``VECTOR | GROUPED``, float32) is a model's dense
  tensor: row ``i`` holds each member's values of row ``i`` side by side
  (a per-request member repeated on every row), ``[rows, D]`` row-major.

A group column's name is its member names as a compact JSON array
(`group_name`), so any feature name can be a member and the name alone says
which features the column carries, in order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import InvalidInput

KINDS = ("jagged", "dense")


def group_name(members) -> str:
    return json.dumps(list(members), ensure_ascii=False, separators=(",", ":"))


_NAMES: dict[str, tuple[str, ...]] = {}


def parse_group_name(name: str) -> tuple[str, ...]:
    """The members a group column's name lists; ValueError when the name is not
    a JSON array of distinct non-empty strings (rule batch.grouped-valid)."""
    members = _NAMES.get(name)
    if members is not None:
        return members
    try:
        parsed = json.loads(name)
    except ValueError:
        parsed = None
    if (not isinstance(parsed, list) or not parsed
            or not all(isinstance(m, str) and m for m in parsed)):
        raise ValueError(f"column {name[:80]!r}: its name must be a JSON array of its "
                         "members' names (non-empty strings)")
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"column {name[:80]!r}: a grouped column lists a member twice")
    members = tuple(parsed)
    if len(_NAMES) < 4096:   # names come from a root's configs: a handful
        _NAMES[name] = members
    return members


_GROUPS: dict[tuple[bool, str, int], Group] = {}


def received_group(jagged: bool, name: str, per_request: int) -> Group:
    """The `Group` a validated grouped column describes (cached: a decoder's hot path)."""
    key = (jagged, name, per_request)
    group = _GROUPS.get(key)
    if group is None:
        group = Group("jagged" if jagged else "dense", parse_group_name(name), per_request)
        if len(_GROUPS) < 4096:
            _GROUPS[key] = group
    return group


@dataclass(frozen=True)
class Group:
    """One grouped column a model takes: ``kind`` jagged or dense, its
    ``members`` (features) in column order, and for a jagged group how many
    of the last members are per-request."""

    kind: str
    members: tuple[str, ...]
    per_request: int = 0

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        if self.kind not in KINDS:
            raise InvalidInput(f"group kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.members or len(set(self.members)) != len(self.members):
            raise InvalidInput(f"a {self.kind} group needs distinct members, got {self.members}")
        if not 0 <= self.per_request <= len(self.members) or (
                self.kind == "dense" and self.per_request):
            raise InvalidInput(f"group {self.name}: per_request {self.per_request} does not fit")

    @property
    def name(self) -> str:
        return group_name(self.members)

    def to_dict(self) -> dict:
        d: dict = {"kind": self.kind, "members": list(self.members)}
        if self.kind == "jagged":
            d["per_request"] = self.per_request
        return d

    @classmethod
    def from_dict(cls, d, where: str) -> Group:
        if not isinstance(d, dict) or not isinstance(d.get("members"), list) or not all(
                isinstance(m, str) and m for m in d["members"]):
            raise InvalidInput(f"{where}: a group needs 'kind' and 'members' (feature names), "
                               f"got {d!r}")
        per_request = d.get("per_request", 0)
        if not isinstance(per_request, int) or isinstance(per_request, bool):
            raise InvalidInput(f"{where}: per_request must be an integer, got {per_request!r}")
        return cls(d.get("kind", ""), tuple(d["members"]), per_request)


__all__ = ["Group", "KINDS", "group_name", "parse_group_name", "received_group"]
