"""The root's active config: which model versions it serves and what each reads.

`load_active_config` is the one place a bundle is read, so that following a
staged config store (polling its generation and swapping) replaces a single
function.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from _trim.groups import Group
from _trim.reads import FeatureRead

log = logging.getLogger("rootproc")

if TYPE_CHECKING:
    from rootproc.preprocess.preprocessor import Preprocessor
    from rootproc.preprocess.untrimmed import Untrimmed


@dataclass(frozen=True)
class ActiveConfig:
    id: str
    models: dict                      # "name@version" -> tuple of required feature names
    pending: frozenset = frozenset()  # versions allowlisted but not yet serving
    placement: dict = field(default_factory=dict)  # leaf name -> model versions it hosts
    generation: int = 0
    endpoints: dict = field(default_factory=dict)  # leaf name -> endpoint, when the bundle has one
    hashes: dict = field(default_factory=dict)     # "name@version" -> signature hash
    schema_fingerprint: str = ""   # of the feature schema the bundle was built against
    reads: dict = field(default_factory=dict)  # "name@version" -> {feature: FeatureRead}
    groups: dict = field(default_factory=dict)  # "name@version" -> tuple of Group (grouped columns)

    def features_for(self, key: str):
        """Required features of a model version; None if this config does not know it."""
        return self.models.get(key)

    def reads_for(self, key: str) -> dict:
        """What the version reads of features it reads less of than whole (feature -> read)."""
        return self.reads.get(key, {})

    def groups_for(self, key: str) -> tuple:
        """The version's inputs sent as grouped columns (`_trim.groups.Group`), if any."""
        return self.groups.get(key, ())

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

    @classmethod
    def from_bundle(cls, bundle, generation: int = 0) -> ActiveConfig:
        d = bundle.to_dict() if hasattr(bundle, "to_dict") else bundle
        models = {k: tuple(m["features"]) for k, m in d["models"].items()}
        pending = frozenset(k for k, m in d["models"].items() if m.get("pending"))
        placement = {name: tuple(leaf.get("current", [])) + tuple(leaf.get("pending", []))
                     for name, leaf in d.get("leaves", {}).items()}
        endpoints = {name: leaf["endpoint"] for name, leaf in d.get("leaves", {}).items()
                     if leaf.get("endpoint")}
        hashes = {k: m.get("signature_hash") for k, m in d["models"].items()}
        reads = {k: {name: FeatureRead.from_dict(r, f"bundle models[{k!r}].reads")
                     for name, r in m["reads"].items()}
                 for k, m in d["models"].items() if m.get("reads")}
        groups = {k: tuple(Group.from_dict(g, f"bundle models[{k!r}].groups") for g in m["groups"])
                  for k, m in d["models"].items() if m.get("groups")}
        return cls(str(d.get("id", "")), models, pending, placement, generation, endpoints, hashes,
                   str(d.get("schema_fingerprint") or ""), reads, groups)


class SchemaMismatch(ValueError):
    """The bundle was built against a feature schema that disagrees with the
    root's on what some of its versions read."""


def check_schema(schema, active: ActiveConfig) -> None:
    """SchemaMismatch when ``active``'s bundle was built against another
    feature schema (its ``schema_fingerprint``) that disagrees with this
    root's on a feature some version reads: each version's signature hash
    must be what the root's schema gives its features. A bundle naming no
    fingerprint, or the root's, passes; so does one built against a schema
    that only adds features or agrees on every one its versions read."""
    from signatures.bundle import schema_hash

    if not active.schema_fingerprint or active.schema_fingerprint == schema.fingerprint:
        return
    bad = sorted(k for k, names in active.models.items()
                 if active.hashes.get(k) and all(n in schema.features for n in names)
                 and schema_hash(schema, names) != active.hashes[k])
    if bad:
        raise SchemaMismatch(
            f"SCHEMA MISMATCH: bundle {active.id} was built against feature schema "
            f"{active.schema_fingerprint[:12]}, not this root's ({schema.fingerprint[:12]}), and "
            f"they disagree on a feature (a dtype, shape or kind) that {', '.join(bad)} "
            f"read{'s' if len(bad) == 1 else ''}: every request for "
            f"{'it' if len(bad) == 1 else 'them'} would fail signature_mismatch. Refused; "
            "rebuild the bundle against the roots' schema (`trimmer bundle build --schema`), "
            "or give the roots the schema it was built against")


@dataclass(frozen=True)
class PreparedConfig:
    """An active config with everything a request needs compiled: built off
    the serving loop, then installed in one step between requests."""

    active: ActiveConfig
    pre_full: Preprocessor    # every schema feature (fail open, trim off)
    pre_used: Preprocessor    # the features this config's models read
    plans: dict               # (layout fingerprint, model version | None) -> trim plan
    untrimmed: Untrimmed      # pre_used's batches' every-feature size (the savings metric)


def prepare_config(schema, record_layouts, trim: str, active: ActiveConfig,
                   previous: PreparedConfig | None = None) -> PreparedConfig:
    """Validate ``active`` against the schema and compile its preprocessors and
    trim plans; ValueError naming the problem. Touches no serving state, so it
    may run on another thread. ``previous`` with the same config id is reused
    (a change of the stage's models alone only moves the generation)."""
    import _trim
    from rootproc.preprocess.preprocessor import Preprocessor
    from rootproc.preprocess.untrimmed import Untrimmed

    if previous is not None and previous.active.id == active.id and active.id:
        return PreparedConfig(active, previous.pre_full, previous.pre_used, previous.plans,
                              previous.untrimmed)
    check_schema(schema, active)
    full = previous.pre_full if previous is not None else Preprocessor(schema, None, record_layouts)
    if trim == "on":
        schema.check_names(active.union)
        used = Preprocessor(schema, active.union, record_layouts)
    else:
        used = full
    plans = {(full.layout.fingerprint, None): _trim.compile_plan(full.layout, full.layout.names),
             (used.layout.fingerprint, None): _trim.compile_plan(used.layout, used.layout.names)}
    if trim == "on":
        for key, names in active.models.items():
            plans[(used.layout.fingerprint, key)] = _trim.compile_plan(used.layout, names)
    return PreparedConfig(active, full, used, plans, Untrimmed(used, full))


def fine_plan(layout, active: ActiveConfig, key: str):
    """``key``'s trim plan with its reads (sub-feature columns); None when it
    reads every feature whole, or when a read does not fit ``layout`` (the
    schema disagrees with the signature): its features then go whole (fail
    open), logged once per config and layout."""
    import _trim

    reads = active.reads_for(key)
    if not reads:
        return None
    try:
        return _trim.compile_plan(layout, active.features_for(key), reads)
    except ValueError as exc:
        log.warning("model %s: its reads are not used, its features go whole "
                    "(sub-feature fail open): %s", key, exc)
        return None


def grouped_plan(layout, active: ActiveConfig, key: str):
    """``key``'s trim plan with its groups (grouped columns); None when it has
    none, or when a group does not fit ``layout`` (the schema disagrees with
    the signature): its members then go as columns of their own (fail open),
    logged once per config and layout."""
    import _trim

    groups = active.groups_for(key)
    if not groups:
        return None
    try:
        return _trim.compile_plan(layout, active.features_for(key), None, groups)
    except ValueError as exc:
        log.warning("model %s: its groups are not used, its features go as columns of their "
                    "own (grouped fail open): %s", key, exc)
        return None


def load_active_config(cfg) -> ActiveConfig:
    """The bundle the root config names: a bundle file, or a stage's active
    bundle in a staged config store."""
    if cfg.bundle is not None:
        from signatures.bundle import Bundle
        return ActiveConfig.from_bundle(Bundle.load(cfg.bundle))
    from signatures.configstore import open_config_store
    with open_config_store(cfg.config_store, settings=cfg.zookeeper) as store:
        generation, bundle = store.active(cfg.stage)
    if bundle is None:
        raise NoActiveConfig(f"config store {cfg.config_store}: stage {cfg.stage!r} has no "
                             "active config")
    return ActiveConfig.from_bundle(bundle, generation)


class NoActiveConfig(ValueError):
    """The stage the root follows has no active config (yet)."""


__all__ = ["ActiveConfig", "NoActiveConfig", "PreparedConfig", "SchemaMismatch", "check_schema",
           "load_active_config", "prepare_config"]
