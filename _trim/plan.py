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
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .format import COLUMN_NBYTES, HEADER_NBYTES, WIRE_CODES, Layout, align_up
from .reads import FeatureRead


class TrimPlan:
    __slots__ = ("layout", "names", "columns", "run_lengths", "name_offsets",
                 "names_blob_array", "table_nbytes", "reads", "run_read", "read_code",
                 "read_width", "read_full", "read_first", "read_n", "read_sliced", "read_bounds")

    def __init__(self, layout: Layout, names: Iterable[str],
                 reads: Mapping[str, FeatureRead] | None = None):
        names = list(names)
        seen, dupes = set(), []
        for n in names:
            if n in seen:
                dupes.append(n)
            seen.add(n)
        if dupes:
            raise ValueError(f"features listed more than once: {', '.join(dupes)}")
        # Source order, not request order: it lets adjacent columns merge into
        # one copy, and a receiver looks columns up by name anyway.
        columns = np.array(sorted(layout.resolve(names)), dtype=np.int64)
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
        lengths = layout.name_nbytes[columns].astype(np.int64)
        self.name_offsets = (np.cumsum(lengths) - lengths).astype(np.uint32)
        blob = b"".join(layout.columns[i].name.encode() for i in columns)
        self.names_blob_array = np.frombuffer(blob, dtype=np.uint8) if blob else np.zeros(0, np.uint8)
        self.table_nbytes = align_up(HEADER_NBYTES + COLUMN_NBYTES * len(columns) + len(blob))

    @property
    def n_runs(self) -> int:
        return len(self.run_lengths)

    def __len__(self) -> int:
        return len(self.columns)

    def __repr__(self) -> str:
        fine = f", {len(self.reads)} read" if self.reads else ""
        return f"TrimPlan({len(self.columns)} of {len(self.layout)} columns, {self.n_runs} copies{fine})"


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
