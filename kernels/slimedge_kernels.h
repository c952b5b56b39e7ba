/* slimedge C kernels: quantize / dequantize rows of float32 into GGML block formats.
 *
 * Plain C11 with raw pointers; nothing here knows about Python (kernels/binding.c is the only
 * file that does). Every quantizer produces the same bytes as ggml's reference quantizer
 * (quantize_row_*_ref, what ggml_quantize_chunk calls without an importance matrix) on any
 * IEEE-754 machine: the code keeps each block's float operations in the reference order and
 * is compiled without FMA contraction or fast-math (see setup.py).
 *
 * Type ids are GGML's (enum ggml_type): F32=0 F16=1 Q4_0=2 Q4_1=3 Q5_0=6 Q5_1=7 Q8_0=8
 * Q2_K=10 Q3_K=11 Q4_K=12 Q5_K=13 Q6_K=14 BF16=30.
 */
#ifndef SLIMEDGE_KERNELS_H
#define SLIMEDGE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum se_type {
    SE_F32 = 0, SE_F16 = 1, SE_Q4_0 = 2, SE_Q4_1 = 3, SE_Q5_0 = 6, SE_Q5_1 = 7, SE_Q8_0 = 8,
    SE_Q2_K = 10, SE_Q3_K = 11, SE_Q4_K = 12, SE_Q5_K = 13, SE_Q6_K = 14, SE_BF16 = 30,
};

/* status codes */
#define SE_OK 0
#define SE_ERR_TYPE (-1)       /* type not supported by the kernels */
#define SE_ERR_ROW (-2)        /* row length not a multiple of the block size */
#define SE_ERR_IMATRIX (-3)    /* importance weights not supported for this type */

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

/* the instruction set the multi-versioned kernels run with on this CPU ("avx2" or "baseline") */
const char *se_isa(void);

/* ---- per-family entry points (k = number of values, a multiple of the block size) ---- */
void se_quantize_f32(const float *x, void *y, int64_t k);
void se_quantize_f16(const float *x, void *y, int64_t k);
void se_quantize_bf16(const float *x, void *y, int64_t k);
void se_dequantize_f32(const void *x, float *y, int64_t k);
void se_dequantize_f16(const void *x, float *y, int64_t k);
void se_dequantize_bf16(const void *x, float *y, int64_t k);

void se_quantize_q4_0(const float *x, void *y, int64_t k);
void se_quantize_q4_1(const float *x, void *y, int64_t k);
void se_quantize_q5_0(const float *x, void *y, int64_t k);
void se_quantize_q5_1(const float *x, void *y, int64_t k);
void se_quantize_q8_0(const float *x, void *y, int64_t k);
/* importance-weighted legacy formats, one row; Q8_0 ignores the weights as ggml does */
void se_quantize_q4_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_quantize_q4_1_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_quantize_q5_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_quantize_q5_1_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_quantize_q8_0_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_dequantize_q4_0(const void *x, float *y, int64_t k);
void se_dequantize_q4_1(const void *x, float *y, int64_t k);
void se_dequantize_q5_0(const void *x, float *y, int64_t k);
void se_dequantize_q5_1(const void *x, float *y, int64_t k);
void se_dequantize_q8_0(const void *x, float *y, int64_t k);

void se_quantize_q2_k(const float *x, void *y, int64_t k);
void se_quantize_q3_k(const float *x, void *y, int64_t k);
void se_quantize_q4_k(const float *x, void *y, int64_t k);
void se_quantize_q5_k(const float *x, void *y, int64_t k);
void se_quantize_q6_k(const float *x, void *y, int64_t k);
/* importance-weighted k-quants, one row of n_per_row values; qw: the row's n_per_row weights */
void se_quantize_q2_k_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_quantize_q3_k_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_quantize_q4_k_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_quantize_q5_k_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_quantize_q6_k_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw);
void se_dequantize_q2_k(const void *x, float *y, int64_t k);
void se_dequantize_q3_k(const void *x, float *y, int64_t k);
void se_dequantize_q4_k(const void *x, float *y, int64_t k);
void se_dequantize_q5_k(const void *x, float *y, int64_t k);
void se_dequantize_q6_k(const void *x, float *y, int64_t k);

#ifdef __cplusplus
}
#endif

#endif /* SLIMEDGE_KERNELS_H */
