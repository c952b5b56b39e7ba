/* The k-quant scale searches of ggml (make_qkx2_quants, make_qx_quants with rmse_type 1,
 * make_q3_quants with rmse) run on NL sub-blocks at once: one SIMD lane per sub-block.
 *
 * Layout: xt[i*NL + s] is element i of sub-block s (the super-block transposed), so every
 * inner loop `for (s = 0; s < NL; ++s)` is a straight vector operation. Each lane performs
 * exactly the scalar reference's sequence of float operations for its sub-block (same order of
 * accumulation over i, same comparisons); branches become per-lane selects. Lanes that the
 * reference would have left early (flat or all-zero sub-blocks) are masked out of every update.
 * Instead of keeping the chosen quants L, a search returns the inverse scale (and offset) that
 * produced them, from which the caller recomputes L bit-identically where it needs them.
 */
#ifndef SE_KQ_SEARCH_H
#define SE_KQ_SEARCH_H

#include <math.h>

#include "se_internal.h"

#define SE_MAXL 32          /* most lanes (sub-blocks) per call */
#define SE_GROUP_MAX_EPS 1e-15f

SE_INLINE int se_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* make_qkx2_quants (le_flat = 0) or make_qkx3_quants with weights (le_flat = 1: its flat test is
 * max <= min) on NL sub-blocks of n values with weights wt (same layout as xt).
 * Out per lane: scale, the_min (= -min), and isc/mu such that the chosen quants are
 * L = clamp(nearest_int(isc*(x - mu)), 0, nmax), or 0 where flat[s]. */
SE_INLINE void se_qkx2_lanes(const int NL, const int n, const int nmax, const float *restrict xt,
                             const float *restrict wt, const float rmin, const float rdelta,
                             const int nstep, const int use_mad, const int le_flat, float *restrict scale_o,
                             float *restrict themin_o, float *restrict isc_o,
                             float *restrict mu_o, int *restrict flat_o) {
    float mn[SE_MAXL], mx[SE_MAXL], sw[SE_MAXL], sx[SE_MAXL], best[SE_MAXL], scale[SE_MAXL];
    float isc[SE_MAXL], mu[SE_MAXL], lf[32 * SE_MAXL];
    int flat[SE_MAXL];
    SE_LANES for (int s = 0; s < NL; ++s) {
        mn[s] = mx[s] = xt[s];
        sw[s] = wt[s];
        sx[s] = sw[s] * xt[s];
    }
    for (int i = 1; i < n; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) {
            const float v = xt[i * NL + s], w = wt[i * NL + s];
            mn[s] = v < mn[s] ? v : mn[s];
            mx[s] = v > mx[s] ? v : mx[s];
            sw[s] += w;
            sx[s] += w * v;
        }
    SE_LANES for (int s = 0; s < NL; ++s) {
        mn[s] = mn[s] > 0 ? 0 : mn[s];
        flat[s] = le_flat ? mx[s] <= mn[s] : mx[s] == mn[s];
        isc[s] = nmax / (mx[s] - mn[s]);
        scale[s] = 1 / isc[s];
        mu[s] = mn[s];
        best[s] = 0;
    }
    for (int i = 0; i < n; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) {
            const float v = xt[i * NL + s], w = wt[i * NL + s];
            const int l = se_clampi(se_nearest_int(isc[s] * (v - mn[s])), 0, nmax);
            float diff = scale[s] * (float)l + mn[s] - v;
            diff = use_mad ? fabsf(diff) : diff * diff;
            best[s] += w * diff;
        }
    for (int is = 0; is <= nstep; ++is) {
        const float num = rmin + rdelta * is + nmax;
        float ic[SE_MAXL], sl[SE_MAXL], sl2[SE_MAXL], sxl[SE_MAXL], err[SE_MAXL];
        float ts[SE_MAXL], tm[SE_MAXL];
        int dpos[SE_MAXL];
        SE_LANES for (int s = 0; s < NL; ++s) {
            ic[s] = num / (mx[s] - mn[s]);
            sl[s] = sl2[s] = sxl[s] = err[s] = 0;
        }
        for (int i = 0; i < n; ++i)
            SE_LANES for (int s = 0; s < NL; ++s) {
                const float v = xt[i * NL + s], w = wt[i * NL + s];
                const float l = (float)se_clampi(se_nearest_int(ic[s] * (v - mn[s])), 0, nmax);
                lf[i * NL + s] = l;
                sl[s] += w * l;
                sl2[s] += w * l * l;
                sxl[s] += w * l * v;
            }
        SE_LANES for (int s = 0; s < NL; ++s) {
            const float D = sw[s] * sl2[s] - sl[s] * sl[s];
            float a = (sw[s] * sxl[s] - sx[s] * sl[s]) / D;
            float b = (sl2[s] * sx[s] - sl[s] * sxl[s]) / D;
            const int pos = b > 0;
            ts[s] = pos ? sxl[s] / sl2[s] : a;
            tm[s] = pos ? 0 : b;
            dpos[s] = D > 0;
        }
        for (int i = 0; i < n; ++i)
            SE_LANES for (int s = 0; s < NL; ++s) {
                float diff = ts[s] * lf[i * NL + s] + tm[s] - xt[i * NL + s];
                diff = use_mad ? fabsf(diff) : diff * diff;
                err[s] += wt[i * NL + s] * diff;
            }
        SE_LANES for (int s = 0; s < NL; ++s) {
            const int acc = !flat[s] && dpos[s] && err[s] < best[s];
            best[s] = acc ? err[s] : best[s];
            scale[s] = acc ? ts[s] : scale[s];
            isc[s] = acc ? ic[s] : isc[s];
            mu[s] = acc ? mn[s] : mu[s];
            mn[s] = acc ? tm[s] : mn[s];
        }
    }
    SE_LANES for (int s = 0; s < NL; ++s) {
        scale_o[s] = flat[s] ? 0.f : scale[s];
        themin_o[s] = -mn[s];
        isc_o[s] = isc[s];
        mu_o[s] = mu[s];
        flat_o[s] = flat[s];
    }
}

/* make_qx_quants(n, nmax, x, L, rmse_type=1, qw) on NL sub-blocks; wt: the weights qw in the
 * layout of xt, or NULL for ggml's qw=NULL (weights x*x). Out per lane: the scale, and isc such
 * that L = nmax + clamp(nearest_int(isc*x), -nmax, nmax-1), or L = 0 where zero[s] (all values
 * below GROUP_MAX_EPS). */
SE_INLINE void se_qx_lanes(const int NL, const int n, const int nmax, const float *restrict xt,
                           const float *restrict wt, float *restrict scale_o, float *restrict isc_o,
                           int *restrict zero_o) {
    float amax[SE_MAXL], max[SE_MAXL], isc[SE_MAXL], slx[SE_MAXL] = {0}, sl2[SE_MAXL] = {0};
    float scale[SE_MAXL], best[SE_MAXL];
    SE_LANES for (int s = 0; s < NL; ++s) amax[s] = max[s] = 0;
    for (int i = 0; i < n; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) {
            const float v = xt[i * NL + s], ax = fabsf(v);
            const int up = ax > amax[s];
            amax[s] = up ? ax : amax[s];
            max[s] = up ? v : max[s];
        }
    SE_LANES for (int s = 0; s < NL; ++s) isc[s] = -nmax / max[s];
    for (int i = 0; i < n; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) {
            const float v = xt[i * NL + s], w = wt ? wt[i * NL + s] : v * v;
            const float l = (float)se_clampi(se_nearest_int(isc[s] * v), -nmax, nmax - 1);
            slx[s] += w * v * l;
            sl2[s] += w * l * l;
        }
    SE_LANES for (int s = 0; s < NL; ++s) {
        scale[s] = sl2[s] != 0 ? slx[s] / sl2[s] : 0.0f;
        best[s] = scale[s] * slx[s];
    }
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        const float num = -(nmax + 0.1f * is);
        float ic[SE_MAXL], a[SE_MAXL], b[SE_MAXL];
        SE_LANES for (int s = 0; s < NL; ++s) {
            ic[s] = num / max[s];
            a[s] = b[s] = 0;
        }
        for (int i = 0; i < n; ++i)
            SE_LANES for (int s = 0; s < NL; ++s) {
                const float v = xt[i * NL + s], w = wt ? wt[i * NL + s] : v * v;
                const float l = (float)se_clampi(se_nearest_int(ic[s] * v), -nmax, nmax - 1);
                a[s] += w * v * l;
                b[s] += w * l * l;
            }
        SE_LANES for (int s = 0; s < NL; ++s) {
            const int acc = b[s] > 0 && a[s] * a[s] > best[s] * b[s];
            const float sc = a[s] / b[s];
            scale[s] = acc ? sc : scale[s];
            best[s] = acc ? sc * a[s] : best[s];
            isc[s] = acc ? ic[s] : isc[s];
        }
    }
    SE_LANES for (int s = 0; s < NL; ++s) {
        const int zero = amax[s] < SE_GROUP_MAX_EPS;
        zero_o[s] = zero;
        scale_o[s] = zero ? 0.f : scale[s];
        isc_o[s] = isc[s];
    }
}

/* make_q3_quants(n, nmax, x, L, do_rmse=true) on NL sub-blocks. Out: scales, zero flags, and
 * Lt (transposed) such that the reference's quants are L = zero[s] ? 0 : Lt + nmax. */
SE_INLINE void se_q3_lanes(const int NL, const int n, const int nmax, const float *restrict xt,
                           int *restrict Lt, float *restrict scale_o, int *restrict zero_o) {
    float amax[SE_MAXL], max[SE_MAXL], isc[SE_MAXL], slx[SE_MAXL], sl2[SE_MAXL];
    int active[SE_MAXL], zero[SE_MAXL];
    SE_LANES for (int s = 0; s < NL; ++s) amax[s] = max[s] = slx[s] = sl2[s] = 0;
    for (int i = 0; i < n; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) {
            const float v = xt[i * NL + s], ax = fabsf(v);
            const int up = ax > amax[s];
            amax[s] = up ? ax : amax[s];
            max[s] = up ? v : max[s];
        }
    SE_LANES for (int s = 0; s < NL; ++s) {
        isc[s] = -nmax / max[s];
        zero[s] = amax[s] < SE_GROUP_MAX_EPS;
        active[s] = !zero[s];
    }
    for (int i = 0; i < n; ++i)
        SE_LANES for (int s = 0; s < NL; ++s) {
            const float v = xt[i * NL + s], w = v * v;
            const int l = se_clampi(se_nearest_int(isc[s] * v), -nmax, nmax - 1);
            Lt[i * NL + s] = l;
            slx[s] += w * v * (float)l;
            sl2[s] += w * (float)l * (float)l;
        }
    for (int itry = 0; itry < 5; ++itry) {
        int changed[SE_MAXL], any = 0;
        SE_LANES for (int s = 0; s < NL; ++s) changed[s] = 0;
        for (int i = 0; i < n; ++i)
            SE_LANES for (int s = 0; s < NL; ++s) {
                const float v = xt[i * NL + s], w = v * v;
                const int L = Lt[i * NL + s];
                const float fL = (float)L;
                float a = slx[s] - w * v * fL;
                float b = sl2[s] - w * fL * fL;
                const int nl = se_clampi(se_nearest_int(v * b / a), -nmax, nmax - 1);
                const float fn = (float)nl;
                a += w * v * fn;
                b += w * fn * fn;
                const int take = active[s] && (slx[s] - w * v * fL) > 0 && nl != L && b > 0 &&
                                 a * a * sl2[s] > slx[s] * slx[s] * b;
                Lt[i * NL + s] = take ? nl : L;
                slx[s] = take ? a : slx[s];
                sl2[s] = take ? b : sl2[s];
                changed[s] += take;
            }
        SE_LANES for (int s = 0; s < NL; ++s) active[s] = active[s] && changed[s] > 0;
        for (int s = 0; s < NL; ++s) any |= active[s]; /* a reduction: not an `omp simd` loop */
        if (!any) break;
    }
    SE_LANES for (int s = 0; s < NL; ++s) {
        scale_o[s] = zero[s] ? 0.f : (sl2[s] > 0.0f ? slx[s] / sl2[s] : 0.0f);
        zero_o[s] = zero[s];
    }
}

#endif /* SE_KQ_SEARCH_H */
