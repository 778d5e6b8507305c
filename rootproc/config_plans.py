"""The trim plans of one installed config, compiled on first use and kept
while it serves (a new config starts from the plans it prepared ahead:
rootproc/rollout/installed.py), with the message sizes each plan gives."""
from __future__ import annotations

import _trim
from rootproc.memory import Linear
from rootproc.rollout.installed import PreparedConfig, fine_plan, grouped_plan


class ConfigPlans:
    def __init__(self, prepared: PreparedConfig):
        self.active = prepared.active
        self.plans: dict = dict(prepared.plans)   # (layout, key[, "reads"]) -> plan
        self.linears: dict = {}   # (layout, key) -> Linear: its plan's message sizes

    def plan_for(self, layout, key: str | None):
        """The trim plan of ``key`` (None: every column) on ``layout``, compiled once."""
        cache_key = (layout.fingerprint, key)
        plan = self.plans.get(cache_key)
        if plan is None:
            names = layout.names if key is None else self.active.features_for(key)
            plan = self.plans[cache_key] = _trim.compile_plan(layout, names)
        return plan

    def fine_plan_for(self, layout, key: str):
        """``key``'s plan with its reads (sub-feature columns), compiled once (fine_plan)."""
        cache_key = (layout.fingerprint, key, "reads")
        if cache_key not in self.plans:
            self.plans[cache_key] = fine_plan(layout, self.active, key)
        return self.plans[cache_key]

    def grouped_plan_for(self, layout, key: str):
        """``key``'s plan with its groups (grouped columns), compiled once (grouped_plan)."""
        cache_key = (layout.fingerprint, key, "groups")
        if cache_key not in self.plans:
            self.plans[cache_key] = grouped_plan(layout, self.active, key)
        return self.plans[cache_key]

    def linear(self, layout, key: str | None) -> Linear:
        """The size of `plan_for`'s messages, as a function of the candidates."""
        cache_key = (layout.fingerprint, key)
        lin = self.linears.get(cache_key)
        if lin is None:
            plan = self.plan_for(layout, key)
            lin = Linear.of(layout, plan.columns, plan.table_nbytes)
            grouped = self.grouped_plan_for(layout, key) if key is not None else None
            if grouped is not None:   # the larger of the two messages a leaf may get
                more = grouped_linear(layout, grouped)
                lin = Linear(max(lin.fixed, more.fixed), max(lin.per_row, more.per_row))
            self.linears[cache_key] = lin
        return lin


def grouped_linear(layout, plan) -> Linear:
    """A grouped plan's message size (docs/protocol.md, "Sizes"), ragged values
    left out: a jagged group's offsets (8 a per-row member's row, 8 each
    per-request list, 8 more), a dense group's rows x D float32 (its
    per-request members broadcast)."""
    lin = Linear.of(layout, plan.columns, plan.table_nbytes)
    fixed, per_row = lin.fixed, lin.per_row
    for g in plan.groups:
        if g.kind == "jagged":
            per_row += 8 * (len(g.members) - g.per_request)
            fixed += 8 * (g.per_request + 1) + 7
        else:
            per_row += 4 * sum(layout[m].width for m in g.members)
            fixed += 7
    return Linear(fixed, per_row)


__all__ = ["ConfigPlans"]
