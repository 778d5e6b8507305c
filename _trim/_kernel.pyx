# cython: language_level=3
"""The gather kernel and the message parser.

Everything that can fail is checked while holding the GIL; the copy loop
that follows runs without it and cannot fail.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

import numpy as np

from .format import (ALIGN, CODE_DTYPES, COLUMN_DTYPE, FLAG_PER_REQUEST, FLAG_RAGGED,
                     FLAG_VECTOR, HEADER_NBYTES, KNOWN_FLAGS, MAGIC, VERSION)

cdef uint64_t C_ALIGN = ALIGN
cdef uint64_t C_HEADER = HEADER_NBYTES
cdef uint64_t C_COLUMN = sizeof(ColumnEntry)
cdef uint32_t C_VERSION = VERSION
cdef uint8_t C_FLAG_RAGGED = FLAG_RAGGED
cdef uint8_t C_FLAG_PER_REQUEST = FLAG_PER_REQUEST
cdef uint8_t C_FLAG_VECTOR = FLAG_VECTOR
cdef uint8_t C_KNOWN_FLAGS = KNOWN_FLAGS
cdef uint8_t[9] ITEMSIZE
ITEMSIZE[:] = [0, 4, 2, 8, 8, 4, 1, 1, 1]

assert sizeof(MessageHeader) == HEADER_NBYTES
assert sizeof(ColumnEntry) == COLUMN_DTYPE.itemsize


cdef inline uint64_t align_up(uint64_t n) nogil:
    return (n + C_ALIGN - 1) & ~(C_ALIGN - 1)


cdef uint8_t[::1] writable_bytes(object out) except *:
    mv = memoryview(out)
    if mv.readonly:
        raise ValueError("output buffer is read-only")
    if not mv.c_contiguous:
        raise ValueError("output buffer must be C-contiguous")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


cdef const uint8_t[::1] readable_bytes(object buf) except *:
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise ValueError("message buffer must be C-contiguous")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


cdef Py_ssize_t plan_ranges(plan, batch, CopyRange* ranges, Py_ssize_t n_runs) except -1:
    """Fill one CopyRange per run from the batch's own column table; returns
    the encoded size. Every range is checked against the source here."""
    cdef const uint8_t[::1] src = batch.buffer
    cdef const int64_t[::1] cols = plan.columns
    cdef const int64_t[::1] run_lengths = plan.run_lengths
    cdef Py_ssize_t n_src_cols = len(batch.layout)
    cdef uint64_t src_len = src.shape[0]
    cdef const ColumnEntry* table
    cdef ColumnEntry first, last
    cdef uint64_t pos = plan.table_nbytes
    cdef uint64_t start, end
    cdef Py_ssize_t r, j = 0
    if batch.layout is not plan.layout and batch.layout.fingerprint != plan.layout.fingerprint:
        raise ValueError("batch layout does not match the plan's layout; compile a plan for it")
    if src_len < C_HEADER + C_COLUMN * <uint64_t>n_src_cols:
        raise ValueError("batch buffer is shorter than its column table")
    table = <const ColumnEntry*>(&src[0] + C_HEADER)
    for r in range(n_runs):
        memcpy(&first, &table[cols[j]], sizeof(ColumnEntry))
        j += run_lengths[r]
        memcpy(&last, &table[cols[j - 1]], sizeof(ColumnEntry))
        start = first.data_offset
        if last.data_offset > src_len or last.data_nbytes > src_len - last.data_offset:
            raise ValueError("batch column table points past the end of its buffer")
        end = last.data_offset + last.data_nbytes
        if start > end:
            raise ValueError("batch column table is out of order")
        ranges[r].src_start = start
        ranges[r].nbytes = end - start
        ranges[r].dst_start = pos
        pos += align_up(end - start)
    return pos


def encoded_nbytes(plan, batch):
    """Bytes `encode_into` will write for this plan and batch."""
    cdef Py_ssize_t n_runs = len(plan.run_lengths)
    cdef CopyRange* ranges = <CopyRange*>malloc(sizeof(CopyRange) * (n_runs + 1))
    if ranges == NULL:
        raise MemoryError()
    try:
        return plan_ranges(plan, batch, ranges, n_runs)
    finally:
        free(ranges)


def encode_into(plan, batch, out):
    """Write the plan's columns of ``batch`` as a message into ``out``.

    Returns the number of bytes written, from the start of ``out``.
    """
    cdef uint8_t[::1] dst = writable_bytes(out)
    cdef const uint8_t[::1] src = batch.buffer
    cdef const int64_t[::1] cols = plan.columns
    cdef const int64_t[::1] run_lengths = plan.run_lengths
    cdef const uint32_t[::1] name_offsets = plan.name_offsets
    cdef const uint8_t[::1] names = plan.names_blob_array
    cdef Py_ssize_t n_runs = run_lengths.shape[0]
    cdef Py_ssize_t n_cols = cols.shape[0]
    cdef uint64_t names_len = names.shape[0]
    cdef uint64_t table_end = C_HEADER + C_COLUMN * <uint64_t>n_cols
    cdef uint64_t table_nbytes = plan.table_nbytes
    cdef uint64_t total
    cdef uint32_t n_rows = batch.n_rows
    cdef CopyRange* ranges = <CopyRange*>malloc(sizeof(CopyRange) * (n_runs + 1))
    cdef uint8_t* d
    cdef const uint8_t* s
    cdef const ColumnEntry* src_table
    cdef ColumnEntry* dst_table
    cdef MessageHeader* header
    cdef Py_ssize_t r, k, j
    cdef int64_t delta
    if ranges == NULL:
        raise MemoryError()
    try:
        total = plan_ranges(plan, batch, ranges, n_runs)
        if total > <uint64_t>dst.shape[0]:
            raise ValueError(f"output buffer too small: message needs {total} bytes, "
                             f"buffer has {dst.shape[0]}")
        if table_end + names_len > table_nbytes:
            raise ValueError("plan is inconsistent: names do not fit its table size")
        d = &dst[0]
        s = &src[0]
        src_table = <const ColumnEntry*>(s + C_HEADER)
        with nogil:
            header = <MessageHeader*>d
            memcpy(header.magic, b"TRMB", 4)
            header.version = C_VERSION
            header.header_nbytes = C_HEADER
            header.n_rows = n_rows
            header.n_columns = n_cols
            header.names_nbytes = names_len
            header.flags = 0
            header.total_nbytes = total
            dst_table = <ColumnEntry*>(d + C_HEADER)
            j = 0
            for r in range(n_runs):
                delta = <int64_t>ranges[r].dst_start - <int64_t>ranges[r].src_start
                for k in range(run_lengths[r]):
                    memcpy(&dst_table[j], &src_table[cols[j]], sizeof(ColumnEntry))
                    dst_table[j].name_offset = name_offsets[j]
                    dst_table[j].data_offset = <uint64_t>(<int64_t>dst_table[j].data_offset + delta)
                    j += 1
            if names_len:
                memcpy(d + table_end, &names[0], names_len)
            memset(d + table_end + names_len, 0, table_nbytes - table_end - names_len)
            for r in range(n_runs):
                memcpy(d + ranges[r].dst_start, s + ranges[r].src_start, ranges[r].nbytes)
                memset(d + ranges[r].dst_start + ranges[r].nbytes, 0,
                       align_up(ranges[r].nbytes) - ranges[r].nbytes)
        return total
    finally:
        free(ranges)


def parse(buf):
    """Validate a message and return ``(n_rows, table, names)``.

    ``table`` is a copy of the column table (COLUMN_DTYPE); every range in it
    has been checked against the message, so views built from it are in
    bounds. Raises ValueError naming the first problem found.
    """
    cdef const uint8_t[::1] mv = readable_bytes(buf)
    cdef uint64_t length = mv.shape[0]
    cdef MessageHeader header
    cdef ColumnEntry col
    cdef uint64_t table_end, names_end, data_start, rows, itemsize, expect, offsets_nbytes
    cdef uint64_t n_cols, i, total
    cdef int64_t off, prev
    cdef uint64_t r
    cdef const uint8_t* base
    if length < C_HEADER:
        raise ValueError(f"truncated message: {length} bytes, the header alone is {C_HEADER}")
    base = &mv[0]
    memcpy(&header, base, sizeof(MessageHeader))
    if header.magic[:4] != MAGIC:
        raise ValueError(f"not a trimmer message: magic {bytes(header.magic[:4])!r}, expected {MAGIC!r}")
    if header.version != C_VERSION:
        raise ValueError(f"unsupported message version {header.version} (this build reads {C_VERSION})")
    if header.header_nbytes != C_HEADER:
        raise ValueError(f"bad header size {header.header_nbytes} for version {C_VERSION}")
    total = header.total_nbytes
    if total > length:
        raise ValueError(f"truncated message: header says {total} bytes, got {length}")
    n_cols = header.n_columns
    table_end = C_HEADER + C_COLUMN * n_cols
    if table_end > total:
        raise ValueError(f"column count {n_cols} does not fit in a {total}-byte message")
    names_end = table_end + header.names_nbytes
    if names_end > total:
        raise ValueError(f"names ({header.names_nbytes} bytes) run past the end of the message")
    data_start = align_up(names_end)
    table = np.frombuffer(buf, dtype=np.uint8, count=table_end - C_HEADER,
                          offset=C_HEADER).view(COLUMN_DTYPE).copy()
    names_raw = bytes(mv[table_end:names_end])
    names = []
    seen = set()
    for i in range(n_cols):
        memcpy(&col, base + C_HEADER + C_COLUMN * i, sizeof(ColumnEntry))
        if col.name_offset > header.names_nbytes or col.name_nbytes > header.names_nbytes - col.name_offset:
            raise ValueError(f"column {i}: name runs past the names region")
        try:
            name = names_raw[col.name_offset:col.name_offset + col.name_nbytes].decode()
        except UnicodeDecodeError:
            raise ValueError(f"column {i}: name is not valid UTF-8") from None
        if not name:
            raise ValueError(f"column {i}: empty name")
        if name in seen:
            raise ValueError(f"duplicate column {name!r}")
        seen.add(name)
        names.append(name)
        if col.dtype == 0 or col.dtype > 8:
            raise ValueError(f"column {name!r}: unknown dtype code {col.dtype}")
        if col.flags & ~C_KNOWN_FLAGS:
            raise ValueError(f"column {name!r}: unknown flags {col.flags:#x}")
        if (col.flags & C_FLAG_RAGGED) and (col.flags & C_FLAG_VECTOR):
            raise ValueError(f"column {name!r}: a ragged column cannot be a vector")
        if col.width == 0 or (col.width != 1 and not (col.flags & C_FLAG_VECTOR)):
            raise ValueError(f"column {name!r}: bad width {col.width}")
        if col.data_offset < data_start or col.data_offset % C_ALIGN:
            raise ValueError(f"column {name!r}: data offset {col.data_offset} is misplaced")
        if col.data_offset > total or col.data_nbytes > total - col.data_offset:
            raise ValueError(f"column {name!r}: data ({col.data_nbytes} bytes at {col.data_offset}) "
                             f"runs past the end of the {total}-byte message")
        itemsize = ITEMSIZE[col.dtype]
        rows = 1 if col.flags & C_FLAG_PER_REQUEST else header.n_rows
        if col.flags & C_FLAG_RAGGED:
            offsets_nbytes = (rows + 1) * 8
            if offsets_nbytes > col.data_nbytes or col.n_values > (col.data_nbytes - offsets_nbytes) // itemsize:
                raise ValueError(f"column {name!r}: {col.data_nbytes} bytes cannot hold "
                                 f"{rows + 1} offsets and {col.n_values} values")
            expect = offsets_nbytes + col.n_values * itemsize
        else:
            if col.n_values != rows * col.width:
                raise ValueError(f"column {name!r}: {col.n_values} values, expected "
                                 f"{rows} rows x {col.width}")
            if col.n_values > col.data_nbytes // itemsize:
                raise ValueError(f"column {name!r}: {col.data_nbytes} bytes cannot hold "
                                 f"{col.n_values} values")
            expect = col.n_values * itemsize
        if col.data_nbytes != expect:
            raise ValueError(f"column {name!r}: data is {col.data_nbytes} bytes, expected {expect}")
        if col.flags & C_FLAG_RAGGED:
            prev = 0
            for r in range(rows + 1):
                memcpy(&off, base + col.data_offset + 8 * r, 8)
                if (r == 0 and off != 0) or off < prev:
                    raise ValueError(f"column {name!r}: ragged offsets must start at 0 "
                                     f"and never decrease (row {r})")
                prev = off
            if <uint64_t>prev != col.n_values:
                raise ValueError(f"column {name!r}: last offset {prev} != value count {col.n_values}")
    if n_cols > 1:
        # Empty regions sort first at a shared offset: they overlap nothing.
        order = np.lexsort((table["data_nbytes"], table["data_offset"]))
        starts = table["data_offset"][order]
        ends = starts + table["data_nbytes"][order]
        bad = np.nonzero(starts[1:] < ends[:-1])[0]
        if len(bad):
            a, b = names[order[bad[0]]], names[order[bad[0] + 1]]
            raise ValueError(f"columns {a!r} and {b!r} overlap")
    return header.n_rows, table, names
