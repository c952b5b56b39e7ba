/* K-quant quantizers: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K on 256-value super-blocks.
 *
 * Same bytes as ggml's quantize_row_q*_K_ref. Each super-block is transposed into lanes (one per
 * sub-block) and the scale search runs on all sub-blocks at once (kq_search.h); the super-block
 * scale quantization and bit packing then follow the reference step by step (cheap, scalar),
 * and the final re-rounding against the fp16 scales is elementwise (vectorized).
 */
#include <math.h>

#include "kq_search.h"

/* xt[i*NL + s] = x[s*n + i] for NL sub-blocks of n values */
SE_INLINE void se_transpose(const int NL, const int n, const float *restrict x, float *restrict xt) {
    for (int s = 0; s < NL; ++s)
        for (int i = 0; i < n; ++i) xt[i * NL + s] = x[s * n + i];
}

/* the 6-bit scale/min packing shared by Q4_K and Q5_K */
SE_INLINE void se_pack_scale_min_k4(const float *scales, const float *mins, float max_scale,
                                    float max_min, uint8_t *sc12, uint16_t *d, uint16_t *dmin) {
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)se_nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)se_nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            sc12[j] = ls;
            sc12[j + 4] = lm;
        } else {
            sc12[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            sc12[j - 4] |= (uint8_t)((ls >> 4) << 6);
            sc12[j - 0] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d = se_fp32_to_fp16(max_scale / 63.f);
    *dmin = se_fp32_to_fp16(max_min / 63.f);
}

SE_INLINE void se_get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* Q4_K / Q5_K (nmax 15 or 31): search ng super-blocks at once (8*ng lanes: two super-blocks
 * keep two independent vector chains in flight), then finish each one into L[256*ng]. */
SE_INLINE void se_qkx_group(const int ng, const float *restrict x, const int nmax, const float rmin,
                            const float rdelta, const int nstep, uint8_t *restrict L,
                            uint8_t *restrict sc12[2], uint16_t *d[2], uint16_t *dmin[2]) {
    enum { MAXL = 16 };
    const int NL = 8 * ng;
    float xt[32 * MAXL], wt[32 * MAXL], scales[MAXL], mins[MAXL], isc[MAXL], mu[MAXL];
    float sx2[MAXL], avx[MAXL];
    int flat[MAXL];
    se_transpose(NL, 32, x, xt);
    SE_LANES for (int s = 0; s < NL; ++s) sx2[s] = 0;
    for (int i = 0; i < 32; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) sx2[s] += xt[i * NL + s] * xt[i * NL + s];
    SE_LANES for (int s = 0; s < NL; ++s) avx[s] = sqrtf(sx2[s] / 32);
    for (int i = 0; i < 32; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) wt[i * NL + s] = avx[s] + fabsf(xt[i * NL + s]);
    se_qkx2_lanes(NL, 32, nmax, xt, wt, rmin, rdelta, nstep, 0, scales, mins, isc, mu, flat);
    for (int g = 0; g < ng; ++g) {
        const float *sc_g = scales + 8 * g, *mn_g = mins + 8 * g;
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; ++j) {
            if (sc_g[j] > max_scale) max_scale = sc_g[j];
            if (mn_g[j] > max_min) max_min = mn_g[j];
        }
        se_pack_scale_min_k4(sc_g, mn_g, max_scale, max_min, sc12[g], d[g], dmin[g]);
        const float dd = se_fp16_to_fp32(*d[g]), dm0 = se_fp16_to_fp32(*dmin[g]);
        for (int j = 0; j < 8; ++j) {
            const int s = 8 * g + j;
            uint8_t sc, m;
            se_get_scale_min_k4(j, sc12[g], &sc, &m);
            const float dl = dd * sc;
            const float *xb = x + 32 * s;
            uint8_t *Lb = L + 32 * s;
            if (!dl) { /* keep the search's quants */
                for (int i = 0; i < 32; ++i)
                    Lb[i] = flat[s] ? 0 : (uint8_t)se_clampi(se_nearest_int(isc[s] * (xb[i] - mu[s])), 0, nmax);
                continue;
            }
            const float dm = dm0 * m;
            for (int i = 0; i < 32; ++i) Lb[i] = (uint8_t)se_clampi(se_nearest_int((xb[i] + dm) / dl), 0, nmax);
        }
    }
}

SE_MULTIVERSION
void se_quantize_q4_k(const float *x, void *vy, int64_t k) {
    se_block_q4_k *y = (se_block_q4_k *)vy;
    const int64_t nb = k / SE_QK_K;
    uint8_t L[512];
    for (int64_t i = 0; i < nb;) {
        const int ng = nb - i >= 2 ? 2 : 1;
        uint8_t *sc12[2] = {y[i].scales, ng == 2 ? y[i + 1].scales : NULL};
        uint16_t *d[2] = {&y[i].d, ng == 2 ? &y[i + 1].d : NULL};
        uint16_t *dmin[2] = {&y[i].dmin, ng == 2 ? &y[i + 1].dmin : NULL};
        if (ng == 2) se_qkx_group(2, x, 15, -1.f, 0.1f, 20, L, sc12, d, dmin);
        else se_qkx_group(1, x, 15, -1.f, 0.1f, 20, L, sc12, d, dmin);
        for (int g = 0; g < ng; ++g) {
            const uint8_t *Lg = L + 256 * g;
            uint8_t *q = y[i + g].qs;
            for (int j = 0; j < 256; j += 64, q += 32)
                for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(Lg[j + l] | (Lg[j + l + 32] << 4));
        }
        i += ng;
        x += 256 * ng;
    }
}

SE_MULTIVERSION
void se_quantize_q5_k(const float *x, void *vy, int64_t k) {
    se_block_q5_k *y = (se_block_q5_k *)vy;
    const int64_t nb = k / SE_QK_K;
    uint8_t L[512];
    for (int64_t i = 0; i < nb;) {
        const int ng = nb - i >= 2 ? 2 : 1;
        uint8_t *sc12[2] = {y[i].scales, ng == 2 ? y[i + 1].scales : NULL};
        uint16_t *d[2] = {&y[i].d, ng == 2 ? &y[i + 1].d : NULL};
        uint16_t *dmin[2] = {&y[i].dmin, ng == 2 ? &y[i + 1].dmin : NULL};
        if (ng == 2) se_qkx_group(2, x, 31, -0.5f, 0.1f, 15, L, sc12, d, dmin);
        else se_qkx_group(1, x, 31, -0.5f, 0.1f, 15, L, sc12, d, dmin);
        for (int g = 0; g < ng; ++g) {
            const uint8_t *Lg = L + 256 * g;
            uint8_t *qh = y[i + g].qh, *ql = y[i + g].qs;
            uint8_t h[32] = {0};
            for (int n = 0, sh = 0; n < 256; n += 64, ql += 32, sh += 2)
                for (int j = 0; j < 32; ++j) {
                    const int l1 = Lg[n + j], l2 = Lg[n + j + 32];
                    h[j] |= (uint8_t)(((l1 >> 4) << sh) | ((l2 >> 4) << (sh + 1)));
                    ql[j] = (uint8_t)((l1 & 15) | ((l2 & 15) << 4));
                }
            memcpy(qh, h, 32);
        }
        i += ng;
        x += 256 * ng;
    }
}

/* pack 2-bit values of L[256] four per byte, as Q2_K and Q3_K store them */
SE_INLINE void se_pack2(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 256; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

SE_MULTIVERSION
void se_quantize_q2_k(const float *x, void *vy, int64_t k) {
    se_block_q2_k *y = (se_block_q2_k *)vy;
    const int64_t nb = k / SE_QK_K;
    const float q4scale = 15.f;
    for (int64_t ib = 0; ib < nb; ++ib, x += SE_QK_K) {
        float xt[256], wt[256], scales[16], mins[16], isc[16], mu[16];
        int flat[16];
        uint8_t L[256];
        se_transpose(16, 16, x, xt);
        for (int i = 0; i < 256; ++i) wt[i] = fabsf(xt[i]);
        se_qkx2_lanes(16, 16, 3, xt, wt, -0.5f, 0.1f, 15, 1, scales, mins, isc, mu, flat);
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 16; ++j) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        se_block_q2_k *b = &y[ib];
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < 16; ++j) b->scales[j] = (uint8_t)se_nearest_int(iscale * scales[j]);
            b->d = se_fp32_to_fp16(max_scale / q4scale);
        } else {
            for (int j = 0; j < 16; ++j) b->scales[j] = 0;
            b->d = se_fp32_to_fp16(0.f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < 16; ++j) b->scales[j] |= (uint8_t)(se_nearest_int(iscale * mins[j]) << 4);
            b->dmin = se_fp32_to_fp16(max_min / q4scale);
        } else {
            b->dmin = se_fp32_to_fp16(0.f);
        }
        const float dd = se_fp16_to_fp32(b->d), dmm = se_fp16_to_fp32(b->dmin);
        for (int j = 0; j < 16; ++j) {
            const float d = dd * (b->scales[j] & 0xF);
            const float *xb = x + 16 * j;
            uint8_t *Lb = L + 16 * j;
            if (!d) {
                for (int i = 0; i < 16; ++i)
                    Lb[i] = flat[j] ? 0 : (uint8_t)se_clampi(se_nearest_int(isc[j] * (xb[i] - mu[j])), 0, 3);
                continue;
            }
            const float dm = dmm * (b->scales[j] >> 4);
            for (int i = 0; i < 16; ++i) Lb[i] = (uint8_t)se_clampi(se_nearest_int((xb[i] + dm) / d), 0, 3);
        }
        se_pack2(L, b->qs);
    }
}

/* Q3_K: finish one super-block from the search's scales and quants (Lt: transposed, NL lanes) */
SE_INLINE void se_q3_finish(const float *restrict x, const float *restrict scales,
                            const int *restrict Lt, const int *restrict zero, const int NL, const int s0,
                            se_block_q3_k *b) {
    uint8_t L[256];
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; ++j) {
        const float a = fabsf(scales[j]);
        if (a > amax) { amax = a; max_scale = scales[j]; }
    }
    memset(b->scales, 0, 12);
    if (max_scale) {
        const float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; ++j) {
            int8_t l8 = (int8_t)se_nearest_int(iscale * scales[j]);
            int l = se_clampi(l8, -32, 31) + 32;
            if (j < 8) b->scales[j] = (uint8_t)(l & 0xF);
            else b->scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
            l >>= 4;
            b->scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
        }
        b->d = se_fp32_to_fp16(1 / iscale);
    } else {
        b->d = se_fp32_to_fp16(0.f);
    }
    const float dd = se_fp16_to_fp32(b->d);
    for (int j = 0; j < 16; ++j) {
        int sc = j < 8 ? b->scales[j] & 0xF : b->scales[j - 8] >> 4;
        sc = (int8_t)((sc | (((b->scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
        const float d = dd * sc;
        const float *xb = x + 16 * j;
        uint8_t *Lb = L + 16 * j;
        if (!d) { /* keep the search's quants */
            for (int i = 0; i < 16; ++i) Lb[i] = zero[s0 + j] ? 0 : (uint8_t)(Lt[i * NL + s0 + j] + 4);
            continue;
        }
        for (int i = 0; i < 16; ++i) Lb[i] = (uint8_t)(se_clampi(se_nearest_int(xb[i] / d), -4, 3) + 4);
    }
    /* high bit of value 32*r + m goes to bit r of hmask[m]; written without branches */
    uint8_t hmask[32] = {0};
    for (int r = 0; r < 8; ++r)
        for (int m = 0; m < 32; ++m) {
            hmask[m] |= (uint8_t)(((L[32 * r + m] >> 2) & 1) << r);
            L[32 * r + m] &= 3;
        }
    memcpy(b->hmask, hmask, 32);
    se_pack2(L, b->qs);
}

SE_MULTIVERSION
void se_quantize_q3_k(const float *x, void *vy, int64_t k) {
    se_block_q3_k *y = (se_block_q3_k *)vy;
    const int64_t nb = k / SE_QK_K;
    float xt[512], scales[32];
    int Lt[512], zero[32];
    for (int64_t ib = 0; ib < nb;) {
        if (nb - ib >= 2) { /* two super-blocks: 32 lanes, two independent chains per op */
            se_transpose(32, 16, x, xt);
            se_q3_lanes(32, 16, 4, xt, Lt, scales, zero);
            se_q3_finish(x, scales, Lt, zero, 32, 0, &y[ib]);
            se_q3_finish(x + 256, scales + 16, Lt, zero, 32, 16, &y[ib + 1]);
            ib += 2;
            x += 512;
        } else {
            se_transpose(16, 16, x, xt);
            se_q3_lanes(16, 16, 4, xt, Lt, scales, zero);
            se_q3_finish(x, scales, Lt, zero, 16, 0, &y[ib]);
            ib += 1;
            x += 256;
        }
    }
}

SE_MULTIVERSION
void se_quantize_q6_k(const float *x, void *vy, int64_t k) {
    se_block_q6_k *y = (se_block_q6_k *)vy;
    const int64_t nb = k / SE_QK_K;
    for (int64_t ib = 0; ib < nb; ++ib, x += SE_QK_K) {
        float xt[256], scales[16], isc[16];
        int zero[16];
        int8_t L[256];
        se_transpose(16, 16, x, xt);
        se_qx_lanes(16, 16, 32, xt, scales, isc, zero);
        se_block_q6_k *b = &y[ib];
        float max_scale = 0, max_abs_scale = 0;
        for (int j = 0; j < 16; ++j) {
            const float a = fabsf(scales[j]);
            if (a > max_abs_scale) { max_abs_scale = a; max_scale = scales[j]; }
        }
        if (max_abs_scale < SE_GROUP_MAX_EPS) {
            memset(b, 0, sizeof(*b));
            b->d = se_fp32_to_fp16(0.f);
            continue;
        }
        const float iscale = -128.f / max_scale;
        b->d = se_fp32_to_fp16(1 / iscale);
        for (int j = 0; j < 16; ++j) b->scales[j] = (int8_t)se_min_i(127, se_nearest_int(iscale * scales[j]));
        const float dd = se_fp16_to_fp32(b->d);
        for (int j = 0; j < 16; ++j) {
            const float d = dd * b->scales[j];
            const float *xb = x + 16 * j;
            int8_t *Lb = L + 16 * j;
            if (!d) {
                for (int i = 0; i < 16; ++i)
                    Lb[i] = zero[j] ? 0 : (int8_t)(32 + se_clampi(se_nearest_int(isc[j] * xb[i]), -32, 31));
                continue;
            }
            for (int i = 0; i < 16; ++i) Lb[i] = (int8_t)(se_clampi(se_nearest_int(xb[i] / d), -32, 31) + 32);
        }
        uint8_t *ql = b->ql, *qh = b->qh;
        for (int j = 0; j < 256; j += 128, ql += 64, qh += 32)
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
    }
}
