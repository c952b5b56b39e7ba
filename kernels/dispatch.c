/* Type table and dispatch: se_quantize / se_dequantize route a GGML type id to its kernel.
 * The table is generated from SE_TYPES (slimedge_kernels.h), the one list of the kernels' types. */
#include "se_internal.h"
#include "iq_internal.h" /* layouts of the grid i-quants IQ1_S .. IQ3_S */
#include "se_blocks2.h" /* layouts of IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, Q1_0, Q2_0 */

typedef void (*se_qfn)(const float *, void *, int64_t);
typedef void (*se_dfn)(const void *, float *, int64_t);
typedef void (*se_wfn)(const float *, void *, int64_t, const float *);

typedef struct {
    int qtype, block_size, type_size;
    se_qfn quantize;
    se_dfn dequantize;
    se_wfn quantize_imatrix; /* one row with importance weights; NULL: not supported */
} se_entry;

/* one entry per line of SE_TYPES: block size from the QK constants, bytes from sizeof(block) */
#define SE_IMATRIX_FN_0(name) NULL
#define SE_IMATRIX_FN_1(name) se_quantize_##name##_imatrix
#define SE_ENTRY(NAME, name, id, qk, imx) \
    {SE_##NAME, qk, (int)sizeof(se_block_##name), se_quantize_##name, se_dequantize_##name, SE_IMATRIX_FN_##imx(name)},
static const se_entry SE_TABLE[] = {SE_TYPES(SE_ENTRY)};
#undef SE_ENTRY

static const se_entry *se_find(int qtype) {
    for (size_t i = 0; i < sizeof(SE_TABLE) / sizeof(SE_TABLE[0]); ++i)
        if (SE_TABLE[i].qtype == qtype) return &SE_TABLE[i];
    return NULL;
}

int se_block_size(int qtype) {
    const se_entry *e = se_find(qtype);
    return e ? e->block_size : 0;
}

int se_type_size(int qtype) {
    const se_entry *e = se_find(qtype);
    return e ? e->type_size : 0;
}

int se_has_imatrix(int qtype) {
    const se_entry *e = se_find(qtype);
    return e && e->quantize_imatrix;
}

int se_quantize(int qtype, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                const float *imatrix) {
    const se_entry *e = se_find(qtype);
    if (!e) return SE_ERR_TYPE;
    if (n_per_row % e->block_size) return SE_ERR_ROW;
    if (!imatrix && (qtype == SE_IQ2_XXS || qtype == SE_IQ2_XS || qtype == SE_IQ1_S)) return SE_ERR_NEEDS_IMATRIX;
    if (imatrix) {
        if (!e->quantize_imatrix) return SE_ERR_IMATRIX;
        const int64_t row_bytes = n_per_row / e->block_size * e->type_size;
        for (int64_t r = 0; r < nrows; ++r)
            e->quantize_imatrix(src + r * n_per_row, (char *)dst + r * row_bytes, n_per_row, imatrix);
        return SE_OK;
    }
    /* without importance weights every format is row-independent: one call over all blocks */
    e->quantize(src, dst, nrows * n_per_row);
    return SE_OK;
}

int se_dequantize(int qtype, const void *src, float *dst, int64_t n) {
    const se_entry *e = se_find(qtype);
    if (!e) return SE_ERR_TYPE;
    if (n % e->block_size) return SE_ERR_ROW;
    e->dequantize(src, dst, n);
    return SE_OK;
}

const char *se_isa(void) {
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(SE_NO_MULTIVERSION)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? "avx2" : "baseline";
#else
    return "baseline";
#endif
}
