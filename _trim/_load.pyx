# cython: language_level=3
"""The bulk load's hot loops: synthetic values and record packing, compiled.

`float_values` fills a run of float32 columns of many records, each value a
function of its row's key and its column's key: the uniform draw and the
profile's mapping that rootproc/synth.py defines with numpy (`_uniform`,
`_values`, `_dense_values`), computed here in float32 with the same
operations in the same order, so the same bits (tests/store/test_synth.py
compares them), in one pass over memory instead of a dozen.

`pack` lays records out as rootproc/records.py defines them (fixed part,
then each ragged field's values padded to 8 bytes), one pass over the
bytes, no Python per record. Both run with the GIL released.
"""
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport ceil, floor
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

import numpy as np

cnp.import_array()

cdef extern from "_load_values.h" nogil:
    void trim_values_row(uint32_t row, const uint32_t* cols, Py_ssize_t m, float cold,
                         const float* p0, const float* a, const float* b, const float* c,
                         const float* q, const float* deflt, float* dst)
    void trim_dense_row(uint32_t row, const uint32_t* cols, Py_ssize_t m, float keep,
                        const float* scale, float* dst)


def float_values(const uint32_t[::1] rows, const uint32_t[::1] cols, const float[::1] cold,
                 params, out, bint dense):
    """``out[i, j]`` (a float32 (rows, cols) view whose rows may be strided)
    for row key ``rows[i]`` and column key ``cols[j]``; ``cold[i]`` is 1 for a
    cold row. ``params``: synth's per-column float32 arrays (p0, a, b, c, q,
    default, scale_q2)."""
    cdef cnp.ndarray arr = out
    cdef const float[::1] p0 = params["p0"]
    cdef const float[::1] pa = params["a"]
    cdef const float[::1] pb = params["b"]
    cdef const float[::1] pc = params["c"]
    cdef const float[::1] pq = params["q"]
    cdef const float[::1] default = params["default"]
    cdef const float[::1] scale = params["scale_q2"]
    cdef Py_ssize_t n = rows.shape[0], m = cols.shape[0], i, j
    cdef Py_ssize_t stride
    cdef char* base
    cdef float* dst
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] != m \
            or cold.shape[0] != n or not arr.flags.writeable or arr.strides[1] != 4:
        raise ValueError("float_values: out must be a writable float32 (rows, cols) view "
                         "with contiguous rows, cold one per row")
    if not (p0.shape[0] == pa.shape[0] == pb.shape[0] == pc.shape[0] == pq.shape[0]
            == default.shape[0] == scale.shape[0] == m):
        raise ValueError("float_values: one parameter per column")
    if n == 0 or m == 0:
        return
    base = <char*>cnp.PyArray_DATA(arr)
    stride = arr.strides[0]
    with nogil:
        for i in range(n):
            dst = <float*>(base + i * stride)
            if dense:
                trim_dense_row(rows[i], &cols[0], m, <float>1 - cold[i], &scale[0], dst)
            else:
                trim_values_row(rows[i], &cols[0], m, cold[i], &p0[0], &pa[0], &pb[0], &pc[0],
                                &pq[0], &default[0], dst)


def pack(fixed, uint64_t size, ragged):
    """Records from their fixed parts and ragged fields, as
    `RecordLayout.pack` lays them out: ``fixed`` is n x ``size`` bytes (its
    ragged counts are written here); ``ragged`` lists, per ragged field,
    ``(values as uint8, offsets int64, element size, count's offset in the
    fixed part)``. Returns (buffer uint8, record offsets int64 (n + 1))."""
    cdef const uint8_t[::1] src = np.ascontiguousarray(fixed).view(np.uint8).reshape(-1)
    cdef Py_ssize_t n = src.shape[0] // size if size else 0
    cdef Py_ssize_t nr = len(ragged), i, k
    cdef uint64_t total = 0, seg, count
    cdef uint32_t count32
    if size == 0 or <uint64_t>src.shape[0] != n * size:
        raise ValueError("pack: fixed parts are not a whole number of records")
    counts = np.empty((n, nr), dtype=np.int64)
    cdef int64_t[:, ::1] cnt = counts
    cdef int64_t[::1] offs
    cdef uint64_t[::1] sizes = np.array([r[2] for r in ragged], dtype=np.uint64)
    cdef uint64_t[::1] len_at = np.array([r[3] for r in ragged], dtype=np.uint64)
    views = []
    for k, (values, offsets, itemsize, at) in enumerate(ragged):
        offs = np.ascontiguousarray(offsets, dtype=np.int64)
        vals = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
        if offs.shape[0] != n + 1:
            raise ValueError(f"pack: ragged field {k}: {offs.shape[0]} offsets for {n} records")
        if at + 4 > size or itemsize not in (1, 2, 4, 8):
            raise ValueError(f"pack: ragged field {k}: bad layout")
        for i in range(n):
            if offs[i + 1] < offs[i]:
                raise ValueError(f"pack: ragged field {k}: offsets decrease")
            cnt[i, k] = offs[i + 1] - offs[i]
            if cnt[i, k] > 0xFFFFFFFF:
                raise ValueError(f"pack: ragged field {k}: a list longer than 2**32 - 1")
        if offs[0] < 0 or <uint64_t>offs[n] * itemsize > <uint64_t>vals.shape[0]:
            raise ValueError(f"pack: ragged field {k}: offsets do not fit its "
                             f"{vals.shape[0] // itemsize} values")
        views.append((vals, offs))
    record_offsets = np.empty(n + 1, dtype=np.int64)
    cdef int64_t[::1] ro = record_offsets
    ro[0] = 0
    for i in range(n):
        total += size
        for k in range(nr):
            total += (<uint64_t>cnt[i, k] * sizes[k] + 7) & ~(<uint64_t>7)
        ro[i + 1] = total
    out = np.empty(total, dtype=np.uint8)
    cdef uint8_t[::1] dst = out
    cdef const uint8_t** vptr = <const uint8_t**>PyMem_Malloc((nr + 1) * sizeof(uint8_t*))
    cdef const int64_t** optr = <const int64_t**>PyMem_Malloc((nr + 1) * sizeof(int64_t*))
    cdef const uint8_t[::1] vv
    cdef const int64_t[::1] ov
    cdef uint8_t* rec
    cdef uint64_t pos
    if vptr == NULL or optr == NULL:
        PyMem_Free(vptr)
        PyMem_Free(optr)
        raise MemoryError()
    try:
        for k in range(nr):
            vv = views[k][0]
            ov = views[k][1]
            vptr[k] = &vv[0] if vv.shape[0] else NULL
            optr[k] = &ov[0]
        if total:
            with nogil:
                for i in range(n):
                    rec = &dst[0] + ro[i]
                    memcpy(rec, &src[0] + i * size, size)
                    pos = size
                    for k in range(nr):
                        count = cnt[i, k]
                        count32 = <uint32_t>count
                        memcpy(rec + len_at[k], &count32, 4)
                        seg = count * sizes[k]
                        if seg:
                            memcpy(rec + pos, vptr[k] + optr[k][i] * sizes[k], seg)
                        memset(rec + pos + seg, 0, ((seg + 7) & ~(<uint64_t>7)) - seg)
                        pos += (seg + 7) & ~(<uint64_t>7)
    finally:
        PyMem_Free(vptr)
        PyMem_Free(optr)
    return out, record_offsets


cdef inline double uniform64(uint32_t h) noexcept nogil:
    # synth's _uniform into float64: (h * M1 >> 8) * 2**-24, exact
    return <double>((h * <uint32_t>0x85EBCA6B) >> 8) * (1.0 / (1 << 24))


def ragged_ids(const uint32_t[::1] keys, const float[::1] cold, uint32_t length_key,
               double empty, const uint32_t[::1] element_keys, uint64_t vocab, bint hashed,
               uint32_t field_key):
    """(values int64, offsets int64) of an id-list field, as rootproc/synth.py's
    `_ragged` and `_ids` compute them in float64: a length per row from its
    key, then a Zipf-like rank per element (spread over 40 bits when
    ``hashed``)."""
    cdef Py_ssize_t n = keys.shape[0], i, k
    cdef double u, w, length
    cdef uint64_t rank
    cdef int64_t total = 0
    if cold.shape[0] != n or vocab < 1:
        raise ValueError("ragged_ids: one cold flag per row, a vocabulary of >= 1")
    offsets = np.empty(n + 1, dtype=np.int64)
    cdef int64_t[::1] offs = offsets
    cdef Py_ssize_t max_len = element_keys.shape[0]
    with nogil:
        offs[0] = 0
        for i in range(n):
            u = uniform64(keys[i] ^ length_key)
            w = u - empty
            if w < 0:
                w = 0
            w = w / (1 - empty)
            length = ceil(6 * w / (1.00001 - w))
            if length > max_len:
                length = max_len
            if cold[i] > 0:
                length = 0
            total += <int64_t>length
            offs[i + 1] = total
    values = np.empty(total, dtype=np.int64)
    cdef int64_t[::1] out = values
    with nogil:
        for i in range(n):
            for k in range(offs[i + 1] - offs[i]):
                u = uniform64(keys[i] + element_keys[k])
                w = floor(u / (1.00001 - u))
                if w > <double>(vocab - 1):
                    w = <double>(vocab - 1)
                rank = <uint64_t>w
                if hashed:
                    rank = (rank * <uint64_t>0x9E3779B97F4A7C15 + field_key) & ((<uint64_t>1 << 40) - 1)
                out[offs[i] + k] = <int64_t>rank
    return values, offsets
