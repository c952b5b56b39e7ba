/* Neighbour search of the grid i-quants: the off-grid point's best neighbour (ggml's
 * iq2/iq3_find_best_neighbour, iq1_find_best_neighbour2), same choice, faster.
 *
 * The error of neighbour p is d2(p) = sum over i, in order, of w[i]*(scale*q[l_i(p)] - x[i])^2. Each term
 * depends only on the coordinate i and the level l_i(p), so the terms are computed once per search into a
 * table t[i][l] (each as ggml computes it: (w*diff)*diff, diff = scale*q - x) and every neighbour's d2 is
 * the in-order sum of dim table entries: the same float additions ggml does (its d2 starts at 0; 0 + t
 * differs from t only in the sign of a zero, which no comparison sees). The smallest d2 wins, the first
 * on ties, values not below FLT_MAX never.
 *
 * The AVX2 version runs 8 neighbours per step (the lane-major lists of iq_tables.c): each lane sums its
 * own neighbour's terms in order (vpermps picks t[i][level] from a register of 8 levels), keeps its own
 * first minimum, and the lanes' minima are merged to the first position of the least value. Pad lanes
 * repeat the list's last neighbour at later positions, so they never win a tie.
 */
#include <limits.h>

#include "iq_internal.h"

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(SE_NO_MULTIVERSION)
#define SE_IQ_AVX2 1
#include <immintrin.h>
#endif

SE_INLINE int se_iq_nearest_dim(const se_iq_grid *G, const int dim, int u, const float *x, const float *w,
                                float scale, const float *q8) {
    float sq[8], t[8][8];
    for (int l = 0; l < 8; ++l) sq[l] = scale * q8[l];
    for (int i = 0; i < dim; ++i)
        for (int l = 0; l < 8; ++l) {
            const float diff = sq[l] - x[i];
            t[i][l] = w[i] * diff * diff;
        }
    const uint16_t *nbl = G->nb - G->map[u] - 1;
    float best = FLT_MAX;
    int gi = -1;
    for (int j = 1; j <= nbl[0]; ++j) {
        const uint8_t *lv = G->lev + (size_t)nbl[j] * dim;
        float d2 = t[0][lv[0]];
        for (int i = 1; i < dim; ++i) d2 += t[i][lv[i]];
        if (d2 < best) {
            best = d2;
            gi = nbl[j];
        }
    }
    return gi;
}

static int se_iq_nearest_scalar(const se_iq_grid *G, int u, const float *x, const float *w, float scale,
                                const float *q8) {
    return G->dim == 8 ? se_iq_nearest_dim(G, 8, u, x, w, scale, q8) : se_iq_nearest_dim(G, 4, u, x, w, scale, q8);
}

#ifdef SE_IQ_AVX2
__attribute__((target("avx2"), always_inline)) static inline int
se_iq_nearest_avx2_dim(const se_iq_grid *G, const int dim, int u, const float *x, const float *w, float scale,
                       const float *q8) {
    const __m256 sq = _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_loadu_ps(q8));
    __m256 t[8];
    for (int i = 0; i < dim; ++i) {
        const __m256 diff = _mm256_sub_ps(sq, _mm256_set1_ps(x[i]));
        t[i] = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(w[i]), diff), diff);
    }
    const uint16_t *nbl = G->nb - G->map[u] - 1;
    const int c = nbl[0];
    const uint8_t *p = G->lanes + G->lane_off[u];
    __m256 best = _mm256_set1_ps(FLT_MAX);
    __m256i bpos = _mm256_setzero_si256(), pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i step = _mm256_set1_epi32(8);
    for (int c0 = 0; c0 < c; c0 += 8, p += 8 * dim) {
        __m256 d2 = _mm256_permutevar8x32_ps(t[0], _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
        for (int i = 1; i < dim; ++i)
            d2 = _mm256_add_ps(d2, _mm256_permutevar8x32_ps(
                                       t[i], _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * i)))));
        const __m256 lt = _mm256_cmp_ps(d2, best, _CMP_LT_OQ);
        best = _mm256_blendv_ps(best, d2, lt);
        bpos = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bpos), _mm256_castsi256_ps(pos), lt));
        pos = _mm256_add_epi32(pos, step);
    }
    float bv[8];
    int bp[8];
    _mm256_storeu_ps(bv, best);
    _mm256_storeu_si256((__m256i *)bp, bpos);
    float m = FLT_MAX;
    int mp = INT_MAX;
    for (int l = 0; l < 8; ++l)
        if (bv[l] < m || (bv[l] == m && bp[l] < mp)) {
            m = bv[l];
            mp = bp[l];
        }
    return m < FLT_MAX ? nbl[1 + mp] : -1;
}

__attribute__((target("avx2"))) static int se_iq_nearest_avx2(const se_iq_grid *G, int u, const float *x,
                                                              const float *w, float scale, const float *q8) {
    return G->dim == 8 ? se_iq_nearest_avx2_dim(G, 8, u, x, w, scale, q8)
                       : se_iq_nearest_avx2_dim(G, 4, u, x, w, scale, q8);
}
#endif

se_iq_nearest_fn se_iq_pick_nearest(void) {
#ifdef SE_IQ_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return se_iq_nearest_avx2;
#endif
    return se_iq_nearest_scalar;
}
