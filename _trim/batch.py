"""A request's features as one contiguous columnar buffer.

The root allocates a `Batch` for a layout and a row count, preprocessing writes
each column in place through `Batch.column`, and the gather kernel copies the
columns a model needs out of `Batch.buffer`. A batch's buffer is itself a
valid message: decoding it yields every column.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from . import memory
from .format import (
    ALIGN,
    COLUMN_DTYPE,
    FLAG_PER_REQUEST,
    HEADER_DTYPE,
    HEADER_NBYTES,
    MAGIC,
    OFFSETS_DTYPE,
    VERSION,
    ColumnSpec,
    Layout,
)


class Ragged(NamedTuple):
    """A ragged column: row i is ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray
    offsets: np.ndarray


class Batch:
    """A writable columnar buffer for one layout and row count."""

    __slots__ = ("layout", "n_rows", "buffer", "table", "nbytes")

    def __init__(self, layout: Layout, n_rows: int, ragged_values: Mapping | None = None, *,
                 zeroed: bool = True):
        """``zeroed=False`` is for a builder that writes every byte of every
        column region and its padding (the record program does): the header,
        table and names are written here either way."""
        if not 0 <= int(n_rows) < 2**32:
            raise ValueError(f"row count must be in [0, 2**32), got {n_rows}")
        self.layout = layout
        self.n_rows = int(n_rows)
        region, n_values = layout.region_nbytes(self.n_rows, ragged_values)
        padded = (region + (ALIGN - 1)) & ~(ALIGN - 1)
        start = layout.table_nbytes()
        offsets = start + np.cumsum(padded) - padded
        self.nbytes = int(start + padded.sum())
        # Zeroed so that padding never carries stale bytes onto the wire.
        if zeroed:
            self.buffer = np.zeros(self.nbytes, dtype=np.uint8)
        else:
            self.buffer = memory.empty(self.nbytes)
            self.buffer[:start] = 0
        header = self.buffer[:HEADER_NBYTES].view(HEADER_DTYPE)[0]
        header["magic"] = MAGIC
        header["version"] = VERSION
        header["header_nbytes"] = HEADER_NBYTES
        header["n_rows"] = self.n_rows
        header["n_columns"] = len(layout)
        header["names_nbytes"] = len(layout.names_blob)
        header["total_nbytes"] = self.nbytes
        table_end = HEADER_NBYTES + COLUMN_DTYPE.itemsize * len(layout)
        self.table = self.buffer[HEADER_NBYTES:table_end].view(COLUMN_DTYPE)
        self.table["name_offset"] = layout.name_offsets
        self.table["name_nbytes"] = layout.name_nbytes
        self.table["dtype"] = layout.dtype_codes
        self.table["flags"] = layout.flags
        self.table["width"] = layout.widths
        self.table["n_values"] = n_values
        self.table["data_offset"] = offsets
        self.table["data_nbytes"] = region
        self.buffer[table_end:table_end + len(layout.names_blob)] = np.frombuffer(
            layout.names_blob, dtype=np.uint8)
        for i in layout._ragged_idx:
            self._offsets_view(int(i))[-1] = n_values[i]

    # -- building -----------------------------------------------------------

    @classmethod
    def from_arrays(cls, layout: Layout, arrays: Mapping, n_rows: int) -> Batch:
        """A batch holding ``arrays``: ndarray per dense column, `Ragged` (or a
        ``(values, offsets)`` pair) per ragged column. Every layout column
        must be given."""
        missing = [c.name for c in layout if c.name not in arrays]
        if missing:
            raise ValueError(f"no data for columns: {', '.join(missing)}")
        ragged_values = {}
        for col in layout:
            if col.ragged:
                values, offsets = arrays[col.name]
                ragged_values[col.name] = len(values)
        batch = cls(layout, n_rows, ragged_values)
        for col in layout:
            batch.set_column(col.name, arrays[col.name])
        return batch

    def set_column(self, name: str, data) -> None:
        col = self.layout[name]
        rows = self.rows_of(col)
        if col.ragged:
            values, offsets = data
            offsets = np.asarray(offsets)
            dst_values, dst_offsets = self.column(name)
            if offsets.shape != (rows + 1,):
                raise ValueError(f"column {name!r}: offsets must have {rows + 1} entries, "
                                 f"got shape {offsets.shape}")
            if len(values) != len(dst_values):
                raise ValueError(f"column {name!r}: batch was sized for {len(dst_values)} "
                                 f"values, got {len(values)}")
            check_offsets(name, offsets, len(values))
            dst_offsets[:] = offsets
            dst_values[:] = values
        else:
            dst = self.column(name)
            arr = np.asarray(data)
            if arr.shape != dst.shape:
                raise ValueError(f"column {name!r}: expected shape {dst.shape}, got {arr.shape}")
            dst[...] = arr

    # -- reading --------------------------------------------------------------

    def rows_of(self, col: ColumnSpec) -> int:
        return 1 if col.per_request else self.n_rows

    def column(self, name: str):
        """Writable zero-copy view of a column (`Ragged` for ragged ones)."""
        i = self.layout.index[name]
        col = self.layout.columns[i]
        start = int(self.table["data_offset"][i])
        rows = self.rows_of(col)
        if col.ragged:
            offsets = self._offsets_view(i)
            n = int(self.table["n_values"][i])
            vstart = start + (rows + 1) * OFFSETS_DTYPE.itemsize
            values = self.buffer[vstart:vstart + n * col.itemsize].view(col.dtype)
            return Ragged(values, offsets)
        count = rows * col.width
        flat = self.buffer[start:start + count * col.itemsize].view(col.dtype)
        return flat.reshape((rows,) + col.shape)

    def _offsets_view(self, i: int) -> np.ndarray:
        col = self.layout.columns[i]
        start = int(self.table["data_offset"][i])
        rows = self.rows_of(col)
        return self.buffer[start:start + (rows + 1) * OFFSETS_DTYPE.itemsize].view(OFFSETS_DTYPE)

    def __repr__(self) -> str:
        return f"Batch({len(self.layout)} columns, {self.n_rows} rows, {self.nbytes} bytes)"


def check_offsets(name: str, offsets: np.ndarray, n_values: int) -> None:
    """ValueError unless offsets start at 0, never decrease and end at n_values."""
    if len(offsets) == 0 or offsets[0] != 0:
        raise ValueError(f"column {name!r}: ragged offsets must start at 0")
    if len(offsets) > 1 and bool((np.diff(offsets) < 0).any()):
        raise ValueError(f"column {name!r}: ragged offsets decrease")
    if offsets[-1] != n_values:
        raise ValueError(f"column {name!r}: last offset {int(offsets[-1])} != "
                         f"value count {n_values}")


__all__ = ["Batch", "Ragged", "check_offsets", "FLAG_PER_REQUEST"]
