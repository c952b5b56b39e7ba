/* Block layouts and small helpers of the non-grid types added after the k-quants: IQ4_NL, IQ4_XS,
 * TQ1_0, TQ2_0, MXFP4, Q1_0, Q2_0, NVFP4 (ggml-common.h's block_*; sizeof is the bytes per block, pinned
 * by the asserts). Included by dispatch.c (for sizeof) and by kernels/{iq4,ternary,mxfp4,q1q2,nvfp4}.c. */
#ifndef SE_BLOCKS2_H
#define SE_BLOCKS2_H

#include <math.h>

#include "se_internal.h"

#define SE_QK1_0 128 /* ggml QK1_0 */
#define SE_QK2_0 64  /* ggml QK2_0 */
#define SE_QK_NVFP4 64 /* ggml QK_NVFP4: four 16-weight sub-blocks */

typedef struct { uint16_t d; uint8_t qs[16]; } se_block_iq4_nl;                                   /* 18 */
typedef struct { uint16_t d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; } se_block_iq4_xs; /* 136 */
typedef struct { uint8_t qs[48]; uint8_t qh[4]; uint16_t d; } se_block_tq1_0;                       /* 54 */
typedef struct { uint8_t qs[64]; uint16_t d; } se_block_tq2_0;                                      /* 66 */
typedef struct { uint8_t e; uint8_t qs[16]; } se_block_mxfp4;                                      /* 17 */
typedef struct { uint16_t d; uint8_t qs[16]; } se_block_q1_0;                                      /* 18 */
typedef struct { uint16_t d; uint8_t qs[16]; } se_block_q2_0;                                      /* 18 */
typedef struct { uint8_t d[4]; uint8_t qs[32]; } se_block_nvfp4;                                    /* 36 */

_Static_assert(sizeof(se_block_iq4_nl) == 18, "iq4_nl layout");
_Static_assert(sizeof(se_block_iq4_xs) == 136, "iq4_xs layout");
_Static_assert(sizeof(se_block_tq1_0) == 54, "tq1_0 layout");
_Static_assert(sizeof(se_block_tq2_0) == 66, "tq2_0 layout");
_Static_assert(sizeof(se_block_mxfp4) == 17, "mxfp4 layout");
_Static_assert(sizeof(se_block_q1_0) == 18, "q1_0 layout");
_Static_assert(sizeof(se_block_q2_0) == 18, "q2_0 layout");
_Static_assert(sizeof(se_block_nvfp4) == 36, "nvfp4 layout");

/* C's roundf then (int), as ggml's x86-64 build evaluates `(int)roundf(v)`: half away from zero, and
 * INT32_MIN ("integer indefinite") for NaN and out-of-range values. Defined C, vectorizable. */
SE_INLINE int se_round_away2(float v) {
    const int inr = fabsf(v) < 2147483648.f;
    int r = inr ? (int)v : INT32_MIN;
    const float frac = v - (float)r; /* exact when in range */
    r += inr ? (frac >= 0.5f) - (frac <= -0.5f) : 0;
    return r;
}

/* max |x[j]| of n (a multiple of 8) values, reduced in 8 lanes (max is exact in any order) */
SE_INLINE float se_amax_n(const float *x, int n) {
    float m[8];
    for (int l = 0; l < 8; ++l) m[l] = fabsf(x[l]);
    for (int c = 1; c < n / 8; ++c)
        SE_LANES for (int l = 0; l < 8; ++l) {
            const float a = fabsf(x[8 * c + l]);
            m[l] = a > m[l] ? a : m[l];
        }
    float amax = 0.0f;
    for (int l = 0; l < 8; ++l) amax = m[l] > amax ? m[l] : amax;
    return amax;
}

#endif /* SE_BLOCKS2_H */
