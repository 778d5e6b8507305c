"""The root's active config: which model versions it serves and what each reads.

`load_active_config` is the one place a bundle is read, so that following a
staged config store (polling its generation and swapping) replaces a single
function.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from signatures.module_info import version_sort_key


@dataclass(frozen=True)
class ActiveConfig:
    id: str
    models: dict                      # "name@version" -> tuple of required feature names
    pending: frozenset = frozenset()  # versions allowlisted but not yet serving
    placement: dict = field(default_factory=dict)  # leaf name -> model versions it hosts
    generation: int = 0
    endpoints: dict = field(default_factory=dict)  # leaf name -> endpoint, when the bundle has one

    def features_for(self, key: str):
        """Required features of a model version; None if this config does not know it."""
        return self.models.get(key)

    @property
    def union(self) -> list[str]:
        """Every feature some model version of this config reads."""
        out: set[str] = set()
        for names in self.models.values():
            out.update(names)
        return sorted(out)

    @property
    def default_models(self) -> list[str]:
        """What a request without ``models`` is scored by: every current version."""
        return sorted(k for k in self.models if k not in self.pending)

    def resolve(self, name: str) -> str | None:
        """``NAME`` -> the version this config serves (current before pending,
        then the highest version); None when it has none."""
        candidates = [k for k in self.models if k.rpartition("@")[0] == name]
        if not candidates:
            return None
        candidates.sort(key=lambda k: (k not in self.pending, version_sort_key(k.rpartition("@")[2])))
        return candidates[-1]

    @classmethod
    def from_bundle(cls, bundle, generation: int = 0) -> "ActiveConfig":
        d = bundle.to_dict() if hasattr(bundle, "to_dict") else bundle
        models = {k: tuple(m["features"]) for k, m in d["models"].items()}
        pending = frozenset(k for k, m in d["models"].items() if m.get("pending"))
        placement = {name: tuple(leaf.get("current", [])) + tuple(leaf.get("pending", []))
                     for name, leaf in d.get("leaves", {}).items()}
        endpoints = {name: leaf["endpoint"] for name, leaf in d.get("leaves", {}).items()
                     if leaf.get("endpoint")}
        return cls(str(d.get("id", "")), models, pending, placement, generation, endpoints)


def load_active_config(cfg) -> ActiveConfig:
    """The bundle the root config names: a bundle file, or a stage's active
    bundle in a staged config store."""
    if cfg.bundle is not None:
        from signatures.bundle import Bundle
        return ActiveConfig.from_bundle(Bundle.load(cfg.bundle))
    from signatures.store import ConfigStore
    generation, bundle = ConfigStore(cfg.config_store).active(cfg.stage)
    if bundle is None:
        raise ValueError(f"config store {cfg.config_store}: stage {cfg.stage!r} has no active config")
    return ActiveConfig.from_bundle(bundle, generation)


__all__ = ["ActiveConfig", "load_active_config"]
