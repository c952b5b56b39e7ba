/* Grid i-quant dequantizers (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M): the same floats
 * as ggml's dequantize_row_iq*: each group's grid point (values from gguf's grid map) times the
 * sub-block scale, with the stored (or parity-completed) signs. */
#include "iq_internal.h"

SE_INLINE void se_iq_put8(float *y, float db, const int8_t *val, unsigned signs) {
    for (int j = 0; j < 8; ++j) {
        const float v = db * (float)(uint8_t)val[j];
        y[j] = (signs >> j) & 1 ? -v : v;
    }
}

void se_dequantize_iq2_xxs(const void *vx, float *y, int64_t k) {
    const se_block_iq2_xxs *x = (const se_block_iq2_xxs *)vx;
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ2XXS);
    for (int64_t i = 0; i < k / SE_QK_K; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        for (int ib = 0; ib < 8; ++ib) {
            uint32_t aux[2];
            memcpy(aux, x[i].qs + 4 * ib, 8);
            const float db = d * (0.5f + (aux[1] >> 28)) * 0.25f;
            for (int l = 0; l < 4; ++l) {
                const unsigned gi = (aux[0] >> (8 * l)) & 255;
                se_iq_put8(y, db, G->val + 8 * gi, se_iq_ksigns((aux[1] >> (7 * l)) & 127));
                y += 8;
            }
        }
    }
}

void se_dequantize_iq2_xs(const void *vx, float *y, int64_t k) {
    const se_block_iq2_xs *x = (const se_block_iq2_xs *)vx;
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ2XS);
    for (int64_t i = 0; i < k / SE_QK_K; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        for (int ib = 0; ib < 8; ++ib) {
            const float db[2] = {d * (0.5f + (x[i].scales[ib] & 0xf)) * 0.25f, d * (0.5f + (x[i].scales[ib] >> 4)) * 0.25f};
            for (int l = 0; l < 4; ++l) {
                const uint16_t q = x[i].qs[4 * ib + l];
                se_iq_put8(y, db[l / 2], G->val + 8 * (q & 511), se_iq_ksigns(q >> 9));
                y += 8;
            }
        }
    }
}

void se_dequantize_iq2_s(const void *vx, float *y, int64_t k) {
    const se_block_iq2_s *x = (const se_block_iq2_s *)vx;
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ2S);
    for (int64_t i = 0; i < k / SE_QK_K; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        const uint8_t *qs = x[i].qs, *signs = x[i].qs + 32;
        for (int ib = 0; ib < 8; ++ib) {
            const float db[2] = {d * (0.5f + (x[i].scales[ib] & 0xf)) * 0.25f, d * (0.5f + (x[i].scales[ib] >> 4)) * 0.25f};
            for (int l = 0; l < 4; ++l) {
                const unsigned gi = qs[l] | ((x[i].qh[ib] << (8 - 2 * l)) & 0x300);
                se_iq_put8(y, db[l / 2], G->val + 8 * gi, signs[l]);
                y += 8;
            }
            qs += 4;
            signs += 4;
        }
    }
}

SE_INLINE void se_iq_put4x2(float *y, float db, const int8_t *v1, const int8_t *v2, unsigned signs) {
    for (int j = 0; j < 4; ++j) {
        const float a = db * (float)(uint8_t)v1[j], b = db * (float)(uint8_t)v2[j];
        y[j] = (signs >> j) & 1 ? -a : a;
        y[j + 4] = (signs >> (j + 4)) & 1 ? -b : b;
    }
}

void se_dequantize_iq3_xxs(const void *vx, float *y, int64_t k) {
    const se_block_iq3_xxs *x = (const se_block_iq3_xxs *)vx;
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ3XXS);
    for (int64_t i = 0; i < k / SE_QK_K; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        const uint8_t *qs = x[i].qs;
        for (int ib = 0; ib < 8; ++ib) {
            uint32_t aux;
            memcpy(&aux, x[i].qs + 64 + 4 * ib, 4);
            const float db = d * (0.5f + (aux >> 28)) * 0.5f;
            for (int l = 0; l < 4; ++l) {
                se_iq_put4x2(y, db, G->val + 4 * qs[2 * l], G->val + 4 * qs[2 * l + 1],
                             se_iq_ksigns((aux >> (7 * l)) & 127));
                y += 8;
            }
            qs += 8;
        }
    }
}

void se_dequantize_iq3_s(const void *vx, float *y, int64_t k) {
    const se_block_iq3_s *x = (const se_block_iq3_s *)vx;
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ3S);
    for (int64_t i = 0; i < k / SE_QK_K; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        const uint8_t *qs = x[i].qs, *signs = x[i].signs;
        for (int ib = 0; ib < 8; ++ib) {
            const unsigned sc = x[i].scales[ib / 2];
            const float db = d * (1 + 2 * (int)(ib % 2 ? sc >> 4 : sc & 0xf));
            const unsigned qh = x[i].qh[ib];
            for (int l = 0; l < 4; ++l) {
                const unsigned g1 = qs[2 * l] | ((qh << (8 - 2 * l)) & 256);
                const unsigned g2 = qs[2 * l + 1] | ((qh << (7 - 2 * l)) & 256);
                se_iq_put4x2(y, db, G->val + 4 * g1, G->val + 4 * g2, signs[l]);
                y += 8;
            }
            qs += 8;
            signs += 4;
        }
    }
}

void se_dequantize_iq1_s(const void *vx, float *y, int64_t k) {
    const se_block_iq1_s *x = (const se_block_iq1_s *)vx;
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ1S);
    for (int64_t i = 0; i < k / SE_QK_K; ++i) {
        const float d = se_fp16_to_fp32(x[i].d);
        const uint8_t *qs = x[i].qs;
        for (int ib = 0; ib < 8; ++ib) {
            const unsigned qh = x[i].qh[ib];
            const float dl = d * (2 * ((qh >> 12) & 7) + 1);
            const float delta = qh & 0x8000 ? -SE_IQ1_DELTA : SE_IQ1_DELTA;
            for (int l = 0; l < 4; ++l) {
                const int8_t *g = G->val + 8 * (qs[l] | (((qh >> (3 * l)) & 7) << 8));
                for (int j = 0; j < 8; ++j) y[j] = dl * (g[j] + delta);
                y += 8;
            }
            qs += 4;
        }
    }
}

void se_dequantize_iq1_m(const void *vx, float *y, int64_t k) {
    const se_block_iq1_m *x = (const se_block_iq1_m *)vx;
    const se_iq_grid *G = se_iq_grid_get(SE_G_IQ1S);
    for (int64_t i = 0; i < k / SE_QK_K; ++i) {
        uint16_t sc[4];
        memcpy(sc, x[i].scales, 8);
        const uint16_t s = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
        const float d = se_fp16_to_fp32(s);
        const uint8_t *qs = x[i].qs, *qh = x[i].qh;
        for (int ib = 0; ib < 8; ++ib) {
            const float dl1 = d * (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1);
            const float dl2 = d * (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1);
            const unsigned idx[4] = {qs[0] | ((qh[0] << 8) & 0x700u), qs[1] | ((qh[0] << 4) & 0x700u),
                                     qs[2] | ((qh[1] << 8) & 0x700u), qs[3] | ((qh[1] << 4) & 0x700u)};
            const float delta[4] = {qh[0] & 0x08 ? -SE_IQ1_DELTA : SE_IQ1_DELTA, qh[0] & 0x80 ? -SE_IQ1_DELTA : SE_IQ1_DELTA,
                                    qh[1] & 0x08 ? -SE_IQ1_DELTA : SE_IQ1_DELTA, qh[1] & 0x80 ? -SE_IQ1_DELTA : SE_IQ1_DELTA};
            for (int l = 0; l < 4; ++l) {
                const int8_t *g = G->val + 8 * idx[l];
                const float dl = l < 2 ? dl1 : dl2;
                for (int j = 0; j < 8; ++j) y[j] = dl * (g[j] + delta[l]);
                y += 8;
            }
            qs += 4;
            qh += 2;
        }
    }
}
