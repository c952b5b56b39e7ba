/* MXFP4 (32 weights: E8M0 exponent + 4-bit E2M1 values), as ggml's quantize_row_mxfp4_ref and
 * dequantize_row_mxfp4.
 *
 * e = (uint8)(floor(log2(amax)) - 2 + 127): the floor of the correctly rounded float32 log2 (computed
 * as (float)log2((double)amax), the same value as glibc's log2f, without depending on the platform's
 * log2f), the uint8 conversion taken modulo 256 as x86-64 does. Each weight takes the first index
 * minimizing fabsf(kvalues[i]*d - x): over the 8 magnitudes on |x| (the products are exact and
 * |-k*d - x| == |k*d - |x||), a negative x taking the negative entry (index + 8) unless zero wins.
 *
 * Fast path (a normal amax with biased exponent f >= 2 and mantissa bits < 0x7FF000): there
 * floor((float)log2(amax)) = f - 127 (log2 stays >= 3.5e-4 below the next integer, far more than half a
 * float32 ulp below 128; checked on every such float), so e = f - 2 in 0..252 and d = 2^(f-130) >= 2^-128:
 * every k*d and midpoint m*d (m = 0.5, 1.5, 2.5, 3.5, 5, 7, 10) is an exact finite float. The differences
 * to the two magnitudes around |x| are exact (multiples of ulp(|x|), at most |x|), every other magnitude
 * is at least d farther (rounding is monotonic, so it never ties), and ggml keeps the first of equal
 * errors: the index is the number of midpoints strictly below |x| -- seven compares, branch-free over the
 * block. Other blocks (zero, subnormal, inf/NaN or near-power-of-two amax, e wrapping, 8d overflowing)
 * take ggml's scan, vectorized over the block's values. ggml ignores importance weights for MXFP4; so
 * does se_quantize_mxfp4_imatrix. */
#include "se_blocks2.h"

static const int8_t se_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

SE_INLINE float se_e8m0_half(uint8_t e) {
    return se_bits_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

SE_INLINE uint8_t se_mxfp4_exponent(float amax) {
    if (!(amax > 0.0f)) return 0;
    const float l = floorf((float)log2((double)amax));
    return (uint8_t)((int32_t)(l - 2 + 127) & 0xFF);
}

/* ggml's scan for one block, for the blocks the midpoint path leaves out */
SE_INLINE void se_mxfp4_block_scan(const float *x, se_block_mxfp4 *y, uint8_t e) {
    const float d = se_e8m0_half(e);
    float a[SE_QK], best[SE_QK], idx[SE_QK];
    SE_LANES for (int j = 0; j < SE_QK; ++j) { a[j] = fabsf(x[j]); best[j] = a[j]; idx[j] = 0.0f; }
    for (int c = 1; c < 8; ++c) { /* candidate magnitudes in ggml's order; first minimum kept */
        const float m = (float)se_kvalues_mxfp4[c] * d;
        SE_LANES for (int j = 0; j < SE_QK; ++j) {
            const float err = fabsf(m - a[j]);
            idx[j] = err < best[j] ? (float)c : idx[j];
            best[j] = err < best[j] ? err : best[j];
        }
    }
    uint8_t q[SE_QK];
    SE_LANES for (int j = 0; j < SE_QK; ++j) q[j] = (uint8_t)(int)(x[j] < 0.0f && idx[j] > 0.0f ? idx[j] + 8.0f : idx[j]);
    y->e = e;
    for (int j = 0; j < 16; ++j) y->qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
}

SE_MULTIVERSION
void se_quantize_mxfp4(const float *x, void *vy, int64_t k) {
    se_block_mxfp4 *y = (se_block_mxfp4 *)vy;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK) {
        const float amax = se_amax_n(x, SE_QK);
        const uint32_t ab = se_f32_bits(amax), f = ab >> 23;
        if (f < 2 || f > 254 || (ab & 0x7FFFFFu) >= 0x7FF000u) { /* not the fast path: see the top */
            se_mxfp4_block_scan(x, &y[i], se_mxfp4_exponent(amax));
            continue;
        }
        const uint8_t e = (uint8_t)(f - 2); /* 0..252 */
        const float d = se_e8m0_half(e);
        /* the midpoints between consecutive magnitudes, times d: exact (d is a power of two >= 2^-128) */
        const float t0 = 0.5f * d, t1 = 1.5f * d, t2 = 2.5f * d, t3 = 3.5f * d, t4 = 5.0f * d, t5 = 7.0f * d,
                    t6 = 10.0f * d;
        uint32_t xb[SE_QK];
        memcpy(xb, x, sizeof xb);
        uint8_t q[SE_QK];
        SE_LANES for (int j = 0; j < SE_QK; ++j) {
            const float a = se_bits_f32(xb[j] & 0x7FFFFFFFu);
            const uint32_t n = (uint32_t)(a > t0) + (uint32_t)(a > t1) + (uint32_t)(a > t2) + (uint32_t)(a > t3) +
                               (uint32_t)(a > t4) + (uint32_t)(a > t5) + (uint32_t)(a > t6);
            q[j] = (uint8_t)(n | ((uint32_t)(n != 0) & (xb[j] >> 31)) << 3);
        }
        y[i].e = e;
        for (int j = 0; j < 16; ++j) y[i].qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
    }
}

void se_quantize_mxfp4_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    (void)qw;
    se_quantize_mxfp4(x, y, n_per_row);
}

SE_MULTIVERSION
void se_dequantize_mxfp4(const void *vx, float *y, int64_t k) {
    const se_block_mxfp4 *x = (const se_block_mxfp4 *)vx;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, y += SE_QK) {
        const float d = se_e8m0_half(x[i].e);
        for (int j = 0; j < 16; ++j) {
            y[j] = (float)se_kvalues_mxfp4[x[i].qs[j] & 0x0F] * d;
            y[j + 16] = (float)se_kvalues_mxfp4[x[i].qs[j] >> 4] * d;
        }
    }
}
