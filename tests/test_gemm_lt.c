/* test_gemm_lt.c — prefill GEMMs in the weights' own precision through
 * cuBLASLt (kernels/gemm_lt.cu), against CPU references.
 *
 *   quant_act_*   the FP8 activation quantizer (per token, per 128 inputs,
 *                 scale amax/448, e4m3 round-to-nearest-even saturating) vs a
 *                 CPU quantizer: every byte and every scale identical;
 *   lt_raw_*      one block-scaled FP8 GEMM (weight 128x128 scales, activation
 *                 1x128 scales) vs a double-precision sum of the decoded
 *                 operands: fp32 out with beta 0 and 1, bf16 out; K blocks a
 *                 multiple of 4 and not (padded weight scale rows), odd T;
 *   lt_group_*    the engine's entry qk_gemm_q_lt on a fused group with parts
 *                 it must leave to the caller (BF16, fp8-channel): the done
 *                 mask, untouched rows, and the FP8 rows vs the CPU quantizer
 *                 + exact sum;
 *                 also T % 4 != 0 (the side-buffer tail);
 *   lt_eligible   which weights take the FP8 path;
 *   quant_fp4_*, fp4_weight_*  (any GPU) the NVFP4 pieces of the Blackwell
 *                 path: activation quantizer (codes, tiled scales, tensor
 *                 multiplier) and the weight rearrangement (repacked words
 *                 from the real repacker -> published bytes, tiled scales)
 *                 vs CPU references; lt_fp4_gemm_* the FP4 GEMM itself
 *                 (Blackwell only; never run yet);
 *   *_cpu_ref     (no GPU) the CPU references themselves: rounding bounds,
 *                 block sums vs a plain dot, the tile permutation;
 *   ltbench       (GPU) the 27B FP8 shapes at T = 1000 and 8192: dequant +
 *                 BF16 cuBLAS (the exact path) vs quantize + FP8 cuBLASLt.
 * The build links cuBLASLt (Makefile LDLIBS -lcublasLt): this binary calls
 * it, so it would not link otherwise. GPU checks skip without a device; the
 * cuBLASLt GEMMs skip with a reason on GPUs other than sm_90. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "harness.h"
#include "linear_util.h"
#include "quant.h"
#include "util.h"

#ifdef QC_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels.h"
#endif

/* ---- CPU references (no GPU needed) ----------------------------------------- */

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t urand(void) { return th_xorshift(&rng); }
static double frand(void) { return (double)(urand() >> 11) / 9007199254740992.0; } /* [0, 1) */

static float bf2f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t f2bf(float f) /* round to nearest even */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float e4m3_dec(uint8_t b)
{
    int e = (b >> 3) & 15, m = b & 7;
    float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf((float)m, -9);
    if (e == 15 && m == 7) v = NAN;
    return (b & 0x80) ? -v : v;
}

/* e4m3 round to nearest even, saturating to +-448 (cvt.rn.satfinite). */
static uint8_t e4m3_enc(float x)
{
    static float mag[127];
    static int init;
    if (!init) {
        for (int i = 0; i < 127; i++) mag[i] = e4m3_dec((uint8_t)i);
        init = 1;
    }
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7e;
    int lo = 0, hi = 126; /* largest i with mag[i] <= a */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (mag[mid] <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    int c = lo;
    double d0 = (double)a - mag[lo], d1 = (double)mag[lo + 1] - a;
    if (d1 < d0 || (d1 == d0 && (lo & 1))) c = lo + 1;
    return sign | (uint8_t)c;
}

/* The quantizer of gemm_lt.cu on the CPU: Q [T][ldq], S[t*s_t + g*s_g]. */
static void ref_quant(const uint16_t *X, int T, int K, int ldq, uint8_t *Q, float *S, int s_t, int s_g)
{
    int ng = (ldq + 127) / 128;
    for (int t = 0; t < T; t++)
        for (int g = 0; g < ng; g++) {
            float amax = 0;
            for (int k = g * 128; k < g * 128 + 128 && k < K; k++) amax = fmaxf(amax, fabsf(bf2f(X[(size_t)t * K + k])));
            float s = amax / 448.0f;
            if (!(s > 0.0f)) s = 1.0f;
            S[(size_t)t * s_t + (size_t)g * s_g] = s;
            for (int k = g * 128; k < g * 128 + 128 && k < ldq; k++)
                Q[(size_t)t * ldq + k] = k < K ? e4m3_enc(bf2f(X[(size_t)t * K + k]) / s) : 0;
        }
}

/* Random bf16 activations spanning several binades per row, with one
 * all-zero 128-group in row 0 when K allows (scale 1 path). */
static void rand_x(uint16_t *X, int T, int K)
{
    for (int t = 0; t < T; t++) {
        double row = ldexp(1.0, (int)(urand() % 12) - 6);
        for (int k = 0; k < K; k++) {
            double v = (frand() * 2 - 1) * row * (frand() < 0.02 ? 40.0 : 1.0);
            X[(size_t)t * K + k] = f2bf((float)v);
        }
    }
    if (K >= 256)
        for (int k = 128; k < 256; k++) X[k] = 0;
}

static uint8_t rand_e4m3(void)
{
    uint8_t b = (uint8_t)urand();
    if ((b & 0x7f) == 0x7f) b ^= 1; /* no NaN */
    return b;
}

/* y[t][n] = sum_k e4m3(W[n][k]) ws[n/128][k/128] * e4m3(Q[t][k]) xs[t][k/128], double. */
static void ref_gemm(const uint8_t *W, int ldw, const float *ws, int ws_ld, const uint8_t *Q, int ldq, const float *xs,
                     int xs_t, int xs_g, int N, int T, int K, double *y)
{
    int nkb = (K + 127) / 128;
    float *wd = malloc(sizeof(float) * (size_t)N * K), *qd = malloc(sizeof(float) * (size_t)T * K);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) wd[(size_t)n * K + k] = e4m3_dec(W[(size_t)n * ldw + k]);
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) qd[(size_t)t * K + k] = e4m3_dec(Q[(size_t)t * ldq + k]);
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int g = 0; g < nkb; g++) {
                double p = 0;
                const float *a = wd + (size_t)n * K, *b = qd + (size_t)t * K;
                for (int k = g * 128; k < g * 128 + 128 && k < K; k++) p += (double)a[k] * b[k];
                acc += p * ws[(size_t)(n / 128) * ws_ld + g] * xs[(size_t)t * xs_t + (size_t)g * xs_g];
            }
            y[(size_t)t * N + n] = acc;
        }
    free(wd);
    free(qd);
}

/* rel L2 of got (row stride ld, first N of each row) against ref [T][N]. */
static double rel_l2_f(const float *got, int ld, const double *ref, int T, int N, double *maxabs)
{
    double e = 0, r = 0, mx = 0;
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double d = got[(size_t)t * ld + n] - ref[(size_t)t * N + n];
            e += d * d;
            r += ref[(size_t)t * N + n] * ref[(size_t)t * N + n];
            if (fabs(d) > mx) mx = fabs(d);
        }
    if (maxabs) *maxabs = mx;
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

/* e2m1 by brute force: nearest of the 8 magnitudes, ties to the even code,
 * saturating at 6. */
static uint8_t e2m1_enc(float x)
{
    static const float mag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    float a = fabsf(x);
    int best = 0;
    for (int c = 1; c < 8; c++) {
        double d = fabs((double)a - mag[c]), db = fabs((double)a - mag[best]);
        if (d < db || (d == db && !(c & 1))) best = c;
    }
    return (uint8_t)(best | (signbit(x) ? 8 : 0));
}

/* cuBLAS's tiled scale layout, written the way it is usually described: pad
 * [rows][cols] to 128 x 4 blocks, view as (rb, 128, cb, 4), permute to
 * (rb, cb, 128, 4), view each tile as (4, 32, 4) and swap the first two. */
static void ref_tile(const uint8_t *S, int rows, int cols, int ld, uint8_t *out)
{
    int nrb = (rows + 127) / 128, ncb = (cols + 3) / 4;
    size_t o = 0;
    for (int rb = 0; rb < nrb; rb++)
        for (int cb = 0; cb < ncb; cb++)
            for (int j = 0; j < 32; j++)
                for (int i = 0; i < 4; i++)
                    for (int c = 0; c < 4; c++) {
                        int r = rb * 128 + i * 32 + j, cc = cb * 4 + c;
                        out[o++] = r < rows && cc < cols ? S[(size_t)r * ld + cc] : 0;
                    }
}

/* The NVFP4 activation quantizer of gemm_lt.cu on the CPU: Q [T][Kq/2],
 * block scales [T][Kq/16] (untiled), *gs the tensor multiplier. */
static void ref_quant_fp4(const uint16_t *X, int T, int K, int Kq, uint8_t *Q, uint8_t *S, float *gs)
{
    float amax = 0;
    for (size_t i = 0; i < (size_t)T * K; i++) amax = fmaxf(amax, fabsf(bf2f(X[i])));
    float g = amax > 0 ? amax / 2688.0f : 1.0f;
    *gs = g;
    int ng = Kq / 16;
    for (int t = 0; t < T; t++)
        for (int b = 0; b < ng; b++) {
            float v[16], bmax = 0;
            for (int j = 0; j < 16; j++) {
                int k = b * 16 + j;
                v[j] = k < K ? bf2f(X[(size_t)t * K + k]) : 0.0f;
                bmax = fmaxf(bmax, fabsf(v[j]));
            }
            uint8_t sb = e4m3_enc((bmax / 6.0f) / g);
            float sd = e4m3_dec(sb) * g;
            S[(size_t)t * ng + b] = sb;
            for (int j = 0; j < 16; j += 2) {
                uint8_t lo = sd > 0 ? e2m1_enc(v[j] / sd) : 0, hi = sd > 0 ? e2m1_enc(v[j + 1] / sd) : 0;
                Q[(size_t)t * (Kq / 2) + b * 8 + j / 2] = (uint8_t)(lo | hi << 4);
            }
        }
}

static void test_cpu_refs(void)
{
    /* the CPU encoder against the decoder: every finite code round-trips,
     * midpoints go to the even code, out of range saturates */
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) continue;
        if (e4m3_enc(e4m3_dec((uint8_t)c)) != c) bad++;
    }
    float mid = (e4m3_dec(0x40) + e4m3_dec(0x41)) / 2; /* 2.0 and 2.25: tie -> 0x40 */
    float mid2 = (e4m3_dec(0x41) + e4m3_dec(0x42)) / 2; /* tie -> 0x42 */
    CHECK("e4m3_cpu_ref", bad == 0 && e4m3_enc(mid) == 0x40 && e4m3_enc(mid2) == 0x42 && e4m3_enc(1e6f) == 0x7e &&
                              e4m3_enc(-500.0f) == 0xfe && e4m3_enc(ldexpf(1, -12)) == 0,
          "%d codes do not round-trip, or ties/saturation wrong", bad);

    /* the CPU quantizer: every value within half an e4m3 step (1/16
     * relative, or the subnormal step) and each group's largest at +-448 s */
    const int T = 5, K = 384;
    uint16_t X[5 * 384];
    uint8_t Q[5 * 384];
    float S[5 * 3];
    rand_x(X, T, K);
    ref_quant(X, T, K, K, Q, S, 1, T);
    long qbad = 0;
    for (int t = 0; t < T; t++)
        for (int g = 0; g < 3; g++) {
            float s = S[g * T + t], amax = 0, top = 0;
            for (int k = g * 128; k < g * 128 + 128; k++) {
                float x = bf2f(X[t * K + k]), r = e4m3_dec(Q[t * K + k]) * s;
                if (fabsf(r - x) > fabsf(x) / 16 + s * ldexpf(1, -10)) qbad++;
                if (fabsf(x) > amax) {
                    amax = fabsf(x);
                    top = fabsf(r);
                }
            }
            if (amax > 0 && fabsf(top - 448 * s) > 1e-6f * top) qbad++;
        }
    CHECK("quant_cpu_ref", qbad == 0, "%ld values outside the rounding bound", qbad);

    /* the CPU GEMM reference (per-block sums) against a plain dot product of
     * the dequantized operands */
    const int N = 130, Tg = 3, Kg = 384;
    uint8_t W[130 * 384];
    float ws[2 * 4], y32[3 * 130];
    double y[3 * 130];
    for (int i = 0; i < N * Kg; i++) W[i] = rand_e4m3();
    for (int i = 0; i < 8; i++) ws[i] = (float)(0.5 + frand());
    ref_gemm(W, Kg, ws, 4, Q, K, S, 1, T, N, Tg, Kg, y);
    for (int t = 0; t < Tg; t++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int k = 0; k < Kg; k++)
                acc += (double)e4m3_dec(W[n * Kg + k]) * ws[(n / 128) * 4 + k / 128] * e4m3_dec(Q[t * K + k]) *
                       S[(k / 128) * T + t];
            y32[t * N + n] = (float)acc;
        }
    double ge = rel_l2_f(y32, N, y, Tg, N, NULL);
    CHECK("gemm_cpu_ref", ge < 1e-6, "block sums vs plain dot: rel L2 %.3g", ge);

    /* the tiled scale layout is a permutation of the padded matrix */
    const int R = 300, C = 13, nt = (R + 127) / 128 * 128 * ((C + 3) / 4 * 4);
    uint8_t *in = malloc((size_t)R * C), *out = malloc((size_t)nt);
    long tbad = 0;
    for (int sh = 0; sh < 2; sh++) { /* the row index, then the column index, through the bytes */
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) in[r * C + c] = (uint8_t)(sh ? c + 1 : (r % 255) + 1);
        ref_tile(in, R, C, C, out);
        long nz = 0;
        for (int i = 0; i < nt; i++) nz += out[i] != 0;
        if (nz != (long)R * C) tbad++;
    }
    /* tile 0, row 33, column 2 sits at 33 % 32 * 16 + 33 / 32 * 4 + 2 */
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) in[r * C + c] = (uint8_t)(r == 33 && c == 2 ? 7 : 0);
    ref_tile(in, R, C, C, out);
    if (out[1 * 16 + 1 * 4 + 2] != 7) tbad++;
    free(in);
    free(out);
    CHECK("fp4_tile_cpu_ref", tbad == 0, "tiled layout: %ld checks failed", tbad);

    /* the CPU NVFP4 quantizer: every value within a step of its block scale */
    uint8_t Q4[5 * 192], S4[5 * 24];
    float gs = 0;
    ref_quant_fp4(X, T, K, K, Q4, S4, &gs);
    long fbad = 0;
    static const float m8[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            uint8_t c = (uint8_t)(Q4[t * (K / 2) + k / 2] >> (4 * (k & 1)) & 15);
            float sd = e4m3_dec(S4[t * (K / 16) + k / 16]) * gs, r = (c & 8 ? -m8[c & 7] : m8[c & 7]) * sd;
            if (fabsf(r - bf2f(X[t * K + k])) > sd * 1.0001f + 1e-30f) fbad++;
        }
    CHECK("fp4_quant_cpu_ref", fbad == 0 && gs > 0, "%ld values off by more than a step (multiplier %g)", fbad, gs);
}

#ifdef QC_HAVE_CUDA

static int cc_major = -1, cc_minor;
static bool gpu_init(void)
{
    if (cc_major >= 0) return cc_major > 0;
    int n = 0;
    struct cudaDeviceProp p;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0 || cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
        cudaGetLastError();
        cc_major = 0;
        return false;
    }
    cc_major = p.major;
    cc_minor = p.minor;
    return true;
}

static void *dup_dev(const void *h, size_t bytes)
{
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 16) != cudaSuccess) return NULL;
    if (bytes) cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    return d;
}

static void test_quant(const char *name, int T, int K, int ldq)
{
    uint16_t *X = malloc((size_t)T * K * 2);
    rand_x(X, T, K);
    int ng = (ldq + 127) / 128;
    uint8_t *Q = malloc((size_t)T * ldq), *Qg = malloc((size_t)T * ldq);
    float *S = malloc(sizeof(float) * (size_t)T * ng), *Sg = malloc(sizeof(float) * (size_t)T * ng);
    ref_quant(X, T, K, ldq, Q, S, 1, T);
    uint16_t *dX = dup_dev(X, (size_t)T * K * 2);
    uint8_t *dQ = NULL;
    float *dS = NULL;
    cudaMalloc((void **)&dQ, (size_t)T * ldq);
    cudaMalloc((void **)&dS, sizeof(float) * (size_t)T * ng);
    int rc = qk_quant_act_fp8(dX, T, K, ldq, dQ, dS, 1, T, NULL);
    cudaMemcpy(Qg, dQ, (size_t)T * ldq, cudaMemcpyDeviceToHost);
    cudaMemcpy(Sg, dS, sizeof(float) * (size_t)T * ng, cudaMemcpyDeviceToHost);
    long qb = 0, sb = 0;
    for (size_t i = 0; i < (size_t)T * ldq; i++) qb += Q[i] != Qg[i];
    for (size_t i = 0; i < (size_t)T * ng; i++) sb += S[i] != Sg[i];
    CHECK(name, rc == 0 && qb == 0 && sb == 0, "rc %d, %ld of %ld bytes and %ld of %ld scales differ", rc, qb,
          (long)T * ldq, sb, (long)T * ng);
    cudaFree(dX);
    cudaFree(dQ);
    cudaFree(dS);
    free(X);
    free(Q);
    free(Qg);
    free(S);
    free(Sg);
}

/* One raw block-scaled GEMM of N x K weights on T tokens. mode 0: fp32 out
 * beta 0; 1: fp32 beta 1; 2: bf16 out. Weight scale rows padded to L4. */
static void test_raw(qk_lt *lt, const char *name, int N, int T, int K, int mode)
{
    int nkb = K / 128, l4 = (nkb + 3) / 4 * 4, nbn = (N + 127) / 128;
    uint8_t *W = malloc((size_t)N * K);
    for (size_t i = 0; i < (size_t)N * K; i++) W[i] = rand_e4m3();
    float *ws = calloc((size_t)nbn * l4, sizeof(float)), *ws_np = calloc((size_t)nbn * nkb, sizeof(float));
    for (int r = 0; r < nbn; r++)
        for (int g = 0; g < nkb; g++) ws[r * l4 + g] = ws_np[r * nkb + g] = (float)ldexp(1.0 + frand(), (int)(urand() % 5) - 2) / 448.0f;
    uint16_t *X = malloc((size_t)T * K * 2);
    rand_x(X, T, K);
    uint8_t *Q = malloc((size_t)T * K);
    float *xs = malloc(sizeof(float) * (size_t)T * nkb);
    ref_quant(X, T, K, K, Q, xs, 1, T);
    double *ref = malloc(sizeof(double) * (size_t)T * N);
    ref_gemm(W, K, ws, l4, Q, K, xs, 1, T, N, T, K, ref);
    float *Y0 = malloc(sizeof(float) * (size_t)T * N);
    for (size_t i = 0; i < (size_t)T * N; i++) Y0[i] = mode == 1 ? (float)(frand() * 2 - 1) * 1000.0f : 0.0f;
    if (mode == 1)
        for (size_t i = 0; i < (size_t)T * N; i++) ref[i] += Y0[i];
    uint8_t *dW = dup_dev(W, (size_t)N * K), *dQ = dup_dev(Q, (size_t)T * K);
    float *dws = dup_dev(ws, sizeof(float) * (size_t)nbn * l4), *dxs = dup_dev(xs, sizeof(float) * (size_t)T * nkb);
    void *dY = dup_dev(Y0, sizeof(float) * (size_t)T * N);
    int rc = qk_lt_fp8_raw(lt, dW, K, dws, dQ, K, dxs, dY, N, N, T, K, mode == 1 ? 1.0f : 0.0f, mode == 2);
    cudaError_t se = cudaDeviceSynchronize();
    float *Y = malloc(sizeof(float) * (size_t)T * N);
    if (mode == 2) {
        uint16_t *Yb = malloc((size_t)T * N * 2);
        cudaMemcpy(Yb, dY, (size_t)T * N * 2, cudaMemcpyDeviceToHost);
        for (size_t i = 0; i < (size_t)T * N; i++) Y[i] = bf2f(Yb[i]);
        free(Yb);
    } else {
        cudaMemcpy(Y, dY, sizeof(float) * (size_t)T * N, cudaMemcpyDeviceToHost);
    }
    double mx = 0, e = rel_l2_f(Y, N, ref, T, N, &mx);
    /* Hopper's FP8 MMA accumulates with fewer bits than fp32 inside each
     * 128-deep block: 1e-4..2.6e-4 rel L2 measured (H100) for K 128..5120;
     * a wrong scale layout gives O(1) */
    double tol = mode == 2 ? 4e-3 : 1e-3;
    CHECK(name, rc == 0 && se == cudaSuccess && e < tol, "rc %d (%s), rel L2 %.3g (tol %.0e), max abs %.3g", rc,
          cudaGetErrorString(se), e, tol, mx);
    printf("# %s: N=%d T=%d K=%d rel L2 %.3g max abs err %.3g\n", name, N, T, K, e, mx);
    if (rc == 0 && e >= tol && mode == 0) {
        /* which layout would have matched: activation scales token-major
         * [T][nkb], or weight rows unpadded (nkb instead of L4) */
        float *xs2 = malloc(sizeof(float) * (size_t)T * nkb);
        for (int t = 0; t < T; t++)
            for (int g = 0; g < nkb; g++) xs2[(size_t)t * nkb + g] = xs[(size_t)g * T + t];
        const char *what[2] = {"activation scales [T][nkb]", "weight scale rows unpadded"};
        for (int v = 0; v < 2; v++) {
            cudaMemcpy(dxs, v == 0 ? xs2 : xs, sizeof(float) * (size_t)T * nkb, cudaMemcpyHostToDevice);
            cudaMemcpy(dws, v == 1 ? ws_np : ws, sizeof(float) * (size_t)nbn * (v == 1 ? nkb : l4),
                       cudaMemcpyHostToDevice);
            cudaMemset(dY, 0, sizeof(float) * (size_t)T * N);
            int r2 = qk_lt_fp8_raw(lt, dW, K, dws, dQ, K, dxs, dY, N, N, T, K, 0.0f, 0);
            cudaMemcpy(Y, dY, sizeof(float) * (size_t)T * N, cudaMemcpyDeviceToHost);
            printf("# diag %s with %s: rc %d rel L2 %.3g\n", name, what[v], r2, rel_l2_f(Y, N, ref, T, N, NULL));
        }
        free(xs2);
    }
    cudaFree(dW);
    cudaFree(dQ);
    cudaFree(dws);
    cudaFree(dxs);
    cudaFree(dY);
    free(W);
    free(ws);
    free(ws_np);
    free(X);
    free(Q);
    free(xs);
    free(ref);
    free(Y0);
    free(Y);
}

/* A host-built FP8 weight in quant.h's layout, uploaded. blk_n/blk_k as the
 * repacker sets them (fp8-channel: 1 x k_pad). */
static qk_qweight mk_fp8(int n, int k, int blk_n, int blk_k, uint8_t **hw, float **hs)
{
    qk_qweight q;
    memset(&q, 0, sizeof q);
    q.kind = QK_QW_FP8;
    q.n = n;
    q.k = k;
    q.n_pad = (n + 3) / 4 * 4;
    q.k_pad = (k + 31) / 32 * 32;
    q.blk_n = blk_n;
    q.blk_k = blk_k ? blk_k : q.k_pad;
    q.nkb = (q.k_pad + q.blk_k - 1) / q.blk_k;
    int nbn = (q.n_pad + q.blk_n - 1) / q.blk_n;
    q.w_bytes = (size_t)q.n_pad * q.k_pad;
    q.s_bytes = sizeof(float) * (size_t)nbn * q.nkb;
    uint8_t *w = calloc(q.w_bytes, 1);
    float *s = malloc(q.s_bytes);
    for (int r = 0; r < n; r++)
        for (int c = 0; c < k; c++) w[(size_t)r * q.k_pad + c] = rand_e4m3();
    for (size_t i = 0; i < q.s_bytes / 4; i++) s[i] = (float)(0.5 + frand()) / 448.0f;
    q.w = dup_dev(w, q.w_bytes);
    q.s = dup_dev(s, q.s_bytes);
    *hw = w;
    *hs = s;
    return q;
}

static void free_q(qk_qweight *q)
{
    cudaFree(q->w);
    cudaFree(q->s);
}

/* Fused group: FP8 block A (nA rows) | FP8 block B (nB) | BF16 (48 rows) |
 * fp8-channel (40 rows); only A and B run in FP8. */
static void test_group(qk_lt *lt, const char *name, int nA, int nB, int T, int K, float beta, int out16)
{
    uint8_t *wa, *wb, *wc;
    float *sa, *sb, *sc;
    qk_qweight q[4];
    q[0] = mk_fp8(nA, K, 128, 128, &wa, &sa);
    q[1] = mk_fp8(nB, K, 128, 128, &wb, &sb);
    memset(&q[2], 0, sizeof q[2]);
    q[2].kind = QK_QW_BF16;
    q[2].n = q[2].n_pad = 48;
    q[2].k = q[2].k_pad = K;
    q[2].w_bytes = (size_t)48 * K * 2;
    q[2].w = dup_dev(NULL, 0);
    q[3] = mk_fp8(40, K, 1, 0, &wc, &sc);
    const int off[4] = {0, nA, nA + nB, nA + nB + 48};
    const int ld = nA + nB + 48 + 40 + 8; /* row stride wider than the group */
    const qk_qweight *w[4] = {&q[0], &q[1], &q[2], &q[3]};
    uint16_t *X = malloc((size_t)T * K * 2);
    rand_x(X, T, K);
    int nkb = K / 128;
    uint8_t *Q = malloc((size_t)T * K);
    float *xs = malloc(sizeof(float) * (size_t)T * nkb);
    ref_quant(X, T, K, K, Q, xs, 1, T);
    size_t ysz = (size_t)T * ld;
    float *Y0 = malloc(sizeof(float) * ysz);
    uint16_t *Y0b = malloc(2 * ysz);
    for (size_t i = 0; i < ysz; i++) {
        Y0[i] = (float)(frand() * 2 - 1);
        Y0b[i] = f2bf(Y0[i]);
    }
    uint16_t *dX = dup_dev(X, (size_t)T * K * 2);
    void *dY = out16 ? dup_dev(Y0b, 2 * ysz) : dup_dev(Y0, 4 * ysz);
    unsigned done = 0;
    int rc = qk_gemm_q_lt(lt, w, off, 4, dX, dY, ld, T, beta, out16, &done);
    cudaError_t se = cudaDeviceSynchronize();
    float *Y = malloc(sizeof(float) * ysz);
    if (out16) {
        uint16_t *Yb = malloc(2 * ysz);
        cudaMemcpy(Yb, dY, 2 * ysz, cudaMemcpyDeviceToHost);
        for (size_t i = 0; i < ysz; i++) Y[i] = bf2f(Yb[i]);
        free(Yb);
    } else {
        cudaMemcpy(Y, dY, 4 * ysz, cudaMemcpyDeviceToHost);
    }
    double worst = 0;
    const uint8_t *ww[2] = {wa, wb};
    const float *ss[2] = {sa, sb};
    for (int p = 0; p < 2; p++) {
        int N = q[p].n;
        double *ref = malloc(sizeof(double) * (size_t)T * N);
        ref_gemm(ww[p], q[p].k_pad, ss[p], q[p].nkb, Q, K, xs, 1, T, N, T, K, ref);
        if (beta != 0)
            for (int t = 0; t < T; t++)
                for (int n = 0; n < N; n++) ref[(size_t)t * N + n] += Y0[(size_t)t * ld + off[p] + n];
        double e = rel_l2_f(Y + off[p], ld, ref, T, N, NULL);
        if (e > worst) worst = e;
        free(ref);
    }
    long untouched_bad = 0;
    for (int t = 0; t < T; t++)
        for (int c = off[2]; c < ld; c++) {
            float want = out16 ? bf2f(Y0b[(size_t)t * ld + c]) : Y0[(size_t)t * ld + c];
            untouched_bad += Y[(size_t)t * ld + c] != want;
        }
    double tol = out16 ? 4e-3 : 1e-3;
    CHECK(name, rc == 0 && se == cudaSuccess && done == 3u && untouched_bad == 0 && worst < tol,
          "rc %d (%s), done mask %#x (want 0x3), %ld values of the other parts changed, rel L2 %.3g (tol %.0e)", rc,
          cudaGetErrorString(se), done, untouched_bad, worst, tol);
    printf("# %s: parts %d+%d (+bf16 48, fp8-channel 40) T=%d K=%d rel L2 %.3g\n", name, nA, nB, T, K, worst);
    for (int i = 0; i < 4; i++) free_q(&q[i]);
    cudaFree(dX);
    cudaFree(dY);
    free(wa);
    free(wb);
    free(wc);
    free(sa);
    free(sb);
    free(sc);
    free(X);
    free(Q);
    free(xs);
    free(Y0);
    free(Y0b);
    free(Y);
}

static void test_eligible(qk_lt *lt)
{
    uint8_t *w;
    float *s;
    qk_qweight a = mk_fp8(300, 5120, 128, 128, &w, &s);
    free(w);
    free(s);
    qk_qweight b = a, c = a, d = a;
    b.k = 320; /* K not a multiple of 128 */
    c.blk_n = c.n_pad; /* fp8-tensor */
    c.blk_k = c.k_pad;
    d.kind = QK_QW_INT4;
    int ok = qk_lt_fp8_eligible(lt, &a) && !qk_lt_fp8_eligible(lt, &b) && !qk_lt_fp8_eligible(lt, &c) &&
             !qk_lt_fp8_eligible(lt, &d) && !qk_lt_fp8_eligible(NULL, &a);
    CHECK("lt_eligible", ok, "eligibility: block %d, K=320 %d, tensor %d, int4 %d", qk_lt_fp8_eligible(lt, &a),
          qk_lt_fp8_eligible(lt, &b), qk_lt_fp8_eligible(lt, &c), qk_lt_fp8_eligible(lt, &d));
    free_q(&a);
}

/* NVFP4 activation quantizer vs the CPU: codes, tiled scales, multiplier. */
static void test_quant_fp4(const char *name, int T, int K, int Kq)
{
    uint16_t *X = malloc((size_t)T * K * 2);
    rand_x(X, T, K);
    size_t qn = (size_t)T * Kq / 2, sn = qk_fp4_sf_bytes(T, Kq);
    uint8_t *Q = malloc(qn), *Qg = malloc(qn), *S = malloc((size_t)T * Kq / 16), *St = malloc(sn), *Sg = malloc(sn);
    float gs = 0, f4[2] = {0, 0};
    ref_quant_fp4(X, T, K, Kq, Q, S, &gs);
    ref_tile(S, T, Kq / 16, Kq / 16, St);
    uint16_t *dX = dup_dev(X, (size_t)T * K * 2);
    uint8_t *dQ = NULL, *dS = NULL;
    float *df4 = NULL;
    cudaMalloc((void **)&dQ, qn);
    cudaMalloc((void **)&dS, sn);
    cudaMalloc((void **)&df4, 4 * sizeof(float));
    cudaMemset(dS, 0xee, sn); /* the quantizer must zero the padding */
    int rc = qk_quant_act_nvfp4(dX, T, K, Kq, dQ, dS, df4, NULL);
    cudaMemcpy(Qg, dQ, qn, cudaMemcpyDeviceToHost);
    cudaMemcpy(Sg, dS, sn, cudaMemcpyDeviceToHost);
    cudaMemcpy(f4, df4, sizeof f4, cudaMemcpyDeviceToHost);
    long qb = 0, sb = 0;
    for (size_t i = 0; i < qn; i++) qb += Q[i] != Qg[i];
    for (size_t i = 0; i < sn; i++) sb += St[i] != Sg[i];
    CHECK(name, rc == 0 && qb == 0 && sb == 0 && f4[1] == gs, "rc %d, %ld of %zu code bytes and %ld of %zu tiled scale "
          "bytes differ, multiplier %g vs %g", rc, qb, qn, sb, sn, f4[1], gs);
    cudaFree(dX);
    cudaFree(dQ);
    cudaFree(dS);
    cudaFree(df4);
    free(X);
    free(Q);
    free(Qg);
    free(S);
    free(St);
    free(Sg);
}

/* NVFP4 weight packed by the real repacker (cuda_repack.c), then turned back
 * on the GPU: the published bytes and the tiled published scales. */
static void test_fp4_weight(const char *name, int N, int K)
{
    char lname[96];
    snprintf(lname, sizeof lname, "test.%s", name);
    qc_linear l = th_linear(lname, QC_FMT_NVFP4_CT, N, K);
    l.bits = 4;
    l.group_size = 16;
    l.symmetric = true;
    const int nb = (K + 15) / 16; /* scale columns: partial last group */
    uint8_t *wb = malloc((size_t)N * K / 2 + 16), *sbt = malloc((size_t)N * nb + 16);
    float g = 1234.5f;
    for (size_t i = 0; i < (size_t)N * K / 2; i++) wb[i] = (uint8_t)urand();
    for (size_t i = 0; i < (size_t)N * nb; i++) sbt[i] = (uint8_t)(0x20 + urand() % 0x40);
    qc_tensor tw = th_tensor("weight_packed", QC_DT_U8, 2, N, K / 2, wb);
    qc_tensor ts = th_tensor("weight_scale", QC_DT_F8_E4M3, 2, N, nb, sbt);
    qc_tensor tg = th_tensor("weight_global_scale", QC_DT_F32, 1, 1, 0, &g);
    l.weight = &tw;
    l.scale = &ts;
    l.global_scale = &tg;
    qk_qweight h, d;
    qc_err err;
    memset(&err, 0, sizeof err);
    int rc = qc_qweight_pack(&l, &h, &err);
    if (rc) {
        CHECK(name, 0, "qc_qweight_pack: %s", err.msg);
        free(wb);
        free(sbt);
        return;
    }
    d = h;
    d.w = dup_dev(h.w, h.w_bytes);
    d.s = dup_dev(h.s, h.s_bytes);
    size_t wn = (size_t)h.n_pad * h.k_pad / 2, sn = qk_fp4_sf_bytes(N, h.k_pad);
    uint8_t *dwq = NULL, *dsf = NULL, *wq = malloc(wn), *sf = malloc(sn), *sref = malloc(sn);
    cudaMalloc((void **)&dwq, wn);
    cudaMalloc((void **)&dsf, sn);
    rc = qk_fp4_weight_unpack(&d, dwq, dsf, NULL);
    cudaMemcpy(wq, dwq, wn, cudaMemcpyDeviceToHost);
    cudaMemcpy(sf, dsf, sn, cudaMemcpyDeviceToHost);
    long wbad = 0, sbad = 0;
    for (int n = 0; n < h.n_pad; n++)
        for (int b = 0; b < h.k_pad / 2; b++) {
            uint8_t want = n < N && b < K / 2 ? wb[(size_t)n * (K / 2) + b] : 0;
            wbad += wq[(size_t)n * (h.k_pad / 2) + b] != want;
        }
    uint8_t *spub = calloc((size_t)N * (h.k_pad / 16), 1); /* published scales, padded K columns zero */
    for (int n = 0; n < N; n++) memcpy(spub + (size_t)n * (h.k_pad / 16), sbt + (size_t)n * nb, (size_t)nb);
    ref_tile(spub, N, h.k_pad / 16, h.k_pad / 16, sref);
    for (size_t i = 0; i < sn; i++) sbad += sf[i] != sref[i];
    CHECK(name, rc == 0 && wbad == 0 && sbad == 0, "rc %d, %ld weight bytes and %ld tiled scale bytes differ", rc, wbad,
          sbad);
    if (cc_major == 10 || cc_major == 12) {
        /* Blackwell: the whole FP4 GEMM (qk_gemm_q_lt) vs the CPU on the
         * same quantized activations */
        char nm[96];
        snprintf(nm, sizeof nm, "lt_fp4_gemm_%dx%d", N, K);
        const int T = 64;
        qk_blas *blas = NULL;
        qk_lt *lt = NULL;
        int r2 = qk_blas_create(&blas, NULL, 32u << 20);
        if (!r2) r2 = qk_lt_create(&lt, blas, cc_major * 10 + cc_minor);
        uint16_t *X = malloc((size_t)T * K * 2);
        rand_x(X, T, K);
        uint8_t *Q = malloc((size_t)T * h.k_pad / 2), *S = malloc((size_t)T * h.k_pad / 16);
        float gs = 0;
        ref_quant_fp4(X, T, K, h.k_pad, Q, S, &gs);
        uint16_t *dX = dup_dev(X, (size_t)T * K * 2);
        float *dY = NULL, *Y = malloc(sizeof(float) * (size_t)T * N);
        double *ref = malloc(sizeof(double) * (size_t)T * N);
        cudaMalloc((void **)&dY, sizeof(float) * (size_t)T * N);
        const qk_qweight *wp = &d;
        const int off0 = 0;
        unsigned done = 0;
        if (!r2) r2 = qk_gemm_q_lt(lt, &wp, &off0, 1, dX, dY, N, T, 0.0f, 0, &done);
        cudaDeviceSynchronize();
        cudaMemcpy(Y, dY, sizeof(float) * (size_t)T * N, cudaMemcpyDeviceToHost);
        static const float m8[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                double acc = 0;
                for (int k = 0; k < K; k++) {
                    uint8_t wc = (uint8_t)(wb[(size_t)n * (K / 2) + k / 2] >> (4 * (k & 1)) & 15);
                    uint8_t xc = (uint8_t)(Q[(size_t)t * (h.k_pad / 2) + k / 2] >> (4 * (k & 1)) & 15);
                    double wv = (wc & 8 ? -m8[wc & 7] : m8[wc & 7]) * (double)e4m3_dec(sbt[(size_t)n * nb + k / 16]);
                    double xv = (xc & 8 ? -m8[xc & 7] : m8[xc & 7]) * (double)e4m3_dec(S[(size_t)t * (h.k_pad / 16) + k / 16]);
                    acc += wv * xv;
                }
                ref[(size_t)t * N + n] = acc * h.gmul * gs;
            }
        double e = rel_l2_f(Y, N, ref, T, N, NULL);
        CHECK(nm, r2 == 0 && done == 1u && e < 1e-4, "rc %d, done %#x, rel L2 %.3g", r2, done, e);
        cudaFree(dX);
        cudaFree(dY);
        free(X);
        free(Q);
        free(S);
        free(Y);
        free(ref);
        qk_lt_free(lt);
        qk_blas_free(blas);
    }
    cudaFree(d.w);
    cudaFree(d.s);
    cudaFree(dwq);
    cudaFree(dsf);
    qc_qweight_free_host(&h);
    free(wb);
    free(sbt);
    free(wq);
    free(sf);
    free(sref);
    free(spub);
}

/* ---- bench ------------------------------------------------------------------- */

typedef struct bshape {
    const char *name;
    int n, k, out16, per_model; /* launches per 27B forward */
    float beta;
} bshape;

static double time_ms(cudaEvent_t e0, cudaEvent_t e1) /* after e1 recorded */
{
    float ms = 0;
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    return ms;
}

static void bench(qk_lt *lt, qk_blas *blas)
{
    static const bshape sh[] = {
        {"gdn in (qkv|z|b|a)", 16480, 5120, 0, 48, 0.0f}, {"attn in (q+gate|k|v)", 14336, 5120, 0, 16, 0.0f},
        {"out (gdn/attn)", 5120, 6144, 0, 64, 1.0f},      {"mlp gate|up", 34816, 5120, 1, 64, 0.0f},
        {"mlp down", 5120, 17408, 0, 64, 1.0f},
    };
    static const int Ts[] = {1000, 8192};
    const int nsh = (int)(sizeof sh / sizeof sh[0]);
    int maxn = 0, maxk = 0;
    for (int i = 0; i < nsh; i++) {
        if (sh[i].n > maxn) maxn = sh[i].n;
        if (sh[i].k > maxk) maxk = sh[i].k;
    }
    uint16_t *dX = NULL, *dq = NULL;
    void *dY = NULL;
    int bad = 0;
    if (cudaMalloc((void **)&dX, (size_t)8192 * maxk * 2) || cudaMalloc((void **)&dq, (size_t)maxn * maxk * 2) ||
        cudaMalloc(&dY, (size_t)8192 * maxn * 4)) {
        CHECK("ltbench", 0, "cannot allocate bench buffers");
        return;
    }
    qk_fill_random_bf16(dX, (int64_t)8192 * maxk, 7, 1.0f, NULL);
    cudaMemset(dY, 0, (size_t)8192 * maxn * 4);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int ti = 0; ti < 2; ti++) {
        int T = Ts[ti];
        double tot_dq = 0, tot_lt = 0, tot_bf = 0;
        for (int i = 0; i < nsh; i++) {
            qk_qweight q;
            memset(&q, 0, sizeof q);
            q.kind = QK_QW_FP8;
            q.n = sh[i].n;
            q.k = sh[i].k;
            q.n_pad = q.n;
            q.k_pad = q.k;
            q.blk_n = q.blk_k = 128;
            q.nkb = q.k / 128;
            q.w_bytes = (size_t)q.n * q.k;
            q.s_bytes = sizeof(float) * (size_t)((q.n + 127) / 128) * q.nkb;
            if (cudaMalloc(&q.w, q.w_bytes) || cudaMalloc(&q.s, q.s_bytes)) {
                bad++;
                break;
            }
            bad += qk_fill_random_qweight(&q, 11 + i, 0.05f, NULL) != 0;
            const qk_qweight *wp = &q;
            const int off0 = 0;
            const int R = T > 4000 ? 5 : 10;
            double ms[4];
            for (int path = 0; path < 4; path++) {
                /* 0: dequant + BF16 GEMM, 1: BF16 GEMM alone, 2: quantize + FP8 GEMM, 3: quantize alone */
                for (int rep = -1; rep < R; rep++) {
                    if (rep == 0) cudaEventRecord(e0, NULL);
                    int rc = 0;
                    unsigned done = 0;
                    if (path == 0) rc = qk_dequant_q_bf16(&q, dq, q.k, NULL);
                    if (path <= 1 && !rc)
                        rc = sh[i].out16 ? qk_gemm_bf16_out16(blas, dq, dX, dY, q.n, T, q.n, q.k)
                                         : qk_gemm_bf16(blas, dq, dX, dY, q.n, T, q.n, q.k, sh[i].beta);
                    if (path == 2) {
                        rc = qk_gemm_q_lt(lt, &wp, &off0, 1, dX, dY, q.n, T, sh[i].beta, sh[i].out16, &done);
                        if (!rc && done != 1u) rc = -1;
                    }
                    if (path == 3) rc = qk_quant_act_fp8(dX, T, q.k, q.k, (uint8_t *)dq, (float *)dY, 1, T, NULL);
                    bad += rc != 0;
                }
                cudaEventRecord(e1, NULL);
                ms[path] = time_ms(e0, e1) / R;
            }
            double tf = 2.0 * T * q.n * (double)q.k * 1e-12;
            printf("# ltbench T=%d %-22s %5dx%-5d dequant+bf16 %7.3f ms (bf16 gemm %7.3f, %4.0f TFLOP/s) | fp8 lt "
                   "%7.3f ms (%4.0f TFLOP/s, act quant %6.3f) | x%.2f\n",
                   T, sh[i].name, q.n, q.k, ms[0], ms[1], tf / (ms[1] * 1e-3), ms[2], tf / (ms[2] * 1e-3), ms[3],
                   ms[0] / ms[2]);
            tot_dq += ms[0] * sh[i].per_model;
            tot_bf += ms[1] * sh[i].per_model;
            tot_lt += ms[2] * sh[i].per_model;
            cudaFree(q.w);
            cudaFree(q.s);
        }
        printf("# ltbench T=%d 27B forward (48 GDN + 16 attn layers): dequant+bf16 %.1f ms (bf16 gemm alone %.1f) | "
               "fp8 lt %.1f ms\n",
               T, tot_dq, tot_bf, tot_lt);
    }
    cudaError_t se = cudaDeviceSynchronize();
    CHECK("ltbench", bad == 0 && se == cudaSuccess, "%d launches failed (%s)", bad, cudaGetErrorString(se));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(dX);
    cudaFree(dq);
    cudaFree(dY);
}

static void test_gpu(void)
{
    const char *names[] = {"quant_act_1x128", "quant_act_37x384", "quant_act_5x100_pad128", "quant_act_200x5120",
                           "quant_fp4", "fp4_weight", "lt_raw", "lt_group", "lt_eligible", "ltbench"};
    if (!gpu_init()) {
        th_skip_all(names, (int)(sizeof names / sizeof names[0]), "no CUDA device");
        return;
    }
    test_quant("quant_act_1x128", 1, 128, 128);
    test_quant("quant_act_37x384", 37, 384, 384);
    test_quant("quant_act_5x100_pad128", 5, 100, 128);
    test_quant("quant_act_9x200_pad256", 9, 200, 256);
    test_quant("quant_act_200x5120", 200, 5120, 5120);
    /* the NVFP4 pieces run on any GPU; the FP4 GEMM only on Blackwell */
    test_quant_fp4("quant_fp4_3x64", 3, 64, 64);
    test_quant_fp4("quant_fp4_130x100_pad128", 130, 100, 128);
    test_quant_fp4("quant_fp4_200x5120", 200, 5120, 5120);
    test_fp4_weight("fp4_weight_300x200", 300, 200);
    test_fp4_weight("fp4_weight_1000x5120", 1000, 5120);
    if (cc_major != 10 && cc_major != 12) th_skip("lt_fp4_gemm", "the FP4 GEMM runs only on Blackwell (cc 10.x/12.x)");
    if (cc_major != 9) {
        char why[96];
        snprintf(why, sizeof why, "cuBLASLt FP8 block scaling needs sm_90 (this GPU is sm_%d%d)", cc_major, cc_minor);
        th_skip_all(names + 6, (int)(sizeof names / sizeof names[0]) - 6, why);
        return;
    }
    qk_blas *blas = NULL;
    qk_lt *lt = NULL;
    int rc = qk_blas_create(&blas, NULL, 32u << 20);
    if (!rc) rc = qk_lt_create(&lt, blas, cc_major * 10 + cc_minor);
    CHECK("lt_create", rc == 0, "qk_blas_create/qk_lt_create: %d", rc);
    if (rc) return;
    test_raw(lt, "lt_raw_256x64x512", 256, 64, 512, 0);
    test_raw(lt, "lt_raw_300x36x384_padded_scales", 300, 36, 384, 0);
    test_raw(lt, "lt_raw_1000x200x5120", 1000, 200, 5120, 0);
    test_raw(lt, "lt_raw_136x68x640_beta1", 136, 68, 640, 1);
    test_raw(lt, "lt_raw_384x96x1280_out16", 384, 96, 1280, 2);
    test_raw(lt, "lt_raw_128x8x128", 128, 8, 128, 0);
    test_group(lt, "lt_group_fp32", 300, 132, 70, 512, 0.0f, 0);
    test_group(lt, "lt_group_beta1_nkb3", 256, 100, 64, 384, 1.0f, 0);
    test_group(lt, "lt_group_out16_nkb2", 200, 200, 129, 256, 0.0f, 1);
    test_group(lt, "lt_group_beta1_t3", 300, 64, 3, 640, 1.0f, 0); /* the T % 4 tail alone */
    test_group(lt, "lt_group_beta1_t1001", 200, 24, 1001, 1024, 1.0f, 0);
    test_eligible(lt);
    bench(lt, blas);
    qk_lt_free(lt);
    qk_blas_free(blas);
}
#endif

int main(void)
{
    test_cpu_refs();
#ifdef QC_HAVE_CUDA
    test_gpu();
#else
    th_skip("lt_gpu", "built without CUDA");
#endif
    return th_exit();
}
