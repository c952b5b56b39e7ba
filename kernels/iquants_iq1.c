/* Grid i-quant quantizers, 1.5/1.75 bits: IQ1_S (sub-blocks of 32) and IQ1_M (sub-blocks of 16).
 *
 * Same bytes as ggml's quantize_iq1_s / quantize_iq1_m. Values take the levels -1, 0, 1 shifted by
 * +-delta; the best split of a sub-block's sorted values into three groups is searched exhaustively
 * with prefix sums (IQ1_M: per half, each half with its own shift), each group of 8 levels is snapped
 * to the 2048-point grid (an off-grid key to its best neighbour at the found scale), and the sub-block
 * scales are quantized to 3 bits against the largest. The sort is stable (equal values in index order,
 * as glibc's qsort, a merge sort, leaves them for ggml). The split search computes ggml's sums for 8
 * splits at a time and tests them in ggml's order (se_iq1_s_split); the snap uses iq_search.c.
 *
 * IQ1_S has no quantizer without importance weights in ggml (it asserts); its plain entry point is
 * unreachable (dispatch refuses it, SE_ERR_NEEDS_IMATRIX) and writes zeros.
 */
#include "iq_internal.h"

/* indices 0..n-1 ordered by x ascending, equal values in index order. Without NaNs each index goes to
 * its rank (values below it, then equal ones before it), which is that order; with a NaN, the insertion
 * sort the rank stands for (its comparisons with NaN all false) */
SE_INLINE void se_iq1_sort(int n, const float *x, int *idx) {
    int nan = 0;
    for (int j = 0; j < n; ++j) nan |= x[j] != x[j];
    if (!nan) {
        for (int j = 0; j < n; ++j) {
            const float v = x[j];
            int r = 0;
#pragma omp simd reduction(+ : r)
            for (int i = 0; i < n; ++i) r += (x[i] < v) | ((x[i] == v) & (i < j));
            idx[r] = j;
        }
        return;
    }
    for (int j = 0; j < n; ++j) {
        int i = j;
        while (i > 0 && x[idx[i - 1]] > x[j]) {
            idx[i] = idx[i - 1];
            --i;
        }
        idx[i] = j;
    }
}

/* ggml's iq1_find_best_neighbour2 of off-grid key u: least weighted squared error of scale*xx[level]
 * against x (iq_search.c); xx8: the three level values, then zeros */
static int se_iq1_best_neighbour(const se_iq_grid *G, int u, const float *xb, const float *w, float scale,
                                 const float *xx8, int8_t *L) {
    int gi = G->nearest(G, u, xb, w, scale, xx8);
    if (gi < 0) {  /* every neighbour overflowed: the whole grid (ggml reads x out of range here) */
        float best = FLT_MAX;
        for (int g = 0; g < G->n; ++g) {
            const uint8_t *lv = G->lev + 8 * (size_t)g;
            float d2 = 0;
            for (int i = 0; i < 8; ++i) {
                const float diff = scale * xx8[lv[i]] - xb[i];
                d2 += w[i] * diff * diff;
            }
            if (d2 < best) {
                best = d2;
                gi = g;
            }
        }
        if (gi < 0) gi = 0;
    }
    const uint8_t *lv = G->lev + 8 * (size_t)gi;
    for (int i = 0; i < 8; ++i) L[i] = (int8_t)lv[i];
    return gi;
}

static int se_iq1_snap(const se_iq_grid *G, const float *xb, const float *w, float scale, const float *xx,
                       int8_t *L, int *all_on_grid) {
    const int u = se_iq_key(L, 8, 2);
    if (G->map[u] >= 0) return G->map[u];
    *all_on_grid = 0;
    const float xx8[8] = {xx[0], xx[1], xx[2], 0, 0, 0, 0, 0};
    return se_iq1_best_neighbour(G, u, xb, w, scale, xx8, L);
}

static const float SE_X_P[3] = {-1 + SE_IQ1_DELTA, SE_IQ1_DELTA, 1 + SE_IQ1_DELTA};
static const float SE_X_M[3] = {-1 - SE_IQ1_DELTA, -SE_IQ1_DELTA, 1 - SE_IQ1_DELTA};

/* the candidate (i1, i2, sh) beats `best` (ggml's test) */
SE_INLINE int se_iq1_beats(float sumqx, float sumq2, float best) {
    return sumq2 > 0 && sumqx * sumqx > best * sumq2;
}

/* IQ1_S's exhaustive split of 32 sorted values into levels 0 | 1 | 2 at i1 <= i2 (prefix sums sumx, sumw),
 * shift sh = +1 then -1 for each, in ggml's order and with ggml's test and update: the best into scale,
 * i1, i2, sh (unchanged when none fits). Each row i1 runs in lanes of 8 i2; a chunk with no candidate
 * beating the current best leaves it as it is (skipped), a chunk with one is scanned in order. */
SE_INLINE void se_iq1_s_split(const float *sumx, const float *sumw, float *scale, int *bi1, int *bi2, int *bsh) {
    const float p0 = SE_X_P[0], p1 = SE_X_P[1], p2 = SE_X_P[2], m0 = SE_X_M[0], m1 = SE_X_M[1], m2 = SE_X_M[2];
    float sx[40], sw[40];
    for (int i = 0; i < 40; ++i) {
        sx[i] = sumx[i < 32 ? i : 32];
        sw[i] = sumw[i < 32 ? i : 32];
    }
    float best = -FLT_MAX;
    for (int i1 = 0; i1 <= 32; ++i1) {
        const float ax = sx[i1] - sx[0], aw = sw[i1] - sw[0];
        const float axp = ax * p0, axm = ax * m0, awp = aw * p0 * p0, awm = aw * m0 * m0;
        for (int c0 = i1; c0 <= 32; c0 += 8) {
            float qxp[8], q2p[8], qxm[8], q2m[8];
            int hit = 0;
#pragma omp simd reduction(| : hit)
            for (int j = 0; j < 8; ++j) {
                const int i2 = c0 + j;
                const float bx = sx[i2] - sx[i1], cx = sx[32] - sx[i2];
                const float bw = sw[i2] - sw[i1], cw = sw[32] - sw[i2];
                qxp[j] = axp + bx * p1 + cx * p2;
                q2p[j] = awp + bw * p1 * p1 + cw * p2 * p2;
                qxm[j] = axm + bx * m1 + cx * m2;
                q2m[j] = awm + bw * m1 * m1 + cw * m2 * m2;
                hit |= (i2 <= 32) & (se_iq1_beats(qxp[j], q2p[j], best) | se_iq1_beats(qxm[j], q2m[j], best));
            }
            if (!hit) continue;
            for (int j = 0; j < 8 && c0 + j <= 32; ++j) {
                if (se_iq1_beats(qxp[j], q2p[j], best)) {
                    *scale = qxp[j] / q2p[j];
                    best = *scale * qxp[j];
                    *bi1 = i1;
                    *bi2 = c0 + j;
                    *bsh = 1;
                }
                if (se_iq1_beats(qxm[j], q2m[j], best)) {
                    *scale = qxm[j] / q2m[j];
                    best = *scale * qxm[j];
                    *bi1 = i1;
                    *bi2 = c0 + j;
                    *bsh = -1;
                }
            }
        }
    }
}

SE_MULTIVERSION
static void se_iq1_s_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq1_s *y) {
    float scales[8], weight[32], sumx[33], sumw[33];
    int idx[32];
    int8_t L[32], shifts[8];
    uint16_t index[4];
    memset(y, 0, sizeof(*y));
    float max_scale = 0;
    const float sigma2 = 2 * se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 8; ++ib) {
        const float *xb = xbl + 32 * ib, *qw = qwbl + 32 * ib;
        for (int i = 0; i < 32; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
        float max = fabsf(xb[0]);
        for (int i = 1; i < 32; ++i) max = se_maxf(max, fabsf(xb[i]));
        if (max < SE_IQ_EPS_IQ1_S) {
            scales[ib] = 0;
            shifts[ib] = 1;
            continue;
        }
        se_iq1_sort(32, xb, idx);
        sumx[0] = sumw[0] = 0;
        for (int j = 0; j < 32; ++j) {
            const int i = idx[j];
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        float scale = max;
        int besti1 = -1, besti2 = -1, best_shift = 0;
        se_iq1_s_split(sumx, sumw, &scale, &besti1, &besti2, &best_shift);
        if (besti1 < 0 || besti2 < 0 || best_shift == 0) {
            scales[ib] = 0;
            shifts[ib] = 1;
            continue;
        }
        for (int j = 0; j < besti1; ++j) L[idx[j]] = 0;
        for (int j = besti1; j < besti2; ++j) L[idx[j]] = 1;
        for (int j = besti2; j < 32; ++j) L[idx[j]] = 2;
        if (scale < 0) {
            for (int j = 0; j < 32; ++j) L[j] = (int8_t)(2 - L[j]);
            scale = -scale;
            best_shift = -best_shift;
        }
        int all_on_grid = 1;
        const float *xx = best_shift == 1 ? SE_X_P : SE_X_M;
        for (int k = 0; k < 4; ++k)
            index[k] = (uint16_t)se_iq1_snap(G, xb + 8 * k, weight + 8 * k, scale, xx, L + 8 * k, &all_on_grid);
        if (!all_on_grid) {
            float sumqx = 0, sumq2 = 0;
            for (int k = 0; k < 4; ++k) {
                const int8_t *pg = G->pos + 8 * (size_t)index[k];
                for (int j = 0; j < 8; ++j) {
                    const float w = weight[8 * k + j];
                    const float q = xx[(pg[j] - 1) / 2];
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
            if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
        }
        uint16_t h = 0;
        for (int k = 0; k < 4; ++k) {
            y->qs[4 * ib + k] = (uint8_t)(index[k] & 255);
            h |= (uint16_t)((index[k] >> 8) << (3 * k));
        }
        y->qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = (int8_t)best_shift;
        max_scale = se_maxf(max_scale, scale);
    }
    if (!max_scale) return;
    const float d = max_scale / 15;
    y->d = se_fp32_to_fp16(d * 1.125f);
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) {
        int l = se_max_i(0, se_min_i(7, se_nearest_int(0.5f * (id * scales[ib] - 1))));
        if (shifts[ib] == -1) l |= 8;
        y->qh[ib] |= (uint16_t)(l << 12);
    }
}

SE_INLINE void se_iq1_m_weights(const float *xb, const float *qw, float sigma2, float *weight) {
    if (qw) {
        for (int i = 0; i < 16; ++i) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    } else {
        for (int i = 0; i < 16; ++i) weight[i] = xb[i] * xb[i];
    }
}

/* shift of group k (0, 1) of a sub-block with sign pattern best_k (0: ++, 1: +-, 2: -+, 3: --) */
SE_INLINE const float *se_iq1m_xx(int best_k, int k) {
    return k == 0 ? (best_k < 2 ? SE_X_P : SE_X_M) : (best_k % 2 == 0 ? SE_X_P : SE_X_M);
}

/* IQ1_M's exhaustive split of 16 sorted values at i1 <= i2, the shift of each half (k: ++, +-, -+, --)
 * from the halves' prefix sums px, pw: as se_iq1_s_split, lanes of 8 i2, candidates in ggml's order */
SE_INLINE void se_iq1_m_split(const float (*px)[17], const float (*pw)[17], float *scale, int *bi1, int *bi2,
                           int *bk) {
    const float txs[2] = {px[0][16], px[1][16]}, tws[2] = {pw[0][16], pw[1][16]};
    const float p2 = SE_X_P[2], m2 = SE_X_M[2];
    const float cp1 = SE_X_P[0] * SE_X_P[0] - SE_X_P[1] * SE_X_P[1];
    const float cp2 = SE_X_P[1] * SE_X_P[1] - SE_X_P[2] * SE_X_P[2];
    const float cm1 = SE_X_M[0] * SE_X_M[0] - SE_X_M[1] * SE_X_M[1];
    const float cm2 = SE_X_M[1] * SE_X_M[1] - SE_X_M[2] * SE_X_M[2];
    /* the sums' parts that depend on one of i1, i2 only, each computed as in the full expression */
    float ex[2][24], cwp[2][24], cwm[2][24], tqp[2], tqm[2];
    for (int h = 0; h < 2; ++h) {
        tqp[h] = txs[h] * p2;
        tqm[h] = txs[h] * m2;
        for (int i = 0; i < 24; ++i) {
            ex[h][i] = px[h][i < 16 ? i : 16];
            cwp[h][i] = pw[h][i < 16 ? i : 16] * cp2;
            cwm[h][i] = pw[h][i < 16 ? i : 16] * cm2;
        }
    }
    float best = -FLT_MAX;
    for (int i1 = 0; i1 <= 16; ++i1) {
        float awp[2], awm[2];
        for (int h = 0; h < 2; ++h) {
            awp[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1;
            awm[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1;
        }
        for (int c0 = i1; c0 <= 16; c0 += 8) {
            float qx[4][8], q2[4][8];
            int hit = 0;
#pragma omp simd reduction(| : hit)
            for (int j = 0; j < 8; ++j) {
                const int i2 = c0 + j;
                float qx_p[2], qx_m[2], q2_p[2], q2_m[2];
                for (int h = 0; h < 2; ++h) {
                    const float sx = ex[h][i1] + ex[h][i2];
                    qx_p[h] = tqp[h] - sx;
                    qx_m[h] = tqm[h] - sx;
                    q2_p[h] = awp[h] + cwp[h][i2];
                    q2_m[h] = awm[h] + cwm[h][i2];
                }
                qx[0][j] = qx_p[0] + qx_p[1];
                qx[1][j] = qx_p[0] + qx_m[1];
                qx[2][j] = qx_m[0] + qx_p[1];
                qx[3][j] = qx_m[0] + qx_m[1];
                q2[0][j] = q2_p[0] + q2_p[1];
                q2[1][j] = q2_p[0] + q2_m[1];
                q2[2][j] = q2_m[0] + q2_p[1];
                q2[3][j] = q2_m[0] + q2_m[1];
                int any = 0;
                for (int k = 0; k < 4; ++k) any |= se_iq1_beats(qx[k][j], q2[k][j], best);
                hit |= (i2 <= 16) & any;
            }
            if (!hit) continue;
            for (int j = 0; j < 8 && c0 + j <= 16; ++j)
                for (int k = 0; k < 4; ++k)
                    if (se_iq1_beats(qx[k][j], q2[k][j], best)) {
                        *scale = qx[k][j] / q2[k][j];
                        best = *scale * qx[k][j];
                        *bi1 = i1;
                        *bi2 = c0 + j;
                        *bk = k;
                    }
        }
    }
}

SE_MULTIVERSION
static void se_iq1_m_block(const se_iq_grid *G, const float *xbl, const float *qwbl, se_block_iq1_m *y) {
    static const uint8_t masks[4] = {0x00, 0x80, 0x08, 0x88};
    float scales[16], weight[16];
    int idx[16];
    int8_t L[16], shifts[16];
    uint16_t index[2];
    memset(y, 0, sizeof(*y));
    float max_scale = 0;
    const float sigma2 = 2 * se_sumsq_256(xbl) / 256;
    for (int ib = 0; ib < 16; ++ib) {
        const float *xb = xbl + 16 * ib;
        se_iq1_m_weights(xb, qwbl ? qwbl + 16 * ib : NULL, sigma2, weight);
        float max = fabsf(xb[0]);
        for (int i = 1; i < 16; ++i) max = se_maxf(max, fabsf(xb[i]));
        if (max < SE_IQ_EPS_IQ1_M) {
            scales[ib] = 0;
            shifts[ib] = 0;
            continue;
        }
        se_iq1_sort(16, xb, idx);
        float scale = max;
        int besti1 = -1, besti2 = -1, best_k = -1;
        float px[2][17], pw[2][17];
        px[0][0] = px[1][0] = 0;
        pw[0][0] = pw[1][0] = 0;
        for (int j = 0; j < 16; ++j) {
            const int i = idx[j];
            const int h = i < 8 ? 0 : 1;
            px[h][j + 1] = px[h][j] + weight[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + weight[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        se_iq1_m_split(px, pw, &scale, &besti1, &besti2, &best_k);
        if (besti1 < 0 || besti2 < 0 || best_k < 0) {
            scales[ib] = 0;
            shifts[ib] = 0;
            continue;
        }
        for (int j = 0; j < besti1; ++j) L[idx[j]] = 0;
        for (int j = besti1; j < besti2; ++j) L[idx[j]] = 1;
        for (int j = besti2; j < 16; ++j) L[idx[j]] = 2;
        if (scale < 0) {
            for (int j = 0; j < 16; ++j) L[j] = (int8_t)(2 - L[j]);
            scale = -scale;
            best_k = 3 - best_k;
        }
        int all_on_grid = 1;
        for (int k = 0; k < 2; ++k)
            index[k] = (uint16_t)se_iq1_snap(G, xb + 8 * k, weight + 8 * k, scale, se_iq1m_xx(best_k, k), L + 8 * k,
                                             &all_on_grid);
        if (!all_on_grid) {
            float sumqx_f = 0, sumq2_f = 0;
            for (int k = 0; k < 2; ++k) {
                const float *xx = se_iq1m_xx(best_k, k);
                const int8_t *pg = G->pos + 8 * (size_t)index[k];
                for (int j = 0; j < 8; ++j) {
                    const float w = weight[8 * k + j];
                    const float q = xx[(pg[j] - 1) / 2];
                    sumqx_f += w * q * xb[8 * k + j];
                    sumq2_f += w * q * q;
                }
            }
            if (sumqx_f > 0 && sumq2_f > 0) scale = sumqx_f / sumq2_f;
        }
        y->qs[2 * ib + 0] = (uint8_t)(index[0] & 255);
        y->qs[2 * ib + 1] = (uint8_t)(index[1] & 255);
        y->qh[ib] = (uint8_t)((index[0] >> 8) | ((index[1] >> 8) << 4));
        scales[ib] = scale;
        shifts[ib] = (int8_t)best_k;
        max_scale = se_maxf(max_scale, scale);
    }
    if (!max_scale) return;
    uint16_t sc[4] = {0, 0, 0, 0};
    float d = max_scale / 15;
    const float id = 1 / d;
    float sumqx_f = 0, sumq2_f = 0;
    for (int ib = 0; ib < 16; ++ib) {
        const int l = se_max_i(0, se_min_i(7, se_nearest_int(0.5f * (id * scales[ib] - 1))));
        sc[ib / 4] |= (uint16_t)(l << (3 * (ib % 4)));
        y->qh[ib] |= masks[shifts[ib]];
        const float *xb = xbl + 16 * ib;
        se_iq1_m_weights(xb, qwbl ? qwbl + 16 * ib : NULL, sigma2, weight);
        for (int k = 0; k < 2; ++k) {
            const float *xx = se_iq1m_xx(shifts[ib], k);
            const int8_t *pg = G->pos + 8 * (size_t)(y->qs[2 * ib + k] + ((y->qh[ib] << (8 - 4 * k)) & 0x700));
            for (int j = 0; j < 8; ++j) {
                const float w = weight[8 * k + j];
                const float q = xx[(pg[j] - 1) / 2] * (2 * l + 1);
                sumqx_f += w * q * xb[8 * k + j];
                sumq2_f += w * q * q;
            }
        }
    }
    if (sumq2_f > 0) d = sumqx_f / sumq2_f;
    const uint16_t s = se_fp32_to_fp16(d * 1.1125f);
    sc[0] |= (uint16_t)((s & 0x000f) << 12);
    sc[1] |= (uint16_t)((s & 0x00f0) << 8);
    sc[2] |= (uint16_t)((s & 0x0f00) << 4);
    sc[3] |= (uint16_t)(s & 0xf000);
    memcpy(y->scales, sc, 8);
}

void se_quantize_iq1_s_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ1S);
    se_block_iq1_s *y = (se_block_iq1_s *)vy;
    for (int64_t i = 0; i < n_per_row / SE_QK_K; ++i) se_iq1_s_block(G, x + SE_QK_K * i, qw + SE_QK_K * i, y + i);
}

void se_quantize_iq1_s(const float *x, void *vy, int64_t k) {
    (void)x;
    memset(vy, 0, (size_t)(k / SE_QK_K) * sizeof(se_block_iq1_s));
}

void se_quantize_iq1_m_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ1S);
    se_block_iq1_m *y = (se_block_iq1_m *)vy;
    for (int64_t i = 0; i < n_per_row / SE_QK_K; ++i) se_iq1_m_block(G, x + SE_QK_K * i, qw + SE_QK_K * i, y + i);
}

void se_quantize_iq1_m(const float *x, void *vy, int64_t k) {
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ1S);
    se_block_iq1_m *y = (se_block_iq1_m *)vy;
    for (int64_t i = 0; i < k / SE_QK_K; ++i) se_iq1_m_block(G, x + SE_QK_K * i, NULL, y + i);
}
