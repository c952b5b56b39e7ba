/* Learned rounding of `slimedge tune --mode blockwise`, one pass each way (the torch reference:
 * slimedge.tune.modules._rounded / RoundedWeight).
 *
 * For sub-block i of k weights with scale s[i] and offset o[i] (0 without mins):
 *   forward   q = clamp(rint((w - o) * inv + v), lo, hi), inv = 1/s (0 where s == 0, and q = the file's
 *             code there); weight = q * s + o; inside = the clamp did not bind (and s != 0)
 *   backward  g_v = inside ? g * s : 0;  g_s[i] = sum(g * q) - sum(inside ? g * (w - o) : 0) * inv;
 *             g_o[i] = sum(inside ? 0 : g)
 * Same operations in the same order as the reference (no contraction: -ffp-contract=off), so the forward is
 * bit-identical to it; the backward's sums are taken in another order (float rounding differs). Under bf16
 * autocast the weight is written in bf16 (rounded to nearest even, as torch casts) and its gradient read in
 * bf16, which saves the two casts around the matrix product.
 */
#include <math.h>
#include <string.h>

#include "se_internal.h"

static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u); /* finite values: round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* one sub-block of k weights with a non-zero scale: codes, inside flags and the float weight row */
static inline void round_row(const float *wi, const float *vi, float sc, float off, int has_off, float inv, float flo,
                             float fhi, int64_t k, int8_t *oq, uint8_t *in, float *ow) {
    if (has_off) {
        SE_LANES
        for (int64_t j = 0; j < k; ++j) {
            const float t = rintf(vi[j] + (wi[j] - off) * inv);
            const float q = t < flo ? flo : (t > fhi ? fhi : t);
            oq[j] = (int8_t)q;
            in[j] = (uint8_t)(t == q);
            ow[j] = q * sc + off;
        }
    } else {
        SE_LANES
        for (int64_t j = 0; j < k; ++j) {
            const float t = rintf(vi[j] + wi[j] * inv);
            const float q = t < flo ? flo : (t > fhi ? fhi : t);
            oq[j] = (int8_t)q;
            in[j] = (uint8_t)(t == q);
            ow[j] = q * sc;
        }
    }
}

SE_MULTIVERSION void se_round_fwd(const float *w, const float *v, const float *s, const float *o, const int8_t *codes,
                                  int64_t n_sub, int64_t k, int lo, int hi, void *out_w, int out_bf16, int8_t *out_q,
                                  uint8_t *inside) {
    float row[SE_ROUND_MAX_K];
    for (int64_t i = 0; i < n_sub; ++i) {
        const float sc = s[i], off = o ? o[i] : 0.0f;
        float *ow = out_bf16 ? row : (float *)out_w + i * k;
        int8_t *oq = out_q + i * k;
        uint8_t *in = inside + i * k;
        if (sc == 0.0f) { /* the file's codes, as the reference: code * 0 (+ off) */
            for (int64_t j = 0; j < k; ++j) {
                oq[j] = codes[i * k + j];
                in[j] = 0;
                ow[j] = o ? (float)oq[j] * sc + off : (float)oq[j] * sc;
            }
        } else {
            round_row(w + i * k, v + i * k, sc, off, o != NULL, 1.0f / sc, (float)lo, (float)hi, k, oq, in, ow);
        }
        if (out_bf16) {
            uint16_t *ob = (uint16_t *)out_w + i * k;
            SE_LANES
            for (int64_t j = 0; j < k; ++j) ob[j] = to_bf16(row[j]);
        }
    }
}

SE_MULTIVERSION void se_round_bwd(const void *g, int g_bf16, const float *w, const float *s, const float *o,
                                  const int8_t *q, const uint8_t *inside, int64_t n_sub, int64_t k, float *g_v,
                                  float *g_s, float *g_o) {
    float row[SE_ROUND_MAX_K];
    for (int64_t i = 0; i < n_sub; ++i) {
        const float sc = s[i], off = o ? o[i] : 0.0f, inv = sc == 0.0f ? 0.0f : 1.0f / sc;
        const float *gi = g_bf16 ? row : (const float *)g + i * k, *wi = w + i * k;
        if (g_bf16) {
            const uint16_t *gb = (const uint16_t *)g + i * k;
            SE_LANES
            for (int64_t j = 0; j < k; ++j) row[j] = from_bf16(gb[j]);
        }
        const int8_t *qi = q + i * k;
        const uint8_t *in = inside + i * k;
        float gq = 0.0f, gn = 0.0f, go = 0.0f;
#pragma omp simd reduction(+ : gq, gn, go)
        for (int64_t j = 0; j < k; ++j) {
            const float gj = gi[j], num = o ? wi[j] - off : wi[j];
            gq += gj * (float)qi[j];
            gn += in[j] ? gj * num : 0.0f;
            go += in[j] ? 0.0f : gj;
            if (g_v) g_v[i * k + j] = in[j] ? gj * sc : 0.0f;
        }
        if (g_s) g_s[i] = gq - gn * inv;
        if (g_o) g_o[i] = go;
    }
}
