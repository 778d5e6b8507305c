"""The batch format: constants and the column layout.

A batch, and every trimmed message made from it, is one contiguous
little-endian buffer::

    header        32 bytes   (HEADER_DTYPE)
    column table  40 bytes × n_columns   (COLUMN_DTYPE)
    names         names_nbytes bytes of UTF-8, referenced from the table
    padding       to a multiple of ALIGN
    column data   one region per column, each starting at a multiple of ALIGN

`docs/protocol.md` is the normative description; this module is the code
that the description is checked against.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = b"TRMB"
VERSION = 1
ALIGN = 8
HEADER_NBYTES = 32
COLUMN_NBYTES = 40
MAX_NAME_NBYTES = 0xFFFF

HEADER_DTYPE = np.dtype([
    ("magic", "S4"),
    ("version", "<u2"),
    ("header_nbytes", "<u2"),
    ("n_rows", "<u4"),
    ("n_columns", "<u4"),
    ("names_nbytes", "<u4"),
    ("flags", "<u4"),
    ("total_nbytes", "<u8"),
])
COLUMN_DTYPE = np.dtype([
    ("name_offset", "<u4"),
    ("name_nbytes", "<u2"),
    ("dtype", "u1"),
    ("flags", "u1"),
    ("width", "<u4"),
    ("reserved", "<u4"),
    ("n_values", "<u8"),
    ("data_offset", "<u8"),
    ("data_nbytes", "<u8"),
])
assert HEADER_DTYPE.itemsize == HEADER_NBYTES
assert COLUMN_DTYPE.itemsize == COLUMN_NBYTES

# Column flags.
FLAG_RAGGED = 1
FLAG_PER_REQUEST = 2
FLAG_VECTOR = 4
# The column carries some positions of a VECTOR column (a model's read, _trim/reads.py):
# its ``reserved`` field holds the full width, its region starts with the ranges.
FLAG_SLICED = 8
# The column carries several features of one model, laid out as it takes them
# (_trim/groups.py): its name lists them; RAGGED: a jagged group (``reserved``:
# its per-request members), VECTOR: a dense group.
FLAG_GROUPED = 16
KNOWN_FLAGS = FLAG_RAGGED | FLAG_PER_REQUEST | FLAG_VECTOR | FLAG_SLICED | FLAG_GROUPED

# Wire dtype codes. Codes are part of the protocol: never renumber.
DTYPE_CODES = {
    "float32": 1,
    "float16": 2,
    "float64": 3,
    "int64": 4,
    "int32": 5,
    "int8": 6,
    "uint8": 7,
    "bool": 8,
}
# Wire-only codes: a message may carry them (a column narrowed for a model's
# read), a batch never holds them. numpy has no bfloat16: its columns are
# viewed as the raw 16-bit patterns (uint16), named "bfloat16" in specs.
NARROW_CODES = {"bfloat16": 9}
WIRE_CODES = {**DTYPE_CODES, **NARROW_CODES}
CODE_DTYPES = {code: np.dtype(name) for name, code in DTYPE_CODES.items()}
CODE_DTYPES[NARROW_CODES["bfloat16"]] = np.dtype("<u2")
CODE_NAMES = {code: name for name, code in WIRE_CODES.items()}
WIRE_ITEMSIZES = {name: CODE_DTYPES[code].itemsize for name, code in WIRE_CODES.items()}
# One (start, stop) pair of a sliced column's ranges: two u32.
RANGE_NBYTES = 8
OFFSETS_DTYPE = np.dtype("<i8")


def align_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def dtype_name(dtype) -> str:
    """Canonical name of a supported dtype; ValueError naming it otherwise."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise ValueError(f"unsupported dtype {dtype!r}") from exc
    if name not in DTYPE_CODES:
        raise ValueError(
            f"unsupported dtype {name!r}; supported: {', '.join(DTYPE_CODES)}")
    return name


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a batch.

    ``shape`` is the per-row shape: ``()`` for a scalar, ``(width,)`` for a
    fixed vector. A ragged column holds a variable-length list of scalars per
    row (``values`` + ``offsets``, offsets of length rows + 1). A per-request
    column has one row for the whole request, whatever the batch's row count.
    """

    name: str
    dtype: str
    shape: tuple = ()
    ragged: bool = False
    per_request: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"column name must be a non-empty string, got {self.name!r}")
        if len(self.name.encode()) > MAX_NAME_NBYTES:
            raise ValueError(f"column name longer than {MAX_NAME_NBYTES} bytes: {self.name[:40]!r}...")
        if len(self.shape) > 1:
            raise ValueError(f"column {self.name!r}: per-row shape must be () or (width,), got {self.shape}")
        if self.shape and not (1 <= self.shape[0] < 2**32):
            raise ValueError(f"column {self.name!r}: vector width must be in [1, 2**32), got {self.shape[0]}")
        if self.ragged and self.shape:
            raise ValueError(f"column {self.name!r}: ragged columns hold scalars, shape must be ()")

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def width(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def flags(self) -> int:
        return ((FLAG_RAGGED if self.ragged else 0)
                | (FLAG_PER_REQUEST if self.per_request else 0)
                | (FLAG_VECTOR if self.shape else 0))

    def row_nbytes(self) -> int:
        """Bytes one row takes (dense columns only)."""
        return self.width * self.itemsize


class Layout:
    """An ordered, immutable set of columns, independent of the row count.

    Batches that share a layout share trim plans; ``fingerprint`` identifies a
    layout across processes.
    """

    __slots__ = ("columns", "index", "names_blob", "name_offsets", "name_nbytes",
                 "dtype_codes", "flags", "widths", "itemsizes", "fingerprint",
                 "_ragged_idx")

    def __init__(self, columns: Iterable[ColumnSpec]):
        self.columns: tuple[ColumnSpec, ...] = tuple(columns)
        self.index: dict[str, int] = {}
        dupes = []
        for i, col in enumerate(self.columns):
            if col.name in self.index:
                dupes.append(col.name)
            self.index[col.name] = i
        if dupes:
            raise ValueError(f"duplicate column names in layout: {', '.join(sorted(set(dupes)))}")
        encoded = [c.name.encode() for c in self.columns]
        self.names_blob = b"".join(encoded)
        if len(self.names_blob) >= 2**32:
            raise ValueError("column names take more than 4 GiB")
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        self.name_nbytes = lengths.astype("<u2")
        self.name_offsets = (np.cumsum(lengths) - lengths).astype("<u4")
        self.dtype_codes = np.array([DTYPE_CODES[c.dtype] for c in self.columns], dtype="u1")
        self.flags = np.array([c.flags for c in self.columns], dtype="u1")
        self.widths = np.array([c.width for c in self.columns], dtype=np.int64)
        self.itemsizes = np.array([c.itemsize for c in self.columns], dtype=np.int64)
        self._ragged_idx = np.array([i for i, c in enumerate(self.columns) if c.ragged],
                                    dtype=np.int64)
        h = hashlib.sha256()
        for c in self.columns:
            h.update(f"{c.name}\0{c.dtype}\0{c.shape}\0{c.ragged:d}{c.per_request:d}\n".encode())
        self.fingerprint = h.hexdigest()[:32]

    def __len__(self) -> int:
        return len(self.columns)

    def __iter__(self):
        return iter(self.columns)

    def __getitem__(self, name: str) -> ColumnSpec:
        return self.columns[self.index[name]]

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"Layout({len(self.columns)} columns, {self.fingerprint[:8]})"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def resolve(self, names: Sequence[str]) -> list[int]:
        """Column indices for names; ValueError listing every unknown name."""
        unknown = [n for n in names if n not in self.index]
        if unknown:
            raise ValueError(f"unknown features: {', '.join(map(str, unknown))}")
        return [self.index[n] for n in names]

    def region_nbytes(self, n_rows: int, ragged_values=None) -> tuple[np.ndarray, np.ndarray]:
        """Unpadded bytes of each column's data region for a batch of n_rows.

        ``ragged_values`` maps a ragged column index (or name) to its total
        value count; missing ragged columns count zero values.
        """
        rows = np.where(self.flags & FLAG_PER_REQUEST, 1, int(n_rows)).astype(np.int64)
        n_values = rows * self.widths
        nbytes = n_values * self.itemsizes
        if len(self._ragged_idx):
            counts = np.zeros(len(self.columns), dtype=np.int64)
            for key, count in (ragged_values or {}).items():
                counts[self.index[key] if isinstance(key, str) else key] = count
            r = self._ragged_idx
            n_values[r] = counts[r]
            nbytes[r] = (rows[r] + 1) * OFFSETS_DTYPE.itemsize + counts[r] * self.itemsizes[r]
        return nbytes, n_values

    def table_nbytes(self) -> int:
        return align_up(HEADER_NBYTES + COLUMN_NBYTES * len(self.columns) + len(self.names_blob))
