/* Importance-weighted legacy formats: ggml's quantize_row_q{4,5}_{0,1}_impl with quant_weights,
 * one row at a time (the search weights qw*sqrt(sigma2 + x*x) use the whole row's mean square).
 *
 * Q4_0/Q5_0 search their scale with make_qx_quants, Q4_1/Q5_1 scale and min with
 * make_qkx3_quants; the quants of the search are stored as they are (no re-rounding). Eight
 * blocks run at once, one per lane (kq_search.h); a row's last blocks run one lane at a time.
 */
#include <math.h>

#include "kq_pack.h"

typedef enum { SE_L4_0, SE_L4_1, SE_L5_0, SE_L5_1 } se_legacy_kind;

/* nb (<= 8) blocks of 32 values: search, then write blocks of the given kind */
SE_INLINE void se_legacy_w_group(const int NL, const se_legacy_kind kind, const float *restrict x,
                                 const float *restrict qw, const float sigma2, void *restrict vy) {
    float xt[256], wt[256], w[256], scale[8], themin[8], isc[8], mu[8];
    int flag[8];
    for (int i = 0; i < 32 * NL; ++i) w[i] = qw[i] * sqrtf(sigma2 + x[i] * x[i]);
    se_transpose(NL, 32, x, xt);
    se_transpose(NL, 32, w, wt);
    const int affine = kind == SE_L4_1 || kind == SE_L5_1;
    const int nmax = kind == SE_L4_0 ? 8 : kind == SE_L5_0 ? 16 : kind == SE_L4_1 ? 15 : 31;
    if (affine) se_qkx2_lanes(NL, 32, nmax, xt, wt, -0.9f, 0.05f, 36, 0, 1, scale, themin, isc, mu, flag);
    else se_qx_lanes(NL, 32, nmax, xt, wt, scale, isc, flag);
    for (int b = 0; b < NL; ++b) {
        const float *xb = x + 32 * b;
        uint8_t q[32];
        for (int j = 0; j < 32; ++j) {
            if (affine) q[j] = flag[b] ? 0 : (uint8_t)se_clampi(se_nearest_int(isc[b] * (xb[j] - mu[b])), 0, nmax);
            else q[j] = flag[b] ? 0 : (uint8_t)(nmax + se_clampi(se_nearest_int(isc[b] * xb[j]), -nmax, nmax - 1));
        }
        const uint16_t d = se_fp32_to_fp16(scale[b]);
        const uint16_t m = se_fp32_to_fp16(-themin[b]);
        switch (kind) {
        case SE_L4_0: {
            se_block_q4_0 *y = (se_block_q4_0 *)vy + b;
            y->d = d;
            for (int j = 0; j < 16; ++j) y->qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
        } break;
        case SE_L4_1: {
            se_block_q4_1 *y = (se_block_q4_1 *)vy + b;
            y->d = d;
            y->m = m;
            for (int j = 0; j < 16; ++j) y->qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
        } break;
        case SE_L5_0: {
            se_block_q5_0 *y = (se_block_q5_0 *)vy + b;
            y->d = d;
            se_pack5(q, y->qs, y->qh);
        } break;
        case SE_L5_1: {
            se_block_q5_1 *y = (se_block_q5_1 *)vy + b;
            y->d = d;
            y->m = m;
            se_pack5(q, y->qs, y->qh);
        } break;
        }
    }
}

SE_INLINE void se_legacy_w_row(const se_legacy_kind kind, const size_t type_size, const float *x,
                               void *vy, const int64_t n_per_row, const float *qw) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n_per_row; ++j) sum_x2 += x[j] * x[j];
    const float sigma2 = sum_x2 / n_per_row;
    const int64_t nb = n_per_row / SE_QK;
    char *y = (char *)vy;
    int64_t ib = 0;
    for (; ib + 8 <= nb; ib += 8)
        se_legacy_w_group(8, kind, x + 32 * ib, qw + 32 * ib, sigma2, y + ib * type_size);
    for (; ib < nb; ++ib)
        se_legacy_w_group(1, kind, x + 32 * ib, qw + 32 * ib, sigma2, y + ib * type_size);
}

SE_MULTIVERSION
void se_quantize_q4_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    se_legacy_w_row(SE_L4_0, sizeof(se_block_q4_0), x, y, n_per_row, qw);
}

SE_MULTIVERSION
void se_quantize_q4_1_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    se_legacy_w_row(SE_L4_1, sizeof(se_block_q4_1), x, y, n_per_row, qw);
}

SE_MULTIVERSION
void se_quantize_q5_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    se_legacy_w_row(SE_L5_0, sizeof(se_block_q5_0), x, y, n_per_row, qw);
}

SE_MULTIVERSION
void se_quantize_q5_1_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    se_legacy_w_row(SE_L5_1, sizeof(se_block_q5_1), x, y, n_per_row, qw);
}

/* ggml's quantize_q8_0 ignores importance weights */
void se_quantize_q8_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    (void)qw;
    se_quantize_q8_0(x, y, n_per_row);
}
