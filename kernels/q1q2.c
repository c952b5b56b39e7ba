/* Q1_0 (128 weights: mean |x| and one sign bit each) and Q2_0 (64 weights: max |x| and 2-bit
 * values -1..2), as ggml's quantize_row_q1_0_ref / quantize_row_q2_0_ref and dequantize_row_*.
 *
 * Q1_0's mean is a sequential float sum (s += fabsf(x[j]), j = 0..127): kept in order per block,
 * with 8 blocks summed side by side (one lane each), so the adds pipeline. Neither type uses
 * importance weights (ggml's quantize_q1_0 / quantize_q2_0 ignore them), so the _imatrix entry
 * points quantize the row as it is. */
#include "se_blocks2.h"

SE_INLINE void se_q1_0_bits(const float *x, uint8_t *qs) {
    uint8_t s[SE_QK1_0];
    SE_LANES for (int j = 0; j < SE_QK1_0; ++j) s[j] = x[j] >= 0.0f;
    for (int b = 0; b < 16; ++b) {
        unsigned v = 0;
        for (int k = 0; k < 8; ++k) v |= (unsigned)s[8 * b + k] << k;
        qs[b] = (uint8_t)v;
    }
}

SE_MULTIVERSION
void se_quantize_q1_0(const float *x, void *vy, int64_t k) {
    se_block_q1_0 *y = (se_block_q1_0 *)vy;
    const int64_t nb = k / SE_QK1_0;
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) { /* 8 blocks, one running sum each: the same order per block */
        float s[8] = {0};
        const float *xb = x + i * SE_QK1_0;
        for (int j = 0; j < SE_QK1_0; ++j) /* independent chains (no SIMD: strided loads) */
            for (int l = 0; l < 8; ++l) s[l] += fabsf(xb[l * SE_QK1_0 + j]);
        for (int l = 0; l < 8; ++l) {
            y[i + l].d = se_fp32_to_fp16(s[l] / SE_QK1_0);
            se_q1_0_bits(xb + l * SE_QK1_0, y[i + l].qs);
        }
    }
    for (; i < nb; ++i) {
        const float *xb = x + i * SE_QK1_0;
        float s = 0.0f;
        for (int j = 0; j < SE_QK1_0; ++j) s += fabsf(xb[j]);
        y[i].d = se_fp32_to_fp16(s / SE_QK1_0);
        se_q1_0_bits(xb, y[i].qs);
    }
}

void se_quantize_q1_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    (void)qw;
    se_quantize_q1_0(x, y, n_per_row);
}

SE_MULTIVERSION
void se_dequantize_q1_0(const void *vx, float *y, int64_t k) {
    const se_block_q1_0 *x = (const se_block_q1_0 *)vx;
    const int64_t nb = k / SE_QK1_0;
    for (int64_t i = 0; i < nb; ++i, y += SE_QK1_0) {
        const float d = se_fp16_to_fp32(x[i].d), nd = -d;
        for (int j = 0; j < SE_QK1_0; ++j) y[j] = (x[i].qs[j >> 3] >> (j & 7)) & 1 ? d : nd;
    }
}

SE_MULTIVERSION
void se_quantize_q2_0(const float *x, void *vy, int64_t k) {
    se_block_q2_0 *y = (se_block_q2_0 *)vy;
    const int64_t nb = k / SE_QK2_0;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK2_0) {
        const float d = se_amax_n(x, SE_QK2_0);
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        y[i].d = se_fp32_to_fp16(d);
        uint8_t q[SE_QK2_0];
        /* (int)roundf(v) + 1 clamped to 0..3; v = x/max|x| is within 1 + 2^-23 when finite, and
         * inf/NaN (subnormal d) convert to INT32_MIN on x86, which clamps to 0 */
        SE_LANES for (int j = 0; j < SE_QK2_0; ++j) {
            const float v = x[j] * id;
            q[j] = (uint8_t)(fabsf(v) < 1.5f ? 1 + (v >= 0.5f) - (v <= -0.5f) : 0);
        }
        for (int b = 0; b < 16; ++b)
            y[i].qs[b] = (uint8_t)(q[4 * b] | (q[4 * b + 1] << 2) | (q[4 * b + 2] << 4) | (q[4 * b + 3] << 6));
    }
}

void se_quantize_q2_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    (void)qw;
    se_quantize_q2_0(x, y, n_per_row);
}

SE_MULTIVERSION
void se_dequantize_q2_0(const void *vx, float *y, int64_t k) {
    const se_block_q2_0 *x = (const se_block_q2_0 *)vx;
    const int64_t nb = k / SE_QK2_0;
    for (int64_t i = 0; i < nb; ++i, y += SE_QK2_0) {
        const float d = se_fp16_to_fp32(x[i].d);
        for (int j = 0; j < SE_QK2_0; ++j) y[j] = (float)((int)((x[i].qs[j >> 2] >> (2 * (j & 3))) & 3) - 1) * d;
    }
}
