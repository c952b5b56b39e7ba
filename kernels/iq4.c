/* IQ4_NL (32 weights) and IQ4_XS (256 weights, 6-bit sub-block scales): ggml's
 * quantize_row_iq4_nl_impl as ggml_quantize_chunk runs it (ntry = 7, with or without importance
 * weights) and dequantize_row_iq4_{nl,xs}.
 *
 * Per 32-weight sub-block: 16 trial scales, each mapping x to the nearest entry of the non-linear
 * table and keeping the least-squares scale that raises sumqx^2/sumq2 (ggml's order of operations,
 * sums in sequence). The table lookup ggml does by binary search (best_index_int8) is branchless
 * here: the entries are integers, so the bracketing pair follows from the comparisons al >= v[i],
 * and the final choice is the same float comparison al - v[mu-1] < v[mu] - al; it is vectorized
 * over the sub-block's 32 values. See slimedge/quant/iq4.py for the algorithm step by step. */
#include "se_blocks2.h"

static const int8_t se_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1, 13, 25, 38, 53, 69, 89, 113};

#define SE_IQ4_NTRY 7

/* best_index_int8(16, kvalues_iq4nl, al): index (want_index) or table value */
SE_INLINE float se_iq4_pick(float al, int *index) {
    int mu = 1;
    float lo = -127.f, hi = -104.f;
#define SE_STEP(i, v, vnext) { const int c = al >= (v); mu += c; lo = c ? (v) : lo; hi = c ? (vnext) : hi; }
    SE_STEP(1, -104.f, -83.f) SE_STEP(2, -83.f, -65.f) SE_STEP(3, -65.f, -49.f) SE_STEP(4, -49.f, -35.f)
    SE_STEP(5, -35.f, -22.f) SE_STEP(6, -22.f, -10.f) SE_STEP(7, -10.f, 1.f) SE_STEP(8, 1.f, 13.f)
    SE_STEP(9, 13.f, 25.f) SE_STEP(10, 25.f, 38.f) SE_STEP(11, 38.f, 53.f) SE_STEP(12, 53.f, 69.f)
    SE_STEP(13, 69.f, 89.f) SE_STEP(14, 89.f, 113.f)
#undef SE_STEP
    const int low = (al - lo) < (hi - al);
    int idx = mu - low;
    float v = low ? lo : hi;
    if (al <= -127.f) { idx = 0; v = -127.f; }
    if (al >= 113.f || al != al) { idx = 15; v = 113.f; } /* NaN: ggml's search ends on the last entry */
    *index = idx;
    return v;
}

SE_INLINE float se_iq4_value(float al) {
    int i;
    return se_iq4_pick(al, &i);
}

SE_INLINE int se_iq4_index(float al) {
    int i;
    se_iq4_pick(al, &i);
    return i;
}

/* sum w*q*x and sum w*q*q over a sub-block for one trial scale id, summed in order */
SE_INLINE void se_iq4_sums(const float *xb, const float *w, float id, float *sqx, float *sq2) {
    float pqx[32], pq2[32];
    SE_LANES for (int j = 0; j < 32; ++j) {
        const float q = se_iq4_value(id * xb[j]);
        const float wq = w[j] * q;
        pqx[j] = wq * xb[j];
        pq2[j] = wq * q;
    }
    float a = 0.0f, b = 0.0f;
    for (int j = 0; j < 32; ++j) {
        a += pqx[j];
        b += pq2[j];
    }
    *sqx = a;
    *sq2 = b;
}

/* the scale of one 32-weight sub-block (0 when max |x| < GROUP_MAX_EPS) */
static float se_iq4_block_scale(const float *xb, const float *w) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j) {
        const float ax = fabsf(xb[j]);
        if (ax > amax) { amax = ax; max = xb[j]; }
    }
    if (amax < 1e-15f) return 0.0f;
    float d = -max / (float)se_kvalues_iq4nl[0];
    float sqx, sq2;
    se_iq4_sums(xb, w, 1 / d, &sqx, &sq2);
    d = sq2 > 0 ? sqx / sq2 : 0.f;
    float best = d * sqx;
    for (int itry = -SE_IQ4_NTRY; itry <= SE_IQ4_NTRY; ++itry) {
        se_iq4_sums(xb, w, (float)(itry + se_kvalues_iq4nl[0]) / max, &sqx, &sq2);
        if (sq2 > 0 && sqx * sqx > best * sq2) {
            d = sqx / sq2;
            best = d * sqx;
        }
    }
    return d;
}

/* one super-block of S = 32 (IQ4_NL) or 256 (IQ4_XS) weights; qw: NULL or S importance weights */
SE_INLINE void se_iq4_super(const int S, const float *x, const float *qw, uint16_t *dh, uint8_t *q4,
                            uint16_t *scales_h, uint8_t *scales_l) {
    float w[SE_QK_K], scales[8];
    uint8_t L[SE_QK_K];
    if (qw) {
        float sigma2 = 0;
        for (int j = 0; j < S; ++j) sigma2 += x[j] * x[j];
        sigma2 *= 2.f / S;
        SE_LANES for (int j = 0; j < S; ++j) w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
    } else {
        SE_LANES for (int j = 0; j < S; ++j) w[j] = x[j] * x[j];
    }
    const int nb = S / 32;
    for (int ib = 0; ib < nb; ++ib) scales[ib] = se_iq4_block_scale(x + 32 * ib, w + 32 * ib);
    if (nb == 1) {
        *dh = se_fp32_to_fp16(scales[0]);
        const float id = scales[0] ? 1 / scales[0] : 0;
        SE_LANES for (int j = 0; j < 32; ++j) L[j] = (uint8_t)se_iq4_index(id * x[j]);
    } else {
        float max_scale = 0, amax_scale = 0;
        for (int ib = 0; ib < nb; ++ib) {
            const float a = fabsf(scales[ib]);
            if (a > amax_scale) { amax_scale = a; max_scale = scales[ib]; }
        }
        const float d = -max_scale / 32;
        *dh = se_fp32_to_fp16(d);
        const float id = d ? 1 / d : 0.f;
        uint16_t sh = 0;
        for (int ib = 0; ib < nb; ++ib) {
            int l = se_nearest_int(id * scales[ib]);
            l = se_max_i(-32, se_min_i(31, l));
            const float dl = d * l;
            const float idl = dl ? 1 / dl : 0.f;
            const float *xb = x + 32 * ib;
            uint8_t *Lb = L + 32 * ib;
            SE_LANES for (int j = 0; j < 32; ++j) Lb[j] = (uint8_t)se_iq4_index(idl * xb[j]);
            l += 32;
            if (ib % 2 == 0) scales_l[ib / 2] = (uint8_t)(l & 0xf);
            else scales_l[ib / 2] |= (uint8_t)((l & 0xf) << 4);
            sh |= (uint16_t)((l >> 4) << (2 * (ib % 8)));
        }
        *scales_h = sh;
    }
    for (int i = 0; i < nb; ++i)
        for (int j = 0; j < 16; ++j) q4[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

SE_MULTIVERSION
void se_quantize_iq4_nl(const float *x, void *vy, int64_t k) {
    se_block_iq4_nl *y = (se_block_iq4_nl *)vy;
    for (int64_t i = 0; i < k / SE_QK; ++i) se_iq4_super(SE_QK, x + SE_QK * i, NULL, &y[i].d, y[i].qs, NULL, NULL);
}

SE_MULTIVERSION
void se_quantize_iq4_nl_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    se_block_iq4_nl *y = (se_block_iq4_nl *)vy;
    for (int64_t i = 0; i < n_per_row / SE_QK; ++i)
        se_iq4_super(SE_QK, x + SE_QK * i, qw + SE_QK * i, &y[i].d, y[i].qs, NULL, NULL);
}

SE_MULTIVERSION
void se_quantize_iq4_xs(const float *x, void *vy, int64_t k) {
    se_block_iq4_xs *y = (se_block_iq4_xs *)vy;
    for (int64_t i = 0; i < k / SE_QK_K; ++i)
        se_iq4_super(SE_QK_K, x + SE_QK_K * i, NULL, &y[i].d, y[i].qs, &y[i].scales_h, y[i].scales_l);
}

SE_MULTIVERSION
void se_quantize_iq4_xs_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    se_block_iq4_xs *y = (se_block_iq4_xs *)vy;
    for (int64_t i = 0; i < n_per_row / SE_QK_K; ++i)
        se_iq4_super(SE_QK_K, x + SE_QK_K * i, qw + SE_QK_K * i, &y[i].d, y[i].qs, &y[i].scales_h, y[i].scales_l);
}

SE_MULTIVERSION
void se_dequantize_iq4_nl(const void *vx, float *y, int64_t k) {
    const se_block_iq4_nl *x = (const se_block_iq4_nl *)vx;
    for (int64_t i = 0; i < k / SE_QK; ++i, y += SE_QK) {
        const float d = se_fp16_to_fp32(x[i].d);
        for (int j = 0; j < 16; ++j) {
            y[j] = d * se_kvalues_iq4nl[x[i].qs[j] & 0xf];
            y[j + 16] = d * se_kvalues_iq4nl[x[i].qs[j] >> 4];
        }
    }
}

SE_MULTIVERSION
void se_dequantize_iq4_xs(const void *vx, float *y, int64_t k) {
    const se_block_iq4_xs *x = (const se_block_iq4_xs *)vx;
    for (int64_t i = 0; i < k / SE_QK_K; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        const uint8_t *qs = x[i].qs;
        for (int ib = 0; ib < 8; ++ib, y += 32, qs += 16) {
            const int ls = ((x[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((x[i].scales_h >> 2 * ib) & 3) << 4);
            const float dl = d * (ls - 32);
            for (int j = 0; j < 16; ++j) {
                y[j] = dl * se_kvalues_iq4nl[qs[j] & 0xf];
                y[j + 16] = dl * se_kvalues_iq4nl[qs[j] >> 4];
            }
        }
    }
}
