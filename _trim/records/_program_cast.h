/* Element casts between the wire dtypes (and the integer types a store's raw
 * field may have besides: two features sharing an int8 and a uint8 field
 * widen it to int16), exactly as numpy's `astype` does them.
 *
 * The record program (_program.pyx) casts a raw field to the dtype its
 * transform computes in, and the result to the feature's dtype, and must give
 * the bits numpy's reference path gives. numpy casts numeric types with plain
 * C conversions, except that it normalises to and from bool (x != 0) and goes
 * through its own half-float routines (npymath: software, round to nearest
 * even, NaN payloads shifted, never quieted) for float16. Codes are the wire
 * dtype codes of _trim/format.py; _program.pyx checks them at import.
 *
 * A float cast to an integer out of its range is undefined in C and in numpy
 * alike (numpy warns "invalid value encountered in cast").
 */
#ifndef TRIM_RECORDS_CAST_H
#define TRIM_RECORDS_CAST_H

#include <stdint.h>
#include <string.h>
#include <numpy/halffloat.h>

enum { TC_F32 = 1, TC_F16 = 2, TC_F64 = 3, TC_I64 = 4, TC_I32 = 5, TC_I8 = 6, TC_U8 = 7,
       TC_BOOL = 8, TC_I16 = 9, TC_U16 = 10, TC_U32 = 11, TC_U64 = 12, TC_N_CODES = 13 };

/* One conversion per (source, destination) kind. */
#define TC_PLAIN(x) (x)
#define TC_TO_BOOL(x) ((uint8_t)((x) != 0))
#define TC_BOOL_TO(x) ((x) != 0)
#define TC_HALF_TO_BOOL(x) ((uint8_t)(((x) & 0x7fffu) != 0))
#define TC_HALF_TO_F32(x) npy_half_to_float(x)
#define TC_HALF_TO_F64(x) npy_half_to_double(x)
#define TC_HALF_TO_INT(x) npy_half_to_float(x)
#define TC_F32_TO_HALF(x) npy_float_to_half(x)
#define TC_F64_TO_HALF(x) npy_double_to_half(x)
#define TC_INT_TO_HALF(x) npy_float_to_half((float)(x))
#define TC_BOOL_TO_HALF(x) npy_float_to_half((float)((x) != 0))

#define TC_LOOP(ST, DT, CONV)                                                   \
    do {                                                                        \
        const ST *s_ = (const ST *)src;                                         \
        DT *d_ = (DT *)dst;                                                     \
        for (intptr_t i_ = 0; i_ < n; i_++) d_[i_] = (DT)CONV(s_[i_]);          \
        return 0;                                                               \
    } while (0)

/* One source type to every destination: HALF_CONV, INT_CONV (to integer
 * destinations), F32_CONV, F64_CONV, BOOL_CONV say how. */
#define TC_FROM(ST, F32_CONV, HALF_CONV, F64_CONV, INT_CONV, BOOL_CONV)         \
    switch (dc) {                                                               \
    case TC_F32: TC_LOOP(ST, float, F32_CONV);                                  \
    case TC_F16: TC_LOOP(ST, npy_half, HALF_CONV);                              \
    case TC_F64: TC_LOOP(ST, double, F64_CONV);                                 \
    case TC_I64: TC_LOOP(ST, int64_t, INT_CONV);                                \
    case TC_I32: TC_LOOP(ST, int32_t, INT_CONV);                                \
    case TC_I8: TC_LOOP(ST, int8_t, INT_CONV);                                  \
    case TC_U8: TC_LOOP(ST, uint8_t, INT_CONV);                                 \
    case TC_BOOL: TC_LOOP(ST, uint8_t, BOOL_CONV);                              \
    case TC_I16: TC_LOOP(ST, int16_t, INT_CONV);                                \
    case TC_U16: TC_LOOP(ST, uint16_t, INT_CONV);                               \
    case TC_U32: TC_LOOP(ST, uint32_t, INT_CONV);                               \
    case TC_U64: TC_LOOP(ST, uint64_t, INT_CONV);                               \
    default: return -1;                                                         \
    }

/* Cast n contiguous elements of code sc at src to code dc at dst (the two
 * must not overlap); -1 for an unknown code. Same codes: a byte copy, as
 * numpy's (a bool byte other than 0 or 1 stays what it was). */
static inline int trim_cast(int sc, const void *src, int dc, void *dst, intptr_t n)
{
    static const int itemsize[TC_N_CODES] = {0, 4, 2, 8, 8, 4, 1, 1, 1, 2, 2, 4, 8};
    if (sc == dc) {
        if (sc < 1 || sc >= TC_N_CODES) return -1;
        if (n) memcpy(dst, src, (size_t)n * itemsize[sc]);
        return 0;
    }
    switch (sc) {
    case TC_F32: TC_FROM(float, TC_PLAIN, TC_F32_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_F16: TC_FROM(npy_half, TC_HALF_TO_F32, TC_PLAIN, TC_HALF_TO_F64, TC_HALF_TO_INT,
                         TC_HALF_TO_BOOL)
    case TC_F64: TC_FROM(double, TC_PLAIN, TC_F64_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_I64: TC_FROM(int64_t, TC_PLAIN, TC_INT_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_I32: TC_FROM(int32_t, TC_PLAIN, TC_INT_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_I8: TC_FROM(int8_t, TC_PLAIN, TC_INT_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_U8: TC_FROM(uint8_t, TC_PLAIN, TC_INT_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_BOOL: TC_FROM(uint8_t, TC_BOOL_TO, TC_BOOL_TO_HALF, TC_BOOL_TO, TC_BOOL_TO, TC_TO_BOOL)
    case TC_I16: TC_FROM(int16_t, TC_PLAIN, TC_INT_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_U16: TC_FROM(uint16_t, TC_PLAIN, TC_INT_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_U32: TC_FROM(uint32_t, TC_PLAIN, TC_INT_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    case TC_U64: TC_FROM(uint64_t, TC_PLAIN, TC_INT_TO_HALF, TC_PLAIN, TC_PLAIN, TC_TO_BOOL)
    default: return -1;
    }
}

/* Copy n bytes where n is small (a vector's row, a short id list): a call to
 * memcpy per row would cost more than the copy. Whole words inline, the rest
 * by memcpy. */
static inline void trim_copy_row(void *dst, const void *src, size_t n)
{
    char *d = (char *)dst;
    const char *s = (const char *)src;
    if (n > 128) {
        memcpy(d, s, n);
        return;
    }
    while (n >= 8) {
        memcpy(d, s, 8);
        d += 8; s += 8; n -= 8;
    }
    if (n >= 4) {
        memcpy(d, s, 4);
        d += 4; s += 4; n -= 4;
    }
    while (n--) *d++ = *s++;
}

/* An element of code c at p as a double: what the cross features' dot
 * products are computed in (numpy's astype(float64)). */
static inline double trim_as_double(int c, const char *p)
{
    switch (c) {
    case TC_F32: { float v; memcpy(&v, p, 4); return (double)v; }
    case TC_F16: { npy_half v; memcpy(&v, p, 2); return npy_half_to_double(v); }
    default: { double v; memcpy(&v, p, 8); return v; }
    }
}

/* A double stored as code c (float16/32/64) at p, as numpy's astype does. */
static inline void trim_store_double(int c, char *p, double v)
{
    switch (c) {
    case TC_F32: { float f = (float)v; memcpy(p, &f, 4); break; }
    case TC_F16: { npy_half h = npy_double_to_half(v); memcpy(p, &h, 2); break; }
    default: memcpy(p, &v, 8);
    }
}

/* x mod d by multiplying with a precomputed reciprocal (libdivide's
 * branch-free unsigned 64-bit scheme): a hardware divide per id costs more
 * than the rest of the hash. Exact for every x and d >= 1. */
typedef struct {
    uint64_t d;
    uint64_t magic;     /* 0: d is a power of two */
    int shift;
    int add;            /* the 65-bit magic's extra step */
} trim_divider;

static inline trim_divider trim_divider_for(uint64_t d)
{
    trim_divider v = {d, 0, 0, 0};
    int log2d = 63 - __builtin_clzll(d);
    if ((d & (d - 1)) == 0) {
        v.shift = log2d;
        return v;
    }
    unsigned __int128 num = (unsigned __int128)1 << (64 + log2d);
    uint64_t proposed = (uint64_t)(num / d);
    uint64_t rem = (uint64_t)(num - (unsigned __int128)proposed * d);
    uint64_t e = d - rem;
    if (e < ((uint64_t)1 << log2d)) {
        v.shift = log2d;
    } else {
        uint64_t twice = rem + rem;
        proposed += proposed;
        if (twice >= d || twice < rem) proposed += 1;
        v.shift = log2d;
        v.add = 1;
    }
    v.magic = proposed + 1;
    return v;
}

static inline uint64_t trim_mod(uint64_t x, const trim_divider *v)
{
    uint64_t q;
    if (v->magic == 0) return x & (v->d - 1);
    q = (uint64_t)(((unsigned __int128)x * v->magic) >> 64);
    if (v->add) q = (((x - q) >> 1) + q) >> v->shift;
    else q >>= v->shift;
    return x - q * v->d;
}

/* murmur3's 64-bit finaliser of each id's two's-complement bits, modulo
 * buckets, in place (rootproc/preprocess/preprocessor.py documents the function). */
static inline void trim_hash_ids(int64_t *ids, intptr_t n, uint64_t buckets)
{
    trim_divider div = trim_divider_for(buckets);
    for (intptr_t i = 0; i < n; i++) {
        uint64_t h = (uint64_t)ids[i];
        h ^= h >> 33;
        h *= 0xFF51AFD7ED558CCDull;
        h ^= h >> 33;
        h *= 0xC4CEB9FE1A85EC53ull;
        h ^= h >> 33;
        ids[i] = (int64_t)trim_mod(h, &div);
    }
}

#endif
