"""The one error tree of the Feature Trimmer.

Every error the project raises on purpose is a `TrimmerError`, so a command
line or a serving loop can tell "refused, here is why" from a bug. Each
subclass also derives from the builtin it replaces (``ValueError`` mostly),
so callers that caught those keep working.

Wire error kinds (``bad_request``, ``unavailable`` ...) are not part of this
tree: a `ProtocolError` carries one, and code that writes a reply maps any
other error to a kind there, and only there (`_trim.transport.protocol`).
"""
from __future__ import annotations


class TrimmerError(Exception):
    """Base of every error the project raises deliberately."""


class ConfigError(TrimmerError, ValueError):
    """A configuration (file, flags, environment) that cannot run; the
    message lists every problem found, not only the first."""


class InvalidInput(TrimmerError, ValueError):
    """An input document (a schema, bundle, placement, module_info.json, a
    record) that cannot be read or fails its checks; the message says where."""


class Refused(TrimmerError, ValueError):
    """An operation refused because it would do harm (overwrite a key pair,
    change a signature in place); the message says what to do instead."""


class StoreError(Refused):
    """A change the staged config store refuses, or a store it cannot read."""


class StoreUnavailable(TrimmerError, ConnectionError):
    """A feature store that did not answer in time (down, slow, unreachable):
    the request may succeed when retried, here or on another root."""


class NotFound(TrimmerError, KeyError):
    """A named thing (a model version, a feature) that is not there."""

    def __str__(self) -> str:
        # KeyError quotes its argument (it is meant for a bare key); this one
        # carries a sentence.
        return str(self.args[0]) if self.args else ""


class InvalidName(TrimmerError, ValueError):
    """A name or key of the wrong form (``NAME@VERSION``, a file name)."""


class ShmUnavailable(TrimmerError):
    """Shared memory cannot provide what was asked (no space, no directory)."""


__all__ = ["ConfigError", "InvalidInput", "InvalidName", "NotFound", "Refused",
           "ShmUnavailable", "StoreError", "StoreUnavailable", "TrimmerError"]
