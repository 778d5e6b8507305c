"""Trim plans: a list of feature names compiled against a layout, once.

A plan is the per-config, never per-request, part of trimming: which columns
to copy, grouped into runs of columns that sit next to each other in the
source so that each run is one copy. Byte offsets are not stored: dense
regions scale with each batch's row count and ragged ones with its value
counts, so the kernel reads them from each batch's own column table.

A plan may also carry a model's reads (`_trim/reads.py`): a column with one
is a run of its own, whose rows the kernel gathers position range by range
and narrows (float32/float64 to bfloat16/float16) instead of copying whole
(docs/protocol.md, "Sliced and narrowed columns").

A plan may also carry a model's groups (`_trim/groups.py`): each is one
column of the message, after the plan's other columns, built from its
members (which are then not sent on their own): a jagged group's offsets
rebased and values copied member after member, a dense group's rows
interleaved (docs/protocol.md, "Grouped columns").
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .format import COLUMN_NBYTES, DTYPE_CODES, HEADER_NBYTES, WIRE_CODES, Layout, align_up
from .groups import Group
from .reads import FeatureRead


class TrimPlan:
    __slots__ = ("layout", "names", "columns", "run_lengths", "name_offsets",
                 "names_blob_array", "table_nbytes", "reads", "run_read", "read_code",
                 "read_width", "read_full", "read_first", "read_n", "read_sliced", "read_bounds",
                 "groups", "group_kind", "group_first", "group_n", "group_pr", "group_code",
                 "group_width", "group_cols", "group_mwidth", "group_mpr")

    def __init__(self, layout: Layout, names: Iterable[str],
                 reads: Mapping[str, FeatureRead] | None = None,
                 groups: Iterable[Group] = ()):
        names = list(names)
        seen, dupes = set(), []
        for n in names:
            if n in seen:
                dupes.append(n)
            seen.add(n)
        if dupes:
            raise ValueError(f"features listed more than once: {', '.join(dupes)}")
        layout.resolve(names)
        self.groups = tuple(groups)
        members = _checked_groups(layout, names, self.groups, reads or {})
        # Source order, not request order: it lets adjacent columns merge into
        # one copy, and a receiver looks columns up by name anyway.
        columns = np.array(sorted(layout.resolve([n for n in names if n not in members])),
                           dtype=np.int64)
        self.layout = layout
        self.columns = columns
        self.names = tuple(layout.columns[i].name for i in columns)
        self.reads = _checked_reads(layout, self.names, reads or {})
        # A column with a read is a run of its own; the others merge as before.
        read_at = [self.reads.get(n) for n in self.names]
        bounds = [0]
        for j in range(1, len(columns)):
            if columns[j] != columns[j - 1] + 1 or read_at[j] is not None \
                    or read_at[j - 1] is not None:
                bounds.append(j)
        bounds.append(len(columns))
        self.run_lengths = (np.diff(np.array(bounds, dtype=np.int64)) if len(columns)
                            else np.zeros(0, dtype=np.int64))
        run_read: list[int] = []
        code: list[int] = []
        width: list[int] = []
        full: list[int] = []
        first: list[int] = []
        count: list[int] = []
        sliced: list[int] = []
        flat: list[int] = []
        for j in bounds[:-1]:
            read = read_at[j] if j < len(columns) else None
            if read is None:
                run_read.append(-1)
                continue
            spec = layout.columns[columns[j]]
            run_read.append(len(code))
            code.append(WIRE_CODES[read.dtype or spec.dtype])
            full.append(spec.width)
            width.append(read.width(spec.width))
            ranges = read.ranges if read.ranges is not None else ((0, spec.width),)
            first.append(len(flat) // 2)
            count.append(len(ranges))
            sliced.append(int(read.ranges is not None))
            for start, stop in ranges:
                flat.extend((start, stop))
        as64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
        self.run_read = as64(run_read)
        self.read_code, self.read_width, self.read_full = as64(code), as64(width), as64(full)
        self.read_first, self.read_n, self.read_sliced = as64(first), as64(count), as64(sliced)
        self.read_bounds = as64(flat)
        self._compile_groups(layout)
        encoded = ([layout.columns[i].name.encode() for i in columns]
                   + [g.name.encode() for g in self.groups])
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        self.name_offsets = (np.cumsum(lengths) - lengths).astype(np.uint32)
        blob = b"".join(encoded)
        self.names_blob_array = np.frombuffer(blob, dtype=np.uint8) if blob else np.zeros(0, np.uint8)
        self.table_nbytes = align_up(HEADER_NBYTES + COLUMN_NBYTES * len(encoded) + len(blob))

    def _compile_groups(self, layout: Layout) -> None:
        lists: list[list[int]] = [[] for _ in range(9)]
        kind, first, n, pr, code, width, cols, mwidth, mpr = lists
        for g in self.groups:
            specs = [layout[m] for m in g.members]
            kind.append(0 if g.kind == "jagged" else 1)
            first.append(len(cols))
            n.append(len(specs))
            pr.append(g.per_request)
            code.append(DTYPE_CODES[specs[0].dtype])
            width.append(len(specs) if g.kind == "jagged" else sum(s.width for s in specs))
            cols.extend(layout.index[m] for m in g.members)
            mwidth.extend(s.width for s in specs)
            mpr.extend(int(s.per_request) for s in specs)
        as64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
        self.group_kind, self.group_first, self.group_n = as64(kind), as64(first), as64(n)
        self.group_pr, self.group_code, self.group_width = as64(pr), as64(code), as64(width)
        self.group_cols, self.group_mwidth, self.group_mpr = as64(cols), as64(mwidth), as64(mpr)

    @property
    def n_runs(self) -> int:
        return len(self.run_lengths)

    def __len__(self) -> int:
        return len(self.columns)

    def __repr__(self) -> str:
        fine = f", {len(self.reads)} read" if self.reads else ""
        fine += f", {len(self.groups)} grouped" if self.groups else ""
        return f"TrimPlan({len(self.columns)} of {len(self.layout)} columns, {self.n_runs} copies{fine})"


def _checked_groups(layout: Layout, names: list[str], groups: tuple[Group, ...],
                    reads: Mapping[str, FeatureRead]) -> set[str]:
    """The features the groups carry; ValueError (InvalidInput) naming a group
    that does not fit the layout: a member the plan does not send, one in two
    groups or with a read, members of mixed dtypes, a jagged group whose
    per-request members are not its last ``per_request``, a dense group of
    other than float32 dense members."""
    members: set[str] = set()
    wanted = set(names)
    for g in groups:
        where = f"trim plan: group {g.name}"
        for m in g.members:
            if m not in wanted:
                raise ValueError(f"{where}: {m!r} is not a feature the plan sends")
            if m in members:
                raise ValueError(f"{where}: {m!r} is in another group")
            if m in reads and not reads[m].whole:
                raise ValueError(f"{where}: {m!r} has a read; a member is sent whole")
        specs = [layout[m] for m in g.members]
        if g.kind == "jagged":
            if not all(s.ragged for s in specs) or len({s.dtype for s in specs}) != 1:
                raise ValueError(f"{where}: a jagged group's members are ragged, of one dtype")
            flags = [s.per_request for s in specs]
            if flags != [False] * (len(specs) - g.per_request) + [True] * g.per_request:
                raise ValueError(f"{where}: its per-request members must be its last "
                                 f"{g.per_request}, the layout says {flags}")
        elif not all(not s.ragged and s.dtype == "float32" for s in specs):
            raise ValueError(f"{where}: a dense group's members are dense float32 columns")
        members.update(g.members)
    return members


def _checked_reads(layout: Layout, names: tuple[str, ...],
                   reads: Mapping[str, FeatureRead]) -> dict[str, FeatureRead]:
    """The reads of the plan's own columns, each checked against its column:
    ValueError (InvalidInput) naming one that does not fit."""
    unknown = sorted(set(reads) - set(names))
    if unknown:
        raise ValueError(f"reads of features the plan does not send: {', '.join(unknown)}")
    out = {}
    for name in names:
        read = reads.get(name)
        if read is None or read.whole:
            continue
        spec = layout[name]
        if spec.ragged:
            raise ValueError(f"trim plan: {name!r} is ragged; a read narrows dense columns only")
        read.check(name, spec.dtype, spec.shape, spec.ragged, "trim plan")
        out[name] = read
    return out
