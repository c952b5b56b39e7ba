/* K-quant quantizers: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K on 256-value super-blocks.
 *
 * Same bytes as ggml's quantize_row_q*_K_ref. Super-blocks are transposed into lanes (one per
 * sub-block; two super-blocks at once where the search has few sub-blocks, so two independent
 * vector chains are in flight) and the scale search runs on all lanes at once (kq_search.h); the
 * super-block scale quantization follows the reference step by step (cheap, scalar), and the
 * re-rounding and packing are shared with the imatrix path (kq_pack.h).
 */
#include <math.h>

#include "kq_pack.h"

/* Q4_K / Q5_K (nmax 15 or 31): search ng super-blocks (8*ng lanes), then finish each one:
 * sub-block scales/mins to 6 bits against the largest, fp16 d/dmin, re-rounding into L. */
SE_INLINE void se_qkx_group(const int ng, const float *restrict x, const int nmax, const float rmin,
                            const float rdelta, const int nstep, uint8_t *restrict L,
                            uint8_t *sc12[4], uint16_t *d[4], uint16_t *dmin[4]) {
    enum { MAXL = 32 };
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
    se_qkx2_lanes(NL, 32, nmax, xt, wt, rmin, rdelta, nstep, 0, 0, scales, mins, isc, mu, flat);
    for (int g = 0; g < ng; ++g) {
        const float *sc_g = scales + 8 * g, *mn_g = mins + 8 * g;
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; ++j) {
            if (sc_g[j] > max_scale) max_scale = sc_g[j];
            if (mn_g[j] > max_min) max_min = mn_g[j];
        }
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < 8; ++j) {
            uint8_t ls = (uint8_t)se_nearest_int(inv_scale * sc_g[j]);
            uint8_t lm = (uint8_t)se_nearest_int(inv_min * mn_g[j]);
            se_put_scale_min_k4(j, ls < 63 ? ls : 63, lm < 63 ? lm : 63, sc12[g]);
        }
        *d[g] = se_fp32_to_fp16(max_scale / 63.f);
        *dmin[g] = se_fp32_to_fp16(max_min / 63.f);
        const float *xg = x + 256 * g;
        uint8_t *Lg = L + 256 * g;
        const unsigned keep = se_k4_requant(xg, sc12[g], *d[g], *dmin[g], nmax, Lg);
        for (int j = 0; j < 8; ++j) {
            if (!(keep >> j & 1)) continue;
            const int s = 8 * g + j;
            for (int i = 0; i < 32; ++i)
                Lg[32 * j + i] = flat[s] ? 0 : (uint8_t)se_clampi(se_nearest_int(isc[s] * (xg[32 * j + i] - mu[s])), 0, nmax);
        }
    }
}

SE_MULTIVERSION
void se_quantize_q4_k(const float *x, void *vy, int64_t k) {
    se_block_q4_k *y = (se_block_q4_k *)vy;
    const int64_t nb = k / SE_QK_K;
    uint8_t L[1024];
    for (int64_t i = 0; i < nb;) {
        const int ng = nb - i >= 4 ? 4 : nb - i >= 2 ? 2 : 1;
        uint8_t *sc12[4];
        uint16_t *d[4], *dmin[4];
        for (int g = 0; g < ng; ++g) {
            sc12[g] = y[i + g].scales;
            d[g] = &y[i + g].d;
            dmin[g] = &y[i + g].dmin;
        }
        if (ng == 4) se_qkx_group(4, x, 15, -1.f, 0.1f, 20, L, sc12, d, dmin);
        else if (ng == 2) se_qkx_group(2, x, 15, -1.f, 0.1f, 20, L, sc12, d, dmin);
        else se_qkx_group(1, x, 15, -1.f, 0.1f, 20, L, sc12, d, dmin);
        for (int g = 0; g < ng; ++g) se_pack_q4_k(L + 256 * g, y[i + g].qs);
        i += ng;
        x += 256 * ng;
    }
}

SE_MULTIVERSION
void se_quantize_q5_k(const float *x, void *vy, int64_t k) {
    se_block_q5_k *y = (se_block_q5_k *)vy;
    const int64_t nb = k / SE_QK_K;
    uint8_t L[1024];
    for (int64_t i = 0; i < nb;) {
        const int ng = nb - i >= 4 ? 4 : nb - i >= 2 ? 2 : 1;
        uint8_t *sc12[4];
        uint16_t *d[4], *dmin[4];
        for (int g = 0; g < ng; ++g) {
            sc12[g] = y[i + g].scales;
            d[g] = &y[i + g].d;
            dmin[g] = &y[i + g].dmin;
        }
        if (ng == 4) se_qkx_group(4, x, 31, -0.5f, 0.1f, 15, L, sc12, d, dmin);
        else if (ng == 2) se_qkx_group(2, x, 31, -0.5f, 0.1f, 15, L, sc12, d, dmin);
        else se_qkx_group(1, x, 31, -0.5f, 0.1f, 15, L, sc12, d, dmin);
        for (int g = 0; g < ng; ++g) se_pack_q5_k(L + 256 * g, y[i + g].qh, y[i + g].qs);
        i += ng;
        x += 256 * ng;
    }
}

/* Q2_K finish of one super-block: 4-bit scales and mins against the largest, re-rounding; lanes
 * s0.. of the search hold its 16 sub-blocks */
SE_INLINE void se_q2_finish(const float *restrict x, const float *scales, const float *mins,
                            const float *isc, const float *mu, const int *flat, se_block_q2_k *b) {
    const float q4scale = 15.f;
    uint8_t L[256];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
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
    const unsigned keep = se_q2_requant(x, b, L);
    for (int j = 0; j < 16; ++j) {
        if (!(keep >> j & 1)) continue;
        for (int i = 0; i < 16; ++i)
            L[16 * j + i] = flat[j] ? 0 : (uint8_t)se_clampi(se_nearest_int(isc[j] * (x[16 * j + i] - mu[j])), 0, 3);
    }
    se_pack2(L, b->qs);
}

SE_INLINE void se_q2_group(const int ng, const float *restrict x, se_block_q2_k *y) {
    const int NL = 16 * ng;
    float xt[512], wt[512], scales[32], mins[32], isc[32], mu[32];
    int flat[32];
    se_transpose(NL, 16, x, xt);
    for (int i = 0; i < 16 * NL; ++i) wt[i] = fabsf(xt[i]);
    se_qkx2_lanes(NL, 16, 3, xt, wt, -0.5f, 0.1f, 15, 1, 0, scales, mins, isc, mu, flat);
    for (int g = 0; g < ng; ++g)
        se_q2_finish(x + 256 * g, scales + 16 * g, mins + 16 * g, isc + 16 * g, mu + 16 * g, flat + 16 * g, &y[g]);
}

SE_MULTIVERSION
void se_quantize_q2_k(const float *x, void *vy, int64_t k) {
    se_block_q2_k *y = (se_block_q2_k *)vy;
    const int64_t nb = k / SE_QK_K;
    for (int64_t ib = 0; ib < nb;) {
        if (nb - ib >= 2) { /* two super-blocks: 32 lanes */
            se_q2_group(2, x, y + ib);
            ib += 2;
            x += 512;
        } else {
            se_q2_group(1, x, y + ib);
            ib += 1;
            x += 256;
        }
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
            const int8_t l8 = (int8_t)se_nearest_int(iscale * scales[j]);
            se_q3_put_scale(b->scales, j, se_clampi(l8, -32, 31) + 32);
        }
        b->d = se_fp32_to_fp16(1 / iscale);
    } else {
        b->d = se_fp32_to_fp16(0.f);
    }
    const unsigned keep = se_q3_requant(x, b, L);
    for (int j = 0; j < 16; ++j) {
        if (!(keep >> j & 1)) continue;
        for (int i = 0; i < 16; ++i) L[16 * j + i] = zero[s0 + j] ? 0 : (uint8_t)(Lt[i * NL + s0 + j] + 4);
    }
    se_pack_q3_k(L, b);
}

SE_MULTIVERSION
void se_quantize_q3_k(const float *x, void *vy, int64_t k) {
    se_block_q3_k *y = (se_block_q3_k *)vy;
    const int64_t nb = k / SE_QK_K;
    float xt[512], scales[32];
    int Lt[512], zero[32];
    for (int64_t ib = 0; ib < nb;) {
        if (nb - ib >= 2) { /* two super-blocks: 32 lanes */
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
        se_transpose(16, 16, x, xt);
        se_qx_lanes(16, 16, 32, xt, NULL, scales, isc, zero);
        se_q6_finish(x, scales, isc, zero, &y[ib]);
    }
}
