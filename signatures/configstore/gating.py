"""Config before models, fleet-wide: what `deploy-models` checks and waits for.

A model version may go on a stage only once the stage's root config carries
it, and that holds for the fleet only when every root of the stage has
*installed* such a config, not when the store has it. Each root reports
the bundle it runs in its member record (signatures/configstore/members.py), so
`deploy-models` reads the live roots' records and waits, up to ``--wait``,
until each runs a bundle carrying every version with the signature the
stage's config (or the repository, with ``--repo``) gives it. Roots still
behind then are named in the refusal; ``--force`` goes ahead without them,
and the audit entry lists whom it did not wait for.
"""
from __future__ import annotations

import time

# How long `deploy-models` waits for the roots by default, and how often it looks.
WAIT_S = 30.0
POLL_S = 0.1


def not_carried(bundle, keys, signatures) -> tuple[list[str], list[str]]:
    """(versions the stage's bundle lacks, versions whose signature differs
    from ``signatures``)."""
    missing, mismatched = [], []
    for key in keys:
        if bundle is None or key not in bundle.models:
            missing.append(key)
        elif signatures and key in signatures and \
                signatures[key] != bundle.models[key].signature_hash:
            mismatched.append(key)
    return missing, mismatched


def refusal(stage: str, bundle_id, missing: list[str], mismatched: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"the active root config on {stage} ({bundle_id or 'none'}) does not "
                     f"carry {', '.join(missing)}")
    if mismatched:
        parts.append(f"the active root config on {stage} has a different signature for "
                     f"{', '.join(mismatched)}")
    both = missing + mismatched
    return ("config before models: " + "; ".join(parts) +
            f". Deploy a bundle with {'it' if len(both) == 1 else 'them'} to {stage} first "
            f"(`trimmer deploy BUNDLE --stage {stage}`), or use --force in an emergency (logged)")


def wanted_hashes(bundle, keys, signatures) -> dict[str, str]:
    """version -> the signature hash each root's config must carry it with
    (versions the stage's bundle lacks are left out: nothing to wait for)."""
    out = {}
    for key in keys:
        if bundle is not None and key in bundle.models:
            out[key] = (signatures or {}).get(key) or bundle.models[key].signature_hash
    return out


def member_label(member) -> str:
    return f"{member.name} on {member.host} (pid {member.pid})"


def lagging_roots(store, stage: str, wanted: dict[str, str]) -> dict[str, str]:
    """live root -> why its installed config does not carry ``wanted`` yet."""
    out: dict[str, str] = {}
    bundles: dict = {}
    for member in store.live_members(stage, "root"):
        label = member_label(member)
        if not member.bundle:
            out[label] = "has reported no config yet"
            continue
        on = f"runs config {member.bundle} (generation {member.generation})"
        if member.bundle not in bundles:
            try:
                bundles[member.bundle] = store.bundle(member.bundle)
            except ValueError:
                bundles[member.bundle] = None
        bundle = bundles[member.bundle]
        if bundle is None:
            out[label] = f"{on}, which the store does not hold"
            continue
        lacking = [k for k in wanted if k not in bundle.models]
        differing = [k for k, h in wanted.items()
                     if k in bundle.models and bundle.models[k].signature_hash != h]
        if lacking:
            out[label] = f"{on}, which does not carry {', '.join(lacking)}"
        elif differing:
            out[label] = f"{on}, with another signature for {', '.join(differing)}"
    return out


def wait_for_roots(store, stage: str, wanted: dict[str, str], wait_s: float) -> dict[str, str]:
    """`lagging_roots` once every root has caught up (empty) or ``wait_s`` has
    passed (those still behind)."""
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        lagging = lagging_roots(store, stage, wanted) if wanted else {}
        if not lagging or time.monotonic() >= deadline:
            return lagging
        time.sleep(POLL_S)


def describe_lagging(lagging: dict[str, str]) -> list[str]:
    return [f"root {label} {why}" for label, why in sorted(lagging.items())]


def lagging_refusal(stage: str, keys: list[str], lagging: dict[str, str], wait_s: float) -> str:
    return (f"config before models: {len(lagging)} live root(s) on {stage} did not install a "
            f"config carrying {', '.join(keys)} within {wait_s:g} s: "
            f"{'; '.join(describe_lagging(lagging))}. Their logs say why (a config they "
            "refused, a lost config store); wait longer (--wait SECONDS), fix or stop them, "
            "or use --force in an emergency (logged, naming them)")


__all__ = ["POLL_S", "WAIT_S", "describe_lagging", "lagging_refusal", "lagging_roots",
           "member_label", "not_carried", "refusal", "wait_for_roots", "wanted_hashes"]
