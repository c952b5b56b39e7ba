/* Float formats: F32 (copy), F16 (IEEE half, round to nearest even), BF16 (top 16 bits of
 * float32, round to nearest even, NaN forced quiet) - the conversions ggml_quantize_chunk uses. */
#include "se_internal.h"

void se_quantize_f32(const float *x, void *y, int64_t k) { memcpy(y, x, (size_t)k * 4); }
void se_dequantize_f32(const void *x, float *y, int64_t k) { memcpy(y, x, (size_t)k * 4); }

/* se_fp32_to_fp16 without branches, so the loop vectorizes: every case is computed and selected.
 * Subnormal halves: adding 0.5f rounds |x| to a multiple of 2^-24 (the half subnormal step) with
 * the FPU's own round-to-nearest-even; the bit distance to 0.5f is then the half's mantissa. */
SE_INLINE uint16_t se_fp32_to_fp16_select(float f) {
    const uint32_t x = se_f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    const uint32_t normal = ((ax + 0x0fffu + ((ax >> 13) & 1u)) >> 13) - (112u << 10);
    const uint32_t sub = se_f32_bits(se_bits_f32(ax) + 0.5f) - 0x3f000000u;
    uint32_t h = ax >= 0x38800000u ? normal : sub;
    h = ax >= 0x477ff000u ? 0x7c00u : h;
    h = ax > 0x7f800000u ? 0x7e00u : h;
    return (uint16_t)(sign | h);
}

SE_MULTIVERSION
void se_quantize_f16(const float *x, void *y, int64_t k) {
    uint16_t *out = (uint16_t *)y;
    SE_LANES for (int64_t i = 0; i < k; ++i) out[i] = se_fp32_to_fp16_select(x[i]);
}

SE_MULTIVERSION
void se_dequantize_f16(const void *x, float *y, int64_t k) {
    const uint16_t *in = (const uint16_t *)x;
    SE_LANES for (int64_t i = 0; i < k; ++i) y[i] = se_fp16_to_fp32(in[i]);
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
