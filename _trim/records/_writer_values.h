/* The synthetic-value loops of _writer.pyx, written so that the compiler
 * vectorises them (restrict pointers, no calls, int32 conversions): the
 * same float32 operations, in the same order, as writer_reference.py's numpy. */
#ifndef TRIM_LOAD_VALUES_H
#define TRIM_LOAD_VALUES_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define TRIM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TRIM_CLONES
#endif

#define TRIM_M1 0x85EBCA6Bu
#define TRIM_U24 (1.0f / 16777216.0f)

/* rintf (nearest, ties to even): |x| + 2**23 - 2**23 rounds |x| < 2**23 to a
 * whole number (floats in [2**23, 2**24) are 1 apart), with x's sign, as
 * rintf's (-0.4 -> -0.0); larger floats, infinities and NaNs are whole or
 * left as they are. */
static inline float trim_round_even(float x)
{
    uint32_t xb, rb;
    float ax, r;
    memcpy(&xb, &x, 4);
    rb = xb & 0x7fffffffu;
    memcpy(&ax, &rb, 4);
    r = (ax + 8388608.0f) - 8388608.0f;
    memcpy(&rb, &r, 4);
    rb |= xb & 0x80000000u;
    uint32_t keep = -(uint32_t)((xb & 0x7fffffffu) < 0x4b000000u);   /* a blend, not a branch */
    rb = (rb & keep) | (xb & ~keep);
    memcpy(&r, &rb, 4);
    return r;
}

TRIM_CLONES static void trim_values_row(uint32_t row, const uint32_t *restrict cols, intptr_t m,
                                   float cold, const float *restrict p0, const float *restrict a,
                                   const float *restrict b, const float *restrict c,
                                   const float *restrict q, const float *restrict deflt,
                                   float *restrict dst)
{
    for (intptr_t j = 0; j < m; j++) {
        uint32_t h = (row ^ cols[j]) * TRIM_M1;
        float u0 = (float)(int32_t)(h >> 8) * TRIM_U24;
        float heavy = (u0 - p0[j]) / (1.001f - u0);
        heavy = heavy * b[j];
        float u = trim_round_even(u0 * a[j] + heavy + c[j]) * q[j];
        uint32_t ub, db, missing = -(uint32_t)(u0 < p0[j] + cold);
        memcpy(&ub, &u, 4);
        memcpy(&db, &deflt[j], 4);
        ub = (db & missing) | (ub & ~missing);
        memcpy(&dst[j], &ub, 4);
    }
}

TRIM_CLONES static void trim_dense_row(uint32_t row, const uint32_t *restrict cols, intptr_t m,
                                  float keep, const float *restrict scale, float *restrict dst)
{
    for (intptr_t j = 0; j < m; j++) {
        uint32_t h = (row ^ cols[j]) * TRIM_M1;
        float u = ((float)(int32_t)(h >> 8) * TRIM_U24 - 0.5f) * scale[j];
        uint32_t bits;
        memcpy(&bits, &u, 4);
        bits &= 0xFFFFE000u;   /* float16 precision: the mantissa's low 13 bits cleared */
        memcpy(&u, &bits, 4);
        dst[j] = u * keep;
    }
}

#endif
