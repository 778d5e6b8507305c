"""The config store's own error, beside `_trim.errors.StoreError` (a refused
or impossible change), which it refines."""
from __future__ import annotations

from _trim.errors import StoreError


class ConfigStoreUnavailable(StoreError):
    """The store cannot be reached (a ZooKeeper ensemble down or partitioned
    away); the message names it. Nothing was changed."""


__all__ = ["ConfigStoreUnavailable"]
