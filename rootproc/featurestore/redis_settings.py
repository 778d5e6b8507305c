"""How a root reaches a redis:// feature store: the ``redis`` settings of
roots, and those of a load (`LOADER_REDIS`). Beside the Redis backend
(rootproc/featurestore/redis_store.py), so that the store needs no process settings.
"""
from __future__ import annotations

from dataclasses import dataclass

from rootproc.defaults import (
    REDIS_BACKOFF_MAX_MS,
    REDIS_BACKOFF_MS,
    REDIS_CONNECT_TIMEOUT_MS,
    REDIS_PASSWORD_ENV,
    REDIS_POOL_SIZE,
    REDIS_RETRIES,
    REDIS_TIMEOUT_MS,
)
from signatures.runtime.settings import option


@dataclass(frozen=True)
class RedisSettings:
    """How a root talks to a redis:// feature store (rootproc/featurestore/redis_store.py)."""

    timeout_ms: float = option(REDIS_TIMEOUT_MS, "longest one fetch may take, retries "
                               "included; also capped at half the request's remaining deadline",
                               positive=True)
    connect_timeout_ms: float = option(REDIS_CONNECT_TIMEOUT_MS, "longest a (re)connect may "
                                       "take, within the fetch's time", positive=True)
    retries: int = option(REDIS_RETRIES, "new connections tried after a connection error "
                          "(never after a timeout), within the fetch's time", minimum=0)
    backoff_ms: float = option(REDIS_BACKOFF_MS, "after a failed fetch, fetches fail at once "
                               "for this long, doubling while it keeps failing", minimum=0)
    backoff_max_ms: float = option(REDIS_BACKOFF_MAX_MS, "longest backoff", minimum=0)
    pool_size: int = option(REDIS_POOL_SIZE, "idle connections kept open (the serving loop "
                            "uses one at a time)", positive=True)
    password_env: str = option(REDIS_PASSWORD_ENV, "environment variable holding the password "
                               "when the address has none")
    tls_ca_file: str | None = option(None, "CA certificates for rediss:// (default: the "
                                     "system's)", path=True)

    def check(self) -> list[str]:
        if self.backoff_max_ms < self.backoff_ms:
            return [f"backoff_max_ms ({self.backoff_max_ms:g}) is below backoff_ms "
                    f"({self.backoff_ms:g})"]
        return []


# `trimmer store load` / `synth`: a bulk write is one long pipeline, not a request.
LOADER_REDIS = RedisSettings(timeout_ms=60_000, connect_timeout_ms=5_000, retries=0,
                             backoff_ms=0)


__all__ = ["LOADER_REDIS", "RedisSettings"]
