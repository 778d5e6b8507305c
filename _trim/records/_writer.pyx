# cython: language_level=3
"""The bulk load's hot loops, compiled: records written in place, in one pass.

A `RecordWriter` knows where everything goes in one layout's records
(_trim/records/layout.py: a fixed part, then each ragged field's values padded
to 8 bytes) and what fills each place:

    runs      float32 columns of synthetic values, each a function of its
              row's key and its column's key: the uniform draw and the
              profile's mapping that _trim/records/writer_reference.py defines with
              numpy (`uniform`, `draw_values`, `dense_values`), in float32 with
              the same operations in the same order, so the same bits
    id lists  ragged fields of synthetic ids, drawn here as the reference's
              `list_offsets`, `element_uniforms` and `draw_ids` draw them in
              float64: a length per row, then a Zipf-like rank per element
    given     everything else: fixed-part columns and ragged fields whose
              values the caller computed (numpy) or read (`trimmer store load`)

and zeros in every byte of the fixed part that none of them covers and in
each segment's padding. `chunk` sizes a chunk's records (their ragged
lengths first) and allocates their one buffer; `Chunk.write` fills rows
``lo:hi`` of it with the GIL released, so threads fill parts of one chunk.
Each byte of the records is written once: no fixed-part array, no copy of it.
The numpy definitions (writer_reference.py, ``TRIMMER_IMPL=reference``)
must give the same records bit for bit (tests/trim/test_load.py).
"""
cimport numpy as cnp
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.math cimport ceil, floor
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

import numpy as np

cnp.import_array()

cdef extern from "_writer_values.h" nogil:
    void trim_values_row(uint32_t row, const uint32_t* cols, Py_ssize_t m, float cold,
                         const float* p0, const float* a, const float* b, const float* c,
                         const float* q, const float* deflt, float* dst)
    void trim_dense_row(uint32_t row, const uint32_t* cols, Py_ssize_t m, float keep,
                        const float* scale, float* dst)

cdef int64_t MAX_LIST_COUNT = 0xFFFFFFFF   # a ragged length is a uint32 in the fixed part


cdef struct Run:
    Py_ssize_t at, m            # byte offset in the fixed part, float32 columns
    const uint32_t* cols
    const float* p0
    const float* a
    const float* b
    const float* c
    const float* q
    const float* deflt
    const float* scale
    bint dense


cdef struct List:
    Py_ssize_t count_at         # the uint32 length's offset in the fixed part
    uint64_t itemsize
    bint drawn                  # ids drawn here; else values given per chunk
    bint to_bool                # drawn ids stored as bool (rank != 0), else truncated
    uint32_t length_key
    uint32_t field_key
    double empty
    const uint32_t* element_keys
    Py_ssize_t max_len
    uint64_t vocab
    bint hashed


cdef struct Span:
    Py_ssize_t at, nbytes


cdef inline double uniform64(uint32_t h) noexcept nogil:
    # the reference's uniform into float64: (h * M1 >> 8) * 2**-24, exact
    return <double>((h * <uint32_t>0x85EBCA6B) >> 8) * (1.0 / (1 << 24))


cdef inline int64_t drawn_length(const List* li, uint32_t key, float cold) noexcept nogil:
    cdef double w = uniform64(key ^ li.length_key) - li.empty
    cdef double length
    if w < 0:
        w = 0
    w = w / (1 - li.empty)
    length = ceil(6 * w / (1.00001 - w))
    if length > li.max_len:
        length = li.max_len
    if cold > 0:
        return 0
    return <int64_t>length


cdef inline void draw_ids(const List* li, uint32_t key, int64_t count, uint8_t* dst) noexcept nogil:
    cdef int64_t k
    cdef double u, w
    cdef uint64_t rank
    cdef uint32_t r32
    cdef uint16_t r16
    for k in range(count):
        u = uniform64(key + li.element_keys[k])
        w = floor(u / (1.00001 - u))
        if w > <double>(li.vocab - 1):
            w = <double>(li.vocab - 1)
        rank = <uint64_t>w
        if li.hashed:
            rank = (rank * <uint64_t>0x9E3779B97F4A7C15 + li.field_key) & ((<uint64_t>1 << 40) - 1)
        if li.to_bool:
            dst[k] = rank != 0
        elif li.itemsize == 8:
            memcpy(dst + 8 * k, &rank, 8)
        elif li.itemsize == 4:
            r32 = <uint32_t>rank
            memcpy(dst + 4 * k, &r32, 4)
        elif li.itemsize == 2:
            r16 = <uint16_t>rank
            memcpy(dst + 2 * k, &r16, 2)
        else:
            dst[k] = <uint8_t>rank


PARAMS = ("p0", "a", "b", "c", "q", "default", "scale_q2")   # a profile's, per column (synth.py)


cdef inline const float* first(const float[::1] v):
    return &v[0] if v.shape[0] else NULL


def _place(covered, at, nbytes, what):
    if at < 0 or nbytes < 0 or at + nbytes > len(covered):
        raise ValueError(f"RecordWriter: {what} at {at}+{nbytes} is outside the "
                         f"{len(covered)}-byte fixed part")
    covered[at:at + nbytes] = True


cdef class RecordWriter:
    """Where each part of one layout's records comes from (module docstring).

    ``size``: the fixed part's bytes. ``runs``: ``(offset, column keys uint32,
    params, dense)`` per run of float32 columns, params synth.py's per-column
    float32 arrays (p0, a, b, c, q, default, scale_q2). ``lists``: per ragged
    field in layout order, ``(name, count offset, item size)`` for given
    values, or ``(name, count offset, item size, as bool, length key, empty
    fraction, element keys uint32, vocabulary, hashed, field key)`` for ids
    drawn here. ``columns``: ``(offset, nbytes)`` of given fixed-part columns."""

    cdef readonly Py_ssize_t size
    cdef Run* runs
    cdef List* lists
    cdef Span* columns
    cdef Span* zeros
    cdef Py_ssize_t n_runs, n_lists, n_columns, n_zeros
    cdef list names
    cdef list keep     # the arrays the structs point into

    # (tp_alloc zeroes the object: the pointers start NULL)
    def __dealloc__(self):
        PyMem_Free(self.runs)
        PyMem_Free(self.lists)
        PyMem_Free(self.columns)
        PyMem_Free(self.zeros)

    def __init__(self, Py_ssize_t size, runs, lists, columns):
        cdef Py_ssize_t k, i
        cdef Run* r
        cdef List* li
        cdef const uint32_t[::1] keys
        if size < 0 or size % 8:
            raise ValueError(f"RecordWriter: a fixed part of {size} bytes (a multiple of 8)")
        self.size = size
        self.keep = []
        self.names = []
        self.n_runs, self.n_lists, self.n_columns = len(runs), len(lists), len(columns)
        self.runs = <Run*>PyMem_Calloc(max(1, self.n_runs), sizeof(Run))
        self.lists = <List*>PyMem_Calloc(max(1, self.n_lists), sizeof(List))
        self.columns = <Span*>PyMem_Calloc(max(1, self.n_columns), sizeof(Span))
        if self.runs == NULL or self.lists == NULL or self.columns == NULL:
            raise MemoryError()
        covered = np.zeros(size, dtype=np.bool_)
        for k, (at, cols, params, dense) in enumerate(runs):
            r = &self.runs[k]
            keys = np.ascontiguousarray(cols, dtype=np.uint32)
            r.at, r.m, r.dense = at, keys.shape[0], dense
            _place(covered, at, 4 * r.m, f"run {k}")
            if at % 4:
                raise ValueError(f"RecordWriter: run {k} at {at} is not float32-aligned")
            r.cols = &keys[0] if r.m else NULL
            self.keep.append(keys)
            got = [np.ascontiguousarray(params[name], dtype=np.float32) for name in PARAMS]
            for name, arr in zip(PARAMS, got):
                if arr.shape[0] != r.m:
                    raise ValueError(f"RecordWriter: run {k}: {arr.shape[0]} {name} for {r.m} columns")
            self.keep += got
            r.p0, r.a, r.b, r.c = first(got[0]), first(got[1]), first(got[2]), first(got[3])
            r.q, r.deflt, r.scale = first(got[4]), first(got[5]), first(got[6])
        for k, spec in enumerate(lists):
            li = &self.lists[k]
            name, li.count_at, li.itemsize = spec[0], spec[1], spec[2]
            self.names.append(name)
            _place(covered, li.count_at, 4, f"{name}'s length")
            if li.itemsize not in (1, 2, 4, 8):
                raise ValueError(f"RecordWriter: {name}: item size {li.itemsize}")
            li.drawn = len(spec) > 3
            if li.drawn:
                (li.to_bool, li.length_key, li.empty, element_keys, li.vocab, li.hashed,
                 li.field_key) = spec[3:]
                keys = np.ascontiguousarray(element_keys, dtype=np.uint32)
                if li.vocab < 1 or keys.shape[0] == 0 or (li.to_bool and li.itemsize != 1):
                    raise ValueError(f"RecordWriter: {name}: a vocabulary of >= 1, element "
                                     "keys, bools of one byte")
                li.max_len = keys.shape[0]
                li.element_keys = &keys[0]
                self.keep.append(keys)
        for k, (at, nbytes) in enumerate(columns):
            self.columns[k].at, self.columns[k].nbytes = at, nbytes
            _place(covered, at, nbytes, f"column {k}")
        # What no one writes (alignment gaps, the padding to 8): zeros, as
        # the numpy reference's np.zeros leaves them.
        edges = np.flatnonzero(np.diff(np.concatenate([[True], covered, [True]]).astype(np.int8)))
        gaps = edges.reshape(-1, 2)
        self.n_zeros = len(gaps)
        self.zeros = <Span*>PyMem_Calloc(max(1, self.n_zeros), sizeof(Span))
        if self.zeros == NULL:
            raise MemoryError()
        for i in range(self.n_zeros):
            self.zeros[i].at, self.zeros[i].nbytes = gaps[i, 0], gaps[i, 1] - gaps[i, 0]

    def chunk(self, Py_ssize_t n, keys, cold, given_lists, given_columns):
        """A chunk of ``n`` records, sized and allocated, not yet written.
        ``keys`` (uint32) and ``cold`` (float32, 1 for a cold row): a row's
        keys, for runs and drawn lists (None when there are none);
        ``given_lists``: (values, offsets int64 (n + 1)) per given list in
        order, values an array of the field's dtype; ``given_columns``: per
        column an (n, nbytes) uint8 array."""
        return Chunk(self, n, keys, cold, given_lists, given_columns)


cdef class Chunk:
    """Records of one chunk: `write` rows ``lo:hi`` (any thread, any order),
    `result` once every row is written."""

    cdef RecordWriter w
    cdef Py_ssize_t n
    cdef object buffer, record_offsets, counts
    cdef uint8_t* buf
    cdef const int64_t* ro
    cdef const int64_t* cnt
    cdef const uint32_t* keys
    cdef const float* cold
    cdef const uint8_t** values
    cdef const int64_t** value_offsets
    cdef const uint8_t** column_data
    cdef list keep

    def __dealloc__(self):
        PyMem_Free(self.values)
        PyMem_Free(self.value_offsets)
        PyMem_Free(self.column_data)

    def __init__(self, RecordWriter w, Py_ssize_t n, keys, cold, given_lists, given_columns):
        cdef Py_ssize_t i, k, g = 0, nl = w.n_lists
        cdef const uint32_t[::1] kv
        cdef const float[::1] cv
        cdef const int64_t[::1] offs
        cdef const uint8_t[::1] vals
        cdef const uint8_t[:, ::1] col
        cdef int64_t[:, ::1] cnt
        cdef int64_t[::1] ro
        cdef int64_t c
        cdef uint64_t total = 0, nvals
        cdef List* li
        cdef Py_ssize_t n_drawn = 0
        self.w, self.n, self.keep = w, n, []
        if n < 0:
            raise ValueError("a negative number of records")
        for k in range(nl):
            n_drawn += w.lists[k].drawn
        if w.n_runs or n_drawn:
            kv = np.ascontiguousarray(keys, dtype=np.uint32)
            cv = np.ascontiguousarray(cold, dtype=np.float32)
            if kv.shape[0] != n or cv.shape[0] != n:
                raise ValueError(f"{kv.shape[0]} keys and {cv.shape[0]} cold flags for {n} records")
            self.keep += [kv, cv]
            self.keys = &kv[0] if n else NULL
            self.cold = &cv[0] if n else NULL
        self.values = <const uint8_t**>PyMem_Calloc(max(1, nl), sizeof(uint8_t*))
        self.value_offsets = <const int64_t**>PyMem_Calloc(max(1, nl), sizeof(int64_t*))
        self.column_data = <const uint8_t**>PyMem_Calloc(max(1, w.n_columns), sizeof(uint8_t*))
        if self.values == NULL or self.value_offsets == NULL or self.column_data == NULL:
            raise MemoryError()
        if len(given_columns) != w.n_columns:
            raise ValueError(f"{len(given_columns)} columns given for {w.n_columns}")
        for k in range(w.n_columns):
            col = np.ascontiguousarray(given_columns[k]).view(np.uint8).reshape(n, -1) \
                if n else np.zeros((0, w.columns[k].nbytes), np.uint8)
            if col.shape[1] != w.columns[k].nbytes:
                raise ValueError(f"column {k}: {col.shape[1]} bytes a row for {w.columns[k].nbytes}")
            self.keep.append(col)
            self.column_data[k] = &col[0, 0] if n and col.shape[1] else NULL
        self.counts = np.empty((n, max(1, nl)), dtype=np.int64)
        cnt = self.counts
        if nl - n_drawn != len(given_lists):
            raise ValueError(f"{len(given_lists)} lists given for {nl - n_drawn}")
        for k in range(nl):
            li = &w.lists[k]
            if li.drawn:
                with nogil:
                    for i in range(n):
                        cnt[i, k] = drawn_length(li, self.keys[i], self.cold[i])
                continue
            name = w.names[k]
            values, offsets = given_lists[g]
            g += 1
            values = np.ascontiguousarray(values)
            if values.dtype.itemsize != li.itemsize:
                raise ValueError(f"{name}: values of {values.dtype.itemsize} bytes for "
                                 f"{li.itemsize}-byte items")
            offs = np.ascontiguousarray(offsets, dtype=np.int64)
            vals = values.view(np.uint8).reshape(-1)
            nvals = <uint64_t>vals.shape[0] // li.itemsize
            if offs.shape[0] != n + 1:
                raise ValueError(f"{name}: {offs.shape[0]} offsets for {n} records")
            if offs[0] < 0 or <uint64_t>offs[n] > nvals:
                raise ValueError(f"{name}: offsets do not fit its {nvals} values")
            for i in range(n):
                c = offs[i + 1] - offs[i]
                if c < 0:
                    raise ValueError(f"{name}: offsets do not fit its {nvals} values")
                if c > MAX_LIST_COUNT:
                    raise ValueError(f"{name}: a list longer than 2**32 - 1")
                cnt[i, k] = c
            self.keep += [offs, vals]
            self.value_offsets[k] = &offs[0]
            self.values[k] = &vals[0] if vals.shape[0] else NULL
        self.record_offsets = np.empty(n + 1, dtype=np.int64)
        ro = self.record_offsets
        ro[0] = 0
        for i in range(n):
            total += w.size
            for k in range(nl):
                total += (<uint64_t>cnt[i, k] * w.lists[k].itemsize + 7) & ~(<uint64_t>7)
            ro[i + 1] = total
        self.buffer = np.empty(total, dtype=np.uint8)
        self.buf = <uint8_t*>cnp.PyArray_DATA(self.buffer)
        self.ro = &ro[0]
        self.cnt = &cnt[0, 0]

    def write(self, Py_ssize_t lo, Py_ssize_t hi):
        """Rows ``lo:hi``, with the GIL released."""
        cdef RecordWriter w = self.w
        cdef Py_ssize_t i, k, nl = w.n_lists
        cdef uint8_t* rec
        cdef const Run* r
        cdef const List* li
        cdef uint64_t pos, seg, padded
        cdef int64_t count
        cdef uint32_t count32
        if not 0 <= lo <= hi <= self.n:
            raise ValueError(f"rows {lo}:{hi} of {self.n}")
        with nogil:
            for i in range(lo, hi):
                rec = self.buf + self.ro[i]
                for k in range(w.n_zeros):
                    memset(rec + w.zeros[k].at, 0, w.zeros[k].nbytes)
                for k in range(w.n_columns):
                    memcpy(rec + w.columns[k].at, self.column_data[k] + i * w.columns[k].nbytes,
                           w.columns[k].nbytes)
                for k in range(w.n_runs):
                    r = &w.runs[k]
                    if r.dense:
                        trim_dense_row(self.keys[i], r.cols, r.m, <float>1 - self.cold[i], r.scale,
                                       <float*>(rec + r.at))
                    else:
                        trim_values_row(self.keys[i], r.cols, r.m, self.cold[i], r.p0, r.a, r.b,
                                        r.c, r.q, r.deflt, <float*>(rec + r.at))
                pos = w.size
                for k in range(nl):
                    li = &w.lists[k]
                    count = self.cnt[i * nl + k]
                    count32 = <uint32_t>count
                    memcpy(rec + li.count_at, &count32, 4)
                    seg = <uint64_t>count * li.itemsize
                    padded = (seg + 7) & ~(<uint64_t>7)
                    if li.drawn:
                        draw_ids(li, self.keys[i], count, rec + pos)
                    elif seg:
                        memcpy(rec + pos, self.values[k] + self.value_offsets[k][i] * li.itemsize, seg)
                    memset(rec + pos + seg, 0, padded - seg)
                    pos += padded

    def result(self):
        """(buffer uint8, record offsets int64 (n + 1))."""
        return self.buffer, self.record_offsets


def pack(fixed, Py_ssize_t size, ragged):
    """Records from their fixed parts and ragged fields, as
    `RecordLayout.pack` lays them out: ``fixed`` is n x ``size`` bytes (its
    ragged counts are written here); ``ragged`` lists, per ragged field,
    ``(name, values, offsets int64, element size, count's offset in the
    fixed part)``. Returns (buffer uint8, record offsets int64 (n + 1))."""
    src = np.ascontiguousarray(fixed).view(np.uint8).reshape(-1)
    if size <= 0 or src.shape[0] % size:
        raise ValueError("pack: fixed parts are not a whole number of records")
    n = src.shape[0] // size
    writer = RecordWriter(size, [], [(name, at, itemsize) for name, _, _, itemsize, at in ragged],
                          [(0, size)])
    chunk = writer.chunk(n, None, None, [(values, offsets) for _, values, offsets, _, _ in ragged],
                         [src.reshape(n, size)])
    chunk.write(0, n)
    return chunk.result()
