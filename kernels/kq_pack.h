/* K-quant steps shared by the plain (kquants.c) and importance-weighted (kquants_imatrix.c)
 * quantizers, in ggml's order: transpose into lanes, 6-bit scale/min (un)packing, re-rounding of
 * the values against the stored fp16 scales, and the bit packing of each block layout.
 *
 * The se_*_requant functions fill L for every sub-block whose effective scale is non-zero and
 * return a bit mask of the others: there ggml keeps the quants of the scale search, which the
 * caller fills in from its own search.
 */
#ifndef SE_KQ_PACK_H
#define SE_KQ_PACK_H

#include "kq_search.h"

/* xt[i*NL + s] = x[s*n + i] for NL sub-blocks of n values */
SE_INLINE void se_transpose(const int NL, const int n, const float *restrict x, float *restrict xt) {
    for (int s = 0; s < NL; ++s)
        for (int i = 0; i < n; ++i) xt[i * NL + s] = x[s * n + i];
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

/* store 6-bit scale ls and min lm of sub-block j (Q4_K/Q5_K layout); sc12 starts zeroed for j<4 */
SE_INLINE void se_put_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t *sc12) {
    if (j < 4) {
        sc12[j] = ls;
        sc12[j + 4] = lm;
    } else {
        sc12[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        sc12[j - 4] |= (uint8_t)((ls >> 4) << 6);
        sc12[j - 0] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* Q4_K/Q5_K: L = clamp(nearest_int((x + dmin*m)/(d*sc)), 0, nmax) per sub-block of 32 */
SE_INLINE unsigned se_k4_requant(const float *restrict x, const uint8_t *sc12, uint16_t d16,
                                 uint16_t dmin16, const int nmax, uint8_t *restrict L) {
    const float dd = se_fp16_to_fp32(d16), dm0 = se_fp16_to_fp32(dmin16);
    unsigned keep = 0;
    for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        se_get_scale_min_k4(j, sc12, &sc, &m);
        const float d = dd * sc;
        if (!d) { keep |= 1u << j; continue; }
        const float dm = dm0 * m;
        for (int i = 0; i < 32; ++i)
            L[32 * j + i] = (uint8_t)se_clampi(se_nearest_int((x[32 * j + i] + dm) / d), 0, nmax);
    }
    return keep;
}

SE_INLINE void se_pack_q4_k(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 256; j += 64, qs += 32)
        for (int l = 0; l < 32; ++l) qs[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

SE_INLINE void se_pack_q5_k(const uint8_t *L, uint8_t *qh, uint8_t *ql) {
    uint8_t h[32] = {0};
    for (int n = 0, sh = 0; n < 256; n += 64, ql += 32, sh += 2)
        for (int j = 0; j < 32; ++j) {
            const int l1 = L[n + j], l2 = L[n + j + 32];
            h[j] |= (uint8_t)(((l1 >> 4) << sh) | ((l2 >> 4) << (sh + 1)));
            ql[j] = (uint8_t)((l1 & 15) | ((l2 & 15) << 4));
        }
    memcpy(qh, h, 32);
}

/* 2-bit values of L[256], four per byte (Q2_K, and the low bits of Q3_K) */
SE_INLINE void se_pack2(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 256; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

/* Q2_K: scales[j] low nibble scale, high nibble min */
SE_INLINE unsigned se_q2_requant(const float *restrict x, const se_block_q2_k *b, uint8_t *restrict L) {
    const float dd = se_fp16_to_fp32(b->d), dmm = se_fp16_to_fp32(b->dmin);
    unsigned keep = 0;
    for (int j = 0; j < 16; ++j) {
        const float d = dd * (b->scales[j] & 0xF);
        if (!d) { keep |= 1u << j; continue; }
        const float dm = dmm * (b->scales[j] >> 4);
        for (int i = 0; i < 16; ++i)
            L[16 * j + i] = (uint8_t)se_clampi(se_nearest_int((x[16 * j + i] + dm) / d), 0, 3);
    }
    return keep;
}

/* Q3_K: 6-bit signed scale of sub-block j from the 12 packed bytes */
SE_INLINE int se_q3_scale(const uint8_t *s, int j) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    return (int8_t)((lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
}

/* Q3_K: store the 6-bit level l (0..63) of sub-block j; scales start zeroed */
SE_INLINE void se_q3_put_scale(uint8_t *s, int j, int l) {
    if (j < 8) s[j] = (uint8_t)(l & 0xF);
    else s[j - 8] |= (uint8_t)((l & 0xF) << 4);
    l >>= 4;
    s[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
}

SE_INLINE unsigned se_q3_requant(const float *restrict x, const se_block_q3_k *b, uint8_t *restrict L) {
    const float dd = se_fp16_to_fp32(b->d);
    unsigned keep = 0;
    for (int j = 0; j < 16; ++j) {
        const float d = dd * se_q3_scale(b->scales, j);
        if (!d) { keep |= 1u << j; continue; }
        for (int i = 0; i < 16; ++i)
            L[16 * j + i] = (uint8_t)(se_clampi(se_nearest_int(x[16 * j + i] / d), -4, 3) + 4);
    }
    return keep;
}

/* Q3_K: high bit of value 32*r + m to bit r of hmask[m], low 2 bits packed; branch-free */
SE_INLINE void se_pack_q3_k(uint8_t *restrict L, se_block_q3_k *b) {
    uint8_t hmask[32] = {0};
    for (int r = 0; r < 8; ++r)
        for (int m = 0; m < 32; ++m) {
            hmask[m] |= (uint8_t)(((L[32 * r + m] >> 2) & 1) << r);
            L[32 * r + m] &= 3;
        }
    memcpy(b->hmask, hmask, 32);
    se_pack2(L, b->qs);
}

SE_INLINE unsigned se_q6_requant(const float *restrict x, const se_block_q6_k *b, int8_t *restrict L) {
    const float dd = se_fp16_to_fp32(b->d);
    unsigned keep = 0;
    for (int j = 0; j < 16; ++j) {
        const float d = dd * b->scales[j];
        if (!d) { keep |= 1u << j; continue; }
        for (int i = 0; i < 16; ++i)
            L[16 * j + i] = (int8_t)(se_clampi(se_nearest_int(x[16 * j + i] / d), -32, 31) + 32);
    }
    return keep;
}

SE_INLINE void se_pack_q6_k(const int8_t *L, se_block_q6_k *b) {
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

/* Q6_K finish, shared with the imatrix path: scales to int8 against the largest, re-rounding,
 * search quants (isc/zero from se_qx_lanes with nmax 32) where a scale rounds to zero. */
SE_INLINE void se_q6_finish(const float *restrict x, const float *restrict scales,
                            const float *restrict isc, const int *restrict zero, se_block_q6_k *b) {
    int8_t L[256];
    float max_scale = 0, max_abs_scale = 0;
    for (int j = 0; j < 16; ++j) {
        const float a = fabsf(scales[j]);
        if (a > max_abs_scale) { max_abs_scale = a; max_scale = scales[j]; }
    }
    if (max_abs_scale < SE_GROUP_MAX_EPS) {
        memset(b, 0, sizeof(*b));
        b->d = se_fp32_to_fp16(0.f);
        return;
    }
    const float iscale = -128.f / max_scale;
    b->d = se_fp32_to_fp16(1 / iscale);
    for (int j = 0; j < 16; ++j) b->scales[j] = (int8_t)se_min_i(127, se_nearest_int(iscale * scales[j]));
    const unsigned keep = se_q6_requant(x, b, L);
    for (int j = 0; j < 16; ++j) {
        if (!(keep >> j & 1)) continue;
        for (int i = 0; i < 16; ++i)
            L[16 * j + i] = zero[j] ? 0 : (int8_t)(32 + se_clampi(se_nearest_int(isc[j] * x[16 * j + i]), -32, 31));
    }
    se_pack_q6_k(L, b);
}

#endif /* SE_KQ_PACK_H */
