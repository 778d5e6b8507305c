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


__all__ = ["AUTH_ENV", "CONNECT_TIMEOUT_S", "SESSION_TIMEOUT_S", "ZooKeeperSettings"]
