/* I-quant internals: block layouts of the grid types, the lattice tables, shared search helpers.
 *
 * Tables (built once per grid at first use, thread-safe; kernels/iq_tables.c): for each grid, the
 * positions 2*l+1 of its points, the map from a key (levels of one group, bits per level) to the grid
 * index, and for every key off the grid that a quantizer can form its neighbour list (count, then grid
 * indices ordered by squared distance and index: the grid points at the nwant smallest distinct
 * distances) — the lists ggml's ggml_quantize_init builds (iq2xs_init_impl / iq3xs_init_impl), from the
 * grids of kernels/iq_grids.h — also stored lane-major for the neighbour search (kernels/iq_search.c).
 */
#ifndef SE_IQ_INTERNAL_H
#define SE_IQ_INTERNAL_H

#include <float.h>
#include <math.h>

#include "se_internal.h"

typedef struct { uint16_t d; uint16_t qs[32]; } se_block_iq2_xxs;                                  /* 66 */
typedef struct { uint16_t d; uint16_t qs[32]; uint8_t scales[8]; } se_block_iq2_xs;                /* 74 */
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t scales[8]; } se_block_iq2_s;   /* 82 */
typedef struct { uint16_t d; uint8_t qs[96]; } se_block_iq3_xxs;                                   /* 98 */
typedef struct { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t signs[32]; uint8_t scales[4]; } se_block_iq3_s; /* 110 */
typedef struct { uint16_t d; uint8_t qs[32]; uint16_t qh[8]; } se_block_iq1_s;                     /* 50 */
typedef struct { uint8_t qs[32]; uint8_t qh[16]; uint8_t scales[8]; } se_block_iq1_m;              /* 56 */

_Static_assert(sizeof(se_block_iq2_xxs) == 66, "iq2_xxs layout");
_Static_assert(sizeof(se_block_iq2_xs) == 74, "iq2_xs layout");
_Static_assert(sizeof(se_block_iq2_s) == 82, "iq2_s layout");
_Static_assert(sizeof(se_block_iq3_xxs) == 98, "iq3_xxs layout");
_Static_assert(sizeof(se_block_iq3_s) == 110, "iq3_s layout");
_Static_assert(sizeof(se_block_iq1_s) == 50, "iq1_s layout");
_Static_assert(sizeof(se_block_iq1_m) == 56, "iq1_m layout");

enum { SE_G_IQ2XXS, SE_G_IQ2XS, SE_G_IQ2S, SE_G_IQ1S, SE_G_IQ3XXS, SE_G_IQ3S, SE_G_COUNT };

typedef struct se_iq_grid se_iq_grid;

/* the neighbour search of iq_search.c: among the neighbours of off-grid key u, the grid index with the
 * least sum over i (in order) of w[i]*(scale*q8[level_i] - x[i])^2, the first on ties; -1 when none is
 * below FLT_MAX (NaN / inf data) */
typedef int (*se_iq_nearest_fn)(const se_iq_grid *G, int u, const float *x, const float *w, float scale,
                                const float *q8);

struct se_iq_grid {
    int n, dim, bits;        /* grid points, coordinates per point, bits per level in a key */
    const int8_t *pos;       /* [n][dim]: 2*l+1 */
    const int32_t *map;      /* key -> grid index, or -(offset+1) of its neighbour list in nb (-1: a key
                              * no quantizer forms, no list) */
    const uint16_t *nb;      /* neighbour lists: count, then grid indices */
    const int8_t *val;       /* [n][dim]: the dequantized value of each coordinate (gguf's grid_map) */
    const uint8_t *lev;      /* [n][dim]: the level l of each coordinate */
    const uint32_t *lane_off; /* key -> offset in lanes of its neighbour list in chunks of 8 */
    const uint8_t *lanes;    /* per chunk [dim][8] levels, a short last chunk repeating its last one */
    se_iq_nearest_fn nearest;
};

/* the tables of grid g (SE_G_*), built on first call */
const se_iq_grid *se_iq_grid_get(int g);

/* the fastest neighbour search this CPU runs (AVX2 where present), same results everywhere */
se_iq_nearest_fn se_iq_pick_nearest(void);

/* the positions 2*l+1 of levels 0..7 as floats */
static const float SE_IQ_Q8[8] = {1, 3, 5, 7, 9, 11, 13, 15};

#define SE_IQ_EPS 1e-15f         /* ggml's GROUP_MAX_EPS */
#define SE_IQ_EPS_IQ3_XXS 1e-8f
#define SE_IQ_EPS_IQ2_S 1e-8f
#define SE_IQ_EPS_IQ1_M 1e-7f
#define SE_IQ_EPS_IQ1_S 1e-12f
#define SE_IQ1_DELTA 0.125f

SE_INLINE float se_maxf(float a, float b) { return a > b ? a : b; } /* ggml's MAX(a, b) */

/* the key of one group of levels */
SE_INLINE int se_iq_key(const int8_t *L, int dim, int bits) {
    int u = 0;
    for (int i = 0; i < dim; ++i) u |= L[i] << (bits * i);
    return u;
}

/* ggml's iq2/iq3_find_best_neighbour of off-grid key u at `scale`: its grid index (ggml asserts one is
 * found, only NaN/inf data fails: then the first neighbour) */
SE_INLINE int se_iq_neighbour_index(const se_iq_grid *G, int u, const float *xval, const float *w, float scale) {
    const int gi = G->nearest(G, u, xval, w, scale, SE_IQ_Q8);
    return gi < 0 ? G->nb[-G->map[u]] : gi;
}

/* the same, its levels written to L */
SE_INLINE int se_iq_best_neighbour(const se_iq_grid *G, int u, const float *xval, const float *w, float scale,
                                   int8_t *L) {
    const int gi = se_iq_neighbour_index(G, u, xval, w, scale);
    const uint8_t *lv = G->lev + (size_t)gi * G->dim;
    for (int i = 0; i < G->dim; ++i) L[i] = (int8_t)lv[i];
    return gi;
}

/* levels of one group at inverse scale id: clamp(nearest_int(0.5*(id*x - 1)), 0, kmax - 1) */
SE_INLINE void se_iq_levels(const float *xval, int dim, float id, int kmax, int8_t *L) {
    for (int i = 0; i < dim; ++i) {
        const int l = se_nearest_int(0.5f * (id * xval[i] - 1));
        L[i] = (int8_t)se_max_i(0, se_min_i(kmax - 1, l));
    }
}

/* the grid point for levels L (off-grid: the best neighbour at `scale`, L rewritten); -> grid index */
SE_INLINE int se_iq_snap(const se_iq_grid *G, const float *xval, const float *waux, float scale, int8_t *L,
                         int *on_grid) {
    const int u = se_iq_key(L, G->dim, G->bits);
    const int gi = G->map[u];
    if (on_grid) *on_grid = gi >= 0;
    if (gi >= 0) return gi;
    return se_iq_best_neighbour(G, u, xval, waux, scale, L);
}

/* sign bits of a group of 8 (bit i: x[i] < 0) and |x| into xval (-0.0 kept, as ggml's `x >= 0` test);
 * with parity, an odd count of negatives flips the least important one (weight*x*x, first minimum)
 * back to its signed value and its bit, so the 7 stored bits determine the eighth */
SE_INLINE uint8_t se_iq_signs8(const float *xb, const float *weight, float *xval, int parity) {
    int nflip = 0;
    uint8_t s = 0;
    for (int i = 0; i < 8; ++i) {
        if (xb[i] >= 0) xval[i] = xb[i];
        else {
            xval[i] = -xb[i];
            ++nflip;
            s |= (uint8_t)(1u << i);
        }
    }
    if (parity && nflip % 2) {
        int imin = 0;
        float min = weight[0] * xb[0] * xb[0];
        for (int i = 1; i < 8; ++i) {
            const float ax = weight[i] * xb[i] * xb[i];
            if (ax < min) {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= (uint8_t)(1u << imin);
    }
    return parity ? (uint8_t)(s & 127) : s;
}

/* the 8 sign bits of a 7-bit sign code: the eighth makes the count of negatives even */
SE_INLINE uint8_t se_iq_ksigns(unsigned s7) {
    return (uint8_t)(s7 | ((unsigned)__builtin_parity(s7) << 7));
}

SE_INLINE float se_sumsq_256(const float *x) {
    float s = 0;
    for (int i = 0; i < 256; ++i) s += x[i] * x[i];
    return s;
}

#endif /* SE_IQ_INTERNAL_H */
