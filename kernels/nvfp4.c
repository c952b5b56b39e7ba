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
 * scales' sign bit dropped, as llama.cpp's converter does).
 *
 * Rows of row_blocks blocks, every step-th one from the first (gpt-oss's fused gate/up: step 2), go to dst
 * back to back. The source is usually a freshly memory-mapped span of the checkpoint, read once: streaming
 * from memory, the kernel waited on its loads (26 ms per 35 MB against 17.6 ms for a memcpy of the same
 * mapping). The hardware prefetcher follows one address stream and stops at every 4 KiB page (and, with
 * step > 1, at every kept row: rows of gpt-oss-20b's experts are 1440 bytes), so the loop prefetches the
 * codes (and scales) SE_FP4_AHEAD blocks ahead along the kept rows -- the row and block of a cursor that
 * walks with the loop, wrapping to the next kept row. Measured on this kernel alone (tests/benchmarks/
 * bench_quant_sources.py has the end-to-end figure): 10-25% less CPU time over a mapped span, step 1 and 2.
 * Other store orders (16 blocks assembled in registers and written as 17 whole vectors, or through a stack
 * buffer) made no difference or were slower: the stores of the 17-byte blocks are not what costs. Prefetch
 * instructions never fault, so running past the last row is harmless. */
#if defined(__SSE2__)
#include <emmintrin.h>
#define SE_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#elif defined(__GNUC__)
#define SE_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define SE_PREFETCH(p) ((void)(p))
#endif

#define SE_FP4_AHEAD 96 /* blocks (MXFP4: 1.5 KiB of codes); 48 to 384 measured alike */

typedef struct { /* the prefetch cursor: kept row and block, SE_FP4_AHEAD blocks ahead of the loop */
    int64_t row, blk;
} se_fp4_cursor;

SE_INLINE se_fp4_cursor se_fp4_cursor_start(int64_t row_blocks) {
    se_fp4_cursor c = {SE_FP4_AHEAD / row_blocks, SE_FP4_AHEAD % row_blocks};
    return c;
}

SE_INLINE void se_fp4_cursor_step(se_fp4_cursor *c, int64_t n, int64_t row_blocks) {
    for (c->blk += n; c->blk >= row_blocks; c->blk -= row_blocks) ++c->row;
}

SE_MULTIVERSION
void se_fp4_repack(const uint8_t *codes, const uint8_t *scales, uint8_t *dst, int64_t n_rows, int64_t row_blocks,
                   int64_t step, int n_sub, int g, uint8_t mask) {
    if (n_rows <= 0 || row_blocks <= 0) return;
    const int h = g / 2;
    const int64_t block_codes = (int64_t)n_sub * g, code_stride = step * row_blocks * block_codes;
    const int64_t scale_stride = step * row_blocks * n_sub;
    se_fp4_cursor ahead = se_fp4_cursor_start(row_blocks);
#if defined(__SSE2__)
    if (n_sub == 1 && g == 16) { /* MXFP4: one 16-byte group per block, interleaved with one unpack */
        const __m128i m = _mm_set1_epi8(0x0F), mh = _mm_set1_epi8((char)0xF0);
        for (int64_t r = 0; r < n_rows; ++r) {
            const uint8_t *c = codes + r * code_stride, *s = scales + r * scale_stride;
            for (int64_t b = 0; b < row_blocks; ++b, c += 16, dst += 17) {
                if ((b & 3) == 0) { /* one prefetch per 64 bytes of codes, one per 16 scales */
                    SE_PREFETCH(codes + ahead.row * code_stride + ahead.blk * 16);
                    if ((b & 15) == 0) SE_PREFETCH(scales + ahead.row * scale_stride + ahead.blk);
                    se_fp4_cursor_step(&ahead, 4, row_blocks);
                }
                const __m128i v = _mm_loadu_si128((const __m128i *)c), x = _mm_srli_si128(v, 8);
                const __m128i lo = _mm_or_si128(_mm_and_si128(v, m), _mm_slli_epi16(_mm_and_si128(x, m), 4));
                const __m128i hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(x, mh));
                dst[0] = s[b] & mask;
                _mm_storeu_si128((__m128i *)(dst + 1), _mm_unpacklo_epi8(lo, hi));
            }
        }
        return;
    }
#endif
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t *c = codes + r * code_stride, *s = scales + r * scale_stride;
        for (int64_t b = 0; b < row_blocks; ++b) {
            SE_PREFETCH(codes + ahead.row * code_stride + ahead.blk * block_codes);
            if ((b & 15) == 0) SE_PREFETCH(scales + ahead.row * scale_stride + ahead.blk * n_sub);
            se_fp4_cursor_step(&ahead, 1, row_blocks);
            for (int k = 0; k < n_sub; ++k) *dst++ = s[k] & mask;
            s += n_sub;
            for (int k = 0; k < n_sub; ++k, c += g, dst += g) {
                for (int i = 0; i < h; ++i) {
                    const uint8_t a = c[i], e = c[h + i];
                    dst[2 * i] = (uint8_t)((a & 0x0F) | (uint8_t)(e << 4));
                    dst[2 * i + 1] = (uint8_t)((a >> 4) | (e & 0xF0));
                }
            }
        }
    }
}
