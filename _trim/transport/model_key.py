"""``NAME@VERSION``: the one form of a model version's name.

Bundles, stage records, headers, pongs and metrics labels all name a model
version this way (``ctr@3``). `ModelKey` is a ``str`` so that it is the
dictionary key and the JSON string it always was; constructing one checks
the form, and ``.name`` / ``.version`` replace ad-hoc splitting.
"""
from __future__ import annotations

from ..errors import InvalidName

SEPARATOR = "@"


class ModelKey(str):
    """A model version, ``NAME@VERSION``; InvalidName when ``value`` is not one."""

    __slots__ = ()

    def __new__(cls, value) -> ModelKey:
        if isinstance(value, ModelKey):
            return value
        if not isinstance(value, str):
            raise InvalidName(f"model version {value!r} is not a string of the form NAME@VERSION")
        name, sep, version = value.rpartition(SEPARATOR)
        if not sep or not name or not version:
            raise InvalidName(f"model version {value!r} is not of the form NAME@VERSION")
        return super().__new__(cls, value)

    @classmethod
    def of(cls, name: str, version: str) -> ModelKey:
        return cls(f"{name}{SEPARATOR}{version}")

    @property
    def name(self) -> str:
        return self.rpartition(SEPARATOR)[0]

    @property
    def version(self) -> str:
        return self.rpartition(SEPARATOR)[2]


__all__ = ["ModelKey"]
