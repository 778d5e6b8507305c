"""Which leaves a root links to: its config file's, the active bundle's
placement, and, with a ZooKeeper config store, the ones registered on its
stage (`LeafPool.reconcile` in rootproc/leaves/replicas.py makes the links
match)."""
from __future__ import annotations

from rootproc.settings import LeafCurve, LeafSpec


def wanted_leaves(configured, active, pool=None, discovered=None,
                  secret_key: str | None = None) -> list[LeafSpec]:
    """The leaves a root links to under ``active``: those of its config file
    (as configured: they win over the bundle's endpoints and membership),
    then those the bundle's placement gives an endpoint, then, where
    membership is known (``discovered``: name -> (endpoints, CURVE public
    key or None)), every endpoint a registered leaf publishes, over CURVE
    with this root's ``secret_key`` where the leaf publishes a key. Without
    membership, a leaf the placement
    still names without an endpoint keeps the links ``pool`` has to it;
    with it, membership says who is there."""
    out = list(configured)
    named = {leaf.name for leaf in out}
    for name, ep in sorted(active.endpoints.items()):
        if name not in named:
            out.append(LeafSpec(name, (ep,)))
            named.add(name)
    if discovered is not None:
        fixed = {leaf.name for leaf in configured}
        at = {leaf.name: i for i, leaf in enumerate(out)}
        for name, (eps, key) in sorted(discovered.items()):
            if name in fixed:
                continue
            curve = LeafCurve(key, secret_key) if key else None
            if name in at:   # the bundle's endpoint and the registered ones
                eps = tuple(dict.fromkeys(out[at[name]].endpoints + tuple(eps)))
                out[at[name]] = LeafSpec(name, eps, curve=curve)
            else:
                out.append(LeafSpec(name, tuple(eps), curve=curve))
        return out
    if pool is not None:
        kept: dict[str, list[str]] = {}
        for link in pool.links:
            if link.name not in named and link.name in active.placement:
                kept.setdefault(link.name, []).append(link.endpoint)
        out.extend(LeafSpec(name, tuple(eps)) for name, eps in sorted(kept.items()))
    return out


__all__ = ["wanted_leaves"]
