"""Trim plans: a list of feature names compiled against a layout, once.

A plan is the per-config, never per-request, part of trimming: which columns
to copy, grouped into runs of columns that sit next to each other in the
source so that each run is one copy. Byte offsets are not stored: dense
regions scale with each batch's row count and ragged ones with its value
counts, so the kernel reads them from each batch's own column table.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .format import COLUMN_NBYTES, HEADER_NBYTES, Layout, align_up


class TrimPlan:
    __slots__ = ("layout", "names", "columns", "run_lengths", "name_offsets",
                 "names_blob_array", "table_nbytes")

    def __init__(self, layout: Layout, names: Iterable[str]):
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
        if len(columns):
            breaks = np.nonzero(np.diff(columns) != 1)[0] + 1
            bounds = np.concatenate(([0], breaks, [len(columns)]))
            self.run_lengths = np.diff(bounds).astype(np.int64)
        else:
            self.run_lengths = np.zeros(0, dtype=np.int64)
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
        return f"TrimPlan({len(self.columns)} of {len(self.layout)} columns, {self.n_runs} copies)"
