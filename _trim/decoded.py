"""Zero-copy decoding of a message into numpy views."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from .batch import Ragged
from .format import (
    CODE_DTYPES,
    CODE_NAMES,
    FLAG_GROUPED,
    FLAG_PER_REQUEST,
    FLAG_RAGGED,
    FLAG_SLICED,
    FLAG_VECTOR,
    HEADER_DTYPE,
    HEADER_NBYTES,
    OFFSETS_DTYPE,
)
from .groups import Group, received_group


class Decoded(Mapping):
    """A message's columns by name, as views on the message's own buffer.

    Dense columns are ``(rows,)`` or ``(rows, width)`` arrays; ragged ones are
    `Ragged` pairs. A per-request column has one row; `broadcast` gives it
    the batch's row count without copying (a stride-0 view). The views keep
    the buffer alive and are read-only. A grouped column (`group_of`) is a
    `Ragged` over all its lists (jagged) or a ``(rows, D)`` array (dense).
    """

    __slots__ = ("n_rows", "nbytes", "layout_key", "_columns", "_per_request", "_specs",
                 "_slices", "groups")

    def __init__(self, n_rows: int, nbytes: int, columns: dict, per_request: frozenset, specs: dict,
                 layout_key: bytes, slices: dict | None = None, groups: dict | None = None):
        self.n_rows = n_rows
        self.nbytes = nbytes
        # Equal keys <=> equal column names, order, dtypes, flags and widths:
        # a receiver that validated one message against a signature can
        # accept the next with the same key without looking at every column.
        self.layout_key = layout_key
        self._columns = columns
        self._per_request = per_request
        self._specs = specs
        self._slices = slices or {}
        self.groups: dict[str, Group] = groups or {}   # grouped column name -> its Group

    def __getitem__(self, name: str):
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def is_per_request(self, name: str) -> bool:
        return name in self._per_request

    def is_ragged(self, name: str) -> bool:
        return isinstance(self._columns[name], Ragged)

    def spec(self, name: str) -> tuple[str, tuple, bool, bool]:
        """``(dtype, per-row shape, ragged, per_request)`` as the message declares it."""
        return self._specs[name]

    def slice_of(self, name: str) -> tuple[int, tuple[tuple[int, int], ...]] | None:
        """``(full width, ranges)`` of a sliced column (its view holds only
        those positions, in order); None for a column sent whole."""
        return self._slices.get(name)

    def group_of(self, name: str) -> Group | None:
        """The `Group` a grouped column carries; None for any other column."""
        return self.groups.get(name)

    def broadcast(self, name: str) -> np.ndarray:
        """A dense column with one row per batch row; per-request columns are
        repeated by a stride-0 view, not a copy."""
        arr = self._columns[name]
        if isinstance(arr, Ragged):
            raise ValueError(f"column {name!r} is ragged; broadcast applies to dense columns")
        if name in self._per_request:
            return np.broadcast_to(arr, (self.n_rows,) + arr.shape[1:])
        return arr

    def __repr__(self) -> str:
        return f"Decoded({len(self)} columns, {self.n_rows} rows, {self.nbytes} bytes)"


def build_views(buf, n_rows: int, table: np.ndarray, names: list[str]) -> Decoded:
    raw = np.frombuffer(buf, dtype=np.uint8)
    columns: dict[str, object] = {}
    per_request: set[str] = set()
    specs: dict[str, tuple] = {}
    # Python ints: numpy scalar arithmetic per column costs more than the views.
    slices: dict[str, tuple] = {}
    groups: dict[str, Group] = {}
    for name, code, flags, width, n_values, offset, nbytes, full in zip(
            names, table["dtype"].tolist(), table["flags"].tolist(), table["width"].tolist(),
            table["n_values"].tolist(), table["data_offset"].tolist(),
            table["data_nbytes"].tolist(), table["reserved"].tolist()):
        dtype = CODE_DTYPES[code]
        rows = 1 if flags & FLAG_PER_REQUEST else n_rows
        if flags & FLAG_PER_REQUEST:
            per_request.add(name)
        if flags & FLAG_GROUPED:
            groups[name] = received_group(bool(flags & FLAG_RAGGED), name, full)
            if flags & FLAG_RAGGED:
                rows = (width - full) * n_rows + full
        if flags & FLAG_RAGGED:
            offsets = np.frombuffer(raw, dtype=OFFSETS_DTYPE, count=rows + 1, offset=offset)
            values = np.frombuffer(raw, dtype=dtype, count=n_values, offset=offset + 8 * (rows + 1))
            columns[name] = Ragged(values, offsets)
            specs[name] = (CODE_NAMES[code], (), True, bool(flags & FLAG_PER_REQUEST))
        else:
            if flags & FLAG_SLICED:
                prefix = nbytes - n_values * dtype.itemsize
                pairs = np.frombuffer(raw, dtype="<u4", count=prefix // 4, offset=offset)
                slices[name] = (full, tuple(zip(pairs[0::2].tolist(), pairs[1::2].tolist())))
                offset += prefix
            arr = np.frombuffer(raw, dtype=dtype, count=n_values, offset=offset)
            shape = (width,) if flags & FLAG_VECTOR else ()
            columns[name] = arr.reshape((rows,) + shape)
            specs[name] = (CODE_NAMES[code], shape, False, bool(flags & FLAG_PER_REQUEST))
    total = int(raw[:HEADER_NBYTES].view(HEADER_DTYPE)[0]["total_nbytes"])
    return Decoded(n_rows, total, columns, frozenset(per_request), specs,
                   layout_key(table, names, slices), slices, groups)


LAYOUT_KEY_DTYPE = np.dtype([("dtype", "u1"), ("flags", "u1"), ("width", "<u4"),
                             ("name_nbytes", "<u2")])


def layout_key(table: np.ndarray, names: list[str], slices: dict | None = None) -> bytes:
    """Per column, in table order: dtype code, flags, width, name length, name;
    for a sliced column then its full width (u32) and ranges (u32 pairs), for
    a grouped one its reserved field (u32)."""
    fixed = np.empty(len(names), LAYOUT_KEY_DTYPE)
    for field in ("dtype", "flags", "width", "name_nbytes"):
        fixed[field] = table[field]
    rows = fixed.tobytes()
    step = LAYOUT_KEY_DTYPE.itemsize
    slices = slices or {}
    grouped = {name: np.array([r], "<u4").tobytes()
               for name, f, r in zip(names, table["flags"].tolist(), table["reserved"].tolist())
               if f & FLAG_GROUPED}
    return b"".join(rows[i * step:(i + 1) * step] + name.encode() + _slice_key(slices.get(name))
                    + grouped.get(name, b"") for i, name in enumerate(names))


def _slice_key(sliced) -> bytes:
    if sliced is None:
        return b""
    full, ranges = sliced
    return np.array([full] + [x for r in ranges for x in r], dtype="<u4").tobytes()
