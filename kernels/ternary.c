/* TQ1_0 / TQ2_0 (ternary, 256 weights), as ggml's quantize_row_tq{1,2}_0_ref / dequantize_row_*.
 *
 * d = max |x|, trit t = lroundf(x/d) + 1. For inf/NaN (a subnormal d makes 1/d = inf) glibc's x86-64
 * lroundf returns LONG_MIN, and ggml's `int xi = lroundf(..) + 1` keeps the low 32 bits: 1, the zero
 * trit. se_trit reproduces that on every platform. TQ2_0 packs 4 trits per byte (2 bits each), TQ1_0
 * 5 per byte in base 3 (stored as ceil(v*256/243)); layouts in slimedge/quant/ternary.py. Importance
 * weights are ignored, as ggml does. */
#include "se_blocks2.h"

/* lroundf(v) + 1 with ggml's x86 result for inf/NaN (1). v = x * (1/max|x|) is within
 * [-1 - 2^-23, 1 + 2^-23] when finite, so rounding is two comparisons (float only: vectorizes). */
SE_INLINE uint8_t se_trit(float v) {
    return (uint8_t)(fabsf(v) < 1.5f ? 1 + (v >= 0.5f) - (v <= -0.5f) : 1);
}

SE_INLINE float se_tq_scale(const float *x, uint8_t *t) {
    const float d = se_amax_n(x, SE_QK_K);
    const float id = d ? 1.0f / d : 0.0f;
    SE_LANES for (int j = 0; j < SE_QK_K; ++j) t[j] = se_trit(x[j] * id);
    return d;
}

SE_INLINE uint8_t se_base3(unsigned v) { return (uint8_t)((v * 256 + 242) / 243); }

SE_MULTIVERSION
void se_quantize_tq1_0(const float *x, void *vy, int64_t k) {
    se_block_tq1_0 *y = (se_block_tq1_0 *)vy;
    const int64_t nb = k / SE_QK_K;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK_K) {
        uint8_t t[SE_QK_K];
        y[i].d = se_fp32_to_fp16(se_tq_scale(x, t));
        SE_LANES for (int m = 0; m < 32; ++m)
            y[i].qs[m] = se_base3((((t[m] * 3u + t[m + 32]) * 3u + t[m + 64]) * 3u + t[m + 96]) * 3u + t[m + 128]);
        const uint8_t *u = t + 160;
        SE_LANES for (int m = 0; m < 16; ++m)
            y[i].qs[32 + m] = se_base3((((u[m] * 3u + u[m + 16]) * 3u + u[m + 32]) * 3u + u[m + 48]) * 3u + u[m + 64]);
        const uint8_t *h = t + 240;
        for (int j = 0; j < 4; ++j)
            y[i].qh[j] = se_base3((((h[j] * 3u + h[j + 4]) * 3u + h[j + 8]) * 3u + h[j + 12]) * 3u);
    }
}

SE_MULTIVERSION
void se_quantize_tq2_0(const float *x, void *vy, int64_t k) {
    se_block_tq2_0 *y = (se_block_tq2_0 *)vy;
    const int64_t nb = k / SE_QK_K;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK_K) {
        uint8_t t[SE_QK_K];
        y[i].d = se_fp32_to_fp16(se_tq_scale(x, t));
        for (int h = 0; h < 2; ++h) {
            const uint8_t *u = t + 128 * h;
            SE_LANES for (int m = 0; m < 32; ++m)
                y[i].qs[32 * h + m] = (uint8_t)((u[m] & 3) | ((u[m + 32] & 3) << 2) | ((u[m + 64] & 3) << 4) |
                                                ((u[m + 96] & 3) << 6));
        }
    }
}

void se_quantize_tq1_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    (void)qw;
    se_quantize_tq1_0(x, y, n_per_row);
}

void se_quantize_tq2_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    (void)qw;
    se_quantize_tq2_0(x, y, n_per_row);
}

/* trit n (0..4) of a base-3 byte: (uint8)(q * 3^n) * 3 >> 8, minus 1 */
SE_INLINE float se_trit_value(uint8_t q, unsigned p3, float d) {
    const uint8_t s = (uint8_t)(q * p3);
    return (float)((int16_t)(((uint16_t)s * 3) >> 8) - 1) * d;
}

SE_MULTIVERSION
void se_dequantize_tq1_0(const void *vx, float *y, int64_t k) {
    const se_block_tq1_0 *x = (const se_block_tq1_0 *)vx;
    const int64_t nb = k / SE_QK_K;
    static const unsigned pow3[5] = {1, 3, 9, 27, 81};
    for (int64_t i = 0; i < nb; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        for (int n = 0; n < 5; ++n)
            for (int m = 0; m < 32; ++m) *y++ = se_trit_value(x[i].qs[m], pow3[n], d);
        for (int n = 0; n < 5; ++n)
            for (int m = 0; m < 16; ++m) *y++ = se_trit_value(x[i].qs[32 + m], pow3[n], d);
        for (int n = 0; n < 4; ++n)
            for (int j = 0; j < 4; ++j) *y++ = se_trit_value(x[i].qh[j], pow3[n], d);
    }
}

SE_MULTIVERSION
void se_dequantize_tq2_0(const void *vx, float *y, int64_t k) {
    const se_block_tq2_0 *x = (const se_block_tq2_0 *)vx;
    const int64_t nb = k / SE_QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 4; ++l)
                for (int m = 0; m < 32; ++m) *y++ = (float)((int)((x[i].qs[32 * h + m] >> (2 * l)) & 3) - 1) * d;
    }
}
