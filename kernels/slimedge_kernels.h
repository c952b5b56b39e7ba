/* slimedge C kernels: quantize / dequantize rows of float32 into GGML block formats.
 *
 * Plain C11 with raw pointers; nothing here knows about Python (kernels/binding.c is the only
 * file that does). Every quantizer produces the same bytes as ggml's reference quantizer
 * (quantize_row_*_ref, what ggml_quantize_chunk calls without an importance matrix) on any
 * IEEE-754 machine: the code keeps each block's float operations in the reference order and
 * is compiled without FMA contraction or fast-math (see setup.py).
 *
 * Type ids are GGML's (enum ggml_type). The types the kernels handle are the one table SE_TYPES
 * below; the type enum, the kernel prototypes, the dispatch table (dispatch.c) and the binding's
 * supported_types() (binding.c) are all generated from it.
 */
#ifndef SLIMEDGE_KERNELS_H
#define SLIMEDGE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The type table: X(NAME, name, ggml type id, weights per block, imatrix kernel 0/1), one line per type.
 * A type `name` has the kernels se_quantize_<name> and se_dequantize_<name> (and, with imatrix 1,
 * se_quantize_<name>_imatrix) and the block layout se_block_<name> (se_internal.h), whose sizeof is
 * the bytes per block. The block sizes are ggml's QK constants (SE_QK, SE_QK_K in se_internal.h);
 * they are only expanded where se_internal.h is included. */
#define SE_TYPES(X)                   \
    X(F32, f32, 0, 1, 0)              \
    X(F16, f16, 1, 1, 0)              \
    X(BF16, bf16, 30, 1, 0)           \
    X(Q4_0, q4_0, 2, SE_QK, 1)        \
    X(Q4_1, q4_1, 3, SE_QK, 1)        \
    X(Q5_0, q5_0, 6, SE_QK, 1)        \
    X(Q5_1, q5_1, 7, SE_QK, 1)        \
    X(Q8_0, q8_0, 8, SE_QK, 1)        \
    X(Q2_K, q2_k, 10, SE_QK_K, 1)     \
    X(Q3_K, q3_k, 11, SE_QK_K, 1)     \
    X(Q4_K, q4_k, 12, SE_QK_K, 1)     \
    X(Q5_K, q5_k, 13, SE_QK_K, 1)     \
    X(Q6_K, q6_k, 14, SE_QK_K, 1)     \
    X(IQ2_XXS, iq2_xxs, 16, SE_QK_K, 1) \
    X(IQ2_XS, iq2_xs, 17, SE_QK_K, 1) \
    X(IQ3_XXS, iq3_xxs, 18, SE_QK_K, 1) \
    X(IQ1_S, iq1_s, 19, SE_QK_K, 1)   \
    X(IQ3_S, iq3_s, 21, SE_QK_K, 1)   \
    X(IQ2_S, iq2_s, 22, SE_QK_K, 1)   \
    X(IQ1_M, iq1_m, 29, SE_QK_K, 1)   \
    X(IQ4_NL, iq4_nl, 20, SE_QK, 1)   \
    X(IQ4_XS, iq4_xs, 23, SE_QK_K, 1) \
    X(TQ1_0, tq1_0, 34, SE_QK_K, 1)   \
    X(TQ2_0, tq2_0, 35, SE_QK_K, 1)   \
    X(MXFP4, mxfp4, 39, SE_QK, 1)     \
    X(Q1_0, q1_0, 41, SE_QK1_0, 1)    \
    X(Q2_0, q2_0, 42, SE_QK2_0, 1)    \
    X(NVFP4, nvfp4, 40, SE_QK_NVFP4, 1)

#define SE_ENUM_ENTRY(NAME, name, id, qk, imx) SE_##NAME = id,
enum se_type { SE_TYPES(SE_ENUM_ENTRY) };
#undef SE_ENUM_ENTRY

/* status codes */
#define SE_OK 0
#define SE_ERR_TYPE (-1)       /* type not supported by the kernels */
#define SE_ERR_ROW (-2)        /* row length not a multiple of the block size */
#define SE_ERR_IMATRIX (-3)    /* importance weights not supported for this type */
#define SE_ERR_NEEDS_IMATRIX (-4) /* the type has no quantizer without importance weights (ggml: IQ2_XXS, IQ2_XS, IQ1_S) */

/* weights per block and bytes per block of a type; 0 when unsupported */
int se_block_size(int qtype);
int se_type_size(int qtype);

/* quantize nrows rows of n_per_row floats from src into dst (nrows * row bytes).
 * imatrix: NULL, or n_per_row importance weights per column (only where se_has_imatrix). */
int se_quantize(int qtype, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                const float *imatrix);
int se_has_imatrix(int qtype);

/* dequantize n values (a multiple of the block size) from src into dst */
int se_dequantize(int qtype, const void *src, float *dst, int64_t n);

/* FP4 checkpoint codes -> GGML blocks (kernels/nvfp4.c): blocks of n_sub groups of g code bytes (element 2i
 * low nibble, 2i+1 high) and n_sub scale bytes each, in rows of row_blocks blocks; rows 0, step, 2 step, ...
 * (n_rows of them) go to dst back to back, n_rows * row_blocks * n_sub * (g + 1) bytes */
void se_fp4_repack(const uint8_t *codes, const uint8_t *scales, uint8_t *dst, int64_t n_rows, int64_t row_blocks,
                   int64_t step, int n_sub, int g, uint8_t mask);

/* the instruction set the multi-versioned kernels run with on this CPU ("avx2" or "baseline") */
/* learned rounding of tune's block-wise stage (rounding.c): n_sub sub-blocks of k <= SE_ROUND_MAX_K weights; the
 * weight written and its gradient read as float32 or (flag set) bf16 */
#define SE_ROUND_MAX_K 256
void se_round_fwd(const float *w, const float *v, const float *s, const float *o, const int8_t *codes,
                  int64_t n_sub, int64_t k, int lo, int hi, void *out_w, int out_bf16, int8_t *out_q, uint8_t *inside);
void se_round_bwd(const void *g, int g_bf16, const float *w, const float *s, const float *o, const int8_t *q,
                  const uint8_t *inside, int64_t n_sub, int64_t k, float *g_v, float *g_s, float *g_o);
const char *se_isa(void);

/* ---- per-type entry points, declared from SE_TYPES (k = number of values, a multiple of the block
 * size; the imatrix variants quantize one row of n_per_row values with the row's n_per_row
 * importance weights qw; Q8_0's ignores the weights, as ggml does) ---- */
#define SE_IMATRIX_PROTO_0(name)
#define SE_IMATRIX_PROTO_1(name) \
    void se_quantize_##name##_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
#define SE_PROTOS(NAME, name, id, qk, imx)                      \
    void se_quantize_##name(const float *x, void *y, int64_t k);   \
    void se_dequantize_##name(const void *x, float *y, int64_t k); \
    SE_IMATRIX_PROTO_##imx(name)
SE_TYPES(SE_PROTOS)
#undef SE_PROTOS

#ifdef __cplusplus
}
#endif

#endif /* SLIMEDGE_KERNELS_H */
