/* Grid i-quant quantizers, 2 and 3 bits: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S.
 *
 * Same bytes as ggml's quantize_iq2_xxs / _xs / _s, quantize_iq3_xxs / _s (ggml_quantize_chunk). Each
 * sub-block is sign-split into |x| (IQ2_XXS/XS and IQ3_XXS store 7 sign bits per 8 values, the eighth
 * fixed by parity), then a scan of trial scales rounds each group of 8 (IQ2) or 4 (IQ3) levels to the
 * nearest grid point (an off-grid key goes to its best neighbour, iq_search.c) and keeps the scale
 * with the best weighted fit; the sub-block scales are then quantized against the largest.
 *
 * One search (se_iq_search) serves the five types. Every value is computed as ggml computes it, but
 * the trial scales run side by side: lane t of the level, key and fit loops is trial t, each lane doing
 * the scalar sequence of its trial (the fits' sums stay in ggml's order); the best trial is then picked
 * in ggml's order with ggml's comparison.
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

#define SE_IQ_TRIALS 32  /* at most 31 trial scales (IQ3_XXS), in lanes of 8 */

/* The trial-scale search of one sub-block of n values in groups of dim, levels 0..kmax-1: trial scales
 * id = (2*kmax - 1 + is*step) / den for is = -nis..nis; the best fit's scale is returned, its levels in L.
 * scale / L / on0: the result when no trial fits (and whether its groups count as on the grid). Then the
 * best scale's groups are redone at that scale: redo 0 all of them always, 1 the off-grid ones if any,
 * 2 all of them if any is off the grid; the fit of the result gives the scale. */
SE_INLINE float se_iq_search(const se_iq_grid *G, const int n, const int dim, const int kmax, const int nis,
                             const float step, const float den, const int redo, float scale, const int on0,
                             const float *xval, const float *weight, const float *waux, int8_t *L) {
    const int ng = n / dim, bits = dim == 8 ? 2 : 3, nt = 2 * nis + 1, ntl = (nt + 7) & ~7;
    float ids[SE_IQ_TRIALS], tsc[SE_IQ_TRIALS], sqx[SE_IQ_TRIALS], sq2[SE_IQ_TRIALS];
    int8_t La[32][SE_IQ_TRIALS];
    uint8_t on_t[8][SE_IQ_TRIALS];
    int key[SE_IQ_TRIALS];
    SE_LANES for (int t = 0; t < ntl; ++t) {
        ids[t] = (2 * kmax - 1 + (t - nis) * step) / den;
        tsc[t] = 1 / ids[t];
    }
    for (int i = 0; i < n; ++i) {
        const float xi = xval[i];
        SE_LANES for (int t = 0; t < ntl; ++t) {
            const int l = se_nearest_int(0.5f * (ids[t] * xi - 1));
            La[i][t] = (int8_t)se_max_i(0, se_min_i(kmax - 1, l));
        }
    }
    for (int k = 0; k < ng; ++k) {
        const int8_t(*Lk)[SE_IQ_TRIALS] = La + dim * k;
        SE_LANES for (int t = 0; t < ntl; ++t) {
            int u = 0;
            for (int i = 0; i < dim; ++i) u |= Lk[i][t] << (bits * i);
            key[t] = u;
        }
        for (int t = 0; t < nt; ++t) {
            int gi = G->map[key[t]];
            on_t[k][t] = gi >= 0;
            if (gi >= 0) continue;
            gi = se_iq_neighbour_index(G, key[t], xval + dim * k, waux + dim * k, tsc[t]);
            const uint8_t *lv = G->lev + (size_t)gi * dim;
            for (int i = 0; i < dim; ++i) La[dim * k + i][t] = (int8_t)lv[i];
        }
    }
    SE_LANES for (int t = 0; t < ntl; ++t) sqx[t] = sq2[t] = 0;
    for (int i = 0; i < n; ++i) {
        const float w = weight[i], wx = w * xval[i];
        SE_LANES for (int t = 0; t < ntl; ++t) {
            const float q = 2 * La[i][t] + 1;
            sqx[t] += wx * q;
            sq2[t] += w * q * q;
        }
    }
    float best = 0;
    int bt = -1;
    for (int t = 0; t < nt; ++t)
        if (sq2[t] > 0 && sqx[t] * sqx[t] > best * sq2[t]) {
            scale = sqx[t] / sq2[t];
            best = scale * sqx[t];
            bt = t;
        }
    int on[8], n_off = 0;
    for (int k = 0; k < ng; ++k) {
        on[k] = bt < 0 ? on0 : on_t[k][bt];
        n_off += !on[k];
    }
    if (bt >= 0)
        for (int i = 0; i < n; ++i) L[i] = La[i][bt];
    if (scale > 0 && (redo == 0 || n_off > 0)) {
        const float id = 1 / scale;
        for (int k = 0; k < ng; ++k) {
            if (redo == 1 && on[k]) continue;
            se_iq_levels(xval + dim * k, dim, id, kmax, L + dim * k);
            se_iq_snap(G, xval + dim * k, waux + dim * k, scale, L + dim * k, NULL);
        }
        float sumqx, sumq2;
        se_iq_fit(n, weight, xval, L, &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    return scale;
}

/* weights of one sub-block of n (qw: ggml's qw*sqrt(sigma2 + x^2); none: `plain`, 0 for IQ2_S's
 * 0.25*sigma2 + x^2, 1 for IQ3's x^2), their square roots, |x| and the sign bits of each group of 8
 * (parity: 7 bits and an even count of negatives); returns the largest |x| */
SE_INLINE float se_iq_prep(int n, const float *xb, const float *qw, float sigma2, int plain, int parity,
                           float *weight, float *waux, float *xval, uint8_t *signs) {
    if (qw) {
        for (int i = 0; i < n; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    } else if (plain == 0) {
        for (int i = 0; i < n; ++i) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
    } else {
        for (int i = 0; i < n; ++i) weight[i] = xb[i] * xb[i];
    }
    for (int i = 0; i < n; ++i) waux[i] = sqrtf(weight[i]);
    for (int k = 0; k < n / 8; ++k) signs[k] = se_iq_signs8(xb + 8 * k, weight + 8 * k, xval + 8 * k, parity);
    float max = xval[0];
    for (int i = 1; i < n; ++i) max = se_maxf(max, xval[i]);
    return max;
}

/* a negative scale (never in practice): ggml makes it positive and flips the stored signs */
SE_INLINE float se_iq_positive(float scale, int ns, uint8_t *signs, uint8_t mask) {
    if (scale >= 0) return scale;
    for (int k = 0; k < ns; ++k) signs[k] = (uint8_t)(~signs[k] & mask);
    return -scale;
}

/* the grid index of a group's levels (off the grid, where ggml aborts: 0) */
SE_INLINE int se_iq_index(const se_iq_grid *G, const int8_t *L) {
    const int gi = G->map[se_iq_key(L, G->dim, G->bits)];
    return gi < 0 ? 0 : gi;
}

/* ---- IQ2_XXS: 8 sub-blocks of 32, levels 0..2, 256-point grid, scale via make_qp_quants ---------- */

SE_MULTIVERSION
static void se_iq2_xxs_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq2_xxs *y) {
    float scales[8], weight[32], xval[32], waux[32];
    int8_t L[32];
    uint8_t signs[4];
    uint32_t q2[16];
    memset(q2, 0, sizeof(q2));
    y->d = 0;
    float max_scale = 0;
    const float sigma2 = se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 8; ++ib) {
        const float max = se_iq_prep(32, xbl + 32 * ib, qwbl + 32 * ib, sigma2, 0, 1, weight, waux, xval, signs);
        scales[ib] = 0;
        if (max < SE_IQ_EPS) continue;
        float scale = se_make_qp_quants(32, 4, xval, (uint8_t *)L, weight);
        const float eff_max = scale * 3;
        if (eff_max <= 0) continue;
        scale = se_iq_search(G, 32, 8, 3, 6, 0.1f, eff_max, 0, scale, 1, xval, weight, waux, L);
        scale = se_iq_positive(scale, 4, signs, 127);
        for (int k = 0; k < 4; ++k) {
            q2[2 * ib + 0] |= (uint32_t)se_iq_index(G, L + 8 * k) << (8 * k);
            q2[2 * ib + 1] |= (uint32_t)signs[k] << (7 * k);
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

/* sub-block ib of IQ2_XS (xs = 1: weights needed, parity signs) or IQ2_S: levels L, signs; the scale,
 * -1 when the sub-block is skipped (largest |x| below ggml's epsilon) */
SE_INLINE float se_iq2_16(const se_iq_grid *G, int xs, const float *xbl, const float *qwbl, float sigma2, int ib,
                          int8_t *L, uint8_t *signs) {
    float weight[16], xval[16], waux[16];
    const float max = se_iq_prep(16, xbl + 16 * ib, qwbl ? qwbl + 16 * ib : NULL, sigma2, 0, xs, weight, waux,
                                 xval, signs);
    memset(L, 0, 16);
    if (max < (xs ? SE_IQ_EPS : SE_IQ_EPS_IQ2_S)) return -1;
    const float scale = se_iq_search(G, 16, 8, 3, 9, 0.1f, max, 1, max / 5, 1, xval, weight, waux, L);
    return se_iq_positive(scale, 2, signs, xs ? 127 : 255);
}

SE_MULTIVERSION
static void se_iq2_xs_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq2_xs *y) {
    float scales[16];
    int8_t L[16];
    uint8_t signs[2];
    uint16_t q2[32];
    memset(q2, 0, sizeof(q2));
    memset(y->scales, 0, sizeof(y->scales));
    y->d = 0;
    float max_scale = 0;
    const float sigma2 = se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 16; ++ib) {
        const float scale = se_iq2_16(G, 1, xbl, qwbl, sigma2, ib, L, signs);
        scales[ib] = 0;
        if (scale < 0) continue;
        for (int k = 0; k < 2; ++k) q2[2 * ib + k] = (uint16_t)(se_iq_index(G, L + 8 * k) | (signs[k] << 9));
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scales[ib]);
    }
    if (!max_scale) {
        memset(y->qs, 0, sizeof(y->qs));
        return;
    }
    const float d = max_scale / 31;
    y->d = se_fp32_to_fp16(d);
    se_iq_pack_scales4(scales, 16, 1 / d, y->scales);
    memcpy(y->qs, q2, sizeof(q2));
}

SE_MULTIVERSION
static void se_iq2_s_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq2_s *y) {
    float scales[16];
    int8_t L[16];
    uint8_t signs[2];
    memset(y, 0, sizeof(*y));
    float max_scale = 0;
    const float sigma2 = 2 * se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 16; ++ib) {
        const float scale = se_iq2_16(G, 0, xbl, qwbl, sigma2, ib, L, signs);
        scales[ib] = 0;
        if (scale < 0) continue;
        for (int k = 0; k < 2; ++k) {
            const int gi = se_iq_index(G, L + 8 * k), i8 = 2 * ib + k;
            y->qs[i8] = (uint8_t)(gi & 255);
            y->qh[i8 / 4] |= (uint8_t)((gi >> 8) << (2 * (i8 % 4)));
            y->qs[32 + i8] = signs[k];
        }
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scales[ib]);
    }
    if (!max_scale) return;
    const float d = max_scale / 31;
    y->d = se_fp32_to_fp16(d * 0.9875f);
    se_iq_pack_scales4(scales, 16, 1 / d, y->scales);
}

/* ---- IQ3_XXS / IQ3_S: 8 sub-blocks of 32, eight groups of 4, levels 0..7 ------------------------ */

/* sub-block ib of IQ3_XXS (xxs = 1: 31 trial scales, off-grid groups redone, parity signs) or IQ3_S (19
 * trial scales, every group redone when any is off the grid): levels L, signs; the scale, -1 when the
 * sub-block is skipped (IQ3_S: all zero) */
SE_INLINE float se_iq3_32(const se_iq_grid *G, int xxs, const float *xbl, const float *qwbl, float sigma2, int ib,
                          int8_t *L, uint8_t *signs) {
    float weight[32], xval[32], waux[32];
    const float max = se_iq_prep(32, xbl + 32 * ib, qwbl ? qwbl + 32 * ib : NULL, sigma2, 1, xxs, weight, waux,
                                 xval, signs);
    memset(L, 0, 32);
    if (xxs ? max < SE_IQ_EPS_IQ3_XXS : !max) return -1;
    const float scale = xxs ? se_iq_search(G, 32, 4, 8, 15, 0.2f, max, 1, max / 15, 1, xval, weight, waux, L)
                            : se_iq_search(G, 32, 4, 8, 9, 0.2f, max, 2, max / 15, 0, xval, weight, waux, L);
    return se_iq_positive(scale, 4, signs, xxs ? 127 : 255);
}

SE_MULTIVERSION
static void se_iq3_xxs_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq3_xxs *y) {
    float scales[8];
    int8_t L[32];
    uint8_t signs[4];
    uint8_t q3[64];
    uint32_t sas[8];
    memset(q3, 0, sizeof(q3));
    memset(sas, 0, sizeof(sas));
    y->d = 0;
    float max_scale = 0;
    const float sigma2 = 2 * se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 8; ++ib) {
        const float scale = se_iq3_32(G, 1, xbl, qwbl, sigma2, ib, L, signs);
        scales[ib] = 0;
        if (scale < 0) continue;
        for (int k = 0; k < 8; ++k) q3[8 * ib + k] = (uint8_t)se_iq_index(G, L + 4 * k);
        sas[ib] = signs[0] | (signs[1] << 7) | (signs[2] << 14) | ((uint32_t)signs[3] << 21);
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scales[ib]);
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

SE_MULTIVERSION
static void se_iq3_s_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq3_s *y) {
    float scales[8];
    int8_t L[32];
    uint8_t signs[4];
    memset(y, 0, sizeof(*y));
    float max_scale = 0;
    const float sigma2 = 2 * se_sumsq_256(xbl) / 256;
    /* ggml advances its qs / signs pointers only past sub-blocks it quantized: after an all-zero
     * sub-block the next one's indices and signs land in the earlier slots (qh and scales stay by ib) */
    int slot = 0;
    for (int ib = 0; ib < 8; ++ib) {
        const float scale = se_iq3_32(G, 0, xbl, qwbl, sigma2, ib, L, signs);
        scales[ib] = 0;
        if (scale < 0) continue;
        for (int k = 0; k < 8; ++k) {
            const int gi = se_iq_index(G, L + 4 * k);
            y->qs[8 * slot + k] = (uint8_t)(gi & 255);
            y->qh[ib] |= (uint8_t)((gi >> 8) << k);
        }
        memcpy(y->signs + 4 * slot, signs, 4);
        ++slot;
        scales[ib] = scale;
        max_scale = se_maxf(max_scale, scale);
    }
    if (!max_scale) return;
    const float d = max_scale / 31;
    y->d = se_fp32_to_fp16(d * 1.033f);
    se_iq_pack_scales4(scales, 8, 1 / d, y->scales);
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
