/* NVFP4 (64 weights: four UE4M3 scales, one per 16, then 32 bytes of 4-bit E2M1 values), as ggml's
 * quantize_row_nvfp4_ref and dequantize_row_nvfp4.
 *
 * Per 16-weight sub-block s: ue = ggml_fp32_to_ue4m3(amax / 6) (not positive -> 0; clamped to 448; below
 * 2^-6 a subnormal (int)(x*512 + 0.5) capped at 7; else the top three mantissa bits rounded half up on
 * the fourth; exponent 15 or more -> 0x7E), d = ggml_ue4m3_to_fp32(ue) (half the scale: the E2M1 table
 * holds the values doubled; 0x00 and 0x7F decode to 0). Byte 8s + j holds weight j (low nibble) and
 * j + 8 (high). Each weight takes the first index minimizing fabsf(kvalues[i]*d - x): d has at most four
 * significant bits and the magnitudes at most two, so every k*d is exact and |-k*d - x| == |k*d - |x||;
 * the scan runs over the 8 magnitudes on |x| (first strict minimum), a negative x taking the negative
 * entry (index + 8) unless zero wins -- the first minimum of ggml's 16-way scan. amax skips NaN as
 * ggml's `amax < fabsf(v)` does. ggml ignores importance weights for NVFP4; so does the imatrix entry. */
#include "se_blocks2.h"

static const int8_t se_kvalues_fp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

SE_INLINE float se_ue4m3_half(uint8_t u) {
    if (u == 0 || u == 0x7F) return 0.0f;
    const int e = (u >> 3) & 0xF, m = u & 7;
    const float raw = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return raw * 0.5f;
}

SE_INLINE uint8_t se_fp32_to_ue4m3(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 448.0f) x = 448.0f;
    const uint32_t bits = se_f32_bits(x);
    int e = (int)((bits >> 23) & 0xFF) - 127 + 7;
    if (e <= 0) { /* subnormal: man * 2^-9 */
        int m = (int)(x * 512.0f + 0.5f);
        if (m > 7) m = 7;
        return m < 1 ? 0 : (uint8_t)m;
    }
    if (e >= 15) return 0x7E;
    int m = (int)((bits >> 20) & 7) + (int)((bits >> 19) & 1);
    if (m > 7) {
        m = 0;
        if (++e >= 15) return 0x7E;
    }
    return (uint8_t)((e << 3) | m);
}

SE_MULTIVERSION
void se_quantize_nvfp4(const float *x, void *vy, int64_t k) {
    se_block_nvfp4 *y = (se_block_nvfp4 *)vy;
    const int64_t nb = k / SE_QK_NVFP4;
    for (int64_t i = 0; i < nb; ++i) {
        for (int s = 0; s < 4; ++s, x += 16) {
            float amax = 0.0f;
            for (int j = 0; j < 16; ++j) amax = amax < fabsf(x[j]) ? fabsf(x[j]) : amax;
            const uint8_t ue = se_fp32_to_ue4m3(amax / 6.0f);
            const float d = se_ue4m3_half(ue);
            float a[16], best[16], idx[16];
            SE_LANES for (int j = 0; j < 16; ++j) { a[j] = fabsf(x[j]); best[j] = a[j]; idx[j] = 0.0f; }
            for (int c = 1; c < 8; ++c) { /* magnitudes in ggml's order; the first minimum kept */
                const float m = (float)se_kvalues_fp4[c] * d;
                SE_LANES for (int j = 0; j < 16; ++j) {
                    const float err = fabsf(m - a[j]);
                    idx[j] = err < best[j] ? (float)c : idx[j];
                    best[j] = err < best[j] ? err : best[j];
                }
            }
            uint8_t q[16];
            SE_LANES for (int j = 0; j < 16; ++j)
                q[j] = (uint8_t)(int)(x[j] < 0.0f && idx[j] > 0.0f ? idx[j] + 8.0f : idx[j]);
            y[i].d[s] = ue;
            for (int j = 0; j < 8; ++j) y[i].qs[8 * s + j] = (uint8_t)(q[j] | (q[j + 8] << 4));
        }
    }
}

void se_quantize_nvfp4_imatrix(const float *x, void *y, int64_t n_per_row, const float *qw) {
    (void)qw;
    se_quantize_nvfp4(x, y, n_per_row);
}

SE_MULTIVERSION
void se_dequantize_nvfp4(const void *vx, float *y, int64_t k) {
    const se_block_nvfp4 *x = (const se_block_nvfp4 *)vx;
    const int64_t nb = k / SE_QK_NVFP4;
    for (int64_t i = 0; i < nb; ++i) {
        for (int s = 0; s < 4; ++s, y += 16) {
            const float d = se_ue4m3_half(x[i].d[s]);
            for (int j = 0; j < 8; ++j) {
                const uint8_t b = x[i].qs[8 * s + j];
                y[j] = (float)se_kvalues_fp4[b & 0x0F] * d;
                y[j + 8] = (float)se_kvalues_fp4[b >> 4] * d;
            }
        }
    }
}

/* Checkpoint FP4 codes to GGML blocks (MXFP4 and NVFP4 sources, no value changes). A block of n_sub
 * groups, each of g code bytes (element 2i low nibble, 2i + 1 high, as gpt-oss and ModelOpt pack them)
 * and one scale byte, becomes [n_sub scales & mask][n_sub groups of g bytes: byte j = element j low,
 * element j + g high] -- MXFP4: n_sub 1, g 16, mask 0xFF; NVFP4: n_sub 4, g 8, mask 0x7F (the E4M3
 * scales' sign bit dropped, as llama.cpp's converter does). */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

void se_fp4_repack(const uint8_t *codes, const uint8_t *scales, uint8_t *dst, int64_t n_blocks, int n_sub, int g,
                   uint8_t mask) {
    const int h = g / 2;
#if defined(__SSE2__)
    if (n_sub == 1 && g == 16) { /* MXFP4: one 16-byte group per block, interleaved with one unpack */
        const __m128i m = _mm_set1_epi8(0x0F), mh = _mm_set1_epi8((char)0xF0);
        for (int64_t b = 0; b < n_blocks; ++b, codes += 16, dst += 17) {
            const __m128i v = _mm_loadu_si128((const __m128i *)codes), c = _mm_srli_si128(v, 8);
            const __m128i lo = _mm_or_si128(_mm_and_si128(v, m), _mm_slli_epi16(_mm_and_si128(c, m), 4));
            const __m128i hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(c, mh));
            dst[0] = scales[b] & mask;
            _mm_storeu_si128((__m128i *)(dst + 1), _mm_unpacklo_epi8(lo, hi));
        }
        return;
    }
#endif
    for (int64_t b = 0; b < n_blocks; ++b) {
        for (int s = 0; s < n_sub; ++s) *dst++ = scales[s] & mask;
        scales += n_sub;
        for (int s = 0; s < n_sub; ++s, codes += g, dst += g) {
            for (int i = 0; i < h; ++i) {
                const uint8_t a = codes[i], c = codes[h + i];
                dst[2 * i] = (uint8_t)((a & 0x0F) | (uint8_t)(c << 4));
                dst[2 * i + 1] = (uint8_t)((a >> 4) | (c & 0xF0));
            }
        }
    }
}
