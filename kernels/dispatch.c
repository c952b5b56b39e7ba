/* Type table and dispatch: se_quantize / se_dequantize route a GGML type id to its kernel. */
#include "se_internal.h"

typedef void (*se_qfn)(const float *, void *, int64_t);
typedef void (*se_dfn)(const void *, float *, int64_t);
typedef void (*se_wfn)(const float *, void *, int64_t, const float *);

typedef struct {
    int qtype, block_size, type_size;
    se_qfn quantize;
    se_dfn dequantize;
    se_wfn quantize_imatrix; /* one row with importance weights; NULL: not supported */
} se_entry;

static const se_entry SE_TABLE[] = {
    {SE_F32, 1, 4, se_quantize_f32, se_dequantize_f32, NULL},
    {SE_F16, 1, 2, se_quantize_f16, se_dequantize_f16, NULL},
    {SE_BF16, 1, 2, se_quantize_bf16, se_dequantize_bf16, NULL},
    {SE_Q4_0, 32, 18, se_quantize_q4_0, se_dequantize_q4_0, se_quantize_q4_0_imatrix},
    {SE_Q4_1, 32, 20, se_quantize_q4_1, se_dequantize_q4_1, se_quantize_q4_1_imatrix},
    {SE_Q5_0, 32, 22, se_quantize_q5_0, se_dequantize_q5_0, se_quantize_q5_0_imatrix},
    {SE_Q5_1, 32, 24, se_quantize_q5_1, se_dequantize_q5_1, se_quantize_q5_1_imatrix},
    {SE_Q8_0, 32, 34, se_quantize_q8_0, se_dequantize_q8_0, se_quantize_q8_0_imatrix},
    {SE_Q2_K, 256, 84, se_quantize_q2_k, se_dequantize_q2_k, se_quantize_q2_k_imatrix},
    {SE_Q3_K, 256, 110, se_quantize_q3_k, se_dequantize_q3_k, se_quantize_q3_k_imatrix},
    {SE_Q4_K, 256, 144, se_quantize_q4_k, se_dequantize_q4_k, se_quantize_q4_k_imatrix},
    {SE_Q5_K, 256, 176, se_quantize_q5_k, se_dequantize_q5_k, se_quantize_q5_k_imatrix},
    {SE_Q6_K, 256, 210, se_quantize_q6_k, se_dequantize_q6_k, se_quantize_q6_k_imatrix},
};

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
