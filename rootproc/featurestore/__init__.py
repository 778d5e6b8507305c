"""The feature store, opened by address: the package knows its backends.

    a directory path            LMDB on this node (rootproc/featurestore/lmdb_store.py), the default
    redis://HOST:PORT/DB        a Redis server shared by a fleet (rootproc/featurestore/redis_store.py);
    rediss://HOST:PORT/DB       the same over TLS. ``?namespace=NAME`` keeps two stores
                                apart on one server (default ``features``)

Every backend serves `FeatureStore` (rootproc/featurestore/base.py), which
imports none of them. A backend's module is imported when an address first
needs it, so that a root on LMDB never loads the Redis client.
"""
from __future__ import annotations

from rootproc.featurestore.base import FeatureStore, StoreDown, is_redis_address


def open_feature_store(address, settings=None, *, readonly: bool = True) -> FeatureStore:
    """The store at ``address`` (a directory, or a redis:// URL with the root's
    `RedisSettings`), open for reading; ValueError naming what is wrong."""
    if is_redis_address(address):
        from rootproc.featurestore.redis_store import RedisStore
        return RedisStore(address, settings, readonly=readonly)
    from rootproc.featurestore.lmdb_store import LmdbStore
    return LmdbStore(address, readonly=readonly)


def create_feature_store(address, schema, settings=None) -> FeatureStore:
    """``address`` open for a load of ``schema``'s records (created if absent)."""
    if is_redis_address(address):
        from rootproc.featurestore.redis_store import RedisStore
        return RedisStore.create(address, schema, settings)
    from rootproc.featurestore.lmdb_store import LmdbStore
    return LmdbStore.create(address, schema)


__all__ = ["FeatureStore", "StoreDown", "create_feature_store", "is_redis_address",
           "open_feature_store"]
