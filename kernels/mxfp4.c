/* MXFP4 (32 weights: E8M0 exponent + 4-bit E2M1 values), as ggml's quantize_row_mxfp4_ref and
 * dequantize_row_mxfp4.
 *
 * e = (uint8)(floor(log2(amax)) - 2 + 127): the floor of the correctly rounded float32 log2 (computed
 * as (float)log2((double)amax), the same value as glibc's log2f, without depending on the platform's
 * log2f), the uint8 conversion taken modulo 256 as x86-64 does. Each weight takes the first index
 * minimizing fabsf(kvalues[i]*d - x): the search runs over the 8 magnitudes on |x| (the products are
 * exact and |-k*d - x| == |k*d - |x||), and a negative x takes the negative entry (index + 8) unless
 * zero wins -- ggml's 16-way scan, vectorized over the block's values. ggml ignores importance
 * weights for MXFP4; so does se_quantize_mxfp4_imatrix. */
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

SE_MULTIVERSION
void se_quantize_mxfp4(const float *x, void *vy, int64_t k) {
    se_block_mxfp4 *y = (se_block_mxfp4 *)vy;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK) {
        const uint8_t e = se_mxfp4_exponent(se_amax_n(x, SE_QK));
        const float d = se_e8m0_half(e);
        const float m1 = 1 * d, m2 = 2 * d, m3 = 3 * d, m4 = 4 * d, m6 = 6 * d, m8 = 8 * d, m12 = 12 * d;
        uint8_t q[SE_QK];
        SE_LANES for (int j = 0; j < SE_QK; ++j) {
            const float a = fabsf(x[j]);
            float best = a, err;
            int idx = 0;
#define SE_TRY(m, i) err = fabsf(m - a); if (err < best) { best = err; idx = i; }
            SE_TRY(m1, 1) SE_TRY(m2, 2) SE_TRY(m3, 3) SE_TRY(m4, 4) SE_TRY(m6, 5) SE_TRY(m8, 6) SE_TRY(m12, 7)
#undef SE_TRY
            q[j] = (uint8_t)(idx + ((x[j] < 0.0f) & (idx > 0)) * 8);
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
