"""How a process reaches a ZooKeeper config store: the ``zookeeper`` settings
of roots and leaves (and the environment the `trimmer` commands read).

The credential is never in a settings file or on a command line: the
variable `ZooKeeperSettings.auth_env` names holds it, ``USER:PASSWORD`` for
ZooKeeper's ``digest`` scheme. With one, every node the process creates is
readable by anyone and writable only by that user. Without one a process
may read but not write (the nodes would be open to anyone who reaches the
ensemble): a root or leaf following a zk:// store refuses to start, a
`trimmer` command that writes is refused, unless ``insecure`` is true (or
$TRIMMER_ZK_INSECURE is 1, for the `trimmer` commands), which is said loudly
at every start, as open tcp binds are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from signatures.runtime.settings import option

AUTH_ENV = "TRIMMER_ZK_AUTH"
INSECURE_ENV = "TRIMMER_ZK_INSECURE"
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
    insecure: bool = option(False, "with a zk:// config store: write without a credential, "
                            "leaving the nodes open to anyone who reaches the ensemble "
                            "(said loudly at start; refused otherwise)")
    max_chunks: int = option(MAX_CHUNKS, "with a zk:// config store: most chunk nodes one "
                             "bundle or schema may span; a node claiming more is refused "
                             "unread", positive=True)
    max_compressed_bytes: int = option(MAX_COMPRESSED_BYTES, "with a zk:// config store: "
                                       "largest bundle or schema read, compressed",
                                       positive=True)
    max_inflated_bytes: int = option(MAX_INFLATED_BYTES, "with a zk:// config store: largest "
                                     "bundle or schema once inflated; one inflating past it "
                                     "is refused, costing no more memory", positive=True)


    def open_writes(self) -> bool:
        """Writes without a credential are allowed (``insecure``, or $TRIMMER_ZK_INSECURE=1)."""
        return self.insecure or os.environ.get(INSECURE_ENV, "") in ("1", "true", "yes")

    def writer_problem(self, config_store: str | None) -> str | None:
        """Why a process following ``config_store`` may not start: a zk:// store
        with no credential, and no ``insecure``."""
        if not (config_store or "").startswith("zk://") or os.environ.get(self.auth_env):
            return None
        if self.open_writes():
            return None
        return (f"config_store {config_store}: no credential (${self.auth_env} unset): the "
                "member and schema nodes it writes would be open to anyone who reaches the "
                f"ensemble; set ${self.auth_env}=USER:PASSWORD, or zookeeper.insecure: true "
                "to accept that")


__all__ = ["AUTH_ENV", "INSECURE_ENV", "CONNECT_TIMEOUT_S", "MAX_CHUNKS", "MAX_COMPRESSED_BYTES",
           "MAX_INFLATED_BYTES", "SESSION_TIMEOUT_S", "ZooKeeperSettings"]
