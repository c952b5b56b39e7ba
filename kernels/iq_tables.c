/* The i-quant lattice tables (see iq_internal.h), built once per grid on first use.
 *
 * Same neighbour lists as ggml's iq2xs_init_impl / iq3xs_init_impl: for each key off the grid, the
 * squared distances (in positions 2*l+1) to every grid point; the nwant smallest distinct distances are
 * found by repeated minimum and the points at them listed by (distance, index) — the order of ggml's
 * qsort with its (distance, index) comparator. Only keys the quantizers can form get a list (8-value
 * grids: levels 0..2, a 2-bit field of 3 never occurs), which keeps the first use quick. Each list is
 * also stored lane-major for the neighbour search (iq_search.c). Thread-safe through pthread_once.
 */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>

#include "iq_grids.h"
#include "iq_internal.h"

typedef struct {
    const uint16_t *kgrid;
    const int8_t *gval;
    int n, dim, nwant;
} se_iq_src;

static const se_iq_src SE_IQ_SRC[SE_G_COUNT] = {
    [SE_G_IQ2XXS] = {se_kgrid_iq2xxs, se_gval_iq2xxs, 256, 8, 2},
    [SE_G_IQ2XS] = {se_kgrid_iq2xs, se_gval_iq2xs, 512, 8, 2},
    [SE_G_IQ2S] = {se_kgrid_iq2s, se_gval_iq2s, 1024, 8, 1},
    [SE_G_IQ1S] = {se_kgrid_iq1s, se_gval_iq1s, 2048, 8, 3},
    [SE_G_IQ3XXS] = {se_kgrid_iq3xxs, se_gval_iq3xxs, 256, 4, 2},
    [SE_G_IQ3S] = {se_kgrid_iq3s, se_gval_iq3s, 512, 4, 3},
};

static se_iq_grid SE_IQ_GRIDS[SE_G_COUNT];
static pthread_once_t SE_IQ_ONCE[SE_G_COUNT] = {PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT,
                                                PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT};

/* neighbours of key u into out (NULL: count only); posT: the grid's positions [dim][n]; d2: scratch of
 * n ints. Distances for all points at once, then the nwant smallest distinct ones, then the points at
 * them by (distance, index). */
SE_MULTIVERSION
static int se_iq_neighbours(const int8_t *posT, int n, int dim, int bits, int nwant, int u, int *d2,
                            uint16_t *out) {
    for (int j = 0; j < n; ++j) d2[j] = 0;
    for (int k = 0; k < dim; ++k) {
        const int pk = 2 * ((u >> (bits * k)) & ((1 << bits) - 1)) + 1;
        const int8_t *pc = posT + (size_t)k * n;
        for (int j = 0; j < n; ++j) d2[j] += (pc[j] - pk) * (pc[j] - pk);
    }
    int m[3], cnt[3], nm = 0, prev = -1, total = 0;
    for (int w = 0; w < nwant && w < 3; ++w) {
        int mm = INT_MAX;
#pragma omp simd reduction(min : mm)
        for (int j = 0; j < n; ++j) {
            const int v = d2[j] > prev ? d2[j] : INT_MAX;
            mm = v < mm ? v : mm;
        }
        if (mm == INT_MAX) break;
        int c = 0;
#pragma omp simd reduction(+ : c)
        for (int j = 0; j < n; ++j) c += d2[j] == mm;
        m[nm] = prev = mm;
        cnt[nm++] = c;
        total += c;
    }
    if (out) {
        int at[3];
        for (int w = 0, o = 0; w < nm; o += cnt[w++]) at[w] = o;
        for (int j = 0; j < n; ++j) {
            if (d2[j] > prev) continue;  /* farther than the last distance kept: most points */
            for (int w = 0; w < nm; ++w)
                if (d2[j] == m[w]) out[at[w]++] = (uint16_t)j;
        }
    }
    return total;
}

/* a key the quantizers can form: 8-value grids have levels 0..2 (no 2-bit field of 3) */
static int se_iq_reachable(int u, int dim) {
    if (dim != 8) return 1;
    for (int k = 0; k < 8; ++k)
        if (((u >> (2 * k)) & 3) == 3) return 0;
    return 1;
}

static void se_iq_build(int g) {
    const se_iq_src *s = &SE_IQ_SRC[g];
    const int n = s->n, dim = s->dim, bits = dim == 8 ? 2 : 3;
    const int nkeys = dim == 8 ? 43692 : 4096;
    int8_t *pos = malloc((size_t)n * dim), *val = malloc((size_t)n * dim);
    uint8_t *lev = malloc((size_t)n * dim);
    int32_t *map = malloc(sizeof(int32_t) * nkeys);
    uint32_t *lane_off = malloc(sizeof(uint32_t) * nkeys);
    int *d2 = malloc(sizeof(int) * n);
    int8_t *posT = malloc((size_t)n * dim);
    if (!pos || !val || !lev || !map || !lane_off || !d2 || !posT) abort();
    for (int j = 0; j < n; ++j)
        for (int k = 0; k < dim; ++k) {
            const int l = (s->kgrid[j] >> (bits * k)) & ((1 << bits) - 1);
            pos[j * dim + k] = posT[(size_t)k * n + j] = (int8_t)(2 * l + 1);
            lev[j * dim + k] = (uint8_t)l;
            val[j * dim + k] = s->gval[l];
        }
    for (int u = 0; u < nkeys; ++u) map[u] = -1;
    for (int j = 0; j < n; ++j) map[s->kgrid[j]] = j;
    size_t total = 0, lanes = 0;
    for (int u = 0; u < nkeys; ++u) {
        lane_off[u] = 0;
        if (map[u] >= 0 || !se_iq_reachable(u, dim)) continue;
        const int c = se_iq_neighbours(posT, n, dim, bits, s->nwant, u, d2, NULL);
        total += 1 + (size_t)c;
        lanes += (size_t)(c + 7) / 8 * 8 * dim;
    }
    uint16_t *nb = malloc(sizeof(uint16_t) * (total ? total : 1));
    uint8_t *nbl = malloc(lanes ? lanes : 1);
    if (!nb || !nbl) abort();
    size_t off = 0, loff = 0;
    for (int u = 0; u < nkeys; ++u) {
        if (map[u] >= 0 || !se_iq_reachable(u, dim)) continue;
        const int c = se_iq_neighbours(posT, n, dim, bits, s->nwant, u, d2, nb + off + 1);
        nb[off] = (uint16_t)c;
        map[u] = -(int32_t)(off + 1);
        lane_off[u] = (uint32_t)loff;
        /* chunks of 8 neighbours: [coordinate][lane] levels; a short chunk repeats its last neighbour */
        for (int c0 = 0; c0 < c; c0 += 8, loff += 8 * (size_t)dim)
            for (int k = 0; k < dim; ++k)
                for (int j = 0; j < 8; ++j)
                    nbl[loff + 8 * k + j] = lev[(size_t)nb[off + 1 + se_min_i(c0 + j, c - 1)] * dim + k];
        off += 1 + (size_t)c;
    }
    free(d2);
    free(posT);
    SE_IQ_GRIDS[g] = (se_iq_grid){n, dim, bits, pos, map, nb, val, lev, lane_off, nbl, se_iq_pick_nearest()};
}

#define SE_IQ_INIT_FN(g) static void se_iq_init_##g(void) { se_iq_build(g); }
SE_IQ_INIT_FN(0)
SE_IQ_INIT_FN(1)
SE_IQ_INIT_FN(2)
SE_IQ_INIT_FN(3)
SE_IQ_INIT_FN(4)
SE_IQ_INIT_FN(5)
static void (*const SE_IQ_INIT[SE_G_COUNT])(void) = {se_iq_init_0, se_iq_init_1, se_iq_init_2,
                                                    se_iq_init_3, se_iq_init_4, se_iq_init_5};

const se_iq_grid *se_iq_grid_get(int g) {
    pthread_once(&SE_IQ_ONCE[g], SE_IQ_INIT[g]);
    return &SE_IQ_GRIDS[g];
}
