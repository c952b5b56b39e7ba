/* The i-quant lattice tables (see iq_internal.h), built once per grid on first use.
 *
 * Same tables as ggml's iq2xs_init_impl / iq3xs_init_impl: for each key off the grid, the squared
 * distances (in positions 2*l+1) to every grid point; the nwant smallest distinct distances are found
 * by repeated minimum and the points at them listed by (distance, index) — the order of ggml's qsort
 * with its (distance, index) comparator. Thread-safe through pthread_once.
 */
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

/* neighbours of key u into out (NULL: count only); d2: scratch of n ints */
static int se_iq_neighbours(const int8_t *pos, int n, int dim, int bits, int nwant, int u, int *d2,
                            uint16_t *out) {
    int8_t p[8];
    for (int k = 0; k < dim; ++k) p[k] = (int8_t)(2 * ((u >> (bits * k)) & ((1 << bits) - 1)) + 1);
    for (int j = 0; j < n; ++j) {
        int s = 0;
        for (int k = 0; k < dim; ++k) s += (pos[j * dim + k] - p[k]) * (pos[j * dim + k] - p[k]);
        d2[j] = s;
    }
    int count = 0, prev = -1;
    for (int w = 0; w < nwant; ++w) {
        int m = 1 << 30;
        for (int j = 0; j < n; ++j)
            if (d2[j] > prev && d2[j] < m) m = d2[j];
        if (m == 1 << 30) break;
        for (int j = 0; j < n; ++j)
            if (d2[j] == m) {
                if (out) out[count] = (uint16_t)j;
                ++count;
            }
        prev = m;
    }
    return count;
}

static void se_iq_build(int g) {
    const se_iq_src *s = &SE_IQ_SRC[g];
    const int n = s->n, dim = s->dim, bits = dim == 8 ? 2 : 3;
    const int nkeys = dim == 8 ? 43692 : 4096;
    int8_t *pos = malloc((size_t)n * dim), *val = malloc((size_t)n * dim);
    int32_t *map = malloc(sizeof(int32_t) * nkeys);
    int *d2 = malloc(sizeof(int) * n);
    if (!pos || !val || !map || !d2) abort();
    for (int j = 0; j < n; ++j)
        for (int k = 0; k < dim; ++k) {
            const int l = (s->kgrid[j] >> (bits * k)) & ((1 << bits) - 1);
            pos[j * dim + k] = (int8_t)(2 * l + 1);
            val[j * dim + k] = s->gval[l];
        }
    for (int u = 0; u < nkeys; ++u) map[u] = -1;
    for (int j = 0; j < n; ++j) map[s->kgrid[j]] = j;
    size_t total = 0;
    for (int u = 0; u < nkeys; ++u)
        if (map[u] < 0) total += 1 + (size_t)se_iq_neighbours(pos, n, dim, bits, s->nwant, u, d2, NULL);
    uint16_t *nb = malloc(sizeof(uint16_t) * (total ? total : 1));
    if (!nb) abort();
    size_t off = 0;
    for (int u = 0; u < nkeys; ++u) {
        if (map[u] >= 0) continue;
        const int c = se_iq_neighbours(pos, n, dim, bits, s->nwant, u, d2, nb + off + 1);
        nb[off] = (uint16_t)c;
        map[u] = -(int32_t)(off + 1);
        off += 1 + (size_t)c;
    }
    free(d2);
    SE_IQ_GRIDS[g] = (se_iq_grid){n, dim, bits, pos, map, nb, val};
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
