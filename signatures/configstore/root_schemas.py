"""What `deploy` and `deploy-models` check against the roots: the features a
bundle's model versions read, in the feature schema each root on the stage
runs.

A root following a stage publishes its schema into the store once
(``schemas/<fingerprint>.json``, content-addressed like bundles) and names
its fingerprint in every heartbeat (`MemberStatus.schema`). A bundle built
against another schema may read a feature a root does not compute: the
root would refuse the config (its preprocessors cannot be built), and a
leaf serving the model would fail every request. Roots whose heartbeat is
stale (or, in ZooKeeper, whose
node is gone) are not asked (they may be gone for good); a root whose schema is not
in the store (an older root) cannot be checked, and says nothing.
"""
from __future__ import annotations

import json
import os

from signatures.runtime.files import atomic_write


def publish(directory: str, schema) -> None:
    """Write ``schema`` as ``<directory>/<fingerprint>.json`` unless it is there."""
    path = os.path.join(directory, f"{schema.fingerprint}.json")
    if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        atomic_write(path, to_bytes(schema))


def load(directory: str, fingerprint: str):
    """The schema published under ``fingerprint``, or None (absent, or not
    what its name says)."""
    path = os.path.join(directory, f"{fingerprint}.json")
    if "/" in fingerprint or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            return from_bytes(f.read(), fingerprint, path)
    except OSError:
        return None


def to_bytes(schema) -> bytes:
    return json.dumps(schema.to_dict(), indent=1).encode() + b"\n"


def from_bytes(data: bytes, fingerprint: str, where: str):
    """The schema ``data`` holds if it is the one ``fingerprint`` names, else None."""
    from signatures.schema import FeatureSchema
    try:
        schema = FeatureSchema.from_dict(json.loads(data), where)
    except ValueError:
        return None
    return schema if schema.fingerprint == fingerprint else None


def missing_features(models: dict, schema) -> dict[str, list[str]]:
    """model version -> the features it reads that ``schema`` lacks (versions
    missing none are left out)."""
    out = {}
    for key, features in models.items():
        lacking = [f for f in features if f not in schema]
        if lacking:
            out[key] = lacking
    return out


def check_roots(store, stage: str, models: dict) -> dict[str, dict[str, list[str]]]:
    """root name -> `missing_features` of ``models`` (version -> features) in
    that root's schema, for every live root on ``stage`` that lacks some."""
    out = {}
    schemas: dict = {}   # a fleet's roots mostly run one schema: read it once
    for member in store.live_members(stage, "root"):
        if not member.schema:
            continue
        if member.schema not in schemas:
            schemas[member.schema] = store.schema(member.schema)
        schema = schemas[member.schema]
        if schema is None:
            continue
        lacking = missing_features(models, schema)
        if lacking:
            out[f"{member.name} (schema {member.schema[:12]})"] = lacking
    return out


def disagreements(store, stage: str, bundle) -> dict[str, list[str]]:
    """root -> the versions of ``bundle`` whose signature hash is not what
    that live root's schema gives their features (a dtype, shape or kind
    differs: the root would refuse the bundle, SCHEMA MISMATCH), for every
    live root on ``stage`` with some. A bundle without a fingerprint, or
    built against the root's schema, has none."""
    from signatures.bundle import schema_hash

    out = {}
    for member in store.live_members(stage, "root"):
        if not member.schema or not bundle.schema_fingerprint or \
                member.schema == bundle.schema_fingerprint:
            continue
        schema = store.schema(member.schema)
        if schema is None:
            continue
        bad = sorted(k for k, m in bundle.models.items()
                     if all(f in schema for f in m.features)
                     and schema_hash(schema, m.features) != m.signature_hash)
        if bad:
            out[f"{member.name} (schema {member.schema[:12]})"] = bad
    return out


def describe(problems: dict[str, dict[str, list[str]]]) -> str:
    """``check_roots``'s findings, for a refusal."""
    return "; ".join(f"root {root} lacks " + ", ".join(
        f"{', '.join(features)} (read by {key})" for key, features in sorted(lacking.items()))
                     for root, lacking in sorted(problems.items()))


def union(problems: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """version -> every feature some root lacks, for the audit log."""
    out: dict[str, list[str]] = {}
    for lacking in problems.values():
        for key, features in lacking.items():
            out[key] = sorted(set(out.get(key, [])) | set(features))
    return out


__all__ = ["check_roots", "describe", "disagreements", "from_bytes", "load", "missing_features", "publish",
           "to_bytes", "union"]
