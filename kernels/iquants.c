/* Grid i-quant quantizers, 2 and 3 bits: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S.
 *
 * Same bytes as ggml's quantize_iq2_xxs / _xs / _s, quantize_iq3_xxs / _s (ggml_quantize_chunk). Each
 * sub-block is sign-split into |x| (IQ2_XXS/XS and IQ3_XXS store 7 sign bits per 8 values, the eighth
 * fixed by parity), then a scan of trial scales rounds each group of 8 (IQ2) or 4 (IQ3) levels to the
 * nearest grid point (an off-grid key goes to its best neighbour, iq_internal.h) and keeps the scale
 * with the best weighted fit; the sub-block scales are then quantized against the largest. The code
 * follows ggml's operation order step by step (bit-exactness); speed comes from the precomputed
 * tables and from the backend's row-parallel threading.
 *
 * IQ2_XXS and IQ2_XS have no quantizer without importance weights in ggml (it asserts): their plain
 * entry points are unreachable (dispatch refuses them, SE_ERR_NEEDS_IMATRIX) and write zeros.
 */
#include "iq_internal.h"

/* ggml's 4-bit sub-block scale level: 0.5 * (s / d - 1) rounded, clamped to 0..15 (id = 1 / d) */
SE_INLINE int se_iq_scale4(float id, float s) {
    return se_max_i(0, se_min_i(15, se_nearest_int(0.5f * (id * s - 1))));
}

/* n such levels, two per byte, the even sub-block in the low nibble (IQ2_XS, IQ2_S, IQ3_S) */
SE_INLINE void se_iq_pack_scales4(const float *scales, int n, float id, uint8_t *out) {
    for (int ib = 0; ib < n; ib += 2)
        out[ib / 2] = (uint8_t)(se_iq_scale4(id, scales[ib]) | (se_iq_scale4(id, scales[ib + 1]) << 4));
}

/* ---- IQ2_XXS: 8 sub-blocks of 32, levels 0..2, 256-point grid, scale via make_qp_quants ---------- */

/* weighted fit of levels L (q = 2*L+1) to xval: sum w*x*q and sum w*q*q, in order */
SE_INLINE void se_iq_fit(int n, const float *weight, const float *xval, const int8_t *L, float *sumqx,
                         float *sumq2) {
    float a = 0, b = 0;
    for (int i = 0; i < n; ++i) {
        const float w = weight[i];
        const float q = 2 * L[i] + 1;
        a += w * xval[i] * q;
        b += w * q * q;
    }
    *sumqx = a;
    *sumq2 = b;
}

static void se_iq2_xxs_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq2_xxs *y) {
    const int kMaxQ = 3;
    float scales[8], weight[32], xval[32], waux[32];
    int8_t L[32], Laux[32];
    uint8_t block_signs[4];
    uint32_t q2[16];
    memset(q2, 0, sizeof(q2));
    y->d = 0;
    float max_scale = 0;
    const float sigma2 = se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 8; ++ib) {
        const float *xb = xbl + 32 * ib, *qw = qwbl + 32 * ib;
        for (int i = 0; i < 32; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
        for (int i = 0; i < 32; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < 4; ++k) block_signs[k] = se_iq_signs8(xb + 8 * k, weight + 8 * k, xval + 8 * k, 1);
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = se_maxf(max, xval[i]);
        if (max < SE_IQ_EPS) {
            scales[ib] = 0;
            continue;
        }
        float scale = se_make_qp_quants(32, kMaxQ + 1, xval, (uint8_t *)L, weight);
        const float eff_max = scale * kMaxQ;
        if (eff_max <= 0) {
            scales[ib] = 0;
            continue;
        }
        float best = 0;
        for (int is = -6; is <= 6; ++is) {
            const float id = (2 * kMaxQ - 1 + is * 0.1f) / eff_max;
            const float this_scale = 1 / id;
            for (int k = 0; k < 4; ++k) {
                se_iq_levels(xval + 8 * k, 8, id, kMaxQ, Laux + 8 * k);
                se_iq_snap(G, xval + 8 * k, waux + 8 * k, this_scale, Laux + 8 * k, NULL);
            }
            float sumqx, sumq2;
            se_iq_fit(32, weight, xval, Laux, &sumqx, &sumq2);
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                scale = sumqx / sumq2;
                best = scale * sumqx;
                memcpy(L, Laux, 32);
            }
        }
        if (scale > 0) {
            const float id = 1 / scale;
            for (int k = 0; k < 4; ++k) {
                se_iq_levels(xval + 8 * k, 8, id, kMaxQ, L + 8 * k);
                se_iq_snap(G, xval + 8 * k, waux + 8 * k, scale, L + 8 * k, NULL);
            }
            float sumqx, sumq2;
            se_iq_fit(32, weight, xval, L, &sumqx, &sumq2);
            if (sumq2 > 0) scale = sumqx / sumq2;
        }
        if (scale < 0) {  /* never in practice; ggml flips the signs */
            scale = -scale;
            for (int k = 0; k < 4; ++k) block_signs[k] = (uint8_t)(~block_signs[k] & 127);
        }
        for (int k = 0; k < 4; ++k) {
            const int gi = G->map[se_iq_key(L + 8 * k, 8, 2)];
            q2[2 * ib + 0] |= (uint32_t)(gi < 0 ? 0 : gi) << (8 * k);  /* off grid: ggml aborts */
            q2[2 * ib + 1] |= (uint32_t)block_signs[k] << (7 * k);
        }
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scale);
    }
    if (!max_scale) {
        memset(y->qs, 0, sizeof(y->qs));
        return;
    }
    const float d = max_scale / 31;
    y->d = se_fp32_to_fp16(d);
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) q2[2 * ib + 1] |= (uint32_t)se_iq_scale4(id, scales[ib]) << 28;
    memcpy(y->qs, q2, sizeof(q2));
}

/* ---- IQ2_XS / IQ2_S: 16 sub-blocks of 16, two groups of 8 each ---------------------------------- */

/* one 16-value sub-block of IQ2_XS (xs = 1) or IQ2_S (xs = 0): levels L, returns the scale */
static float se_iq2_16(const se_iq_grid *G, const float *xval, const float *weight, const float *waux,
                       float max, int8_t *L) {
    const int kMaxQ = 3;
    int8_t Laux[16];
    int on[2] = {1, 1}, on_aux[2];
    float best = 0, scale = max / (2 * kMaxQ - 1);
    for (int is = -9; is <= 9; ++is) {
        const float id = (2 * kMaxQ - 1 + is * 0.1f) / max;
        const float this_scale = 1 / id;
        for (int k = 0; k < 2; ++k) {
            se_iq_levels(xval + 8 * k, 8, id, kMaxQ, Laux + 8 * k);
            se_iq_snap(G, xval + 8 * k, waux + 8 * k, this_scale, Laux + 8 * k, &on_aux[k]);
        }
        float sumqx, sumq2;
        se_iq_fit(16, weight, xval, Laux, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            memcpy(L, Laux, 16);
            on[0] = on_aux[0];
            on[1] = on_aux[1];
        }
    }
    if ((!on[0] || !on[1]) && scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < 2; ++k) {
            if (on[k]) continue;
            se_iq_levels(xval + 8 * k, 8, id, kMaxQ, L + 8 * k);
            se_iq_snap(G, xval + 8 * k, waux + 8 * k, scale, L + 8 * k, NULL);
        }
        float sumqx, sumq2;
        se_iq_fit(16, weight, xval, L, &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    return scale;
}

static void se_iq2_xs_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq2_xs *y) {
    float scales[16], weight[16], xval[16], waux[16];
    int8_t L[16];
    uint8_t block_signs[2];
    uint16_t q2[32];
    memset(q2, 0, sizeof(q2));
    memset(y->scales, 0, sizeof(y->scales));
    y->d = 0;
    float max_scale = 0;
    const float sigma2 = se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 16; ++ib) {
        const float *xb = xbl + 16 * ib, *qw = qwbl + 16 * ib;
        for (int i = 0; i < 16; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
        for (int i = 0; i < 16; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < 2; ++k) block_signs[k] = se_iq_signs8(xb + 8 * k, weight + 8 * k, xval + 8 * k, 1);
        float max = xval[0];
        for (int i = 1; i < 16; ++i) max = se_maxf(max, xval[i]);
        memset(L, 0, 16);
        if (max < SE_IQ_EPS) {
            scales[ib] = 0;
            continue;
        }
        float scale = se_iq2_16(G, xval, weight, waux, max, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 2; ++k) block_signs[k] = (uint8_t)(~block_signs[k] & 127);
        }
        for (int k = 0; k < 2; ++k) {
            const int gi = G->map[se_iq_key(L + 8 * k, 8, 2)];
            q2[2 * ib + k] = (uint16_t)((gi < 0 ? 0 : gi) | (block_signs[k] << 9));
        }
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scale);
    }
    if (!max_scale) {
        memset(y->qs, 0, sizeof(y->qs));
        return;
    }
    const float d = max_scale / 31;
    y->d = se_fp32_to_fp16(d);
    const float id = 1 / d;
    se_iq_pack_scales4(scales, 16, id, y->scales);
    memcpy(y->qs, q2, sizeof(q2));
}

static void se_iq2_s_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq2_s *y) {
    float scales[16], weight[16], xval[16], waux[16];
    int8_t L[16];
    uint8_t block_signs[2];
    memset(y, 0, sizeof(*y));
    float max_scale = 0;
    const float sigma2 = 2 * se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 16; ++ib) {
        const float *xb = xbl + 16 * ib;
        if (qwbl) {
            const float *qw = qwbl + 16 * ib;
            for (int i = 0; i < 16; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
        } else {
            for (int i = 0; i < 16; ++i) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
        }
        for (int i = 0; i < 16; ++i) waux[i] = sqrtf(weight[i]);
        for (int k = 0; k < 2; ++k) block_signs[k] = se_iq_signs8(xb + 8 * k, weight + 8 * k, xval + 8 * k, 0);
        float max = xval[0];
        for (int i = 1; i < 16; ++i) max = se_maxf(max, xval[i]);
        memset(L, 0, 16);
        if (max < SE_IQ_EPS_IQ2_S) {
            scales[ib] = 0;
            continue;
        }
        float scale = se_iq2_16(G, xval, weight, waux, max, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 2; ++k) block_signs[k] = (uint8_t)~block_signs[k];
        }
        for (int k = 0; k < 2; ++k) {
            int gi = G->map[se_iq_key(L + 8 * k, 8, 2)];
            if (gi < 0) gi = 0;
            const int i8 = 2 * ib + k;
            y->qs[i8] = (uint8_t)(gi & 255);
            y->qh[i8 / 4] |= (uint8_t)((gi >> 8) << (2 * (i8 % 4)));
            y->qs[32 + i8] = block_signs[k];
        }
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scale);
    }
    if (!max_scale) return;
    const float d = max_scale / 31;
    y->d = se_fp32_to_fp16(d * 0.9875f);
    const float id = 1 / d;
    se_iq_pack_scales4(scales, 16, id, y->scales);
}

/* ---- IQ3_XXS / IQ3_S: 8 sub-blocks of 32, eight groups of 4, levels 0..7 ------------------------ */

/* one 32-value sub-block: IQ3_XXS (xxs = 1: 31 trial scales, off-grid groups redone) or IQ3_S (19
 * trial scales, every group redone when any is off the grid); levels into L, returns the scale */
static float se_iq3_32(const se_iq_grid *G, int xxs, const float *xval, const float *weight,
                       const float *waux, float max, int8_t *L) {
    const int kMaxQ = 8, nis = xxs ? 15 : 9;
    int8_t Laux[32];
    int on[8], on_aux[8];
    float best = 0, scale = max / (2 * kMaxQ - 1);
    for (int k = 0; k < 8; ++k) on[k] = xxs;
    for (int is = -nis; is <= nis; ++is) {
        const float id = (2 * kMaxQ - 1 + is * 0.2f) / max;
        const float this_scale = 1 / id;
        for (int k = 0; k < 8; ++k) {
            se_iq_levels(xval + 4 * k, 4, id, kMaxQ, Laux + 4 * k);
            se_iq_snap(G, xval + 4 * k, waux + 4 * k, this_scale, Laux + 4 * k, &on_aux[k]);
        }
        float sumqx, sumq2;
        se_iq_fit(32, weight, xval, Laux, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            memcpy(L, Laux, 32);
            memcpy(on, on_aux, sizeof(on));
        }
    }
    int n_off = 0;
    for (int k = 0; k < 8; ++k) n_off += !on[k];
    if (n_off > 0 && scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < 8; ++k) {
            if (xxs && on[k]) continue;
            se_iq_levels(xval + 4 * k, 4, id, kMaxQ, L + 4 * k);
            se_iq_snap(G, xval + 4 * k, waux + 4 * k, scale, L + 4 * k, NULL);
        }
        float sumqx, sumq2;
        se_iq_fit(32, weight, xval, L, &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    return scale;
}

static void se_iq3_weights(const float *xb, const float *qw, float sigma2, float *weight, float *waux) {
    if (qw) {
        for (int i = 0; i < 32; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    } else {
        for (int i = 0; i < 32; ++i) weight[i] = xb[i] * xb[i];
    }
    for (int i = 0; i < 32; ++i) waux[i] = sqrtf(weight[i]);
}

static void se_iq3_xxs_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq3_xxs *y) {
    float scales[8], weight[32], xval[32], waux[32];
    int8_t L[32];
    uint8_t block_signs[4];
    uint8_t q3[96];
    uint32_t sas[8];
    memset(q3, 0, sizeof(q3));
    memset(sas, 0, sizeof(sas));
    y->d = 0;
    float max_scale = 0;
    const float sigma2 = 2 * se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 8; ++ib) {
        const float *xb = xbl + 32 * ib;
        se_iq3_weights(xb, qwbl ? qwbl + 32 * ib : NULL, sigma2, weight, waux);
        for (int k = 0; k < 4; ++k) block_signs[k] = se_iq_signs8(xb + 8 * k, weight + 8 * k, xval + 8 * k, 1);
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = se_maxf(max, xval[i]);
        memset(L, 0, 32);
        if (max < SE_IQ_EPS_IQ3_XXS) {
            scales[ib] = 0;
            continue;
        }
        float scale = se_iq3_32(G, 1, xval, weight, waux, max, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; ++k) block_signs[k] = (uint8_t)(~block_signs[k] & 127);
        }
        for (int k = 0; k < 8; ++k) {
            const int gi = G->map[se_iq_key(L + 4 * k, 4, 3)];
            q3[8 * ib + k] = (uint8_t)(gi < 0 ? 0 : gi);
        }
        sas[ib] = block_signs[0] | (block_signs[1] << 7) | (block_signs[2] << 14) | ((uint32_t)block_signs[3] << 21);
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scale);
    }
    if (!max_scale) {
        memset(y->qs, 0, sizeof(y->qs));
        return;
    }
    const float d = max_scale / 31;
    y->d = se_fp32_to_fp16(d * 1.0125f);
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) sas[ib] |= (uint32_t)se_iq_scale4(id, scales[ib]) << 28;
    memcpy(y->qs, q3, 64);
    memcpy(y->qs + 64, sas, 32);
}

static void se_iq3_s_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq3_s *y) {
    float scales[8], weight[32], xval[32], waux[32];
    int8_t L[32];
    memset(y, 0, sizeof(*y));
    float max_scale = 0;
    const float sigma2 = 2 * se_sumsq_256(xbl) / 256;
    /* ggml advances its qs / signs pointers only past sub-blocks it quantized: after an all-zero
     * sub-block the next one's indices and signs land in the earlier slots (qh and scales stay by ib) */
    int slot = 0;
    for (int ib = 0; ib < 8; ++ib) {
        const float *xb = xbl + 32 * ib;
        se_iq3_weights(xb, qwbl ? qwbl + 32 * ib : NULL, sigma2, weight, waux);
        uint8_t block_signs[4];
        for (int k = 0; k < 4; ++k) block_signs[k] = se_iq_signs8(xb + 8 * k, weight + 8 * k, xval + 8 * k, 0);
        float max = xval[0];
        for (int i = 1; i < 32; ++i) max = se_maxf(max, xval[i]);
        memset(L, 0, 32);
        if (!max) {
            scales[ib] = 0;
            continue;
        }
        float scale = se_iq3_32(G, 0, xval, weight, waux, max, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; ++k) block_signs[k] = (uint8_t)~block_signs[k];
        }
        for (int k = 0; k < 8; ++k) {
            int gi = G->map[se_iq_key(L + 4 * k, 4, 3)];
            if (gi < 0) gi = 0;
            y->qs[8 * slot + k] = (uint8_t)(gi & 255);
            y->qh[ib] |= (uint8_t)((gi >> 8) << k);
        }
        memcpy(y->signs + 4 * slot, block_signs, 4);
        ++slot;
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scale);
    }
    if (!max_scale) return;
    const float d = max_scale / 31;
    y->d = se_fp32_to_fp16(d * 1.033f);
    const float id = 1 / d;
    se_iq_pack_scales4(scales, 8, id, y->scales);
}

/* ---- entry points ------------------------------------------------------------------------------ */

#define SE_IQ_ENTRY(name, G_ID, PLAIN)                                                              \
    void se_quantize_##name##_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) { \
        const se_iq_grid *G = se_iq_grid_get(G_ID);                                                \
        se_block_##name *y = (se_block_##name *)vy;                                                \
        for (int64_t i = 0; i < n_per_row / SE_QK_K; ++i)                                          \
            se_##name##_block(G, x + SE_QK_K * i, qw + SE_QK_K * i, y + i);                         \
    }                                                                                              \
    void se_quantize_##name(const float *x, void *vy, int64_t k) {                                 \
        const se_iq_grid *G = se_iq_grid_get(G_ID);                                                \
        se_block_##name *y = (se_block_##name *)vy;                                                \
        for (int64_t i = 0; i < k / SE_QK_K; ++i) {                                                \
            if (PLAIN) se_##name##_block(G, x + SE_QK_K * i, NULL, y + i);                          \
            else memset(y + i, 0, sizeof(*y));                                                     \
        }                                                                                          \
    }

/* IQ2_XXS / IQ2_XS need weights (PLAIN 0): their plain entry points write zero blocks, never reached */
SE_IQ_ENTRY(iq2_xxs, SE_G_IQ2XXS, 0)
SE_IQ_ENTRY(iq2_xs, SE_G_IQ2XS, 0)
SE_IQ_ENTRY(iq2_s, SE_G_IQ2S, 1)
SE_IQ_ENTRY(iq3_xxs, SE_G_IQ3XXS, 1)
SE_IQ_ENTRY(iq3_s, SE_G_IQ3S, 1)
