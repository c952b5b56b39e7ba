/* Internals shared by the kernel files: GGML block layouts, fp16/bf16 conversion, ggml's
 * nearest_int, and the function multi-versioning macro.
 *
 * Exactness rules every kernel follows: IEEE single precision only, each block's operations in
 * the order of ggml's reference code (no reassociation, no FMA: setup.py passes
 * -ffp-contract=off and never -ffast-math). Vectorization is across independent blocks or
 * sub-blocks ("lanes"), so each lane still computes exactly the scalar sequence.
 */
#ifndef SE_INTERNAL_H
#define SE_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "slimedge_kernels.h"

#define SE_QK 32     /* legacy block size */
#define SE_QK_K 256  /* k-quant super-block size */

/* Multi-versioning: hot kernels get an AVX2 clone picked at load time (ifunc) plus a baseline
 * (SSE2 on x86-64) clone, so one portable binary uses the wider vectors where the CPU has them.
 * FMA is never enabled for contraction (-ffp-contract=off), so both clones give the same bytes. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(SE_NO_MULTIVERSION)
#define SE_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define SE_MULTIVERSION
#endif

/* Vectorize along lanes (independent blocks or sub-blocks), never along a block's own
 * accumulation order: lane loops are marked `omp simd` (built with -fopenmp-simd, which only
 * enables this pragma, no OpenMP runtime). Without it, GCC unrolls short lane loops and
 * vectorizes the other way with slow in-order reductions. Only loops whose iterations are
 * independent carry the pragma (no reductions, no pointer bumps inside). */
#define SE_LANES _Pragma("omp simd")

#if defined(__GNUC__)
#define SE_INLINE static inline __attribute__((always_inline))
#else
#define SE_INLINE static inline
#endif

/* Block layouts, one per type of SE_TYPES (named se_block_<name>; the float types' "block" is
 * one value). sizeof gives the bytes per block; the asserts pin them to ggml's. */
typedef float se_block_f32;
typedef uint16_t se_block_f16;  /* IEEE half bits */
typedef uint16_t se_block_bf16; /* bfloat16 bits */
typedef struct { uint16_t d; uint8_t qs[16]; } se_block_q4_0;               /* 18 bytes */
typedef struct { uint16_t d, m; uint8_t qs[16]; } se_block_q4_1;            /* 20 bytes */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } se_block_q5_0; /* 22 bytes */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } se_block_q5_1; /* 24 bytes */
typedef struct { uint16_t d; int8_t qs[32]; } se_block_q8_0;                /* 34 bytes */

typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } se_block_q2_k;  /* 84 */
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } se_block_q3_k; /* 110 */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } se_block_q4_k; /* 144 */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } se_block_q5_k; /* 176 */
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } se_block_q6_k; /* 210 */

_Static_assert(sizeof(se_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(se_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(se_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(se_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(se_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(se_block_q2_k) == 84, "q2_K layout");
_Static_assert(sizeof(se_block_q3_k) == 110, "q3_K layout");
_Static_assert(sizeof(se_block_q4_k) == 144, "q4_K layout");
_Static_assert(sizeof(se_block_q5_k) == 176, "q5_K layout");
_Static_assert(sizeof(se_block_q6_k) == 210, "q6_K layout");

SE_INLINE uint32_t se_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
SE_INLINE float se_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* float32 -> IEEE half, round to nearest even (subnormals and overflow to inf included);
 * NaN -> quiet NaN 0x7e00 with the sign kept, as ggml's converter does. */
SE_INLINE uint16_t se_fp32_to_fp16(float f) {
    const uint32_t x = se_f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax >= 0x38800000u) {                                   /* normal half */
        const uint32_t r = ax + 0x0fffu + ((ax >> 13) & 1u);
        return (uint16_t)(sign | ((r >> 13) - (112u << 10)));
    }
    const uint32_t e = ax >> 23;
    if (e < 102) return (uint16_t)sign;                        /* < 2^-25: rounds to zero */
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;                            /* 14..24 */
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

SE_INLINE float se_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {  /* zero or subnormal: m * 2^-24, exact */
        const float v = (float)m * 5.9604644775390625e-08f;
        return se_bits_f32(se_f32_bits(v) | sign);
    }
    if (e == 31) return se_bits_f32(sign | 0x7f800000u | (m << 13));
    return se_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* ggml's nearest_int: round via the 1.5*2^23 magic number and read the mantissa bits. Kept
 * bit-for-bit (also for out-of-range inputs, where ggml's result is defined by these bits). */
SE_INLINE int se_nearest_int(float f) {
    const float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

SE_INLINE int se_min_i(int a, int b) { return a < b ? a : b; }
SE_INLINE int se_max_i(int a, int b) { return a > b ? a : b; }

/* Q5_0/Q5_1: low nibbles of q[0..15] | q[16..31] << 4, and the fifth bits into a 32-bit mask */
SE_INLINE void se_pack5(const uint8_t *q, uint8_t *qs, uint8_t *qh4) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
        qh |= (uint32_t)((q[j] & 0x10u) >> 4) << j;
        qh |= (uint32_t)((q[j + 16] & 0x10u) >> 4) << (j + 16);
    }
    memcpy(qh4, &qh, 4);  /* little-endian, as ggml stores it on x86/arm */
}

/* ggml's make_qp_quants (weighted levels 0..nmax of n values, returns the scale); defined once in
 * kquants_imatrix.c, used by the importance-weighted k-quants and by IQ2_XXS */
float se_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *qw);

#endif /* SE_INTERNAL_H */
