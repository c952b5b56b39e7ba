/* Float formats: F32 (copy), F16 (IEEE half, round to nearest even), BF16 (top 16 bits of
 * float32, round to nearest even, NaN forced quiet) - the conversions ggml_quantize_chunk uses. */
#include "se_internal.h"

void se_quantize_f32(const float *x, void *y, int64_t k) { memcpy(y, x, (size_t)k * 4); }
void se_dequantize_f32(const void *x, float *y, int64_t k) { memcpy(y, x, (size_t)k * 4); }

SE_MULTIVERSION
void se_quantize_f16(const float *x, void *y, int64_t k) {
    uint16_t *out = (uint16_t *)y;
    for (int64_t i = 0; i < k; ++i) out[i] = se_fp32_to_fp16(x[i]);
}

SE_MULTIVERSION
void se_dequantize_f16(const void *x, float *y, int64_t k) {
    const uint16_t *in = (const uint16_t *)x;
    for (int64_t i = 0; i < k; ++i) y[i] = se_fp16_to_fp32(in[i]);
}

SE_MULTIVERSION
void se_quantize_bf16(const float *x, void *y, int64_t k) {
    uint16_t *out = (uint16_t *)y;
    for (int64_t i = 0; i < k; ++i) {
        const uint32_t u = se_f32_bits(x[i]);
        const uint16_t rounded = (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
        const uint16_t nan = (uint16_t)((u >> 16) | 64u);
        out[i] = (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
    }
}

SE_MULTIVERSION
void se_dequantize_bf16(const void *x, float *y, int64_t k) {
    const uint16_t *in = (const uint16_t *)x;
    for (int64_t i = 0; i < k; ++i) y[i] = se_bits_f32((uint32_t)in[i] << 16);
}
