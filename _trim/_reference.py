"""Pure-Python reference implementation of the kernel's functions.

Slow and obviously correct: the tests run every case against both it and the
compiled kernel. Selected only by name (``TRIMMER_IMPL=reference``), never as a
silent fallback.
"""
from __future__ import annotations

import numpy as np

from .decoded import build_views
from .format import (
    ALIGN,
    CODE_DTYPES,
    COLUMN_DTYPE,
    COLUMN_NBYTES,
    FLAG_GROUPED,
    FLAG_PER_REQUEST,
    FLAG_RAGGED,
    FLAG_SLICED,
    FLAG_VECTOR,
    HEADER_DTYPE,
    HEADER_NBYTES,
    KNOWN_FLAGS,
    MAGIC,
    RANGE_NBYTES,
    VERSION,
    align_up,
)
from .groups import parse_group_name
from .narrow import narrow_bits

NARROWABLE = (1, 3)   # float32, float64: the codes a read may narrow


def _ranges(plan, batch):
    if batch.layout is not plan.layout and batch.layout.fingerprint != plan.layout.fingerprint:
        raise ValueError("batch layout does not match the plan's layout; compile a plan for it")
    table = batch.table
    src_len = len(batch.buffer)
    pos, j, out = plan.table_nbytes, 0, []
    for r, length in enumerate(plan.run_lengths):
        first, last = int(plan.columns[j]), int(plan.columns[j + length - 1])
        j += int(length)
        start = int(table["data_offset"][first])
        end = int(table["data_offset"][last]) + int(table["data_nbytes"][last])
        if end > src_len:
            raise ValueError("batch column table points past the end of its buffer")
        k = int(plan.run_read[r])
        if k < 0:
            out.append((start, end - start, pos))
            pos += align_up(end - start)
            continue
        col = table[first]
        code, width = int(col["dtype"]), int(col["width"])
        rows = int(col["n_values"]) // width
        if (col["flags"] & FLAG_RAGGED or width != int(plan.read_full[k])
                or int(col["n_values"]) != rows * width
                or int(col["data_nbytes"]) != rows * width * CODE_DTYPES[code].itemsize
                or (int(plan.read_code[k]) != code and code not in NARROWABLE)):
            raise ValueError(f"batch column {plan.layout.columns[first].name!r} does not fit "
                             "the plan's read of it")
        nbytes = (RANGE_NBYTES * int(plan.read_n[k]) * int(plan.read_sliced[k])
                  + rows * int(plan.read_width[k]) * CODE_DTYPES[int(plan.read_code[k])].itemsize)
        out.append((start, nbytes, pos))
        pos += align_up(nbytes)
    for g in plan.groups:
        region = _group_region(g, batch)
        out.append((-1, len(region), pos))
        pos += align_up(len(region))
    return pos, out


def _group_region(g, batch) -> np.ndarray:
    """A group's bytes (docs/protocol.md, "Grouped columns"), from its members in the batch."""
    layout, table, buf = batch.layout, batch.table, np.asarray(batch.buffer)
    code = int(table["dtype"][layout.index[g.members[0]]])
    offsets: list[np.ndarray] = []
    values: list[np.ndarray] = []
    dense: list[np.ndarray] = []
    for m in g.members:
        spec, col = layout[m], table[layout.index[m]]
        rows = 1 if col["flags"] & FLAG_PER_REQUEST else batch.n_rows
        start, nbytes = int(col["data_offset"]), int(col["data_nbytes"])
        fits = (bool(col["flags"] & FLAG_PER_REQUEST) == spec.per_request
                and int(col["dtype"]) == code and start + nbytes <= len(buf))
        if g.kind == "jagged":
            n = int(col["n_values"])
            itemsize = CODE_DTYPES[code].itemsize
            fits = fits and bool(col["flags"] & FLAG_RAGGED) and nbytes == 8 * (rows + 1) + n * itemsize
            if fits:
                base = sum(int(len(v)) for v in values) // itemsize
                offsets.append(buf[start:start + 8 * rows].view("<i8") + base)
                values.append(buf[start + 8 * (rows + 1):start + nbytes])
        else:
            fits = fits and not col["flags"] & FLAG_RAGGED and int(col["width"]) == spec.width \
                and nbytes == rows * spec.width * 4
            if fits:
                arr = buf[start:start + nbytes].view("<f4").reshape(rows, spec.width)
                dense.append(np.broadcast_to(arr, (batch.n_rows, spec.width)))
        if not fits:
            raise ValueError(f"batch column {m!r} does not fit the plan's group {g.name}")
    if g.kind == "dense":
        return np.ascontiguousarray(np.concatenate(dense, axis=1)).view(np.uint8).reshape(-1)
    n_values = sum(len(v) for v in values) // CODE_DTYPES[code].itemsize
    offs = np.concatenate(offsets + [np.array([n_values], "<i8")]).astype("<i8")
    return np.concatenate([offs.view(np.uint8)] + values)


def _gather(plan, k: int, src: np.ndarray, code: int, rows: int) -> np.ndarray:
    """The bytes of read ``k``'s region: ranges (when sliced), then the values."""
    full = int(plan.read_full[k])
    values = src.view(CODE_DTYPES[code]).reshape(rows, full)
    first, n = int(plan.read_first[k]), int(plan.read_n[k])
    pairs = plan.read_bounds[2 * first:2 * (first + n)].reshape(n, 2)
    picked = np.concatenate([values[:, a:b] for a, b in pairs.tolist()], axis=1)
    out_code = int(plan.read_code[k])
    if out_code != code:
        name = "bfloat16" if out_code == 9 else "float16"
        picked = narrow_bits(picked, name)
    prefix = pairs.astype("<u4").tobytes() if plan.read_sliced[k] else b""
    return np.frombuffer(prefix + np.ascontiguousarray(picked).tobytes(), dtype=np.uint8)


def encoded_nbytes(plan, batch) -> int:
    return _ranges(plan, batch)[0]


def encode_into(plan, batch, out) -> int:
    view = memoryview(out)
    if view.readonly:
        raise ValueError("output buffer is read-only")
    dst = np.frombuffer(view.cast("B") if view.format != "B" or view.ndim != 1 else view,
                        dtype=np.uint8)
    total, ranges = _ranges(plan, batch)
    if total > len(dst):
        raise ValueError(f"output buffer too small: message needs {total} bytes, buffer has {len(dst)}")
    n = len(plan.columns) + len(plan.groups)
    header = np.zeros(1, HEADER_DTYPE)
    header[0] = (MAGIC, VERSION, HEADER_NBYTES, batch.n_rows, n, len(plan.names_blob_array), 0, total)
    table = np.zeros(n, COLUMN_DTYPE)
    table[:len(plan.columns)] = batch.table[plan.columns]
    table["name_offset"] = plan.name_offsets
    j = 0
    regions: list[np.ndarray | None] = []
    for r, ((src_start, nbytes, dst_start), length) in enumerate(zip(ranges, plan.run_lengths)):
        k = int(plan.run_read[r])
        if k >= 0:
            col = batch.table[plan.columns[j]]
            code, rows = int(col["dtype"]), int(col["n_values"]) // int(col["width"])
            src = batch.buffer[src_start:src_start + int(col["data_nbytes"])]
            regions.append(_gather(plan, k, np.asarray(src), code, rows))
            width = int(plan.read_width[k])
            sliced = bool(plan.read_sliced[k])
            table["dtype"][j] = int(plan.read_code[k])
            table["flags"][j] = int(col["flags"]) | (FLAG_SLICED if sliced else 0)
            table["width"][j] = width
            table["reserved"][j] = int(plan.read_full[k]) if sliced else 0
            table["n_values"][j] = rows * width
            table["data_offset"][j] = dst_start
            table["data_nbytes"][j] = nbytes
        else:
            regions.append(None)
            table["data_offset"][j:j + length] = (
                table["data_offset"][j:j + length].astype(np.int64) + (dst_start - src_start))
        j += int(length)
    for i, g in enumerate(plan.groups):
        _, nbytes, dst_start = ranges[len(plan.run_lengths) + i]
        regions.append(_group_region(g, batch))
        row = table[len(plan.columns) + i]
        itemsize = CODE_DTYPES[int(plan.group_code[i])].itemsize
        lists = (len(g.members) - g.per_request) * batch.n_rows + g.per_request
        row["name_nbytes"] = len(g.name.encode())
        row["dtype"] = int(plan.group_code[i])
        row["flags"] = FLAG_GROUPED | (FLAG_RAGGED if g.kind == "jagged" else FLAG_VECTOR)
        row["width"] = int(plan.group_width[i])
        row["reserved"] = g.per_request
        row["n_values"] = ((nbytes - 8 * (lists + 1)) // itemsize if g.kind == "jagged"
                           else nbytes // itemsize)
        row["data_offset"] = dst_start
        row["data_nbytes"] = nbytes
        table[len(plan.columns) + i] = row
    dst[:plan.table_nbytes] = 0
    dst[:HEADER_NBYTES] = header.view(np.uint8)
    table_end = HEADER_NBYTES + COLUMN_NBYTES * n
    dst[HEADER_NBYTES:table_end] = table.view(np.uint8)
    dst[table_end:table_end + len(plan.names_blob_array)] = plan.names_blob_array
    for (src_start, nbytes, dst_start), region in zip(ranges, regions, strict=True):
        if region is None:
            dst[dst_start:dst_start + nbytes] = batch.buffer[src_start:src_start + nbytes]
        else:
            dst[dst_start:dst_start + nbytes] = region
        dst[dst_start + nbytes:dst_start + align_up(nbytes)] = 0
    return total


def parse(buf):
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    raw = np.frombuffer(mv, dtype=np.uint8)
    length = len(raw)
    if length < HEADER_NBYTES:
        raise ValueError(f"truncated message: {length} bytes, the header alone is {HEADER_NBYTES}")
    h = raw[:HEADER_NBYTES].view(HEADER_DTYPE)[0]
    if bytes(h["magic"]) != MAGIC:
        raise ValueError(f"not a trimmer message: magic {bytes(raw[:4])!r}, expected {MAGIC!r}")
    if h["version"] != VERSION:
        raise ValueError(f"unsupported message version {int(h['version'])} (this build reads {VERSION})")
    if h["header_nbytes"] != HEADER_NBYTES:
        raise ValueError(f"bad header size {int(h['header_nbytes'])} for version {VERSION}")
    if h["flags"] != 0:
        raise ValueError(f"header flags {int(h['flags']):#x} are reserved and must be 0")
    total = int(h["total_nbytes"])
    if total > length:
        raise ValueError(f"truncated message: header says {total} bytes, got {length}")
    n_cols, n_rows, names_nbytes = int(h["n_columns"]), int(h["n_rows"]), int(h["names_nbytes"])
    table_end = HEADER_NBYTES + COLUMN_NBYTES * n_cols
    if table_end > total:
        raise ValueError(f"column count {n_cols} does not fit in a {total}-byte message")
    names_end = table_end + names_nbytes
    if names_end > total:
        raise ValueError(f"names ({names_nbytes} bytes) run past the end of the message")
    data_start = align_up(names_end)
    table = raw[HEADER_NBYTES:table_end].view(COLUMN_DTYPE).copy()
    names_raw = bytes(raw[table_end:names_end])
    names, seen = [], set()
    for i, col in enumerate(table):
        name_off, name_len = int(col["name_offset"]), int(col["name_nbytes"])
        if name_off + name_len > names_nbytes:
            raise ValueError(f"column {i}: name runs past the names region")
        try:
            name = names_raw[name_off:name_off + name_len].decode()
        except UnicodeDecodeError:
            raise ValueError(f"column {i}: name is not valid UTF-8") from None
        if not name:
            raise ValueError(f"column {i}: empty name")
        if name in seen:
            raise ValueError(f"duplicate column {name!r}")
        seen.add(name)
        names.append(name)
        code, flags, width = int(col["dtype"]), int(col["flags"]), int(col["width"])
        n_values, offset, nbytes = int(col["n_values"]), int(col["data_offset"]), int(col["data_nbytes"])
        if code not in CODE_DTYPES:
            raise ValueError(f"column {name!r}: unknown dtype code {code}")
        if flags & ~KNOWN_FLAGS:
            raise ValueError(f"column {name!r}: unknown flags {flags:#x}")
        if flags & FLAG_RAGGED and flags & FLAG_VECTOR:
            raise ValueError(f"column {name!r}: a ragged column cannot be a vector")
        if flags & FLAG_SLICED and not flags & FLAG_VECTOR:
            raise ValueError(f"column {name!r}: only a vector column can be sliced")
        grouped = bool(flags & FLAG_GROUPED)
        if grouped:
            _check_group(name, flags, width, int(col["reserved"]))
        elif width == 0 or (width != 1 and not flags & FLAG_VECTOR):
            raise ValueError(f"column {name!r}: bad width {width}")
        if col["reserved"] != 0 and not flags & FLAG_SLICED and not grouped:
            raise ValueError(f"column {name!r}: reserved field is {int(col['reserved'])}, must be 0")
        if offset < data_start or offset % ALIGN:
            raise ValueError(f"column {name!r}: data offset {offset} is misplaced")
        if offset + nbytes > total:
            raise ValueError(f"column {name!r}: data ({nbytes} bytes at {offset}) "
                             f"runs past the end of the {total}-byte message")
        itemsize = CODE_DTYPES[code].itemsize
        rows = 1 if flags & FLAG_PER_REQUEST else n_rows
        if flags & FLAG_RAGGED and grouped:
            rows = (width - int(col["reserved"])) * n_rows + int(col["reserved"])
            if rows >= nbytes // 8:
                raise ValueError(f"column {name!r}: {nbytes} bytes cannot hold {rows} lists' offsets")
        if flags & FLAG_RAGGED:
            offsets_nbytes = (rows + 1) * 8
            if offsets_nbytes + n_values * itemsize > nbytes:
                raise ValueError(f"column {name!r}: {nbytes} bytes cannot hold "
                                 f"{rows + 1} offsets and {n_values} values")
            expect = offsets_nbytes + n_values * itemsize
        else:
            if n_values != rows * width:
                raise ValueError(f"column {name!r}: {n_values} values, expected {rows} rows x {width}")
            if n_values * itemsize > nbytes:
                raise ValueError(f"column {name!r}: {nbytes} bytes cannot hold {n_values} values")
            expect = n_values * itemsize
            if flags & FLAG_SLICED:
                expect = nbytes
                _check_slice(raw, name, offset, nbytes - n_values * itemsize, width,
                             int(col["reserved"]))
        if nbytes != expect:
            raise ValueError(f"column {name!r}: data is {nbytes} bytes, expected {expect}")
        if flags & FLAG_RAGGED:
            offs = raw[offset:offset + offsets_nbytes].view("<i8")
            bad = np.nonzero(np.diff(offs) < 0)[0]
            if offs[0] != 0 or len(bad):
                row = 0 if offs[0] != 0 else int(bad[0]) + 1
                raise ValueError(f"column {name!r}: ragged offsets must start at 0 "
                                 f"and never decrease (row {row})")
            if int(offs[-1]) != n_values:
                raise ValueError(f"column {name!r}: last offset {int(offs[-1])} != value count {n_values}")
    if n_cols > 1:
        order = np.lexsort((table["data_nbytes"], table["data_offset"]))
        starts = table["data_offset"][order]
        ends = starts + table["data_nbytes"][order]
        bad = np.nonzero(starts[1:] < ends[:-1])[0]
        if len(bad):
            a, b = names[order[bad[0]]], names[order[bad[0] + 1]]
            raise ValueError(f"columns {a!r} and {b!r} overlap")
    return n_rows, table, names


def _check_group(name: str, flags: int, width: int, reserved: int) -> None:
    """A grouped column's flags, width, reserved field and name (rule batch.grouped-valid)."""
    if flags & (FLAG_PER_REQUEST | FLAG_SLICED):
        raise ValueError(f"column {name!r}: a grouped column is neither per-request nor sliced")
    if not flags & (FLAG_RAGGED | FLAG_VECTOR):
        raise ValueError(f"column {name!r}: a grouped column is ragged (jagged) or a vector (dense)")
    members = len(parse_group_name(name))
    if flags & FLAG_RAGGED:
        if width != members or reserved > width:
            raise ValueError(f"column {name!r}: a jagged group of {members} members says "
                             f"width {width}, per-request {reserved}")
    elif members > width or reserved != 0:
        raise ValueError(f"column {name!r}: a dense group of {members} members says width "
                         f"{width}, reserved {reserved}")


def _check_slice(raw, name: str, offset: int, prefix: int, width: int, full: int) -> None:
    """A sliced column's ranges (rule batch.sliced)."""
    if full <= width:
        raise ValueError(f"column {name!r}: sliced from {full} positions but carries {width}")
    if prefix < RANGE_NBYTES or prefix % RANGE_NBYTES or prefix // RANGE_NBYTES > width:
        raise ValueError(f"column {name!r}: a sliced column's ranges take {prefix} bytes, "
                         f"not a multiple of {RANGE_NBYTES} from {RANGE_NBYTES} to "
                         f"{RANGE_NBYTES * width}")
    pairs = raw[offset:offset + prefix].view("<u4").reshape(-1, 2).astype(np.int64)
    prev, total = -1, 0
    for start, stop in pairs.tolist():
        if not (prev < start < stop <= full):
            raise ValueError(f"column {name!r}: ranges {pairs.tolist()} are not sorted, "
                             f"disjoint, non-adjacent and within [0, {full}]")
        prev, total = stop, total + stop - start
    if total != width:
        raise ValueError(f"column {name!r}: ranges {pairs.tolist()} hold {total} positions, "
                         f"width says {width}")


def decode(buf):
    """The columns of a validated message as views on ``buf``."""
    return build_views(buf, *parse(buf))
