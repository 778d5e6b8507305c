"""The names the whole config store shares: its stages, and the scheme of a
ZooKeeper address (`signatures.configstore.open_config_store` reads it to
pick the backend)."""
from __future__ import annotations

from _trim.errors import StoreError

STAGES = ("canary", "production")
ZK_SCHEME = "zk://"


def check_stage(stage: str) -> str:
    """``stage``, if it is one of `STAGES`."""
    if stage not in STAGES:
        raise StoreError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return stage


__all__ = ["STAGES", "ZK_SCHEME", "check_stage"]
