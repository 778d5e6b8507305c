# cython: language_level=3
"""The gather kernel, the message parser and the zero-copy decoder.

Everything that can fail is checked while holding the GIL; the copy loop
that follows runs without it and cannot fail.
"""
cimport numpy as cnp
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free, qsort
from libc.string cimport memcpy, memset

from _trim._common cimport ITEMSIZE, WIRE_ALIGN, WIRE_CODES_END, align_up, is_wire_code

import numpy as np

from .batch import Ragged
from .decoded import Decoded
from .format import (ALIGN, CODE_DTYPES, CODE_NAMES, COLUMN_DTYPE, DTYPE_CODES, FLAG_GROUPED,
                     FLAG_PER_REQUEST, FLAG_RAGGED, FLAG_SLICED, FLAG_VECTOR, HEADER_NBYTES,
                     KNOWN_FLAGS, MAGIC, NARROW_CODES, RANGE_NBYTES, VERSION)
from .groups import parse_group_name, received_group

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Narrowing casts as torch's CPU cast gives them: round to nearest, ties to
       even, subnormals kept, overflow to infinity; a NaN stays that NaN, quieted,
       its payload cut to the narrow mantissa (as x86's own conversions do).
       float64 goes through float32 first, as torch's does.
       _trim/narrow.py is the numpy reference. */
    static inline uint16_t trim_bf16_from_f32(float f) {
        uint32_t x; memcpy(&x, &f, 4);
        if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u);
        return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
    }
    static inline uint16_t trim_f16_from_f32(float f) {
        uint32_t x, sign, ax, h, rem, e, m, shift, half;
        memcpy(&x, &f, 4);
        sign = (x >> 16) & 0x8000u; ax = x & 0x7FFFFFFFu;
        if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
        if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);   /* >= 65520: infinity */
        if (ax >= 0x38800000u) {                                      /* normal in float16 */
            h = (ax - 0x38000000u) >> 13; rem = ax & 0x1FFFu;
            h += (rem > 0x1000u) || (rem == 0x1000u && (h & 1u));
            return (uint16_t)(sign | h);
        }
        if (ax <= 0x33000000u) return (uint16_t)sign;                 /* <= 2**-25: zero */
        e = ax >> 23; m = (ax & 0x7FFFFFu) | 0x800000u; shift = 126u - e;
        h = m >> shift; rem = m & ((1u << shift) - 1u); half = 1u << (shift - 1u);
        h += (rem > half) || (rem == half && (h & 1u));
        return (uint16_t)(sign | h);
    }
    /* n elements of code src_code (1 float32, 3 float64) to dst_code (9 bfloat16, 2 float16);
       one loop per pair, branch-free in its body where it can be, so it vectorises. */
    static void trim_narrow(int src_code, int dst_code, const char* src, char* dst, uint64_t n) {
        uint64_t i; float f; double d; uint32_t x; uint16_t v;
        if (src_code == 1 && dst_code == 9) {
            for (i = 0; i < n; i++) {
                memcpy(&x, src + 4 * i, 4);
                v = ((x & 0x7FFFFFFFu) > 0x7F800000u) ? (uint16_t)((x >> 16) | 0x0040u)
                    : (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
                memcpy(dst + 2 * i, &v, 2);
            }
            return;
        }
        for (i = 0; i < n; i++) {
            if (src_code == 1) { memcpy(&f, src + 4 * i, 4); }
            else { memcpy(&d, src + 8 * i, 8); f = (float)d; }
            v = dst_code == 9 ? trim_bf16_from_f32(f) : trim_f16_from_f32(f);
            memcpy(dst + 2 * i, &v, 2);
        }
    }
    """
    void trim_narrow(int src_code, int dst_code, const char* src, char* dst, uint64_t n) nogil

cnp.import_array()

cdef uint64_t C_ALIGN = ALIGN
cdef uint64_t C_HEADER = HEADER_NBYTES
cdef uint64_t C_COLUMN = sizeof(ColumnEntry)
cdef uint32_t C_VERSION = VERSION
cdef uint8_t C_FLAG_RAGGED = FLAG_RAGGED
cdef uint8_t C_FLAG_PER_REQUEST = FLAG_PER_REQUEST
cdef uint8_t C_FLAG_VECTOR = FLAG_VECTOR
cdef uint8_t C_KNOWN_FLAGS = KNOWN_FLAGS
cdef uint8_t C_FLAG_SLICED = FLAG_SLICED
cdef uint8_t C_FLAG_GROUPED = FLAG_GROUPED
cdef uint64_t C_RANGE = RANGE_NBYTES
# The wire's one code beyond the batch's (format.NARROW_CODES): bfloat16, 2 bytes.
cdef uint8_t C_BF16 = NARROW_CODES["bfloat16"]
cdef uint8_t C_F16 = DTYPE_CODES["float16"]
cdef uint8_t C_F32 = DTYPE_CODES["float32"]
cdef uint8_t C_F64 = DTYPE_CODES["float64"]
# The dtype table lives in format.py alone; _common.pxd's must agree with it.
assert ALIGN == WIRE_ALIGN, "_common.pxd's WIRE_ALIGN differs from format.ALIGN"
assert sorted(DTYPE_CODES.values()) == list(range(1, WIRE_CODES_END)) and all(
    ITEMSIZE[_code] == CODE_DTYPES[_code].itemsize for _code in DTYPE_CODES.values()), \
    "_common.pxd's dtype codes differ from format.DTYPE_CODES"
assert sorted(CODE_DTYPES) == list(range(1, WIRE_CODES_END)) + [C_BF16] and C_BF16 == WIRE_CODES_END


cdef inline bint wire_code(uint64_t code) noexcept nogil:
    return is_wire_code(code) or code == C_BF16


cdef inline uint64_t wire_itemsize(uint64_t code) noexcept nogil:
    return 2 if code == C_BF16 else ITEMSIZE[code]


cdef struct ReadRun:
    uint64_t rows       # rows of the source column (1 when per-request)
    uint8_t src_code    # its dtype code


cdef struct GroupRun:
    uint64_t dst_start
    uint64_t nbytes
    uint64_t lists      # a jagged group's lists (its offsets are one more)
    uint64_t n_values

assert sizeof(MessageHeader) == HEADER_NBYTES
assert sizeof(ColumnEntry) == COLUMN_DTYPE.itemsize


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


cdef Py_ssize_t plan_ranges(plan, batch, CopyRange* ranges, ReadRun* reads,
                            Py_ssize_t n_runs, GroupRun* groups) except -1:
    """Fill one CopyRange per run from the batch's own column table; returns
    the encoded size. Every range is checked against the source here. A run
    of a column with a read (``plan.run_read``) gets the size of its
    gathered region and, in ``reads``, what the gather needs of the source."""
    cdef const uint8_t[::1] src = batch.buffer
    cdef const int64_t[::1] cols = plan.columns
    cdef const int64_t[::1] run_lengths = plan.run_lengths
    cdef const int64_t[::1] run_read = plan.run_read
    cdef const int64_t[::1] read_code = plan.read_code
    cdef const int64_t[::1] read_full = plan.read_full
    cdef const int64_t[::1] read_width = plan.read_width
    cdef const int64_t[::1] read_n = plan.read_n
    cdef const int64_t[::1] read_sliced = plan.read_sliced
    cdef Py_ssize_t n_src_cols = len(batch.layout)
    cdef uint64_t src_len = src.shape[0]
    cdef const ColumnEntry* table
    cdef ColumnEntry first, last
    cdef uint64_t pos = plan.table_nbytes
    cdef uint64_t start, end, rows, nbytes
    cdef Py_ssize_t r, k, j = 0
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
        ranges[r].dst_start = pos
        k = run_read[r]
        if k < 0:
            ranges[r].nbytes = end - start
            pos += align_up(end - start)
            continue
        # A read: the source column must be the dense one the plan was compiled for.
        if (not is_wire_code(first.dtype) or first.flags & C_FLAG_RAGGED or first.width == 0
                or <int64_t>first.width != read_full[k]):
            raise ValueError(f"batch column {plan.names[j - 1]!r} does not fit the plan's read of it")
        rows = first.n_values // first.width
        if (first.n_values != rows * first.width
                or first.data_nbytes != first.n_values * ITEMSIZE[first.dtype]
                or (<int64_t>first.dtype != read_code[k]
                    and first.dtype != C_F32 and first.dtype != C_F64)):
            raise ValueError(f"batch column {plan.names[j - 1]!r} does not fit the plan's read of it")
        nbytes = (C_RANGE * read_n[k] * read_sliced[k]
                  + rows * <uint64_t>read_width[k] * wire_itemsize(read_code[k]))
        reads[r].rows = rows
        reads[r].src_code = first.dtype
        ranges[r].nbytes = nbytes
        pos += align_up(nbytes)
    return group_ranges(plan, table, src_len, batch.n_rows, pos, groups)


cdef Py_ssize_t group_ranges(plan, const ColumnEntry* table, uint64_t src_len, uint64_t n_rows,
                             uint64_t pos, GroupRun* groups) except -1:
    """Each group's region (GroupRun), its members checked against the plan."""
    cdef const int64_t[::1] kind = plan.group_kind
    cdef const int64_t[::1] first = plan.group_first
    cdef const int64_t[::1] count = plan.group_n
    cdef const int64_t[::1] code = plan.group_code
    cdef const int64_t[::1] width = plan.group_width
    cdef const int64_t[::1] cols = plan.group_cols
    cdef const int64_t[::1] mwidth = plan.group_mwidth
    cdef const int64_t[::1] mpr = plan.group_mpr
    cdef ColumnEntry col
    cdef uint64_t lists, values, rows, isz, nbytes
    cdef Py_ssize_t g, m
    cdef bint per_request, ok
    for g in range(kind.shape[0]):
        lists = 0
        values = 0
        isz = ITEMSIZE[code[g]]
        for m in range(first[g], first[g] + count[g]):
            memcpy(&col, &table[cols[m]], sizeof(ColumnEntry))
            per_request = (col.flags & C_FLAG_PER_REQUEST) != 0
            rows = 1 if per_request else n_rows
            ok = (col.data_offset <= src_len and col.data_nbytes <= src_len - col.data_offset
                  and per_request == (mpr[m] != 0) and <int64_t>col.dtype == code[g])
            if ok and kind[g] == 0:
                ok = ((col.flags & C_FLAG_RAGGED) != 0
                      and col.data_nbytes == 8 * (rows + 1) + col.n_values * isz)
                lists += rows
                values += col.n_values
            elif ok:
                ok = (not (col.flags & C_FLAG_RAGGED) and <int64_t>col.width == mwidth[m]
                      and col.n_values == rows * col.width and col.data_nbytes == col.n_values * isz)
            if not ok:
                raise ValueError(f"batch column {plan.groups[g].members[m - first[g]]!r} does "
                                 f"not fit the plan's group {plan.groups[g].name}")
        if kind[g] == 0:
            nbytes = 8 * (lists + 1) + values * isz
        else:
            values = n_rows * <uint64_t>width[g]
            nbytes = values * isz
        groups[g].dst_start = pos
        groups[g].nbytes = nbytes
        groups[g].lists = lists
        groups[g].n_values = values
        pos += align_up(nbytes)
    return pos


cdef void write_group(uint8_t* out, const uint8_t* s, const ColumnEntry* table, GroupRun* run,
                      uint64_t n_rows, int64_t kind, uint64_t isz, uint64_t width,
                      const int64_t* cols, const int64_t* mwidth, const int64_t* mpr,
                      int64_t n) noexcept nogil:
    """One group's region: a jagged group's offsets rebased member after member
    and its values copied; a dense group's member columns placed side by side."""
    cdef ColumnEntry col
    cdef int64_t m, o
    cdef uint64_t i, rows, li = 0, acc = 0, at = 0, w
    cdef uint8_t* values = out + 8 * (run.lists + 1)
    cdef const uint8_t* so
    for m in range(n):
        memcpy(&col, &table[cols[m]], sizeof(ColumnEntry))
        rows = 1 if mpr[m] else n_rows
        so = s + col.data_offset
        if kind == 0:
            if acc == 0:
                memcpy(out + 8 * li, so, 8 * rows)
            else:
                for i in range(rows):
                    memcpy(&o, so + 8 * i, 8)
                    o += <int64_t>acc
                    memcpy(out + 8 * (li + i), &o, 8)
            li += rows
            memcpy(values + acc * isz, so + 8 * (rows + 1), col.n_values * isz)
            acc += col.n_values
        else:
            w = <uint64_t>mwidth[m] * isz
            if w == 4:   # a scalar float32 member, the common case: 4-byte moves, no calls
                if mpr[m]:
                    for i in range(n_rows):
                        memcpy(out + i * width * 4 + at, so, 4)
                else:
                    for i in range(n_rows):
                        memcpy(out + i * width * 4 + at, so + i * 4, 4)
            elif mpr[m]:
                for i in range(n_rows):
                    memcpy(out + i * width * isz + at, so, w)
            else:
                for i in range(n_rows):
                    memcpy(out + i * width * isz + at, so + i * w, w)
            at += w
    if kind == 0:
        memcpy(out + 8 * li, &acc, 8)


def encoded_nbytes(plan, batch):
    """Bytes `encode_into` will write for this plan and batch."""
    cdef Py_ssize_t n_runs = len(plan.run_lengths)
    cdef CopyRange* ranges = <CopyRange*>malloc(sizeof(CopyRange) * (n_runs + 1))
    cdef ReadRun* reads = <ReadRun*>malloc(sizeof(ReadRun) * (n_runs + 1))
    cdef GroupRun* groups = <GroupRun*>malloc(sizeof(GroupRun) * (len(plan.groups) + 1))
    if ranges == NULL or reads == NULL or groups == NULL:
        free(ranges)
        free(reads)
        free(groups)
        raise MemoryError()
    try:
        return plan_ranges(plan, batch, ranges, reads, n_runs, groups)
    finally:
        free(ranges)
        free(reads)
        free(groups)


cdef void gather(uint8_t* out, const uint8_t* src, uint64_t rows, uint64_t full,
                 uint8_t src_code, uint8_t out_code, const int64_t* bounds, int64_t n,
                 bint sliced) noexcept nogil:
    """One read's region: its ranges (u32 pairs) when sliced, then per row the
    positions of each range, narrowed when ``out_code`` differs."""
    cdef int64_t i
    cdef uint64_t row, count, src_isz = ITEMSIZE[src_code], out_isz = wire_itemsize(out_code)
    cdef uint32_t pair[2]
    cdef const uint8_t* srow
    cdef bint narrow = src_code != out_code
    if sliced:
        for i in range(n):
            pair[0] = <uint32_t>bounds[2 * i]
            pair[1] = <uint32_t>bounds[2 * i + 1]
            memcpy(out, pair, C_RANGE)
            out += C_RANGE
    if n == 1 and bounds[0] == 0 and <uint64_t>bounds[1] == full:
        # Every position: the rows are one span.
        if narrow:
            trim_narrow(src_code, out_code, <const char*>src, <char*>out, rows * full)
        else:
            memcpy(out, src, rows * full * src_isz)
        return
    for row in range(rows):
        srow = src + row * full * src_isz
        for i in range(n):
            count = <uint64_t>(bounds[2 * i + 1] - bounds[2 * i])
            if narrow:
                trim_narrow(src_code, out_code, <const char*>(srow + bounds[2 * i] * src_isz),
                            <char*>out, count)
            else:
                memcpy(out, srow + bounds[2 * i] * src_isz, count * src_isz)
            out += count * out_isz


def encode_into(plan, batch, out):
    """Write the plan's columns of ``batch`` as a message into ``out``.

    Returns the number of bytes written, from the start of ``out``.
    """
    cdef uint8_t[::1] dst = writable_bytes(out)
    cdef const uint8_t[::1] src = batch.buffer
    cdef const int64_t[::1] cols = plan.columns
    cdef const int64_t[::1] run_lengths = plan.run_lengths
    cdef const int64_t[::1] run_read = plan.run_read
    cdef const int64_t[::1] read_code = plan.read_code
    cdef const int64_t[::1] read_full = plan.read_full
    cdef const int64_t[::1] read_width = plan.read_width
    cdef const int64_t[::1] read_first = plan.read_first
    cdef const int64_t[::1] read_n = plan.read_n
    cdef const int64_t[::1] read_sliced = plan.read_sliced
    cdef const int64_t[::1] read_bounds = plan.read_bounds
    cdef const uint32_t[::1] name_offsets = plan.name_offsets
    cdef const uint8_t[::1] names = plan.names_blob_array
    cdef const int64_t[::1] g_kind = plan.group_kind
    cdef const int64_t[::1] g_first = plan.group_first
    cdef const int64_t[::1] g_n = plan.group_n
    cdef const int64_t[::1] g_pr = plan.group_pr
    cdef const int64_t[::1] g_code = plan.group_code
    cdef const int64_t[::1] g_width = plan.group_width
    cdef const int64_t[::1] g_cols = plan.group_cols
    cdef const int64_t[::1] g_mwidth = plan.group_mwidth
    cdef const int64_t[::1] g_mpr = plan.group_mpr
    cdef Py_ssize_t n_runs = run_lengths.shape[0]
    cdef Py_ssize_t n_cols = cols.shape[0]
    cdef Py_ssize_t n_groups = g_kind.shape[0]
    cdef uint64_t names_len = names.shape[0]
    cdef uint64_t table_end = C_HEADER + C_COLUMN * <uint64_t>(n_cols + n_groups)
    cdef uint64_t table_nbytes = plan.table_nbytes
    cdef uint64_t total
    cdef uint32_t n_rows = batch.n_rows
    cdef CopyRange* ranges = <CopyRange*>malloc(sizeof(CopyRange) * (n_runs + 1))
    cdef ReadRun* reads = <ReadRun*>malloc(sizeof(ReadRun) * (n_runs + 1))
    cdef GroupRun* groups = <GroupRun*>malloc(sizeof(GroupRun) * (n_groups + 1))
    cdef const int64_t* bounds = NULL
    cdef ColumnEntry* entry
    cdef Py_ssize_t g
    cdef uint8_t* d
    cdef const uint8_t* s
    cdef const ColumnEntry* src_table
    cdef ColumnEntry* dst_table
    cdef MessageHeader* header
    cdef Py_ssize_t r, k, j, rd
    cdef int64_t delta
    if ranges == NULL or reads == NULL or groups == NULL:
        free(ranges)
        free(reads)
        free(groups)
        raise MemoryError()
    if read_bounds.shape[0]:
        bounds = &read_bounds[0]
    try:
        if name_offsets.shape[0] != n_cols + n_groups:
            raise ValueError("plan is inconsistent: a name offset per column")
        total = plan_ranges(plan, batch, ranges, reads, n_runs, groups)
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
            header.n_columns = n_cols + n_groups
            header.names_nbytes = names_len
            header.flags = 0
            header.total_nbytes = total
            dst_table = <ColumnEntry*>(d + C_HEADER)
            j = 0
            for r in range(n_runs):
                delta = <int64_t>ranges[r].dst_start - <int64_t>ranges[r].src_start
                rd = run_read[r]
                for k in range(run_lengths[r]):
                    memcpy(&dst_table[j], &src_table[cols[j]], sizeof(ColumnEntry))
                    dst_table[j].name_offset = name_offsets[j]
                    if rd < 0:
                        dst_table[j].data_offset = <uint64_t>(<int64_t>dst_table[j].data_offset + delta)
                    else:
                        dst_table[j].dtype = <uint8_t>read_code[rd]
                        dst_table[j].width = <uint32_t>read_width[rd]
                        dst_table[j].n_values = reads[r].rows * <uint64_t>read_width[rd]
                        dst_table[j].data_offset = ranges[r].dst_start
                        dst_table[j].data_nbytes = ranges[r].nbytes
                        if read_sliced[rd]:
                            dst_table[j].flags = dst_table[j].flags | C_FLAG_SLICED
                            dst_table[j].reserved = <uint32_t>read_full[rd]
                    j += 1
            for g in range(n_groups):
                entry = &dst_table[n_cols + g]
                memset(entry, 0, sizeof(ColumnEntry))
                entry.name_offset = name_offsets[n_cols + g]
                entry.name_nbytes = <uint16_t>((name_offsets[n_cols + g + 1]
                                                if g + 1 < n_groups else names_len)
                                               - name_offsets[n_cols + g])
                entry.dtype = <uint8_t>g_code[g]
                entry.flags = C_FLAG_GROUPED | (C_FLAG_RAGGED if g_kind[g] == 0 else C_FLAG_VECTOR)
                entry.width = <uint32_t>g_width[g]
                entry.reserved = <uint32_t>g_pr[g]
                entry.n_values = groups[g].n_values
                entry.data_offset = groups[g].dst_start
                entry.data_nbytes = groups[g].nbytes
            if names_len:
                memcpy(d + table_end, &names[0], names_len)
            memset(d + table_end + names_len, 0, table_nbytes - table_end - names_len)
            for r in range(n_runs):
                rd = run_read[r]
                if rd < 0:
                    memcpy(d + ranges[r].dst_start, s + ranges[r].src_start, ranges[r].nbytes)
                else:
                    gather(d + ranges[r].dst_start, s + ranges[r].src_start, reads[r].rows,
                           <uint64_t>read_full[rd], reads[r].src_code, <uint8_t>read_code[rd],
                           bounds + 2 * read_first[rd], read_n[rd], read_sliced[rd] != 0)
                memset(d + ranges[r].dst_start + ranges[r].nbytes, 0,
                       align_up(ranges[r].nbytes) - ranges[r].nbytes)
            for g in range(n_groups):
                write_group(d + groups[g].dst_start, s, src_table, &groups[g], n_rows, g_kind[g],
                            ITEMSIZE[g_code[g]], <uint64_t>g_width[g], &g_cols[g_first[g]],
                            &g_mwidth[g_first[g]], &g_mpr[g_first[g]], g_n[g])
                memset(d + groups[g].dst_start + groups[g].nbytes, 0,
                       align_up(groups[g].nbytes) - groups[g].nbytes)
        return total
    finally:
        free(ranges)
        free(reads)
        free(groups)


cdef struct Region:
    uint64_t start
    uint64_t nbytes
    Py_ssize_t index


cdef int region_order(const void* a, const void* b) noexcept nogil:
    # The order of a stable sort by (start, nbytes): the reference's lexsort.
    cdef const Region* x = <const Region*>a
    cdef const Region* y = <const Region*>b
    if x.start != y.start:
        return -1 if x.start < y.start else 1
    if x.nbytes != y.nbytes:
        return -1 if x.nbytes < y.nbytes else 1
    return -1 if x.index < y.index else (1 if x.index > y.index else 0)


cdef Py_ssize_t first_overlap(Region* regions, Py_ssize_t n) noexcept nogil:
    """Index i in sorted order where region i + 1 starts inside region i; -1 if none."""
    cdef Py_ssize_t i
    for i in range(n - 1):
        if region_order(&regions[i], &regions[i + 1]) > 0:
            qsort(regions, n, sizeof(Region), region_order)
            break
    for i in range(n - 1):
        if regions[i + 1].start < regions[i].start + regions[i].nbytes:
            return i
    return -1


cdef int check_slice(const uint8_t* base, str name, uint64_t offset, uint64_t prefix,
                     uint64_t width, uint64_t full) except -1:
    """A sliced column's ranges (rule batch.sliced)."""
    cdef uint32_t pair[2]
    cdef int64_t prev = -1
    cdef uint64_t i, total = 0
    if full <= width:
        raise ValueError(f"column {name!r}: sliced from {full} positions but carries {width}")
    if prefix < C_RANGE or prefix % C_RANGE or prefix // C_RANGE > width:
        raise ValueError(f"column {name!r}: a sliced column's ranges take {prefix} bytes, "
                         f"not a multiple of {C_RANGE} from {C_RANGE} to {C_RANGE * width}")
    for i in range(prefix // C_RANGE):
        memcpy(pair, base + offset + C_RANGE * i, C_RANGE)
        if not (prev < <int64_t>pair[0] and pair[0] < pair[1] and pair[1] <= full):
            pairs = np.frombuffer(bytes(base[offset:offset + prefix]), "<u4").reshape(-1, 2)
            raise ValueError(f"column {name!r}: ranges {pairs.tolist()} are not sorted, "
                             f"disjoint, non-adjacent and within [0, {full}]")
        prev = pair[1]
        total += pair[1] - pair[0]
    if total != width:
        pairs = np.frombuffer(bytes(base[offset:offset + prefix]), "<u4").reshape(-1, 2)
        raise ValueError(f"column {name!r}: ranges {pairs.tolist()} hold {total} positions, "
                         f"width says {width}")
    return 0


cdef int check_group(str name, uint8_t flags, uint32_t width, uint32_t reserved) except -1:
    """A grouped column's flags, width, reserved field and name (rule batch.grouped-valid)."""
    if flags & (C_FLAG_PER_REQUEST | C_FLAG_SLICED):
        raise ValueError(f"column {name!r}: a grouped column is neither per-request nor sliced")
    if not flags & (C_FLAG_RAGGED | C_FLAG_VECTOR):
        raise ValueError(f"column {name!r}: a grouped column is ragged (jagged) or a vector (dense)")
    members = len(parse_group_name(name))
    if flags & C_FLAG_RAGGED:
        if width != members or reserved > width:
            raise ValueError(f"column {name!r}: a jagged group of {members} members says "
                             f"width {width}, per-request {reserved}")
    elif members > width or reserved != 0:
        raise ValueError(f"column {name!r}: a dense group of {members} members says width "
                         f"{width}, reserved {reserved}")
    return 0


cdef list validate(const uint8_t* base, uint64_t length, MessageHeader* header):
    """Check a whole message; returns its column names, in table order.

    Every range in the column table is checked against the message, so views
    built from it are in bounds. Raises ValueError naming the first problem.
    """
    cdef ColumnEntry col
    cdef uint64_t table_end, names_end, data_start, rows, itemsize, expect, offsets_nbytes
    cdef uint64_t n_cols, i, total
    cdef int64_t off, prev
    cdef uint64_t r
    cdef Py_ssize_t bad
    cdef Region* regions
    cdef uint8_t grouped
    if length < C_HEADER:
        raise ValueError(f"truncated message: {length} bytes, the header alone is {C_HEADER}")
    memcpy(header, base, sizeof(MessageHeader))
    if header.magic[:4] != MAGIC:
        raise ValueError(f"not a trimmer message: magic {bytes(header.magic[:4])!r}, expected {MAGIC!r}")
    if header.version != C_VERSION:
        raise ValueError(f"unsupported message version {header.version} (this build reads {C_VERSION})")
    if header.header_nbytes != C_HEADER:
        raise ValueError(f"bad header size {header.header_nbytes} for version {C_VERSION}")
    if header.flags != 0:
        raise ValueError(f"header flags {header.flags:#x} are reserved and must be 0")
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
    names = []
    seen = set()
    for i in range(n_cols):
        memcpy(&col, base + C_HEADER + C_COLUMN * i, sizeof(ColumnEntry))
        if col.name_offset > header.names_nbytes or col.name_nbytes > header.names_nbytes - col.name_offset:
            raise ValueError(f"column {i}: name runs past the names region")
        try:
            name = PyUnicode_DecodeUTF8(<const char*>base + table_end + col.name_offset,
                                        col.name_nbytes, NULL)
        except UnicodeDecodeError:
            raise ValueError(f"column {i}: name is not valid UTF-8") from None
        if not name:
            raise ValueError(f"column {i}: empty name")
        if name in seen:
            raise ValueError(f"duplicate column {name!r}")
        seen.add(name)
        names.append(name)
        if not wire_code(col.dtype):
            raise ValueError(f"column {name!r}: unknown dtype code {col.dtype}")
        if col.flags & ~C_KNOWN_FLAGS:
            raise ValueError(f"column {name!r}: unknown flags {col.flags:#x}")
        if (col.flags & C_FLAG_RAGGED) and (col.flags & C_FLAG_VECTOR):
            raise ValueError(f"column {name!r}: a ragged column cannot be a vector")
        if (col.flags & C_FLAG_SLICED) and not (col.flags & C_FLAG_VECTOR):
            raise ValueError(f"column {name!r}: only a vector column can be sliced")
        grouped = col.flags & C_FLAG_GROUPED
        if grouped:
            check_group(name, col.flags, col.width, col.reserved)
        elif col.width == 0 or (col.width != 1 and not (col.flags & C_FLAG_VECTOR)):
            raise ValueError(f"column {name!r}: bad width {col.width}")
        if col.reserved != 0 and not (col.flags & C_FLAG_SLICED) and not grouped:
            raise ValueError(f"column {name!r}: reserved field is {col.reserved}, must be 0")
        if col.data_offset < data_start or col.data_offset % C_ALIGN:
            raise ValueError(f"column {name!r}: data offset {col.data_offset} is misplaced")
        if col.data_offset > total or col.data_nbytes > total - col.data_offset:
            raise ValueError(f"column {name!r}: data ({col.data_nbytes} bytes at {col.data_offset}) "
                             f"runs past the end of the {total}-byte message")
        itemsize = wire_itemsize(col.dtype)
        rows = 1 if col.flags & C_FLAG_PER_REQUEST else header.n_rows
        if col.flags & C_FLAG_RAGGED and grouped:
            # A jagged group's lists: (members - per-request) x rows + per-request,
            # below 2**64 since both factors are below 2**32.
            rows = (<uint64_t>col.width - col.reserved) * header.n_rows + col.reserved
            if rows >= col.data_nbytes // 8:
                raise ValueError(f"column {name!r}: {col.data_nbytes} bytes cannot hold "
                                 f"{rows} lists' offsets")
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
            if col.flags & C_FLAG_SLICED:
                expect = col.data_nbytes
                check_slice(base, name, col.data_offset, col.data_nbytes - col.n_values * itemsize,
                            col.width, col.reserved)
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
        regions = <Region*>malloc(sizeof(Region) * n_cols)
        if regions == NULL:
            raise MemoryError()
        try:
            for i in range(n_cols):
                memcpy(&col, base + C_HEADER + C_COLUMN * i, sizeof(ColumnEntry))
                regions[i].start = col.data_offset
                regions[i].nbytes = col.data_nbytes
                regions[i].index = i
            bad = first_overlap(regions, n_cols)
            if bad >= 0:
                a, b = names[regions[bad].index], names[regions[bad + 1].index]
                raise ValueError(f"columns {a!r} and {b!r} overlap")
        finally:
            free(regions)
    return names


def parse(buf):
    """Validate a message and return ``(n_rows, table, names)``.

    ``table`` is a copy of the column table (COLUMN_DTYPE); every range in it
    has been checked against the message, so views built from it are in
    bounds. Raises ValueError naming the first problem found.
    """
    cdef const uint8_t[::1] mv = readable_bytes(buf)
    cdef MessageHeader header
    if mv.shape[0] == 0:
        raise ValueError(f"truncated message: 0 bytes, the header alone is {C_HEADER}")
    names = validate(&mv[0], mv.shape[0], &header)
    table = np.frombuffer(buf, dtype=np.uint8, count=C_COLUMN * header.n_columns,
                          offset=C_HEADER).view(COLUMN_DTYPE).copy()
    return header.n_rows, table, names


# -- decode: the views built here, one numpy C-API call per array ---------------

cdef extern from "numpy/arrayobject.h":
    object new_array_from_descr "PyArray_NewFromDescr" (
        PyTypeObject* subtype, cnp.PyArray_Descr* descr, int nd, cnp.npy_intp* dims,
        cnp.npy_intp* strides, void* data, int flags, PyObject* obj)

DTYPES = [CODE_DTYPES.get(code) for code in range(256)]   # every value of the u8 dtype field
DTYPE_NAMES = [CODE_NAMES.get(code) for code in range(256)]
OFFSETS = np.dtype("<i8")
NO_SHAPE = ()


cdef packed struct LayoutKeyEntry:
    # Must match LAYOUT_KEY_DTYPE in _trim/decoded.py; the column's name follows it.
    uint8_t dtype
    uint8_t flags
    uint32_t width
    uint16_t name_nbytes


cdef inline uint64_t slice_prefix(const ColumnEntry* col) noexcept nogil:
    """Bytes of a (validated) sliced column's ranges."""
    return col.data_nbytes - col.n_values * wire_itemsize(col.dtype)


cdef bytes layout_key(const uint8_t* base, uint64_t n_cols, uint64_t names_start):
    cdef ColumnEntry col
    cdef LayoutKeyEntry entry
    cdef uint64_t i, size = 0
    cdef char* out
    for i in range(n_cols):
        memcpy(&col, base + C_HEADER + C_COLUMN * i, sizeof(ColumnEntry))
        size += sizeof(LayoutKeyEntry) + col.name_nbytes
        if col.flags & C_FLAG_SLICED:
            size += 4 + slice_prefix(&col)
        elif col.flags & C_FLAG_GROUPED:
            size += 4
    key = PyBytes_FromStringAndSize(NULL, size)
    out = PyBytes_AS_STRING(key)
    for i in range(n_cols):
        memcpy(&col, base + C_HEADER + C_COLUMN * i, sizeof(ColumnEntry))
        entry.dtype, entry.flags, entry.width = col.dtype, col.flags, col.width
        entry.name_nbytes = col.name_nbytes
        memcpy(out, &entry, sizeof(LayoutKeyEntry))
        out += sizeof(LayoutKeyEntry)
        memcpy(out, base + names_start + col.name_offset, col.name_nbytes)
        out += col.name_nbytes
        if col.flags & C_FLAG_SLICED:
            # The full width and the ranges: equal keys, equal slices.
            memcpy(out, &col.reserved, 4)
            memcpy(out + 4, base + col.data_offset, slice_prefix(&col))
            out += 4 + slice_prefix(&col)
        elif col.flags & C_FLAG_GROUPED:
            memcpy(out, &col.reserved, 4)   # a jagged group's per-request members
            out += 4
    return key


cdef object array_view(cnp.ndarray raw, int flags, object dtype, uint64_t offset,
                       int nd, cnp.npy_intp d0, cnp.npy_intp d1):
    """A view on ``raw`` at byte ``offset``, whose lifetime keeps ``raw`` alive."""
    cdef cnp.npy_intp[2] dims
    dims[0] = d0
    dims[1] = d1
    Py_INCREF(dtype)  # PyArray_NewFromDescr steals a reference to the descriptor
    arr = new_array_from_descr(<PyTypeObject*>cnp.ndarray, <cnp.PyArray_Descr*>dtype, nd, dims,
                               NULL, <char*>cnp.PyArray_DATA(raw) + offset, flags, NULL)
    cnp.set_array_base(arr, raw)
    return arr


def decode(buf):
    """Validate a message and return its `Decoded` views, as
    ``build_views(buf, *parse(buf))`` does, without a Python step per column."""
    cdef cnp.ndarray raw = np.frombuffer(buf, dtype=np.uint8)
    cdef MessageHeader header
    cdef ColumnEntry col
    cdef uint64_t rows, i
    cdef bint per_request
    cdef int flags = cnp.NPY_ARRAY_C_CONTIGUOUS
    if cnp.PyArray_ISWRITEABLE(raw):
        flags |= cnp.NPY_ARRAY_WRITEABLE
    if raw.shape[0] == 0:
        raise ValueError(f"truncated message: 0 bytes, the header alone is {C_HEADER}")
    cdef const uint8_t* base = <const uint8_t*>cnp.PyArray_DATA(raw)
    names = validate(base, raw.shape[0], &header)
    columns, specs, per_request_names, slices, groups = {}, {}, [], None, None
    cdef uint64_t prefix
    for i in range(header.n_columns):
        memcpy(&col, base + C_HEADER + C_COLUMN * i, sizeof(ColumnEntry))
        name = names[i]
        dtype = DTYPES[col.dtype]
        per_request = col.flags & C_FLAG_PER_REQUEST
        rows = 1 if per_request else header.n_rows
        if per_request:
            per_request_names.append(name)
        if col.flags & C_FLAG_GROUPED:
            if groups is None:
                groups = {}
            groups[name] = received_group((col.flags & C_FLAG_RAGGED) != 0, name, col.reserved)
            if col.flags & C_FLAG_RAGGED:
                rows = (<uint64_t>col.width - col.reserved) * header.n_rows + col.reserved
        if col.flags & C_FLAG_RAGGED:
            offsets = array_view(raw, flags, OFFSETS, col.data_offset, 1, rows + 1, 0)
            values = array_view(raw, flags, dtype, col.data_offset + 8 * (rows + 1), 1,
                                col.n_values, 0)
            columns[name] = Ragged(values, offsets)
            specs[name] = (DTYPE_NAMES[col.dtype], NO_SHAPE, True, per_request)
        elif col.flags & C_FLAG_SLICED:
            prefix = slice_prefix(&col)
            pairs = np.frombuffer(raw, "<u4", prefix // 4, col.data_offset).tolist()
            if slices is None:
                slices = {}
            slices[name] = (col.reserved, tuple(zip(pairs[0::2], pairs[1::2])))
            columns[name] = array_view(raw, flags, dtype, col.data_offset + prefix, 2, rows,
                                       col.width)
            specs[name] = (DTYPE_NAMES[col.dtype], (col.width,), False, per_request)
        elif col.flags & C_FLAG_VECTOR:
            columns[name] = array_view(raw, flags, dtype, col.data_offset, 2, rows, col.width)
            specs[name] = (DTYPE_NAMES[col.dtype], (col.width,), False, per_request)
        else:
            columns[name] = array_view(raw, flags, dtype, col.data_offset, 1, rows, 0)
            specs[name] = (DTYPE_NAMES[col.dtype], NO_SHAPE, False, per_request)
    key = layout_key(base, header.n_columns, C_HEADER + C_COLUMN * header.n_columns)
    return Decoded(header.n_rows, header.total_nbytes, columns, frozenset(per_request_names), specs,
                   key, slices, groups)
