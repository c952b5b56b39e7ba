/* Legacy 32-weight block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (quantize and dequantize).
 *
 * Same arithmetic as ggml's quantize_row_*_ref. Per block, the elementwise work (scale, round,
 * pack) is written as fixed-length loops the compiler vectorizes; the block extremes are
 * reduced in 8 partial lanes (max/min are exact in any order) and then fixed up so the
 * result is the element ggml's sequential scan keeps: the first one reaching the extreme,
 * which only matters for the sign of a zero.
 */
#include <float.h>
#include <math.h>

#include "se_internal.h"

/* the element with the largest magnitude, first one on ties; +0 when all are zero. The
 * magnitude is reduced in 8 lanes; only its sign needs the scan order, and only when both
 * +amax and -amax occur in the block. */
SE_INLINE float se_signed_absmax(const float *x) {
    float m[8];
    for (int l = 0; l < 8; ++l) m[l] = fabsf(x[l]);
    for (int c = 1; c < 4; ++c)
        SE_LANES for (int l = 0; l < 8; ++l) {
            const float a = fabsf(x[8 * c + l]);
            m[l] = a > m[l] ? a : m[l];
        }
    float amax = 0.0f;
    for (int l = 0; l < 8; ++l) amax = m[l] > amax ? m[l] : amax;
    if (!(amax > 0.0f)) return 0.0f;
    int pos = 0, neg = 0;
    _Pragma("omp simd reduction(|:pos, neg)") for (int j = 0; j < 32; ++j) {
        pos |= x[j] == amax;
        neg |= x[j] == -amax;
    }
    if (pos != neg) return pos ? amax : -amax;
    for (int j = 0; j < 32; ++j)
        if (fabsf(x[j]) == amax) return x[j];
    return 0.0f;
}

/* min and max as ggml's `if (v < min) min = v; if (v > max) max = v;` scan from +-FLT_MAX */
SE_INLINE void se_minmax(const float *x, float *pmin, float *pmax) {
    float mn[8], mx[8];
    for (int l = 0; l < 8; ++l) { mn[l] = FLT_MAX; mx[l] = -FLT_MAX; }
    for (int c = 0; c < 4; ++c)
        SE_LANES for (int l = 0; l < 8; ++l) {
            const float v = x[8 * c + l];
            mn[l] = v < mn[l] ? v : mn[l];
            mx[l] = v > mx[l] ? v : mx[l];
        }
    float a = FLT_MAX, b = -FLT_MAX;
    for (int l = 0; l < 8; ++l) {
        a = mn[l] < a ? mn[l] : a;
        b = mx[l] > b ? mx[l] : b;
    }
    if (a == 0.0f)
        for (int j = 0; j < 32; ++j) if (x[j] == 0.0f) { a = x[j]; break; }
    if (b == 0.0f)
        for (int j = 0; j < 32; ++j) if (x[j] == 0.0f) { b = x[j]; break; }
    *pmin = a;
    *pmax = b;
}

/* float -> int as ggml's x86 build converts: truncation, and INT32_MIN ("integer indefinite") for
 * NaN and values out of int range (reached when a block's scale d is subnormal and 1/d = inf).
 * Written out so that it is defined C and the same in every vectorized clone. */
SE_INLINE int se_f2i(float v) { return fabsf(v) < 2147483648.f ? (int)v : INT32_MIN; }

/* roundf (half away from zero) then conversion, as ggml's `int8 = roundf(v)`, vectorizable */
SE_INLINE int se_round_away(float v) {
    const int inr = fabsf(v) < 2147483648.f;
    int r = inr ? (int)v : INT32_MIN;
    const float frac = v - (float)r; /* exact when in range */
    r += inr ? (frac >= 0.5f) - (frac <= -0.5f) : 0;
    return r;
}

SE_MULTIVERSION
void se_quantize_q8_0(const float *x, void *vy, int64_t k) {
    se_block_q8_0 *y = (se_block_q8_0 *)vy;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK) {
        float m[8];
        for (int l = 0; l < 8; ++l) m[l] = fabsf(x[l]);
        for (int c = 1; c < 4; ++c)
            SE_LANES for (int l = 0; l < 8; ++l) {
                const float a = fabsf(x[8 * c + l]);
                m[l] = a > m[l] ? a : m[l];
            }
        float amax = 0.0f;
        for (int l = 0; l < 8; ++l) amax = m[l] > amax ? m[l] : amax;
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = se_fp32_to_fp16(d);
        int8_t q[32];
        SE_LANES for (int j = 0; j < 32; ++j) q[j] = (int8_t)se_round_away(x[j] * id);
        memcpy(y[i].qs, q, 32);
    }
}

SE_MULTIVERSION
void se_quantize_q4_0(const float *x, void *vy, int64_t k) {
    se_block_q4_0 *y = (se_block_q4_0 *)vy;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK) {
        const float max = se_signed_absmax(x);
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = se_fp32_to_fp16(d);
        uint8_t qs[16];
        SE_LANES for (int j = 0; j < 16; ++j) {
            const int v0 = (int8_t)se_f2i(x[j] * id + 8.5f), v1 = (int8_t)se_f2i(x[j + 16] * id + 8.5f);
            qs[j] = (uint8_t)((v0 < 15 ? v0 : 15) | ((v1 < 15 ? v1 : 15) << 4));
        }
        memcpy(y[i].qs, qs, 16);
    }
}

SE_MULTIVERSION
void se_quantize_q4_1(const float *x, void *vy, int64_t k) {
    se_block_q4_1 *y = (se_block_q4_1 *)vy;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK) {
        float min, max;
        se_minmax(x, &min, &max);
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = se_fp32_to_fp16(d);
        y[i].m = se_fp32_to_fp16(min);
        uint8_t qs[16];
        SE_LANES for (int j = 0; j < 16; ++j) {
            const int v0 = (int8_t)se_f2i((x[j] - min) * id + 0.5f);
            const int v1 = (int8_t)se_f2i((x[j + 16] - min) * id + 0.5f);
            qs[j] = (uint8_t)((v0 < 15 ? v0 : 15) | ((v1 < 15 ? v1 : 15) << 4));
        }
        memcpy(y[i].qs, qs, 16);
    }
}

SE_MULTIVERSION
void se_quantize_q5_0(const float *x, void *vy, int64_t k) {
    se_block_q5_0 *y = (se_block_q5_0 *)vy;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK) {
        const float max = se_signed_absmax(x);
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = se_fp32_to_fp16(d);
        uint8_t q[32];
        SE_LANES for (int j = 0; j < 32; ++j) {
            const int v = (int8_t)se_f2i(x[j] * id + 16.5f);
            q[j] = (uint8_t)(v < 31 ? v : 31);
        }
        se_pack5(q, y[i].qs, y[i].qh);
    }
}

SE_MULTIVERSION
void se_quantize_q5_1(const float *x, void *vy, int64_t k) {
    se_block_q5_1 *y = (se_block_q5_1 *)vy;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, x += SE_QK) {
        float min, max;
        se_minmax(x, &min, &max);
        const float d = (max - min) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = se_fp32_to_fp16(d);
        y[i].m = se_fp32_to_fp16(min);
        uint8_t q[32];
        SE_LANES for (int j = 0; j < 32; ++j) q[j] = (uint8_t)se_f2i((x[j] - min) * id + 0.5f);
        se_pack5(q, y[i].qs, y[i].qh);
    }
}

/* ---- dequantize: y = q*d (+ m), in ggml's operation order ---- */

SE_MULTIVERSION
void se_dequantize_q8_0(const void *vx, float *y, int64_t k) {
    const se_block_q8_0 *x = (const se_block_q8_0 *)vx;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, y += SE_QK) {
        const float d = se_fp16_to_fp32(x[i].d);
        for (int j = 0; j < 32; ++j) y[j] = (float)x[i].qs[j] * d;
    }
}

SE_MULTIVERSION
void se_dequantize_q4_0(const void *vx, float *y, int64_t k) {
    const se_block_q4_0 *x = (const se_block_q4_0 *)vx;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, y += SE_QK) {
        const float d = se_fp16_to_fp32(x[i].d);
        for (int j = 0; j < 16; ++j) {
            y[j] = (float)((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + 16] = (float)((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

SE_MULTIVERSION
void se_dequantize_q4_1(const void *vx, float *y, int64_t k) {
    const se_block_q4_1 *x = (const se_block_q4_1 *)vx;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, y += SE_QK) {
        const float d = se_fp16_to_fp32(x[i].d), m = se_fp16_to_fp32(x[i].m);
        for (int j = 0; j < 16; ++j) {
            y[j] = (float)(x[i].qs[j] & 0x0F) * d + m;
            y[j + 16] = (float)(x[i].qs[j] >> 4) * d + m;
        }
    }
}

SE_MULTIVERSION
void se_dequantize_q5_0(const void *vx, float *y, int64_t k) {
    const se_block_q5_0 *x = (const se_block_q5_0 *)vx;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, y += SE_QK) {
        const float d = se_fp16_to_fp32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
            const int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = (float)(((x[i].qs[j] & 0x0F) | h0) - 16) * d;
            y[j + 16] = (float)(((x[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

SE_MULTIVERSION
void se_dequantize_q5_1(const void *vx, float *y, int64_t k) {
    const se_block_q5_1 *x = (const se_block_q5_1 *)vx;
    const int64_t nb = k / SE_QK;
    for (int64_t i = 0; i < nb; ++i, y += SE_QK) {
        const float d = se_fp16_to_fp32(x[i].d), m = se_fp16_to_fp32(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
            const int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = (float)((x[i].qs[j] & 0x0F) | h0) * d + m;
            y[j + 16] = (float)((x[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}
