"""How a process reaches a ZooKeeper config store: the ``zookeeper`` settings
of roots and leaves (and the environment the `trimmer` commands read).

The credential is never in a settings file or on a command line: the
variable `ZooKeeperSettings.auth_env` names holds it, ``USER:PASSWORD`` for
ZooKeeper's ``digest`` scheme. With one, every node the process creates is
readable by anyone and writable only by that user; without one, the nodes
are open to anyone who reaches the ensemble (said loudly at every start).
"""
from __future__ import annotations

from dataclasses import dataclass

from signatures.runtime.settings import option

AUTH_ENV = "TRIMMER_ZK_AUTH"
SESSION_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
# What one blob (a bundle, a schema) may take: a node over any of these is
# refused before it is read further, whoever wrote it (ensemble.py).
MAX_CHUNKS = 64
MAX_COMPRESSED_BYTES = 64_000_000
MAX_INFLATED_BYTES = 64 << 20


@dataclass(frozen=True)
class ZooKeeperSettings:
    session_timeout_s: float = option(SESSION_TIMEOUT_S, "with a zk:// config store: how long "
                                      "the ensemble keeps this process's session (and its "
                                      "member node) after it stops hearing from it",
                                      positive=True)
    connect_timeout_s: float = option(CONNECT_TIMEOUT_S, "with a zk:// config store: longest "
                                      "wait for the ensemble at start, and for one request",
                                      positive=True)
    auth_env: str = option(AUTH_ENV, "environment variable holding USER:PASSWORD, the digest "
                           "credential nodes are written with (unset: nodes open to anyone)")
    max_chunks: int = option(MAX_CHUNKS, "with a zk:// config store: most chunk nodes one "
                             "bundle or schema may span; a node claiming more is refused "
                             "unread", positive=True)
    max_compressed_bytes: int = option(MAX_COMPRESSED_BYTES, "with a zk:// config store: "
                                       "largest bundle or schema read, compressed",
                                       positive=True)
    max_inflated_bytes: int = option(MAX_INFLATED_BYTES, "with a zk:// config store: largest "
                                     "bundle or schema once inflated; one inflating past it "
                                     "is refused, costing no more memory", positive=True)


__all__ = ["AUTH_ENV", "CONNECT_TIMEOUT_S", "MAX_CHUNKS", "MAX_COMPRESSED_BYTES",
           "MAX_INFLATED_BYTES", "SESSION_TIMEOUT_S", "ZooKeeperSettings"]
