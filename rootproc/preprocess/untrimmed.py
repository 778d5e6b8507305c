"""The savings metric's counterfactual: what `--trim off` would send.

A trimmed root builds a batch of the features its config reads; the bytes
it saves are measured against the message every schema feature would make
for the same request (what a root with ``trim: off`` sends, and what
``trimmer report`` compares with). Dense columns' sizes follow from the row
count; a ragged feature's from its value count, which the batch holds for
the lists it carries and the records give for the others (each record's
uint32 length field, read in place: one ``struct`` unpack per record and
source, only for lists the batch left out). Sizes are the wire formula's
(docs/protocol.md, "Sizes"), exactly: a full batch's buffer is its own
every-column message.
"""
from __future__ import annotations

import struct

import numpy as np

from _trim.format import ALIGN
from _trim.records.layout import LEN_PREFIX


class Untrimmed:
    """The every-feature message size for batches ``used`` builds (``full``:
    the preprocessor of every schema feature, on the same store layouts)."""

    def __init__(self, used, full):
        self.layout = full.layout
        self.same = used.layout.fingerprint == full.layout.fingerprint
        self.table_nbytes = full.layout.table_nbytes()
        ragged = [int(i) for i in full.layout._ragged_idx]
        kept = [i for i in ragged if full.layout.columns[i].name in used.layout.index]
        # Ragged columns the batch has: (index in the full layout, in the batch's).
        self.kept_full = np.array(kept, dtype=np.int64)
        self.kept_used = np.array([used.layout.index[full.layout.columns[i].name] for i in kept],
                                  dtype=np.int64)
        self.constant: dict[int, tuple[str, int]] = {}   # column -> (source, values per row)
        offsets: dict[str, list[tuple[int, int]]] = {"user": [], "candidate": []}
        for i in ragged:
            if i in kept:
                continue
            feature = full.schema[full.layout.columns[i].name]
            if feature.name in full.absent:
                self.constant[i] = (feature.source,
                                    len(full.absent[feature.name].default_value()))
            else:
                fields = full.record_layouts[feature.source].dtype.fields
                offsets[feature.source].append((fields[LEN_PREFIX + feature.raw_name][1], i))
        # Per source: one struct reading every length the batch lacks, and their columns.
        self.readers: dict[str, tuple[struct.Struct, list[int]]] = {}
        for source, at in offsets.items():
            if at:
                at.sort()
                fmt, pos = "<", 0
                for offset, _ in at:
                    fmt += f"{offset - pos}xI" if offset > pos else "I"
                    pos = offset + 4
                self.readers[source] = (struct.Struct(fmt), [i for _, i in at])

    @property
    def needs_records(self) -> bool:
        """Whether `counts` reads anything (a ragged list the batch leaves out)."""
        return bool(self.readers)

    def counts(self, users, candidates) -> dict[int, int]:
        """Value counts of the ragged columns the batch lacks (full-layout
        index -> values), from the request's records (valid during the call)."""
        out: dict[int, int] = {}
        rows = {"user": 1, "candidate": len(candidates)}
        for i, (source, per_row) in self.constant.items():
            out[i] = per_row * rows[source]
        for source, (reader, columns) in self.readers.items():
            records = users if source == "user" else candidates
            if not records:
                out.update(dict.fromkeys(columns, 0))
                continue
            totals = [sum(col) for col in zip(*map(reader.unpack_from, records))]
            out.update(zip(columns, totals))
        return out

    def nbytes(self, batch, counts: dict[int, int]) -> int:
        """The every-feature message for the request ``batch`` was built for."""
        if self.same:
            return int(batch.nbytes)
        ragged = dict(counts)
        if len(self.kept_full):
            ragged.update(zip(self.kept_full.tolist(),
                              batch.table["n_values"][self.kept_used].tolist()))
        region, _ = self.layout.region_nbytes(batch.n_rows, ragged)
        return self.table_nbytes + int(((region + (ALIGN - 1)) & ~(ALIGN - 1)).sum())


__all__ = ["Untrimmed"]
