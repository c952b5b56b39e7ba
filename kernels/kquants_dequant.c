/* K-quant dequantizers: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K -> float32, with ggml's dequantize_row_*
 * operation order (e.g. Q4_K: y = (d*sc)*q - dmin*m; Q6_K: y = (d*sc)*q). */
#include "se_internal.h"

SE_MULTIVERSION
void se_dequantize_q2_k(const void *vx, float *y, int64_t k) {
    const se_block_q2_k *x = (const se_block_q2_k *)vx;
    const int64_t nb = k / SE_QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = se_fp16_to_fp32(x[i].d), min = se_fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int n = 0; n < 256; n += 128, q += 32)
            for (int shift = 0; shift < 8; shift += 2)
                for (int half = 0; half < 2; ++half) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; ++l) *y++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
                }
    }
}

SE_MULTIVERSION
void se_dequantize_q3_k(const void *vx, float *y, int64_t k) {
    const se_block_q3_k *x = (const se_block_q3_k *)vx;
    const int64_t nb = k / SE_QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const float d_all = se_fp16_to_fp32(x[i].d);
        const uint8_t *q = x[i].qs, *hm = x[i].hmask, *s = x[i].scales;
        int8_t scales[16];
        for (int j = 0; j < 16; ++j) {
            const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
            const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
            scales[j] = (int8_t)((lo | (hi << 4)) - 32);
        }
        int is = 0;
        uint8_t m = 1;
        for (int n = 0; n < 256; n += 128, q += 32)
            for (int shift = 0; shift < 8; shift += 2, m <<= 1)
                for (int half = 0; half < 2; ++half) {
                    const float dl = d_all * scales[is++];
                    SE_LANES for (int l = 0; l < 16; ++l) {
                        const int v = ((q[l + 16 * half] >> shift) & 3) - ((hm[l + 16 * half] & m) ? 0 : 4);
                        y[l] = dl * (float)v;
                    }
                    y += 16;
                }
    }
}

SE_INLINE void se_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

SE_MULTIVERSION
void se_dequantize_q4_k(const void *vx, float *y, int64_t k) {
    const se_block_q4_k *x = (const se_block_q4_k *)vx;
    const int64_t nb = k / SE_QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const uint8_t *q = x[i].qs;
        const float d = se_fp16_to_fp32(x[i].d), min = se_fp16_to_fp32(x[i].dmin);
        for (int j = 0, is = 0; j < 256; j += 64, q += 32, is += 2) {
            uint8_t sc, m;
            se_scale_min_k4(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            se_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) y[l] = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) y[l + 32] = d2 * (float)(q[l] >> 4) - m2;
            y += 64;
        }
    }
}

SE_MULTIVERSION
void se_dequantize_q5_k(const void *vx, float *y, int64_t k) {
    const se_block_q5_k *x = (const se_block_q5_k *)vx;
    const int64_t nb = k / SE_QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        const float d = se_fp16_to_fp32(x[i].d), min = se_fp16_to_fp32(x[i].dmin);
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0, is = 0; j < 256; j += 64, ql += 32, is += 2, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            se_scale_min_k4(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            se_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) y[l] = d1 * (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) y[l + 32] = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            y += 64;
        }
    }
}

SE_MULTIVERSION
void se_dequantize_q6_k(const void *vx, float *y, int64_t k) {
    const se_block_q6_k *x = (const se_block_q6_k *)vx;
    const int64_t nb = k / SE_QK_K;
    for (int64_t i = 0; i < nb; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
            for (int h = 0; h < 2; ++h) { /* l in [16h, 16h+16): scale index is = h; (d*sc)*q as ggml */
                const float d1 = d * sc[h], d2 = d * sc[h + 2], d3 = d * sc[h + 4], d4 = d * sc[h + 6];
                SE_LANES for (int l = 16 * h; l < 16 * h + 16; ++l) {
                    const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d1 * (float)q1;
                    y[l + 32] = d2 * (float)q2;
                    y[l + 64] = d3 * (float)q3;
                    y[l + 96] = d4 * (float)q4;
                }
            }
    }
}
