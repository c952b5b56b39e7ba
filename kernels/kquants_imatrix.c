/* Importance-weighted k-quants: ggml's quantize_row_q{2..6}_K_impl with quant_weights (what
 * ggml_quantize_chunk runs when given an imatrix), one row at a time.
 *
 * The sub-block searches take weights qw*sqrt(sigma2 + x*x) (sigma2: the super-block's mean square,
 * doubled for Q3_K..Q5_K; Q6_K uses qw as is) and run in lanes like the plain path; the sub-block
 * scales and mins are then quantized by the weighted searches make_qp_quants / make_qx_quants,
 * which are short and sequential, so they stay scalar here.
 */
#include <math.h>

#include "kq_pack.h"

/* ggml's make_qp_quants (declared in se_internal.h; IQ2_XXS uses it too): levels in uint8 (a negative
 * level wraps, as in C), running sums on the signed level where ggml uses it, 8 trial scales, then up
 * to 5 rounds of coordinate descent. */
float se_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *qw) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
    if (max < SE_GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)se_nearest_int(iscale * x[i]);
    const float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        const float diff = x[i] - scale * L[i];
        best_mse += qw[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * is + nmax) / max;
        const float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            const int l = se_min_i(nmax, se_nearest_int(iscale_is * x[i]));
            const float diff = x[i] - scale_is * l;
            mse += qw[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        const int l = se_min_i(nmax, se_nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += qw[i] * x[i] * l;
        suml2 += qw[i] * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = qw[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                const int new_l = se_min_i(nmax, se_nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* sum of squares of a super-block, in order (ggml's sumx2 / sum_x2) */
SE_INLINE float se_sumsq256(const float *x) {
    float s = 0;
    for (int i = 0; i < 256; ++i) s += x[i] * x[i];
    return s;
}

/* transposed search weights qw*sqrt(sigma2 + x*x) and their per-sub-block sums sw (in order) */
SE_INLINE void se_weights(const int NL, const int n, const float *restrict x, const float *restrict qw,
                          float sigma2, float *restrict wt, float *restrict sw) {
    float w[256];
    for (int i = 0; i < NL * n; ++i) w[i] = qw[i] * sqrtf(sigma2 + x[i] * x[i]);
    se_transpose(NL, n, w, wt);
    SE_LANES for (int s = 0; s < NL; ++s) sw[s] = 0;
    for (int i = 0; i < n; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) sw[s] += wt[i * NL + s];
}

SE_MULTIVERSION
void se_quantize_q2_k_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    se_block_q2_k *y = (se_block_q2_k *)vy;
    const int64_t nb = n_per_row / SE_QK_K;
    for (int64_t ib = 0; ib < nb; ++ib, x += SE_QK_K, qw += SE_QK_K) {
        float xt[256], wt[256], sw[16], scales[16], mins[16], isc[16], mu[16];
        int flat[16];
        uint8_t L[256], Ls[16], Lm[16];
        const float sigma2 = se_sumsq256(x) / SE_QK_K;
        se_transpose(16, 16, x, xt);
        se_weights(16, 16, x, qw, sigma2, wt, sw);
        se_qkx2_lanes(16, 16, 3, xt, wt, -0.9f, 0.05f, 36, 0, 1, scales, mins, isc, mu, flat);
        const float dm = se_make_qp_quants(16, 15, scales, Ls, sw);
        const float mm = se_make_qp_quants(16, 15, mins, Lm, sw);
        se_block_q2_k *b = &y[ib];
        b->d = se_fp32_to_fp16(dm);
        b->dmin = se_fp32_to_fp16(mm);
        for (int j = 0; j < 16; ++j) b->scales[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
        const unsigned keep = se_q2_requant(x, b, L);
        for (int j = 0; j < 16; ++j) {
            if (!(keep >> j & 1)) continue;
            for (int i = 0; i < 16; ++i)
                L[16 * j + i] = flat[j] ? 0 : (uint8_t)se_clampi(se_nearest_int(isc[j] * (x[16 * j + i] - mu[j])), 0, 3);
        }
        se_pack2(L, b->qs);
    }
}

/* Q4_K (nmax 15) and Q5_K (nmax 31, levels clamped to 63 like ggml's q5_K impl) */
SE_INLINE void se_qkx_imatrix_block(const float *restrict x, const float *restrict qw, const int nmax,
                                    uint8_t *restrict sc12, uint16_t *d, uint16_t *dmin, uint8_t *restrict L) {
    float xt[256], wt[256], sw[8], scales[8], mins[8], isc[8], mu[8];
    int flat[8];
    uint8_t Ls[8], Lm[8];
    const float sigma2 = 2 * se_sumsq256(x) / SE_QK_K;
    se_transpose(8, 32, x, xt);
    se_weights(8, 32, x, qw, sigma2, wt, sw);
    se_qkx2_lanes(8, 32, nmax, xt, wt, -0.9f, 0.05f, 36, 0, 1, scales, mins, isc, mu, flat);
    const float d_block = se_make_qp_quants(8, 63, scales, Ls, sw);
    const float m_block = se_make_qp_quants(8, 63, mins, Lm, sw);
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = Ls[j], lm = Lm[j];
        if (nmax == 31) {
            ls = ls < 63 ? ls : 63;
            lm = lm < 63 ? lm : 63;
        }
        se_put_scale_min_k4(j, ls, lm, sc12);
    }
    *d = se_fp32_to_fp16(d_block);
    *dmin = se_fp32_to_fp16(m_block);
    const unsigned keep = se_k4_requant(x, sc12, *d, *dmin, nmax, L);
    for (int j = 0; j < 8; ++j) {
        if (!(keep >> j & 1)) continue;
        for (int i = 0; i < 32; ++i)
            L[32 * j + i] = flat[j] ? 0 : (uint8_t)se_clampi(se_nearest_int(isc[j] * (x[32 * j + i] - mu[j])), 0, nmax);
    }
}

SE_MULTIVERSION
void se_quantize_q4_k_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    se_block_q4_k *y = (se_block_q4_k *)vy;
    const int64_t nb = n_per_row / SE_QK_K;
    for (int64_t ib = 0; ib < nb; ++ib, x += SE_QK_K, qw += SE_QK_K) {
        uint8_t L[256];
        se_qkx_imatrix_block(x, qw, 15, y[ib].scales, &y[ib].d, &y[ib].dmin, L);
        se_pack_q4_k(L, y[ib].qs);
    }
}

SE_MULTIVERSION
void se_quantize_q5_k_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    se_block_q5_k *y = (se_block_q5_k *)vy;
    const int64_t nb = n_per_row / SE_QK_K;
    for (int64_t ib = 0; ib < nb; ++ib, x += SE_QK_K, qw += SE_QK_K) {
        uint8_t L[256];
        se_qkx_imatrix_block(x, qw, 31, y[ib].scales, &y[ib].d, &y[ib].dmin, L);
        se_pack_q5_k(L, y[ib].qh, y[ib].qs);
    }
}

SE_MULTIVERSION
void se_quantize_q3_k_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    se_block_q3_k *y = (se_block_q3_k *)vy;
    const int64_t nb = n_per_row / SE_QK_K;
    for (int64_t ib = 0; ib < nb; ++ib, x += SE_QK_K, qw += SE_QK_K) {
        float xt[256], wt[256], sw[16], scales[16], isc[16], d_block, isc1;
        int zero[16], zero1;
        uint8_t L[256];
        const float sigma2 = 2 * se_sumsq256(x) / SE_QK_K;
        se_transpose(16, 16, x, xt);
        se_weights(16, 16, x, qw, sigma2, wt, sw);
        se_qx_lanes(16, 16, 4, xt, wt, scales, isc, zero);
        /* the 16 scales themselves: make_qx_quants(16, 32, scales, Ls, 1, sw), one lane */
        se_qx_lanes(1, 16, 32, scales, sw, &d_block, &isc1, &zero1);
        se_block_q3_k *b = &y[ib];
        memset(b->scales, 0, 12);
        for (int j = 0; j < 16; ++j)
            se_q3_put_scale(b->scales, j, zero1 ? 0 : 32 + se_clampi(se_nearest_int(isc1 * scales[j]), -32, 31));
        b->d = se_fp32_to_fp16(d_block);
        const unsigned keep = se_q3_requant(x, b, L);
        for (int j = 0; j < 16; ++j) {
            if (!(keep >> j & 1)) continue;
            for (int i = 0; i < 16; ++i)
                L[16 * j + i] = zero[j] ? 0 : (uint8_t)(4 + se_clampi(se_nearest_int(isc[j] * x[16 * j + i]), -4, 3));
        }
        se_pack_q3_k(L, b);
    }
}

SE_MULTIVERSION
void se_quantize_q6_k_imatrix(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    se_block_q6_k *y = (se_block_q6_k *)vy;
    const int64_t nb = n_per_row / SE_QK_K;
    for (int64_t ib = 0; ib < nb; ++ib, x += SE_QK_K, qw += SE_QK_K) {
        float xt[256], wt[256], scales[16], isc[16];
        int zero[16];
        se_transpose(16, 16, x, xt);
        se_transpose(16, 16, qw, wt);
        se_qx_lanes(16, 16, 32, xt, wt, scales, isc, zero);
        se_q6_finish(x, scales, isc, zero, &y[ib]);
    }
}
