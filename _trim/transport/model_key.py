"""``NAME@VERSION``: the one form of a model version's name.

Bundles, stage records, headers, pongs and metrics labels all name a model
version this way (``ctr@3``). `ModelKey` is a ``str`` so that it is the
dictionary key and the JSON string it always was; constructing one checks
the form, and ``.name`` / ``.version`` replace ad-hoc splitting.
"""
from __future__ import annotations

import re

from ..errors import InvalidName

SEPARATOR = "@"
# What a model name and a version each are: they become directory names,
# metrics labels and the `NAME@VERSION` of every header.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"
_NAME = re.compile(NAME_PATTERN)


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


def is_model_ref(value) -> bool:
    """Whether ``value`` names a model the way the wire does: ``NAME`` or
    ``NAME@VERSION``, each part 1-128 letters, digits, ``_``, ``-``, ``.``,
    starting with a letter or digit."""
    if not isinstance(value, str):
        return False
    name, sep, version = value.partition(SEPARATOR)
    return _NAME.fullmatch(name) is not None and (
        not sep or _NAME.fullmatch(version) is not None)


def is_model_key(value) -> bool:
    """Whether ``value`` is a ``NAME@VERSION`` of that form."""
    return is_model_ref(value) and SEPARATOR in value


__all__ = ["NAME_PATTERN", "ModelKey", "is_model_key", "is_model_ref"]
