"""The metric families a root and a leaf export, from their own registries
(every series the code can define: the staged-config and shared-memory ones
too), named as a scrape shows them to PromQL: a counter with ``_total``, a
histogram by its base name (its ``_bucket``, ``_sum`` and ``_count`` series
come with it)."""
from __future__ import annotations


def families(registry) -> dict[str, str]:
    """name -> type of each family ``registry`` collects."""
    out = {}
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = family.type
    return out


def root_families() -> dict[str, str]:
    from rootproc.featurestore.cache import CachedStore
    from rootproc.leaves.shm import ShmLinks
    from rootproc.metrics import RootMetrics
    from rootproc.settings import ShmSettings

    m = RootMetrics()
    m.follow_config(0)
    m.watch_cache(CachedStore(None, 0, None))
    ShmLinks([], ShmSettings(), {}, m.registry)
    return families(m.registry)


def leaf_families() -> dict[str, str]:
    from leafproc.metrics import LeafMetrics, RolloutMetrics

    m = LeafMetrics()
    RolloutMetrics(m.registry)
    return families(m.registry)


def series_names(fams: dict[str, str]) -> set[str]:
    """Every series name PromQL may use of these families."""
    out = set()
    for name, kind in fams.items():
        out.add(name)
        if kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count"}
    return out


__all__ = ["families", "leaf_families", "root_families", "series_names"]
