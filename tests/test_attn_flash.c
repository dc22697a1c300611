/* test_attn_flash.c — the flash prefill attention (kernels/attn_flash.cu)
 * against the exact fp32 kernel qk_attn (nsplit 1) on random inputs: odd and
 * tile-edge chunk lengths, head dims 32..256, GQA 2:1 / 3:1 / 6:1, first
 * chunks and later chunks (pos0 > 0), flat and peaky softmax, every tiling.
 * Cache positions past the chunk are NaN-poisoned, so reading them fails the
 * test; outputs are poisoned too. Each comparison prints
 * "# NAME: max_abs=.. rel_l2=..". Then the 27B shape (H 24, KV 4, hd 256) at
 * T = 1000 and 8192 is timed against the cuBLAS path qk_attn_prefill_gemm
 * ("# attn_flash T=.. pos0=.. tiling=BMxBNxSTAGES ms=.. TFLOP/s=..") and the
 * two outputs compared, and an 8192-token chunk at position 57344 is timed.
 * Without a GPU (or CUDA at build time) every test prints a skip line. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static const char *const test_names[] = {"attn_flash", "attn_flash_tilings", "attn_flash_refuse", "attn_flash_27b"};
#define N_TESTS (int)(sizeof test_names / sizeof test_names[0])

#ifndef QC_HAVE_CUDA
int main(void)
{
    th_skip_all(test_names, N_TESTS, "built without CUDA");
    return 0;
}
#else

#include <cuda_runtime_api.h>

#include "kernels.h"
#include "util.h"

#define GT_RNG_SEED 0x9e3779b97f4a7c15ull
#include "gpu_testutil.h"

/* bm, bn, stages (K/V buffers) */
static const int tilings[][3] = {{64, 64, 1}, {128, 64, 1}, {64, 32, 1}, {128, 32, 1},
                                 {64, 64, 2}, {128, 64, 2}, {64, 32, 2}, {128, 32, 2}};
#define N_TILINGS (int)(sizeof tilings / sizeof tilings[0])

/* Tiling c of the table, or the engine's default (qk_attn_flash) for c < 0. */
static int flash_run(int c, const float *q, const float *g, const uint16_t *kc, const uint16_t *vc, int max_ctx, int T,
                     int H, int KV, int hd, int pos0, uint16_t *out)
{
    if (c < 0) return qk_attn_flash(q, g, kc, vc, max_ctx, T, H, KV, hd, pos0, out, 0);
    return qk_attn_flash_cfg(q, g, kc, vc, max_ctx, T, H, KV, hd, pos0, out, 0, tilings[c][0], tilings[c][1],
                             tilings[c][2]);
}

/* One shape: qk_attn (nsplit 1) as the reference, then the default tiling
 * (*ok) and every explicit tiling (*tok). */
static void flash_case(int T, int pos0, int H, int KV, int hd, float qscale, int *ok, int *tok)
{
    int max_ctx = pos0 + T + 13;
    size_t nq = (size_t)T * H * hd, nc = (size_t)KV * max_ctx * hd;
    float *q = malloc(nq * 4), *g = malloc(nq * 4);
    uint16_t *kc = malloc(nc * 2), *vc = malloc(nc * 2);
    for (size_t i = 0; i < nq; i++) {
        q[i] = frand() * qscale;
        g[i] = frand() * 3.0f;
    }
    for (int h = 0; h < KV; h++)
        for (int p = 0; p < max_ctx; p++)
            for (int d = 0; d < hd; d++) {
                size_t o = ((size_t)h * max_ctx + p) * hd + d;
                kc[o] = p < pos0 + T ? qc_f32_to_bf16(frand()) : 0xffff; /* NaN past the chunk */
                vc[o] = p < pos0 + T ? qc_f32_to_bf16(frand()) : 0xffff;
            }
    float *dq = dput(q, nq * 4), *dg = dput(g, nq * 4);
    uint16_t *dkc = dput(kc, nc * 2), *dvc = dput(vc, nc * 2);
    int32_t *dpos = dput(&pos0, 4);
    uint16_t *dref = dput(NULL, nq * 2), *dout = dput(NULL, nq * 2);
    cudaMemset(dref, 0xff, nq * 2);
    int rok = launch_ok(qk_attn(dq, dg, dkc, dvc, max_ctx, T, H, KV, hd, dpos, 1, NULL, dref, 0), "attn (reference)");
    float *ref = dget_bf(dref, nq);
    char nm[160];
    for (int c = -1; c < N_TILINGS; c++) {
        int bm = c < 0 ? 0 : tilings[c][0], bn = c < 0 ? 0 : tilings[c][1], ns = c < 0 ? 0 : tilings[c][2];
        cudaMemset(dout, 0xff, nq * 2);
        int rc = flash_run(c, dq, dg, dkc, dvc, max_ctx, T, H, KV, hd, pos0, dout);
        snprintf(nm, sizeof nm, "attn_flash T=%d pos0=%d H=%d KV=%d hd=%d qscale=%g tiling=%dx%dx%d", T, pos0, H, KV,
                 hd, qscale, bm, bn, ns);
        if (c >= 0 && rc == 1 /* cudaErrorInvalidValue: too much shared memory here */) {
            printf("# %s: tiling not available on this device\n", nm);
            continue;
        }
        int lok = rok && launch_ok(rc, nm);
        float *got = dget_bf(dout, nq);
        lok = lok && cmp(nm, got, ref, nq, 1e-2);
        free(got);
        *(c < 0 ? ok : tok) &= lok;
    }
    cudaFree(dq); cudaFree(dg); cudaFree(dkc); cudaFree(dvc); cudaFree(dpos); cudaFree(dref); cudaFree(dout);
    free(q); free(g); free(kc); free(vc); free(ref);
}

static void test_flash(void)
{
    int ok = 1, tok = 1;
    static const int cases[][5] = {
        /* T, pos0, H, KV, hd */
        {1, 0, 6, 2, 64},     {37, 0, 6, 2, 64},     {63, 5, 6, 2, 64},     {64, 0, 6, 2, 128},
        {65, 0, 6, 2, 128},   {200, 0, 6, 2, 64},    {200, 37, 6, 2, 64},   {77, 13, 4, 1, 32},
        {200, 0, 4, 1, 32},   {65, 64, 6, 2, 256},   {200, 0, 24, 4, 256},  {200, 77, 24, 4, 256},
        {37, 300, 24, 4, 256}, {1, 4000, 24, 4, 256}, {63, 0, 24, 4, 128},   {1000, 0, 24, 4, 256},
        {1000, 1000, 24, 4, 256}, {1000, 37, 6, 2, 64}, {129, 3, 8, 8, 128},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        flash_case(cases[i][0], cases[i][1], cases[i][2], cases[i][3], cases[i][4], 3.0f, &ok, &tok);
    /* peaky softmax (scores spread over tens of units) */
    flash_case(200, 0, 6, 2, 64, 12.0f, &ok, &tok);
    flash_case(130, 500, 24, 4, 256, 12.0f, &ok, &tok);
    CHECK("attn_flash", ok, "flash attention differs from qk_attn");
    CHECK("attn_flash_tilings", tok, "a tiling of the flash attention differs from qk_attn");
}

static void test_refuse(void)
{
    /* head dims it does not specialise: the caller must be told (and fall back) */
    uint16_t *dout = dput(NULL, 64);
    int r1 = qk_attn_flash(NULL, NULL, NULL, NULL, 100, 4, 4, 2, 48, 0, dout, 0);
    int r2 = qk_attn_flash(NULL, NULL, NULL, NULL, 100, 4, 6, 4, 64, 0, dout, 0); /* H % KV */
    int r3 = qk_attn_flash(NULL, NULL, NULL, NULL, 100, 4, 6, 2, 64, 97, dout, 0); /* past max_ctx */
    cudaFree(dout);
    printf("# refuse: hd 48 -> %d, H 6 KV 4 -> %d, pos0+T > max_ctx -> %d; ok(24,4,256)=%d ok(4,2,48)=%d\n", r1, r2,
           r3, qk_attn_flash_ok(24, 4, 256), qk_attn_flash_ok(4, 2, 48));
    CHECK("attn_flash_refuse", r1 && r2 && r3 && qk_attn_flash_ok(24, 4, 256) && !qk_attn_flash_ok(4, 2, 48),
          "an unsupported shape was not refused");
}

static double now_ms(cudaEvent_t a, cudaEvent_t b)
{
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms;
}

/* The 27B shape: times the flash kernel (every tiling) and the cuBLAS path,
 * and compares their outputs (both round Q and P to bf16). */
static void test_27b(void)
{
    const int H = 24, KV = 4, hd = 256, cap = 65536;
    /* T, pos0: a chat prompt, a first 8192-token chunk, a chunk deep into a
     * long prompt (timed only: the cuBLAS path's scratch would not hold it) */
    const int Ts[][2] = {{1000, 0}, {8192, 0}, {8192, 57344}};
    size_t nq = (size_t)8192 * H * hd, nc = (size_t)KV * cap * hd;
    float *dq = dput(NULL, nq * 4), *dg = dput(NULL, nq * 4);
    uint16_t *dkc = dput(NULL, nc * 2), *dvc = dput(NULL, nc * 2), *dflash = dput(NULL, nq * 2), *dgemm = dput(NULL, nq * 2);
    int ok = 1;
    ok &= launch_ok(qk_fill_random_f32(dq, (int64_t)nq, 1, -3.0f, 3.0f, 0), "fill q");
    ok &= launch_ok(qk_fill_random_f32(dg, (int64_t)nq, 2, -3.0f, 3.0f, 0), "fill gate");
    ok &= launch_ok(qk_fill_random_bf16(dkc, (int64_t)nc, 3, 1.0f, 0), "fill k");
    ok &= launch_ok(qk_fill_random_bf16(dvc, (int64_t)nc, 4, 1.0f, 0), "fill v");
    qk_blas *blas = NULL;
    ok &= launch_ok(qk_blas_create(&blas, 0, 32u << 20), "blas");
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int ti = 0; ti < 3 && ok; ti++) {
        int T = Ts[ti][0], p0 = Ts[ti][1], reps = T > 2000 ? (p0 ? 2 : 5) : 20;
        double flop = 4.0 * H * hd * ((double)T * p0 + (double)T * (T + 1) / 2);
        for (int c = -1; c < N_TILINGS; c++) {
            int bm = c < 0 ? 0 : tilings[c][0], bn = c < 0 ? 0 : tilings[c][1], ns = c < 0 ? 0 : tilings[c][2];
            /* c < 0: the engine's default, printed as tiling 0x0x0 */
            int rc = flash_run(c, dq, dg, dkc, dvc, cap, T, H, KV, hd, p0, dflash);
            if (c >= 0 && rc == 1) continue;
            if (!launch_ok(rc, "flash warm-up")) {
                ok = 0;
                break;
            }
            cudaEventRecord(e0, 0);
            for (int r = 0; r < reps; r++) flash_run(c, dq, dg, dkc, dvc, cap, T, H, KV, hd, p0, dflash);
            cudaEventRecord(e1, 0);
            cudaEventSynchronize(e1);
            double ms = now_ms(e0, e1) / reps;
            printf("# attn_flash T=%d pos0=%d tiling=%dx%dx%d ms=%.3f TFLOP/s=%.1f\n", T, p0, bm, bn, ns, ms,
                   flop / ms * 1e-9);
        }
        if (p0) continue;
        /* the default tiling's output last, for the comparison */
        ok &= launch_ok(qk_attn_flash(dq, dg, dkc, dvc, cap, T, H, KV, hd, 0, dflash, 0), "flash");
        /* cuBLAS path with the scratch the engine's arena gives it (<= 1 GiB) */
        size_t ag = (size_t)T * H * (((size_t)cap + 8) * 6 + (size_t)hd * 6) + (1u << 20);
        if (ag > ((size_t)1 << 30)) ag = (size_t)1 << 30;
        void *scr = dput(NULL, ag);
        ok &= launch_ok(qk_attn_prefill_gemm(blas, dq, dg, dkc, dvc, cap, T, H, KV, hd, 0, scr, ag, dgemm),
                        "gemm warm-up");
        cudaEventRecord(e0, 0);
        for (int r = 0; r < reps; r++) qk_attn_prefill_gemm(blas, dq, dg, dkc, dvc, cap, T, H, KV, hd, 0, scr, ag, dgemm);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        double ms = now_ms(e0, e1) / reps;
        printf("# attn_gemm T=%d ms=%.3f TFLOP/s=%.1f (cuBLAS path, %zu MiB scratch)\n", T, ms, flop / ms * 1e-9,
               ag >> 20);
        cudaFree(scr);
        size_t n = (size_t)T * H * hd;
        float *a = dget_bf(dflash, n), *b = dget_bf(dgemm, n);
        char nm[96];
        snprintf(nm, sizeof nm, "attn_flash vs cuBLAS path T=%d H=24 KV=4 hd=256", T);
        ok &= cmp(nm, a, b, n, 1e-2);
        free(a);
        free(b);
    }
    qk_blas_free(blas);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(dq); cudaFree(dg); cudaFree(dkc); cudaFree(dvc); cudaFree(dflash); cudaFree(dgemm);
    CHECK("attn_flash_27b", ok, "27B shape: flash and cuBLAS attention differ or failed");
}

int main(void)
{
    if (!gt_device_or_skip(test_names, N_TESTS)) return 0;
    test_flash();
    test_refuse();
    test_27b();
    return th_exit();
}
#endif
