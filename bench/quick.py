"""The benchmarks' quick mode: each bench once, small, as a test in `make test`.

``make test`` runs ``TRIMMER_BENCH_QUICK=1 pytest bench --benchmark-disable``:
every benchmark runs its code once at scaled-down parameters, so a change
that breaks one fails CI. In that mode a bench checks what holds at any
scale (replies ok, no errors, the root trims, every root installs) and
reports, without asserting, the ratio goals that only hold at full scale on
a quiet machine (each bench's docstring says which). ``make bench`` runs them
in full, where those goals are asserted.

Each bench's own environment variables still override what quick mode picks.
"""
from __future__ import annotations

import os

QUICK = os.environ.get("TRIMMER_BENCH_QUICK", "") not in ("", "0")


def knob(name: str, full, quick):
    """The environment's ``name`` if set (as the type of ``full``), else the quick or full value."""
    raw = os.environ.get(name)
    if raw is not None:
        return type(full)(raw)
    return quick if QUICK else full


def best_s(benchmark) -> float | None:
    """The fastest round in seconds; None when pytest-benchmark is disabled
    (``--benchmark-disable`` runs the function once and keeps no stats)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.min


def samples_s(benchmark) -> list[float]:
    stats = getattr(benchmark, "stats", None)
    return [] if stats is None else list(stats.stats.data)


def goals_asserted() -> bool:
    """Ratio goals are asserted at full scale only."""
    return not QUICK
