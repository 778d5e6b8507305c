"""The staged config store: which bundle and which model versions each stage
runs, and who runs what.

- `open_config_store(address)`: the store at ``address``, in the backend it
  names (this is the one place that knows the backends);
- `ConfigStore` (base.py): what every backend stores and reads, and how it
  commits a change: a directory (directory.py) or a ZooKeeper ensemble
  (zookeeper/store.py);
- `Stages(store)` (stages.py): the policy over any of them, what `deploy`,
  `deploy-models`, `promote`, `rollback` and `status` check and write.

::

    with open_config_store(address) as store:
        Stages(store).deploy(bundle, "canary")
        generation, bundle = store.active("canary")

Modules inside this package import each other by module path, never through
the package itself, which imports them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from signatures.configstore.base import ConfigStore
from signatures.configstore.errors import ConfigStoreUnavailable
from signatures.configstore.names import STAGES, ZK_SCHEME
from signatures.configstore.stages import Stages

if TYPE_CHECKING:
    from collections.abc import Callable
    from os import PathLike

    from signatures.configstore.zookeeper.settings import ZooKeeperSettings


def is_zookeeper(address) -> bool:
    """Whether ``address`` names a ZooKeeper ensemble (``zk://...``) rather than a directory."""
    return isinstance(address, str) and address.startswith(ZK_SCHEME)


def open_config_store(address: str | PathLike, settings: ZooKeeperSettings | None = None, *,
                      _before_commit: Callable[[], None] | None = None) -> ConfigStore:
    """The config store at ``address``: ``zk://HOST:PORT[,HOST:PORT...]/CHROOT``
    for a ZooKeeper ensemble (``settings`` tunes its connection), else a
    directory path. Nothing is read or connected until first used.

    ``_before_commit`` is a test hook: it runs inside each commit, before the
    change becomes visible (see the backends)."""
    # Imported here: a caller pays for the backend it opens (kazoo for ZooKeeper),
    # and the backends, which import this package's modules, never import it back.
    if is_zookeeper(address):
        from signatures.configstore.zookeeper.store import ZooKeeperStore
        return ZooKeeperStore(str(address), settings, _before_commit=_before_commit)
    from signatures.configstore.directory import DirectoryStore
    return DirectoryStore(address, settings, _before_commit=_before_commit)


__all__ = ["STAGES", "ZK_SCHEME", "ConfigStore", "ConfigStoreUnavailable", "Stages", "is_zookeeper",
           "open_config_store"]
