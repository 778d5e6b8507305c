"""Bytes on the wire with every feature vs trimmed, per model and per leaf.

Sizes are exact: they come from `_trim.encoded_nbytes` on a batch laid out
as the root lays it out (every schema feature, schema order), which is the
formula in docs/protocol.md "Sizes". Ragged columns need a value count; the
report assumes ``avg_list_len`` values per row.

Savings below the feature (a model's reads: slices, narrowed floats) are
counted apart from feature-level trimming: ``trimmed`` is the message with
the model's features whole, ``reads`` the one a leaf that takes
sub-feature columns gets (docs/signatures.md, "Sub-feature reads").
"""
from __future__ import annotations

from dataclasses import dataclass

from _trim import Batch, compile_plan, encoded_nbytes
from _trim.errors import InvalidInput
from signatures.bundle import Bundle
from signatures.schema import FeatureSchema

DEFAULT_ROWS = 256
DEFAULT_LIST_LEN = 10


class SizeModel:
    """Exact message sizes for subsets of one schema's features."""

    def __init__(self, schema: FeatureSchema, rows: int = DEFAULT_ROWS,
                 avg_list_len: int = DEFAULT_LIST_LEN):
        if rows < 1:
            raise InvalidInput(f"rows must be >= 1, got {rows}")
        self.schema = schema
        self.rows = rows
        self.layout = schema.layout()
        self._batches = {n: self._batch(n, avg_list_len) for n in (0, rows)}

    def _batch(self, rows: int, avg_list_len: int) -> Batch:
        ragged = {c.name: (1 if c.per_request else rows) * avg_list_len
                  for c in self.layout if c.ragged}
        return Batch(self.layout, rows, ragged)

    def message_nbytes(self, names, rows: int | None = None, reads=None) -> int:
        """Size of the message holding ``names`` (``reads``: what of them is
        read, feature -> FeatureRead) for ``rows`` (0 or the report's rows)."""
        plan = compile_plan(self.layout, list(names), reads)
        return encoded_nbytes(plan, self._batches[self.rows if rows is None else rows])

    def cost(self, names, reads=None) -> Cost:
        """Bytes for one request: the fixed part (header, table, per-request
        columns) and the part that grows with each candidate."""
        names = list(names)
        total = self.message_nbytes(names, reads=reads)
        fixed = self.message_nbytes(names, 0, reads)
        return Cost(total=total, per_request=fixed, per_candidate=(total - fixed) / self.rows)


@dataclass(frozen=True)
class Cost:
    total: int           # bytes of one message at the report's row count
    per_request: int     # bytes a zero-candidate message takes: header, table, user columns
    per_candidate: float  # bytes each candidate adds (padding spread evenly)


@dataclass(frozen=True)
class Row:
    kind: str  # "model" or "leaf"
    name: str
    n_features: int
    all: Cost
    trimmed: Cost               # features whole
    reads: Cost | None = None   # with the model's reads: the leaf's message (None: no reads)

    @property
    def saving(self) -> float:
        """Feature-level trimming's saving."""
        return 1.0 - self.trimmed.total / self.all.total if self.all.total else 0.0

    @property
    def sub_feature_saved(self) -> int:
        """Bytes per message the reads save beyond feature-level trimming."""
        return 0 if self.reads is None else self.trimmed.total - self.reads.total


def report(bundle: Bundle, schema: FeatureSchema, rows: int = DEFAULT_ROWS,
           avg_list_len: int = DEFAULT_LIST_LEN) -> list[Row]:
    sizes = SizeModel(schema, rows, avg_list_len)
    unknown = sorted(set(bundle.all_features()) - set(schema.names))
    if unknown:
        raise InvalidInput(f"the bundle needs features the schema lacks: {', '.join(unknown)}")
    everything = sizes.cost(schema.names)
    out = [Row("model", key, len(m.features), everything, sizes.cost(m.features),
               sizes.cost(m.features, m.read_map()) if m.reads else None)
           for key, m in sorted(bundle.models.items())]
    out += [Row("leaf", name, len(leaf.features), everything, sizes.cost(leaf.features))
            for name, leaf in sorted(bundle.leaves.items())]
    return out


def format_table(rows: list[Row], n_rows: int) -> str:
    head = (f"{'':5} {'name':24} {'feats':>5} {'B/cand all':>11} {'B/cand trim':>11} "
            f"{'B/req all':>10} {'B/req trim':>10} {f'msg@{n_rows} all':>13} "
            f"{f'msg@{n_rows} trim':>13} {'saving':>7} {f'msg@{n_rows} reads':>14} "
            f"{'sub-feat':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        fine = (f" {r.reads.total:14d} {r.sub_feature_saved / r.trimmed.total:8.1%}"
                if r.reads is not None and r.trimmed.total else f" {'-':>14} {'-':>8}")
        lines.append(f"{r.kind:5} {r.name:24} {r.n_features:5d} {r.all.per_candidate:11.1f} "
                     f"{r.trimmed.per_candidate:11.1f} {r.all.per_request:10d} "
                     f"{r.trimmed.per_request:10d} {r.all.total:13d} {r.trimmed.total:13d} "
                     f"{r.saving:7.1%}" + fine)
    lines.append("sub-feat: what the model's reads (slices, narrowed floats) save of the trimmed "
                 "message, beyond feature-level trimming (sent to leaves that take them)")
    return "\n".join(lines)


def plot(rows: list[Row], path, n_rows: int) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{r.kind}:{r.name}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4.5))
    ax.bar(x - 0.2, [r.all.total for r in rows], 0.4, label="all features")
    ax.bar(x + 0.2, [r.trimmed.total for r in rows], 0.4, label="trimmed")
    for i, r in enumerate(rows):
        ax.annotate(f"-{r.saving:.0%}", (x[i] + 0.2, r.trimmed.total), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel(f"bytes per request ({n_rows} candidates)")
    ax.set_title("Feature Trimmer: bytes sent per request")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass(frozen=True)
class ModelDiff:
    key: str
    status: str  # "added", "removed", "changed", "same"
    added: tuple[str, ...]
    removed: tuple[str, ...]
    bytes_delta: int | None  # message bytes at the report's rows, new minus old (features whole)
    reads_changed: tuple[str, ...] = ()   # features whose read changed (models)
    sub_feature_delta: int | None = None  # change in bytes the reads save, new minus old


def diff(old: Bundle, new: Bundle, schema: FeatureSchema | None = None,
         rows: int = DEFAULT_ROWS, avg_list_len: int = DEFAULT_LIST_LEN) -> list[ModelDiff]:
    sizes = SizeModel(schema, rows, avg_list_len) if schema is not None else None
    out = []
    for scope, a, b in (("model", {k: m.features for k, m in old.models.items()},
                         {k: m.features for k, m in new.models.items()}),
                        ("leaf", {k: lf.features for k, lf in old.leaves.items()},
                         {k: lf.features for k, lf in new.leaves.items()})):
        for key in sorted(set(a) | set(b)):
            fa, fb = a.get(key), b.get(key)
            status = ("added" if fa is None else "removed" if fb is None
                      else "same" if set(fa) == set(fb) else "changed")
            fa, fb = fa or (), fb or ()
            delta = None
            if sizes is not None:
                before = sizes.message_nbytes(fa) if key in a else 0
                after = sizes.message_nbytes(fb) if key in b else 0
                delta = after - before
            reads_changed: tuple[str, ...] = ()
            sub_delta: int | None = None
            if scope == "model":
                ra = old.models[key].read_map() if key in a else {}
                rb = new.models[key].read_map() if key in b else {}
                reads_changed = tuple(sorted(f for f in set(ra) | set(rb) if ra.get(f) != rb.get(f)))
                if reads_changed and status == "same":
                    status = "changed"
                if sizes is not None and (ra or rb):
                    sub_delta = (_sub_saved(sizes, fb, rb) if key in b else 0) - \
                        (_sub_saved(sizes, fa, ra) if key in a else 0)
            out.append(ModelDiff(f"{scope}:{key}", status,
                                 tuple(f for f in fb if f not in set(fa)),
                                 tuple(f for f in fa if f not in set(fb)), delta,
                                 reads_changed, sub_delta))
    return out


def _sub_saved(sizes: SizeModel, names, reads) -> int:
    return sizes.message_nbytes(names) - sizes.message_nbytes(names, reads=reads) if reads else 0


def format_diff(diffs: list[ModelDiff], old: Bundle, new: Bundle, rows: int) -> str:
    lines = [f"{old.id} -> {new.id}"]
    for d in diffs:
        if d.status == "same":
            continue
        impact = "" if d.bytes_delta is None else f"  ({d.bytes_delta:+d} B per request @{rows} rows)"
        lines.append(f"{d.status:8} {d.key}{impact}")
        lines += [f"           + {f}" for f in d.added]
        lines += [f"           - {f}" for f in d.removed]
        lines += [f"           ~ {f} (read)" for f in d.reads_changed]
        if d.sub_feature_delta:
            lines.append(f"           sub-feature reads save {d.sub_feature_delta:+d} B per "
                         f"request @{rows} rows")
    if len(lines) == 1:
        lines.append("no differences in models, leaves or features")
    return "\n".join(lines)


__all__ = ["Cost", "ModelDiff", "Row", "SizeModel", "diff", "format_diff", "format_table",
           "plot", "report"]
