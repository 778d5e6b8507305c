# cython: language_level=3
"""The record program: raw feature-store records to a columnar batch, in one compiled pass.

A `RecordProgram` is compiled once per (feature set, store layouts) from the
steps the root's preprocessor resolves (rootproc/preprocess/steps.py): where
each raw field lies in a record, which transform applies in which dtype, and
which batch column it fills. `build` then takes a request's records, checks
them, sizes the batch and fills every byte of its column data with the GIL
released: no Python per feature or per record.

Exactness: a transform computes in the dtype numpy would (the plan says
which) with numpy's own inner loops for everything but the hash (log1p,
clip, subtract, divide: the loop `ufunc.types` lists first for those dtypes,
the one numpy itself runs), and casts as numpy casts (_program_cast.h). The
numpy path (_trim/records/program_reference.py, TRIMMER_IMPL=reference) therefore
gives the same batch bit for bit; tests/trim/test_records.py checks it.

Everything that can fail (a record too short, ragged lengths that disagree
with its size) is checked with the GIL held, before the batch exists; the
fill that follows reads only ranges those checks proved in bounds.
"""
cimport numpy as cnp
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, intptr_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from _trim._common cimport ITEMSIZE, RAW_CODES_END, WIRE_ALIGN, align_up
from _trim._kernel cimport ColumnEntry

import numpy as np

from _trim.batch import Batch
from _trim.format import ALIGN, COLUMN_NBYTES, DTYPE_CODES, FLAG_PER_REQUEST, HEADER_NBYTES

cnp.import_array()
cnp.import_ufunc()

cdef extern from *:
    void __builtin_prefetch(const void* p) noexcept nogil

cdef extern from "_program_cast.h" nogil:
    int TC_F32, TC_F16, TC_F64, TC_I64, TC_I32, TC_I8, TC_U8, TC_BOOL, TC_I16, TC_U16, TC_U32
    int TC_U64, TC_N_CODES
    int trim_cast(int sc, const void* src, int dc, void* dst, intptr_t n)
    double trim_as_double(int c, const char* p)
    void trim_store_double(int c, char* p, double v)
    void trim_hash_ids(int64_t* ids, intptr_t n, uint64_t buckets)
    void trim_copy_row(void* dst, const void* src, size_t n)

# The header's codes are the wire's (format.py is the one table).
assert (TC_F32, TC_F16, TC_F64, TC_I64, TC_I32, TC_I8, TC_U8, TC_BOOL) == tuple(
    DTYPE_CODES[n] for n in ("float32", "float16", "float64", "int64", "int32", "int8", "uint8",
                             "bool")), "_program_cast.h codes differ from format.DTYPE_CODES"
# Beyond the wire's: the integer types a store's raw fields may have besides.
RAW_CODES = {**DTYPE_CODES, "int16": TC_I16, "uint16": TC_U16, "uint32": TC_U32, "uint64": TC_U64}
assert max(RAW_CODES.values()) == TC_N_CODES - 1

ctypedef void (*loop_fn)(char**, cnp.npy_intp*, cnp.npy_intp*, void*) noexcept nogil

cdef enum:
    K_DENSE = 1, K_RAGGED = 2, K_CONST = 3, K_CONST_RAGGED = 4, K_DOT = 5
    OP_NONE = 0, OP_UNARY = 1, OP_CLIP = 2, OP_STANDARDIZE = 3, OP_HASH = 4
    MAX_RAGGED_FIELDS = 1 << 16
    # Candidate records gathered together: 16 float32 rows fill a cache line.
    RECORD_BLOCK = 32
    PREFETCH_AHEAD = 256

KINDS = {"dense": K_DENSE, "ragged": K_RAGGED, "const": K_CONST, "const_ragged": K_CONST_RAGGED,
         "dot": K_DOT}
OPS = {"none": OP_NONE, "unary": OP_UNARY, "clip": OP_CLIP, "standardize": OP_STANDARDIZE,
       "hash": OP_HASH}
assert <int>TC_N_CODES == <int>RAW_CODES_END and ALIGN == WIRE_ALIGN
for _name, _code in RAW_CODES.items():
    assert ITEMSIZE[_code] == np.dtype(_name).itemsize, "_common.pxd's item sizes differ"
cdef uint64_t C_HEADER = HEADER_NBYTES
cdef uint64_t C_COLUMN = COLUMN_NBYTES
cdef uint8_t C_PER_REQUEST = FLAG_PER_REQUEST
cdef double CANONICAL_NAN = np.nan


cdef struct Source:
    uint64_t fixed_nbytes
    Py_ssize_t n_ragged          # ragged fields of the layout: a count in the fixed part each
    uint64_t* len_offset         # where each field's uint32 count lies in the fixed part
    uint64_t* itemsize           # each field's element size
    bint reads_ragged            # some step reads a ragged field (the tails are then checked)


cdef struct Step:
    int kind
    int source
    Py_ssize_t column
    uint64_t raw_offset          # dense: the field's offset in the fixed part
    Py_ssize_t ragged            # ragged: which of the source's ragged fields
    uint64_t width               # dense: elements per row
    int raw_code, loop_code, dst_code
    int op
    loop_fn fn                   # the op's numpy loop (unary, clip, subtract) ...
    void* fn_data
    loop_fn div                  # ... and standardize's divide, in the destination dtype
    void* div_data
    uint8_t p1[8]                # clip lo / standardize mean, in the loop dtype
    uint8_t p2[8]                # clip hi (loop dtype) / standardize std (destination dtype)
    uint64_t buckets
    uint8_t* const_data          # const: one row (or the whole list) in the destination dtype
    uint64_t const_count         # const_ragged: values in the list
    Py_ssize_t in_a, in_b        # dot: input columns
    int a_code, b_code


cdef struct Run:
    # One step's place in one build: where its raw bytes are gathered (its
    # column, or a staging area when a cast comes first), where its values go.
    uint8_t* gather
    uint8_t* dst
    uint8_t* offsets             # ragged: the column's offsets
    uint64_t total               # ragged: values gathered so far


cdef struct Records:
    Py_ssize_t n
    const uint8_t** ptr
    uint64_t* nbytes
    uint32_t* counts             # n x n_ragged, when the tails were checked
    uint64_t* seg_start          # n x n_ragged: each segment's offset in its record


cdef inline void in_place(loop_fn fn, void* fn_data, uint8_t* data, void* p1, void* p2,
                          int nparams, cnp.npy_intp size, cnp.npy_intp n) noexcept nogil:
    """numpy's inner loop ``fn`` over ``n`` values of ``size`` bytes at
    ``data``, with up to two scalar parameters (stride 0), written back in place."""
    cdef char* args[4]
    cdef cnp.npy_intp steps[4]
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    args[0] = <char*>data
    steps[0] = size
    args[1] = <char*>p1
    args[2] = <char*>p2
    steps[1] = 0
    steps[2] = 0
    args[nparams + 1] = <char*>data
    steps[nparams + 1] = size
    fn(args, dims, steps, fn_data)


cdef void take_loop(object spec, loop_fn* fn, void** data) except *:
    """(ufunc, index, nargs) -> the inner loop numpy runs for those dtypes."""
    cdef cnp.ufunc u
    if spec is None:
        fn[0] = NULL
        data[0] = NULL
        return
    ufunc, index, nargs = spec
    u = ufunc
    if not 0 <= index < u.ntypes or u.nargs != nargs:
        raise ValueError(f"{ufunc.__name__}: no loop {index} taking {nargs} arguments")
    if u.types[index * u.nargs] == ord("O"):
        raise ValueError(f"{ufunc.__name__}: loop {index} is an object loop")
    fn[0] = <loop_fn><void*>u.functions[index]
    data[0] = u.data[index]


cdef void put_bits(uint8_t* out, object value) except *:
    cdef bytes raw = bytes(value or b"")
    if len(raw) > 8:
        raise ValueError("a parameter is at most 8 bytes")
    memset(out, 0, 8)
    if raw:
        memcpy(out, <const char*>raw, len(raw))


cdef class RecordProgram:
    """A compiled record-to-batch program for one batch layout.

    ``sources``: for the user and the candidate records, ``(fixed_nbytes,
    [(count_offset, itemsize), ...] per ragged field)``. ``steps``: dicts as
    rootproc/preprocess/steps.py builds them, together filling every column of
    ``layout`` exactly once.
    """

    cdef Source src[2]
    cdef Step* steps
    cdef Py_ssize_t n_steps
    cdef Py_ssize_t n_columns
    cdef readonly object layout
    cdef object _keep            # the constants' bytes and the ufuncs, kept alive
    cdef object _ragged_columns  # [(step index, column)] of the steps with a ragged result

    def __cinit__(self):
        self.steps = NULL
        self.n_steps = 0
        for s in range(2):
            self.src[s].len_offset = NULL
            self.src[s].itemsize = NULL
            self.src[s].n_ragged = 0

    def __dealloc__(self):
        free(self.steps)
        for s in range(2):
            free(self.src[s].len_offset)
            free(self.src[s].itemsize)

    def __init__(self, layout, sources, steps):
        cdef Step* st
        cdef Py_ssize_t i, k, n_cols = len(layout)
        self.layout = layout
        self.n_columns = n_cols
        self._keep = []
        if len(sources) != 2:
            raise ValueError("a record program reads two sources: user, candidate")
        for s, (fixed_nbytes, ragged) in enumerate(sources):
            if len(ragged) > MAX_RAGGED_FIELDS:
                raise ValueError("too many ragged fields")
            self.src[s].fixed_nbytes = fixed_nbytes
            self.src[s].n_ragged = len(ragged)
            self.src[s].reads_ragged = False
            self.src[s].len_offset = <uint64_t*>calloc(len(ragged) + 1, sizeof(uint64_t))
            self.src[s].itemsize = <uint64_t*>calloc(len(ragged) + 1, sizeof(uint64_t))
            if self.src[s].len_offset == NULL or self.src[s].itemsize == NULL:
                raise MemoryError()
            for k, (offset, size) in enumerate(ragged):
                if offset + 4 > fixed_nbytes or size not in (1, 2, 4, 8):
                    raise ValueError(f"source {s}: ragged field {k} lies outside its fixed part")
                self.src[s].len_offset[k] = offset
                self.src[s].itemsize[k] = size
        self.steps = <Step*>calloc(len(steps) + 1, sizeof(Step))
        if self.steps == NULL:
            raise MemoryError()
        self.n_steps = len(steps)
        filled = [0] * n_cols
        self._ragged_columns = []
        for i, spec in enumerate(steps):
            st = &self.steps[i]
            st.kind = KINDS[spec["kind"]]
            st.column = spec["column"]
            if not 0 <= st.column < n_cols:
                raise ValueError(f"step {i}: no column {st.column}")
            col = layout.columns[st.column]
            filled[st.column] += 1
            st.dst_code = DTYPE_CODES[col.dtype]
            st.source = spec.get("source", 0)
            if st.source not in (0, 1):
                raise ValueError(f"step {i}: source must be 0 (user) or 1 (candidate)")
            if col.per_request != (st.source == 0 and st.kind != K_DOT):
                raise ValueError(f"step {i}: column {col.name!r} is per-request exactly when "
                                 "a user field fills it")
            if (st.kind in (K_RAGGED, K_CONST_RAGGED)) != col.ragged:
                raise ValueError(f"step {i}: column {col.name!r} ragged mismatch")
            st.raw_code = spec.get("raw_code", st.dst_code)
            st.loop_code = spec.get("loop_code", st.dst_code)
            st.width = col.width
            if not (1 <= st.raw_code < TC_N_CODES and 1 <= st.loop_code < TC_N_CODES):
                raise ValueError(f"step {i}: bad dtype codes")
            st.op = OPS[spec.get("op", "none")]
            take_loop(spec.get("loop"), &st.fn, &st.fn_data)
            take_loop(spec.get("divide"), &st.div, &st.div_data)
            if st.op in (OP_UNARY, OP_CLIP, OP_STANDARDIZE) and st.fn == NULL:
                raise ValueError(f"step {i}: op needs its numpy loop")
            if st.op == OP_STANDARDIZE and st.div == NULL:
                raise ValueError(f"step {i}: standardize needs its divide loop")
            if st.op == OP_HASH and (st.loop_code != TC_I64 or spec["buckets"] < 1):
                raise ValueError(f"step {i}: a hash computes on int64 ids, into >= 1 buckets")
            st.buckets = spec.get("buckets", 1)
            put_bits(st.p1, spec.get("p1"))
            put_bits(st.p2, spec.get("p2"))
            self._keep.append((spec.get("loop"), spec.get("divide")))
            if st.kind == K_DENSE:
                st.raw_offset = spec["raw_offset"]
                if st.raw_offset + st.width * ITEMSIZE[st.raw_code] > self.src[st.source].fixed_nbytes:
                    raise ValueError(f"step {i}: field lies outside the fixed part")
            elif st.kind == K_RAGGED:
                st.ragged = spec["ragged"]
                if not 0 <= st.ragged < self.src[st.source].n_ragged:
                    raise ValueError(f"step {i}: no ragged field {st.ragged}")
                if self.src[st.source].itemsize[st.ragged] != ITEMSIZE[st.raw_code]:
                    raise ValueError(f"step {i}: ragged field's element size disagrees")
                self.src[st.source].reads_ragged = True
                self._ragged_columns.append((i, st.column))
            elif st.kind in (K_CONST, K_CONST_RAGGED):
                data = bytes(spec["const"])
                if st.kind == K_CONST and len(data) != st.width * ITEMSIZE[st.dst_code]:
                    raise ValueError(f"step {i}: a constant is one row of its column")
                if st.kind == K_CONST_RAGGED:
                    if len(data) % ITEMSIZE[st.dst_code]:
                        raise ValueError(f"step {i}: a constant list is whole elements")
                    st.const_count = len(data) // ITEMSIZE[st.dst_code]
                    self._ragged_columns.append((i, st.column))
                self._keep.append(data)
                st.const_data = <uint8_t*>(<const char*>data)
            elif st.kind == K_DOT:
                st.in_a, st.in_b = spec["inputs"]
                for x in (st.in_a, st.in_b):
                    if not 0 <= x < n_cols or layout.columns[x].ragged \
                            or layout.columns[x].dtype not in ("float16", "float32", "float64"):
                        raise ValueError(f"step {i}: a dot reads two dense float columns")
                a, b = layout.columns[st.in_a], layout.columns[st.in_b]
                if a.width != b.width or col.width != 1 or col.dtype not in ("float16", "float32",
                                                                             "float64"):
                    raise ValueError(f"step {i}: dot of columns of different widths")
                st.a_code, st.b_code = DTYPE_CODES[a.dtype], DTYPE_CODES[b.dtype]
                st.width = a.width
        unfilled = [layout.columns[c].name for c, k in enumerate(filled) if k != 1]
        if unfilled:
            raise ValueError(f"columns not filled exactly once: {', '.join(unfilled)}")
        # Dot products read columns the other steps wrote: they go last.
        order = sorted(range(self.n_steps), key=lambda j: self.steps[j].kind == K_DOT)
        if order != list(range(self.n_steps)):
            raise ValueError("dot steps must come after every other step")

    def build(self, user_records, candidate_records):
        """The batch of one user record and the candidates' records (bytes-like
        objects, e.g. LMDB buffers, valid for the duration of the call)."""
        cdef Records recs[2]
        cdef Py_buffer* views = NULL
        cdef Py_ssize_t n_views = 0, s, i
        cdef uint64_t scratch_nbytes = 0, staged_nbytes = 0, values
        cdef uint8_t* scratch = NULL
        cdef uint8_t* staged = NULL
        cdef Run* runs = NULL
        cdef Step* st
        cdef ColumnEntry col
        cdef uint8_t* base
        cdef const ColumnEntry* table
        cdef int failed = 0
        if len(user_records) != 1:
            raise ValueError(f"a batch has one user record, got {len(user_records)}")
        lists = (user_records, candidate_records)
        for s in range(2):
            recs[s].n = 0
            recs[s].ptr = NULL
            recs[s].nbytes = NULL
            recs[s].counts = NULL
            recs[s].seg_start = NULL
        total = len(user_records) + len(candidate_records)
        views = <Py_buffer*>calloc(total + 1, sizeof(Py_buffer))
        if views == NULL:
            raise MemoryError()
        try:
            for s in range(2):
                records = lists[s]
                n = len(records)
                recs[s].ptr = <const uint8_t**>malloc((n + 1) * sizeof(uint8_t*))
                recs[s].nbytes = <uint64_t*>malloc((n + 1) * sizeof(uint64_t))
                if recs[s].ptr == NULL or recs[s].nbytes == NULL:
                    raise MemoryError()
                for i in range(n):
                    PyObject_GetBuffer(records[i], &views[n_views], PyBUF_SIMPLE)
                    n_views += 1
                    recs[s].ptr[i] = <const uint8_t*>views[n_views - 1].buf
                    recs[s].nbytes[i] = views[n_views - 1].len
                recs[s].n = n
                self._check(s, &recs[s])
            counts = {}
            for step_index, column in self._ragged_columns:
                counts[column] = self._ragged_count(&self.steps[step_index], recs)
            batch = Batch(self.layout, recs[1].n, counts, zeroed=False)
            runs = <Run*>calloc(self.n_steps + 1, sizeof(Run))
            if runs == NULL:
                raise MemoryError()
            for i in range(self.n_steps):
                st = &self.steps[i]
                values = self._values(st, recs)
                scratch_nbytes = max(scratch_nbytes, 8 * values)
                if self._staged(st):
                    runs[i].total = staged_nbytes   # its offset in the staging area, for now
                    staged_nbytes += align_up(values * ITEMSIZE[st.raw_code])
            scratch = <uint8_t*>malloc(2 * scratch_nbytes + staged_nbytes + 16)
            if scratch == NULL:
                raise MemoryError()
            staged = scratch + 2 * scratch_nbytes
            buffer = batch.buffer
            base = <uint8_t*>cnp.PyArray_DATA(buffer)
            table = <const ColumnEntry*>(base + C_HEADER)
            for i in range(self.n_steps):
                st = &self.steps[i]
                memcpy(&col, &table[st.column], sizeof(ColumnEntry))
                runs[i].dst = base + col.data_offset
                if st.kind == K_RAGGED or st.kind == K_CONST_RAGGED:
                    runs[i].offsets = runs[i].dst
                    runs[i].dst += 8 * ((1 if st.source == 0 else recs[1].n) + 1)
                runs[i].gather = staged + runs[i].total if self._staged(st) else runs[i].dst
                runs[i].total = 0
            with nogil:
                failed = self._fill(recs, base, table, recs[1].n, runs, scratch, scratch_nbytes)
            if failed:
                raise ValueError("record program: unknown dtype code")   # checked at compile
            return batch
        finally:
            free(scratch)
            free(runs)
            for i in range(n_views):
                PyBuffer_Release(&views[i])
            free(views)
            for s in range(2):
                free(recs[s].ptr)
                free(recs[s].nbytes)
                free(recs[s].counts)
                free(recs[s].seg_start)

    # -- checks (GIL held) ---------------------------------------------------------

    cdef int _check(self, int s, Records* r) except -1:
        """Every record holds its fixed part; with ragged fields read, its
        tail is exactly the segments its counts say. The messages are the
        numpy path's (layout.py)."""
        cdef Source* src = &self.src[s]
        cdef Py_ssize_t i, k, nr = src.n_ragged
        cdef uint64_t pos, seg
        cdef uint32_t count
        name = ("user", "candidate")[s]
        if nr == 0:
            for i in range(r.n):
                if r.nbytes[i] != src.fixed_nbytes:
                    raise ValueError(f"corrupt {name} record: expected {src.fixed_nbytes} bytes each")
            return 0
        for i in range(r.n):
            if r.nbytes[i] < src.fixed_nbytes:
                raise ValueError(f"corrupt {name} record: shorter than its fixed part")
        if not src.reads_ragged:
            return 0
        r.counts = <uint32_t*>malloc((r.n * nr + 1) * sizeof(uint32_t))
        r.seg_start = <uint64_t*>malloc((r.n * nr + 1) * sizeof(uint64_t))
        if r.counts == NULL or r.seg_start == NULL:
            raise MemoryError()
        for i in range(r.n):
            pos = src.fixed_nbytes
            for k in range(nr):
                memcpy(&count, r.ptr[i] + src.len_offset[k], 4)
                r.counts[i * nr + k] = count
                r.seg_start[i * nr + k] = pos
                seg = align_up(<uint64_t>count * src.itemsize[k])
                pos += seg
            if pos != r.nbytes[i]:
                raise ValueError(f"corrupt {name} record: ragged lengths disagree with its size")
        return 0

    cdef uint64_t _ragged_count(self, Step* st, Records* recs):
        cdef Records* r = &recs[st.source]
        cdef Py_ssize_t i, nr = self.src[st.source].n_ragged
        cdef uint64_t total = 0
        if st.kind == K_CONST_RAGGED:
            return st.const_count * <uint64_t>r.n
        for i in range(r.n):
            total += r.counts[i * nr + st.ragged]
        return total

    cdef bint _staged(self, Step* st) noexcept nogil:
        """Whether a step's raw bytes are gathered apart from its column: a
        cast comes before its values are the column's."""
        return (st.kind == K_DENSE or st.kind == K_RAGGED) and not (
            st.raw_code == st.dst_code and st.loop_code == st.dst_code)

    cdef uint64_t _values(self, Step* st, Records* recs):
        """Elements a step's intermediate arrays hold."""
        if st.kind == K_DENSE:
            return recs[st.source].n * st.width
        if st.kind == K_RAGGED:
            return self._ragged_count(st, recs)
        return 0

    # -- the fill (no GIL) -------------------------------------------------------------

    cdef int _fill(self, Records* recs, uint8_t* base, const ColumnEntry* table, Py_ssize_t n,
                   Run* runs, uint8_t* scratch, uint64_t scratch_nbytes) noexcept nogil:
        """Gather every raw field into its column (or its staging area), a block
        of candidate records at a time; then each column's transform; then
        the defaults, the cross features and the padding."""
        cdef Py_ssize_t i, c, lo
        cdef Step* st
        cdef ColumnEntry col
        cdef uint64_t end
        cdef int failed = 0
        self._gather(recs, runs, 0, 0, 1)
        lo = 0
        while lo < n:
            self._gather(recs, runs, 1, lo, min(n, lo + RECORD_BLOCK))
            lo += RECORD_BLOCK
        for i in range(self.n_steps):
            st = &self.steps[i]
            if st.kind == K_DENSE:
                failed |= self._transform(st, runs[i].gather,
                                          <intptr_t>(recs[st.source].n * st.width), runs[i].dst,
                                          scratch, scratch + scratch_nbytes)
            elif st.kind == K_RAGGED:
                failed |= self._transform(st, runs[i].gather, <intptr_t>runs[i].total, runs[i].dst,
                                          scratch, scratch + scratch_nbytes)
            elif st.kind == K_CONST:
                self._const(st, 1 if st.source == 0 else n, runs[i].dst)
            elif st.kind == K_CONST_RAGGED:
                self._const_ragged(st, 1 if st.source == 0 else n, runs[i].offsets)
            else:
                self._dot(st, base, table, n, runs[i].dst)
        # Every region's padding, so that no stale byte reaches the wire.
        for c in range(self.n_columns):
            memcpy(&col, &table[c], sizeof(ColumnEntry))
            end = col.data_offset + col.data_nbytes
            memset(base + end, 0, align_up(end) - end)
        return failed

    cdef void _gather(self, Records* recs, Run* runs, int source, Py_ssize_t lo,
                      Py_ssize_t hi) noexcept nogil:
        """Records ``lo:hi`` of ``source``: every step's raw bytes, in record
        order. A block's records are read front to back together (a stream
        each, which the hardware prefetches) and a scalar column gets a cache
        line per block, where a column at a time over every record would miss
        the cache on each record it visits."""
        cdef Records* r = &recs[source]
        cdef Py_ssize_t i, k, nr = self.src[source].n_ragged
        cdef Step* st
        cdef uint64_t row, off, size, count, total
        cdef uint8_t* out
        cdef int64_t* offsets
        cdef uint64_t ahead = 0   # prefetched up to here in every record of the block
        cdef uint64_t fixed = self.src[source].fixed_nbytes
        for k in range(self.n_steps):
            st = &self.steps[k]
            if st.source != source:
                continue
            out = runs[k].gather
            if st.kind == K_DENSE:
                row = st.width * ITEMSIZE[st.raw_code]
                off = st.raw_offset
                # Dense steps come in offset order: keep the block's records
                # PREFETCH_AHEAD bytes ahead in cache (a stream per record
                # restarts at every page, where the hardware stops prefetching).
                while ahead < off + row + PREFETCH_AHEAD and ahead < fixed:
                    for i in range(lo, hi):
                        __builtin_prefetch(r.ptr[i] + ahead)
                    ahead += 64
                if row == 4:
                    for i in range(lo, hi):
                        memcpy(out + 4 * i, r.ptr[i] + off, 4)
                elif row == 8:
                    for i in range(lo, hi):
                        memcpy(out + 8 * i, r.ptr[i] + off, 8)
                else:
                    for i in range(lo, hi):
                        trim_copy_row(out + row * i, r.ptr[i] + off, row)
            elif st.kind == K_RAGGED:
                size = ITEMSIZE[st.raw_code]
                offsets = <int64_t*>runs[k].offsets
                total = runs[k].total
                if lo == 0:
                    offsets[0] = 0
                for i in range(lo, hi):
                    count = r.counts[i * nr + st.ragged]
                    trim_copy_row(out + total * size, r.ptr[i] + r.seg_start[i * nr + st.ragged],
                                  count * size)
                    total += count
                    offsets[i + 1] = <int64_t>total
                runs[k].total = total

    cdef int _transform(self, Step* st, uint8_t* cur, intptr_t n, uint8_t* dst, uint8_t* s1,
                        uint8_t* s2) noexcept nogil:
        """Raw values at ``cur`` through the step's op into ``dst``: cast to the
        loop dtype, apply, cast to the destination dtype (standardize divides
        there), each stage only where the dtypes differ."""
        cdef int code = st.raw_code
        cdef uint8_t* target
        if code != st.loop_code:
            target = dst if st.loop_code == st.dst_code else s1
            if trim_cast(code, cur, st.loop_code, target, n):
                return 1
            cur, code = target, st.loop_code
        if st.op != OP_NONE and n:
            self._apply(st, cur, n)
        if code != st.dst_code:
            if trim_cast(code, cur, st.dst_code, dst, n):
                return 1
        if st.op == OP_STANDARDIZE and n:
            self._divide(st, dst, n)
        return 0

    cdef void _apply(self, Step* st, uint8_t* data, intptr_t n) noexcept nogil:
        cdef cnp.npy_intp size = ITEMSIZE[st.loop_code]
        if st.op == OP_HASH:
            trim_hash_ids(<int64_t*>data, n, st.buckets)
        elif st.op == OP_UNARY:
            in_place(st.fn, st.fn_data, data, NULL, NULL, 0, size, n)
        elif st.op == OP_CLIP:
            in_place(st.fn, st.fn_data, data, st.p1, st.p2, 2, size, n)
        elif st.op == OP_STANDARDIZE:
            in_place(st.fn, st.fn_data, data, st.p1, NULL, 1, size, n)

    cdef void _divide(self, Step* st, uint8_t* data, intptr_t n) noexcept nogil:
        in_place(st.div, st.div_data, data, st.p2, NULL, 1, ITEMSIZE[st.dst_code], n)

    cdef void _const(self, Step* st, Py_ssize_t rows, uint8_t* dst) noexcept nogil:
        cdef uint64_t row = st.width * ITEMSIZE[st.dst_code]
        cdef Py_ssize_t i
        for i in range(rows):
            memcpy(dst + i * row, st.const_data, row)

    cdef void _const_ragged(self, Step* st, Py_ssize_t rows, uint8_t* dst) noexcept nogil:
        cdef int64_t* offsets = <int64_t*>dst
        cdef uint64_t row = st.const_count * ITEMSIZE[st.dst_code]
        cdef uint8_t* values = dst + 8 * (rows + 1)
        cdef Py_ssize_t i
        offsets[0] = 0
        for i in range(rows):
            if row:
                memcpy(values + i * row, st.const_data, row)
            offsets[i + 1] = <int64_t>((i + 1) * st.const_count)

    cdef void _dot(self, Step* st, uint8_t* base, const ColumnEntry* table, Py_ssize_t n,
                   uint8_t* dst) noexcept nogil:
        """Per row, the products in float64, summed in element order: the same
        in every build and on every CPU (no BLAS, no FMA)."""
        cdef ColumnEntry a, b
        cdef Py_ssize_t i, k
        cdef uint64_t w = st.width
        cdef uint64_t sa = ITEMSIZE[st.a_code], sb = ITEMSIZE[st.b_code], sd = ITEMSIZE[st.dst_code]
        cdef const char* pa
        cdef const char* pb
        cdef double acc
        cdef Py_ssize_t rows_a, rows_b, rows
        memcpy(&a, &table[st.in_a], sizeof(ColumnEntry))
        memcpy(&b, &table[st.in_b], sizeof(ColumnEntry))
        rows_a = 1 if a.flags & C_PER_REQUEST else n
        rows_b = 1 if b.flags & C_PER_REQUEST else n
        rows = rows_a if rows_a > rows_b else rows_b
        if n == 0:
            return
        for i in range(rows):
            pa = <const char*>(base + a.data_offset + (i if rows_a > 1 else 0) * w * sa)
            pb = <const char*>(base + b.data_offset + (i if rows_b > 1 else 0) * w * sb)
            acc = 0.0
            if st.a_code == TC_F32 and st.b_code == TC_F32:   # the usual case, unswitched
                for k in range(w):
                    acc += <double>(<const float*>pa)[k] * <double>(<const float*>pb)[k]
            else:
                for k in range(w):
                    acc += trim_as_double(st.a_code, pa + k * sa) * trim_as_double(st.b_code, pb + k * sb)
            if acc != acc:
                acc = CANONICAL_NAN   # the reference's: which NaN a sum keeps is the CPU's choice
            trim_store_double(st.dst_code, <char*>dst + i * sd, acc)
        for i in range(rows, n):   # both inputs per-request: one value for every row
            memcpy(dst + i * sd, dst, sd)


def hash_ids(ids, uint64_t buckets):
    """The hash transform of int64 ``ids`` into ``buckets`` (>= 1), as a new
    array: the record program's own loop, for checking it."""
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    out = np.array(ids, dtype=np.int64, copy=True).reshape(-1)
    cdef int64_t[::1] view = out
    if view.shape[0]:
        with nogil:
            trim_hash_ids(&view[0], view.shape[0], buckets)
    return out
